"""Benchmark ``era5latent build-embed-map`` against its two bounds, with peak memory per phase.

    python benchmarks/bench_embedmap.py                    # full size: 310,000 rows x 768 floats
    python benchmarks/bench_embedmap.py --rows 50000 --dim 128

Generates an upstream-schema parquet ``[grid_id_coord, embedding list<float32>]`` in a temporary
directory, written the way pandas/pyarrow write it by default (one row group for 310k rows), with
cells drawn from a smooth pseudo-continent mask (as clustered as real land), then runs each phase
in its own subprocess and reads that child's peak RSS from ``os.wait4`` (``ru_maxrss``):

* ``scan``:  read the parquet with pyarrow (record batches, embedding to numpy): the read bound;
* ``write``: write a Zarr of exactly the built store's shape, chunks, dtype and codecs, random
  values on the same valid cells and the fill elsewhere, chunk-aligned: the write bound;
* ``build``: ``python -m era5latent.cli build-embed-map IN --out OUT``.

The build passes if its peak RSS is under 1.5 GiB and its wall time is within 2x of
scan + write. Timings include interpreter start-up and imports in every phase.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
N_LAT, N_LON = 721, 1440


# --- phases (each runs in a child process) -------------------------------------------------------


def phase_generate(parquet: Path, rows: int, dim: int, row_group_rows: int | None) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    i, j = np.meshgrid(np.arange(N_LAT), np.arange(N_LON), indexing="ij")
    field = (np.sin(i / 37.0) * np.cos(j / 53.0) + 0.6 * np.sin((i + 2 * j) / 29.0)
             + 0.3 * rng.standard_normal(i.shape))
    order = np.argsort(field.ravel())[::-1]  # the `rows` highest cells = one clustered "land"
    if rows > order.size:
        raise SystemExit(f"--rows {rows} exceeds the {order.size} cells of the grid")
    cells = np.sort(rng.permutation(order[:rows]))
    ci, cj = cells // N_LON, cells % N_LON
    lat, lon = -90.0 + 0.25 * ci, -180.0 + 0.25 * cj
    ids = pa.array([f"{c:07d}_{x:.2f}_{y:.2f}" for c, x, y in zip(cells, lon, lat)])
    vals = rng.standard_normal((rows, dim), dtype=np.float32)
    offsets = pa.array(np.arange(0, (rows + 1) * dim, dim, dtype=np.int32))
    emb = pa.ListArray.from_arrays(offsets, pa.array(vals.ravel()))
    pq.write_table(pa.table({"grid_id_coord": ids, "embedding": emb}), parquet,
                   row_group_size=row_group_rows)


def phase_scan(parquet: Path, batch_rows: int) -> None:
    import numpy as np
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(parquet, buffer_size=1 << 20, pre_buffer=False)
    total = 0.0
    for batch in pf.iter_batches(batch_size=batch_rows):
        ids = batch.column("grid_id_coord")
        vecs = np.asarray(batch.column("embedding").flatten().to_numpy(zero_copy_only=False))
        total += float(vecs[:1].sum()) + len(ids)
    print(total)


def phase_write(like: Path, target: Path, workers: int) -> None:
    """Write a store shaped like ``like``'s embedding (same chunks/codecs), random on valid."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import zarr

    src = zarr.open_group(str(like), mode="r")
    e = src["embedding"]
    valid = src["valid"][...]
    g = zarr.open_group(str(target), mode="w", zarr_format=3)
    a = g.create_array("embedding", shape=e.shape, chunks=e.chunks, dtype=e.dtype,
                       fill_value=e.fill_value, compressors=e.compressors, filters=e.filters,
                       dimension_names=e.metadata.dimension_names)
    cl, cw, c = e.chunks
    rng = np.random.default_rng(1)
    noise = rng.standard_normal((cl * cw, c), dtype=np.float32).astype(e.dtype)

    def write(k: tuple[int, int]) -> None:
        r0, c0 = k
        r1, c1 = min(N_LAT, r0 + cl), min(N_LON, c0 + cw)
        vm = valid[r0:r1, c0:c1].ravel()
        if not vm.any():
            return
        block = np.full(((r1 - r0) * (c1 - c0), c), e.fill_value, dtype=e.dtype)
        block[vm] = noise[: vm.size][vm]
        a[r0:r1, c0:c1, :] = block.reshape(r1 - r0, c1 - c0, c)

    keys = [(r, q) for r in range(0, N_LAT, cl) for q in range(0, N_LON, cw)]
    with ThreadPoolExecutor(max_workers=workers) as ex:
        list(ex.map(write, keys))
    g.create_array("valid", shape=valid.shape, dtype=bool, fill_value=False,
                   dimension_names=["latitude", "longitude"])[...] = valid


