"""A masked field for tests and demos: sea-surface temperature that is NaN over land.

:func:`write_masked_sample` writes the sample generator's fields (:mod:`era5latent.io.sample`) plus
``sea_surface_temperature`` (``sst``): the sample's 2 m temperature over the sea, NaN over the
sample's pseudo land (land fraction above one half), as ERA5's sst is NaN over land. With
``ice`` a sea-ice edge moves with time: sea points poleward of a latitude that changes from step
to step are NaN too, so the mask changes over time (as ERA5's sea-ice cover does not, but a
user's derived field may).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np
import xarray as xr

from era5latent.io.sample import write_sample
from era5latent.io.sampleclim import land_fraction
from era5latent.io.variables import variable_by_name

SST = variable_by_name("sst").wb2_name


def land_mask(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """The sample's land, ``(lat, lon)`` bool: land fraction above one half."""
    return np.asarray(land_fraction(np.asarray(lat)[:, None], np.asarray(lon)[None, :]) > 0.5)


def ice_mask(lat: np.ndarray, lon: np.ndarray, step: int) -> np.ndarray:
    """A sea-ice edge for time step ``step``: poleward of 62 to 72 degrees, moving."""
    edge = 62.0 + 10.0 * abs(np.sin(0.7 * step))
    return np.broadcast_to(np.abs(np.asarray(lat))[:, None] > edge, (len(lat), len(lon)))


def write_masked_sample(path: str | os.PathLike[str], *, grid: tuple[int, int] = (33, 64),
                        times: int = 8, variables: Sequence[str] = ("t2m", "msl"),
                        seed: int = 1, ice: bool = False, overwrite: bool = False
                        ) -> xr.Dataset:
    """The sample (``variables``, which must include ``t2m``) plus ``sst`` with NaN over land
    (and, with ``ice``, over a moving sea-ice edge), at ``path`` (Zarr v3)."""
    vars_ = tuple(variables)
    if "t2m" not in vars_:
        vars_ = (*vars_, "t2m")
    ds = write_sample(path, grid=grid, times=times, variables=vars_, seed=seed,
                      overwrite=overwrite)
    t2m = ds[variable_by_name("t2m").wb2_name]
    lat, lon = ds["latitude"].values, ds["longitude"].values
    land = land_mask(lat, lon)
    values = np.array(t2m.values, dtype=np.float32)
    for k in range(values.shape[0]):
        masked = land | ice_mask(lat, lon, k) if ice else land
        values[k][masked] = np.nan
    sst = xr.Dataset({SST: xr.Variable(t2m.dims, values, {
        "units": "K", "long_name": "Sea surface temperature",
        "standard_name": "sea_surface_temperature"})})
    sst[SST].encoding["chunks"] = (1, *values.shape[1:])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        sst.to_zarr(os.fspath(path), mode="a", zarr_format=3, consolidated=True)
    out: xr.Dataset = xr.open_zarr(os.fspath(path))
    return out
