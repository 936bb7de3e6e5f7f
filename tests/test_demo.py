"""`make demo` on a reduced setting: every step runs and the summary's claims hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from era5latent.cli.demo import main


@pytest.mark.slow
def test_quick_demo_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["--out", str(out), "--quick"]) == 0
    printed = capsys.readouterr().out
    assert "Demo finished" in printed and "RMSE at equal bytes per value" in printed
    table = printed[printed.index("RMSE at equal bytes per value"):]
    for ch in ("z500", "t850", "t2m"):  # every channel's line names SZ3 beside the others
        line = next(ln for ln in table.splitlines() if ln.strip().startswith(ch))
        assert all(f"{m} " in line for m in ("WLA", "bitround", "zfp", "SZ3")), line
    for name in ("sample.zarr", "wla.safetensors", "latent.zarr", "recon.zarr", "evaluation.json"):
        assert (out / name).exists(), name
    doc = json.loads((out / "evaluation.json").read_text())
    methods = {(r["channel"], r["method"]) for r in doc["records"]}
    assert methods == {(c, m) for c in ("z500", "t850", "t2m") for m in ("wla", "bitround", "zfp", "sz3")}
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert "map_z500_wla.png" in pngs and "rd_t850.png" in pngs and "spectra_t2m.png" in pngs
    assert all((out / "plots" / p).stat().st_size > 10_000 for p in pngs)


def test_the_summary_names_sz3_at_equal_bytes_and_marks_what_it_shows() -> None:
    """The closing summary, from evaluate's records: SZ3 beside the WLA at the WLA's bytes,
    whichever wins; a baseline that missed the size is marked (no quiet unequal comparison)."""
    from era5latent.cli.demo import BASELINES, steps, summary_lines

    assert "sz3" in BASELINES
    evaluate = next(cmd for _, cmd in steps(Path("out"), quick=True) if cmd[0] == "evaluate")
    assert evaluate[evaluate.index("--baselines") + 1].split(",") == list(BASELINES)

    def rec(method: str, rmse: float, matched: bool | None = True) -> dict[str, object]:
        return {"channel": "z500", "method": method, "rmse": rmse, "compression_ratio": 250.0,
                "bytes_per_value": 0.016, "size_matched": None if method == "wla" else matched}

    lines = summary_lines([rec("wla", 399.0), rec("bitround", 900.0, False),
                           {**rec("zfp", 7287.0), "size_flags": ["all_zero"]}, rec("sz3", 109.0)])
    assert lines == ["  z500   (250x vs float32): WLA 399, bitround 900 (size not matched: "
                     "0.016 B/value), zfp 7287 (all zero), SZ3 109 (best)"]


@pytest.mark.parametrize("quick", [True, False])
def test_the_demo_evaluates_only_the_times_training_held_out(quick: bool) -> None:
    """Scored on fields the model never learned from: evaluate's --time starts at the first time
    train's validation split keeps out, computed from the sample's own start and step."""
    import numpy as np

    from era5latent.cli.demo import held_out, steps
    from era5latent.training.loop import split_index

    cmds = {cmd[0]: cmd for _, cmd in steps(Path("out"), quick=quick)}
    sample, train, evaluate = cmds["sample"], cmds["train"], cmds["evaluate"]
    assert "--val-fraction" not in train  # the default split, as held_out assumes
    n = int(sample[sample.index("--times") + 1])
    start = np.datetime64(sample[sample.index("--start") + 1])
    step = np.timedelta64(int(sample[sample.index("--freq") + 1].rstrip("h")), "h")
    times = start + step * np.arange(n)
    k = split_index(n, 0.1)
    first = evaluate[evaluate.index("--time") + 1]
    assert first == f"{str(times[k].astype('datetime64[h]'))}/"
    assert held_out(n) == (first[:-1], n - k) and 0 < n - k < n
