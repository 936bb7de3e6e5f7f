"""Tests of the WLA network (era5latent.model.wla): geometry, codes, PVUM, learning, config."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from era5latent.errors import (
    CheckpointError,
    GridMismatchError,
    ModelMismatchError,
    OptionError,
    SubsetError,
)
from era5latent.model.wla import (
    WLA,
    WLAConfig,
    _window_merge,
    _window_partition,
    _window_schedule,
    pack_bits,
    patch_geometry,
    preset_config,
    unpack_bits,
)

META4 = torch.tensor([250.0, 500.0, 700.0, 850.0])


def micro(grid: tuple[int, int], **kw) -> WLAConfig:
    """A very small model: fast enough to build and run many times per test."""
    base = dict(width=32, enc_depth=1, dec_depth=1, heads=2, feat_dim=8, meta_dim=16,
                code_bits=16)
    base.update(kw)
    return preset_config("custom", grid, ("z", "surface"), **base)


def smooth_fields(b: int, c: int, grid: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """Weather-like smooth fields: a few low-order spherical-ish harmonics, z-scored."""
    g = torch.Generator().manual_seed(seed)
    H, W = grid
    lat = torch.linspace(-math.pi / 2, math.pi / 2, H)[:, None]
    lon = torch.linspace(0, 2 * math.pi, W + 1)[:-1][None, :]
    x = torch.zeros(b, c, H, W)
    for i in range(b):
        for j in range(c):
            for _ in range(4):
                a, kl, km, ph = torch.rand(4, generator=g).tolist()
                x[i, j] += (2 * a - 1) * torch.cos(lat * (1 + int(kl * 3))) \
                    * torch.sin(lon * (1 + int(km * 4)) + 6 * ph)
    return (x - x.mean()) / x.std()


# -- geometry ----------------------------------------------------------------------------------


@pytest.mark.parametrize("grid", [(73, 144), (33, 49), (61, 120), (32, 64), (5, 7), (1, 1)])
def test_output_is_exactly_the_input_grid(grid):
    torch.manual_seed(0)
    cfg = micro(grid)
    model = WLA(cfg).eval()
    x = torch.randn(2, 3, *grid)
    out = model("z", x, META4[:3])
    h, w = cfg.token_grid
    assert out.recon.shape == (2, 3, *grid)
    assert out.codes.shape == (2, h, w, cfg.code_bits)
    bits = model.encode("z", x, META4[:3])
    assert bits.dtype == torch.bool and bits.shape == (2, h, w, cfg.code_bits)
    assert model.decode("z", bits, META4[:3]).shape == (2, 3, *grid)


@pytest.mark.parametrize("grid", [(73, 144), (33, 49), (61, 120), (32, 64), (721, 1440), (17, 3)])
@pytest.mark.parametrize("stride,padding", [(8, 2), (10, 2), (4, 0), (3, 1)])
def test_patch_geometry_arithmetic(grid, stride, padding):
    (h, w), (kh, kw) = patch_geometry(grid, stride, padding)
    for n, t, k in ((grid[0], h, kh), (grid[1], w, kw)):
        assert (n + 2 * padding - k) // stride + 1 == t  # conv: H -> h
        assert (t - 1) * stride - 2 * padding + k == n  # transposed conv: h -> H
        assert k >= 1 and k > padding


def test_paper_geometry_and_windows():
    cfg = preset_config("paper", (721, 1440), ("z", "t", "surface"))
    assert cfg.token_grid == (72, 144) and cfg.tokens == 10368
    assert cfg.kernel == (15, 14)
    assert cfg.windows == ((36, 36), (18, 72), (72, 18))
    assert (cfg.width, cfg.enc_depth, cfg.dec_depth, cfg.heads) == (1024, 8, 16, 16)
    assert cfg.code_bits == 128 and cfg.code_bytes == 16
    # encoder schedule: three windowed blocks, then a global one, twice
    sched = _window_schedule(cfg.enc_depth, cfg.windows, cfg.global_every)
    assert sched == [(36, 36), (18, 72), (72, 18), None] * 2


def test_paper_full_size_shapes_on_meta_device():
    cfg = preset_config("paper", (721, 1440), ("z",))
    with torch.device("meta"):
        model = WLA(cfg)
        out = model("z", torch.empty(1, 2, 721, 1440), torch.tensor([500.0, 850.0]))
    assert out.recon.shape == (1, 2, 721, 1440)
    assert out.codes.shape == (1, 72, 144, 128)
    enc = model.autoencoders["z"].encoder
    assert tuple(enc.patch.weight.shape) == (1024, 128, 15, 14)
    assert tuple(model.autoencoders["z"].decoder.unpatch.weight.shape) == (2048, 128, 15, 14)


def test_paper_geometry_real_forward_with_reduced_width():
    """The paper's grid, kernel and windows, run for real (narrow and shallow to be cheap)."""
    torch.manual_seed(0)
    cfg = preset_config("paper", (721, 1440), ("z",), width=16, heads=2, enc_depth=1,
                        dec_depth=1, feat_dim=4, meta_dim=8, code_bits=8)
    assert cfg.windows == ((36, 36), (18, 72), (72, 18))
    model = WLA(cfg)
    with torch.no_grad():
        out = model("z", torch.randn(1, 1, 721, 1440), [500.0])
    assert out.recon.shape == (1, 1, 721, 1440) and out.codes.shape == (1, 72, 144, 8)
    assert torch.isfinite(out.recon).all()


