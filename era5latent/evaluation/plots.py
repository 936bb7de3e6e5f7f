"""PNG figures for evaluation reports: maps, rate-distortion curves, zonal spectra.

matplotlib is imported inside each function (Agg backend, no display needed), so the package
imports without it; a missing matplotlib raises :class:`OptionError` with the install hint.
There are no coastlines by default (cartopy is too heavy a dependency); pass ``land_mask`` (a
0/1 or fractional land-sea mask on the same grid, e.g. ERA5's ``land_sea_mask``) to draw its 0.5
contour as coastlines.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from era5latent.errors import GridMismatchError, OptionError
from era5latent.evaluation.metrics import zonal_power_spectrum


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise OptionError(
            "plots need matplotlib, which is not installed; install it (pip install matplotlib) "
            "or run without plots") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _values(x: Any) -> np.ndarray:
    return np.asarray(x.values if hasattr(x, "coords") else x, dtype=np.float64)


def _first_field(x: Any) -> tuple[np.ndarray, str]:
    """A 2-d field: the array itself, or its first time step (noted in the title)."""
    a = _values(x)
    if a.ndim < 2:
        raise OptionError(f"map has shape {a.shape}: expected (..., latitude, longitude)")
    if a.ndim == 2:
        return a, ""
    return a.reshape(-1, *a.shape[-2:])[0], " (first time step)"


def _lon_sorted(lon: np.ndarray, *fields: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Longitudes in increasing order (0..360 or -180..180 alike), fields reordered with them."""
    order = np.argsort(lon)
    return lon[order], [f[..., order] for f in fields]


