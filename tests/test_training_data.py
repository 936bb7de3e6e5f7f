"""The streaming loader and the streaming statistics."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from era5latent.io.sources import Source, open_source
from era5latent.training.data import (BlockReader, Layout, Schedule, SourceRef, TrainStream,
                                      batches, source_time_chunk)
from era5latent.io.variables import parse_subset

CHANNELS = parse_subset("z500,t850,t2m")


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Zarr source with a sample dimension (3 ensemble members) and time chunks of 4."""
    import xarray as xr

    from era5latent.io.sample import write_sample

    root = tmp_path_factory.mktemp("loader")
    write_sample(str(root / "d.zarr"), grid=(17, 32), times=30, variables=("z", "t", "t2m"),
                 levels=(500, 850), seed=2)
    ds = xr.open_zarr(root / "d.zarr").load()
    ens = xr.concat([ds + k for k in range(3)], dim="number").assign_coords(number=[0, 1, 2])
    ens = ens.transpose("time", "number", ...)
    path = root / "ens.zarr"
    ens.chunk({"time": 4}).to_zarr(path, zarr_format=3, consolidated=False)
    return path


class CountingSource:
    """A Source that counts reads per time block."""

    def __init__(self, src: Source, block: int) -> None:
        self.src, self.block, self.reads = src, block, {}

    def __getattr__(self, name: str) -> object:
        return getattr(self.src, name)

    def read(self, channels: object, a: int, b: int) -> np.ndarray:
        self.reads[a // self.block] = self.reads.get(a // self.block, 0) + 1
        return self.src.read(channels, a, b)  # type: ignore[arg-type]


def _stream(src: object, layout: Layout, batch: int, rank: int, world: int, runs: int,
            window: int = 24, cache: int = 1 << 30) -> tuple[TrainStream, Schedule]:
    sched = Schedule(layout, seed=7, global_batch=batch, window_samples=window)
    mean, std = np.zeros(len(CHANNELS)), np.ones(len(CHANNELS))
    reader = BlockReader(SourceRef(src), CHANNELS, layout, mean, std, cache)  # type: ignore[arg-type]
    return TrainStream(sched, reader, rank, world, 0, runs), sched


def test_time_chunk_of_the_source_is_the_block(ensemble: Path) -> None:
    assert source_time_chunk(open_source(ensemble)) == 4


@pytest.mark.parametrize("world,workers", [(1, 0), (3, 0), (2, 2)])
def test_every_sample_once_per_epoch_across_ranks_and_workers(ensemble: Path, world: int,
                                                             workers: int) -> None:
    src = open_source(ensemble)
    layout = Layout(0, 30, 3, 4)  # 90 samples, blocks of 12 samples
    batch = 6
    n = layout.n_samples
    steps = 2 * n // batch  # two epochs
    seen = []
    for rank in range(world):
        stream, sched = _stream(src, layout, batch, rank, world,
                                runs=-(-steps // Schedule(layout, 7, batch, 24).run_batches))
        ids = [i.numpy() for _, i in batches(stream, workers, False)][:steps]
        seen.append(np.stack(ids))  # (steps, batch / world)
    per_step = np.concatenate(seen, axis=1)  # the global batches, rank slices side by side
    for epoch in range(2):
        visited = per_step[epoch * n // batch:(epoch + 1) * n // batch].ravel()
        assert sorted(visited.tolist()) == list(range(n))
    # the same global batches whatever the world size (what makes --resume world-size free)
    _, sched = _stream(src, layout, batch, 0, 1, 1)
    expected = np.stack([sched.positions(j * batch, (j + 1) * batch) for j in range(steps)])
    np.testing.assert_array_equal(per_step, expected)


def test_samples_are_the_source_fields_normalised(ensemble: Path) -> None:
    src = open_source(ensemble)
    layout = Layout(2, 20, 3, 4)
    stream, _ = _stream(src, layout, 4, 0, 1, 2)
    stream.reader.mean = np.array([1.0, 2.0, 3.0], np.float32).reshape(-1, 1, 1)
    stream.reader.inv_std = np.array([0.5, 0.25, 2.0], np.float32).reshape(-1, 1, 1)
    for x, ids in batches(stream, 0, False):
        for k, i in enumerate(ids.tolist()):
            t, m = divmod(i, 3)
            truth = src.read(CHANNELS, 2 + t, 3 + t)[0, m]
            want = (truth - np.array([1.0, 2.0, 3.0]).reshape(-1, 1, 1)) * np.array(
                [0.5, 0.25, 2.0]).reshape(-1, 1, 1)
            np.testing.assert_allclose(x[k].numpy(), want, rtol=1e-6, atol=1e-4)
        break


def test_each_chunk_read_a_bounded_number_of_times(ensemble: Path) -> None:
    src = CountingSource(open_source(ensemble), 4)
    layout = Layout(0, 30, 3, 4)
    n_batches = 3 * layout.n_samples // 6  # three epochs
    stream, sched = _stream(src, layout, 6, 0, 1, -(-n_batches // 4), window=24,
                            cache=12 * 3 * 17 * 32 * 4 * 2)  # room for two blocks only
    for _ in batches(stream, 0, False):
        pass
    # each of the 8 blocks: read by its window's run and by runs straddling into the window
    # (a run spans at most two windows, or two epochs): at most 3 times per epoch, ~2 on average
    assert set(src.reads) == set(range(layout.n_blocks))
    assert max(src.reads.values()) <= 3 * 3, src.reads
    assert sum(src.reads.values()) <= 2 * 3 * layout.n_blocks, src.reads
    # with room for everything, the same code is the in-memory path: each block read once
    src2 = CountingSource(open_source(ensemble), 4)
    stream, _ = _stream(src2, layout, 6, 0, 1, -(-n_batches // 4))
    for _ in batches(stream, 0, False):
        pass
    assert set(src2.reads.values()) == {1}


def test_peak_memory_does_not_grow_with_the_time_range(tmp_path: Path) -> None:
    from era5latent.io.sample import write_sample

    peaks = []
    for times in (16, 64):
        path = tmp_path / f"d{times}.zarr"
        write_sample(str(path), grid=(33, 64), times=times, variables=("z", "t", "t2m"),
                     levels=(500, 850), seed=1)
        src = open_source(path)
        block = source_time_chunk(src)
        layout = Layout(0, times, 1, block)
        sample_bytes = len(CHANNELS) * 33 * 64 * 4
        stream, _ = _stream(src, layout, 4, 0, 1, runs=8, window=8,
                            cache=2 * block * sample_bytes)
        tracemalloc.start()
        for _ in batches(stream, 0, False):
            pass
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.25 * peaks[0], peaks


def test_streaming_statistics_equal_float64_numpy(tmp_path: Path) -> None:
    from era5latent.io.sample import write_sample
    from era5latent.training.stats import compute_stats

    path = tmp_path / "s.zarr"
    write_sample(str(path), grid=(33, 64), times=40, variables=("z", "t", "t2m"),
                 levels=(500, 850), seed=3)
    src = open_source(path)
    stats, fields = compute_stats(src, CHANNELS, 3, 37, block=8)  # five chunks, partial last
    x = src.read(CHANNELS, 3, 37).astype(np.float64)  # the reference: all of it in float64
    for k, c in enumerate(CHANNELS):
        v = x[:, k]
        assert stats[c.code]["mean"] == pytest.approx(v.mean(), rel=1e-9)
        assert stats[c.code]["std"] == pytest.approx(v.std(), rel=1e-9)
        if c.code in fields:  # normalised by its mean field: the field and its anomalies' std
            np.testing.assert_allclose(fields[c.code], v.mean(axis=0), rtol=1e-6)
            anomaly = v - v.mean(axis=0)
            assert stats[c.code]["anomaly_std"] == pytest.approx(anomaly.std(), rel=1e-6)
    assert fields  # z and t are mostly their mean field on a global grid


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A static HTTP server on loopback serving ``tmp_path`` (what a public bucket looks like
    to fsspec: plain GETs, no listing)."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a, **k: None  # type: ignore[assignment,method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_train_straight_from_a_url(http_root: tuple[Path, str]) -> None:
    from era5latent.model.checkpoint import read_meta
    from era5latent.io.sample import write_sample
    from tests.conftest import run_cli

    root, url = http_root
    write_sample(str(root / "d.zarr"), grid=(33, 64), times=12, variables=("z", "t2m"),
                 levels=(500,), seed=1)
    out = root / "m.safetensors"
    # two loader workers: each reopens the URL in its own process
    res = run_cli("train", f"{url}/d.zarr", "--subset", "z500,t2m", "--out", out, "--steps", "2",
                  "--batch-size", "2", "--device", "cpu", "--workers", "2")
    assert res.exit_code == 0, res.stderr
    assert read_meta(str(out)).training["data"] == f"{url}/d.zarr"


def test_a_worker_error_is_the_library_error_not_a_traceback(tmp_path: Path) -> None:
    import xarray as xr

    from era5latent.errors import DataValueError
    from era5latent.io.sample import write_sample

    write_sample(str(tmp_path / "d.zarr"), grid=(17, 32), times=8, variables=("z", "t", "t2m"),
                 levels=(500, 850), seed=2)
    ds = xr.open_zarr(tmp_path / "d.zarr").load()
    # NaN is a masked field's missing value (the loop fills it); an infinity is an error
    ds["2m_temperature"][5, 3, 4] = np.inf  # WeatherBench 2's name for t2m
    ds.to_zarr(tmp_path / "inf.zarr", zarr_format=3, consolidated=False)
    stream, _ = _stream(open_source(tmp_path / "inf.zarr"), Layout(0, 8, 1, 8), 2, 0, 1, 4)
    with pytest.raises(DataValueError) as err:
        for _ in batches(stream, 1, False):
            pass
    assert "\n" not in str(err.value) and "infinite" in str(err.value)
