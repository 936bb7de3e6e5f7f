"""``--max-error SPEC``: per-channel absolute error bounds, and the margin kept for drift.

Grammar: comma-separated ``KEY=VALUE`` items. ``KEY`` is a channel code of the encoded subset
(``z500``) or ``*`` (every channel not named); ``VALUE`` is a positive number in the channel's
own units (``t850=0.1``, or with the unit spelled out: ``t850=0.1K``), or a percentage of the
channel's training standard deviation (the store's ``normalisation`` std): ``*=1%``. ``%`` always
means "of the std", also for a channel whose unit is ``%`` (relative humidity: ``r850=5`` is 5
percentage points). Channels no item covers get no residual (their values are the WLA's alone).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from era5latent.errors import OptionError
from era5latent.pipeline.residual.codecs import CODECS

#: the decode drift kept as a margin, as a fraction of the channel's training std: the residual is
#: compressed at ``bound - margin``, so a decode whose WLA reconstruction differs from the encoder's
#: fp32 one by up to the margin still lands within the bound. Measured (docs/residuals.md): fp32
#: CPU decodes on 2 and 4 threads differed from 1 thread by at most 1.3e-5 std (real UK t2m
#: model; 2.3e-6 on the ensemble one), another batch size by 0; the margin is 7.6x the worst.
#: bf16 drifted 1e-2..2e-2 std, which is why stores with residuals decode in fp32 only.
DRIFT_MARGIN_REL = 1e-4
#: a bound must be at least this many margins (so the codec works at >= 90% of it)
MIN_BOUND_MARGINS = 10

_ITEM = re.compile(r"^\s*([-+]?(?:nan|inf(?:inity)?|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?))\s*(.*?)\s*$",
                   re.IGNORECASE)


def _unit_key(u: str) -> str:
    """Spelling-insensitive unit: ``m**2 s**-2`` == ``m2 s-2`` == ``m^2s^-2``."""
    return re.sub(r"[\s*^]", "", u)


@dataclass(frozen=True)
class ChannelBound:
    max_error: float  # the guaranteed bound, channel units
    margin: float  # kept for decode drift; the codec works at max_error - margin
    units: str
    spec: str  # the item as given, e.g. "*=1%"

    @property
    def codec_bound(self) -> float:
        return self.max_error - self.margin


@dataclass(frozen=True)
class ResidualSpec:
    """What a store's residual layer promises, per channel (``era5latent.pipeline.residual``)."""

    codec: str
    text: str
    channels: dict[str, ChannelBound]
    drift_margin_rel: float = DRIFT_MARGIN_REL

    def to_dict(self) -> dict[str, Any]:
        return {"codec": self.codec, "spec": self.text, "drift_margin_rel": self.drift_margin_rel,
                "reference": "fp32 decode of the codes on the encoding machine",
                "channels": {c: {"max_error": b.max_error, "margin": b.margin, "units": b.units,
                                 "spec": b.spec} for c, b in self.channels.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ResidualSpec:
        return cls(str(d["codec"]), str(d["spec"]),
                   {c: ChannelBound(float(b["max_error"]), float(b["margin"]), str(b["units"]),
                                    str(b.get("spec", ""))) for c, b in d["channels"].items()},
                   float(d.get("drift_margin_rel", DRIFT_MARGIN_REL)))


def parse_max_error(text: str, channels: tuple[str, ...], units: Mapping[str, str],
                    std: Mapping[str, float], codec: str = "sz3") -> ResidualSpec:
    """``--max-error`` text -> per-channel bounds; an :class:`OptionError` naming the item."""
    if codec not in CODECS:
        raise OptionError(f"--residual-codec {codec!r}: expected one of {', '.join(CODECS)}")
    items: dict[str, tuple[float, str, str]] = {}  # key -> (value, suffix, item)
    for raw in text.split(","):
        item = raw.strip()
        key, eq, val = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise OptionError(f"--max-error {text!r}: item {item!r} is not CHANNEL=VALUE; expected "
                              "e.g. z500=5,t850=0.1 or *=1%")
        if key != "*" and key not in channels:
            raise OptionError(f"--max-error {item!r}: {key} is not among the encoded channels "
                              f"({','.join(channels)}); name one of them or use *=")
        if key in items:
            raise OptionError(f"--max-error {text!r}: {key} is given twice; give each once")
        m = _ITEM.match(val)
        if m is None:
            raise OptionError(f"--max-error {item!r}: {val.strip()!r} is not a number; expected "
                              f"e.g. {key}=0.5 (channel units) or {key}=1% (of its training std)")
        v = float(m.group(1))
        if not (math.isfinite(v) and v > 0):
            raise OptionError(f"--max-error {item!r}: the bound is {v}; expected a finite positive "
                              "number")
        items[key] = (v, m.group(2), item)
    out: dict[str, ChannelBound] = {}
    for ch in channels:
        if ch not in items and "*" not in items:
            continue
        v, suffix, item = items[ch] if ch in items else items["*"]
        unit = units.get(ch, "")
        s = std[ch]
        if suffix == "%":
            bound = v / 100.0 * s
        elif suffix == "" or _unit_key(suffix) == _unit_key(unit):
            bound = v
        else:
            raise OptionError(f"--max-error {item!r}: {ch} is in {unit or 'no unit'}, not "
                              f"{suffix!r}; give the number in {unit or 'its units'} ({ch}={v:g}) "
                              f"or as a share of its training std ({ch}=1%)")
        margin = DRIFT_MARGIN_REL * s
        if bound < MIN_BOUND_MARGINS * margin:
            raise OptionError(
                f"--max-error {item!r}: {ch}'s bound {bound:.3g} {unit} is below what decode "
                f"can guarantee ({MIN_BOUND_MARGINS * margin:.3g} {unit} = "
                f"{MIN_BOUND_MARGINS * DRIFT_MARGIN_REL * 100:g}% of its std, for decode drift); "
                "give a larger bound")
        out[ch] = ChannelBound(bound, margin, unit, item)
    if not out:
        raise OptionError(f"--max-error {text!r} bounds none of the encoded channels "
                          f"({','.join(channels)})")
    return ResidualSpec(codec, text, out)
