"""The Weather Latent Autoencoder (WLA, arXiv 2503.06623) as one readable torch module.

One :class:`GroupAutoencoder` per variable group (``z``, ``t``, ..., ``surface``). Each maps a
group's channels, any subset of them in any order, to a grid of binary tokens and back:

    x (B, C, H, W) --PVUM 1x1--> (B, F, H, W) --patch conv--> (B, h*w, D) --ViT blocks-->
    --Linear--> u (B, h, w, K) on the unit sphere --sign--> bits (B, h, w, K)
    bits --Linear--> (B, h*w, D) --ViT blocks--> --Linear+GELU--> (B, 2D, h, w)
    --transposed patch conv--> (B, F, H, W) --PVUM 1x1--> (B, C, H, W)

with C channels, F = ``feat_dim`` PVUM features, D = ``width``, K = ``code_bits``. The PVUM
hypernetwork turns each channel's metadata scalar (pressure level in hPa, or a fixed code for
single-level fields, see :attr:`era5latent.io.variables.Channel.meta`) into that channel's 1x1 conv
weights, so the network never sees channel *positions*: permuting (x, meta) pairs together leaves
the codes unchanged and permutes the reconstruction the same way.

The patch geometry is derived from the grid so that the transposed conv lands on exactly (H, W):
no interpolation anywhere. This module does no IO; checkpoints live in ``checkpoint.py``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from era5latent.errors import GridMismatchError, ModelMismatchError, OptionError, SubsetError
from era5latent.model.config import (  # re-exported: the config is part of the model's API
    PRESETS,
    PVUM_HEADS,
    WLAConfig,
    patch_geometry,
    preset_config,
)

__all__ = [
    "PRESETS",
    "WLA",
    "WLAConfig",
    "WLAOutput",
    "GroupAutoencoder",
    "pack_bits",
    "patch_geometry",
    "preset_config",
    "unpack_bits",
]

PVUM_SCALE = 0.01  # generated 1x1 weights and biases are scaled by this (as upstream)
SINCOS_BASE = 10000.0


# ----------------------------------------------------------------------------------------------
# Transformer blocks


def _window_schedule(depth: int, windows: tuple[tuple[int, int], ...], global_every: int,
                     ) -> list[tuple[int, int] | None]:
    """Per block: a window, or None for global attention. Every ``global_every``-th block is
    global; the others cycle through ``windows`` in order (paper encoder: W0 W1 W2 G W0 W1 W2 G)."""
    out: list[tuple[int, int] | None] = []
    k = 0
    for i in range(depth):
        if not windows or (i + 1) % global_every == 0:
            out.append(None)
        else:
            out.append(windows[k % len(windows)])
            k += 1
    return out


class Attention(nn.Module):
    """Multi-head self-attention, global or within non-overlapping windows of the token grid."""

    def __init__(self, dim: int, heads: int, token_grid: tuple[int, int] | None = None,
                 window: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        # a window covering the whole grid is global attention
        self.window = None if window is None or window == token_grid else window
        self.token_grid = token_grid

    def forward(self, x: Tensor) -> Tensor:  # x: (B, N, D)
        B, N, D = x.shape
        qkv = self.qkv(x)  # (B, N, 3D)
        if self.window is not None:
            qkv = _window_partition(qkv, self.token_grid, self.window)  # (B*nW, wh*ww, 3D)
        b, n, _ = qkv.shape
        q, k, v = qkv.view(b, n, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)  # (b, heads, n, D/heads)
        y = y.transpose(1, 2).reshape(b, n, D)  # (b, n, D)
        if self.window is not None:
            y = _window_merge(y, B, self.token_grid, self.window)  # (B, N, D)
        return cast(Tensor, self.proj(y))


def _window_partition(x: Tensor, grid: tuple[int, int] | None, window: tuple[int, int]) -> Tensor:
    """(B, h*w, E) -> (B * h/wh * w/ww, wh*ww, E), row-major tokens."""
    assert grid is not None
    B, _, E = x.shape
    (h, w), (wh, ww) = grid, window
    x = x.view(B, h // wh, wh, w // ww, ww, E).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B * (h // wh) * (w // ww), wh * ww, E)


def _window_merge(x: Tensor, B: int, grid: tuple[int, int] | None, window: tuple[int, int]
                  ) -> Tensor:
    """Inverse of :func:`_window_partition`: (B*nW, wh*ww, E) -> (B, h*w, E)."""
    assert grid is not None
    E = x.shape[-1]
    (h, w), (wh, ww) = grid, window
    x = x.view(B, h // wh, w // ww, wh, ww, E).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, h * w, E)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, hidden)
        self.proj = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:  # (..., D) -> (..., D)
        return cast(Tensor, self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-norm ViT block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float,
                 token_grid: tuple[int, int] | None = None,
                 window: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, token_grid, window)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:  # (B, N, D) -> (B, N, D)
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


def _blocks(config: WLAConfig, depth: int) -> nn.ModuleList:
    sched = _window_schedule(depth, config.windows, config.global_every)
    return nn.ModuleList(Block(config.width, config.heads, config.mlp_ratio, config.token_grid, w)
                         for w in sched)


# ----------------------------------------------------------------------------------------------
# PVUM: the channel-metadata hypernetwork


def sincos_embedding(meta: Tensor, dim: int, base: float = SINCOS_BASE) -> Tensor:
    """(C,) scalars -> (C, dim) = [sin(m * w_i), cos(m * w_i)], w_i = base^(-2i/dim). fp32."""
    i = torch.arange(dim // 2, dtype=torch.float32, device=meta.device)
    omega = base ** (-i / (dim / 2))  # (dim/2,)
    angle = meta.float()[:, None] * omega[None, :]  # (C, dim/2)
    return torch.cat([angle.sin(), angle.cos()], dim=-1)  # (C, dim)


class PVUM(nn.Module):
    """Pressure-Variable Unified Module: generates a 1x1 conv from per-channel metadata.

    meta (C,) -> sin/cos (C, M) -> residual MLP -> one transformer block over the C channel
    tokens plus a learned bias token (no positions, so it is permutation-equivariant) -> heads:
    each channel token gives that channel's F weights; the bias comes from the bias token
    (encoder, F biases) or from each channel's own token (decoder, one bias per output channel;
    there the bias token takes part in attention only). All generated values are scaled by 0.01.

    ``decoder=False``: (B, C, H, W) -> (B, F, H, W); ``decoder=True``: (B, F, H, W) -> (B, C, H, W).
    """

    def __init__(self, meta_dim: int, feat_dim: int, decoder: bool) -> None:
        super().__init__()
        self.meta_dim, self.feat_dim, self.decoder = meta_dim, feat_dim, decoder
        self.fc_1 = nn.Linear(meta_dim, meta_dim)  # residual MLP on the sin/cos embedding
        self.fc_2 = nn.Linear(meta_dim, meta_dim)
        self.bias_token = nn.Parameter(torch.zeros(1, meta_dim))
        self.mixer = Block(meta_dim, PVUM_HEADS, 4.0)
        self.ln_f = nn.LayerNorm(meta_dim)
        self.weight_head = nn.Linear(meta_dim, feat_dim)
        self.bias_head = nn.Linear(meta_dim, 1 if decoder else feat_dim)
        #: inside WLA.reuse_generated_weights: generated weights by id of their meta tensor,
        #: which each entry holds so that the id is not reused; None outside
        self._reuse: dict[int, tuple[Tensor, Tensor, Tensor]] | None = None

    def generate(self, meta: Tensor) -> tuple[Tensor, Tensor]:
        """meta (C,) -> weight (C, F), bias (C,) for the decoder or (F,) for the encoder."""
        C = meta.shape[0]
        e = sincos_embedding(meta, self.meta_dim)  # (C, M) fp32
        t = e + self.fc_2(F.gelu(self.fc_1(e)))  # (C, M)
        t = torch.cat([t, self.bias_token.to(t.dtype)], dim=0)[None]  # (1, C+1, M)
        t = self.ln_f(self.mixer(t))[0]  # (C+1, M)
        weight = self.weight_head(t[:C]) * PVUM_SCALE  # (C, F)
        if self.decoder:
            bias = self.bias_head(t[:C]).squeeze(-1) * PVUM_SCALE  # (C,)
        else:
            bias = self.bias_head(t[C]) * PVUM_SCALE  # (F,)
        return weight, bias

    def generated(self, meta: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`generate`, or inside :meth:`WLA.reuse_generated_weights` its result for this
        very ``meta`` tensor if there is one."""
        cache = self._reuse
        if cache is None:
            return self.generate(meta)
        hit = cache.get(id(meta))
        if hit is None or hit[0] is not meta:
            hit = (meta, *self.generate(meta))
            cache[id(meta)] = hit
        return hit[1], hit[2]

    def forward(self, x: Tensor, meta: Tensor) -> Tensor:
        weight, bias = self.generated(meta)  # (C, F), (F,) | (C,)
        if self.decoder:  # (B, F, H, W) -> (B, C, H, W)
            return F.conv2d(x, weight[:, :, None, None], bias)
        return F.conv2d(x, weight.t()[:, :, None, None], bias)  # (B, C, H, W) -> (B, F, H, W)


