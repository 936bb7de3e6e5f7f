"""The training objective, term by term (docs/model.md, "Training objective").

- reconstruction: latitude-weighted MSE of z-scored fields, each channel weighted by its level
  weight (for u, v and t: the level's variance over the mean variance of the channels in the
  batch, as the WLA authors' ``vqperceptual.py`` does; 1 elsewhere);
- BSQ entropy terms, in one of two forms (``--quantizer``):
  ``era5latent``: the model's own (binary entropies in bits, averaged over bits, weights from the
  model config); ``upstream``: the WLA authors' (natural logs summed over the K bits,
  ``p = sigmoid(4 u invT / sqrt(K))``, the penalty divided by ``invT``);
- adversarial: hinge loss of a patch discriminator, weighted by the VQGAN adaptive weight (ratio
  of the reconstruction and adversarial gradient norms at the decoder's last layer);
- per-sample entropy over tokens and codebook entropy over the *global* batch: under
  data-parallel training the bit probabilities are averaged across ranks (differentiably), so
  two ranks give the same loss and gradients as one process with the whole batch.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from era5latent.model.wla import bsq_entropy as model_bsq_entropy
from era5latent.io.variables import Channel

#: variables whose levels are balanced by their variance (upstream: u, v and t only)
LEVEL_WEIGHTED = ("u", "v", "t")


def level_weights(channels: tuple[Channel, ...], std: dict[str, float], mode: str) -> Tensor:
    """Per-channel loss weights (C,), mean 1: ``variance`` (upstream) or ``none``."""
    w = torch.ones(len(channels))
    if mode == "variance" and len(channels) > 1 and all(
            c.level is not None and c.name in LEVEL_WEIGHTED for c in channels):
        var = torch.tensor([std[c.code] ** 2 for c in channels], dtype=torch.float64)
        w = (var / var.mean()).float()
    return w


def reconstruction_loss(pred: Tensor, target: Tensor, lat_w: Tensor, ch_w: Tensor,
                        mask: Tensor | None = None) -> Tensor:
    """Latitude- and channel-weighted MSE; lat_w (1, 1, H, 1), ch_w (C,).

    ``mask`` (as ``target``, 1 where valued, 0 where the source is missing: a masked field)
    leaves masked points out: each channel's mean is over its valued points."""
    err = (pred.float() - target) ** 2 * lat_w
    if mask is not None:
        m = mask.to(err.dtype)
        per_ch = (err * m).sum(dim=(0, 2, 3)) / m.sum(dim=(0, 2, 3)).clamp(min=1.0)
        return (per_ch * ch_w).mean()
    return (err.mean(dim=(0, 2, 3)) * ch_w).mean()


def fill_masked(x: Tensor) -> tuple[Tensor, Tensor | None]:
    """Normalised fields with NaN (masked points) -> (fields with 0 there, the channel's
    training mean; the valued-points mask), or ``(x, None)`` when nothing is masked."""
    valued = ~torch.isnan(x)
    if bool(valued.all()):
        return x, None
    return torch.where(valued, x, torch.zeros((), dtype=x.dtype, device=x.device)), valued


def _mean_across_ranks(t: Tensor) -> Tensor:
    """Differentiable mean over data-parallel ranks (identity in one process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        import warnings

        from torch.distributed.nn.functional import all_reduce

        with warnings.catch_warnings():  # its successor in _functional_collectives is private
            warnings.simplefilter("ignore", FutureWarning)
            return cast(Tensor, all_reduce(t)) / dist.get_world_size()
    return t


def bsq_entropy(u: Tensor, form: str, *, temperature: float, w_sample: float,
                w_codebook: float, codebook: str = "batch") -> dict[str, Tensor]:
    """:func:`era5latent.model.wla.bsq_entropy` over the global batch (codebook entropy of the
    bit probabilities averaged across data-parallel ranks)."""
    return model_bsq_entropy(u, form=form, temperature=temperature, w_sample=w_sample,
                             w_codebook=w_codebook, codebook=codebook,
                             batch_mean=_mean_across_ranks)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: Tensor) -> Tensor:
    return -logits_fake.mean()


def adaptive_weight(rec: Tensor, adv: Tensor, last_layer: Tensor, scale: float) -> Tensor:
    """VQGAN's balance: |grad rec| / (|grad adv| + 1e-4) at ``last_layer``, clamped, times scale.

    Under data-parallel training the two gradients are averaged across ranks first, so the
    weight is that of the whole batch.
    """
    g_rec = torch.autograd.grad(rec, last_layer, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adv, last_layer, retain_graph=True)[0]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        both = torch.stack([g_rec, g_adv])
        dist.all_reduce(both)
        both /= dist.get_world_size()  # the mean, as one process would see it (1e-4 is not scale-free)
        g_rec, g_adv = both[0], both[1]
    w = g_rec.norm() / (g_adv.norm() + 1e-4)
    return torch.clamp(w, 0.0, 1e4).detach() * scale
