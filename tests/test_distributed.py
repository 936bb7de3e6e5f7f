"""Scale-out: a Dask cluster, --parts runs, object storage (a real S3 server on loopback).

Every test compares store trees file by file with the single-process path (``tree_bytes``).
One 2-worker LocalCluster (processes, one thread each, loopback) serves the module; a test that
kills a worker leaves it restarted by its nanny.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

from .conftest import assert_clean_error, cli_subprocess, run_cli
from .test_cli import encode_args, tree_bytes

distributed = pytest.importorskip("distributed")

SUBSET = "z500,z850,t850,t2m"  # encode_args' subset; 24 times in time chunks of 4 -> 6 chunks


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Dask workers run torch on one thread; float outputs match a run with the same count."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR) as lc, \
            Client(lc) as client:
        yield client


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, sample_zarr: Path,
              tiny_model: Path) -> Path:
    """The single-process encode (what every other path must reproduce byte for byte)."""
    out = tmp_path_factory.mktemp("ref") / "latent.zarr"
    res = run_cli(*encode_args(sample_zarr, tiny_model, out))
    assert res.exit_code == 0, res.stderr
    return out


def _set_worker_env(client: Any, **env: str | None) -> None:
    def apply() -> None:
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    client.run(apply)


# -- the cluster ---------------------------------------------------------------------------------

def test_two_workers_encode_byte_identical_and_load_the_model_once(
        cluster: Any, reference: Path, sample_zarr: Path, tiny_model: Path,
        tmp_path: Path) -> None:
    from era5latent.pipeline.distributed import worker_stats

    out = tmp_path / "latent.zarr"
    addr = cluster.scheduler.address
    res = run_cli(*encode_args(sample_zarr, tiny_model, out), "--scheduler", addr,
                  "--chunks-per-task", "1", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["chunks_written"] == 6
    assert tree_bytes(out) == tree_bytes(reference)
    stats = cluster.run(worker_stats)
    assert sum(s["tasks"] for s in stats.values()) == 6  # 6 tasks of one chunk ...
    assert all(s["models_loaded"] <= 1 for s in stats.values())  # ... one model load per worker
    assert sum(s["models_loaded"] for s in stats.values()) >= 1


def test_a_killed_worker_has_its_task_retried_and_output_is_identical(
        cluster: Any, reference: Path, sample_zarr: Path, tiny_model: Path,
        tmp_path: Path) -> None:
    from era5latent.pipeline.distributed import encode_distributed
    from era5latent.model.checkpoint import load_checkpoint
    from era5latent.io.sources import open_source
    from era5latent.io.variables import parse_subset

    markers = tmp_path / "markers"
    markers.mkdir()
    out = tmp_path / "latent.zarr"
    # tasks [0 1 2] and [3 4 5]: the worker running chunk 4 SIGKILLs itself once, after chunk 3
    _set_worker_env(cluster, ERA5LATENT_WORKER_FAULT=f"4:{markers}")
    try:
        res = encode_distributed(open_source(str(sample_zarr)),
                                 load_checkpoint(str(tiny_model)), parse_subset(SUBSET),
                                 str(out), device="cpu", time_chunk=4, client=cluster,
                                 chunks_per_task=3)
    finally:
        _set_worker_env(cluster, ERA5LATENT_WORKER_FAULT=None)  # (the restarted one has none)
    assert (markers / "killed-at-chunk-4").exists()  # the kill did happen
    assert res.chunks_written == 6
    assert tree_bytes(out) == tree_bytes(reference)
    cluster.wait_for_workers(2, timeout=60)  # the nanny restarted it


def test_decode_on_the_cluster_is_byte_identical(cluster: Any, reference: Path,
                                                 tiny_model: Path, tmp_path: Path) -> None:
    addr = cluster.scheduler.address
    with torch_threads(1):
        for out in ("single.zarr", "single.nc"):
            extra = ("--subset", "t850,t2m") if out.endswith(".nc") else ()
            res = run_cli("decode", reference, "--model", tiny_model, "--out", tmp_path / out,
                          "--device", "cpu", *extra)
            assert res.exit_code == 0, res.stderr
    res = run_cli("decode", reference, "--model", tiny_model, "--out", tmp_path / "dask.zarr",
                  "--device", "cpu", "--scheduler", addr, "--chunks-per-task", "2")
    assert res.exit_code == 0, res.stderr
    assert tree_bytes(tmp_path / "dask.zarr") == tree_bytes(tmp_path / "single.zarr")
    assert not list(tmp_path.glob(".dask.zarr.tmp-*"))  # renamed once, nothing left behind
    res = run_cli("decode", reference, "--model", tiny_model, "--out", tmp_path / "dask.nc",
                  "--device", "cpu", "--scheduler", addr, "--subset", "t850,t2m")
    assert res.exit_code == 0, res.stderr
    a, b = xr.open_dataset(tmp_path / "single.nc"), xr.open_dataset(tmp_path / "dask.nc")
    for v in a.data_vars:
        np.testing.assert_array_equal(a[v].values, b[v].values)


@pytest.mark.slow
def test_local_cluster_from_the_cli(reference: Path, sample_zarr: Path, tiny_model: Path,
                                    tmp_path: Path) -> None:
    """``--workers 2``: a LocalCluster started for the run (and torch threads = cores / 2)."""
    out = tmp_path / "latent.zarr"
    res = run_cli(*encode_args(sample_zarr, tiny_model, out), "--workers", "2")
    assert res.exit_code == 0, res.stderr
    assert tree_bytes(out) == tree_bytes(reference)


def test_cluster_errors_are_one_line(cluster: Any, reference: Path, sample_zarr: Path,
                                     tiny_model: Path, tmp_path: Path) -> None:
    addr = cluster.scheduler.address
    args = encode_args(sample_zarr, tiny_model, tmp_path / "x.zarr")
    assert_clean_error(run_cli(*args, "--scheduler", addr, "--workers", "2"), "give one")
    assert not (tmp_path / "x.zarr").exists()
    # a worker's library error comes back as the same one-line error
    res = run_cli("decode", reference, "--model", tiny_model, "--out", tmp_path / "r.zarr",
                  "--scheduler", addr, "--device", "cuda:7")
    assert_clean_error(res, "--device cuda:7")
    assert not (tmp_path / "r.zarr").exists() and not list(tmp_path.glob(".r.zarr.tmp-*"))


# -- parts ---------------------------------------------------------------------------------------

def test_parts_run_concurrently_then_finalize(reference: Path, sample_zarr: Path,
                                              tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "latent.zarr"
    args = encode_args(sample_zarr, tiny_model, out)
    with ThreadPoolExecutor(2) as pool:  # two processes create the same store at once
        runs = list(pool.map(lambda p: cli_subprocess(*args, "--parts", p), ["2/2", "1/2"]))
    for r in runs:
        assert r.returncode == 0, r.stderr
    info = json.loads(run_cli("info", out, "--json").stdout)
    assert not info["complete"] and info["chunks_done"] == 6
    assert info["parts"] == {"count": 2, "done": [1, 2], "missing": []}
    assert not list(out.glob("era5latent.lock*"))
    res = run_cli("finalize", out)
    assert res.exit_code == 0, res.stderr
    assert tree_bytes(out) == tree_bytes(reference)
    assert "already complete" in run_cli("finalize", out).stdout


def test_finalize_names_missing_parts_and_encode_finishes_the_rest(
        reference: Path, sample_zarr: Path, tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "latent.zarr"
    args = encode_args(sample_zarr, tiny_model, out)
    res = run_cli(*args, "--parts", "2/3", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["chunks_total"] == 2  # chunks 2 and 3 of 0-5
    info = json.loads(run_cli("info", out, "--json").stdout)
    assert info["parts"] == {"count": 3, "done": [2], "missing": [1, 3]}
    assert "parts: 1 of 3 done (missing 1/3, 3/3)" in run_cli("info", out).stdout
    assert json.loads(run_cli("info", out, "--json", "--parts", "6").stdout)["parts"][
        "done"] == [3, 4]
    assert_clean_error(run_cli("finalize", out), "parts 1/3, 3/3", "chunks 0-1, 4-5")
    res = run_cli(*args)  # without --parts: does what is left and marks the store complete
    assert res.exit_code == 0, res.stderr
    assert tree_bytes(out) == tree_bytes(reference)


def test_part_locks_exclude_whole_store_writers_not_other_parts(
        reference: Path, sample_zarr: Path, tiny_model: Path, tmp_path: Path) -> None:
    from era5latent.store.core import lock_path

    store = tmp_path / "latent.zarr"
    args = encode_args(sample_zarr, tiny_model, store)
    assert run_cli(*args, "--parts", "1/2").exit_code == 0
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # part 1/2 is "being written" by a live process
        Path(lock_path(str(store), (1, 2))).write_text(
            json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        assert_clean_error(run_cli(*args), "part-1-of-2", f"pid {sleeper.pid}")
        assert_clean_error(run_cli("finalize", store), "being written")
        assert_clean_error(run_cli(*args, "--parts", "1/2"), "being written")
        assert_clean_error(run_cli(*args, "--parts", "1/3"), "being written")
        assert_clean_error(run_cli(*args, "--parts", "2/2", "--overwrite"), "--overwrite")
        assert run_cli(*args, "--parts", "2/2").exit_code == 0  # another part: welcome
        assert Path(lock_path(str(store), (1, 2))).exists()  # and the live part's lock is left alone
    finally:
        sleeper.kill()
        sleeper.wait()
    assert run_cli("finalize", store).exit_code == 0  # that writer is gone: its lock is stale
    assert not list(tmp_path.glob("*era5latent.lock*")) and not list(store.glob("*lock*"))
    assert tree_bytes(store) == tree_bytes(reference)


def test_a_store_created_meanwhile_by_another_process_is_resumed(
        reference: Path, sample_zarr: Path, tiny_model: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from era5latent import pipeline
    from era5latent.errors import StoreExistsError
    from era5latent.fsutil import atomic_dir

    # the rename onto a directory another process made meanwhile fails; theirs is kept
    target = tmp_path / "d"
    with pytest.raises(StoreExistsError):
        with atomic_dir(str(target), overwrite=False) as tmp:
            Path(tmp, "mine").write_text("mine")
            target.mkdir()
            (target / "theirs").write_text("theirs")
    assert [p.name for p in target.iterdir()] == ["theirs"]
    assert not list(tmp_path.glob(".d.tmp-*"))
    # prepare_encode that loses the creation race opens the winner's store and resumes it
    out = tmp_path / "latent.zarr"
    assert run_cli(*encode_args(sample_zarr, tiny_model, out, "--parts", "1/2")).exit_code == 0
    monkeypatch.setattr(pipeline.encoding, "exists", lambda p: False)  # "not there yet" when it looked
    monkeypatch.setattr(pipeline.encoding, "is_store", lambda p: False)
    res = run_cli(*encode_args(sample_zarr, tiny_model, out, "--parts", "2/2", "--json"))
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["resumed"]
    monkeypatch.undo()
    assert run_cli("finalize", out).exit_code == 0
    assert tree_bytes(out) == tree_bytes(reference)


def test_bad_parts_are_refused(sample_zarr: Path, tiny_model: Path, tmp_path: Path) -> None:
    for bad in ("0/2", "3/2", "2", "a/b"):
        res = run_cli(*encode_args(sample_zarr, tiny_model, tmp_path / "x.zarr", "--parts", bad))
        assert_clean_error(res, "--parts", "I/N")
    assert not (tmp_path / "x.zarr").exists()


# -- object storage: a real S3 server (moto) on loopback -----------------------------------------

@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    """One server for the module (moto keeps its buckets process-wide, s3fs caches clients)."""
    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    import fsspec

    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        fsspec.filesystem("s3", skip_instance_cache=True).mkdir("era5")
        try:
            yield env
        finally:
            server.stop()


def _s3_tree(url: str) -> dict[str, bytes]:
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    root = url.removeprefix("s3://").rstrip("/")
    return {k[len(root) + 1:]: fs.cat_file(k) for k in sorted(fs.find(root))}


def test_s3_round_trip(s3: dict[str, str], cluster: Any, reference: Path, sample_zarr: Path,
                       tiny_model: Path, tmp_path: Path) -> None:
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.put(str(sample_zarr), "era5/sample.zarr", recursive=True)
    src, url = "s3://era5/sample.zarr", "s3://era5/latent.zarr"
    _set_worker_env(cluster, **s3)  # workers read and write S3 themselves
    try:
        res = run_cli(*encode_args(src, tiny_model, url), "--scheduler",  # type: ignore[arg-type]
                      cluster.scheduler.address)
        assert res.exit_code == 0, res.stderr
    finally:
        _set_worker_env(cluster, **{k: None for k in s3})
    remote, local = _s3_tree(url), tree_bytes(reference)
    assert set(remote) == set(local)
    assert not any("lock" in k for k in remote)  # no lock files on object storage
    for key in local:  # every chunk and array byte-identical; the root records another source
        if key != "zarr.json":
            assert remote[key] == local[key], key
    attrs = json.loads(remote["zarr.json"])["attributes"]["era5latent"]
    assert attrs["complete"] and attrs["source"]["path"] == src
    info = json.loads(run_cli("info", url, "--json").stdout)
    assert info["complete"] and info["bytes_on_disk"] > 0
    # resume on S3: the same command finds it complete and writes nothing
    assert run_cli(*encode_args(src, tiny_model, url)).exit_code == 0  # type: ignore[arg-type]
    assert _s3_tree(url) == remote
    with torch_threads(1):
        for store, out in ((url, "from-s3.zarr"), (str(reference), "from-local.zarr")):
            res = run_cli("decode", store, "--model", tiny_model, "--out", tmp_path / out,
                          "--device", "cpu")
            assert res.exit_code == 0, res.stderr
    a, b = xr.open_zarr(tmp_path / "from-s3.zarr"), xr.open_zarr(tmp_path / "from-local.zarr")
    assert a.attrs["era5latent"]["decoded_from"] == url
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
    # decoded outputs are local files (no atomic rename on object storage): said plainly
    res = run_cli("decode", url, "--model", tiny_model, "--out", "s3://era5/recon.zarr",
                  "--device", "cpu")
    assert_clean_error(res, "local path")


def test_s3_parts_created_concurrently_in_place(s3: dict[str, str], reference: Path,
                                                sample_zarr: Path, tiny_model: Path) -> None:
    """No rename on S3: two parts lay the store out in place at once, then fill their shares."""
    url = "s3://era5/parts.zarr"
    args = encode_args(sample_zarr, tiny_model, url)  # type: ignore[arg-type]
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda p: cli_subprocess(*args, "--parts", p, env=s3), ["1/2", "2/2"]))
    for r in runs:
        assert r.returncode == 0, r.stderr
    info = json.loads(run_cli("info", url, "--json").stdout)
    assert info["parts"]["done"] == [1, 2] and not info["complete"]
    assert run_cli("finalize", url).exit_code == 0
    ok = run_cli("verify", url)  # the digests cover the subgroups' documents on S3 too
    assert ok.exit_code == 0 and "_era5latent/build_done/zarr.json" in json.dumps(
        json.loads(_s3_tree(url)["zarr.json"])["attributes"]["era5latent"]["metadata_sha256"]
    ), ok.stdout
    remote, local = _s3_tree(url), tree_bytes(reference)
    assert set(remote) == set(local)
    assert all(remote[k] == local[k] for k in local if k != "zarr.json")
