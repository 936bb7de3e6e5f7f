"""The options of a build (validated on construction), its result, and the progress callback."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from era5latent.embed.grid import N_LAT, N_LON, TRUSTS
from era5latent.errors import OptionError

LAYOUTS = ("era5", "copernicus")
DTYPES = ("float16", "float32")
FILLS = ("0", "nan")
AGGREGATES = ("none", "mean")
DUPLICATES = ("error", "first", "mean")
ON_BAD_ROW = ("error", "skip")


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
