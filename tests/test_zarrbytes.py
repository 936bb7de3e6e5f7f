"""``io.zarrbytes``: what era5latent writes without zarr-python holds zarr-python's bytes.

A local latent store is laid out (``NewTree``) and sealed (``consolidated_root``, one write of
the root document) without zarr-python; a store at a URL still takes zarr-python's path, and
each test compares the two, byte for byte."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr

from era5latent.io.zarrbytes import consolidated_root
from era5latent.store import core
from era5latent.store.core import open_latent_store
from era5latent.store.meta import DIGEST_KEY, child_docs, read_doc

from .conftest import run_cli, tree_bytes

SUBSET = "z500,z850,t850,t2m"

#: root attributes a build writes beside the store's own (``build`` seals its recipe with it)
EXTRA = {"era5latent_recipe": {"source": "gs://bucket/era5.zarr", "subset": ("z500", "t2m"),
                               "max_error": 0.5, "nested": {"b": [1, 2.5], "a": None}}}


def unseal(store: Path) -> None:
    """Put a finished store back in the state its last chunk left it: not complete, no digest,
    no consolidated metadata (the root document as zarr-python writes it)."""
    doc = json.loads((store / "zarr.json").read_text())
    doc.pop("consolidated_metadata")
    meta = doc["attributes"]["era5latent"]
    meta.pop(DIGEST_KEY)
    meta["complete"] = False
    (store / "zarr.json").write_text(json.dumps(doc, indent=2))


def seal_both_ways(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   extra: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Copies of the finished ``store``, unsealed, then sealed by era5latent's one write and by
    zarr-python's writes (the path taken for a URL)."""
    ours, theirs = tmp_path / "ours.zarr", tmp_path / "theirs.zarr"
    for copy in (ours, theirs):
        shutil.copytree(store, copy)
        unseal(copy)
    open_latent_store(str(ours), mode="r+").mark_complete(extra)
    st = open_latent_store(str(theirs), mode="r+")
    with monkeypatch.context() as m:
        m.setattr(core, "is_url", lambda path: True)
        st.mark_complete(extra)
    return ours, theirs


def encoded(tmp_path: Path, sample_zarr: Path, tiny_model: Path, *extra: str) -> Path:
    out = tmp_path / "latent.zarr"
    res = run_cli("encode", sample_zarr, "--model", tiny_model, "--subset", SUBSET,
                  "--out", out, "--device", "cpu", "--time-chunk", "4", *extra)
    assert res.exit_code == 0, res.stderr
    return out


