"""Copernicus-Embed grid embeddings -> a 721 x 1440 x D static map on the ERA5 grid (Zarr v3).

Inputs are parquet files of ``grid_id_coord`` + ``embedding`` rows (averaged embeddings, or
per-modality rows averaged here with ``aggregate="mean"``) or the upstream ``embed_map_310k.npz``;
grid ids and the target grid are in :mod:`era5latent.embed.grid`.

The build streams, so that a full-size input (310k rows x 768 floats, a 3.2 GB float32 map) fits
in a small, fixed amount of memory:

1. *read* (:mod:`.readers`): parquet record batches (or npz map rows) are parsed, validated and
   appended to one spill file per output chunk (a temporary directory beside the output);
2. *pca* (optional, :mod:`.join`): each chunk is assembled from its spill file and folded into a
   streaming covariance (D x D), from which the components are fitted;
3. *write* (:mod:`.build`, :mod:`.writer`): each chunk is assembled again (duplicates merged,
   projected, cast, filled) and written as exactly one Zarr chunk, so no chunk is written twice;
4. optionally the upstream-compatible ``.npz`` is streamed from the finished store.

Everything is built in a temporary path beside the target and renamed into place on success, so
an output is never left half-written. Errors are :class:`EmbedMapError` (bad data) or
:class:`OptionError` (bad options), each a single line naming the file and row.
"""

from era5latent.embed.build import build_embed_map
from era5latent.embed.grid import (
    ID_EXAMPLE,
    N_CELLS,
    N_LAT,
    N_LON,
    REASONS,
    RESOLUTION,
    TRUSTS,
    Grid,
    GridId,
    cell_index,
    format_grid_id,
    grid_from_store,
    parse_grid_id,
)
from era5latent.embed.options import (
    AGGREGATES,
    DTYPES,
    DUPLICATES,
    FILLS,
    LAYOUTS,
    ON_BAD_ROW,
    EmbedMapOptions,
    EmbedMapResult,
    ProgressFn,
)
from era5latent.embed.readers import load_grid_map
from era5latent.embed.writer import FORMAT_VERSION

__all__ = [
    "AGGREGATES", "DTYPES", "DUPLICATES", "FILLS", "FORMAT_VERSION", "ID_EXAMPLE", "LAYOUTS",
    "N_CELLS", "N_LAT", "N_LON", "ON_BAD_ROW", "REASONS", "RESOLUTION", "TRUSTS",
    "EmbedMapOptions", "EmbedMapResult", "Grid", "GridId", "ProgressFn", "build_embed_map",
    "cell_index", "format_grid_id", "grid_from_store", "load_grid_map", "parse_grid_id",
]
