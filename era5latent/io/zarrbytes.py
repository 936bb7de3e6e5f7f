"""Zarr v3 documents and chunks made without zarr-python, holding the bytes it writes.

zarr-python runs each call on its event-loop thread, and the Python that runs there holds the
GIL. An encode does two such things beside a model thread that wants the GIL back after every
torch op: it lays out the new store while the first time chunk is encoded, and it seals the
store after the last. Through zarr-python they took about 24 and 25-29 ms of one core; made
here, about 4 and 5-9 ms (``benchmarks/paired_experiments.py stalls`` and ``seal``). Three things
are made:

* :func:`encode_chunk`: a chunk's bytes through the codecs era5latent uses (bytes, zstd,
  crc32c), the encoding ``zarrio.write_rows`` writes and the layout's coordinates use;
* :class:`NewTree`: a new hierarchy (groups, arrays, whole-array chunks) in memory, then written
  as files (``store.core`` lays a local latent store out with it);
* :func:`consolidated_root`: the root document ``zarr.consolidate_metadata`` writes.

Only what era5latent writes is supported (integer, bool and float arrays; finite fill values;
the codecs above); anything else is a ``ValueError``, a bug in era5latent.
``tests/test_zarrbytes.py`` compares every byte with zarr-python's.
"""

from __future__ import annotations

import functools
import json
import os
import unicodedata
from typing import Any

import numpy as np
import zarr


def dumps(doc: dict[str, Any]) -> bytes:
    """A document as zarr-python writes its JSON: ``json.dumps`` at its ``json_indent``."""
    return json.dumps(doc, indent=zarr.config.get("json_indent"), allow_nan=True).encode()


@functools.lru_cache(maxsize=None)
def zstd_codec(level: int, checksum: bool) -> Any:
    """The numcodecs compressor zarr-python's ZstdCodec encodes with, for the same bytes."""
    from numcodecs import Zstd

    return Zstd(level=level, checksum=checksum)


def encode_chunk(value: np.ndarray, dtype: np.dtype[Any], codecs: list[dict[str, Any]]
                 ) -> bytes:
    """The bytes of one chunk holding ``value`` through the codec chain ``codecs`` (as an array's
    ``zarr.json`` lists them: ``bytes``, then ``zstd`` and/or ``crc32c``)."""
    data = np.ascontiguousarray(value, dtype=dtype.newbyteorder("<")).view(np.uint8).ravel()
    if not codecs or codecs[0]["name"] != "bytes":
        raise ValueError(f"codecs {codecs}: expected the bytes codec first")
    for spec in codecs[1:]:
        if spec["name"] == "zstd":
            data = np.frombuffer(zstd_codec(**spec["configuration"]).encode(data), dtype=np.uint8)
        elif spec["name"] == "crc32c":
            import google_crc32c

            crc = np.array([google_crc32c.value(data.tobytes())], dtype="<u4").view(np.uint8)
            data = np.concatenate([data, crc])
        else:
            raise ValueError(f"codec {spec['name']!r}: era5latent writes bytes, zstd and crc32c")
    return data.tobytes()


def _fill(dtype: np.dtype[Any], value: Any) -> Any:
    """A fill value as zarr-python writes it in ``zarr.json``."""
    if dtype.kind == "b":
        return bool(value)
    if dtype.kind in "iu":
        return int(value)
    if dtype.kind == "f" and np.isfinite(value):
        return float(value)
    raise ValueError(f"fill value {value!r} of {dtype}: era5latent writes finite fills of "
                     "integer, bool and float arrays")


