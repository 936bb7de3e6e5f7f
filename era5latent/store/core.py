"""The ERA5-latent store: schema, atomic creation, build state and metadata (docs/format.md).

A latent store is a Zarr v3 group. Its root attribute ``era5latent`` says fully how it was made.
Per group ``g`` an array ``codes_g`` of packed sign bits, dims ``(time, *sample_dims, token_lat,
token_lon, byte)``, uint8, chunked along time only, beside the coordinates; the bookkeeping lives
in the subgroup ``_era5latent`` (version 3, :mod:`era5latent.store.layout`): the bool array
``build_done(time_chunk)``, one chunk per time chunk, records which time chunks are complete.
Stores are created whole (every array, every coordinate) at a temporary path beside the target and
renamed into place, so a store either does not exist or is fully laid out; filling it is then a
sequence of chunk-aligned region writes each followed by its done flag, which makes an interrupted
build resumable and keeps concurrent writers of distinct time chunks apart.

This module also holds the generic helpers used by decode for ERA5-layout outputs.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from era5latent import __version__, faults
from era5latent.errors import OptionError, StoreError
from era5latent.fsutil import (
    LATENT,
    atomic_dir,
    check_plain_tree,
    is_url,
    os_error_of,
    remove_tree,
    url_fs,
)
from era5latent.store.locks import (
    LOCK as LOCK,  # the writer locks: their names stay importable here
)
from era5latent.store.locks import StoreLockedError as StoreLockedError
from era5latent.store.locks import check_unlocked as check_unlocked
from era5latent.store.locks import lock_name as lock_name
from era5latent.store.locks import lock_path as lock_path
from era5latent.store.locks import writer_lock as writer_lock
from era5latent.io.sources import iso
from era5latent.store.layout import DONE as DONE
from era5latent.store.layout import (
    SUBGROUPS,
    check_layout,
    location,
    subgroups,
    token_coords,
)
from era5latent.store.layout import checksum_name as checksum_name
from era5latent.store.layout import codes_name as codes_name
from era5latent.store.meta import (
    DIGEST_KEY,
    ROOT_DOC,
    check_metadata,
    is_consolidated,
    metadata_digests,
    read_doc,
    validate_attrs,
)

FORMAT = "era5latent.latent"
#: version 2: every array's chunks end in a crc32c (zarr checks it on read) and a finished store
#: records the sha256 of its metadata; version 3: bookkeeping in the subgroup ``_era5latent``,
#: token coordinates, an optional error-bounded residual layer (subgroup ``residual``, attribute
#: ``residual``); versions 1 and 2 (every array at the root) are still read (docs/format.md);
#: version 4: version 3 with a mask layer (subgroup ``mask``, attribute ``mask``: fields with
#: missing values, :mod:`era5latent.store.masks`), written only for stores that have one, so stores
#: without one stay readable by era5latent releases that know version 3
FORMAT_VERSION = 4
#: the version a store without a mask layer is written in
UNMASKED_VERSION = 3
ATTR = "era5latent"
TIME_UNITS = "seconds since 1970-01-01T00:00:00"


#: the last bytes-to-bytes codec of every array era5latent writes (latent stores and decoded
#: fields): a 4-byte CRC-32C per chunk that zarr-python and zarrs check on every read, so a
#: damaged chunk of any array (coordinates and flags included) is an error, never wrong values
CRC = Crc32cCodec()


def array(group: zarr.Group, name: str) -> zarr.Array[Any]:
    """The array ``name`` of ``group``; a :class:`StoreError` if it is missing or a group."""
    try:
        node = group[name]
    except KeyError:
        raise StoreError(f"{group.store}: array {name!r} is missing; the store is damaged or not "
                         "an era5latent store") from None
    except Exception as err:  # its zarr.json is damaged: zarr raises whatever its parser does
        raise StoreError(f"{group.store}: the metadata of array {name!r} is unreadable "
                         f"({type(err).__name__}); the store is damaged: re-encode it") from None
    if not isinstance(node, zarr.Array):
        raise StoreError(f"{group.store}: {name!r} is a group where an array was expected; the "
                         "store is damaged or not an era5latent store")
    return node


def _sha256(a: np.ndarray) -> bytes:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).digest()


def read_array(arr: zarr.Array[Any], sel: Any, where: str) -> np.ndarray:
    """``arr[sel]``; a chunk that fails its crc32c or cannot be decoded is a
    :class:`CorruptArrayError` naming the array (and chunk, when ``sel`` is one index)."""
    try:
        return np.asarray(arr[sel])
    except (OSError, MemoryError):
        raise
    except Exception as err:
        os_err = os_error_of(err)
        if os_err is not None:
            raise os_err from None
        chunk = f"chunk {sel // arr.chunks[0]}" if isinstance(sel, int) else _bad_chunk(arr, sel)
        raise CorruptArrayError(where, arr.path or "?", chunk, _why(err)) from None


def _bad_chunk(arr: zarr.Array[Any], sel: Any) -> str:
    """Which chunk (along the first axis) of a failed read of ``arr[sel]`` is damaged."""
    if arr.ndim == 0:
        return "chunk 0"
    lo, hi, _ = (sel if isinstance(sel, slice) else slice(None)).indices(arr.shape[0])
    c0 = arr.chunks[0]
    for i in range(lo // c0, -(-hi // c0)):
        try:
            arr[i * c0:(i + 1) * c0]
        except Exception:
            return f"chunk {i}"
    return "a chunk"


def _why(err: BaseException) -> str:
    text = str(err)
    if "checksum" in text.lower():
        return "crc32c mismatch"
    return f"unreadable: {type(err).__name__}"


class CorruptArrayError(StoreError):
    """A chunk of a store's array fails its crc32c or cannot be decoded."""

    def __init__(self, path: str, name: str, chunk: str, why: str) -> None:
        self.path, self.name, self.chunk, self.why = path, name, chunk, why
        super().__init__(f"{path}: {chunk} of array {name} is corrupt ({why}); the store is "
                         "damaged: re-encode it (era5latent verify lists every damaged chunk)")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.name, self.chunk, self.why))


