"""``zarrio.write_rows``: whole chunks written as files hold zarr-python's bytes; everything
else goes through zarr-python."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import ZstdCodec

from era5latent.io.zarrio import CRC, _chunk_file, read_rows, write_rows

from tests.conftest import tree_bytes


CASES = [  # dtype, chunks along the first axis, compressors
    ("uint8", 4, [ZstdCodec(level=3), CRC]),
    ("int64", 1, [CRC]),
    ("bool", 1, [CRC]),
    ("uint16", 2, [ZstdCodec(level=0)]),
    ("int32", 3, []),
]


def _arrays(root: Path) -> list[zarr.Array]:  # type: ignore[type-arg]
    g = zarr.open_group(str(root), mode="w", zarr_format=3)
    return [g.create_array(f"a{k}", shape=(10, 3, 5), chunks=(step, 3, 5), dtype=dtype,
                           compressors=comp, fill_value=0)
            for k, (dtype, step, comp) in enumerate(CASES)]


@pytest.mark.parametrize("fill_first", [False, True])
def test_written_chunks_are_the_bytes_zarr_python_writes(tmp_path: Path, fill_first: bool) -> None:
    """Random chunks, a chunk of fill values (zarr-python deletes its file), and a chunk written
    twice, through write_rows and through ``arr[a:b] = v``: the same files."""
    rng = np.random.default_rng(0)
    ours, theirs = _arrays(tmp_path / "ours.zarr"), _arrays(tmp_path / "theirs.zarr")
    for x, y in zip(ours, theirs):
        step = x.chunks[0]
        for a in range(0, 10, step):
            b = min(a + step, 10)
            v = rng.integers(0, 3, size=(b - a, 3, 5)).astype(x.dtype)
            if fill_first and a == 0:
                write_rows(x, a, b, v)  # a file there first, then all fill: it goes away
                y[a:b] = v
                v = np.zeros_like(v)
            write_rows(x, a, b, v)
            y[a:b] = v
        np.testing.assert_array_equal(x[...], y[...])
    a, b = tree_bytes(tmp_path / "ours.zarr"), tree_bytes(tmp_path / "theirs.zarr")
    assert sorted(a) == sorted(b) and len(a) > 15
    assert [k for k in a if a[k] != b[k]] == []


def test_only_whole_local_chunks_of_known_codecs_are_written_as_files(tmp_path: Path) -> None:
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3)
    ok = g.create_array("ok", shape=(10, 4), chunks=(4, 4), dtype="uint8", compressors=[CRC],
                        fill_value=0)
    assert _chunk_file(ok, 4, 8) == str(tmp_path / "s.zarr" / "ok" / "c" / "1" / "0")
    assert _chunk_file(ok, 8, 10) is None  # the partial last chunk: zarr merges it
    assert _chunk_file(ok, 2, 6) is None  # not one chunk
    floats = g.create_array("f", shape=(4, 4), chunks=(1, 4), dtype="float32", fill_value=0)
    assert _chunk_file(floats, 0, 1) is None  # NaN fills and endianness: zarr's business
    split = g.create_array("s", shape=(4, 4), chunks=(1, 2), dtype="uint8", fill_value=0)
    assert _chunk_file(split, 0, 1) is None  # chunked along a second axis
    write_rows(ok, 8, 10, np.full((2, 4), 7, dtype=np.uint8))  # through zarr-python
    np.testing.assert_array_equal(ok[8:10], 7)


def test_chunks_read_from_their_files_are_what_zarr_python_reads(tmp_path: Path) -> None:
    """Every chunk, a missing one (fill values) and a damaged one (a flipped byte, a truncated
    file: an error that says checksum, as zarr-python's does)."""
    from era5latent.store.arrays import why_unreadable

    rng = np.random.default_rng(1)
    for x in _arrays(tmp_path / "s.zarr"):
        step = x.chunks[0]
        x[:step] = rng.integers(1, 3, size=(step, 3, 5)).astype(x.dtype)  # the rest: no files
        for a in range(0, 10 - 10 % step, step):
            got = read_rows(x, a, a + step)
            np.testing.assert_array_equal(got, x[a:a + step])
            assert got.dtype == x.dtype and got.flags.writeable
        path = Path(_chunk_file(x, 0, step) or "")
        if "crc32c" not in [c.to_dict()["name"] for c in x.metadata.codecs]:
            continue
        good = path.read_bytes()
        for bad in (good[:5] + bytes([good[5] ^ 1]) + good[6:], good[:-7]):
            path.write_bytes(bad)
            with pytest.raises(ValueError) as err:
                read_rows(x, 0, step)
            assert why_unreadable(err.value) == "crc32c mismatch"
            with pytest.raises(Exception) as theirs:
                x[:step]
            assert why_unreadable(theirs.value) == "crc32c mismatch"

