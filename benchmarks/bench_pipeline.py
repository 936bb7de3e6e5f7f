"""Encode/decode throughput against its two bounds: reading the source and running the model.

For each configuration (preset, batch size, time-range length) and verb, one fresh process
times three things:

  read     read (and decompress) every time chunk of the source, nothing else
  compute  the model on batches already in memory (normalise, encode, pack / unpack, decode),
           chunk by chunk as the pipeline cuts the range (one chunk's data, reused)
  pipeline the real `encode` / `decode` (reader thread, model, writer), to a fresh store

The pipeline runs first, once, cold (a user's run: its peak RSS is the process's peak, and
"first run" is its throughput over the lesser bound's); then read, compute, pipeline, read,
compute, pipeline, ..., read, compute. Each pipeline run's efficiency = its throughput /
min(read, compute), each bound the mean of its runs just before and just after; the table gives
the median over the runs, its standard error, their spread (min..max) and count. Load from other
processes that comes and goes, and the machine's drift, move a pipeline run and the bound runs
around it alike, so the ratio holds where separate processes seconds apart did not. There are at
least --rounds runs (--long-rounds for the long range), then more until the median's standard
error is within --target-se, at most --max-rounds, or --budget seconds per configuration. The
last two lines are `encode efficiency X.XX` and `decode efficiency X.XX`: the worst median over
the configurations run.

    python benchmarks/bench_pipeline.py            # CPU: tiny and small presets
    python benchmarks/bench_pipeline.py --quick    # a smaller, faster set
    python benchmarks/bench_pipeline.py --dir /dev/shm   # files in memory, not on a disk
    python benchmarks/bench_pipeline.py --device cuda --grid 721x1440 --presets small,paper

Where CUDA is available, a run with the default --device cpu adds a GPU section (small and paper
at 721 x 1440, 100 and 400 steps) after the CPU one; --gpu off leaves it out. Each section prints
its table; the two efficiency lines stay the worst of the CPU configurations.

The source is a synthetic sample (`era5latent sample`) stored as WeatherBench 2 stores ERA5:
Zarr v2, Blosc LZ4 with byte shuffle. --source-codec zstd keeps the sample as written (Zarr v3,
Zstandard), which takes about twice the CPU to decompress (the figures before 2026-12-07 15:00).
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
import statistics
import time
from typing import Any, cast

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
    """One configuration and verb in this process: the pipeline once cold, then pipeline runs
    between runs of the read and compute bounds; prints one JSON line of seconds."""
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
    n = args.times
    t_range = f"/{np.datetime_as_string(src.times[n - 1], unit='s')}"
    loaded = load_checkpoint(args.model)
    dev = resolve_device(args.device)
    prec = resolve_precision("auto", dev)
    loaded.model.to(dev).eval()
    step = args.time_chunk or auto_time_chunk(src, chs)  # 0: the default encode chooses

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def encode_read() -> None:
        for a in range(0, n, step):
            x = src.read(chs, a, min(a + step, n))
            if not np.isfinite(x).all():
                raise SystemExit("the benchmark's source holds non-finite values")

    x0 = src.read(chs, 0, min(n, step))  # one time chunk, (nt, *sample, C, H, W), reused

    def encode_compute() -> None:
        for a in range(0, n, step):  # the pipeline's chunks, the last one maybe partial
            with autocast(dev, prec):
                encode_block(loaded, chs, x0[:min(step, n - a)].reshape(-1, *x0.shape[-3:]),
                             args.batch_size, dev)
        sync()

    def encode_pipeline() -> None:
        encode(src, loaded, chs, args.out, time_range=t_range, batch_size=args.batch_size,
               device=args.device, time_chunk=step)

    store = open_latent_store(args.latent)
    groups = {g: tuple(parse_channel(c) for c in spec.channels) for g, spec in store.groups.items()}
    packed = {g: store.read_chunk(g, 0) for g in store.groups}  # one time chunk, reused

    def decode_read() -> None:
        for g in store.groups:
            for c in range(-(-n // store.time_chunk)):
                store.read_chunk(g, c)

    def decode_compute() -> None:
        for a in range(0, n, store.time_chunk):  # the pipeline's chunks, the last maybe partial
            for g, chs_g in groups.items():
                with autocast(dev, prec):
                    p = packed[g][:min(store.time_chunk, n - a)]
                    decode_block(loaded, g, chs_g, p.reshape(-1, *p.shape[-3:]),
                                 store.groups[g].code_bits, args.batch_size, dev)
        sync()

    def decode_pipeline() -> None:
        decode(args.latent, loaded, args.out, time_range=t_range, batch_size=args.batch_size,
               device=args.device)

    run = {"encode": {"read": encode_read, "compute": encode_compute, "pipeline": encode_pipeline},
           "decode": {"read": decode_read, "compute": decode_compute, "pipeline": decode_pipeline},
           }[args.verb]

    def timed(what: str) -> float:
        # the previous output: deleting it is not this measurement's work
        shutil.rmtree(args.out, ignore_errors=True)
        t0 = time.perf_counter()
        run[what]()
        return time.perf_counter() - t0

    out: dict[str, Any] = {"first": timed("pipeline")}  # first in the process: a user's run
    out["peak_rss_mib"] = _rss_mib()  # peak of the process so far: that first pipeline run
    # then read, compute, pipeline, read, compute, ..., pipeline, read, compute: every pipeline
    # run between two runs of each bound, which its ratio takes the mean of; at least --rounds
    # pipeline runs, then more until the median's standard error is within --target-se, at
    # most --max-rounds or --budget seconds
    rounds = [{"read": timed("read"), "compute": timed("compute")}]
    start = time.perf_counter()
    while True:
        rounds[-1]["pipeline"] = timed("pipeline")
        rounds.append({"read": timed("read"), "compute": timed("compute")})
        effs = efficiencies(rounds)
        if len(effs) >= args.max_rounds or (len(effs) >= args.rounds and (
                median_se(effs) <= args.target_se or
                time.perf_counter() - start >= args.budget)):
            break
    out["rounds"] = rounds
    shutil.rmtree(args.out, ignore_errors=True)
    print(json.dumps(out))


def run(verb: str, cfg: dict[str, Any], paths: dict[str, str], rounds: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", verb, "--data", paths["data"],
           "--model", paths[f"model_{cfg['preset']}"], "--latent", paths[f"latent_{cfg['preset']}"],
           "--out", paths["scratch"] + f"/{verb}.zarr", "--times", str(cfg["times"]),
           "--batch-size", str(cfg["batch"]), "--time-chunk", str(cfg["chunk"]),
           "--device", str(cfg["device"]), "--threads", str(cfg["threads"]),
           "--rounds", str(rounds), "--max-rounds", str(max(rounds, int(cfg["max_rounds"]))),
           "--target-se", str(cfg["target_se"]), "--budget", str(cfg["budget"])]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{verb} failed:\n{res.stderr[-3000:]}")
    return cast(dict[str, Any], json.loads(res.stdout.strip().splitlines()[-1]))


def efficiencies(rounds: list[dict[str, float]]) -> list[float]:
    """Each pipeline run's throughput over the lesser bound's, each bound the mean of its runs
    just before and just after the pipeline run (a load that comes and goes, or the machine's
    drift, moves all three alike)."""
    return [max((a["read"] + b["read"]) / 2, (a["compute"] + b["compute"]) / 2) / a["pipeline"]
            for a, b in zip(rounds, rounds[1:])]


def median_se(xs: list[float]) -> float:
    """Standard error of the median of ``xs``, from their median absolute deviation (robust to
    the odd run a burst of load spoiled): 1.2533 * 1.4826 * MAD / sqrt(n)."""
    if len(xs) < 2:
        return float("inf")
    m = statistics.median(xs)
    mad = statistics.median(abs(x - m) for x in xs)
    return float(1.2533 * 1.4826 * mad / len(xs) ** 0.5)


def row(verb: str, cfg: dict[str, Any], grid: str, m: dict[str, Any]) -> tuple[Any, ...]:
    """A table row from one worker's seconds: the efficiency is the median of the pipeline
    runs' own ratios (:func:`efficiencies`), beside its standard error (:func:`median_se`:
    two sittings whose medians differ by less than about twice theirs do not differ), their
    spread and count; the throughputs are medians."""
    n = int(cfg["times"])
    h, w = (int(v) for v in grid.split("x"))
    src_bytes = n * len(SUBSET.split(",")) * h * w * 4
    rs = m["rounds"]
    effs = efficiencies(rs)
    tp = [r["pipeline"] for r in rs[:-1]]
    tr, tc = ([r[k] for r in rs] for k in ("read", "compute"))
    bound = max(statistics.median(tr), statistics.median(tc))  # seconds of the lesser bound
    return (verb, cfg["preset"], cfg["batch"], n, n / statistics.median(tp),
            src_bytes / statistics.median(tp) / 1e6, n / statistics.median(tr),
            n / statistics.median(tc), statistics.median(effs), f"{median_se(effs):.3f}",
            f"{min(effs):.2f}..{max(effs):.2f}", len(effs), bound / m["first"], m["peak_rss_mib"])


#: the source's compression (--source-codec; the module's docstring says which is which)
SOURCE_CODECS = ("wb2", "zstd")


def as_wb2(path: str, out: str) -> None:
    """Copy the Zarr source at ``path`` to ``out`` as WeatherBench 2 stores its ERA5 fields: the
    same chunks, Zarr v2, Blosc LZ4 with byte shuffle at level 5."""
    import xarray as xr
    from numcodecs import Blosc

    ds = xr.open_zarr(path)
    keep = ("chunks", "units", "calendar", "dtype", "_FillValue")
    for v in ds.variables.values():
        v.encoding = {k: x for k, x in v.encoding.items() if k in keep}
    lz4 = Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE)
    ds.to_zarr(out, zarr_format=2, consolidated=True,
               encoding={name: {"compressors": lz4} for name in ds.data_vars})


def prepare(tmp: str, grid: str, times: int, presets: list[str], time_chunk: int, device: str,
            source_codec: str = "wb2") -> dict[str, str]:
    from typer.testing import CliRunner

    from era5latent.cli import app

    def cli(*args: str) -> None:
        r = CliRunner().invoke(app, list(args), catch_exceptions=False)
        if r.exit_code:
            raise SystemExit(r.stderr)

    paths = {"data": f"{tmp}/data.zarr", "scratch": tmp}
    sample = paths["data"] if source_codec == "zstd" else f"{tmp}/sample.zarr"
    cli("sample", sample, "--grid", grid, "--times", str(times), "--variables", "z,t,t2m",
        "--levels", "500,850")
    if sample != paths["data"]:
        as_wb2(sample, paths["data"])
        shutil.rmtree(sample)
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
          "| efficiency | its s.e. | spread | runs | first run | peak RSS MiB |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")



def run_section(sec: dict[str, Any], args: argparse.Namespace, tmp: str) -> list[tuple[Any, ...]]:
    """Every configuration of one section (a device, a grid, presets): rows as printed."""
    presets = sec["presets"]
    configs = []
    for p in presets:
        for batch in ((8,) if args.quick else (2, 8, 32)):
            configs.append({"preset": p, "batch": batch, "times": 100})
        if sec["long"]:
            configs.append({"preset": p, "batch": 8, "times": sec["long"]})
    print(f"## device {sec['device']}, grid {sec['grid']}", flush=True)
    paths = prepare(tmp, sec["grid"], max(sec["long"], 100), presets, args.time_chunk, sec["device"],
                    args.source_codec)
    rows = []
    for c in configs:
        c.update(chunk=args.time_chunk, device=sec["device"], threads=args.threads,
                 max_rounds=args.max_rounds, target_se=args.target_se, budget=args.budget)
        rounds = args.rounds if c["times"] <= 100 else args.long_rounds
        for verb in ("encode", "decode"):
            rows.append(row(verb, c, sec["grid"], run(verb, c, paths, rounds)))
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
    ap.add_argument("--source-codec", choices=SOURCE_CODECS, default="wb2",
                    help="the source's compression: wb2 (default) as WeatherBench 2 stores ERA5, "
                         "Zarr v2 with Blosc LZ4; zstd as 'era5latent sample' writes it, Zarr v3 "
                         "with Zstandard")
    ap.add_argument("--presets", default="tiny,small")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--long-steps", type=int, default=None,
                    help="time steps of the long configuration (default 1000, --quick 400; 0: none)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="the fewest pipeline runs per 100-step configuration (default 9, --quick 3)")
    ap.add_argument("--long-rounds", type=int, default=None,
                    help="the fewest for the long configuration (default 5, --quick 2)")
    ap.add_argument("--max-rounds", type=int, default=21,
                    help="the most pipeline runs per configuration (default 21)")
    ap.add_argument("--target-se", type=float, default=0.01,
                    help="more runs until the median efficiency's standard error is at most this "
                         "(default 0.01)")
    ap.add_argument("--budget", type=float, default=120.0,
                    help="no more runs after this many seconds of one configuration's runs, "
                         "once the fewest are done (default 120)")
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
    if args.rounds is None:
        args.rounds = 3 if args.quick else 9
    if args.long_rounds is None:
        args.long_rounds = 2 if args.quick else 5
    if args.worker:
        args.verb = args.worker
        worker(args)
        return

    long = args.long_steps if args.long_steps is not None else 400 if args.quick else 1000
    sections = [{"device": args.device, "grid": args.grid, "presets": args.presets.split(","),
                 "long": long}]
    if args.gpu == "on" or (args.gpu == "auto" and args.device == "cpu" and _cuda()):
        # 1,000 steps of five channels at 721 x 1440 would be 21 GB of source
        sections.append({"device": args.gpu_device, "grid": args.gpu_grid,
                         "presets": args.gpu_presets.split(","), "long": 200 if args.quick else 400})
    print(f"# era5latent pipeline benchmark, {time.strftime('%Y-%m-%d')}, "
          f"{os.cpu_count()} CPU threads, subset {SUBSET}, time chunk "
          f"{args.time_chunk or 'default'}, source {args.source_codec}, files in "
          f"{args.dir or tempfile.gettempdir()}, "
          f"{args.rounds}-{args.max_rounds} pipeline runs per configuration ({args.long_rounds}-"
          f"{args.max_rounds} for the long range) within {args.budget:.0f} s, target standard "
          f"error {args.target_se}",
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
            rss = {r[3]: r[13] for r in rows if r[0] == verb and r[2] == 8 and r[1] == p0}
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
