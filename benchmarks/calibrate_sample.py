"""Compare era5latent's synthetic sample (era5latent.io.sample) with real ERA5.

    .venv/bin/python benchmarks/calibrate_sample.py [--data DIR]

Prints Markdown tables:

1. the calibration targets (ERA5 grid-point mean/std, WeatherBench/Aurora statistics) against a year of
   synthetic samples (37 x 72, every 60 h) for the headline channels;
2. every statistic the real sample files allow, real against synthetic, sampled like the real files:
   * ``era5-levels-members.grib`` (z, t at 500/850 hPa, 10 members x 4 analyses 12 h apart, January 2017,
     3-degree 61 x 120 grid) against 10 seeds x 4 synthetic times on the same grid, same dates, 12 h apart;
   * ``era5-t2m-uk-2019-03.grib`` (hourly t2m, March 2019, British Isles 50-58 N, 10 W-2 E at 0.25 deg)
     against the same box cut from (a) a global 1-degree synthetic sample, hourly through March 2019,
     for the time statistics, and (b) a global 0.25-degree (721 x 1440) synthetic sample, 4 times,
     for the spatial spectrum.

The real files are looked up in $ERA5LATENT_REAL_DATA, else ../shared/data beside the repository; when they
are absent the real-data part is skipped with a message (exit status 0).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from era5latent.io.sample import TARGETS, make_sample, mid_band, zonal_slope  # noqa: E402

ENSEMBLE = "era5-levels-members.grib"
UK_T2M = "era5-t2m-uk-2019-03.grib"


def find_data(explicit: str | None = None) -> tuple[Path, bool]:
    """The folder to use (--data, else $ERA5LATENT_REAL_DATA, else ../shared/data) and whether it holds both files."""
    folder = Path(explicit or os.environ.get("ERA5LATENT_REAL_DATA") or ROOT.parent / "shared" / "data")
    return folder, (folder / ENSEMBLE).is_file() and (folder / UK_T2M).is_file()


def open_grib(path: Path):
    import xarray as xr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return xr.open_dataset(path, engine="cfgrib", backend_kwargs={"indexpath": ""}).load()


# -- statistics (shared by real and synthetic) ---------------------------------------------------------


def eddy(x: np.ndarray) -> np.ndarray:
    return x - x.mean(-1, keepdims=True)


def lag_corr(x: np.ndarray, lag: int = 1, axis: int = 1) -> float:
    a = np.moveaxis(x, axis, 0)
    return float(np.corrcoef(a[:-lag].ravel(), a[lag:].ravel())[0, 1])


def global_stats(x: np.ndarray, lat: np.ndarray) -> dict[str, object]:
    """x: (member, time, lat, lon)."""
    w = np.cos(np.deg2rad(lat))[:, None] * np.ones(x.shape[-1])
    e = eddy(x)
    return {
        "mean": float(x.mean()),
        "wmean": float((x * w).sum((-2, -1)).mean() / w.sum()),
        "std": float(x.std()),
        "profile": x.mean((0, 1, 3)),
        "eddy_std": float(np.sqrt((e[..., mid_band(lat), :] ** 2).mean())),
        "slope_syn": zonal_slope(x, lat, 8, 45),
        "slope_large": zonal_slope(x, lat, 4, 15),
        "lag12": lag_corr(e[..., mid_band(lat), :]),
    }


def box_slope(x: np.ndarray, axis: int, lo: int, hi: int) -> float:
    """Spectral slope of a non-periodic window: remove mean and linear trend, Hann taper, rfft."""
    x = np.moveaxis(x, axis, -1).astype(np.float64)
    n = x.shape[-1]
    i = np.arange(n) - (n - 1) / 2
    x = x - x.mean(-1, keepdims=True)
    x = x - (x * i).sum(-1, keepdims=True) / (i**2).sum() * i
    p = np.abs(np.fft.rfft(x * np.hanning(n), axis=-1)) ** 2
    p = p.reshape(-1, p.shape[-1]).mean(0)
    k = np.arange(lo, hi + 1)
    return float(np.polyfit(np.log(k), np.log(p[lo:hi + 1]), 1)[0])


def t2m_time_stats(x: np.ndarray, hours: np.ndarray) -> dict[str, float]:
    """x: (time, lat, lon) hourly."""
    x = x.astype(np.float64)
    comp = np.stack([x[hours == h].mean(0) for h in range(24)])
    des = x - comp[hours]
    raw = x - x.mean(0)
    out = {
        "mean": float(x.mean()),
        "std": float(x.std()),
        "diurnal": float(((comp.max(0) - comp.min(0)) / 2).mean()),
        "anom_std": float(des.std()),
        "lag1_raw": lag_corr(raw, 1, 0),
    }
    for lag in (1, 6, 12, 24):
        out[f"lag{lag}_des"] = lag_corr(des, lag, 0)
    return out


def uk_box(ds, name: str = "2m_temperature"):
    """The real file's box (58..50 N, 10 W..2 E) cut from a global 0..360 sample."""
    lon = ds.longitude.values
    keep = np.where((lon >= 350 - 1e-9) | (lon <= 2 + 1e-9))[0]
    keep = np.concatenate([keep[lon[keep] >= 350], keep[lon[keep] <= 2]])  # west to east
    sub = ds[name].sel(latitude=slice(58, 50)).isel(longitude=keep)
    return sub