# --- driver ----------------------------------------------------------------------------------


def run_child(args: list[str]) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MiB, exit status) of one child process."""
    t = time.perf_counter()
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - t, usage.ru_maxrss / 1024.0, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=310_000, help="grid cells (rows); default 310000")
    ap.add_argument("--dim", type=int, default=768, help="embedding length D; default 768")
    ap.add_argument("--row-group-rows", type=int, default=None,
                    help="parquet row-group size; default: pyarrow's (one group for 310k rows)")
    ap.add_argument("--batch-rows", type=int, default=8192)
    ap.add_argument("--workdir", type=Path, default=None,
                    help="where to put the temporary files (default: the system temp dir)")
    ap.add_argument("--build-args", default="", help="extra build-embed-map options, quoted")
    ap.add_argument("--json", action="store_true", help="also print the numbers as JSON")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("--paths", nargs="*", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                    help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.phase == "generate":
        return phase_generate(a.paths[0], a.rows, a.dim, a.row_group_rows)
    if a.phase == "scan":
        return phase_scan(a.paths[0], a.batch_rows)
    if a.phase == "write":
        return phase_write(a.paths[0], a.paths[1], a.workers)

    py = sys.executable
    me = [py, str(Path(__file__).resolve())]
    tmp = Path(tempfile.mkdtemp(prefix="bench-embedmap-", dir=a.workdir))
    try:
        parquet, out, bound = tmp / "embeddings.parquet", tmp / "map.zarr", tmp / "bound.zarr"
        res: dict[str, tuple[float, float]] = {}
        steps = [
            ("generate", me + ["--phase", "generate", "--rows", str(a.rows), "--dim", str(a.dim)]
             + (["--row-group-rows", str(a.row_group_rows)] if a.row_group_rows else [])
             + ["--paths", str(parquet)]),
            ("scan", me + ["--phase", "scan", "--batch-rows", str(a.batch_rows),
                           "--paths", str(parquet)]),
            ("build", [py, "-m", "era5latent.cli", "build-embed-map", str(parquet), "--out",
                       str(out), "--batch-rows", str(a.batch_rows)] + a.build_args.split()),
            ("write", me + ["--phase", "write", "--workers", str(a.workers), "--paths", str(out),
                            str(bound)]),
        ]
        for name, cmd in steps:
            wall, rss, rc = run_child(cmd)
            if rc != 0:
                raise SystemExit(f"phase {name} failed with exit status {rc}: {' '.join(cmd)}")
            res[name] = (wall, rss)
            print(f"  {name:<9} {wall:8.1f} s {rss:9.0f} MiB", file=sys.stderr)
        size_mb = parquet.stat().st_size / 2**20
        store_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
        bound_s = res["scan"][0] + res["write"][0]
        ratio = res["build"][0] / bound_s
        peak = res["build"][1]
        print(f"embedding map benchmark: {a.rows} rows x {a.dim} float32, parquet "
              f"{size_mb:.0f} MiB, store {store_mb:.0f} MiB; {platform.node() or 'host'}, "
              f"{os.cpu_count()} cores, python {platform.python_version()}")
        print()
        print("| phase | wall (s) | peak RSS (MiB) |")
        print("| --- | ---: | ---: |")
        print(f"| generate parquet (setup, not a bound) | {res['generate'][0]:.1f} | "
              f"{res['generate'][1]:.0f} |")
        print(f"| read bound: scan parquet (pyarrow batches) | {res['scan'][0]:.1f} | "
              f"{res['scan'][1]:.0f} |")
        print(f"| write bound: write same-shaped zarr | {res['write'][0]:.1f} | "
              f"{res['write'][1]:.0f} |")
        print(f"| read + write bound | {bound_s:.1f} | |")
        print(f"| **build-embed-map** | **{res['build'][0]:.1f}** | **{peak:.0f}** |")
        print()
        ok_t, ok_m = ratio <= 2.0, peak < 1536
        print(f"build / (read + write) = {ratio:.2f} (limit 2.0: {'PASS' if ok_t else 'FAIL'}); "
              f"peak RSS {peak:.0f} MiB (limit 1536: {'PASS' if ok_m else 'FAIL'})")
        if a.json:
            print(json.dumps({k: {"seconds": v[0], "peak_rss_mib": v[1]} for k, v in res.items()}
                             | {"ratio": ratio, "rows": a.rows, "dim": a.dim}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
