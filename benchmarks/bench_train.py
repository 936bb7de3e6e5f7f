"""Training throughput against its two bounds: the loader alone and the model step alone.

For each configuration (preset, loader workers) one fresh process measures, in the same run:

  loader   the streaming loader alone (read, normalise, shuffle, batch; workers as configured)
  step     the model's training step alone (every group's forward, backward and optimizer step)
           on batches already in memory
  train    the real training loop (loader and step together), steady state: samples/s of the
           loop's own log windows after the first (the first holds worker start-up)

efficiency = train / min(loader, step). Then `--nproc 2` (gloo, one thread each) against one
process on the same data, and, where CUDA is available (or with --device cuda), the paper preset
at 721 x 1440: step time, samples/s, peak memory and model FLOP utilisation in bf16.

    python benchmarks/bench_train.py                 # CPU: tiny and small, 0/2/4 workers, nproc
    python benchmarks/bench_train.py --quick         # fewer steps, tiny only
    python benchmarks/bench_train.py --device cuda --gpu-only   # the GPU section alone

The last line is `train efficiency X.XX`: the worst over the CPU configurations with workers.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

SUBSET = "z500,z850,t500,t850,t2m,msl"


def _trainer(data: str, out: str, preset: str, workers: int, steps: int, batch: int,
             device: str, log_dir: str | None, extra: dict[str, Any] | None = None) -> Any:
    from era5latent.io.sources import open_source
    from era5latent.training import TrainOptions
    from era5latent.training.distributed import World
    from era5latent.training.loop import Trainer, _device
    from era5latent.io.variables import parse_subset

    opts = TrainOptions(preset=preset, steps=steps, batch_size=batch, device=device,
                        workers=workers, val_fraction=0.0, checkpoint_every=10**9,
                        log_dir=log_dir, log_every=max(1, steps // 8), **(extra or {}))
    world = World()
    return Trainer(open_source(data), parse_subset(SUBSET), out, opts, world,
                   _device(device, world), None)


def worker(args: argparse.Namespace) -> None:
    """One configuration in this process; prints one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    tmp = tempfile.mkdtemp(prefix="bench-train-")
    # loader alone: the stream the loop reads (three runs of it), timed after its first run
    from era5latent.training.data import TrainStream, batches as stream_batches

    tr = _trainer(args.data, f"{tmp}/m.safetensors", args.preset, args.workers, args.steps,
                  args.batch_size, args.device, None)
    first_run = tr.schedule.run_batches
    stream = TrainStream(tr.schedule, tr.reader, 0, 1, 0, 3)
    n, t0 = 0, 0.0
    batches = []
    for i, (x, _) in enumerate(stream_batches(stream, args.workers, False)):
        if i == first_run:
            t0 = time.perf_counter()
        if i >= first_run:
            n += x.shape[0]
        if len(batches) < 4:
            batches.append(x.to(tr.device))
    loader = n / (time.perf_counter() - t0)
    # the step alone, on batches in memory
    k = max(4, args.steps // 4)
    for j in range(2):  # warm-up
        for g in tr.groups:
            tr.group_step(g, batches[j % len(batches)], j, 1e-4)
    t0 = time.perf_counter()
    for j in range(k):
        for g in tr.groups:
            tr.group_step(g, batches[j % len(batches)], j, 1e-4)
    if tr.device.type == "cuda":
        torch.cuda.synchronize()
    step = k * args.batch_size / (time.perf_counter() - t0)
    # the real loop
    log_dir = f"{tmp}/logs"
    tr = _trainer(args.data, f"{tmp}/m.safetensors", args.preset, args.workers, args.steps,
                  args.batch_size, args.device, log_dir)
    tr.run(None)
    rows = list(csv.DictReader(open(f"{log_dir}/metrics.csv")))
    rates = [float(r["samples_per_second"]) for r in rows[1:]]
    train = statistics.median(rates) if rates else float("nan")
    print(json.dumps({"loader": loader, "step": step, "train": train}))


def _run_worker(args: argparse.Namespace, preset: str, workers: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--worker", "--data", args.data, "--preset", preset,
           "--workers", str(workers), "--steps", str(args.steps), "--batch-size",
           str(args.batch_size), "--threads", str(args.threads), "--device", args.device]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ,
                                                                    "OMP_NUM_THREADS": "1"})
    if res.returncode:
        raise SystemExit(f"worker failed: {res.stderr[-2000:]}")
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def _nproc(args: argparse.Namespace, nproc: int, tmp: str) -> float:
    log_dir = f"{tmp}/nproc{nproc}"
    cmd = [sys.executable, "-m", "era5latent", "-q", "train", args.data, "--subset", SUBSET,
           "--out", f"{tmp}/n{nproc}.safetensors", "--preset", "tiny", "--steps",
           str(args.steps), "--batch-size", str(args.batch_size), "--device", "cpu",
           "--val-fraction", "0", "--checkpoint-every", str(10**9), "--log-dir", log_dir,
           "--log-every", str(max(1, args.steps // 8)), "--nproc", str(nproc)]
    res = subprocess.run(cmd, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    if res.returncode:
        raise SystemExit(f"train --nproc {nproc} failed: {res.stderr[-2000:]}")
    rows = list(csv.DictReader(open(f"{log_dir}/metrics.csv")))
    return statistics.median(float(r["samples_per_second"]) for r in rows[1:])


def gpu_section(args: argparse.Namespace) -> None:
    """The paper preset at 721 x 1440 on CUDA: step time, memory, MFU (bf16)."""
    import torch

    from era5latent.model.wla import preset_config
    from era5latent.training import TrainOptions
    from era5latent.training.loop import init_model
    from era5latent.training.losses import reconstruction_loss

    dev = torch.device(args.device if args.device.startswith("cuda") else "cuda")
    print("\nGPU: paper preset, 721 x 1440, one group of 13 levels, bf16 autocast, AdamW")
    print(f"{'batch':>5} {'ckpt':>5} {'step s':>8} {'samples/s':>10} {'peak GiB':>9} {'MFU':>6}")
    cfg = preset_config("paper", (721, 1440), ("t",))
    model = init_model(cfg, 0).to(dev)
    ae = model.autoencoders["t"]
    opt = torch.optim.AdamW(ae.parameters(), lr=1e-4, fused=True)
    meta = torch.tensor([50.0, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000],
                        device=dev)
    lat_w = torch.ones(1, 1, 721, 1, device=dev)
    ch_w = torch.ones(13, device=dev)
    flops = 3 * (3.87e12 + 7.79e12)  # forward + backward (2x) per sample, docs/model.md
    peak_tflops = float(os.environ.get("GPU_PEAK_TFLOPS", "989"))  # H100/H200 dense bf16
    _ = TrainOptions  # the options the loop would use: bf16 autocast, fp32 master weights
    for batch, ckpt in ((1, False), (1, True), (4, True)):
        ae.set_checkpoint_activations(ckpt)  # type: ignore[operator]
        x = torch.randn(batch, 13, 721, 1440, device=dev)
        torch.cuda.reset_peak_memory_stats(dev)
        times = []
        try:
            for i in range(6):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    out = ae(x, meta)
                loss = reconstruction_loss(out.recon, x, lat_w, ch_w)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                torch.cuda.synchronize()
                if i >= 2:
                    times.append(time.perf_counter() - t0)
        except torch.cuda.OutOfMemoryError:
            print(f"{batch:>5} {str(ckpt):>5} {'OOM':>8}")
            torch.cuda.empty_cache()
            continue
        dt = statistics.median(times)
        peak = torch.cuda.max_memory_allocated(dev) / 2**30
        mfu = batch * flops / dt / (peak_tflops * 1e12)
        print(f"{batch:>5} {str(ckpt):>5} {dt:>8.3f} {batch / dt:>10.2f} {peak:>9.1f} {mfu:>6.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--presets", default="tiny,small")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--worker-counts", default="0,2,4")
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--grid", default="73x144")
    ap.add_argument("--times", type=int, default=240)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--gpu-only", action="store_true")
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    import torch

    if args.gpu_only:
        gpu_section(args)
        return
    if args.quick:
        args.presets, args.steps, args.worker_counts = "tiny", 24, "0,2"
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        from era5latent.io.sample import parse_grid, write_sample

        args.data = f"{tmp}/d.zarr"
        write_sample(args.data, grid=parse_grid(args.grid), times=args.times,
                     variables=("z", "t", "t2m", "msl"), levels=(500, 850), seed=0)
        print(f"CPU training, grid {args.grid}, {SUBSET}, batch {args.batch_size}, "
              f"{args.steps} steps, {args.threads} model thread(s); samples/s")
        print(f"{'preset':<7} {'workers':>7} {'loader':>8} {'step':>8} {'train':>8} {'eff':>6}")
        worst = float("inf")
        for preset in args.presets.split(","):
            for w in (int(x) for x in args.worker_counts.split(",")):
                r = _run_worker(args, preset, w)
                eff = r["train"] / min(r["loader"], r["step"])
                if w > 0:
                    worst = min(worst, eff)
                print(f"{preset:<7} {w:>7} {r['loader']:>8.1f} {r['step']:>8.1f} "
                      f"{r['train']:>8.1f} {eff:>6.2f}", flush=True)
        one, two = _nproc(args, 1, tmp), _nproc(args, 2, tmp)
        print(f"\ntiny, --nproc 1: {one:.1f} samples/s; --nproc 2 (gloo): {two:.1f} samples/s "
              f"({two / one:.2f}x)")
    if torch.cuda.is_available() or args.device.startswith("cuda"):
        gpu_section(args)
    print(f"train efficiency {worst:.2f}")


if __name__ == "__main__":
    main()
