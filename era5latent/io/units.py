"""Units of a source's variables against the catalogue's: refuse a field in the wrong units.

The model is trained on ERA5's own units (``variables.Variable.units``, from the ECMWF parameter
database). A source that stores a field in other units (geopotential in metres or in K,
temperature in degrees Celsius, pressure in hPa, precipitation in mm) would be encoded without a
word and decoded as nonsense, so the source is refused with the conversion that fixes it.

Unit strings are spelled many ways (``m**2 s**-2``, ``m^2/s^2``, ``m2 s-2``), and files carry
free text (``(0 - 1)``, ``~``). A spelling this module does not recognise is accepted: the check
refuses only a unit it recognises as a different one, so it never stands in the way of a
correct file written with an unusual spelling.
"""

from __future__ import annotations

import re

#: spellings (after :func:`_squash`) -> the canonical unit they mean
_SPELLINGS: dict[str, str] = {}


def _add(canonical: str, *spellings: str) -> None:
    for s in (canonical, *spellings):
        _SPELLINGS[_squash(s)] = canonical


def _squash(text: str) -> str:
    """Lower case, no spaces, ``**``/``^`` exponents and ``/x`` written as ``x-1``."""
    s = text.strip().lower().replace("**", "").replace("^", "").replace(" ", "")
    s = re.sub(r"/([a-z]+)(\d*)", lambda m: f"{m.group(1)}-{m.group(2) or '1'}", s)
    return s


_add("K", "kelvin", "degk", "deg k", "degree_kelvin", "degrees_kelvin")
_add("degC", "°c", "celsius", "degree_celsius", "degrees_celsius", "deg c", "degreec", "c")
_add("degF", "°f", "fahrenheit", "degree_fahrenheit", "degrees_fahrenheit")
_add("m2 s-2", "m2s-2", "m2/s2", "m^2/s^2", "m**2 s**-2", "j kg-1", "j kg**-1")
_add("m", "metre", "metres", "meter", "meters", "gpm", "geopotential metres",
     "geopotential meters", "m of water equivalent")
_add("mm", "millimetres", "millimeters", "mm of water equivalent")
_add("dam", "decametres", "decameters", "gpdam")
_add("m s-1", "m/s", "m s**-1", "metres per second", "meters per second")
_add("kt", "knots", "knot", "kts")
_add("km h-1", "km/h", "kmh-1")
_add("Pa", "pascal", "pascals")
_add("hPa", "mb", "mbar", "millibar", "millibars", "hectopascal", "hectopascals")
_add("Pa s-1", "pa/s", "pa s**-1")
_add("kg kg-1", "kg/kg", "kg kg**-1")
_add("g kg-1", "g/kg", "g kg**-1")
_add("%", "percent")
_add("1", "(0 - 1)", "(0-1)", "0-1", "fraction", "dimensionless")
_add("s-1", "1/s", "s**-1")
_add("J m-2", "j/m2", "j m**-2")
_add("W m-2", "w/m2", "w m**-2")
_add("kg m-2", "kg/m2", "kg m**-2")
_add("K m2 kg-1 s-1", "k m**2 kg**-1 s**-1")

#: units that mean the same quantity: no conversion needed
_SAME = {frozenset({"kg m-2", "mm"})}  # a column of water: 1 kg m-2 is 1 mm

#: (found, expected) -> how to convert
_FIXES = {
    ("degC", "K"): "add 273.15",
    ("degF", "K"): "convert with (F - 32) * 5/9 + 273.15",
    ("m", "m2 s-2"): "it is geopotential height: multiply by 9.80665",
    ("dam", "m2 s-2"): "it is geopotential height in decametres: multiply by 98.0665",
    ("K", "m2 s-2"): "the units attribute names a temperature: check the variable",
    ("hPa", "Pa"): "multiply by 100",
    ("mm", "m"): "divide by 1000",
    ("g kg-1", "kg kg-1"): "divide by 1000",
    ("%", "1"): "divide by 100",
    ("1", "%"): "multiply by 100",
    ("kt", "m s-1"): "multiply by 0.514444",
    ("km h-1", "m s-1"): "divide by 3.6",
    ("W m-2", "J m-2"): "multiply by the accumulation period in seconds",
}


def canonical_unit(text: str) -> str | None:
    """The canonical spelling of ``text``, or None for a spelling this module does not know."""
    return _SPELLINGS.get(_squash(text))


def unit_problem(found: str, expected: str) -> str | None:
    """None when ``found`` may be ``expected`` (the same unit, or a spelling not recognised);
    otherwise the fix, as a phrase (``"add 273.15"``)."""
    have, want = canonical_unit(found), canonical_unit(expected)
    if not found.strip() or have is None or want is None or have == want:
        return None
    if frozenset({have, want}) in _SAME:
        return None
    return _FIXES.get((have, want), f"convert it to {expected}")
