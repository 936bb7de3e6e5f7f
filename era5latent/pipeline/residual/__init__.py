"""The error-bounded residual layer's numbers (docs/residuals.md); its arrays in the store are
:mod:`era5latent.store.residual`, what ``info`` and ``evaluate`` show of it
:mod:`era5latent.store.info`.

A store encoded with ``--max-error`` holds, beside the WLA codes, each time chunk's residual
``truth - reconstruction`` per channel, compressed by an error-bounded codec (SZ3 or ZFP
fixed-accuracy), so that ``decode`` brings every value within the bound of the source.

* :mod:`.spec`: ``--max-error`` parsing (``z500=5,t850=0.1``, ``*=1%``) into per-channel bounds.
* :mod:`.codecs`: one channel's residual <-> one byte stream (no files).
* :mod:`.core`: the numeric core: residual streams of a chunk, and applying them (no IO).
"""

from era5latent.pipeline.residual.codecs import CODECS, compress, decompress
from era5latent.pipeline.residual.core import apply_residuals, make_residuals, within_bound
from era5latent.pipeline.residual.spec import DRIFT_MARGIN_REL, ResidualSpec, parse_max_error

__all__ = ["CODECS", "DRIFT_MARGIN_REL", "ResidualSpec", "apply_residuals", "compress",
           "decompress", "make_residuals", "parse_max_error", "within_bound"]