# ----------------------------------------------------------------------------------------------
# Binary spherical quantisation


class BinarySphericalQuantizer(nn.Module):
    """BSQ (Zhao et al. 2024): Linear(D -> K), L2-normalise, sign, scale 1/sqrt(K).

    All of it runs in fp32 (also under autocast). With u the unit-norm pre-sign vector and
    v = u * sqrt(K) (so mean v_i^2 = 1), the soft probability of bit i being 1 is
    ``p_i = sigmoid(2 * tau * v_i)`` -- BSQ's factorised form with inverse temperature tau * K.
    Entropies are binary entropies in bits, averaged over the K bits (so each is in [0, 1]):

    - ``entropy_sample``: mean over tokens of H(p_i)   (minimise: confident codes)
    - ``entropy_codebook``: H(mean over batch and tokens of p_i)   (maximise: every bit used)
    - ``bsq`` = ``entropy_sample_weight * sample - entropy_codebook_weight * codebook``
    """

    def __init__(self, config: WLAConfig) -> None:
        super().__init__()
        self.bits = config.code_bits
        self.tau = config.entropy_temperature
        self.w_sample = config.entropy_sample_weight
        self.w_codebook = config.entropy_codebook_weight
        self.proj = nn.Linear(config.width, config.code_bits)

    def latent(self, x: Tensor) -> Tensor:  # (B, N, D) -> u (B, N, K), fp32, unit norm
        no_autocast = (contextlib.nullcontext() if x.device.type == "meta"
                       else torch.autocast(x.device.type, enabled=False))
        with no_autocast:
            return F.normalize(self.proj(x.float()), dim=-1)

    def codes_from_bits(self, bits: Tensor) -> Tensor:  # bool (..., K) -> (..., K) +-1/sqrt(K)
        one = torch.ones((), dtype=torch.float32, device=bits.device)
        return torch.where(bits, one, -one) / math.sqrt(self.bits)

    def forward(self, x: Tensor, ste_gain: float = 1.0
                ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """x (B, N, D) -> codes (B, N, K) with straight-through grad, u (B, N, K), losses.

        The straight-through gradient reaching ``u`` is ``ste_gain`` times the codes' gradient:
        1 here by default; the WLA authors' code (sign before the 1/sqrt(K) scale) gives 1/sqrt(K).
        """
        u = self.latent(x)  # (B, N, K)
        q = self.codes_from_bits(u > 0)  # (B, N, K), exactly +-1/sqrt(K)
        codes = q + (u - u.detach()) * ste_gain  # value q, gradient ste_gain * identity into u
        losses = bsq_entropy(u, temperature=self.tau, w_sample=self.w_sample,
                             w_codebook=self.w_codebook)
        return codes, u, losses


def bsq_entropy(u: Tensor, *, form: str = "era5latent", temperature: float, w_sample: float,
                w_codebook: float, codebook: str = "batch",
                batch_mean: Callable[[Tensor], Tensor] | None = None) -> dict[str, Tensor]:
    """BSQ's entropy terms from pre-sign unit vectors u (..., K).

    ``form="era5latent"``: p = sigmoid(2 tau u sqrt(K)) with tau = ``temperature``; binary
    entropies in bits averaged over the K bits (each term in [0, 1]).
    ``form="upstream"`` (the WLA authors' code): p = sigmoid(4 u invT / sqrt(K)) with
    invT = ``temperature``; entropies in nats summed over the K bits; the penalty divided by invT.
    ``codebook="batch"`` (BSQ's): the codebook entropy of the bit probabilities averaged over
    every token of the batch, so a bit that differs between token positions but never over
    time counts as used. ``codebook="position"`` (era5latent's): averaged over the samples
    (leading dim of ``u``, shape (B, ..., K)) per token position, then the entropies averaged
    over positions: the entropy a store's stored bit has over time, which is what its bytes
    pay for. ``batch_mean`` maps the batch-mean probabilities (K,) or (positions, K) before
    the codebook entropy (training averages them across data-parallel ranks there).
    """
    K = u.shape[-1]
    if form not in ("era5latent", "upstream"):
        raise OptionError(f"BSQ entropy form {form!r}: expected era5latent or upstream")
    if codebook not in ("batch", "position"):
        raise OptionError(f"BSQ codebook entropy {codebook!r}: expected batch or position")
    ours = form == "era5latent"
    u = u.float()
    p = torch.sigmoid(2.0 * temperature * u * math.sqrt(K) if ours
                      else 4.0 * temperature * u / math.sqrt(K))
    log = torch.log2 if ours else torch.log
    scale = 1.0 if ours else 1.0 / temperature
    pbar = p.flatten(0, -2).mean(0) if codebook == "batch" else p.flatten(1, -2).mean(0)
    if batch_mean is not None:
        pbar = batch_mean(pbar)
    h_sample, h_codebook = _binary_entropy(p, log), _binary_entropy(pbar, log)
    sample = (h_sample.mean(-1) if ours else h_sample.sum(-1)).mean()
    codebook_h = (h_codebook.mean(-1) if ours else h_codebook.sum(-1)).mean()
    return {"entropy_sample": sample, "entropy_codebook": codebook_h,
            "bsq": (w_sample * sample - w_codebook * codebook_h) * scale}


def _binary_entropy(p: Tensor, log: Callable[[Tensor], Tensor], eps: float = 1e-6) -> Tensor:
    """Elementwise binary entropy H(p) in the base of ``log``."""
    p = p.clamp(eps, 1 - eps)
    return -(p * log(p) + (1 - p) * log(1 - p))


# ----------------------------------------------------------------------------------------------
# Encoder, decoder, one autoencoder per group


class Encoder(nn.Module):
    """(B, C, H, W), meta (C,) -> token features (B, h*w, D)."""

    def __init__(self, config: WLAConfig) -> None:
        super().__init__()
        self.pvum = PVUM(config.meta_dim, config.feat_dim, decoder=False)
        self.patch = nn.Conv2d(config.feat_dim, config.width, config.kernel,
                               config.patch_stride, config.patch_padding)
        self.pos = nn.Parameter(torch.zeros(1, config.tokens, config.width))
        self.blocks = _blocks(config, config.enc_depth)
        self.ln_f = nn.LayerNorm(config.width)
        self.checkpoint_activations = False  # training option: recompute blocks in backward

    def forward(self, x: Tensor, meta: Tensor) -> Tensor:
        x = self.pvum(x, meta)  # (B, F, H, W)
        x = self.patch(x)  # (B, D, h, w)
        x = x.flatten(2).transpose(1, 2) + self.pos  # (B, h*w, D)
        x = _run_blocks(self.blocks, x, self.checkpoint_activations)
        return cast(Tensor, self.ln_f(x))  # (B, h*w, D)


class Decoder(nn.Module):
    """codes (B, h*w, K), meta (C,) -> (B, C, H, W)."""

    def __init__(self, config: WLAConfig) -> None:
        super().__init__()
        self.token_grid = config.token_grid
        self.embed = nn.Linear(config.code_bits, config.width)
        self.pos = nn.Parameter(torch.zeros(1, config.tokens, config.width))
        self.blocks = _blocks(config, config.dec_depth)
        self.ln_f = nn.LayerNorm(config.width)
        self.checkpoint_activations = False  # training option: recompute blocks in backward
        self.expand = nn.Linear(config.width, 2 * config.width)
        self.unpatch = nn.ConvTranspose2d(2 * config.width, config.feat_dim, config.kernel,
                                          config.patch_stride, config.patch_padding)
        self.pvum = PVUM(config.meta_dim, config.feat_dim, decoder=True)

    def forward(self, codes: Tensor, meta: Tensor) -> Tensor:
        h, w = self.token_grid
        x = self.embed(codes) + self.pos  # (B, h*w, D)
        x = _run_blocks(self.blocks, x, self.checkpoint_activations)
        x = F.gelu(self.expand(self.ln_f(x)))  # (B, h*w, 2D)
        x = x.transpose(1, 2).unflatten(2, (h, w))  # (B, 2D, h, w)
        x = self.unpatch(x)  # (B, F, H, W), exactly the data grid
        return cast(Tensor, self.pvum(x, meta))  # (B, C, H, W)


class GroupAutoencoder(nn.Module):
    """One group's encoder, binary quantiser and decoder (what one DDP replica wraps)."""

    def __init__(self, config: WLAConfig) -> None:
        super().__init__()
        self.token_grid = config.token_grid
        self.encoder = Encoder(config)
        self.quantizer = BinarySphericalQuantizer(config)
        self.decoder = Decoder(config)

    def forward(self, x: Tensor, meta: Tensor, ste_gain: float = 1.0) -> WLAOutput:
        """Training path: x (B, C, H, W), meta (C,) -> reconstruction, codes, u and BSQ losses."""
        codes, u, losses = self.quantizer(self.encoder(x, meta), ste_gain)  # (B, h*w, K)
        recon = self.decoder(codes, meta)  # (B, C, H, W)
        return WLAOutput(recon, codes.unflatten(1, self.token_grid), losses,
                         u.unflatten(1, self.token_grid))

    def set_checkpoint_activations(self, on: bool) -> None:
        """Recompute transformer blocks in the backward pass instead of keeping their activations."""
        self.encoder.checkpoint_activations = self.decoder.checkpoint_activations = on


def _run_blocks(blocks: nn.ModuleList, x: Tensor, checkpoint: bool) -> Tensor:
    """x through ``blocks``; with ``checkpoint`` (and grad enabled) only block inputs are kept."""
    if checkpoint and torch.is_grad_enabled():
        from torch.utils.checkpoint import checkpoint as recompute

        for block in blocks:
            x = cast(Tensor, recompute(block, x, use_reentrant=False))
        return x
    for block in blocks:
        x = block(x)
    return x


@dataclass
class WLAOutput:
    recon: Tensor  # (B, C, H, W)
    codes: Tensor  # (B, h, w, K) in {-1, +1}/sqrt(K), straight-through gradient
    losses: dict[str, Tensor]  # "entropy_sample", "entropy_codebook", "bsq" (scalars)
    u: Tensor | None = None  # (B, h, w, K) pre-sign unit vectors, fp32 (training losses use it)

    @property
    def bits(self) -> Tensor:  # bool (B, h, w, K), what encode() returns
        return self.codes.detach() > 0


class WLA(nn.Module):
    """The Weather Latent Autoencoder: one :class:`GroupAutoencoder` per group."""

    def __init__(self, config: WLAConfig, *, init_weights: bool = True) -> None:
        """``init_weights=False`` skips era5latent's random initialisers: for a model built on
        the meta device whose weights come from a file (:func:`checkpoint.load_checkpoint`)."""
        super().__init__()
        config._validate()  # a config is validated on creation; this guards hand-made copies
        self.config = config
        self.autoencoders = nn.ModuleDict({g: GroupAutoencoder(config) for g in config.groups})
        if init_weights:
            self.init_weights()

    def init_weights(self) -> None:
        """Random initialisation (truncated normal, GPT-2 scaled residual outputs, PVUM heads)."""
        config = self.config
        self.apply(_init_weights)
        for name, p in self.named_parameters():  # GPT-2 style scaled init of residual outputs
            if name.endswith(("attn.proj.weight", "mlp.proj.weight")):
                depth = config.dec_depth if ".decoder." in name else config.enc_depth
                if ".pvum." in name:
                    depth = 1
                _trunc_normal(p, 0.02 / math.sqrt(2 * depth))
        for m in self.modules():  # generated 1x1 weights start near std 1/sqrt(F)
            if isinstance(m, PVUM):
                _trunc_normal(m.weight_head.weight,
                              1.0 / (PVUM_SCALE * math.sqrt(m.meta_dim * m.feat_dim)))

    def num_params(self, group: str | None = None) -> int:
        module = self if group is None else self._ae(group)
        return sum(p.numel() for p in module.parameters())

    # -- inference: bits in, bits out ------------------------------------------------------

    @contextlib.contextmanager
    def reuse_generated_weights(self) -> Iterator[None]:
        """Inside, each PVUM generates its 1x1 weights once per ``meta`` tensor and reuses them
        for every later batch given the same tensor: for inference over many batches of the same
        channels (the tiny preset at batch 2 spent ~8% of its encode generating them again).
        Gradients must be off: the reused weights would not follow a parameter update."""
        if torch.is_grad_enabled():
            raise RuntimeError("reuse_generated_weights is for inference: run it under "
                               "torch.no_grad() or torch.inference_mode()")
        pvums = [m for m in self.modules() if isinstance(m, PVUM)]
        for m in pvums:
            m._reuse = {}
        try:
            yield
        finally:
            for m in pvums:
                m._reuse = None

    @torch.no_grad()
    def latent(self, group: str, x: Tensor, meta: Tensor | Sequence[float]) -> Tensor:
        """Pre-sign unit vectors u (B, h, w, K), fp32; ``encode`` is ``latent(...) > 0``."""
        ae = self._ae(group)
        meta = self._check_input(x, meta)
        u = ae.quantizer.latent(ae.encoder(x, meta))  # (B, h*w, K)
        return cast(Tensor, u.unflatten(1, self.config.token_grid))  # (B, h, w, K)

    def encode(self, group: str, x: Tensor, meta: Tensor | Sequence[float]) -> Tensor:
        """x (B, C, H, W) z-scored, meta (C,) -> bool bits (B, h, w, K). No gradient."""
        return self.latent(group, x, meta) > 0

    def decode(self, group: str, bits: Tensor, meta: Tensor | Sequence[float]) -> Tensor:
        """bits bool (B, h, w, K), meta (C,) -> (B, C, H, W) z-scored fields.

        Gradients flow to the decoder's parameters (run under ``torch.inference_mode`` to avoid).
        """
        ae = self._ae(group)
        h, w = self.config.token_grid
        K = self.config.code_bits
        if bits.ndim != 4 or tuple(bits.shape[1:]) != (h, w, K):
            raise ModelMismatchError(
                f"codes of shape {tuple(bits.shape)} do not fit this model: expected "
                f"(batch, {h}, {w}, {K}) for grid {self.config.grid}")
        meta = self._meta(meta, bits.device)
        codes = ae.quantizer.codes_from_bits(bits.bool()).flatten(1, 2)  # (B, h*w, K)
        return cast(Tensor, ae.decoder(codes, meta))

    # -- training ------------------------------------------------------------------------------

    def forward(self, group: str, x: Tensor, meta: Tensor | Sequence[float]) -> WLAOutput:
        """Training path: reconstruction, straight-through codes and the BSQ entropy losses."""
        return cast(WLAOutput, self._ae(group)(x, self._check_input(x, meta)))

    # -- helpers -------------------------------------------------------------------------------

    def _ae(self, group: str) -> GroupAutoencoder:
        if group not in self.autoencoders:
            raise SubsetError(f"this model has no autoencoder for group {group!r}: it was built "
                              f"for groups {', '.join(self.config.groups)}")
        return self.autoencoders[group]  # type: ignore[return-value]

    @staticmethod
    def _meta(meta: Tensor | Sequence[float], device: torch.device) -> Tensor:
        m = torch.as_tensor(meta, dtype=torch.float32, device=device)
        if m.ndim != 1 or m.numel() < 1:
            raise ValueError(f"meta must be a non-empty 1-d tensor (C,), got shape {tuple(m.shape)}")
        return m

    def _check_input(self, x: Tensor, meta: Tensor | Sequence[float]) -> Tensor:
        if x.ndim != 4:
            raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
        if tuple(x.shape[2:]) != self.config.grid:
            raise GridMismatchError(
                f"data grid {tuple(x.shape[2:])} does not match the model grid "
                f"{self.config.grid}; regrid the data or train a model for this grid")
        m = self._meta(meta, x.device)
        if m.shape[0] != x.shape[1]:
            raise ValueError(f"meta has {m.shape[0]} entries but x has {x.shape[1]} channels")
        return m


def _trunc_normal(t: Tensor, std: float) -> None:
    nn.init.trunc_normal_(t, std=std, a=-2 * std, b=2 * std)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
        _trunc_normal(m.weight, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, (Encoder, Decoder)):
        _trunc_normal(m.pos, 0.02)
    elif isinstance(m, PVUM):
        _trunc_normal(m.bias_token, 0.02)


# ----------------------------------------------------------------------------------------------
# Bit packing (the on-disk form of codes)


_BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)


