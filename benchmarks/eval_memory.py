"""Peak memory of ``evaluate`` at 0.25 degrees (721 x 1440) for a few numbers of time steps.

    .venv/bin/python benchmarks/eval_memory.py                       # 8, 24, 48 steps
    .venv/bin/python benchmarks/eval_memory.py --steps 8,96 --baselines bitround,sz3

Each size runs in a fresh child process (so one run's peak does not hide the next one's) that
opens a truth and a reconstruction Zarr (one channel, t2m-like, float32, written once to a
temporary folder), runs ``era5latent.evaluation.evaluate`` and reports its peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and the RSS before ``evaluate`` started (Python,
numpy, xarray, zarr imported, stores opened). With ``--baselines`` the codecs are size-matched to
a stand-in WLA size (``--bpv``, bytes per value; there is no latent store here) on the first
chunk and run on every chunk. evaluate streams, so the peak should not grow with the steps;
the largest run bounds what 1000 steps take.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, steps: int, seed: int, noise: float) -> None:
    import numpy as np
    import pandas as pd
    import xarray as xr

    lat = np.linspace(90, -90, 721)
    lon = np.arange(1440) * 0.25
    rng = np.random.default_rng(seed)
    base = (250 + 40 * np.cos(np.deg2rad(lat))[:, None] + 0 * lon[None, :]).astype(np.float32)
    times = pd.date_range("2020-01-01", periods=steps, freq="6h")
    ds = xr.Dataset({"t2m": (("time", "latitude", "longitude"),
                             np.zeros((steps, 721, 1440), np.float32))},
                    coords={"time": times, "latitude": lat, "longitude": lon})
    ds.t2m.attrs["units"] = "K"
    ds.to_zarr(path, mode="w", compute=False, consolidated=False,
               encoding={"t2m": {"chunks": (1, 721, 1440)}})
    for i in range(steps):  # one step at a time: the writer stays small too
        wave = np.sin(np.deg2rad(lon)[None, :] * 3 + i * 0.1) * np.cos(np.deg2rad(lat))[:, None]
        x = base + 5 * wave.astype(np.float32)
        if noise:
            x = x + rng.normal(0, noise, x.shape).astype(np.float32)
        ds.isel(time=[i]).assign(t2m=(("time", "latitude", "longitude"), x[None])).drop_vars(
            ["latitude", "longitude"]).to_zarr(path, region={"time": slice(i, i + 1)})


def child(truth: str, recon: str, baselines: str, bpv: float) -> None:
    import resource

    from era5latent.evaluation import score
    from era5latent.io.sources import open_source

    t_src, r_src = open_source(truth), open_source(recon)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    methods = [b for b in baselines.split(",") if b.strip()]
    latent = None
    if methods:
        score.wla_bytes_per_value = lambda store: {"t2m": bpv}  # type: ignore[assignment]
        latent = object()
    t = time.perf_counter()
    rep = score.evaluate(t_src, r_src, latent=latent, baselines=methods,  # type: ignore[arg-type]
                         sweep=[bpv] if methods else None)
    secs = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_rss_mib": peak / 1024, "rss_before_evaluate_mib": before / 1024,
                      "seconds": secs, "time_chunk": rep.time_chunk,
                      "rmse": rep.records[0]["rmse"]}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", default="8,24,48")
    ap.add_argument("--baselines", default="")
    ap.add_argument("--bpv", type=float, default=0.05)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child, args.baselines, args.bpv)
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="era5latent-evalmem-") as tmp:
        for n in (int(s) for s in args.steps.split(",")):
            truth, recon = Path(tmp) / f"t{n}.zarr", Path(tmp) / f"r{n}.zarr"
            _write(truth, n, 0, 0.0)
            _write(recon, n, 1, 0.5)
            out = subprocess.run([sys.executable, __file__, "--child", str(truth), str(recon),
                                  "--baselines", args.baselines, "--bpv", str(args.bpv)],
                                 capture_output=True, text=True, check=True,
                                 env={**os.environ, "PYTHONPATH": str(REPO)})
            rec = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"steps": n, **rec})
            print(f"{n} steps: peak RSS {rec['peak_rss_mib']:.0f} MiB (before evaluate "
                  f"{rec['rss_before_evaluate_mib']:.0f} MiB), {rec['seconds']:.1f} s, "
                  f"chunk {rec['time_chunk']} steps", file=sys.stderr, flush=True)
            import shutil

            shutil.rmtree(truth)
            shutil.rmtree(recon)
    print(f"{time.strftime('%Y-%m-%d')}, {platform.node()} ({os.cpu_count()} CPUs); baselines: "
          f"{args.baselines or 'none'}")
    print("| steps (721 x 1440) | peak RSS (MiB) | RSS before evaluate (MiB) | seconds |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['steps']} | {r['peak_rss_mib']:.0f} | {r['rss_before_evaluate_mib']:.0f} | "
              f"{r['seconds']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
