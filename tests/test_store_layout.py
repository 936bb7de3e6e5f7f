"""The version-3 layout: plain ``xr.open_zarr`` of a latent store shows the codes as data and the
token grid as coordinates; bookkeeping and residuals live in subgroups that verify still checks
byte for byte; version-2 (flat) stores are still read, verified and decoded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from .conftest import run_cli
from .oldformats import as_version_2

SUBSET = "z500,z850,t850,t2m"


def _encode(sample_zarr: Path, tiny_model: Path, out: Path, *extra: str) -> Path:
    res = run_cli("encode", sample_zarr, "--model", tiny_model, "--subset", SUBSET, "--out", out,
                  "--device", "cpu", "--time-chunk", "8", *extra)
    assert res.exit_code == 0, res.stderr
    return out


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory, sample_zarr: Path, tiny_model: Path) -> Path:
    return _encode(sample_zarr, tiny_model, tmp_path_factory.mktemp("plain") / "latent.zarr")


@pytest.fixture(scope="module")
def bounded(tmp_path_factory: pytest.TempPathFactory, sample_zarr: Path,
            tiny_model: Path) -> Path:
    return _encode(sample_zarr, tiny_model, tmp_path_factory.mktemp("bounded") / "latent.zarr",
                   "--max-error", "*=1%")


@pytest.mark.parametrize("which", ["plain", "bounded"])
def test_plain_open_zarr_shows_only_codes_and_coordinates(which: str,
                                                          request: pytest.FixtureRequest) -> None:
    store: Path = request.getfixturevalue(which)
    ds = xr.open_zarr(store)
    assert sorted(ds.data_vars) == ["codes_surface", "codes_t", "codes_z"]
    assert sorted(ds.coords) == ["latitude", "longitude", "time", "token_lat", "token_lon"]
    assert set(ds.dims) == {"time", "latitude", "longitude", "token_lat", "token_lon", "byte"}
    assert ds["codes_z"].dims == ("time", "token_lat", "token_lon", "byte")
    tl, tn = ds["token_lat"], ds["token_lon"]
    assert tl.attrs["units"] == "degrees_north" and tn.attrs["units"] == "degrees_east"
    assert "long_name" in tl.attrs and "long_name" in tn.attrs
    # tiny preset on 33 x 64 (5.625 degrees): stride 8, padding 2, kernels 13 and 12: centres
    # at grid indices 4, 12, 20, 28 (rows) and 3.5 + 8 j (columns)
    assert np.allclose(tl.values, 90 - 5.625 * np.array([4, 12, 20, 28]))
    assert np.allclose(tn.values, 5.625 * (3.5 + 8 * np.arange(8)))
    if which == "bounded":  # the residual bytes are one group away
        res = xr.open_zarr(store, group="residual")
        assert sorted(res.data_vars) == [f"{k}_{g}" for k in ("nbytes", "sha256", "streams")
                                         for g in ("surface", "t", "z")]


def test_open_latent_uses_the_stored_token_coordinates(plain: Path) -> None:
    import era5latent

    ds, raw = era5latent.open_latent(plain), xr.open_zarr(plain)
    for dim in ("token_lat", "token_lon"):
        assert np.array_equal(ds[dim].values, raw[dim].values)
        assert ds[dim].attrs["units"] == raw[dim].attrs["units"]


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("target,needle", [
    ("_era5latent/build_done/c/1", "array _era5latent/build_done"),
    ("_era5latent/sha256_t/c/2/0", "array _era5latent/sha256_t"),
    ("residual/nbytes_z/c/0/0", "array residual/nbytes_z"),
    ("token_lat/c/0", "array token_lat"),
    ("_era5latent/zarr.json", "_era5latent/zarr.json"),
    ("_era5latent/sha256_z/zarr.json", "_era5latent/sha256_z/zarr.json"),
    ("residual/zarr.json", "residual/zarr.json"),
    ("residual/streams_t/zarr.json", "residual/streams_t/zarr.json"),
])
def test_verify_catches_a_flipped_byte_in_a_subgroup(bounded: Path, tmp_path: Path, target: str,
                                                      needle: str) -> None:
    import shutil

    store = tmp_path / "latent.zarr"
    shutil.copytree(bounded, store)
    ok = run_cli("verify", store)
    assert ok.exit_code == 0, ok.stdout
    checked = {ln.split()[2].rstrip(":") for ln in ok.stdout.splitlines()
               if ln.split()[1] == "array"}
    on_disk = {str(p.parent.relative_to(store)) for p in store.rglob("zarr.json")
               if json.loads(p.read_text())["node_type"] == "array"}
    assert checked == on_disk  # every array, in the subgroups too
    _flip(store / target)
    bad = run_cli("verify", store)
    assert bad.exit_code == 3, bad.stdout
    fails = [ln for ln in bad.stdout.splitlines() if ln.startswith("FAIL")]
    assert any(needle in ln for ln in fails), bad.stdout


def test_a_version_2_store_is_still_read_verified_and_decoded(plain: Path, tiny_model: Path,
                                                              tmp_path: Path) -> None:
    import shutil

    ref = tmp_path / "ref.zarr"
    assert run_cli("decode", plain, "--model", tiny_model, "--out", ref).exit_code == 0
    store = tmp_path / "v2.zarr"
    shutil.copytree(plain, store)
    as_version_2(store)
    assert (store / "build_done").is_dir() and not (store / "_era5latent").exists()
    ok = run_cli("verify", store)
    assert ok.exit_code == 0, ok.stdout
    assert "version 2" in ok.stdout and "PASS  array build_done" in ok.stdout
    assert "PASS  array sha256_z" in ok.stdout
    out = tmp_path / "v2-decoded.zarr"
    assert run_cli("decode", store, "--model", tiny_model, "--out", out).exit_code == 0
    assert (xr.open_zarr(out)["geopotential"].values ==
            xr.open_zarr(ref)["geopotential"].values).all()
    info = json.loads(run_cli("info", store, "--json").stdout)
    assert info["format_version"] == 2 and info["chunks_done"] == 3
    _flip(store / "sha256_z" / "c" / "0" / "0")  # its flat bookkeeping is still checked
    bad = run_cli("verify", store)
    assert bad.exit_code == 3 and "array sha256_z" in bad.stdout


@pytest.mark.parametrize("doc", ["_era5latent/zarr.json", "_era5latent/build_done/zarr.json"])
def test_a_damaged_subgroup_document_of_an_unfinished_store_is_one_line(
        sample_zarr: Path, tiny_model: Path, tmp_path: Path, doc: str) -> None:
    """Unfinished: no digests and no consolidated metadata to fall back on."""
    from .conftest import assert_clean_error

    out = _encode(sample_zarr, tiny_model, tmp_path / "latent.zarr", "--parts", "1/3")
    _flip(out / doc)
    res = run_cli("verify", out)
    assert res.exit_code == 3 and "Traceback" not in res.stdout + res.stderr, res.stdout
    assert_clean_error(run_cli("info", out), "_era5latent")