class CorruptChunkError(StoreError):
    """A time chunk's codes (or residuals) cannot be read or do not match their checksum."""

    def __init__(self, path: str, group: str, chunk: int, why: str, array: str = "") -> None:
        self.path, self.group, self.chunk, self.why = path, group, chunk, why
        self.array = array or codes_name(group)
        super().__init__(f"{path}: time chunk {chunk} of group {group} ({self.array}) is corrupt "
                         f"({why}); re-encode that time range, or decode with --allow-corrupt to "
                         "fill it with NaN")

    def __reduce__(self) -> tuple[Any, ...]:  # rebuilt intact where Dask hands it back
        return (type(self), (self.path, self.group, self.chunk, self.why, self.array))


@dataclass(frozen=True)
class GroupSpec:
    """One variable group in a store: its channels and code geometry."""

    name: str
    channels: tuple[str, ...]  # channel codes, e.g. ("z500", "z850")
    meta: tuple[float, ...]  # PVUM metadata scalars, same order
    units: tuple[str, ...]
    code_bits: int
    token_grid: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return self.code_bits // 8

    def to_dict(self) -> dict[str, Any]:
        return {"channels": list(self.channels), "meta": list(self.meta), "units": list(self.units),
                "code_bits": self.code_bits, "token_grid": list(self.token_grid),
                "array": codes_name(self.name)}

    @classmethod
    def from_dict(cls, name: str, d: dict[str, Any]) -> GroupSpec:
        return cls(name, tuple(d["channels"]), tuple(float(m) for m in d["meta"]),
                   tuple(d["units"]), int(d["code_bits"]), (int(d["token_grid"][0]),
                                                             int(d["token_grid"][1])))


