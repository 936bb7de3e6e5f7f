"""Encode/decode throughput against its two bounds: reading the source and running the model.

For each configuration (preset, batch size, time-range length) three things are timed in one
fresh process each, so peak RSS belongs to that measurement alone:

  read     read (and decompress) every time chunk of the source, nothing else
  compute  the model on batches already in memory (normalise, encode, pack / unpack, decode),
           chunk by chunk as the pipeline cuts the range (one chunk's data, reused)
  pipeline the real `encode` / `decode` (reader thread, model, writer), to a temporary store

efficiency = pipeline throughput / min(read, compute). The last two lines are
`encode efficiency X.XX` and `decode efficiency X.XX`: the worst over the configurations run.

    python benchmarks/bench_pipeline.py            # CPU: tiny and small presets
    python benchmarks/bench_pipeline.py --quick    # a smaller, faster set
    python benchmarks/bench_pipeline.py --dir /dev/shm   # files in memory, not on a disk
    python benchmarks/bench_pipeline.py --device cuda --grid 721x1440 --presets small,paper

Where CUDA is available, a run with the default --device cpu adds a GPU section (small and paper
at 721 x 1440, 100 and 400 steps) after the CPU one; --gpu off leaves it out. Each section prints
its table; the two efficiency lines stay the worst of the CPU configurations.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

SUBSET = "z500,z850,t500,t850,t2m"


def _rss_mib() -> float:
    """This process's peak RSS (VmHWM). Not getrusage: Linux carries ru_maxrss over from the
    parent across fork/exec, so every child would report the benchmark driver's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args: argparse.Namespace) -> None:
    """One measurement in this process; prints one JSON line."""
    import numpy as np
    import torch

    from era5latent.malloc import tune_malloc
    from era5latent.model.checkpoint import load_checkpoint
    from era5latent.pipeline import (auto_time_chunk, autocast, decode, decode_block, encode,
                                     encode_block, resolve_device, resolve_precision)
    from era5latent.io.sources import open_source
    from era5latent.store.core import open_latent_store
    from era5latent.io.variables import parse_channel, parse_subset

    torch.set_num_threads(args.threads)
    tune_malloc()  # as the CLI does, for every measurement alike
    chs = parse_subset(SUBSET)
    src = open_source(args.data)
    t_range = f"/{np.datetime_as_string(src.times[args.times - 1], unit='s')}"
    loaded = load_checkpoint(args.model)
    dev = resolve_device(args.device)
    prec = resolve_precision("auto", dev)
    loaded.model.to(dev).eval()
    step = args.time_chunk or auto_time_chunk(src, chs)  # 0: the default encode chooses
    n = args.times
    src_bytes = n * len(chs) * src.grid[0] * src.grid[1] * 4
    out: dict[str, float] = {}
    # the previous configuration's output: deleting it is not this measurement's work
    shutil.rmtree(args.out, ignore_errors=True)
    t0 = time.perf_counter()
    if args.what == "encode-read":
        for a in range(0, n, step):
            x = src.read(chs, a, min(a + step, n))
            assert np.isfinite(x).all()
    elif args.what == "encode-compute":
        x = src.read(chs, 0, min(n, step))  # one time chunk, (nt, *sample, C, H, W)
        t0 = time.perf_counter()
        for a in range(0, n, step):  # the pipeline's chunks, the last one maybe partial
            with autocast(dev, prec):
                encode_block(loaded, chs, x[:min(step, n - a)].reshape(-1, *x.shape[-3:]),
                             args.batch_size, dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
    elif args.what == "encode":
        encode(src, loaded, chs, args.out, time_range=t_range, batch_size=args.batch_size,
               device=args.device, time_chunk=step)
    elif args.what == "decode-read":
        store = open_latent_store(args.latent)
        for g in store.groups:
            for c in range(-(-n // store.time_chunk)):
                store.read_chunk(g, c)
    elif args.what == "decode-compute":
        store = open_latent_store(args.latent)
        packed = {g: store.read_chunk(g, 0) for g in store.groups}  # one time chunk, reused
        groups = {g: tuple(parse_channel(c) for c in spec.channels) for g, spec in store.groups.items()}
        step = store.time_chunk
        t0 = time.perf_counter()
        for a in range(0, n, step):  # the pipeline's chunks, the last one maybe partial
            for g, chs_g in groups.items():
                with autocast(dev, prec):
                    p = packed[g][:min(step, n - a)]
                    decode_block(loaded, g, chs_g, p.reshape(-1, *p.shape[-3:]),
                                 store.groups[g].code_bits, args.batch_size, dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
    elif args.what == "decode":
        decode(args.latent, loaded, args.out, time_range=t_range, batch_size=args.batch_size,
               device=args.device)
    else:
        raise SystemExit(f"unknown measurement {args.what}")
    secs = time.perf_counter() - t0
    out.update(seconds=secs, samples_per_s=n / secs, mb_per_s=src_bytes / secs / 1e6 * n / args.times,
               peak_rss_mib=_rss_mib())
    print(json.dumps(out))


def run(what: str, cfg: dict[str, object], paths: dict[str, str]) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--worker", what, "--data", paths["data"],
           "--model", paths[f"model_{cfg['preset']}"], "--latent", paths[f"latent_{cfg['preset']}"],
           "--out", paths["scratch"] + f"/{what}.zarr", "--times", str(cfg["times"]),
           "--batch-size", str(cfg["batch"]), "--time-chunk", str(cfg["chunk"]),
           "--device", str(cfg["device"]), "--threads", str(cfg["threads"])]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{what} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def prepare(tmp: str, grid: str, times: int, presets: list[str], time_chunk: int, device: str
            ) -> dict[str, str]:
    from typer.testing import CliRunner

    from era5latent.cli import app

    def cli(*args: str) -> None:
        r = CliRunner().invoke(app, list(args), catch_exceptions=False)
        if r.exit_code:
            raise SystemExit(r.stderr)

    paths = {"data": f"{tmp}/data.zarr", "scratch": tmp}
    cli("sample", paths["data"], "--grid", grid, "--times", str(times), "--variables", "z,t,t2m",
        "--levels", "500,850")
    for p in presets:
        paths[f"model_{p}"] = f"{tmp}/{p}.safetensors"
        paths[f"latent_{p}"] = f"{tmp}/{p}-latent.zarr"
        cli("train", paths["data"], "--subset", SUBSET, "--preset", p, "--steps", "2",
            "--batch-size", "2", "--out", paths[f"model_{p}"], "--time", "/2020-01-02",
            "--device", device)
        cli("encode", paths["data"], "--model", paths[f"model_{p}"], "--subset", SUBSET, "--out",
            paths[f"latent_{p}"], *(["--time-chunk", str(time_chunk)] if time_chunk else []),
            "--device", device)
    return paths


HEADER = ("| verb | preset | batch | times | samples/s | source MB/s | read bound | compute bound "
          "| efficiency | peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|---|")


def run_section(sec: dict[str, Any], args: argparse.Namespace, tmp: str) -> list[tuple[Any, ...]]:
    """Every configuration of one section (a device, a grid, presets): rows as printed."""
    presets = sec["presets"]
    configs = []
    for p in presets:
        for batch in ((8,) if args.quick else (2, 8, 32)):
            configs.append({"preset": p, "batch": batch, "times": 100})
        configs.append({"preset": p, "batch": 8, "times": sec["long"]})
    print(f"## device {sec['device']}, grid {sec['grid']}", flush=True)
    paths = prepare(tmp, sec["grid"], sec["long"], presets, args.time_chunk, sec["device"])
    rows = []
    for c in configs:
        c.update(chunk=args.time_chunk, device=sec["device"], threads=args.threads)
        for verb in ("encode", "decode"):
            rd = run(f"{verb}-read", c, paths)
            cp = run(f"{verb}-compute", c, paths)
            pl = run(verb, c, paths)
            eff = pl["samples_per_s"] / min(rd["samples_per_s"], cp["samples_per_s"])
            rows.append((verb, c["preset"], c["batch"], c["times"], pl["samples_per_s"],
                         pl["mb_per_s"], rd["samples_per_s"], cp["samples_per_s"], eff,
                         pl["peak_rss_mib"]))
            print("| " + " | ".join(_fmt(v) for v in rows[-1]) + " |", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--worker")
    ap.add_argument("--data"); ap.add_argument("--model"); ap.add_argument("--latent")
    ap.add_argument("--out"); ap.add_argument("--times", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--time-chunk", type=int, default=0,
                    help="time steps per store chunk (default 0: what encode chooses)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--grid", default="73x144")
    ap.add_argument("--presets", default="tiny,small")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dir", default=None,
                    help="where the source, stores and outputs go (default: the system's temporary "
                         "directory); e.g. /dev/shm to time the pipeline, not a rate-limited disk")
    ap.add_argument("--gpu", choices=["auto", "on", "off"], default="auto",
                    help="after the first section, a GPU section (default auto: where CUDA is "
                         "available and --device is cpu)")
    ap.add_argument("--gpu-device", default="cuda", help="the GPU section's device (default cuda)")
    ap.add_argument("--gpu-grid", default="721x1440")
    ap.add_argument("--gpu-presets", default="small,paper")
    args = ap.parse_args()
    if args.worker:
        args.what = args.worker
        worker(args)
        return

    sections = [{"device": args.device, "grid": args.grid, "presets": args.presets.split(","),
                 "long": 400 if args.quick else 1000}]
    if args.gpu == "on" or (args.gpu == "auto" and args.device == "cpu" and _cuda()):
        # 1,000 steps of five channels at 721 x 1440 would be 21 GB of source
        sections.append({"device": args.gpu_device, "grid": args.gpu_grid,
                         "presets": args.gpu_presets.split(","), "long": 200 if args.quick else 400})
    print(f"# era5latent pipeline benchmark, {time.strftime('%Y-%m-%d')}, "
          f"{os.cpu_count()} CPU threads, subset {SUBSET}, time chunk "
          f"{args.time_chunk or 'default'}, files in {args.dir or tempfile.gettempdir()}",
          flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="era5latent-bench-", dir=args.dir) as tmp:
        for k, sec in enumerate(sections):
            os.makedirs(f"{tmp}/{k}")
            results.append((sec, run_section(sec, args, f"{tmp}/{k}")))
    for sec, rows in results:
        print(f"\n## device {sec['device']}, grid {sec['grid']}\n{HEADER}")
        for r in rows:
            print("| " + " | ".join(_fmt(v) for v in r) + " |")
        p0 = sec["presets"][0]
        for verb in ("encode", "decode"):
            rss = {r[3]: r[9] for r in rows if r[0] == verb and r[2] == 8 and r[1] == p0}
            if len(rss) == 2:
                a, b = sorted(rss)
                print(f"peak RSS {verb} ({p0}, batch 8): {rss[a]:.0f} MiB at {a} steps, "
                      f"{rss[b]:.0f} MiB at {b} steps ({100 * (rss[b] / rss[a] - 1):+.1f}%)")
    # the last two lines: the worst of the CPU configurations (of all, if none ran on the CPU)
    cpu = [rows for sec, rows in results if sec["device"] == "cpu"] or [r for _, r in results]
    for verb in ("encode", "decode"):
        print(f"{verb} efficiency {min(r[8] for rows in cpu for r in rows if r[0] == verb):.2f}")


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _fmt(v: object) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    main()
