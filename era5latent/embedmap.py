"""Copernicus-Embed grid embeddings -> a 721 x 1440 x D static map on the ERA5 grid (Zarr v3).

Inputs are parquet files of ``grid_id_coord`` + ``embedding`` rows (averaged embeddings, or
per-modality rows averaged here with ``aggregate="mean"``) or the upstream ``embed_map_310k.npz``.
A ``grid_id_coord`` is ``f"{grid_id:07d}_{lon:.2f}_{lat:.2f}"`` (cell centres, longitude first)
with ``grid_id = i * 1440 + j``, ``i = (lat + 90) / 0.25`` (south to north) and
``j = (lon + 180) / 0.25``. That ``grid_id`` is the *canonical cell index* used throughout.

The build streams, so that a full-size input (310k rows x 768 floats, a 3.2 GB float32 map) fits
in a small, fixed amount of memory:

1. *read*: parquet record batches (or npz map rows) are parsed, validated and appended to one
   spill file per output chunk (a temporary directory beside the output);
2. *pca* (optional): each chunk is assembled from its spill file and folded into a streaming
   covariance (D x D), from which the components are fitted;
3. *write*: each chunk is assembled again (duplicates merged, projected, cast, filled) and written
   as exactly one Zarr chunk, so no chunk is written twice;
4. optionally the upstream-compatible ``.npz`` is streamed from the finished store.

Everything is built in a temporary path beside the target and renamed into place on success, so
an output is never left half-written. Errors are :class:`EmbedMapError` (bad data) or
:class:`OptionError` (bad options), each a single line naming the file and row.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import threading
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, cast

import numpy as np

from era5latent import faults
from era5latent.errors import EmbedMapError, OptionError

if TYPE_CHECKING:
    import zarr

_ZarrFormat = Literal[2, 3]  # what zarr.open_group accepts as zarr_format

# --- the grid -------------------------------------------------------------------------------

N_LAT = 721  #: latitude rows of the 0.25-degree ERA5 grid (90 .. -90 inclusive)
N_LON = 1440  #: longitude columns (0 .. 359.75, or -180 .. 179.75)
N_CELLS = N_LAT * N_LON  #: number of canonical cell indices (= upstream grid ids)
RESOLUTION = 0.25
FORMAT_VERSION = 1  #: stamped as ``era5latent_embedmap_version`` in every output

LAYOUTS = ("era5", "copernicus")
DTYPES = ("float16", "float32")
FILLS = ("0", "nan")
AGGREGATES = ("none", "mean")
DUPLICATES = ("error", "first", "mean")
TRUSTS = ("check", "id", "coords")
ON_BAD_ROW = ("error", "skip")

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
_OK = -1


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
    """(reason code or _OK, cell, detail) for one row, from integer fields (hundredths)."""
    coords_cell = -1
    if trust != "id":
        if not (-9000 <= lat_h <= 9000) or not (-18000 <= lon_h < 18000):
            return 1, -1, ("latitude must lie in [-90, 90] and longitude in [-180, 180) "
                           "(cell centres, longitude first)")
        if lat_h % 25 or lon_h % 25:
            return 2, -1, "cell centres lie on multiples of 0.25 degrees"
        coords_cell = (lat_h // 25 + 360) * N_LON + (lon_h // 25 + 720)
        if trust == "coords":
            return _OK, coords_cell, ""
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
    return _OK, id_cell, ""


def _classify_id(text: object, trust: str = "check",
                 id_table: np.ndarray | None = None) -> tuple[int, int, str]:
    """Scalar reference classifier: (reason code or _OK, cell, detail)."""
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
    code, cell, detail = _classify_id(text, trust, id_table)
    if code != _OK:
        raise EmbedMapError(f"grid_id_coord {_short(text)}: {REASONS[code]}; {detail}")
    m = _ID_RE.fullmatch(text) if isinstance(text, str) else None
    if m is None:  # unreachable: _classify_id accepted it
        raise EmbedMapError(f"grid_id_coord {_short(text)}: malformed id; expected {_ID_FORMAT}")
    lon = float(f"{m['lons']}{m['loni']}.{m['lonf']}")
    lat = float(f"{m['lats']}{m['lati']}.{m['latf']}")
    return GridId(int(m["id"]), lon + 0.0, lat + 0.0, cell)


def _short(text: object, limit: int = 60) -> str:
    s = repr(text)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _classify_ids(ids: Any, trust: str, id_table: np.ndarray | None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised :func:`_classify_id` over an Arrow string array: (codes int8, cells int64)."""
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

    codes = np.full(n, _OK, dtype=np.int8)
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
            f"{what} {path}: cannot open it as a Zarr store ({_one_line(err)}); pass the path of "
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


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]


# --- options and result ---------------------------------------------------------------------


@dataclass(frozen=True)
class EmbedMapOptions:
    """Every knob of :func:`build_embed_map`; validated on construction (``OptionError``)."""

    layout: str | None = None  # era5 (default) | copernicus; exclusive with like
    like: Path | None = None  # take the grid from this ERA5 Zarr store
    dtype: str = "float32"
    fill: str = "0"
    pca: int | None = None
    npz: Path | None = None
    aggregate: str = "none"
    modalities: tuple[str, ...] = ()
    duplicates: str | None = None  # error (default) | first | mean
    trust: str = "check"
    on_bad_row: str = "error"
    grid_map: Path | None = None
    grid_map_id_column: str = "index"
    grid_map_row_column: str = "row"
    grid_map_col_column: str = "col"
    id_column: str = "grid_id_coord"
    embedding_column: str = "embedding"
    modality_column: str = "modality"
    chunks: tuple[int, int] | None = None
    prefix: str | None = None  # array-name prefix; default "" (--out), "copernicus_" (attach)
    overwrite: bool = False
    batch_rows: int = 8192
    workers: int | None = None

    def __post_init__(self) -> None:
        def one_of(name: str, value: object, allowed: Sequence[str]) -> None:
            if value not in allowed:
                raise OptionError(f"--{name.replace('_', '-')} must be one of "
                                  f"{', '.join(allowed)}, found {value!r}")

        if self.layout is not None:
            one_of("layout", self.layout, LAYOUTS)
        one_of("dtype", self.dtype, DTYPES)
        one_of("fill", self.fill, FILLS)
        one_of("aggregate", self.aggregate, AGGREGATES)
        if self.duplicates is not None:
            one_of("duplicates", self.duplicates, DUPLICATES)
        one_of("trust", self.trust, TRUSTS)
        one_of("on_bad_row", self.on_bad_row, ON_BAD_ROW)
        if self.layout is not None and self.like is not None:
            raise OptionError("--layout and --like both choose the target grid; pass only one")
        if self.aggregate == "mean" and self.duplicates not in (None, "mean"):
            raise OptionError(f"--aggregate mean averages every row of a cell, so --duplicates "
                              f"{self.duplicates} cannot apply; drop one of the two options")
        if self.modalities and self.aggregate != "mean":
            raise OptionError("--modality filters per-modality rows, which need --aggregate mean")
        if self.pca is not None and self.pca < 1:
            raise OptionError(f"--pca must be a positive number of components, found {self.pca}")
        if self.grid_map is not None and self.trust == "coords":
            raise OptionError("--grid-map places cells by id but --trust coords ignores ids; "
                              "drop one of the two options")
        if self.chunks is not None:
            a, b = self.chunks
            if not (1 <= a <= N_LAT and 1 <= b <= N_LON):
                raise OptionError(f"--chunks must be LAT,LON with 1 <= LAT <= 721 and "
                                  f"1 <= LON <= 1440, found {a},{b}")
        if self.batch_rows < 1:
            raise OptionError(f"--batch-rows must be positive, found {self.batch_rows}")
        if self.prefix is not None and not re.fullmatch(r"[A-Za-z0-9_.-]*", self.prefix):
            raise OptionError(f"--prefix may hold letters, digits, '_', '.', '-', "
                              f"found {self.prefix!r}")

    @property
    def duplicate_policy(self) -> str:
        return "mean" if self.aggregate == "mean" else (self.duplicates or "error")


