"""What compression cost: the WLA reconstruction against the truth, beside classical codecs.

For every channel the truth is compared with the reconstruction (WeatherBench 2 metrics, see
``metrics``), and each requested baseline codec compresses the same truth at the same bytes per
value as the latent store and is scored on the same grid points. A sweep over several sizes gives
rate-distortion curves. Records are plain dicts (one per method and channel) so the CLI can print
them and scripts can read them as JSON.

Byte accounting: the WLA's bytes per value for a channel are the group's code bytes on disk
(scaled to the evaluated times) divided by the number of values the group's channels hold over
those times; that is, a group's bytes are shared equally by its channels.

**Streaming.** Truth and reconstruction are read ``time_chunk`` steps at a time (default: as many
as fit :data:`CHUNK_VALUES` values, 4 steps at 0.25 degrees), and every metric is accumulated
(:class:`~era5latent.evaluation.metrics.MetricAccumulator`), so memory is bounded by a chunk,
not by the period. Baselines follow the chunks too: each codec's setting is matched to the WLA's
bytes per value on the first chunk (:func:`~era5latent.evaluation.sizematch.match_size`), then
every chunk is compressed as its own stream with that setting, as a chunked Zarr array would be;
a row's bytes are the sum of all its streams, so ``size_matched`` is judged on the whole period.
The rate-distortion sweep and the plots use the first chunk. Without a climatology the ACC's
reference is the truth's time mean, which takes one extra pass over the truth.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from era5latent.evaluation import codecs, metrics, sizematch
from era5latent.evaluation.climatology import ClimatologyLike, TimeMeanClimatology, open_climatology
from era5latent.evaluation.regions import Region, parse_region
from era5latent.errors import GridMismatchError, OptionError
from era5latent.io.sources import Source
from era5latent.store.core import LatentStore
from era5latent.io.variables import Channel

#: sizes of the default rate-distortion sweep, as multiples of the WLA's bytes per value
SWEEP_FACTORS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)

#: values (time steps x samples x latitude x longitude) per chunk when ``time_chunk`` is not given
CHUNK_VALUES = 1 << 22


@dataclass
class EvalReport:
    records: list[dict[str, Any]]  # one per (method, channel) at the WLA's size
    sweep: list[dict[str, Any]] = field(default_factory=list)  # rate-distortion records
    plots: list[str] = field(default_factory=list)
    acc_reference: str = ""
    region: str = "global"
    time_chunk: int = 0


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
             climatology: Source | ClimatologyLike | str | None = None,
             baselines: list[str] | None = None, sweep: list[float] | None = None,
             plot_dir: str | None = None, method: str = "wla",
             progress: Callable[[int, int, str], None] | None = None,
             region: str | Region | None = None, time_chunk: int | None = None) -> EvalReport:
    """Score ``recon`` against ``truth`` per channel, with baselines at equal bytes per value.

    ``climatology``: a WB2 climatology (path or Dataset with a ``dayofyear`` dim; ACC by each
    sample's day of year and hour), a source (its time mean), or None (the truth's time mean).
    ``region``: see :mod:`~era5latent.evaluation.regions`. ``progress(done, total, channel)`` is
    called after every chunk, counting time steps over all channels.
    """
    if truth.grid != recon.grid or not (np.allclose(truth.latitude, recon.latitude)
                                        and np.allclose(truth.longitude, recon.longitude)):
        raise GridMismatchError(f"{recon.path} is on a {recon.grid} grid but {truth.path} on "
                                f"{truth.grid}; evaluate a reconstruction on its truth's grid")
    if truth.sample_shape != recon.sample_shape:
        raise GridMismatchError(f"sample dims differ: {dict(zip(truth.sample_dims, truth.sample_shape))}"
                                f" vs {dict(zip(recon.sample_dims, recon.sample_shape))}")
    if time_chunk is not None and (isinstance(time_chunk, bool) or time_chunk < 1):
        raise OptionError(f"time chunk {time_chunk!r}: expected a positive number of time steps")
    channels = _common_channels(truth, recon, subset)
    ts, rs = _aligned_times(truth, recon, time_range)
    methods = codecs.parse_baselines(baselines) if baselines else []
    lat, lon = truth.latitude, truth.longitude
    reg = parse_region(region)
    mask = reg.mask(lat, lon)
    clim = _climatology_of(climatology, lat, lon, truth.grid)
    acc_ref = clim.reference if clim is not None else "truth time mean"
    wla_bpv = wla_bytes_per_value(latent) if latent is not None else {}
    layers = _layers(latent)
    applied = residual_applied(recon) if layers else None
    if applied:  # the reconstruction carries both layers: baselines get both layers' bytes
        wla_bpv = {c: b + layers[c]["residual_bytes_per_value"] for c, b in wla_bpv.items()}
    src_bpv = _source_bytes_per_value(truth)
    n_samples = int(np.prod(truth.sample_shape, dtype=np.int64)) if truth.sample_shape else 1
    n_steps = ts.stop - ts.start
    chunk = time_chunk or max(1, CHUNK_VALUES // (n_samples * truth.grid[0] * truth.grid[1]))
    times = np.asarray(truth.times[ts.start:ts.stop])
    records: list[dict[str, Any]] = []
    sweep_records: list[dict[str, Any]] = []
    plots: list[str] = []
    done, total = 0, n_steps * len(channels)
    for ch in channels:
        units = truth.units_of(ch)
        mean_map = None if clim is not None else _time_mean(truth, ch, ts, chunk)
        bpv = wla_bpv.get(ch.code)
        accs = {m: metrics.MetricAccumulator(lat, mask, acc_reference=acc_ref)
                for m in [method, *(methods if bpv is not None else [])]}
        setting: dict[str, sizematch.SizeMatch] = {}
        nbytes = dict.fromkeys(methods, 0)
        nonzero = dict.fromkeys(methods, False)
        first: dict[str, np.ndarray] = {}
        for a in range(0, n_steps, chunk):
            b = min(a + chunk, n_steps)
            t = _field(truth, ch, ts.start + a, ts.start + b)
            r = _field(recon, ch, rs.start + a, rs.start + b)
            c = (clim.fields(ch, np.repeat(times[a:b], n_samples)) if clim is not None
                 else cast(np.ndarray, mean_map))
            accs[method].add(t, r, c)
            if a == 0:
                first = {"truth": t, method: r}
            if bpv is not None:
                tf = metrics.fill_missing(t, t, metrics.latitude_weights(lat))  # codecs: finite
                for m in methods:
                    if a == 0:
                        setting[m] = sizematch.match_size(m, tf, bpv)
                        rb, nb = np.asarray(setting[m].recon), setting[m].nbytes
                        first[m] = rb
                    else:
                        rb, nb = codecs.compress_roundtrip(setting[m].codec, tf)
                    nbytes[m] += nb
                    nonzero[m] = nonzero[m] or bool(np.any(rb))
                    accs[m].add(t, rb, c)
            done += b - a
            if progress:
                progress(done, total, ch.code)
        rec = {"method": method, "channel": ch.code, "units": units, "region": reg.name,
               **accs[method].result(), **_sizes(bpv, src_bpv)}
        if ch.code in layers:
            rec.update(_layer_fields(layers[ch.code], applied, rec["max_abs_error"]))
        records.append(rec)
        if bpv is not None:
            n_values = n_steps * n_samples * truth.grid[0] * truth.grid[1]
            for m in methods:
                sm = setting[m]
                agg = sizematch.SizeMatch(sm.codec, None, nbytes[m], n_values, bpv, sm.reached, m,
                                          all_zero=not nonzero[m] and bool(np.any(first["truth"])))
                records.append({"method": m, "channel": ch.code, "units": units,
                                "region": reg.name, **accs[m].result(),
                                **_sizes(agg.bytes_per_value, src_bpv), **agg.size_fields(),
                                "codec": sm.codec.to_dict(), "size_reached": sm.reached})
            t0 = metrics.fill_missing(first["truth"], first["truth"],
                                      metrics.latitude_weights(lat))
            c0 = (clim.fields(ch, np.repeat(times[:t0.shape[0] // n_samples], n_samples))
                  if clim is not None else mean_map)
            truth0 = first["truth"]  # scored with its NaN: masked points out of the metrics
            score: Callable[[np.ndarray, np.ndarray], dict[str, Any]] = (
                lambda x, y: _chunk_metrics(truth0 if x.shape == truth0.shape else x, y, lat,
                                            mask, c0, acc_ref))
            targets = sweep if sweep is not None else [bpv * f for f in SWEEP_FACTORS]
            sweep_records.append({**rec, "sweep": True})
            for m in methods:
                # setting[m] was matched on this same first chunk: the sweep's 1x point
                for sr in sizematch.rate_distortion(m, t0, targets, metrics=score,
                                                    known={bpv: setting[m]}):
                    sweep_records.append({**sr, "channel": ch.code, "region": reg.name,
                                          "sweep": True,
                                          **_sizes(sr["bytes_per_value"], src_bpv)})
        if plot_dir:
            recons = {k: v for k, v in first.items() if k != "truth"}
            plots.extend(_plots(plot_dir, ch, units, first["truth"], recons, lat, lon,
                                [s for s in sweep_records if s["channel"] == ch.code]))
    return EvalReport(records, sweep_records, plots, acc_ref, reg.name, chunk)


def _layers(latent: LatentStore | None) -> dict[str, dict[str, Any]]:
    """Per channel, both layers' bytes per value and the bound, for a store with residuals."""
    if latent is None or not getattr(latent, "has_residual", False):
        return {}
    from era5latent.store.info import channel_layers

    return channel_layers(latent)


