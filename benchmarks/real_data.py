"""Real ERA5: the WLA against bit-rounding, xbitinfo, zfp, SZ3, EBCC and PCodec at equal bytes.

    .venv/bin/python benchmarks/real_data.py                 # both samples (see docs/evaluation.md)
    .venv/bin/python benchmarks/real_data.py --datasets uk   # only the UK t2m sample
    .venv/bin/python benchmarks/real_data.py --datasets uk --rd-code-bits '' --ebcc  # + an EBCC row
    .venv/bin/python benchmarks/real_data.py --steps 300 --rd-code-bits ''   # the trainer's default steps
    .venv/bin/python benchmarks/real_data.py --json results.json

Data: the two real ERA5 GRIB samples in ``../shared/data`` (or ``$ERA5LATENT_REAL_DATA``; see
its README). Nothing is copied: models, latent stores and reconstructions live in a temporary
directory that is removed at the end.

Protocol, per sample:

* ``uk``: hourly t2m over the British Isles, March 2019 (33 x 49, 0.25 deg). Train on
  2019-03-01..21 (504 fields); the trainer's own validation uses 03-22..24 (72 fields); the score
  is on the last week, 03-25..31 (168 fields), which training never saw.
* ``ensemble``: z and t at 850/500 hPa, 10 EDA members x 4 analysis times (61 x 120, 3 deg global).
  Train on members 0-6 (all 4 times: 28 fields per channel, no validation split), score on
  members 7-9 (12 fields per channel).

Everything goes through the library as a user's script would: ``open_source`` -> ``train`` ->
``load_checkpoint`` -> ``pipeline.encode`` (a real latent store) -> ``pipeline.decode`` (a real
Zarr of fields) -> ``open_source`` -> ``evaluate`` with the baselines size-matched to the store's
bytes on disk, plus the rate-distortion sweep. Extra WLA points for the rate-distortion curve come
from models trained with fewer code bits per token (``--rd-code-bits``).

Reference rows with no bytes (context, not codecs): ``mean (scalar)`` predicts the training
period's mean of the channel everywhere; ``mean field`` predicts the training period's time-mean
field (per grid point).

Every baseline row states the bytes per value it reached and whether that is within 10% of the
WLA's (``size_matched``; the tables mark misses with a dagger, and zfp's all-zero floor with
"ALL ZERO"); xbitinfo and pcodec rows have a fixed size (keepbits from the data; lossless).

Bytes: ``evaluate`` counts the WLA at its latent store's bytes on disk (zstd-compressed packed
codes); the rate-distortion table also shows every WLA model at the raw size of its codes (tokens x
code bytes per field), with the baselines matched there too. docs/evaluation.md explains both.

Training is seeded (``--seed``), so a run repeats its numbers. torch runs on ``--threads`` threads
(default 1): on a shared 2-core machine two OpenMP threads competing with other jobs made a
training step about 15x slower than one thread (650 vs 40 ms).
"""

from __future__ import annotations

import argparse
import dataclasses
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

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("ERA5LATENT_REAL_DATA", REPO.parent / "shared" / "data"))
UK_FILE = "era5-t2m-uk-2019-03.grib"
ENSEMBLE_FILE = "era5-levels-members.grib"


@dataclasses.dataclass
class Case:
    name: str
    file: str
    subset: str
    title: str
    train_range: str | None = None  # trainer's time range (train + its validation tail)
    val_fraction: float = 0.0
    test_range: str | None = None
    train_members: slice | None = None
    test_members: slice | None = None
    steps: int = 1500  # training steps (batch 8) unless --steps is given
    rd_code_bits: tuple[int, ...] = ()  # extra WLA models for the rate-distortion curve


CASES = {
    "uk": Case("uk", UK_FILE, "t2m", "UK hourly t2m, March 2019 (33 x 49): train 1-21, test 25-31",
               train_range="2019-03-01/2019-03-24T23", val_fraction=3 / 24,
               test_range="2019-03-25/2019-03-31T23", steps=1500, rd_code_bits=(64, 32)),
    "ensemble": Case("ensemble", ENSEMBLE_FILE, "z850,z500,t850,t500",
                     "ERA5 EDA z/t 850/500 hPa (61 x 120, 4 times): members 0-6 train, 7-9 test",
                     train_members=slice(0, 7), test_members=slice(7, 10), steps=800),
}