def test_presets_on_era5_small_grid():
    for name in ("tiny", "small"):
        cfg = preset_config(name, (73, 144), ("z",))
        assert cfg.token_grid == (9, 18) and cfg.code_bits == 128
    # the paper window fractions do not divide 7x14 tokens: global attention instead
    assert preset_config("paper", (73, 144), ("z",)).windows == ()


# -- windows ------------------------------------------------------------------------------------


def test_window_partition_round_trip():
    x = torch.randn(2, 6 * 8, 5)
    parts = _window_partition(x, (6, 8), (3, 2))
    assert parts.shape == (2 * 2 * 4, 6, 5)
    assert torch.equal(_window_merge(parts, 2, (6, 8), (3, 2)), x)
    # the first window holds tokens (0..2, 0..1) of the 6x8 grid, row-major
    grid = x.view(2, 6, 8, 5)
    assert torch.equal(parts[0], grid[0, :3, :2].reshape(6, 5))


def test_window_attention_is_local():
    torch.manual_seed(0)
    cfg = micro((32, 64), windows=((2, 4),), global_every=10)  # tokens (4, 8), all windowed
    block = WLA(cfg).autoencoders["z"].encoder.blocks[0]
    assert block.attn.window == (2, 4)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.3)  # strong attention, so every in-window token visibly reacts
    x = torch.randn(1, 32, cfg.width)
    y = torch.randn_like(x)
    y[:, :] = x
    y[0, 0] += 1.0  # token (0, 0): in the window of rows 0-1, cols 0-3
    d = (block(x) - block(y)).abs().sum(-1).view(4, 8)
    assert d[:2, :4].gt(0).all()
    assert d[2:].eq(0).all() and d[:, 4:].eq(0).all()


def test_windows_that_do_not_divide_the_token_grid_raise():
    with pytest.raises(OptionError, match="does not divide"):
        micro((73, 144), windows=((4, 6),))  # tokens (9, 18)
    with pytest.raises(OptionError, match="does not divide"):
        WLA(micro((73, 144), windows=((3, 5),)))
    assert micro((73, 144), windows=((3, 6), (9, 2))).windows == ((3, 6), (9, 2))


# -- bits ---------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(shape=st.tuples(st.integers(0, 3), st.integers(1, 4)), nbits=st.integers(1, 40),
       seed=st.integers(0, 2**31 - 1))
def test_pack_bits_matches_numpy(shape, nbits, seed):
    rng = np.random.default_rng(seed)
    a = rng.random((*shape, nbits)) < 0.5
    packed = pack_bits(torch.from_numpy(a))
    assert packed.dtype == torch.uint8
    np.testing.assert_array_equal(packed.numpy(), np.packbits(a, axis=-1))
    back = unpack_bits(packed, nbits)
    assert back.dtype == torch.bool
    np.testing.assert_array_equal(back.numpy(), a)
    np.testing.assert_array_equal(
        back.numpy(), np.unpackbits(np.packbits(a, axis=-1), axis=-1, count=nbits).astype(bool))


def test_pack_bits_msb_first_and_rejects_bad_input():
    bits = torch.zeros(16, dtype=torch.bool)
    bits[0] = bits[15] = True
    assert pack_bits(bits).tolist() == [128, 1]
    with pytest.raises(TypeError):
        pack_bits(torch.zeros(8))
    with pytest.raises(ValueError):
        unpack_bits(torch.zeros(2, dtype=torch.uint8), 17)


