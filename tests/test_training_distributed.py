"""Data-parallel training on torch.distributed (gloo on CPU): two ranks equal one process, and a
killed run resumes under another world size to the state of an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import TRAIN_DATA_SUBSET as SUBSET
from tests.conftest import assert_clean_error, cli_subprocess, run_cli


@pytest.fixture
def data(train_zarr: Path) -> Path:
    return train_zarr  # the shared training source (conftest)


def _args(data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return ["train", str(data), "--subset", SUBSET, "--out", str(out), "--steps", str(steps),
            "--batch-size", "4", "--device", "cpu", "--checkpoint-every", "3", "--val-every", "3",
            *extra]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _assert_same(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=2e-5, msg=k)


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process(data: Path, tmp_path: Path) -> None:
    # with the adversarial term from step 2 (the last step) and EMA: the adaptive weight and the
    # codebook entropy are reduced across ranks, so they too must not depend on the world size
    extra = ("--adversarial-weight", "0.5", "--disc-start", "2", "--ema", "0.9")
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    assert run_cli(*_args(data, one, 3, *extra)).exit_code == 0
    res = run_cli(*_args(data, two, 3, "--nproc", "2", *extra))
    assert res.exit_code == 0, res.stderr
    _assert_same(one, two)  # the EMA weights
    # the state sidecar: raw weights, every optimizer moment (so every gradient), discriminators
    sa = load_file(str(one) + ".state.safetensors")
    sb = load_file(str(two) + ".state.safetensors")
    assert sa.keys() == sb.keys() and any(k.startswith("disc.") for k in sa)
    for k in sa:
        # Adam's first step moves a weight by ~lr * sign(grad): a discriminator bias whose
        # gradient is ~1e-9 (Adam's eps) can flip either way, so its weights get lr's tolerance;
        # its moments (the gradients themselves) are held as tight as everything else
        atol = 2.5e-3 if k.startswith("disc.") else 2e-5
        torch.testing.assert_close(sa[k].float(), sb[k].float(), rtol=1e-4, atol=atol, msg=k)


@pytest.mark.slow
def test_killed_run_resumes_under_another_world_size(data: Path, tmp_path: Path) -> None:
    full, cut = tmp_path / "full.safetensors", tmp_path / "cut.safetensors"
    assert run_cli(*_args(data, full, 6, "--ema", "0.9")).exit_code == 0
    # one process, killed (SIGKILL) right after its first checkpoint (step 3 of 6)
    killed = cli_subprocess(*_args(data, cut, 6, "--ema", "0.9"),
                            env={"ERA5LATENT_FAULT": "train.checkpoint-written:1",
                                 "OMP_NUM_THREADS": "1"})
    assert killed.returncode == -9, killed.stderr
    from era5latent.model.checkpoint import read_meta

    assert read_meta(str(cut)).training["steps"] == 3
    res = run_cli(*_args(data, cut, 6, "--ema", "0.9", "--resume", "--nproc", "2"))
    assert res.exit_code == 0, res.stderr
    _assert_same(full, cut)
    assert read_meta(str(cut)).training["world_size"] == 2


def test_batch_must_split_over_ranks(data: Path, tmp_path: Path) -> None:
    res = run_cli("train", data, "--subset", SUBSET, "--out", tmp_path / "m.safetensors",
                  "--batch-size", "3", "--nproc", "2", "--device", "cpu")
    assert_clean_error(res, "--batch-size 3", "multiple of 2")
    assert not (tmp_path / "m.safetensors").exists()


def test_resume_refuses_other_objective(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    assert run_cli(*_args(data, out, 3)).exit_code == 0
    res = run_cli(*_args(data, out, 6, "--resume", "--ema", "0.99"))
    assert_clean_error(res, "cannot resume", "ema")
