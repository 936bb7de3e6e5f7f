"""Old path of :mod:`era5latent.evaluation.metrics`, kept so existing imports still work."""

from era5latent.evaluation.metrics import *  # noqa: F401,F403
from era5latent.evaluation.metrics import latitude_weights, zonal_power_spectrum  # noqa: F401
