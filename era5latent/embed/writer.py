"""Zarr output: creating the map's arrays, attaching them to a store, atomic replace, the .npz."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from era5latent.embed.grid import N_LAT, N_LON, Grid, one_line
from era5latent.embed.options import EmbedMapOptions, ProgressFn
from era5latent.errors import EmbedMapError, OptionError
from era5latent.fsutil import NPZ_MARKER

if TYPE_CHECKING:
    import zarr

ZarrFormat = Literal[2, 3]  # what zarr.open_group accepts as zarr_format
FORMAT_VERSION = 1  #: stamped as ``era5latent_embedmap_version`` in every output


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_temp_dir(target: Path, tag: str) -> Path:
    """A fresh directory beside ``target`` (same file system, so the final rename is atomic)."""
    try:
        path = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.{tag}-"))
    except OSError as err:
        raise EmbedMapError(f"cannot create a temporary directory beside {target} "
                            f"({one_line(err)}); check that {target.parent} is writable") from None
    os.chmod(path, 0o777 & ~current_umask())
    return path


def jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda x: x.item() if hasattr(x, "item") else str(x)))


def zarr_format_of(path: Path) -> ZarrFormat:
    import zarr

    return zarr.open_group(str(path), mode="r").metadata.zarr_format


def array_names(prefix: str, pca: bool) -> dict[str, str]:
    keys = ["embedding", "valid", "channel"]
    if pca:
        keys += ["pca_components", "pca_mean", "pca_explained_variance",
                 "pca_explained_variance_ratio", "component", "channel_in"]
    return {k: prefix + k for k in keys}


def _attached_map(g: zarr.Group, prefix: str) -> set[str]:
    """The arrays of an embedding map attached to ``g`` earlier under ``prefix``: known by its
    ``<prefix>embedding`` array, which carries ``era5latent_embedmap_version``; else empty."""
    import zarr

    try:
        emb = g[prefix + "embedding"]
    except KeyError:
        return set()
    if not isinstance(emb, zarr.Array) or "era5latent_embedmap_version" not in emb.attrs:
        return set()
    return set(array_names(prefix, emb.attrs.get("pca") is not None).values())


def check_clash(store: Path, names: dict[str, str], grid: Grid, overwrite: bool) -> list[str]:
    """What attaching ``names`` to ``store`` replaces: nothing when no name is taken; with
    ``overwrite``, every array of the map attached earlier under the same prefix (its PCA
    arrays too, when the new map has none). A taken name that is not that map's is refused."""
    import zarr

    g = zarr.open_group(str(store), mode="r")
    existing = set(g.keys())
    clash = sorted(set(names.values()) & existing)
    if clash and not overwrite:
        raise OptionError(f"--attach-to {store} already has {', '.join(clash)}; pass --overwrite "
                          "to replace them or --prefix to choose other names")
    for dim in (names["channel"], names.get("component"), names.get("channel_in")):
        if dim and dim in (grid.lat_dim, grid.lon_dim):
            raise OptionError(f"--prefix makes {dim!r}, a dimension of the store; pick another")
    if not clash:
        return []
    ours = _attached_map(g, names["embedding"].removesuffix("embedding"))
    foreign = [n for n in clash if n not in ours]
    if foreign:
        raise OptionError(f"--attach-to {store} already has {', '.join(foreign)}, not part of an "
                          "era5latent embedding map; --overwrite replaces only a map's own "
                          "arrays: pass --prefix to choose other names")
    return sorted(ours & existing)


