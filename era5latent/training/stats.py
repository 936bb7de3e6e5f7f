"""Normalisation statistics in one streaming pass.

Per channel either one mean and standard deviation, or (``normalise="field"``/``"auto"``) a
per-pixel mean field and the standard deviation of the anomalies from it, in the same pass.

Per channel, the mean and standard deviation over a time range, read one time chunk at a time.
Each chunk is reduced one channel and one time step at a time in float64 (a two-pass mean and
sum of squared deviations of that slab), and chunks are merged with Chan et al.'s parallel
update, so memory is one chunk of float32 plus one float64 slab of one field, whatever the range,
and no float64 copy of the data is ever made.

Error bound: each slab's sums are float64 pairwise sums (numpy), relative error about
``log2(n) * 2**-53``; the merge adds one rounding per chunk. For a year of 0.25-degree fields the
relative error of the variance stays below 1e-12, far under float32's resolution of the data.
"""

from __future__ import annotations

import numpy as np

from era5latent.errors import DataValueError
from era5latent.store.masks import check_no_inf
from era5latent.io.sources import Source
from era5latent.io.variables import Channel


class RunningMoments:
    """Count, mean and M2 (sum of squared deviations) per channel; merges exactly (Chan)."""

    def __init__(self, channels: int) -> None:
        self.n = np.zeros(channels, dtype=np.int64)
        self.mean = np.zeros(channels)
        self.m2 = np.zeros(channels)

    def add_slab(self, c: int, x: np.ndarray) -> None:
        """Add the values ``x`` (any shape) of channel ``c``; NaN (missing: a masked field,
        :mod:`era5latent.store.masks`) is left out."""
        if x.size and np.isnan(x).any():
            x = x[~np.isnan(x)]
        if x.size == 0:
            return
        mean_b, m2_b = _slab_moments(x)
        n_a, n_b = int(self.n[c]), x.size
        n = n_a + n_b
        delta = mean_b - self.mean[c]
        self.mean[c] += delta * n_b / n
        self.m2[c] += m2_b + delta * delta * n_a * n_b / n
        self.n[c] = n

    def std(self) -> np.ndarray:
        return np.asarray(np.sqrt(self.m2 / np.maximum(self.n, 1)))


def _slab_moments(x: np.ndarray) -> tuple[float, float]:
    """(mean, sum of squared deviations) of one slab, accumulated in float64."""
    n = x.size
    mean = float(np.sum(x, dtype=np.float64)) / n
    d = x.astype(np.float64) - mean  # one slab (one field of one time step)
    return mean, float(np.dot(d.ravel(), d.ravel()))


#: a channel is normalised as anomalies from its per-pixel training mean field when that field
#: leaves at most this fraction of the channel's standard deviation (i.e. explains at least
#: 75% of its variance): z and t on a global grid, not t2m over a small region
#: (docs/evaluation.md, "Convergence: what slowed learning and what fixed it")
FIELD_STD_RATIO = 0.5


def compute_stats(source: Source, channels: tuple[Channel, ...], t0: int, t1: int,
                  block: int = 8, normalise: str = "auto"
                  ) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """Per-channel normalisation over time indices ``[t0, t1)``, streamed.

    Returns the statistics (``mean``, ``std`` per channel, and ``anomaly_std`` for a channel
    normalised by its mean field) and the mean fields ``(H, W)`` float32 of those channels.
    ``normalise``: ``channel`` (one mean and std per channel), ``field`` (every channel as
    anomalies from its time-mean field, divided by the anomalies' std) or ``auto`` (``field``
    where the mean field explains most of the variance, see :data:`FIELD_STD_RATIO`).
    """
    spans = [(a, min(a + block, t1)) for a in range(t0, t1, block)]
    if normalise == "channel":
        return stats_over(source, channels, spans, "training period"), {}
    fields = FieldMoments(len(channels), source.grid)
    stats = stats_over(source, channels, spans, "training period", fields)
    mean_fields: dict[str, np.ndarray] = {}
    for c, ch in enumerate(channels):
        mf, anomaly_std = fields.result(c, stats[ch.code]["mean"])
        st = stats[ch.code]
        if normalise == "field" or anomaly_std <= FIELD_STD_RATIO * st["std"]:
            st["anomaly_std"] = anomaly_std if anomaly_std > 1e-12 * st["std"] else st["std"]
            mean_fields[ch.code] = mf
    return stats, mean_fields


