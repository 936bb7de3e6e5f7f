"""The training loop: one variable group at a time, data-parallel over torch.distributed ranks.

Each step takes the next global batch from the streaming loader (``data.py``); every group then
runs its own forward, backward and optimizer step (its own AdamW, gradient clipping and, when
the adversarial term is on, its own discriminator), so peak memory is that of one group and
groups trained in separate runs (``--group``) give the same weights as one run. Each group sees
a random subset of its channels in a random order, drawn from a per-group generator that every
rank draws alike. Rank 0 validates, logs and writes checkpoints (the EMA weights when ``--ema``
is on) and the training state that ``--resume`` continues from under any world size.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import zlib
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from era5latent import faults
from era5latent.version import __version__
from era5latent.errors import CheckpointError, Era5LatentError, OptionError, SubsetError
from era5latent.evaluation.metrics import latitude_weights
from era5latent.model.checkpoint import (CheckpointMeta, file_sha256, norm_scale, read_meta,
                                         save_checkpoint, split_mean_fields)
from era5latent.model.devices import autocast, resolve_device, resolve_precision
from era5latent.model.discriminator import PatchDiscriminator, discriminator_for
from era5latent.model.wla import WLA, WLAConfig, preset_config
from era5latent.io.sources import Source, grid_info, iso
from era5latent.training import distributed as ddp_setup
from era5latent.training.data import (BlockReader, Layout, Schedule, SourceRef, TrainStream,
                                      batches, source_time_chunk)
from era5latent.training.losses import (adaptive_weight, bsq_entropy, fill_masked,
                                        hinge_d_loss, hinge_g_loss, level_weights,
                                        reconstruction_loss)
from era5latent.training.budget import DEFAULT_MAX_TIME_S, Budget, lr_at
from era5latent.training.monitor import Monitor
from era5latent.training.options import DEFAULT_LR, TrainOptions
from era5latent.training.rate import rate_for, zstd_bytes
from era5latent.training.state import (flatten_optimizer, load_state, restore_optimizer,
                                       save_state)
from era5latent.training.stats import compute_stats
from era5latent.io.variables import Channel, group_channels, variable_by_name

#: a run without --steps is bounded by time; this caps its steps as well (options.MAX_STEPS)
MAX_RUN_STEPS = 10 ** 9

#: time steps per zstd stream when train estimates the store's size from the validation codes
USAGE_TIME_CHUNK = 8

#: progress(step, total_steps, loss)
TrainProgress = Callable[[int, int, float], None]


@dataclass
class TrainResult:
    path: str
    sha256: str
    steps: int
    train_loss: float
    val_mse: float | None
    seconds: float
    history: list[dict[str, float]]
    samples_per_second: float = float("nan")
    #: why the run stopped: "steps" (--steps reached), "patience" (validation stopped improving),
    #: "max-time", or "finished" (a resumed run that had already stopped by patience)
    stop_reason: str = "steps"
    #: per group, the codes' use of their bits on the validation data (``code_usage``)
    code_usage: dict[str, dict[str, float]] = field(default_factory=dict)


def split_index(n_times: int, val_fraction: float) -> int:
    """Index where validation starts (time-based split)."""
    if not 0.0 <= val_fraction < 1.0:
        raise OptionError(f"--val-fraction {val_fraction}: expected a number in [0, 1)")
    if n_times < 2 or val_fraction == 0:
        return n_times
    return n_times - max(1, int(round(n_times * val_fraction)))


def group_seed(seed: int, group: str) -> int:
    """A seed of its own per group, so a group's run does not depend on the other groups."""
    return (seed * 1_000_003 + zlib.crc32(group.encode())) % (2**63)


def init_model(config: WLAConfig, seed: int) -> WLA:
    """A WLA whose every group is initialised from that group's own seed."""
    with torch.device("meta"):
        model = WLA(config)
    for g in config.groups:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(group_seed(seed, g))
            model.autoencoders[g] = WLA(replace(config, groups=(g,))).autoencoders[g]
    return model


def _adversarial_ok(chs: tuple[Channel, ...]) -> bool:
    """No adversarial term for precipitation-like (accumulated, non-negative) fields."""
    return not any(variable_by_name(c.name).accumulated for c in chs)


