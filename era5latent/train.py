"""Training a WLA on an ERA5 source.

Loss: latitude-weighted MSE on per-channel z-scored fields, plus the BSQ entropy terms. AdamW
(0.9, 0.99), weight decay 1e-4, linear warm-up then cosine decay. Each step, every group sees a
random subset of its trained channels in a random order, so one model serves any subset.
Normalisation statistics come from the training period only; the last ``val_fraction`` of the
time axis is held out for validation. Checkpoints are written every ``checkpoint_every`` steps
(atomically) with a training-state sidecar so ``resume`` continues exactly where it stopped.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch

from era5latent import __version__
from era5latent.errors import CheckpointError, OptionError
from era5latent.metrics import latitude_weights
from era5latent.model.checkpoint import (CheckpointMeta, file_sha256, load_checkpoint,
                                         load_train_state,
                                         optimizer_state_from, save_checkpoint, save_train_state)
from era5latent.model.wla import WLA, preset_config
from era5latent.sources import Source, check_finite, grid_info, iso
from era5latent.variables import Channel, group_channels

#: progress(step, total_steps, loss)
TrainProgress = Callable[[int, int, float], None]

DEFAULT_LR = {"tiny": 2e-3, "small": 1e-3, "paper": 3e-4}
#: training data held in memory up to this many bytes; above it batches are read on demand
IN_MEMORY_BYTES = 2 << 30


@dataclass
class TrainOptions:
    preset: str = "tiny"
    steps: int = 300
    batch_size: int = 8
    lr: float | None = None
    warmup_fraction: float = 0.05
    weight_decay: float = 1e-4
    val_fraction: float = 0.1
    val_every: int = 50
    checkpoint_every: int = 100
    seed: int = 0
    device: str = "auto"
    time_range: str | None = None
    resume: bool = False
    full_subset_prob: float = 0.5
    overrides: dict[str, Any] = field(default_factory=dict)  # WLAConfig overrides (e.g. patch_stride)


@dataclass
class TrainResult:
    path: str
    sha256: str
    steps: int
    train_loss: float
    val_mse: float | None
    seconds: float
    history: list[dict[str, float]]


def lr_at(step: int, total: int, base: float, warmup_fraction: float) -> float:
    """Linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to 5% of base."""
    warm = max(1, int(total * warmup_fraction))
    if step < warm:
        return base * (step + 1) / warm
    p = (step - warm) / max(1, total - warm)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def compute_stats(source: Source, channels: tuple[Channel, ...], t0: int, t1: int,
                  block: int = 32) -> dict[str, dict[str, float]]:
    """Per-channel mean and standard deviation over time indices ``[t0, t1)`` (streamed)."""
    n = 0
    s = np.zeros(len(channels))
    ss = np.zeros(len(channels))
    axes: tuple[int, ...] | None = None
    for a in range(t0, t1, block):
        x = source.read(channels, a, min(a + block, t1)).astype(np.float64)
        check_finite(x, f"{source.path} (training period)")
        caxis = x.ndim - 3
        axes = tuple(i for i in range(x.ndim) if i != caxis)
        s += x.sum(axis=axes)
        ss += (x * x).sum(axis=axes)
        n += x.size // len(channels)
    mean = s / n
    std = np.sqrt(np.maximum(ss / n - mean**2, 0.0))
    std = np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), std, 1.0)
    return {c.code: {"mean": float(m), "std": float(d)} for c, m, d in zip(channels, mean, std)}


class _Samples:
    """Normalised samples ``(C, H, W)`` of a time range, in memory or read on demand."""

    def __init__(self, source: Source, channels: tuple[Channel, ...], t0: int, t1: int,
                 stats: dict[str, dict[str, float]]) -> None:
        self.source, self.channels, self.t0, self.t1 = source, channels, t0, t1
        self.per_time = int(np.prod(source.sample_shape, dtype=np.int64))
        self.mean = np.array([stats[c.code]["mean"] for c in channels]).reshape(-1, 1, 1)
        self.std = np.array([stats[c.code]["std"] for c in channels]).reshape(-1, 1, 1)
        h, w = source.grid
        nbytes = (t1 - t0) * self.per_time * len(channels) * h * w * 4
        self.data: torch.Tensor | None = None
        if nbytes <= IN_MEMORY_BYTES:
            x = source.read(channels, t0, t1)
            check_finite(x, f"{source.path} (training data)")
            self.data = torch.from_numpy(self._norm(x.reshape(-1, *x.shape[-3:])))

    def __len__(self) -> int:
        return (self.t1 - self.t0) * self.per_time

    def _norm(self, x: np.ndarray) -> np.ndarray:
        return cast(np.ndarray, ((x - self.mean) / self.std).astype(np.float32))

    def get(self, idx: torch.Tensor) -> torch.Tensor:
        if self.data is not None:
            return self.data[idx]
        out = []
        for i in idx.tolist():
            t, k = divmod(int(i), self.per_time)
            x = self.source.read(self.channels, self.t0 + t, self.t0 + t + 1)
            x = x.reshape(-1, *x.shape[-3:])[k]
            check_finite(x, f"{self.source.path} (training data)")
            out.append(torch.from_numpy(self._norm(x)))
        return torch.stack(out)


def _split(n_times: int, val_fraction: float) -> int:
    """Index where validation starts (time-based split)."""
    if not 0.0 <= val_fraction < 1.0:
        raise OptionError(f"--val-fraction {val_fraction}: expected a number in [0, 1)")
    if n_times < 2 or val_fraction == 0:
        return n_times
    return n_times - max(1, int(round(n_times * val_fraction)))


def _weighted_mse(pred: torch.Tensor, target: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return ((pred.float() - target) ** 2 * w).mean()


def train(source: Source, channels: tuple[Channel, ...], out: str, opts: TrainOptions,
          progress: TrainProgress | None = None) -> TrainResult:
    """Train a WLA on ``channels`` of ``source`` and write it to ``out``."""
    from era5latent.pipeline import resolve_device

    if opts.steps < 1 or opts.batch_size < 1:
        raise OptionError(f"--steps {opts.steps} / --batch-size {opts.batch_size}: expected positive integers")
    source.check_channels(channels)
    if opts.preset not in DEFAULT_LR and opts.lr is None:
        raise OptionError(f"--preset {opts.preset!r}: expected one of {', '.join(DEFAULT_LR)}")
    device = resolve_device(opts.device)
    t0, t1 = source.time_indices(opts.time_range)
    split = t0 + _split(t1 - t0, opts.val_fraction)
    groups = group_channels(channels)
    stats = compute_stats(source, channels, t0, split)
    config = preset_config(opts.preset, source.grid, tuple(groups), **opts.overrides)
    meta = CheckpointMeta(config=config, groups=groups, normalisation=stats,
                          grid=grid_info(source.latitude, source.longitude))

    gen = torch.Generator().manual_seed(opts.seed)
    with torch.random.fork_rng(devices=[]):  # the seed fixes the initial weights too
        torch.manual_seed(opts.seed)
        model = WLA(config)
    lr = opts.lr if opts.lr is not None else DEFAULT_LR[opts.preset]
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": opts.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.99))
    start_step = 0
    history: list[dict[str, float]] = []
    if opts.resume:
        loaded = load_checkpoint(out)
        if loaded.meta.config != config or {g: list(c) for g, c in loaded.meta.groups.items()} != {
                g: list(c) for g, c in groups.items()}:
            raise CheckpointError(f"cannot resume {out}: it was trained with another preset, grid or "
                                  "subset; use the same options, or train without --resume")
        model.load_state_dict(loaded.model.state_dict())
        meta.normalisation = loaded.meta.normalisation
        stats = meta.normalisation
        state, tensors = load_train_state(out)
        opt.load_state_dict(optimizer_state_from(state, tensors))
        gen.set_state(tensors["rng"])
        start_step = int(state["step"])
        history = list(state.get("history", []))

    train_set = _Samples(source, channels, t0, split, stats)
    val_set = _Samples(source, channels, split, t1, stats) if split < t1 else None
    model.to(device).train()
    w = torch.from_numpy(latitude_weights(source.latitude).astype(np.float32)).to(device)
    w = w.view(1, 1, -1, 1)
    metas = {g: torch.tensor([c.meta for c in chs], dtype=torch.float32, device=device)
             for g, chs in groups.items()}
    gidx = {g: torch.tensor([channels.index(c) for c in chs]) for g, chs in groups.items()}
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else torch.autocast("cpu", enabled=False))

    t_start = time.perf_counter()
    loss_ema = float("nan")
    val_mse: float | None = history[-1].get("val_mse") if history else None
    for step in range(start_step, opts.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, opts.steps, lr, opts.warmup_fraction)
        idx = torch.randint(len(train_set), (opts.batch_size,), generator=gen)
        batch = train_set.get(idx).to(device, non_blocking=True)
        total = torch.zeros((), device=device)
        for g, chs in groups.items():
            sel = gidx[g]
            if len(chs) > 1 and torch.rand((), generator=gen).item() > opts.full_subset_prob:
                k = int(torch.randint(1, len(chs) + 1, (), generator=gen))
                perm = torch.randperm(len(chs), generator=gen)[:k]
            else:
                perm = torch.randperm(len(chs), generator=gen)
            x = batch[:, sel[perm]]
            with autocast:
                out_ = model(g, x, metas[g][perm.to(device)])
            total = total + _weighted_mse(out_.recon, x, w) + out_.losses["bsq"].float()
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss = float(total.detach())
        loss_ema = loss if math.isnan(loss_ema) else 0.9 * loss_ema + 0.1 * loss
        last = step + 1 == opts.steps
        if val_set is not None and ((step + 1) % opts.val_every == 0 or last):
            val_mse = evaluate_mse(model, val_set, groups, gidx, metas, w, device)
            model.train()
            history.append({"step": step + 1, "train_loss": loss_ema, "val_mse": val_mse})
        if progress:
            progress(step + 1, opts.steps, loss_ema)
        if (step + 1) % opts.checkpoint_every == 0 or last:
            meta.training = {
                "data": os.path.abspath(source.path) if "://" not in source.path else source.path,
                "train_time_range": _range(source, t0, split),
                "val_time_range": _range(source, split, t1) if split < t1 else None,
                "steps": step + 1, "batch_size": opts.batch_size, "lr": lr, "seed": opts.seed,
                "train_loss": loss_ema, "val_mse": val_mse, "device": str(device),
                "package_version": __version__,
            }
            model.eval()
            save_checkpoint(model, meta, out)
            save_train_state(out, opt, step + 1, gen.get_state(), {"history": history})
            model.train()
    model.eval()
    return TrainResult(out, file_sha256(out), opts.steps, loss_ema, val_mse,
                       time.perf_counter() - t_start, history)


def _range(source: Source, a: int, b: int) -> list[str]:
    return [iso(source.times[a]), iso(source.times[b - 1])]


@torch.no_grad()
def evaluate_mse(model: WLA, data: _Samples, groups: dict[str, tuple[Channel, ...]],
                 gidx: dict[str, torch.Tensor], metas: dict[str, torch.Tensor], w: torch.Tensor,
                 device: torch.device, max_samples: int = 64, batch_size: int = 8) -> float:
    """Latitude-weighted MSE in z-score units over (up to ``max_samples``) validation samples,
    all trained channels, through the binary codes (what encode/decode will give)."""
    model.eval()
    n = min(len(data), max_samples)
    idx = torch.linspace(0, len(data) - 1, n).round().long()
    acc, count = 0.0, 0
    for s in range(0, n, batch_size):
        batch = data.get(idx[s:s + batch_size]).to(device)
        for g in groups:
            x = batch[:, gidx[g]]
            recon = model.decode(g, model.encode(g, x, metas[g]), metas[g])
            acc += float(_weighted_mse(recon, x, w)) * x.shape[0]
            count += x.shape[0]
    return acc / max(count, 1)
