"""Keep the fast path honest: the pipelined encode equals a plain sequential one, its memory
does not grow with the length of the time range, and zarrs (the Rust codec pipeline) reads and
writes exactly what zarr-python does, without leaving any global setting changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from era5latent.model.checkpoint import load_checkpoint
from era5latent.pipeline import encode, prepare_encode
from era5latent.io.sources import Source, open_source
from era5latent.store.core import open_latent_store
from era5latent.io.variables import parse_subset

from .conftest import run_cli

SUBSET = parse_subset("z500,z850,t850,t2m")


def test_pipelined_and_sequential_encode_write_identical_codes(sample_zarr: Path, tiny_model: Path,
                                                               tmp_path: Path) -> None:
    src, loaded = open_source(sample_zarr), load_checkpoint(str(tiny_model))
    encode(src, loaded, SUBSET, str(tmp_path / "piped.zarr"), batch_size=5, device="cpu",
           time_chunk=4)
    job = prepare_encode(src, loaded, SUBSET, str(tmp_path / "seq.zarr"), batch_size=5,
                         device="cpu", time_chunk=4)
    for i in reversed(job.todo()):  # no prefetch, no order: chunk by chunk, backwards
        job.run_chunk(i)
    job.finish()
    a, b = open_latent_store(str(tmp_path / "piped.zarr")), open_latent_store(str(tmp_path / "seq.zarr"))
    for g in a.groups:
        np.testing.assert_array_equal(a.codes(g)[...], b.codes(g)[...])


MEASURE = """
import json, sys, tracemalloc
from era5latent.model.checkpoint import load_checkpoint
from era5latent.pipeline import encode
from era5latent.io.sources import Source, open_source
from era5latent.io.variables import parse_subset
src, loaded = open_source(sys.argv[1]), load_checkpoint(sys.argv[2])
tracemalloc.start()
encode(src, loaded, parse_subset("z500,z850,t850,t2m"), sys.argv[3], batch_size=4, device="cpu",
       time_chunk=4, time_range="/" + str(src.times[int(sys.argv[4]) - 1]))
print(json.dumps({"peak": tracemalloc.get_traced_memory()[1]}))
"""


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_time_range(tiny_model: Path, tmp_path: Path) -> None:
    data = tmp_path / "long.zarr"
    assert run_cli("sample", data, "--grid", "33x64", "--times", "1000", "--variables", "z,t,t2m",
                   "--levels", "500,850").exit_code == 0
    peaks = {}
    for n in (200, 1000):
        res = subprocess.run([sys.executable, "-c", MEASURE, str(data), str(tiny_model),
                              str(tmp_path / f"l{n}.zarr"), str(n)], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        peaks[n] = json.loads(res.stdout.splitlines()[-1])["peak"]
    # five times the data, the same working set (a few chunks in flight, reached well before 200
    # steps): what grows is bookkeeping (time coordinates, done flags, Zarr's and asyncio's
    # transient objects: ~0.3 MB measured), under 2 % of the extra field data read. A pipeline
    # that kept even one chunk in fifty would exceed it. (Peak RSS, the measure, is in
    # the benchmark: benchmarks/bench_pipeline.py.)
    extra_data = 800 * 4 * 33 * 64 * 4
    assert peaks[1000] - peaks[200] < 0.02 * extra_data, peaks


def test_default_time_chunk_is_32_steps_unless_the_fields_are_large(sample_zarr: Path,
                                                                     tiny_model: Path,
                                                                     tmp_path: Path) -> None:
    from types import SimpleNamespace

    from era5latent.pipeline import auto_time_chunk

    def tc(n_channels: int, grid: tuple[int, int], members: int = 1) -> int:
        fake = SimpleNamespace(sample_shape=(members,) if members > 1 else (), grid=grid)
        return auto_time_chunk(fake, tuple(SUBSET[:1]) * n_channels)  # type: ignore[arg-type]

    assert tc(5, (73, 144)) == 32
    assert tc(5, (721, 1440)) == 16  # 32 steps would hold 665 MB of fields
    assert tc(117, (721, 1440)) == 1  # every WB2 channel at full resolution: 486 MB a step
    assert tc(5, (721, 1440), members=10) == 2
    src, loaded = open_source(sample_zarr), load_checkpoint(str(tiny_model))
    res = encode(src, loaded, SUBSET, str(tmp_path / "l.zarr"), device="cpu")
    store = open_latent_store(res.path)
    assert store.time_chunk == 32 and store.codes("z").chunks[0] == 32


def _pipeline_of(src: Source, var: str) -> str:
    arr = src.ds[var].variable._data  # xarray's lazy wrappers around the zarr array
    while not hasattr(arr, "_array"):
        arr = arr.array
    return type(arr._array._async_array.codec_pipeline).__name__


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarrs_reads_what_zarr_python_reads(tmp_path: Path, zarr_format: int,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Sources are read with zarrs (Rust, no GIL) when it is installed; the values are the same,
    for WB2's Zarr v2 (Blosc) as for Zarr v3, and no global zarr setting is left changed."""
    pytest.importorskip("zarrs", reason="zarrs is not installed (it needs Python >= 3.11)")
    import zarr

    from .test_sources import wb2_dataset

    path = tmp_path / "wb2.zarr"
    ds = wb2_dataset(nt=6)
    if zarr_format == 2:  # as WeatherBench 2 publishes: Zarr v2, Blosc, consolidated
        from numcodecs import Blosc

        for v in ds.data_vars:
            ds[v].encoding["compressor"] = Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE)
    ds.to_zarr(path, zarr_format=zarr_format, consolidated=zarr_format == 2)
    chs = parse_subset("z500,z850,t2m")
    before = zarr.config.get("codec_pipeline.path")
    fast = open_source(str(path))
    assert zarr.config.get("codec_pipeline.path") == before
    monkeypatch.setenv("ERA5LATENT_ZARRS", "0")
    plain = open_source(str(path))
    assert _pipeline_of(fast, "z") == "ZarrsCodecPipeline"
    assert _pipeline_of(plain, "z") == "BatchedCodecPipeline"
    np.testing.assert_array_equal(fast.read(chs, 1, 5), plain.read(chs, 1, 5))