class FieldMoments:
    """Per-pixel count, sum and sum of squares per channel (float64), NaN left out."""

    def __init__(self, channels: int, grid: tuple[int, int]) -> None:
        self.n = np.zeros((channels, *grid), dtype=np.int64)
        self.s = np.zeros((channels, *grid))
        self.s2 = np.zeros((channels, *grid))

    def add(self, c: int, x: np.ndarray) -> None:
        """Add fields ``x`` (k, H, W) of channel ``c``."""
        ok = np.isfinite(x)
        x64 = np.where(ok, x, 0.0).astype(np.float64)
        self.n[c] += ok.sum(0)
        self.s[c] += x64.sum(0)
        self.s2[c] += (x64 * x64).sum(0)

    def result(self, c: int, fill: float) -> tuple[np.ndarray, float]:
        """Channel ``c``'s mean field and the standard deviation of its anomalies from that
        field over all values. A point with no value in the period (a sea-ice edge that moved
        after it) takes the mean of its nearest valued neighbours (:func:`fill_from_neighbours`;
        ``fill`` when the channel has no value at all)."""
        n = self.n[c]
        seen = n > 0
        mf = np.where(seen, self.s[c] / np.maximum(n, 1), 0.0)
        m2 = np.maximum(self.s2[c] - self.s[c] * mf, 0.0).sum()  # sum of squared anomalies
        mf = fill_from_neighbours(mf, seen) if seen.any() else np.full(mf.shape, fill)
        return mf.astype(np.float32), float(np.sqrt(m2 / max(int(n.sum()), 1)))


def fill_from_neighbours(field: np.ndarray, valued: np.ndarray) -> np.ndarray:
    """``field`` (H, W) with every point where ``valued`` is False replaced, ring by ring from
    the valued points inwards, by the mean of its already-filled neighbours (8 around it,
    longitude wrapping). At least one point must be valued."""
    out = np.where(valued, field, 0.0).astype(np.float64)
    have = valued.copy()
    while not have.all():
        total = np.zeros_like(out)
        count = np.zeros(out.shape)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dy or dx:
                    shifted_have = _shift(have, dy, dx)
                    total += np.where(shifted_have, _shift(out, dy, dx), 0.0)
                    count += shifted_have
        ring = ~have & (count > 0)
        out[ring] = total[ring] / count[ring]
        have |= ring
    return out


def _shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``a`` moved by (dy, dx): longitude wraps, latitude does not (edges see nothing)."""
    b = np.roll(a, dx, axis=1)
    if dy == 0:
        return b
    out = np.zeros_like(b)
    if dy > 0:
        out[dy:] = b[:-dy]
    else:
        out[:dy] = b[-dy:]
    return out


def stats_over(source: Source, channels: tuple[Channel, ...], spans: list[tuple[int, int]],
               what: str, fields: FieldMoments | None = None) -> dict[str, dict[str, float]]:
    """Per-channel mean and standard deviation over the time spans ``[a, b)`` (each read
    once, checked for infinities; ``what`` names them in the error), streamed; NaN (missing
    values) is left out; a constant channel gets std 1. A channel with no value at all (NaN
    everywhere) is a one-line error."""
    acc = RunningMoments(len(channels))
    for a, b in spans:
        x = source.read(channels, a, b)  # (t, *sample, C, H, W) float32
        check_no_inf(x, f"{source.path} ({what})")
        x = x.reshape(-1, *x.shape[-3:])  # (t * samples, C, H, W)
        for c in range(len(channels)):
            for k in range(x.shape[0]):
                acc.add_slab(c, x[k, c])
            if fields is not None:
                fields.add(c, x[:, c])
    empty = [c.code for c, n in zip(channels, acc.n) if n == 0 and spans]
    if empty:
        raise DataValueError(f"{source.path} ({what}): {', '.join(empty)} is missing (NaN) "
                             "everywhere; expected some values to take statistics of: choose "
                             "another time range or leave the channel out")
    mean, std = acc.mean, acc.std()
    std = np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), std, 1.0)
    return {c.code: {"mean": float(m), "std": float(d)} for c, m, d in zip(channels, mean, std)}
