"""Outputs: overwrite only what is ours, names we write, check before creating, honest messages.

``--overwrite`` replaces an existing output only if it is an era5latent output of the same kind
(recognised by its attributes); an output named like a format era5latent does not write is
refused; a run checks its source's first chunk, its options and its cluster before it creates
anything; concurrency is reported as what it is.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from .conftest import assert_clean_error, run_cli
from .test_embedmap import fmt, sample, write_parquet
from .test_reliability import tree_bytes


def encode(sample: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return ["encode", str(sample), "--model", str(model), "--subset", "z500,t2m", "--out",
            str(out), "--time-chunk", "8", "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, sample_zarr: Path, tiny_model: Path) -> Path:
    out = tmp_path_factory.mktemp("outputs") / "latent.zarr"
    assert run_cli(*encode(sample_zarr, tiny_model, out)).exit_code == 0
    return out


def _someone_elses(path: Path) -> dict[str, bytes]:
    path.mkdir()
    (path / "thesis.tex").write_text("years of work")
    (path / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group",
                                                "attributes": {"owner": "someone"}}))
    return tree_bytes(path)


@pytest.mark.parametrize("verb", ["encode", "decode", "build-embed-map"])
def test_overwrite_onto_something_not_ours_leaves_it_untouched(
        verb: str, store: Path, sample_zarr: Path, tiny_model: Path, tmp_path: Path) -> None:
    target = tmp_path / "precious.zarr"
    before = _someone_elses(target)
    inputs: list[str] = []
    if verb == "build-embed-map":
        cells, vecs = sample(10)
        pq = write_parquet(tmp_path / "e.parquet", [fmt(c) for c in cells], vecs)
        inputs = ["e.parquet"]
        args = ["build-embed-map", str(pq), "--out", str(target)]
    else:
        args = (encode(sample_zarr, tiny_model, target) if verb == "encode" else
                ["decode", str(store), "--model", str(tiny_model), "--out", str(target)])
    assert_clean_error(run_cli(*args, "--overwrite"), "not an era5latent output",
                       "--overwrite replaces only")
    assert tree_bytes(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [*inputs, "precious.zarr"]


def test_build_embed_map_overwrite_onto_a_latent_store_is_refused(store: Path,
                                                                  tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "latent.zarr"
    shutil.copytree(store, copy)
    before = tree_bytes(copy)
    cells, vecs = sample(10)
    pq = write_parquet(tmp_path / "e.parquet", [fmt(c) for c in cells], vecs)
    assert_clean_error(run_cli("build-embed-map", str(pq), "--out", str(copy), "--overwrite"),
                       "is an era5latent latent store", "replaces only an era5latent embedding map")
    assert tree_bytes(copy) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.parquet", "latent.zarr"]


def test_overwrite_of_another_kind_of_era5latent_output_is_refused(
        store: Path, tiny_model: Path, tmp_path: Path) -> None:
    copy = tmp_path / "latent.zarr"
    import shutil

    shutil.copytree(store, copy)
    before = tree_bytes(copy)
    res = run_cli("decode", str(store), "--model", str(tiny_model), "--out", str(copy),
                  "--overwrite")
    assert_clean_error(res, "an era5latent latent store", "decoded fields")
    assert tree_bytes(copy) == before
    # the same kind is replaced, NetCDF files included
    nc = tmp_path / "r.nc"
    args = ["decode", str(store), "--model", str(tiny_model), "--out", str(nc), "--device", "cpu"]
    assert run_cli(*args).exit_code == 0
    assert run_cli(*args, "--overwrite").exit_code == 0
    plain = tmp_path / "notes.nc"
    plain.write_text("not netcdf")
    assert_clean_error(run_cli("decode", str(store), "--model", str(tiny_model), "--out",
                               str(plain), "--device", "cpu", "--overwrite"),
                       "a file that is not an era5latent output")
    assert plain.read_text() == "not netcdf"


@pytest.mark.parametrize("name", ["rec.csv", "rec.txt", "rec.parquet", "rec.grib"])
def test_outputs_named_like_a_format_we_do_not_write_are_refused(
        name: str, store: Path, sample_zarr: Path, tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / name
    assert_clean_error(run_cli("decode", str(store), "--model", str(tiny_model), "--out",
                               str(out)), "does not write", "Zarr", "NetCDF")
    assert_clean_error(run_cli(*encode(sample_zarr, tiny_model, out)), "does not write",
                       "Zarr")
    assert_clean_error(run_cli("sample", str(out), "--grid", "5x8", "--times", "2"),
                       "does not write", "Zarr")
    assert list(tmp_path.iterdir()) == []


def test_info_on_an_unfinished_store_gives_the_ratio_over_chunks_written(
        store: Path, sample_zarr: Path, tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "part.zarr"
    assert run_cli(*encode(sample_zarr, tiny_model, out, "--parts", "1/3")).exit_code == 0
    part = json.loads(run_cli("info", str(out), "--json").stdout)
    whole = json.loads(run_cli("info", str(store), "--json").stdout)
    assert part["chunks_done"] == 1 and part["float32_bytes_written"] * 3 == \
        part["float32_bytes"]
    # one of three chunks: about the finished store's ratio, not three times it
    assert part["compression_ratio"] == pytest.approx(whole["compression_ratio"], rel=0.2)
    assert "over the 1 time chunks written" in run_cli("info", str(out)).stdout


def test_a_source_bad_in_its_first_chunk_leaves_no_store(tiny_model: Path,
                                                         tmp_path: Path) -> None:
    from era5latent.io.sample import write_sample

    src = tmp_path / "nan.zarr"
    write_sample(str(src), grid=(33, 64), times=24, variables=("z", "t", "t2m", "msl"),
                 levels=(500, 700, 850), seed=1)
    ds = xr.open_zarr(src)
    t2m = ds["2m_temperature"].values
    t2m[3, 4, 5] = np.nan
    ds["2m_temperature"][...] = t2m  # lazily backed: write the one variable back
    xr.Dataset({"2m_temperature": (ds["2m_temperature"].dims, t2m)}).to_zarr(
        src, mode="r+", zarr_format=3)
    out = tmp_path / "latent.zarr"
    assert_clean_error(run_cli(*encode(src, tiny_model, out)), "NaN")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.zarr"]


def test_a_time_chunk_too_large_to_hold_is_refused_before_creating(
        sample_zarr: Path, tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "latent.zarr"
    args = encode(sample_zarr, tiny_model, out)
    args[args.index("--time-chunk") + 1] = str(10 ** 9)  # zarr would allocate 477 GiB
    assert_clean_error(run_cli(*args), "--time-chunk", "GiB", "expected at most")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("verb", ["encode", "decode"])
def test_a_missing_scheduler_file_is_refused_within_seconds(
        verb: str, store: Path, sample_zarr: Path, tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.zarr"
    args = (encode(sample_zarr, tiny_model, out) if verb == "encode" else
            ["decode", str(store), "--model", str(tiny_model), "--out", str(out)])
    start = time.monotonic()
    res = run_cli(*args, "--scheduler", str(tmp_path / "nowhere.json"))
    assert_clean_error(res, "no such scheduler file")
    assert time.monotonic() - start < 10 and not out.exists()
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert_clean_error(run_cli(*args, "--scheduler", str(bad)), "not a dask scheduler file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json"]


def test_an_encode_of_another_subset_racing_a_live_writer_is_told_so(
        store: Path, sample_zarr: Path, tiny_model: Path, tmp_path: Path) -> None:
    import os
    import shutil
    import socket

    from era5latent.store.core import lock_path

    copy = tmp_path / "latent.zarr"
    shutil.copytree(store, copy)
    Path(lock_path(str(copy))).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    args = encode(sample_zarr, tiny_model, copy)
    args[args.index("--subset") + 1] = "z500"
    assert_clean_error(run_cli(*args), "made differently", "being written now",
                       "choose another --out")


def test_a_store_replaced_while_decoding_is_not_called_corrupt(
        store: Path, sample_zarr: Path, tiny_model: Path, tmp_path: Path) -> None:
    import shutil

    from era5latent.errors import StoreError
    from era5latent.pipeline import read_codes
    from era5latent.store.core import open_latent_store

    copy = tmp_path / "latent.zarr"
    shutil.copytree(store, copy)
    opened = open_latent_store(str(copy))
    assert read_codes(opened, ["z"], 0, 8)[0]["z"] is not None
    args = encode(sample_zarr, tiny_model, copy, "--overwrite")
    args[args.index("--time-chunk") + 1] = "4"
    assert run_cli(*args).exit_code == 0  # replaced underneath the open store
    with pytest.raises(StoreError, match="was replaced while it was being read"):
        read_codes(opened, ["z"], 8, 16, allow_corrupt=True)


def test_leftovers_of_killed_runs_are_named(store: Path, tiny_model: Path,
                                            tmp_path: Path) -> None:
    out = tmp_path / "r.zarr"
    (tmp_path / ".r.zarr.tmp-abc123").mkdir()  # what a killed decode leaves
    res = run_cli("decode", str(store), "--model", str(tiny_model), "--out", str(out),
                  "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    assert ".r.zarr.tmp-abc123" in res.stderr and "killed" in res.stderr
    assert (tmp_path / ".r.zarr.tmp-abc123").is_dir()  # named, not deleted


@pytest.mark.parametrize("verb", ["encode", "decode"])
def test_a_scheduler_address_nothing_listens_on_is_refused_within_seconds(
        verb: str, store: Path, sample_zarr: Path, tiny_model: Path, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out.zarr"
    args = (encode(sample_zarr, tiny_model, out) if verb == "encode" else
            ["decode", str(store), "--model", str(tiny_model), "--out", str(out)])
    start = time.monotonic()
    assert_clean_error(run_cli(*args, "--scheduler", f"tcp://127.0.0.1:{port}"), "cannot connect")
    assert time.monotonic() - start < 10
    assert_clean_error(run_cli(*args, "--scheduler", "tcp://127.0.0.1:notaport"), "--scheduler")
    assert list(tmp_path.iterdir()) == []