# -- tables -------------------------------------------------------------------------------------------


def fmt(v: object) -> str:
    if isinstance(v, str):
        return v
    v = float(v)  # type: ignore[arg-type]
    if abs(v) >= 1000:
        return f"{v:.0f}"
    if abs(v) >= 100:
        return f"{v:.1f}"
    if v == 0 or abs(v) >= 1e-2:
        return f"{v:.3g}"
    return f"{v:.3e}"


def print_table(rows: list[tuple[str, object, object, str]], head: tuple[str, str, str, str]) -> None:
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(["---"] * len(head)) + "|")
    for r in rows:
        print(f"| {r[0]} | {fmt(r[1])} | {fmt(r[2])} | {r[3]} |")
    print()


def targets_table() -> None:
    codes = ["z50", "z500", "z850", "z1000", "t50", "t500", "t850", "u250", "u850", "v250", "q300", "q700",
             "q1000", "t2m", "u10", "v10", "msl"]
    names = {"z": "z", "t": "t", "u": "u", "v": "v", "q": "q"}
    levels = sorted({int(c[1:]) for c in codes if c[0] in names and c not in ("t2m",)})
    ds = make_sample(grid=(37, 72), times=146, start="2021-01-01", freq="60h", levels=tuple(levels), seed=1)
    rows = []
    for code in codes:
        if code in ("t2m", "u10", "v10", "msl"):
            var = {"t2m": "2m_temperature", "u10": "10m_u_component_of_wind",
                   "v10": "10m_v_component_of_wind", "msl": "mean_sea_level_pressure"}[code]
            x = ds[var].values
        else:
            var = {"z": "geopotential", "t": "temperature", "u": "u_component_of_wind",
                   "v": "v_component_of_wind", "q": "specific_humidity"}[code[0]]
            x = ds[var].sel(level=int(code[1:])).values
        m, s = TARGETS[code]
        rows.append((code, f"{fmt(m)} / {fmt(s)}", f"{fmt(x.mean())} / {fmt(x.std())}",
                     f"{(x.mean() - m) / s:+.3f} / {x.std() / s - 1:+.3f}"))
    print("### Calibration targets: ERA5 grid-point mean / std vs a year of synthetic samples\n")
    print_table(rows, ("channel", "ERA5 target (mean / std)", "synthetic (mean / std)",
                       "d(mean)/std / d(std)/std"))


def ensemble_table(data: Path) -> None:
    real = open_grib(data / ENSEMBLE)
    lat = real.latitude.values
    syn = [make_sample(grid=(61, 120), times=4, start="2017-01-01T00", freq="12h", variables=("z", "t"),
                       levels=(500, 850), seed=s) for s in range(20)]
    rows: list[tuple[str, object, object, str]] = []
    eddies: dict[str, dict[str, dict[int, np.ndarray]]] = {"real": {}, "syn": {}}
    for short, long in (("z", "geopotential"), ("t", "temperature")):
        for lev in (500, 850):
            r = real[short].sel(isobaricInhPa=lev).values.astype(np.float64)  # member, time, lat, lon
            s = np.stack([d[long].sel(level=lev).values for d in syn]).astype(np.float64)
            eddies["real"].setdefault(short, {})[lev] = eddy(r)[..., mid_band(lat), :]
            eddies["syn"].setdefault(short, {})[lev] = eddy(s)[..., mid_band(lat), :]
            a, b = global_stats(r, lat), global_stats(s, lat)
            c = f"{short}{lev}"
            prof_rmse = float(np.sqrt(((a["profile"] - b["profile"]) ** 2).mean()))  # type: ignore[operator]
            prof_corr = float(np.corrcoef(a["profile"], b["profile"])[0, 1])  # type: ignore[arg-type]
            rows += [
                (f"{c} grid-point mean", a["mean"], b["mean"], ""),
                (f"{c} area-weighted mean", a["wmean"], b["wmean"], ""),
                (f"{c} grid-point std", a["std"], b["std"], ""),
                (f"{c} zonal-mean profile", "-", f"rmse {fmt(prof_rmse)}",
                 f"corr {prof_corr:.3f} (real vs synthetic profile)"),
                (f"{c} eddy std 30-60", a["eddy_std"], b["eddy_std"], "deviation from zonal mean"),
                (f"{c} zonal spectrum slope m 8-45", a["slope_syn"], b["slope_syn"], "30-60 N/S rows"),
                (f"{c} zonal spectrum slope m 4-15", a["slope_large"], b["slope_large"], "30-60 N/S rows"),
                (f"{c} lag-1 autocorr (12 h)", a["lag12"], b["lag12"], "eddy field, 30-60 N/S"),
            ]
    for short in ("z", "t"):
        vr = float(np.corrcoef(eddies["real"][short][500].ravel(), eddies["real"][short][850].ravel())[0, 1])
        vs = float(np.corrcoef(eddies["syn"][short][500].ravel(), eddies["syn"][short][850].ravel())[0, 1])
        rows.append((f"{short} 500-850 hPa correlation", vr, vs, "eddy field, 30-60 N/S"))
    print("### Global z/t at 500/850 hPa, 3 degrees, January 2017, 12-hourly (real: 10 members x 4 times; "
          "synthetic: 20 seeds x 4 times)\n")
    print_table(rows, ("statistic", "real ERA5", "synthetic", "note"))


