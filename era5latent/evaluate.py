"""Old path of :mod:`era5latent.evaluation.score`, kept so existing imports still work."""

from era5latent.evaluation.score import (SWEEP_FACTORS, EvalReport, evaluate,  # noqa: F401
                                         wla_bytes_per_value)
