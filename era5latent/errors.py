"""One error hierarchy for the whole library.

Every error a user can cause derives from :class:`Era5LatentError`. Library code raises these
with a one-line message that names what was expected, what was found and the fix; only the CLI
turns them into an exit code (``exit_code``) and a line on stderr. Anything else that escapes is a
bug (exit code 1).
"""

from __future__ import annotations


class Era5LatentError(Exception):
    """Base class of every error caused by input, options or environment (exit code 2)."""

    exit_code = 2


class SubsetError(Era5LatentError):
    """A subset spec names an unknown variable or level, or is malformed."""


class SourceError(Era5LatentError):
    """An ERA5 source cannot be opened, or lacks what was asked of it."""


class DataValueError(SourceError):
    """The source holds values that cannot be encoded (NaN, infinities, wrong units)."""


class GridMismatchError(Era5LatentError):
    """The data grid does not match the grid a model or store was built for."""


class CheckpointError(Era5LatentError):
    """A model checkpoint is missing, malformed, truncated or of another format."""


class StoreError(Era5LatentError):
    """A latent store is missing, malformed, of an unknown version, or made differently."""


class StoreExistsError(StoreError):
    """The output exists and neither resuming nor ``--overwrite`` applies."""


class ModelMismatchError(StoreError):
    """A model does not match the one a store was made with."""


class EmbedMapError(Era5LatentError):
    """Bad input to build-embed-map (parquet, grid ids, embeddings)."""


class OptionError(Era5LatentError):
    """An option value is invalid (bad time range, device, preset, ...)."""
