"""``encode --allow-unseen-levels``: a level the model's group never saw is encoded with a
warning, and the store decodes with the statistics it recorded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from tests.conftest import assert_clean_error, run_cli


def test_unseen_level_is_refused_then_allowed_with_a_warning(sample_zarr: Path, tiny_model: Path,
                                                             tmp_path: Path) -> None:
    out, dec = tmp_path / "l.zarr", tmp_path / "d.zarr"
    args = ["encode", sample_zarr, "--model", tiny_model, "--subset", "z500,z700,t2m", "--out",
            out, "--device", "cpu", "--time-chunk", "8"]
    assert_clean_error(run_cli(*args), "not trained on z700", "--allow-unseen-levels")
    assert not out.exists()
    res = run_cli(*args, "--allow-unseen-levels")
    assert res.exit_code == 0, res.stderr
    warnings = [ln for ln in res.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "level 700 hPa of z" in warnings[0], res.stderr
    # a single-level field the model lacks is not a level: still refused
    assert_clean_error(run_cli("encode", sample_zarr, "--model", tiny_model, "--subset", "t",
                               "--out", tmp_path / "x.zarr", "--allow-unseen-levels"), "t")
    assert all(ln.startswith("PASS") for ln in run_cli("verify", out).stdout.splitlines())
    res = run_cli("decode", out, "--model", tiny_model, "--out", dec, "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    truth = xr.open_zarr(sample_zarr)["geopotential"].sel(level=700)
    got = xr.open_zarr(dec)["geopotential"].sel(level=700)
    assert np.isfinite(got.values).all()
    import era5latent  # the Python API decodes it alike

    api = era5latent.decode(str(out), str(tiny_model), device="cpu")
    np.testing.assert_array_equal(api["geopotential"].sel(level=700).values, got.values)
    # out of distribution, yet in the field's range (the model's own levels score better)
    err = float(np.sqrt(((got.values - truth.values) ** 2).mean()))
    assert err < 3 * float(truth.std())
    # the re-run resumes the same store (same statistics, deterministic)
    again = run_cli(*args, "--allow-unseen-levels")
    assert again.exit_code == 0 and "resumed" in again.stdout, again.stderr
