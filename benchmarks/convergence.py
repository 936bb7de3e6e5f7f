"""How fast does the WLA learn? Held-out RMSE against steps and CPU-seconds, per variant and seed.

    .venv/bin/python benchmarks/convergence.py                       # defaults, both samples
    .venv/bin/python benchmarks/convergence.py --datasets uk --variants channel,field \\
        --seeds 0,1,2 --steps 600 --eval-every 100 --json conv.json

The protocol of ``real_data.py`` (whose cases it uses): train on the training period or members,
score the held-out part (UK: the last week; ensemble: members 7-9). Every ``--eval-every`` steps
the checkpoint kept in the run's log folder is scored in-process (encode to bits, decode), so a
curve costs one training run. At the end of a run the last checkpoint goes through a real latent
store: its bytes per value on disk, the entropy of its stored bits (``era5latent.evaluation.
bitusage``) and SZ3 at those same bytes. Beside every curve: the training mean field.

A variant is a name from :data:`VARIANTS` (``--variants``); each changes one thing against
``default`` (the trainer's defaults), so an ablation is a list of names. Printed: one table of
mean and spread (min..max over seeds) per case, variant and evaluation step, and the final
table with bytes, entropy and SZ3. The figures in docs/evaluation.md come from this script.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_data import CASES, DEFAULT_DATA, _members  # noqa: E402

#: name -> (TrainOptions fields, WLAConfig overrides); each one change against "default"
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "default": ({}, {}),
    "channel": ({"normalise": "channel"}, {}),
    "field": ({"normalise": "field"}, {}),
    "no-entropy": ({}, {"entropy_sample_weight": 0.0, "entropy_codebook_weight": 0.0}),
    "codebook-batch": ({"codebook_entropy": "batch"}, {}),
    "codebook-0.5": ({}, {"entropy_codebook_weight": 0.5}),
    "lr-1e-3": ({"lr": 1e-3}, {}),
    "lr-4e-3": ({"lr": 4e-3}, {}),
    "batch-4": ({"batch_size": 4}, {}),
    "batch-16": ({"batch_size": 16}, {}),
    "warmup-0.2": ({"warmup_fraction": 0.2}, {}),
    "stride-4": ({}, {"patch_stride": 4}),
    "bits-32": ({}, {"code_bits": 32}),
    "width-128": ({}, {"width": 128}),
    "upstream-ste": ({"quantizer": "upstream"}, {}),
    "wd-0": ({"weight_decay": 0.0}, {}),
    "wd-0.05": ({"weight_decay": 0.05}, {}),
    "depth-4": ({}, {"enc_depth": 4, "dec_depth": 4}),
}


def reconstruct(loaded: Any, channels: tuple, x: np.ndarray) -> np.ndarray:
    """Physical fields (N, C, H, W) -> their reconstruction through the binary codes."""
    import torch

    from era5latent.io.variables import group_channels

    out = np.empty_like(x)
    model = loaded.model.eval()
    for chs in group_channels(channels).values():
        idx = [channels.index(c) for c in chs]
        g = chs[0].group
        mean, scale = loaded.meta.channel_stats(chs)
        z = torch.from_numpy(((x[:, idx] - mean) / scale).astype(np.float32))
        meta = [c.meta for c in chs]
        with torch.inference_mode():
            rec = model.decode(g, model.encode(g, z, meta), meta).numpy()
        out[:, idx] = rec * scale + mean
    return out


def weighted_rmse(truth: np.ndarray, rec: np.ndarray, lat: np.ndarray) -> float:
    """Mean over fields of the latitude-weighted RMSE (WB2's definition)."""
    from era5latent.evaluation.metrics import latitude_weights

    w = latitude_weights(lat)[:, None]
    return float(np.mean(np.sqrt(((rec - truth) ** 2 * w).mean(axis=(-2, -1)))))


def held_out(case: Any, data: str) -> tuple[Any, Any, tuple, np.ndarray, np.ndarray]:
    from era5latent.io.sources import open_source
    from era5latent.io.variables import parse_subset

    src = open_source(str(Path(data) / case.file))
    channels = parse_subset(case.subset)
    train_src, test_src = _members(src, case.train_members), _members(src, case.test_members)
    a, b = test_src.time_indices(case.test_range)
    test = test_src.read(channels, a, b)  # (T, [M,] C, H, W)
    test = test.reshape(-1, len(channels), *test_src.grid)
    t0, t1 = train_src.time_indices(case.train_range)
    n = t1 - t0 - (int(round((t1 - t0) * case.val_fraction)) if case.val_fraction else 0)
    train = train_src.read(channels, t0, t0 + n).reshape(-1, len(channels), *train_src.grid)
    return train_src, test_src, channels, test, train.mean(axis=0)


def run(case_name: str, variant: str, seed: int, args: argparse.Namespace, tmp: str,
        data: tuple) -> dict[str, Any]:
    from era5latent.evaluation import bitusage
    from era5latent.evaluation import sizematch
    from era5latent.model.checkpoint import load_checkpoint
    from era5latent.pipeline import decode, encode
    from era5latent.io.sources import open_source
    from era5latent.training import TrainOptions, train

    case = CASES[case_name]
    train_src, test_src, channels, test, _ = data
    fields, overrides = VARIANTS[variant]
    steps = args.steps or None  # 0: the trainer's default budget (patience, --max-time)
    if args.target_bpv:
        fields = {**fields, "target_bpv": args.target_bpv}
    tag = f"{case_name}-{variant}-s{seed}"
    out, logs = os.path.join(tmp, f"{tag}.safetensors"), os.path.join(tmp, f"{tag}-logs")
    # a fixed run validates at every evaluation; the default budget keeps the trainer's own
    # validation cadence, which its patience counts in
    cadence = {"val_every": args.eval_every} if steps else {}
    opts = TrainOptions(preset=args.preset, steps=steps, time_range=case.train_range,
                        val_fraction=case.val_fraction, checkpoint_every=args.eval_every,
                        seed=seed, device="cpu", log_dir=logs, overrides=overrides,
                        **cadence, **fields)
    cpu: dict[int, float] = {}
    c0 = time.process_time()

    def progress(step: int, total: int, loss: float) -> None:
        cpu[step] = time.process_time() - c0

    t = time.perf_counter()
    result = train(train_src, channels, out, opts, progress=progress)
    wall = time.perf_counter() - t
    lat = test_src.latitude
    curve = []
    snaps = sorted(Path(logs, "checkpoints").glob("step*.safetensors"))
    for snap_path in snaps:
        step = int(snap_path.stem[4:])
        if step % args.eval_every and snap_path != snaps[-1]:
            continue
        snap = str(snap_path)
        rec = reconstruct(load_checkpoint(snap), channels, test)
        curve.append({"step": step, "cpu_seconds": cpu.get(step, float("nan")),
                      **{c.code: weighted_rmse(test[:, k], rec[:, k], lat)
                         for k, c in enumerate(channels)}})
    loaded = load_checkpoint(out)
    latent, recon = out + ".latent.zarr", out + ".recon.zarr"
    encode(test_src, loaded, channels, latent, time_range=case.test_range, device="cpu",
           precision="fp32")
    decode(latent, loaded, recon, device="cpu", precision="fp32")
    usage = bitusage.store_usage(latent)
    rec_src = open_source(recon)
    final: dict[str, Any] = {}
    for k, c in enumerate(channels):
        r = rec_src.read((c,), 0, len(rec_src.times)).reshape(-1, *rec_src.grid)
        group = usage[c.group]
        bpv = group["bytes_per_value"]
        truth = test[:, k]
        sz3 = sizematch.match_size("sz3", truth, bpv)
        final[c.code] = {"rmse": weighted_rmse(truth, r, lat), "bytes_per_value": bpv,
                         "entropy_per_bit": group["entropy_per_bit"],
                         "sz3_rmse": weighted_rmse(truth, np.asarray(sz3.recon), lat),
                         "sz3_bytes_per_value": sz3.bytes_per_value}
    return {"case": case_name, "variant": variant, "seed": seed, "steps": result.steps,
            "stop_reason": result.stop_reason, "code_usage": result.code_usage,
            "wall_seconds": wall, "cpu_seconds": cpu.get(result.steps), "curve": curve,
            "final": final}


def spread(values: list[float]) -> str:
    m = statistics.fmean(values)
    return f"{m:.4g} ({min(values):.4g}..{max(values):.4g})" if len(values) > 1 else f"{m:.4g}"


def report(records: list[dict[str, Any]], refs: dict[str, dict[str, float]]) -> None:
    for case in dict.fromkeys(r["case"] for r in records):
        rows = [r for r in records if r["case"] == case]
        codes = list(rows[0]["final"])
        print(f"\n## {case}: held-out RMSE, mean (min..max) over seeds "
              f"{sorted({r['seed'] for r in rows})}; mean field: "
              + ", ".join(f"{c} {refs[case][c]:.4g}" for c in codes))
        print("| variant | step | CPU s | " + " | ".join(codes) + " |")
        print("|---|---:|---:|" + "---:|" * len(codes))
        for v in dict.fromkeys(r["variant"] for r in rows):
            runs = [r for r in rows if r["variant"] == v]
            shared = set.intersection(*({p["step"] for p in r["curve"]} for r in runs))
            for step in sorted(shared):  # the steps every seed was scored at
                pts = [next(p for p in r["curve"] if p["step"] == step) for r in runs]
                print(f"| {v} | {step} | {statistics.fmean(p['cpu_seconds'] for p in pts):.0f}"
                      " | " + " | ".join(spread([p[c] for p in pts]) for c in codes) + " |")
        print(f"\n## {case}: last checkpoint through a latent store (SZ3 at the same bytes)")
        print("| variant | channel | steps | RMSE | RMSE / mean field | SZ3 RMSE | WLA / SZ3 | "
              "bytes/value | entropy per stored bit |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for v in dict.fromkeys(r["variant"] for r in rows):
            runs = [r for r in rows if r["variant"] == v]
            for c in codes:
                f = [r["final"][c] for r in runs]
                print(f"| {v} | {c} | {spread([float(r['steps']) for r in runs])} | "
                      f"{spread([x['rmse'] for x in f])} | "
                      f"{spread([x['rmse'] / refs[case][c] for x in f])} | "
                      f"{spread([x['sz3_rmse'] for x in f])} | "
                      f"{spread([x['rmse'] / x['sz3_rmse'] for x in f])} | "
                      f"{spread([x['bytes_per_value'] for x in f])} | "
                      f"{spread([x['entropy_per_bit'] for x in f])} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--datasets", default="uk,ensemble")
    ap.add_argument("--variants", default="default", help=f"from {', '.join(VARIANTS)}")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=600,
                    help="0: the trainer's default budget (until patience, at most 10 minutes)")
    ap.add_argument("--target-bpv", type=float, default=None, help="train --target-bpv")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="write every record here (appended per run)")
    ap.add_argument("--report", nargs="+", default=None, metavar="JSON",
                    help="print the tables of earlier runs' --json files (trains nothing)")
    args = ap.parse_args()
    if args.report:
        records, refs = [], {}
        for path in args.report:
            data = json.loads(Path(path).read_text())
            records += data["records"]
            refs.update(data["mean_field"])
        report(records, refs)
        return 0
    if args.steps % args.eval_every:
        ap.error("--steps must be a multiple of --eval-every")
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}: expected names from {', '.join(VARIANTS)}")
    import torch

    torch.set_num_threads(args.threads)
    records: list[dict[str, Any]] = []
    refs: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="convergence-") as tmp:
        for case_name in args.datasets.split(","):
            data = held_out(CASES[case_name], args.data)
            _, test_src, channels, test, mean_field = data
            refs[case_name] = {c.code: weighted_rmse(test[:, k], np.broadcast_to(
                mean_field[k], test[:, k].shape), test_src.latitude)
                for k, c in enumerate(channels)}
            for variant in args.variants.split(","):
                for seed in (int(s) for s in args.seeds.split(",")):
                    r = run(case_name, variant, seed, args, tmp, data)
                    records.append(r)
                    print(f"{case_name} {variant} seed {seed}: {r['steps']} steps "
                          f"({r['stop_reason']}) in {r['wall_seconds']:.0f} s, "
                          + ", ".join(f"{c} {f['rmse']:.4g} (sz3 {f['sz3_rmse']:.4g} at "
                                      f"{f['bytes_per_value']:.4f} B/v, {f['entropy_per_bit']:.2f}"
                                      " bits/bit)" for c, f in r["final"].items()), flush=True)
                    if args.json:
                        Path(args.json).write_text(json.dumps(
                            {"records": records, "mean_field": refs}, indent=1))
    report(records, refs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
