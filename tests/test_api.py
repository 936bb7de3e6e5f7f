"""The Python API and the PyTorch dataset: the same bytes as the CLI's encode and decode."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from torch.utils.data import DataLoader

import era5latent
from era5latent.errors import (DataValueError, ModelMismatchError, OptionError, StoreError,
                               SubsetError)
from era5latent.model.checkpoint import LoadedModel
from era5latent.pipeline import decode as pipeline_decode
from era5latent.pipeline import encode as pipeline_encode
from era5latent.pipeline import prepare_encode
from era5latent.io.sources import open_source
from era5latent.torch import LatentDataset
from era5latent.io.variables import parse_subset

SUBSET = "z500,z850,t850,t2m"
GROUPS = ["z", "t", "surface"]


@pytest.fixture(scope="module")
def model(tiny_model: Path) -> LoadedModel:
    return era5latent.load_model(tiny_model)


@pytest.fixture(scope="module")
def fields(sample_zarr: Path) -> xr.Dataset:
    """The sample, in memory."""
    ds: xr.Dataset = xr.open_zarr(sample_zarr).load()
    return ds


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, sample_zarr: Path, model: LoadedModel) -> Path:
    """What the CLI's encode writes (time chunks of 4 steps)."""
    out = tmp_path_factory.mktemp("api") / "latent.zarr"
    pipeline_encode(open_source(sample_zarr), model, parse_subset(SUBSET), str(out), time_chunk=4,
                    device="cpu")
    return out


@pytest.fixture(scope="module")
def latent(fields: xr.Dataset, model: LoadedModel) -> xr.Dataset:
    return era5latent.encode(fields, model, SUBSET, device="cpu", time_chunk=4)


def unpack(packed: np.ndarray) -> np.ndarray:
    """(…, h, w, bytes) -> (…, bits, h, w) in {0, 1}, the format's bit order."""
    return np.moveaxis(np.unpackbits(packed, axis=-1), -1, -3)


# -- package -------------------------------------------------------------------------------------

