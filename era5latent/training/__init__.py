"""Training a WLA: the loop, the streaming loader, the objective and the distributed set-up.

| module | owns |
| --- | --- |
| ``options.py`` | every option, its default and its check |
| ``loop.py`` | the training loop (one group at a time, data-parallel), validation, checkpoints |
| ``data.py`` | the streaming, block-shuffled loader with worker processes |
| ``stats.py`` | normalisation statistics in one streaming pass |
| ``losses.py`` | the objective's terms (reconstruction, BSQ entropy, adversarial) |
| ``distributed.py`` | torch.distributed set-up, ``--nproc`` spawning |
| ``state.py`` | the ``--resume`` sidecar |
| ``monitor.py`` | CSV and TensorBoard logs |
| ``combine.py`` | one model file from checkpoints of separately trained groups |
| ``memory.py`` | what a training step needs in memory (``train --dry-run``) |

The model (``era5latent.model``) never touches files; everything here that reads or writes does
so through ``sources``, ``model.checkpoint`` and ``state``.
"""

from era5latent.training.budget import lr_at
from era5latent.training.loop import TrainProgress, TrainResult, train
from era5latent.training.options import DEFAULT_LR, TrainOptions

__all__ = ["DEFAULT_LR", "TrainOptions", "TrainProgress", "TrainResult", "lr_at", "train"]
