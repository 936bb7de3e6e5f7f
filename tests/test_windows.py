"""Window attention for the tiny and small presets: global up to WINDOW_TOKENS tokens, windows
derived from the token grid above it (linear cost), and old checkpoints keep what they recorded."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from era5latent.model.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from era5latent.model.config import WINDOW_TOKENS, _grid_windows
from era5latent.model.wla import WLA, _window_schedule, preset_config
from era5latent.io.variables import parse_subset


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_small_grids_stay_global_and_unchanged(preset: str) -> None:
    for grid, tokens in (((73, 144), (9, 18)), ((241, 480), (30, 60)), ((181, 360), (23, 45))):
        cfg = preset_config(preset, grid, ("z",))
        assert cfg.token_grid == tokens and cfg.windows == () and cfg.global_every == 4


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_full_resolution_gets_windows_and_no_global_block(preset: str) -> None:
    cfg = preset_config(preset, (721, 1440), ("z",))
    assert cfg.token_grid == (90, 180)
    assert cfg.windows == ((45, 45), (18, 90), (90, 20))
    for depth in (cfg.enc_depth, cfg.dec_depth):
        sched = _window_schedule(depth, cfg.windows, cfg.global_every)
        assert None not in sched and sched[:2] == [(45, 45), (18, 90)]
    if preset == "tiny":  # the built model's blocks attend in those windows
        blocks = WLA(cfg).autoencoders["z"].encoder.blocks
        assert [b.attn.window for b in blocks] == [(45, 45), (18, 90)]
    # explicit choices still win
    assert preset_config(preset, (721, 1440), ("z",), windows=()).windows == ()
    assert preset_config(preset, (721, 1440), ("z",), global_every=2).global_every == 2


def _reaches_everything(h: int, w: int, windows: tuple[tuple[int, int], ...]) -> bool:
    """Union-find over tokens joined by sharing any window of the cycle: one component?"""
    parent = list(range(h * w))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for wh, ww in windows:
        for r0 in range(0, h, wh):
            for c0 in range(0, w, ww):
                first = find(r0 * w + c0)
                for r in range(r0, r0 + wh):
                    for c in range(c0, c0 + ww):
                        parent[find(r * w + c)] = first
    return len({find(i) for i in range(h * w)}) == 1


@pytest.mark.parametrize("tokens", [(90, 180), (45, 90), (72, 144), (225, 450), (89, 181),
                                    (91, 181), (90, 179), (47, 2000), (64, 64), (46, 46),
                                    (120, 240), (30, 91), (101, 103)])
def test_every_cycle_divides_is_bounded_and_connects_the_grid(tokens: tuple[int, int]) -> None:
    h, w = tokens
    windows = _grid_windows(tokens)
    assert windows, "all these grids have a windowed cycle"
    for wh, ww in windows:
        assert h % wh == 0 and w % ww == 0 and wh * ww <= WINDOW_TOKENS
    assert _reaches_everything(h, w, windows), windows
    if h * w < 20000:  # a few are checked by building the config the preset would give
        ok = preset_config("tiny", (h * 8, w * 8), ("z",))
        assert ok.token_grid == tokens and ok.windows == windows


def test_prime_sides_get_row_and_column_strips() -> None:
    assert _grid_windows((89, 181)) == ((1, 181), (89, 1))
    assert _grid_windows((2053, 2)) == ()  # a strip past WINDOW_TOKENS: global attention
    assert _grid_windows((45, 45)) == () and 45 * 45 <= WINDOW_TOKENS


def test_windowed_cost_per_token_is_bounded() -> None:
    """Attention pairs per frame: linear in the grid with windows, quadratic without."""
    def pairs(grid: tuple[int, int]) -> int:
        cfg = preset_config("tiny", grid, ("z",))
        sched = _window_schedule(cfg.enc_depth, cfg.windows, cfg.global_every)
        return sum(cfg.tokens * (math.prod(w) if w else cfg.tokens) for w in sched)

    small, big = pairs((721, 1440)), pairs((1441, 2880))  # 4x the tokens
    assert big / small < 4.5
    assert preset_config("tiny", (1441, 2880), ("z",), windows=()).tokens ** 2 / 16200 ** 2 == 16


def test_a_checkpoint_recorded_with_global_attention_loads_unchanged(tmp_path: Path) -> None:
    grid = (241, 720)  # 30x90 tokens: the window rule now gives windows here
    assert preset_config("tiny", grid, ("z",)).windows != ()
    old = preset_config("tiny", grid, ("z",), windows=())  # what was written before the rule
    torch.manual_seed(0)
    model = WLA(old).eval()
    chs = parse_subset("z500,z850")
    meta = CheckpointMeta(old, {"z": chs}, {c.code: {"mean": 0.0, "std": 1.0} for c in chs},
                          {"shape": list(grid)})
    path = tmp_path / "old.safetensors"
    save_checkpoint(model, meta, str(path))
    loaded = load_checkpoint(str(path))
    assert loaded.meta.config == old and loaded.model.config.windows == ()
    assert all(b.attn.window is None for b in loaded.model.autoencoders["z"].encoder.blocks)
    x = torch.randn(1, 2, *grid)
    assert torch.equal(loaded.model.encode("z", x, [500.0, 850.0]),
                       model.encode("z", x, [500.0, 850.0]))


def test_windowed_tiny_model_round_trips_shapes() -> None:
    cfg = preset_config("tiny", (241, 720), ("z",))
    torch.manual_seed(0)
    model = WLA(cfg).eval()
    assert any(b.attn.window for b in model.autoencoders["z"].decoder.blocks)
    x = torch.randn(1, 2, 241, 720)
    bits = model.encode("z", x, [500.0, 850.0])
    assert bits.shape == (1, 30, 90, cfg.code_bits)
    with torch.inference_mode():
        assert model.decode("z", bits, [500.0, 850.0]).shape == x.shape
