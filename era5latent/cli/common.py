"""What every command module of the CLI shares: the :func:`command` decorator, the progress
:class:`Bar`, output helpers (:func:`echo`, :func:`note_leftovers`, :func:`code_usage_line`) and
the option types several commands take. The app itself (``era5latent.cli``) registers the
commands in the order ``--help`` lists them.

Each command parses its options, calls one library function and prints the result. Library
errors (:class:`era5latent.errors.Era5LatentError`) become one line on stderr and exit code 2;
anything else is a bug and keeps its traceback (exit code 1). Heavy imports (torch, xarray, zarr)
happen inside the commands so that ``--help`` stays fast.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Annotated, Optional

import typer

from era5latent.errors import Era5LatentError
from era5latent.malloc import tune_malloc


def fail(err: Era5LatentError) -> None:
    """One ``error:`` line on stderr (once under torchrun) and the error's exit code."""
    import os

    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank fails alike: say it once
        sys.stderr.write(f"error: {err}\n")
    raise SystemExit(err.exit_code)


#: the commands the modules of this package define: name -> (the guarded function, the
#: arguments of ``app.command``); the app registers them in its own order (``era5latent.cli``)
COMMANDS: dict[str, tuple[Callable[..., None], tuple[object, ...], dict[str, object]]] = {}


def command(*args: object, **kwargs: object) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """A command (``app.command``'s arguments) that refuses options given without what they
    need (:mod:`era5latent.cli.rules`) and maps library errors to one stderr line and their exit
    code; recorded in :data:`COMMANDS` for the app to register."""

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
                fail(err)

        COMMANDS[name] = (guarded, args, kwargs)
        return guarded

    return wrap


#: set by the global ``--quiet``: no progress output at all
_QUIET = False


def set_quiet(value: bool) -> None:
    """The global ``--quiet``: no progress output (bars or progress lines) from any command."""
    global _QUIET
    _QUIET = value


def quiet() -> bool:
    """Whether ``--quiet`` was given."""
    return _QUIET


#: seconds between one-line progress records when stderr is not a terminal
PROGRESS_EVERY_S = 30.0


class Bar:
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

    def __enter__(self) -> Bar:
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


def echo(text: str) -> None:
    """Print ``text`` on stdout (rich, no highlighting)."""
    from rich.console import Console

    Console(highlight=False).print(text)


def note_leftovers(out: object) -> None:
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


def cluster_bar(bar: Bar) -> Callable[[int, int, int, int], None]:
    """Progress of a Dask run: samples (and samples/s across the cluster) and tasks done."""
    return lambda done, total, k, n: bar.update(done, total, f"{k}/{n} tasks" if n else "")
