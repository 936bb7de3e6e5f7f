"""What ``info`` (and later ``evaluate``) show about a store's two layers: bytes and bounds.

Reads the store (sizes on disk), so it lives apart from the numeric core.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from era5latent.residual.layout import residual_arrays
from era5latent.store import LatentStore, codes_name


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
