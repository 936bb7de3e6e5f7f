"""CPU-seconds and peak RSS of loading a checkpoint (issue 17, requirement 3).

    python benchmarks/checkpoint_load.py make /tmp/paper.safetensors   # paper preset, 721x1440, 1 group
    python benchmarks/checkpoint_load.py load /tmp/paper.safetensors   # time load_checkpoint once

``make`` builds the model on the meta device and fills it with a cheap deterministic pattern
(the load time does not depend on the values), so making the 1.6 GB file takes seconds, not the
48 CPU-s of the random initialisers. Run ``load`` in a fresh process per measurement.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout


def make(path: str, preset: str, grid: tuple[int, int]) -> None:
    from era5latent.model.checkpoint import CheckpointMeta, save_checkpoint
    from era5latent.model.wla import WLA, preset_config
    from era5latent.io.variables import parse_channel

    config = preset_config(preset, grid, ("z",))
    with torch.device("meta"):
        model = WLA(config)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.fill_(0.001 * (i % 97))
    channels = (parse_channel("z500"),)
    meta = CheckpointMeta(config=config, groups={"z": channels},
                          normalisation={"z500": {"mean": 0.0, "std": 1.0}},
                          grid={"shape": list(grid), "latitude": [90.0, -90.0],
                                "longitude": [0.0, 360.0 - 360.0 / grid[1]]})
    save_checkpoint(model, meta, path)
    print(f"wrote {path}: {model.num_params():,} parameters")


def load(path: str) -> None:
    from era5latent.model.checkpoint import load_checkpoint

    t0, w0 = time.process_time(), time.perf_counter()
    loaded = load_checkpoint(path)
    cpu, wall = time.process_time() - t0, time.perf_counter() - w0
    t1 = time.process_time()
    with torch.no_grad():  # read every weight once (the file is memory-mapped, pages come lazily)
        total = sum(float(p.double().sum()) for p in loaded.model.parameters())
    touch = time.process_time() - t1
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"load_checkpoint: {cpu:.2f} CPU-s, {wall:.2f} s wall, peak RSS {rss:.2f} GiB, "
          f"{loaded.model.num_params():,} parameters; then reading every weight once: {touch:.2f} "
          f"CPU-s (sum {total:.6g})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=("make", "load"))
    ap.add_argument("path")
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--grid", default="721x1440")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.action == "make":
        h, w = (int(n) for n in args.grid.split("x"))
        make(args.path, args.preset, (h, w))
    else:
        load(args.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
