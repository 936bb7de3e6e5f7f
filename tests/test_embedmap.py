"""build-embed-map: placement, round trips, PCA, dtypes, bad input, --attach-to.

All inputs are generated here in the upstream Copernicus-Embed schema (a few hundred cells,
D = 8); expected maps are built independently with plain numpy from the documented formulas.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xarray as xr
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from era5latent import embed as em
from era5latent.embed.grid import classify_id, classify_ids
from era5latent.cli import app
from era5latent.errors import EmbedMapError, Era5LatentError
from era5latent.fsutil import NPZ_MARKER

from tests.conftest import tree_bytes

D = 8
REAL = {"0295191_177.75_-39.00": (-39.0, 177.75), "0772176_-96.00_44.00": (44.0, -96.0)}


# --- helpers -----------------------------------------------------------------------------------


def fmt(cell: int) -> str:
    i, j = divmod(int(cell), 1440)
    return f"{cell:07d}_{-180 + 0.25 * j:.2f}_{-90 + 0.25 * i:.2f}"


def sample(n: int = 300, d: int = D, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n distinct cells (always including the two real examples) and their vectors."""
    rng = np.random.default_rng(seed)
    real = np.array([295191, 772176])
    others = rng.choice(np.setdiff1d(np.arange(em.N_CELLS), real), n - 2, replace=False)
    cells = np.concatenate([real, others])
    return cells, rng.standard_normal((n, d)).astype(np.float32)


def write_parquet(path: Path, ids, vecs, list_kind: str = "list", value_type=pa.float32(),
                  **extra) -> Path:
    vecs = np.asarray(vecs)
    if list_kind == "fixed_size_list":
        typ = pa.list_(value_type, vecs.shape[1])
    elif list_kind == "large_list":
        typ = pa.large_list(value_type)
    else:
        typ = pa.list_(value_type)
    emb = pa.array([None if v is None else list(v) for v in vecs], type=typ)
    pq.write_table(pa.table({"grid_id_coord": pa.array(ids, pa.string()), "embedding": emb,
                             **extra}), path)
    return path


def write_rows(path: Path, ids: list, rows: list) -> Path:
    """Rows that may be ragged or null (bad-input cases)."""
    pq.write_table(pa.table({"grid_id_coord": pa.array(ids, pa.string()),
                             "embedding": pa.array(rows, pa.list_(pa.float32()))}), path)
    return path


def expected_map(cells, vecs, layout: str = "era5") -> np.ndarray:
    """Independent reference: the documented placement formulas, plain numpy."""
    out = np.zeros((721, 1440, vecs.shape[1]), np.float32)
    i, j = np.asarray(cells) // 1440, np.asarray(cells) % 1440
    lat, lon = -90 + 0.25 * i, -180 + 0.25 * j
    row = (720 - (lat + 90) / 0.25).astype(int)
    col = (((lon + 180) / 0.25 + 720) % 1440).astype(int) if layout == "era5" else \
        ((lon + 180) / 0.25).astype(int)
    out[row, col] = vecs
    return out


runner = CliRunner()


def cli(*args: object):
    return runner.invoke(app, ["build-embed-map", *map(str, args)])


def ok(*args: object):
    res = cli(*args)
    assert res.exit_code == 0, res.output
    return res


