"""Latent stores in the layouts of older format versions, made from a version-3 store.

Version 2 kept every array at the root: ``build_done`` and ``sha256_G`` beside the codes, no
``token_lat``/``token_lon`` arrays, no subgroups (docs/format.md). A Zarr v3 array's
``zarr.json`` does not name its path, so moving an array's directory moves the array.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

BOOK = "_era5latent"


def as_version_2(store: Path) -> None:
    """Rewrite the (local, residual-free) version-3 store at ``store`` in the version-2 layout,
    sealed and consolidated again when it is complete, as era5latent 0.2 left it."""
    from era5latent.store.core import open_latent_store

    for arr in sorted((store / BOOK).iterdir()):
        if arr.is_dir():
            shutil.move(str(arr), str(store / arr.name))
    shutil.rmtree(store / BOOK)
    for dim in ("token_lat", "token_lon"):
        shutil.rmtree(store / dim)
    doc = json.loads((store / "zarr.json").read_text())
    doc.pop("consolidated_metadata", None)
    meta = doc["attributes"]["era5latent"]
    assert not meta.get("residual"), "version 2 has no residual layer"
    meta["format_version"] = 2
    meta.pop("metadata_sha256", None)
    (store / "zarr.json").write_text(json.dumps(doc))
    st = open_latent_store(str(store), mode="r+")
    if st.complete:
        st.mark_complete()  # seals the version-2 digests and consolidates
