"""Progress records where stderr is not a terminal, for the verbs beyond encode/decode/train
(tests/test_cli.py covers those): build-embed-map, and --quiet silencing it."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_cli
from tests.test_embedmap import fmt, sample, write_parquet


def test_build_embed_map_prints_progress_lines_and_quiet_silences_them(tmp_path: Path) -> None:
    from era5latent.cli import common as cli

    cells, vecs = sample(n=50, d=4)
    src = write_parquet(tmp_path / "in.parquet", [fmt(c) for c in cells], vecs)
    every = cli.PROGRESS_EVERY_S
    cli.PROGRESS_EVERY_S = 0.0  # a record at every update
    try:
        res = run_cli("build-embed-map", src, "--out", tmp_path / "a.zarr", "--batch-rows", "16")
        assert res.exit_code == 0, res.stderr
        lines = res.stderr.splitlines()
        reads = [ln for ln in lines if ln.startswith("build-embed-map reading rows: ")]
        writes = [ln for ln in lines if ln.startswith("build-embed-map writing chunks: ")]
        assert reads and writes, res.stderr
        assert reads[-1].startswith("build-embed-map reading rows: 100.0% (50/50 rows)")
        assert "100.0%" in writes[-1] and "chunks/s" in writes[-1]
        res = run_cli("--quiet", "build-embed-map", src, "--out", tmp_path / "b.zarr")
        assert res.exit_code == 0 and res.stderr == "", res.stderr
    finally:
        cli.PROGRESS_EVERY_S = every