def leftovers(directory: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("emb")
    cells, vecs = sample()
    pq_path = write_parquet(tmp / "avg.parquet", [fmt(c) for c in cells], vecs)
    out = tmp / "era5.zarr"
    ok(pq_path, "--out", out, "--npz", tmp / "map.npz")
    return {"tmp": tmp, "cells": cells, "vecs": vecs, "parquet": pq_path, "out": out,
            "npz": tmp / "map.npz"}


# --- grid ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text,lat,lon", [(t, *v) for t, v in REAL.items()])
def test_real_examples_parse(text, lat, lon):
    g = em.parse_grid_id(text)
    assert (g.lat, g.lon, g.grid_id, g.cell) == (lat, lon, int(text[:7]), int(text[:7]))
    assert em.format_grid_id(lat, lon) == text
    assert em.cell_index(lat, lon % 360) == g.cell


def test_real_examples_land_on_the_right_cells_in_both_layouts(data, tmp_path):
    cop = tmp_path / "cop.zarr"
    ok(data["parquet"], "--out", cop, "--layout", "copernicus")
    era5 = xr.open_zarr(data["out"])
    copd = xr.open_zarr(cop)
    # (lat, lon) -> (row, col): era5 row 516 col 711 / 1056; copernicus col 1431 / 336
    expect = {"0295191_177.75_-39.00": ((516, 711), (516, 1431)),
              "0772176_-96.00_44.00": ((184, 1056), (184, 336))}
    for k, (text, (lat, lon)) in enumerate(REAL.items()):
        (r, c), (rc, cc) = expect[text]
        assert float(era5.latitude[r]) == lat and float(era5.longitude[c]) == lon % 360
        assert float(copd.latitude[rc]) == lat and float(copd.longitude[cc]) == lon
        np.testing.assert_array_equal(era5.embedding[r, c].values, data["vecs"][k])
        np.testing.assert_array_equal(copd.embedding[rc, cc].values, data["vecs"][k])
        assert bool(era5.valid[r, c]) and bool(copd.valid[rc, cc])
    # the same point selected by coordinates
    sel = era5.embedding.sel(latitude=-39.0, longitude=177.75).values
    np.testing.assert_array_equal(sel, data["vecs"][0])


def test_round_trip_against_independent_numpy_map(data):
    ds = xr.open_zarr(data["out"])
    exp = expected_map(data["cells"], data["vecs"], "era5")
    np.testing.assert_array_equal(ds.embedding.values, exp)
    np.testing.assert_array_equal(ds.valid.values, np.any(exp != 0, axis=2))
    assert ds.embedding.dims == ("latitude", "longitude", "channel")
    assert ds.latitude.values[0] == 90 and ds.longitude.values[-1] == 359.75
    arr0 = np.load(data["npz"])["arr_0"]
    np.testing.assert_array_equal(arr0, expected_map(data["cells"], data["vecs"], "copernicus"))
    attrs = ds.attrs
    assert attrs["era5latent_embedmap_version"] == 1 and attrs["input_dim"] == D
    assert attrs["sources"][0]["sha256"] == hashlib.sha256(
        data["parquet"].read_bytes()).hexdigest()
    assert attrs["layout"] == "era5" and attrs["fill"] == "0" and attrs["dtype"] == "float32"
    assert zarr.open_array(str(data["out"] / "embedding")).metadata.zarr_format == 3


def test_npz_input_relayouts_to_the_same_map(data, tmp_path):
    out = tmp_path / "from_npz.zarr"
    ok(data["npz"], "--out", out)
    a, b = xr.open_zarr(out), xr.open_zarr(data["out"])
    np.testing.assert_array_equal(a.embedding.values, b.embedding.values)
    np.testing.assert_array_equal(a.valid.values, b.valid.values)


def test_like_store_with_ascending_lat_and_signed_lon(data, tmp_path):
    like = tmp_path / "like.zarr"
    lat = np.arange(-90, 90.01, 0.25)
    lon = np.arange(-180, 180, 0.25)
    xr.Dataset(coords={"latitude": lat, "longitude": lon}).to_zarr(like, zarr_format=3,
                                                                   consolidated=False)
    out = tmp_path / "like_out.zarr"
    ok(data["parquet"], "--out", out, "--like", like)
    ds = xr.open_zarr(out)
    np.testing.assert_array_equal(ds.latitude.values, lat)
    for k, (lat0, lon0) in enumerate(REAL.values()):
        np.testing.assert_array_equal(
            ds.embedding.sel(latitude=lat0, longitude=lon0).values, data["vecs"][k])
    bad = tmp_path / "one_degree.zarr"
    xr.Dataset(coords={"latitude": np.arange(90, -90.1, -1.0),
                       "longitude": np.arange(0, 360, 1.0)}).to_zarr(bad, zarr_format=3,
                                                                      consolidated=False)
    res = cli(data["parquet"], "--out", tmp_path / "x.zarr", "--like", bad)
    assert res.exit_code == 2 and "721 x 1440" in res.stderr and not (tmp_path / "x.zarr").exists()


# --- property tests of the id parser -------------------------------------------------------------

lattice = st.tuples(st.integers(0, 720), st.integers(0, 1439))


@given(lattice)
def test_format_parse_round_trip(ij):
    i, j = ij
    lat, lon = -90 + 0.25 * i, -180 + 0.25 * j
    text = em.format_grid_id(lat, lon)
    g = em.parse_grid_id(text)
    assert (g.lat, g.lon, g.cell, g.grid_id) == (lat, lon, i * 1440 + j, i * 1440 + j)
    assert em.format_grid_id(g.lat, g.lon) == text


near_ids = st.from_regex(
    r"\A[0-9]{6,8}_-?[0-9]{1,4}\.[0-9]{1,3}_-?[0-9]{1,4}\.[0-9]{2}\Z", fullmatch=True)
garbage = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=30), near_ids,
    lattice.map(lambda ij: fmt(ij[0] * 1440 + ij[1]).replace("0", "\u0660", 1)))


