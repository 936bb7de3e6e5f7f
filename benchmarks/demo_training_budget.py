"""How many training steps make demo can afford: held-out RMSE against training time.

Trains the demo's tiny WLA on the demo's sample (seed 0, 200 six-hourly times at 73 x 144) with
each configuration and seed, encodes and decodes a second sample it never saw (seed 11, 40 times
from 2021-01-01), and scores it with ``era5latent evaluate``. Prints a Markdown table: training
seconds (median over seeds) and, per channel, the RMSE mean over seeds with its range.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/demo_training_budget.py --dir /tmp/budget \
        --configs 400x8,240x8,400x4 --seeds 0,1,2

Runs are kept in ``--dir`` and skipped when their JSON exists, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

CLI = [sys.executable, "-m", "era5latent"]
SUBSET_TRAIN = "z500,z850,t500,t850,t2m,msl"
SUBSET_EVAL = "z500,t850,t2m"
SAMPLE = ["--grid", "73x144", "--variables", "z,t,t2m,msl", "--levels", "500,850"]


def run(*args: str) -> None:
    subprocess.run([*CLI, *args], check=True, stdout=subprocess.DEVNULL)


def one(d: Path, steps: int, batch: int, seed: int) -> dict[str, float]:
    tag = d / f"s{steps}_b{batch}_seed{seed}"
    out = tag.with_suffix(".json")
    if not out.exists():
        t = time.perf_counter()
        run("train", str(d / "train.zarr"), "--subset", SUBSET_TRAIN, "--preset", "tiny",
            "--steps", str(steps), "--batch-size", str(batch), "--seed", str(seed),
            "--out", f"{tag}.safetensors")
        seconds = time.perf_counter() - t
        run("encode", str(d / "held.zarr"), "--model", f"{tag}.safetensors", "--subset",
            SUBSET_EVAL, "--out", f"{tag}.latent.zarr", "--overwrite")
        run("decode", f"{tag}.latent.zarr", "--model", f"{tag}.safetensors",
            "--out", f"{tag}.recon.zarr", "--overwrite")
        run("evaluate", str(d / "held.zarr"), f"{tag}.recon.zarr", "--json", f"{tag}.eval.json")
        records = json.loads(Path(f"{tag}.eval.json").read_text())["records"]
        rmse = {r["channel"]: r["rmse"] for r in records if r["method"] == "wla"}
        out.write_text(json.dumps({"train_seconds": seconds, "rmse": rmse}))
    return json.loads(out.read_text())  # type: ignore[no-any-return]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, required=True, help="work folder (kept, resumable)")
    ap.add_argument("--configs", default="400x8,240x8,400x4", help="STEPSxBATCH, comma-separated")
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()
    d = args.dir
    d.mkdir(parents=True, exist_ok=True)
    if not (d / "train.zarr").exists():
        run("sample", str(d / "train.zarr"), "--times", "200", "--seed", "0", *SAMPLE)
    if not (d / "held.zarr").exists():
        run("sample", str(d / "held.zarr"), "--times", "40", "--seed", "11",
            "--start", "2021-01-01T00", *SAMPLE)
    seeds = [int(s) for s in args.seeds.split(",")]
    print("| steps x batch | seeds | train s (median) | z500 RMSE | t850 RMSE | t2m RMSE |")
    print("|---|---|---|---|---|---|")
    for cfg in args.configs.split(","):
        steps, batch = (int(v) for v in cfg.split("x"))
        runs = [one(d, steps, batch, s) for s in seeds]
        cells = []
        for ch in SUBSET_EVAL.split(","):
            v = [r["rmse"][ch] for r in runs]
            cells.append(f"{statistics.mean(v):.4g} ({min(v):.4g}-{max(v):.4g})")
        secs = statistics.median(r["train_seconds"] for r in runs)
        print(f"| {steps} x {batch} | {len(runs)} | {secs:.0f} | " + " | ".join(cells) + " |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