def pack_bits(bits: Tensor) -> Tensor:
    """bool (..., n) -> uint8 (..., ceil(n/8)), MSB first, zero-padded: ``numpy.packbits(axis=-1)``."""
    if bits.dtype != torch.bool:
        raise TypeError(f"pack_bits expects a bool tensor, got {bits.dtype}")
    n = bits.shape[-1]
    if n % 8:
        bits = F.pad(bits.to(torch.uint8), (0, 8 - n % 8)).bool()
    b = bits.unflatten(-1, (-1, 8)).to(torch.uint8)  # (..., n/8, 8)
    w = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=bits.device)
    return cast(Tensor, (b * w).sum(-1, dtype=torch.uint8))  # distinct powers of two: no overflow


def unpack_bits(packed: Tensor, nbits: int) -> Tensor:
    """uint8 (..., m) -> bool (..., nbits), inverse of :func:`pack_bits` (``numpy.unpackbits``)."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"unpack_bits expects a uint8 tensor, got {packed.dtype}")
    if not 0 <= nbits <= 8 * packed.shape[-1]:
        raise ValueError(f"cannot unpack {nbits} bits from {packed.shape[-1]} bytes")
    w = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=packed.device)
    bits = (packed[..., None] & w) != 0  # (..., m, 8)
    return bits.flatten(-2)[..., :nbits]
