"""Crash matrix at random points: encode and decode SIGKILLed at seeded random times.

Each kill time is drawn uniformly over the whole duration of an uninterrupted run (measured
first), from ``random.Random(SEED)``, and printed. After each kill, the same command is run
again: the encode must resume to a store byte-identical to an uninterrupted one, the decode must
have left no output and its re-run must equal an uninterrupted one. ``make fuzz`` runs
``ERA5LATENT_KILLS`` (20) kills per verb (encode, decode, one part of a `--parts 2` encode, and a
worker of a `--workers 2` encode); the default suite runs none (the named fault points of
tests/test_reliability.py cover the same code in ``make test``).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .test_reliability import encode_args, tree_bytes

KILLS = int(os.environ.get("ERA5LATENT_KILLS", "0"))
SEED = int(os.environ.get("ERA5LATENT_KILLS_SEED", "0"))

pytestmark = pytest.mark.skipif(KILLS == 0, reason="random kills run under 'make fuzz' "
                                                    "(ERA5LATENT_KILLS=N kills per verb)")


def _cli(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "era5latent.cli", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _run(args: list[str]) -> float:
    start = time.monotonic()
    p = _cli(args)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    return time.monotonic() - start


def _kill_at(args: list[str], at: float) -> int:
    p = _cli(args)
    try:
        p.wait(timeout=at)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
    p.communicate(timeout=600)
    return p.returncode


@pytest.mark.slow
def test_encode_killed_at_random_times_resumes_byte_identical(
        sample_zarr: Path, tiny_model: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    clean = tmp_path / "clean.zarr"
    full = _run(encode_args(sample_zarr, tiny_model, clean))
    want = tree_bytes(clean)
    r = random.Random(f"encode-{SEED}")
    log = []
    for k in range(KILLS):
        out = tmp_path / f"k{k}.zarr"
        at = r.uniform(0, full)
        code = _kill_at(encode_args(sample_zarr, tiny_model, out), at)
        _run(encode_args(sample_zarr, tiny_model, out))
        same = tree_bytes(out) == want
        log.append(f"kill {k}: at {at:.2f} s of {full:.2f} s, exit {code}, resumed "
                   f"{'byte-identical' if same else 'DIFFERENT'}")
        assert same, log[-1]
        assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or "lock" in p.name]
    with capsys.disabled():
        print("\n" + "\n".join(log))


@pytest.mark.slow
def test_decode_killed_at_random_times_leaves_nothing_and_reruns_identical(
        sample_zarr: Path, tiny_model: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "latent.zarr"
    _run(encode_args(sample_zarr, tiny_model, store))
    args = ["decode", str(store), "--model", str(tiny_model), "--device", "cpu", "--out"]
    ref = tmp_path / "ref.zarr"
    full = _run([*args, str(ref)])
    want = tree_bytes(ref)
    r = random.Random(f"decode-{SEED}")
    log = []
    for k in range(KILLS):
        out = tmp_path / f"r{k}.zarr"
        at = r.uniform(0, full)
        code = _kill_at([*args, str(out)], at)
        # killed after its output was renamed into place (complete) but before it exited: the
        # output is whole; otherwise there must be none
        assert code == 0 or not out.exists() or tree_bytes(out) == want, \
            f"kill at {at:.2f} s left a partial output"
        for p in tmp_path.iterdir():  # a killed run's temporary directory may remain beside it
            if p.name.startswith(f".{out.name}.tmp-"):
                import shutil

                shutil.rmtree(p)
        if code != 0 and not out.exists():
            _run([*args, str(out)])
        same = tree_bytes(out) == want
        log.append(f"kill {k}: at {at:.2f} s of {full:.2f} s, exit {code}, re-run "
                   f"{'byte-identical' if same else 'DIFFERENT'}")
        assert same, log[-1]
    with capsys.disabled():
        print("\n" + "\n".join(log))


def _finish(args: list[str]) -> None:
    p = _cli(args)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err


@pytest.mark.slow
def test_a_part_killed_at_random_times_resumes_and_finalizes_byte_identical(
        sample_zarr: Path, tiny_model: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    clean = tmp_path / "clean.zarr"
    _run(encode_args(sample_zarr, tiny_model, clean))
    want = tree_bytes(clean)
    probe = tmp_path / "probe.zarr"
    full = _run([*encode_args(sample_zarr, tiny_model, probe), "--parts", "1/2"])
    r = random.Random(f"parts-{SEED}")
    log = []
    for k in range(KILLS):
        out = tmp_path / f"p{k}.zarr"
        killed, other = ("1/2", "2/2") if k % 2 == 0 else ("2/2", "1/2")
        at = r.uniform(0, full)
        code = _kill_at([*encode_args(sample_zarr, tiny_model, out), "--parts", killed], at)
        _finish([*encode_args(sample_zarr, tiny_model, out), "--parts", other])
        _finish([*encode_args(sample_zarr, tiny_model, out), "--parts", killed])
        _finish(["finalize", str(out)])
        same = tree_bytes(out) == want
        log.append(f"part {killed} killed at {at:.2f} s of {full:.2f} s, exit {code}; resumed, "
                   f"finalized {'byte-identical' if same else 'DIFFERENT'}")
        assert same, log[-1]
        assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or "lock" in p.name]
    with capsys.disabled():
        print("\n" + "\n".join(log))


def _workers_of(pid: int) -> list[Any]:
    """The Dask worker processes a LocalCluster in process ``pid`` spawned (multiprocessing's
    spawn_main children; the resource tracker is left alone)."""
    import psutil

    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for c in kids:
        try:
            if "spawn_main" in " ".join(c.cmdline()):
                out.append(c)
        except psutil.Error:
            pass
    return out


@pytest.mark.slow
def test_a_worker_killed_at_random_times_loses_nothing(
        sample_zarr: Path, tiny_model: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    clean = tmp_path / "clean.zarr"
    _run(encode_args(sample_zarr, tiny_model, clean))
    want = tree_bytes(clean)
    cluster = ["--workers", "2", "--chunks-per-task", "1"]
    full = _run([*encode_args(sample_zarr, tiny_model, tmp_path / "probe.zarr"), *cluster])
    r = random.Random(f"workers-{SEED}")
    log = []
    for k in range(KILLS):
        out = tmp_path / f"w{k}.zarr"
        at = r.uniform(0, full)
        p = _cli([*encode_args(sample_zarr, tiny_model, out), *cluster])
        start = time.monotonic()
        victim, killed_at = None, 0.0
        while p.poll() is None and victim is None:  # the first worker alive at or after `at`
            if time.monotonic() - start >= at and (workers := _workers_of(p.pid)):
                victim = r.choice(workers)
                victim.kill()
                killed_at = time.monotonic() - start
            time.sleep(0.05)
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        same = tree_bytes(out) == want
        what = (f"worker {victim.pid} killed at {killed_at:.2f} s"
                if victim is not None else "run ended before the kill time")
        log.append(f"kill {k}: drawn {at:.2f} s of {full:.2f} s, {what}; exit {p.returncode}, "
                   f"{'byte-identical' if same else 'DIFFERENT'}")
        assert same, log[-1]
    with capsys.disabled():
        print("\n" + "\n".join(log))
