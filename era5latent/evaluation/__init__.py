"""Evaluation: what compression cost, scored the WeatherBench 2 way, beside classical codecs.

One concern per module:

- :mod:`~era5latent.evaluation.metrics`: WB2 metrics for one channel (RMSE, bias, MAE, ACC, spectra).
- :mod:`~era5latent.evaluation.codecs`: classical codecs (bit-rounding, zfp, SZ3, ...) as
  round trips that report their real bytes.
- :mod:`~era5latent.evaluation.sizematch`: each codec at the latent store's bytes per value.
- :mod:`~era5latent.evaluation.score`: :func:`evaluate`, a reconstruction against its truth.
"""

from era5latent.evaluation.score import EvalReport, evaluate, wla_bytes_per_value

__all__ = ["EvalReport", "evaluate", "wla_bytes_per_value"]
