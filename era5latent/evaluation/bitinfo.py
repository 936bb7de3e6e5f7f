"""Bitwise real information of float32 fields, and the mantissa bits worth keeping.

This is the method of Klöwer et al. (2021, Nature Computational Science 1, 713-724) as xbitinfo
computes it with its Python implementation (``get_bitinformation(..., implementation="python")``
then ``get_keepbits``); written here because xbitinfo 0.0.7 pins numpy < 2.4 and numcodecs <
0.16.4, older than this project's, so it is not a dependency. ``tests/test_bitinfo.py`` checks
that both give the same numbers on a real ERA5 sample where xbitinfo imports.

- :func:`bitinformation`: for each of the 32 bits, the mutual information (in bits) between that
  bit of a value and the same bit of its neighbour along one axis, after the biased exponent is
  turned into a signed one (so that values either side of 1 share their exponent bits).
- :func:`get_keepbits`: xbitinfo's rule. Bits whose information is not above 1.5 times the
  largest of the last four bits are dropped as noise; of the rest, the cumulative share of the
  total is taken, and the kept mantissa bits are those up to the first bit where that share
  exceeds ``inflevel``.
- :func:`mask_artificial_information`: ERA5 as distributed is GRIB-packed (integers times a scale
  plus an offset, decoded in float64 and rounded to float32), which leaves deterministic patterns
  in the last mantissa bits: on both real samples the last six bits carry 0.5-1 bit of "mutual
  information" each, more than the bits above them. xbitinfo's rule then counts every bit as noise
  and keeps -8 mantissa bits (the same on xbitinfo itself). The mask zeroes the information from
  the first mantissa bit that carries under ``floor`` (1%) of the largest mantissa bit's
  information, below the first that carries more, onwards: information that reappears below a bit without any is the packing's, not
  the field's. :func:`keepbits` applies the mask, then the rule.
"""

from __future__ import annotations

from typing import cast

import numpy as np

from era5latent.errors import OptionError

#: float32: 1 sign bit, 8 exponent bits, 23 mantissa bits
N_BITS = 32
N_NON_MANTISSA = 9
N_MANTISSA = 23


def signed_exponent(x: np.ndarray) -> np.ndarray:
    """float32 bits (uint32) with the biased exponent replaced by sign and magnitude."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    sign_and_mantissa = u & np.uint32(0x807F_FFFF)
    e = ((u & np.uint32(0x7F80_0000)) >> np.uint32(23)).astype(np.int64) - 127
    e_abs = (np.abs(e) % 256).astype(np.uint32)
    e_sign = np.where(e < 0, np.uint32(0x4000_0000), np.uint32(0))
    return cast(np.ndarray, sign_and_mantissa | e_sign | (e_abs << np.uint32(23)))


def bitinformation(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mutual information (bits) of each bit with its neighbour along ``axis``; 32 values,
    sign bit first, then the exponent bits, then the mantissa bits from the most significant."""
    a = np.asarray(x)
    if a.ndim == 0 or a.shape[axis] < 2:
        raise OptionError(f"array of shape {a.shape}: expected at least 2 values along axis "
                          f"{axis} to compare neighbours")
    u = np.moveaxis(signed_exponent(a), axis, -1)
    left, right = u[..., :-1].ravel(), u[..., 1:].ravel()
    n = left.size
    out = np.zeros(N_BITS)
    for i in range(N_BITS):
        shift = np.uint32(N_BITS - 1 - i)
        pair = (((left >> shift) & np.uint32(1)) << np.uint32(1)) | ((right >> shift) & np.uint32(1))
        p = np.bincount(pair.astype(np.uint8), minlength=4).reshape(2, 2) / n
        pr, ps = p.sum(axis=1, keepdims=True), p.sum(axis=0, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(p > 0, p * np.log2(p / (pr * ps)), 0.0)
        out[i] = float(terms.sum())
    return out


def get_keepbits(info: np.ndarray, inflevel: float) -> int:
    """Mantissa bits to keep for ``inflevel`` (0..1) of the real information (xbitinfo's rule).

    May be negative (xbitinfo's convention: the cut falls in the exponent bits) when the rule
    sees no information at all; :func:`keepbits` clamps to 0..23.
    """
    if not 0.0 <= inflevel <= 1.0:
        raise OptionError(f"information level {inflevel!r}: expected a fraction in [0, 1], "
                          "e.g. 0.99")
    if inflevel == 1.0:
        return N_MANTISSA
    ic = np.asarray(info, dtype=np.float64)
    cleaned = np.where(ic > 1.5 * ic[-4:].max(), ic, np.nan)
    cum = np.nancumsum(cleaned)
    with np.errstate(invalid="ignore", divide="ignore"):
        cdf = cum / cum[-1]
    above = np.nan_to_num(cdf, nan=-1.0) > inflevel
    return int(np.argmax(above)) + 1 - N_NON_MANTISSA


def mask_artificial_information(info: np.ndarray, floor: float = 0.01) -> np.ndarray:
    """``info`` with the bits from the first near-empty mantissa bit below an informative one
    onwards set to 0."""
    ic = np.array(info, dtype=np.float64)
    mant = ic[N_NON_MANTISSA:]
    top = float(mant.max()) if mant.size else 0.0
    if top <= 0:
        return ic
    first = int(np.argmax(mant >= floor * top))  # the leading bits may be constant (no info)
    low = np.nonzero(mant[first:] < floor * top)[0]
    if low.size:
        ic[N_NON_MANTISSA + first + int(low[0]):] = 0.0
    return ic


def keepbits(x: np.ndarray, inflevel: float, axis: int = -1, floor: float = 0.01) -> int:
    """Mantissa bits (0..23) that keep ``inflevel`` of ``x``'s real information along ``axis``
    (longitude by default), packing artefacts masked (see the module docstring)."""
    info = mask_artificial_information(bitinformation(x, axis), floor)
    return min(max(get_keepbits(info, inflevel), 0), N_MANTISSA)
