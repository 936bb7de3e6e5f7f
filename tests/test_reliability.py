"""Nothing lost, nothing let in: kill-and-resume at every fault point, and the bad-input matrix.

docs/reliability.md lists each case with the message a user sees.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from era5latent.errors import OptionError
from era5latent.io.sources import open_source, parse_time_range

from .conftest import assert_clean_error, cli_subprocess, run_cli, tree_bytes
from .test_embedmap import fmt, sample, write_parquet
from .test_sources import wb2_dataset


def encode_args(data: Path, model: Path, out: Path) -> list[str]:
    return ["encode", str(data), "--model", str(model), "--subset", "z500,z850,t850,t2m",
            "--out", str(out), "--device", "cpu", "--time-chunk", "4"]


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory: pytest.TempPathFactory, sample_zarr: Path,
                tiny_model: Path) -> Path:
    out = tmp_path_factory.mktemp("clean") / "latent.zarr"
    assert run_cli(*encode_args(sample_zarr, tiny_model, out)).exit_code == 0
    return out


@pytest.mark.slow
@pytest.mark.parametrize("point", [
    "store.created:1",            # skeleton laid out, not yet renamed into place
    "encode.chunk-read:3",        # reading ahead, nothing of chunk 3 written
    "encode.codes-written:2",     # codes of chunk 2 on disk, its done flag not
    "encode.chunk-done:4",        # four chunks complete
    "encode.before-complete:1",   # every chunk done, 'complete' not yet written
])
def test_encode_killed_anywhere_resumes_byte_identical(point: str, sample_zarr: Path,
                                                       tiny_model: Path, clean_store: Path,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "latent.zarr"
    killed = cli_subprocess(*encode_args(sample_zarr, tiny_model, out),
                            env={"ERA5LATENT_FAULT": point})
    assert killed.returncode == -9, killed.stderr
    if out.exists():
        assert not xr.open_zarr(out).attrs["era5latent"]["complete"]
    again = cli_subprocess(*encode_args(sample_zarr, tiny_model, out))
    assert again.returncode == 0, again.stderr
    assert tree_bytes(out) == tree_bytes(clean_store)


@pytest.mark.slow
def test_a_store_complete_but_not_consolidated_is_repaired(
        clean_store: Path, sample_zarr: Path, tiny_model: Path, tmp_path: Path) -> None:
    """What a kill between zarr-python's seal writes leaves (a store at a URL, or a local one
    sealed by era5latent before the one-write seal): marked complete and sealed, not
    consolidated. A local seal is one write, so no kill of it leaves this."""
    import json
    import shutil

    out = tmp_path / "latent.zarr"
    shutil.copytree(clean_store, out)
    doc = json.loads((out / "zarr.json").read_text())
    del doc["consolidated_metadata"]
    (out / "zarr.json").write_text(json.dumps(doc, indent=2))
    assert xr.open_zarr(out, consolidated=False).attrs["era5latent"]["complete"]
    assert tree_bytes(out) != tree_bytes(clean_store)
    again = cli_subprocess(*encode_args(sample_zarr, tiny_model, out))
    assert again.returncode == 0, again.stderr
    assert tree_bytes(out) == tree_bytes(clean_store)


@pytest.mark.slow
def test_decode_killed_leaves_no_output_and_reruns_identical(clean_store: Path, tiny_model: Path,
                                                             tmp_path: Path) -> None:
    args = ["decode", str(clean_store), "--model", str(tiny_model), "--device", "cpu"]
    ref = tmp_path / "ref.zarr"
    assert cli_subprocess(*args, "--out", str(ref)).returncode == 0
    out = tmp_path / "recon.zarr"
    killed = cli_subprocess(*args, "--out", str(out),
                            env={"ERA5LATENT_FAULT": "decode.block-written:3"})
    assert killed.returncode == -9 and not out.exists()  # never half-written
    assert cli_subprocess(*args, "--out", str(out)).returncode == 0
    assert tree_bytes(out) == tree_bytes(ref)


@pytest.mark.slow
def test_embed_map_killed_leaves_no_output_and_reruns_identical(tmp_path: Path) -> None:
    cells, vecs = sample(200)
    pq = write_parquet(tmp_path / "avg.parquet", [fmt(c) for c in cells], vecs)
    ref, out = tmp_path / "ref.zarr", tmp_path / "map.zarr"
    assert cli_subprocess("build-embed-map", pq, "--out", ref).returncode == 0
    killed = cli_subprocess("build-embed-map", pq, "--out", out,
                            env={"ERA5LATENT_FAULT": "embedmap.chunk-written:1"})
    assert killed.returncode == -9 and not out.exists()
    assert cli_subprocess("build-embed-map", pq, "--out", out).returncode == 0
    assert tree_bytes(out) == tree_bytes(ref)


# -- the bad-input matrix (the rest lives beside the feature it guards) ------------------------

def _zarr(ds: xr.Dataset, path: Path) -> Path:
    ds.to_zarr(path, zarr_format=3, consolidated=False)
    return path


def test_infinities_are_refused(tmp_path: Path, tiny_model: Path) -> None:
    ds = wb2_dataset(nlat=33, nlon=64)
    ds["geopotential"][1, 0, 5, 5] = np.inf
    res = run_cli("encode", _zarr(ds, tmp_path / "inf.zarr"), "--model", tiny_model, "--subset",
                  "z500", "--out", tmp_path / "x.zarr")
    assert_clean_error(res, "infinite")


def test_times_out_of_order_are_refused(tmp_path: Path) -> None:
    ds = wb2_dataset(nt=4).isel(time=[0, 2, 1, 3])
    res = run_cli("train", _zarr(ds, tmp_path / "order.zarr"), "--subset", "z500", "--out",
                  tmp_path / "m.safetensors")
    assert_clean_error(res, "out of order", "sort")


def test_missing_coordinates_are_refused(tmp_path: Path) -> None:
    ds = wb2_dataset().drop_vars("latitude")
    res = run_cli("train", _zarr(ds, tmp_path / "nolat.zarr"), "--subset", "z500", "--out",
                  tmp_path / "m.safetensors")
    assert_clean_error(res, "no latitude coordinate")


def test_unwritable_output_paths(clean_store: Path, tiny_model: Path, tmp_path: Path) -> None:
    res = run_cli("decode", clean_store, "--model", tiny_model, "--out",
                  tmp_path / "no" / "such" / "dir.zarr")
    assert_clean_error(res, "does not exist")
    res = run_cli("decode", clean_store, "--model", tiny_model, "--out", "/proc/era5latent.zarr")
    assert_clean_error(res, "cannot write")


def test_truncated_parquet_is_refused(tmp_path: Path) -> None:
    cells, vecs = sample(50)
    pq = write_parquet(tmp_path / "avg.parquet", [fmt(c) for c in cells], vecs)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(pq.read_bytes()[: pq.stat().st_size // 2])
    res = run_cli("build-embed-map", cut, "--out", tmp_path / "m.zarr")
    assert_clean_error(res, "cut.parquet")
    assert not (tmp_path / "m.zarr").exists()


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=30))
def test_fuzzed_time_ranges_parse_or_raise_option_error(text: str) -> None:
    try:
        start, end = parse_time_range(text)
    except OptionError as err:
        assert "\n" not in str(err)
    else:
        assert start is None or end is None or start <= end


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(subset=st.text(alphabet="zt0123456789,:@ _-2muvqsl", max_size=20),
       time=st.text(alphabet="0123456789-T:/ ", max_size=24))
def test_fuzzed_cli_options_never_trace_back(subset: str, time: str, tmp_path: Path) -> None:
    res = run_cli("decode", tmp_path / "missing.zarr", "--model", tmp_path / "none.safetensors",
                  "--out", tmp_path / "o.zarr", "--subset", subset, "--time", time)
    assert res.exit_code == 2 and "Traceback" not in res.stderr


def test_fuzzed_time_ranges_on_a_real_source(tmp_path: Path) -> None:
    src = open_source(_zarr(wb2_dataset(nt=6), tmp_path / "a.zarr"))

    @settings(max_examples=60, deadline=None)
    @given(st.text(alphabet="0123456789-T:/", max_size=24))
    def check(text: str) -> None:
        try:
            lo, hi = src.time_indices(text)
        except OptionError:
            return
        assert 0 <= lo < hi <= 6

    check()


def test_a_resumed_encode_removes_half_written_chunk_files(sample_zarr: Path, tiny_model: Path,
                                                           tmp_path: Path) -> None:
    """A SIGKILL while zarr writes a chunk leaves its ``*.partial`` file; the resume removes it."""
    out = tmp_path / "l.zarr"
    base = ("encode", sample_zarr, "--model", tiny_model, "--subset", "z500,t2m", "--out", out,
            "--device", "cpu", "--time-chunk", "8")
    killed = cli_subprocess(*base, env={"ERA5LATENT_FAULT": "encode.chunk-done:1"})
    assert killed.returncode == -9
    stray = next(out.glob("_era5latent/build_done/c/*")).with_suffix(".0123abcd.partial")
    stray.write_bytes(b"")  # what a kill in the middle of zarr's write leaves
    assert run_cli(*base).exit_code == 0
    assert not list(out.rglob("*.partial"))
