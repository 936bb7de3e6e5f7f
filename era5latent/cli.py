"""The command-line interface: a thin Typer layer over the library.

Each command parses its options, calls one library function and prints the result. Library
errors (:class:`era5latent.errors.Era5LatentError`) become one line on stderr and exit code 2;
anything else is a bug and keeps its traceback (exit code 1). Heavy imports (torch, xarray, zarr)
happen inside the commands so that ``--help`` stays fast.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer

from era5latent.errors import Era5LatentError

app = typer.Typer(
    name="era5latent",
    help="Turn ERA5 into compact binary latent codes with a Weather Latent Autoencoder, and back.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _fail(err: Era5LatentError) -> None:
    sys.stderr.write(f"error: {err}\n")
    raise SystemExit(err.exit_code)


def command(*args: object, **kwargs: object) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """``app.command`` that maps library errors to one stderr line and their exit code."""

    def wrap(fn: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(fn)
        def guarded(*a: object, **kw: object) -> None:
            try:
                fn(*a, **kw)
            except Era5LatentError as err:
                _fail(err)

        app.command(*args, **kwargs)(guarded)  # type: ignore[arg-type]
        return guarded

    return wrap


class _Bar:
    """A rich progress bar on stderr (silent when stderr is not a terminal)."""

    def __init__(self, description: str, unit: str) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.unit = unit
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=Console(stderr=True), disable=not sys.stderr.isatty(), transient=False)
        self.task = self.progress.add_task(description, total=None, rate="")
        self.t0 = 0.0
        self.first = 0

    def __enter__(self) -> _Bar:
        import time

        self.progress.start()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, done: int, total: int, extra: str = "") -> None:
        import time

        if not self.first and done:
            self.first = done
        dt = time.perf_counter() - self.t0
        rate = f"{(done - self.first) / dt:.1f} {self.unit}/s" if dt > 0 and done > self.first else ""
        self.progress.update(self.task, completed=done, total=total,
                             rate=" ".join(x for x in (rate, extra) if x))


def _echo(text: str) -> None:
    from rich.console import Console

    Console(highlight=False).print(text)


Subset = Annotated[str, typer.Option("--subset", "-s", help="Channels, e.g. 'z500,t850,t2m' "
                                     "(also 2t, 10u, geopotential:500).")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
BatchSize = Annotated[int, typer.Option(min=1, help="Samples per model batch.")]
TimeRange = Annotated[Optional[str], typer.Option(
    "--time", help="Inclusive ISO range START/END; either side may be empty.")]


@command("sample")
def sample_cmd(
    out: Annotated[Path, typer.Argument(help="Output Zarr store (WeatherBench 2 layout).")],
    grid: Annotated[str, typer.Option(help="NLATxNLON, both poles included.")] = "73x144",
    times: Annotated[int, typer.Option(min=1, help="Number of time steps.")] = 64,
    start: Annotated[str, typer.Option(help="First time (ISO).")] = "2020-01-01T00",
    freq: Annotated[str, typer.Option(help="Time step (pandas frequency, e.g. 6h, 1h).")] = "6h",
    variables: Annotated[str, typer.Option(help="Comma-separated short names.")] =
        "z,t,u,v,q,t2m,u10,v10,msl",
    levels: Annotated[str, typer.Option(help="Comma-separated pressure levels (hPa).")] =
        "50,100,150,200,250,300,400,500,600,700,850,925,1000",
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes).")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
) -> None:
    """Write ERA5-like sample data (calibrated against real ERA5) in WeatherBench 2 layout."""
    from era5latent.errors import OptionError, StoreExistsError
    from era5latent.sample import parse_grid, write_sample

    if out.exists() and not overwrite:
        raise StoreExistsError(f"{out} already exists; pass --overwrite to replace it")
    try:
        levs = tuple(int(x) for x in levels.split(",") if x.strip())
    except ValueError:
        raise OptionError(f"--levels {levels!r}: expected comma-separated integers (hPa)") from None
    vars_ = tuple(v.strip() for v in variables.split(",") if v.strip())
    ds = write_sample(str(out), grid=parse_grid(grid), times=times, start=start, freq=freq,
                      variables=vars_, levels=levs, seed=seed)
    _echo(f"wrote {out}: {len(ds.data_vars)} variables, {ds.sizes['time']} times, grid "
          f"{ds.sizes['latitude']}x{ds.sizes['longitude']}")


@command("train")
def train_cmd(
    data: Annotated[str, typer.Argument(help="ERA5 source: Zarr, NetCDF or GRIB (path or URL).")],
    subset: Subset,
    out: Annotated[Path, typer.Option(help="Output checkpoint (.safetensors).")],
    preset: Annotated[str, typer.Option(help="Model size: tiny, small or paper.")] = "tiny",
    steps: Annotated[int, typer.Option(min=1, help="Optimiser steps.")] = 300,
    batch_size: BatchSize = 8,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (preset default).")] = None,
    device: Device = "auto",
    time: TimeRange = None,
    val_fraction: Annotated[float, typer.Option(help="Last fraction of times held out.")] = 0.1,
    checkpoint_every: Annotated[int, typer.Option(min=1, help="Steps between checkpoints.")] = 100,
    patch_stride: Annotated[Optional[int], typer.Option(
        min=1, help="Override the preset's patch stride (tokens = grid / stride).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue training OUT from its last checkpoint.")] = False,
) -> None:
    """Train a Weather Latent Autoencoder on an ERA5 source."""
    from era5latent.sources import open_source
    from era5latent.train import TrainOptions, train
    from era5latent.variables import parse_subset

    channels = parse_subset(subset)
    source = open_source(data)
    overrides = {"patch_stride": patch_stride} if patch_stride else {}
    opts = TrainOptions(preset=preset, steps=steps, batch_size=batch_size, lr=lr, device=device,
                        time_range=time, val_fraction=val_fraction, resume=resume, seed=seed,
                        checkpoint_every=checkpoint_every, overrides=overrides)
    with _Bar("train", "steps") as bar:
        res = train(source, channels, str(out), opts,
                    progress=lambda s, n, loss: bar.update(s, n, f"loss {loss:.4f}"))
    val = f", validation MSE {res.val_mse:.4f} (z-units; predicting the mean scores ~1)" \
        if res.val_mse is not None else ""
    _echo(f"wrote {out} (sha256 {res.sha256[:12]}): {res.steps} steps in {res.seconds:.1f} s, "
          f"train loss {res.train_loss:.4f}{val}")


@command("encode")
def encode_cmd(
    data: Annotated[str, typer.Argument(help="ERA5 source: Zarr, NetCDF or GRIB (path or URL).")],
    model: Annotated[Path, typer.Option(help="Checkpoint from 'era5latent train'.")],
    subset: Subset,
    out: Annotated[str, typer.Option(help="Output latent store (Zarr v3).")],
    time: TimeRange = None,
    batch_size: BatchSize = 8,
    time_chunk: Annotated[int, typer.Option(min=1, help="Time steps per store chunk.")] = 8,
    device: Device = "auto",
    overwrite: Annotated[bool, typer.Option(help="Start over instead of resuming.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Encode ERA5 fields into a latent store (re-run the same command to resume)."""
    import dataclasses
    import json

    from era5latent.model.checkpoint import load_checkpoint
    from era5latent.pipeline import encode
    from era5latent.sources import open_source
    from era5latent.variables import parse_subset

    channels = parse_subset(subset)
    source = open_source(data)
    loaded = load_checkpoint(str(model))
    with _Bar("encode", "samples") as bar:
        res = encode(source, loaded, channels, out, time_range=time, batch_size=batch_size,
                     device=device, overwrite=overwrite, time_chunk=time_chunk, progress=bar.update)
    if json_out:
        print(json.dumps(dataclasses.asdict(res)))
        return
    how = f"resumed, {res.chunks_skipped} chunk(s) already done; " if res.resumed else ""
    groups = "; ".join(g + "=" + ",".join(c) for g, c in res.groups.items())
    _echo(f"wrote {out}: {res.times} times, groups {groups} ({how}"
          f"{res.samples} samples in {res.seconds:.1f} s, {res.samples_per_second:.1f} samples/s)")


