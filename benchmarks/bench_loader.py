"""How fast LatentDataset feeds a DataLoader: samples/s with 0, 2 and 4 workers.

Builds a local latent store on the fly (ERA5-like sample data, a tiny WLA trained for a few
steps: its quality does not matter here), then iterates ``LatentDataset(store, lead_times=1)``
(pairs, so two frames are read per item) through a shuffled DataLoader. For each worker count
it reports the first epoch (including starting the workers) and the mean of the later epochs
(persistent workers). The main process runs torch with ``--threads`` threads (default 1, as
DataLoader workers do): on a busy machine torch's default thread pool makes the main process's
collation (``torch.stack``) 10-30x slower, which would hide the loader's own speed at 0 workers.
Run from the repository root:

    .venv/bin/python benchmarks/bench_loader.py            # ~1-2 minutes on 2 CPU cores
    .venv/bin/python benchmarks/bench_loader.py --times 512 --grid 73x144 --workers 0,2,4,8
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

import era5latent
from era5latent.io.sample import parse_grid


def build_store(root: Path, grid: tuple[int, int], times: int) -> Path:
    ds = era5latent.make_sample(grid=grid, times=times, variables=("z", "t", "t2m"),
                                levels=(500, 850), seed=0)
    model = root / "wla.safetensors"
    era5latent.train_model(ds, "z500,t850,t2m", model, steps=2, batch_size=2, device="cpu",
                           checkpoint_every=2)
    store = root / "latent.zarr"
    era5latent.encode_to_store(ds, model, "z500,t850,t2m", store, device="cpu", batch_size=16)
    return store


def epoch(loader: DataLoader[Any]) -> tuple[int, float]:
    start = time.perf_counter()
    n = 0
    for x, _ in loader:
        n += x.shape[0]
    return n, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--grid", default="73x144", help="sample grid NLATxNLON (default 73x144)")
    ap.add_argument("--times", type=int, default=256, help="time steps in the store")
    ap.add_argument("--workers", default="0,2,4", help="comma-separated worker counts")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3, help="epochs per worker count (>= 2)")
    ap.add_argument("--sequential", action="store_true", help="no shuffling")
    ap.add_argument("--store", help="use this latent store instead of building one")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the main process")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*worker processes in total.*")  # 4 on 2 CPUs: we know

    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        t0 = time.perf_counter()
        store = Path(args.store) if args.store else build_store(Path(tmp), parse_grid(args.grid),
                                                                args.times)
        built = time.perf_counter() - t0
        ds = era5latent.LatentDataset(store, lead_times=1)
        g, k, h, w = ds.item_shape
        print(f"store: {store if args.store else 'built in ' + f'{built:.0f} s'}; {len(ds)} items "
              f"(pairs) of {g}x{k}x{h}x{w}, time chunk {ds.time_chunk}; batch {args.batch_size}, "
              f"{'sequential' if args.sequential else 'shuffled'}")
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
              f"({torch.get_num_threads()} thread(s) in the main process), "
              f"python {sys.version.split()[0]}")
        print(f"{'workers':>7} | {'first epoch':>16} | {'later epochs':>16}")
        print(f"{'':>7} | {'samples/s':>16} | {'samples/s':>16}")
        for workers in (int(x) for x in args.workers.split(",")):
            loader = DataLoader(ds, batch_size=args.batch_size, shuffle=not args.sequential,
                                num_workers=workers, persistent_workers=workers > 0)
            n, first = epoch(loader)
            later = [epoch(loader) for _ in range(max(1, args.epochs - 1))]
            rate = sum(m for m, _ in later) / sum(s for _, s in later)
            print(f"{workers:>7} | {n / first:>16,.0f} | {rate:>16,.0f}")
            del loader


if __name__ == "__main__":
    main()
