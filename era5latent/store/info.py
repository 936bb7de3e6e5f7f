"""What ``info`` shows about a latent store (:func:`summary`: groups, channels, times, bytes,
ratios, build progress), and what ``info`` and ``evaluate`` show about its two layers, codes and
residuals (:func:`residual_summary`, :func:`channel_layers`: bytes and bounds).

Reads the store (sizes on disk), so it lives above the store core and apart from the residual
layer's numeric core.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from era5latent.io.sources import iso
from era5latent.store.core import LatentStore, open_latent_store
from era5latent.store.layout import codes_name
from era5latent.store.residual import LENGTHS, residual_arrays
from era5latent.store.spec import parts_status


def residual_summary(store: LatentStore, done: np.ndarray | None = None) -> dict[str, Any]:
    """The codes' and residuals' bytes on disk, each layer's ratio and both together, and the
    bounds (JSON-safe). Ratios are over the float32 size of the time chunks written so far.

    ``{"present": False, "codes_bytes", ...}`` for a store without residuals. Keys:
    ``codes_bytes``, ``residual_bytes`` (streams, lengths and checksums), ``float32_bytes_written``,
    ``codes_ratio``, ``residual_ratio``, ``total_ratio``, ``bytes_per_value`` (both layers),
    ``codec``, ``spec`` and ``channels`` (``{code: {max_error, margin, units}}``).
    """
    done = store.done() if done is None else done
    n_lat = int(store.array("latitude").shape[0])
    n_lon = int(store.array("longitude").shape[0])
    samples = int(np.prod([store.array(d).shape[0] for d in store.sample_dims], dtype=np.int64))
    written = sum(b - a for a, b in map(store.chunk_bounds, np.flatnonzero(done).tolist()))
    n_ch = sum(len(g.channels) for g in store.groups.values())
    values = written * samples * n_ch * n_lat * n_lon
    codes = sum(store.array_bytes(codes_name(g)) for g in store.groups)
    res = sum(store.array_bytes(n) for g in store.groups
              for n in residual_arrays(g)) \
        if store.has_residual else 0
    raw = 4 * values

    def ratio(n: int) -> float | None:
        return raw / n if n and raw else None

    r = store.residual or {}
    return {"present": store.has_residual, "codes_bytes": codes, "residual_bytes": res,
            "float32_bytes_written": raw, "values_written": values,
            "codes_ratio": ratio(codes), "residual_ratio": ratio(res),
            "total_ratio": ratio(codes + res),
            "bytes_per_value": (codes + res) / values if values else None,
            "codec": r.get("codec"), "spec": r.get("spec"),
            "channels": {c: {k: b[k] for k in ("max_error", "margin", "units")}
                         for c, b in r.get("channels", {}).items()}}


def channel_layers(store: LatentStore) -> dict[str, dict[str, Any]]:
    """Per channel of a complete store: its codes' and its residuals' bytes on disk per value,
    and its bound (``max_error``, ``margin``, ``units``; None without a residual).

    A group's codes are shared by its channels (one token holds them all), so each channel is
    charged an equal share, as ``evaluate`` does for codes alone. A group's residual arrays
    (streams, lengths, checksums) are split in proportion to its channels' stream lengths."""
    n_lat = int(store.array("latitude").shape[0])
    n_lon = int(store.array("longitude").shape[0])
    samples = int(np.prod([store.array(d).shape[0] for d in store.sample_dims], dtype=np.int64))
    per_channel_values = len(store.times) * samples * n_lat * n_lon
    bounds = (store.residual or {}).get("channels", {})
    out: dict[str, dict[str, Any]] = {}
    for g, spec in store.groups.items():
        n = len(spec.channels)
        codes = store.array_bytes(codes_name(g)) / n
        if store.has_residual:
            lengths = np.asarray(store.array(LENGTHS + g)[:], dtype=np.float64).sum(axis=0)
            on_disk = sum(store.array_bytes(a) for a in residual_arrays(g))
            share = lengths / lengths.sum() if lengths.sum() > 0 else np.zeros(n)
        else:
            share, on_disk = np.zeros(n), 0
        for k, ch in enumerate(spec.channels):
            b = bounds.get(ch)
            out[ch] = {"codes_bytes_per_value": codes / per_channel_values,
                       "residual_bytes_per_value": float(share[k]) * on_disk / per_channel_values,
                       "max_error": b["max_error"] if b else None,
                       "margin": b["margin"] if b else None,
                       "units": b["units"] if b else None}
    return out


def summary(path: str, parts: int | None = None) -> dict[str, Any]:
    """What ``info`` shows: groups, channels, times, bytes, ratios, build progress (JSON-safe).

    With ``parts`` N (default: the N recorded by the ``encode --parts I/N`` run that created the
    store, if any) the result has ``parts``: ``{count, done, missing}`` (1-based part numbers).
    """
    store = open_latent_store(path)
    meta = store.meta
    times = store.times
    lat_n = int(store.array("latitude").shape[0])
    lon_n = int(store.array("longitude").shape[0])
    samples = int(np.prod([store.array(d).shape[0] for d in store.sample_dims], dtype=np.int64))
    on_disk = store.nbytes_on_disk()
    done = store.done()
    # ratios are over what is written so far: an unfinished store's bytes against the float32
    # size of its finished chunks (not of all of them)
    written = sum(b - a for a, b in map(store.chunk_bounds, np.flatnonzero(done).tolist()))
    groups: list[dict[str, Any]] = []
    for name, g in store.groups.items():
        per_time = samples * len(g.channels) * lat_n * lon_n * 4
        raw = len(times) * per_time
        code_raw = len(times) * samples * g.token_grid[0] * g.token_grid[1] * g.nbytes
        groups.append({
            "group": name, "channels": list(g.channels), "code_bits": g.code_bits,
            "token_grid": list(g.token_grid), "bytes_on_disk": on_disk[name],
            "code_bytes": code_raw, "float32_bytes": raw,
            "float32_bytes_written": written * per_time,
            "compression_ratio": written * per_time / on_disk[name] if on_disk[name] else None,
            "code_compression_ratio": raw / code_raw if code_raw else None,
        })
    raw_total = sum(g["float32_bytes"] for g in groups)
    raw_written = sum(g["float32_bytes_written"] for g in groups)
    disk_total = sum(g["bytes_on_disk"] for g in groups)
    return {
        "path": path,
        "format": meta["format"], "format_version": meta["format_version"],
        "package_version": meta.get("package_version"),
        "complete": store.complete,
        "chunks_done": int(done.sum()), "chunks_total": int(done.size),
        "times": len(times),
        "time_range": [iso(times[0]), iso(times[-1])] if len(times) else [],
        "sample_dims": {d: int(store.array(d).shape[0]) for d in store.sample_dims},
        "grid": [lat_n, lon_n],
        "model_sha256": meta["model"]["sha256"], "model_preset": meta["model"].get("preset"),
        "source": meta["source"].get("path"),
        "groups": groups,
        "float32_bytes": raw_total, "bytes_on_disk": disk_total,
        "float32_bytes_written": raw_written,
        "compression_ratio": raw_written / disk_total if disk_total else None,
        "residual": residual_summary(store, done),
    } | ({"parts": parts_status(done, n_parts)}
         if (n_parts := parts or meta.get("parts")) else {})
