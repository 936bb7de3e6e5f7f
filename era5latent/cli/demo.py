"""``make demo``: the whole job on built-in sample data, in a few minutes on a laptop CPU.

sample -> train (tiny) -> encode -> info -> decode -> evaluate against bit-rounding, ZFP and
SZ3 (the strongest classical codec here, error-bounded) at the same bytes per value, with plots;
the summary shows all three beside the WLA, whichever wins. The evaluation covers the last
times of the sample, the ones training held out, so the WLA is scored on fields it never
learned from. Every step is the CLI command a user would type, run in-process, so the demo shows
exactly what the README promises.

    python -m era5latent.cli.demo --out demo-out [--quick]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

SUBSET_TRAIN = "z500,z850,t500,t850,t2m,msl"
SUBSET_ENCODE = "z500,t850,t2m"
#: the classical codecs the demo compares at the WLA's bytes per value
BASELINES = ("bitround", "zfp", "sz3")
#: the sample's first time and time step
START, HOURS = "2020-01-01T00", 6
#: (grid, times, training steps). 240 steps: on the 2-core VM, 400 steps took 213 s alone and
#: missed the 5 minutes of make demo; 240 took 145 s, with a held-out RMSE 6-9% higher
#: (3 seeds each, docs/benchmarks.md)
FULL, QUICK = ("73x144", 200, 240), ("33x64", 40, 40)


def held_out(times: int) -> tuple[str, int]:
    """The first held-out time (ISO) of a sample of ``times`` steps, and how many there are:
    train's default ``--val-fraction`` keeps the last ones out of training."""
    from era5latent.training.loop import split_index
    from era5latent.training.options import TrainOptions

    k = split_index(times, TrainOptions.val_fraction)
    first = np.datetime64(START) + k * np.timedelta64(HOURS, "h")
    return str(first.astype("datetime64[h]")), times - k


def steps(out: Path, quick: bool) -> list[tuple[str, list[str]]]:
    grid, times, train_steps = QUICK if quick else FULL
    data, model = str(out / "sample.zarr"), str(out / "wla.safetensors")
    latent, recon = str(out / "latent.zarr"), str(out / "recon.zarr")
    first, _ = held_out(times)
    return [
        ("sample ERA5-like data", ["sample", data, "--grid", grid, "--times", str(times),
                                   "--start", START, "--freq", f"{HOURS}h",
                                   "--variables", "z,t,t2m,msl", "--levels", "500,850"]),
        ("train a tiny WLA", ["train", data, "--subset", SUBSET_TRAIN, "--preset", "tiny",
                              "--steps", str(train_steps), "--out", model]),
        ("encode", ["encode", data, "--model", model, "--subset", SUBSET_ENCODE, "--out", latent]),
        ("inspect", ["info", latent]),
        ("decode", ["decode", latent, "--model", model, "--out", recon]),
        ("evaluate on the held-out times",
         ["evaluate", data, recon, "--latent", latent, "--time", f"{first}/",
          "--baselines", ",".join(BASELINES), "--plot", str(out / "plots"),
          "--json", str(out / "evaluation.json")]),
    ]


def main(argv: list[str] | None = None) -> int:
    from era5latent.cli import app

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default="demo-out", help="folder for everything the demo writes")
    ap.add_argument("--quick", action="store_true", help="smaller grid and fewer steps (for CI)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    for i, (title, cmd) in enumerate(steps(out, args.quick), 1):
        print(f"\n[{i}] {title}: era5latent {' '.join(cmd)}", flush=True)
        try:
            app(cmd, standalone_mode=False)
        except SystemExit as exc:  # a command's error already printed its one line
            if exc.code:
                return int(exc.code)
    summary(out, time.perf_counter() - t0, held_out((QUICK if args.quick else FULL)[1])[1])
    return 0


def summary(out: Path, seconds: float, n_held_out: int) -> None:
    doc = json.loads((out / "evaluation.json").read_text())
    print(f"\nDemo finished in {seconds:.0f} s. Outputs in {out}/:")
    print("  sample.zarr      ERA5-like input (WeatherBench 2 layout)")
    print("  wla.safetensors  the trained tiny model")
    print("  latent.zarr      the latent store (era5latent info shows it)")
    print("  recon.zarr       decoded fields")
    print("  evaluation.json  metrics per method and channel; plots/ maps, spectra, curves")
    print(f"\nRMSE at equal bytes per value on the {n_held_out} held-out times (lower is "
          "better; SZ3 is the strongest classical codec here):")
    for line in summary_lines(doc["records"]):
        print(line)


def summary_lines(records: list[dict[str, Any]]) -> list[str]:
    """One line per channel: the WLA's RMSE beside each baseline's at its bytes per value, best
    first marked; a baseline that could not reach the WLA's size, or returned only zeros, is
    marked too."""
    by: dict[str, dict[str, dict[str, Any]]] = {}
    for r in records:
        by.setdefault(r["channel"], {})[r["method"]] = r
    lines = []
    for ch, rows in by.items():
        wla = rows.get("wla", {})
        ratio = wla.get("compression_ratio")
        best = min((r["rmse"] for r in rows.values() if r.get("rmse") is not None), default=None)
        cells = []
        for m, r in rows.items():
            name = {"wla": "WLA", "sz3": "SZ3"}.get(m, m)
            cell = f"{name} {r['rmse']:.4g}" if r.get("rmse") is not None else f"{name} -"
            if r.get("rmse") is not None and r["rmse"] == best:
                cell += " (best)"
            if "all_zero" in (r.get("size_flags") or []):  # zfp at its floor returns zeros
                cell += " (all zero)"
            if r.get("size_matched") is False:
                cell += f" (size not matched: {r['bytes_per_value']:.3g} B/value)"
            cells.append(cell)
        at = f"{ratio:.0f}x vs float32" if ratio else "size unknown"
        lines.append(f"  {ch:6s} ({at}): " + ", ".join(cells))
    return lines

if __name__ == "__main__":
    sys.exit(main())