@settings(max_examples=300, deadline=None)
@given(garbage, st.sampled_from(em.TRUSTS))
def test_parser_raises_only_embedmaperror_and_agrees_with_vectorised(text, trust):
    try:
        g = em.parse_grid_id(text, trust=trust)
        assert 0 <= g.cell < em.N_CELLS
    except EmbedMapError as err:
        assert "\n" not in str(err)
    codes, cells = classify_ids(pa.array([text]), trust, None)
    code, cell, _ = classify_id(text, trust)
    assert (int(codes[0]), int(cells[0])) == (code, cell)


@given(st.one_of(st.none(), st.integers(), st.binary(max_size=8), st.floats()))
def test_parser_rejects_non_strings(value):
    with pytest.raises(EmbedMapError):
        em.parse_grid_id(value)


# --- dtypes, fill, PCA --------------------------------------------------------------------------


@pytest.mark.parametrize("list_kind", ["list", "large_list", "fixed_size_list"])
@pytest.mark.parametrize("value_type", [pa.float16(), pa.float32(), pa.float64()])
def test_list_kinds_and_float_widths(tmp_path, list_kind, value_type):
    cells, vecs = sample(60, seed=3)
    vecs = vecs.astype(value_type.to_pandas_dtype())
    src = write_parquet(tmp_path / "in.parquet", [fmt(c) for c in cells], vecs, list_kind,
                        value_type)
    ok(src, "--out", tmp_path / "o.zarr", "--chunks", "180,360")
    got = xr.open_zarr(tmp_path / "o.zarr").embedding.values
    np.testing.assert_array_equal(got, expected_map(cells, vecs.astype(np.float32)))


def test_float16_output_and_nan_fill(data, tmp_path):
    out = tmp_path / "f16.zarr"
    ok(data["parquet"], "--out", out, "--dtype", "float16", "--fill", "nan")
    ds = xr.open_zarr(out)
    assert ds.embedding.dtype == np.float16
    exp = expected_map(data["cells"], data["vecs"])
    valid = ds.valid.values
    got = ds.embedding.values.astype(np.float32)
    np.testing.assert_allclose(got[valid], exp[valid], rtol=1e-3, atol=1e-3)
    assert np.isnan(got[~valid]).all() and valid.sum() == len(data["cells"])


