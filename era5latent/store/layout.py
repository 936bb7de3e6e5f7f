"""Where a latent store keeps each array, by format version, and its token coordinates.

Format version 3 (docs/format.md) keeps at the root only what a user reads with plain
``xr.open_zarr``: the codes ``codes_G`` and the coordinates (``time``, the sample dims,
``latitude``/``longitude``, ``token_lat``/``token_lon``). era5latent's bookkeeping (done flags,
checksums) lives in the subgroup ``_era5latent``, the residual layer in the subgroup
``residual``; xarray reads only the root group's arrays. Versions 1 and 2 kept every array at
the root under the same base names. The code names arrays by their version-3 path;
:func:`location` says where a store of an older version keeps one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from era5latent.errors import OptionError

#: the subgroup of era5latent's own bookkeeping (done flags, checksums), version 3
BOOK = "_era5latent"
#: the subgroup of the residual layer (``encode --max-error``), version 3
RESIDUAL = "residual"
#: the subgroup of the mask layer (fields with missing values), version 4
MASK = "mask"
#: the first format version with the subgroups
NESTED_SINCE = 3
DONE = f"{BOOK}/build_done"
TOKEN_DIMS = ("token_lat", "token_lon")
#: the subgroups' ``description`` attribute
SUBGROUPS = {
    BOOK: "era5latent's build state and checksums: build_done (one flag per time chunk) and "
          "sha256_G (per time chunk of codes_G); not data",
    RESIDUAL: "the error-bounded residual layer: streams_G (one row of concatenated "
              "SZ3/ZFP streams per time chunk), nbytes_G (their lengths), sha256_G "
              "(docs/format.md)",
    MASK: "where the source was missing (NaN): static_CH (the first time step's mask), "
          "steps_CH (time chunks whose mask differs), state and sha256 per time chunk "
          "(docs/format.md)",
}


def codes_name(group: str) -> str:
    return f"codes_{group}"


def checksum_name(group: str) -> str:
    return f"{BOOK}/sha256_{group}"


def location(name: str, version: int) -> str:
    """Where a store of format ``version`` keeps the array named ``name`` (its version-3 path):
    ``_era5latent/build_done`` is ``build_done`` in versions 1 and 2."""
    if version >= NESTED_SINCE:
        return name
    head, sep, tail = name.partition("/")
    return tail if sep and head == BOOK else name


def subgroups(version: int, has_residual: bool, has_mask: bool = False) -> list[str]:
    """The subgroups a store of ``version`` has."""
    if version < NESTED_SINCE:
        return []
    return [BOOK, *([RESIDUAL] if has_residual else []), *([MASK] if has_mask else [])]


# -- token coordinates -------------------------------------------------------------------------

def token_centres(axis: np.ndarray, stride: int, padding: int, kind: str) -> np.ndarray:
    """Degrees of each token row (``kind`` "latitude") or column ("longitude") of a grid axis.

    Token ``i`` is the patch-embedding convolution's output ``i``: its kernel covers grid
    indices ``i * stride - padding`` to ``i * stride - padding + kernel - 1`` (padding cells
    counted as positions beyond the edge), so its centre is the fractional index
    ``c = i * stride - padding + (kernel - 1) / 2``, with ``kernel`` and the token count from
    :func:`era5latent.model.config.patch_geometry`. The value is ``axis[0] + c * step``,
    ``step = (axis[-1] - axis[0]) / (n - 1)`` (0 for one point): a regular grid's coordinate
    at ``c``, extrapolated past the edges. Latitudes are clipped to [-90, 90]; on a global
    longitude axis (``n * |step|`` = 360) values wrap into ``[axis[0], axis[0] + 360)``.
    """
    from era5latent.model.config import patch_geometry

    n = int(axis.size)
    (t, _), (k, _) = patch_geometry((n, n), stride, padding)
    centre = np.arange(t) * stride - padding + (k - 1) / 2.0
    first = float(axis[0])
    step = (float(axis[-1]) - first) / (n - 1) if n > 1 else 0.0
    values = first + centre * step
    if kind == "latitude":
        values = np.clip(values, -90.0, 90.0)
    elif step and abs(abs(step) * n - 360.0) < abs(step) / 2:
        values = first + np.mod(values - first, 360.0)
    return np.asarray(values, dtype=np.float64)


def token_coords(model: Mapping[str, Any], lat: np.ndarray, lon: np.ndarray
                 ) -> dict[str, tuple[np.ndarray, dict[str, str]]]:
    """``{token_lat: (values, attrs), token_lon: ...}`` for a store's ``model`` attribute
    (its ``config`` gives the patch stride and padding); empty when the config lacks them."""
    cfg = model.get("config") if isinstance(model, Mapping) else None
    try:
        stride, padding = int(cfg["patch_stride"]), int(cfg["patch_padding"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        return {}
    out: dict[str, tuple[np.ndarray, dict[str, str]]] = {}
    for dim, axis, kind, units in (("token_lat", lat, "latitude", "degrees_north"),
                                   ("token_lon", lon, "longitude", "degrees_east")):
        try:
            values = token_centres(np.asarray(axis, dtype=np.float64), stride, padding, kind)
        except OptionError:  # a geometry no model has: no coordinates rather than wrong ones
            return {}
        out[dim] = (values,
                    {"units": units, "long_name": f"{kind} of the centre of the token's patch",
                     "description": "centre of the patch-embedding kernel's footprint on the "
                                    "grid, padding counted (docs/format.md)"})
    return out
