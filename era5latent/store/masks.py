"""Fields with missing values: the mask layer of a latent store (format version 4).

ERA5's sea-surface temperature and sea-ice cover are NaN over land. The WLA cannot take NaN, so
a masked point enters the model as the channel's training mean (0 in normalised units) and the
store keeps where the source was missing, so decode puts NaN back exactly there
(docs/format.md, "Mask layer"; docs/variables.md, "Masked fields").

A store's *masked channels* are those with a NaN at its first time step (any sample). Per masked
channel ``CH``, in the subgroup ``mask``:

- ``mask/static_CH``: bool ``(latitude, longitude)``, True where the first time step (first
  sample) is missing; written when the store is laid out, its sha256 in the root attribute
  ``mask.static_sha256`` (which the metadata digest covers);
- ``mask/steps_CH``: bool ``(time, *sample, latitude, longitude)``, chunked as the codes; a
  time chunk's mask is written here only when it is not the static mask at every step and
  sample (a mask that changes with time); otherwise that chunk is never written.

Per time chunk, for all masked channels together: ``mask/state`` (uint8 ``(time_chunk,
channel)``: 1 = the static mask holds, 2 = the chunk's own mask in ``mask/steps_CH``; 0 =
unwritten) and ``mask/sha256`` (over the state row and, for each channel in state 2, its chunk
of ``mask/steps_CH`` as one byte per value, C order). All are written before the chunk's done
flag; each time chunk's record depends on nothing but that chunk and the static mask, so parts,
resumed and Dask runs write the same bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from zarr.codecs import ZstdCodec

from era5latent.errors import DataValueError, StoreError
from era5latent.io.sources import iso
from era5latent.io.zarrio import CRC, write_rows
from era5latent.store.arrays import CorruptArrayError, read_array
from era5latent.store.layout import MASK
from era5latent.store.spec import StoreView

if TYPE_CHECKING:
    from era5latent.io.variables import Channel

STATE, SUMS = f"{MASK}/state", f"{MASK}/sha256"
STATIC, STEPS = f"{MASK}/static_", f"{MASK}/steps_"
#: ``mask/state`` values
UNWRITTEN, STATIC_HOLDS, OWN_MASK = 0, 1, 2
#: the first format version with a mask layer; stores without one are still written as 3
MASK_SINCE = 4
#: how a masked point enters the model (the root attribute ``mask.fill``)
FILL = "mean"


def static_name(code: str) -> str:
    return STATIC + code


def steps_name(code: str) -> str:
    return STEPS + code


def mask_arrays(codes: list[str] | tuple[str, ...]) -> list[str]:
    """The mask layer's arrays for the masked channel codes ``codes``."""
    return [STATE, SUMS, *(static_name(c) for c in codes), *(steps_name(c) for c in codes)]


def mask_sha(mask: np.ndarray) -> str:
    """sha256 (hex) of a mask as one byte per value (0/1), C order."""
    return hashlib.sha256(np.ascontiguousarray(mask, dtype=bool).tobytes()).hexdigest()


def chunk_digest(state: np.ndarray, own: Mapping[str, np.ndarray], codes: tuple[str, ...]
                 ) -> bytes:
    """sha256 of a time chunk's mask record: its state row, then each own mask in channel order."""
    h = hashlib.sha256(np.ascontiguousarray(state, dtype=np.uint8).tobytes())
    for c, s in zip(codes, np.asarray(state).tolist()):
        if s == OWN_MASK:
            h.update(np.ascontiguousarray(own[c], dtype=bool).tobytes())
    return h.digest()


# -- the values --------------------------------------------------------------------------------

def check_no_inf(values: np.ndarray, what: str) -> None:
    """Refuse infinite values; NaN (missing) is allowed."""
    n = int(np.count_nonzero(np.isinf(values)))
    if n:
        raise DataValueError(
            f"{what} holds {n} infinite value(s); expected finite values, or NaN where the field "
            "is missing (docs/variables.md, 'Masked fields'): fix or mask them, or choose "
            "another --time range")


def static_masks(first_step: np.ndarray, channels: tuple[Channel, ...]) -> dict[str, np.ndarray]:
    """The masked channels of a store and their static masks, from its first time step's
    fields ``(1, *sample, C, H, W)``: channels with a NaN anywhere in it; the mask of its first
    sample (later samples and steps that differ get their own per-chunk mask)."""
    x = first_step.reshape(-1, *first_step.shape[-3:])  # (samples, C, H, W)
    out: dict[str, np.ndarray] = {}
    for k, c in enumerate(channels):
        nan = np.isnan(x[:, k])
        if nan.any():
            out[c.code] = np.ascontiguousarray(nan[0])
    return out


