"""WeatherBench 2 metrics for one channel: latitude-weighted RMSE, bias, MAE, ACC, spectra.

Inputs are numpy arrays or xarray DataArrays whose last two dims are (latitude, longitude); all
leading dims (time, usually) are samples that get averaged. Pass one channel at a time: leading
dims are never kept apart, so a (time, level, lat, lon) array would average over levels too.
With a DataArray the latitude coordinate is taken from it (``latitude`` or ``lat``) unless given,
and its dims are reordered so that latitude and longitude come last.

Conventions (WeatherBench 2, Rasp et al. 2024):

- Latitude weights are cell areas, ``sin(upper edge) - sin(lower edge)``, with edges at the
  midpoints between neighbouring latitudes and the outer edges half a spacing beyond the first and
  last latitude, clamped to +-90; normalised to mean 1 over the latitudes. For a regular global
  grid this equals WB2's ``get_lat_weights`` (poles included or not).
- Errors are ``recon - truth`` (forecast minus observation): a positive bias means too high.
- Spatial means are latitude-weighted means over (latitude, longitude); time means are plain.
- NaNs are not skipped: they propagate into the result (WB2 does the same, ``skipna=False``).

Accumulation is in float64 whatever the input dtype.
"""

from __future__ import annotations

import warnings

from typing import Any, cast

import numpy as np

from era5latent.errors import GridMismatchError, OptionError, SourceError

_LAT_NAMES = ("latitude", "lat")
_LON_NAMES = ("longitude", "lon")


# --------------------------------------------------------------------------------------------
# input handling


def _is_dataarray(x: Any) -> bool:
    return hasattr(x, "dims") and hasattr(x, "coords") and hasattr(x, "transpose")


def _dim_named(x: Any, names: tuple[str, ...]) -> str | None:
    for n in names:
        if n in x.dims:
            return n
    return None


def _lat_lon_last(x: Any) -> Any:
    """A DataArray with its latitude and longitude dims moved last (others keep their order)."""
    la, lo = _dim_named(x, _LAT_NAMES), _dim_named(x, _LON_NAMES)
    if la is None or lo is None:
        raise SourceError(
            f"array dims {tuple(x.dims)} lack a latitude/longitude pair: expected dims named "
            "'latitude' and 'longitude' (or 'lat'/'lon'); rename them first")
    rest = [d for d in x.dims if d not in (la, lo)]
    return x.transpose(*rest, la, lo)


def _as_field(x: Any, what: str) -> np.ndarray:
    """A float64 numpy array with at least 2 dims, (..., lat, lon)."""
    if _is_dataarray(x):
        x = _lat_lon_last(x).values
    a = np.asarray(x, dtype=np.float64)
    if a.ndim < 2:
        raise SourceError(
            f"{what} has shape {a.shape}: expected dims (..., latitude, longitude); "
            "pass at least one 2-d field")
    return a


def _lat_of(x: Any, lat: Any, what: str) -> np.ndarray:
    if lat is None:
        if _is_dataarray(x):
            name = _dim_named(x, _LAT_NAMES)
            if name is not None and name in x.coords:
                return np.asarray(x.coords[name].values, dtype=np.float64)
        raise OptionError(
            f"no latitudes for {what}: expected a 'lat' argument (degrees) or a DataArray with a "
            "'latitude' coordinate; pass lat=...")
    return np.asarray(lat.values if _is_dataarray(lat) else lat, dtype=np.float64)


def _check_coords_match(truth: Any, recon: Any) -> None:
    """Two DataArrays must sit on the same latitudes and longitudes, in the same order."""
    if not (_is_dataarray(truth) and _is_dataarray(recon)):
        return
    for names in (_LAT_NAMES, _LON_NAMES):
        a, b = _dim_named(truth, names), _dim_named(recon, names)
        if a is None or b is None or a not in truth.coords or b not in recon.coords:
            continue
        ca, cb = np.asarray(truth.coords[a].values), np.asarray(recon.coords[b].values)
        if ca.shape != cb.shape or not np.allclose(ca, cb):
            raise GridMismatchError(
                f"truth and reconstruction differ in their {a} coordinate "
                f"(truth {ca[:1]}..{ca[-1:]} x{ca.size}, recon {cb[:1]}..{cb[-1:]} x{cb.size}); "
                "expected the same grid in the same order: use recon.reindex_like(truth)")