def residual_applied(recon: Source) -> bool | None:
    """Whether ``recon`` was decoded with its store's residual layer, as its attributes say
    (``era5latent.residual_applied`` in Zarr, ``era5latent_residual_applied`` in NetCDF);
    None when they do not say (not an era5latent decode, or one from before the attribute)."""
    from era5latent.fsutil import decoded_attrs

    v = (decoded_attrs(recon.path) or {}).get("residual_applied")
    return v if isinstance(v, bool) else {"True": True, "False": False}.get(str(v))


def _layer_fields(layer: dict[str, Any], applied: bool | None, max_abs: float
                  ) -> dict[str, Any]:
    """The record fields of a channel of a store with residuals: each layer's bytes per value and
    ratio over float32, both together, the bound and whether the reconstruction kept it."""
    codes, res = layer["codes_bytes_per_value"], layer["residual_bytes_per_value"]
    bound = layer["max_error"]
    return {"residual_applied": applied,
            "codes_bytes_per_value": codes, "residual_bytes_per_value": res,
            "codes_ratio": 4.0 / codes if codes else None,
            "residual_ratio": 4.0 / res if res else None,
            "total_ratio": 4.0 / (codes + res) if codes + res else None,
            "max_error_bound": bound,
            "within_bound": (bool(max_abs <= bound) if bound is not None and applied
                             else None)}


