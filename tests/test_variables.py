from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from era5latent.errors import SubsetError
from era5latent.variables import Channel, group_channels, parse_channel, parse_subset


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
