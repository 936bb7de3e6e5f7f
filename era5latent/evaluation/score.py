"""What compression cost: the WLA reconstruction against the truth, beside classical codecs.

For every channel the truth is compared with the reconstruction (WeatherBench 2 metrics, see
``metrics``), and each requested baseline codec compresses the same truth at the same bytes per
value as the latent store and is scored on the same grid points. A sweep over several sizes gives
rate-distortion curves. Records are plain dicts (one per method and channel) so the CLI can print
them and scripts can read them as JSON.

Byte accounting: the WLA's bytes per value for a channel are the group's code bytes on disk
(scaled to the evaluated times) divided by the number of values the group's channels hold over
those times; that is, a group's bytes are shared equally by its channels.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from era5latent.evaluation import codecs, metrics, sizematch
from era5latent.errors import GridMismatchError, OptionError
from era5latent.sources import Source
from era5latent.store import LatentStore
from era5latent.variables import Channel

#: sizes of the default rate-distortion sweep, as multiples of the WLA's bytes per value
SWEEP_FACTORS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


@dataclass
class EvalReport:
    records: list[dict[str, Any]]  # one per (method, channel) at the WLA's size
    sweep: list[dict[str, Any]] = field(default_factory=list)  # rate-distortion records
    plots: list[str] = field(default_factory=list)
    acc_reference: str = ""


def path_bytes(path: str) -> int:
    """Bytes on disk of a file or a directory tree (0 for URLs)."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def wla_bytes_per_value(store: LatentStore) -> dict[str, float]:
    """Bytes on disk per value for each channel of the store (the same for any share of it)."""
    on_disk = store.nbytes_on_disk()
    n_times = len(store.times)
    lat_n = store.array("latitude").shape[0]
    lon_n = store.array("longitude").shape[0]
    samples = int(np.prod([store.array(d).shape[0] for d in store.sample_dims], dtype=np.int64))
    out: dict[str, float] = {}
    for g, spec in store.groups.items():
        values = n_times * samples * len(spec.channels) * lat_n * lon_n
        for ch in spec.channels:
            out[ch] = on_disk[g] / values
    return out


def _common_channels(truth: Source, recon: Source, subset: tuple[Channel, ...] | None
                     ) -> tuple[Channel, ...]:
    truth_has = set(truth.available())
    # decode pads levels it did not decode with NaN: score only what the reconstruction holds
    have = [c for c in recon.available()
            if c in truth_has and np.isfinite(_field(recon, c, 0, 1)).any()]
    if subset is not None:
        truth.check_channels(subset)
        recon.check_channels(subset)
        return subset
    if not have:
        raise OptionError(f"{truth.path} and {recon.path} share no channel; expected the "
                          "reconstruction of (part of) the truth")
    return tuple(have)


def _aligned_times(truth: Source, recon: Source, time_range: str | None) -> tuple[slice, slice]:
    r0, r1 = recon.time_indices(time_range)
    rt = recon.times[r0:r1]
    tt = truth.times
    idx = np.searchsorted(tt, rt)
    if np.any(idx >= len(tt)) or not np.array_equal(tt[np.minimum(idx, len(tt) - 1)], rt):
        raise OptionError(f"{recon.path} has times that {truth.path} lacks; evaluate on the "
                          "truth the reconstruction was made from")
    if len(idx) and not np.array_equal(idx, np.arange(idx[0], idx[0] + len(idx))):
        raise OptionError("the reconstruction's times are not a contiguous run of the truth's")
    return slice(int(idx[0]), int(idx[0]) + len(idx)), slice(r0, r1)


