"""The variable catalogue and subset parsing.

A *channel* is one 2-d field: a pressure variable at one level (``z500``) or a single-level field
(``t2m``). A *group* is what one autoencoder encodes jointly into one token grid: one group per
pressure variable (``z``, ``t``, ...) and one ``surface`` group for all single-level fields, as in
the WLA paper. Each channel carries one metadata scalar for the PVUM hypernetwork: its pressure
level in hPa, or a fixed code for single-level fields.

Subset specs are parsed once, here, into typed :class:`Channel` tuples; nothing else parses them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from era5latent.errors import SubsetError

SURFACE_GROUP = "surface"

#: The 13 WeatherBench 2 pressure levels (hPa).
WB2_LEVELS: tuple[int, ...] = (50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000)


@dataclass(frozen=True)
class Variable:
    """One ERA5 variable: canonical short name, WB2 long name, units and the names it goes by."""

    name: str
    long_name: str
    units: str
    pressure: bool
    aliases: tuple[str, ...] = ()
    #: PVUM metadata code for single-level fields (pressure variables use their level).
    meta_code: float | None = None

    @property
    def group(self) -> str:
        return self.name if self.pressure else SURFACE_GROUP


VARIABLES: tuple[Variable, ...] = (
    Variable("z", "geopotential", "m2 s-2", True, ("geopotential", "z")),
    Variable("t", "temperature", "K", True, ("temperature", "t")),
    Variable("u", "u_component_of_wind", "m s-1", True, ("u_component_of_wind", "u")),
    Variable("v", "v_component_of_wind", "m s-1", True, ("v_component_of_wind", "v")),
    Variable("q", "specific_humidity", "kg kg-1", True, ("specific_humidity", "q")),
    Variable("t2m", "2m_temperature", "K", False, ("2m_temperature", "2t", "t2m"), 500.0),
    Variable("u10", "10m_u_component_of_wind", "m s-1", False,
             ("10m_u_component_of_wind", "10u", "u10"), 200.0),
    Variable("v10", "10m_v_component_of_wind", "m s-1", False,
             ("10m_v_component_of_wind", "10v", "v10"), 100.0),
    Variable("msl", "mean_sea_level_pressure", "Pa", False,
             ("mean_sea_level_pressure", "msl", "mslp"), 800.0),
)

_BY_ALIAS: dict[str, Variable] = {}
for _v in VARIABLES:
    for _a in (_v.name, _v.long_name, *_v.aliases):
        _BY_ALIAS[_a.lower()] = _v


def lookup_variable(name: str) -> Variable | None:
    """The catalogue entry for any known name (short code, CDS/GRIB short name, WB2 long name)."""
    return _BY_ALIAS.get(name.strip().lower())


def variable(name: str) -> Variable:
    v = lookup_variable(name)
    if v is None:
        known = ", ".join(x.name for x in VARIABLES)
        raise SubsetError(f"unknown variable {name!r}: expected one of {known} (or their long names)")
    return v


@dataclass(frozen=True, order=True)
class Channel:
    """One 2-d field: ``variable`` at ``level`` hPa, or a single-level field (``level`` None)."""

    name: str  # canonical variable short name
    level: int | None = None

    @property
    def var(self) -> Variable:
        return variable(self.name)

    @property
    def code(self) -> str:
        """The short code used across the field: ``z500``, ``t2m``."""
        return f"{self.name}{self.level}" if self.level is not None else self.name

    @property
    def pressure_level(self) -> int:
        """The level in hPa of a pressure-level channel (a :class:`SubsetError` otherwise)."""
        if self.level is None:
            raise SubsetError(f"{self.code} is a single-level field; it has no pressure level")
        return self.level

    @property
    def group(self) -> str:
        return self.var.group

    @property
    def units(self) -> str:
        return self.var.units

    @property
    def meta(self) -> float:
        """The PVUM metadata scalar: pressure level in hPa, or the single-level field's code."""
        if self.level is not None:
            return float(self.level)
        code = self.var.meta_code
        if code is None:  # catalogue invariant, not user input
            raise RuntimeError(f"no metadata code for {self.name}")
        return code

    def __str__(self) -> str:
        return self.code


_SHORT = re.compile(r"^([a-z_]+?)(\d+)$")


def parse_channel(token: str) -> Channel:
    """Parse one channel: ``z500``, ``t2m``/``2t``, ``10u``, ``geopotential:500``, ``t@850``."""
    raw = token
    token = token.strip().lower()
    if not token:
        raise SubsetError("empty channel in subset spec: expected e.g. 'z500,t850,t2m'")
    for sep in (":", "@"):
        if sep in token:
            name, _, lev = token.partition(sep)
            v = variable(name)
            if not v.pressure:
                raise SubsetError(
                    f"{raw!r}: {v.name} is a single-level field and takes no level; write {v.name!r}")
            return Channel(v.name, _parse_level(lev, raw))
    direct = lookup_variable(token)
    if direct is not None:
        if direct.pressure:
            raise SubsetError(
                f"{raw!r}: {direct.name} is a pressure-level variable and needs a level, "
                f"e.g. {direct.name}500")
        return Channel(direct.name)
    m = _SHORT.match(token)
    if m is not None:
        short = lookup_variable(m.group(1))
        if short is not None and short.pressure:
            return Channel(short.name, _parse_level(m.group(2), raw))
    known = ", ".join(x.name for x in VARIABLES)
    raise SubsetError(
        f"cannot parse channel {raw!r}: expected a pressure variable with a level (z500, t850, "
        f"geopotential:500) or a single-level field (t2m, 2t, u10, 10u, msl); variables: {known}")


def _parse_level(text: str, raw: str) -> int:
    text = text.strip().removesuffix("hpa")
    if not text.isdigit() or not 1 <= int(text) <= 1100:
        raise SubsetError(f"{raw!r}: level {text!r} is not a pressure level in hPa (1..1100)")
    return int(text)


def parse_subset(spec: str | list[str] | tuple[str, ...]) -> tuple[Channel, ...]:
    """Parse a subset spec (``"z500,t850,t2m"``) into channels, in the order given, no duplicates."""
    tokens = spec.split(",") if isinstance(spec, str) else list(spec)
    tokens = [t for t in (t.strip() for t in tokens) if t]
    if not tokens:
        raise SubsetError("empty subset: expected a comma-separated list such as 'z500,t850,t2m'")
    out: list[Channel] = []
    for t in tokens:
        ch = parse_channel(t)
        if ch in out:
            raise SubsetError(f"channel {ch.code} appears twice in subset {spec!r}; list it once")
        out.append(ch)
    return tuple(out)


def group_channels(channels: tuple[Channel, ...] | list[Channel]) -> dict[str, tuple[Channel, ...]]:
    """Channels by group, groups in first-seen order, channels in the order given."""
    groups: dict[str, list[Channel]] = {}
    for ch in channels:
        groups.setdefault(ch.group, []).append(ch)
    return {g: tuple(chs) for g, chs in groups.items()}


def format_subset(channels: tuple[Channel, ...] | list[Channel]) -> str:
    return ",".join(ch.code for ch in channels)