def plot_maps(truth: Any, recon: Any, channel_name: str, lat: Any, lon: Any,
              path: str | os.PathLike[str], *, units: str = "", land_mask: Any = None) -> str:
    """Truth, reconstruction and error (recon - truth) side by side; returns the path written.

    Truth and reconstruction share one colour scale (the 0.5..99.5 percentiles of both); the
    error uses a diverging scale symmetric about zero (99.5th percentile of |error|, arrows on
    the colour bar when values go beyond). Extra leading dims: the first field is drawn.
    """
    plt = _pyplot()
    t, note = _first_field(truth)
    r, _ = _first_field(recon)
    lat_, lon_ = _values(lat), _values(lon)
    if t.shape != r.shape or t.shape != (lat_.size, lon_.size):
        raise GridMismatchError(
            f"truth {t.shape}, reconstruction {r.shape}, grid ({lat_.size}, {lon_.size}): "
            "expected all three equal (latitude, longitude)")
    lon_, (t, r) = _lon_sorted(lon_, t, r)
    mask = None
    if land_mask is not None:
        mask = _values(land_mask)
        mask = _lon_sorted(_values(lon), mask)[1][0] if mask.shape == t.shape else None
    err = r - t
    both = np.concatenate([t.ravel(), r.ravel()])
    vmin, vmax = np.nanpercentile(both, [0.5, 99.5])
    if vmax <= vmin:
        vmin, vmax = vmin - 1, vmax + 1
    emax = float(np.nanpercentile(np.abs(err), 99.5)) or float(np.nanmax(np.abs(err))) or 1.0
    rmse = float(np.sqrt(np.nanmean(err**2)))
    unit = f" [{units}]" if units else ""

    # fixed panel and colour-bar boxes: a constrained layout took half of each map's time
    fig = plt.figure(figsize=(17, 4.4))
    axes = [fig.add_axes((0.045 + i * 0.33, 0.3, 0.29, 0.6)) for i in range(3)]
    caxes = [fig.add_axes((0.07 + i * 0.33, 0.1, 0.24, 0.04)) for i in range(3)]
    panels = [
        (t, f"truth {channel_name}{note}", "viridis", vmin, vmax, "neither"),
        (r, f"reconstruction {channel_name}", "viridis", vmin, vmax, "neither"),
        (err, f"error (recon - truth), RMSE {rmse:.3g}{unit}", "RdBu_r", -emax, emax, "both"),
    ]
    for ax, cax, (f, title, cmap, lo, hi, extend) in zip(axes, caxes, panels):
        m = ax.pcolormesh(lon_, lat_, f, cmap=cmap, vmin=lo, vmax=hi, shading="auto",
                          rasterized=True)
        if mask is not None:
            ax.contour(lon_, lat_, mask, levels=[0.5], colors="k", linewidths=0.6)
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("longitude [deg]")
        ax.set_ylabel("latitude [deg]")
        ax.set_ylim(min(lat_.min(), lat_.max()), max(lat_.min(), lat_.max()))
        ax.set_aspect("equal")
        cb = fig.colorbar(m, cax=cax, orientation="horizontal", extend=extend)
        cb.set_label(f"{channel_name}{unit}" if cmap != "RdBu_r" else f"error{unit}")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def plot_rate_distortion(records: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], *,
                         error_key: str = "rmse", x: str = "bytes_per_value",
                         title: str = "") -> str:
    """Error against size, one line per ``record["method"]``, log x; returns the path written.

    ``x`` is ``"bytes_per_value"`` or ``"compression_ratio"``. ``error_key`` falls back to
    ``"rmse_unweighted"`` for records that lack it (``baselines.rate_distortion`` without a
    metrics function). Unreached targets (``reached`` False) are drawn hollow. A method with a
    single record (the latent store) is drawn as a large star.
    """
    if x not in ("bytes_per_value", "compression_ratio"):
        raise OptionError(f"x axis {x!r}: expected 'bytes_per_value' or 'compression_ratio'")
    if not records:
        raise OptionError("no rate-distortion records to plot: expected at least one")
    plt = _pyplot()
    by_method: dict[str, list[Mapping[str, Any]]] = {}
    for rec in records:
        by_method.setdefault(str(rec.get("method", "?")), []).append(rec)

    def err_of(rec: Mapping[str, Any]) -> float:
        v = rec.get(error_key, rec.get("rmse_unweighted"))
        return float("nan") if v is None else float(v)

    fig, ax = plt.subplots(figsize=(7.5, 5), constrained_layout=True)
    ys: list[float] = []
    for method, recs in by_method.items():
        recs = sorted(recs, key=lambda r: float(r[x]))
        xs = np.array([float(r[x]) for r in recs])
        ey = np.array([err_of(r) for r in recs])
        ys.extend(v for v in ey if np.isfinite(v) and v > 0)
        if len(recs) == 1:
            ax.plot(xs, ey, "*", markersize=16, label=method, zorder=3)
            continue
        (line,) = ax.plot(xs, ey, "-", label=method)
        reached = np.array([bool(r.get("reached", True)) for r in recs])
        ax.plot(xs[reached], ey[reached], "o", color=line.get_color())
        ax.plot(xs[~reached], ey[~reached], "o", mfc="none", color=line.get_color())
    ax.set_xscale("log")
    if ys and min(ys) > 0 and max(ys) / min(ys) > 20:
        ax.set_yscale("log")
    ax.set_xlabel("bytes per value (float32 = 4)" if x == "bytes_per_value"
                  else "compression ratio vs float32")
    ax.set_ylabel(error_key)
    ax.grid(True, which="both", alpha=0.3)
    if x == "bytes_per_value":
        sec = ax.secondary_xaxis("top", functions=(lambda b: 4.0 / np.maximum(b, 1e-12),
                                                   lambda c: 4.0 / np.maximum(c, 1e-12)))
        sec.set_xlabel("compression ratio vs float32")
    channel = {str(r["channel"]) for r in records if "channel" in r}
    ax.set_title(title or ("rate-distortion" + (f": {', '.join(sorted(channel))}" if channel
                                                  else "")))
    ax.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def plot_spectra(truth: Any, recon_by_method: Mapping[str, Any], lat: Any,
                 path: str | os.PathLike[str], *, channel_name: str = "") -> str:
    """Zonal power spectra (log-log, wavenumbers >= 1): truth in black, one line per method.

    Also shows the ratio recon / truth underneath, where 1 is perfect and a drop at high
    wavenumbers is smoothing. Returns the path written.
    """
    plt = _pyplot()
    lat_ = _values(lat)
    pt = zonal_power_spectrum(_values(truth), lat_)
    k = np.arange(pt.size)
    fig, (ax, axr) = plt.subplots(2, 1, figsize=(7.5, 6.5), sharex=True, constrained_layout=True,
                                  gridspec_kw={"height_ratios": [3, 1.3]})
    ax.loglog(k[1:], pt[1:], color="k", lw=2, label="truth")
    ratios: list[np.ndarray] = []
    for method, recon in recon_by_method.items():
        pr = zonal_power_spectrum(_values(recon), lat_)
        if pr.size != pt.size:
            raise GridMismatchError(
                f"{method} has a spectrum of {pr.size} wavenumbers, truth {pt.size}: "
                "expected the same longitudes")
        (line,) = ax.loglog(k[1:], pr[1:], lw=1.2, label=method)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = pr[1:] / pt[1:]
        ratios.append(ratio[np.isfinite(ratio) & (ratio > 0)])
        axr.loglog(k[1:], ratio, lw=1.2, color=line.get_color())
    axr.axhline(1.0, color="k", lw=1)
    finite = np.concatenate(ratios) if ratios else np.ones(1)
    lo = max(min(float(finite.min()) if finite.size else 1.0, 0.5), 1e-4)
    hi = min(max(float(finite.max()) if finite.size else 1.0, 2.0), 1e4)
    axr.set_ylim(lo / 1.3, hi * 1.3)
    axr.set_ylabel("recon / truth")
    axr.set_xlabel("zonal wavenumber")
    ax.set_ylabel("power per wavenumber")
    ax.set_title(f"zonal power spectrum{': ' + channel_name if channel_name else ''}")
    ax.grid(True, which="both", alpha=0.3)
    axr.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
