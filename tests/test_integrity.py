"""Store integrity: checksums, verify, --allow-corrupt, the writer lock, a full disk."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from era5latent.store.core import lock_path

from .conftest import assert_clean_error, run_cli


@pytest.fixture
def store(tmp_path: Path, sample_zarr: Path, tiny_model: Path) -> Path:
    out = tmp_path / "latent.zarr"
    res = run_cli("encode", sample_zarr, "--model", tiny_model, "--subset", "z500,t2m", "--out",
                  out, "--time-chunk", "8", "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    return out


def _flip_a_byte(store: Path, array: str, chunk: int) -> None:
    files = sorted(p for p in (store / array / "c").rglob("*") if p.is_file()
                   and p.relative_to(store / array / "c").parts[0] == str(chunk))
    data = bytearray(files[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    files[0].write_bytes(bytes(data))


def test_verify_passes_then_names_a_corrupt_chunk(store: Path, tiny_model: Path) -> None:
    ok = run_cli("verify", store, "--model", tiny_model)
    assert ok.exit_code == 0, ok.stdout
    lines = ok.stdout.splitlines()
    assert all(ln.startswith("PASS") for ln in lines), ok.stdout
    checked = {ln.split()[2].rstrip(":") for ln in lines if ln.split()[1] == "array"}
    on_disk = {str(p.parent.relative_to(store)) for p in store.rglob("zarr.json")
               if json.loads(p.read_text())["node_type"] == "array"}
    assert checked == on_disk  # every array of the store, coordinates and flags included
    assert "_era5latent/build_done" in checked and "token_lat" in checked
    assert "crc32c" in next(ln for ln in lines if "array latitude" in ln)
    assert "documents match" in next(ln for ln in lines if "metadata" in ln)
    _flip_a_byte(store, "codes_z", 1)
    bad = run_cli("verify", store)
    assert bad.exit_code == 3
    line = next(ln for ln in bad.stdout.splitlines() if "codes_z" in ln)
    assert line.startswith("FAIL") and "chunk 1" in line


#: one chunk of each kind of array: (array, chunk, what decode --allow-corrupt can do about it)
ARRAYS = [("codes_z", 1, "fill"), ("_era5latent/sha256_surface", 2, "fill"),
          ("_era5latent/build_done", 0, "fill"), ("time", 0, "refuse"), ("latitude", 0, "refuse"),
          ("longitude", 0, "refuse")]


@pytest.mark.parametrize("name,chunk,allowed", ARRAYS)
def test_a_flipped_byte_in_any_array_is_caught(store: Path, tiny_model: Path, tmp_path: Path,
                                               name: str, chunk: int, allowed: str) -> None:
    _flip_a_byte(store, name, chunk)
    bad = run_cli("verify", store)
    assert bad.exit_code == 3, bad.stdout
    fails = [ln for ln in bad.stdout.splitlines() if ln.startswith("FAIL")]
    assert any(f"array {name}" in ln and f"chunk {chunk}" in ln for ln in fails), bad.stdout
    out = tmp_path / "r.zarr"
    res = run_cli("decode", store, "--model", tiny_model, "--out", out, "--device", "cpu")
    assert_clean_error(res, "corrupt")
    assert not out.exists()
    res = run_cli("decode", store, "--model", tiny_model, "--out", out, "--device", "cpu",
                  "--allow-corrupt")
    if allowed == "refuse":  # coordinates cannot be filled: decoding onto them would be wrong
        assert_clean_error(res, name, "corrupt")
        assert not out.exists()
        return
    assert res.exit_code == 0, res.stderr
    assert "filled with NaN" in res.stderr
    ds = xr.open_zarr(out)
    var = "geopotential" if name.endswith(("_z", "build_done")) else "2m_temperature"
    lost = np.isnan(ds[var].values).all(axis=tuple(range(1, ds[var].ndim)))
    assert lost.tolist() == [chunk * 8 <= t < chunk * 8 + 8 for t in range(24)]


def _edit(doc: Path, how: str) -> None:
    data = bytearray(doc.read_bytes())
    if how == "flip":  # a byte that is no longer UTF-8: the document no longer parses
        data[len(data) // 2] ^= 0xFF
    else:  # valid JSON saying something else: only the digest can tell
        text = data.decode()
        i = next(i for i, ch in enumerate(text) if ch.isdigit() and i > len(text) // 3)
        data = bytearray((text[:i] + str((int(text[i]) + 1) % 10) + text[i + 1:]).encode())
    doc.write_bytes(bytes(data))


@pytest.mark.parametrize("doc", ["zarr.json", "codes_z/zarr.json", "latitude/zarr.json",
                                 "_era5latent/build_done/zarr.json", "_era5latent/sha256_z/zarr.json",
                                 "_era5latent/zarr.json", "token_lon/zarr.json"])
@pytest.mark.parametrize("how", ["flip", "edit"])
def test_a_changed_byte_in_any_metadata_document_is_caught(store: Path, tiny_model: Path,
                                                           tmp_path: Path, doc: str,
                                                           how: str) -> None:
    _edit(store / doc, how)
    bad = run_cli("verify", store)
    assert bad.exit_code == 3, bad.stdout
    fails = [ln for ln in bad.stdout.splitlines() if ln.startswith("FAIL")]
    assert fails and any(doc in ln or (doc == "zarr.json" and "attribute" in ln)
                         for ln in fails), bad.stdout
    out = tmp_path / "r.zarr"
    res = run_cli("decode", store, "--model", tiny_model, "--out", out, "--device", "cpu")
    assert res.exit_code == 2 and "Traceback" not in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not out.exists()


def test_decode_refuses_corruption_or_fills_nan_and_says_where(store: Path, tiny_model: Path,
                                                               tmp_path: Path) -> None:
    _flip_a_byte(store, "codes_surface", 2)
    res = run_cli("decode", store, "--model", tiny_model, "--out", tmp_path / "r.zarr")
    assert_clean_error(res, "time chunk 2", "surface", "--allow-corrupt")
    assert not (tmp_path / "r.zarr").exists()
    res = run_cli("decode", store, "--model", tiny_model, "--out", tmp_path / "r.zarr",
                  "--allow-corrupt")
    assert res.exit_code == 0 and "2020-01-05T00:00:00..2020-01-06T18:00:00" in res.stderr
    t2m = xr.open_zarr(tmp_path / "r.zarr")["2m_temperature"].values
    assert np.isnan(t2m[16:24]).all() and np.isfinite(t2m[:16]).all()
    assert np.isfinite(xr.open_zarr(tmp_path / "r.zarr")["geopotential"].values).all()


def test_a_live_writer_lock_refuses_a_second_encode(store: Path, sample_zarr: Path,
                                                    tiny_model: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = Path(lock_path(str(store)))
        assert lock.parent == store.parent  # beside the store, where zarr never sees it
        lock.write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        args = ["encode", sample_zarr, "--model", tiny_model, "--subset", "z500,t2m", "--out",
                store, "--device", "cpu"]
        before = sorted(p.name for p in store.iterdir())
        assert_clean_error(run_cli(*args), f"pid {sleeper.pid}", "--break-lock")
        assert_clean_error(run_cli(*args, "--overwrite"), "being written")
        assert sorted(p.name for p in store.iterdir()) == before
    finally:
        sleeper.kill()
        sleeper.wait()
    # the writer is gone now: its lock is stale and the same command goes through
    assert run_cli(*args).exit_code == 0
    assert not lock.exists()


@contextmanager
def _small_disk(tmp_path: Path, size: int) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes (root only)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def _disk_use(path: Path) -> int:
    return sum(-(-p.stat().st_size // 4096) * 4096 for p in path.rglob("*") if p.is_file())


def test_full_disk_gives_a_clear_error_and_resumes(tmp_path: Path, sample_zarr: Path,
                                                   tiny_model: Path) -> None:
    args = ["encode", sample_zarr, "--model", tiny_model, "--subset", "z500,z850,t850,t2m",
            "--time-chunk", "2", "--device", "cpu"]
    ref = tmp_path / "ref.zarr"
    assert run_cli(*args, "--out", ref).exit_code == 0
    need = _disk_use(ref)
    size = need * 2 + (1 << 20)
    with _small_disk(tmp_path, size) as mnt:
        ballast = mnt / "ballast"
        out = mnt / "latent.zarr"
        ballast.write_bytes(b"\0" * (size - need // 2))  # room for about half the store
        res = run_cli(*args, "--out", out)
        assert_clean_error(res, "no space left", "re-run")
        done = json.loads(run_cli("info", out, "--json").stdout)["chunks_done"]
        assert 0 < done < 12
        ballast.unlink()
        res = run_cli(*args, "--out", out)
        assert res.exit_code == 0, res.stderr
        assert run_cli("verify", out).exit_code == 0
        for name in ("codes_z", "codes_surface"):  # the resumed store holds what a clean run does
            np.testing.assert_array_equal(xr.open_zarr(out)[name].values,
                                          xr.open_zarr(ref)[name].values)


@pytest.mark.parametrize("zarrs,ext", [("1", "zarr"), ("0", "zarr"), ("1", "nc")])
def test_decode_to_a_full_disk_is_a_clear_error_and_leaves_nothing(
        store: Path, tiny_model: Path, tmp_path: Path, zarrs: str, ext: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERA5LATENT_ZARRS", zarrs)  # zarrs reports I/O errors otherwise: same line
    args = ["decode", store, "--model", tiny_model, "--device", "cpu"]
    ref = tmp_path / f"ref.{ext}"
    assert run_cli(*args, "--out", ref).exit_code == 0
    need = _disk_use(ref) if ext == "zarr" else ref.stat().st_size
    size = need * 2 + (1 << 20)
    with _small_disk(tmp_path, size) as mnt:
        (mnt / "ballast").write_bytes(b"\0" * (size - need // 2))  # room for half the output
        if ext == "nc":  # HDF5 once crashed the process here (exit 139)
            res = run_cli(*args, "--out", mnt / "r.nc")
            assert_clean_error(res, "no space left", "re-run")
            assert sorted(p.name for p in mnt.iterdir()) == ["ballast"]
            return
        old = mnt / "old.zarr"
        old.mkdir()  # an earlier decoded output (recognised by its attributes: ours to replace)
        (old / "zarr.json").write_text(json.dumps({
            "zarr_format": 3, "node_type": "group",
            "attributes": {"era5latent": {"decoded_from": "l.zarr"}}}))
        (old / "keep").write_text("an earlier output")
        res = run_cli(*args, "--out", old, "--overwrite")
        assert_clean_error(res, "no space left", "re-run")
        assert sorted(p.name for p in mnt.iterdir()) == ["ballast", "old.zarr"]  # no temporary
        assert (old / "keep").read_text() == "an earlier output"  # not damaged


def as_version_1(store: Path) -> None:
    """Rewrite ``store`` as era5latent 0.1 wrote it (format version 1): no crc32c on any array,
    no metadata digest, every array at the root (``oldformats.as_version_2``)."""
    import warnings

    from .oldformats import as_version_2

    as_version_2(store)

    import zarr
    from zarr.codecs import ZstdCodec

    root = zarr.open_group(store, mode="r+")
    meta = dict(root.attrs["era5latent"])
    for name in sorted(root.array_keys()):
        a = root[name]
        vals, attrs, dims = a[...], dict(a.attrs), a.metadata.dimension_names
        chunks, fill = a.chunks, a.metadata.fill_value
        del root[name]
        b = root.create_array(name, shape=vals.shape, chunks=chunks, dtype=vals.dtype,
                              dimension_names=dims, fill_value=fill, attributes=attrs,
                              compressors=ZstdCodec(level=3) if name.startswith("codes_") else None)
        b[...] = vals
    meta["format_version"] = 1
    meta.pop("metadata_sha256", None)
    root.attrs["era5latent"] = meta
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(store))


def test_a_version_1_store_is_still_read_verified_and_decoded(store: Path, tiny_model: Path,
                                                              tmp_path: Path) -> None:
    ref = tmp_path / "ref.zarr"
    assert run_cli("decode", store, "--model", tiny_model, "--out", ref).exit_code == 0
    as_version_1(store)
    ok = run_cli("verify", store)
    assert ok.exit_code == 0, ok.stdout
    assert "version 1" in ok.stdout and "no crc32c (format version 1)" in ok.stdout
    assert "records no metadata digest" in ok.stdout
    out = tmp_path / "v1.zarr"
    assert run_cli("decode", store, "--model", tiny_model, "--out", out).exit_code == 0
    assert (xr.open_zarr(out)["geopotential"].values == xr.open_zarr(ref)["geopotential"].values
            ).all()
    _flip_a_byte(store, "codes_z", 1)  # the sha256 still catches damage to codes
    bad = run_cli("verify", store)
    assert bad.exit_code == 3 and "chunk 1" in bad.stdout


def test_an_unfinished_version_1_store_is_finished_in_its_own_format(
        tmp_path: Path, sample_zarr: Path, tiny_model: Path) -> None:
    out = tmp_path / "latent.zarr"
    args = ["encode", sample_zarr, "--model", tiny_model, "--subset", "z500,t2m", "--out", out,
            "--time-chunk", "8", "--device", "cpu"]
    assert run_cli(*args, "--parts", "1/3").exit_code == 0
    as_version_1(out)
    res = run_cli(*args)
    assert res.exit_code == 0, res.stderr
    ok = run_cli("verify", out)
    assert ok.exit_code == 0 and "version 1" in ok.stdout, ok.stdout


def test_a_held_lock_is_beside_the_store_and_opening_it_never_warns(store: Path) -> None:
    import warnings

    import zarr

    from era5latent.store.core import open_latent_store, writer_lock

    with writer_lock(str(store)):
        assert Path(lock_path(str(store))).is_file()
        assert not [p for p in store.iterdir() if "lock" in p.name]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            open_latent_store(str(store)).done()
            list(zarr.open_group(store, mode="r").members())
            xr.open_zarr(store).close()
    assert not Path(lock_path(str(store))).exists()


@pytest.mark.parametrize("how", ["drop one digest", "drop every digest"])
def test_removing_digests_does_not_hide_an_edit(store: Path, tiny_model: Path, tmp_path: Path,
                                                how: str) -> None:
    root = json.loads((store / "zarr.json").read_text())
    meta = root["attributes"]["era5latent"]
    if how == "drop one digest":
        del meta["metadata_sha256"]["latitude/zarr.json"]
    else:
        del meta["metadata_sha256"]
    (store / "zarr.json").write_text(json.dumps(root))
    _edit(store / "latitude" / "zarr.json", "edit")
    bad = run_cli("verify", store)
    assert bad.exit_code == 3, bad.stdout
    line = next(ln for ln in bad.stdout.splitlines() if ln.startswith("FAIL"))
    assert "metadata" in line and ("latitude/zarr.json" in line or "never sealed" in line)
    res = run_cli("decode", store, "--model", tiny_model, "--out", tmp_path / "r.zarr")
    assert_clean_error(res, "metadata")


def _a_chunk_file(store: Path, array: str) -> Path:
    return sorted(p for p in (store / array / "c").rglob("*") if p.is_file())[0]


def test_a_chunk_linked_out_of_the_store_is_refused_by_verify_and_every_reader(
        store: Path, tiny_model: Path, tmp_path: Path) -> None:
    from era5latent import open_latent
    from era5latent.errors import StoreError

    chunk = _a_chunk_file(store, "codes_z")
    outside = tmp_path / "elsewhere.bin"
    outside.write_bytes(chunk.read_bytes())  # the same bytes: only the link is wrong
    chunk.unlink()
    chunk.symlink_to(outside)
    rel = str(chunk.relative_to(store))
    bad = run_cli("verify", store)
    assert bad.exit_code == 3, bad.stdout
    fails = [ln for ln in bad.stdout.splitlines() if ln.startswith("FAIL")]
    assert len(fails) == 1 and rel in fails[0] and "symbolic link" in fails[0], bad.stdout
    assert_clean_error(run_cli("decode", store, "--model", tiny_model, "--out",
                               tmp_path / "r.zarr", "--device", "cpu"), rel, "symbolic link")
    assert not (tmp_path / "r.zarr").exists()
    assert_clean_error(run_cli("info", store), rel)
    with pytest.raises(StoreError, match="symbolic link"):
        open_latent(store)
    truth = tmp_path / "t.zarr"  # evaluate --latent refuses it before reading anything else
    assert_clean_error(run_cli("evaluate", truth, tmp_path / "rec.zarr", "--latent", store),
                       "symbolic link")
    assert outside.read_bytes() == chunk.read_bytes()  # nothing written through the link


def test_a_linked_directory_inside_the_store_is_refused(store: Path, tmp_path: Path) -> None:
    moved = tmp_path / "codes_away"
    shutil.move(store / "codes_z" / "c", moved)
    (store / "codes_z" / "c").symlink_to(moved, target_is_directory=True)
    bad = run_cli("verify", store)
    assert bad.exit_code == 3 and "codes_z/c (a symbolic link" in bad.stdout, bad.stdout
    assert_clean_error(run_cli("info", store), "codes_z/c")


def test_a_fifo_in_the_store_fails_verify_without_hanging(store: Path, tiny_model: Path,
                                                          tmp_path: Path) -> None:
    chunk = _a_chunk_file(store, "codes_surface")
    chunk.unlink()
    os.mkfifo(chunk)  # zarr opening it would block forever
    bad = run_cli("verify", store)
    assert bad.exit_code == 3, bad.stdout
    assert str(chunk.relative_to(store)) + " (a fifo)" in bad.stdout
    assert_clean_error(run_cli("decode", store, "--model", tiny_model, "--out",
                               tmp_path / "r.zarr", "--device", "cpu"), "a fifo")
