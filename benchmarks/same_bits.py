"""Does a change alter what the model produces? Encode and decode the real ERA5 samples with one
checkpoint at two revisions and compare the latent codes and the decoded fields bit for bit.

    .venv/bin/python benchmarks/same_bits.py --base 40f24db     # HEAD's working tree vs 40f24db

A pipeline or store change that leaves both identical leaves every fidelity figure in
docs/evaluation.md as it was: the trainer and the model's arithmetic are what make those, and
this checks the path from source to codes to fields. The checkpoint is trained once, at the
working tree, for --steps steps (its quality does not matter, only that both revisions use it).
The base revision is checked out with ``git worktree`` into a temporary directory and run with
this virtual environment. Data: ``../shared/data`` (or ``$ERA5LATENT_REAL_DATA``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = {  # file, subset, training range
    "uk": ("era5-t2m-uk-2019-03.grib", "t2m", "/2019-03-21T23"),
    "ensemble": ("era5-levels-members.grib", "z500,z850,t500,t850", None),
}


def cli(tree: str, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": tree, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "era5latent.cli", *args], cwd=tree, env=env,
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{' '.join(args[:2])} at {tree}: {r.stderr.strip()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--base", required=True, help="the revision to compare against")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    import numpy as np
    import xarray as xr

    from era5latent.store.core import open_latent_store

    data = os.environ.get("ERA5LATENT_REAL_DATA", os.path.join(ROOT, "..", "shared", "data"))
    with tempfile.TemporaryDirectory(prefix="era5latent-same-bits-") as tmp:
        base = os.path.join(tmp, "base")
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", base, args.base],
                       check=True, capture_output=True)
        try:
            print("| sample | revision | codes | decoded fields |\n|---|---|---|---|")
            for name, (file, subset, train_range) in SAMPLES.items():
                src, model = os.path.join(data, file), os.path.join(tmp, f"{name}.safetensors")
                cli(ROOT, "train", src, "--subset", subset, "--out", model, "--steps",
                    str(args.steps), "--batch-size", "4", "--device", "cpu",
                    *(["--time", train_range] if train_range else []))
                out: dict[str, tuple[dict[str, np.ndarray], xr.Dataset]] = {}
                for rev, tree in (("working tree", ROOT), (args.base, base)):
                    store, rec = os.path.join(tmp, f"{name}-{rev}.zarr"), \
                        os.path.join(tmp, f"{name}-{rev}-fields.zarr")
                    cli(tree, "encode", src, "--model", model, "--subset", subset, "--out",
                        store, "--device", "cpu", "--time-chunk", "8")
                    cli(tree, "decode", store, "--model", model, "--out", rec, "--device", "cpu")
                    s = open_latent_store(store)
                    out[rev] = ({g: np.asarray(s.codes(g)[...]) for g in s.groups},
                                xr.open_zarr(rec).load())
                (codes_a, rec_a), (codes_b, rec_b) = out.values()
                same_codes = codes_a.keys() == codes_b.keys() and all(
                    np.array_equal(codes_a[g], codes_b[g]) for g in codes_a)
                same_fields = all(np.array_equal(rec_a[v].values, rec_b[v].values, equal_nan=True)
                                  for v in rec_a.data_vars) and set(rec_a) == set(rec_b)
                n = sum(c.size for c in codes_a.values())
                print(f"| {name} | {args.base} vs working tree | "
                      f"{'identical' if same_codes else 'DIFFER'} ({n} bytes) | "
                      f"{'identical' if same_fields else 'DIFFER'} "
                      f"({sum(rec_a[v].size for v in rec_a.data_vars)} values) |")
        finally:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", base],
                           capture_output=True)


if __name__ == "__main__":
    main()
