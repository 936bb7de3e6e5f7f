"""What a level never seen in training costs (``encode --allow-unseen-levels``), on real ERA5.

    .venv/bin/python benchmarks/unseen_levels.py               # the table in docs/variables.md
    .venv/bin/python benchmarks/unseen_levels.py --steps 200   # quicker, worse models

Data: ``era5-levels-members.grib`` in ``../shared/data`` (or ``$ERA5LATENT_REAL_DATA``): ERA5 EDA
z and t at 500 and 850 hPa, 10 members x 4 times, 3 degree global grid. Nothing is copied; models
and stores live in a temporary directory.

Protocol: two tiny models, trained alike (seeded) on members 0-6, one on z500,t500 only, one on
z850,t850 only. Each encodes and decodes members 7-9 (12 fields per channel) at all four
channels: its own level (seen) and the other level (unseen, with the statistics
``--allow-unseen-levels`` takes from the source). The score is the latitude-weighted RMSE in
physical units (era5latent.evaluation.metrics.rmse, WeatherBench 2's definition) of each channel, so each
unseen cell has a seen cell beside it: the model trained on that level. "mean field" (the
training members' time-mean field at that level) is the no-bytes reference of docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ERA5LATENT_REAL_DATA", REPO.parent / "shared" / "data"))
FILE = "era5-levels-members.grib"
LEVELS = (500, 850)


def _members(src: Any, sl: slice) -> Any:
    return dataclasses.replace(src, ds=src.ds.isel(number=sl))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from era5latent.evaluation.metrics import rmse
    from era5latent.model.checkpoint import load_checkpoint
    from era5latent.pipeline import decode, encode
    from era5latent.io.sources import open_source
    from era5latent.training import TrainOptions, train
    from era5latent.pipeline.unseen import allow_unseen_levels
    from era5latent.io.variables import parse_subset

    path = Path(args.data) / FILE
    if not path.is_file():
        print(f"{path} not found: set ERA5LATENT_REAL_DATA", file=sys.stderr)
        return 2
    src = open_source(str(path))
    train_src, test_src = _members(src, slice(0, 7)), _members(src, slice(7, 10))
    every = parse_subset("z500,t500,z850,t850")
    t_all = time.perf_counter()
    scores: dict[tuple[int, str], float] = {}  # (trained level, channel) -> RMSE
    with tempfile.TemporaryDirectory(prefix="era5latent-unseen-") as tmp:
        for lev in LEVELS:
            model = os.path.join(tmp, f"m{lev}.safetensors")
            opts = TrainOptions(preset="tiny", steps=args.steps, batch_size=args.batch_size,
                                val_fraction=0.0, val_every=args.steps,
                                checkpoint_every=args.steps, seed=args.seed, device="cpu")
            t = time.perf_counter()
            train(train_src, parse_subset(f"z{lev},t{lev}"), model, opts)
            print(f"trained on {lev} hPa: {time.perf_counter() - t:.0f} s", file=sys.stderr)
            loaded = load_checkpoint(model)
            for w in allow_unseen_levels(test_src, loaded, every):
                print(f"warning: {w}", file=sys.stderr)
            latent, recon = os.path.join(tmp, f"l{lev}.zarr"), os.path.join(tmp, f"r{lev}.zarr")
            encode(test_src, loaded, every, latent, device="cpu", precision="fp32")
            decode(latent, load_checkpoint(model), recon, device="cpu", precision="fp32")
            rec = open_source(recon)
            for ch in every:
                truth = test_src.read((ch,), 0, len(test_src.times))[..., 0, :, :]
                got = rec.read((ch,), 0, len(rec.times))[..., 0, :, :]
                scores[(lev, ch.code)] = rmse(truth.reshape(-1, *truth.shape[-2:]),
                                              got.reshape(-1, *got.shape[-2:]), src.latitude)
        mean_field = {}
        for ch in every:
            tr = train_src.read((ch,), 0, len(train_src.times))[..., 0, :, :]
            te = test_src.read((ch,), 0, len(test_src.times))[..., 0, :, :]
            te = te.reshape(-1, *te.shape[-2:])
            mean = tr.reshape(-1, *tr.shape[-2:]).mean(axis=0)
            mean_field[ch.code] = rmse(te, np.broadcast_to(mean, te.shape), src.latitude)
    units = {"z": "m2 s-2", "t": "K"}
    print(f"<!-- benchmarks/unseen_levels.py --steps {args.steps} --batch-size {args.batch_size} "
          f"--seed {args.seed}: {dt.date.today()}, {platform.node() or 'this machine'}, "
          f"{time.perf_counter() - t_all:.0f} s -->")
    print("| channel | units | trained on this level (seen) | trained on the other level "
          "(unseen) | unseen / seen | mean field |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for ch in every:
        seen = scores[(ch.level, ch.code)]  # type: ignore[index]
        other = next(lev for lev in LEVELS if lev != ch.level)
        unseen = scores[(other, ch.code)]
        print(f"| {ch.code} | {units[ch.name]} | {seen:.4g} | {unseen:.4g} | "
              f"{unseen / seen:.2f} | {mean_field[ch.code]:.4g} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