def test_import_is_lazy_and_exports_resolve() -> None:
    code = ("import sys, era5latent; assert 'torch' not in sys.modules, 'torch'; "
            "assert 'xarray' not in sys.modules, 'xarray'; "
            "import era5latent.training, era5latent.evaluation; "  # submodules must not shadow exports
            "assert callable(era5latent.train_model) and callable(era5latent.evaluate_reconstruction);"
            "print(sorted(era5latent.__all__))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert set(era5latent.__all__) == {"__version__", *era5latent._EXPORTS}
    for name in era5latent.__all__:
        assert getattr(era5latent, name) is not None
    with pytest.raises(AttributeError):
        era5latent.no_such_name  # noqa: B018


def test_load_model(tiny_model: Path, model: LoadedModel) -> None:
    assert isinstance(model, LoadedModel) and len(model.sha256) == 64
    assert set(model.meta.groups) == set(GROUPS)
    assert era5latent.load_model(str(tiny_model)).sha256 == model.sha256


# -- encode --------------------------------------------------------------------------------------

def test_encode_in_memory_and_dask_equal_the_cli_store(fields: xr.Dataset, latent: xr.Dataset,
                                                       model: LoadedModel, store: Path,
                                                       sample_zarr: Path) -> None:
    lazy_in = era5latent.encode(xr.open_zarr(sample_zarr).chunk({"time": 2}), model, SUBSET,
                                device="cpu", time_chunk=4)
    on_disk = era5latent.open_latent(store)
    import zarr

    root = zarr.open_group(str(store), mode="r")
    for g in GROUPS:
        name = f"codes_{g}"
        raw = np.asarray(root[name][...])  # type: ignore[index]
        assert latent[name].dtype == np.uint8 and latent[name].shape == (24, 4, 8, 16)
        assert latent[name].dims == ("time", "token_lat", "token_lon", "byte")
        np.testing.assert_array_equal(latent[name].values, raw)
        np.testing.assert_array_equal(lazy_in[name].values, raw)
        np.testing.assert_array_equal(on_disk[name].values, raw)
        assert latent[name].attrs == on_disk[name].attrs
    meta, disk_meta = latent.attrs["era5latent"], on_disk.attrs["era5latent"]
    for key in ("groups", "normalisation", "model", "sample_dims", "time_range", "time_chunk"):
        assert meta[key] == disk_meta[key], key
    assert meta["complete"] and meta["source"]["grid"] == disk_meta["source"]["grid"]
    np.testing.assert_array_equal(latent["time"].values, fields["time"].values)
    xr.testing.assert_identical(latent.drop_attrs(deep=False),
                                on_disk.drop_attrs(deep=False).load())


def test_encode_reads_other_layouts_and_paths(fields: xr.Dataset, latent: xr.Dataset,
                                              model: LoadedModel, sample_zarr: Path) -> None:
    # CDS-like: short names, 'valid_time', latitude ascending, longitude -180..180
    cds = fields.isel(time=slice(0, 8)).rename(geopotential="z", temperature="t", time="valid_time")
    cds = cds.rename({"2m_temperature": "t2m"})
    cds = cds.isel(latitude=slice(None, None, -1))
    cds = cds.assign_coords(longitude=((cds.longitude + 180) % 360) - 180).sortby("longitude")
    other = era5latent.encode(cds, str(model.path), ["z500", "z850", "t850", "2t"], device="cpu",
                              time_chunk=4)
    from_path = era5latent.encode(sample_zarr, model, parse_subset(SUBSET), device="cpu",
                                  time_chunk=4)
    for g in GROUPS:
        np.testing.assert_array_equal(other[f"codes_{g}"].values, latent[f"codes_{g}"].values[:8])
        np.testing.assert_array_equal(from_path[f"codes_{g}"].values, latent[f"codes_{g}"].values)
    assert other.attrs["era5latent"]["source"]["layout"]["lat_descending"] is False


def test_encode_progress_and_errors(fields: xr.Dataset, model: LoadedModel) -> None:
    seen: list[tuple[int, int]] = []
    era5latent.encode(fields.isel(time=slice(0, 5)), model, "t2m", device="cpu", time_chunk=2,
                      progress=lambda d, n: seen.append((d, n)))
    assert seen == [(0, 5), (2, 5), (4, 5), (5, 5)]
    with pytest.raises(SubsetError, match="u850"):
        era5latent.encode(fields, model, "u850", device="cpu")
    with pytest.raises(SubsetError, match="not trained on"):
        era5latent.encode(fields, model, "t700", device="cpu")
    bad = fields.copy(deep=True)
    bad["2m_temperature"][3, 0, 0] = np.nan
    with pytest.raises(DataValueError, match="NaN"):
        era5latent.encode(bad, model, "t2m", device="cpu")
    with pytest.raises(OptionError):
        era5latent.encode(fields, model, "t2m", batch_size=0)


# -- open_latent ---------------------------------------------------------------------------------

def test_open_latent_is_lazy_with_coords_and_attrs(store: Path) -> None:
    ds = era5latent.open_latent(store)
    codes = ds["codes_z"]
    assert codes.chunks is not None and codes.chunks[0] == (4,) * 6  # one dask chunk per store chunk
    assert ds.attrs["era5latent"]["groups"]["z"]["channels"] == ["z500", "z850"]
    assert ds.encoding["source"] == str(store)
    assert np.issubdtype(ds["time"].dtype, np.datetime64)
    tl, tn = ds["token_lat"].values, ds["token_lon"].values
    assert tl.shape == (4,) and tn.shape == (8,)
    assert np.all(np.diff(tl) < 0) and np.all((tl > -90) & (tl < 90))  # north first, like the grid
    assert np.all(np.diff(tn) > 0) and np.all((tn >= 0) & (tn < 360))
    assert ds.sizes["latitude"] == 33 and ds.sizes["longitude"] == 64
    with pytest.raises(StoreError, match="no such latent store"):
        era5latent.open_latent(store.parent / "missing.zarr")


def test_open_latent_refuses_unfinished_store(sample_zarr: Path, model: LoadedModel,
                                              tmp_path: Path) -> None:
    out = tmp_path / "unfinished.zarr"
    job = prepare_encode(open_source(sample_zarr), model, parse_subset("t2m"), str(out),
                         time_chunk=8, device="cpu")
    job.run_chunk(0)
    with pytest.raises(StoreError, match="unfinished"):
        era5latent.open_latent(out)
    with pytest.raises(StoreError, match="unfinished"):
        LatentDataset(out)
    ds = era5latent.open_latent(out, allow_incomplete=True)
    assert ds["codes_surface"][:8].values.any()


# -- decode --------------------------------------------------------------------------------------

def test_decode_equals_decode_to_disk(store: Path, latent: xr.Dataset, model: LoadedModel,
                                      tmp_path: Path) -> None:
    out = tmp_path / "recon.zarr"
    pipeline_decode(str(store), model, str(out), device="cpu")
    disk = xr.open_zarr(out).load()
    lazy = era5latent.decode(era5latent.open_latent(store), model, device="cpu")
    assert all(v.chunks is not None for v in lazy.data_vars.values())  # nothing decoded yet
    lazy = lazy.load()
    xr.testing.assert_identical(lazy, disk)
    eager = era5latent.decode(latent, model, device="cpu")  # codes in memory: computed now
    assert all(v.chunks is None for v in eager.data_vars.values())
    for name in disk.data_vars:
        np.testing.assert_array_equal(eager[name].values, disk[name].values)
    assert set(disk.data_vars) == {"geopotential", "temperature", "2m_temperature"}
    assert disk["geopotential"].attrs["units"] == "m2 s-2"


def test_decode_subset_and_time_selection(store: Path, model: LoadedModel, tmp_path: Path) -> None:
    out = tmp_path / "t850.zarr"
    pipeline_decode(str(store), model, str(out), subset=parse_subset("t850"),
                    time_range="2020-01-02/2020-01-03", device="cpu")
    disk = xr.open_zarr(out).load()
    lat = era5latent.open_latent(store).sel(time=slice("2020-01-02", "2020-01-03T00"))
    mem = era5latent.decode(lat, model, subset="t850", device="cpu").load()
    assert list(mem.data_vars) == ["temperature"] and list(mem["level"].values) == [850]
    np.testing.assert_array_equal(mem["time"].values, disk["time"].values)
    np.testing.assert_array_equal(mem["temperature"].values, disk["temperature"].values)
    # a variable subset of the Dataset decodes just those groups
    only_z = era5latent.decode(era5latent.open_latent(store)[["codes_z"]], model, device="cpu")
    assert list(only_z.data_vars) == ["geopotential"]


def test_decode_errors(latent: xr.Dataset, model: LoadedModel) -> None:
    other = latent.copy()
    other.attrs = {"era5latent": {**latent.attrs["era5latent"],
                                  "model": {**latent.attrs["era5latent"]["model"], "sha256": "0" * 64}}}
    with pytest.raises(ModelMismatchError):
        era5latent.decode(other, model, device="cpu")
    with pytest.raises(SubsetError, match="msl"):
        era5latent.decode(latent, model, subset="msl", device="cpu")
    with pytest.raises(StoreError, match="era5latent"):
        era5latent.decode(latent.drop_attrs(), model, device="cpu")


def test_file_wrappers_info_train_and_evaluate(fields: xr.Dataset, latent: xr.Dataset,
                                               model: LoadedModel, store: Path,
                                               tmp_path: Path) -> None:
    res = era5latent.encode_to_store(fields, model, SUBSET, tmp_path / "l.zarr", time_chunk=4,
                                     device="cpu")
    assert res.chunks_written == 6
    np.testing.assert_array_equal(era5latent.open_latent(res.path)["codes_t"].values,
                                  latent["codes_t"].values)
    info = era5latent.info(store)
    assert info["complete"] and [g["group"] for g in info["groups"]] == GROUPS
    dec = era5latent.decode_to_file(store, model, tmp_path / "r.nc", subset=["t2m"], device="cpu")
    assert dec.variables == ["2m_temperature"]
    recon = era5latent.decode(latent, model, device="cpu")
    report = era5latent.evaluate_reconstruction(fields, recon, latent=store, subset="z500,t2m",
                                                baselines=["bitround"], sweep=[1.0])
    methods = {(r["method"], r["channel"]) for r in report.records}
    assert methods == {("wla", "z500"), ("wla", "t2m"), ("bitround", "z500"), ("bitround", "t2m")}
    trained = era5latent.train_model(fields.isel(time=slice(0, 8)), "t2m", tmp_path / "m.safetensors",
                                     steps=2, batch_size=2, device="cpu", checkpoint_every=2)
    assert trained.steps == 2 and era5latent.load_model(trained.path).sha256 == trained.sha256


def test_verify_finalize_and_build_embed_map(sample_zarr: Path, tiny_model: Path,
                                             model: LoadedModel, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from era5latent.errors import CheckpointError

    out = tmp_path / "parts.zarr"
    chs = parse_subset("t2m")
    pipeline_encode(open_source(sample_zarr), model, chs, str(out), time_chunk=4, device="cpu",
                    part=(2, 2))
    with pytest.raises(StoreError, match="parts 1/2"):
        era5latent.finalize(out)
    pipeline_encode(open_source(sample_zarr), model, chs, str(out), time_chunk=4, device="cpu",
                    part=(1, 2))
    res = era5latent.finalize(out)
    assert not res.already and res.chunks == 6 and era5latent.info(out)["complete"]
    assert era5latent.finalize(out).already

    for m in (model, tiny_model, None):
        checks = era5latent.verify(out, m)
        assert all(c.ok for c in checks), checks
        assert ("model" in {c.name for c in checks}) == (m is not None)
    codes = next(p for p in (out / "codes_surface" / "c").rglob("*") if p.is_file())
    data = bytearray(codes.read_bytes())
    data[len(data) // 2] ^= 0xFF
    codes.write_bytes(bytes(data))
    failed = [c for c in era5latent.verify(out) if not c.ok]
    assert [c.name for c in failed] == ["array codes_surface"] and "crc32c" in failed[0].detail
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        era5latent.verify(out, tmp_path / "missing.safetensors")

    pq.write_table(pa.table({"grid_id_coord": pa.array(["0295191_177.75_-39.00"], pa.string()),
                             "embedding": pa.array([[1.0, 2.0]], pa.list_(pa.float32()))}),
                   tmp_path / "e.parquet")
    emb = era5latent.build_embed_map([tmp_path / "e.parquet"], tmp_path / "map.zarr",
                                     options=era5latent.EmbedMapOptions(dtype="float16"))
    assert emb.shape == (721, 1440, 2) and emb.valid_cells == 1 and emb.dtype == "float16"


# -- LatentDataset -------------------------------------------------------------------------------

def test_dataset_items_are_the_stored_bits(store: Path) -> None:
    ds = LatentDataset(store)
    codes = era5latent.open_latent(store).load()
    assert len(ds) == 24 and ds.item_shape == (3, 128, 4, 8) and ds.groups == GROUPS
    assert ds.channels == {"z": ["z500", "z850"], "t": ["t850"], "surface": ["t2m"]}
    for i in (0, 5, 23):
        want = np.stack([unpack(codes[f"codes_{g}"].values[i]) for g in GROUPS])
        x = ds[i]
        assert isinstance(x, torch.Tensor) and x.dtype == torch.float32
        np.testing.assert_array_equal(x.numpy(), want * 2.0 - 1.0)
    zeros_ones = LatentDataset(store, bits="01", dtype=torch.float64, groups=["surface", "z"])
    x01 = zeros_ones[7]
    assert isinstance(x01, torch.Tensor) and x01.dtype == torch.float64
    pm1 = ds[7]
    assert isinstance(pm1, torch.Tensor)
    torch.testing.assert_close(x01, ((pm1[[2, 0]] + 1) / 2).double(), rtol=0, atol=0)
    assert set(np.unique(x01.numpy()).tolist()) == {0.0, 1.0}


def test_dataset_lead_time_pairs(store: Path) -> None:
    plain = LatentDataset(store)
    one = LatentDataset(store, lead_times=1)
    assert len(one) == 23
    for i in (0, 11, 22):
        x, y = one[i]
        torch.testing.assert_close(x, plain[i], rtol=0, atol=0)
        torch.testing.assert_close(y, plain[i + 1], rtol=0, atol=0)
    many = LatentDataset(store, lead_times=[1, 3], time="2020-01-02/2020-01-04T18")
    assert len(many.times) == 12 and len(many) == 9 and many.start == 4
    x, y = many[2]
    assert y.shape == (2, 3, 128, 4, 8)
    torch.testing.assert_close(x, plain[6], rtol=0, atol=0)
    torch.testing.assert_close(y[0], plain[7], rtol=0, atol=0)
    torch.testing.assert_close(y[1], plain[9], rtol=0, atol=0)
    window = LatentDataset(store, lead_times=2, time=slice(20, None))
    assert len(window) == 2
    torch.testing.assert_close(window[-1][1], plain[23], rtol=0, atol=0)
    with pytest.raises(IndexError):
        window[2]
    with pytest.raises(OptionError, match="reach past"):
        LatentDataset(store, lead_times=4, time=slice(20, None))
    with pytest.raises(OptionError, match="positive"):
        LatentDataset(store, lead_times=0)
    with pytest.raises(OptionError, match="groups"):
        LatentDataset(store, groups=["q"])
    with pytest.raises(OptionError, match="bits"):
        LatentDataset(store, bits="signs")  # type: ignore[arg-type]


def test_dataset_under_multiworker_dataloader(store: Path) -> None:
    ds = LatentDataset(store, lead_times=[1, 2], cache_mb=0)
    ds[0]  # opened here: the handles must not travel to the workers
    assert pickle.loads(pickle.dumps(ds))._arrays == {}

    def batches(workers: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = zip(*DataLoader(ds, batch_size=5, num_workers=workers))
        return torch.cat(xs), torch.cat(ys)

    x0, y0 = batches(0)
    x2, y2 = batches(2)
    assert x0.shape == (22, 3, 128, 4, 8) and y0.shape == (22, 2, 3, 128, 4, 8)
    torch.testing.assert_close(x2, x0, rtol=0, atol=0)
    torch.testing.assert_close(y2, y0, rtol=0, atol=0)
    spawned = DataLoader(ds, batch_size=11, num_workers=1, multiprocessing_context="spawn")
    torch.testing.assert_close(torch.cat([b[0] for b in spawned]), x0, rtol=0, atol=0)
    ds._pid = -1  # as if forked: the next read reopens the store
    torch.testing.assert_close(ds[3][0], x0[3], rtol=0, atol=0)


def test_to_latent_round_trip_decodes_like_the_store(store: Path, model: LoadedModel) -> None:
    ds = LatentDataset(store)
    codes = era5latent.open_latent(store)
    x = torch.stack([ds[i] for i in range(4, 10)])  # type: ignore[misc]
    rebuilt = ds.to_latent(x, ds.times[4:10])
    for g in GROUPS:
        np.testing.assert_array_equal(rebuilt[f"codes_{g}"].values,
                                      codes[f"codes_{g}"].values[4:10])
    from_bool = ds.to_latent(x > 0, ds.times[4:10])
    np.testing.assert_array_equal(from_bool["codes_z"].values, rebuilt["codes_z"].values)
    a = era5latent.decode(rebuilt, model, device="cpu")
    b = era5latent.decode(codes.isel(time=slice(4, 10)), model, device="cpu").load()
    for name in b.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values)
    with pytest.raises(OptionError, match="expected"):
        ds.to_latent(x[:, :2], ds.times[4:10])


def test_ensemble_members_are_extra_samples(fields: xr.Dataset, model: LoadedModel,
                                            tmp_path: Path) -> None:
    small = fields.isel(time=slice(0, 6))[["2m_temperature"]]
    members = xr.concat([small, small + 1.5, small - 2.0], dim="number")
    members = members.assign_coords(number=[0, 1, 2])
    out = tmp_path / "ens.zarr"
    era5latent.encode_to_store(members, model, "t2m", out, time_chunk=4, device="cpu")
    latent = era5latent.encode(members.chunk({"time": 3}), model, "t2m", time_chunk=4,
                               device="cpu")
    stored = era5latent.open_latent(out)
    assert stored["codes_surface"].dims == ("time", "number", "token_lat", "token_lon", "byte")
    np.testing.assert_array_equal(latent["codes_surface"].values, stored["codes_surface"].values)
    ds = LatentDataset(out, lead_times=1)
    assert len(ds) == 5 * 3 and ds.sample_dims == ("number",)
    assert ds.locate(7) == (2, (1,))
    packed = stored["codes_surface"].values
    x, y = ds[7]
    np.testing.assert_array_equal(x[0].numpy(), unpack(packed[2, 1]) * 2.0 - 1.0)
    np.testing.assert_array_equal(y[0].numpy(), unpack(packed[3, 1]) * 2.0 - 1.0)
    plain = LatentDataset(out)
    frames = torch.stack([plain[i] for i in range(len(plain))]).view(6, 3, 1, 128, 4, 8)  # type: ignore[misc]
    rebuilt = plain.to_latent(frames, plain.times)
    np.testing.assert_array_equal(rebuilt["codes_surface"].values, packed)
    dec = era5latent.decode(rebuilt, model, device="cpu")
    assert dec["2m_temperature"].dims == ("time", "number", "latitude", "longitude")
