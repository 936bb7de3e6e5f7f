"""The training-memory estimator (``era5latent.training.memory``) against real CPU measurements."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.checkpoint import checkpoint

from era5latent.errors import OptionError
from era5latent.model.wla import WLA, Block, preset_config
from era5latent.training.memory import estimate_memory, flops, largest_batch, saved_activations

GRID, CHANNELS, BATCH = (73, 144), 3, 2
LEVELS = torch.tensor([500.0, 700.0, 850.0])


class _Storages(TorchDispatchMode):
    """Every storage an op creates, to see which are still alive later (independent of autograd's
    saved-tensor hooks, which the estimator uses)."""

    def __init__(self) -> None:
        super().__init__()
        self.made: dict[int, tuple[StorageWeakRef, int]] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                s = t.untyped_storage()
                seen = self.made.get(s.data_ptr())
                if seen is None or seen[0].expired():  # new, or a freed one's address reused
                    self.made[s.data_ptr()] = (StorageWeakRef(s), s.nbytes())
        return out

    def alive(self, exclude: set[int]) -> int:
        return sum(n for ptr, (ref, n) in self.made.items() if not ref.expired()
                   and ptr not in exclude)


def _measure(model: WLA, x: torch.Tensor, checkpointed: bool) -> tuple[int, int]:
    """Real CPU bytes held for backward after one training forward (only the loss kept), and the
    largest one block holds when it runs alone (what a checkpointed block's recompute holds)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    ae = model.autoencoders["z"]
    blocks: list[Block] = [*ae.encoder.blocks, *ae.decoder.blocks]  # type: ignore
    if checkpointed:
        for b in blocks:
            b.forward = functools.partial(checkpoint, type(b).forward.__get__(b),  # type: ignore
                                          use_reentrant=False)
    with _Storages() as mode:
        out = model("z", x, LEVELS)
        loss = (out.recon.float() - x).square().mean() + out.losses["bsq"]
        del out
        held = mode.alive(params | {loss.untyped_storage().data_ptr()})
    held += x.numel() * x.element_size()  # the batch, which autograd keeps for the first conv
    loss.backward()
    one = 0
    for b in blocks:
        xin = torch.randn(BATCH, model.config.tokens, model.config.width, requires_grad=True)
        with _Storages() as mode:
            y = type(b).forward(b, xin)
            one = max(one, mode.alive(params | {y.untyped_storage().data_ptr()}))
    return held, one


@pytest.fixture(scope="module")
def cfg() -> Any:
    return preset_config("tiny", GRID, ("z",))


def test_saved_activations_match_a_real_cpu_training_forward(cfg: Any) -> None:
    torch.manual_seed(0)
    x = torch.randn(BATCH, CHANNELS, *GRID)
    plain, _ = _measure(WLA(cfg), x, checkpointed=False)
    ckpt, one_block = _measure(WLA(cfg), x, checkpointed=True)
    est = estimate_memory(cfg, BATCH, channels=CHANNELS, resident_groups=1)
    est_ck = estimate_memory(cfg, BATCH, channels=CHANNELS, checkpoint_activations=True,
                             resident_groups=1)
    assert est.activation_bytes == pytest.approx(plain, rel=0.02)
    assert est_ck.activation_bytes == pytest.approx(ckpt + one_block, rel=0.02)
    assert est_ck.activation_bytes < 0.85 * est.activation_bytes and ckpt < plain


def test_bf16_keeps_less_and_counts_the_weight_copies(cfg: Any) -> None:
    fp32 = saved_activations(cfg, "fp32", CHANNELS)
    bf16 = saved_activations(cfg, "bf16", CHANNELS)
    assert bf16.per_sample < fp32.per_sample
    n = WLA(cfg).num_params()  # autocast's bfloat16 weight copies: about 2 bytes a parameter
    assert 1.0 * n < bf16.fixed - fp32.fixed < 2.2 * n
    with pytest.raises(OptionError, match="precision"):
        saved_activations(cfg, "fp16")


def test_state_bytes_and_totals(cfg: Any) -> None:
    two = preset_config("tiny", GRID, ("z", "t"))
    e = estimate_memory(two, 4, ema=True, discriminator_params=1000)
    n = e.params_per_group
    assert n == WLA(cfg).num_params()
    assert (e.param_bytes, e.grad_bytes, e.optimizer_bytes, e.ema_bytes) == (4 * n, 4 * n, 8 * n,
                                                                            4 * n)
    assert e.discriminator_bytes == 16 * 1000 and e.resident_groups == 2
    assert e.total_bytes == 2 * (16 * n + 16000) + 4 * n + e.activation_bytes
    assert e.per_group_bytes == 20 * n + 16000 + e.activation_bytes
    assert e.rows()[-1] == ("total", e.total_bytes)
    assert e.activation_bytes == e.activation_bytes_fixed + 4 * e.activation_bytes_per_sample
    for bad in ({"optimizer": "sgd"}, {"resident_groups": 3}):
        with pytest.raises(OptionError):
            estimate_memory(two, 1, **bad)


def test_largest_batch_is_monotone_in_the_budget_and_fits(cfg: Any) -> None:
    budgets = [0, 10**6, 3 * 10**7, 10**8, 10**9, 8 * 10**10]
    for ck in (False, True):
        got = [largest_batch(cfg, b, checkpoint_activations=ck) for b in budgets]
        assert got == sorted(got) and got[0] == 0 and got[-1] > 1000
        for b, n in zip(budgets, got):
            if n:
                assert estimate_memory(cfg, n, checkpoint_activations=ck).total_bytes <= b
                assert estimate_memory(cfg, n + 1, checkpoint_activations=ck).total_bytes > b


def test_paper_preset_figures() -> None:
    """design-notes section 3: ~409 M parameters per group, 3.87 / 7.79 TFLOP per sample."""
    paper = preset_config("paper", (721, 1440), ("z",))
    f = flops(paper)
    assert f["encode"] == pytest.approx(3.87e12, rel=0.01)
    assert f["decode"] == pytest.approx(7.79e12, rel=0.01)
    e = estimate_memory(paper, 1)
    assert e.params_per_group == 408_999_169
    assert 16 * 2**30 < e.activation_bytes_per_sample < 19 * 2**30  # issue 17: "about 17 GiB"


def test_model_cost_script_prints_its_table(capsys: pytest.CaptureFixture[str]) -> None:
    import runpy
    import sys

    ns = runpy.run_path(str(__import__("pathlib").Path(__file__).resolve().parents[1]
                            / "benchmarks" / "model_cost.py"), run_name="model_cost")
    old = sys.argv
    try:
        assert ns["main"](["--preset", "tiny", "--grid", "33x64", "--repeat", "1"]) == 0
    finally:
        sys.argv = old
    rows = [ln.split() for ln in capsys.readouterr().out.splitlines()[1:]]
    assert len(rows) == 1 and rows[0][:4] == ["tiny", "33x64", "4x8", "global"]
    params = int(rows[0][4].replace(",", ""))
    assert params == WLA(preset_config("tiny", (33, 64), ("z",))).num_params()
    assert float(rows[0][5]) > 0 and float(rows[0][7]) >= 0