@dataclass(frozen=True)
class StoreSpec:
    """Everything that fixes a store's layout and meaning (the resume identity)."""

    groups: tuple[GroupSpec, ...]
    times: np.ndarray  # datetime64[ns]
    sample_coords: dict[str, np.ndarray]
    latitude: np.ndarray
    longitude: np.ndarray
    time_chunk: int
    model: dict[str, Any]  # sha256, preset, config
    normalisation: dict[str, dict[str, float]]
    source: dict[str, Any]  # path, format, layout, grid
    parts: int | None = None  # recorded when an ``encode --parts I/N`` run creates the store
    #: the residual layer (``ResidualSpec.to_dict()``), None: codes only
    residual: dict[str, Any] | None = None
    #: the mask layer's attribute (``{channels, fill, static_sha256}``), None: no NaN at the
    #: first time step; and the static masks it describes (written when the store is laid out)
    mask: dict[str, Any] | None = None
    static_masks: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    @property
    def n_chunks(self) -> int:
        return -(-len(self.times) // self.time_chunk)

    def chunk_bounds(self, i: int) -> tuple[int, int]:
        return i * self.time_chunk, min((i + 1) * self.time_chunk, len(self.times))

    def attrs(self) -> dict[str, Any]:
        t = self.times
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION if self.mask else UNMASKED_VERSION,
            "package_version": __version__,
            "model": self.model,
            "groups": {g.name: g.to_dict() for g in self.groups},
            "normalisation": self.normalisation,
            "source": self.source,
            "sample_dims": list(self.sample_coords),
            "time_range": [iso(t[0]), iso(t[-1])] if len(t) else [],
            "time_chunk": self.time_chunk,
            "complete": False,
        } | ({"parts": self.parts} if self.parts else {}) | (
            {"residual": self.residual} if self.residual else {}) | (
            {"mask": self.mask} if self.mask else {})

    def identity(self) -> dict[str, Any]:
        """What must match for a re-run to resume this store rather than be refused."""
        a = self.attrs()
        return {k: a[k] for k in ("format_version", "groups", "source", "sample_dims",
                                  "time_range")} | {
            "model_sha256": self.model["sha256"], "residual": self.residual, "mask": self.mask}


