"""``build_embed_map``: read, spill, (PCA,) write chunk by chunk, (npz,) commit atomically."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

from era5latent import faults, fsutil
from era5latent.embed.grid import N_CELLS, N_LAT, N_LON, Grid, grid_from_store
from era5latent.embed.join import Assembler, dedupe, fit_pca, Spill
from era5latent.embed.options import EmbedMapOptions, EmbedMapResult, ProgressFn
from era5latent.embed.readers import (
    BadRows,
    check_map,
    input_kind,
    Reader,
    sha256_files,
    InputSource,
    load_grid_map,
)
from era5latent.embed.writer import (
    FORMAT_VERSION,
    check_clash,
    consolidate_map,
    create_arrays,
    jsonable,
    move_arrays,
    array_names,
    new_temp_dir,
    current_umask,
    write_npz,
    zarr_format_of,
    ZarrFormat,
)
from era5latent.errors import EmbedMapError, OptionError


def _auto_chunks(channels: int, itemsize: int, target: int = 16 << 20) -> tuple[int, int]:
    """Largest spatial chunk from a fixed ladder whose uncompressed size is <= ``target``."""
    for cl, cw in ((N_LAT, N_LON), (360, 720), (180, 360), (90, 180), (45, 90), (30, 60),
                   (15, 30)):
        if cl * cw * channels * itemsize <= target:
            return cl, cw
    return 15, 30


def build_embed_map(
    inputs: Sequence[Path | str],
    out: Path | str | None = None,
    *,
    attach_to: Path | str | None = None,
    options: EmbedMapOptions | None = None,
    progress: ProgressFn | None = None,
) -> EmbedMapResult:
    """Build the embedding map from ``inputs`` into ``out`` (a new Zarr v3 store) or into the
    existing store ``attach_to`` (new arrays only). See ``docs/embedmap.md``."""
    t0 = time.perf_counter()
    o = options or EmbedMapOptions()
    prog = progress or (lambda phase, done, total: None)

    # ---- options that depend on each other, and the target --------------------------------
    if not inputs:
        raise OptionError("no inputs; pass one or more parquet files or an .npz map")
    if (out is None) == (attach_to is None):
        raise OptionError("pass exactly one of --out (a new store) and --attach-to (an existing "
                          "store)")
    paths = [Path(p) for p in inputs]
    kinds = [input_kind(p) for p in paths]
    if attach_to is not None:
        if o.like is not None or o.layout is not None:
            raise OptionError("--attach-to takes the grid from the store itself; drop --layout "
                              "and --like")
        target = Path(attach_to)
        if not target.is_dir():
            raise EmbedMapError(f"--attach-to {target} is not a local Zarr directory store; "
                                "pass the path of an existing ERA5 or latent store")
        grid = replace(grid_from_store(target, "--attach-to"), name="attach")
        prefix = "copernicus_" if o.prefix is None else o.prefix
    else:
        target = Path(out)  # type: ignore[arg-type]
        fsutil.check_output_name(str(target), "an embedding map",
                                 "a Zarr directory (.zarr, or no extension)")
        # not ours: --overwrite would not help either, so say that first
        fsutil.check_replaceable(str(target), fsutil.EMBED_MAP)
        if os.path.lexists(target) and not o.overwrite:
            raise OptionError(f"output {target} already exists; pass --overwrite to replace it")
        if not target.parent.is_dir():
            raise OptionError(f"output directory {target.parent} does not exist; create it first")
        if o.like is not None:
            grid = replace(grid_from_store(o.like), lat_dim="latitude", lon_dim="longitude")
        else:
            grid = Grid.copernicus() if o.layout == "copernicus" else Grid.era5()
        prefix = o.prefix or ""
    if o.npz is not None:
        npz = Path(o.npz)
        if npz.suffix != ".npz":
            raise OptionError(f"--npz {npz} must end in .npz (numpy.load reads it as a zip)")
        fsutil.check_replaceable(str(npz), fsutil.EMBED_NPZ, "--npz")
        if os.path.lexists(npz) and not o.overwrite:
            raise OptionError(f"--npz {npz} already exists; pass --overwrite to replace it")
        if not npz.parent.is_dir():
            raise OptionError(f"--npz directory {npz.parent} does not exist; create it first")
    names = array_names(prefix, o.pca is not None)
    replaced: list[str] = []
    if attach_to is not None:
        replaced = check_clash(target, names, grid, o.overwrite)

    id_table = None
    if o.grid_map is not None:
        id_table = load_grid_map(Path(o.grid_map), o.grid_map_id_column, o.grid_map_row_column,
                                 o.grid_map_col_column)

    # ---- sources -----------------------------------------------------------------------------
    bad = BadRows(o.on_bad_row)
    reader = Reader(o, id_table, bad)
    sources = []
    for p, k in zip(paths, kinds):
        src = InputSource(p, k, 0, str(p))
        if k == "parquet":
            src.rows = reader.parquet_schema_check(src).metadata.num_rows
        else:
            check_map(src)
            src.rows = N_CELLS  # map pixels
        sources.append(src)
    total_rows = sum(s.rows for s in sources)
    hashes: dict[str, str] = {}
    stop_hashing = threading.Event()
    hasher = threading.Thread(target=sha256_files, args=(paths, hashes, stop_hashing),
                              daemon=True)

    work = new_temp_dir(target, "tmp" if attach_to is None else "attach-tmp")
    npz_tmp: Path | None = None
    try:
        hasher.start()
        # ---- 1. read: validate and spill per output chunk -----------------------------------
        policy = o.duplicate_policy
        first_at = np.full(N_CELLS, -1, dtype=np.int64)  # (source << 40) | row of first row seen
        spill: Spill | None = None
        rows_before = rows_used = 0
        for si, src in enumerate(sources):
            reader.position = 0
            it = reader.read_parquet(src) if src.kind == "parquet" else reader.read_map(src)
            for cells, vecs, rows in it:
                prog("read", rows_before + reader.position, total_rows)
                if not len(cells):
                    continue
                if spill is None:
                    channels = o.pca or reader.dim or 1
                    itemsize = 2 if o.dtype == "float16" else 4
                    cl, cw = o.chunks or _auto_chunks(channels, itemsize)
                    spill = Spill(work / "spill", grid, cl, cw)
                rows_used += len(cells)
                cells, counts, vecs = dedupe(cells, vecs, rows, si, first_at, policy, sources)
                spill.append(cells, counts, vecs)
            rows_before += src.rows
            prog("read", rows_before, total_rows)
        if reader.dim is None or spill is None or not spill.sizes.any():
            skipped = f" ({sum(bad.counts.values())} skipped as bad)" if bad.counts else ""
            filt = (f"; --modality {','.join(o.modalities)} matched none of "
                    f"{sorted(reader.modalities_seen)}" if o.modalities else "")
            raise EmbedMapError(f"no valid embedding rows in {len(paths)} input(s){skipped}"
                                f"{filt}; nothing to build")
        dim = reader.dim
        if o.pca is not None and o.pca > dim:
            raise OptionError(f"--pca {o.pca} exceeds the embedding length D = {dim}; pass "
                              f"--pca {dim} or fewer")

        # ---- 2. pca ------------------------------------------------------------------------
        workers = o.workers or min(4, max(1, os.cpu_count() or 1))
        asm = Assembler(spill, dim, policy == "mean")
        pca = None
        if o.pca is not None:
            pca = fit_pca(asm, o.pca, prog)
        channels = o.pca or dim

        # ---- 3. write ----------------------------------------------------------------------
        store_path = work / "store.zarr"
        zarr_format: ZarrFormat = zarr_format_of(target) if attach_to is not None else 3
        cl, cw = spill.cl, spill.cw
        attrs = {
            "era5latent_embedmap_version": FORMAT_VERSION,
            "title": "Copernicus-Embed-025deg embedding map on the ERA5 0.25-degree grid",
            "layout": grid.name,
            "like": str(o.like) if o.like is not None else (
                str(attach_to) if attach_to is not None else None),
            "grid": grid.describe(),
            "input_dim": dim,
            "channels": channels,
            "dtype": o.dtype,
            "fill": o.fill,
            "aggregate": o.aggregate,
            "modalities": list(o.modalities),
            "duplicates": policy,
            "trust": o.trust,
            "on_bad_row": o.on_bad_row,
            "grid_map": str(o.grid_map) if o.grid_map is not None else None,
        }
        valid = np.zeros((N_LAT, N_LON), dtype=bool)
        arrays = create_arrays(store_path, zarr_format, names, grid, channels, dim, (cl, cw),
                                o, attach_to is not None)
        emb_arr = arrays["embedding"]
        fill_value = np.nan if o.fill == "nan" else 0.0
        out_dtype = np.dtype(o.dtype)
        todo = [k for k in range(spill.n_chunks) if spill.sizes[k] or zarr_format == 2]

        def write_chunk(k: int) -> None:
            r0, r1, c0, c1 = spill.bounds(k)
            if spill.sizes[k]:
                local, vecs = asm.chunk(k)
            else:
                local, vecs = np.empty(0, np.int64), np.empty((0, dim), np.float32)
            if pca is not None:
                vecs = (vecs - pca["mean"]) @ pca["components"].T
            block = np.full(((r1 - r0) * (c1 - c0), channels), fill_value, dtype=out_dtype)
            block[local] = vecs
            vm = np.zeros((r1 - r0) * (c1 - c0), dtype=bool)
            vm[local] = True
            valid[r0:r1, c0:c1] = vm.reshape(r1 - r0, c1 - c0)
            emb_arr[r0:r1, c0:c1, :] = block.reshape(r1 - r0, c1 - c0, channels)
            faults.point("embedmap.chunk-written")

        _run_pool(write_chunk, todo, workers, lambda i: prog("write", i, len(todo)))
        arrays["valid"][...] = valid
        n_valid = int(valid.sum())
        if pca is not None:
            arrays["pca_components"][...] = pca["components"]
            arrays["pca_mean"][...] = pca["mean"]
            arrays["pca_explained_variance"][...] = pca["variance"]
            arrays["pca_explained_variance_ratio"][...] = pca["ratio"]
            attrs["pca"] = {"components": o.pca, "fitted_cells": pca["n"],
                            "explained_variance_ratio_total": float(pca["ratio"].sum()),
                            "method": "exact eigendecomposition of a streamed D x D covariance",
                            "projection": "(x - pca_mean) @ pca_components.T"}
        else:
            attrs["pca"] = None
        hasher.join()
        src_meta = tuple({"path": str(s.path), "name": s.path.name, "kind": s.kind,
                          "rows": s.rows, "sha256": hashes.get(str(s.path))} for s in sources)
        attrs.update({
            "sources": list(src_meta),
            "valid_cells": n_valid,
            "rows_read": total_rows,
            "rows_used": rows_used,
            "rows_filtered": reader.filtered,
            "rows_skipped": dict(bad.counts),
            "duplicate_rows": rows_used - n_valid,
        })
        emb_arr.attrs.update(jsonable(attrs))
        shutil.rmtree(work / "spill", ignore_errors=True)
        if attach_to is None:
            import zarr

            zarr.open_group(str(store_path), mode="r+").attrs.update(jsonable(attrs))
            consolidate_map(store_path)

        # ---- 4. npz ------------------------------------------------------------------------
        if o.npz is not None:
            npz_path = Path(o.npz)
            fd, name = tempfile.mkstemp(dir=npz_path.parent, prefix=f".{npz_path.name}.tmp-")
            os.close(fd)
            npz_tmp = Path(name)
            os.chmod(npz_tmp, 0o666 & ~current_umask())
            write_npz(emb_arr, valid, grid, npz_tmp, out_dtype, prog)

        # ---- commit ------------------------------------------------------------------------
        # checked again: the build takes minutes, and something may have appeared meanwhile
        if attach_to is None:
            _check_target(target, fsutil.EMBED_MAP, "--out", o.overwrite)
        else:
            replaced = check_clash(target, names, grid, o.overwrite)
        if npz_tmp is not None:
            _check_target(Path(o.npz), fsutil.EMBED_NPZ, "--npz", o.overwrite)  # type: ignore[arg-type]
        if attach_to is None:
            fsutil.commit_dir(str(store_path), str(target), replace=True)
        else:
            move_arrays(store_path, target, list(names.values()), replaced)
        if npz_tmp is not None:
            os.replace(npz_tmp, Path(o.npz))  # type: ignore[arg-type]
            npz_tmp = None
    finally:
        stop_hashing.set()
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
        if npz_tmp is not None and npz_tmp.exists():
            npz_tmp.unlink()

    return EmbedMapResult(
        out=str(target) if attach_to is None else None,
        attached_to=str(target) if attach_to is not None else None,
        npz=str(o.npz) if o.npz is not None else None,
        arrays=tuple(names.values()),
        layout=grid.name,
        shape=(N_LAT, N_LON, channels),
        chunks=(cl, cw, channels),
        dtype=o.dtype,
        fill=o.fill,
        input_dim=dim,
        pca_components=o.pca,
        pca_explained_variance_ratio=float(pca["ratio"].sum()) if pca is not None else None,
        valid_cells=n_valid,
        rows_read=total_rows,
        rows_used=rows_used,
        rows_filtered=reader.filtered,
        duplicate_rows=rows_used - n_valid,
        skipped=dict(bad.counts),
        first_skipped=dict(bad.first),
        sources=src_meta,
        seconds=round(time.perf_counter() - t0, 3),
    )


def _check_target(path: Path, kind: str, option: str, overwrite: bool) -> None:
    """The output ``path`` (given as ``option``) may be replaced now: it is absent, or it is an
    era5latent ``kind`` and ``overwrite`` is set."""
    if not os.path.lexists(path):
        return
    fsutil.check_replaceable(str(path), kind, option)
    if not overwrite:
        raise OptionError(f"{option} {path} already exists (made by another process meanwhile); "
                          "pass --overwrite to replace it")


def _run_pool(fn: Callable[[int], None], items: Sequence[int], workers: int,
              tick: Callable[[int], None]) -> None:
    """Run ``fn`` over ``items`` with at most ``2 * workers`` in flight (bounded memory)."""
    if workers <= 1:
        for i, it in enumerate(items):
            fn(it)
            tick(i + 1)
        return
    done = 0
    with ThreadPoolExecutor(max_workers=workers) as ex:
        inflight: list[Future[None]] = []
        for it in items:
            inflight.append(ex.submit(fn, it))
            while len(inflight) >= 2 * workers:
                inflight.pop(0).result()
                done += 1
                tick(done)
        for f in inflight:
            f.result()
            done += 1
            tick(done)
