"""The ``encode`` and ``decode`` commands: ERA5 fields into a latent store and back
(:mod:`era5latent.pipeline`, on a Dask cluster :mod:`era5latent.pipeline.distributed`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from era5latent.cli.common import (BatchSize, Bar, ChunksPerTask, Device, Precision, Scheduler,
                                   Step, Subset, TimeAxis, TimeRange, Workers, cluster_bar,
                                   command, echo, note_leftovers)
from era5latent.errors import OptionError


@command("encode")
def encode_cmd(
    data: Annotated[str, typer.Argument(help="ERA5 source: Zarr, NetCDF or GRIB (path or URL).")],
    model: Annotated[Path, typer.Option(help="Checkpoint from 'era5latent train'.")],
    subset: Subset,
    out: Annotated[str, typer.Option(help="Output latent store (Zarr v3).")],
    time: TimeRange = None,
    time_axis: TimeAxis = "valid",
    step: Step = None,
    batch_size: BatchSize = 8,
    time_chunk: Annotated[Optional[int], typer.Option(
        min=1, show_default=False,
        help="Time steps per store chunk (default: 32, fewer when 32 steps of the source's "
             "fields would exceed 512 MiB; a resumed store keeps its own).")] = None,
    device: Device = "auto",
    precision: Precision = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start over instead of resuming.")] = False,
    break_lock: Annotated[bool, typer.Option(
        "--break-lock", help="Clear the store's lock although its writer may be alive.")] = False,
    parts: Annotated[Optional[str], typer.Option(
        help="Encode only part I of N (I/N, 1-based: the I-th contiguous share of the time "
             "chunks) and leave the store unfinished; parts may run at once, from separate "
             "processes or batch jobs. Finish with 'era5latent finalize' (or encode without "
             "--parts).", metavar="I/N", show_default=False)] = None,
    max_error: Annotated[Optional[str], typer.Option(
        help="Add an error-bounded residual layer: decoded values within this bound of the "
             "source. Per channel in its units (z500=5,t850=0.1K) or in % of its training std "
             "(*=1%); others get none. docs/residuals.md", metavar="SPEC", show_default=False)] = None,
    residual_codec: Annotated[str, typer.Option(
        help="Error-bounded codec of the residual layer: sz3 (pysz) or zfp (fixed-accuracy, "
             "zfpy).")] = "sz3",
    scheduler: Scheduler = None,
    workers: Workers = None,
    chunks_per_task: ChunksPerTask = 0,
    allow_unseen_levels: Annotated[bool, typer.Option(
        "--allow-unseen-levels", help="Encode pressure levels the model's group was not trained "
        "on (out of distribution, with a warning; normalised with statistics of the source, "
        "recorded in the store). Not with --scheduler/--workers.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Encode ERA5 fields into a latent store (re-run the same command to resume)."""
    import dataclasses
    import json

    from era5latent.model.checkpoint import load_checkpoint
    from era5latent.pipeline import encode
    from era5latent.io.sources import open_source
    from era5latent.store.spec import parse_part
    from era5latent.io.variables import parse_subset

    channels = parse_subset(subset)
    part = parse_part(parts) if parts is not None else None
    source = open_source(data, time_axis=time_axis, step=step)
    loaded = load_checkpoint(str(model))
    if allow_unseen_levels:
        if scheduler is not None or workers is not None:
            raise OptionError("--allow-unseen-levels with --scheduler/--workers: the workers "
                              "load the checkpoint as trained; encode unseen levels locally")
        from era5latent.pipeline.unseen import allow_unseen_levels as allow

        for warning in allow(source, loaded, channels, time):
            sys.stderr.write(f"warning: {warning}\n")
    with Bar("encode", "samples") as bar:
        if scheduler is not None or workers is not None:
            from era5latent.pipeline.distributed import encode_distributed

            res = encode_distributed(
                source, loaded, channels, out, time_range=time, batch_size=batch_size,
                device=device, overwrite=overwrite, time_chunk=time_chunk, precision=precision,
                break_lock=break_lock, part=part, scheduler=scheduler, workers=workers,
                chunks_per_task=chunks_per_task, progress=cluster_bar(bar),
                max_error=max_error, residual_codec=residual_codec)
        else:
            res = encode(source, loaded, channels, out, time_range=time, batch_size=batch_size,
                         device=device, overwrite=overwrite, time_chunk=time_chunk,
                         precision=precision, break_lock=break_lock, progress=bar.update,
                         part=part, max_error=max_error, residual_codec=residual_codec)
    if json_out:
        print(json.dumps(dataclasses.asdict(res)))
        return
    how = f"resumed, {res.chunks_skipped} chunk(s) already done; " if res.resumed else ""
    groups = "; ".join(g + "=" + ",".join(c) for g, c in res.groups.items())
    what = f"part {part[0]}/{part[1]} of {out}" if part else str(out)
    note_leftovers(out)
    echo(f"wrote {what}: {res.times} times, groups {groups} ({how}"
          f"{res.samples} samples in {res.seconds:.1f} s, {res.samples_per_second:.1f} samples/s)")
    if part:
        from era5latent.store.core import open_latent_store

        store = open_latent_store(out)
        if not store.complete:
            done = store.done()
            echo(f"{out}: {int(done.sum())} of {done.size} time chunks written; when every part "
                  f"is done, run 'era5latent finalize {out}'")


