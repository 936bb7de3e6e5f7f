"""A rate the user chooses: code bits and token grid for a target size of the latent store.

A latent store holds, per time step and group, ``tokens x code_bits / 8`` bytes (before zstd),
for the ``channels x H x W`` values of the group's fields. Over all groups of a subset the raw
bytes per value are ``groups x tokens x code_bits / 8 / (channels x H x W)`` (every group shares
the model's geometry). :func:`choose_rate` picks the patch stride (so the token grid) and the code
bits whose raw size is closest to the target. Training keeps the bits in use (the codebook
entropy term; ``evaluation.bitusage``), so zstd finds little to remove and the store on disk
lands near its raw size; ``train`` measures what it reaches (:func:`zstd_bytes`) and says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from era5latent.errors import OptionError

if TYPE_CHECKING:
    from era5latent.training.options import TrainOptions
    from era5latent.io.variables import Channel

__all__ = ["RateChoice", "choose_rate", "rate_for", "zstd_bytes"]

#: code bits per token a rate may choose (multiples of 8: codes are stored as whole bytes)
CODE_BITS = tuple(range(8, 257, 8))
#: a chosen rate is refused when its raw size misses the target by more than this (relative)
TOLERANCE = 0.10


@dataclass(frozen=True)
class RateChoice:
    target_bytes_per_value: float
    patch_stride: int
    code_bits: int
    token_grid: tuple[int, int]
    raw_bytes_per_value: float

    @property
    def relative_error(self) -> float:
        return self.raw_bytes_per_value / self.target_bytes_per_value - 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"target_bytes_per_value": self.target_bytes_per_value,
                "patch_stride": self.patch_stride, "code_bits": self.code_bits,
                "token_grid": list(self.token_grid),
                "raw_bytes_per_value": self.raw_bytes_per_value}

    def describe(self) -> str:
        h, w = self.token_grid
        return (f"target {self.target_bytes_per_value:.4g} B/value (ratio "
                f"{4 / self.target_bytes_per_value:.1f}x vs float32): patch stride "
                f"{self.patch_stride} ({h} x {w} tokens), {self.code_bits} bits per token, "
                f"{self.raw_bytes_per_value:.4g} B/value raw ({self.relative_error:+.1%})")


def choose_rate(grid: tuple[int, int], groups: dict[str, int], target: float, *,
                preset_stride: int, padding: int, flag: str = "--target-bpv") -> RateChoice:
    """Patch stride and code bits whose raw bytes per value are closest to ``target``.

    ``groups``: channels per group. Among the choices within 2% of the best, the stride nearest
    the preset's wins (the preset's geometry is what the measurements were made with), then the
    more tokens. Raises :class:`OptionError` when nothing lands within :data:`TOLERANCE`.
    """
    from era5latent.model.config import patch_geometry

    if not (math.isfinite(target) and target > 0):
        raise OptionError(f"{flag} {target}: expected a positive number of bytes per value")
    h, w = grid
    values = sum(groups.values()) * h * w
    if target >= 4.0:
        raise OptionError(
            f"{flag}: {target:.4g} bytes per value is at least float32's 4; a latent store is "
            "for compressing, so ask for less than 4 B/value (a ratio above 1)")
    cands: list[tuple[float, int, int, tuple[int, int], float]] = []
    for stride in range(1, max(grid) + 1):
        try:
            tg, _ = patch_geometry(grid, stride, padding)
        except OptionError:
            continue
        for bits in CODE_BITS:
            raw = len(groups) * tg[0] * tg[1] * bits / 8 / values
            cands.append((abs(math.log(raw / target)), stride, bits, tg, raw))
    if not cands:
        raise OptionError(f"{flag}: no patch geometry fits the grid {h} x {w}")
    best = min(c[0] for c in cands)
    near = [c for c in cands if c[0] <= best + 0.02]
    _, stride, bits, tg, raw = min(near, key=lambda c: (abs(math.log(c[1] / preset_stride)),
                                                        -c[3][0] * c[3][1]))
    choice = RateChoice(target, stride, bits, tg, raw)
    if abs(choice.relative_error) > TOLERANCE:
        lo = min(c[4] for c in cands)
        hi = max(c[4] for c in cands)
        raise OptionError(
            f"{flag} {target:.4g}: the closest code size on a {h} x {w} grid with "
            f"{sum(groups.values())} channel(s) in {len(groups)} group(s) is {raw:.4g} B/value "
            f"({choice.relative_error:+.0%}); expected a target within 10% of one, between "
            f"{lo:.3g} and {hi:.3g} B/value")
    return choice


def rate_for(grid: tuple[int, int], channels: tuple[Channel, ...], opts: TrainOptions
             ) -> RateChoice | None:
    """The rate ``opts.target_bpv`` asks for on ``grid`` (None: the preset's geometry). Counted
    over every group of the subset, so groups trained apart (``--group``) choose alike."""
    from era5latent.model.config import preset_config
    from era5latent.io.variables import group_channels

    if opts.target_bpv is None:
        return None
    groups = group_channels(channels)
    base = preset_config(opts.preset, grid, tuple(groups), **opts.overrides)
    return choose_rate(grid, {g: len(c) for g, c in groups.items()}, opts.target_bpv,
                       preset_stride=base.patch_stride, padding=base.patch_padding,
                       flag=opts.target_flag)


def zstd_bytes(packed: np.ndarray, time_chunk: int) -> int:
    """Bytes that the store's codec (zstd level 3) writes for packed codes ``(T, ...)``, one
    stream per ``time_chunk`` steps as the store chunks them."""
    from numcodecs import Zstd

    codec = Zstd(level=3)
    total = 0
    for a in range(0, packed.shape[0], time_chunk):
        total += len(codec.encode(np.ascontiguousarray(packed[a:a + time_chunk])))
    return total
