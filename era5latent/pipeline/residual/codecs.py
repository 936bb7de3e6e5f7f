"""One channel's residual of one time chunk <-> one error-bounded byte stream (no files).

A residual block ``(nt, *sample, H, W)`` is compressed as one ``(nt * samples, H, W)`` float32
stream: SZ3 (``pysz``, absolute error-bound mode) or ZFP fixed-accuracy (``zfpy``). Both streams
carry their own header (shape and bound), so a reader needs only the bytes and the block's shape.
The codecs are the baselines' own (:mod:`era5latent.evaluation.codecs`), so a hybrid store and an SZ3-only
baseline at the same bound compress the same way.
"""

from __future__ import annotations

import numpy as np

from era5latent.evaluation.codecs import SZ3, ZFPFixedAccuracy

#: ``--residual-codec`` names -> what they are
CODECS = {"sz3": "SZ3 (pysz), absolute error bound",
          "zfp": "ZFP fixed-accuracy (zfpy), absolute tolerance"}


def _as_3d(shape: tuple[int, ...]) -> tuple[int, int, int]:
    lead = int(np.prod(shape[:-2], dtype=np.int64)) if len(shape) > 2 else 1
    return lead, int(shape[-2]), int(shape[-1])


def compress(codec: str, residual: np.ndarray, bound: float) -> bytes:
    """``residual`` (any shape ending in ``H, W``) -> a stream decoding within ``bound`` of it."""
    x = np.ascontiguousarray(residual, dtype=np.float32).reshape(_as_3d(residual.shape))
    if codec == "sz3":
        return SZ3(float(bound)).encode(x)
    if codec == "zfp":
        return ZFPFixedAccuracy(float(bound)).encode(x)
    raise ValueError(f"unknown residual codec {codec!r}")  # checked by ResidualSpec


def decompress(codec: str, stream: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """A stream from :func:`compress` -> the float32 residual of ``shape``."""
    s3 = _as_3d(shape)
    if codec == "sz3":
        y = SZ3(1.0).decode(stream, s3)  # the bound is in the stream; the codec's own is unused
    elif codec == "zfp":
        y = ZFPFixedAccuracy(1.0).decode(stream, s3)
    else:
        raise ValueError(f"unknown residual codec {codec!r}")
    return y.reshape(shape)
