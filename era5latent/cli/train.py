"""The ``train`` and ``combine`` commands: the CLI's training verbs (:mod:`era5latent.training`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from era5latent.cli.common import (Bar, Device, Step, Subset, TimeAxis, TimeRange, code_usage_line,
                                   command, echo)
from era5latent.errors import OptionError


@command("train")
def train_cmd(
    data: Annotated[str, typer.Argument(help="ERA5 source: Zarr, NetCDF or GRIB (path or URL).")],
    subset: Subset,
    out: Annotated[Path, typer.Option(help="Output checkpoint (.safetensors).")],
    preset: Annotated[str, typer.Option(help="Model size: tiny, small or paper.")] = "tiny",
    steps: Annotated[Optional[int], typer.Option(
        min=1, help="Optimiser steps (warm-up, then cosine decay). Default: train until the "
                    "validation error stops improving (--patience), at most --max-time.",
        show_default=False)] = None,
    max_time: Annotated[Optional[str], typer.Option(
        help="Stop by this time (90s, 10m, 2h, 1h30m) with a checkpoint and exit 0. Default: "
             "10m without --steps, none with it.", show_default=False)] = None,
    patience: Annotated[int, typer.Option(
        min=1, help="Without --steps: validations without a 0.5% improvement before the "
                    "learning rate decays and the run stops.")] = 20,
    target_bpv: Annotated[Optional[float], typer.Option(
        help="Bytes per value the latent codes should take (e.g. 0.05): chooses the patch "
             "stride and code bits; printed and recorded in the checkpoint.",
        show_default=False)] = None,
    target_ratio: Annotated[Optional[float], typer.Option(
        help="Compression ratio against float32 the codes should reach (e.g. 80; "
             "--target-bpv 4/R).", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option(
        min=1, help="Global batch: samples per optimiser step over all ranks.")] = 8,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (preset default).")] = None,
    device: Device = "auto",
    time: TimeRange = None,
    time_axis: TimeAxis = "valid",
    step: Step = None,
    val_fraction: Annotated[float, typer.Option(help="Last fraction of times held out.")] = 0.1,
    val_every: Annotated[int, typer.Option(min=1, help="Steps between validations.")] = 50,
    checkpoint_every: Annotated[int, typer.Option(min=1, help="Steps between checkpoints.")] = 100,
    patch_stride: Annotated[Optional[int], typer.Option(
        min=1, help="Override the preset's patch stride (tokens = grid / stride).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue training OUT from its last checkpoint (any world size); start "
                    "afresh while OUT does not exist yet (a batch job's first run).")] = False,
    group: Annotated[Optional[str], typer.Option(
        help="Train only this variable group (z, t, ..., surface); 'era5latent combine' joins "
             "groups trained apart.", show_default=False)] = None,
    workers: Annotated[int, typer.Option(min=0, help="Loader worker processes per rank.")] = 0,
    nproc: Annotated[int, typer.Option(
        min=1, help="Data-parallel processes on this machine (torch.distributed; one per GPU). "
                    "Under torchrun leave it at 1.")] = 1,
    normalise: Annotated[str, typer.Option(
        help="Input normalisation per channel: field (anomalies from the training mean field, "
             "over their std), channel (one mean and std) or auto (field where the mean field "
             "explains at least 75% of the variance).")] = "auto",
    codebook_entropy: Annotated[str, typer.Option(
        help="BSQ codebook-entropy reward: position (each stored bit over the batch, so bits "
             "vary over time) or batch (BSQ's: over all tokens).")] = "position",
    level_weights: Annotated[str, typer.Option(
        help="Per-level loss weights for u, v, t: variance (upstream) or none.")] = "variance",
    adversarial_weight: Annotated[float, typer.Option(
        help="Weight of the adversarial term (times the adaptive weight); 0: off.")] = 0.0,
    disc_start: Annotated[int, typer.Option(
        min=0, help="Step at which the adversarial term starts.")] = 0,
    ema: Annotated[float, typer.Option(
        help="EMA decay of the weights (validated and saved); 0: off.")] = 0.0,
    quantizer: Annotated[str, typer.Option(
        help="BSQ gradient and entropy form: era5latent or upstream (the WLA authors').")] =
        "era5latent",
    precision: Annotated[str, typer.Option(
        help="auto (bf16 autocast on CUDA, fp32 on CPU), fp32 or bf16; weights stay fp32.")] = "auto",
    checkpoint_activations: Annotated[bool, typer.Option(
        "--checkpoint-activations", help="Recompute transformer blocks in backward (less memory).")
    ] = False,
    grad_accum: Annotated[int, typer.Option(
        min=1, help="Micro-batches per optimiser step (the batch is split this many times).")] = 1,
    log_dir: Annotated[Optional[Path], typer.Option(
        help="Write metrics.csv, TensorBoard events and every checkpoint here.",
        show_default=False)] = None,
    log_every: Annotated[int, typer.Option(min=1, help="Steps between log records.")] = 10,
    anonymous: Annotated[bool, typer.Option(
        "--anonymous", help="Read a public s3:// or gs:// bucket without credentials.")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the memory one step needs per rank (weights, optimizer, saved "
                          "activations, measured on fake tensors) and the largest batch that "
                          "fits --memory-budget; train nothing.")] = False,
    memory_budget: Annotated[float, typer.Option(
        help="GB of device memory per rank, for --dry-run's largest batch.")] = 80.0,
) -> None:
    """Train a Weather Latent Autoencoder on an ERA5 source (data-parallel under torchrun)."""
    from era5latent.io.sources import open_source
    from era5latent.training import TrainOptions
    from era5latent.training.budget import parse_duration
    from era5latent.training.distributed import spawn, world_from_env
    from era5latent.io.variables import parse_subset

    from era5latent.fsutil import anonymous_options

    channels = parse_subset(subset)
    storage = anonymous_options(data) if anonymous else None
    how: dict[str, Any] = {"time_axis": time_axis, "step": step}  # how every rank opens it
    overrides = {"patch_stride": patch_stride} if patch_stride else {}
    if target_bpv is not None and target_ratio is not None:
        raise OptionError(f"--target-bpv {target_bpv:g} and --target-ratio {target_ratio:g} both "
                          "ask for a rate; expected one of them (bytes per value = 4 / ratio)")
    if target_ratio is not None and not (target_ratio > 0 and target_ratio < float("inf")):
        raise OptionError(f"--target-ratio {target_ratio}: expected a ratio above 1, e.g. 80")
    target = target_bpv if target_ratio is None else 4.0 / target_ratio
    opts = TrainOptions(
        preset=preset, steps=steps, patience=patience,
        max_time=parse_duration(max_time) if max_time is not None else None,
        target_bpv=target, target_flag="--target-bpv" if target_ratio is None else
        f"--target-ratio {target_ratio:g}, i.e. --target-bpv",
        codebook_entropy=codebook_entropy, batch_size=batch_size, lr=lr, device=device, time_range=time,
        val_fraction=val_fraction, val_every=val_every, resume=resume, seed=seed,
        checkpoint_every=checkpoint_every, overrides=overrides, group=group, workers=workers,
        normalise=normalise, level_weights=level_weights, adversarial_weight=adversarial_weight, disc_start=disc_start,
        ema=ema, quantizer=quantizer, precision=precision,
        checkpoint_activations=checkpoint_activations, grad_accum=grad_accum,
        log_dir=str(log_dir) if log_dir else None, log_every=log_every)
    if dry_run:
        _dry_run(open_source(data, storage, **how), channels, opts, nproc, memory_budget)
        return
    if nproc > 1:
        if world_from_env().distributed:
            raise OptionError("--nproc starts its own processes; under torchrun leave it out")
        opts.validate(nproc)
        source = open_source(data, storage, **how)  # bad input fails here, once, before any rank
        source.check_channels(channels)
        spawn(nproc, _train_rank, data, channels, str(out), opts, storage, how)
    else:
        _train_rank(data, channels, str(out), opts, storage, how)


def _dry_run(source: object, channels: tuple[object, ...], opts: object, nproc: int,
             budget_gb: float) -> None:
    """``train --dry-run``: the memory of one step per rank, and the batch that fits."""
    from era5latent.model.discriminator import discriminator_for
    from era5latent.model.wla import preset_config
    from era5latent.io.sources import Source
    from era5latent.training import TrainOptions
    from era5latent.training.memory import estimate_memory, flops, largest_batch
    from era5latent.io.variables import group_channels

    assert isinstance(opts, TrainOptions) and isinstance(source, Source)
    opts.validate(nproc)
    groups = group_channels(channels)  # type: ignore[arg-type]
    if opts.group is not None:
        groups = {opts.group: groups[opts.group]} if opts.group in groups else {}
    config = preset_config(opts.preset, source.grid, tuple(groups), **opts.overrides)
    disc = (sum(p.numel() for p in discriminator_for(config).parameters())
            if opts.adversarial_weight > 0 else 0)
    micro = opts.batch_size // (nproc * opts.grad_accum)
    kw = dict(checkpoint_activations=opts.checkpoint_activations,
              precision="bf16" if opts.precision in ("auto", "bf16") else "fp32",
              ema=opts.ema > 0, discriminator_params=disc,
              channels=max(len(c) for c in groups.values()))
    est = estimate_memory(config, micro, **kw)  # type: ignore[arg-type]
    fits = largest_batch(config, int(budget_gb * 1e9), **kw)
    f = flops(config, kw["channels"])
    echo(f"{opts.preset} preset on {config.grid[0]} x {config.grid[1]}, groups "
          f"{', '.join(groups)}, {est.precision} autocast, activation checkpointing "
          f"{'on' if opts.checkpoint_activations else 'off'}; per rank: batch {micro} "
          f"(global {opts.batch_size} over {nproc} rank(s) x {opts.grad_accum} accumulation)")
    for label, nbytes in est.rows():
        echo(f"  {label:<58} {nbytes / 2**30:9.2f} GiB")
    echo(f"largest batch per rank in {budget_gb:g} GB: {fits}; per sample and group: "
          f"{f['encode'] / 1e12:.2f} TFLOP to encode, {f['decode'] / 1e12:.2f} TFLOP to decode "
          f"(a training step is about 3x encode + decode)")


def _train_rank(data: str, channels: tuple[object, ...], out: str, opts: object,
                storage: dict[str, object] | None, how: dict[str, Any] | None = None) -> None:
    """One rank of ``train``: rank 0 shows progress and prints the result."""
    from era5latent.io.sources import open_source
    from era5latent.training import TrainOptions, train
    from era5latent.training.distributed import world_from_env

    assert isinstance(opts, TrainOptions)
    from era5latent.training.rate import rate_for

    main_rank = world_from_env().is_main
    batch = opts.batch_size
    source = open_source(data, storage, **(how or {}))
    rate = rate_for(source.grid, channels, opts)  # type: ignore[arg-type]
    if rate is not None and main_rank:
        echo(f"rate: {rate.describe()}")
    with Bar("train", "steps", enabled=main_rank) as bar:
        res = train(source,
                    channels, out, opts,  # type: ignore[arg-type]
                    storage_options=storage, progress=lambda s, n, loss: bar.update(
                        s, n, f"{bar.rate(s) * batch:.1f} samples/s  loss {loss:.4f}"))
    if not main_rank:
        return
    echo(train_summary(res, out))


def train_summary(res: Any, out: object) -> str:
    """The lines ``train`` prints when it is done: what was written, why it stopped, and how
    well the codes use their bits (per group, on the validation data)."""
    why = {"steps": "--steps reached",
           "patience": "the validation error stopped improving (--patience), after the "
                       "learning-rate decay",
           "max-time": "--max-time reached (resume with --resume to go on)",
           "finished": "it had already stopped by patience; nothing to do"}[res.stop_reason]
    val = (f", validation MSE {res.val_mse:.4f} (normalised units: predicting the training "
           "mean scores about 1)") if res.val_mse is not None else ""
    lines = [f"wrote {out} (sha256 {res.sha256[:12]}): {res.steps} steps in {res.seconds:.1f} s "
             f"({res.samples_per_second:.1f} samples/s), train loss {res.train_loss:.4f}{val}",
             f"stopped: {why}"]
    for g, u in res.code_usage.items():
        lines.append(code_usage_line(g, u["entropy_per_bit"], u["constant_bits"],
                                     u["bytes_per_value"], u["raw_bytes_per_value"],
                                     u["samples"], "validation samples"))
    return "\n".join(lines)


@command("combine")
def combine_cmd(
    models: Annotated[list[Path], typer.Argument(help="Checkpoints of groups trained apart "
                                                 "('train --group').")],
    out: Annotated[Path, typer.Option(help="The combined checkpoint (.safetensors).")],
) -> None:
    """Join checkpoints of separately trained groups into one model file (strict shape checks)."""
    from era5latent.training.combine import combine

    meta = combine([str(m) for m in models], str(out))
    echo(f"wrote {out}: groups {', '.join(meta.groups)}")
