"""Real ERA5: each training-objective option alone and all together, at one training budget.

    .venv/bin/python benchmarks/objective_ablation.py                  # both samples
    .venv/bin/python benchmarks/objective_ablation.py --datasets uk --steps 400

The same protocol as ``real_data.py`` (whose cases it uses): train on the training period or
members, encode and decode the held-out part through a real latent store, and score it. Per
option set, per channel: held-out RMSE, max absolute error and the small-scale power ratio
(reconstruction over truth at the top half of zonal wavenumbers: 1 keeps the fine scales, below
1 smooths them). Every run has the same seed, steps, batch and learning rate; only the objective
changes. Options:

* ``base``        MSE + the BSQ entropy terms in era5latent's form, no level weights
* ``levels``      + per-level loss weights proportional to each level's variance (u, v, t)
* ``adversarial`` + a PVUM patch discriminator, hinge loss, adaptive weight, from 1/4 of the run
* ``ema``         + an exponential moving average of the weights (0.999), validated and saved
* ``ema-0.99``    the same with decay 0.99 (an average over ~100 steps, for short runs)
* ``upstream``    the WLA authors' straight-through gradient (1/sqrt(K)) and entropy form
* ``all``         everything above together
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_data import CASES, DEFAULT_DATA, _members, reference_records  # noqa: E402


def option_sets(steps: int) -> dict[str, dict[str, Any]]:
    adv = {"adversarial_weight": 0.1, "disc_start": steps // 4}
    return {
        "base": {"level_weights": "none"},
        "levels": {"level_weights": "variance"},
        "adversarial": {"level_weights": "none", **adv},
        "ema": {"level_weights": "none", "ema": 0.999},
        "ema-0.99": {"level_weights": "none", "ema": 0.99},
        "upstream": {"level_weights": "none", "quantizer": "upstream"},
        "all": {"level_weights": "variance", "ema": 0.999, "quantizer": "upstream", **adv},
    }


def run(case_name: str, name: str, options: dict[str, Any], args: argparse.Namespace,
        tmp: str) -> list[dict[str, Any]]:
    from era5latent.evaluation import metrics
    from era5latent.model.checkpoint import load_checkpoint
    from era5latent.pipeline import decode, encode
    from era5latent.io.sources import open_source
    from era5latent.training import TrainOptions, train
    from era5latent.io.variables import parse_subset

    case = CASES[case_name]
    src = open_source(str(Path(args.data) / case.file))
    channels = parse_subset(case.subset)
    train_src, test_src = _members(src, case.train_members), _members(src, case.test_members)
    steps = args.steps or case.steps
    model = os.path.join(tmp, f"{case_name}-{name}.safetensors")
    opts = TrainOptions(preset="tiny", steps=steps, batch_size=8, time_range=case.train_range,
                        val_fraction=case.val_fraction, val_every=steps, checkpoint_every=steps,
                        seed=args.seed, device="cpu", **options)
    t = time.perf_counter()
    train(train_src, channels, model, opts)
    seconds = time.perf_counter() - t
    loaded = load_checkpoint(model)
    latent, recon = model + ".latent.zarr", model + ".recon.zarr"
    encode(test_src, loaded, channels, latent, time_range=case.test_range, device="cpu",
           precision="fp32")
    decode(latent, loaded, recon, device="cpu", precision="fp32")
    rec = open_source(recon)
    a, b = test_src.time_indices(case.test_range)
    out = []
    for ch in channels:
        truth = test_src.read((ch,), a, b).reshape(-1, *test_src.grid)
        r = rec.read((ch,), 0, b - a).reshape(-1, *rec.grid)
        m = metrics.channel_metrics(truth, r, test_src.latitude, spectra=False)
        out.append({"case": case_name, "options": name, "channel": ch.code, "steps": steps,
                    "train_seconds": seconds, "rmse": m["rmse"],
                    "max_abs_error": m["max_abs_error"],
                    "small_scale_power_ratio": m["small_scale_power_ratio"]})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--datasets", default="uk,ensemble")
    ap.add_argument("--steps", type=int, default=None, help="default: each case's steps")
    ap.add_argument("--options", default=None, help="comma-separated subset of the option sets")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ablation-") as tmp:
        for case_name in args.datasets.split(","):
            steps = args.steps or CASES[case_name].steps
            sets = option_sets(steps)
            names = args.options.split(",") if args.options else list(sets)
            for name in names:
                rows = run(case_name, name, sets[name], args, tmp)
                records += rows
                print(f"{case_name:<9} {name:<12} " + "  ".join(
                    f"{r['channel']} rmse {r['rmse']:.4g} max {r['max_abs_error']:.4g} "
                    f"ssp {r['small_scale_power_ratio']:.2f}" for r in rows)
                    + f"  ({rows[0]['train_seconds']:.0f} s)", flush=True)
            from era5latent.io.sources import open_source
            from era5latent.io.variables import parse_subset

            case = CASES[case_name]
            src = open_source(str(Path(args.data) / case.file))
            ref = reference_records(_members(src, case.train_members),
                                    _members(src, case.test_members),
                                    parse_subset(case.subset), case)
            for r in ref:
                if r["method"] == "mean field":
                    print(f"{case_name:<9} {'(mean field)':<12} {r['channel']} rmse "
                          f"{r['rmse']:.4g} max {r['max_abs_error']:.4g}")
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
