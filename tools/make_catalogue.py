"""Generate era5latent/io/ecmwf_params.py: ECMWF parameter facts for every catalogue variable.

The variable catalogue (era5latent/io/variables.py) types by hand only the *conventions*: which
ECMWF paramId each channel is, its WeatherBench 2 / CDS name, its PVUM code and its flags. The
*facts* (GRIB shortName, ECMWF long name, units, cfgrib's variable name, CF standard name) come
from the ECMWF parameter database that ships inside ecCodes (the PyPI ``eccodes``/``eccodeslib``
wheels keep the definition files compiled in, so they are read through ecCodes calls, not from
files): a GRIB 2 message is made from ecCodes' own sample, its ``paramId`` set, and the keys
read back.

Run from the repository root after changing the catalogue or upgrading ecCodes::

    python tools/make_catalogue.py > era5latent/io/ecmwf_params.py
    python tools/make_catalogue.py --markdown   # the table in docs/variables.md

tests/test_variables.py regenerates the table and fails when the committed one differs.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KEYS = ("shortName", "name", "units", "cfVarName", "cfName")


def cf_units(grib_units: str) -> str:
    """ecCodes' unit text in UDUNITS/CF form: ``m**2 s**-2`` -> ``m2 s-2``, ``(0 - 1)`` -> ``1``."""
    u = grib_units.strip()
    if u in ("(0 - 1)", "0-1", "Proportion", "Numeric", "dimensionless"):
        return "1"
    return re.sub(r"\*\*", "", u)


def param_facts(param_ids: list[int]) -> dict[int, tuple[str, str, str, str, str, str]]:
    """paramId -> (shortName, name, GRIB units, CF units, cfVarName, CF standard name or '')."""
    import eccodes

    out: dict[int, tuple[str, str, str, str, str, str]] = {}
    h = eccodes.codes_grib_new_from_samples("GRIB2")
    try:
        for pid in sorted(set(param_ids)):
            eccodes.codes_set(h, "paramId", pid)
            short, name, units, cfvar, cfname = (str(eccodes.codes_get(h, k)) for k in KEYS)
            if short in ("unknown", "") or name in ("unknown", ""):
                raise SystemExit(f"ecCodes does not know paramId {pid}")
            out[pid] = (short, name, units, cf_units(units), cfvar,
                        "" if cfname == "unknown" else cfname)
    finally:
        eccodes.codes_release(h)
    return out


def render() -> str:
    import eccodes

    from era5latent.io.variables import VARIABLES

    ids = [v.param_id for v in VARIABLES] + [p for v in VARIABLES for p in v.equivalent_params]
    facts = param_facts(ids)
    lines = [
        '"""ECMWF parameter facts for the variable catalogue. GENERATED: do not edit.',
        "",
        f"Written by tools/make_catalogue.py from the parameter database of ecCodes "
        f"{eccodes.codes_get_api_version()}.",
        "Each entry: paramId -> (GRIB shortName, ECMWF name, GRIB units, CF units, cfgrib",
        "variable name, CF standard name or '' where ecCodes has none).",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        f"ECCODES_VERSION = {eccodes.codes_get_api_version()!r}",
        "",
        "PARAMS: dict[int, tuple[str, str, str, str, str, str]] = {",
    ]
    for pid, row in facts.items():
        lines.append(f"    {pid}: {row!r},")
    lines.append("}")
    return "\n".join(lines) + "\n"


def markdown_table() -> str:
    """The catalogue as the Markdown table docs/variables.md carries (kept in sync by a test)."""
    from era5latent.io.variables import VARIABLES

    rows = ["| channel | kind | paramId | GRIB shortName | cfgrib/CDS NetCDF | WeatherBench 2 / CDS "
            "| ECMWF name | units | CF standard name | PVUM code | flags |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for v in VARIABLES:
        flags = ", ".join(f for f, on in (("accumulated", v.accumulated),
                                          ("non-negative", v.nonnegative),
                                          ("static", v.static)) if on)
        code = "level (hPa)" if v.pressure else f"{v.meta_code:g}"
        rows.append(f"| `{v.name}` | {'pressure' if v.pressure else 'single'} | {v.param_id} | "
                    f"`{v.grib_short_name}` | `{v.cf_var_name}` | `{v.wb2_name}` | {v.long_name} | "
                    f"{v.units} | {v.standard_name or '-'} | {code} | {flags or '-'} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown_table() if sys.argv[1:] == ["--markdown"] else render())