# -- PVUM: channel subsets and permutations --------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model() -> WLA:
    torch.manual_seed(0)
    return WLA(preset_config("tiny", (32, 64), ("z", "surface"))).eval()


def test_channel_permutation_invariance(tiny_model):
    x = smooth_fields(2, 4, (32, 64))
    perm = torch.tensor([2, 0, 3, 1])
    u = tiny_model.latent("z", x, META4)
    u_perm = tiny_model.latent("z", x[:, perm], META4[perm])
    torch.testing.assert_close(u_perm, u, atol=1e-5, rtol=0)
    bits = tiny_model.encode("z", x, META4)
    assert (tiny_model.encode("z", x[:, perm], META4[perm]) == bits).float().mean() > 0.999
    with torch.no_grad():
        recon = tiny_model.decode("z", bits, META4)
        recon_perm = tiny_model.decode("z", bits, META4[perm])
    torch.testing.assert_close(recon_perm, recon[:, perm], atol=1e-5, rtol=1e-4)


def test_channel_subset_encodes_and_decodes_to_its_shape(tiny_model):
    x = smooth_fields(2, 4, (32, 64))
    sub = [1, 3]
    bits = tiny_model.encode("z", x[:, sub], META4[sub])
    assert bits.shape == (2, 4, 8, 128)
    with torch.no_grad():
        recon = tiny_model.decode("z", bits, META4[sub])
        one = tiny_model.decode("z", bits, META4[[3]])
    assert recon.shape == (2, 2, 32, 64) and one.shape == (2, 1, 32, 64)
    # metadata matters: the same fields labelled with other levels give other codes
    other = tiny_model.encode("z", x[:, sub], torch.tensor([50.0, 1000.0]))
    assert (other != bits).any()


def test_batched_and_one_by_one_agree(tiny_model):
    x = smooth_fields(4, 4, (32, 64), seed=3)
    batched = tiny_model.encode("z", x, META4)
    single = torch.cat([tiny_model.encode("z", x[i:i + 1], META4) for i in range(4)])
    assert (batched == single).float().mean() >= 0.9999
    with torch.no_grad():
        rb = tiny_model.decode("z", batched, META4)
        rs = torch.cat([tiny_model.decode("z", batched[i:i + 1], META4) for i in range(4)])
    torch.testing.assert_close(rs, rb, atol=1e-5, rtol=1e-4)


def test_reused_generated_weights_give_the_same_bits_and_fields(tiny_model):
    """Inside reuse_generated_weights each PVUM generates its weights once per meta tensor (the
    pipeline's batches share one), with bits and fields equal to generating them per batch; a
    second meta tensor gets its own; nothing is kept after, and gradients are refused."""
    x = smooth_fields(4, 4, (32, 64), seed=7)
    meta2 = torch.tensor([500.0, 850.0])
    enc, dec = (tiny_model.autoencoders["z"].encoder.pvum, tiny_model.autoencoders["z"].decoder.pvum)
    calls: list[str] = []
    for name, pvum in (("enc", enc), ("dec", dec)):
        pvum.generate = (lambda m, f=pvum.generate, n=name: calls.append(n) or f(m))
    try:
        with torch.inference_mode():
            bits = [tiny_model.encode("z", x[i:i + 2], META4) for i in (0, 2)]
            fields = [tiny_model.decode("z", b, META4) for b in bits]
            sub = tiny_model.encode("z", x[:2, [1, 3]], meta2)
            assert calls.count("enc") == 3 and calls.count("dec") == 2
            calls.clear()
            with tiny_model.reuse_generated_weights():
                bits_r = [tiny_model.encode("z", x[i:i + 2], META4) for i in (0, 2)]
                fields_r = [tiny_model.decode("z", b, META4) for b in bits_r]
                sub_r = tiny_model.encode("z", x[:2, [1, 3]], meta2)
            assert calls.count("enc") == 2 and calls.count("dec") == 1  # META4 once, meta2 once
            assert enc._reuse is None and dec._reuse is None
            calls.clear()
            tiny_model.encode("z", x[:2], META4)
            assert calls == ["enc"]  # after the block: generated again
    finally:
        del enc.generate, dec.generate
    for a, b in zip(bits + fields + [sub], bits_r + fields_r + [sub_r]):
        assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match="inference"):
        with tiny_model.reuse_generated_weights():
            pass


