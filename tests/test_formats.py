"""Checkpoint and latent-store formats: strict loading, versions, refusals (docs/format.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import zarr
from safetensors.torch import load_file, save_file

from era5latent.errors import CheckpointError, StoreError
from era5latent.model.checkpoint import (CheckpointMeta, load_checkpoint, read_meta,
                                         save_checkpoint)
from era5latent.model.wla import WLA, preset_config
from era5latent.store.core import open_latent_store
from era5latent.store.spec import FORMAT_VERSION
from era5latent.io.variables import parse_subset


def _tiny(tmp_path: Path) -> tuple[Path, WLA, CheckpointMeta]:
    chs = parse_subset("z500,z850,t2m")
    cfg = preset_config("tiny", (17, 32), ("z", "surface"))
    model = WLA(cfg)
    meta = CheckpointMeta(cfg, {"z": chs[:2], "surface": chs[2:]},
                          {c.code: {"mean": 1.0, "std": 2.0} for c in chs},
                          {"shape": [17, 32], "latitude": [90.0, -90.0], "longitude": [0.0, 348.75]})
    path = tmp_path / "m.safetensors"
    save_checkpoint(model, meta, str(path))
    return path, model, meta


def test_checkpoint_round_trip_is_exact(tmp_path: Path) -> None:
    path, model, meta = _tiny(tmp_path)
    loaded = load_checkpoint(str(path))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[k], v, rtol=0, atol=0)
    assert loaded.meta.config == meta.config and loaded.meta.groups == meta.groups
    assert loaded.meta.normalisation == meta.normalisation and len(loaded.sha256) == 64
    header = json.loads(read_meta(str(path)).to_json())
    assert header["format"] == "era5latent.wla" and header["format_version"] == 1


def test_strict_loading_names_missing_and_unexpected_keys(tmp_path: Path) -> None:
    path, _, meta = _tiny(tmp_path)
    tensors = load_file(str(path))
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    tensors["surprise.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"era5latent": meta.to_json()})
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(str(bad))
    assert dropped in str(err.value) and "surprise.weight" in str(err.value)


def test_checkpoint_of_newer_version_or_other_format(tmp_path: Path) -> None:
    path, _, meta = _tiny(tmp_path)
    tensors = load_file(str(path))
    header = json.loads(meta.to_json())
    for change, needle in (({"format_version": 99}, "upgrade"), ({"format": "other"}, "not an")):
        p = tmp_path / "x.safetensors"
        save_file(tensors, str(p), metadata={"era5latent": json.dumps({**header, **change})})
        with pytest.raises(CheckpointError, match=needle):
            load_checkpoint(str(p))


def test_no_pickle_in_the_package() -> None:
    root = Path(__file__).resolve().parents[1] / "era5latent"
    for py in root.rglob("*.py"):
        text = py.read_text()
        assert "import pickle" not in text and "torch.load(" not in text, py


def test_latent_store_of_newer_version_is_refused(tmp_path: Path) -> None:
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3)
    g.attrs["era5latent"] = {"format": "era5latent.latent", "format_version": FORMAT_VERSION + 1}
    with pytest.raises(StoreError, match="upgrade era5latent"):
        open_latent_store(str(tmp_path / "s.zarr"))
    h = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w", zarr_format=3)
    h.attrs["title"] = "some ERA5"
    with pytest.raises(StoreError, match="not an era5latent latent store"):
        open_latent_store(str(tmp_path / "plain.zarr"))


def test_checkpoints_get_the_mode_of_any_other_output(tiny_model: Path) -> None:
    """Written through a temporary file that safetensors recreates (0600); the finished
    checkpoint is 0666 less the umask, like every other output."""
    import os

    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(tiny_model).st_mode & 0o777 == 0o666 & ~mask