def _members(src: Any, sl: slice | None) -> Any:
    return src if sl is None else dataclasses.replace(src, ds=src.ds.isel(number=sl))


def reference_records(train_src: Any, test_src: Any, channels: tuple, case: Case) -> list[dict]:
    """Predictors with no bytes: the training mean (one number) and time-mean field per channel."""
    from era5latent.evaluation import metrics

    t0, t1 = train_src.time_indices(case.train_range)
    n_train = t1 - t0
    if case.val_fraction:
        n_train -= int(round(n_train * case.val_fraction))
    a, b = test_src.time_indices(case.test_range)
    out = []
    for ch in channels:
        tr = train_src.read((ch,), t0, t0 + n_train).reshape(-1, *train_src.grid)
        te = test_src.read((ch,), a, b).reshape(-1, *test_src.grid)
        for name, pred in (("mean (scalar)", np.full(te.shape, tr.mean(), np.float32)),
                           ("mean field", np.broadcast_to(tr.mean(axis=0), te.shape))):
            m = metrics.channel_metrics(te, pred, test_src.latitude, spectra=False)
            out.append({"method": name, "channel": ch.code, "bytes_per_value": None,
                        "compression_ratio": None, **m})
    return out


def per_field_records(test_src: Any, channels: tuple, case: Case, records: list[dict],
                      methods: list[str]) -> list[dict]:
    """The baselines compressing each 2-d field on its own (random access per time step, as the
    latent store has), at the WLA's bytes per value: ``evaluate`` gives them the whole cube."""
    from era5latent.evaluation import sizematch as bl
    from era5latent.evaluation import metrics

    a, b = test_src.time_indices(case.test_range)
    out = []
    for ch in channels:
        bpv = next(r["bytes_per_value"] for r in records
                   if r["method"] == "wla" and r["channel"] == ch.code)
        truth = test_src.read((ch,), a, b).reshape(-1, *test_src.grid)
        for m in methods:
            match = bl.match_size(m, truth, bpv, per_field=True)
            out.append({"method": f"{m} (per field)", "channel": ch.code,
                        **match.size_fields(),
                        "compression_ratio": match.compression_ratio,
                        "codec": match.codec.to_dict(), "size_reached": match.reached,
                        **metrics.channel_metrics(truth, np.asarray(match.recon),
                                                  test_src.latitude, spectra=False)})
    return out


def ebcc_records(test_src: Any, channels: tuple, case: Case, records: list[dict]) -> list[dict]:
    """EBCC at the WLA's size (one row per channel; no sweep: each try takes seconds here)."""
    from era5latent.evaluation import metrics
    from era5latent.evaluation import sizematch as bl

    a, b = test_src.time_indices(case.test_range)
    out = []
    for ch in channels:
        bpv = next(r["bytes_per_value"] for r in records
                   if r["method"] == "wla" and r["channel"] == ch.code)
        truth = test_src.read((ch,), a, b).reshape(-1, *test_src.grid)
        t = time.perf_counter()
        match = bl.match_size("ebcc", truth, bpv)
        recon = np.asarray(match.recon)
        bound = match.codec.to_dict()["configuration"]["abs_error_bound"]
        out.append({"method": "ebcc", "channel": ch.code, **match.size_fields(),
                    "compression_ratio": match.compression_ratio, "codec": match.codec.to_dict(),
                    "size_reached": match.reached, "seconds": time.perf_counter() - t,
                    "bound_violated_by": float(np.max(np.abs(recon - truth))) - bound,
                    **metrics.channel_metrics(truth, recon, test_src.latitude, spectra=False)})
    return out


def raw_bytes_per_value(loaded: Any, channels: tuple) -> dict[str, float]:
    """Bytes per value of the packed codes themselves: tokens x code bytes per frame over the
    values the group's channels hold (what the store would hold without its zstd)."""
    from era5latent.io.variables import group_channels

    cfg = loaded.meta.config
    h, w = cfg.grid
    return {c.code: cfg.tokens * cfg.code_bytes / (len(chs) * h * w)
            for chs in group_channels(channels).values() for c in chs}