def test_encode_is_deterministic_and_matches_forward(tiny_model):
    x = smooth_fields(2, 4, (32, 64), seed=5)
    a = tiny_model.encode("z", x, META4)
    assert torch.equal(a, tiny_model.encode("z", x, META4))
    with torch.no_grad():
        out = tiny_model("z", x, META4)
    assert torch.equal(out.bits, a)
    k = tiny_model.config.code_bits
    assert torch.equal(out.codes.abs(), torch.full_like(out.codes, 1 / math.sqrt(k)))
    # the training path decodes exactly what decode() reconstructs from the stored bits
    torch.testing.assert_close(out.recon, tiny_model.decode("z", a, META4))


# -- training ------------------------------------------------------------------------------------


def test_straight_through_gradient_reaches_the_encoder():
    torch.manual_seed(0)
    model = WLA(micro((32, 64)))
    x = torch.randn(2, 3, 32, 64)
    out = model("z", x, META4[:3])
    loss = (out.recon - x).pow(2).mean() + out.losses["bsq"]
    loss.backward()
    enc = model.autoencoders["z"].encoder
    for name, p in [("pvum", enc.pvum.weight_head.weight), ("patch", enc.patch.weight),
                    ("block", enc.blocks[0].mlp.fc.weight),
                    ("quantizer", model.autoencoders["z"].quantizer.proj.weight)]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # the other group's autoencoder is untouched
    assert all(p.grad is None for p in model.autoencoders["surface"].parameters())
    assert set(out.losses) >= {"entropy_sample", "entropy_codebook", "bsq"}


def test_entropy_terms():
    torch.manual_seed(0)
    model = WLA(micro((32, 64), entropy_sample_weight=0.3, entropy_codebook_weight=0.2))
    out = model("z", torch.randn(4, 2, 32, 64), META4[:2])
    s, c = out.losses["entropy_sample"], out.losses["entropy_codebook"]
    assert 0 < s.item() <= 1 and 0 < c.item() <= 1
    torch.testing.assert_close(out.losses["bsq"], 0.3 * s - 0.2 * c)


