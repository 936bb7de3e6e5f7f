"""A fuzzing harness: malformed sources, stores, parquet files and command lines, every verb.

Each case is generated from its own seeded ``random.Random`` (``SEED-INDEX``), so any case can be
re-run alone (``ERA5LATENT_FUZZ_ONLY=INDEX``). A case builds its inputs in a fresh directory,
runs one CLI verb in-process (``run_cli``) and checks:

* the exit code is 0 or 2 (``verify``: 0, 2 or 3), never 1, and no traceback is printed;
* a failure is one line on stderr (``error: ...``, or Typer's own usage message);
* nothing is left behind: no output after a failure, no temporary directory, no lock file;
* nothing that existed before was modified (sources, stores, parquet files, the model).

``make test`` runs ``ERA5LATENT_FUZZ_CASES`` cases (default 200, about a minute); ``make fuzz``
runs 10,000 and prints the counts by verb and exit code. docs/reliability.md records them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from .conftest import SAMPLE_GRID, run_cli

CASES = int(os.environ.get("ERA5LATENT_FUZZ_CASES", "200"))
SEED = int(os.environ.get("ERA5LATENT_FUZZ_SEED", "0"))
ONLY = os.environ.get("ERA5LATENT_FUZZ_ONLY")
#: a case running longer than this has hung (the slowest well-formed case takes ~2 s)
CASE_SECONDS = 60

Rng = random.Random


# -- inputs ---------------------------------------------------------------------------------------

def base_dataset(nt: int = 4) -> xr.Dataset:
    """A tiny WB2-layout source on the tiny model's grid (so well-formed cases encode)."""
    nlat, nlon = SAMPLE_GRID
    lat = np.linspace(90, -90, nlat)
    lon = np.arange(nlon) * 360.0 / nlon
    rng = np.random.default_rng(0)
    z = 50000 + 100 * lat[None, None, :, None] + rng.normal(size=(nt, 2, nlat, nlon))
    t2m = 280 + 0.1 * lat[None, :, None] + rng.normal(size=(nt, nlat, nlon))
    return xr.Dataset(
        {"geopotential": (("time", "level", "latitude", "longitude"), z.astype("f4"),
                          {"units": "m2 s-2"}),
         "2m_temperature": (("time", "latitude", "longitude"), t2m.astype("f4"),
                            {"units": "K"})},
        coords={"time": pd.date_range("2020-01-01", periods=nt, freq="6h"),
                "level": np.array([500, 850]), "latitude": lat, "longitude": lon})


def _coord(ds: xr.Dataset, name: str, edit: Callable[[np.ndarray], np.ndarray]) -> xr.Dataset:
    return ds.assign_coords({name: edit(ds[name].values.copy())})


def _at(a: np.ndarray, i: int, v: Any) -> np.ndarray:
    a[i % len(a)] = v
    return a


def _values(ds: xr.Dataset, var: str, v: float, r: Rng) -> xr.Dataset:
    x = ds[var].values.copy()
    x.flat[r.randrange(x.size)] = v
    return ds.assign({var: (ds[var].dims, x, ds[var].attrs)})


