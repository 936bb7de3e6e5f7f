"""Direct reads of a local Zarr source's chunk files (io/chunkread): the values xarray reads,
on every layout the direct path takes, and xarray's own read wherever it must not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from zarr.codecs import BloscCodec, Crc32cCodec, GzipCodec, ZstdCodec

from era5latent.errors import SourceError
from era5latent.io.chunkread import open_array
from era5latent.io.sources import Source, open_source
from era5latent.io.variables import parse_subset

from .test_sources import wb2_dataset

SUBSETS = ("z500,z850,t2m", "z850,z500", "z850", "t2m,z500")


def dataset(nt: int = 8, levels: tuple[int, ...] = (300, 500, 850)) -> xr.Dataset:
    """wb2_dataset with three levels and a missing value, so that level selections differ."""
    ref = wb2_dataset(nt=nt)
    z = np.concatenate([ref["geopotential"].values, ref["geopotential"].values[:, :1] - 7.0],
                       axis=1)[:, [2, 0, 1]]
    ds = xr.Dataset({"geopotential": (("time", "level", "latitude", "longitude"), z,
                                      {"units": "m2 s-2"}),
                     "2m_temperature": ref["2m_temperature"]},
                    coords={**{k: ref[k] for k in ("time", "latitude", "longitude")},
                            "level": np.array(levels)})
    return ds


def xarray_reads(path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, np.ndarray]:
    """What xarray and zarr-python read for each subset, the direct path switched off."""
    monkeypatch.setenv("ERA5LATENT_DIRECT_READS", "0")
    src = open_source(path)
    got = {s: src.read(parse_subset(s), 1, src.times.size) for s in SUBSETS}
    assert not any(src._direct.values())
    monkeypatch.delenv("ERA5LATENT_DIRECT_READS")
    return got


def direct_reads(src: Source) -> dict[str, np.ndarray]:
    return {s: src.read(parse_subset(s), 1, src.times.size) for s in SUBSETS}


def write(ds: xr.Dataset, path: Path, fmt: int, chunks: dict[str, int] | None = None,
          **enc: Any) -> Path:
    """``ds`` to a Zarr store of format ``fmt``, each variable chunked by ``chunks`` (by dim;
    whole along the others) and given encoding ``enc`` (``shards`` by dim, like ``chunks``)."""
    def by_dim(sizes: dict[str, int], v: str) -> tuple[int, ...]:
        return tuple(sizes.get(str(d), ds.sizes[d]) for d in ds[v].dims)

    encoding = {v: {**({"chunks": by_dim(chunks, str(v))} if chunks else {}),
                    **{k: by_dim(x, str(v)) if k == "shards" else x for k, x in enc.items()}}
                for v in ds.data_vars}
    ds.to_zarr(path, zarr_format=fmt, consolidated=False, encoding=encoding)
    return path


LAYOUTS: dict[str, Any] = {
    "v3 zstd, one step a chunk": dict(fmt=3, chunks={"time": 1}),
    "v3 crc32c, edge chunks": dict(fmt=3, chunks={"time": 3, "latitude": 4, "level": 2},
                                   compressors=[ZstdCodec(level=1), Crc32cCodec()]),
    "v3 blosc": dict(fmt=3, chunks={"time": 2}, compressors=[BloscCodec(cname="lz4")]),
    "v3 gzip": dict(fmt=3, chunks={"time": 5}, compressors=[GzipCodec(level=1)]),
    "v3 uncompressed": dict(fmt=3, chunks={"time": 1}, compressors=None),
    "v2 blosc": dict(fmt=2, chunks={"time": 1}),
    "v2 edge chunks": dict(fmt=2, chunks={"time": 3, "longitude": 5}),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_direct_reads_are_what_xarray_reads(tmp_path: Path, layout: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    opts = dict(LAYOUTS[layout])
    path = write(dataset(), tmp_path / "s.zarr", opts.pop("fmt"), opts.pop("chunks"), **opts)
    want = xarray_reads(path, monkeypatch)
    src = open_source(path)
    got = direct_reads(src)
    assert src._direct and all(src._direct.values())  # every variable took the direct path
    for s in SUBSETS:
        np.testing.assert_array_equal(got[s], want[s], err_msg=s)


def test_direct_reads_can_be_turned_off_and_on(tmp_path: Path) -> None:
    """What encode does beside a GPU (off: zarrs decompresses on every core) and beside the
    CPU (on): the same values either way."""
    src = open_source(write(dataset(), tmp_path / "s.zarr", 3, {"time": 1}))
    chs = parse_subset("z500,t2m")
    x = src.read(chs, 0, 8)
    assert src._direct and all(src._direct.values())
    src.use_direct_reads(False)
    np.testing.assert_array_equal(src.read(chs, 0, 8), x)
    assert src._direct and not any(src._direct.values())
    src.use_direct_reads(True)
    np.testing.assert_array_equal(src.read(chs, 0, 8), x)
    assert all(src._direct.values())


def test_encode_on_the_cpu_reads_directly(sample_zarr: Path, tiny_model: Path) -> None:
    from era5latent.model.checkpoint import load_checkpoint
    from era5latent.pipeline.encoding import ready_to_encode

    src = open_source(sample_zarr)
    src.use_direct_reads(False)
    ready_to_encode(src, load_checkpoint(tiny_model), parse_subset("z500,t2m"), batch_size=2,
                    time_chunk=None, device="cpu", precision="auto")
    assert src.direct_reads
    src.read(parse_subset("z500,t2m"), 0, 2)
    assert src._direct and all(src._direct.values())


@pytest.mark.parametrize("fmt", [2, 3])
def test_direct_reads_permute_dims_and_keep_sample_dims(tmp_path: Path, fmt: int,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Dims stored in another order (longitude before latitude, level last) and an ensemble
    dimension, in float64 on disk."""
    ds = dataset().expand_dims(number=[0, 1, 2], axis=1).astype("f8")
    ds["2m_temperature"] = ds["2m_temperature"] + xr.DataArray([0.0, 1.0, 2.0], dims="number")
    ds = ds.transpose("time", "number", "longitude", "latitude", "level")
    path = write(ds, tmp_path / "ens.zarr", fmt, {"time": 2, "number": 2})
    want = xarray_reads(path, monkeypatch)
    src = open_source(path)
    assert src.sample_dims == ("number",)
    got = direct_reads(src)
    assert all(src._direct.values())
    for s in SUBSETS:
        assert got[s].shape[1] == 3 and got[s].dtype == np.float32
        np.testing.assert_array_equal(got[s], want[s], err_msg=s)