def test_pca_reconstructs_low_rank_data(tmp_path):
    rng = np.random.default_rng(7)
    cells, _ = sample(400, d=16, seed=7)
    basis = np.linalg.qr(rng.standard_normal((16, 3)))[0].T  # 3 x 16 orthonormal rows
    x = (rng.standard_normal((400, 3)) * [5, 3, 2]) @ basis + 10.0
    x = (x + 1e-3 * rng.standard_normal(x.shape)).astype(np.float32)
    src = write_parquet(tmp_path / "in.parquet", [fmt(c) for c in cells], x)
    res = cli(src, "--out", tmp_path / "p.zarr", "--pca", "3", "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["pca_components"] == 3 and info["pca_explained_variance_ratio"] > 0.999
    ds = xr.open_zarr(tmp_path / "p.zarr")
    comps, mean = ds.pca_components.values, ds.pca_mean.values
    assert comps.shape == (3, 16) and ds.embedding.shape == (721, 1440, 3)
    np.testing.assert_allclose(comps @ comps.T, np.eye(3), atol=1e-5)
    r, c = em.Grid.era5().place(cells)
    y = ds.embedding.values[r, c]
    np.testing.assert_allclose(y, (x - mean) @ comps.T, atol=1e-3)  # same projection
    recon = mean + y @ comps
    assert np.sqrt(np.mean((recon - x) ** 2)) < 5e-3
    assert ds.pca_explained_variance.shape == (3,)


# --- aggregation, duplicates, trust, grid map ---------------------------------------------------


def test_duplicates_first_and_mean(tmp_path):
    cells, vecs = sample(50, seed=4)
    ids = [fmt(c) for c in cells] + [fmt(cells[0])]
    extra = np.full((1, D), 7.0, np.float32)
    src = write_parquet(tmp_path / "d.parquet", ids, np.vstack([vecs, extra]))
    r, c = em.Grid.era5().place(cells[:1])
    ok(src, "--out", tmp_path / "first.zarr", "--duplicates", "first")
    got = xr.open_zarr(tmp_path / "first.zarr").embedding.values[r[0], c[0]]
    np.testing.assert_array_equal(got, vecs[0])
    ok(src, "--out", tmp_path / "mean.zarr", "--duplicates", "mean")
    got = xr.open_zarr(tmp_path / "mean.zarr").embedding.values[r[0], c[0]]
    np.testing.assert_allclose(got, (vecs[0] + 7.0) / 2, rtol=1e-6)


def test_aggregate_mean_of_per_modality_rows_with_filter(tmp_path):
    cells, vecs = sample(40, seed=5)
    ids, rows, mods = [], [], []
    for c, v in zip(cells, vecs):
        for m, delta in (("s1", 1.0), ("s2", -1.0), ("dem", 100.0)):
            ids.append(fmt(c))
            rows.append(v + delta)
            mods.append(m)
    n = len(ids)
    src = write_parquet(tmp_path / "mod.parquet", ids, np.array(rows), modality=mods,
                        local_id_coord=[f"x{k}" for k in range(n)], date=["20210101"] * n)
    res = cli(src, "--out", tmp_path / "no.zarr")
    assert res.exit_code == 2 and "--aggregate mean" in res.stderr
    ok(src, "--out", tmp_path / "m.zarr", "--aggregate", "mean", "--modality", "s1",
       "--modality", "s2")
    got = xr.open_zarr(tmp_path / "m.zarr").embedding.values
    np.testing.assert_allclose(got, expected_map(cells, vecs), atol=1e-5)
    res = ok(src, "--out", tmp_path / "all.zarr", "--aggregate", "mean", "--json")
    assert json.loads(res.stdout)["duplicate_rows"] == n - len(cells)
    got = xr.open_zarr(tmp_path / "all.zarr").embedding.values
    np.testing.assert_allclose(got, expected_map(cells, vecs + 100 / 3), atol=1e-4)


def test_trust_id_or_coords_on_mismatch(tmp_path):
    cells, vecs = sample(20, seed=6)
    ids = [fmt(c) for c in cells]
    ids[0] = f"{cells[1] + 1:07d}" + ids[0][7:]  # id says one cell, coordinates another
    src = write_parquet(tmp_path / "t.parquet", ids, vecs)
    res = cli(src, "--out", tmp_path / "x.zarr")
    assert res.exit_code == 2 and "row 0" in res.stderr and "--trust" in res.stderr
    g = em.Grid.era5()
    for trust, cell in (("coords", cells[0]), ("id", cells[1] + 1)):
        ok(src, "--out", tmp_path / f"{trust}.zarr", "--trust", trust)
        r, c = g.place(np.array([cell]))
        got = xr.open_zarr(tmp_path / f"{trust}.zarr").embedding.values[r[0], c[0]]
        np.testing.assert_array_equal(got, vecs[0])


def test_grid_map_places_by_pixel(data, tmp_path):
    cells = data["cells"]
    gm = tmp_path / "grid_0_25_globe_pix.parquet"
    pq.write_table(pa.table({"gid": cells, "prow": 720 - cells // 1440,
                             "pcol": cells % 1440}), gm)
    out = tmp_path / "gm.zarr"
    ok(data["parquet"], "--out", out, "--grid-map", gm, "--grid-map-id-column", "gid",
       "--grid-map-row-column", "prow", "--grid-map-col-column", "pcol")
    np.testing.assert_array_equal(xr.open_zarr(out).embedding.values,
                                  expected_map(cells, data["vecs"]))
    res = cli(data["parquet"], "--out", tmp_path / "y.zarr", "--grid-map", gm)
    assert res.exit_code == 2 and "--grid-map-id-column" in res.stderr


def test_skip_bad_rows_counts_them(tmp_path):
    cells, vecs = sample(30, seed=8)
    ids = [fmt(c) for c in cells] + ["garbage", "0000000_0.10_0.00"]
    rows = [list(v) for v in vecs] + [[1.0] * D, [1.0] * D]
    rows[3] = [float("nan")] * D
    rows[4] = [1.0] * (D - 1)
    src = write_rows(tmp_path / "b.parquet", ids, rows)
    res = cli(src, "--out", tmp_path / "s.zarr", "--on-bad-row", "skip", "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["rows_skipped"] == 4 and info["valid_cells"] == 28
    assert info["skipped"] == {"malformed id": 1, "coordinates off the 0.25-degree lattice": 1,
                               "non-finite embedding": 1, "wrong embedding length": 1}
    res = cli(src, "--out", tmp_path / "s2.zarr", "--on-bad-row", "skip")
    assert res.exit_code == 0 and "skipped 4 bad rows" in res.stderr


# --- bad input: exit 2, one line, nothing left behind -------------------------------------------


def _bad_cases():
    cells, vecs = sample(12, seed=9)
    good = [fmt(c) for c in cells]
    rows = [list(map(float, v)) for v in vecs]

    def with_id(k, text):
        ids = list(good)
        ids[k] = text
        return ids, rows

    def with_row(k, row):
        r = list(rows)
        r[k] = row
        return good, r

    return {
        "duplicate": (good + [good[2]], rows + [rows[2]], "duplicate grid id"),
        "malformed": (*with_id(5, "0295191-177.75--39.00"), "malformed id"),
        "off_lattice": (*with_id(5, "0295191_177.80_-39.00"), "off the 0.25-degree lattice"),
        "lat_range": (*with_id(5, "0295191_177.75_-95.00"), "out of range"),
        "lon_range": (*with_id(5, "0295191_180.00_-39.00"), "out of range"),
        "id_mismatch": (*with_id(5, "0295192_177.75_-39.00"), "does not match"),
        "ragged": (*with_row(5, rows[5][:-1]), "wrong embedding length"),
        "nan": (*with_row(5, [float("nan")] + rows[5][1:]), "non-finite"),
        "inf": (*with_row(5, [float("inf")] + rows[5][1:]), "non-finite"),
        "null": (*with_row(5, None), "missing embedding"),
    }


@pytest.mark.parametrize("case", list(_bad_cases()))
def test_bad_rows_exit_2_with_one_line_and_no_output(tmp_path, case):
    ids, rows, needle = _bad_cases()[case]
    src = write_rows(tmp_path / "bad.parquet", ids, rows)
    res = cli(src, "--out", tmp_path / "o.zarr", "--npz", tmp_path / "o.npz")
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
    assert "bad.parquet row" in lines[0]
    assert leftovers(tmp_path, {"bad.parquet"}) == []


def test_bad_files_and_options_exit_2(data, tmp_path):
    cells, vecs = sample(10, seed=10)
    nocol = tmp_path / "nocol.parquet"
    pq.write_table(pa.table({"grid": [fmt(c) for c in cells],
                             "embedding": pa.array(list(vecs), pa.list_(pa.float32()))}), nocol)
    notpq = tmp_path / "notes.parquet"
    notpq.write_text("hello")
    ints = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"grid_id_coord": [fmt(c) for c in cells],
                             "embedding": pa.array([[1] * D] * 10, pa.list_(pa.int32()))}), ints)
    other_d = write_parquet(tmp_path / "d4.parquet", [fmt(c + 1) for c in cells], vecs[:, :4])
    existing = tmp_path / "exists.zarr"
    existing.mkdir()
    cases = [
        ((nocol, "--out", tmp_path / "o.zarr"), "missing column 'grid_id_coord'"),
        ((notpq, "--out", tmp_path / "o.zarr"), "neither parquet"),
        ((tmp_path / "nope.parquet", "--out", tmp_path / "o.zarr"), "does not exist"),
        ((ints, "--out", tmp_path / "o.zarr"), "float16/32/64"),
        ((data["parquet"], other_d, "--out", tmp_path / "o.zarr"), "wrong embedding length"),
        ((data["parquet"], "--out", existing), "--overwrite"),
        ((data["parquet"], "--out", tmp_path / "o.zarr", "--pca", "99"), "exceeds"),
        ((data["parquet"], "--out", tmp_path / "o.zarr", "--chunks", "9x9"), "--chunks"),
        ((data["parquet"],), "exactly one of --out"),
        ((data["parquet"], "--out", tmp_path / "o.npz"), "does not write .npz files"),
    ]
    for args, needle in cases:
        res = cli(*args)
        assert res.exit_code == 2, (args, res.output)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (args, lines)
        assert leftovers(tmp_path, {"nocol.parquet", "notes.parquet", "ints.parquet",
                                    "d4.parquet", "exists.zarr"}) == []
    assert list(existing.iterdir()) == []