def _device(spec: str, world: ddp_setup.World) -> torch.device:
    device = resolve_device(spec)
    if device.type == "cuda" and world.distributed:
        device = torch.device("cuda", world.local_rank)
    return device


def train(source: Source, channels: tuple[Channel, ...], out: str, opts: TrainOptions,
          progress: TrainProgress | None = None,
          storage_options: dict[str, Any] | None = None) -> TrainResult:
    """Train a WLA on ``channels`` of ``source`` and write it to ``out`` (see the module doc).

    Run under ``torchrun`` (or :func:`era5latent.training.distributed.spawn`) it joins the
    process group the environment describes and trains data-parallel.
    """
    world = ddp_setup.world_from_env()
    opts.validate(world.size)
    device = _device(opts.device, world)
    ddp_setup.init(world, device)
    trainer = Trainer(source, channels, out, opts, world, device, storage_options)
    return trainer.run(progress)


class Trainer:
    def __init__(self, source: Source, channels: tuple[Channel, ...], out: str,
                 opts: TrainOptions, world: ddp_setup.World, device: torch.device,
                 storage_options: dict[str, Any] | None) -> None:
        self.source, self.out, self.opts, self.world, self.device = source, out, opts, world, device
        self.t_created = time.perf_counter()  # --max-time counts the set-up (statistics) too
        source.check_channels(channels)
        groups = group_channels(channels)
        if opts.group is not None:
            if opts.group not in groups:
                raise SubsetError(f"--group {opts.group!r}: the subset has groups "
                                  f"{', '.join(groups)}; pick one of them")
            groups = {opts.group: groups[opts.group]}
        self.groups = groups
        self.channels = tuple(c for chs in groups.values() for c in chs)
        self.precision = resolve_precision(opts.precision, device)
        t0, t1 = source.time_indices(opts.time_range)
        self.t0, self.t1 = t0, t1
        self.split = t0 + split_index(t1 - t0, opts.val_fraction)
        overrides = dict(opts.overrides)
        self.rate = rate_for(source.grid, channels, opts)
        if self.rate is not None:
            overrides.update(patch_stride=self.rate.patch_stride, code_bits=self.rate.code_bits)
            overrides.pop("windows", None)
        self.config = preset_config(opts.preset, source.grid, tuple(groups), **overrides)
        self.lr = opts.lr if opts.lr is not None else DEFAULT_LR[opts.preset]

        state: dict[str, Any] | None = None
        tensors: dict[str, Tensor] = {}
        if opts.resume and os.path.exists(out):  # nothing written yet: a fresh start
            (stats, mean_fields), state, tensors = self._resume_meta()
        else:
            stats, mean_fields = self._stats()
        self.stats = stats
        self.meta = CheckpointMeta(config=self.config, groups=groups, normalisation=stats,
                                   grid=grid_info(source.latitude, source.longitude),
                                   mean_fields=mean_fields)
        self._build(state, tensors)
        self._data(storage_options)

    # -- set-up ----------------------------------------------------------------------------

    def _stats(self) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
        """Rank 0 streams the statistics of the training period; every rank gets them."""
        err: Era5LatentError | None = None
        stats = None
        if self.world.is_main:
            try:
                stats = compute_stats(self.source, self.channels, self.t0, self.split,
                                      block=source_time_chunk(self.source),
                                      normalise=self.opts.normalise)
            except Era5LatentError as e:
                err = e
        err = ddp_setup.all_ranks_ok(self.world, err)
        if err is not None:
            raise err
        stats, fields = ddp_setup.broadcast_object(self.world, stats)
        return dict(stats), dict(fields)

    def _resume_meta(self) -> tuple[tuple[dict[str, dict[str, float]], dict[str, np.ndarray]],
                                    dict[str, Any], dict[str, Tensor]]:
        loaded = read_meta(self.out)
        same_groups = {g: list(c) for g, c in loaded.groups.items()} == {
            g: list(c) for g, c in self.groups.items()}
        if loaded.config != self.config or not same_groups:
            raise CheckpointError(f"cannot resume {self.out}: it was trained with another preset, "
                                  "grid or subset; use the same options, or train without --resume")
        state, tensors = load_state(self.out)
        want = self.opts.fingerprint()
        have = state.get("fingerprint", {})
        diff = sorted(k for k in want if k != "steps" and have.get(k) != want[k])
        if diff:
            raise CheckpointError(
                f"cannot resume {self.out}: it was trained with other {', '.join(diff)} "
                f"({', '.join(f'{k}={have.get(k)!r}' for k in diff)}); use the same options, or "
                "train without --resume")
        from safetensors.torch import load_file

        weights, mean_fields = split_mean_fields(load_file(self.out))
        tensors.update({f"ckpt.{k}": v for k, v in weights.items()})
        return (loaded.normalisation, mean_fields), state, tensors

    def _build(self, state: dict[str, Any] | None, tensors: dict[str, Tensor]) -> None:
        from torch.nn.parallel import DistributedDataParallel as DDP

        opts, dev = self.opts, self.device
        self.model = init_model(self.config, opts.seed).to(dev)
        self.gens = {g: torch.Generator().manual_seed(group_seed(opts.seed, g) + 1)
                     for g in self.groups}
        self.discs: dict[str, PatchDiscriminator] = {}
        for g, chs in self.groups.items():
            if opts.adversarial_weight > 0 and _adversarial_ok(chs):
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(group_seed(opts.seed, g) + 2)
                    self.discs[g] = discriminator_for(self.config).to(dev)
        self.optims = {g: _adamw(ae, self.lr, opts.weight_decay, (0.9, 0.99))
                       for g, ae in self.model.autoencoders.items()}
        self.d_optims = {g: _adamw(d, self.lr, 0.0, (0.5, 0.9)) for g, d in self.discs.items()}
        for ae in self.model.autoencoders.values():
            ae.set_checkpoint_activations(opts.checkpoint_activations)  # type: ignore[operator]
        self.ema: torch.optim.swa_utils.AveragedModel | None = None
        if opts.ema > 0:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(opts.ema))
        self.step0 = 0
        self.history: list[dict[str, Any]] = []
        if state is not None:
            self._restore(state, tensors)
        self.budget = self._budget(state)
        wrap: Callable[[nn.Module], nn.Module] = (
            (lambda m: DDP(m, device_ids=[dev.index] if dev.type == "cuda" else None))
            if self.world.distributed else (lambda m: m))
        self.ae_fwd = {g: wrap(ae) for g, ae in self.model.autoencoders.items()}
        self.d_fwd = {g: wrap(d) for g, d in self.discs.items()}

    def _data(self, storage_options: dict[str, Any] | None) -> None:
        opts, src = self.opts, self.source
        members = int(np.prod(src.sample_shape, dtype=np.int64))
        h, w = src.grid
        sample_bytes = len(self.channels) * h * w * 4
        block = source_time_chunk(src)
        mean, std = self.meta.channel_stats(self.channels)  # (C, 1, 1) | (C, H, W), (C, 1, 1)
        ref = SourceRef(src, storage_options)
        layout = Layout(self.t0, self.split - self.t0, members, block)
        if layout.n_samples < 1:
            raise OptionError(f"the training period of {src.path} holds no samples; widen --time "
                              "or lower --val-fraction")
        if opts.batch_size > layout.n_samples:  # (a batch repeating samples, or a huge one)
            raise OptionError(f"--batch-size {opts.batch_size} is more than the "
                              f"{layout.n_samples} training samples of {src.path}; expected at "
                              "most that many: lower --batch-size, widen --time or lower "
                              "--val-fraction")
        window = max(opts.batch_size, (opts.shuffle_mb << 20) // sample_bytes)
        self.schedule = Schedule(layout, opts.seed, opts.batch_size, window)
        # the whole training range if it fits (each loader process holds its own cache: small
        # data is then read once), else two shuffle windows: bounded whatever the range
        whole = layout.n_samples * sample_bytes
        budget = (opts.cache_mb << 20) // max(1, opts.workers)
        cache = whole if whole <= budget else 2 * self.schedule.blocks_per_window * block * \
            members * sample_bytes
        self.reader = BlockReader(ref, self.channels, layout, mean, std, cache)
        self.val_reader: BlockReader | None = None
        if self.split < self.t1:
            vlay = Layout(self.split, self.t1 - self.split, members, block)
            self.val_reader = BlockReader(ref, self.channels, vlay, mean, std,
                                          min(opts.cache_mb << 20, 256 << 20))
            n = vlay.n_samples
            self.val_ids = np.unique(np.linspace(0, n - 1, min(n, opts.val_samples)).round()
                                     .astype(np.int64))
        lat_w = latitude_weights(src.latitude).astype(np.float32)
        self.lat_w = torch.from_numpy(lat_w).to(self.device).view(1, 1, -1, 1)
        self.metas = {g: torch.tensor([c.meta for c in chs], dtype=torch.float32,
                                      device=self.device) for g, chs in self.groups.items()}
        self.gidx = {g: torch.tensor([self.channels.index(c) for c in chs])
                     for g, chs in self.groups.items()}
        std_by_code = {c.code: norm_scale(self.stats[c.code]) for c in self.channels}
        self.ch_w = {g: level_weights(chs, std_by_code, opts.level_weights).to(self.device)
                     for g, chs in self.groups.items()}

    def _batches(self) -> Generator[tuple[Tensor, Tensor], None, None]:
        R = self.schedule.run_batches
        first_run, skip = divmod(self.step0, R)
        stream = TrainStream(self.schedule, self.reader, self.world.rank, self.world.size,
                             first_run, math.ceil((self.opts.steps or MAX_RUN_STEPS) / R))
        return batches(stream, self.opts.workers, self.device.type == "cuda", skip)

    # -- one step --------------------------------------------------------------------------

    def _autocast(self) -> Any:
        return autocast(self.device, self.precision)

    def _subset(self, g: str) -> Tensor:
        """This step's channels of group ``g``: all or a random subset, in a random order."""
        n = len(self.groups[g])
        gen = self.gens[g]
        if n > 1 and torch.rand((), generator=gen).item() > self.opts.full_subset_prob:
            k = int(torch.randint(1, n + 1, (), generator=gen))
            return torch.randperm(n, generator=gen)[:k]
        return torch.randperm(n, generator=gen)

    def group_step(self, g: str, x: Tensor, step: int, lr: float,
                   valued: Tensor | None = None) -> dict[str, float]:
        """One optimiser step of group ``g``; ``valued`` (as ``x``, False at masked points)
        leaves masked points out of the reconstruction loss."""
        opts, cfg = self.opts, self.config
        perm = self._subset(g)
        xs = x[:, self.gidx[g][perm].to(x.device)]
        vmicro = valued[:, self.gidx[g][perm].to(x.device)].chunk(opts.grad_accum) \
            if valued is not None else None
        meta = self.metas[g][perm.to(self.device)]
        ch_w = self.ch_w[g][perm.to(self.device)]
        ae = self.model.autoencoders[g]
        fwd = self.ae_fwd[g]
        disc = self.discs.get(g)
        adv = disc is not None and step >= opts.disc_start
        ste_gain = 1.0 if opts.quantizer == "era5latent" else 1.0 / math.sqrt(cfg.code_bits)
        temperature = (cfg.entropy_temperature if opts.quantizer == "era5latent"
                       else cfg.entropy_temperature * cfg.code_bits / 2)
        for pg in self.optims[g].param_groups:
            pg["lr"] = lr
        micro = xs.chunk(opts.grad_accum)
        fakes: list[Tensor] = []
        logs: dict[str, float] = {}
        if disc is not None:
            disc.requires_grad_(False)
        for i, xm in enumerate(micro):
            with _no_sync(fwd, i + 1 < len(micro)):
                with self._autocast():
                    out = fwd(xm, meta, ste_gain)
                rec = reconstruction_loss(out.recon, xm, self.lat_w, ch_w,
                                          vmicro[i] if vmicro is not None else None)
                ent = bsq_entropy(out.u, opts.quantizer, temperature=temperature,
                                  w_sample=cfg.entropy_sample_weight,
                                  w_codebook=cfg.entropy_codebook_weight,
                                  codebook=opts.codebook_entropy)
                loss = rec + ent["bsq"]
                if adv:
                    assert disc is not None
                    with self._autocast():
                        logits = disc(out.recon, meta)
                    g_loss = hinge_g_loss(logits.float())
                    weight = adaptive_weight(rec, g_loss, _last_layer(ae), opts.adversarial_weight)
                    loss = loss + weight * g_loss
                    fakes.append(out.recon.detach())
                    _add(logs, f"{g}/g_loss", float(g_loss.detach()), len(micro))
                    _add(logs, f"{g}/d_weight", float(weight), len(micro))
                (loss / len(micro)).backward()
            _add(logs, f"{g}/rec", float(rec.detach()), len(micro))
            _add(logs, f"{g}/bsq", float(ent["bsq"].detach()), len(micro))
            _add(logs, f"{g}/entropy_sample", float(ent["entropy_sample"].detach()), len(micro))
            _add(logs, f"{g}/entropy_codebook", float(ent["entropy_codebook"].detach()), len(micro))
            _add(logs, f"{g}/loss", float(loss.detach()), len(micro))
        logs[f"{g}/grad_norm"] = float(torch.nn.utils.clip_grad_norm_(ae.parameters(), 1.0))
        self.optims[g].step()
        self.optims[g].zero_grad(set_to_none=True)
        if adv:
            assert disc is not None
            disc.requires_grad_(True)
            dfwd = self.d_fwd[g]
            for pg in self.d_optims[g].param_groups:
                pg["lr"] = lr
            for i, (xm, fake) in enumerate(zip(micro, fakes)):
                with _no_sync(dfwd, i + 1 < len(micro)):
                    with self._autocast():
                        logits = dfwd(torch.cat([xm, fake.to(xm.dtype)]), meta).float()
                    real_l, fake_l = logits.chunk(2)
                    d_loss = hinge_d_loss(real_l, fake_l)
                    (d_loss / len(micro)).backward()
                _add(logs, f"{g}/d_loss", float(d_loss.detach()), len(micro))
            torch.nn.utils.clip_grad_norm_(disc.parameters(), 1.0)
            self.d_optims[g].step()
            self.d_optims[g].zero_grad(set_to_none=True)
        return logs

    # -- validation ------------------------------------------------------------------------

    @torch.no_grad()
    def validate(self) -> tuple[float, dict[str, float]]:
        """Latitude-weighted MSE (z-units, mean over channels) and RMSE per channel in physical
        units, through the binary codes (what encode/decode will give), with the EMA weights
        when they are kept. Batches of the training micro-batch's size, so memory does not grow
        with the validation range."""
        assert self.val_reader is not None
        batch_size = max(1, self.opts.batch_size // (self.world.size * self.opts.grad_accum))
        model = cast(WLA, self.ema.module if self.ema is not None else self.model)
        model.eval()
        sq: dict[str, float] = {c.code: 0.0 for c in self.channels}
        n = 0
        for s in range(0, len(self.val_ids), batch_size):
            ids = self.val_ids[s:s + batch_size]
            x, valued = fill_masked(torch.from_numpy(self.val_reader.samples(ids)))
            x = x.to(self.device)
            for g, chs in self.groups.items():
                xs = x[:, self.gidx[g].to(self.device)]
                with self._autocast():
                    rec = model.decode(g, model.encode(g, xs, self.metas[g]), self.metas[g])
                e = (rec.float() - xs) ** 2 * self.lat_w
                if valued is None:
                    err = e.mean(dim=(2, 3)).sum(0)  # (C,)
                else:  # masked points left out: each sample's mean over its valued points
                    m = valued[:, self.gidx[g]].to(self.device, e.dtype)
                    err = ((e * m).sum(dim=(2, 3)) / m.sum(dim=(2, 3)).clamp(min=1.0)).sum(0)
                for c, e in zip(chs, err.tolist()):
                    sq[c.code] += e
            n += len(ids)
        model.train()
        mse = {k: v / max(n, 1) for k, v in sq.items()}
        rmse = {f"val_rmse/{k}": math.sqrt(v) * norm_scale(self.stats[k]) for k, v in mse.items()}
        return float(np.mean(list(mse.values()))), rmse

    # -- the run -----------------------------------------------------------------------------

    def _budget(self, state: dict[str, Any] | None) -> Budget:
        opts = self.opts
        max_time = opts.max_time if opts.max_time is not None else (
            DEFAULT_MAX_TIME_S if opts.steps is None else None)
        budget = Budget(steps=opts.steps, max_time=max_time, warmup_steps=opts.warmup_steps,
                        warmup_fraction=opts.warmup_fraction, patience=opts.patience,
                        min_delta=opts.min_delta, decay_fraction=opts.decay_fraction)
        budget.resume((state or {}).get("budget"))
        return budget

    def _decide(self, budget: Budget, done: int, elapsed: float, sps: float) -> None:
        """Rank 0 decides whether to decay or stop; every rank follows (one broadcast)."""
        if self.world.is_main:
            budget.decide(done, elapsed, sps)
        if self.world.distributed:
            budget.load(ddp_setup.broadcast_object(self.world, budget.state()))

    def run(self, progress: TrainProgress | None) -> TrainResult:
        opts, world = self.opts, self.world
        budget = self.budget
        if budget.stopped:  # a resumed run that had already stopped by patience
            return TrainResult(self.out, file_sha256(self.out), self.step0, float("nan"),
                               self.history[-1].get("val_mse") if self.history else None, 0.0,
                               self.history, stop_reason="finished")
        monitor = Monitor(opts.log_dir if world.is_main else None, opts.resume)
        if opts.resume:
            monitor.truncate(self.step0)
        t_start = time.perf_counter()
        loss_ema = float("nan")
        val_mse: float | None = self.history[-1].get("val_mse") if self.history else None
        it = self._batches()
        window_t, window_n = time.perf_counter(), 0
        sps = float("nan")
        self.model.train()
        step = saved_at = self.step0
        budget.step_done(step)  # a fixed run resumed at its end: nothing to do
        # rank 0's decisions (time, patience) reach the other ranks by a broadcast: every step
        # in one process, every few steps across processes
        decide_every = 1 if not world.distributed else max(1, min(opts.log_every,
                                                                  opts.val_every))
        try:
            while not budget.stopped and step < MAX_RUN_STEPS:
                x, _ = next(it)
                x, valued = fill_masked(x)  # on the host: masked points -> 0, no device sync
                x = x.to(self.device, non_blocking=True)
                if valued is not None:
                    valued = valued.to(self.device, non_blocking=True)
                lr = budget.lr(step, self.lr)
                logs: dict[str, float] = {}
                for g in self.groups:
                    logs.update(self.group_step(g, x, step, lr, valued))
                if self.ema is not None:
                    self.ema.update_parameters(self.model)
                loss = sum(v for k, v in logs.items() if k.endswith("/loss"))
                loss_ema = loss if math.isnan(loss_ema) else 0.9 * loss_ema + 0.1 * loss
                window_n += opts.batch_size
                step += 1
                now = time.perf_counter()
                elapsed = now - self.t_created
                per_step = (now - t_start) / (step - self.step0)
                periodic = step % opts.val_every == 0
                validate = world.is_main and self.val_reader is not None and periodic
                if validate:
                    val_mse, rmse = self.validate()
                    budget.validated(val_mse)
                    logs.update({"val_mse": val_mse, **rmse})
                budget.step_done(step)
                if step % decide_every == 0 or periodic:
                    self._decide(budget, step, elapsed, per_step)
                last = budget.stopped
                if last and not validate and world.is_main and self.val_reader is not None:
                    validate = True  # the run's last weights are always validated
                    val_mse, rmse = self.validate()
                    logs.update({"val_mse": val_mse, **rmse})
                if validate:
                    if opts.log_dir is not None:  # for the log only: one more encode pass
                        logs.update(self._usage_logs())
                    self.history.append({"step": step, "train_loss": loss_ema,
                                         "val_mse": val_mse})
                if step % opts.log_every == 0 or last or validate:
                    now = time.perf_counter()
                    sps = window_n / max(now - window_t, 1e-9)
                    window_t, window_n = now, 0
                    logs.update({"lr": lr, "samples_per_second": sps, "loss": loss})
                    monitor.log(step, logs)
                if progress is not None and world.is_main:
                    progress(step, budget.expected_total(step, elapsed, per_step), loss_ema)
                if step % opts.checkpoint_every == 0 or last:
                    if world.is_main:
                        self._save(step, loss_ema, val_mse, budget)
                    saved_at = step
                    ddp_setup.barrier(world)
        finally:
            it.close()  # stops the loader's workers now, not at garbage collection
            monitor.close()
        if saved_at != step:  # the step cap: never leave unsaved steps behind
            if world.is_main:
                self._save(step, loss_ema, val_mse, budget)
            ddp_setup.barrier(world)
        seconds = time.perf_counter() - t_start
        done = step - self.step0
        usage = self.code_usage() if world.is_main and self.val_reader is not None else {}
        return TrainResult(self.out, file_sha256(self.out), step, loss_ema, val_mse,
                           seconds, self.history,
                           done * opts.batch_size / seconds if seconds > 0 else float("nan"),
                           stop_reason=budget.stop_reason or "steps", code_usage=usage)

    # -- bit usage -----------------------------------------------------------------------------

    @torch.no_grad()
    def code_usage(self) -> dict[str, dict[str, float]]:
        """Per group, on the validation samples: the mean entropy per stored bit (each bit
        position's frequency of ones over the samples, ``evaluation.bitusage``), the fraction of
        bits that never change, and the raw bytes per value of the packed codes."""
        from era5latent.evaluation.bitusage import BitCounts

        assert self.val_reader is not None
        model = cast(WLA, self.ema.module if self.ema is not None else self.model)
        model.eval()
        counts = {g: BitCounts() for g in self.groups}
        packed: dict[str, list[np.ndarray]] = {g: [] for g in self.groups}
        batch_size = max(1, self.opts.batch_size // (self.world.size * self.opts.grad_accum))
        for s in range(0, len(self.val_ids), batch_size):
            x, _ = fill_masked(torch.from_numpy(self.val_reader.samples(
                self.val_ids[s:s + batch_size])))
            x = x.to(self.device)
            for g in self.groups:
                with self._autocast():
                    bits = model.encode(g, x[:, self.gidx[g].to(self.device)], self.metas[g])
                b = bits.cpu().numpy()
                counts[g].add_bits(b)
                packed[g].append(np.packbits(b, axis=-1))
        model.train()
        h, w = self.config.grid
        out: dict[str, dict[str, float]] = {}
        for g, chs in self.groups.items():
            codes = np.concatenate(packed[g])  # (N, h, w, K/8), in time order
            values = codes.shape[0] * len(chs) * h * w
            out[g] = {"entropy_per_bit": counts[g].entropy(),
                      "constant_bits": counts[g].constant_fraction(),
                      "raw_bytes_per_value": codes.size / values,
                      "bytes_per_value": zstd_bytes(codes, USAGE_TIME_CHUNK) / values,
                      "samples": counts[g].n}
        return out

    def _usage_logs(self) -> dict[str, float]:
        return {f"{g}/{k}": v for g, u in self.code_usage().items()
                for k, v in u.items() if k in ("entropy_per_bit", "constant_bits")}

    # -- checkpoints -------------------------------------------------------------------------

    def _save(self, step: int, loss: float, val_mse: float | None, budget: Budget) -> None:
        opts, src = self.opts, self.source
        self.meta.training = {
            "data": os.path.abspath(src.path) if "://" not in src.path else src.path,
            "train_time_range": _range(src, self.t0, self.split),
            "val_time_range": _range(src, self.split, self.t1) if self.split < self.t1 else None,
            "steps": step, "batch_size": opts.batch_size, "lr": self.lr, "seed": opts.seed,
            "train_loss": loss, "val_mse": val_mse, "device": str(self.device),
            "world_size": self.world.size, "package_version": __version__,
            "normalise": opts.normalise, "codebook_entropy": opts.codebook_entropy,
            "stop_reason": budget.stop_reason, "budget": budget.state(),
            "rate": self.rate.to_dict() if self.rate is not None else None,
            "mean_field_channels": sorted(self.meta.mean_fields),
            "objective": {"level_weights": opts.level_weights, "quantizer": opts.quantizer,
                          "adversarial_weight": opts.adversarial_weight,
                          "disc_start": opts.disc_start, "ema": opts.ema},
            "weights": "ema" if self.ema is not None else "raw",
        }
        saved = self.ema.module if self.ema is not None else self.model
        save_checkpoint(saved, self.meta, self.out)  # type: ignore[arg-type]
        tensors: dict[str, Tensor] = {}
        if self.ema is not None:
            tensors.update({f"raw.{k}": v for k, v in self.model.state_dict().items()})
            tensors["ema.n_averaged"] = self.ema.n_averaged.detach().cpu()
        groups_meta: dict[str, Any] = {}
        for g in self.groups:
            tensors[f"rng.{g}"] = self.gens[g].get_state()
            groups_meta[g] = {"optim": flatten_optimizer(f"optim.{g}", self.optims[g], tensors)}
            if g in self.discs:
                tensors.update({f"disc.{g}.{k}": v for k, v in self.discs[g].state_dict().items()})
                groups_meta[g]["disc_optim"] = flatten_optimizer(f"doptim.{g}", self.d_optims[g],
                                                                 tensors)
        save_state(self.out, {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                   {"step": step, "history": self.history, "groups": groups_meta,
                    "fingerprint": opts.fingerprint(), "budget": budget.state()})
        if opts.log_dir is not None:  # every checkpoint stays scoreable ('evaluate --model')
            _keep(self.out, os.path.join(opts.log_dir, "checkpoints", f"step{step:07d}.safetensors"))
        faults.point("train.checkpoint-written")

    def _restore(self, state: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        dev = self.device
        ckpt = {k[5:]: v for k, v in tensors.items() if k.startswith("ckpt.")}
        raw = {k[4:]: v for k, v in tensors.items() if k.startswith("raw.")}
        if self.ema is not None:
            if not raw:
                raise CheckpointError(f"cannot resume {self.out} with --ema: it was trained "
                                      "without; use the same options")
            self.model.load_state_dict(raw)
            self.ema.module.load_state_dict(ckpt)
            self.ema.n_averaged.copy_(tensors["ema.n_averaged"].to(dev))
        else:
            self.model.load_state_dict(ckpt)
        for g in self.groups:
            gm = state["groups"][g]
            restore_optimizer(f"optim.{g}", self.optims[g], gm["optim"], tensors)
            self.gens[g].set_state(tensors[f"rng.{g}"])
            if g in self.discs:
                self.discs[g].load_state_dict({k[len(f"disc.{g}."):]: v for k, v in tensors.items()
                                               if k.startswith(f"disc.{g}.")})
                restore_optimizer(f"doptim.{g}", self.d_optims[g], gm["disc_optim"], tensors)
        self.step0 = int(state["step"])
        self.history = list(state.get("history", []))


def _adamw(module: nn.Module, lr: float, weight_decay: float,
           betas: tuple[float, float]) -> torch.optim.AdamW:
    decay = [p for p in module.parameters() if p.ndim >= 2]
    no_decay = [p for p in module.parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas)


def _last_layer(ae: nn.Module) -> Tensor:
    """The decoder's last learned layer: the PVUM head that generates the output 1x1 conv."""
    return ae.decoder.pvum.weight_head.weight  # type: ignore[union-attr,return-value]


def _no_sync(module: nn.Module, skip_sync: bool) -> Any:
    """DDP's no_sync for all but the last accumulation step (nothing to do in one process)."""
    if skip_sync and isinstance(module, nn.parallel.DistributedDataParallel):
        return module.no_sync()
    return contextlib.nullcontext()


def _add(logs: dict[str, float], key: str, value: float, n: int) -> None:
    logs[key] = logs.get(key, 0.0) + value / n


def _range(source: Source, a: int, b: int) -> list[str]:
    return [iso(source.times[a]), iso(source.times[b - 1])]


def _keep(path: str, dst: str) -> None:
    """A snapshot of the just-written checkpoint (a hard link where the filesystem allows)."""
    import shutil

    os.makedirs(os.path.dirname(dst), exist_ok=True)
    tmp = dst + ".tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        os.link(path, tmp)
    except OSError:
        shutil.copyfile(path, tmp)
    os.replace(tmp, dst)
