"""The residual layer's numeric core: arrays in, byte streams out, and back (no IO, no model).

Encode side (:func:`make_residuals`): for each bounded channel of a time chunk, the residual
``truth - recon`` (``recon``: the fp32 WLA decode, already clipped at 0 for non-negative
variables, exactly as decode makes it) is compressed at ``max_error - margin``; the stream is
decoded and applied here, exactly as decode will apply it, and the worst error over the chunk is
checked. The codec works at ``max_error - margin`` less two float32 spacings of the chunk's
largest value (room for the rounding of ``truth - recon`` and of ``recon + residual``); where a
value still lands above ``max_error - margin``, the channel is compressed again at 3/4 of the
codec bound (up to ``TIGHTEN_TRIES`` times), so the bound is checked on the chunk, never assumed
from the codec.

Decode side (:func:`apply_residual`): ``recon + residual``, clipped at 0 for non-negative
variables. Clipping moves a value toward 0; where the truth is >= 0 that only shortens its
distance to the truth, so the clip cannot break a bound (and the encode-side check sees the
clipped value anyway).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from era5latent.errors import DataValueError
from era5latent.pipeline.residual.codecs import compress, decompress
from era5latent.pipeline.residual.spec import ResidualSpec

#: how many times a channel's codec bound is tightened (x 3/4) before encode gives up on a chunk
TIGHTEN_TRIES = 8
#: per process: channel-chunks compressed, and how many needed a tighter retry (for benchmarks)
STATS = {"streams": 0, "tightened": 0}


def apply_residual(recon: np.ndarray, residual: np.ndarray, nonnegative: bool) -> np.ndarray:
    """The decoded field: ``recon + residual`` in float32, clipped at 0 when ``nonnegative``."""
    out: np.ndarray = np.add(recon, residual, dtype=np.float32)
    if nonnegative:
        np.maximum(out, 0.0, out=out)
    return out


def max_abs_error(decoded: np.ndarray, truth: np.ndarray) -> float:
    """The largest ``|decoded - truth|`` (float64; 0 for an empty block)."""
    if decoded.size == 0:
        return 0.0
    return float(np.max(np.abs(decoded.astype(np.float64) - truth.astype(np.float64))))


def within_bound(decoded: np.ndarray, truth: np.ndarray, bound: float) -> bool:
    return max_abs_error(decoded, truth) <= bound


def make_residuals(truth: Mapping[str, np.ndarray], recon: Mapping[str, np.ndarray],
                   spec: ResidualSpec, nonnegative: Mapping[str, bool],
                   where: str = "") -> dict[str, bytes]:
    """The residual stream of each bounded channel (codes not in ``spec`` get none).

    ``truth`` and ``recon`` map channel codes to arrays of one shape ``(nt, *sample, H, W)``.
    Raises :class:`DataValueError` when a channel cannot be brought within its bound (a
    non-negative variable whose source holds values below ``-bound``, or a bound below float32
    resolution of the values).
    """
    out: dict[str, bytes] = {}
    for ch, b in spec.channels.items():
        if ch not in truth:
            continue
        t = np.asarray(truth[ch], dtype=np.float32)
        r0 = np.asarray(recon[ch], dtype=np.float32)
        res = (t.astype(np.float64) - r0).astype(np.float32)
        rounding = 2 * float(np.spacing(np.float32(np.max(np.abs(t)) if t.size else 0.0)))
        eb = b.codec_bound - rounding
        if eb <= 0:
            raise DataValueError(
                f"{where or 'a time chunk'}: {ch}'s bound {b.max_error:.6g} {b.units} is below "
                f"the float32 resolution of its values ({rounding:.3g}); give a larger "
                "--max-error for it")
        for _ in range(TIGHTEN_TRIES + 1):
            stream = compress(spec.codec, res, eb)
            got = apply_residual(r0, decompress(spec.codec, stream, res.shape),
                                 nonnegative.get(ch, False))
            err = max_abs_error(got, t)
            if err <= b.codec_bound:
                break
            STATS["tightened"] += eb == b.codec_bound - rounding
            eb *= 0.75
        else:
            raise DataValueError(
                f"{where or 'a time chunk'}: {ch} cannot be kept within {b.max_error:.6g} "
                f"{b.units} (worst error {err:.6g} after {TIGHTEN_TRIES} tighter tries: values "
                "below 0 in a non-negative variable, or a bound under float32 resolution of "
                "the values); give a larger --max-error for it")
        STATS["streams"] += 1
        out[ch] = stream
    return out


def decode_residual(codec: str, stream: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """One channel's residual of one time chunk, from its stream."""
    return decompress(codec, stream, shape)


def apply_residuals(recon: Mapping[str, np.ndarray], residuals: Mapping[str, np.ndarray],
                    nonnegative: Mapping[str, bool]) -> dict[str, np.ndarray]:
    """:func:`apply_residual` over channels; channels without a residual pass through."""
    return {ch: apply_residual(r, residuals[ch], nonnegative.get(ch, False))
            if ch in residuals else r for ch, r in recon.items()}
