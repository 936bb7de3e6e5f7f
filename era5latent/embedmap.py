"""Moved to :mod:`era5latent.embed`; this module re-exports its names for old imports."""

from era5latent.embed import *
from era5latent.embed import __all__ as _all
from era5latent.embed.grid import _classify_id, _classify_ids

__all__ = [*_all, "_classify_id", "_classify_ids"]  # noqa: PLE0604
