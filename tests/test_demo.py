"""`make demo` on a reduced setting: every step runs and the summary's claims hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from era5latent.demo import main


@pytest.mark.slow
def test_quick_demo_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["--out", str(out), "--quick"]) == 0
    printed = capsys.readouterr().out
    assert "Demo finished" in printed and "RMSE at equal bytes per value" in printed
    for name in ("sample.zarr", "wla.safetensors", "latent.zarr", "recon.zarr", "evaluation.json"):
        assert (out / name).exists(), name
    doc = json.loads((out / "evaluation.json").read_text())
    methods = {(r["channel"], r["method"]) for r in doc["records"]}
    assert methods == {(c, m) for c in ("z500", "t850", "t2m") for m in ("wla", "bitround", "zfp")}
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert "map_z500_wla.png" in pngs and "rd_t850.png" in pngs and "spectra_t2m.png" in pngs
    assert all((out / "plots" / p).stat().st_size > 10_000 for p in pngs)