def test_overwrite_replaces_an_earlier_map_and_its_npz(data, tmp_path):
    out, npz = tmp_path / "o.zarr", tmp_path / "o.npz"
    ok(data["parquet"], "--out", out, "--npz", npz)
    assert zipfile.ZipFile(npz).comment == NPZ_MARKER and np.load(npz).files == ["arr_0"]
    res = cli(data["parquet"], "--out", out, "--npz", npz)
    assert res.exit_code == 2 and "already exists; pass --overwrite" in res.stderr
    ok(data["parquet"], "--out", out, "--npz", npz, "--overwrite", "--dtype", "float16")
    assert xr.open_zarr(out).embedding.dtype == np.float16
    assert np.load(npz)["arr_0"].dtype == np.float16
    assert leftovers(tmp_path, {"o.zarr", "o.npz"}) == []


def _someone_elses(path: Path) -> dict[str, bytes]:
    path.mkdir()
    (path / "thesis.tex").write_text("years of work")
    (path / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group",
                                                "attributes": {"owner": "someone"}}))
    return tree_bytes(path)


def test_overwrite_refuses_what_is_not_ours_and_leaves_it_untouched(data, tmp_path):
    theirs = tmp_path / "theirs.zarr"
    before = _someone_elses(theirs)
    plain = tmp_path / "notes"
    plain.write_text("not a map")
    their_npz = tmp_path / "their.npz"
    np.savez(their_npz, arr_0=np.ones((2, 2)))  # an .npz era5latent did not write
    npz_bytes = their_npz.read_bytes()
    out = tmp_path / "o.zarr"
    cases = [
        (("--out", theirs), "theirs.zarr is a directory that is not an era5latent output"),
        (("--out", plain), "notes is a file that is not an era5latent output"),
        (("--out", out, "--npz", their_npz),
         "their.npz is a file that is not an era5latent output; --overwrite replaces only an "
         "era5latent embedding map .npz: move it away or choose another --npz"),
        (("--out", out, "--npz", theirs.with_suffix(".npz")), "not an era5latent output"),
    ]
    (tmp_path / "theirs.npz").mkdir()
    for args, needle in cases:
        for extra in ((), ("--overwrite",)):
            res = cli(data["parquet"], *args, *extra)
            lines = res.stderr.strip().splitlines()
            assert res.exit_code == 2 and len(lines) == 1 and needle in lines[0], (args, lines)
    assert tree_bytes(theirs) == before
    assert plain.read_text() == "not a map" and their_npz.read_bytes() == npz_bytes
    assert leftovers(tmp_path, {"theirs.zarr", "notes", "their.npz", "theirs.npz"}) == []


