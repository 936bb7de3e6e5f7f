"""The experiments behind docs/benchmarks.md's "What was changed" table, reproducible.

Each prints one line per variant, run back to back in fresh processes (timings on a shared
machine drift, so compare lines of one run):

    python benchmarks/pipeline_experiments.py malloc      # allocator thresholds: default vs tuned
    python benchmarks/pipeline_experiments.py timechunk   # encode with --time-chunk 8 vs 32
    python benchmarks/pipeline_experiments.py gil         # model speed beside a busy reader thread
    python benchmarks/pipeline_experiments.py zarrs       # zarr-python vs zarrs: read, encode,
                                                          # decode, each chunk's compute and write
    python benchmarks/pipeline_experiments.py codec       # compressors for decoded fields
    python benchmarks/pipeline_experiments.py all

tiny preset, 73 x 144 (--grid), five channels in three groups, one torch thread.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

SUBSET = "z500,z850,t500,t850,t2m"


def _setup(tmp: str, times: int, grid: str) -> tuple[str, str]:
    from typer.testing import CliRunner

    from era5latent.cli import app

    data, model = f"{tmp}/data.zarr", f"{tmp}/tiny.safetensors"
    for args in (["sample", data, "--grid", grid, "--times", str(times), "--variables",
                  "z,t,t2m", "--levels", "500,850"],
                 ["train", data, "--subset", SUBSET, "--preset", "tiny", "--steps", "2",
                  "--batch-size", "2", "--out", model, "--time", "/2020-01-02", "--device", "cpu"]):
        r = CliRunner().invoke(app, args, catch_exceptions=False)
        if r.exit_code:
            raise SystemExit(r.stderr)
    return data, model


def _child(what: str, data: str, model: str, arg: str) -> None:
    """One measurement in this (fresh) process; prints its line."""
    import numpy as np
    import torch

    from era5latent.malloc import tune_malloc
    from era5latent.model.checkpoint import load_checkpoint
    from era5latent.pipeline import decode, encode, encode_block
    from era5latent.io.sources import open_source
    from era5latent.io.variables import group_channels, parse_subset

    torch.set_num_threads(1)
    chs = parse_subset(SUBSET)
    src = open_source(data)
    if what == "malloc":
        applied = tune_malloc() if arg == "tuned" else False
        loaded = load_checkpoint(model)
        # time chunks of 8 steps, each its own array, as the pipeline hands them over (one big
        # block first would raise glibc's dynamic threshold and hide the effect)
        blocks = [src.read(chs, a, a + 8).reshape(-1, len(chs), *src.grid) for a in range(0, 32, 8)]
        dev = torch.device("cpu")
        t = time.perf_counter()
        for _ in range(8):
            for x in blocks:
                encode_block(loaded, chs, x.copy(), 8, dev)
        ms = (time.perf_counter() - t) / 8 * 1000
        print(f"malloc {arg:8s} (applied {applied}): {ms:6.1f} ms per 32 samples "
              "(four 8-step chunks)")
    elif what == "timechunk":
        tune_malloc()
        loaded = load_checkpoint(model)
        n = 400
        t_range = f"/{np.datetime_as_string(src.times[n - 1], unit='s')}"
        t = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            encode(src, loaded, chs, f"{out}/l.zarr", time_range=t_range, batch_size=8,
                   device="cpu", time_chunk=int(arg))
        print(f"time chunk {int(arg):3d}: {n / (time.perf_counter() - t):6.1f} samples/s "
              f"(encode, {n} steps)")
    elif what == "zarrs":  # the variant is in the environment (ERA5LATENT_ZARRS), set by main
        from era5latent import pipeline
        from era5latent.io import fields

        tune_malloc()
        reads = []
        for a in range(0, 320, 32):
            w, c = time.perf_counter(), time.process_time()
            src.read(chs, a, a + 32)
            reads.append((time.perf_counter() - w, time.process_time() - c))
        wall, cpu = sorted(reads)[len(reads) // 2]
        loaded = load_checkpoint(model)
        spans: dict[str, list[float]] = {}  # each chunk's compute and write, in order

        def timed(owner: object, name: str, key: str) -> None:
            orig = getattr(owner, name)

            def run(*a: object, **k: object) -> object:
                t = time.perf_counter()
                try:
                    return orig(*a, **k)
                finally:
                    spans.setdefault(key, []).append((time.perf_counter() - t) * 1e3)
            setattr(owner, name, run)

        timed(pipeline.EncodeJob, "encode_chunk", "encode compute")
        timed(pipeline.EncodeJob, "write_chunk", "encode write")
        timed(pipeline.decoding, "decode_fields", "decode compute")  # where decode looks it up
        timed(fields.FieldWriter, "write", "decode write")
        n = int(os.environ.get("EXP_STEPS", "100"))  # set by main from --steps
        t_range = f"/{np.datetime_as_string(src.times[n - 1], unit='s')}"
        with tempfile.TemporaryDirectory() as out:
            t = time.perf_counter()
            encode(src, loaded, chs, f"{out}/l.zarr", time_range=t_range, device="cpu")
            enc = n / (time.perf_counter() - t)
            t = time.perf_counter()
            decode(f"{out}/l.zarr", loaded, f"{out}/d.zarr", device="cpu")
            dec = n / (time.perf_counter() - t)
        print(f"zarrs {arg:3s}: read {wall * 1e3:5.1f} ms wall, {cpu * 1e3:5.1f} ms CPU per 32 "
              f"steps; encode {enc:6.1f}, decode {dec:6.1f} samples/s ({n} steps); ms per 32-step "
              "chunk (the last one partial): " + "; ".join(
                  f"{k} {' '.join(f'{v:.0f}' for v in vs)}" for k, vs in spans.items()))
    elif what == "codec":  # write 32 decoded steps (z, t at two levels, t2m) with one codec
        import shutil

        import zarr
        from zarr.codecs import BloscCodec, ZstdCodec

        from era5latent.fsutil import fast_zarr

        tune_malloc()
        loaded = load_checkpoint(model)
        codecs = {"zstd3": ZstdCodec(level=3),
                  "blosc-lz4-shuffle": BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
                  "blosc-zstd1-shuffle": BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")}
        with tempfile.TemporaryDirectory() as out:
            t_range = f"/{np.datetime_as_string(src.times[31], unit='s')}"
            encode(src, loaded, chs, f"{out}/l.zarr", time_range=t_range, device="cpu")
            decode(f"{out}/l.zarr", loaded, f"{out}/d.zarr", device="cpu")
            dec = zarr.open_group(f"{out}/d.zarr", mode="r")
            data = {k: dec[k][...] for k in ("geopotential", "temperature", "2m_temperature")}
            raw = sum(v.nbytes for v in data.values())
            best = 1e9
            for _ in range(9):  # best of 9: writes to disk vary a lot run to run
                shutil.rmtree(f"{out}/c.zarr", ignore_errors=True)
                with fast_zarr(f"{out}/c.zarr"):  # as decode writes
                    g = zarr.open_group(f"{out}/c.zarr", mode="w")
                    arrs = {k: g.create_array(k, shape=v.shape, chunks=(1, *v.shape[1:]),
                                              dtype="float32", compressors=codecs[arg],
                                              fill_value=float("nan")) for k, v in data.items()}
                t = time.perf_counter()
                for k, v in data.items():
                    arrs[k][...] = v
                best = min(best, time.perf_counter() - t)
            size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(f"{out}/c.zarr")
                       for f in fs if f != "zarr.json")
        print(f"codec {arg:20s}: {best * 1e3:5.1f} ms to write 32 decoded steps, "
              f"ratio {raw / size:.2f}")
    elif what == "gil":
        import threading

        tune_malloc()
        loaded = load_checkpoint(model)
        for p in loaded.model.parameters():
            p.requires_grad_(False)
        x = torch.from_numpy(src.read(chs, 0, 32)).float()
        runs = []
        for g, cg in group_channels(chs).items():
            idx = [chs.index(c) for c in cg]
            meta = torch.tensor([c.meta for c in cg])
            ae = loaded.model.autoencoders[g]

            def f(xb: torch.Tensor, ae: object = ae, meta: torch.Tensor = meta) -> torch.Tensor:
                return ae.quantizer.latent(ae.encoder(xb, meta))  # type: ignore[attr-defined]

            fn = f if arg == "eager" else torch.jit.trace(f, (x[:8, idx].contiguous(),),
                                                          check_trace=False)
            runs.append((idx, fn))

        def speed() -> float:
            t = time.perf_counter()
            with torch.no_grad():
                for _ in range(6):
                    for idx, fn in runs:
                        for s in range(0, 32, 8):
                            fn(x[s:s + 8, idx].contiguous())
            return 6 * 32 / (time.perf_counter() - t)

        alone = speed()
        stop = threading.Event()

        def read() -> None:
            while not stop.is_set():
                src.read(chs, 0, 32)

        th = threading.Thread(target=read)
        th.start()
        busy = speed()
        stop.set()
        th.join()
        print(f"gil {arg:7s}: {alone:6.1f} samples/s alone, {busy:6.1f} beside a busy reader "
              f"thread ({busy / alone:.2f})")


#: each experiment's variants; for the "off"/"on" ones the variant sets ERA5LATENT_ZARRS
VARIANTS = {"malloc": ["default", "tuned"], "timechunk": ["8", "32"], "gil": ["eager", "traced"],
            "zarrs": ["off", "on"],
            "codec": ["zstd3", "blosc-lz4-shuffle", "blosc-zstd1-shuffle"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("experiment", choices=[*VARIANTS, "all"])
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--repeat", type=int, default=2, help="runs of each variant (default 2)")
    ap.add_argument("--grid", default="73x144", help="the sample's grid (default 73x144)")
    ap.add_argument("--steps", type=int, default=100,
                    help="time steps the zarrs experiment encodes and decodes (default 100)")
    args = ap.parse_args()
    if args.child:
        _child(*args.child)
        return
    chosen = list(VARIANTS) if args.experiment == "all" else [args.experiment]
    env = {k: v for k, v in os.environ.items()
           if k not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}
    env.setdefault("OMP_NUM_THREADS", "1")
    env["EXP_STEPS"] = str(args.steps)
    print(f"# era5latent pipeline experiments, {time.strftime('%Y-%m-%d %H:%M')}, "
          f"{os.cpu_count()} CPU threads", flush=True)
    with tempfile.TemporaryDirectory(prefix="era5latent-exp-") as tmp:
        data, model = _setup(tmp, 400, args.grid)
        for exp in chosen:
            for _ in range(args.repeat):
                for v in VARIANTS[exp]:
                    r = subprocess.run([sys.executable, __file__, exp, "--child", exp, data,
                                        model, v], capture_output=True, text=True,
                                       env={**env, "ERA5LATENT_ZARRS": "1" if v == "on" else "0"}
                                       if VARIANTS[exp] == ["off", "on"] else env)
                    if r.returncode:
                        raise SystemExit(r.stderr[-3000:])
                    print(r.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