def create_arrays(path: Path, zarr_format: ZarrFormat, names: dict[str, str], grid: Grid,
                   channels: int, dim: int, chunks: tuple[int, int], o: EmbedMapOptions,
                   attach: bool) -> dict[str, zarr.Array[Any]]:
    import zarr

    g = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    la, lo = grid.lat_dim, grid.lon_dim
    ch = names["channel"]

    def make(key: str, shape: tuple[int, ...], dims: list[str], dtype: str, fill: float | None,
             chunk_shape: tuple[int, ...] | None = None,
             attrs: dict[str, str] | None = None) -> zarr.Array[Any]:
        kw: dict[str, Any] = {"attributes": dict(attrs or {})}
        if zarr_format == 3:
            kw["dimension_names"] = list(dims)
        else:
            # v2 readers (xarray) mask values equal to fill_value: keep only a NaN fill, and
            # write every chunk, since a v2 array without fill_value has no defined default.
            kw["attributes"]["_ARRAY_DIMENSIONS"] = list(dims)
            kw["config"] = {"write_empty_chunks": True}
            if not (isinstance(fill, float) and math.isnan(fill) and key == "embedding"):
                fill = None
        return g.create_array(names.get(key, key), shape=shape, dtype=dtype, fill_value=fill,
                              chunks=chunk_shape or shape, **kw)

    arrays: dict[str, zarr.Array[Any]] = {}
    if not attach:
        lat = make("latitude", (N_LAT,), [la], "float64", np.nan,
                   attrs={"units": "degrees_north", "long_name": "latitude",
                          "standard_name": "latitude"})
        lat[...] = grid.latitude
        lon = make("longitude", (N_LON,), [lo], "float64", np.nan,
                   attrs={"units": "degrees_east", "long_name": "longitude",
                          "standard_name": "longitude"})
        lon[...] = grid.longitude
    chan = make("channel", (channels,), [ch], "int32", -1,
                attrs={"long_name": "PCA component" if o.pca else "embedding channel"})
    chan[...] = np.arange(channels, dtype=np.int32)
    fill = np.nan if o.fill == "nan" else 0.0
    arrays["embedding"] = make(
        "embedding", (N_LAT, N_LON, channels), [la, lo, ch], o.dtype, fill,
        (chunks[0], chunks[1], channels),
        {"long_name": "Copernicus-Embed-025deg grid embedding"
         + (f" projected on {o.pca} PCA components" if o.pca else ""),
         "missing": f"cells without an embedding hold {o.fill}; see {names['valid']}"})
    arrays["valid"] = make("valid", (N_LAT, N_LON), [la, lo], "bool", False,
                           attrs={"long_name": "cell has an embedding"})
    if o.pca:
        comp, cin = names["component"], names["channel_in"]
        make("component", (o.pca,), [comp], "int32", -1)[...] = np.arange(o.pca, dtype=np.int32)
        make("channel_in", (dim,), [cin], "int32", -1)[...] = np.arange(dim, dtype=np.int32)
        arrays["pca_components"] = make("pca_components", (o.pca, dim), [comp, cin], "float32",
                                        0.0, attrs={"long_name": "PCA components (rows)"})
        arrays["pca_mean"] = make("pca_mean", (dim,), [cin], "float32", 0.0,
                                  attrs={"long_name": "mean embedding subtracted before projecting"})
        arrays["pca_explained_variance"] = make("pca_explained_variance", (o.pca,), [comp],
                                                "float64", 0.0)
        arrays["pca_explained_variance_ratio"] = make("pca_explained_variance_ratio", (o.pca,),
                                                      [comp], "float64", 0.0)
    return arrays


def consolidate_map(path: Path) -> None:
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(path))


def _is_consolidated(path: Path) -> bool:
    if (path / ".zmetadata").exists():
        return True
    meta = path / "zarr.json"
    if meta.exists():
        try:
            return json.loads(meta.read_text()).get("consolidated_metadata") is not None
        except (OSError, ValueError):
            return False
    return False


def move_arrays(src_group: Path, store: Path, names: list[str], replaced: list[str]) -> None:
    """Move finished arrays into ``store`` after moving ``replaced`` (an earlier map's arrays)
    out of it, then re-consolidate."""
    consolidated = _is_consolidated(store)
    trash = Path(tempfile.mkdtemp(dir=store.parent, prefix=f".{store.name}.old-"))
    try:
        for name in replaced:
            if (store / name).exists():
                os.rename(store / name, trash / name)
        for name in names:
            os.rename(src_group / name, store / name)
    finally:
        shutil.rmtree(trash, ignore_errors=True)
    if consolidated:
        consolidate_map(store)


def write_npz(emb_arr: zarr.Array[Any], valid: np.ndarray, grid: Grid, path: Path,
               dtype: np.dtype, prog: ProgressFn) -> None:
    """Stream ``arr_0`` (721, 1440, C) in the upstream layout, zeros where invalid."""
    channels = emb_arr.shape[2]
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
              "shape": (N_LAT, N_LON, channels)}
    cols = grid.col_of_j  # upstream column j -> storage column
    rows_per = max(1, (64 << 20) // (N_LON * channels * 4))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        zf.comment = NPZ_MARKER  # how a later --overwrite knows the file is ours
        with zf.open("arr_0.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, header)
            for r0 in range(0, N_LAT, rows_per):
                r1 = min(N_LAT, r0 + rows_per)
                srows = grid.row_of_i[720 - np.arange(r0, r1)]  # upstream row r -> storage row
                lo, hi = int(srows.min()), int(srows.max()) + 1
                block = np.asarray(emb_arr[lo:hi])[srows - lo][:, cols]
                vm = valid[srows][:, cols]
                block = block.astype(dtype, copy=False)
                block[~vm] = 0
                f.write(np.ascontiguousarray(block).tobytes())
                prog("npz", r1, N_LAT)
