"""The training-state sidecar ``MODEL.state.safetensors`` that ``--resume`` continues from.

It holds what the checkpoint itself does not: the raw weights when the checkpoint carries EMA
weights, each group's optimizer moments, the discriminators and their optimizers, the per-group
random generators, the step and the history. Everything is replicated across data-parallel
ranks, so a run resumes under any world size. Written by rank 0, atomically, after the
checkpoint; a checkpoint is complete without it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from era5latent.errors import CheckpointError
from era5latent.model.checkpoint import HEADER_KEY, save_tensors


def state_path(model_path: str) -> str:
    return model_path + ".state.safetensors"


def flatten_optimizer(prefix: str, opt: torch.optim.Optimizer,
                      tensors: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """Put ``opt``'s moments into ``tensors`` under ``prefix``; returns its param groups (JSON)."""
    sd = opt.state_dict()
    for idx, st in sd["state"].items():
        for name, value in st.items():
            tensors[f"{prefix}.{idx}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return list(sd["param_groups"])


def restore_optimizer(prefix: str, opt: torch.optim.Optimizer, param_groups: list[dict[str, Any]],
                      tensors: dict[str, torch.Tensor]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        if key.startswith(prefix + "."):
            idx, name = key[len(prefix) + 1:].split(".", 1)
            state.setdefault(int(idx), {})[name] = t
    opt.load_state_dict({"state": state, "param_groups": param_groups})


def save_state(model_path: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    try:
        save_tensors(tensors, {HEADER_KEY: json.dumps(meta, sort_keys=True)}, state_path(model_path))
    except CheckpointError as err:
        raise CheckpointError(f"cannot write the training state: {err}") from None


def load_state(model_path: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    sp = state_path(model_path)
    if not os.path.isfile(sp):
        raise CheckpointError(f"cannot resume: {sp} (the training state written beside "
                              f"{model_path}) is missing; train without --resume")
    try:
        with safe_open(sp, framework="pt") as f:
            meta = json.loads((f.metadata() or {})[HEADER_KEY])
        tensors = load_file(sp)
    except (SafetensorError, OSError, ValueError, KeyError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot resume: {sp} is damaged ({err}); train without "
                              "--resume") from None
    if not isinstance(meta, dict) or "step" not in meta:
        raise CheckpointError(f"cannot resume: {sp} is not a training state of this era5latent; "
                              "train without --resume")
    return meta, tensors
