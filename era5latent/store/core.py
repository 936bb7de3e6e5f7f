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

The store core composes the layers beneath it: :mod:`.layout` (where each array lives),
:mod:`.spec` (what fixes a store), :mod:`.arrays` (chunk reads), :mod:`.meta` (the attributes'
schema and digests), :mod:`.locks`, and the residual (:mod:`.residual`) and mask
(:mod:`.masks`) layers, which read the store through :class:`era5latent.store.spec.StoreView`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from era5latent import faults
from era5latent.errors import StoreError
from era5latent.fsutil import (
    LATENT,
    atomic_dir,
    check_plain_tree,
    is_url,
    os_error_of,
    remove_tree,
)
from era5latent.io.zarrio import (
    CRC,
    TIME_UNITS,
    array,
    consolidate,
    is_store,
    read_rows,
    replace_file,
    write_rows,
    zarr_store,
)
from era5latent.io.zarrbytes import NewArray, NewTree, consolidated_root
from era5latent.store.arrays import (
    CorruptArrayError,
    CorruptChunkError,
    read_array,
    why_unreadable,
)
from era5latent.store.layout import DONE as DONE
from era5latent.store.layout import (
    NESTED_SINCE,
    SUBGROUPS,
    TOKEN_DIMS,
    location,
    subgroups,
    token_coords,
)
from era5latent.store.layout import checksum_name as checksum_name
from era5latent.store.layout import codes_name as codes_name
from era5latent.store.locks import (
    LOCK as LOCK,  # the writer locks: their names stay importable here
)
from era5latent.store.locks import StoreLockedError as StoreLockedError
from era5latent.store.locks import check_unlocked as check_unlocked
from era5latent.store.locks import lock_name as lock_name
from era5latent.store.locks import lock_path as lock_path
from era5latent.store.locks import writer_lock as writer_lock
from era5latent.store.masks import (
    check_mask_layout,
    create_mask_arrays,
    mask_arrays,
    read_static,
    write_masks,
)
from era5latent.store.meta import (
    DIGEST_KEY,
    ROOT_DOC,
    check_metadata,
    child_docs,
    digests_of,
    is_consolidated,
    metadata_digests,
    read_doc,
    validate_attrs,
)
from era5latent.store.residual import (
    create_residual_arrays,
    read_residual,
    residual_arrays,
    residual_layout,
    write_residual,
)
from era5latent.store.spec import (
    FORMAT,
    FORMAT_VERSION,
    UNMASKED_VERSION,
    GroupSpec,
    StoreSpec,
    jsonable,
)
from era5latent.version import __version__


ATTR = "era5latent"


def _sha256(a: np.ndarray) -> bytes:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).digest()


# -- creation --------------------------------------------------------------------------------

def _coord(group: zarr.Group | NewTree, name: str, values: np.ndarray, dim: str,
           attrs: dict[str, Any] | None = None, *, exist_ok: bool = False) -> None:
    from zarr.errors import ContainsArrayError

    try:
        arr = group.create_array(name, shape=values.shape, chunks=values.shape or (1,),
                                 dtype=values.dtype, dimension_names=(dim,), compressors=[CRC],
                                 fill_value=0, attributes=attrs or {})
    except ContainsArrayError:  # in-place creation racing another creator of the same store
        if not exist_ok:
            raise
        arr = group[name]  # type: ignore[index,assignment]
    arr[...] = values


def write_time_coord(group: zarr.Group | NewTree, times: np.ndarray, *,
                     exist_ok: bool = False) -> None:
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
                _create_files(tmp, spec)
    except OSError as err:
        raise StoreError(f"cannot create {path}: {err.strerror or err}; free space or choose a "
                         "writable --out") from None


def _create_files(tmp: str, spec: StoreSpec) -> None:
    """Lay the store out in memory, then write its documents and coordinate chunks as files
    into the fresh directory ``tmp``: the bytes zarr-python would write (:class:`NewTree`,
    ``tests/test_zarrbytes.py``), made without its event loop. Through zarr-python the layout
    took 21-28 ms of CPU and kept the GIL from the model thread, which encodes the first time
    chunk meanwhile, for 19 ms; made here, 2-3 ms (``benchmarks/paired_experiments.py
    stalls``)."""
    tree = NewTree()
    _lay_out(tree, spec)
    tree.write(tmp)


def _create(where: Any, spec: StoreSpec, in_place: bool = False) -> None:
    """Lay the store out through zarr-python at ``where`` (a store at a URL, in place)."""
    from zarr.errors import ContainsGroupError

    try:
        root = zarr.open_group(where, mode="a" if in_place else "w", zarr_format=3)
    except ContainsGroupError:  # in place: a concurrent creator made the root between our
        if not in_place:        # look and our write (mode "a" is check-then-create)
            raise
        root = zarr.open_group(where, mode="r+", zarr_format=3)
    _lay_out(root, spec, in_place)


