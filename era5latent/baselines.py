"""Old path of :mod:`era5latent.evaluation.codecs` and :mod:`~era5latent.evaluation.sizematch`.

Kept so code written against ``era5latent.baselines`` (and the branches being merged) still
imports; new code imports from ``era5latent.evaluation``.
"""

from era5latent.evaluation.codecs import *  # noqa: F401,F403
from era5latent.evaluation.sizematch import SizeMatch, match_size, rate_distortion  # noqa: F401