def test_something_appearing_at_the_output_during_the_build_is_left_alone(data, tmp_path):
    out, npz = tmp_path / "o.zarr", tmp_path / "o.npz"

    def someone_writes(phase, done, total):
        if phase == "write" and not out.exists():
            out.mkdir()
            (out / "theirs.txt").write_text("made meanwhile")

    with pytest.raises(Era5LatentError, match="o.zarr is a directory that is not an era5latent output"):
        em.build_embed_map([data["parquet"]], out, options=em.EmbedMapOptions(npz=npz),
                           progress=someone_writes)
    assert (out / "theirs.txt").read_text() == "made meanwhile"
    assert leftovers(tmp_path, {"o.zarr"}) == []  # neither the npz nor temporaries


# --- attach-to -----------------------------------------------------------------------------------


def _digest(store: Path, skip: set[str]) -> dict[str, str]:
    return {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(store.rglob("*")) if p.is_file() and p.name not in skip}


@pytest.mark.filterwarnings("ignore:Consolidated metadata:UserWarning")
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_attach_to_adds_arrays_and_leaves_others_untouched(data, tmp_path, zarr_format):
    store = tmp_path / "era5.zarr"
    t2m = np.random.default_rng(0).standard_normal((2, 721, 1440)).astype(np.float32)
    ds = xr.Dataset({"2m_temperature": (("time", "latitude", "longitude"), t2m)},
                    coords={"time": np.array(["2020-01-01", "2020-01-02"], "datetime64[ns]"),
                            "latitude": np.arange(90, -90.01, -0.25),
                            "longitude": np.arange(0, 360, 0.25)})
    ds.to_zarr(store, zarr_format=zarr_format, consolidated=True)
    meta = {".zmetadata", "zarr.json", ".zattrs", ".zgroup"}
    before = _digest(store, meta)
    res = ok(data["parquet"], "--attach-to", store, "--json")
    assert "copernicus_embedding" in json.loads(res.stdout)["arrays"]
    assert {k: v for k, v in _digest(store, meta).items() if k in before} == before
    out = xr.open_zarr(store)  # consolidated metadata was refreshed
    np.testing.assert_array_equal(out["2m_temperature"].values, t2m)
    np.testing.assert_array_equal(out.copernicus_embedding.values, expected_map(
        data["cells"], data["vecs"]))
    assert out.copernicus_valid.sum() == len(data["cells"])
    res = cli(data["parquet"], "--attach-to", store)
    assert res.exit_code == 2 and "already has copernicus_channel, copernicus_embedding" in res.stderr
    ok(data["parquet"], "--attach-to", store, "--overwrite", "--dtype", "float16")
    assert xr.open_zarr(store).copernicus_embedding.dtype == np.float16
    assert {k: v for k, v in _digest(store, meta).items() if k in before} == before


