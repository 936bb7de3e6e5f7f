"""evaluate in time chunks: the same numbers as all at once, reads bounded by a chunk, progress."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from .conftest import assert_clean_error, run_cli


def test_accumulator_over_chunks_equals_channel_metrics() -> None:
    from era5latent.evaluation import metrics as M

    rng = np.random.default_rng(0)
    lat = np.linspace(90, -90, 19)
    t = rng.normal(280, 10, (11, 19, 36))
    r = t + rng.normal(0.3, 1.5, t.shape)
    clim = t.mean(axis=0)
    whole = M.channel_metrics(t, r, lat, clim, spectra=True)
    acc = M.MetricAccumulator(lat)
    for a in range(0, 11, 4):
        acc.add(t[a:a + 4], r[a:a + 4], clim)
    parts = acc.result(spectra=True)
    for k, v in whole.items():
        if isinstance(v, float):
            assert parts[k] == pytest.approx(v, rel=1e-12, abs=1e-12), k
    np.testing.assert_allclose(parts["spectrum_recon"], whole["spectrum_recon"], rtol=1e-12)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, sample_zarr: Path) -> tuple[Path, Path]:
    """The tiny sample as truth, and a perturbed copy of it as the reconstruction."""
    recon = tmp_path_factory.mktemp("stream") / "recon.zarr"
    ds = xr.open_zarr(sample_zarr).load()
    rng = np.random.default_rng(1)
    for v in ds.data_vars:
        if ds[v].dtype.kind == "f":
            ds[v] = ds[v] + rng.normal(0, 0.01 * float(ds[v].std()), ds[v].shape).astype(
                ds[v].dtype)
    ds.to_zarr(recon, mode="w", consolidated=False)
    return sample_zarr, recon


def test_chunked_evaluate_equals_one_chunk_and_reads_one_chunk_at_a_time(
        pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from era5latent.evaluation import score
    from era5latent.io.sources import open_source
    from era5latent.io.variables import parse_subset

    truth, recon = pair
    sub = parse_subset("z500,t2m")
    whole = score.evaluate(open_source(str(truth)), open_source(str(recon)), subset=sub,
                           region="extra-tropics")
    assert whole.time_chunk >= 24  # the sample fits one chunk
    reads: list[int] = []
    real_field = score._field

    def counting(src, ch, a, b):  # type: ignore[no-untyped-def]
        reads.append(b - a)
        return real_field(src, ch, a, b)

    monkeypatch.setattr(score, "_field", counting)
    seen: list[tuple[int, int, str]] = []
    chunked = score.evaluate(open_source(str(truth)), open_source(str(recon)), subset=sub,
                             region="extra-tropics", time_chunk=5,
                             progress=lambda d, n, ch: seen.append((d, n, ch)))
    assert max(reads) == 5
    assert seen[-1] == (48, 48, "t2m") and [d for d, _, _ in seen] == sorted(d for d, _, _ in seen)
    for a, b in zip(whole.records, chunked.records):
        assert a["channel"] == b["channel"] and a["region"] == b["region"] == "extra-tropics"
        for k in ("rmse", "rmse_sqrt_after_time_mean", "bias", "mae", "max_abs_error", "acc",
                  "small_scale_power_ratio"):
            assert b[k] == pytest.approx(a[k], rel=1e-10), k


def test_evaluate_cli_progress_lines_and_quiet(pair: tuple[Path, Path], tmp_path: Path) -> None:
    from era5latent.cli import common as cli

    truth, recon = pair
    quick = run_cli("evaluate", truth, recon, "--subset", "t2m", "--baselines", "none")
    assert quick.exit_code == 0 and "evaluate: " not in quick.stderr  # under 30 s: no record
    every = cli.PROGRESS_EVERY_S
    cli.PROGRESS_EVERY_S = 0.0  # a record at every update
    try:
        res = run_cli("evaluate", truth, recon, "--subset", "t2m", "--baselines", "none",
                      "--time-chunk", "6")
    finally:
        cli.PROGRESS_EVERY_S = every
    assert res.exit_code == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("evaluate: ")]
    assert lines and lines[-1].startswith("evaluate: 100.0% (24/24 steps)"), res.stderr
    quiet = run_cli("--quiet", "evaluate", truth, recon, "--subset", "t2m", "--baselines", "none")
    assert quiet.exit_code == 0 and "evaluate: " not in quiet.stderr
    assert_clean_error(run_cli("evaluate", truth, recon, "--region", "north"), "region",
                       "extra-tropics")


def test_baseline_rows_state_their_size_and_the_table_marks_misses(
        pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Every baseline row carries its achieved bytes and whether it is at the WLA's size; rows
    come in one order; the table says NOT matched where a codec missed by over 10%."""
    from era5latent.cli import evaluate as cli
    from era5latent.evaluation import score
    from era5latent.io.sources import open_source
    from era5latent.io.variables import parse_subset

    truth, recon = pair
    monkeypatch.setattr(score, "wla_bytes_per_value", lambda store: {"t2m": 0.05})
    report = score.evaluate(open_source(str(truth)), open_source(str(recon)),
                            subset=parse_subset("t2m"), latent=object(),  # type: ignore[arg-type]
                            baselines=["pcodec", "zfp", "bitround"], sweep=[0.05],
                            time_chunk=10)
    assert [r["method"] for r in report.records] == ["wla", "bitround", "zfp", "pcodec"]
    for r in report.records[1:]:
        assert r["target_bytes_per_value"] == 0.05
        assert r["size_matched"] == (abs(r["bytes_per_value"] / 0.05 - 1) <= 0.1
                                     and not r["all_zero"])
    pc = report.records[-1]
    assert pc["rmse"] == 0 and not pc["size_matched"] and "fixed_size" in pc["size_flags"]
    cli._print_eval(report.records, report.acc_reference)
    out = capsys.readouterr().out
    assert out.count("NOT matched") >= 2  # pcodec's row and the footnote
