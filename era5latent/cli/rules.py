"""Options that take effect only together with another: refused, never silently ignored.

Each command's dependent options are listed in :data:`RULES`: the option, what it needs (another
option, a value of one, a kind of argument) and the fix. :func:`check` runs before the command's
body (``cli.command``) and refuses an option that was *given* on the command line (not left at
its default) while what it needs is missing: one :class:`~era5latent.errors.OptionError` line,
exit code 2, nothing read or written. ``tests/test_cli_options.py`` holds its own table of every
option of every command, so a new option that depends on another fails that test until it is
listed here (docs/cli.md, "Options that need another").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from era5latent.errors import OptionError

Values = Mapping[str, Any]


@dataclass(frozen=True)
class Needs:
    """``option`` (a parameter's Python name) takes effect only when ``met(values)``."""

    option: str
    expected: str  # what the option needs, in words ("takes effect only with --max-error")
    found: str  # what was found instead
    fix: str
    met: Callable[[Values], bool]


def _given(v: Values, *names: str) -> bool:
    return any(v.get(n) is not None for n in names)


def _cluster(v: Values) -> bool:
    return _given(v, "scheduler", "workers")


def _has_store(v: Values) -> bool:
    """evaluate: a latent store gives the WLA's bytes (--latent, or --model encoding TRUTH)."""
    return v.get("latent") is not None or (v.get("model") is not None and v.get("recon") is None)


def _baselines(v: Values) -> bool:
    return any(b.strip() and b.strip() != "none" for b in str(v.get("baselines") or "").split(","))


def _bucket(v: Values) -> bool:
    from era5latent.fsutil import anonymous_options

    return bool(anonymous_options(str(v.get("data", ""))))


def _netcdf(v: Values) -> bool:
    return str(v.get("out", "")).lower().endswith((".nc", ".nc4", ".netcdf"))


def _pressure(v: Values) -> bool:
    """sample: a pressure-level variable among --variables (or a name the generator will
    refuse, with its own line)."""
    from era5latent.io.variables import lookup_variable

    found = [lookup_variable(x.strip()) for x in str(v.get("variables", "")).split(",")
             if x.strip()]
    return not found or any(x is None or x.pressure for x in found)


_CLUSTER = Needs("chunks_per_task", "groups time chunks into Dask tasks, so it takes effect only "
                 "with --scheduler or --workers", "neither was given",
                 "add --scheduler ADDRESS or --workers N, or leave out --chunks-per-task", _cluster)
_EVAL_STORE = "the latent store (--latent, or --model without RECON, which encodes TRUTH)"

#: command -> its options that need another (every other option stands alone)
RULES: dict[str, tuple[Needs, ...]] = {
    "sample": (
        Needs("levels", "sets the levels of pressure-level variables (z, t, u, v, q, ...)",
              "--variables holds none", "add a pressure-level variable to --variables, or leave "
              "out --levels", _pressure),
    ),
    "train": (
        Needs("memory_budget", "sizes the largest batch that --dry-run prints, so it takes "
              "effect only with --dry-run", "--dry-run was not given",
              "add --dry-run, or leave out --memory-budget", lambda v: bool(v.get("dry_run"))),
        Needs("disc_start", "starts the adversarial term, so it takes effect only with "
              "--adversarial-weight above 0", "the adversarial term is off (weight 0)",
              "add --adversarial-weight W, or leave out --disc-start",
              lambda v: float(v.get("adversarial_weight") or 0) > 0),
        Needs("val_every", "sets the steps between validations, so it takes effect only with "
              "--val-fraction above 0", "--val-fraction 0 holds no validation set",
              "give --val-fraction a share above 0, or leave out --val-every",
              lambda v: float(v.get("val_fraction") or 0) > 0),
        Needs("patience", "counts validations without improvement, so it takes effect only "
              "without --steps and with --val-fraction above 0", "--steps was given, or "
              "--val-fraction is 0", "leave out --patience, or --steps (and give "
              "--val-fraction a share above 0)",
              lambda v: v.get("steps") is None and float(v.get("val_fraction") or 0) > 0),
        Needs("patch_stride", "sets the token grid, which --target-bpv and --target-ratio "
              "choose themselves", "a target rate was given", "leave out --patch-stride, or "
              "the target rate", lambda v: not _given(v, "target_bpv", "target_ratio")),
        Needs("log_every", "sets the steps between the records written to --log-dir, so it "
              "takes effect only with --log-dir", "--log-dir was not given",
              "add --log-dir DIR, or leave out --log-every", lambda v: _given(v, "log_dir")),
        Needs("anonymous", "reads a public s3:// or gs:// bucket without credentials",
              "DATA is not an s3:// or gs:// URL", "leave out --anonymous (local files and "
              "other URLs need no such option)", _bucket),
    ),
    "encode": (
        Needs("residual_codec", "compresses the residual layer, so it takes effect only with "
              "--max-error", "it was given without --max-error (no residual layer)",
              "add --max-error SPEC (docs/residuals.md), or leave out --residual-codec",
              lambda v: _given(v, "max_error")),
        _CLUSTER,
    ),
    "decode": (
        _CLUSTER,
        Needs("zarr_format", "sets the Zarr version of a .zarr output", "--out names a NetCDF "
              "file", "leave out --zarr-format, or choose an --out ending in .zarr",
              lambda v: not _netcdf(v)),
    ),
    "build": (
        Needs("train_only", "trains the model and stops", "--check (which runs nothing) was "
              "given too", "leave out one of the two", lambda v: not v.get("check")),
        Needs("part", "encodes part I of the recipe's parts", "--train-only (which encodes "
              "nothing) was given too", "run --train-only once, then each --part I without it",
              lambda v: not v.get("train_only")),
        Needs("overwrite", "replaces the recipe's output store", "--check or --train-only "
              "(which write no store; --train-only never retrains an existing model) was given "
              "too", "leave out --overwrite (to retrain, remove the model file first)",
              lambda v: not (v.get("check") or v.get("train_only"))),
    ),
    "evaluate": (
        Needs("baselines", "sizes the classical codecs at the WLA's bytes per value, which "
              "come from " + _EVAL_STORE, "neither was given",
              "add --latent STORE, or --baselines none", lambda v: _has_store(v) or not _baselines(v)),
        Needs("sweep", "sets the sizes of the baselines' rate-distortion sweep, which needs "
              + _EVAL_STORE + " and --baselines other than none", "a latent store or a baseline "
              "is missing", "add --latent STORE (and --baselines), or leave out --sweep",
              lambda v: _has_store(v) and _baselines(v)),
        Needs("model", "decodes --latent (or encodes and decodes TRUTH) on the fly, so it takes "
              "effect only without RECON", "RECON was given", "leave out RECON or --model",
              lambda v: v.get("recon") is None),
        Needs("device", "runs the model that --model decodes with, so it takes effect only with "
              "--model and without RECON", "no model runs", "leave out --device",
              lambda v: v.get("model") is not None and v.get("recon") is None),
    ),
    "build-embed-map": tuple(
        Needs(f"grid_map_{c}_column", "names a column of the --grid-map parquet", "--grid-map "
              "was not given", f"add --grid-map FILE, or leave out --grid-map-{c}-column",
              lambda v: _given(v, "grid_map"))
        for c in ("id", "row", "col")),
}


def flag(command: Any, name: str) -> str:
    """The option's longest spelling (``--residual-codec``) in the click command."""
    for p in command.params:
        if p.name == name:
            return str(max(p.opts, key=len))
    return "--" + name.replace("_", "-")


def check(command: str, values: Values) -> None:
    """Refuse an option of ``command`` given on the command line whose partner is missing.
    Outside a click context (the function called directly) there is nothing to check."""
    import importlib

    try:  # recent Typer runs on its own copy of click: its context is the one pushed
        click = importlib.import_module("typer._click.core")
        globals_ = importlib.import_module("typer._click.globals")
    except ImportError:  # older Typer: click itself
        click = importlib.import_module("click.core")
        globals_ = importlib.import_module("click.globals")
    ParameterSource, get_current_context = click.ParameterSource, globals_.get_current_context
    ctx = get_current_context(silent=True)
    if ctx is None:
        return
    for rule in RULES.get(command, ()):
        source = ctx.get_parameter_source(rule.option)
        if source in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP):
            continue
        if not rule.met(values):
            opt, value = flag(ctx.command, rule.option), values.get(rule.option)
            if value is not None and not isinstance(value, bool):  # a flag says it all
                opt += f" {getattr(value, 'value', value)}"
            raise OptionError(f"{opt} {rule.expected}, but {rule.found}: {rule.fix}")
