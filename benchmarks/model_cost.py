"""Cost of each WLA preset per grid: parameters per group, FLOPs and encode CPU-seconds per sample.

    python benchmarks/model_cost.py            # all presets at 73x144, 241x480, 721x1440 (slow)
    python benchmarks/model_cost.py --quick    # skip the 721x1440 timings (FLOPs still shown)
    python benchmarks/model_cost.py --preset tiny --grid 721x1440 --global-attention
    python benchmarks/model_cost.py --memory   # train --dry-run figures, paper at 721x1440

Models are built in-process with random weights (the cost does not depend on them); encode is
timed with ``time.process_time`` on one thread (``torch.set_num_threads(1)``), one sample of
one 13-level group, best of ``--repeat`` runs after one warm-up. FLOPs are counted on the meta
device (``era5latent.training.memory.flops``, 2 FLOPs per multiply-add). ``--global-attention``
forces global attention everywhere (what tiny and small did before window attention).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout

from era5latent.model.wla import WLA, WLAConfig, preset_config  # noqa: E402

GRIDS = ((73, 144), (241, 480), (721, 1440))
LEVELS = (50.0, 100.0, 150.0, 200.0, 250.0, 300.0, 400.0, 500.0, 600.0, 700.0, 850.0, 925.0,
          1000.0)
SLOW_CPU = (("paper", (241, 480)), ("paper", (721, 1440)))  # minutes per sample on one core


def config(preset: str, grid: tuple[int, int], global_attention: bool) -> WLAConfig:
    if global_attention:
        return preset_config(preset, grid, ("z",), windows=())
    return preset_config(preset, grid, ("z",))


def encode_seconds(cfg: WLAConfig, repeat: int) -> float:
    """Best-of-``repeat`` CPU-seconds to encode one sample of 13 channels."""
    torch.manual_seed(0)
    with torch.device("meta"):
        model = WLA(cfg, init_weights=False)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    model.eval()
    x = torch.randn(1, len(LEVELS), *cfg.grid)
    model.encode("z", x, LEVELS)  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        model.encode("z", x, LEVELS)
        best = min(best, time.process_time() - t0)
    return best


def memory_table(budget_gb: float) -> int:
    """Training memory of the paper preset at 721x1440 (era5latent.training.memory)."""
    from era5latent.training.memory import estimate_memory, largest_batch

    budget = int(budget_gb * 1e9)
    print(f"paper preset, 721x1440, 13 channels per group, AdamW, no EMA; GiB = 2**30 bytes; "
          f"largest batch in {budget_gb:g} GB")
    print(f"{'precision':9} {'checkpoint':10} {'groups':>6} {'state GiB':>10} {'act/sample':>10} "
          f"{'batch 1 GiB':>11} {'largest':>7}")
    for groups in (("z",), ("z", "t", "surface")):
        cfg = preset_config("paper", (721, 1440), groups)
        for precision in ("fp32", "bf16"):
            for ck in (False, True):
                opts = dict(precision=precision, checkpoint_activations=ck)
                e = estimate_memory(cfg, 1, **opts)  # type: ignore[arg-type]
                state = e.total_bytes - e.activation_bytes
                big = largest_batch(cfg, budget, **opts)
                print(f"{precision:9} {'yes' if ck else 'no':10} {len(groups):>6} "
                      f"{state / 2**30:>10.2f} {e.activation_bytes_per_sample / 2**30:>10.2f} "
                      f"{e.total_bytes / 2**30:>11.2f} {big:>7}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip the 721x1440 timings")
    ap.add_argument("--preset", action="append", help="preset(s) to show (default: all three)")
    ap.add_argument("--grid", action="append", help="grid(s) as HxW (default: the three above)")
    ap.add_argument("--global-attention", action="store_true",
                    help="global attention in every block (the pre-window tiny/small)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--memory", action="store_true",
                    help="print the training-memory estimate of the paper preset at 721x1440")
    ap.add_argument("--memory-budget", type=float, default=80.0, help="GB (1e9 bytes)")
    ap.add_argument("--time-paper", action="store_true",
                    help="also time the paper preset above 73x144 (minutes per sample)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    presets = args.preset or ["tiny", "small", "paper"]
    grids = [tuple(int(n) for n in g.split("x")) for g in args.grid] if args.grid else GRIDS
    from era5latent.training.memory import flops

    if args.memory:
        return memory_table(args.memory_budget)
    print(f"{'preset':6} {'grid':>9} {'tokens':>9} {'windows':32} {'params/group':>13} "
          f"{'enc GFLOP':>10} {'dec GFLOP':>10} {'enc CPU-s':>10}")
    for preset in presets:
        for grid in grids:
            cfg = config(preset, (grid[0], grid[1]), args.global_attention)
            with torch.device("meta"):
                n = WLA(cfg, init_weights=False).num_params()
            fl = flops(cfg)
            skip = (args.quick and grid == (721, 1440)) or (
                (preset, grid) in SLOW_CPU and not args.time_paper)
            secs = "-" if skip else f"{encode_seconds(cfg, args.repeat):.2f}"
            h, w = cfg.token_grid
            win = ",".join(f"{a}x{b}" for a, b in cfg.windows) or "global"
            print(f"{preset:6} {grid[0]:>4}x{grid[1]:<4} {h:>3}x{w:<5} {win:32} {n:>13,} "
                  f"{fl['encode'] / 1e9:>10.2f} {fl['decode'] / 1e9:>10.2f} {secs:>10}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
