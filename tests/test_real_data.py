"""On real ERA5 (skipped without ../shared/data or $ERA5LATENT_REAL_DATA): a briefly trained WLA
must carry real information about fields it never saw.

The full comparison with the classical codecs is ``benchmarks/real_data.py`` (docs/evaluation.md);
this is its fast check, through the same library calls.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from .conftest import UK_T2M_GRIB

pytestmark = pytest.mark.realdata

TRAIN = "2019-03-01/2019-03-24T23"  # days 1-21 train, 22-24 the trainer's validation
TEST = "2019-03-25/2019-03-31T23"  # the last week: never seen in training


@pytest.fixture
def one_thread():
    """Train on one torch thread: on a shared 2-core machine two threads are much slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_wla_on_uk_t2m_beats_the_mean_on_the_held_out_week(real_data: Path, tmp_path: Path,
                                                          one_thread: None) -> None:
    from era5latent.evaluation import metrics
    from era5latent.evaluation.score import evaluate
    from era5latent.model.checkpoint import load_checkpoint
    from era5latent.pipeline import decode, encode
    from era5latent.io.sources import open_source
    from era5latent.store.core import open_latent_store
    from era5latent.training import TrainOptions, train
    from era5latent.io.variables import parse_subset

    src = open_source(str(UK_T2M_GRIB))
    channels = parse_subset("t2m")
    model = str(tmp_path / "wla.safetensors")
    res = train(src, channels, model,
                TrainOptions(preset="tiny", steps=150, batch_size=8, time_range=TRAIN,
                             val_fraction=3 / 24, val_every=150, checkpoint_every=150,
                             device="cpu"))
    assert res.val_mse is not None and res.val_mse < 0.5  # z-score units: half the variance gone
    loaded = load_checkpoint(model)
    assert loaded.meta.training["train_time_range"] == ["2019-03-01T00:00:00", "2019-03-21T23:00:00"]
    latent, recon = str(tmp_path / "latent.zarr"), str(tmp_path / "recon.zarr")
    encode(src, loaded, channels, latent, time_range=TEST, device="cpu", precision="fp32")
    decode(latent, loaded, recon, device="cpu", precision="fp32")
    report = evaluate(src, open_source(recon), subset=channels, time_range=TEST,
                      latent=open_latent_store(latent), baselines=["none"])
    (wla,) = report.records
    assert wla["n_samples"] == 7 * 24
    # raw codes: 4 x 6 tokens x 16 bytes per 33 x 49 field = 0.2375 bytes per value; on disk
    # the store's zstd can only take some away (a trained model's bits are not all random)
    assert loaded.meta.config.tokens * loaded.meta.config.code_bytes == 4 * 6 * 16
    assert 0 < wla["bytes_per_value"] < 0.25

    a, b = src.time_indices(TEST)
    truth = src.read(channels, a, b)[:, 0]
    train_mean = float(src.read(channels, 0, 21 * 24).mean())
    mean_rmse = metrics.rmse(truth, np.full_like(truth, train_mean), src.latitude)
    assert mean_rmse > 2.0  # K: the week's weather is far from the March mean
    # the codes carry the week's weather: well under the per-channel mean's error
    assert wla["rmse"] < 0.6 * mean_rmse, (wla["rmse"], mean_rmse)
    assert wla["acc"] > 0.7