@pytest.mark.parametrize("residual", [False, True], ids=["codes", "residual"])
@pytest.mark.parametrize("extra", [None, EXTRA], ids=["own", "with-recipe"])
def test_one_write_seals_the_bytes_zarr_python_writes(
        residual: bool, extra: dict[str, Any] | None, sample_zarr: Path, tiny_model: Path,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = encoded(tmp_path, sample_zarr, tiny_model,
                    *(["--max-error", "z500=200,z850=200,t850=2,t2m=2"] if residual else []))
    ours, theirs = seal_both_ways(store, tmp_path, monkeypatch, extra)
    assert tree_bytes(ours) == tree_bytes(theirs)
    if extra is None:  # and what encode itself sealed
        assert tree_bytes(ours) == tree_bytes(store)
    st = open_latent_store(str(ours))
    assert st.finished and st.metadata_problems() == []
    assert run_cli("verify", ours).exit_code == 0
    # readers take the consolidated metadata it wrote
    group = zarr.open_group(str(ours), mode="r", use_consolidated=True)
    assert group.metadata.consolidated_metadata is not None
    assert {k for k, _ in group.members(max_depth=None)} >= {"codes_z", "_era5latent/build_done"}
    ds = xr.open_zarr(ours, consolidated=True)
    assert ds.attrs["era5latent"]["complete"]
    if extra is not None:
        assert ds.attrs["era5latent_recipe"]["subset"] == ["z500", "t2m"]


def test_the_sealed_store_object_reads_as_sealed(sample_zarr: Path, tiny_model: Path,
                                                 tmp_path: Path) -> None:
    """After sealing, the same LatentStore object holds what it wrote: its attributes, its root
    document (so it does not take itself for a store replaced by another encode), its group."""
    store = encoded(tmp_path, sample_zarr, tiny_model)
    unseal(store)
    st = open_latent_store(str(store), mode="r+")
    st.mark_complete(EXTRA)
    assert st.complete and st.finished and DIGEST_KEY in st.meta
    assert not st.replaced()
    assert st.root.attrs["era5latent"] == st.meta
    assert st.root.attrs["era5latent_recipe"]["max_error"] == 0.5
    assert st.metadata_problems() == []


# -- laying a store out ----------------------------------------------------------------------

def _spec(sample_zarr: Path, tiny_model: Path, tmp_path: Path, variant: str) -> Any:
    from era5latent.io.sources import open_source
    from era5latent.io.variables import parse_subset
    from era5latent.model.checkpoint import load_checkpoint
    from era5latent.pipeline.encoding import mask_spec, prepare_encode

    job = prepare_encode(open_source(str(sample_zarr)), load_checkpoint(str(tiny_model)),
                         parse_subset(SUBSET), str(tmp_path / "planned.zarr"), device="cpu",
                         time_chunk=4, lay_out=False,
                         max_error="z500=200,z850=200,t850=2,t2m=2" if variant == "residual"
                         else None)
    spec = job.spec
    if variant == "masked":  # a static mask over part of the grid, as a land-sea mask
        h, w = len(spec.latitude), len(spec.longitude)
        static = {"t2m": np.arange(h * w).reshape(h, w) % 7 < 3}
        spec = dataclasses.replace(spec, mask=mask_spec(static), static_masks=static)
    if variant == "members":  # sample dimensions; one of all zeros, whose chunk is not written
        spec = dataclasses.replace(spec, sample_coords={"number": np.arange(3),
                                                        "zero": np.zeros(1, dtype=np.int64)})
    return spec


@pytest.mark.parametrize("variant", ["codes", "residual", "masked", "members"])
def test_a_store_laid_out_in_memory_holds_zarr_pythons_bytes(
        variant: str, sample_zarr: Path, tiny_model: Path, tmp_path: Path) -> None:
    spec = _spec(sample_zarr, tiny_model, tmp_path, variant)
    ours, theirs = tmp_path / "ours.zarr", tmp_path / "theirs.zarr"
    ours.mkdir()
    core._create_files(str(ours), spec)
    core._create(str(theirs), spec)  # zarr-python, as a store at a URL is laid out
    assert tree_bytes(ours) == tree_bytes(theirs)
    if variant == "members":
        assert not (ours / "zero" / "c").exists() and (ours / "number" / "c" / "0").is_file()
    if variant == "masked":
        assert (ours / "mask" / "static_t2m" / "c" / "0" / "0").is_file()
    st = open_latent_store(str(ours))
    assert not st.complete and not st.done().any()


def test_a_new_tree_refuses_what_era5latent_does_not_write() -> None:
    from era5latent.io.zarrbytes import NewTree

    tree = NewTree()
    with pytest.raises(ValueError, match="finite fills"):
        tree.create_array("a", shape=(2,), chunks=(2,), dtype="float32", dimension_names=("x",),
                          compressors=[], fill_value=float("nan"))
    arr = tree.create_array("b", shape=(4,), chunks=(2,), dtype="int64",
                            dimension_names=("x",), compressors=[], fill_value=0)
    with pytest.raises(ValueError, match="set whole"):
        arr[...] = np.arange(4)


def test_consolidated_root_is_the_document_zarr_python_writes(tmp_path: Path) -> None:
    """A hierarchy with names in both cases, a leading underscore, nested groups (one empty) and
    attributes of every JSON type, NaN included: the same bytes as zarr.consolidate_metadata."""
    import warnings

    root = zarr.open_group(str(tmp_path / "h.zarr"), mode="w", zarr_format=3,
                           attributes={"s": "x", "n": [1, 2.5, None, True], "nan": float("nan")})
    for name in ("b", "B2", "_a", "a"):
        root.create_array(name, shape=(4,), chunks=(2,), dtype="float64", fill_value=0,
                          attributes={"units": "K"})
    sub = root.create_group("G", attributes={"description": "inner"})
    sub.create_array("Z", shape=(2, 3), chunks=(1, 3), dtype="bool", fill_value=False,
                     dimension_names=("t", "x"))
    sub.create_group("empty").create_array("c", shape=(1,), dtype="uint8")
    path = str(tmp_path / "h.zarr")
    docs = {rel.rsplit("/", 1)[0]: json.loads(read_doc(path, rel)) for rel in child_docs(path)}
    ours = consolidated_root(json.loads(read_doc(path, "zarr.json")), docs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        zarr.consolidate_metadata(path, zarr_format=3)
    assert ours == read_doc(path, "zarr.json")