def _pair(truth: Any, recon: Any, lat: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(truth, recon, normalised weights), shapes checked."""
    _check_coords_match(truth, recon)
    lat_ = _lat_of(truth if _is_dataarray(truth) else recon, lat, "truth")
    t, r = _as_field(truth, "truth"), _as_field(recon, "reconstruction")
    if t.shape != r.shape:
        raise GridMismatchError(
            f"truth has shape {t.shape} but reconstruction {r.shape}: expected equal shapes "
            "(..., latitude, longitude); decode onto the truth's grid and times")
    return t, r, _weights_for(t, lat_)


def _weights_for(field: np.ndarray, lat: np.ndarray) -> np.ndarray:
    w = latitude_weights(lat)
    if w.size != field.shape[-2]:
        raise GridMismatchError(
            f"{w.size} latitudes given but the field has {field.shape[-2]} rows "
            f"(shape {field.shape}, expected (..., latitude, longitude)); pass the field's own "
            "latitude coordinate")
    return w


# --------------------------------------------------------------------------------------------
# weights and means


def latitude_weights(lat_deg: Any) -> np.ndarray:
    """Area weights for the given latitudes (degrees, any order), normalised to mean 1.

    Each cell spans from the midpoint to its southern neighbour to the midpoint to its northern
    neighbour; the outermost cells reach half a spacing beyond, clamped to +-90 (so a pole row
    gets the small polar cap, a regional grid such as 50..58N gets full-width end cells). The
    weight is ``sin(upper) - sin(lower)``, returned in the order the latitudes were given.
    """
    lat = np.asarray(lat_deg, dtype=np.float64)
    if lat.ndim != 1 or lat.size == 0:
        raise SourceError(
            f"latitude coordinate has shape {lat.shape}: expected a non-empty 1-d array of "
            "degrees; pass the grid's latitude values")
    if not np.all(np.isfinite(lat)) or np.any(np.abs(lat) > 90.0):
        raise SourceError(
            f"latitudes range {np.nanmin(lat)}..{np.nanmax(lat)}: expected finite degrees within "
            "-90..90; convert radians or fix the coordinate")
    if lat.size == 1:
        return np.ones(1)
    order = np.argsort(lat)
    s = lat[order]
    if np.any(np.diff(s) <= 0):
        raise SourceError(
            "latitude coordinate has repeated values: expected distinct latitudes; "
            "drop the duplicate rows")
    mid = (s[:-1] + s[1:]) / 2
    edges = np.concatenate([[s[0] - (s[1] - s[0]) / 2], mid, [s[-1] + (s[-1] - s[-2]) / 2]])
    edges = np.clip(edges, -90.0, 90.0)
    area = np.diff(np.sin(np.deg2rad(edges)))
    out = np.empty_like(area)
    out[order] = area
    return cast(np.ndarray, out / out.mean())


def weighted_spatial_mean(field: Any, lat: Any = None) -> np.ndarray:
    """The latitude-weighted mean over (latitude, longitude); leading dims are kept.

    Returns an array of the leading shape (a 0-d array for a single 2-d field).
    """
    lat_ = _lat_of(field, lat, "field")
    f = _as_field(field, "field")
    return _wmean(f, _weights_for(f, lat_))


def _wmean(f: np.ndarray, w: np.ndarray) -> np.ndarray:
    # mean of w is 1, so the weighted mean is the plain mean of w * f
    return cast(np.ndarray, np.mean(f * w[:, None], axis=(-2, -1)))


def _wmean_t(f: np.ndarray, w: np.ndarray, t: np.ndarray) -> np.ndarray:
    """:func:`_wmean` with weight 0 where the truth ``t`` is NaN (a masked field's missing
    points, docs/evaluation.md); a field with no valued point gives NaN."""
    nan = np.isnan(t)
    if not nan.any():
        return _wmean(f, w)
    ww = np.where(nan, 0.0, np.broadcast_to(w[:, None], t.shape))
    with np.errstate(invalid="ignore", divide="ignore"):
        return cast(np.ndarray, np.sum(np.where(nan, 0.0, f) * ww, axis=(-2, -1))
                    / np.sum(ww, axis=(-2, -1)))


def fill_missing(f: np.ndarray, t: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``f`` with the points where the truth ``t`` is NaN set to each field's weighted mean
    of ``t`` over its valued points (what the zonal spectra and the baseline codecs see of a
    masked field); ``f`` itself when nothing is missing."""
    nan = np.isnan(t)
    if not nan.any():
        return f
    m = np.nan_to_num(_wmean_t(t, w, t))[..., None, None]
    return np.where(nan, np.broadcast_to(m, f.shape), f)


# --------------------------------------------------------------------------------------------
# error metrics


def rmse(truth: Any, recon: Any, lat: Any = None, *, sqrt_before_time_mean: bool = True) -> float:
    """Latitude-weighted root-mean-square error.

    By default (``sqrt_before_time_mean=True``, the WeatherBench 2 paper's definition) the square
    root is taken per time step, of the weighted spatial mean of the squared error, and those
    per-step RMSEs are then averaged over time (all leading dims). With
    ``sqrt_before_time_mean=False`` the weighted squared error is averaged over space and time
    first and the root taken last (``sqrt(MSE)``, WB2 code's ``RMSE``); that value is >= the default.
    """
    t, r, w = _pair(truth, recon, lat)
    mse = _wmean_t((r - t) ** 2, w, t)
    if sqrt_before_time_mean:
        return float(np.mean(np.sqrt(mse)))
    return float(np.sqrt(np.mean(mse)))


def bias(truth: Any, recon: Any, lat: Any = None) -> float:
    """Latitude-weighted mean error ``recon - truth``, averaged over time."""
    t, r, w = _pair(truth, recon, lat)
    return float(np.mean(_wmean_t(r - t, w, t)))


def mae(truth: Any, recon: Any, lat: Any = None) -> float:
    """Latitude-weighted mean absolute error, averaged over time."""
    t, r, w = _pair(truth, recon, lat)
    return float(np.mean(_wmean_t(np.abs(r - t), w, t)))


def max_abs_error(truth: Any, recon: Any) -> float:
    """The largest absolute error anywhere (unweighted)."""
    _check_coords_match(truth, recon)
    t, r = _as_field(truth, "truth"), _as_field(recon, "reconstruction")
    if t.shape != r.shape:
        raise GridMismatchError(
            f"truth has shape {t.shape} but reconstruction {r.shape}: expected equal shapes; "
            "decode onto the truth's grid and times")
    return float(np.max(np.where(np.isnan(t), 0.0, np.abs(r - t)))) if t.size else 0.0


def acc(truth: Any, recon: Any, climatology: Any, lat: Any = None) -> float:
    """Anomaly correlation coefficient (WeatherBench 2 definition), averaged over time.

    With anomalies ``a_f = recon - climatology`` and ``a_t = truth - climatology`` (not centred
    on their spatial mean), per time step::

        ACC = sum(w a_f a_t) / sqrt(sum(w a_f^2) * sum(w a_t^2))

    then the plain mean over time. ``climatology`` must broadcast to the fields' shape: a
    (latitude, longitude) map, or one map per time step. A step with zero anomaly (the truth
    equals the climatology) has no defined ACC and gives NaN.
    """
    t, r, w = _pair(truth, recon, lat)
    c = _as_field(climatology, "climatology")
    try:
        c = np.broadcast_to(c, t.shape)
    except ValueError:
        raise GridMismatchError(
            f"climatology has shape {c.shape}, which does not broadcast to the fields' "
            f"{t.shape}: expected a (latitude, longitude) map on the same grid") from None
    af, at = r - c, t - c
    num = _wmean_t(af * at, w, t)
    den = np.sqrt(_wmean_t(af**2, w, t) * _wmean_t(at**2, w, t))
    with np.errstate(invalid="ignore", divide="ignore"):
        per_step = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return float(np.mean(per_step))


# --------------------------------------------------------------------------------------------
# spectra


def zonal_power_spectrum(field: Any, lat: Any = None) -> np.ndarray:
    """Power per zonal wavenumber, latitude-weighted mean over rows, averaged over time.

    Returns a 1-d array ``p`` of length ``nlon // 2 + 1`` where ``p[k]`` is the power at zonal
    wavenumber ``k`` (cycles around the latitude circle). It is one-sided and normalised so that
    ``p.sum()`` equals the weighted mean of ``field**2`` (Parseval): ``p[0]`` is the squared zonal
    mean, ``p[k] = 2 |F_k|^2 / nlon^2`` in between, and the Nyquist term is not doubled. Assumes
    the longitudes cover the full circle evenly spaced (a regional grid gives a windowed spectrum).
    """
    lat_ = _lat_of(field, lat, "field")
    f = _as_field(field, "field")
    w = _weights_for(f, lat_)
    n = f.shape[-1]
    F = np.fft.rfft(f, axis=-1)
    p = np.abs(F) ** 2 / n**2
    if n % 2 == 0:
        p[..., 1:-1] *= 2
    else:
        p[..., 1:] *= 2
    # weighted mean over latitude rows (w has mean 1), then over all leading dims
    p = np.mean(p * w[:, None], axis=-2)
    return cast(np.ndarray, p.reshape(-1, p.shape[-1]).mean(axis=0))


def _small_scale_slice(nk: int, fraction: float) -> slice:
    """The highest ``fraction`` of the nonzero wavenumbers 1..nk-1 (at least one)."""
    kmax = nk - 1
    nsel = max(1, int(round(fraction * kmax)))
    return slice(kmax - nsel + 1, kmax + 1)


def _check_fraction(fraction: float) -> None:
    if not 0 < fraction <= 1:
        raise OptionError(
            f"small-scale fraction {fraction}: expected a value in (0, 1], e.g. 0.25")


def small_scale_power_ratio(truth: Any, recon: Any, lat: Any = None,
                            fraction: float = 0.25) -> float:
    """Reconstructed over true power, summed over the highest ``fraction`` of zonal wavenumbers.

    Below 1: the reconstruction is too smooth (lost fine detail); above 1: it adds spurious
    small-scale noise. Wavenumbers 1..nlon//2 are ranked; the top ``round(fraction * nlon//2)``
    (at least one) are summed. NaN if the truth has no power there.
    """
    _check_fraction(fraction)
    t, r, _ = _pair(truth, recon, lat)
    lat_ = _lat_of(truth if _is_dataarray(truth) else recon, lat, "truth")
    pt, pr = zonal_power_spectrum(t, lat_), zonal_power_spectrum(r, lat_)
    sl = _small_scale_slice(pt.size, fraction)
    den = float(pt[sl].sum())
    return float(pr[sl].sum() / den) if den > 0 else float("nan")


# --------------------------------------------------------------------------------------------
# all at once


def channel_metrics(truth: Any, recon: Any, lat: Any = None, climatology: Any = None, *,
                    fraction: float = 0.25, spectra: bool = True) -> dict[str, Any]:
    """Every metric above for one channel, as a JSON-ready dict.

    Keys: ``rmse`` (root per time step, then time mean), ``rmse_sqrt_after_time_mean``,
    ``bias``, ``mae``, ``max_abs_error``, ``acc``, ``acc_reference``, ``small_scale_power_ratio``,
    ``small_scale_fraction``, ``n_samples`` (time steps), and with ``spectra`` the lists
    ``spectrum_truth``/``spectrum_recon`` (index = zonal wavenumber). Without a climatology the
    truth's own time mean is used and ``acc_reference`` says ``"truth time mean"`` (a single time
    step then has no anomaly and its ACC is NaN).
    """
    _check_fraction(fraction)
    lat_ = _lat_of(truth if _is_dataarray(truth) else recon, lat, "truth")
    t, r, w = _pair(truth, recon, lat_)
    if climatology is None:
        with warnings.catch_warnings():  # a point missing at every step: NaN, weight 0 anyway
            warnings.simplefilter("ignore", RuntimeWarning)
            clim = np.nanmean(t.reshape(-1, *t.shape[-2:]), axis=0)
        ref = "truth time mean"
    else:
        clim = climatology
        ref = "climatology"
    err = r - t
    mse = _wmean_t(err**2, w, t)
    pt = zonal_power_spectrum(fill_missing(t, t, w), lat_)
    pr = zonal_power_spectrum(fill_missing(r, t, w), lat_)
    sl = _small_scale_slice(pt.size, fraction)
    den = float(pt[sl].sum())
    out: dict[str, Any] = {
        "rmse": float(np.mean(np.sqrt(mse))),
        "rmse_sqrt_after_time_mean": float(np.sqrt(np.mean(mse))),
        "bias": float(np.mean(_wmean_t(err, w, t))),
        "mae": float(np.mean(_wmean_t(np.abs(err), w, t))),
        "max_abs_error": float(np.max(np.where(np.isnan(t), 0.0, np.abs(err)))),
        "acc": acc(t, r, clim, lat_),
        "acc_reference": ref,
        "small_scale_power_ratio": float(pr[sl].sum() / den) if den > 0 else float("nan"),
        "small_scale_fraction": fraction,
        "n_samples": int(np.prod(t.shape[:-2], dtype=np.int64)),
    }
    if spectra:
        out["spectrum_truth"] = [float(v) for v in pt]
        out["spectrum_recon"] = [float(v) for v in pr]
    return out


# --------------------------------------------------------------------------------------------
# streaming: the same metrics over time chunks, with a region


class MetricAccumulator:
    """:func:`channel_metrics` for one channel, fed one time chunk at a time.

    Memory is what one chunk takes: every metric is a time mean of per-step spatial means (or a
    running max, or spectra summed over steps), so a chunk's per-step numbers are summed and the
    chunk dropped. ``mask`` (latitude, longitude) booleans restrict the spatial means to a region
    (:mod:`~era5latent.evaluation.regions`): means are ``sum(w m x) / sum(w m)`` with the whole
    grid's latitude weights ``w``; the max error is over the region; the zonal spectra are over the
    region's rows, on the longitudes it spans (windowed when that is not the full circle).
    Results equal :func:`channel_metrics` on the concatenated chunks (global region) up to
    floating-point summation order.
    """

    def __init__(self, lat: Any, mask: np.ndarray | None = None, *, fraction: float = 0.25,
                 acc_reference: str = "climatology") -> None:
        _check_fraction(fraction)
        lat_ = np.asarray(lat, dtype=np.float64)
        w = latitude_weights(lat_)
        m = np.ones((lat_.size, 1), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        self.w2 = w[:, None] * m  # (lat, lon or 1)
        self.mask = m
        self.rows = np.nonzero(m.any(axis=1))[0]
        self.cols = np.nonzero(m.any(axis=0))[0] if m.shape[1] > 1 else None
        self.w_rows = w[self.rows] / w[self.rows].mean()
        self.fraction = fraction
        self.acc_reference = acc_reference
        self.n = 0
        self.sums = dict.fromkeys(("rmse", "mse", "bias", "mae", "acc"), 0.0)
        self.max_abs = 0.0
        self.pt: np.ndarray | None = None
        self.pr: np.ndarray | None = None

    def _smean(self, f: np.ndarray, valued: np.ndarray | None = None) -> np.ndarray:
        """Region-weighted spatial mean per step of an (n, lat, lon) array; with ``valued``
        (n, lat, lon), weight 0 where it is False (a masked field's missing points)."""
        w = np.broadcast_to(self.w2, f.shape[-2:])
        if valued is None:
            return cast(np.ndarray, np.einsum("nij,ij->n", f, w) / float(w.sum()))
        ww = w * valued
        with np.errstate(invalid="ignore", divide="ignore"):
            return cast(np.ndarray, np.einsum("nij,nij->n", np.where(valued, f, 0.0), ww)
                        / ww.sum(axis=(1, 2)))

    def _spectrum(self, f: np.ndarray) -> np.ndarray:
        g = f[:, self.rows]
        if self.cols is not None:
            g = g[:, :, self.cols]
        n = g.shape[-1]
        p = np.abs(np.fft.rfft(g, axis=-1)) ** 2 / n**2
        if n % 2 == 0:
            p[..., 1:-1] *= 2
        else:
            p[..., 1:] *= 2
        return cast(np.ndarray, np.mean(p * self.w_rows[:, None], axis=-2).sum(axis=0))

    def add(self, truth: np.ndarray, recon: np.ndarray, climatology: np.ndarray) -> None:
        """One chunk: (n, lat, lon) truth and reconstruction; the climatology broadcasts to them
        ((lat, lon), (1, lat, lon) or one map per step)."""
        t = np.asarray(truth, dtype=np.float64)
        r = np.asarray(recon, dtype=np.float64)
        if t.shape != r.shape or t.ndim != 3:
            raise GridMismatchError(f"truth chunk {t.shape} vs reconstruction {r.shape}: "
                                    "expected equal (time, latitude, longitude) shapes")
        nan = np.isnan(t)  # a masked field's missing points: out of every metric
        v = ~nan if nan.any() else None
        if v is not None:
            mean_t = np.nan_to_num(self._smean(t, v))[:, None, None]
            t = np.where(v, t, mean_t)  # what the spectra see there; weight 0 everywhere else
            r = np.where(v, r, mean_t)
        err = r - t
        mse = self._smean(err * err, v)
        self.sums["rmse"] += float(np.sqrt(mse).sum())
        self.sums["mse"] += float(mse.sum())
        self.sums["bias"] += float(self._smean(err, v).sum())
        self.sums["mae"] += float(self._smean(np.abs(err), v).sum())
        region_err = np.abs(err) if self.mask.shape[1] == 1 and self.mask.all() else \
            np.where(np.broadcast_to(self.mask, t.shape[-2:]), np.abs(err), 0.0)
        self.max_abs = max(self.max_abs, float(np.max(region_err)))
        del err
        c = np.broadcast_to(np.asarray(climatology, dtype=np.float64), t.shape)
        if v is not None:
            c = np.where(v, c, t)
        af, at = r - c, t - c
        num = self._smean(af * at, v)
        den = np.sqrt(self._smean(af * af, v) * self._smean(at * at, v))
        del af, at
        with np.errstate(invalid="ignore", divide="ignore"):
            per_step = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
        self.sums["acc"] += float(per_step.sum())
        pt, pr = self._spectrum(t), self._spectrum(r)
        self.pt = pt if self.pt is None else self.pt + pt
        self.pr = pr if self.pr is None else self.pr + pr
        self.n += t.shape[0]

    def result(self, spectra: bool = False) -> dict[str, Any]:
        """The :func:`channel_metrics` dict over every chunk added."""
        if self.n == 0 or self.pt is None or self.pr is None:
            raise OptionError("no time steps were scored: expected at least one chunk")
        n = self.n
        pt, pr = self.pt / n, self.pr / n
        sl = _small_scale_slice(pt.size, self.fraction)
        den = float(pt[sl].sum())
        out: dict[str, Any] = {
            "rmse": self.sums["rmse"] / n,
            "rmse_sqrt_after_time_mean": float(np.sqrt(self.sums["mse"] / n)),
            "bias": self.sums["bias"] / n,
            "mae": self.sums["mae"] / n,
            "max_abs_error": self.max_abs,
            "acc": self.sums["acc"] / n,
            "acc_reference": self.acc_reference,
            "small_scale_power_ratio": float(pr[sl].sum() / den) if den > 0 else float("nan"),
            "small_scale_fraction": self.fraction,
            "n_samples": n,
        }
        if spectra:
            out["spectrum_truth"] = [float(v) for v in pt]
            out["spectrum_recon"] = [float(v) for v in pr]
        return out