@dataclass(frozen=True)
class EmbedMapResult:
    """What a build did; ``to_dict()`` is JSON-ready."""

    out: str | None
    attached_to: str | None
    npz: str | None
    arrays: tuple[str, ...]
    layout: str
    shape: tuple[int, int, int]
    chunks: tuple[int, int, int]
    dtype: str
    fill: str
    input_dim: int
    pca_components: int | None
    pca_explained_variance_ratio: float | None
    valid_cells: int
    rows_read: int
    rows_used: int
    rows_filtered: int
    duplicate_rows: int
    skipped: dict[str, int]
    first_skipped: dict[str, str]
    sources: tuple[dict[str, Any], ...]
    seconds: float

    @property
    def rows_skipped(self) -> int:
        return sum(self.skipped.values())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rows_skipped"] = self.rows_skipped
        return d


#: progress(phase, done, total): phase is "read" (rows), "pca", "write" (chunks), "npz" (rows).
ProgressFn = Callable[[str, int, int], None]


# --- inputs ---------------------------------------------------------------------------------


def _input_kind(path: Path) -> str:
    if not path.exists():
        raise EmbedMapError(f"input {path} does not exist; pass a parquet file or an .npz map")
    if path.is_dir():
        raise EmbedMapError(f"input {path} is a directory; pass the parquet files inside it")
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] == b"PAR1":
        return "parquet"
    if head[:4] == b"PK\x03\x04":
        return "npz"
    if head[:6] == b"\x93NUMPY":
        return "npy"
    raise EmbedMapError(f"input {path} is neither parquet nor .npz/.npy (starts with {head[:4]!r});"
                        " pass Copernicus-Embed parquet rows or embed_map_310k.npz")


def _sha256_files(paths: Sequence[Path], out: dict[str, str], stop: threading.Event) -> None:
    """sha256 of each input (run on a background thread while the inputs are read)."""
    for p in paths:
        h = hashlib.sha256()
        try:
            with open(p, "rb") as f:
                while block := f.read(4 << 20):
                    if stop.is_set():
                        return
                    h.update(block)
        except OSError:
            continue
        out[str(p)] = h.hexdigest()