@command("decode")
def decode_cmd(
    latent: Annotated[str, typer.Argument(help="Latent store from 'era5latent encode'.")],
    model: Annotated[Path, typer.Option(help="The checkpoint the store was made with.")],
    out: Annotated[str, typer.Option(help="Output: Zarr (.zarr) or NetCDF (.nc).")],
    subset: Annotated[Optional[str], typer.Option(help="Decode only these channels.")] = None,
    time: TimeRange = None,
    batch_size: BatchSize = 8,
    device: Device = "auto",
    precision: Precision = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    allow_corrupt: Annotated[bool, typer.Option(
        "--allow-corrupt", help="Fill time chunks that fail their checksum with NaN (and say "
        "where) instead of refusing the store.")] = False,
    no_residual: Annotated[bool, typer.Option(
        "--no-residual", help="Ignore the store's residual layer: the WLA's reconstruction "
        "alone (no error bound).")] = False,
    scheduler: Scheduler = None,
    workers: Workers = None,
    chunks_per_task: ChunksPerTask = 0,
    zarr_format: Annotated[int, typer.Option(
        "--zarr-format", min=2, max=3, help="Zarr version of a .zarr output: 3, or 2 as "
        "WeatherBench 2's own stores (no crc32c checksums; docs/format.md).")] = 3,
) -> None:
    """Decode a latent store back into ERA5 fields (WeatherBench 2 layout, source names/units)."""
    from era5latent.model.checkpoint import load_checkpoint
    from era5latent.pipeline import decode
    from era5latent.io.variables import parse_subset

    channels = parse_subset(subset) if subset else None
    loaded = load_checkpoint(str(model))
    with Bar("decode", "samples") as bar:
        if scheduler is not None or workers is not None:
            from era5latent.pipeline.distributed import decode_distributed

            res = decode_distributed(
                latent, loaded, out, subset=channels, time_range=time, batch_size=batch_size,
                device=device, overwrite=overwrite, precision=precision,
                allow_corrupt=allow_corrupt, scheduler=scheduler, workers=workers,
                chunks_per_task=chunks_per_task, progress=cluster_bar(bar),
                zarr_format=zarr_format, residual=not no_residual)
        else:
            res = decode(latent, loaded, out, subset=channels, time_range=time,
                         batch_size=batch_size, device=device, overwrite=overwrite,
                         precision=precision, allow_corrupt=allow_corrupt, progress=bar.update,
                         zarr_format=zarr_format, residual=not no_residual)
    for where in res.corrupt:
        sys.stderr.write(f"warning: damaged {where}, used as it is\n" if where.startswith(
            "metadata") else f"warning: corrupt chunk filled with NaN: {where}\n")
    note_leftovers(out)
    echo(f"wrote {out}: {', '.join(res.variables)} ({','.join(res.channels)}), {res.times} times "
          f"in {res.seconds:.1f} s")