SOURCE_DEFECTS: list[Callable[[xr.Dataset, Rng], xr.Dataset]] = [
    lambda ds, r: ds.assign_coords(time=[f"t{i}" for i in range(ds.sizes["time"])]),
    lambda ds, r: ds.drop_vars("time"),
    lambda ds, r: ds.assign_coords(time=np.arange(ds.sizes["time"], dtype=float)),
    lambda ds, r: ds.isel(time=slice(None, None, -1)),
    lambda ds, r: _coord(ds, "time", lambda t: _at(t, 1, t[0])),
    lambda ds, r: ds.isel(time=slice(0, 0)),
    lambda ds, r: ds.isel(latitude=slice(0, r.choice([0, 1, 5]))),
    lambda ds, r: ds.isel(longitude=slice(0, r.choice([0, 1, 7]))),
    lambda ds, r: _coord(ds, "latitude", lambda a: _at(a, r.randrange(99), np.nan)),
    lambda ds, r: _coord(ds, "longitude", lambda a: _at(a, 3, a[2])),
    lambda ds, r: _coord(ds, "latitude", lambda a: a * r.choice([2.0, -1.0, 1e300])),
    lambda ds, r: _values(ds, r.choice(["geopotential", "2m_temperature"]),
                          r.choice([np.nan, np.inf, -np.inf, 3e38]), r),
    lambda ds, r: ds.assign(geopotential=ds["geopotential"].astype("c8")),
    lambda ds, r: ds.assign(geopotential=ds["geopotential"].astype("f8")),
    lambda ds, r: ds.assign(geopotential=ds["geopotential"].astype("i4")),
    lambda ds, r: ds.assign(geopotential=ds["geopotential"].astype(bool)),
    lambda ds, r: ds.assign(geopotential=ds["geopotential"].astype(str)),
    lambda ds, r: ds.assign(geopotential=ds["geopotential"].assign_attrs(
        units=r.choice(["m", "K", "", "gpm"]))),
    lambda ds, r: ds.rename({"geopotential": r.choice(["foo", "zz", "../x", "t"])}),
    lambda ds, r: ds.drop_vars(r.choice(["latitude", "longitude", "level"])),
    lambda ds, r: ds.rename({"latitude": r.choice(["y", "lat", "rlat"])}),
    lambda ds, r: ds.expand_dims(number=r.choice([1, 2])),
    lambda ds, r: ds.transpose(*reversed(list(ds["geopotential"].dims))),
    lambda ds, r: _coord(ds, "level", lambda a: a * r.choice([100, -1, 0])),
    lambda ds, r: ds.assign_coords(longitude=ds["longitude"].values - 180.0),
    lambda ds, r: ds.isel(latitude=slice(None, None, -1)),
]


