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
    """``app.command`` that refuses options given without what they need (``cli_rules``) and
    maps library errors to one stderr line and their exit code."""

    name = str(args[0]) if args else ""

    def wrap(fn: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(fn)
        def guarded(*a: object, **kw: object) -> None:
            tune_malloc()  # this process is ours: keep the model's freed buffers for reuse
            try:
                from era5latent.cli.rules import check  # an option whose partner is missing

                check(name, kw)
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
    record every ``PROGRESS_EVERY_S`` seconds and one at the end of a run that took that long
    (percentage, rate, ETA), so a quick run, or a quick failure, prints only its result or its
    one error line; nothing under ``--quiet``."""

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
        self.printed = False  # a record was written (then the end gets one too)
        self.state = (0, 0, "")

    def __enter__(self) -> _Bar:
        import time

        self.progress.start()
        self.t0 = self.last_line = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        import time

        self.progress.stop()
        long = time.perf_counter() - self.t0 >= PROGRESS_EVERY_S
        if self.lines and exc[0] is None and self.state[1] and (self.printed or long):
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
        self.printed = True
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


def code_usage_line(group: str, entropy: float, constant: float, bpv: float, raw: float,
                    samples: int, what: str) -> str:
    """One group's use of its code bits, as ``train`` and ``info`` print it."""
    if samples < 2:
        use = f"entropy per stored bit not measurable on {samples} sample(s)"
    else:
        use = (f"{entropy:.3f} bits of entropy per stored bit ({constant:.0%} constant) over "
               f"{samples} {what}")
    return f"codes {group}: {use}; {bpv:.4g} B/value after zstd ({raw:.4g} raw)"


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
                         f"killed; 'era5latent cleanup {out}' removes them (once no era5latent "
                         "run writes there)\n")


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
    from era5latent.io.sample import parse_grid, write_sample

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
from era5latent.cli import train as _cli_train  # noqa: E402,F401  (registers its commands)


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
    from era5latent.store.core import parse_part
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
    with _Bar("encode", "samples") as bar:
        if scheduler is not None or workers is not None:
            from era5latent.pipeline.distributed import encode_distributed

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
        from era5latent.store.core import open_latent_store

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
    with _Bar("decode", "samples") as bar:
        if scheduler is not None or workers is not None:
            from era5latent.pipeline.distributed import decode_distributed

            res = decode_distributed(
                latent, loaded, out, subset=channels, time_range=time, batch_size=batch_size,
                device=device, overwrite=overwrite, precision=precision,
                allow_corrupt=allow_corrupt, scheduler=scheduler, workers=workers,
                chunks_per_task=chunks_per_task, progress=_cluster_bar(bar),
                zarr_format=zarr_format, residual=not no_residual)
        else:
            res = decode(latent, loaded, out, subset=channels, time_range=time,
                         batch_size=batch_size, device=device, overwrite=overwrite,
                         precision=precision, allow_corrupt=allow_corrupt, progress=bar.update,
                         zarr_format=zarr_format, residual=not no_residual)
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

    from era5latent.evaluation.bitusage import with_usage
    from era5latent.recipe import recipe_of, to_yaml
    from era5latent.store.core import summary

    info = with_usage(summary(store, parts), store)
    recipe = recipe_of(store)
    if recipe is not None:
        info["recipe"] = recipe
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
    for g in info["groups"]:
        con.print(code_usage_line(g["group"], g["entropy_per_bit"], g["constant_bits"],
                                  g["bytes_per_value"], g["raw_bytes_per_value"],
                                  g["entropy_samples"], "samples")
                  + (f"; {g['chunks_unreadable']} damaged chunk(s) left out (run verify)"
                     if g["chunks_unreadable"] else ""))
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
    if recipe is not None:
        con.print("built from this recipe ('era5latent build' of it reproduces the store):")
        con.print(to_yaml(recipe).rstrip(), markup=False)


# build and cleanup live in cli_build.py; imported here so that they are listed after info
from era5latent.cli import build as _cli_build  # noqa: E402,F401  (registers its commands)


# evaluate lives in cli_evaluate.py; imported here so that it is listed in this order
from era5latent.cli import evaluate as _cli_evaluate  # noqa: E402,F401  (registers evaluate)


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


# build-embed-map lives in cli_embedmap.py (owned by the embed-map work); imported here so
# that it is listed last
from era5latent.cli import embed as _cli_embedmap  # noqa: E402,F401  (registers it)


def main() -> None:
    """Console-script entry point: library errors -> one line and exit 2, no traceback."""
    try:
        app()
    except Era5LatentError as err:  # raised outside a command body (e.g. in a callback)
        _fail(err)

