"""One model file from checkpoints of groups trained apart (``era5latent combine``).

The WLA authors train one autoencoder per variable; ``train --group NAME`` does the same (one
run, or one set of ranks, per group). Combining checks that the checkpoints share everything but
their groups (preset, grid, architecture), that no group comes twice and that the channel
statistics they share agree, then builds the combined model on the meta device and requires
every tensor to be present with its exact shape before anything is written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
from safetensors.torch import load_file

from era5latent.errors import CheckpointError
from era5latent.model.checkpoint import (HEADER_KEY, MEAN_FIELD, CheckpointMeta, read_meta,
                                         save_tensors, split_mean_fields)
from era5latent.model.wla import WLA
from era5latent.io.variables import Channel


def combine(paths: Sequence[str], out: str) -> CheckpointMeta:
    """Write one checkpoint holding every group of ``paths``; returns its metadata."""
    if len(paths) < 2:
        raise CheckpointError(f"combine needs two or more checkpoints, got {len(paths)}")
    metas = [read_meta(p) for p in paths]
    first = metas[0]
    groups: dict[str, tuple[Channel, ...]] = {}
    stats: dict[str, dict[str, float]] = {}
    for path, meta in zip(paths, metas):
        same = dataclasses.replace(meta.config, groups=first.config.groups) == first.config
        if not same or meta.grid != first.grid:
            raise CheckpointError(f"{path} was trained with another preset, grid or architecture "
                                  f"than {paths[0]}; combine only groups of one model")
        for g, chs in meta.groups.items():
            if g in groups:
                raise CheckpointError(f"group {g!r} is in more than one checkpoint ({path}); pass "
                                      "each group once")
            groups[g] = chs
        for code, s in meta.normalisation.items():
            if code in stats and stats[code] != s:
                raise CheckpointError(f"{path} has other statistics for {code} than an earlier "
                                      "checkpoint; train every group on the same data")
            stats[code] = s
    config = dataclasses.replace(first.config, groups=tuple(groups))
    with torch.device("meta"):
        expected = WLA(config).state_dict()
    tensors: dict[str, torch.Tensor] = {}
    mean_fields: dict[str, np.ndarray] = {}
    for path in paths:
        weights, fields = split_mean_fields(load_file(path))
        tensors.update(weights)
        mean_fields.update(fields)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    bad = [k for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or bad:
        raise CheckpointError(f"the checkpoints do not make one model: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}, wrong shapes {bad[:3]}")
    meta = CheckpointMeta(config=config, groups=groups, normalisation=stats, grid=first.grid,
                          mean_fields=mean_fields,
                          training={"combined_from": {g: paths[i] for i, m in enumerate(metas)
                                                      for g in m.groups},
                                    "parts": [m.training for m in metas]})
    tensors.update({MEAN_FIELD + code: torch.from_numpy(mf) for code, mf in mean_fields.items()})
    save_tensors(tensors, {HEADER_KEY: meta.to_json()}, out)
    return meta
