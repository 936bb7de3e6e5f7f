"""``era5latent cleanup PATH``: removes what killed runs left (made here by SIGKILLed runs at
fault points), says what, and never touches a live writer's lock or anything not a leftover."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from tests.conftest import cli_subprocess, run_cli


def _encode(sample_zarr: Path, model: Path, out: Path) -> list[str]:
    return ["encode", str(sample_zarr), "--model", str(model), "--subset", "z500,t850",
            "--out", str(out), "--time-chunk", "4", "--device", "cpu"]


def _beside(out: Path) -> list[str]:
    return sorted(n for n in os.listdir(out.parent) if n != out.name)


def test_cleanup_removes_what_killed_runs_left(sample_zarr: Path, tiny_model: Path,
                                               tmp_path: Path) -> None:
    out = tmp_path / "latent.zarr"
    decoded = tmp_path / "fields.zarr"
    # a store skeleton killed before its rename, then a writer killed holding its lock
    for point in ("store.created:1", "encode.chunk-done:1"):
        killed = cli_subprocess(*_encode(sample_zarr, tiny_model, out),
                                env={"ERA5LATENT_FAULT": point})
        assert killed.returncode == -9, killed.stderr
    left = _beside(out)
    assert any(n.startswith(".latent.zarr.tmp-") for n in left), left
    assert ".latent.zarr.era5latent.lock" in left
    # a half-written zarr chunk (zarr's own temporary name; no fault point lands mid-write)
    partial = out / "codes_z" / "c" / "9.0.0.0.0.partial"
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(b"\0" * 7)
    nested = out / "_era5latent" / "build_done" / "c" / "2.partial"  # inside a subgroup
    nested.write_bytes(b"\0")
    unrelated = tmp_path / ".other.zarr.tmp-keep"  # another output's: not this one's leftover
    unrelated.mkdir()

    dry = run_cli("cleanup", out, "--dry-run", "--min-age", "0", "--json")
    assert dry.exit_code == 0, dry.stderr
    listed = json.loads(dry.stdout)
    whys = {Path(i["path"]).name: i["why"] for i in listed["removed"]}
    assert "stale lock" in whys[".latent.zarr.era5latent.lock"]
    assert partial.name in whys and nested.name in whys and len(whys) == 4, whys
    # --dry-run removes nothing
    assert _beside(out) == sorted(left + [unrelated.name]) and partial.exists()
    assert nested.exists()

    # a fresh temporary may be a live run's: kept under the default --min-age
    res = run_cli("cleanup", out)
    assert res.exit_code == 0, res.stderr
    assert "removed" in res.stdout and "stale lock" in res.stdout
    assert "changed" in res.stdout  # the kept temporaries, and why
    res = run_cli("cleanup", out, "--min-age", "0")
    assert res.exit_code == 0, res.stderr
    assert _beside(out) == [".other.zarr.tmp-keep"] and not partial.exists()
    assert not nested.exists()
    assert run_cli("cleanup", out).stdout.strip().endswith("nothing left behind by killed runs")
    # the store the killed writer left resumes as before
    again = run_cli(*_encode(sample_zarr, tiny_model, out))
    assert again.exit_code == 0, again.stderr

    # decode killed mid-way leaves its temporary output; the next decode names 'cleanup'
    dec = ["decode", str(out), "--model", str(tiny_model), "--out", str(decoded),
           "--device", "cpu"]
    killed = cli_subprocess(*dec, env={"ERA5LATENT_FAULT": "decode.block-written:1"})
    assert killed.returncode == -9
    done = run_cli(*dec)
    assert done.exit_code == 0 and f"era5latent cleanup {decoded}" in done.stderr
    res = run_cli("cleanup", decoded, "--min-age", "0")
    assert "temporary of a killed run" in res.stdout
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".fields.zarr.tmp-")]


def test_cleanup_keeps_live_locks_and_what_they_guard(tmp_path: Path) -> None:
    out = tmp_path / "s.zarr"
    out.mkdir()
    (out / "c.partial").write_bytes(b"x")
    tmp = tmp_path / ".s.zarr.tmp-abc"
    tmp.mkdir()
    lock = tmp_path / ".s.zarr.era5latent.lock"  # this process: alive
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    other = tmp_path / ".s.zarr.era5latent.lock.part-1-of-2"  # another host: cannot tell
    other.write_text(json.dumps({"pid": 1, "host": "elsewhere.example"}))
    res = run_cli("cleanup", out, "--min-age", "0", "--json")
    doc = json.loads(res.stdout)
    assert doc["removed"] == []
    assert len(doc["kept"]) == 4 and all(lock.exists() for lock in (lock, other))
    assert tmp.exists() and (out / "c.partial").exists()