def _lay_out(root: zarr.Group | NewTree, spec: StoreSpec, in_place: bool = False) -> None:
    """Every group, array and coordinate of the store ``spec`` fixes, its root attributes last,
    in ``root``: a zarr group (in place: tolerating nodes a concurrent creator made) or a
    :class:`NewTree`."""
    from zarr.errors import ContainsGroupError

    def create_array(name: str, **kw: Any) -> zarr.Array[Any] | NewArray:
        from zarr.errors import ContainsArrayError

        try:
            return root.create_array(name, **kw)
        except ContainsArrayError:  # in place: a concurrent creator made it (same spec)
            if not in_place or isinstance(root, NewTree):
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
        create_residual_arrays(create_array, spec, sample_shape)
    if spec.mask:
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
                names += residual_arrays(g)
        if self.has_mask:
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
                write_rows(self.codes(g), a, b, packed)
                write_rows(self.array(checksum_name(g)), i, i + 1,
                           np.frombuffer(_sha256(packed), dtype=np.uint8))
            faults.point("encode.codes-written")
            if self.has_residual:
                for g, spec in self.groups.items():
                    write_residual(self, g, spec.channels, i, (residuals or {}).get(g, {}))
                faults.point("encode.residual-written")
            if self.has_mask:
                write_masks(self, i, masks or {})
                faults.point("encode.mask-written")
            write_rows(self.array(DONE), i, i + 1, np.ones(1, dtype=bool))
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
        (``store.residual.read_residual``)."""
        return read_residual(self, group, i)

    def read_chunk(self, group: str, i: int, check: bool = True) -> np.ndarray:
        """The packed codes of time chunk ``i``; with ``check``, verified against its checksum."""
        a, b = self.chunk_bounds(i)
        try:
            packed = np.ascontiguousarray(read_rows(self.codes(group), a, b), dtype=np.uint8)
        except Exception as err:  # a damaged chunk can fail to decompress
            raise CorruptChunkError(self.path, group, i, why_unreadable(err)) from None
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

    def mark_complete(self, attrs: dict[str, Any] | None = None) -> None:
        """Mark the store complete, seal its metadata (version 2) and consolidate it. ``attrs``
        are more root attributes (e.g. the build recipe), written with it and sealed with it.

        A local store takes one write, of its root document (:meth:`_seal_file`): until it
        lands the store is unfinished, after it finished. A store at a URL goes through
        zarr-python, three writes (:meth:`_seal_in_place`); a kill between them leaves it complete
        but not consolidated, which :attr:`finished` tells and the next run repairs. Idempotent:
        run again on a complete store it writes the same bytes.
        """
        done = self.done()
        if not done.all():
            missing = np.flatnonzero(~done).tolist()
            raise StoreError(f"{self.path}: time chunks {missing[:10]} are not written yet")
        faults.point("encode.before-complete")
        meta = {k: v for k, v in self.meta.items() if k != DIGEST_KEY} | {"complete": True}
        meta.pop("parts", None)  # build state only: a finished store is the same however built
        extra = {k: jsonable(v) for k, v in (attrs or {}).items()}
        try:
            self.meta = (self._seal_in_place if is_url(self.path) else self._seal_file)(meta, extra)
        except OSError as err:
            raise StoreError(f"cannot finish {self.path}: {err.strerror or err}; free space and "
                             "re-run the same command") from None

    def _seal_file(self, meta: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        """:meth:`mark_complete` of a local store: the root document with ``extra`` and ``meta``
        as its attributes, the digests (version 2) and the consolidated metadata, made in memory
        from the documents on disk (:func:`consolidated_root`: zarr-python's bytes) and written
        once, renamed into place. zarr-python's three writes and its walk of the store took
        25-29 ms of a tiny 100-step encode's 1-1.5 s; this takes 5-9 ms
        (``benchmarks/paired_experiments.py seal``). Returns the attribute as sealed."""
        import json

        root = json.loads(read_doc(self.path, ROOT_DOC))
        attrs = {**(root.get("attributes") or {}), **extra, ATTR: meta}
        root["attributes"] = json.loads(json.dumps(attrs, allow_nan=True))  # as it reads back
        children = {rel: read_doc(self.path, rel) for rel in child_docs(self.path)}
        if self.version >= 2:  # the root's digest is of the document without it
            meta = root["attributes"][ATTR] | {DIGEST_KEY: digests_of(root, children)}
            root["attributes"][ATTR] = meta
        doc = consolidated_root(root, {rel.rsplit("/", 1)[0]: json.loads(data)
                                       for rel, data in children.items()})
        replace_file(os.path.join(self.path, ROOT_DOC), doc)
        self._root_doc = doc  # sealed by this process, not replaced by another
        # the group as it now is (without reading the consolidated metadata back, which this
        # process has no use for)
        self.root = zarr.open_group(self.path, mode="r+", zarr_format=3, use_consolidated=False)
        return meta

    def _seal_in_place(self, meta: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        """:meth:`mark_complete` through zarr-python (a store at a URL)."""
        for key, value in extra.items():
            self.root.attrs[key] = value
        if self.version >= 2:
            # the root's digest is taken over its document as written, so write it first
            self.root.attrs[ATTR] = meta
            meta = meta | {DIGEST_KEY: metadata_digests(self.path)}
        self.root.attrs[ATTR] = meta
        consolidate(self.path)
        return meta

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


# -- the arrays against the attributes ----------------------------------------------------------

def check_layout(store: LatentStore) -> None:
    """Hold the attributes against the arrays that exist: every array the attributes imply is
    there, 1-D where a coordinate, and shaped and chunked as they say. A :class:`StoreError`
    naming the array otherwise (what :func:`open_latent_store` refuses)."""
    path = store.path

    def bad(name: str, found: str, want: str) -> StoreError:
        return StoreError(f"{path}: array {store.where(name)} {found}, but the attributes say "
                          f"{want}; the store is damaged or was not written by era5latent: "
                          "re-encode it")

    for sub in store.own_groups():
        _group(store, sub)
    coords: dict[str, int] = {}
    tokens = TOKEN_DIMS if store.version >= NESTED_SINCE else ()
    for name in ("time", "latitude", "longitude", *store.sample_dims, *tokens):
        arr = store.array(name)
        if arr.ndim != 1:
            raise bad(name, f"has {arr.ndim} dimensions", "a 1-D coordinate")
        coords[name] = int(arr.shape[0])
    if coords["latitude"] < 1 or coords["longitude"] < 1:
        raise bad("latitude/longitude", "is empty", "a grid of at least 1x1 points")
    n_t, tc = coords["time"], store.time_chunk
    n_chunks = -(-n_t // tc)
    done = store.array(DONE)
    if tuple(done.shape) != (n_chunks,) or tuple(done.chunks) != (1,):
        raise bad(DONE, f"has shape {tuple(done.shape)} and chunks {tuple(done.chunks)}",
                  f"shape ({n_chunks},) and chunks (1,) ({n_t} times in chunks of {tc})")
    sample = tuple(coords[d] for d in store.sample_dims)
    for g, spec in store.groups.items():
        codes = store.array(codes_name(g))
        want = (n_t, *sample, *spec.token_grid, spec.nbytes)
        if tuple(codes.shape) != want or codes.chunks[0] != tc or \
                tuple(codes.chunks[1:]) != want[1:]:
            raise bad(codes_name(g), f"has shape {tuple(codes.shape)} and chunks "
                      f"{tuple(codes.chunks)}", f"shape {want} in chunks of {tc} times")
        for dim, n in zip(tokens, spec.token_grid):
            if coords[dim] != n:
                raise bad(dim, f"has {coords[dim]} values", f"a token grid of {n} along {dim} "
                          f"(group {g})")
        sums = store.array(checksum_name(g))
        if tuple(sums.shape) != (n_chunks, 32) or tuple(sums.chunks) != (1, 32):
            raise bad(checksum_name(g), f"has shape {tuple(sums.shape)} and chunks "
                      f"{tuple(sums.chunks)}", f"shape ({n_chunks}, 32) in chunks of (1, 32)")
        if store.has_residual:
            for name, shape in residual_layout(len(spec.channels), tc, sample,
                                               coords["latitude"], coords["longitude"], n_chunks):
                arr = store.array(name + g)
                if tuple(arr.shape) != shape or tuple(arr.chunks) != (1, shape[1]):
                    raise bad(name + g, f"has shape {tuple(arr.shape)} and chunks "
                              f"{tuple(arr.chunks)}", f"shape {shape} in chunks of (1, "
                              f"{shape[1]})")
    if store.has_mask:
        check_mask_layout(store, bad, n_t, sample, coords["latitude"], coords["longitude"])


def _group(store: LatentStore, name: str) -> None:
    """The subgroup ``name`` is there and its ``zarr.json`` reads as a group."""
    try:
        node = store.root[name]
    except KeyError:
        raise StoreError(f"{store.path}: group {name!r} is missing; the store is damaged or not "
                         "an era5latent store") from None
    except Exception as err:  # its zarr.json is damaged: zarr raises whatever its parser does
        raise StoreError(f"{store.path}: the metadata of group {name!r} ({name}/zarr.json) is "
                         f"unreadable ({type(err).__name__}); the store is damaged: re-encode "
                         "it") from None
    if not isinstance(node, zarr.Group):
        raise StoreError(f"{store.path}: {name!r} is an array where a group was expected; the "
                         "store is damaged or not an era5latent store")
