from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from era5latent.errors import SubsetError
from era5latent.io.variables import Channel, group_channels, parse_channel, parse_subset


@pytest.mark.parametrize("text,expected", [
    ("z500", Channel("z", 500)),
    ("T850", Channel("t", 850)),
    ("q700", Channel("q", 700)),
    ("geopotential:500", Channel("z", 500)),
    ("temperature@850", Channel("t", 850)),
    ("u_component_of_wind:250hPa", Channel("u", 250)),
    ("t2m", Channel("t2m")),
    ("2t", Channel("t2m")),
    ("10u", Channel("u10")),
    ("u10", Channel("u10")),
    ("10v", Channel("v10")),
    ("msl", Channel("msl")),
    ("2m_temperature", Channel("t2m")),
])
def test_parse_channel_forms(text: str, expected: Channel) -> None:
    assert parse_channel(text) == expected


@pytest.mark.parametrize("bad", ["", "z", "t2m500", "zz500", "z99999", "z0", "msl:500",
                                 "geopotential", "banana", "500"])
def test_bad_channels_raise_subset_error(bad: str) -> None:
    with pytest.raises(SubsetError):
        parse_channel(bad) if bad else parse_subset(bad)


def test_subset_keeps_order_and_groups() -> None:
    chs = parse_subset("t850, z500,t2m,z850 ,msl")
    assert [c.code for c in chs] == ["t850", "z500", "t2m", "z850", "msl"]
    groups = group_channels(chs)
    assert list(groups) == ["t", "z", "surface"]
    assert [c.code for c in groups["z"]] == ["z500", "z850"]
    assert [c.meta for c in groups["surface"]] == [500.0, 800.0]
    assert chs[0].units == "K" and chs[1].units == "m2 s-2"


def test_duplicate_channel_is_refused() -> None:
    with pytest.raises(SubsetError, match="twice"):
        parse_subset("z500,geopotential:500")


@given(st.text(max_size=40))
def test_any_text_parses_or_raises_subset_error(text: str) -> None:
    try:
        chs = parse_subset(text)
    except SubsetError as err:
        assert "\n" not in str(err)
    else:
        assert chs and all(isinstance(c, Channel) for c in chs)


# -- the catalogue: every ERA5 variable, every naming convention -------------------------------

from era5latent.io.variables import (VARIABLES, known_names, lookup_subset_name,  # noqa: E402
                                  lookup_variable, nearest_names, variable_by_name)

PRESSURE_VARS = ("z", "t", "u", "v", "q", "w", "r", "vo", "d", "cc", "o3", "ciwc", "clwc", "crwc",
                 "cswc", "pv")
SINGLE_VARS = ("t2m", "d2m", "u10", "v10", "u100m", "v100m", "msl", "sp", "tcc", "tcwv", "tp",
               "skt", "sst", "ssrd", "strd", "lsm", "zs")


def test_the_catalogue_holds_every_era5_variable_the_issue_lists() -> None:
    names = [v.name for v in VARIABLES]
    assert set(PRESSURE_VARS) | set(SINGLE_VARS) == set(names)
    assert [v.name for v in VARIABLES if v.pressure] == list(PRESSURE_VARS)
    # the sample generator seeds by catalogue index: the first nine keep their places
    assert names[:9] == ["z", "t", "u", "v", "q", "t2m", "u10", "v10", "msl"]


def test_existing_pvum_codes_are_unchanged_and_new_ones_distinct() -> None:
    codes = {v.name: v.meta_code for v in VARIABLES if not v.pressure}
    assert (codes["t2m"], codes["u10"], codes["v10"], codes["msl"]) == (500.0, 200.0, 100.0, 800.0)
    assert None not in codes.values() and len(set(codes.values())) == len(codes)
    assert all(v.meta_code is None for v in VARIABLES if v.pressure)


def test_facts_come_from_ecmwf_parameter_database() -> None:
    """Units and long names are the ecCodes table's, converted to CF form mechanically."""
    v = variable_by_name
    assert (v("z").long_name, v("z").grib_units, v("z").units) == \
        ("Geopotential", "m**2 s**-2", "m2 s-2")
    assert (v("t2m").grib_short_name, v("t2m").cf_var_name, v("t2m").long_name) == \
        ("2t", "t2m", "2 metre temperature")
    assert v("tcc").units == "1" and v("tcc").grib_units == "(0 - 1)"
    assert v("w").units == "Pa s-1" and v("r").units == "%" and v("tp").units == "m"
    assert v("ssrd").units == "J m-2" and v("zs").units == "m2 s-2"
    assert v("t").standard_name == "air_temperature"
    # CF names where ecCodes has none, or one for other units (W m-2 where ERA5 holds J m-2)
    assert v("tp").standard_name == "lwe_thickness_of_precipitation_amount"
    assert v("ssrd").standard_name.startswith("integral_wrt_time_of_")


def test_committed_parameter_table_matches_eccodes() -> None:
    """tools/make_catalogue.py regenerates era5latent/io/ecmwf_params.py byte for byte."""
    pytest.importorskip("eccodes")
    import runpy
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    gen = runpy.run_path(str(root / "tools" / "make_catalogue.py"))
    text = (root / "era5latent" / "io" / "ecmwf_params.py").read_text()
    import eccodes

    if f"ecCodes {eccodes.codes_get_api_version()}." not in text:
        pytest.skip("the committed table was made with another ecCodes version")
    assert gen["render"]() == text, "run: python tools/make_catalogue.py > era5latent/io/ecmwf_params.py"


