"""The ``build-embed-map`` command (owned by the embed-map work; :mod:`era5latent.embed`)."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from era5latent.cli.common import Bar, command, quiet



class _EmLayout(str, Enum):
    era5 = "era5"
    copernicus = "copernicus"


class _EmDtype(str, Enum):
    float16 = "float16"
    float32 = "float32"


class _EmFill(str, Enum):
    zero = "0"
    nan = "nan"


class _EmAggregate(str, Enum):
    none = "none"
    mean = "mean"


class _EmDuplicates(str, Enum):
    error = "error"
    first = "first"
    mean = "mean"


class _EmTrust(str, Enum):
    check = "check"
    id = "id"
    coords = "coords"


class _EmBadRow(str, Enum):
    error = "error"
    skip = "skip"


def _em_chunks(text: Optional[str]) -> Optional[tuple[int, int]]:
    from era5latent.errors import OptionError

    if text is None:
        return None
    try:
        a, b = (int(v) for v in text.split(","))
    except ValueError:
        raise OptionError(f"--chunks must be LAT,LON (two whole numbers, e.g. 90,180), "
                          f"found {text!r}") from None
    return a, b


@command("build-embed-map")
def build_embed_map_cmd(
    inputs: Annotated[list[Path], typer.Argument(
        help="Copernicus-Embed parquet files ([grid_id_coord, embedding] rows, or per-modality "
             "rows with --aggregate mean) and/or the upstream embed_map_310k.npz.",
        metavar="INPUT...", show_default=False)],
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="New Zarr v3 store to write (built beside it, renamed on success).",
        show_default=False)] = None,
    attach_to: Annotated[Optional[Path], typer.Option(
        help="Existing ERA5/latent Zarr store on the 0.25-degree grid: add the map as new static "
             "arrays (named with --prefix) instead of writing --out.", show_default=False)] = None,
    layout: Annotated[Optional[_EmLayout], typer.Option(
        help="Target grid: era5 = WeatherBench 2 (lat 90..-90, lon 0..359.75) [default]; "
             "copernicus = upstream npz (lat 90..-90, lon -180..179.75).",
        show_default=False)] = None,
    like: Annotated[Optional[Path], typer.Option(
        help="Take the target grid (orientation, longitude convention) from this ERA5 Zarr "
             "store; it must be 0.25 degrees, 721 x 1440.", show_default=False)] = None,
    dtype: Annotated[_EmDtype, typer.Option(help="Stored embedding dtype.")] = _EmDtype.float32,
    fill: Annotated[_EmFill, typer.Option(
        help="Value of cells without an embedding (see the valid mask).")] = _EmFill.zero,
    pca: Annotated[Optional[int], typer.Option(
        help="Project onto K principal components fitted on the valid cells; stores "
             "pca_components, pca_mean and explained variance.", metavar="K",
        show_default=False)] = None,
    npz: Annotated[Optional[Path], typer.Option(
        help="Also write an upstream-compatible .npz (arr_0, copernicus layout, zeros fill).",
        show_default=False)] = None,
    aggregate: Annotated[_EmAggregate, typer.Option(
        help="mean: average every row of a grid cell (per-modality input).")] = _EmAggregate.none,
    modality: Annotated[Optional[list[str]], typer.Option(
        help="With --aggregate mean, keep only rows of this modality (repeatable).",
        metavar="NAME", show_default=False)] = None,
    duplicates: Annotated[Optional[_EmDuplicates], typer.Option(
        help="Several rows for one cell: error [default], keep the first, or average them.",
        show_default=False)] = None,
    trust: Annotated[_EmTrust, typer.Option(
        help="Placement: check that id and coordinates agree, or place by the id / the "
             "coordinates alone.")] = _EmTrust.check,
    on_bad_row: Annotated[_EmBadRow, typer.Option(
        help="Bad rows (malformed id, off-grid, wrong length, NaN/inf): stop with an error, or "
             "skip and count them.")] = _EmBadRow.error,
    grid_map: Annotated[Optional[Path], typer.Option(
        help="Upstream pixel-mapping parquet (grid_0_25_globe_pix.parquet): place ids by its "
             "(row, col) pixels; row 0 = 90N, col 0 = 180W.", show_default=False)] = None,
    grid_map_id_column: Annotated[str, typer.Option(
        help="--grid-map column holding the integer grid id (upstream names are not "
             "public).")] = "index",
    grid_map_row_column: Annotated[str, typer.Option(
        help="--grid-map column holding the pixel row.")] = "row",
    grid_map_col_column: Annotated[str, typer.Option(
        help="--grid-map column holding the pixel column.")] = "col",
    id_column: Annotated[str, typer.Option(help="Parquet column of grid ids.")] = "grid_id_coord",
    embedding_column: Annotated[str, typer.Option(
        help="Parquet column of embeddings.")] = "embedding",
    chunks: Annotated[Optional[str], typer.Option(
        help="Spatial chunk LAT,LON of the embedding array (default: about 16 MiB per chunk, "
             "e.g. 45,90 for 768 float32 channels).", metavar="LAT,LON",
        show_default=False)] = None,
    prefix: Annotated[Optional[str], typer.Option(
        help="Prefix of the array names (default: none for --out, 'copernicus_' for "
             "--attach-to).", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an existing --out / --npz that era5latent wrote, or the map "
        "attached earlier under the same prefix in --attach-to (nothing else).")] = False,
    batch_rows: Annotated[int, typer.Option(help="Parquet rows per read batch.")] = 8192,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Lay Copernicus-Embed-025deg grid embeddings onto the ERA5 0.25-degree grid (Zarr)."""
    import json

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from era5latent.embed import EmbedMapOptions, build_embed_map

    opts = EmbedMapOptions(
        layout=layout.value if layout else None, like=like, dtype=dtype.value, fill=fill.value,
        pca=pca, npz=npz, aggregate=aggregate.value, modalities=tuple(modality or ()),
        duplicates=duplicates.value if duplicates else None, trust=trust.value,
        on_bad_row=on_bad_row.value, grid_map=grid_map, grid_map_id_column=grid_map_id_column,
        grid_map_row_column=grid_map_row_column, grid_map_col_column=grid_map_col_column,
        id_column=id_column, embedding_column=embedding_column, chunks=_em_chunks(chunks),
        prefix=prefix, overwrite=overwrite, batch_rows=batch_rows)
    err = Console(stderr=True, soft_wrap=True)
    labels = {"read": "reading rows", "pca": "fitting PCA", "write": "writing chunks",
              "npz": "writing npz"}
    units = {"read": "rows", "write": "chunks"}
    lines: dict[str, Bar] = {}  # not a terminal: one-line records per phase (Bar)
    with Progress(TextColumn("{task.description:<15}"), BarColumn(),
                  TextColumn("{task.completed:,}/{task.total:,}"), TimeElapsedColumn(),
                  console=err, transient=True, disable=not err.is_terminal or quiet()) as bar:
        tasks: dict[str, object] = {}

        def on_progress(phase: str, done: int, total: int) -> None:
            if not err.is_terminal:
                if phase not in lines:
                    for other in lines.values():  # the previous phase ends: its last record
                        other.__exit__(None, None, None)
                    lines.clear()
                    lines[phase] = Bar(f"build-embed-map {labels.get(phase, phase)}",
                                        units.get(phase, "steps")).__enter__()
                lines[phase].update(done, total)
                return
            if phase not in tasks:
                tasks[phase] = bar.add_task(labels.get(phase, phase), total=total)
            bar.update(tasks[phase], completed=done, total=total)  # type: ignore[arg-type]

        res = build_embed_map(inputs, out, attach_to=attach_to, options=opts,
                              progress=on_progress)
        for last in lines.values():
            last.__exit__(None, None, None)
    if json_out:
        sys.stdout.write(json.dumps(res.to_dict(), indent=2) + "\n")
        return
    con = Console(highlight=False, soft_wrap=True)
    where = res.out or f"{res.attached_to} (arrays {', '.join(res.arrays[:2])}, ...)"
    pca_txt = (f", PCA {res.pca_components} of {res.input_dim} channels "
               f"({res.pca_explained_variance_ratio:.1%} of variance)" if res.pca_components
               else "")
    con.print(f"wrote {where}: embedding {' x '.join(map(str, res.shape))} {res.dtype} "
              f"(layout {res.layout}, fill {res.fill}{pca_txt})")
    con.print(f"  {res.valid_cells:,} valid cells from {res.rows_used:,} of {res.rows_read:,} "
              f"rows in {len(res.sources)} input(s); {res.duplicate_rows:,} duplicate rows merged "
              f"or dropped; {res.seconds:.1f} s")
    if res.npz:
        con.print(f"  also wrote {res.npz}")
    if res.rows_filtered:
        con.print(f"  {res.rows_filtered:,} rows of other modalities left out")
    if res.skipped:
        parts = ", ".join(f"{reason} {n:,} (first: {res.first_skipped[reason]})"
                          for reason, n in res.skipped.items())
        err.print(f"warning: skipped {res.rows_skipped:,} bad rows: {parts}", highlight=False)
