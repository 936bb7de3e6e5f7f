"""Every training option, with its default and its check (``era5latent train --help``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from era5latent.errors import OptionError

DEFAULT_LR = {"tiny": 2e-3, "small": 1e-3, "paper": 3e-4}
LEVEL_WEIGHTS = ("variance", "none")
QUANTIZER_FORMS = ("era5latent", "upstream")
PRECISIONS = ("auto", "fp32", "bf16")
NORMALISE = ("auto", "field", "channel")
CODEBOOK_ENTROPY = ("position", "batch")


#: the most optimiser steps a run may ask for (a typo of many digits fails at once)
MAX_STEPS = 10 ** 9


@dataclass
class TrainOptions:
    preset: str = "tiny"
    #: optimiser steps; None: until the validation error stops improving (``patience``),
    #: bounded by ``max_time`` (training.budget)
    steps: int | None = None
    batch_size: int = 8  # global batch: samples per optimiser step over all ranks
    lr: float | None = None
    warmup_fraction: float = 0.05  # of --steps, for a fixed run
    warmup_steps: int = 100  # without --steps
    max_time: float | None = None  # seconds; None: 10 minutes without --steps, else unbounded
    patience: int = 20  # validations without a min_delta (relative) improvement -> decay, stop
    min_delta: float = 0.005
    decay_fraction: float = 0.2  # of the run so far (or of --max-time) spent decaying the lr
    weight_decay: float = 1e-4
    val_fraction: float = 0.1
    val_every: int = 50
    val_samples: int = 64
    checkpoint_every: int = 100
    seed: int = 0
    device: str = "auto"
    time_range: str | None = None
    resume: bool = False
    full_subset_prob: float = 0.5
    #: bytes per value the codes should take (chooses patch stride and code bits; training.rate)
    target_bpv: float | None = None
    target_flag: str = "--target-bpv"  # how the user asked for it (for its error messages)
    overrides: dict[str, Any] = field(default_factory=dict)  # WLAConfig overrides (e.g. patch_stride)
    group: str | None = None  # train only this variable group
    # data loader
    workers: int = 0
    shuffle_mb: int = 256  # block-shuffle window, MiB of samples
    cache_mb: int = 2048  # a training range this small (over all loader processes) is read once
    # objective
    level_weights: str = "variance"
    normalise: str = "auto"  # channel mean/std, or anomalies from the mean field (auto: measured)
    # BSQ codebook entropy over the batch per token position (position) or over all tokens
    codebook_entropy: str = "position"
    adversarial_weight: float = 0.0  # 0: no adversarial term
    disc_start: int = 0
    ema: float = 0.0  # EMA decay of the weights; 0: off
    quantizer: str = "era5latent"
    # scale
    precision: str = "auto"
    checkpoint_activations: bool = False
    grad_accum: int = 1
    # monitoring
    log_dir: str | None = None
    log_every: int = 10

    def validate(self, world_size: int = 1) -> None:
        """One-line :class:`OptionError` for the first bad option."""
        if (self.steps is not None and self.steps < 1) or self.batch_size < 1:
            raise OptionError(f"--steps {self.steps} / --batch-size {self.batch_size}: expected "
                              "positive integers")
        if self.max_time is not None and not (math.isfinite(self.max_time) and self.max_time > 0):
            raise OptionError(f"--max-time {self.max_time}: expected a positive duration, e.g. 10m")
        if self.patience < 1 or self.warmup_steps < 0:
            raise OptionError(f"--patience {self.patience}: expected a positive integer")
        if not (0.0 <= self.min_delta < 1.0 and 0.0 < self.decay_fraction < 1.0):
            raise OptionError(f"--min-delta {self.min_delta} / decay fraction "
                              f"{self.decay_fraction}: expected numbers in [0, 1) and (0, 1)")
        if self.steps is not None and self.steps > MAX_STEPS:
            raise OptionError(f"--steps {self.steps}: expected at most {MAX_STEPS:,} (the paper "
                              "trained for 200,000)")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise OptionError(f"--lr {self.lr}: expected a positive learning rate, e.g. 3e-4")
        if self.preset not in DEFAULT_LR and self.lr is None:
            raise OptionError(f"--preset {self.preset!r}: expected one of {', '.join(DEFAULT_LR)}")
        if self.grad_accum < 1:
            raise OptionError(f"--grad-accum {self.grad_accum}: expected a positive integer")
        if self.batch_size % (world_size * self.grad_accum):
            raise OptionError(
                f"--batch-size {self.batch_size} does not split over {world_size} rank(s) x "
                f"{self.grad_accum} accumulation step(s); use a multiple of "
                f"{world_size * self.grad_accum}")
        choices = {"--level-weights": (self.level_weights, LEVEL_WEIGHTS),
                   "--quantizer": (self.quantizer, QUANTIZER_FORMS),
                   "--precision": (self.precision, PRECISIONS),
                   "--normalise": (self.normalise, NORMALISE),
                   "--codebook-entropy": (self.codebook_entropy, CODEBOOK_ENTROPY)}
        for flag, (value, allowed) in choices.items():
            if value not in allowed:
                raise OptionError(f"{flag} {value!r}: expected one of {', '.join(allowed)}")
        if not 0.0 <= self.ema < 1.0:
            raise OptionError(f"--ema {self.ema}: expected a decay in [0, 1), e.g. 0.999 (0: off)")
        if not (math.isfinite(self.adversarial_weight) and self.adversarial_weight >= 0.0):
            raise OptionError(f"--adversarial-weight {self.adversarial_weight}: expected a "
                              "finite number >= 0")
        nonneg = {"--disc-start": self.disc_start, "--workers": self.workers}
        positive = {"--val-every": self.val_every, "--checkpoint-every": self.checkpoint_every,
                    "--log-every": self.log_every, "--shuffle-mb": self.shuffle_mb,
                    "--cache-mb": self.cache_mb, "--val-samples": self.val_samples}
        for flag, v in nonneg.items():
            if v < 0:
                raise OptionError(f"{flag} {v}: expected an integer >= 0")
        for flag, v in positive.items():
            if v < 1:
                raise OptionError(f"{flag} {v}: expected a positive integer")
        if not 0.0 <= self.val_fraction < 1.0:
            raise OptionError(f"--val-fraction {self.val_fraction}: expected a number in [0, 1)")

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed run must share with the run it continues (world size may differ)."""
        return {"batch_size": self.batch_size, "seed": self.seed, "steps": self.steps,
                "preset": self.preset, "level_weights": self.level_weights,
                "adversarial_weight": self.adversarial_weight, "disc_start": self.disc_start,
                "ema": self.ema, "quantizer": self.quantizer, "group": self.group,
                "shuffle_mb": self.shuffle_mb, "normalise": self.normalise,
                "codebook_entropy": self.codebook_entropy, "target_bpv": self.target_bpv}
