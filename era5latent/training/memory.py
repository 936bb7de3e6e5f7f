"""How much memory one training step needs, and how many FLOPs a sample costs (``train --dry-run``).

Nothing here allocates the model: the WLA is built under :class:`FakeTensorMode` (tensors with
shapes, dtypes and a device but no storage), one training forward pass of one group is run on a
fake batch, and every tensor autograd saves for the backward pass is counted with
:func:`torch.autograd.graph.saved_tensors_hooks` -- measured, not guessed, and in a second or so
even for the paper preset at 721 x 1440. The fake tensors claim the CPU device, so
``precision="bf16"`` runs under CPU autocast, which keeps the same tensors in bfloat16 as CUDA
autocast (matmul inputs and the cast weight copies; LayerNorm, the residual stream and the loss
in float32), and attention takes PyTorch's fused kernel, which saves q, k, v, the output and a
float32 log-sum-exp per query as the CUDA flash / memory-efficient kernels do (the unfused math
kernel would also keep the heads x N x N weights).

The step modelled is the lead's training loop: every group's weights, AdamW moments (and EMA
copy, and discriminator state) are resident; one group at a time runs forward, backward and its
optimizer step, so gradients and activations are those of one group. With activation
checkpointing (per transformer block, non-reentrant) a block keeps only its input and one
block's activations exist again during its recomputation. Not counted: activation gradients in
flight during backward (about one block's worth), the discriminator's activations, the CUDA
context and allocator fragmentation -- leave ~10% of the budget for them.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from era5latent.errors import OptionError
from era5latent.model.wla import WLA, Block, WLAConfig

__all__ = ["MemoryEstimate", "estimate_memory", "flops", "largest_batch", "saved_activations"]

PRECISIONS = ("fp32", "bf16")
OPTIMIZER_BYTES = {"adamw": 8}  # two float32 moments per parameter
PROBE_LEVELS = 13  # channels per group when the caller does not say (13 pressure levels)


@dataclass(frozen=True)
class ActivationProfile:
    """Bytes autograd saves in one group's training forward pass: ``fixed + batch * per_sample``."""

    fixed: int  # independent of the batch (PVUM hypernetwork, autocast's weight copies)
    per_sample: int
    fixed_checkpointed: int
    per_sample_checkpointed: int


@dataclass(frozen=True)
class MemoryEstimate:
    """Memory of one training step; all figures in bytes."""

    preset: str
    grid: tuple[int, int]
    batch_size: int
    precision: str
    checkpoint_activations: bool
    groups: int  # groups in the model
    resident_groups: int  # groups whose weights and optimizer state are held at once
    params_per_group: int  # parameters (count, not bytes)
    param_bytes: int  # one group's float32 weights
    grad_bytes: int  # one group's float32 gradients (one group trains at a time)
    optimizer_bytes: int  # one group's optimizer state
    ema_bytes: int  # one group's EMA copy
    discriminator_bytes: int  # one group's discriminator weights, gradients and AdamW state
    activation_bytes_fixed: int  # saved activations independent of the batch
    activation_bytes_per_sample: int  # saved activations per sample, one group

    @property
    def activation_bytes(self) -> int:
        """Saved activations of one group's step at this batch size."""
        return self.activation_bytes_fixed + self.batch_size * self.activation_bytes_per_sample

    @property
    def state_bytes_per_group(self) -> int:
        """Held for every resident group between steps: weights, optimizer, EMA, discriminator."""
        return self.param_bytes + self.optimizer_bytes + self.ema_bytes + self.discriminator_bytes

    @property
    def per_group_bytes(self) -> int:
        """One group training alone (e.g. ``--group NAME``): its state, gradients, activations."""
        return self.state_bytes_per_group + self.grad_bytes + self.activation_bytes

    @property
    def total_bytes(self) -> int:
        """Peak of a step: all resident groups' state, plus one group's gradients and activations."""
        return (self.resident_groups * self.state_bytes_per_group + self.grad_bytes
                + self.activation_bytes)

    def rows(self) -> list[tuple[str, int]]:
        """(label, bytes) lines for a dry-run report."""
        g = self.resident_groups
        return [
            (f"weights ({self.params_per_group:,} parameters per group, x{g} groups)",
             g * self.param_bytes),
            (f"optimizer state (x{g} groups)", g * self.optimizer_bytes),
            (f"EMA weights (x{g} groups)", g * self.ema_bytes),
            (f"discriminators (x{g} groups)", g * self.discriminator_bytes),
            ("gradients (one group at a time)", self.grad_bytes),
            (f"saved activations (one group, batch {self.batch_size})", self.activation_bytes),
            ("total", self.total_bytes),
        ]