def test_attach_overwrite_replaces_only_the_maps_own_arrays(data, tmp_path):
    store = tmp_path / "era5.zarr"
    ds = xr.Dataset({"valid": ("latitude", np.ones(721, np.int8))},  # a user's array
                    coords={"latitude": np.arange(90, -90.01, -0.25),
                            "longitude": np.arange(0, 360, 0.25)})
    ds.to_zarr(store, zarr_format=3, consolidated=False)
    theirs = tree_bytes(store / "valid")
    for extra in ((), ("--overwrite",)):
        res = cli(data["parquet"], "--attach-to", store, "--prefix", "", *extra)
        lines = res.stderr.strip().splitlines()
        assert res.exit_code == 2 and len(lines) == 1, lines
    assert "already has valid, not part of an era5latent embedding map" in lines[0]
    assert tree_bytes(store / "valid") == theirs
    # an earlier map under a prefix is replaced whole: its PCA arrays go with it
    ok(data["parquet"], "--attach-to", store, "--prefix", "m_", "--pca", "2")
    assert (store / "m_pca_components").is_dir()
    ok(data["parquet"], "--attach-to", store, "--prefix", "m_", "--overwrite")
    assert sorted(p.name for p in store.iterdir() if p.name.startswith("m_")) == [
        "m_channel", "m_embedding", "m_valid"]
    assert xr.open_zarr(store, consolidated=False).m_embedding.shape == (721, 1440, D)
    assert tree_bytes(store / "valid") == theirs
    assert leftovers(tmp_path, {"era5.zarr"}) == []
    assert leftovers(tmp_path, {"era5.zarr"}) == []