def load_grid_map(path: Path, id_column: str, row_column: str, col_column: str) -> np.ndarray:
    """The upstream pixel-mapping parquet as a lookup table grid id -> canonical cell (-1: none).

    Pixels are (row, col) in the upstream map layout: row 0 at 90N, col 0 at 180W.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not Path(path).is_file():
        raise EmbedMapError(f"--grid-map {path} does not exist; pass grid_0_25_globe_pix.parquet")
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as err:
        raise EmbedMapError(f"--grid-map {path}: cannot read parquet ({_one_line(err)})") from None
    cols = {"--grid-map-id-column": id_column, "--grid-map-row-column": row_column,
            "--grid-map-col-column": col_column}
    for opt, name in cols.items():
        if name not in schema.names:
            raise EmbedMapError(f"--grid-map {path}: no column {name!r} (columns: "
                                f"{', '.join(schema.names)}); name the right one with {opt}")
    t = pq.read_table(path, columns=[id_column, row_column, col_column])
    try:
        ids, rows, cols_ = (np.asarray(t.column(c).cast(pa.int64()).to_numpy(), dtype=np.int64)
                            for c in (id_column, row_column, col_column))
    except (pa.ArrowException, ValueError) as err:
        raise EmbedMapError(f"--grid-map {path}: id/row/col columns must be whole numbers without "
                            f"nulls ({_one_line(err)})") from None
    bad = np.flatnonzero((ids < 0) | (ids > 9_999_999) | (rows < 0) | (rows >= N_LAT)
                         | (cols_ < 0) | (cols_ >= N_LON))
    if bad.size:
        k = int(bad[0])
        raise EmbedMapError(
            f"--grid-map {path} row {k}: id {ids[k]} -> pixel ({rows[k]}, {cols_[k]}) is outside "
            "the 721 x 1440 map; check --grid-map-row-column/--grid-map-col-column")
    table = np.full(int(ids.max(initial=0)) + 1, -1, dtype=np.int64)
    cells = (720 - rows) * N_LON + cols_
    table[ids] = cells
    if not np.array_equal(table[ids], cells):
        k = int(np.flatnonzero(table[ids] != cells)[0])
        raise EmbedMapError(f"--grid-map {path} row {k}: id {ids[k]} is mapped to two different "
                            "pixels; each id needs one pixel")
    return table


@dataclass
class _BadRows:
    """Bad-row policy: raise on the first one, or count them per reason."""

    policy: str
    counts: dict[str, int] = field(default_factory=dict)
    first: dict[str, str] = field(default_factory=dict)

    def report(self, where: str, code: int, n: int, message: str) -> None:
        reason = REASONS[code]
        if self.policy == "error":
            raise EmbedMapError(f"{where}: {reason}: {message}; fix the row or pass "
                                "--on-bad-row skip to drop such rows")
        self.counts[reason] = self.counts.get(reason, 0) + n
        self.first.setdefault(reason, where)


@dataclass
class _Source:
    path: Path
    kind: str
    rows: int
    label: str


class _Reader:
    """Streams every input as batches of (cells, vectors float32 (n, D), row numbers)."""

    def __init__(self, opts: EmbedMapOptions, id_table: np.ndarray | None, bad: _BadRows) -> None:
        self.opts = opts
        self.id_table = id_table
        self.bad = bad
        self.dim: int | None = None
        self.dim_from = ""
        self.filtered = 0
        self.position = 0  # rows (or map pixels) of the current source consumed so far
        self.modalities_seen: set[str] = set()

    # parquet -------------------------------------------------------------------------------
    def parquet_schema_check(self, src: _Source) -> Any:  # a pyarrow ParquetFile
        import pyarrow as pa
        import pyarrow.parquet as pq

        o = self.opts
        try:
            pf = pq.ParquetFile(src.path, buffer_size=1 << 20, pre_buffer=False)
        except (pa.ArrowException, OSError) as err:
            raise EmbedMapError(f"{src.label}: cannot read parquet ({_one_line(err)})") from None
        schema = pf.schema_arrow
        names = schema.names
        for col, opt in ((o.id_column, "--id-column"), (o.embedding_column, "--embedding-column")):
            if col not in names:
                raise EmbedMapError(f"{src.label}: missing column {col!r} (columns: "
                                    f"{', '.join(names)}); expected the Copernicus-Embed schema "
                                    f"[grid_id_coord, embedding], or name it with {opt}")
        et = schema.field(o.embedding_column).type
        if not ((pa.types.is_list(et) or pa.types.is_large_list(et)
                 or pa.types.is_fixed_size_list(et)) and pa.types.is_floating(et.value_type)):
            raise EmbedMapError(f"{src.label}: column {o.embedding_column!r} is {et}; expected a "
                                "list, large_list or fixed_size_list of float16/32/64")
        it = schema.field(o.id_column).type
        if not (pa.types.is_string(it) or pa.types.is_large_string(it)
                or (pa.types.is_dictionary(it) and pa.types.is_string(it.value_type))
                or pa.types.is_string_view(it)):
            raise EmbedMapError(f"{src.label}: column {o.id_column!r} is {it}; expected strings "
                                f"such as {ID_EXAMPLE!r}")
        has_mod = o.modality_column in names
        if has_mod and o.aggregate == "none":
            raise EmbedMapError(f"{src.label}: has per-modality rows (column "
                                f"{o.modality_column!r}); pass --aggregate mean to average them "
                                "per grid cell (optionally --modality to filter)")
        if o.modalities and not has_mod:
            raise EmbedMapError(f"{src.label}: --modality needs a {o.modality_column!r} column "
                                f"(columns: {', '.join(names)})")
        return pf

    def read_parquet(self, src: _Source) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        import pyarrow as pa
        import pyarrow.compute as pc

        o = self.opts
        pf = self.parquet_schema_check(src)
        columns = [o.id_column, o.embedding_column]
        if o.modalities:
            columns.append(o.modality_column)
        start = 0
        batches = pf.iter_batches(batch_size=o.batch_rows, columns=columns, use_threads=True)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except (pa.ArrowException, OSError) as err:
                raise EmbedMapError(f"{src.label}: cannot read parquet near row {start} "
                                    f"({_one_line(err)}); is the file truncated?") from None
            n = batch.num_rows
            rows = np.arange(start, start + n, dtype=np.int64)
            start += n
            self.position = start
            ids = batch.column(o.id_column)
            emb = batch.column(o.embedding_column)
            if o.modalities:
                mods = batch.column(o.modality_column)
                if pa.types.is_dictionary(mods.type):
                    mods = mods.dictionary_decode()
                self.modalities_seen.update(str(v) for v in pc.unique(mods).to_pylist())
                keep = pc.fill_null(pc.is_in(mods, value_set=pa.array(list(o.modalities))), False)
                keep_np = np.asarray(keep.to_numpy(zero_copy_only=False), dtype=bool)
                if not keep_np.all():
                    self.filtered += int((~keep_np).sum())
                    ids, emb, rows = ids.filter(keep), emb.filter(keep), rows[keep_np]
                    n = len(rows)
                if n == 0:
                    continue
            yield self._parquet_batch(src, ids, emb, rows)

    def _parquet_batch(self, src: _Source, ids: Any, emb: Any, rows: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import pyarrow as pa
        import pyarrow.compute as pc

        o = self.opts
        n = len(rows)
        codes, cells = _classify_ids(ids, o.trust, self.id_table)
        # embedding checks: null / length / finiteness
        valid = np.asarray(emb.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        if pa.types.is_fixed_size_list(emb.type):
            lengths = np.full(n, emb.type.list_size, dtype=np.int64)
        else:
            lengths = np.asarray(pc.fill_null(pc.list_value_length(emb), -1)
                                 .to_numpy(zero_copy_only=False), dtype=np.int64)
        if self.dim is None:
            first = np.flatnonzero(valid & (codes == _OK))
            if first.size:
                self.dim = int(lengths[first[0]])
                self.dim_from = f"{src.label} row {rows[first[0]]}"
                if self.dim < 1:
                    raise EmbedMapError(f"{self.dim_from}: embedding is empty; expected D >= 1 "
                                        "floats per row")
        emb_codes = np.full(n, _OK, dtype=np.int8)
        emb_codes[~valid] = 6
        if self.dim is not None:
            emb_codes[valid & (lengths != self.dim)] = 7
        good = (codes == _OK) & (emb_codes == _OK)
        d = self.dim or 0
        sel = emb if good.all() else emb.filter(pa.array(good))
        flat = sel.flatten()
        vecs = np.asarray(flat.to_numpy(zero_copy_only=False))
        if vecs.dtype != np.float32:
            with np.errstate(over="ignore", invalid="ignore"):
                vecs = vecs.astype(np.float32)
        vecs = vecs.reshape(-1, d) if d else vecs.reshape(0, 0)
        finite = np.isfinite(vecs).all(axis=1) if vecs.size else np.ones(len(vecs), bool)
        if not finite.all():
            idx = np.flatnonzero(good)
            emb_codes[idx[~finite]] = 8
        # report in row order: the first bad row of the batch, else count per reason
        all_codes = np.where(codes != _OK, codes, emb_codes)
        bad_idx = np.flatnonzero(all_codes != _OK)
        if bad_idx.size:
            k = int(bad_idx[0])
            where = f"{src.label} row {rows[k]}"
            code = int(all_codes[k])
            if self.bad.policy == "error":
                self.bad.report(where, code, 1, self._detail(code, k, ids, lengths, vecs, good))
            for c in np.unique(all_codes[bad_idx]):
                ks = bad_idx[all_codes[bad_idx] == c]
                self.bad.report(f"{src.label} row {rows[ks[0]]}", int(c), int(ks.size), "")
        if not finite.all():
            vecs = vecs[finite]
            keep = np.flatnonzero(good)[finite]
        else:
            keep = np.flatnonzero(good)
        return cells[keep], vecs, rows[keep]

    def _detail(self, code: int, k: int, ids: Any, lengths: np.ndarray, vecs: np.ndarray,
                good: np.ndarray) -> str:
        if code <= 5:
            text = ids[k].as_py()
            return f"grid_id_coord {_short(text)}: {_classify_id(text, self.opts.trust, self.id_table)[2]}"
        if code == 6:
            return "the embedding is null; expected a list of floats"
        if code == 7:
            return (f"found {lengths[k]} floats, expected {self.dim} (as in {self.dim_from}); "
                    "all embeddings must have the same length")
        return "the embedding holds NaN or infinity (or a float64 beyond float32 range)"

    # npz / npy -----------------------------------------------------------------------------
    def read_map(self, src: _Source) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Rows of an upstream map (north-up, col 0 at 180W); all-zero vectors are missing."""
        with _open_npy_member(src) as (f, shape, dtype):
            d = shape[2]
            if self.dim is None:
                self.dim, self.dim_from = d, src.label
            elif d != self.dim:
                raise EmbedMapError(f"{src.label}: map has D = {d}, expected {self.dim} (as in "
                                    f"{self.dim_from}); all inputs need the same embedding length")
            row_bytes = N_LON * d * dtype.itemsize
            for r in range(N_LAT):
                self.position = (r + 1) * N_LON
                buf = f.read(row_bytes)
                if len(buf) != row_bytes:
                    raise EmbedMapError(f"{src.label}: map ends at row {r} of 721; the file is "
                                        "truncated, download it again")
                v = np.frombuffer(buf, dtype=dtype).reshape(N_LON, d)
                present = np.flatnonzero(np.any(v != 0, axis=1))
                if not present.size:
                    yield (np.empty(0, np.int64), np.empty((0, d), np.float32),
                           np.empty(0, np.int64))
                    continue
                vv = v[present].astype(np.float32)
                finite = np.isfinite(vv).all(axis=1)
                if not finite.all():
                    c = int(present[~finite][0])
                    self.bad.report(f"{src.label} pixel (row {r}, col {c})", 8,
                                    int((~finite).sum()), "the map holds NaN or infinity")
                    vv, present = vv[finite], present[finite]
                cells = (720 - r) * N_LON + present.astype(np.int64)
                yield cells, vv, r * N_LON + present.astype(np.int64)


