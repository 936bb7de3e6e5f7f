"""A field in other units than ERA5's is refused with the conversion; other spellings pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from era5latent.errors import DataValueError
from era5latent.io.sources import open_source
from era5latent.io.units import canonical_unit, unit_problem
from era5latent.io.variables import VARIABLES

from .conftest import ENSEMBLE_GRIB, UK_T2M_GRIB
from .test_sources import _write_zarr, wb2_dataset


@pytest.mark.parametrize("found", ["m**2 s**-2", "m^2/s^2", "m2 s-2", "M2 S-2", "J kg-1", "",
                                   "geopotential (whatever)"])
def test_spellings_of_the_right_unit_or_unknown_text_pass(found: str) -> None:
    assert unit_problem(found, "m2 s-2") is None


def test_every_catalogue_unit_is_recognised_and_equal_to_itself() -> None:
    for v in VARIABLES:
        assert canonical_unit(v.units) is not None, (v.name, v.units)
        assert unit_problem(v.units, v.units) is None


@pytest.mark.parametrize(("var", "units", "fix"), [
    ("geopotential", "K", "check the variable"),
    ("geopotential", "gpm", "9.80665"),
    ("geopotential", "dam", "98.0665"),
    ("2m_temperature", "degC", "273.15"),
    ("2m_temperature", "degrees_Celsius", "273.15"),
    ("2m_temperature", "m s-1", "convert it to K"),
])
def test_a_field_in_other_units_is_refused_with_the_fix(tmp_path: Path, var: str, units: str,
                                                        fix: str) -> None:
    ds = wb2_dataset()
    ds[var].attrs["units"] = units
    with pytest.raises(DataValueError, match=fix) as err:
        open_source(_write_zarr(ds, tmp_path / "s.zarr"))
    assert repr(units) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(("found", "want", "fix"), [
    ("hPa", "Pa", "multiply by 100"), ("mm", "m", "divide by 1000"),
    ("g/kg", "kg kg-1", "divide by 1000"), ("%", "1", "divide by 100"),
    ("(0 - 1)", "%", "multiply by 100"), ("knots", "m s-1", "0.514444"),
    ("W m**-2", "J m-2", "accumulation period")])
def test_conversions_named(found: str, want: str, fix: str) -> None:
    assert fix in (unit_problem(found, want) or "")


def test_a_water_column_in_mm_is_kg_per_square_metre() -> None:
    assert unit_problem("mm", "kg m-2") is None


def test_the_real_samples_units_pass(real_data: Path) -> None:
    for path in (ENSEMBLE_GRIB, UK_T2M_GRIB):
        src = open_source(path)
        assert src.layout.units  # what cfgrib reported, each accepted as ERA5's units
        for name, found in src.layout.units.items():
            assert unit_problem(found, next(v.units for v in VARIABLES if v.name == name)) is None