def run_case(case: Case, args: argparse.Namespace, tmp: str, log: Any) -> dict[str, Any]:
    from era5latent.evaluation.score import SWEEP_FACTORS, evaluate, wla_bytes_per_value
    from era5latent.model.checkpoint import load_checkpoint
    from era5latent.pipeline import decode, encode
    from era5latent.io.sources import open_source
    from era5latent.store.core import open_latent_store
    from era5latent.training import TrainOptions, train
    from era5latent.io.variables import parse_subset

    src = open_source(str(Path(args.data) / case.file))
    channels = parse_subset(case.subset)
    train_src = _members(src, case.train_members)
    test_src = _members(src, case.test_members)
    overrides: dict[str, Any] = dict(json.loads(args.overrides) if args.overrides else {})
    steps = args.steps or case.steps
    rd = case.rd_code_bits if args.rd_code_bits is None else args.rd_code_bits
    code_bits = [overrides.get("code_bits", 128)] + [b for b in rd
                                                     if b != overrides.get("code_bits", 128)]
    result: dict[str, Any] = {"case": case.name, "title": case.title, "runs": []}
    for k, bits in enumerate(code_bits):
        ov = {**overrides, "code_bits": bits}
        tag = f"{case.name}-{bits}b"
        model = os.path.join(tmp, f"{tag}.safetensors")
        opts = TrainOptions(preset=args.preset, steps=steps, batch_size=args.batch_size,
                            lr=args.lr, time_range=case.train_range,
                            val_fraction=case.val_fraction, val_every=max(1, steps // 4),
                            checkpoint_every=steps, seed=args.seed, device="cpu",
                            overrides=ov)
        t = time.perf_counter()
        tr = train(train_src, channels, model, opts)
        t_train = time.perf_counter() - t
        loaded = load_checkpoint(model)
        latent = os.path.join(tmp, f"{tag}-latent.zarr")
        recon = os.path.join(tmp, f"{tag}-recon.zarr")
        t = time.perf_counter()
        encode(test_src, loaded, channels, latent, time_range=case.test_range, device="cpu",
               precision="fp32")
        decode(latent, loaded, recon, device="cpu", precision="fp32")
        t_codec = time.perf_counter() - t
        store = open_latent_store(latent)
        first = k == 0
        t = time.perf_counter()
        # Sweep sizes: the codes' raw size (tokens x code bytes per frame, before the store's
        # zstd), and for the first model also 0.5x..16x its size on disk. (The baselines are
        # always matched to the size on disk as well: evaluate's records.)
        on_disk = wla_bytes_per_value(store)
        raw = raw_bytes_per_value(loaded, channels)
        sweep = sorted(set(raw.values()) | ({b * f for b in on_disk.values()
                                             for f in SWEEP_FACTORS} if first else set())
                       | set(args.sweep_extra))
        report = evaluate(test_src, open_source(recon), subset=channels,
                          time_range=case.test_range, latent=store, baselines=args.baselines,
                          sweep=sweep, method="wla")
        if first:
            report.records += per_field_records(
                test_src, channels, case, report.records,
                [m for m in args.baselines if m in ("bitround", "zfp", "sz3")])
            if args.ebcc:
                report.records += ebcc_records(test_src, channels, case, report.records)
        t_eval = time.perf_counter() - t
        cfg = loaded.meta.config
        run = {"code_bits": bits, "steps": steps, "raw_bytes_per_value": raw, "config": cfg.to_dict(), "token_grid": list(cfg.token_grid),
               "params": loaded.model.num_params(), "train_seconds": t_train,
               "codec_seconds": t_codec, "eval_seconds": t_eval, "train_loss": tr.train_loss,
               "val_mse": tr.val_mse, "history": tr.history, "records": report.records,
               "sweep": report.sweep, "acc_reference": report.acc_reference}
        result["runs"].append(run)
        log(f"  {tag}: trained {steps} steps in {t_train:.0f} s, encode+decode "
            f"{t_codec:.1f} s, evaluate {t_eval:.0f} s; "
            + ", ".join(f"{r['channel']} RMSE {r['rmse']:.4g}" for r in report.records
                        if r["method"] == "wla"))
    result["reference"] = reference_records(train_src, test_src, channels, case)
    return result


# -- tables ------------------------------------------------------------------------------------


def _f(v: Any, fmt: str) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return format(v, fmt)


def equal_bytes_table(result: dict[str, Any]) -> str:
    main = result["runs"][0]
    recs = main["records"]
    lines = [f"#### {result['title']}: at the WLA's size",
             "",
             "(†: not within 10% of the WLA's bytes per value, so not at equal bytes: the row is "
             "at the bytes it shows; fixed: xbitinfo/pcodec, whose size follows from the data; "
             "ALL ZERO: the codec decoded every value to 0.)",
             "",
             "| channel | method | bytes/value | size | ratio vs f32 | RMSE | bias | MAE | max abs err "
             f"| ACC ({main['acc_reference']}) | small-scale power |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    channels = list(dict.fromkeys(r["channel"] for r in recs))
    for ch in channels:
        rows = [r for r in recs if r["channel"] == ch]
        rows += [r for r in result["reference"] if r["channel"] == ch]
        for r in rows:
            mark = "" if r.get("size_matched", True) else " †"
            lines.append(
                f"| {ch} | {r['method']} | {_f(r['bytes_per_value'], '.4f')}{mark} | "
                f"{_size_note(r)} | "
                f"{_f(r['compression_ratio'], '.1f')} | {_f(r['rmse'], '.4g')} | "
                f"{_f(r['bias'], '.3g')} | {_f(r['mae'], '.4g')} | {_f(r['max_abs_error'], '.4g')} | "
                f"{_f(r['acc'], '.4f')} | {_f(r['small_scale_power_ratio'], '.3f')} |")
    return "\n".join(lines)


def _size_note(r: dict[str, Any]) -> str:
    flags = r.get("size_flags")
    if not isinstance(flags, list):
        return "-"
    note = "matched" if r.get("size_matched") else "NOT matched"
    if "all_zero" in flags:
        note += ", ALL ZERO"
    if "fixed_size" in flags:
        note += " (fixed)"
    return f"{note} ({100 * r['relative_size_error']:+.0f}%)"


def target_line(result: dict[str, Any]) -> str:
    """Issue 14's target: at equal bytes on disk, the WLA's RMSE at most SZ3's."""
    recs = result["runs"][0]["records"]
    out = []
    for w in (r for r in recs if r["method"] == "wla"):
        sz = next((r for r in recs if r["method"] == "sz3" and r["channel"] == w["channel"]), None)
        if sz is None:
            continue
        met = w["rmse"] <= sz["rmse"] and sz.get("size_matched", False)
        out.append(f"- {w['channel']}: WLA RMSE {w['rmse']:.4g} at {w['bytes_per_value']:.4f} "
                   f"B/value vs SZ3 {sz['rmse']:.4g} at {sz['bytes_per_value']:.4f} "
                   f"({'size matched' if sz.get('size_matched') else 'NOT size matched'}): "
                   + ("target met" if met else
                      f"target missed, WLA {w['rmse'] / sz['rmse']:.2f}x SZ3's RMSE"))
    return "\n".join(out)


def rd_table(result: dict[str, Any]) -> str:
    """RMSE against bytes per value: every WLA model at its size, the baselines at those sizes
    and along the sweep (multiples of the first model's size)."""
    grid: dict[str, dict[float, dict[str, str]]] = {}
    methods: list[str] = []

    def put(ch: str, target: float, method: str, rmse: float, achieved: float,
            reached: bool = True) -> None:
        if method not in methods:
            methods.append(method)
        mark = "" if reached else " †"
        cell = f"{rmse:.4g}" if method.startswith("WLA") else f"{rmse:.4g} ({achieved:.3f}{mark})"
        grid.setdefault(ch, {}).setdefault(round(target, 4), {})[method] = cell

    for run in result["runs"]:
        wla = {r["channel"]: r["bytes_per_value"] for r in run["records"] if r["method"] == "wla"}
        for r in run["records"]:
            name = f"WLA {run['code_bits']}b" if r["method"] == "wla" else r["method"]
            put(r["channel"], wla[r["channel"]], name, r["rmse"], r["bytes_per_value"],
                r.get("size_matched", True))
            if r["method"] == "wla":  # the same reconstruction, counted at its raw code size
                grid[r["channel"]].setdefault(round(run["raw_bytes_per_value"][r["channel"]], 4),
                                              {})[name] = f"{r['rmse']:.4g} (raw)"
        for s in run["sweep"]:
            if s["method"] != "wla":
                put(s["channel"], s["target_bytes_per_value"], s["method"], s["rmse"],
                    s["bytes_per_value"], s.get("size_matched", s["reached"]))
    wla_cols = [m for m in methods if m.startswith("WLA")]
    cols = wla_cols + [m for m in methods if m not in wla_cols]
    lines = [f"#### {result['title']}: rate-distortion",
             "",
             "RMSE per target size; baselines give the bytes/value they reached in brackets "
             "(†: not within 10% of the target, so not at that size). "
             "Each WLA model appears twice: at its size on disk and, marked (raw), at the raw "
             "size of its codes (16 bytes per 128-bit token, before the store's zstd).",
             ""]
    for ch, rows in grid.items():
        lines += [f"{ch}:", "", "| bytes/value | " + " | ".join(cols) + " |",
                  "|---:|" + "---:|" * len(cols)]
        for t in sorted(rows):
            lines.append(f"| {t:.4f} | " + " | ".join(rows[t].get(m, "") for m in cols) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="folder with the two GRIB samples")
    ap.add_argument("--datasets", default="uk,ensemble", help="uk, ensemble or both")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=None,
                    help="training steps for every model (default: 1500 uk, 800 ensemble)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overrides", default="", help='WLAConfig overrides as JSON, e.g. '
                    '\'{"patch_stride": 4, "code_bits": 32}\'')
    ap.add_argument("--rd-code-bits", default=None,
                    help="extra WLA models for the rate-distortion curve, by code bits per token, "
                         "comma-separated, '' for none (default: 64,32 for uk, none for ensemble)")
    ap.add_argument("--baselines",
                    default="bitround,xbitinfo-99,xbitinfo-99.9,zfp,zfp-accuracy,sz3,pcodec")
    ap.add_argument("--sweep-extra", default="",
                    help="more bytes per value for the baselines' sweep, comma-separated (e.g. "
                         "the sizes of WLA models measured in an earlier run)")
    ap.add_argument("--ebcc", action="store_true",
                    help="add an EBCC row at the WLA's size (numcodecs-wasm-ebcc; slow)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (see the docstring)")
    ap.add_argument("--json", default=None, help="write all records here")
    args = ap.parse_args(argv)
    if args.rd_code_bits is not None:
        args.rd_code_bits = [int(b) for b in args.rd_code_bits.split(",") if b.strip()]
    args.baselines = [b for b in args.baselines.split(",") if b.strip()]
    args.sweep_extra = [float(b) for b in args.sweep_extra.split(",") if b.strip()]
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    bad = [n for n in names if n not in CASES]
    if bad:
        ap.error(f"unknown dataset(s) {bad}: expected some of {', '.join(CASES)}")
    missing = [CASES[n].file for n in names if not (Path(args.data) / CASES[n].file).is_file()]
    if missing:
        print(f"real ERA5 samples {missing} not found in {args.data}; set ERA5LATENT_REAL_DATA "
              "or pass --data", file=sys.stderr)
        return 2

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="era5latent-realdata-") as tmp:
        for n in names:
            log(f"{n}: {CASES[n].title}")
            results.append(run_case(CASES[n], args, tmp, log))
    total = time.perf_counter() - started
    print(f"## Real ERA5: WLA `{args.preset}` (batch {args.batch_size}) vs "
          f"{', '.join(args.baselines)}\n")
    print(f"{dt.date.today().isoformat()}, {platform.node() or 'machine'} "
          f"({os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} thread(s)); "
          f"command: `{shlex.join(['python', 'benchmarks/real_data.py', *(argv or sys.argv[1:])])}`; "
          f"total {total:.0f} s\n")
    for res in results:
        print(equal_bytes_table(res))
        print()
        print(target_line(res))
        print()
        print(rd_table(res))
        for run in res["runs"]:
            cfg = run["config"]
            print(f"- WLA {run['code_bits']} bits/token, {run['steps']} steps: token grid {run['token_grid']} "
                  f"(stride {cfg['patch_stride']}), {run['params']:,} parameters, "
                  f"train {run['train_seconds']:.0f} s, encode+decode {run['codec_seconds']:.1f} s, "
                  f"final train loss {run['train_loss']:.4g}, val MSE (z units) "
                  f"{_f(run['val_mse'], '.4g')}")
        print()
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k: v for k, v in vars(args).items()},
                                               "seconds": total, "results": results},
                                              indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