def split_masked(x: np.ndarray, channels: tuple[Channel, ...], masked: tuple[str, ...],
                 where: str, first_time: str = "") -> dict[str, np.ndarray]:
    """The masks ``{code: (nt, *sample, H, W)}`` of the masked channels of fields ``(nt,
    *sample, C, H, W)``. Infinite values, and a NaN in a channel that is not masked, are
    one-line errors. The fields keep their NaN: the encode step fills them
    (``pipeline.common.encode_block``: 0 in normalised units, the channel's training mean)."""
    check_no_inf(x, where)
    has_nan = bool(np.isnan(x).any())
    out: dict[str, np.ndarray] = {}
    for k, c in enumerate(channels):
        nan = np.isnan(x[..., k, :, :]) if has_nan else \
            np.zeros((*x.shape[:-3], *x.shape[-2:]), bool)
        if c.code in masked:
            out[c.code] = nan
        elif has_nan and nan.any():
            at = f" at the store's first time {first_time}" if first_time else \
                " at the store's first time"
            raise DataValueError(
                f"{where} holds {int(nan.sum())} NaN value(s) in {c.code}, which had none{at} "
                "(the first time step fixes which channels are masked: docs/variables.md, "
                f"'Masked fields'); fill them, or encode {c.code} from a time step where its "
                "missing values already appear")
    return out