class _open_npy_member:
    """Context manager: (file object positioned at the data, shape, dtype) of arr_0 / an .npy."""

    def __init__(self, src: _Source) -> None:
        self.src = src
        self._stack: list[zipfile.ZipFile | IO[bytes]] = []

    def __enter__(self) -> tuple[IO[bytes], tuple[int, ...], np.dtype[Any]]:
        src = self.src
        try:
            if src.kind == "npz":
                zf = zipfile.ZipFile(src.path)
                self._stack.append(zf)
                names = zf.namelist()
                if "arr_0.npy" not in names:
                    raise EmbedMapError(f"{src.label}: no arr_0 in the npz (found "
                                        f"{', '.join(n.removesuffix('.npy') for n in names)}); "
                                        "expected the upstream embed_map_310k.npz")
                f = zf.open("arr_0.npy")
            else:
                f = open(src.path, "rb")
            self._stack.append(f)
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        except EmbedMapError:
            self.__exit__(None, None, None)
            raise
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            self.__exit__(None, None, None)
            raise EmbedMapError(f"{src.label}: cannot read the map ({_one_line(err)})") from None
        if len(shape) != 3 or shape[:2] != (N_LAT, N_LON) or fortran or dtype.kind != "f":
            self.__exit__(None, None, None)
            raise EmbedMapError(f"{src.label}: map is {dtype} {shape}"
                                f"{' (Fortran order)' if fortran else ''}; expected a C-order "
                                "float array of shape (721, 1440, D) as in embed_map_310k.npz")
        return f, shape, dtype

    def __exit__(self, *exc: object) -> None:
        while self._stack:
            try:
                self._stack.pop().close()
            except Exception:  # noqa: BLE001
                pass


def _check_map(src: _Source) -> None:
    with _open_npy_member(src):
        pass


# --- spill: one pair of files per output chunk -------------------------------------------------


