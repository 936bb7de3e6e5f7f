"""Inputs: parquet rows and upstream .npz/.npy maps, streamed as validated batches; bad rows;
the --grid-map pixel table."""

from __future__ import annotations

import hashlib
import threading
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from era5latent.embed.grid import (
    ID_OK,
    ID_EXAMPLE,
    N_LAT,
    N_LON,
    REASONS,
    classify_id,
    classify_ids,
    one_line,
    shorten,
)
from era5latent.embed.options import EmbedMapOptions
from era5latent.errors import EmbedMapError


def input_kind(path: Path) -> str:
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


def sha256_files(paths: Sequence[Path], out: dict[str, str], stop: threading.Event) -> None:
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
        raise EmbedMapError(f"--grid-map {path}: cannot read parquet ({one_line(err)})") from None
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
                            f"nulls ({one_line(err)})") from None
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
class BadRows:
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
class InputSource:
    path: Path
    kind: str
    rows: int
    label: str


class Reader:
    """Streams every input as batches of (cells, vectors float32 (n, D), row numbers)."""

    def __init__(self, opts: EmbedMapOptions, id_table: np.ndarray | None, bad: BadRows) -> None:
        self.opts = opts
        self.id_table = id_table
        self.bad = bad
        self.dim: int | None = None
        self.dim_from = ""
        self.filtered = 0
        self.position = 0  # rows (or map pixels) of the current source consumed so far
        self.modalities_seen: set[str] = set()

    # parquet -------------------------------------------------------------------------------
    def parquet_schema_check(self, src: InputSource) -> Any:  # a pyarrow ParquetFile
        import pyarrow as pa
        import pyarrow.parquet as pq

        o = self.opts
        try:
            pf = pq.ParquetFile(src.path, buffer_size=1 << 20, pre_buffer=False)
        except (pa.ArrowException, OSError) as err:
            raise EmbedMapError(f"{src.label}: cannot read parquet ({one_line(err)})") from None
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

    def read_parquet(self, src: InputSource) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
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
                                    f"({one_line(err)}); is the file truncated?") from None
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

    def _parquet_batch(self, src: InputSource, ids: Any, emb: Any, rows: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import pyarrow as pa
        import pyarrow.compute as pc

        o = self.opts
        n = len(rows)
        codes, cells = classify_ids(ids, o.trust, self.id_table)
        # embedding checks: null / length / finiteness
        valid = np.asarray(emb.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        if pa.types.is_fixed_size_list(emb.type):
            lengths = np.full(n, emb.type.list_size, dtype=np.int64)
        else:
            lengths = np.asarray(pc.fill_null(pc.list_value_length(emb), -1)
                                 .to_numpy(zero_copy_only=False), dtype=np.int64)
        if self.dim is None:
            first = np.flatnonzero(valid & (codes == ID_OK))
            if first.size:
                self.dim = int(lengths[first[0]])
                self.dim_from = f"{src.label} row {rows[first[0]]}"
                if self.dim < 1:
                    raise EmbedMapError(f"{self.dim_from}: embedding is empty; expected D >= 1 "
                                        "floats per row")
        emb_codes = np.full(n, ID_OK, dtype=np.int8)
        emb_codes[~valid] = 6
        if self.dim is not None:
            emb_codes[valid & (lengths != self.dim)] = 7
        good = (codes == ID_OK) & (emb_codes == ID_OK)
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
        all_codes = np.where(codes != ID_OK, codes, emb_codes)
        bad_idx = np.flatnonzero(all_codes != ID_OK)
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
            return f"grid_id_coord {shorten(text)}: {classify_id(text, self.opts.trust, self.id_table)[2]}"
        if code == 6:
            return "the embedding is null; expected a list of floats"
        if code == 7:
            return (f"found {lengths[k]} floats, expected {self.dim} (as in {self.dim_from}); "
                    "all embeddings must have the same length")
        return "the embedding holds NaN or infinity (or a float64 beyond float32 range)"

    # npz / npy -----------------------------------------------------------------------------
    def read_map(self, src: InputSource) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
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

    def __init__(self, src: InputSource) -> None:
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
            raise EmbedMapError(f"{src.label}: cannot read the map ({one_line(err)})") from None
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


def check_map(src: InputSource) -> None:
    with _open_npy_member(src):
        pass
