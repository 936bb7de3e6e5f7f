"""Checkpoints load onto the meta device: no random initialiser runs, weights come straight
from the file bit for bit, and shapes are checked against the header before anything is read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

import era5latent.model.wla as wla
from era5latent.errors import CheckpointError
from era5latent.model.checkpoint import (CheckpointMeta, file_sha256, load_checkpoint,
                                         save_checkpoint)
from era5latent.model.wla import WLA, preset_config
from era5latent.io.variables import parse_subset


def _save(tmp_path: Path, cfg_grid: tuple[int, int] = (17, 32)) -> tuple[Path, WLA, CheckpointMeta]:
    chs = parse_subset("z500,z850,t2m")
    cfg = preset_config("tiny", cfg_grid, ("z", "surface"))
    torch.manual_seed(3)
    model = WLA(cfg)
    meta = CheckpointMeta(cfg, {"z": chs[:2], "surface": chs[2:]},
                          {c.code: {"mean": 1.0, "std": 2.0} for c in chs},
                          {"shape": list(cfg_grid), "latitude": [90.0, -90.0],
                           "longitude": [0.0, 360.0 - 360.0 / cfg_grid[1]]})
    path = tmp_path / "m.safetensors"
    save_checkpoint(model, meta, str(path))
    return path, model, meta


def _count_initialisers(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    calls = {"trunc_normal_": 0, "_trunc_normal": 0, "_init_weights": 0}

    def counting(name: str, fn: Any) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            calls[name] += 1
            return fn(*a, **k)
        return wrapper

    monkeypatch.setattr(torch.nn.init, "trunc_normal_",
                        counting("trunc_normal_", torch.nn.init.trunc_normal_))
    monkeypatch.setattr(wla, "_trunc_normal", counting("_trunc_normal", wla._trunc_normal))
    monkeypatch.setattr(wla, "_init_weights", counting("_init_weights", wla._init_weights))
    return calls


def test_loading_runs_no_initialiser_and_gives_the_saved_weights_bit_for_bit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, model, _ = _save(tmp_path)
    calls = _count_initialisers(monkeypatch)
    WLA(model.config)  # the counters see a fresh model's initialisation ...
    assert min(calls.values()) > 0
    calls.update(dict.fromkeys(calls, 0))
    torch.manual_seed(0)
    rng = torch.get_rng_state()
    loaded = load_checkpoint(str(path))
    assert calls == dict.fromkeys(calls, 0)  # ... and none of loading
    assert torch.equal(torch.get_rng_state(), rng)  # not even torch's own constructors drew
    saved, got = model.state_dict(), loaded.model.state_dict()
    assert list(got) == list(saved)
    for k, v in saved.items():
        assert got[k].dtype == v.dtype and got[k].device.type == "cpu"
        assert torch.equal(got[k].view(torch.int32), v.view(torch.int32)), k
    assert all(p.requires_grad for p in loaded.model.parameters())
    assert not any(t.is_meta for t in (*loaded.model.parameters(), *loaded.model.buffers()))
    x = torch.randn(2, 2, 17, 32)
    assert torch.equal(loaded.model.encode("z", x, [500.0, 850.0]),
                       model.eval().encode("z", x, [500.0, 850.0]))


def test_changing_loaded_weights_leaves_the_file_alone(tmp_path: Path) -> None:
    path, _, _ = _save(tmp_path)
    before = file_sha256(str(path))
    loaded = load_checkpoint(str(path))
    with torch.no_grad():  # what an optimizer step does to a resumed model
        for p in loaded.model.parameters():
            p.add_(1.0)
    assert file_sha256(str(path)) == before
    assert load_checkpoint(str(path)).model.state_dict().keys() == loaded.model.state_dict().keys()


@pytest.mark.parametrize("change", ["removed", "added", "reshaped"])
def test_a_changed_tensor_is_named_in_a_one_line_error(tmp_path: Path, change: str) -> None:
    path, _, meta = _save(tmp_path)
    tensors = load_file(str(path))
    name = "autoencoders.z.encoder.pos"
    if change == "removed":
        del tensors[name]
    elif change == "added":
        name = "autoencoders.z.encoder.extra"
        tensors[name] = torch.zeros(3)
    else:
        tensors[name] = torch.zeros(1, 5, 64)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"era5latent": meta.to_json()})
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(str(bad))
    msg = str(err.value)
    assert name in msg and "\n" not in msg
    assert {"removed": "missing", "added": "unexpected", "reshaped": "(1, 5, 64)"}[change] in msg


def test_a_config_claiming_huge_sizes_fails_before_allocating(tmp_path: Path) -> None:
    path, _, meta = _save(tmp_path)
    header = json.loads(meta.to_json())
    # paper preset on a 100x grid: ~430 GB of position embedding alone, were it allocated
    header["config"] = preset_config("paper", (7210, 14400), ("z", "surface")).to_dict()
    bad = tmp_path / "huge.safetensors"
    save_file(load_file(str(path)), str(bad), metadata={"era5latent": json.dumps(header)})
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(str(bad))
    assert "missing" in str(err.value) and "\n" not in str(err.value)
    header["config"] = preset_config("tiny", (170, 320), ("z", "surface")).to_dict()
    save_file(load_file(str(path)), str(bad), metadata={"era5latent": json.dumps(header)})
    with pytest.raises(CheckpointError, match=r"shapes differ.*encoder\.pos \(1, 8, 64\) "
                                              r"\(config: \(1, 840, 64\)\)"):
        load_checkpoint(str(bad))


def test_weights_stored_in_another_float_type_load_as_the_model_s(tmp_path: Path) -> None:
    path, model, meta = _save(tmp_path)
    half = {k: v.to(torch.bfloat16) for k, v in load_file(str(path)).items()}
    p = tmp_path / "bf16.safetensors"
    save_file(half, str(p), metadata={"era5latent": meta.to_json()})
    got = load_checkpoint(str(p)).model.state_dict()
    for k, v in half.items():
        assert got[k].dtype == torch.float32 and torch.equal(got[k], v.float())
    ints = dict(half, **{"autoencoders.z.encoder.pos": torch.zeros(1, 8, 64, dtype=torch.int32)})
    save_file(ints, str(p), metadata={"era5latent": meta.to_json()})
    with pytest.raises(CheckpointError, match="dtype torch.int32, expected torch.float32"):
        load_checkpoint(str(p))


@pytest.mark.parametrize(("key", "value", "named"), [
    ("groups", {"z": {"a": 1}}, "groups['z']"),
    ("groups", {}, "'groups'"),
    ("groups", {"../x": ["z500"]}, "group name"),
    ("groups", {"z": ["z501x"]}, "groups['z']"),
    ("normalisation", {"z500": {"mean": 1.0, "std": 0.0}, "z850": {"mean": 1.0, "std": 2.0},
                       "t2m": {"mean": 1.0, "std": 2.0}}, "normalisation['z500']['std']"),
    ("normalisation", [], "'normalisation'"),
    ("grid", {"latitude": [90.0, -90.0]}, "'grid'"),
    ("grid", {"shape": [17, 32], "latitude": [900.0, -90.0]}, "'grid'"),
    ("grid", {"shape": [-1, True], "latitude": [90.0, -90.0], "longitude": [0.0, 1.0]}, "'grid'"),
    ("training", "x", "'training'"),
    ("config", None, "lacks 'config'"),
])
def test_checkpoint_metadata_is_checked_key_by_key(tmp_path: Path, key: str, value: Any,
                                                   named: str) -> None:
    path, _, meta = _save(tmp_path)
    header = json.loads(meta.to_json())
    if value is None:
        del header[key]
    else:
        header[key] = value
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(path)), str(bad), metadata={"era5latent": json.dumps(header)})
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(str(bad))
    assert named in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(("field", "value"), [
    ("meta_dim", 2 ** 63), ("patch_padding", 2 ** 63), ("mlp_ratio", 2 ** 63),
    ("grid", [17, 2 ** 63]), ("width", 2 ** 40), ("heads", 2 ** 30)])
def test_a_config_past_any_model_size_is_one_line(tmp_path: Path, field: str, value: Any) -> None:
    """Found by the fuzz harness: sizes past int64 failed inside torch (a C++ stack), even on
    the meta device."""
    path, _, meta = _save(tmp_path)
    header = json.loads(meta.to_json())
    header["config"][field] = value
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(path)), str(bad), metadata={"era5latent": json.dumps(header)})
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(str(bad))
    assert field in str(err.value) and "\n" not in str(err.value)