class _Spill:
    """Append-only per-chunk files: ``k.idx`` (int32 cell, int32 count) and ``k.vec`` (float32)."""

    def __init__(self, root: Path, grid: Grid, chunk_lat: int, chunk_lon: int) -> None:
        self.root = root
        self.grid = grid
        self.cl, self.cw = chunk_lat, chunk_lon
        self.n_cc = math.ceil(N_LON / chunk_lon)
        self.n_chunks = math.ceil(N_LAT / chunk_lat) * self.n_cc
        self.sizes = np.zeros(self.n_chunks, dtype=np.int64)
        root.mkdir(parents=True, exist_ok=True)

    def chunk_of(self, cells: np.ndarray) -> np.ndarray:
        r, c = self.grid.place(cells)
        return cast(np.ndarray, (r // self.cl) * self.n_cc + c // self.cw)

    def bounds(self, k: int) -> tuple[int, int, int, int]:
        r0, c0 = (k // self.n_cc) * self.cl, (k % self.n_cc) * self.cw
        return r0, min(N_LAT, r0 + self.cl), c0, min(N_LON, c0 + self.cw)

    def append(self, cells: np.ndarray, counts: np.ndarray, vecs: np.ndarray) -> None:
        keys = self.chunk_of(cells)
        order = np.argsort(keys, kind="stable")
        keys, cells, counts = keys[order], cells[order], counts[order]
        vecs = vecs[order]
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        ends = np.r_[starts[1:], len(keys)]
        for s, e in zip(starts, ends):
            k = int(keys[s])
            idx = np.empty((e - s, 2), dtype=np.int32)
            idx[:, 0], idx[:, 1] = cells[s:e], counts[s:e]
            with open(self.root / f"{k}.idx", "ab") as f:
                idx.tofile(f)
            with open(self.root / f"{k}.vec", "ab") as f:
                np.ascontiguousarray(vecs[s:e]).tofile(f)
            self.sizes[k] += e - s

    def records(self, k: int, dim: int, block: int) -> Iterator[tuple[np.ndarray, np.ndarray,
                                                                       np.ndarray]]:
        """(cells, counts, vectors) of chunk k, ``block`` records at a time."""
        n = int(self.sizes[k])
        with open(self.root / f"{k}.idx", "rb") as fi, open(self.root / f"{k}.vec", "rb") as fv:
            for s in range(0, n, block):
                m = min(block, n - s)
                idx = np.fromfile(fi, dtype=np.int32, count=2 * m).reshape(m, 2)
                vec = np.fromfile(fv, dtype=np.float32, count=m * dim).reshape(m, dim)
                yield idx[:, 0].astype(np.int64), idx[:, 1].astype(np.int64), vec


def _group_mean(keys: np.ndarray, counts: np.ndarray, vecs: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unique keys, summed counts, count-weighted sums float64) of rows sharing a key."""
    order = np.argsort(keys, kind="stable")
    ks = keys[order]
    starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
    w = counts[order].astype(np.float64)
    sums = np.add.reduceat(vecs[order].astype(np.float64) * w[:, None], starts, axis=0)
    return ks[starts], np.add.reduceat(w, starts), sums


# --- the build ------------------------------------------------------------------------------


def _auto_chunks(channels: int, itemsize: int, target: int = 16 << 20) -> tuple[int, int]:
    """Largest spatial chunk from a fixed ladder whose uncompressed size is <= ``target``."""
    for cl, cw in ((N_LAT, N_LON), (360, 720), (180, 360), (90, 180), (45, 90), (30, 60),
                   (15, 30)):
        if cl * cw * channels * itemsize <= target:
            return cl, cw
    return 15, 30


def _names(prefix: str, pca: bool) -> dict[str, str]:
    keys = ["embedding", "valid", "channel"]
    if pca:
        keys += ["pca_components", "pca_mean", "pca_explained_variance",
                 "pca_explained_variance_ratio", "component", "channel_in"]
    return {k: prefix + k for k in keys}


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_temp_dir(target: Path, tag: str) -> Path:
    """A fresh directory beside ``target`` (same file system, so the final rename is atomic)."""
    try:
        path = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.{tag}-"))
    except OSError as err:
        raise EmbedMapError(f"cannot create a temporary directory beside {target} "
                            f"({_one_line(err)}); check that {target.parent} is writable") from None
    os.chmod(path, 0o777 & ~_umask())
    return path


def build_embed_map(
    inputs: Sequence[Path | str],
    out: Path | str | None = None,
    *,
    attach_to: Path | str | None = None,
    options: EmbedMapOptions | None = None,
    progress: ProgressFn | None = None,
) -> EmbedMapResult:
    """Build the embedding map from ``inputs`` into ``out`` (a new Zarr v3 store) or into the
    existing store ``attach_to`` (new arrays only). See ``docs/embedmap.md``."""
    t0 = time.perf_counter()
    o = options or EmbedMapOptions()
    prog = progress or (lambda phase, done, total: None)

    # ---- options that depend on each other, and the target --------------------------------
    if not inputs:
        raise OptionError("no inputs; pass one or more parquet files or an .npz map")
    if (out is None) == (attach_to is None):
        raise OptionError("pass exactly one of --out (a new store) and --attach-to (an existing "
                          "store)")
    paths = [Path(p) for p in inputs]
    kinds = [_input_kind(p) for p in paths]
    if attach_to is not None:
        if o.like is not None or o.layout is not None:
            raise OptionError("--attach-to takes the grid from the store itself; drop --layout "
                              "and --like")
        target = Path(attach_to)
        if not target.is_dir():
            raise EmbedMapError(f"--attach-to {target} is not a local Zarr directory store; "
                                "pass the path of an existing ERA5 or latent store")
        grid = replace(grid_from_store(target, "--attach-to"), name="attach")
        prefix = "copernicus_" if o.prefix is None else o.prefix
    else:
        target = Path(out)  # type: ignore[arg-type]
        if target.exists() and not o.overwrite:
            raise OptionError(f"output {target} already exists; pass --overwrite to replace it")
        if not target.parent.is_dir():
            raise OptionError(f"output directory {target.parent} does not exist; create it first")
        if o.like is not None:
            grid = replace(grid_from_store(o.like), lat_dim="latitude", lon_dim="longitude")
        else:
            grid = Grid.copernicus() if o.layout == "copernicus" else Grid.era5()
        prefix = o.prefix or ""
    if o.npz is not None:
        npz = Path(o.npz)
        if npz.exists() and not o.overwrite:
            raise OptionError(f"--npz {npz} already exists; pass --overwrite to replace it")
        if not npz.parent.is_dir():
            raise OptionError(f"--npz directory {npz.parent} does not exist; create it first")
        if npz.suffix != ".npz":
            raise OptionError(f"--npz {npz} must end in .npz (numpy.load reads it as a zip)")
    names = _names(prefix, o.pca is not None)
    if attach_to is not None:
        _check_clash(target, names, grid, o.overwrite)

    id_table = None
    if o.grid_map is not None:
        id_table = load_grid_map(Path(o.grid_map), o.grid_map_id_column, o.grid_map_row_column,
                                 o.grid_map_col_column)

    # ---- sources -----------------------------------------------------------------------------
    bad = _BadRows(o.on_bad_row)
    reader = _Reader(o, id_table, bad)
    sources = []
    for p, k in zip(paths, kinds):
        src = _Source(p, k, 0, str(p))
        if k == "parquet":
            src.rows = reader.parquet_schema_check(src).metadata.num_rows
        else:
            _check_map(src)
            src.rows = N_CELLS  # map pixels
        sources.append(src)
    total_rows = sum(s.rows for s in sources)
    hashes: dict[str, str] = {}
    stop_hashing = threading.Event()
    hasher = threading.Thread(target=_sha256_files, args=(paths, hashes, stop_hashing),
                              daemon=True)

    work = _new_temp_dir(target, "tmp" if attach_to is None else "attach-tmp")
    npz_tmp: Path | None = None
    try:
        hasher.start()
        # ---- 1. read: validate and spill per output chunk -----------------------------------
        policy = o.duplicate_policy
        first_at = np.full(N_CELLS, -1, dtype=np.int64)  # (source << 40) | row of first row seen
        spill: _Spill | None = None
        rows_before = rows_used = 0
        for si, src in enumerate(sources):
            reader.position = 0
            it = reader.read_parquet(src) if src.kind == "parquet" else reader.read_map(src)
            for cells, vecs, rows in it:
                prog("read", rows_before + reader.position, total_rows)
                if not len(cells):
                    continue
                if spill is None:
                    channels = o.pca or reader.dim or 1
                    itemsize = 2 if o.dtype == "float16" else 4
                    cl, cw = o.chunks or _auto_chunks(channels, itemsize)
                    spill = _Spill(work / "spill", grid, cl, cw)
                rows_used += len(cells)
                cells, counts, vecs = _dedupe(cells, vecs, rows, si, first_at, policy, sources)
                spill.append(cells, counts, vecs)
            rows_before += src.rows
            prog("read", rows_before, total_rows)
        if reader.dim is None or spill is None or not spill.sizes.any():
            skipped = f" ({sum(bad.counts.values())} skipped as bad)" if bad.counts else ""
            filt = (f"; --modality {','.join(o.modalities)} matched none of "
                    f"{sorted(reader.modalities_seen)}" if o.modalities else "")
            raise EmbedMapError(f"no valid embedding rows in {len(paths)} input(s){skipped}"
                                f"{filt}; nothing to build")
        dim = reader.dim
        if o.pca is not None and o.pca > dim:
            raise OptionError(f"--pca {o.pca} exceeds the embedding length D = {dim}; pass "
                              f"--pca {dim} or fewer")

        # ---- 2. pca ------------------------------------------------------------------------
        workers = o.workers or min(4, max(1, os.cpu_count() or 1))
        asm = _Assembler(spill, dim, policy == "mean")
        pca = None
        if o.pca is not None:
            pca = _fit_pca(asm, o.pca, prog)
        channels = o.pca or dim

        # ---- 3. write ----------------------------------------------------------------------
        store_path = work / "store.zarr"
        zarr_format: _ZarrFormat = _zarr_format(target) if attach_to is not None else 3
        cl, cw = spill.cl, spill.cw
        attrs = {
            "era5latent_embedmap_version": FORMAT_VERSION,
            "title": "Copernicus-Embed-025deg embedding map on the ERA5 0.25-degree grid",
            "layout": grid.name,
            "like": str(o.like) if o.like is not None else (
                str(attach_to) if attach_to is not None else None),
            "grid": grid.describe(),
            "input_dim": dim,
            "channels": channels,
            "dtype": o.dtype,
            "fill": o.fill,
            "aggregate": o.aggregate,
            "modalities": list(o.modalities),
            "duplicates": policy,
            "trust": o.trust,
            "on_bad_row": o.on_bad_row,
            "grid_map": str(o.grid_map) if o.grid_map is not None else None,
        }
        valid = np.zeros((N_LAT, N_LON), dtype=bool)
        arrays = _create_arrays(store_path, zarr_format, names, grid, channels, dim, (cl, cw),
                                o, attach_to is not None)
        emb_arr = arrays["embedding"]
        fill_value = np.nan if o.fill == "nan" else 0.0
        out_dtype = np.dtype(o.dtype)
        todo = [k for k in range(spill.n_chunks) if spill.sizes[k] or zarr_format == 2]

        def write_chunk(k: int) -> None:
            r0, r1, c0, c1 = spill.bounds(k)
            if spill.sizes[k]:
                local, vecs = asm.chunk(k)
            else:
                local, vecs = np.empty(0, np.int64), np.empty((0, dim), np.float32)
            if pca is not None:
                vecs = (vecs - pca["mean"]) @ pca["components"].T
            block = np.full(((r1 - r0) * (c1 - c0), channels), fill_value, dtype=out_dtype)
            block[local] = vecs
            vm = np.zeros((r1 - r0) * (c1 - c0), dtype=bool)
            vm[local] = True
            valid[r0:r1, c0:c1] = vm.reshape(r1 - r0, c1 - c0)
            emb_arr[r0:r1, c0:c1, :] = block.reshape(r1 - r0, c1 - c0, channels)
            faults.point("embedmap.chunk-written")

        _run_pool(write_chunk, todo, workers, lambda i: prog("write", i, len(todo)))
        arrays["valid"][...] = valid
        n_valid = int(valid.sum())
        if pca is not None:
            arrays["pca_components"][...] = pca["components"]
            arrays["pca_mean"][...] = pca["mean"]
            arrays["pca_explained_variance"][...] = pca["variance"]
            arrays["pca_explained_variance_ratio"][...] = pca["ratio"]
            attrs["pca"] = {"components": o.pca, "fitted_cells": pca["n"],
                            "explained_variance_ratio_total": float(pca["ratio"].sum()),
                            "method": "exact eigendecomposition of a streamed D x D covariance",
                            "projection": "(x - pca_mean) @ pca_components.T"}
        else:
            attrs["pca"] = None
        hasher.join()
        src_meta = tuple({"path": str(s.path), "name": s.path.name, "kind": s.kind,
                          "rows": s.rows, "sha256": hashes.get(str(s.path))} for s in sources)
        attrs.update({
            "sources": list(src_meta),
            "valid_cells": n_valid,
            "rows_read": total_rows,
            "rows_used": rows_used,
            "rows_filtered": reader.filtered,
            "rows_skipped": dict(bad.counts),
            "duplicate_rows": rows_used - n_valid,
        })
        emb_arr.attrs.update(_jsonable(attrs))
        shutil.rmtree(work / "spill", ignore_errors=True)
        if attach_to is None:
            import zarr

            zarr.open_group(str(store_path), mode="r+").attrs.update(_jsonable(attrs))
            _consolidate(store_path)

        # ---- 4. npz ------------------------------------------------------------------------
        if o.npz is not None:
            npz_path = Path(o.npz)
            fd, name = tempfile.mkstemp(dir=npz_path.parent, prefix=f".{npz_path.name}.tmp-")
            os.close(fd)
            npz_tmp = Path(name)
            os.chmod(npz_tmp, 0o666 & ~_umask())
            _write_npz(emb_arr, valid, grid, npz_tmp, out_dtype, prog)

        # ---- commit ------------------------------------------------------------------------
        if attach_to is None:
            _replace_dir(store_path, target)
        else:
            _move_arrays(store_path, target, list(names.values()), zarr_format)
        if npz_tmp is not None:
            os.replace(npz_tmp, Path(o.npz))  # type: ignore[arg-type]
            npz_tmp = None
    finally:
        stop_hashing.set()
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
        if npz_tmp is not None and npz_tmp.exists():
            npz_tmp.unlink()

    return EmbedMapResult(
        out=str(target) if attach_to is None else None,
        attached_to=str(target) if attach_to is not None else None,
        npz=str(o.npz) if o.npz is not None else None,
        arrays=tuple(names.values()),
        layout=grid.name,
        shape=(N_LAT, N_LON, channels),
        chunks=(cl, cw, channels),
        dtype=o.dtype,
        fill=o.fill,
        input_dim=dim,
        pca_components=o.pca,
        pca_explained_variance_ratio=float(pca["ratio"].sum()) if pca is not None else None,
        valid_cells=n_valid,
        rows_read=total_rows,
        rows_used=rows_used,
        rows_filtered=reader.filtered,
        duplicate_rows=rows_used - n_valid,
        skipped=dict(bad.counts),
        first_skipped=dict(bad.first),
        sources=src_meta,
        seconds=round(time.perf_counter() - t0, 3),
    )


def _dedupe(cells: np.ndarray, vecs: np.ndarray, rows: np.ndarray, si: int,
            first_at: np.ndarray, policy: str, sources: Sequence[_Source]
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply the duplicate policy to one batch: (cells, counts, vectors)."""
    tag = (np.int64(si) << 40) | rows
    uniq, first_idx = np.unique(cells, return_index=True)
    seen_before = first_at[uniq] >= 0
    in_batch_dups = len(uniq) != len(cells)
    if not in_batch_dups and not seen_before.any():
        first_at[cells] = tag
        return cells, np.ones(len(cells), np.int64), vecs
    if policy == "error":
        if seen_before.any():
            c = int(uniq[np.flatnonzero(seen_before)[0]])
            dup_row = int(rows[np.flatnonzero(cells == c)[0]])
            prev = int(first_at[c])
        else:
            mask = np.ones(len(cells), bool)
            mask[first_idx] = False
            k = int(np.flatnonzero(mask)[0])
            c, dup_row = int(cells[k]), int(rows[k])
            prev = int(tag[np.flatnonzero(cells == c)[0]])
        p_src, p_row = sources[prev >> 40].label, prev & ((1 << 40) - 1)
        raise EmbedMapError(
            f"{sources[si].label} row {dup_row}: duplicate grid id {c:07d} (first at {p_src} row "
            f"{p_row}); pass --duplicates first or --duplicates mean (or --aggregate mean for "
            "per-modality rows)")
    newly = uniq[~seen_before]
    first_at[newly] = tag[first_idx[~seen_before]]
    if policy == "first":
        keep = first_idx[~seen_before]
        keep.sort()
        return cells[keep], np.ones(len(keep), np.int64), vecs[keep]
    # mean: pre-reduce within the batch; chunks merge across batches later
    u, cnt, sums = _group_mean(cells, np.ones(len(cells), np.int64), vecs)
    return u, cnt.astype(np.int64), (sums / cnt[:, None]).astype(np.float32)


class _Assembler:
    """Turns one chunk's spill into (local cell indices, final vectors float32)."""

    def __init__(self, spill: _Spill, dim: int, merge: bool) -> None:
        self.spill, self.dim, self.merge = spill, dim, merge
        self.block = max(1024, (32 << 20) // (4 * dim))

    def chunk(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        sp = self.spill
        r0, r1, c0, c1 = sp.bounds(k)
        width = c1 - c0
        if not self.merge:  # at most one record per cell: read whole (bounded by chunk size)
            (cells, _, vecs), = list(sp.records(k, self.dim, int(sp.sizes[k]) or 1))
            r, c = sp.grid.place(cells)
            return (r - r0) * width + (c - c0), vecs
        n_local = (r1 - r0) * width
        acc = np.zeros((n_local, self.dim), dtype=np.float64)
        cnt = np.zeros(n_local, dtype=np.float64)
        for cells, counts, vecs in sp.records(k, self.dim, self.block):
            r, c = sp.grid.place(cells)
            u, w, sums = _group_mean((r - r0) * width + (c - c0), counts, vecs)
            acc[u] += sums
            cnt[u] += w
        local = np.flatnonzero(cnt)
        return local, (acc[local] / cnt[local, None]).astype(np.float32)


def _fit_pca(asm: _Assembler, k: int, prog: ProgressFn) -> dict[str, Any]:
    """Exact PCA from a streamed, shifted D x D covariance over every valid cell."""
    dim = asm.dim
    todo = [c for c in range(asm.spill.n_chunks) if asm.spill.sizes[c]]
    ref = None
    n = 0
    s1 = np.zeros(dim, dtype=np.float64)
    s2 = np.zeros((dim, dim), dtype=np.float64)
    for i, c in enumerate(todo):
        _, x = asm.chunk(c)
        if ref is None:
            ref = x.mean(axis=0, dtype=np.float64).astype(np.float32)
        xc = x - ref
        n += len(xc)
        s1 += xc.sum(axis=0, dtype=np.float64)
        s2 += (xc.T @ xc).astype(np.float64)
        prog("pca", i + 1, len(todo))
    if n < 2:
        raise EmbedMapError(f"--pca needs at least 2 valid cells, found {n}")
    cov = (s2 - np.outer(s1, s1) / n) / (n - 1)
    w, v = np.linalg.eigh((cov + cov.T) / 2)
    w, v = np.clip(w[::-1], 0, None), v[:, ::-1]
    comps = v[:, :k].T.copy()
    flip = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
    comps *= np.where(flip == 0, 1, flip)[:, None]
    total = w.sum()
    return {"components": comps.astype(np.float32),
            "mean": (ref + s1 / n).astype(np.float32),  # type: ignore[operator]
            "variance": w[:k], "ratio": w[:k] / total if total > 0 else np.zeros(k), "n": n}


def _run_pool(fn: Callable[[int], None], items: Sequence[int], workers: int,
              tick: Callable[[int], None]) -> None:
    """Run ``fn`` over ``items`` with at most ``2 * workers`` in flight (bounded memory)."""
    if workers <= 1:
        for i, it in enumerate(items):
            fn(it)
            tick(i + 1)
        return
    done = 0
    with ThreadPoolExecutor(max_workers=workers) as ex:
        inflight: list[Future[None]] = []
        for it in items:
            inflight.append(ex.submit(fn, it))
            while len(inflight) >= 2 * workers:
                inflight.pop(0).result()
                done += 1
                tick(done)
        for f in inflight:
            f.result()
            done += 1
            tick(done)


# --- zarr output ------------------------------------------------------------------------------


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda x: x.item() if hasattr(x, "item") else str(x)))


def _zarr_format(path: Path) -> _ZarrFormat:
    import zarr

    return zarr.open_group(str(path), mode="r").metadata.zarr_format


def _check_clash(store: Path, names: dict[str, str], grid: Grid, overwrite: bool) -> None:
    import zarr

    g = zarr.open_group(str(store), mode="r")
    existing = set(g.keys())
    clash = sorted(set(names.values()) & existing)
    if clash and not overwrite:
        raise OptionError(f"--attach-to {store} already has {', '.join(clash)}; pass --overwrite "
                          "to replace them or --prefix to choose other names")
    for dim in (names["channel"], names.get("component"), names.get("channel_in")):
        if dim and dim in (grid.lat_dim, grid.lon_dim):
            raise OptionError(f"--prefix makes {dim!r}, a dimension of the store; pick another")


def _create_arrays(path: Path, zarr_format: _ZarrFormat, names: dict[str, str], grid: Grid,
                   channels: int, dim: int, chunks: tuple[int, int], o: EmbedMapOptions,
                   attach: bool) -> dict[str, zarr.Array[Any]]:
    import zarr

    g = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    la, lo = grid.lat_dim, grid.lon_dim
    ch = names["channel"]

    def make(key: str, shape: tuple[int, ...], dims: list[str], dtype: str, fill: float | None,
             chunk_shape: tuple[int, ...] | None = None,
             attrs: dict[str, str] | None = None) -> zarr.Array[Any]:
        kw: dict[str, Any] = {"attributes": dict(attrs or {})}
        if zarr_format == 3:
            kw["dimension_names"] = list(dims)
        else:
            # v2 readers (xarray) mask values equal to fill_value: keep only a NaN fill, and
            # write every chunk, since a v2 array without fill_value has no defined default.
            kw["attributes"]["_ARRAY_DIMENSIONS"] = list(dims)
            kw["config"] = {"write_empty_chunks": True}
            if not (isinstance(fill, float) and math.isnan(fill) and key == "embedding"):
                fill = None
        return g.create_array(names.get(key, key), shape=shape, dtype=dtype, fill_value=fill,
                              chunks=chunk_shape or shape, **kw)

    arrays: dict[str, zarr.Array[Any]] = {}
    if not attach:
        lat = make("latitude", (N_LAT,), [la], "float64", np.nan,
                   attrs={"units": "degrees_north", "long_name": "latitude",
                          "standard_name": "latitude"})
        lat[...] = grid.latitude
        lon = make("longitude", (N_LON,), [lo], "float64", np.nan,
                   attrs={"units": "degrees_east", "long_name": "longitude",
                          "standard_name": "longitude"})
        lon[...] = grid.longitude
    chan = make("channel", (channels,), [ch], "int32", -1,
                attrs={"long_name": "PCA component" if o.pca else "embedding channel"})
    chan[...] = np.arange(channels, dtype=np.int32)
    fill = np.nan if o.fill == "nan" else 0.0
    arrays["embedding"] = make(
        "embedding", (N_LAT, N_LON, channels), [la, lo, ch], o.dtype, fill,
        (chunks[0], chunks[1], channels),
        {"long_name": "Copernicus-Embed-025deg grid embedding"
         + (f" projected on {o.pca} PCA components" if o.pca else ""),
         "missing": f"cells without an embedding hold {o.fill}; see {names['valid']}"})
    arrays["valid"] = make("valid", (N_LAT, N_LON), [la, lo], "bool", False,
                           attrs={"long_name": "cell has an embedding"})
    if o.pca:
        comp, cin = names["component"], names["channel_in"]
        make("component", (o.pca,), [comp], "int32", -1)[...] = np.arange(o.pca, dtype=np.int32)
        make("channel_in", (dim,), [cin], "int32", -1)[...] = np.arange(dim, dtype=np.int32)
        arrays["pca_components"] = make("pca_components", (o.pca, dim), [comp, cin], "float32",
                                        0.0, attrs={"long_name": "PCA components (rows)"})
        arrays["pca_mean"] = make("pca_mean", (dim,), [cin], "float32", 0.0,
                                  attrs={"long_name": "mean embedding subtracted before projecting"})
        arrays["pca_explained_variance"] = make("pca_explained_variance", (o.pca,), [comp],
                                                "float64", 0.0)
        arrays["pca_explained_variance_ratio"] = make("pca_explained_variance_ratio", (o.pca,),
                                                      [comp], "float64", 0.0)
    return arrays


def _consolidate(path: Path) -> None:
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(path))


def _is_consolidated(path: Path) -> bool:
    if (path / ".zmetadata").exists():
        return True
    meta = path / "zarr.json"
    if meta.exists():
        try:
            return json.loads(meta.read_text()).get("consolidated_metadata") is not None
        except (OSError, ValueError):
            return False
    return False


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; an existing ``dst`` is moved aside first, then deleted."""
    old = None
    if dst.exists() or dst.is_symlink():
        old = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.old-"))
        os.rename(dst, old / "old")
    os.rename(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _move_arrays(src_group: Path, store: Path, names: list[str], zarr_format: int) -> None:
    """Move finished arrays into ``store`` (replacing same-named ones), then re-consolidate."""
    consolidated = _is_consolidated(store)
    trash = Path(tempfile.mkdtemp(dir=store.parent, prefix=f".{store.name}.old-"))
    try:
        for name in names:
            if (store / name).exists():
                os.rename(store / name, trash / name)
        for name in names:
            os.rename(src_group / name, store / name)
    finally:
        shutil.rmtree(trash, ignore_errors=True)
    if consolidated:
        _consolidate(store)


def _write_npz(emb_arr: zarr.Array[Any], valid: np.ndarray, grid: Grid, path: Path,
               dtype: np.dtype, prog: ProgressFn) -> None:
    """Stream ``arr_0`` (721, 1440, C) in the upstream layout, zeros where invalid."""
    channels = emb_arr.shape[2]
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
              "shape": (N_LAT, N_LON, channels)}
    cols = grid.col_of_j  # upstream column j -> storage column
    rows_per = max(1, (64 << 20) // (N_LON * channels * 4))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open("arr_0.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, header)
            for r0 in range(0, N_LAT, rows_per):
                r1 = min(N_LAT, r0 + rows_per)
                srows = grid.row_of_i[720 - np.arange(r0, r1)]  # upstream row r -> storage row
                lo, hi = int(srows.min()), int(srows.max()) + 1
                block = np.asarray(emb_arr[lo:hi])[srows - lo][:, cols]
                vm = valid[srows][:, cols]
                block = block.astype(dtype, copy=False)
                block[~vm] = 0
                f.write(np.ascontiguousarray(block).tobytes())
                prog("npz", r1, N_LAT)