def test_flags_for_accumulated_nonnegative_and_static_fields() -> None:
    acc = {v.name for v in VARIABLES if v.accumulated}
    assert acc == {"tp", "ssrd", "strd"}
    assert acc <= {v.name for v in VARIABLES if v.nonnegative}
    assert {"q", "r", "cc", "tcc", "tcwv", "lsm"} <= {v.name for v in VARIABLES if v.nonnegative}
    assert {v.name for v in VARIABLES if v.static} == {"lsm", "zs"}
    assert not variable_by_name("t").nonnegative and not variable_by_name("t2m").accumulated


def _pressure_forms(v: object) -> list[str]:
    from era5latent.io.variables import Variable

    assert isinstance(v, Variable)
    return [f"{v.name}850", f"{v.name}_850", f"{v.name}:850", f"{v.name}@850hPa",
            f"{v.wb2_name}_850", f"{v.wb2_name}:850", f"{v.grib_short_name}_850",
            f"{v.param_id}:850", f"{v.param_id}.128@850", f"{v.name.upper()}_850",
            f"{v.long_name}:850"]


@pytest.mark.parametrize("name", PRESSURE_VARS)
def test_every_pressure_variable_parses_from_every_convention(name: str) -> None:
    v = variable_by_name(name)
    want = Channel(name, 850)
    for form in _pressure_forms(v):
        assert parse_channel(form) == want, form
    assert parse_channel(want.code) == want  # the code we write reads back


@pytest.mark.parametrize("name", SINGLE_VARS)
def test_every_single_level_variable_parses_from_every_convention(name: str) -> None:
    v = variable_by_name(name)
    want = Channel(name)
    forms = [v.name, v.name.upper(), v.wb2_name, v.wb2_name.upper()]
    if name != "zs":  # zs shares paramId 129, shortName z and 'Geopotential' with pressure z
        pid = v.param_id
        forms += [v.grib_short_name, v.long_name, str(pid),
                  f"{pid}.128" if pid < 1000 else f"{pid % 1000}.{pid // 1000}"]
        if v.cf_var_name not in ("u100", "v100"):  # those are u/v at 100 hPa in a subset
            forms.append(v.cf_var_name)
    for form in forms:
        assert parse_channel(form) == want, form
    assert lookup_variable(v.cf_var_name if name != "zs" else v.wb2_name) is v


@pytest.mark.parametrize("text,expected", [
    ("t_850", Channel("t", 850)), ("temperature_850", Channel("t", 850)),
    ("130", None), ("130.128:850", Channel("t", 850)), ("prmsl", Channel("msl")),
    ("260074", Channel("msl")), ("u100", Channel("u", 100)), ("U100", Channel("u", 100)),
    ("100u", Channel("u100m")), ("u100m", Channel("u100m")), ("u_10", Channel("u", 10)),
    ("o3850", Channel("o3", 850)), ("o3_850", Channel("o3", 850)), ("TP", Channel("tp")),
    ("orography", Channel("zs")), ("geopotential_at_surface", Channel("zs")),
    ("2 metre temperature", Channel("t2m")), ("Z500", Channel("z", 500)),
])
def test_convention_edge_cases(text: str, expected: Channel | None) -> None:
    if expected is None:
        with pytest.raises(SubsetError, match="needs a level"):
            parse_channel(text)
    else:
        assert parse_channel(text) == expected


def test_channel_codes_of_names_ending_in_a_digit_read_back() -> None:
    assert Channel("o3", 850).code == "o3_850" and Channel("z", 500).code == "z500"
    assert parse_channel("o3_850") == Channel("o3", 850)


def test_source_names_that_clash_with_channel_codes() -> None:
    """cfgrib and CDS call the 100 m wind u100; in a subset u100 is u at 100 hPa (as existing
    checkpoints and stores spell it), so the clash is resolved by where the name appears."""
    assert lookup_variable("u100") is variable_by_name("u100m")
    assert lookup_subset_name("u100") is None
    assert parse_channel("u10") == Channel("u10")  # the 10 m wind, as it always was


def test_names_are_case_insensitive_because_no_two_differ_only_by_case() -> None:
    names = known_names()
    assert len(names) == len({n.lower() for n in names}) and all(n == n.lower() for n in names)


@pytest.mark.parametrize("typo,suggested", [("temprature_850", "temperature_850"), ("t2n", "t2m"),
                                            ("zz500", "z500"), ("msll", "msl"),
                                            ("specific_humidty", "specific_humidity")])
def test_a_name_that_matches_nothing_lists_the_nearest(typo: str, suggested: str) -> None:
    assert suggested in nearest_names(typo)
    with pytest.raises(SubsetError, match=f"nearest known: .*{suggested}"):
        parse_channel(typo)


def test_docs_carry_the_catalogue_table() -> None:
    import runpy
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    table = runpy.run_path(str(root / "tools" / "make_catalogue.py"))["markdown_table"]()
    assert table in (root / "docs" / "variables.md").read_text(), \
        "paste `python tools/make_catalogue.py --markdown` into docs/variables.md"