def _chunk_metrics(t: np.ndarray, r: np.ndarray, lat: np.ndarray, mask: np.ndarray,
                   clim: np.ndarray | None, acc_ref: str) -> dict[str, Any]:
    acc = metrics.MetricAccumulator(lat, mask, acc_reference=acc_ref)
    acc.add(t, r, clim if clim is not None else t.mean(axis=0))
    return acc.result()


def _climatology_of(clim: Source | ClimatologyLike | str | None, lat: np.ndarray,
                    lon: np.ndarray, grid: tuple[int, int]) -> ClimatologyLike | None:
    if clim is None:
        return None
    if isinstance(clim, Source):
        return TimeMeanClimatology(clim, grid)
    if hasattr(clim, "fields") and hasattr(clim, "reference"):
        return clim
    return open_climatology(clim, lat, lon)


def _time_mean(src: Source, ch: Channel, ts: slice, chunk: int) -> np.ndarray:
    """The truth's own time mean of ``ch`` over ``ts`` (the ACC reference without a climatology)."""
    acc: np.ndarray | None = None
    count: np.ndarray | None = None
    for a in range(ts.start, ts.stop, chunk):
        x = _field(src, ch, a, min(a + chunk, ts.stop)).astype(np.float64)
        n = (~np.isnan(x)).sum(axis=0)  # a masked field: the mean over the valued steps
        acc = np.nansum(x, axis=0) if acc is None else acc + np.nansum(x, axis=0)
        count = n if count is None else count + n
    with np.errstate(invalid="ignore", divide="ignore"):  # never valued: NaN (weight 0)
        out: np.ndarray = cast(np.ndarray, acc) / cast(np.ndarray, count)
    return out


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


def _plots(plot_dir: str, ch: Channel, units: str, truth: np.ndarray,
           recons: dict[str, np.ndarray], lat: np.ndarray, lon: np.ndarray,
           sweep: list[dict[str, Any]]) -> list[str]:
    from era5latent.evaluation import plots

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