def test_tiny_model_overfits_a_small_batch():
    torch.manual_seed(0)
    model = WLA(preset_config("tiny", (32, 64), ("z",)))
    x = smooth_fields(4, 4, (32, 64), seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.99), weight_decay=1e-4)
    losses = []
    for _ in range(100):
        out = model("z", x, META4)
        mse = (out.recon - x).pow(2).mean()
        (mse + out.losses["bsq"]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(mse.item())
    assert losses[0] > 0.5
    assert min(losses[-5:]) < losses[0] / 8, losses[::10]


def test_bfloat16_autocast_on_cpu():
    torch.manual_seed(0)
    model = WLA(micro((33, 49)))
    x = torch.randn(2, 3, 33, 49)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model("z", x, META4[:3])
        (out.recon.float().pow(2).mean() + out.losses["bsq"]).backward()
        bits = model.encode("z", x, META4[:3])
        recon = model.decode("z", bits, META4[:3])
    assert out.losses["bsq"].dtype == torch.float32 and out.codes.dtype == torch.float32
    assert bits.dtype == torch.bool and recon.shape == (2, 3, 33, 49)
    assert torch.isfinite(recon.float()).all()
    # bf16 shifts only the bits whose pre-sign value is near zero
    assert (bits == model.encode("z", x, META4[:3])).float().mean() > 0.95


def test_bfloat16_autocast_leaves_no_layer_in_fp32_but_the_quantizer():
    """No silent fp32 fallbacks: under bf16 autocast every linear and convolution layer of the
    tiny preset computes in bf16, except the BSQ projection, which is fp32 by design."""
    model = WLA(preset_config("tiny", (73, 144), ("z",)))
    dtypes: dict[str, torch.dtype] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            mod.register_forward_hook(
                lambda m, i, o, name=name: dtypes.__setitem__(name, o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model("z", smooth_fields(2, 4, (73, 144)), META4)
        out.recon.float().pow(2).mean().backward()
    assert len(dtypes) > 10  # every layer ran
    fp32 = sorted(n for n, d in dtypes.items() if d != torch.bfloat16)
    assert fp32 == [n for n in sorted(dtypes) if n.endswith("quantizer.proj")], fp32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bfloat16_autocast_matches_cpu_bits():
    torch.manual_seed(0)
    cpu = WLA(preset_config("tiny", (73, 144), ("z",))).eval()
    gpu = WLA(cpu.config).cuda().eval()
    gpu.load_state_dict(cpu.state_dict())
    x = smooth_fields(2, 4, (73, 144))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        bits = gpu.encode("z", x.cuda(), META4)
        recon = gpu.decode("z", bits, META4)
        out = gpu("z", x.cuda(), META4)
    assert recon.shape == (2, 4, 73, 144) and torch.isfinite(recon.float()).all()
    assert torch.equal(out.bits, bits)
    assert (bits.cpu() == cpu.encode("z", x, META4)).float().mean() > 0.95


# -- errors ---------------------------------------------------------------------------------------


def test_input_errors(tiny_model):
    x = smooth_fields(1, 2, (32, 64))
    with pytest.raises(SubsetError, match="no autoencoder for group 'q'"):
        tiny_model.encode("q", x, META4[:2])
    with pytest.raises(GridMismatchError):
        tiny_model.encode("z", torch.zeros(1, 2, 33, 64), META4[:2])
    with pytest.raises(ValueError, match="channels"):
        tiny_model.encode("z", x, META4)
    with pytest.raises(ModelMismatchError):
        tiny_model.decode("z", torch.zeros(1, 4, 8, 64, dtype=torch.bool), META4[:2])


def test_preset_errors():
    with pytest.raises(OptionError, match="unknown preset"):
        preset_config("huge", (73, 144), ("z",))
    with pytest.raises(OptionError, match="cannot override"):
        preset_config("tiny", (73, 144), ("z",), depth=3)
    with pytest.raises(OptionError, match="patch_padding"):
        preset_config("tiny", (73, 144), ("z",), patch_padding=-1)
    with pytest.raises(OptionError, match="patch_stride"):
        preset_config("tiny", (73, 144), ("z",), patch_stride=0)
    with pytest.raises(OptionError, match="divisible"):
        preset_config("tiny", (73, 144), ("z",), heads=5)
    with pytest.raises(OptionError, match="multiple of 8"):
        preset_config("tiny", (73, 144), ("z",), code_bits=12)
    with pytest.raises(OptionError, match="unique"):
        preset_config("tiny", (73, 144), ("z", "z"))


# -- config round trip -----------------------------------------------------------------------------


def test_config_round_trip_through_json():
    for cfg in (preset_config("paper", (721, 1440), ("z", "t", "surface")),
                preset_config("tiny", (73, 144), ("surface",)),
                micro((32, 64), windows=((2, 4), (4, 2)), entropy_temperature=2.0)):
        d = json.loads(json.dumps(cfg.to_dict()))
        assert WLAConfig.from_dict(d) == cfg


def test_config_from_dict_errors():
    d = preset_config("tiny", (73, 144), ("z",)).to_dict()
    with pytest.raises(CheckpointError, match="unknown keys \\['depth'\\]"):
        WLAConfig.from_dict({**d, "depth": 3})
    missing = {k: v for k, v in d.items() if k != "width"}
    with pytest.raises(CheckpointError, match="missing keys \\['width'\\]"):
        WLAConfig.from_dict(missing)
    with pytest.raises(CheckpointError, match="width must be an integer"):
        WLAConfig.from_dict({**d, "width": 64.0})
    with pytest.raises(CheckpointError, match="does not divide"):
        WLAConfig.from_dict({**d, "windows": [[4, 4]]})
    # fields with defaults may be absent (configs written before they existed)
    optional = {k: v for k, v in d.items() if k != "entropy_temperature"}
    assert WLAConfig.from_dict(optional) == preset_config("tiny", (73, 144), ("z",))


def test_paper_preset_with_bad_stride_override_raises_option_error():
    with pytest.raises(OptionError, match="patch_stride"):
        preset_config("paper", (721, 1440), ("z",), patch_stride=0)


def test_place_for_inference_moves_only_a_model_not_yet_placed(monkeypatch):
    from era5latent.model.devices import place_for_inference

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5),
                                torch.nn.BatchNorm1d(4))
    cpu = torch.device("cpu")
    place_for_inference(model, cpu)  # in training mode: put in eval mode
    assert not any(m.training for m in model.modules())
    moved = []
    real_to = torch.nn.Module.to
    monkeypatch.setattr(torch.nn.Module, "to",
                        lambda self, *a, **k: moved.append(a) or real_to(self, *a, **k))
    place_for_inference(model, cpu)  # already there: not walked again
    assert moved == []
    model[1].train()  # one submodule back in training mode is seen
    place_for_inference(model, cpu)
    assert moved == [(cpu,)] and not model[1].training
    out = model(torch.ones(2, 4))
    assert torch.equal(out, model(torch.ones(2, 4)))  # eval: dropout off, batch-norm frozen
