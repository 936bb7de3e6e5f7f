"""Real ERA5: the hybrid store (WLA codes + error-bounded residual) against SZ3 alone.

    .venv/bin/python benchmarks/residual_tradeoff.py                   # both samples
    .venv/bin/python benchmarks/residual_tradeoff.py --datasets uk --steps 300
    .venv/bin/python benchmarks/residual_tradeoff.py --json residual.json

Per sample (the protocol and training of ``benchmarks/real_data.py``: its ``CASES``, same
train/test split, same seed), one WLA is trained, its plain store is decoded to get the WLA's
RMSE per channel, and then for each factor f in ``--factors`` (default 0.1x..2x):

* the **hybrid**: ``encode --max-error c=f*RMSE_c`` (SZ3 residuals, the default) on the test
  period, decoded in fp32; bytes per value = the store's codes plus residual arrays on disk
  (``residual_summary``: streams, lengths and checksums, zarr chunk files) over the values;
  the max abs error is measured against the source and must be within the bound;
* **SZ3 alone** (``baselines.SZ3``) at the same absolute bound, on the test cube of the channel
  as one stream (``sz3 cube``) and cut into the store's time chunks (``sz3 chunks``, the
  residuals' own granularity): stream bytes only, no container.

It also measures the decode drift the residual layer keeps a margin for: the max abs difference
between the fp32 1-thread reconstruction (what encode computed the residual against) and fp32
on 2 and 4 threads, another batch size, and bf16, in units of the channel's training std.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's era5latent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_data import CASES, DEFAULT_DATA, Case, _members

FACTORS = (0.1, 0.25, 0.5, 1.0, 2.0)


def drift(loaded: Any, store_path: str) -> dict[str, dict[str, float]]:
    """Max |recon - recon_ref| / std per channel, for decode settings other than the reference
    (fp32, 1 thread, batch 8)."""
    import torch

    from era5latent.pipeline import decode_fields, read_codes, select_store_channels
    from era5latent.store.core import open_latent_store

    store = open_latent_store(store_path)
    groups = select_store_channels(store, None)
    codes, _ = read_codes(store, groups, 0, len(store.times))
    cpu = torch.device("cpu")
    before = torch.get_num_threads()
    outs: dict[str, Any] = {}
    try:
        for name, threads, batch, prec in (("ref", 1, 8, "fp32"), ("2 threads", 2, 8, "fp32"),
                                           ("4 threads", 4, 8, "fp32"),
                                           ("batch 3", 1, 3, "fp32"), ("bf16", 1, 8, "bf16")):
            torch.set_num_threads(threads)
            outs[name] = decode_fields(loaded, groups, store.groups, codes, batch, cpu, prec)
    finally:
        torch.set_num_threads(before)
    norm = store.meta["normalisation"]
    return {name: {ch.code: float(np.max(np.abs(v.astype(np.float64) - outs["ref"][ch]))
                                  / norm[ch.code]["std"]) for ch, v in out.items()}
            for name, out in outs.items() if name != "ref"}


def run_case(case: Case, args: argparse.Namespace, tmp: str, log: Any) -> dict[str, Any]:
    from era5latent.evaluation.codecs import SZ3
    from era5latent.model.checkpoint import load_checkpoint
    from era5latent.pipeline import decode, encode
    from era5latent.store.info import residual_summary
    from era5latent.io.sources import open_source
    from era5latent.store.core import open_latent_store
    from era5latent.training import TrainOptions, train
    from era5latent.io.variables import parse_subset

    src = open_source(str(Path(args.data) / case.file))
    channels = parse_subset(case.subset)
    train_src, test_src = _members(src, case.train_members), _members(src, case.test_members)
    steps = args.steps or case.steps
    model = os.path.join(tmp, f"{case.name}.safetensors")
    t = time.perf_counter()
    train(train_src, channels, model,
          TrainOptions(preset="tiny", steps=steps, batch_size=8, time_range=case.train_range,
                       val_fraction=case.val_fraction, val_every=max(1, steps // 4),
                       checkpoint_every=steps, seed=args.seed, device="cpu",
                       overrides={"code_bits": args.code_bits}))
    log(f"  trained {steps} steps in {time.perf_counter() - t:.0f} s")
    loaded = load_checkpoint(model)
    a, b = test_src.time_indices(case.test_range)
    truth = test_src.read(channels, a, b)  # (nt, *sample, C, H, W)
    plain, recon = os.path.join(tmp, f"{case.name}-plain.zarr"), os.path.join(tmp, "r.zarr")
    encode(test_src, loaded, channels, plain, time_range=case.test_range, device="cpu",
           precision="fp32")
    decode(plain, loaded, recon, device="cpu", precision="fp32", overwrite=True)
    got = open_source(recon).read(channels, 0, b - a)
    rmse = {c.code: float(np.sqrt(np.mean((got[..., k, :, :].astype(np.float64)
                                           - truth[..., k, :, :]) ** 2)))
            for k, c in enumerate(channels)}
    wla_max = {c.code: float(np.max(np.abs(got[..., k, :, :].astype(np.float64)
                                           - truth[..., k, :, :])))
               for k, c in enumerate(channels)}
    plain_store = open_latent_store(plain)
    tc = plain_store.time_chunk
    out: dict[str, Any] = {"case": case.name, "title": case.title, "steps": steps,
                           "code_bits": args.code_bits,
                           "wla_rmse": rmse, "wla_max_error": wla_max,
                           "wla_bytes_per_value": residual_summary(plain_store)["bytes_per_value"],
                           "drift_std": drift(loaded, plain), "rows": []}
    for f in args.factors:
        bounds = {c: f * r for c, r in rmse.items()}
        spec = ",".join(f"{c}={v:.6g}" for c, v in bounds.items())
        store = os.path.join(tmp, f"{case.name}-{f}.zarr")
        from era5latent.pipeline.residual.core import STATS

        before = dict(STATS)
        t = time.perf_counter()
        encode(test_src, loaded, channels, store, time_range=case.test_range, device="cpu",
               precision="fp32", max_error=spec, overwrite=True)
        t_enc = time.perf_counter() - t
        decode(store, loaded, recon, device="cpu", precision="fp32", overwrite=True)
        dec = open_source(recon).read(channels, 0, b - a)
        summ = residual_summary(open_latent_store(store))
        hybrid_max = {c.code: float(np.max(np.abs(dec[..., k, :, :].astype(np.float64)
                                                  - truth[..., k, :, :])))
                      for k, c in enumerate(channels)}
        sz3_cube = sz3_chunks = 0
        sz3_max = 0.0
        for k, c in enumerate(channels):
            x = truth[..., k, :, :].reshape(-1, *truth.shape[-2:])
            codec = SZ3(float(bounds[c.code]))
            buf = codec.encode(x)
            sz3_cube += len(buf)
            sz3_max = max(sz3_max, float(np.max(np.abs(codec.decode(buf, x.shape)
                                                       - x.astype(np.float64)))) / bounds[c.code])
            per_t = x.shape[0] // (b - a)
            for s in range(0, b - a, tc):
                sz3_chunks += len(codec.encode(x[s * per_t:(s + tc) * per_t]))
        n = truth.size
        row = {"factor": f, "bounds": bounds, "spec": spec,
               "hybrid_bytes_per_value": summ["bytes_per_value"],
               "codes_bytes": summ["codes_bytes"], "residual_bytes": summ["residual_bytes"],
               "hybrid_max_error": hybrid_max,
               "within_bound": all(hybrid_max[c] <= bounds[c] for c in bounds),
               "sz3_cube_bytes_per_value": sz3_cube / n,
               "sz3_chunks_bytes_per_value": sz3_chunks / n,
               "sz3_max_error_over_bound": sz3_max, "encode_seconds": t_enc,
               "streams": STATS["streams"] - before["streams"],
               "tightened": STATS["tightened"] - before["tightened"]}
        out["rows"].append(row)
        log(f"  x{f}: hybrid {row['hybrid_bytes_per_value']:.4f} B/value, SZ3 "
            f"{row['sz3_cube_bytes_per_value']:.4f} (cube) {row['sz3_chunks_bytes_per_value']:.4f}"
            f" (chunks), within bound: {row['within_bound']}, {row['tightened']} of "
            f"{row['streams']} streams needed a tighter retry")
    return out


def table(res: dict[str, Any]) -> str:
    chans = list(res["wla_rmse"])
    lines = [f"### {res['title']}", "",
             f"WLA alone ({res.get('code_bits', 128)} bits per token, {res['steps']} training "
             "steps): "
             + ", ".join(f"{c} RMSE {res['wla_rmse'][c]:.4g}, max error "
                         f"{res['wla_max_error'][c]:.4g}" for c in chans)
             + f"; {res['wla_bytes_per_value']:.4f} B/value", "",
             ("| bound / WLA RMSE | bound | hybrid B/value (codes + residuals) | residuals alone "
              "B/value | SZ3 cube B/value | SZ3 chunks B/value | hybrid / SZ3 cube | hybrid max "
              "error / bound | within | retried streams |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        worst = max(r["hybrid_max_error"][c] / r["bounds"][c] for c in chans)
        n = (r["codes_bytes"] + r["residual_bytes"]) / r["hybrid_bytes_per_value"]
        lines.append(
            f"| {r['factor']:g}x | {', '.join(f'{c} {v:.3g}' for c, v in r['bounds'].items())} | "
            f"{r['hybrid_bytes_per_value']:.4f} ({r['codes_bytes']} + {r['residual_bytes']} B) | "
            f"{r['residual_bytes'] / n:.4f} | "
            f"{r['sz3_cube_bytes_per_value']:.4f} | {r['sz3_chunks_bytes_per_value']:.4f} | "
            f"{r['hybrid_bytes_per_value'] / r['sz3_cube_bytes_per_value']:.2f} | {worst:.3f} | "
            f"{'yes' if r['within_bound'] else 'NO'} | {r.get('tightened', '-')}/"
            f"{r.get('streams', '-')} |")
    lines += ["", ("Decode drift from the encoder's reconstruction (max abs difference / "
                   "channel training std):"), ""]
    lines += [f"- {name}: " + ", ".join(f"{c} {v:.2e}" for c, v in d.items())
              for name, d in res["drift_std"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="folder with the two GRIB samples")
    ap.add_argument("--datasets", default="uk,ensemble")
    ap.add_argument("--steps", type=int, default=None,
                    help="training steps (default: real_data.py's, 1500 uk, 800 ensemble)")
    ap.add_argument("--factors", default=",".join(map(str, FACTORS)),
                    help="bounds as multiples of the WLA's RMSE per channel")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--code-bits", type=int, default=128,
                    help="code bits per token of the WLA (fewer: smaller codes, larger residuals)")
    ap.add_argument("--json", default=None, help="write the records here")
    args = ap.parse_args(argv)
    args.factors = [float(f) for f in args.factors.split(",") if f.strip()]
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    missing = [CASES[n].file for n in names if not (Path(args.data) / CASES[n].file).is_file()]
    if missing:
        print(f"real ERA5 samples {missing} not found in {args.data}; set ERA5LATENT_REAL_DATA "
              "or pass --data", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="era5latent-residual-") as tmp:
        for n in names:
            log(f"{n}: {CASES[n].title}")
            results.append(run_case(CASES[n], args, tmp, log))
    total = time.perf_counter() - started
    print("## Hybrid store (WLA codes + SZ3 residuals) vs SZ3 alone at equal max error\n")
    print(f"{dt.date.today().isoformat()}, {platform.node() or 'machine'} ({os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, 1 thread); command: `"
          f"{shlex.join(['python', 'benchmarks/residual_tradeoff.py', *(argv or sys.argv[1:])])}`"
          f"; total {total:.0f} s\n")
    for res in results:
        print(table(res))
        print()
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "seconds": total,
                                               "results": results}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
