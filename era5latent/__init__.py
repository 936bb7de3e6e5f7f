"""era5latent: ERA5 to binary latent codes with a Weather Latent Autoencoder, and back.

The Python API (docs/python-api.md) is exported lazily, so ``import era5latent`` and the CLI's
``--help`` stay free of torch, xarray and zarr until a function is first used::

    import era5latent

    model = era5latent.load_model("wla.safetensors")
    latent = era5latent.encode(ds, model, "z500,t850,t2m")   # ds: an xarray Dataset
    fields = era5latent.decode(latent, model)
    codes = era5latent.LatentDataset("latent.zarr", lead_times=1)  # for torch DataLoaders
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from era5latent.version import __version__

#: public name -> module that defines it (imported on first access)
_EXPORTS: dict[str, str] = {
    "open_latent": "era5latent.api",
    "load_model": "era5latent.api",
    "encode": "era5latent.api",
    "decode": "era5latent.api",
    "encode_to_store": "era5latent.api",
    "decode_to_file": "era5latent.api",
    "info": "era5latent.api",
    "train_model": "era5latent.api",  # not "train"/"evaluate": those are submodules' names
    "evaluate_reconstruction": "era5latent.api",
    "verify": "era5latent.api",
    "finalize": "era5latent.api",
    "build_embed_map": "era5latent.embed",
    "EmbedMapOptions": "era5latent.embed",
    "LatentDataset": "era5latent.torch",
    "LoadedModel": "era5latent.model.checkpoint",
    "Era5LatentError": "era5latent.errors",
    "make_sample": "era5latent.io.sample",
    "write_sample": "era5latent.io.sample",
}

__all__ = [  # spelled out for type checkers; a test keeps it equal to _EXPORTS
    "__version__", "open_latent", "load_model", "encode", "decode", "encode_to_store",
    "decode_to_file", "info", "train_model", "evaluate_reconstruction", "verify", "finalize",
    "build_embed_map", "EmbedMapOptions", "LatentDataset",
    "LoadedModel", "Era5LatentError", "make_sample", "write_sample",
]

if TYPE_CHECKING:
    from era5latent.api import (decode, decode_to_file, encode, encode_to_store,
                                evaluate_reconstruction, finalize, info, load_model, open_latent,
                                train_model, verify)
    from era5latent.embed import EmbedMapOptions, build_embed_map
    from era5latent.errors import Era5LatentError
    from era5latent.model.checkpoint import LoadedModel
    from era5latent.io.sample import make_sample, write_sample
    from era5latent.torch import LatentDataset


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'era5latent' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
