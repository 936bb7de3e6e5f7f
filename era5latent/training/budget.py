"""When a training run stops, and its learning rate on the way there.

Two ways to give a budget:

* ``--steps N`` (a fixed run): linear warm-up over ``warmup_fraction`` of the steps, then cosine
  decay to 5% of the peak at step N (:func:`lr_at`). ``--max-time`` may still cut it short.
* no ``--steps`` (the default): warm-up, stable, decay (a "WSD" schedule, since the length is not
  known in advance). After ``warmup_steps`` of linear warm-up the learning rate stays at its peak
  until either the validation error has not improved by ``min_delta`` (relative) for ``patience``
  validations in a row, or ``1 - decay_fraction`` of ``--max-time`` has passed. Then it decays
  (cosine, to 5% of the peak) over ``decay_fraction`` of the steps run so far (patience) or over
  the steps the remaining time allows at the measured rate (time), and the run stops at the end
  of the decay. The reason is recorded: ``patience`` or ``max-time``.

Whatever the mode, a run that reaches ``--max-time`` stops at once ("max-time"), with a
checkpoint. :class:`Budget` holds the state that a resumed run continues from; every rank
follows rank 0's decisions (the trainer broadcasts them).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from era5latent.errors import OptionError

__all__ = ["Budget", "lr_at", "parse_duration"]

#: a run without --steps and without --max-time stops after this long (docs/training.md)
DEFAULT_MAX_TIME_S = 600.0
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """``"90s"``, ``"10m"``, ``"2h"``, ``"1d"``, ``"1h30m"`` or plain seconds -> seconds."""
    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        seconds = float(t)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", t)
        if not parts or "".join(n + u for n, u in parts) != t:
            raise OptionError(f"--max-time {text!r}: expected a duration such as 90s, 10m, 2h, "
                              "1h30m or a number of seconds")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not (math.isfinite(seconds) and seconds > 0):
        raise OptionError(f"--max-time {text!r}: expected a positive duration, e.g. 10m")
    return seconds


def lr_at(step: int, total: int, base: float, warmup_fraction: float) -> float:
    """Linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to 5% of base."""
    warm = max(1, int(total * warmup_fraction))
    if step < warm:
        return base * (step + 1) / warm
    p = (step - warm) / max(1, total - warm)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


@dataclass
class Budget:
    """The stopping rule's state (saved with the training state, so ``--resume`` continues)."""

    steps: int | None  # fixed run length, or None: warm-up, stable, decay
    max_time: float | None  # seconds of this run (a resumed run gets its own budget)
    warmup_steps: int = 100
    warmup_fraction: float = 0.05
    patience: int = 20
    min_delta: float = 0.005
    decay_fraction: float = 0.2
    # state
    best_val: float = math.inf
    bad_validations: int = 0
    decay_start: int | None = None
    decay_steps: int | None = None
    decay_reason: str | None = None
    stop_reason: str | None = None
    stopped_at: int | None = None

    def lr(self, step: int, base: float) -> float:
        """Learning rate of step ``step`` (0-based)."""
        if self.steps is not None:
            return lr_at(step, self.steps, base, self.warmup_fraction)
        if step < self.warmup_steps:
            return base * (step + 1) / self.warmup_steps
        if self.decay_start is None or self.decay_steps is None:
            return base
        p = min(1.0, (step - self.decay_start) / max(1, self.decay_steps))
        return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p)))

    def validated(self, val: float) -> None:
        """Record a validation error (lower is better)."""
        if not math.isfinite(val):
            self.bad_validations += 1
        elif val < self.best_val * (1.0 - self.min_delta):
            self.best_val, self.bad_validations = val, 0
        else:
            self.best_val = min(self.best_val, val)
            self.bad_validations += 1

    def decide(self, done: int, elapsed: float, seconds_per_step: float) -> None:
        """After ``done`` steps and ``elapsed`` seconds of this run: start the decay or stop."""
        if self.stop_reason is not None:
            return
        if self.max_time is not None and elapsed >= self.max_time:
            self._stop(done, "max-time")
            return
        if self.steps is not None:
            if done >= self.steps:
                self._stop(done, "steps")
            return
        if self.decay_start is not None and self.decay_steps is not None:
            if done >= self.decay_start + self.decay_steps:
                self._stop(done, self.decay_reason or "patience")
            return
        if done < self.warmup_steps:
            return
        if self.bad_validations >= self.patience:
            self._decay(done, max(1, round(self.decay_fraction * done)), "patience")
        elif self.max_time is not None and elapsed >= (1 - self.decay_fraction) * self.max_time:
            left = (self.max_time - elapsed) / max(seconds_per_step, 1e-9)
            self._decay(done, max(1, int(0.95 * left)), "max-time")

    def step_done(self, done: int) -> None:
        """The stops every rank knows without being told: --steps reached, the decay's end."""
        if self.stop_reason is not None:
            return
        if self.steps is not None and done >= self.steps:
            self._stop(done, "steps")
        elif self.steps is None and self.decay_start is not None and self.decay_steps is not None \
                and done >= self.decay_start + self.decay_steps:
            self._stop(done, self.decay_reason or "patience")

    def expected_total(self, done: int, elapsed: float, seconds_per_step: float) -> int:
        """The step this run is expected to stop at (for progress bars)."""
        if self.stop_reason is not None:
            return done
        if self.steps is not None:
            return self.steps
        if self.decay_start is not None and self.decay_steps is not None:
            return self.decay_start + self.decay_steps
        if self.max_time is not None and seconds_per_step > 0:
            return max(done, done + int((self.max_time - elapsed) / seconds_per_step))
        return done

    @property
    def stopped(self) -> bool:
        return self.stop_reason is not None

    def _decay(self, done: int, steps: int, reason: str) -> None:
        self.decay_start, self.decay_steps, self.decay_reason = done, steps, reason

    def _stop(self, done: int, reason: str) -> None:
        self.stop_reason, self.stopped_at = reason, done

    # -- saving and resuming -------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        d = asdict(self)
        d["best_val"] = None if math.isinf(self.best_val) else self.best_val
        return d

    def load(self, saved: dict[str, Any]) -> None:
        """Take the state in ``saved`` (:meth:`state`) as it is (not ``steps``/``max_time``)."""
        names = {f.name for f in fields(self)} - {"steps", "max_time"}
        for k, v in saved.items():
            if k in names:
                setattr(self, k, v)
        if self.best_val is None:
            self.best_val = math.inf

    def resume(self, saved: dict[str, Any] | None) -> None:
        """Continue from a saved state. Patience and a decay that patience started carry over; a
        run stopped by ``--max-time`` goes on at the peak learning rate (this run has a time
        budget of its own, and decays again before it ends); ``max_time`` and ``steps`` are this
        run's."""
        if not saved:
            return
        self.load(saved)
        if self.stop_reason in ("max-time", "steps"):
            self.stop_reason, self.stopped_at = None, None
        if self.steps is not None:  # a fixed run: its own schedule, whatever stopped the last
            self.stop_reason = self.stopped_at = None
        if self.decay_reason == "max-time":  # this run has a time budget of its own: back to
            self.decay_start = self.decay_steps = self.decay_reason = None  # the stable phase
