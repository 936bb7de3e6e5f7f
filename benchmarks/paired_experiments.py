"""The 2026-12-07 experiments behind docs/benchmarks.md's "Where the tiny encode loses its time",
reproducible. Unlike pipeline_experiments.py (one fresh process per variant), these alternate
variants in one process, each pipeline run between two runs of the compute bound, because this
machine's single-thread speed drifts by +-20% within a minute:

    python benchmarks/paired_experiments.py drift        # the same 100-step encode, back to back
    python benchmarks/paired_experiments.py timeline     # encode's start, model and end, per run
    python benchmarks/paired_experiments.py pvum         # encode_block with and without reusing
                                                         # the PVUM's generated weights
    python benchmarks/paired_experiments.py switchinterval  # GIL switch interval 5 ms vs 0.5 ms
    python benchmarks/paired_experiments.py zarrs-threads   # zarrs with all threads vs one
    python benchmarks/paired_experiments.py no-io        # the real encode vs one that neither
                                                         # reads the source nor writes the store
    python benchmarks/paired_experiments.py xarray-reads # the source's chunk files read directly
                                                         # (io/chunkread) vs through xarray/zarrs
    python benchmarks/paired_experiments.py stalls       # how long each background step keeps
                                                         # the GIL from a thread that wants it
    python benchmarks/paired_experiments.py wb2-source   # the source as `era5latent sample` writes
                                                         # it (Zarr v3, Zstandard) vs the same
                                                         # fields as WeatherBench 2 stores them
                                                         # (Zarr v2, Blosc LZ4; bench_pipeline's)
    python benchmarks/paired_experiments.py read-paths --grid 181x360 --steps 40
                                                         # a 32-step source read, its wall and CPU
                                                         # time through xarray/zarrs and directly,
                                                         # and directly from WB2's Blosc LZ4
    python benchmarks/paired_experiments.py seal         # LatentStore.mark_complete on fresh
                                                         # stores, and its zarr-python parts
    python benchmarks/paired_experiments.py io-threads --batch 8
                                                         # reads and writes on one background
                                                         # thread (encode's default beside a CPU
                                                         # model) vs a reader and a writer; with
                                                         # the model thread's CPU and wall time

tiny preset, batch 2 (--batch), 100 steps (--steps), 73 x 144, five channels in three groups,
one torch thread; --runs pairs (default 8). Files go to --dir (default /dev/shm if it exists).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pipeline_experiments import SUBSET, _setup  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("what", choices=["drift", "timeline", "pvum", "switchinterval",
                                     "zarrs-threads", "no-io", "stalls", "xarray-reads",
                                     "read-paths", "wb2-source", "seal", "io-threads"])
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--grid", default="73x144")
    ap.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    args = ap.parse_args()

    import numpy as np
    import torch
    import zarr

    import era5latent.pipeline.encoding as E
    from era5latent.io.sources import open_source
    from era5latent.io.variables import parse_subset
    from era5latent.malloc import tune_malloc
    from era5latent.model.checkpoint import load_checkpoint
    from era5latent.pipeline import encode_block

    torch.set_num_threads(1)
    tune_malloc()
    with tempfile.TemporaryDirectory(prefix="era5latent-paired-", dir=args.dir) as tmp:
        data, model = _setup(tmp, max(args.steps, 32), args.grid)
        n, bs, out = args.steps, args.batch, f"{tmp}/out.zarr"
        src = open_source(data)
        chs = parse_subset(SUBSET)
        loaded = load_checkpoint(model)
        t_range = f"/{np.datetime_as_string(src.times[n - 1], unit='s')}"
        x0 = src.read(chs, 0, 32)

        def compute() -> float:  # the pipeline's chunks from memory, as bench_pipeline times them
            t = time.perf_counter()
            for a in range(0, n, 32):
                encode_block(loaded, chs, x0[:min(32, n - a)].reshape(-1, *x0.shape[-3:]), bs,
                             torch.device("cpu"))
            return time.perf_counter() - t

        def pipeline(source: Any = src) -> float:
            shutil.rmtree(out, ignore_errors=True)
            t = time.perf_counter()
            E.encode(source, loaded, chs, out, time_range=t_range, batch_size=bs, device="cpu")
            return time.perf_counter() - t

        if args.what == "drift":
            for _ in range(args.runs):
                t, c = time.perf_counter(), time.process_time()
                compute()
                print(f"wall {time.perf_counter() - t:.2f} s  cpu {time.process_time() - c:.2f} s")
        elif args.what == "timeline":
            _timeline(E, pipeline, compute, args.runs)
        elif args.what == "read-paths":
            _read_paths(data, chs, args.runs)
        elif args.what == "stalls":
            _stalls(E, src, loaded, chs, x0, tmp, args.runs)
        elif args.what == "seal":
            _seal(E, src, loaded, chs, tmp, args.runs)
        elif args.what == "io-threads":
            _io_threads(E, pipeline, compute, args.runs)
        elif args.what == "pvum":
            wla: Any = type(loaded.model)  # patched: the PVUM weights made again for every batch
            real = wla.reuse_generated_weights
            ratios = []
            for i in range(args.runs):
                secs = {}
                for k in (("reuse", "fresh") if i % 2 else ("fresh", "reuse")):
                    wla.reuse_generated_weights = (
                        real if k == "reuse" else lambda self: contextlib.nullcontext())
                    secs[k] = compute()
                ratios.append(secs["reuse"] / secs["fresh"])
            wla.reuse_generated_weights = real
            print(f"time with reuse / without: median {statistics.median(ratios):.3f}, runs "
                  + " ".join(f"{r:.2f}" for r in ratios))
        else:
            _paired(args.what, pipeline, compute, args.runs, src, data, E, x0, zarr)


def _timeline(E: Any, pipeline: Callable[[], float], compute: Callable[[], float],
              runs: int) -> None:
    """Seconds in prepare_encode, the jobs' encode_chunk calls and finish, and encode_chunk's
    total over the same chunks computed alone (the mean of a run before and after)."""
    spent: dict[str, float] = {}

    def timed(owner: Any, name: str) -> None:
        f = getattr(owner, name)

        def wrapper(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - t
        setattr(owner, name, wrapper)

    timed(E, "prepare_encode")
    timed(E.EncodeJob, "encode_chunk")
    timed(E.EncodeJob, "finish")
    before = compute()
    for _ in range(runs):
        spent.clear()
        total = pipeline()
        after = compute()
        alone = (before + after) / 2
        print(f"total {total:.3f} s  start {spent['prepare_encode']:.3f}  model "
              f"{spent['encode_chunk']:.3f} ({spent['encode_chunk'] / alone:.2f}x alone)  end "
              f"{spent['finish']:.3f}  efficiency {alone / total:.3f}")
        before = after


def _wb2_copy(data: str) -> str:
    """The path of a copy of the source ``data`` as WeatherBench 2 stores ERA5 (Zarr v2, Blosc
    LZ4: bench_pipeline's source), made beside it."""
    from bench_pipeline import as_wb2

    copy = data.removesuffix(".zarr") + "-wb2.zarr"
    as_wb2(data, copy)
    return copy


def _seal(E: Any, src: Any, loaded: Any, chs: Any, tmp: str, runs: int) -> None:
    """``LatentStore.mark_complete`` (root attributes, metadata digests, consolidation) on
    ``runs`` fresh, fully written stores of the whole range, timed; then on ``runs`` more under
    cProfile, the part of it in ``zarr.consolidate_metadata`` and in zarr-python's root
    attribute writes. Medians."""
    import cProfile
    import pstats

    def written(k: int) -> Any:
        job = E.prepare_encode(src, loaded, chs, f"{tmp}/seal-{k}.zarr", batch_size=8,
                               device="cpu")
        for i in job.todo():
            job.write_chunk(i, job.encode_chunk(job.read_chunk(i)))
        return job.laid_out

    walls, consolidation, attrs = [], [], []
    for k in range(runs):
        store = written(k)
        t = time.perf_counter()
        store.mark_complete()
        walls.append(time.perf_counter() - t)
    for k in range(runs, 2 * runs):
        store = written(k)
        prof = cProfile.Profile()
        prof.runcall(store.mark_complete)
        st: Any = pstats.Stats(prof).stats  # {(file, line, name): (cc, nc, tt, ct, callers)}
        consolidation.append(sum(v[3] for f, v in st.items() if f[2] == "consolidate_metadata"))
        attrs.append(sum(v[3] for f, v in st.items()
                         if f[2] == "__setitem__" and f[0].endswith("attributes.py")))
    print(f"mark_complete {1e3 * statistics.median(walls):.1f} ms (runs "
          + " ".join(f"{1e3 * w:.1f}" for w in walls) + "); under cProfile, "
          f"zarr.consolidate_metadata {1e3 * statistics.median(consolidation):.1f} ms, root "
          f"attribute writes {1e3 * statistics.median(attrs):.1f} ms")


def _read_paths(data: str, chs: Any, runs: int) -> None:
    """Source.read of 32 steps through xarray and zarrs, then read directly (io/chunkread), then
    read directly from the same fields as WeatherBench 2 stores them (Zarr v2, Blosc LZ4:
    bench_pipeline's source), two rounds of ``runs`` reads each: medians of wall and CPU time
    (all threads)."""
    from era5latent.io.sources import open_source

    wb2 = _wb2_copy(data)
    for _ in range(2):
        for way, env, path in (("xarray and zarrs", "0", data), ("directly", "1", data),
                               ("directly, WB2 LZ4", "1", wb2)):
            os.environ["ERA5LATENT_DIRECT_READS"] = env  # each new Source's first read decides
            src = open_source(path)
            src.read(chs, 0, 1)
            walls, cpus = [], []
            for _ in range(runs):
                w, c = time.perf_counter(), time.process_time()
                src.read(chs, 0, 32)
                walls.append(time.perf_counter() - w)
                cpus.append(time.process_time() - c)
            print(f"{way:18s} wall {1e3 * statistics.median(walls):6.1f} ms, CPU "
                  f"{1e3 * statistics.median(cpus):6.1f} ms")
    del os.environ["ERA5LATENT_DIRECT_READS"]


def _stalls(E: Any, src: Any, loaded: Any, chs: Any, x0: Any, tmp: str, runs: int) -> None:
    """Per call of each step the encode's reader and writer threads run beside the model: its
    wall time; its CPU (all threads, and the calling thread's own), timed without the ticker;
    and how long a ticker thread (a stand-in for the model thread, which takes the GIL back after
    every torch op) waited for the GIL in gaps over 1 ms. Median of ``runs``."""
    import itertools
    import threading

    import numpy as np

    from era5latent.store import core

    job = E.prepare_encode(src, loaded, chs, f"{tmp}/stalls.zarr", batch_size=2, device="cpu")
    chunk = job.encode_chunk(x0)
    made = itertools.count()
    sealed = E.prepare_encode(src, loaded, chs, f"{tmp}/sealed.zarr", batch_size=8,
                              device="cpu")
    for i in sealed.todo():
        sealed.write_chunk(i, sealed.encode_chunk(sealed.read_chunk(i)))

    def seal() -> None:  # again and again: each time the same work, the same bytes
        sealed.laid_out.mark_complete()

    def lay_out(how: str) -> None:
        out = f"{tmp}/lay-{next(made)}.zarr"
        if how == "files":
            os.makedirs(out)
            core._create(out, job.spec)  # zarr-python, file by file (before 2026-12-07)
        elif how == "memory":  # zarr-python in memory, then the files (2026-12-07 morning)
            from zarr.storage import MemoryStore

            files: dict[str, Any] = {}
            core._create(MemoryStore(files), job.spec)
            for key, buf in files.items():
                dest = os.path.join(out, *key.split("/"))
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                with open(dest, "wb") as f:
                    f.write(buf.to_bytes())
        else:
            core.create_latent_store(out, job.spec)  # era5latent's bytes (io/zarrbytes)

    steps = {"source read (32 steps, 5 channels)": lambda: job.read_chunk(1),
             "chunk write (codes, sha256, done flag)": lambda: job.write_chunk(1, chunk),
             "lay out, zarr-python file by file": lambda: lay_out("files"),
             "lay out, zarr-python in memory": lambda: lay_out("memory"),
             "lay out, io/zarrbytes (encode's)": lambda: lay_out("ours"),
             "seal (mark_complete)": lambda: seal()}
    for name, fn in steps.items():
        walls: list[float] = []
        stalls: list[float] = []
        for _ in range(runs):
            gaps: list[float] = []
            stop = threading.Event()

            def tick() -> None:
                last = time.perf_counter()
                while not stop.is_set():
                    time.sleep(0.0002)  # lets go of the GIL, as a torch op does
                    now = time.perf_counter()
                    gaps.append(now - last)
                    last = now

            th = threading.Thread(target=tick)
            th.start()
            time.sleep(0.02)
            gaps.clear()
            t = time.perf_counter()
            fn()
            walls.append(time.perf_counter() - t)
            stop.set()
            th.join()
            stalls.append(sum(g for g in gaps if g > 0.001))
        cpus: list[float] = []
        own: list[float] = []  # without the ticker: the process's CPU, and the calling thread's
        for _ in range(runs):
            c, o = time.process_time(), time.thread_time()
            fn()
            cpus.append(time.process_time() - c)
            own.append(time.thread_time() - o)
        print(f"{name:38s} wall {1e3 * float(np.median(walls)):5.1f} ms, CPU "
              f"{1e3 * float(np.median(cpus)):5.1f} ms (its own thread "
              f"{1e3 * float(np.median(own)):4.1f}), GIL kept from the ticker "
              f"{1e3 * float(np.median(stalls)):5.1f} ms")


def _io_threads(E: Any, pipeline: Callable[[], float], compute: Callable[[], float],
                runs: int) -> None:
    """Encode with its reads and writes on one background thread (the default beside a CPU
    model) and on two (a reader and a writer, as beside a GPU), alternated, each run between two
    runs of the compute bound. Beside the efficiency, two ratios that this VM's drifting speed
    moves far less, since each divides times of the same thread taken within a second: the
    model thread's CPU time in ``encode_chunk`` over the compute bound's CPU time (the model
    slowed by the threads beside it), and its wall time over its CPU time (waiting for the GIL
    or for a core)."""
    real_chunk, real_choice = E.EncodeJob.encode_chunk, E.one_io_thread
    spent = {"cpu": 0.0, "wall": 0.0}

    def encode_chunk(self: Any, x: Any) -> Any:
        c, w = time.thread_time(), time.perf_counter()
        try:
            return real_chunk(self, x)
        finally:
            spent["cpu"] += time.thread_time() - c
            spent["wall"] += time.perf_counter() - w

    def compute_cpu() -> tuple[float, float]:
        c = time.thread_time()
        return compute(), time.thread_time() - c

    E.EncodeJob.encode_chunk = encode_chunk
    rows: dict[str, list[tuple[float, float, float]]] = {"one": [], "two": []}
    try:
        before = compute_cpu()
        for i in range(runs):
            for k in (("one", "two") if i % 2 == 0 else ("two", "one")):
                E.one_io_thread = real_choice if k == "one" else lambda *a: False
                spent.update(cpu=0.0, wall=0.0)
                secs = pipeline()
                after = compute_cpu()
                rows[k].append(((before[0] + after[0]) / 2 / secs,
                                spent["cpu"] / ((before[1] + after[1]) / 2),
                                spent["wall"] / spent["cpu"]))
                before = after
    finally:
        E.EncodeJob.encode_chunk, E.one_io_thread = real_chunk, real_choice
    names = {"one": "one background thread", "two": "a reader and a writer"}
    for k, v in rows.items():
        eff, cpu, wait = (statistics.median(x) for x in zip(*v))
        print(f"{names[k]:22s}: median efficiency {eff:.3f}, model CPU / compute CPU {cpu:.3f}, "
              f"model wall / CPU {wait:.3f} ({len(v)} runs; efficiencies "
              + " ".join(f"{r[0]:.2f}" for r in v) + ")")


def _paired(what: str, pipeline: Callable[..., float], compute: Callable[[], float], runs: int,
            src: Any, data: str, E: Any, x0: Any, zarr: Any) -> None:
    """The default pipeline and a variant, alternated; each run's efficiency against the mean
    of the compute runs around it."""
    from era5latent.io.sources import open_source

    @contextlib.contextmanager
    def variant() -> Iterator[Any]:
        if what == "switchinterval":
            old = sys.getswitchinterval()
            sys.setswitchinterval(0.0005)
            try:
                yield src
            finally:
                sys.setswitchinterval(old)
        elif what == "xarray-reads":  # the source read through xarray and zarrs, as before
            os.environ["ERA5LATENT_DIRECT_READS"] = "0"  # io/chunkread (its first read decides)
            try:
                yield via_xarray
            finally:
                del os.environ["ERA5LATENT_DIRECT_READS"]
        elif what == "wb2-source":
            yield wb2
        elif what == "zarrs-threads":
            with zarr.config.set({"threading.max_workers": 1}):
                one = open_source(data)  # zarrs takes its thread count when arrays open
            yield one
        else:  # no-io: the first chunk's data for every read, no writes, no sealing
            saved = E.read_fields, E.EncodeJob.write_chunk, E.EncodeJob.finish
            E.read_fields = lambda s, c, a, b: x0[:b - a].copy()
            E.EncodeJob.write_chunk = lambda self, i, chunk: None
            E.EncodeJob.finish = lambda self: None
            try:
                yield src
            finally:
                E.read_fields, E.EncodeJob.write_chunk, E.EncodeJob.finish = saved

    via_xarray = open_source(data)
    if what == "wb2-source":
        wb2 = open_source(_wb2_copy(data))
    effs: dict[str, list[float]] = {"default": [], what: []}
    before = compute()
    for i in range(runs):
        for k in (("default", what) if i % 2 == 0 else (what, "default")):
            if k == "default":
                secs = pipeline()
            else:
                with variant() as source:
                    secs = pipeline(source)
            after = compute()
            effs[k].append((before + after) / 2 / secs)
            before = after
    for k, v in effs.items():
        print(f"{k}: median efficiency {statistics.median(v):.3f}, runs "
              + " ".join(f"{e:.2f}" for e in v))


if __name__ == "__main__":
    main()