class NewArray:
    """An array of a :class:`NewTree`: ``arr[...] = values`` sets its one chunk."""

    def __init__(self, tree: NewTree, name: str, doc: dict[str, Any]) -> None:
        self.tree, self.name, self.doc = tree, name, doc
        self.dtype = np.dtype(doc["data_type"])

    def __setitem__(self, key: Any, values: Any) -> None:
        shape, chunks = self.doc["shape"], self.doc["chunk_grid"]["configuration"]["chunk_shape"]
        if key is not Ellipsis or shape != chunks or not shape:
            raise ValueError(f"{self.name}: a NewTree array is set whole, as one chunk")
        value = np.broadcast_to(np.asarray(values, dtype=self.dtype), tuple(shape))
        chunk = f"{self.name}/c/" + "/".join("0" * len(shape))
        if bool((value == self.doc["fill_value"]).all()):  # zarr's write_empty_chunks=False
            self.tree.files.pop(chunk, None)
            return
        self.tree.files[chunk] = encode_chunk(value, self.dtype, self.doc["codecs"])


class NewTree:
    """A new Zarr v3 hierarchy in memory, laid out as ``zarr.Group`` would lay it out
    (``create_group``, ``create_array``, ``attrs``), then written as files into an empty
    directory by :meth:`write`."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.attrs: dict[str, Any] = {}

    def create_group(self, name: str, *, attributes: dict[str, Any] | None = None) -> None:
        self.files[f"{name}/zarr.json"] = dumps({"attributes": attributes or {},
                                                 "zarr_format": 3, "node_type": "group"})

    def create_array(self, name: str, *, shape: tuple[int, ...], chunks: tuple[int, ...],
                     dtype: Any, dimension_names: tuple[str, ...], compressors: list[Any],
                     fill_value: Any, attributes: dict[str, Any] | None = None) -> NewArray:
        dt = np.dtype(dtype)
        if dt.kind not in "biuf":
            raise ValueError(f"{name}: dtype {dt}; a NewTree holds integer, bool and float arrays")
        bytes_codec: dict[str, Any] = {"name": "bytes"}
        if dt.itemsize > 1:
            bytes_codec["configuration"] = {"endian": "little"}
        doc = {"shape": [int(n) for n in shape], "data_type": dt.name,
               "chunk_grid": {"name": "regular",
                              "configuration": {"chunk_shape": [int(n) for n in chunks]}},
               "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
               "fill_value": _fill(dt, fill_value),
               "codecs": [bytes_codec, *(dict(c.to_dict()) for c in compressors)],
               "attributes": attributes or {}, "dimension_names": list(dimension_names),
               "zarr_format": 3, "node_type": "array", "storage_transformers": []}
        self.files[f"{name}/zarr.json"] = dumps(doc)
        return NewArray(self, name, doc)

    def write(self, root: str) -> None:
        """Write the hierarchy's files into the existing, empty directory ``root``."""
        self.files["zarr.json"] = dumps({"attributes": self.attrs, "zarr_format": 3,
                                         "node_type": "group"})
        for key, data in self.files.items():
            dest = os.path.join(root, *key.split("/"))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "wb") as f:
                f.write(data)


def consolidated_root(root: dict[str, Any], children: dict[str, dict[str, Any]]) -> bytes:
    """The root ``zarr.json`` that ``zarr.consolidate_metadata`` writes, byte for byte, for a
    Zarr v3 hierarchy whose root document (parsed) is ``root`` and whose nodes below it are
    ``children``, each node's path (``codes_z``, ``_era5latent/build_done``) to its parsed
    ``zarr.json``: every node below the root, flat, ordered by depth and then by its case-folded
    name; a subgroup with an empty index of its own; the root's keys in its metadata's field
    order (``LatentStore.mark_complete`` seals a local store with it, in one write)."""

    def entry(doc: dict[str, Any]) -> dict[str, Any]:
        if doc.get("node_type") != "group":
            return doc
        return {"attributes": doc.get("attributes", {}), "zarr_format": doc["zarr_format"],
                "consolidated_metadata": {"kind": "inline", "must_understand": False,
                                          "metadata": {}},
                "node_type": "group"}

    order = sorted(children, key=lambda k: (k.count("/"),
                                            unicodedata.normalize("NFKC", k).casefold()))
    return dumps({"attributes": root.get("attributes", {}), "zarr_format": root["zarr_format"],
                  "consolidated_metadata": {"kind": "inline", "must_understand": False,
                                            "metadata": {k: entry(children[k]) for k in order}},
                  "node_type": "group"})