def write_source(case: Path, r: Rng) -> Path:
    """A source: well formed, one or two defects, or not a source at all."""
    kind = r.random()
    ext = r.choice([".zarr", ".zarr", ".nc", ".grib"])
    path = case / f"src{ext}"
    if kind < 0.15:  # bytes that are no source at all
        if ext == ".zarr" and r.random() < 0.5:
            path.mkdir()
            if r.random() < 0.5:
                (path / "zarr.json").write_bytes(r.randbytes(r.randrange(0, 200)))
        else:
            path.write_bytes(r.choice([b"", b"GRIB", b"CDF\x01", b"\x89HDF\r\n\x1a\n"])
                             + r.randbytes(r.randrange(0, 500)))
        return path
    ds = base_dataset(r.choice([1, 3, 4]))
    if kind > 0.3:
        for _ in range(r.choice([1, 1, 2])):
            try:
                ds = r.choice(SOURCE_DEFECTS)(ds, r)
            except Exception:  # a defect that does not apply to what earlier ones left
                pass
    if ext == ".grib":
        ext, path = ".nc", case / "src.nc"
    try:
        with warnings.catch_warnings():  # h5netcdf and zarr on the odd datasets made here
            warnings.simplefilter("ignore")
            _write(ds, path, ext, r)
    except Exception:  # a dataset no format can hold: write the base one instead
        shutil.rmtree(path, ignore_errors=True)
        if path.exists():
            path.unlink()
        base_dataset().to_zarr(path := case / "src.zarr", zarr_format=3)
    if r.random() < 0.1:  # damage the file or a chunk after writing
        files = [p for p in sorted(path.rglob("*")) if p.is_file()] if path.is_dir() else [path]
        f = r.choice(files)
        data = f.read_bytes()
        f.write_bytes(data[:r.randrange(len(data) + 1)] if r.random() < 0.5 else
                      bytes(b ^ 0xFF if i == len(data) // 2 else b for i, b in enumerate(data)))
    return path


def _write(ds: xr.Dataset, path: Path, ext: str, r: Rng) -> None:
    if ext == ".zarr":
        ds.to_zarr(path, zarr_format=3, consolidated=r.random() < 0.5)
    else:
        ds.to_netcdf(path, engine="h5netcdf", invalid_netcdf=True)


JUNK = [0, -1, 1, "x", "", None, True, False, [], {}, [1, 2], {"a": 1}, 1e308, -1e308, 2 ** 63,
        "../victim", "a/b", "..", "NaN", 3.5, [10 ** 6, 10 ** 6], ["../x"], {"../x": 1}]


def _paths(d: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(d, dict):
        for k, v in d.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out += _paths(v, (*prefix, i))
    return out


def _edit_json(doc: Path, r: Rng, within: tuple[str, ...] = ()) -> None:
    try:
        data = json.loads(doc.read_text())
    except (OSError, ValueError):  # removed or damaged by an earlier damage
        return
    root: Any = data
    for k in within:
        root = root.get(k, {}) if isinstance(root, dict) else {}
    paths = _paths(root)
    if not paths:
        return
    path = r.choice(paths)
    parent = root
    for k in path[:-1]:
        parent = parent[k]
    if isinstance(parent, dict) and r.random() < 0.3:
        del parent[path[-1]]
    else:
        parent[path[-1]] = r.choice(JUNK)
    doc.write_text(json.dumps(data))


def damage_store(store: Path, r: Rng) -> None:
    """One to three damages: bytes of any file, JSON of any document, files removed or added."""
    for _ in range(r.choice([1, 1, 2, 3])):
        files = [p for p in sorted(store.rglob("*")) if p.is_file()]
        f = r.choice(files)
        what = r.random()
        if what < 0.25:
            data = bytearray(f.read_bytes())
            if data:
                data[r.randrange(len(data))] ^= 1 << r.randrange(8)
            f.write_bytes(bytes(data))
        elif what < 0.35:
            data = f.read_bytes()
            f.write_bytes(data[:r.randrange(len(data) + 1)])
        elif what < 0.45:
            f.unlink()
        elif what < 0.8:
            _edit_json(store / "zarr.json", r, ("attributes", "era5latent"))
        elif what < 0.9:
            docs = sorted(store.rglob("zarr.json"))
            _edit_json(r.choice(docs), r)
        else:
            (store / r.choice(["junk", "era5latent.lock", "c"])).write_bytes(r.randbytes(9))


def damage_checkpoint(model: Path, dest: Path, r: Rng) -> Path:
    """A copy of the model, damaged: its JSON config or a tensor's header entry edited, a byte
    flipped, or the file cut short."""
    data = bytearray(model.read_bytes())
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    what = r.random()
    if what < 0.5:  # the era5latent metadata (config sizes, groups, normalisation, grid)
        doc = dest.with_suffix(".json")
        doc.write_text(header["__metadata__"]["era5latent"])
        _edit_json(doc, r, r.choice([(), ("config",), ("config",), ("groups",)]))
        header["__metadata__"]["era5latent"] = doc.read_text()
        doc.unlink()
    elif what < 0.65:  # a tensor's shape or dtype
        name = r.choice(sorted(k for k in header if k != "__metadata__"))
        key = r.choice(["shape", "dtype"])
        header[name][key] = r.choice([[10 ** 6, 10 ** 6], [], [-1], "F64", "I8", "x"]) \
            if key == "shape" else r.choice(["F64", "I8", "BOOL", "x"])
    if what < 0.65:
        head = json.dumps(header).encode()
        head += b" " * (-len(head) % 8)
        data = bytearray(len(head).to_bytes(8, "little") + head + data[8 + n:])
    elif what < 0.8:
        data[r.randrange(len(data))] ^= 1 << r.randrange(8)
    else:
        data = data[:r.randrange(len(data))]
    dest.write_bytes(bytes(data))
    return dest


def write_parquet(path: Path, r: Rng) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if r.random() < 0.25:
        path.write_bytes(r.choice([b"", b"PAR1", b"PAR1" + r.randbytes(60) + b"PAR1"]))
        return path
    n = r.choice([1, 2, 5])
    cells = [295191 + 7 * i for i in range(n)]

    def gid(c: int) -> str:
        i, j = divmod(c, 1440)
        return f"{c:07d}_{-180 + 0.25 * j:.2f}_{-90 + 0.25 * i:.2f}"

    ids: list[Any] = [gid(c) for c in cells]
    dim = r.choice([1, 2, 3])
    vecs: list[Any] = [[float(k)] * dim for k in range(n)]
    bad = r.random()
    if bad < 0.15:
        ids[0] = r.choice(["x", "", "9999999_0.00_0.00", "0295191_0.00_0.00", ids[-1] + "x"])
    elif bad < 0.3:
        vecs[0] = r.choice([[], [float("nan")] * dim, [1.0] * (dim + 1), None])
    elif bad < 0.4 and n > 1:
        ids[1] = ids[0]
    emb = pa.array(vecs, type=pa.list_(pa.float32()))
    cols: dict[str, Any] = {"grid_id_coord": pa.array(ids, pa.string()), "embedding": emb}
    if r.random() < 0.1:
        cols = {r.choice(["id", "grid_id_coord"]): cols["grid_id_coord"]}
    pq.write_table(pa.table(cols), path)
    if r.random() < 0.1:
        data = path.read_bytes()
        path.write_bytes(data[:r.randrange(len(data))])
    return path


# -- command lines --------------------------------------------------------------------------------

SUBSETS = ["z500", "t2m", "z500,t2m", "z500,z850,t2m", "z501x", "", ",", "q700", "geopotential:500",
           "z500,z500", "2t", "t850", "z", "../x", "z500;t2m"]
TIMES = ["2020-01-01/", "/", "/2020-01-01T06", "a/b/c", "2020-01-01/2019-01-01", "yesterday",
         "2020-13-45/", "1/2/3", "2020-01-01T06/2020-01-01T06", "2100-01-01/"]
INTS = ["1", "2", "4", "8", "0", "-1", "x", "1e3", "99999999999999999999", "1000000000", " 3"]
PARTS = ["1/1", "1/2", "2/2", "0/1", "3/2", "1/0", "x", "1/99999999999999999999", "-1/2", "1/2/3"]


def _maybe(r: Rng, p: float, *args: str) -> list[str]:
    return list(args) if r.random() < p else []


@dataclass
class Case:
    index: int
    verb: str
    args: list[str]
    dir: Path
    out: Path | None = None
    mutable: set[str] = field(default_factory=set)  # inputs the verb may legitimately change
    pristine: Path | None = None  # verify: the undamaged store this case's store was copied from


def make_case(index: int, root: Path, store: Path, model: Path, truth: Path) -> Case:
    r = random.Random(f"{SEED}-{index}")
    case = root / f"case{index:05d}"
    case.mkdir()
    rb = random.Random(f"{SEED}-{index}-build")  # its own draw: the other cases stay as they were
    if rb.random() < BUILD_SHARE:
        return recipe_case(index, case, model, rb)
    verb = r.choices(["encode", "decode", "info", "verify", "finalize", "build-embed-map",
                      "sample", "evaluate", "train"], weights=[30, 20, 12, 12, 6, 8, 6, 6, 8])[0]
    if r.random() < 0.12 and verb in ("encode", "decode", "verify", "evaluate"):
        model = damage_checkpoint(model, case / "wla.safetensors", r)
    if verb == "train":
        return train_case(index, case, model, r)
    if verb == "encode":
        src = write_source(case, r)
        out = case / r.choice(["l.zarr", "l.zarr", "l", "l.csv", "l.nc", "src.zarr"])
        args = ["encode", str(src), "--model", str(model), "--subset",
                r.choice(SUBSETS[:4]) if r.random() < 0.6 else r.choice(SUBSETS),
                "--out", str(out), "--device", r.choice(["cpu"] * 5 + ["cuda:7", "tpu", ""])]
        args += _maybe(r, 0.4, "--time-chunk", r.choice(INTS))
        args += _maybe(r, 0.2, "--batch-size", r.choice(INTS))
        args += _maybe(r, 0.2, "--time", r.choice(TIMES))
        args += _maybe(r, 0.15, "--parts", r.choice(PARTS))
        args += _maybe(r, 0.1, "--precision", r.choice(["fp32", "bf16", "fp8", "auto", ""]))
        args += _maybe(r, 0.05, "--workers", r.choice(["0", "-1", "x"]))
        args += _maybe(r, 0.05, "--scheduler", str(case / r.choice(["none.json", "bad.json"])))
        if "bad.json" in " ".join(args):
            (case / "bad.json").write_text(r.choice(["", "[1]", '{"address": 3}']))
        args += _maybe(r, 0.1, "--overwrite")
        if r.random() < 0.1:  # someone else's directory where the output goes
            out.mkdir(exist_ok=True)
            (out / "theirs.txt").write_text("not ours")
        return Case(index, verb, args, case, out)
    if verb == "sample":
        out = case / r.choice(["s.zarr", "s.csv", "s"])
        ok = r.random() < 0.4  # well formed, but for the odd option below

        def pick(good: list[str], bad: list[str]) -> str:
            return r.choice(good if ok and r.random() < 0.9 else good + bad)

        args = ["sample", str(out), "--grid", pick(["5x8", "9x16", "1x1"],
                                                   ["0x8", "3x", "x", "-5x8", "5x8x2"]),
                "--times", pick(["2", "3"], ["0", "-1", "x"]),
                "--variables", pick(["z", "t2m", "z,t2m"], ["", "foo", "z,z"]),
                "--levels", pick(["500", "500,850"], ["", "0", "-5", "x", "500,500"])]
        args += _maybe(r, 0.2, "--freq", r.choice(["6h", "0h", "-6h", "x", ""]))
        args += _maybe(r, 0.2, "--start", r.choice(["2020-01-01", "x", "", "99999-01-01"]))
        return Case(index, verb, args, case, out)
    if verb == "build-embed-map":
        pq = write_parquet(case / r.choice(["e.parquet", "e.npz", "e.txt"]), r)
        out = case / r.choice(["m.zarr", "m.zarr", "m.csv"])
        args = ["build-embed-map", str(pq), "--out", str(out), "--dtype",
                r.choice(["float16", "float32", "int8", "x"])]
        args += _maybe(r, 0.2, "--pca", r.choice(["0", "-1", "1", "2", "x", "999"]))
        args += _maybe(r, 0.2, "--chunks", r.choice(["45,90", "0,0", "x", "1", "-1,5"]))
        args += _maybe(r, 0.2, "--duplicates", r.choice(["error", "first", "mean", "x"]))
        args += _maybe(r, 0.1, "--on-bad-row", r.choice(["error", "skip", "x"]))
        return Case(index, verb, args, case, out)
    # the store verbs: a copy of a good store, damaged (mostly)
    st = case / "latent.zarr"
    shutil.copytree(store, st)
    if r.random() < 0.85:
        damage_store(st, r)
    if verb == "info":
        return Case(index, verb, ["info", str(st), *_maybe(r, 0.5, "--json"),
                                  *_maybe(r, 0.2, "--parts", r.choice(INTS))], case)
    if verb == "finalize":
        return Case(index, verb, ["finalize", str(st), *_maybe(r, 0.2, "--parts",
                                                                r.choice(INTS))], case,
                    mutable={"latent.zarr"})
    if verb == "verify":
        return Case(index, verb, ["verify", str(st), *_maybe(r, 0.3, "--model", str(model))],
                    case, pristine=store)
    if verb == "evaluate":
        return Case(index, verb, ["evaluate", str(truth), "--latent", str(st), "--model",
                                  str(model), "--baselines", "none", "--device", "cpu",
                                  *_maybe(r, 0.3, "--subset", r.choice(SUBSETS)),
                                  *_maybe(r, 0.3, "--time", r.choice(TIMES))], case)
    out = case / r.choice(["r.zarr", "r.zarr", "r.nc", "r.csv", "r", "latent.zarr"])
    args = ["decode", str(st), "--model", str(model), "--out", str(out), "--device", "cpu"]
    args += _maybe(r, 0.3, "--subset", r.choice(SUBSETS))
    args += _maybe(r, 0.2, "--time", r.choice(TIMES))
    args += _maybe(r, 0.2, "--batch-size", r.choice(INTS))
    args += _maybe(r, 0.3, "--allow-corrupt")
    args += _maybe(r, 0.1, "--overwrite")
    return Case(index, verb, args, case, out)


def train_case(index: int, case: Path, model: Path, r: Rng) -> Case:
    """A short training run: a (mostly) well-formed source, odd options, sometimes --resume onto
    a damaged or foreign file."""
    src = write_source(case, r) if r.random() < 0.5 else _good_source(case)
    out = case / r.choice(["m.safetensors", "m.safetensors", "m.safetensors", "m.pt", "m.csv",
                           "m"])
    args = ["train", str(src), "--subset", r.choice(["z500", "z500,t2m", "t2m", "z500,z850"]
                                                    if r.random() < 0.7 else SUBSETS),
            "--out", str(out), "--device", "cpu",
            "--steps", r.choice(["1", "2"] * 4 + ["0", "-1", "x", "99999999999999999999"]),
            "--batch-size", r.choice(["2", "4"] * 3 + INTS), "--val-every", "1"]
    args += _maybe(r, 0.2, "--preset", r.choice(["tiny", "x", "", "TINY"]))
    args += _maybe(r, 0.2, "--val-fraction", r.choice(["0.25", "0", "1", "-0.5", "x", "nan"]))
    args += _maybe(r, 0.15, "--time", r.choice(TIMES))
    args += _maybe(r, 0.1, "--group", r.choice(["z", "surface", "t", "x", "../x", ""]))
    args += _maybe(r, 0.1, "--level-weights", r.choice(["variance", "none", "x"]))
    args += _maybe(r, 0.1, "--quantizer", r.choice(["era5latent", "upstream", "x"]))
    args += _maybe(r, 0.1, "--precision", r.choice(["fp32", "bf16", "fp16", "x"]))
    args += _maybe(r, 0.1, "--grad-accum", r.choice(["1", "2", "3", "0", "x"]))
    args += _maybe(r, 0.1, "--ema", r.choice(["0", "0.9", "1", "-1", "nan"]))
    args += _maybe(r, 0.1, "--adversarial-weight", r.choice(["0", "0.1", "-1", "inf"]))
    args += _maybe(r, 0.1, "--lr", r.choice(["1e-3", "0", "-1", "nan", "x"]))
    args += _maybe(r, 0.1, "--patch-stride", r.choice(["1", "2", "4", "0", "64", "x"]))
    args += _maybe(r, 0.1, "--dry-run")
    args += _maybe(r, 0.05, "--memory-budget", r.choice(["1GB", "0", "x", "-5GB"]))
    mutable = set()
    if r.random() < 0.15:  # --resume onto an existing file: a checkpoint, damaged or not ours
        if r.random() < 0.5:
            shutil.copy(model, out) if r.random() < 0.5 else damage_checkpoint(model, out, r)
        else:
            out.write_bytes(b"not a checkpoint")
        args.append("--resume")
        mutable.add(out.name)
    return Case(index, "train", args, case, out, mutable=mutable)


#: share of cases that run ``build`` on a recipe (mostly ``--check``: a build encodes)
BUILD_SHARE = 0.07
#: YAML tags a recipe must refuse by line (``touch pwned`` would show up as a new file)
RECIPE_TAGS = ['!!python/object/apply:os.system ["touch pwned"]', "!!python/name:os.system",
               "!!python/object/new:dict [[[a, 1]]]", '!!python/module:os', "!!binary aGk=",
               "!!set {a}", "!!omap [a: 1]", "!custom x", "!<tag:example.com,2000:x> y",
               "!!int many", "!!float x", "!!timestamp never", "!!bool maybe", "!!str ok"]


def recipe_case(index: int, case: Path, model: Path, r: Rng) -> Case:
    """``build`` on a recipe that is (mostly) damaged: YAML tags, other encodings, byte-order
    marks, stray bytes, cuts, empty files, directories, huge files, deep nesting, aliases."""
    src = _good_source(case)
    out = case / "l.zarr"
    lines = [f"source: {src}", "subset: " + r.choice(["z500,t2m", "z500", "[z_500, 2t]"]),
             f"model: {model}", "out: l.zarr", "device: cpu", "time_chunk: 4"]
    how = r.choice(["good", "tag", "tag", "tag", "encoding", "encoding", "bytes", "cut", "empty",
                    "directory", "huge", "deep", "aliases", "documents"])
    if how == "tag":
        i = r.randrange(len(lines) + 1)
        key = lines[i].split(":")[0] if i < len(lines) else r.choice(["train", "time", "x"])
        lines[i:i + 1] = [f"{key}: {r.choice(RECIPE_TAGS)}"]
    if how == "aliases":  # a billion laughs: each level ten times the one before
        lines += ["a: &a [x, x, x, x, x, x, x, x, x, x]"] + [
            f"{chr(98 + k)}: &{chr(98 + k)} [" + ", ".join([f"*{chr(97 + k)}"] * 10) + "]"
            for k in range(8)]
    text = "\n".join(lines) + "\n"
    if how == "documents":
        text += "---\n" + text
    if how == "deep":
        n = r.choice([100, 10_000, 200_000])
        text += "train: " + "[" * n + "]" * n + "\n"
    data = text.encode()
    if how == "encoding":
        pick = r.randrange(5)
        data = (text.encode("utf-16") if pick == 0 else b"\xef\xbb\xbf" + data if pick == 1
                else text.replace("cpu", "c\u00e9u").encode("latin-1") if pick == 2
                else b"\xff\xfe\x00bad" if pick == 3 else b"\xef\xbb\xbf" * 2 + data)
    if how == "bytes":
        b = bytearray(data)
        for _ in range(r.randint(1, 3)):
            b.insert(r.randrange(len(b) + 1), r.choice([0, 0x80, 0xC3, 0xFF, 0x1B, 0x09]))
        data = bytes(b)
    if how == "cut":
        data = data[:r.randrange(len(data))]
    if how == "empty":
        data = r.choice([b"", b"\n\n", b"# nothing\n", b"   ", b"~\n", b"---\n"])
    recipe = case / "r.yaml"
    if how == "directory":
        recipe.mkdir()
    elif how == "huge":
        with recipe.open("wb") as f:
            f.write(data + b"#" * r.choice([1 << 20, 3 << 20]))
    else:
        recipe.write_bytes(data)
    args = ["build", str(recipe), *(["--check"] if r.random() < 0.85 else [])]
    return Case(index, "build", args, case, out)


def _good_source(case: Path) -> Path:
    path = case / "src.zarr"
    base_dataset(8).to_zarr(path, zarr_format=3)
    return path


# -- running and judging --------------------------------------------------------------------------

def snapshot(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir() and not any(p.iterdir()):
            out[str(p.relative_to(root)) + "/"] = ""
    return out


def judge(case: Case) -> tuple[int, list[str]]:
    """Run one case; its exit code and every broken promise."""
    before = snapshot(case.dir)

    def too_long(signum: int, frame: Any) -> None:
        raise TimeoutError(f"case ran past {CASE_SECONDS} s")

    old = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(CASE_SECONDS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            res = run_cli(*case.args)
            code, stdout, stderr = res.exit_code, res.stdout, res.stderr
        except BaseException:  # escaped the CLI's error handling (or hung): a bug
            code, stdout, stderr = 1, "", traceback.format_exc()
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
    problems: list[str] = []
    raw = [f"{w.category.__name__}: {str(w.message)[:120]}" for w in caught]
    if raw:  # a third-party warning would have reached the user's terminal
        problems.append(f"warnings: {sorted(set(raw))[:3]}")
    allowed = {0, 2, 3} if case.verb == "verify" else {0, 2}
    if code not in allowed:
        problems.append(f"exit code {code}")
    if "Traceback" in stdout + stderr:
        problems.append("traceback")
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if code == 2 and not (len(lines) == 1 and lines[0].startswith("error: ")
                          or (lines and lines[0].startswith("Usage:"))):
        problems.append(f"not one error line: {lines[:3]}")
    after = snapshot(case.dir)
    out_name = case.out.name if case.out is not None else None
    for name, digest in before.items():
        top = name.split("/")[0]
        if top in case.mutable and code == 0:
            continue
        if top == out_name and code == 0 and "--overwrite" in case.args:
            continue  # ours, replaced as asked
        if top == out_name and code == 0 and case.verb == "encode":
            continue  # an encode resumed or finished the store it was pointed at
        if after.get(name) != digest:
            problems.append(f"pre-existing {name} modified or removed")
            break
    new = {n.split("/")[0] for n in after} - {n.split("/")[0] for n in before}
    if code != 0 and case.verb == "encode" and out_name in new and _resumable(case.out):
        new.discard(out_name)  # chunks were written before the failure: kept, for a resume
    if code != 0 and new:
        problems.append(f"left behind after a failure: {sorted(new)}")
    expected = {out_name, f"{out_name}.state.safetensors"} if out_name else set()
    if code == 0 and new - expected:
        problems.append(f"unexpected new files: {sorted(new - expected)}")
    leftovers = [n for n in after if ".tmp-" in n or ".old-" in n or "era5latent.lock" in n
                 and n not in before]
    if leftovers:
        problems.append(f"temporary or lock files left: {leftovers[:3]}")
    if case.pristine is not None and code == 0 and (changed := damage(case.pristine,
                                                                    case.dir / "latent.zarr")):
        problems.append(f"verify passed a damaged store ({', '.join(changed[:3])} changed)")
    if problems:
        problems.append(f"stderr: {stderr.strip()[-400:]!r}")
    return code, problems


def _resumable(out: Path | None) -> bool:
    """An unfinished latent store holding at least one encoded time chunk: what an encode that
    failed part-way keeps (nothing is lost; the same command resumes it)."""
    if out is None or not out.is_dir():
        return False
    res = run_cli("info", str(out), "--json")
    if res.exit_code != 0:
        return False
    info = json.loads(res.stdout)
    return not info["complete"] and info["chunks_done"] >= 1


def damage(pristine: Path, store: Path) -> list[str]:
    """The files of ``pristine`` that ``store`` changed or lost (the root document compared as
    JSON, without its consolidated metadata: its formatting is not its content)."""
    want, have = snapshot(pristine), snapshot(store) if store.is_dir() else {}
    changed = [n for n, d in want.items() if have.get(n) != d]
    if "zarr.json" in changed and (store / "zarr.json").is_file():
        try:
            a = json.loads((pristine / "zarr.json").read_text())
            b = json.loads((store / "zarr.json").read_text())
            if a == b:
                changed.remove("zarr.json")
        except (ValueError, UnicodeDecodeError):
            pass
    return changed


@pytest.fixture(scope="module")
def fuzz_store(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("fuzzbase")
    truth = d / "truth.zarr"
    base_dataset(8).to_zarr(truth, zarr_format=3)
    store = d / "latent.zarr"
    res = run_cli("encode", truth, "--model", tiny_model, "--subset", "z500,t2m", "--out", store,
                  "--time-chunk", "4", "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    return store, truth


def test_fuzz_every_verb(fuzz_store: tuple[Path, Path], tiny_model: Path,
                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store, truth = fuzz_store
    model_digest = hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    counts: Counter[tuple[str, int]] = Counter()
    failures: list[str] = []
    indices = [int(ONLY)] if ONLY else range(CASES)
    start = time.perf_counter()
    for i in indices:
        case = make_case(i, tmp_path, store, tiny_model, truth)
        code, problems = judge(case)
        counts[(case.verb, code)] += 1
        if problems:
            failures.append(f"case {i} ({' '.join(case.args)}): {'; '.join(problems)}")
        shutil.rmtree(case.dir, ignore_errors=True)
    seconds = time.perf_counter() - start
    assert hashlib.sha256(tiny_model.read_bytes()).hexdigest() == model_digest
    by_code = Counter()
    for (_, code), n in counts.items():
        by_code[code] += n
    report = [f"fuzz: {sum(counts.values())} cases (seed {SEED}) in {seconds:.0f} s; by exit code: "
              + ", ".join(f"{c}: {n}" for c, n in sorted(by_code.items()))
              + f"; failures: {len(failures)}"]
    for verb in sorted({v for v, _ in counts}):
        report.append(f"  {verb:16s} " + ", ".join(
            f"exit {c}: {n}" for (v, c), n in sorted(counts.items()) if v == verb))
    with capsys.disabled():
        print("\n" + "\n".join(report))
    assert not failures, "\n".join(failures[:15])