def test_decoded_fields_written_with_zarrs_read_back_with_zarr_python(
        sample_zarr: Path, tiny_model: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("zarrs", reason="zarrs is not installed (it needs Python >= 3.11)")
    import xarray as xr

    latent = tmp_path / "l.zarr"
    assert run_cli("encode", sample_zarr, "--model", tiny_model, "--subset", "z500,z850,t2m",
                   "--out", latent, "--device", "cpu").exit_code == 0
    outs = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("ERA5LATENT_ZARRS", flag)
        outs[flag] = tmp_path / f"dec-{flag}.zarr"
        res = run_cli("decode", latent, "--model", tiny_model, "--out", outs[flag],
                      "--device", "cpu")
        assert res.exit_code == 0, res.stderr
    monkeypatch.delenv("ERA5LATENT_ZARRS")
    a, b = xr.open_zarr(outs["1"]), xr.open_zarr(outs["0"])  # both read by zarr-python
    assert np.isfinite(a["geopotential"].sel(level=[500, 850]).values).all()
    xr.testing.assert_identical(a, b)


def test_fast_zarr_blocks_in_two_threads_leave_the_global_setting_alone(tmp_path: Path) -> None:
    """zarr.config.set saves and restores a global: B entering while A is inside, then A leaving
    first, would leave zarrs set for every array opened afterwards."""
    pytest.importorskip("zarrs", reason="zarrs is not installed (it needs Python >= 3.11)")
    import threading
    import time

    import zarr

    from era5latent.fsutil import fast_zarr

    before = zarr.config.get("codec_pipeline.path")
    a_inside, b_started, a_left = threading.Event(), threading.Event(), threading.Event()

    def a() -> None:
        with fast_zarr(str(tmp_path)):
            a_inside.set()
            b_started.wait()
            time.sleep(0.2)  # B tries to enter meanwhile
        a_left.set()

    def b() -> None:
        a_inside.wait()
        b_started.set()
        with fast_zarr(str(tmp_path)):
            a_left.wait()  # leave after A

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert zarr.config.get("codec_pipeline.path") == before


def _bench() -> object:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_pipeline.py"
    spec = importlib.util.spec_from_file_location("bench_pipeline", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_sets_each_pipeline_run_against_the_bound_runs_around_it() -> None:
    """The machine slows down 40% over four runs and the pipeline loses exactly 10% to its
    bound throughout: each ratio is 0.90, where a bound measured once, first, would say 0.67-0.86."""
    bench: Any = _bench()
    speed = [1.0, 1.1, 1.2, 1.3, 1.4]  # seconds of the compute bound, growing with the drift
    rounds = [{"read": 0.1 * s, "compute": s} for s in speed]
    for k in range(4):  # each pipeline run sits between compute runs k and k + 1
        rounds[k]["pipeline"] = (speed[k] + speed[k + 1]) / 2 / 0.9
    assert bench.efficiencies(rounds) == pytest.approx([0.9] * 4)
    # the read bound counts where it is the slower one
    slow_read = [{"read": 2.0, "compute": 1.0, "pipeline": 2.5}, {"read": 2.0, "compute": 1.0}]
    assert bench.efficiencies(slow_read) == pytest.approx([0.8])
    # the median's standard error shrinks with agreeing runs and ignores one spoiled run
    assert bench.median_se([0.9] * 6 + [0.5]) == 0.0
    assert bench.median_se([0.8, 0.9, 1.0]) > bench.median_se([0.8, 0.9, 1.0] * 4) > 0


def test_bench_source_is_stored_as_weatherbench2_stores_era5(sample_zarr: Path,
                                                             tmp_path: Path) -> None:
    """The benchmark's source: the sample's fields, unchanged, in Zarr v2 with Blosc LZ4 and byte
    shuffle (WeatherBench 2's compressor), which the encode reader reads from its chunk files."""
    from era5latent.io.sources import open_source
    from era5latent.io.variables import parse_subset

    bench: Any = _bench()
    out = tmp_path / "wb2.zarr"
    bench.as_wb2(str(sample_zarr), str(out))
    meta = json.loads((out / "geopotential" / ".zarray").read_text())
    assert meta["zarr_format"] == 2
    assert meta["compressor"] == {"id": "blosc", "cname": "lz4", "clevel": 5, "shuffle": 1,
                                  "blocksize": 0}
    chs = parse_subset("z500,t850,t2m")
    a, b = open_source(str(sample_zarr)), open_source(str(out))
    assert (b.times == a.times).all()
    np.testing.assert_array_equal(b.read(chs, 0, 24), a.read(chs, 0, 24))
    assert [r is not None for r in b._direct.values()] == [True] * 3  # each variable direct


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("ERA5LATENT_BENCH_TESTS"),
                    reason="about a minute: runs under 'make bench' (ERA5LATENT_BENCH_TESTS=1)")
def test_make_bench_script_prints_its_tables_and_the_two_efficiency_lines(tmp_path: Path) -> None:
    """`make bench` runs benchmarks/bench_pipeline.py; end to end on a small grid (--quick)."""
    import re

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_pipeline.py"
    res = subprocess.run([sys.executable, str(script), "--quick", "--presets", "tiny", "--grid",
                          "33x64", "--threads", "1", "--gpu", "off", "--dir", str(tmp_path),
                          "--rounds", "2", "--long-rounds", "2", "--max-rounds", "3"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.strip().splitlines()
    heading = "## device cpu, grid 33x64"  # once over the live rows, once over the summary
    assert lines.count(heading) == 2
    table = lines[len(lines) - lines[::-1].index(heading) + 2:]  # after its header and rule
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in table if ln.startswith("| ")]
    assert [(r[0], r[3]) for r in rows] == [("encode", "100"), ("decode", "100"),
                                            ("encode", "400"), ("decode", "400")]
    for r in rows:  # the median of 2-3 pipeline runs' ratios lies within their spread
        lo, hi = (float(v) for v in r[10].split(".."))
        assert 2 <= int(r[11]) <= 3
        assert lo - 0.005 <= float(r[8]) <= hi + 0.005
        assert 0 <= float(r[9]) <= 1.2533 * 1.4826 * (hi - lo + 0.01)  # its standard error (MAD
        # <= max - min, which the printed spread gives to 0.01)
        assert float(r[4]) > 0 and float(r[12]) > 0 and float(r[13]) > 0
    assert re.fullmatch(r"encode efficiency \d+\.\d\d", lines[-2])
    assert re.fullmatch(r"decode efficiency \d+\.\d\d", lines[-1])
    for verb, line in zip(("encode", "decode"), lines[-2:]):
        assert float(line.split()[-1]) == min(float(r[8]) for r in rows if r[0] == verb)
    assert not list(tmp_path.iterdir())  # its temporary files are gone
