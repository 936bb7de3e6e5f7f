"""Decoded stores speak CF: cf-xarray finds X, Y, Z and T; the source's attributes survive
verbatim; ``decode --zarr-format 2`` writes WeatherBench 2's own Zarr version."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from tests.conftest import assert_clean_error, run_cli


@pytest.fixture(scope="module")
def latent(tmp_path_factory: pytest.TempPathFactory, sample_zarr: Path, tiny_model: Path) -> Path:
    out = tmp_path_factory.mktemp("conv") / "l.zarr"
    res = run_cli("encode", sample_zarr, "--model", tiny_model, "--subset", "z500,z850,t850,t2m",
                  "--out", out, "--device", "cpu", "--time", "/2020-01-03T00")
    assert res.exit_code == 0, res.stderr
    return out


@pytest.mark.parametrize("fmt", ["3", "2"])
def test_cf_xarray_finds_every_axis(fmt: str, latent: Path, tiny_model: Path, sample_zarr: Path,
                                    tmp_path: Path) -> None:
    import cf_xarray  # noqa: F401  (registers the .cf accessor)

    out = tmp_path / "d.zarr"
    res = run_cli("decode", latent, "--model", tiny_model, "--out", out, "--device", "cpu",
                  "--zarr-format", fmt)
    assert res.exit_code == 0, res.stderr
    assert (out / ("zarr.json" if fmt == "3" else ".zmetadata")).is_file()
    ds = xr.open_zarr(out)
    axes = ds.cf.axes
    assert {k: v for k, v in axes.items()} == {"X": ["longitude"], "Y": ["latitude"],
                                                "Z": ["level"], "T": ["time"]}, axes
    assert ds.attrs["Conventions"].startswith("CF-1.")
    lev = ds["level"].attrs
    assert (lev["standard_name"], lev["positive"], lev["units"]) == ("air_pressure", "down", "hPa")
    assert ds.cf["geopotential"].attrs["standard_name"] == "geopotential"
    assert sorted(ds.cf.standard_names["air_temperature"]) == ["2m_temperature", "temperature"]
    # the source's attributes, verbatim (a sample made like WB2's, with its own long names)
    src = xr.open_zarr(sample_zarr)
    for name in ("geopotential", "temperature", "2m_temperature"):
        assert ds[name].attrs.items() >= src[name].attrs.items(), name
    if fmt == "2":  # same values as the v3 output; --overwrite knows it is ours
        v3 = tmp_path / "v3.zarr"
        assert run_cli("decode", latent, "--model", tiny_model, "--out", v3,
                       "--device", "cpu").exit_code == 0
        np.testing.assert_array_equal(ds["temperature"].values,
                                      xr.open_zarr(v3)["temperature"].values)
        again = run_cli("decode", latent, "--model", tiny_model, "--out", out, "--device", "cpu",
                        "--zarr-format", "2", "--overwrite")
        assert again.exit_code == 0, again.stderr


def test_zarr_format_is_for_zarr_outputs(latent: Path, tiny_model: Path, tmp_path: Path) -> None:
    assert_clean_error(run_cli("decode", latent, "--model", tiny_model, "--out",
                               tmp_path / "d.nc", "--zarr-format", "2"), "--zarr-format 2",
                       "NetCDF")
    assert not (tmp_path / "d.nc").exists()
