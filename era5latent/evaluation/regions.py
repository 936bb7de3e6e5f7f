"""Regions for spatial means, as WeatherBench 2 defines them (``weatherbench2/regions.py`` and the
regions of its evaluation configs):

- ``global``: every grid point.
- ``tropics``: latitudes -20..20, both ends included (WB2: ``SliceRegion(lat_slice=slice(-20, 20))``).
- ``extra-tropics``: ``|latitude| >= 20`` (WB2's ``ExtraTropicalRegion``, a weight mask). So the
  +-20 rows belong to both the tropics and the extra-tropics, as in WB2.
- ``northern-extra-tropics`` (20..90) and ``southern-extra-tropics`` (-90..-20): WB2's
  ``northern-hemisphere``/``southern-hemisphere`` boxes (those names are accepted too).
- a box ``LAT0,LAT1,LON0,LON1`` in degrees, ends included; longitudes in either -180..180 or
  0..360, and ``LON0 > LON1`` wraps across the 0/360 line (``35,75,-12.5,42.5`` is WB2's Europe).

A region is a 0/1 mask over the grid. Spatial means are area-weighted over the points in the
region: ``sum(w m x) / sum(w m)`` with the latitude weights of the whole grid
(:func:`~era5latent.evaluation.metrics.latitude_weights`), which is what WB2's
``dataset.weighted(weights).mean()`` after ``region.apply`` computes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from era5latent.errors import GridMismatchError, OptionError

#: Named regions (WB2 names and their aliases) -> latitude range and whether it is |latitude|.
_NAMED: dict[str, tuple[float, float, bool]] = {
    "global": (-90.0, 90.0, False),
    "tropics": (-20.0, 20.0, False),
    "extra-tropics": (20.0, 90.0, True),
    "northern-extra-tropics": (20.0, 90.0, False),
    "southern-extra-tropics": (-90.0, -20.0, False),
}
_ALIASES = {"extratropics": "extra-tropics", "northern-hemisphere": "northern-extra-tropics",
            "southern-hemisphere": "southern-extra-tropics", "nh": "northern-extra-tropics",
            "sh": "southern-extra-tropics"}

REGION_NAMES = tuple(_NAMED)


@dataclass(frozen=True)
class Region:
    """Latitudes ``lat0..lat1`` (of ``|latitude|`` when ``abs_lat``), longitudes ``lon0..lon1``
    (None: all), ends included."""

    name: str
    lat0: float = -90.0
    lat1: float = 90.0
    abs_lat: bool = False
    lon0: float | None = None
    lon1: float | None = None

    def mask(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """(latitude, longitude) booleans: True inside the region. Empty regions raise."""
        la = np.asarray(lat, dtype=np.float64)
        la = np.abs(la) if self.abs_lat else la
        eps = 1e-9
        rows = (la >= self.lat0 - eps) & (la <= self.lat1 + eps)
        cols = np.ones(np.asarray(lon).shape, dtype=bool)
        if self.lon0 is not None and self.lon1 is not None:
            lo = np.mod(np.asarray(lon, dtype=np.float64), 360.0)
            a, b = self.lon0 % 360.0, self.lon1 % 360.0
            if self.lon1 - self.lon0 >= 360.0:
                pass
            elif a <= b:
                cols = (lo >= a - eps) & (lo <= b + eps)
            else:  # wraps across 0/360
                cols = (lo >= a - eps) | (lo <= b + eps)
        m = rows[:, None] & cols[None, :]
        if not m.any():
            raise GridMismatchError(
                f"region {self.name!r} holds no point of the grid (latitudes "
                f"{la.min():g}..{la.max():g}, {len(cols)} longitudes): expected a region that "
                "overlaps the data; pick another --region")
        return m


def parse_region(spec: str | Region | None) -> Region:
    """``global``, ``tropics``, ``extra-tropics``, ``northern-extra-tropics``,
    ``southern-extra-tropics``, or a box ``LAT0,LAT1,LON0,LON1`` (degrees)."""
    if spec is None:
        return Region("global")
    if isinstance(spec, Region):
        return spec
    text = spec.strip().lower().replace("_", "-")
    text = _ALIASES.get(text, text)
    if text in _NAMED:
        lat0, lat1, absl = _NAMED[text]
        return Region(text, lat0, lat1, absl)
    parts = [p.strip() for p in text.split(",")]
    expected = (f"expected one of {', '.join(REGION_NAMES)} or a box LAT0,LAT1,LON0,LON1 in "
                "degrees, e.g. 35,75,-12.5,42.5")
    if len(parts) != 4:
        raise OptionError(f"region {spec!r}: {expected}")
    try:
        lat0, lat1, lon0, lon1 = (float(p) for p in parts)
    except ValueError:
        raise OptionError(f"region {spec!r} is not four numbers: {expected}") from None
    if not all(math.isfinite(v) for v in (lat0, lat1, lon0, lon1)):
        raise OptionError(f"region {spec!r} has a non-finite bound: {expected}")
    if not (-90.0 <= lat0 <= lat1 <= 90.0):
        raise OptionError(f"region {spec!r}: latitudes must satisfy -90 <= LAT0 <= LAT1 <= 90; "
                          "swap them or fix the range")
    if not (-180.0 <= lon0 <= 360.0 and -180.0 <= lon1 <= 360.0):
        raise OptionError(f"region {spec!r}: longitudes must lie in -180..360 degrees")
    return Region(f"{lat0:g},{lat1:g},{lon0:g},{lon1:g}", lat0, lat1, False, lon0, lon1)