def uk_table(data: Path) -> None:
    real = open_grib(data / UK_T2M)
    x = real.t2m.values
    hours = real.time.dt.hour.values
    a = t2m_time_stats(x, hours)
    a["slope_lon"] = box_slope(x, 2, 3, 20)
    a["slope_lat"] = box_slope(x, 1, 3, 14)
    coarse = make_sample(grid=(181, 360), times=744, start="2019-03-01T00", freq="1h", variables=("t2m",),
                         seed=0)
    sub = uk_box(coarse)
    b = t2m_time_stats(sub.values, sub.time.dt.hour.values)
    fine = make_sample(grid=(721, 1440), times=4, start="2019-03-01T00", freq="6h", variables=("t2m",), seed=0)
    fsub = uk_box(fine).values
    assert fsub.shape[1:] == x.shape[1:], (fsub.shape, x.shape)
    b["slope_lon"] = box_slope(fsub, 2, 3, 20)
    b["slope_lat"] = box_slope(fsub, 1, 3, 14)
    rows = [
        ("t2m mean (K)", a["mean"], b["mean"], "synthetic: zonal-mean climate, no Gulf Stream / maritime warmth"),
        ("t2m std (K, space and time)", a["std"], b["std"], ""),
        ("t2m anomaly std (K)", a["anom_std"], b["anom_std"], "each point's mean diurnal cycle removed"),
        ("t2m mean diurnal half-range (K)", a["diurnal"], b["diurnal"], "per grid point, box mean"),
        ("t2m lag-1 autocorr (1 h), raw", a["lag1_raw"], b["lag1_raw"], "deviation from each point's mean"),
        ("t2m lag-1 autocorr (1 h), no diurnal", a["lag1_des"], b["lag1_des"], "mean diurnal cycle removed"),
        ("t2m lag 6 h autocorr, no diurnal", a["lag6_des"], b["lag6_des"], ""),
        ("t2m lag 12 h autocorr, no diurnal", a["lag12_des"], b["lag12_des"], ""),
        ("t2m lag 24 h autocorr, no diurnal", a["lag24_des"], b["lag24_des"], "AR(1): only lag 1 is matched"),
        ("t2m spectrum slope, lon k 3-20", a["slope_lon"], b["slope_lon"], "0.25 deg, 49-point window"),
        ("t2m spectrum slope, lat k 3-14", a["slope_lat"], b["slope_lat"], "0.25 deg, 33-point window"),
    ]
    print("### 2 m temperature, British Isles (50-58 N, 10 W-2 E), March 2019, hourly (synthetic: box cut from "
          "a 1-degree global sample hourly through March 2019; spectra from a 721 x 1440 sample)\n")
    print_table(rows, ("statistic", "real ERA5", "synthetic", "note"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="folder with the real ERA5 GRIB samples")
    args = ap.parse_args(argv)
    t0 = time.time()
    print(f"era5latent synthetic-sample calibration, {_dt.date.today().isoformat()}\n")
    targets_table()
    data, found = find_data(args.data)
    if not found:
        print(f"real-data comparison skipped: {ENSEMBLE} and {UK_T2M} not found in {data} "
              "(pass --data or set $ERA5LATENT_REAL_DATA)")
        return 0
    ensemble_table(data)
    uk_table(data)
    print(f"(ran in {time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
