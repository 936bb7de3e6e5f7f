"""Classical lossy codecs at a target size, to set beside the latent store.

Each codec is a small frozen dataclass with a ``name`` and ``to_dict``/``from_dict`` in the
zarr-python codec style (``{"name": ..., "configuration": {...}}``); it turns a float32 array into
the bytes the codec really produces and back. The methods a user names (``parse_baselines``) are:

- ``bitround``: :class:`BitRoundZstd`, numcodecs ``BitRound(keepbits)`` then a byte shuffle
  (numcodecs ``Shuffle``, on by default: it groups the zeroed trailing mantissa bytes and makes
  zstd about a third smaller) then ``Zstd(level)``. Sizes come in 24 steps (keepbits 0..23).
- ``zfp``: :class:`ZFPFixedRate`, zfpy fixed-rate mode, ``rate`` bits per value.
- ``zfp-accuracy``: :class:`ZFPFixedAccuracy`, zfpy fixed-accuracy mode (absolute tolerance);
  usually far better than fixed rate for the same size, so it is the fairer zfp baseline.
- ``sz3``: :class:`SZ3`, SZ3 through the ``pysz`` bindings, absolute error bound.
- ``ebcc``: :class:`EBCC`, the Error-Bounded Climate Compressor (Huang & Hoefler; spcl/EBCC)
  through ``numcodecs-wasm-ebcc`` (JPEG2000 base plus an error-bounded residual). Slow here
  (about 75 ms per 33 x 49 field on one core), so it is never in the default list.
- ``xbitinfo-99``, ``xbitinfo-99.9``: bit-rounding (:class:`BitRoundZstd`) at the keepbits that
  keep 99% / 99.9% of the channel's real information (:mod:`~era5latent.evaluation.bitinfo`).
  Their size follows from the data, not from a target.
- ``pcodec``: :class:`PCodecLossless`, numcodecs' ``PCodec`` (the ``pcodec`` package): the
  lossless reference; its size is what it is.

The codecs that numcodecs wraps say so with :meth:`numcodecs_codecs` (the filters and compressor
a Zarr array would be written with). zfpy, pysz, pcodec and numcodecs-wasm-ebcc are optional: they
are imported when used, and ``parse_baselines`` says which package to install when one is missing.

**Layout.** By default an array is compressed as one stream: a (time, latitude, longitude) cube
for one channel (any leading dims are flattened into the first). The cube lets zfp's 4x4x4 blocks
and SZ3's predictors use the correlation between neighbouring time steps, and gives zstd a longer
window; that is the fair chance for the classical codecs, and it is how such codecs are used on
chunked Zarr. ``per_field=True`` compresses each 2-d field on its own instead (random access per
time step, like the latent store; the byte counts are summed). Pass one channel at a time: codecs
see one value range per stream.

Sizes are real: ``nbytes`` is the length of what the codec produced (zfp and SZ3 headers
included), and the reconstruction is what its decoder returns. Bytes per value are against
``nbytes / array.size``; float32 is 4.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, cast

import numpy as np

from era5latent.errors import DataValueError, OptionError

FLOAT32_BYTES = 4


# --------------------------------------------------------------------------------------------
# codecs


def _require(module: str, package: str, method: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise OptionError(
            f"baseline {method!r} needs the {package!r} package, which is not installed; "
            f"install it (pip install {package}) or leave {method!r} out of --baselines") from None


class _Codec:
    """Shared zarr-style (de)serialisation; subclasses are frozen dataclasses."""

    name: ClassVar[str]
    method: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "configuration": asdict(self)}  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        if not isinstance(data, dict) or data.get("name") != cls.name:
            found = data.get("name") if isinstance(data, dict) else type(data).__name__
            raise OptionError(
                f"codec description names {found!r}: expected {{'name': {cls.name!r}, "
                "'configuration': {...}}; pass a dict made by to_dict()")
        conf = data.get("configuration", {})
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(conf) - known)
        if unknown:
            raise OptionError(
                f"{cls.name} configuration has unknown keys {unknown}: expected some of "
                f"{sorted(known)}; remove them")
        return cls(**conf)

    def numcodecs_codecs(self) -> list[Any] | None:
        """The numcodecs codecs (filters..., compressor) that write this codec as a Zarr array
        (zarr v2 ``filters``/``compressor``, or zarr v3 through ``numcodecs.zarr3``); None when
        numcodecs has no wrapper for it."""
        return None

    # one stream <-> one float32 array
    def encode(self, a: np.ndarray) -> bytes:
        raise NotImplementedError

    def decode(self, buf: bytes, shape: tuple[int, ...]) -> np.ndarray:
        raise NotImplementedError


@dataclass(frozen=True)
class BitRoundZstd(_Codec):
    """Round the float32 mantissa to ``keepbits`` bits (0..23), byte-shuffle, then zstd."""

    keepbits: int
    level: int = 9
    shuffle: bool = True

    name: ClassVar[str] = "bitround_zstd"
    method: ClassVar[str] = "bitround"

    def __post_init__(self) -> None:
        if isinstance(self.keepbits, bool) or not isinstance(self.keepbits, int) \
                or not 0 <= self.keepbits <= 23:
            raise OptionError(
                f"bitround keepbits {self.keepbits!r}: expected an integer 0..23 "
                "(float32 mantissa bits kept)")
        if isinstance(self.level, bool) or not isinstance(self.level, int) \
                or not 1 <= self.level <= 22:
            raise OptionError(f"zstd level {self.level!r}: expected an integer 1..22, e.g. 9")

    def numcodecs_codecs(self) -> list[Any]:
        from numcodecs import BitRound, Shuffle, Zstd

        shuffle = [Shuffle(elementsize=FLOAT32_BYTES)] if self.shuffle else []
        return [BitRound(self.keepbits), *shuffle, Zstd(level=self.level)]

    def encode(self, a: np.ndarray) -> bytes:
        from numcodecs import BitRound, Shuffle, Zstd

        buf = BitRound(self.keepbits).encode(np.ascontiguousarray(a, dtype=np.float32))
        if self.shuffle:
            buf = Shuffle(elementsize=FLOAT32_BYTES).encode(buf)
        return bytes(Zstd(level=self.level).encode(buf))

    def decode(self, buf: bytes, shape: tuple[int, ...]) -> np.ndarray:
        from numcodecs import Shuffle, Zstd

        raw = Zstd().decode(buf)
        if self.shuffle:
            raw = Shuffle(elementsize=FLOAT32_BYTES).decode(raw)
        return cast(np.ndarray, np.frombuffer(bytes(raw), dtype=np.float32).reshape(shape).copy())


def zfp_layout(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape zfp sees for a (n, lat, lon) stack: a 3-d cube, or the fields stacked 2-d.

    zfp pads every dim to a multiple of 4, so a cube of 6 steps stores 8. The cube (which lets
    zfp's 4x4x4 blocks use the time correlation) is taken unless it stores over 10% more padded
    values than the fields stacked along latitude as one 2-d array, (n * lat, lon).
    """
    if len(shape) != 3:
        return tuple(shape)
    n, ny, nx = shape

    def up4(v: int) -> int:
        return -(-v // 4) * 4

    cube = up4(n) * up4(ny) * up4(nx)
    flat = up4(n * ny) * up4(nx)
    return (n, ny, nx) if n > 1 and cube <= 1.1 * flat else (n * ny, nx)


def zfp_padded(shape: tuple[int, ...]) -> int:
    return math.prod(-(-v // 4) * 4 for v in shape)


def zfp_min_rate(ndim: int) -> float:
    """The lowest fixed rate zfp accepts for float32 in ``ndim`` dims: 9 bits per 4^d block.

    (Below it zfpy 1.0.1 corrupts memory; the rate is clamped here, never passed on.)
    """
    return float(9.0 / 4**ndim)


#: The highest fixed rate worth asking for float32: 32 bits per value, near lossless.
ZFP_MAX_RATE = 32.0


@dataclass(frozen=True)
class ZFPFixedRate(_Codec):
    """zfp fixed-rate mode: every 4^d block gets ``rate`` bits per value (plus a 16-byte header).

    Rates are clamped to what zfp allows for float32: at least 9 bits per block (0.14 bits/value
    for a cube, 0.56 for 2-d fields), at most 32 bits/value.
    """

    rate: float

    name: ClassVar[str] = "zfp_fixed_rate"
    method: ClassVar[str] = "zfp"

    def __post_init__(self) -> None:
        if not isinstance(self.rate, (int, float)) or isinstance(self.rate, bool) \
                or not 0 < self.rate <= ZFP_MAX_RATE:
            raise OptionError(
                f"zfp rate {self.rate!r}: expected bits per value in (0, {ZFP_MAX_RATE:g}]")

    def numcodecs_codecs(self) -> list[Any]:
        zfpy = _require("zfpy", "zfpy", self.method)
        from numcodecs.zfpy import ZFPY

        return [ZFPY(mode=zfpy.mode_fixed_rate, rate=float(self.rate))]

    def encode(self, a: np.ndarray) -> bytes:
        zfpy = _require("zfpy", "zfpy", self.method)
        x = np.ascontiguousarray(a, dtype=np.float32)
        x = x.reshape(zfp_layout(x.shape))
        rate = min(max(float(self.rate), zfp_min_rate(x.ndim)), ZFP_MAX_RATE)
        return bytes(zfpy.compress_numpy(x, rate=rate))

    def decode(self, buf: bytes, shape: tuple[int, ...]) -> np.ndarray:
        zfpy = _require("zfpy", "zfpy", self.method)
        return np.asarray(zfpy.decompress_numpy(buf), dtype=np.float32).reshape(shape)


@dataclass(frozen=True)
class ZFPFixedAccuracy(_Codec):
    """zfp fixed-accuracy mode: absolute error at most about ``tolerance`` (data units)."""

    tolerance: float

    name: ClassVar[str] = "zfp_fixed_accuracy"
    method: ClassVar[str] = "zfp-accuracy"

    def __post_init__(self) -> None:
        if not isinstance(self.tolerance, (int, float)) or isinstance(self.tolerance, bool) \
                or not (self.tolerance > 0 and math.isfinite(self.tolerance)):
            raise OptionError(
                f"zfp tolerance {self.tolerance!r}: expected a positive absolute error bound")

    def numcodecs_codecs(self) -> list[Any]:
        zfpy = _require("zfpy", "zfpy", self.method)
        from numcodecs.zfpy import ZFPY

        return [ZFPY(mode=zfpy.mode_fixed_accuracy, tolerance=float(self.tolerance))]

    def encode(self, a: np.ndarray) -> bytes:
        zfpy = _require("zfpy", "zfpy", self.method)
        x = np.ascontiguousarray(a, dtype=np.float32)
        x = x.reshape(zfp_layout(x.shape))
        return bytes(zfpy.compress_numpy(x, tolerance=float(self.tolerance)))

    def decode(self, buf: bytes, shape: tuple[int, ...]) -> np.ndarray:
        zfpy = _require("zfpy", "zfpy", self.method)
        return np.asarray(zfpy.decompress_numpy(buf), dtype=np.float32).reshape(shape)


@dataclass(frozen=True)
class SZ3(_Codec):
    """SZ3 (default interpolation/Lorenzo predictor) with an absolute error bound."""

    abs_error_bound: float

    name: ClassVar[str] = "sz3"
    method: ClassVar[str] = "sz3"

    def __post_init__(self) -> None:
        eb = self.abs_error_bound
        if not isinstance(eb, (int, float)) or isinstance(eb, bool) \
                or not (eb > 0 and math.isfinite(eb)):
            raise OptionError(
                f"sz3 abs_error_bound {eb!r}: expected a positive absolute error bound")

    def encode(self, a: np.ndarray) -> bytes:
        pysz = _require("pysz", "pysz", self.method)
        x = np.ascontiguousarray(a, dtype=np.float32)
        if x.ndim == 3 and x.shape[0] == 1:
            x = x[0]
        conf = pysz.szConfig()
        conf.errorBoundMode = pysz.szErrorBoundMode.ABS
        conf.absErrorBound = float(self.abs_error_bound)
        out, _ratio = pysz.sz.compress(x, conf)
        return cast(bytes, out.tobytes())

    def decode(self, buf: bytes, shape: tuple[int, ...]) -> np.ndarray:
        pysz = _require("pysz", "pysz", self.method)
        dshape = shape[1:] if len(shape) == 3 and shape[0] == 1 else shape
        out, _conf = pysz.sz.decompress(np.frombuffer(buf, dtype=np.uint8), np.float32, dshape)
        return np.asarray(out, dtype=np.float32).reshape(shape)


@dataclass(frozen=True)
class PCodecLossless(_Codec):
    """numcodecs' ``PCodec`` (pcodec): lossless, the reference every lossy row is set against."""

    level: int = 8

    name: ClassVar[str] = "pcodec"
    method: ClassVar[str] = "pcodec"

    def __post_init__(self) -> None:
        if isinstance(self.level, bool) or not isinstance(self.level, int) \
                or not 0 <= self.level <= 12:
            raise OptionError(f"pcodec level {self.level!r}: expected an integer 0..12, e.g. 8")

    def numcodecs_codecs(self) -> list[Any]:
        _require("pcodec", "pcodec", self.method)
        from numcodecs.pcodec import PCodec

        return [PCodec(level=self.level)]

    def encode(self, a: np.ndarray) -> bytes:
        (codec,) = self.numcodecs_codecs()
        return bytes(codec.encode(np.ascontiguousarray(a, dtype=np.float32)))

    def decode(self, buf: bytes, shape: tuple[int, ...]) -> np.ndarray:
        (codec,) = self.numcodecs_codecs()
        out = np.asarray(codec.decode(buf), dtype=np.float32)
        return cast(np.ndarray, out.reshape(shape))


@dataclass(frozen=True)
class EBCC(_Codec):
    """EBCC with an absolute error bound (``residual="absolute"``), through numcodecs-wasm-ebcc.

    The codec wants 2-d frames of at least 32 x 32 (it compresses (n, lat, lon) as n frames);
    ``base_cr`` is the JPEG2000 base layer's target ratio (the package's default, 100).
    """

    abs_error_bound: float
    base_cr: float = 100.0

    name: ClassVar[str] = "ebcc"
    method: ClassVar[str] = "ebcc"

    def __post_init__(self) -> None:
        for key, v in (("abs_error_bound", self.abs_error_bound), ("base_cr", self.base_cr)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) \
                    or not (v > 0 and math.isfinite(v)):
                raise OptionError(f"ebcc {key} {v!r}: expected a positive number")

    def numcodecs_codecs(self) -> list[Any]:
        mod = _require("numcodecs_wasm_ebcc", "numcodecs-wasm-ebcc", self.method)
        return [mod.Ebcc(residual="absolute", error=float(self.abs_error_bound),
                         base_cr=float(self.base_cr))]

    def encode(self, a: np.ndarray) -> bytes:
        (codec,) = self.numcodecs_codecs()
        x = np.ascontiguousarray(a, dtype=np.float32)
        if x.ndim == 2:
            x = x[None]
        return bytes(np.asarray(codec.encode(x)).tobytes())

    def decode(self, buf: bytes, shape: tuple[int, ...]) -> np.ndarray:
        (codec,) = self.numcodecs_codecs()
        return np.asarray(codec.decode(np.frombuffer(buf, dtype=np.uint8)),
                          dtype=np.float32).reshape(shape)


Codec = BitRoundZstd | ZFPFixedRate | ZFPFixedAccuracy | SZ3 | PCodecLossless | EBCC

#: Method name -> (codec class, module it needs, pip package), in the order tables list them.
METHODS: dict[str, tuple[type[Codec], str | None, str | None]] = {
    "bitround": (BitRoundZstd, None, None),
    "xbitinfo-99": (BitRoundZstd, None, None),
    "xbitinfo-99.9": (BitRoundZstd, None, None),
    "zfp": (ZFPFixedRate, "zfpy", "zfpy"),
    "zfp-accuracy": (ZFPFixedAccuracy, "zfpy", "zfpy"),
    "sz3": (SZ3, "pysz", "pysz"),
    "ebcc": (EBCC, "numcodecs_wasm_ebcc", "numcodecs-wasm-ebcc"),
    "pcodec": (PCodecLossless, "pcodec", "pcodec"),
}

#: Methods whose size follows from the data (no knob to reach a target size).
FIXED_SIZE_METHODS = ("xbitinfo-99", "xbitinfo-99.9", "pcodec")

#: Methods ``all`` leaves out: seconds per try here, so they are run only when named.
SLOW_METHODS = ("ebcc",)

#: Information levels of the xbitinfo methods.
XBITINFO_LEVELS = {"xbitinfo-99": 0.99, "xbitinfo-99.9": 0.999}


def codec_from_dict(data: dict[str, Any]) -> Codec:
    """Rebuild any codec from its ``to_dict()`` form."""
    by_name = {cls.name: cls for cls, _, _ in METHODS.values()}
    name = data.get("name") if isinstance(data, dict) else None
    if name not in by_name:
        raise OptionError(
            f"unknown codec {name!r}: expected one of {', '.join(sorted(by_name))}; "
            "pass a dict made by a codec's to_dict()")
    return cast(Codec, by_name[name].from_dict(data))


def available_methods() -> list[str]:
    """The method names whose packages import here."""
    out = []
    for m, (_, module, _pkg) in METHODS.items():
        if module is None:
            out.append(m)
            continue
        try:
            __import__(module)
        except ImportError:
            continue
        out.append(m)
    return out


def parse_baselines(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Parse ``"bitround,zfp"`` into method names, in :data:`METHODS` order (the order tables
    list them, whatever order they were named in), repeats dropped.

    ``"all"`` means every method whose package is installed, except the slow ones
    (:data:`SLOW_METHODS`: EBCC, which must be named); ``"none"`` means no baselines.
    Unknown names, and known ones whose package is missing, raise :class:`OptionError`.
    """
    tokens = spec.split(",") if isinstance(spec, str) else list(spec)
    tokens = [t.strip().lower().replace("_", "-") for t in tokens if t.strip()]
    known = ", ".join(METHODS)
    if not tokens:
        raise OptionError(
            f"empty baseline list: expected comma-separated methods from {known} "
            "(or 'all', or 'none')")
    if tokens == ["none"]:
        return []
    out: list[str] = []
    for t in tokens:
        names = ([m for m in available_methods() if m not in SLOW_METHODS] if t == "all"
                 else [t])
        for n in names:
            if n not in METHODS:
                raise OptionError(
                    f"unknown baseline {t!r}: expected one of {known} (or 'all', 'none')")
            _, module, pkg = METHODS[n]
            if module is not None:
                _require(module, pkg or module, n)
            if n not in out:
                out.append(n)
    return sorted(out, key=list(METHODS).index)


# --------------------------------------------------------------------------------------------
# round trips


def as_stack(array: Any) -> tuple[np.ndarray, tuple[int, ...]]:
    """(float32 (n, lat, lon) stack, original shape); finite values required."""
    a = np.asarray(array.values if hasattr(array, "coords") else array)
    if a.ndim < 2:
        raise OptionError(
            f"array has shape {a.shape}: expected one channel as (..., latitude, longitude)")
    a = np.ascontiguousarray(a, dtype=np.float32)
    bad = int(a.size - np.count_nonzero(np.isfinite(a)))
    if bad:
        raise DataValueError(
            f"array holds {bad} non-finite values: expected finite floats (zfp and SZ3 cannot "
            "encode NaN/inf); fill or mask them before comparing codecs")
    return a.reshape(-1, *a.shape[-2:]), a.shape


def rewrap(like: Any, data: np.ndarray) -> Any:
    """``data`` as ``like`` was: a DataArray with the same dims and coords, or a numpy array."""
    if hasattr(like, "coords") and hasattr(like, "copy"):
        return like.copy(data=data.astype(like.dtype, copy=False))
    return data


def encode_stack(codec: Codec, stack: np.ndarray, per_field: bool) -> list[bytes]:
    """The compressed stream(s) of a (n, lat, lon) stack: one per field, or one for the cube."""
    if per_field:
        return [codec.encode(stack[i]) for i in range(stack.shape[0])]
    return [codec.encode(stack)]


def decode_stack(codec: Codec, bufs: list[bytes], shape: tuple[int, ...], per_field: bool
                 ) -> np.ndarray:
    """The (n, lat, lon) stack of ``shape`` back from :func:`encode_stack`'s streams."""
    if not per_field:
        return codec.decode(bufs[0], shape)
    recon = np.empty(shape, dtype=np.float32)
    for i, buf in enumerate(bufs):
        recon[i] = codec.decode(buf, shape[1:])
    return recon


def roundtrip_stack(codec: Codec, stack: np.ndarray, per_field: bool) -> tuple[np.ndarray, int]:
    """Compress a stack for real and decompress it: ``(recon, nbytes)``."""
    bufs = encode_stack(codec, stack, per_field)
    return decode_stack(codec, bufs, stack.shape, per_field), sum(len(b) for b in bufs)


def compress_roundtrip(codec: Codec, array: Any, *, per_field: bool = False) -> tuple[Any, int]:
    """Compress one channel for real and decompress it: ``(recon, nbytes)``.

    ``array`` is (..., latitude, longitude), numpy or a DataArray (values cast to float32). The
    reconstruction has the input's shape (and, for a DataArray, its dims and coordinates);
    ``nbytes`` is the total length of the compressed stream(s). See the module docstring for
    the layout (one cube by default, ``per_field=True`` for one stream per 2-d field).
    """
    stack, shape = as_stack(array)
    recon, nbytes = roundtrip_stack(codec, stack, per_field)
    return rewrap(array, recon.reshape(shape)), nbytes