def jsonable(x: Any) -> Any:
    """``x`` as it reads back from JSON (arrays as lists): the form stored in attributes."""
    return json.loads(json.dumps(x, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


# -- parts: a store's time chunks cut into N contiguous shares ----------------------------------

#: the most parts a store can be cut into (each part owns at least one time chunk anyway)
MAX_PARTS = 100_000


def parse_part(text: str) -> tuple[int, int]:
    """``"I/N"`` (1-based) -> ``(I, N)``."""
    a, sep, b = text.strip().partition("/")
    try:
        i, n = int(a), int(b)
    except ValueError:
        i = n = 0
    if not sep or n < 1 or not 1 <= i <= n or n > MAX_PARTS:
        raise OptionError(f"--parts {text!r}: expected I/N with 1 <= I <= N <= {MAX_PARTS}, "
                          "e.g. 2/8")
    return i, n


def part_range(n_chunks: int, part: tuple[int, int] | None) -> range:
    """The time chunks of part ``(I, N)``: the I-th of N contiguous, near-equal shares."""
    if part is None:
        return range(n_chunks)
    i, n = part
    return range((i - 1) * n_chunks // n, i * n_chunks // n)


def parts_status(done: np.ndarray, n: int) -> dict[str, Any]:
    """Which of ``n`` parts have every time chunk written (what ``info`` and ``finalize`` say)."""
    if not 1 <= n <= MAX_PARTS:
        raise OptionError(f"--parts {n}: expected a count from 1 to {MAX_PARTS}")
    finished = [i for i in range(1, n + 1) if done[list(part_range(done.size, (i, n)))].all()]
    return {"count": n, "done": finished,
            "missing": [i for i in range(1, n + 1) if i not in finished]}


def chunk_ranges(chunks: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    out: list[str] = []
    for c in chunks:
        if out and c == int(out[-1].rpartition("-")[2]) + 1:
            out[-1] = f"{out[-1].partition('-')[0]}-{c}"
        else:
            out.append(str(c))
    return ", ".join(out)


def zarr_store(path: str, read_only: bool = False) -> Any:
    """What zarr opens: the local path itself, or an fsspec store for a URL."""
    if not is_url(path):
        return path
    from zarr.storage import FsspecStore

    return FsspecStore.from_url(path, read_only=read_only)


# -- creation --------------------------------------------------------------------------------

def _coord(group: zarr.Group, name: str, values: np.ndarray, dim: str,
           attrs: dict[str, Any] | None = None, *, exist_ok: bool = False) -> None:
    from zarr.errors import ContainsArrayError

    try:
        arr = group.create_array(name, shape=values.shape, chunks=values.shape or (1,),
                                 dtype=values.dtype, dimension_names=(dim,), compressors=[CRC],
                                 fill_value=0, attributes=attrs or {})
    except ContainsArrayError:  # in-place creation racing another creator of the same store
        if not exist_ok:
            raise
        arr = group[name]  # type: ignore[assignment]
    arr[...] = values


def write_time_coord(group: zarr.Group, times: np.ndarray, *, exist_ok: bool = False) -> None:
    secs = times.astype("datetime64[s]").astype(np.int64)
    _coord(group, "time", secs, "time",
           {"units": TIME_UNITS, "calendar": "proleptic_gregorian", "standard_name": "time"},
           exist_ok=exist_ok)


def create_latent_store(path: str, spec: StoreSpec, overwrite: bool = False) -> None:
    """Lay out a complete, empty latent store at ``path``.

    Local stores are built at a temporary name and renamed (atomically); when another process
    renames its own into place first, this one gets :class:`StoreExistsError` (and should open
    that one). On object storage (URLs) there is no rename: the store is laid out in place,
    idempotently (existing arrays are kept, nothing is deleted) and root attributes last, so a
    store whose root holds the ``era5latent`` attribute is fully laid out, and processes that
    create the same store at the same moment all succeed with the same result.
    """
    try:
        if is_url(path):
            if overwrite and is_store(path):
                try:
                    open_latent_store(path)
                except StoreError:
                    raise StoreError(
                        f"{path} is not an era5latent latent store; --overwrite replaces only "
                        "a latent store: remove it yourself or choose another --out") from None
                remove_tree(path)
            _create(zarr_store(path), spec, in_place=True)
        else:
            with atomic_dir(path, overwrite, LATENT) as tmp:
                _create(tmp, spec)
    except OSError as err:
        raise StoreError(f"cannot create {path}: {err.strerror or err}; free space or choose a "
                         "writable --out") from None


def _create(where: Any, spec: StoreSpec, in_place: bool = False) -> None:
    from zarr.errors import ContainsGroupError

    try:
        root = zarr.open_group(where, mode="a" if in_place else "w", zarr_format=3)
    except ContainsGroupError:  # in place: a concurrent creator made the root between our
        if not in_place:        # look and our write (mode "a" is check-then-create)
            raise
        root = zarr.open_group(where, mode="r+", zarr_format=3)

    def create_array(name: str, **kw: Any) -> zarr.Array[Any]:
        from zarr.errors import ContainsArrayError

        try:
            return root.create_array(name, **kw)
        except ContainsArrayError:  # in place: a concurrent creator made it (same spec)
            if not in_place:
                raise
            return array(root, name)

    version = FORMAT_VERSION if spec.mask else UNMASKED_VERSION
    for sub in subgroups(version, spec.residual is not None, spec.mask is not None):
        try:
            root.create_group(sub, attributes={"description": SUBGROUPS[sub]})
        except ContainsGroupError:  # in place: a concurrent creator made it
            if not in_place:
                raise

    write_time_coord(root, spec.times, exist_ok=in_place)
    for dim, vals in spec.sample_coords.items():
        _coord(root, dim, np.asarray(vals), dim, exist_ok=in_place)
    _coord(root, "latitude", spec.latitude.astype(np.float64), "latitude",
           {"units": "degrees_north", "standard_name": "latitude",
            "description": "source grid latitude (decode target)"}, exist_ok=in_place)
    _coord(root, "longitude", spec.longitude.astype(np.float64), "longitude",
           {"units": "degrees_east", "standard_name": "longitude",
            "description": "source grid longitude (decode target)"}, exist_ok=in_place)
    for dim, (values, attrs) in token_coords(spec.model, spec.latitude, spec.longitude).items():
        _coord(root, dim, values, dim, attrs, exist_ok=in_place)
    sample_dims = tuple(spec.sample_coords)
    sample_shape = tuple(len(v) for v in spec.sample_coords.values())
    for g in spec.groups:
        h, w = g.token_grid
        shape = (len(spec.times), *sample_shape, h, w, g.nbytes)
        create_array(
            codes_name(g.name), shape=shape, chunks=(spec.time_chunk, *shape[1:]),
            dtype="uint8", dimension_names=("time", *sample_dims, "token_lat", "token_lon",
                                            "byte"),
            compressors=[ZstdCodec(level=3), CRC], fill_value=0,
            attributes={"group": g.name, "channels": list(g.channels),
                        "code_bits": g.code_bits, "bit_order": "big",
                        "description": "packed sign bits of the WLA binary latent codes"})
        create_array(
            checksum_name(g.name), shape=(spec.n_chunks, 32), chunks=(1, 32), dtype="uint8",
            dimension_names=("time_chunk", "sha256"), compressors=[CRC], fill_value=0,
            attributes={"description": f"sha256 of each time chunk of {codes_name(g.name)} "
                                       "(C-order bytes, before compression), set at write time"})
    if spec.residual:
        from era5latent.store.residual import create_residual_arrays

        create_residual_arrays(create_array, spec, sample_shape)
    if spec.mask:
        from era5latent.store.masks import create_mask_arrays

        create_mask_arrays(create_array, spec.mask, spec.static_masks, len(spec.times),
                           spec.time_chunk, spec.n_chunks, sample_dims, sample_shape)
    create_array(DONE, shape=(spec.n_chunks,), chunks=(1,), dtype="bool",
                      dimension_names=("time_chunk",), compressors=[CRC], fill_value=False,
                      attributes={"description": "True once the time chunk is fully written"})
    root.attrs[ATTR] = jsonable(spec.attrs())
    faults.point("store.created")


# -- opening and build state -------------------------------------------------------------------

@dataclass
class LatentStore:
    """An opened latent store (read and region-write access)."""

    path: str
    root: zarr.Group
    meta: dict[str, Any]
    _arrays: dict[str, zarr.Array[Any]] = field(default_factory=dict, repr=False, compare=False)
    _static: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)
    _root_doc: bytes | None = field(default=None, repr=False, compare=False)  # as opened

    def own_arrays(self) -> list[str]:
        """Where the arrays the attributes say this store has (era5latent's own) are, e.g.
        ``_era5latent/build_done`` (version 3) or ``build_done`` (versions 1 and 2)."""
        names = ["time", "latitude", "longitude", DONE, *self.sample_dims]
        if self.version >= 3:
            names += ["token_lat", "token_lon"]
        for g in self.groups:
            names += [codes_name(g), checksum_name(g)]
            if self.has_residual:
                from era5latent.store.residual import residual_arrays

                names += residual_arrays(g)
        if self.has_mask:
            from era5latent.store.masks import mask_arrays

            names += mask_arrays(self.mask_channels)
        return [self.where(n) for n in names]

    def own_groups(self) -> list[str]:
        """The subgroups this store has (``_era5latent``, ``residual``; none before version 3)."""
        return subgroups(self.version, self.has_residual, self.has_mask)

    def where(self, name: str) -> str:
        """Where this store keeps the array named by its version-3 path ``name``."""
        return location(name, self.version)

    @property
    def has_residual(self) -> bool:
        return bool(self.meta.get("residual"))

    @property
    def has_mask(self) -> bool:
        return bool(self.meta.get("mask"))

    @property
    def mask_channels(self) -> tuple[str, ...]:
        """The masked channels (fields with missing values, :mod:`era5latent.store.masks`)."""
        m = self.meta.get("mask")
        return tuple(m["channels"]) if m else ()

    def static_mask(self, code: str) -> np.ndarray:
        """The static mask of a masked channel, read and checked once."""
        st = self._static.get(code)
        if st is None:
            from era5latent.store.masks import read_static

            st = self._static[code] = read_static(self, code)
        return st

    @property
    def residual(self) -> dict[str, Any] | None:
        """The residual layer's attribute (``ResidualSpec.to_dict()``), None when codes only."""
        r = self.meta.get("residual")
        return r if r else None

    def metadata_problems(self) -> list[str]:
        """How the metadata differs from what was sealed at finalize (empty: intact, or not
        sealed because it is unfinished or of format version 1)."""
        if DIGEST_KEY in self.meta:
            return check_metadata(self.path, self.meta[DIGEST_KEY],
                                  self.own_arrays() + self.own_groups())
        if self.complete and self.version >= 2:
            return [f"{DIGEST_KEY} is missing: the store is complete but its metadata was "
                    "never sealed"]
        return []

    def replaced(self) -> bool:
        """Whether the store at ``path`` is no longer the one opened (``encode --overwrite``
        replaced it meanwhile): what a damaged-looking chunk may really mean."""
        try:
            now = read_doc(self.path, ROOT_DOC)
        except (OSError, KeyError):
            return True
        return self._root_doc is not None and now != self._root_doc

    def check_not_replaced(self) -> None:
        if self.replaced():
            raise StoreError(f"{self.path} was replaced while it was being read (an 'encode "
                             "--overwrite' of it?); run again once that encode has finished")

    def array(self, name: str) -> zarr.Array[Any]:
        """The array ``name``, opened once: opening reads and parses its metadata, which cost
        more than writing one chunk of codes did."""
        arr = self._arrays.get(name)
        if arr is None:
            arr = self._arrays[name] = array(self.root, self.where(name))
        return arr

    @property
    def groups(self) -> dict[str, GroupSpec]:
        return {n: GroupSpec.from_dict(n, d) for n, d in self.meta["groups"].items()}

    @property
    def sample_dims(self) -> tuple[str, ...]:
        return tuple(self.meta.get("sample_dims", []))

    @property
    def time_chunk(self) -> int:
        return int(self.meta["time_chunk"])

    @property
    def times(self) -> np.ndarray:
        secs = np.asarray(read_array(self.array("time"), Ellipsis, self.path), dtype=np.int64)
        return secs.astype("datetime64[s]").astype("datetime64[ns]")

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete", False))

    def require_complete(self, alternative: str = "") -> None:
        """A :class:`StoreError` unless every time chunk is written and the store is finalised.

        ``alternative`` names another way out for the caller's user (e.g. an option to pass).
        """
        if not self.complete:
            done = self.done()
            raise StoreError(
                f"{self.path} is unfinished ({int(done.sum())} of {done.size} time chunks "
                "written); re-run the same encode command (or 'era5latent finalize') to finish "
                f"it{alternative}")

    def done(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Done flags of time chunks ``[lo, hi)`` (all by default; one small read per chunk)."""
        return np.asarray(read_array(self.array(DONE), slice(lo, hi), self.path), dtype=bool)

    def chunk_bounds(self, i: int) -> tuple[int, int]:
        n = self.array("time").shape[0]
        return i * self.time_chunk, min((i + 1) * self.time_chunk, n)

    def coord(self, name: str) -> np.ndarray:
        """All values of a coordinate array (``latitude``, ``longitude``, a sample dim, ...)."""
        return read_array(self.array(name), Ellipsis, self.path)

    def codes(self, group: str) -> zarr.Array[Any]:
        return self.array(codes_name(group))

    def write_chunk(self, i: int, codes: dict[str, np.ndarray],
                    residuals: dict[str, dict[str, bytes]] | None = None,
                    masks: dict[str, np.ndarray] | None = None) -> None:
        """Write time chunk ``i`` for every group with its checksum (and, in a store with a
        residual layer, every group's residual streams by channel code; in a store with a mask
        layer, the masks by channel code), then mark it done."""
        a, b = self.chunk_bounds(i)
        try:
            for g, packed in codes.items():
                packed = np.ascontiguousarray(packed, dtype=np.uint8)
                self.codes(g)[a:b] = packed
                self.array(checksum_name(g))[i] = np.frombuffer(_sha256(packed), dtype=np.uint8)
            faults.point("encode.codes-written")
            if self.has_residual:
                from era5latent.store.residual import write_residual

                for g, spec in self.groups.items():
                    write_residual(self, g, spec.channels, i, (residuals or {}).get(g, {}))
                faults.point("encode.residual-written")
            if self.has_mask:
                from era5latent.store.masks import write_masks

                write_masks(self, i, masks or {})
                faults.point("encode.mask-written")
            self.array(DONE)[i] = True
        except (OSError, RuntimeError) as err:
            os_err = os_error_of(err)  # RuntimeError: zarrs's way, should it be in use
            if os_err is None:
                raise
            raise StoreError(
                f"cannot write time chunk {i} of {self.path}: {os_err.strerror or os_err}; free "
                "space (or fix permissions) and re-run the same command to resume") from None
        faults.point("encode.chunk-done")

    def read_residual(self, group: str, i: int) -> dict[str, bytes]:
        """The residual streams of time chunk ``i`` of ``group`` by channel code, verified
        (``residual.layout.read_residual``)."""
        from era5latent.store.residual import read_residual

        return read_residual(self, group, i)

    def read_chunk(self, group: str, i: int, check: bool = True) -> np.ndarray:
        """The packed codes of time chunk ``i``; with ``check``, verified against its checksum."""
        a, b = self.chunk_bounds(i)
        try:
            packed = np.ascontiguousarray(self.codes(group)[a:b], dtype=np.uint8)
        except Exception as err:  # a damaged chunk can fail to decompress
            raise CorruptChunkError(self.path, group, i, _why(err)) from None
        if check:
            try:
                want = bytes(np.asarray(read_array(self.array(checksum_name(group)), i,
                                                   self.path), dtype=np.uint8))
            except CorruptArrayError as err:
                raise CorruptChunkError(self.path, group, i,
                                        f"its sha256 in {err.name} is corrupt: {err.why}") from None
            if want != _sha256(packed):
                raise CorruptChunkError(self.path, group, i, "checksum mismatch")
        return packed

    @property
    def version(self) -> int:
        return int(self.meta["format_version"])

    @property
    def finished(self) -> bool:
        """Complete and every finishing step done: metadata sealed (version 2) and consolidated.

        A run killed between marking a store complete and consolidating it left a store that is
        complete but not finished; the next run (or ``finalize``) repairs it.
        """
        if not self.complete:
            return False
        return (self.version < 2 or DIGEST_KEY in self.meta) and is_consolidated(self.path)

    def mark_complete(self) -> None:
        """Mark the store complete, seal its metadata (version 2) and consolidate it.

        Idempotent: run again on a complete store it rewrites the same bytes, which is how a
        resumed run repairs a kill between these steps.
        """
        done = self.done()
        if not done.all():
            missing = np.flatnonzero(~done).tolist()
            raise StoreError(f"{self.path}: time chunks {missing[:10]} are not written yet")
        faults.point("encode.before-complete")
        meta = {k: v for k, v in self.meta.items() if k != DIGEST_KEY} | {"complete": True}
        meta.pop("parts", None)  # build state only: a finished store is the same however built
        try:
            if self.version >= 2:
                # the root's digest is taken over its document as written, so write it first
                self.root.attrs[ATTR] = meta
                meta = meta | {DIGEST_KEY: metadata_digests(self.path)}
            self.root.attrs[ATTR] = meta
            faults.point("encode.before-consolidate")
            consolidate(self.path)
        except OSError as err:
            raise StoreError(f"cannot finish {self.path}: {err.strerror or err}; free space and "
                             "re-run the same command") from None
        self.meta = meta

    def nbytes_on_disk(self) -> dict[str, int]:
        """Bytes on disk per codes array (local stores) or stored bytes reported by zarr."""
        return {g: self.array_bytes(codes_name(g)) for g in self.groups}

    def array_bytes(self, name: str) -> int:
        """Bytes of array ``name``'s chunks on disk (local stores), else as zarr reports."""
        where = self.where(name).split("/")
        local = os.path.join(self.path, *where, "c")  # the chunks (not the zarr.json)
        if os.path.isdir(os.path.join(self.path, *where)):
            return sum(os.path.getsize(os.path.join(d, f))
                       for d, _, fs in os.walk(local) for f in fs)
        return int(self.array(name).nbytes_stored())


def consolidate(path: str) -> None:
    """Consolidate metadata so readers open the finished store with one request."""
    import warnings

    with warnings.catch_warnings():  # zarr notes that v3 consolidation is not in the spec yet
        warnings.simplefilter("ignore", UserWarning)
        zarr.consolidate_metadata(zarr_store(path), zarr_format=3)


def is_store(path: str) -> bool:
    """Whether ``path`` (a local path or a URL) holds a Zarr group or array."""
    if is_url(path):
        fs, p = url_fs(path)
        return bool(fs.isfile(p.rstrip("/") + "/zarr.json"))
    return os.path.isfile(os.path.join(path, "zarr.json"))


def open_latent_store(path: str, mode: str = "r") -> LatentStore:
    """Open a latent store; refuse anything else, or a format version this package cannot read."""
    if not (is_store(path) if is_url(path) else os.path.exists(path)):
        raise StoreError(f"no such latent store: {path}; check the path")
    check_plain_tree(path)  # no links out of the store, no fifo to hang on (a scandir walk)
    try:
        where = zarr_store(path, read_only=mode == "r")
        root = zarr.open_group(where, mode=mode, zarr_format=3)  # type: ignore[arg-type]
    except Exception as err:
        raise StoreError(f"{path} is not a Zarr v3 store ({type(err).__name__}); expected a latent "
                         "store written by 'era5latent encode'") from None
    meta = root.attrs.get(ATTR)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise StoreError(f"{path} is a Zarr store but not an era5latent latent store (no "
                         f"'{ATTR}' attribute with format {FORMAT!r}); expected the output of "
                         "'era5latent encode'")
    version = meta.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise StoreError(f"{path} has latent-store format version {version}; this era5latent "
                         f"({__version__}) reads versions up to {FORMAT_VERSION}: upgrade era5latent")
    validate_attrs(path, meta, FORMAT_VERSION)
    try:
        doc: bytes | None = read_doc(path, ROOT_DOC)
    except (OSError, KeyError):
        doc = None
    store = LatentStore(path, root, meta, _root_doc=doc)
    check_layout(store)
    return store


def summary(path: str, parts: int | None = None) -> dict[str, Any]:
    """What ``info`` shows: groups, channels, times, bytes, ratios, build progress (JSON-safe).

    With ``parts`` N (default: the N recorded by the ``encode --parts I/N`` run that created the
    store, if any) the result has ``parts``: ``{count, done, missing}`` (1-based part numbers).
    """
    from era5latent.store.info import residual_summary

    store = open_latent_store(path)
    meta = store.meta
    times = store.times
    lat_n = int(store.array("latitude").shape[0])
    lon_n = int(store.array("longitude").shape[0])
    samples = int(np.prod([store.array(d).shape[0] for d in store.sample_dims], dtype=np.int64))
    on_disk = store.nbytes_on_disk()
    done = store.done()
    # ratios are over what is written so far: an unfinished store's bytes against the float32
    # size of its finished chunks (not of all of them)
    written = sum(b - a for a, b in map(store.chunk_bounds, np.flatnonzero(done).tolist()))
    groups: list[dict[str, Any]] = []
    for name, g in store.groups.items():
        per_time = samples * len(g.channels) * lat_n * lon_n * 4
        raw = len(times) * per_time
        code_raw = len(times) * samples * g.token_grid[0] * g.token_grid[1] * g.nbytes
        groups.append({
            "group": name, "channels": list(g.channels), "code_bits": g.code_bits,
            "token_grid": list(g.token_grid), "bytes_on_disk": on_disk[name],
            "code_bytes": code_raw, "float32_bytes": raw,
            "float32_bytes_written": written * per_time,
            "compression_ratio": written * per_time / on_disk[name] if on_disk[name] else None,
            "code_compression_ratio": raw / code_raw if code_raw else None,
        })
    raw_total = sum(g["float32_bytes"] for g in groups)
    raw_written = sum(g["float32_bytes_written"] for g in groups)
    disk_total = sum(g["bytes_on_disk"] for g in groups)
    return {
        "path": path,
        "format": meta["format"], "format_version": meta["format_version"],
        "package_version": meta.get("package_version"),
        "complete": store.complete,
        "chunks_done": int(done.sum()), "chunks_total": int(done.size),
        "times": len(times),
        "time_range": [iso(times[0]), iso(times[-1])] if len(times) else [],
        "sample_dims": {d: int(store.array(d).shape[0]) for d in store.sample_dims},
        "grid": [lat_n, lon_n],
        "model_sha256": meta["model"]["sha256"], "model_preset": meta["model"].get("preset"),
        "source": meta["source"].get("path"),
        "groups": groups,
        "float32_bytes": raw_total, "bytes_on_disk": disk_total,
        "float32_bytes_written": raw_written,
        "compression_ratio": raw_written / disk_total if disk_total else None,
        "residual": residual_summary(store, done),
    } | ({"parts": parts_status(done, n_parts)}
         if (n_parts := parts or meta.get("parts")) else {})
