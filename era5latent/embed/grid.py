"""The 0.25-degree grid and Copernicus-Embed grid ids.

A ``grid_id_coord`` is ``f"{grid_id:07d}_{lon:.2f}_{lat:.2f}"`` (cell centres, longitude first)
with ``grid_id = i * 1440 + j``, ``i = (lat + 90) / 0.25`` (south to north) and
``j = (lon + 180) / 0.25``. That ``grid_id`` is the *canonical cell index* used throughout;
:class:`Grid` places canonical indices in a store's storage order.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from era5latent.errors import EmbedMapError, OptionError

if TYPE_CHECKING:
    import zarr

N_LAT = 721  #: latitude rows of the 0.25-degree ERA5 grid (90 .. -90 inclusive)
N_LON = 1440  #: longitude columns (0 .. 359.75, or -180 .. 179.75)
N_CELLS = N_LAT * N_LON  #: number of canonical cell indices (= upstream grid ids)
RESOLUTION = 0.25

TRUSTS = ("check", "id", "coords")

ID_EXAMPLE = "0295191_177.75_-39.00"
_ID_FORMAT = "'<7-digit id>_<lon>_<lat>' with 2 decimals, e.g. '0295191_177.75_-39.00'"
# ASCII digits only, full match: identical semantics in Python ``re`` and Arrow's RE2.
_ID_PATTERN = (
    r"(?P<id>[0-9]{7})_(?P<lons>-?)(?P<loni>[0-9]{1,4})\.(?P<lonf>[0-9]{2})"
    r"_(?P<lats>-?)(?P<lati>[0-9]{1,4})\.(?P<latf>[0-9]{2})"
)
_ID_RE = re.compile(_ID_PATTERN)

#: Why a row was rejected (the keys of ``EmbedMapResult.skipped``).
REASONS = (
    "malformed id",
    "coordinates out of range",
    "coordinates off the 0.25-degree lattice",
    "grid id out of range",
    "grid id not in grid map",
    "id does not match coordinates",
    "missing embedding",
    "wrong embedding length",
    "non-finite embedding",
)
ID_OK = -1


def format_grid_id(lat: float, lon: float) -> str:
    """The upstream ``grid_id_coord`` of the cell centred at (lat, lon) (lon in [-180, 180))."""
    i, j = _lattice_index(lat, lon)
    return f"{i * N_LON + j:07d}_{lon:.2f}_{lat:.2f}"


def cell_index(lat: float, lon: float) -> int:
    """Canonical cell index (= upstream grid id) of a cell centre; lon may be -180..360."""
    i, j = _lattice_index(lat, ((lon + 180.0) % 360.0) - 180.0)
    return i * N_LON + j


def _lattice_index(lat: float, lon: float) -> tuple[int, int]:
    fi, fj = (lat + 90.0) / RESOLUTION, (lon + 180.0) / RESOLUTION
    i, j = round(fi), round(fj)
    if abs(fi - i) > 1e-6 or abs(fj - j) > 1e-6 or not (0 <= i < N_LAT and 0 <= j < N_LON):
        raise EmbedMapError(
            f"({lat}, {lon}) is not a 0.25-degree cell centre with lat in [-90, 90] and lon in "
            "[-180, 180); pass a centre such as (-39.0, 177.75)"
        )
    return i, j


@dataclass(frozen=True)
class GridId:
    """One parsed ``grid_id_coord``; ``cell`` is where it is placed (per the trust rule)."""

    grid_id: int
    lon: float
    lat: float
    cell: int


def _check_id_fields(
    gid: int, lon_h: int, lat_h: int, trust: str, id_table: np.ndarray | None
) -> tuple[int, int, str]:
    """(reason code or ID_OK, cell, detail) for one row, from integer fields (hundredths)."""
    coords_cell = -1
    if trust != "id":
        if not (-9000 <= lat_h <= 9000) or not (-18000 <= lon_h < 18000):
            return 1, -1, ("latitude must lie in [-90, 90] and longitude in [-180, 180) "
                           "(cell centres, longitude first)")
        if lat_h % 25 or lon_h % 25:
            return 2, -1, "cell centres lie on multiples of 0.25 degrees"
        coords_cell = (lat_h // 25 + 360) * N_LON + (lon_h // 25 + 720)
        if trust == "coords":
            return ID_OK, coords_cell, ""
    if id_table is None:
        if gid >= N_CELLS:
            return 3, -1, f"grid ids run 0..{N_CELLS - 1} (= row * 1440 + col from 90S, 180W)"
        id_cell = gid
    else:
        id_cell = int(id_table[gid]) if gid < len(id_table) else -1
        if id_cell < 0:
            return 4, -1, "the --grid-map file has no pixel for this id"
    if trust == "check" and id_cell != coords_cell:
        return 5, -1, (f"its coordinates give id {coords_cell:07d}, its id gives cell "
                       f"{id_cell:07d} (--trust id or --trust coords places by one of them)")
    return ID_OK, id_cell, ""


def classify_id(text: object, trust: str = "check",
                 id_table: np.ndarray | None = None) -> tuple[int, int, str]:
    """Scalar reference classifier: (reason code or ID_OK, cell, detail)."""
    m = _ID_RE.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        return 0, -1, f"expected {_ID_FORMAT}"
    lon_h = int(m["loni"]) * 100 + int(m["lonf"])
    lat_h = int(m["lati"]) * 100 + int(m["latf"])
    lon_h = -lon_h if m["lons"] else lon_h
    lat_h = -lat_h if m["lats"] else lat_h
    return _check_id_fields(int(m["id"]), lon_h, lat_h, trust, id_table)


def parse_grid_id(text: object, *, trust: str = "check",
                  id_table: np.ndarray | None = None) -> GridId:
    """Parse one ``grid_id_coord``; raises :class:`EmbedMapError` on anything invalid."""
    if trust not in TRUSTS:
        raise OptionError(f"trust must be one of {', '.join(TRUSTS)}, found {trust!r}")
    code, cell, detail = classify_id(text, trust, id_table)
    if code != ID_OK:
        raise EmbedMapError(f"grid_id_coord {shorten(text)}: {REASONS[code]}; {detail}")
    m = _ID_RE.fullmatch(text) if isinstance(text, str) else None
    if m is None:  # unreachable: classify_id accepted it
        raise EmbedMapError(f"grid_id_coord {shorten(text)}: malformed id; expected {_ID_FORMAT}")
    lon = float(f"{m['lons']}{m['loni']}.{m['lonf']}")
    lat = float(f"{m['lats']}{m['lati']}.{m['latf']}")
    return GridId(int(m["id"]), lon + 0.0, lat + 0.0, cell)


def shorten(text: object, limit: int = 60) -> str:
    s = repr(text)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def classify_ids(ids: Any, trust: str, id_table: np.ndarray | None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised :func:`classify_id` over an Arrow string array: (codes int8, cells int64)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(ids)
    if pa.types.is_dictionary(ids.type):
        ids = ids.dictionary_decode()
    if not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)):
        ids = ids.cast(pa.large_string())
    m = pc.extract_regex(ids, "^" + _ID_PATTERN + "$")
    ok = np.asarray(m.is_valid().to_numpy(zero_copy_only=False), dtype=bool)

    def num(name: str) -> np.ndarray:
        f = pc.fill_null(pc.struct_field(m, name), "0")
        return np.asarray(pc.cast(f, pa.int64()).to_numpy(zero_copy_only=False))

    def neg(name: str) -> np.ndarray:
        f = pc.fill_null(pc.struct_field(m, name), "")
        return np.asarray(pc.equal(f, "-").to_numpy(zero_copy_only=False), dtype=bool)

    gid = num("id")
    lon_h = num("loni") * 100 + num("lonf")
    lat_h = num("lati") * 100 + num("latf")
    lon_h = np.where(neg("lons"), -lon_h, lon_h)
    lat_h = np.where(neg("lats"), -lat_h, lat_h)

    codes = np.full(n, ID_OK, dtype=np.int8)
    cells = np.full(n, -1, dtype=np.int64)
    codes[~ok] = 0
    todo = ok.copy()
    coords_cell = np.full(n, -1, dtype=np.int64)
    if trust != "id":
        bad = todo & ~((lat_h >= -9000) & (lat_h <= 9000) & (lon_h >= -18000) & (lon_h < 18000))
        codes[bad] = 1
        todo &= ~bad
        bad = todo & ((lat_h % 25 != 0) | (lon_h % 25 != 0))
        codes[bad] = 2
        todo &= ~bad
        coords_cell = (lat_h // 25 + 360) * N_LON + (lon_h // 25 + 720)
        if trust == "coords":
            cells[todo] = coords_cell[todo]
            return codes, cells
    if id_table is None:
        bad = todo & (gid >= N_CELLS)
        codes[bad] = 3
        todo &= ~bad
        id_cell = gid
    else:
        inside = gid < len(id_table)
        id_cell = np.full(n, -1, dtype=np.int64)
        id_cell[inside] = id_table[gid[inside]]
        bad = todo & (id_cell < 0)
        codes[bad] = 4
        todo &= ~bad
    if trust == "check":
        bad = todo & (id_cell != coords_cell)
        codes[bad] = 5
        todo &= ~bad
    cells[todo] = id_cell[todo]
    return codes, cells


@dataclass(frozen=True)
class Grid:
    """A target 0.25-degree grid: coordinate values in storage order and the placement tables.

    ``row_of_i[i]`` is the storage row of canonical latitude index ``i`` (0 = 90S) and
    ``col_of_j[j]`` the storage column of canonical longitude index ``j`` (0 = 180W).
    """

    name: str
    latitude: np.ndarray  # (721,) float64, storage order
    longitude: np.ndarray  # (1440,) float64, storage order
    row_of_i: np.ndarray  # (721,) int64
    col_of_j: np.ndarray  # (1440,) int64
    lat_dim: str = "latitude"
    lon_dim: str = "longitude"

    @staticmethod
    def era5() -> Grid:
        """WeatherBench 2: latitude 90 -> -90, longitude 0 -> 359.75."""
        i, j = np.arange(N_LAT), np.arange(N_LON)
        return Grid("era5", 90.0 - RESOLUTION * np.arange(N_LAT), RESOLUTION * np.arange(N_LON),
                    720 - i, (j + 720) % N_LON)

    @staticmethod
    def copernicus() -> Grid:
        """Upstream ``embed_map_310k.npz``: north-up, column 0 at longitude -180."""
        i, j = np.arange(N_LAT), np.arange(N_LON)
        return Grid("copernicus", 90.0 - RESOLUTION * np.arange(N_LAT),
                    -180.0 + RESOLUTION * np.arange(N_LON), 720 - i, j.copy())

    @staticmethod
    def from_coords(name: str, lat: np.ndarray, lon: np.ndarray, source: str,
                    lat_dim: str = "latitude", lon_dim: str = "longitude") -> Grid:
        """The grid a store's coordinates describe (any orientation / longitude convention)."""
        lat = np.asarray(lat, dtype=np.float64).ravel()
        lon = np.asarray(lon, dtype=np.float64).ravel()
        step: Callable[[np.ndarray], float] = \
            lambda v: float(np.median(np.abs(np.diff(v)))) if len(v) > 1 else float("nan")  # noqa: E731
        if lat.shape != (N_LAT,) or lon.shape != (N_LON,):
            raise EmbedMapError(
                f"{source}: grid is {lat.size} latitudes x {lon.size} longitudes (step "
                f"{step(lat):g} x {step(lon):g} degrees); expected the 0.25-degree 721 x 1440 "
                "ERA5 grid; regrid the store or pass --layout instead"
            )
        fi = (lat + 90.0) / RESOLUTION
        fj = (((lon + 180.0) % 360.0)) / RESOLUTION
        i, j = np.rint(fi).astype(np.int64), np.rint(fj).astype(np.int64) % N_LON
        if (np.abs(fi - np.rint(fi)).max() > 1e-4 or np.abs(fj - np.rint(fj)).max() > 1e-4
                or len(np.unique(i)) != N_LAT or len(np.unique(j)) != N_LON
                or i.min() < 0 or i.max() > 720):
            raise EmbedMapError(
                f"{source}: latitude/longitude are not the 0.25-degree lattice (step "
                f"{step(lat):g} x {step(lon):g}, lat {lat.min():g}..{lat.max():g}); expected "
                "721 x 1440 cell centres at multiples of 0.25 degrees"
            )
        row_of_i = np.empty(N_LAT, np.int64)
        row_of_i[i] = np.arange(N_LAT)
        col_of_j = np.empty(N_LON, np.int64)
        col_of_j[j] = np.arange(N_LON)
        return Grid(name, lat, lon, row_of_i, col_of_j, lat_dim, lon_dim)

    def place(self, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Storage (row, col) of canonical cell indices."""
        cells = np.asarray(cells, dtype=np.int64)
        return self.row_of_i[cells // N_LON], self.col_of_j[cells % N_LON]

    def describe(self) -> dict[str, float]:
        return {
            "resolution_degrees": RESOLUTION,
            "latitude_first": float(self.latitude[0]), "latitude_last": float(self.latitude[-1]),
            "longitude_first": float(self.longitude[0]),
            "longitude_last": float(self.longitude[-1]),
        }


def _zarr_coord_dim(arr: zarr.Array[Any], default: str) -> str:
    names = getattr(arr.metadata, "dimension_names", None)
    if names and names[0]:
        return str(names[0])
    dims: Any = arr.attrs.get("_ARRAY_DIMENSIONS")  # any JSON a user's store holds
    return str(dims[0]) if dims else default


def grid_from_store(path: Path | str, what: str = "--like") -> Grid:
    """The target grid of an existing ERA5 (or latent) Zarr store, from its coordinates."""
    import zarr

    try:
        g = zarr.open_group(str(path), mode="r")
        names = set(g.array_keys())
    except Exception as err:  # noqa: BLE001 - any failure to open is the user's input
        raise EmbedMapError(
            f"{what} {path}: cannot open it as a Zarr store ({one_line(err)}); pass the path of "
            "a WeatherBench2-style store with latitude/longitude coordinates"
        ) from None
    for la, lo in (("latitude", "longitude"), ("lat", "lon")):
        if la in names and lo in names:
            lat_a, lon_a = _zarr_array(g, la, what, path), _zarr_array(g, lo, what, path)
            return Grid.from_coords("like", np.asarray(lat_a[...]), np.asarray(lon_a[...]),
                                    f"{what} {path}",
                                    _zarr_coord_dim(lat_a, la), _zarr_coord_dim(lon_a, lo))
    raise EmbedMapError(
        f"{what} {path}: no latitude/longitude coordinate arrays (found "
        f"{', '.join(sorted(names)) or 'no arrays'}); expected a WeatherBench2-style ERA5 store"
    )


def _zarr_array(g: zarr.Group, name: str, what: str, path: Path | str) -> zarr.Array[Any]:
    """The array ``name`` of a user's store (listed by ``array_keys``, so never a group)."""
    import zarr

    a = g[name]
    if not isinstance(a, zarr.Array):
        raise EmbedMapError(f"{what} {path}: {name!r} is a group, expected a coordinate array")
    return a


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]
