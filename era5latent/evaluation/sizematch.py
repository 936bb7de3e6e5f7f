"""Size matching: the setting of a classical codec whose real output is closest to a target size.

``match_size`` searches one codec's knob (keepbits, rate, error bound) for the bytes per value of
the latent store; ``rate_distortion`` repeats it over several targets.

A row is only "at equal bytes" when it got there: every :class:`SizeMatch` carries its achieved
bytes per value, ``size_matched`` (within :data:`SIZE_TOLERANCE`, 10%, of the target, and not
degenerate) and ``flags`` naming what went wrong: ``"size_off"`` (outside 10%: e.g. bit-rounding
bottoms out at keepbits 0, zfp fixed rate at 9 bits per 4^d block), ``"all_zero"`` (the decoder
returned zeros for a field that is not: zfp fixed rate at its floor does this), ``"fixed_size"``
(xbitinfo and pcodec rows: their size follows from the data, there is no knob to turn).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from era5latent.errors import OptionError
from era5latent.evaluation import bitinfo
from era5latent.evaluation.codecs import (EBCC, FIXED_SIZE_METHODS, FLOAT32_BYTES, SZ3,
                                          XBITINFO_LEVELS, ZFP_MAX_RATE, BitRoundZstd, Codec,
                                          PCodecLossless, ZFPFixedAccuracy, ZFPFixedRate,
                                          as_stack, decode_stack, encode_stack, rewrap, zfp_layout,
                                          zfp_padded, parse_baselines, zfp_min_rate)

#: A row counts as size-matched when its bytes per value are within this fraction of the target.
SIZE_TOLERANCE = 0.10


@dataclass(frozen=True)
class SizeMatch:
    """What :func:`match_size` found. Unpacks as ``codec, recon, nbytes``.

    ``reached`` is False when the target lies outside what the codec can produce (below its
    smallest or above its largest output); then the closest end of its range is returned.
    ``all_zero``: the reconstruction is all zeros while the input is not. ``size_matched`` and
    ``flags``: see the module docstring.
    """

    codec: Codec
    recon: Any
    nbytes: int
    n_values: int
    target_bytes_per_value: float
    reached: bool
    method: str = ""
    all_zero: bool = False

    @property
    def size_matched(self) -> bool:
        return abs(self.relative_size_error) <= SIZE_TOLERANCE and not self.all_zero

    @property
    def flags(self) -> list[str]:
        out = []
        if abs(self.relative_size_error) > SIZE_TOLERANCE:
            out.append("size_off")
        if self.all_zero:
            out.append("all_zero")
        if self.method in FIXED_SIZE_METHODS:
            out.append("fixed_size")
        return out

    def size_fields(self) -> dict[str, Any]:
        """What every table row and JSON record states about its size."""
        return {"target_bytes_per_value": self.target_bytes_per_value,
                "bytes_per_value": self.bytes_per_value,
                "relative_size_error": self.relative_size_error,
                "size_matched": self.size_matched, "size_flags": self.flags,
                "all_zero": self.all_zero}

    @property
    def bytes_per_value(self) -> float:
        return self.nbytes / self.n_values

    @property
    def compression_ratio(self) -> float:
        return FLOAT32_BYTES * self.n_values / self.nbytes

    @property
    def relative_size_error(self) -> float:
        """(achieved - target) / target."""
        return self.bytes_per_value / self.target_bytes_per_value - 1.0

    def __iter__(self) -> Iterator[Any]:
        return iter((self.codec, self.recon, self.nbytes))


#: one probe of a search: the codec setting, its compressed stream(s) and their total bytes
Probe = tuple[Codec, list[bytes], int]


def _probe(codec: Codec, stack: np.ndarray, per_field: bool) -> Probe:
    """Compress only: a search needs the size of each setting, and decodes just the one it
    keeps."""
    bufs = encode_stack(codec, stack, per_field)
    return codec, bufs, sum(len(b) for b in bufs)


def _closest(cands: list[Probe], target_bytes: float) -> Probe:
    return min(cands, key=lambda c: abs(c[2] - target_bytes))


def _match_bitround(stack: np.ndarray, target_bytes: float, per_field: bool, level: int
                    ) -> tuple[Probe, bool]:
    """Sizes grow with keepbits: gallop up from 0 (0, 1, 2, 4, 8, 16, 23) to the first size at or
    above the target, then bisect down to the first keepbits that reaches it; the closer of it
    and the one below wins (what a scan of all 24 would give, in at most 10 probes)."""
    cache: dict[int, Probe] = {}

    def run(k: int) -> Probe:
        if k not in cache:
            cache[k] = _probe(BitRoundZstd(k, level), stack, per_field)
        return cache[k]

    below, above = -1, None
    for k in (0, 1, 2, 4, 8, 16, 23):
        if run(k)[2] >= target_bytes:
            above = k
            break
        below = k
    if above is not None:
        while above - below > 1:  # run(below) < target <= run(above)
            mid = (below + above) // 2
            if run(mid)[2] >= target_bytes:
                above = mid
            else:
                below = mid
    sizes = [nb for _, _, nb in cache.values()]
    reached = min(sizes) <= target_bytes <= max(sizes)
    return _closest(list(cache.values()), target_bytes), reached


def _match_zfp_rate(stack: np.ndarray, target_bytes: float, per_field: bool
                    ) -> tuple[Probe, bool]:
    # rate = 8 * target bytes/value, scaled up by the padding zfp will store so that the real
    # size (padding included) lands on the target
    layouts = [stack.shape[1:]] * stack.shape[0] if per_field else [stack.shape]
    shapes = [zfp_layout(s) for s in layouts]
    padded = sum(zfp_padded(s) for s in shapes)
    rate = 8.0 * target_bytes / padded
    lo = max(zfp_min_rate(len(s)) for s in shapes)
    reached = lo <= rate <= ZFP_MAX_RATE
    c = ZFPFixedRate(min(max(rate, lo), ZFP_MAX_RATE))
    return _probe(c, stack, per_field), reached


def _match_tolerance(make: Callable[[float], Codec], stack: np.ndarray, target_bytes: float,
                     per_field: bool, stop: float = 0.002) -> tuple[Probe, bool]:
    """Bisect an absolute error bound (log scale) for the size closest to the target (stopping
    within ``stop`` of it).

    (False position on log size against log bound was tried, one-off on 2026-12-07: on the
    demo's fields and a smooth z500-like one it needed more probes in all, 597 against 546 over
    36 searches, since SZ3's size curve has kinks and zfp's is a staircase.)"""
    scale = max(float(stack.max() - stack.min()), float(np.abs(stack).max()), 1e-30)
    lo_t, hi_t = scale * 1e-9, scale * 4  # small tolerance = big output
    cache: dict[float, Probe] = {}

    def run(tol: float) -> Probe:
        if tol not in cache:
            cache[tol] = _probe(make(tol), stack, per_field)
        return cache[tol]

    small, big = run(hi_t), run(lo_t)
    reached = small[2] <= target_bytes <= big[2]
    if reached:
        a, b = math.log(lo_t), math.log(hi_t)
        for _ in range(40):
            mid = math.exp((a + b) / 2)
            nb = run(mid)[2]
            if abs(nb - target_bytes) <= stop * target_bytes:
                break
            if nb > target_bytes:
                a = math.log(mid)
            else:
                b = math.log(mid)
            if b - a < 1e-4:
                break
    return _closest(list(cache.values()), target_bytes), reached


def match_size(method_name: str, array: Any, target_bytes_per_value: float, *,
               per_field: bool = False, zstd_level: int = 9) -> SizeMatch:
    """The codec setting of ``method_name`` whose real size is closest to the target.

    - ``bitround``: keepbits 0..23 searched (sizes grow with keepbits), the closest size wins
      (24 discrete sizes).
    - ``zfp``: ``rate = 8 * target`` bits per value, corrected for zfp's block padding and
      clamped to zfp's range; no search.
    - ``zfp-accuracy``, ``sz3``: the absolute error bound is bisected on a log scale until the
      size is within 0.2% of the target (or the search runs out); ``ebcc`` likewise, to 5%.
    - ``xbitinfo-99``, ``xbitinfo-99.9``, ``pcodec``: one setting (keepbits from the channel's
      bit information; lossless), whatever the target: flagged ``fixed_size``.

    Settings are only compressed while searching; the one kept is decompressed once.

    A target outside the codec's range is no error: the closest end is returned with
    ``reached=False``. Returns a :class:`SizeMatch` (``codec, recon, nbytes = match_size(...)``).
    """
    methods = parse_baselines([method_name])
    if len(methods) != 1:
        raise OptionError(f"match_size takes one method, got {method_name!r}: e.g. 'zfp'")
    method = methods[0]
    t = float(target_bytes_per_value)
    if not (t > 0 and math.isfinite(t)):
        raise OptionError(
            f"target {target_bytes_per_value!r} bytes per value: expected a positive number "
            "(float32 is 4; 0.25 is 16x smaller)")
    stack, shape = as_stack(array)
    target_bytes = t * stack.size
    probe: Probe
    if method == "bitround":
        probe, reached = _match_bitround(stack, target_bytes, per_field, zstd_level)
    elif method == "zfp":
        probe, reached = _match_zfp_rate(stack, target_bytes, per_field)
    elif method == "zfp-accuracy":
        probe, reached = _match_tolerance(ZFPFixedAccuracy, stack, target_bytes, per_field)
    elif method == "sz3":
        probe, reached = _match_tolerance(SZ3, stack, target_bytes, per_field)
    elif method == "ebcc":  # slow: stop within 5%, inside the 10% that counts as matched
        probe, reached = _match_tolerance(EBCC, stack, target_bytes, per_field, stop=0.05)
    else:  # fixed size: one setting, whatever the target
        probe = _probe(PCodecLossless() if method == "pcodec" else
                       BitRoundZstd(bitinfo.keepbits(stack, XBITINFO_LEVELS[method]), zstd_level),
                       stack, per_field)
        reached = abs(probe[2] / target_bytes - 1.0) <= SIZE_TOLERANCE
    codec, bufs, nb = probe
    recon = decode_stack(codec, bufs, stack.shape, per_field)
    all_zero = bool(np.any(stack) and not np.any(recon))
    return SizeMatch(codec, rewrap(array, recon.reshape(shape)), nb, stack.size, t, reached,
                     method, all_zero)


def _default_errors(truth: np.ndarray, recon: np.ndarray) -> dict[str, float]:
    err = recon.astype(np.float64) - truth.astype(np.float64)
    return {"rmse_unweighted": float(np.sqrt(np.mean(err**2))),
            "max_abs_error": float(np.max(np.abs(err)))}


def rate_distortion(method: str, array: Any, targets: list[float], *,
                    metrics: Callable[[Any, Any], dict[str, Any]] | None = None,
                    per_field: bool = False, known: dict[float, SizeMatch] | None = None
                    ) -> list[dict[str, Any]]:
    """One record per target size: what ``match_size`` achieved and the error it cost.

    Each record holds ``method``, ``codec`` (its ``to_dict()``), ``target_bytes_per_value``,
    ``bytes_per_value``, ``relative_size_error``, ``size_matched``, ``size_flags``, ``all_zero``,
    ``compression_ratio`` (against float32), ``nbytes``, ``n_values``, ``reached``, then the errors: ``metrics(truth, recon)`` merged in
    when given (e.g. a closure over ``metrics.channel_metrics`` with the latitudes, for
    latitude-weighted WB2 numbers), else unweighted ``rmse_unweighted`` and ``max_abs_error``.
    ``known``: matches already made on this very array with this layout, by target (evaluate
    passes its match at the WLA's size, which the default sweep repeats).
    """
    if not targets:
        raise OptionError("no target sizes given: expected e.g. [0.5, 0.25, 0.1] bytes per value")
    records = []
    for t in targets:
        m = (known or {}).get(t) or match_size(method, array, t, per_field=per_field)
        rec: dict[str, Any] = {
            "method": parse_baselines([method])[0],
            "codec": m.codec.to_dict(),
            **m.size_fields(),
            "compression_ratio": m.compression_ratio,
            "nbytes": m.nbytes,
            "n_values": m.n_values,
            "reached": m.reached,
            "layout": "per_field" if per_field else "cube",
        }
        if metrics is not None:
            rec.update(metrics(array, m.recon))
        else:
            rec.update(_default_errors(np.asarray(array), np.asarray(m.recon)))
        records.append(rec)
    return records