@command("decode")
def decode_cmd(
    latent: Annotated[str, typer.Argument(help="Latent store from 'era5latent encode'.")],
    model: Annotated[Path, typer.Option(help="The checkpoint the store was made with.")],
    out: Annotated[str, typer.Option(help="Output: Zarr (.zarr) or NetCDF (.nc).")],
    subset: Annotated[Optional[str], typer.Option(help="Decode only these channels.")] = None,
    time: TimeRange = None,
    batch_size: BatchSize = 8,
    device: Device = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
) -> None:
    """Decode a latent store back into ERA5 fields (WeatherBench 2 layout, source names/units)."""
    from era5latent.model.checkpoint import load_checkpoint
    from era5latent.pipeline import decode
    from era5latent.variables import parse_subset

    channels = parse_subset(subset) if subset else None
    loaded = load_checkpoint(str(model))
    with _Bar("decode", "samples") as bar:
        res = decode(latent, loaded, out, subset=channels, time_range=time, batch_size=batch_size,
                     device=device, overwrite=overwrite, progress=bar.update)
    _echo(f"wrote {out}: {', '.join(res.variables)} ({','.join(res.channels)}), {res.times} times "
          f"in {res.seconds:.1f} s")


@command("info")
def info_cmd(
    store: Annotated[str, typer.Argument(help="Latent store.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Show a latent store: groups, channels, times, bytes, compression, build progress."""
    import json

    from era5latent.store import summary

    info = summary(store)
    if json_out:
        print(json.dumps(info, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    status = "complete" if info["complete"] else (
        f"UNFINISHED: {info['chunks_done']} of {info['chunks_total']} time chunks written")
    tr = info["time_range"]
    lines = [f"{info['path']}  ({info['format']} v{info['format_version']}, {status})",
             f"times: {info['times']} ({tr[0]} .. {tr[1]})" if tr else "times: 0",
             f"grid: {info['grid'][0]}x{info['grid'][1]}"
             + "".join(f", {d}: {n}" for d, n in info["sample_dims"].items()),
             f"model: {info['model_preset']} sha256 {info['model_sha256'][:16]}",
             f"source: {info['source']}"]
    table = Table("group", "channels", "tokens", "bits", "on disk", "float32", "ratio")
    for g in info["groups"]:
        table.add_row(g["group"], ",".join(g["channels"]), "x".join(map(str, g["token_grid"])),
                      str(g["code_bits"]), _size(g["bytes_on_disk"]), _size(g["float32_bytes"]),
                      f"{g['compression_ratio']:.1f}x" if g["compression_ratio"] else "-")
    ratio = info["compression_ratio"]
    table.add_row("total", "", "", "", _size(info["bytes_on_disk"]), _size(info["float32_bytes"]),
                  f"{ratio:.1f}x" if ratio else "-")
    con = Console(highlight=False)
    for line in lines:
        con.print(line)
    con.print(table)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


# --- build-embed-map (owned by the embed-map work; edit only inside this section) ---
# --- end build-embed-map ---


def main() -> None:
    """Console-script entry point: library errors -> one line and exit 2, no traceback."""
    try:
        app()
    except Era5LatentError as err:  # raised outside a command body (e.g. in a callback)
        _fail(err)


if __name__ == "__main__":
    main()