def _probe_config(config: WLAConfig) -> WLAConfig:
    return dataclasses.replace(config, groups=(config.groups[0],))


def _fake_mode() -> Any:
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode()


def _levels(channels: int) -> Tensor:
    return torch.linspace(50.0, 1000.0, channels)


def _transformer_blocks(model: WLA) -> list[Block]:
    """The encoder's and decoder's blocks: what activation checkpointing recomputes (the PVUM's
    one-block mixer over channel tokens is not among them)."""
    out: list[Block] = []
    for ae in model.autoencoders.values():
        for part in ("encoder", "decoder"):
            out += [b for b in ae.get_submodule(f"{part}.blocks").children()
                    if isinstance(b, Block)]
    return out


def _saved_bytes(model: WLA, group: str, batch: int, channels: int, precision: str
                 ) -> tuple[int, int]:
    """(without, with activation checkpointing) bytes saved by one training forward + loss."""
    params = {id(p) for p in model.parameters()}
    seen: dict[int, tuple[Tensor, int, int]] = {}  # id(base) -> (base, bytes, block or -1)
    inputs: dict[int, int] = {}  # block -> id of its input's base
    current = [-1]
    blocks = _transformer_blocks(model)
    handles = []
    for i, blk in enumerate(blocks):
        def pre(_m: Any, args: Any, i: int = i) -> None:
            current[0] = i
            x = args[0]
            inputs[i] = id(x._base if x._base is not None else x)

        def post(_m: Any, _a: Any, _o: Any) -> None:
            current[0] = -1

        handles += [blk.register_forward_pre_hook(pre), blk.register_forward_hook(post)]

    def pack(t: Tensor) -> Tensor:
        base = t._base if t._base is not None else t
        if id(base) not in params and id(t) not in params and id(base) not in seen:
            seen[id(base)] = (base, base.numel() * base.element_size(), current[0])
        return t

    try:
        x = torch.randn(batch, channels, *model.config.grid)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = model(group, x, _levels(channels))
            loss = (out.recon.float() - x).square().mean() + out.losses["bsq"]  # stands in for
            del loss  # the latitude-weighted MSE + BSQ terms (a few fields' worth)
    finally:
        for h in handles:
            h.remove()
    total = sum(b for _, b, _ in seen.values())
    inside = [0] * len(blocks)
    kept = [0] * len(blocks)
    for key, (_, nbytes, where) in seen.items():
        if where >= 0:
            inside[where] += nbytes
            if inputs.get(where) == key:
                kept[where] += nbytes  # the block input: what a checkpoint keeps
    outside = total - sum(inside)
    recompute = max((i - k for i, k in zip(inside, kept)), default=0)
    return total, outside + sum(kept) + recompute


@functools.lru_cache(maxsize=64)
def saved_activations(config: WLAConfig, precision: str = "fp32",
                      channels: int = PROBE_LEVELS) -> ActivationProfile:
    """Measured saved-activation bytes of one group's step (batch 1 and 2 on fake tensors)."""
    if precision not in PRECISIONS:
        raise OptionError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    cfg = _probe_config(config)
    with _fake_mode():
        model = WLA(cfg, init_weights=False)
        one = _saved_bytes(model, cfg.groups[0], 1, channels, precision)
        two = _saved_bytes(model, cfg.groups[0], 2, channels, precision)
    return ActivationProfile(fixed=2 * one[0] - two[0], per_sample=two[0] - one[0],
                             fixed_checkpointed=2 * one[1] - two[1],
                             per_sample_checkpointed=two[1] - one[1])


@functools.lru_cache(maxsize=64)
def _params_per_group(config: WLAConfig) -> int:
    with torch.device("meta"):
        return WLA(_probe_config(config), init_weights=False).num_params()


