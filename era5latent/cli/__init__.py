"""The command-line interface (``era5latent ...``): a thin Typer layer over the library.

One module per command family registers its commands (:func:`era5latent.cli.common.command`);
this module builds the app from them in the order ``--help`` lists them (:data:`ORDER`). Shared
options, progress and output helpers live in :mod:`era5latent.cli.common`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from era5latent.cli import build, embed, encode, evaluate, sample, store, train
from era5latent.cli.common import COMMANDS, fail, set_quiet
from era5latent.errors import Era5LatentError

__all__ = ["ORDER", "app", "main"]
_FAMILIES = (build, embed, encode, evaluate, sample, store, train)  # each registered its commands

app = typer.Typer(
    name="era5latent",
    help="Turn ERA5 into compact binary latent codes with a Weather Latent Autoencoder, and back.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


#: the commands as ``--help`` lists them
ORDER = ("sample", "train", "combine", "encode", "decode", "finalize", "info", "build", "cleanup",
         "evaluate", "verify", "build-embed-map")
if set(ORDER) != set(COMMANDS):  # a new command must be given its place here
    raise RuntimeError(f"era5latent.cli.ORDER {sorted(ORDER)} != the commands {sorted(COMMANDS)}")
for _name in ORDER:
    _fn, _args, _kwargs = COMMANDS[_name]
    app.command(*_args, **_kwargs)(_fn)  # type: ignore[arg-type]


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("era5latent")
        except PackageNotFoundError:
            from era5latent.version import __version__ as v
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
    set_quiet(quiet)


def main() -> None:
    """Console-script entry point: library errors -> one line and exit 2, no traceback."""
    try:
        app()
    except Era5LatentError as err:  # raised outside a command body (e.g. in a callback)
        fail(err)