def evaluate(truth: Source, recon: Source, *, subset: tuple[Channel, ...] | None = None,
             time_range: str | None = None, latent: LatentStore | None = None,
             climatology: Source | None = None, baselines: list[str] | None = None,
             sweep: list[float] | None = None, plot_dir: str | None = None,
             method: str = "wla", progress: Callable[[str], None] | None = None) -> EvalReport:
    """Score ``recon`` against ``truth`` per channel, with baselines at equal bytes per value."""
    if truth.grid != recon.grid or not (np.allclose(truth.latitude, recon.latitude)
                                        and np.allclose(truth.longitude, recon.longitude)):
        raise GridMismatchError(f"{recon.path} is on a {recon.grid} grid but {truth.path} on "
                                f"{truth.grid}; evaluate a reconstruction on its truth's grid")
    if truth.sample_shape != recon.sample_shape:
        raise GridMismatchError(f"sample dims differ: {dict(zip(truth.sample_dims, truth.sample_shape))}"
                                f" vs {dict(zip(recon.sample_dims, recon.sample_shape))}")
    channels = _common_channels(truth, recon, subset)
    ts, rs = _aligned_times(truth, recon, time_range)
    methods = codecs.parse_baselines(baselines or [])
    lat, lon = truth.latitude, truth.longitude
    wla_bpv = wla_bytes_per_value(latent) if latent is not None else {}
    src_bpv = _source_bytes_per_value(truth)
    records: list[dict[str, Any]] = []
    sweep_records: list[dict[str, Any]] = []
    plots: list[str] = []
    acc_ref = "climatology" if climatology is not None else "truth time mean"
    for ch in channels:
        if progress:
            progress(ch.code)
        t = _field(truth, ch, ts.start, ts.stop)
        r = _field(recon, ch, rs.start, rs.stop)
        clim = _climatology(climatology, ch, truth.grid) if climatology is not None else None
        score: Callable[[np.ndarray, np.ndarray], dict[str, Any]] = (
            lambda a, b: metrics.channel_metrics(a, b, lat, clim, spectra=False))
        bpv = wla_bpv.get(ch.code)
        rec = {"method": method, "channel": ch.code, "units": truth.units_of(ch), **score(t, r),
               **_sizes(bpv, src_bpv)}
        records.append(rec)
        recons = {method: r}
        if bpv is not None:
            for m in methods:
                match = sizematch.match_size(m, t, bpv)
                recons[m] = np.asarray(match.recon)
                records.append({"method": m, "channel": ch.code, "units": truth.units_of(ch),
                                **score(t, recons[m]),
                                **_sizes(match.bytes_per_value, src_bpv),
                                "codec": match.codec.to_dict(), "size_reached": match.reached})
            targets = sweep if sweep is not None else [bpv * f for f in SWEEP_FACTORS]
            sweep_records.append({**rec, "sweep": True})
            for m in methods:
                for sr in sizematch.rate_distortion(m, t, targets, metrics=score):
                    sweep_records.append({**sr, "channel": ch.code, "sweep": True,
                                          **_sizes(sr["bytes_per_value"], src_bpv)})
        if plot_dir:
            plots.extend(_plots(plot_dir, ch, truth.units_of(ch), t, recons, lat, lon,
                                [s for s in sweep_records if s["channel"] == ch.code]))
    return EvalReport(records, sweep_records, plots, acc_ref)


def _sizes(bpv: float | None, src_bpv: float | None) -> dict[str, Any]:
    if bpv is None or bpv <= 0:
        return {"bytes_per_value": None, "compression_ratio": None, "compression_ratio_source": None}
    return {"bytes_per_value": bpv, "compression_ratio": 4.0 / bpv,
            "compression_ratio_source": (src_bpv / bpv) if src_bpv else None}


def _source_bytes_per_value(src: Source) -> float | None:
    """The source's own bytes on disk per value (all its variables, all its times)."""
    if "://" in src.path:
        return None
    n = sum(int(np.prod(src.ds[v].shape, dtype=np.int64)) for v in src.ds.data_vars)
    return path_bytes(src.path) / n if n else None


def _field(src: Source, ch: Channel, a: int, b: int) -> np.ndarray:
    x = src.read((ch,), a, b)  # (T, *S, 1, H, W)
    return x.reshape(-1, *x.shape[-2:])


def _climatology(clim: Source, ch: Channel, grid: tuple[int, int]) -> np.ndarray:
    """A climatology store's time mean for ``ch`` (one 2-d field on the truth's grid)."""
    clim.check_channels((ch,))
    if clim.grid != grid:
        raise GridMismatchError(f"climatology {clim.path} is on a {clim.grid} grid, the truth on "
                                f"{grid}; give a climatology on the same grid")
    n = len(clim.times)
    acc = np.zeros(grid)
    count = 0
    for a in range(0, n, 64):
        x = _field(clim, ch, a, min(a + 64, n))
        acc += x.sum(axis=0)
        count += x.shape[0]
    return acc / count


def _plots(plot_dir: str, ch: Channel, units: str, truth: np.ndarray,
           recons: dict[str, np.ndarray], lat: np.ndarray, lon: np.ndarray,
           sweep: list[dict[str, Any]]) -> list[str]:
    from era5latent import plots

    os.makedirs(plot_dir, exist_ok=True)
    out = []
    for m, r in recons.items():
        out.append(plots.plot_maps(truth[0], r[0], f"{ch.code} ({m})", lat, lon,
                                   os.path.join(plot_dir, f"map_{ch.code}_{m}.png"), units=units))
    out.append(plots.plot_spectra(truth, recons, lat, os.path.join(plot_dir, f"spectra_{ch.code}.png"),
                                  channel_name=ch.code))
    if len(sweep) > 1:
        out.append(plots.plot_rate_distortion(sweep, os.path.join(plot_dir, f"rd_{ch.code}.png"),
                                              title=f"{ch.code}: error vs size"))
    return out
