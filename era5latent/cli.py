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

from era5latent.errors import Era5LatentError, OptionError
from era5latent.malloc import tune_malloc

app = typer.Typer(
    name="era5latent",
    help="Turn ERA5 into compact binary latent codes with a Weather Latent Autoencoder, and back.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _fail(err: Era5LatentError) -> None:
    import os

    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank fails alike: say it once
        sys.stderr.write(f"error: {err}\n")
    raise SystemExit(err.exit_code)


def command(*args: object, **kwargs: object) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """``app.command`` that maps library errors to one stderr line and their exit code."""

    def wrap(fn: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(fn)
        def guarded(*a: object, **kw: object) -> None:
            tune_malloc()  # this process is ours: keep the model's freed buffers for reuse
            try:
                fn(*a, **kw)
            except Era5LatentError as err:
                _fail(err)

        app.command(*args, **kwargs)(guarded)  # type: ignore[arg-type]
        return guarded

    return wrap


#: set by the global ``--quiet``: no progress output at all
_QUIET = False
#: seconds between one-line progress records when stderr is not a terminal
PROGRESS_EVERY_S = 30.0


class _Bar:
    """Progress on stderr: a rich bar on a terminal; elsewhere (scripts, batch jobs) a one-line
    record every ``PROGRESS_EVERY_S`` seconds and at the end (percentage, rate, ETA); nothing
    under ``--quiet``."""

    def __init__(self, description: str, unit: str, enabled: bool = True) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.description = description
        self.unit = unit
        self.tty = sys.stderr.isatty()
        self.lines = enabled and not self.tty and not _QUIET  # not enabled: another rank's
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=Console(stderr=True), disable=not (enabled and self.tty) or _QUIET,
            transient=False)
        self.task = self.progress.add_task(description, total=None, rate="")
        self.t0 = 0.0
        self.first: int | None = None
        self.last_line = 0.0
        self.state = (0, 0, "")

    def __enter__(self) -> _Bar:
        import time

        self.progress.start()
        self.t0 = self.last_line = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()
        if self.lines and exc[0] is None and self.state[1]:
            self._line(*self.state)

    def rate(self, done: int) -> float:
        """Units per second since the first update."""
        import time

        dt = time.perf_counter() - self.t0
        first = self.first or 0
        return (done - first) / dt if dt > 0 and done > first else 0.0

    def _line(self, done: int, total: int, extra: str) -> None:
        rate = self.rate(done)
        eta = f", ETA {_hms((total - done) / rate)}" if rate > 0 and done < total else ""
        pct = 100.0 * done / total if total else 100.0
        sys.stderr.write(f"{self.description}: {pct:.1f}% ({done}/{total} {self.unit}), "
                         f"{rate:.1f} {self.unit}/s{eta}" + (f", {extra}" if extra else "") + "\n")
        sys.stderr.flush()

    def update(self, done: int, total: int, extra: str = "") -> None:
        import time

        if self.first is None:
            self.first = done  # what a resumed run had already done is not this run's rate
        self.state = (done, total, extra)
        if self.lines:
            now = time.perf_counter()
            if now - self.last_line >= PROGRESS_EVERY_S:
                self.last_line = now
                self._line(done, total, extra)
            return
        rate = self.rate(done)
        text = f"{rate:.1f} {self.unit}/s" if rate > 0 else ""
        self.progress.update(self.task, completed=done, total=total,
                             rate=" ".join(x for x in (text, extra) if x))


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("era5latent")
        except PackageNotFoundError:
            from era5latent import __version__ as v
        print(f"era5latent {v}")
        raise typer.Exit()


@app.callback()
def _global_options(
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No progress output (bars or progress lines) from any command.")] = False,
) -> None:
    """Turn ERA5 into compact binary latent codes with a Weather Latent Autoencoder, and back."""
    global _QUIET
    _QUIET = quiet


def _echo(text: str) -> None:
    from rich.console import Console

    Console(highlight=False).print(text)


def _note_leftovers(out: object) -> None:
    """After a successful run: name what killed runs left beside the output (on stderr)."""
    from era5latent.fsutil import leftovers

    found = leftovers(str(out))
    if found:
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        sys.stderr.write(f"note: {shown} beside {out} were left by earlier runs that were "
                         "killed; delete them once no era5latent run writes there\n")


Subset = Annotated[str, typer.Option("--subset", "-s", help="Channels, e.g. 'z500,t850,t2m' "
                                     "(also t_850, temperature_850, 2t, 130:850; docs/variables.md).")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
BatchSize = Annotated[int, typer.Option(min=1, help="Samples per model batch.")]
Precision = Annotated[str, typer.Option(
    help="Model arithmetic: auto (bf16 on CUDA, fp32 on CPU), fp32, bf16 or fp16.")]
TimeRange = Annotated[Optional[str], typer.Option(
    "--time", help="Inclusive ISO range START/END; either side may be empty.")]
Scheduler = Annotated[Optional[str], typer.Option(
    help="Run on this dask.distributed cluster: scheduler address (tcp://HOST:8786) or scheduler "
         "file (*.json). Paths must be readable on every worker.", show_default=False)]
Workers = Annotated[Optional[int], typer.Option(
    min=1, help="Run on a local Dask cluster of N worker processes started here (one worker per "
                "GPU, at most N, when dask-cuda and GPUs are present).", show_default=False)]
TimeAxis = Annotated[str, typer.Option(
    help="Source time axis: valid (reference time + forecast step; a GRIB of several steps "
         "becomes one axis of valid times) or reference (then pick one --step).")]
Step = Annotated[Optional[str], typer.Option(
    help="Use only this forecast step of the source (6, 6h, 90min, PT6H).", show_default=False)]
ChunksPerTask = Annotated[int, typer.Option(
    min=0, help="With --scheduler/--workers: time chunks per Dask task (0: about 4 tasks per "
                "worker).")]


def _cluster_bar(bar: _Bar) -> Callable[[int, int, int, int], None]:
    """Progress of a Dask run: samples (and samples/s across the cluster) and tasks done."""
    return lambda done, total, k, n: bar.update(done, total, f"{k}/{n} tasks" if n else "")


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
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
) -> None:
    """Write ERA5-like sample data (calibrated against real ERA5) in WeatherBench 2 layout."""
    from era5latent.errors import OptionError
    from era5latent.sample import parse_grid, write_sample

    try:
        levs = tuple(int(x) for x in levels.split(",") if x.strip())
    except ValueError:
        raise OptionError(f"--levels {levels!r}: expected comma-separated integers (hPa)") from None
    vars_ = tuple(v.strip() for v in variables.split(",") if v.strip())
    ds = write_sample(str(out), grid=parse_grid(grid), times=times, start=start, freq=freq,
                      variables=vars_, levels=levs, seed=seed, overwrite=overwrite)
    _echo(f"wrote {out}: {len(ds.data_vars)} variables, {ds.sizes['time']} times, grid "
          f"{ds.sizes['latitude']}x{ds.sizes['longitude']}")


# train and combine live in cli_train.py; imported here so that they are listed in this order
from era5latent import cli_train as _cli_train  # noqa: E402,F401  (registers its commands)


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
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Encode ERA5 fields into a latent store (re-run the same command to resume)."""
    import dataclasses
    import json

    from era5latent.model.checkpoint import load_checkpoint
    from era5latent.pipeline import encode
    from era5latent.sources import open_source
    from era5latent.store import parse_part
    from era5latent.variables import parse_subset

    channels = parse_subset(subset)
    part = parse_part(parts) if parts is not None else None
    source = open_source(data, time_axis=time_axis, step=step)
    loaded = load_checkpoint(str(model))
    with _Bar("encode", "samples") as bar:
        if scheduler is not None or workers is not None:
            from era5latent.distributed import encode_distributed

            res = encode_distributed(
                source, loaded, channels, out, time_range=time, batch_size=batch_size,
                device=device, overwrite=overwrite, time_chunk=time_chunk, precision=precision,
                break_lock=break_lock, part=part, scheduler=scheduler, workers=workers,
                chunks_per_task=chunks_per_task, progress=_cluster_bar(bar),
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
    _note_leftovers(out)
    _echo(f"wrote {what}: {res.times} times, groups {groups} ({how}"
          f"{res.samples} samples in {res.seconds:.1f} s, {res.samples_per_second:.1f} samples/s)")
    if part:
        from era5latent.store import open_latent_store

        store = open_latent_store(out)
        if not store.complete:
            done = store.done()
            _echo(f"{out}: {int(done.sum())} of {done.size} time chunks written; when every part "
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
) -> None:
    """Decode a latent store back into ERA5 fields (WeatherBench 2 layout, source names/units)."""
    from era5latent.model.checkpoint import load_checkpoint
    from era5latent.pipeline import decode
    from era5latent.variables import parse_subset

    channels = parse_subset(subset) if subset else None
    loaded = load_checkpoint(str(model))
    with _Bar("decode", "samples") as bar:
        if scheduler is not None or workers is not None:
            from era5latent.distributed import decode_distributed

            res = decode_distributed(
                latent, loaded, out, subset=channels, time_range=time, batch_size=batch_size,
                device=device, overwrite=overwrite, precision=precision,
                allow_corrupt=allow_corrupt, scheduler=scheduler, workers=workers,
                chunks_per_task=chunks_per_task, progress=_cluster_bar(bar),
                residual=not no_residual)
        else:
            res = decode(latent, loaded, out, subset=channels, time_range=time,
                         batch_size=batch_size, device=device, overwrite=overwrite,
                         precision=precision, allow_corrupt=allow_corrupt, progress=bar.update,
                         residual=not no_residual)
    for where in res.corrupt:
        sys.stderr.write(f"warning: damaged {where}, used as it is\n" if where.startswith(
            "metadata") else f"warning: corrupt chunk filled with NaN: {where}\n")
    _note_leftovers(out)
    _echo(f"wrote {out}: {', '.join(res.variables)} ({','.join(res.channels)}), {res.times} times "
          f"in {res.seconds:.1f} s")


PartsCount = Annotated[Optional[int], typer.Option(
    "--parts", min=1, metavar="N", show_default=False,
    help="Report build progress as N parts (default: the N of the 'encode --parts I/N' run "
         "that created the store, if any).")]


@command("finalize")
def finalize_cmd(
    store: Annotated[str, typer.Argument(help="Latent store written by 'encode --parts I/N' runs.")],
    parts: PartsCount = None,
    break_lock: Annotated[bool, typer.Option(
        "--break-lock", help="Clear writers' locks although they may be alive.")] = False,
) -> None:
    """Mark a latent store complete once every time chunk is written (after 'encode --parts').

    Refuses, naming the parts and time chunks still missing, while any is unwritten, and while
    any writer of the store is alive.
    """
    from era5latent.api import finalize

    res = finalize(store, parts=parts, break_lock=break_lock)
    _echo(f"{store}: {'already complete' if res.already else 'complete'} "
          f"({res.chunks} time chunks)")


@command("info")
def info_cmd(
    store: Annotated[str, typer.Argument(help="Latent store.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    parts: PartsCount = None,
) -> None:
    """Show a latent store: groups, channels, times, bytes, compression, build progress."""
    import json

    from era5latent.store import summary

    info = summary(store, parts)
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
    if "parts" in info:
        p, n = info["parts"], info["parts"]["count"]
        missing = ", ".join(f"{i}/{n}" for i in p["missing"])
        lines.append(f"parts: {len(p['done'])} of {n} done" + (f" (missing {missing})"
                                                               if missing else ""))
    table = Table("group", "channels", "tokens", "bits", "on disk", "float32", "ratio")
    for g in info["groups"]:
        table.add_row(g["group"], ",".join(g["channels"]), "x".join(map(str, g["token_grid"])),
                      str(g["code_bits"]), _size(g["bytes_on_disk"]), _size(g["float32_bytes_written"]),
                      f"{g['compression_ratio']:.1f}x" if g["compression_ratio"] else "-")
    ratio = info["compression_ratio"]
    if not info["complete"]:
        lines.append(f"sizes and ratios: over the {info['chunks_done']} time chunks written so far")
    table.add_row("total", "", "", "", _size(info["bytes_on_disk"]), _size(info["float32_bytes_written"]),
                  f"{ratio:.1f}x" if ratio else "-")
    con = Console(highlight=False, soft_wrap=True)
    for line in lines:
        con.print(line)
    con.print(table)
    res = info["residual"]
    if res["present"]:  # the two layers (docs/residuals.md)
        layers = Table("layer", "on disk", "ratio")
        for name, n, r in (("codes", res["codes_bytes"], res["codes_ratio"]),
                           (f"residuals ({res['codec']})", res["residual_bytes"],
                            res["residual_ratio"]),
                           ("both", res["codes_bytes"] + res["residual_bytes"], res["total_ratio"])):
            layers.add_row(name, _size(n), f"{r:.1f}x" if r else "-")
        con.print(layers)
        con.print("max error (decode in fp32): " + ", ".join(
            f"{c} {b['max_error']:.4g} {b['units']}" for c, b in res["channels"].items())
            + f"  (--max-error {res['spec']})")


@command("evaluate")
def evaluate_cmd(
    truth: Annotated[str, typer.Argument(help="The original ERA5 data (Zarr, NetCDF or GRIB).")],
    recon: Annotated[Optional[str], typer.Argument(
        help="Its reconstruction (from 'era5latent decode'); omit to decode --latent on the fly, "
             "or to encode and decode TRUTH with --model (any checkpoint of a run).")] = None,
    latent: Annotated[Optional[str], typer.Option(
        help="The latent store (gives the WLA's bytes; with --model, decodes on the fly).")] = None,
    model: Annotated[Optional[Path], typer.Option(help="Checkpoint, to decode --latent.")] = None,
    baselines: Annotated[str, typer.Option(
        help="Classical codecs at the same bytes per value: bitround, zfp, zfp-accuracy, sz3, "
             "all or none.")] = "bitround,zfp",
    sweep: Annotated[Optional[str], typer.Option(
        help="Bytes per value for the rate-distortion sweep (default: 0.5x..16x the WLA's).")] = None,
    subset: Annotated[Optional[str], typer.Option(help="Evaluate only these channels.")] = None,
    time: TimeRange = None,
    time_axis: TimeAxis = "valid",
    step: Step = None,
    climatology: Annotated[Optional[str], typer.Option(
        help="Climatology store for ACC (its time mean); default: the truth's own time mean.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write PNG maps, spectra and curves here.")] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write records as JSON here "
                                                      "('-' for stdout).")] = None,
    device: Device = "auto",
) -> None:
    """Measure what compression cost, per channel, beside classical codecs at equal bytes."""
    import json
    import tempfile

    from era5latent.errors import OptionError
    from era5latent.evaluate import evaluate
    from era5latent.sources import open_source
    from era5latent.store import open_latent_store
    from era5latent.variables import parse_subset

    channels = parse_subset(subset) if subset else None
    store = open_latent_store(latent) if latent else None
    sweep_bpv = None
    if sweep:
        try:
            sweep_bpv = [float(x) for x in sweep.split(",") if x.strip()]
        except ValueError:
            raise OptionError(f"--sweep {sweep!r}: expected comma-separated bytes per value, "
                              "e.g. 0.05,0.1,0.5") from None
    with tempfile.TemporaryDirectory(prefix="era5latent-eval-") as tmp:
        if recon is None:
            if model is None:
                raise OptionError("evaluate needs RECON, or --model (with --latent to decode a "
                                  "store, without it to encode and decode TRUTH on the fly)")
            from era5latent.model.checkpoint import load_checkpoint
            from era5latent.pipeline import decode

            if latent is None:  # score a checkpoint (any of a run's) on TRUTH directly
                latent = _encode_for_scoring(truth, load_checkpoint(str(model)), channels, time,
                                             device, str(Path(tmp) / "latent.zarr"))
                store = open_latent_store(latent)
            recon = str(Path(tmp) / "recon.zarr")
            decode(latent, load_checkpoint(str(model)), recon, subset=channels, time_range=time,
                   device=device)
        report = evaluate(open_source(truth, time_axis=time_axis, step=step), open_source(recon), subset=channels, time_range=time,
                          latent=store, climatology=open_source(climatology) if climatology else None,
                          baselines=[b for b in baselines.split(",") if b.strip()],
                          sweep=sweep_bpv, plot_dir=str(plot) if plot else None)
    doc = {"acc_reference": report.acc_reference, "records": report.records,
           "sweep": report.sweep, "plots": report.plots}
    if json_path is not None:
        text = json.dumps(doc, indent=2, default=float)
        if str(json_path) == "-":
            print(text)
            return
        json_path.write_text(text)
    _print_eval(report.records, report.acc_reference)
    if plot:
        _echo(f"plots: {len(report.plots)} PNG files in {plot}")
    if json_path is not None:
        _echo(f"records: {json_path}")


def _encode_for_scoring(truth: str, loaded: object, channels: object, time: str | None,
                        device: str, out: str) -> str:
    """TRUTH's channels that the model was trained on (or ``--subset``), encoded into ``out``."""
    from era5latent.model.checkpoint import LoadedModel
    from era5latent.pipeline import encode
    from era5latent.sources import open_source

    assert isinstance(loaded, LoadedModel)
    source = open_source(truth)
    have = set(source.available())
    chs = channels or tuple(c for g in loaded.meta.groups.values() for c in g if c in have)
    if not chs:
        raise OptionError(f"{truth} holds none of the channels the model was trained on; pass "
                          "data with them, or --subset")
    encode(source, loaded, chs, out, time_range=time, device=device)  # type: ignore[arg-type]
    return out


def _print_eval(records: list[dict[str, object]], acc_reference: str) -> None:
    from rich.console import Console
    from rich.table import Table

    def f(v: object, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    table = Table("channel", "method", "RMSE", "bias", "MAE", "max |err|", f"ACC ({acc_reference})",
                  "small-scale power", "bytes/value", "ratio vs f32", "ratio vs source",
                  title="reconstruction error (latitude-weighted, WeatherBench 2 definitions)")
    for r in records:
        table.add_row(str(r["channel"]), str(r["method"]), f(r["rmse"], ".4g"), f(r["bias"], ".3g"),
                      f(r["mae"], ".4g"), f(r["max_abs_error"], ".4g"), f(r["acc"], ".4f"),
                      f(r["small_scale_power_ratio"], ".3f"), f(r["bytes_per_value"], ".4f"),
                      f(r["compression_ratio"], ".1f"), f(r["compression_ratio_source"], ".1f"))
    Console(highlight=False, width=200).print(table)


@command("verify")
def verify_cmd(
    store: Annotated[str, typer.Argument(help="Latent store.")],
    model: Annotated[Optional[Path], typer.Option(
        help="Also check that the store was made with this checkpoint.")] = None,
) -> None:
    """Check a latent store's integrity: format, attributes, metadata, build, every array, model.

    Prints one line per check, and one per array: every chunk of every array is read (its crc32c
    checked; codes also against their sha256). Exit code 0 when all pass, 3 when any fails,
    naming the array (or metadata document) and chunk.
    """
    from era5latent.api import verify

    checks = verify(store, model)
    for c in checks:
        print(f"{'PASS' if c.ok else 'FAIL'}  {c.name}: {c.detail}")
    if not all(c.ok for c in checks):
        raise typer.Exit(3)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


# --- build-embed-map (owned by the embed-map work; edit only inside this section) ---
from enum import Enum  # noqa: E402


class _EmLayout(str, Enum):
    era5 = "era5"
    copernicus = "copernicus"


class _EmDtype(str, Enum):
    float16 = "float16"
    float32 = "float32"


class _EmFill(str, Enum):
    zero = "0"
    nan = "nan"


class _EmAggregate(str, Enum):
    none = "none"
    mean = "mean"


class _EmDuplicates(str, Enum):
    error = "error"
    first = "first"
    mean = "mean"


class _EmTrust(str, Enum):
    check = "check"
    id = "id"
    coords = "coords"


class _EmBadRow(str, Enum):
    error = "error"
    skip = "skip"


def _em_chunks(text: Optional[str]) -> Optional[tuple[int, int]]:
    from era5latent.errors import OptionError

    if text is None:
        return None
    try:
        a, b = (int(v) for v in text.split(","))
    except ValueError:
        raise OptionError(f"--chunks must be LAT,LON (two whole numbers, e.g. 90,180), "
                          f"found {text!r}") from None
    return a, b


@command("build-embed-map")
def build_embed_map_cmd(
    inputs: Annotated[list[Path], typer.Argument(
        help="Copernicus-Embed parquet files ([grid_id_coord, embedding] rows, or per-modality "
             "rows with --aggregate mean) and/or the upstream embed_map_310k.npz.",
        metavar="INPUT...", show_default=False)],
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="New Zarr v3 store to write (built beside it, renamed on success).",
        show_default=False)] = None,
    attach_to: Annotated[Optional[Path], typer.Option(
        help="Existing ERA5/latent Zarr store on the 0.25-degree grid: add the map as new static "
             "arrays (named with --prefix) instead of writing --out.", show_default=False)] = None,
    layout: Annotated[Optional[_EmLayout], typer.Option(
        help="Target grid: era5 = WeatherBench 2 (lat 90..-90, lon 0..359.75) [default]; "
             "copernicus = upstream npz (lat 90..-90, lon -180..179.75).",
        show_default=False)] = None,
    like: Annotated[Optional[Path], typer.Option(
        help="Take the target grid (orientation, longitude convention) from this ERA5 Zarr "
             "store; it must be 0.25 degrees, 721 x 1440.", show_default=False)] = None,
    dtype: Annotated[_EmDtype, typer.Option(help="Stored embedding dtype.")] = _EmDtype.float32,
    fill: Annotated[_EmFill, typer.Option(
        help="Value of cells without an embedding (see the valid mask).")] = _EmFill.zero,
    pca: Annotated[Optional[int], typer.Option(
        help="Project onto K principal components fitted on the valid cells; stores "
             "pca_components, pca_mean and explained variance.", metavar="K",
        show_default=False)] = None,
    npz: Annotated[Optional[Path], typer.Option(
        help="Also write an upstream-compatible .npz (arr_0, copernicus layout, zeros fill).",
        show_default=False)] = None,
    aggregate: Annotated[_EmAggregate, typer.Option(
        help="mean: average every row of a grid cell (per-modality input).")] = _EmAggregate.none,
    modality: Annotated[Optional[list[str]], typer.Option(
        help="With --aggregate mean, keep only rows of this modality (repeatable).",
        metavar="NAME", show_default=False)] = None,
    duplicates: Annotated[Optional[_EmDuplicates], typer.Option(
        help="Several rows for one cell: error [default], keep the first, or average them.",
        show_default=False)] = None,
    trust: Annotated[_EmTrust, typer.Option(
        help="Placement: check that id and coordinates agree, or place by the id / the "
             "coordinates alone.")] = _EmTrust.check,
    on_bad_row: Annotated[_EmBadRow, typer.Option(
        help="Bad rows (malformed id, off-grid, wrong length, NaN/inf): stop with an error, or "
             "skip and count them.")] = _EmBadRow.error,
    grid_map: Annotated[Optional[Path], typer.Option(
        help="Upstream pixel-mapping parquet (grid_0_25_globe_pix.parquet): place ids by its "
             "(row, col) pixels; row 0 = 90N, col 0 = 180W.", show_default=False)] = None,
    grid_map_id_column: Annotated[str, typer.Option(
        help="--grid-map column holding the integer grid id (upstream names are not "
             "public).")] = "index",
    grid_map_row_column: Annotated[str, typer.Option(
        help="--grid-map column holding the pixel row.")] = "row",
    grid_map_col_column: Annotated[str, typer.Option(
        help="--grid-map column holding the pixel column.")] = "col",
    id_column: Annotated[str, typer.Option(help="Parquet column of grid ids.")] = "grid_id_coord",
    embedding_column: Annotated[str, typer.Option(
        help="Parquet column of embeddings.")] = "embedding",
    chunks: Annotated[Optional[str], typer.Option(
        help="Spatial chunk LAT,LON of the embedding array (default: about 16 MiB per chunk, "
             "e.g. 45,90 for 768 float32 channels).", metavar="LAT,LON",
        show_default=False)] = None,
    prefix: Annotated[Optional[str], typer.Option(
        help="Prefix of the array names (default: none for --out, 'copernicus_' for "
             "--attach-to).", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an existing --out / --npz, or same-named arrays in --attach-to.")] = False,
    batch_rows: Annotated[int, typer.Option(help="Parquet rows per read batch.")] = 8192,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Lay Copernicus-Embed-025deg grid embeddings onto the ERA5 0.25-degree grid (Zarr)."""
    import json

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from era5latent.embedmap import EmbedMapOptions, build_embed_map

    opts = EmbedMapOptions(
        layout=layout.value if layout else None, like=like, dtype=dtype.value, fill=fill.value,
        pca=pca, npz=npz, aggregate=aggregate.value, modalities=tuple(modality or ()),
        duplicates=duplicates.value if duplicates else None, trust=trust.value,
        on_bad_row=on_bad_row.value, grid_map=grid_map, grid_map_id_column=grid_map_id_column,
        grid_map_row_column=grid_map_row_column, grid_map_col_column=grid_map_col_column,
        id_column=id_column, embedding_column=embedding_column, chunks=_em_chunks(chunks),
        prefix=prefix, overwrite=overwrite, batch_rows=batch_rows)
    err = Console(stderr=True, soft_wrap=True)
    labels = {"read": "reading rows", "pca": "fitting PCA", "write": "writing chunks",
              "npz": "writing npz"}
    with Progress(TextColumn("{task.description:<15}"), BarColumn(),
                  TextColumn("{task.completed:,}/{task.total:,}"), TimeElapsedColumn(),
                  console=err, transient=True, disable=not err.is_terminal) as bar:
        tasks: dict[str, object] = {}

        def on_progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(labels.get(phase, phase), total=total)
            bar.update(tasks[phase], completed=done, total=total)  # type: ignore[arg-type]

        res = build_embed_map(inputs, out, attach_to=attach_to, options=opts,
                              progress=on_progress)
    if json_out:
        sys.stdout.write(json.dumps(res.to_dict(), indent=2) + "\n")
        return
    con = Console(highlight=False, soft_wrap=True)
    where = res.out or f"{res.attached_to} (arrays {', '.join(res.arrays[:2])}, ...)"
    pca_txt = (f", PCA {res.pca_components} of {res.input_dim} channels "
               f"({res.pca_explained_variance_ratio:.1%} of variance)" if res.pca_components
               else "")
    con.print(f"wrote {where}: embedding {' x '.join(map(str, res.shape))} {res.dtype} "
              f"(layout {res.layout}, fill {res.fill}{pca_txt})")
    con.print(f"  {res.valid_cells:,} valid cells from {res.rows_used:,} of {res.rows_read:,} "
              f"rows in {len(res.sources)} input(s); {res.duplicate_rows:,} duplicate rows merged "
              f"or dropped; {res.seconds:.1f} s")
    if res.npz:
        con.print(f"  also wrote {res.npz}")
    if res.rows_filtered:
        con.print(f"  {res.rows_filtered:,} rows of other modalities left out")
    if res.skipped:
        parts = ", ".join(f"{reason} {n:,} (first: {res.first_skipped[reason]})"
                          for reason, n in res.skipped.items())
        err.print(f"warning: skipped {res.rows_skipped:,} bad rows: {parts}", highlight=False)


# --- end build-embed-map ---


def main() -> None:
    """Console-script entry point: library errors -> one line and exit 2, no traceback."""
    try:
        app()
    except Era5LatentError as err:  # raised outside a command body (e.g. in a callback)
        _fail(err)


if __name__ == "__main__":
    # run the imported module's app: cli_train registered its commands on era5latent.cli.app,
    # which is not this __main__ module's copy
    from era5latent.cli import main as _main

    _main()
