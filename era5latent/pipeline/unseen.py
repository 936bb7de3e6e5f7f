"""Levels a model was not trained on (``encode --allow-unseen-levels``).

The WLA's pressure-level groups are conditioned on each channel's level in hPa (PVUM metadata),
so a group can be asked to encode a level it never saw: the paper's out-of-distribution claim.
What the model lacks for such a channel is its normalisation (mean and standard deviation).
:func:`allow_unseen_levels` estimates them from the source over the encoded time range and adds
the channels to the loaded model, in memory only: the checkpoint file and its sha256 are
unchanged, and the statistics are recorded in the store (its ``normalisation`` attribute, as
for every channel), where :func:`adopt_store_levels` reads them back for decode. How much such a
level costs is measured in docs/variables.md ("Levels not seen in training").
"""

from __future__ import annotations

from typing import Any

import numpy as np

from era5latent.errors import SubsetError
from era5latent.model.checkpoint import LoadedModel
from era5latent.io.sources import Source
from era5latent.io.variables import Channel, group_channels, parse_channel

#: time steps (evenly spaced over the encoded range) an unseen level's statistics are taken from:
#: a fixed, deterministic sample, so resumed runs and parts normalise alike
STATS_STEPS = 32


def unseen_levels(channels: tuple[Channel, ...], loaded: LoadedModel) -> list[Channel]:
    """The channels at levels their (trained) group never saw. Other problems (a group the model
    lacks, a single-level field it was not trained on) are left to the usual checks."""
    out: list[Channel] = []
    for g, chs in group_channels(channels).items():
        trained = loaded.meta.groups.get(g)
        if trained is None:
            continue
        names = {c.name for c in trained}
        out += [c for c in chs if c not in trained and c.level is not None and c.name in names]
    return out


def level_stats(source: Source, channels: tuple[Channel, ...], t0: int, t1: int,
                steps: int = STATS_STEPS) -> dict[str, dict[str, float]]:
    """Mean and standard deviation per channel over ``steps`` evenly spaced times of
    ``[t0, t1)``."""
    from era5latent.training.stats import stats_over

    if t1 <= t0:
        raise SubsetError(f"{source.path}: no time steps in the range to take statistics from")
    idx = np.unique(np.linspace(t0, t1 - 1, min(steps, t1 - t0)).round().astype(int))
    return stats_over(source, channels, [(t, t + 1) for t in idx.tolist()],
                      "statistics of levels not seen in training")


def _adopt(loaded: LoadedModel, chs: list[Channel], stats: dict[str, Any]) -> None:
    for c in chs:
        g = c.group
        loaded.meta.groups[g] = (*loaded.meta.groups[g], c)
        loaded.meta.normalisation[c.code] = {"mean": float(stats[c.code]["mean"]),
                                             "std": float(stats[c.code]["std"])}


def allow_unseen_levels(source: Source, loaded: LoadedModel, channels: tuple[Channel, ...],
                        time_range: str | None = None) -> list[str]:
    """Let ``loaded`` encode levels its groups were not trained on; returns one warning per
    channel (empty: every level was seen)."""
    new = unseen_levels(channels, loaded)
    if not new:
        return []
    source.check_channels(tuple(new))
    t0, t1 = source.time_indices(time_range)
    stats = level_stats(source, tuple(new), t0, t1)
    _adopt(loaded, new, stats)
    return [f"{loaded.path} was not trained on level {c.level} hPa of {c.name} (group "
            f"{c.group} knows {','.join(x.code for x in loaded.meta.groups[c.group] if x != c)}); "
            f"encoding {c.code} out of distribution, normalised with its own statistics "
            f"(mean {stats[c.code]['mean']:.6g}, std {stats[c.code]['std']:.6g} over "
            f"{min(STATS_STEPS, t1 - t0)} time steps)" for c in new]


def adopt_store_levels(store_meta: dict[str, Any], loaded: LoadedModel) -> list[str]:
    """Before decoding a store: the levels it was encoded at that ``loaded`` was not trained on
    (``encode --allow-unseen-levels``), taken with the store's recorded statistics."""
    codes = [c for g in store_meta.get("groups", {}).values() for c in g.get("channels", [])]
    new = unseen_levels(tuple(parse_channel(c) for c in codes), loaded)
    norm = store_meta.get("normalisation", {})
    missing = [c.code for c in new if c.code not in norm]
    if missing:  # attributes validated on open: a bug or damage, said plainly
        raise SubsetError(f"the store records no normalisation for {', '.join(missing)}; "
                          "re-encode it")
    _adopt(loaded, new, norm)
    return [f"{c.code} is at a level {loaded.path} was not trained on (encoded with "
            "--allow-unseen-levels)" for c in new]
