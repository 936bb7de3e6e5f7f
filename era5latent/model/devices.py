"""Devices and arithmetic precision for the model: ``--device`` and ``--precision`` resolved,
autocast, strict fp32 on CUDA. Training, the pipeline and the API share them."""

from __future__ import annotations

from typing import Any

import torch

from era5latent.errors import OptionError


def resolve_device(device: str) -> torch.device:
    """``auto`` -> first CUDA device if present else CPU; ``cpu``; ``cuda``/``cuda:N``."""
    d = device.strip().lower()
    if d == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if d == "cpu":
        return torch.device("cpu")
    if d.startswith("cuda"):
        if not torch.cuda.is_available():
            raise OptionError(f"--device {device}: no CUDA device is available here; use --device cpu")
        dev = torch.device(d)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise OptionError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
        return dev
    raise OptionError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 on CUDA, fp32 elsewhere; others checked against the device."""
    p = precision.strip().lower()
    if p == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if p not in PRECISIONS:
        raise OptionError(f"--precision {precision!r}: expected auto, fp32, bf16 or fp16")
    if p == "fp16" and device.type != "cuda":
        raise OptionError("--precision fp16 needs a CUDA device; use fp32 or bf16 on CPU")
    return p


def strict_fp32(device: torch.device) -> None:
    """On CUDA, make fp32 mean fp32: TF32 convolutions and matmuls (cuDNN's default) round to
    10 mantissa bits, far past the residual layer's drift margin (docs/residuals.md)."""
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def autocast(device: torch.device, precision: str) -> Any:
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=PRECISIONS[precision])


def place_for_inference(model: torch.nn.Module, device: torch.device) -> None:
    """``model.to(device).eval()``, skipped where every tensor is already on ``device`` and
    every module in eval mode. Walking the modules took 7 ms a call on the tiny preset (the
    check takes 1.5 ms), and a process encodes with one model many times (the Python API,
    Dask workers)."""
    if any(m.training for m in model.modules()) or any(
            t.device != device for t in (*model.parameters(), *model.buffers())):
        model.to(device).eval()
