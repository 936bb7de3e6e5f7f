"""The command-line interface (``era5latent ...``): a thin Typer layer over the library."""

from era5latent.cli.common import app, main

__all__ = ["app", "main"]