def estimate_memory(config: WLAConfig, batch_size: int, *, checkpoint_activations: bool = False,
                    precision: str = "fp32", optimizer: str = "adamw", ema: bool = False,
                    discriminator_params: int = 0, channels: int = PROBE_LEVELS,
                    resident_groups: int | None = None) -> MemoryEstimate:
    """Memory of one training step of ``config`` at ``batch_size`` samples per group.

    ``channels``: channels of the group trained (the largest group decides the peak).
    ``resident_groups``: groups whose weights and optimizer state are held at once (default: all
    of ``config.groups``, as one run training every group; 1 for a run training one group).
    Raises :class:`OptionError` for a bad option.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
        raise OptionError(f"batch size must be an integer >= 0, got {batch_size!r}")
    if optimizer not in OPTIMIZER_BYTES:
        raise OptionError(f"optimizer must be one of {', '.join(OPTIMIZER_BYTES)}, "
                          f"got {optimizer!r}")
    if discriminator_params < 0 or channels < 1:
        raise OptionError(f"discriminator_params must be >= 0 and channels >= 1, got "
                          f"{discriminator_params} and {channels}")
    groups = len(config.groups)
    resident = groups if resident_groups is None else resident_groups
    if not 1 <= resident <= groups:
        raise OptionError(f"resident_groups must be 1..{groups}, got {resident}")
    n = _params_per_group(config)
    act = saved_activations(config, precision, channels)
    fixed, per = ((act.fixed_checkpointed, act.per_sample_checkpointed) if checkpoint_activations
                  else (act.fixed, act.per_sample))
    return MemoryEstimate(
        preset=config.preset, grid=config.grid, batch_size=batch_size, precision=precision,
        checkpoint_activations=checkpoint_activations, groups=groups, resident_groups=resident,
        params_per_group=n, param_bytes=4 * n, grad_bytes=4 * n,
        optimizer_bytes=OPTIMIZER_BYTES[optimizer] * n, ema_bytes=4 * n if ema else 0,
        discriminator_bytes=(8 + OPTIMIZER_BYTES[optimizer]) * discriminator_params,
        activation_bytes_fixed=fixed, activation_bytes_per_sample=per)


def largest_batch(config: WLAConfig, budget_bytes: int, **options: Any) -> int:
    """The largest batch whose step fits in ``budget_bytes`` (0 if not even one sample fits).

    ``options`` are :func:`estimate_memory`'s keywords. Monotone in the budget: the estimate is
    ``base + batch * per_sample`` with both terms >= 0.
    """
    est = estimate_memory(config, 0, **options)
    room = budget_bytes - est.total_bytes
    if room < est.activation_bytes_per_sample or est.activation_bytes_per_sample <= 0:
        return 0
    return int(room // est.activation_bytes_per_sample)


@functools.lru_cache(maxsize=64)
def flops(config: WLAConfig, channels: int = PROBE_LEVELS) -> dict[str, float]:
    """FLOPs (2 per multiply-add) to encode and to decode one sample of one group.

    Counted by :class:`torch.utils.flop_counter.FlopCounterMode` on fake tensors: matmuls,
    convolutions and attention (elementwise work, norms and softmax are not counted). The paper
    preset at 721 x 1440 gives 3.87 TFLOP to encode and 7.79 TFLOP to decode.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from torch.utils.flop_counter import sdpa_flop_count

    def cpu_attention(q: Any, k: Any, v: Any, *args: Any, **kwargs: Any) -> int:
        return int(sdpa_flop_count(q, k, v))

    # PyTorch's counter knows the CUDA attention kernels but not the fused CPU one fake CPU
    # tensors take; count it with the same formula (4 * N * window * D per frame and block)
    custom = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention}
    cfg = _probe_config(config)
    g = cfg.groups[0]
    h, w = cfg.token_grid
    with _fake_mode():
        model = WLA(cfg, init_weights=False).eval()
        x = torch.randn(1, channels, *cfg.grid)
        levels = _levels(channels)
        with FlopCounterMode(display=False, custom_mapping=custom) as enc:
            model.latent(g, x, levels)
        bits = torch.zeros(1, h, w, cfg.code_bits, dtype=torch.bool)
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=custom) as dec:
            model.decode(g, bits, levels)
    return {"encode": float(enc.get_total_flops()), "decode": float(dec.get_total_flops())}
