"""A new store is laid out in the background, under the writer lock, while the model encodes
the first time chunk (``pipeline.encoding``); what happens when laying it out fails or races."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import era5latent.pipeline.encoding as E
from era5latent.errors import StoreError
from era5latent.io.sources import open_source
from era5latent.io.variables import parse_subset
from era5latent.model.checkpoint import load_checkpoint
from era5latent.store.core import lock_path, open_latent_store

from .conftest import assert_clean_error, run_cli

SUBSET = parse_subset("z500,t2m")


def test_the_store_is_laid_out_in_the_background_under_the_lock_beside_the_first_chunk(
        sample_zarr: Path, tiny_model: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "new.zarr"
    seen: dict[str, Any] = {}
    real_lay_out, real_encode_chunk = E.EncodeJob.lay_out, E.EncodeJob.encode_chunk

    def lay_out(self: E.EncodeJob, *a: Any) -> None:
        seen["thread"] = threading.current_thread().name
        seen["locked"] = os.path.exists(lock_path(str(out)))
        real_lay_out(self, *a)

    def encode_chunk(self: E.EncodeJob, x: np.ndarray) -> E.EncodedChunk:
        seen.setdefault("store_at_first_compute", self.store)
        return real_encode_chunk(self, x)

    monkeypatch.setattr(E.EncodeJob, "lay_out", lay_out)
    monkeypatch.setattr(E.EncodeJob, "encode_chunk", encode_chunk)
    res = E.encode(open_source(str(sample_zarr)), load_checkpoint(str(tiny_model)), SUBSET,
                   str(out), batch_size=4, device="cpu", time_chunk=8)
    assert seen["thread"].startswith("era5latent-io")  # beside a CPU model: reads and writes
    assert seen["locked"]  # the lock beside the store was taken before the store existed
    assert seen["store_at_first_compute"] is None  # the first chunk did not wait for it
    assert res.chunks_written == 3 and not res.resumed
    assert open_latent_store(str(out)).complete
    assert not os.path.exists(lock_path(str(out)))
    assert run_cli("verify", out).exit_code == 0


def test_a_failed_lay_out_writes_nothing_after_it_and_leaves_nothing(
        sample_zarr: Path, tiny_model: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "new.zarr"
    writes: list[int] = []

    def create(*a: Any, **k: Any) -> None:
        raise StoreError(f"cannot create {out}: No space left on device; free space")

    monkeypatch.setattr(E, "create_latent_store", create)
    monkeypatch.setattr(E.EncodeJob, "write_chunk", lambda self, i, chunk: writes.append(i))
    with pytest.raises(StoreError, match="No space left"):
        E.encode(open_source(str(sample_zarr)), load_checkpoint(str(tiny_model)), SUBSET,
                 str(out), batch_size=4, device="cpu", time_chunk=8)
    assert writes == []  # no chunk write ran after the failed one
    assert not out.exists() and not os.path.exists(lock_path(str(out)))


def test_a_store_another_part_created_meanwhile_is_resumed_or_refused_by_its_chunking(
        sample_zarr: Path, tiny_model: Path, tmp_path: Path) -> None:
    """Between the look and the lay-out, a concurrent ``--parts`` writer creates the store:
    with our chunking we resume it; with another, nothing is written in ours."""
    src, loaded = open_source(str(sample_zarr)), load_checkpoint(str(tiny_model))
    for theirs, ok in ((8, True), (4, False)):
        out = str(tmp_path / f"race-{theirs}.zarr")
        job = E.prepare_encode(src, loaded, SUBSET, out, batch_size=4, device="cpu",
                               time_chunk=8, lay_out=False)
        assert job.store is None and not os.path.exists(out)
        E.encode(src, loaded, SUBSET, out, batch_size=4, device="cpu", time_chunk=theirs,
                 part=(1, 2))  # the other process
        before = open_latent_store(out).done().tolist()
        if ok:
            res = E._run(job, out, None)
            assert res.resumed and open_latent_store(out).complete
            assert run_cli("verify", out).exit_code == 0
        else:
            with pytest.raises(StoreError, match="4-step time chunks, not 8"):
                E._run(job, out, None)
            assert open_latent_store(out).done().tolist() == before  # nothing of ours landed
            assert open_latent_store(out).time_chunk == 4


def test_encode_into_a_missing_or_unwritable_directory_is_a_clean_error(
        sample_zarr: Path, tiny_model: Path, tmp_path: Path) -> None:
    args = ("encode", sample_zarr, "--model", tiny_model, "--subset", "z500", "--device", "cpu",
            "--out")
    assert_clean_error(run_cli(*args, tmp_path / "no" / "such" / "dir.zarr"), "does not exist")
    assert_clean_error(run_cli(*args, "/proc/era5latent.zarr"), "cannot")