def test_a_missing_chunk_file_is_the_fill_value(tmp_path: Path) -> None:
    path = write(dataset(), tmp_path / "s.zarr", 3, {"time": 1})
    (path / "2m_temperature" / "c" / "5" / "0" / "0").unlink()  # never written: all NaN
    src = open_source(path)
    x = src.read(parse_subset("t2m,z500"), 0, 8)
    assert all(src._direct.values())
    assert np.isnan(x[5, 0]).all() and not np.isnan(x[:5]).any() and not np.isnan(x[5, 1]).any()


def test_a_damaged_chunk_is_a_clear_error_and_the_rest_reads(tmp_path: Path) -> None:
    path = write(dataset(), tmp_path / "s.zarr", 3, {"time": 1},
                 compressors=[ZstdCodec(level=1), Crc32cCodec()])
    chunk = path / "geopotential" / "c" / "6" / "0" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    src = open_source(path)
    assert src.read(parse_subset("z500"), 0, 6).shape == (6, 1, 9, 16)  # before it: direct
    assert all(src._direct.values())
    with pytest.raises(SourceError, match=r"cannot read geopotential between .*checksum.*"
                                          r"damaged or unreachable"):
        src.read(parse_subset("z500"), 4, 8)
    chunk.write_bytes(bytes(data[:10]))  # truncated: the decompressor's error, said the same way
    with pytest.raises(SourceError, match=r"cannot read geopotential between .* damaged"):
        src.read(parse_subset("z500"), 6, 7)


def transposed_latitude(ds: xr.Dataset) -> xr.Dataset:
    return ds.isel(latitude=slice(None, None, -1))


def lon180(ds: xr.Dataset) -> xr.Dataset:
    return ds.assign_coords(longitude=((ds.longitude + 180) % 360) - 180).sortby("longitude")


@pytest.mark.parametrize("case", ["ascending latitude", "longitude sorted on opening",
                                  "CF packing", "v2 fill value 0 masks zeros", "sharded",
                                  "variable chunk larger than the limit"])
def test_xarray_reads_where_the_files_are_not_the_values(tmp_path: Path, case: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Every layout the direct path must leave to xarray: the values are xarray's, and the
    direct path was not taken."""
    ds, fmt, chunks, enc = dataset(), 3, {"time": 1}, {}
    if case == "ascending latitude":
        ds = transposed_latitude(ds)
    elif case == "longitude sorted on opening":
        ds = lon180(ds)
    elif case == "CF packing":
        # float files xarray scales: the files hold other values than the variable
        enc = {"dtype": "float32", "scale_factor": 0.5, "add_offset": 100.0}
    elif case == "v2 fill value 0 masks zeros":
        fmt, enc = 2, {"_FillValue": 0.0}
        ds["geopotential"][:, 0] = 0.0  # xarray reads these zeros as missing
    elif case == "sharded":
        enc = {"shards": {"time": 2}}
        chunks = {"time": 1, "level": 1}
    else:
        monkeypatch.setattr("era5latent.io.chunkread.MAX_CHUNK_BYTES", 16)
    path = write(ds, tmp_path / "s.zarr", fmt, chunks, **enc)
    assert (open_array(str(path / "geopotential")) is None) == (
        case in ("sharded", "variable chunk larger than the limit"))
    want = xarray_reads(path, monkeypatch)
    src = open_source(path)
    got = direct_reads(src)
    assert src._direct and not any(src._direct.values())
    for s in SUBSETS:
        np.testing.assert_array_equal(got[s], want[s], err_msg=s)