def chunk_record(masks: Mapping[str, np.ndarray], static: Mapping[str, np.ndarray],
                 codes: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(state row, own masks by code) for one time chunk's masks."""
    state = np.zeros(len(codes), np.uint8)
    own: dict[str, np.ndarray] = {}
    for j, c in enumerate(codes):
        m = masks[c]
        if np.array_equal(m, np.broadcast_to(static[c], m.shape)):
            state[j] = STATIC_HOLDS
        else:
            state[j] = OWN_MASK
            own[c] = np.ascontiguousarray(m, dtype=bool)
    return state, own


# -- the store ---------------------------------------------------------------------------------

def create_mask_arrays(create_array: Callable[..., Any], mask: Mapping[str, Any],
                       static: Mapping[str, np.ndarray], n_times: int, time_chunk: int,
                       n_chunks: int, sample_dims: tuple[str, ...],
                       sample_shape: tuple[int, ...]) -> None:
    """Lay out the mask layer (``create_array`` as in ``era5latent.store.core._create``) and write the static
    masks."""
    codes = tuple(mask["channels"])
    for c in codes:
        st = static[c]
        arr = create_array(
            static_name(c), shape=st.shape, chunks=st.shape, dtype="bool",
            dimension_names=("latitude", "longitude"), compressors=[ZstdCodec(level=3), CRC],
            fill_value=False,
            attributes={"channel": c, "description": f"True where {c} is missing at the "
                        "store's first time step (first sample); its sha256 is the root "
                        "attribute era5latent.mask.static_sha256"})
        arr[...] = st
        h, w = st.shape
        create_array(
            steps_name(c), shape=(n_times, *sample_shape, h, w),
            chunks=(time_chunk, *sample_shape, h, w), dtype="bool",
            dimension_names=("time", *sample_dims, "latitude", "longitude"),
            compressors=[ZstdCodec(level=3), CRC], fill_value=False,
            attributes={"channel": c, "description": f"True where {c} is missing, for the time "
                        "chunks whose mask is not the static one (mask/state 2); other chunks "
                        "are never written"})
    create_array(
        STATE, shape=(n_chunks, len(codes)), chunks=(1, len(codes)), dtype="uint8",
        dimension_names=("time_chunk", "masked_channel"), compressors=[CRC], fill_value=0,
        attributes={"channels": list(codes),
                    "description": "per time chunk and masked channel: 1 the static mask holds, "
                                   "2 its own mask in mask/steps_CH, 0 unwritten"})
    create_array(
        SUMS, shape=(n_chunks, 32), chunks=(1, 32), dtype="uint8",
        dimension_names=("time_chunk", "sha256"), compressors=[CRC], fill_value=0,
        attributes={"description": "sha256 of each time chunk's mask/state row and its own "
                                   "masks (one byte per value, C order), set at write time"})


def write_masks(store: StoreView, i: int, masks: Mapping[str, np.ndarray]) -> None:
    """Time chunk ``i``'s masks (``{code: (nt, *sample, H, W)}``): own masks, state, sha256."""
    codes = store.mask_channels
    missing = [c for c in codes if c not in masks]
    if missing:  # a caller's bug, not bad input
        raise ValueError(f"no mask for masked channel(s) {missing} of time chunk {i}")
    state, own = chunk_record(masks, {c: store.static_mask(c) for c in codes}, codes)
    a, b = store.chunk_bounds(i)
    for c, m in own.items():
        write_rows(store.array(steps_name(c)), a, b, m)
    write_rows(store.array(STATE), i, i + 1, state)
    write_rows(store.array(SUMS), i, i + 1,
               np.frombuffer(chunk_digest(state, own, codes), dtype=np.uint8))


class CorruptMaskError(StoreError):
    """A time chunk's mask record (or, ``chunk`` -1, a static mask) is damaged."""

    def __init__(self, path: str, chunk: int, why: str, array: str) -> None:
        self.path, self.chunk, self.why, self.array = path, chunk, why, array
        self.group = MASK
        what = f"the static mask {array}" if chunk < 0 else \
            f"the mask of time chunk {chunk} ({array})"
        super().__init__(f"{path}: {what} is corrupt ({why}); re-encode the store, or decode "
                         "with --allow-corrupt to fill its masked channels with NaN")

    def __reduce__(self) -> tuple[Any, ...]:  # rebuilt intact where Dask hands it back
        return (type(self), (self.path, self.chunk, self.why, self.array))


def read_static(store: StoreView, code: str) -> np.ndarray:
    """The static mask of ``code``, checked against ``mask.static_sha256``; a
    :class:`CorruptMaskError` (chunk -1) naming the array when damaged."""
    name = static_name(code)
    try:
        st = np.asarray(read_array(store.array(name), Ellipsis, store.path), dtype=bool)
    except CorruptArrayError as err:
        raise CorruptMaskError(store.path, -1, err.why, name) from None
    want = store.meta["mask"]["static_sha256"].get(code)
    n_lat, n_lon = store.array("latitude").shape[0], store.array("longitude").shape[0]
    if st.shape != (n_lat, n_lon) or mask_sha(st) != want:
        raise CorruptMaskError(store.path, -1, "sha256 differs from "
                               "era5latent.mask.static_sha256", name)
    return st


def read_masks(store: StoreView, i: int) -> dict[str, np.ndarray]:
    """The masks of time chunk ``i``, ``{code: (nt, *sample, H, W)}``, verified against
    ``mask/sha256``: a :class:`CorruptMaskError` naming the damaged array otherwise (a damaged
    static mask included, so ``--allow-corrupt`` can fill the chunk instead)."""
    codes = store.mask_channels
    a, b = store.chunk_bounds(i)
    try:
        state = np.asarray(read_array(store.array(STATE), i, store.path), dtype=np.uint8)
        want = bytes(np.asarray(read_array(store.array(SUMS), i, store.path), dtype=np.uint8))
        own = {c: np.asarray(read_array(store.array(steps_name(c)), slice(a, b), store.path),
                             dtype=bool)
               for c, s in zip(codes, state.tolist()) if s == OWN_MASK}
    except CorruptArrayError as err:
        raise CorruptMaskError(store.path, i, err.why, err.name) from None
    if state.shape != (len(codes),) or not np.isin(state, (STATIC_HOLDS, OWN_MASK)).all() or \
            chunk_digest(state, own, codes) != want:
        raise CorruptMaskError(store.path, i, "checksum mismatch", STATE)
    sample = tuple(store.array(d).shape[0] for d in store.sample_dims)
    out: dict[str, np.ndarray] = {}
    for c, s in zip(codes, state.tolist()):
        if s == OWN_MASK:
            out[c] = own[c]
            continue
        try:
            st = store.static_mask(c)
        except CorruptMaskError as err:
            raise CorruptMaskError(store.path, i, f"static mask: {err.why}", err.array) from None
        out[c] = np.ascontiguousarray(np.broadcast_to(st, (b - a, *sample, *st.shape)))
    return out


def read_mask_range(store: StoreView, codes: list[str] | tuple[str, ...], a: int, b: int, *,
                    allow_corrupt: bool = False
                    ) -> tuple[dict[str, np.ndarray | None], list[str]]:
    """The masks of store times ``[a, b)`` of the masked channels among ``codes`` (None for a
    damaged chunk under ``allow_corrupt``: decode fills those channels with NaN), and what was
    lost. Empty for a store without a mask layer."""
    wanted = [c for c in codes if c in store.mask_channels]
    out: dict[str, np.ndarray | None] = {}
    corrupt: list[str] = []
    if not wanted or b <= a:
        return out, corrupt
    step = store.time_chunk
    parts: list[dict[str, np.ndarray]] = []
    for c in range(a // step, (b - 1) // step + 1):
        c0, c1 = store.chunk_bounds(c)
        try:
            m = read_masks(store, c)
        except CorruptMaskError as err:
            store.check_not_replaced()
            if not allow_corrupt:
                raise
            times = store.times
            corrupt.append(f"mask ({err.array}) times {iso(times[c0])}..{iso(times[c1 - 1])}")
            return dict.fromkeys(wanted), corrupt
        parts.append({k: v[max(a, c0) - c0:min(b, c1) - c0] for k, v in m.items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in wanted}, corrupt


def check_mask_layout(store: StoreView, bad: Callable[[str, str, str], StoreError],
                      n_t: int, sample: tuple[int, ...], n_lat: int, n_lon: int) -> None:
    """The mask arrays are there, shaped and chunked as the attributes imply."""
    codes = store.mask_channels
    n_chunks = -(-n_t // store.time_chunk)
    wants: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
        STATE: ((n_chunks, len(codes)), (1, len(codes))), SUMS: ((n_chunks, 32), (1, 32))}
    for c in codes:
        wants[static_name(c)] = ((n_lat, n_lon), (n_lat, n_lon))
        full = (*sample, n_lat, n_lon)
        wants[steps_name(c)] = ((n_t, *full), (store.time_chunk, *full))
    for name, (shape, chunks) in wants.items():
        arr = store.array(name)
        if tuple(arr.shape) != shape or tuple(arr.chunks) != chunks:
            raise bad(name, f"has shape {tuple(arr.shape)} and chunks {tuple(arr.chunks)}",
                      f"shape {shape} in chunks of {chunks}")
