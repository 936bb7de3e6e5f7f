"""Shared fixtures: tiny sample data, a tiny trained model, the real-data folder, a CLI runner."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("ERA5LATENT_REAL_DATA", REPO.parent / "shared" / "data"))
ENSEMBLE_GRIB = REAL_DATA / "era5-levels-members.grib"
UK_T2M_GRIB = REAL_DATA / "era5-t2m-uk-2019-03.grib"

#: the channels the shared tiny model is trained on (two pressure groups and the surface group)
TRAIN_SUBSET = "z500,z850,t500,t850,t2m,msl"
SAMPLE_GRID = (33, 64)


@pytest.fixture
def real_data() -> Path:
    if not (ENSEMBLE_GRIB.is_file() and UK_T2M_GRIB.is_file()):
        pytest.skip(f"real ERA5 samples not found in {REAL_DATA} (set ERA5LATENT_REAL_DATA)")
    return REAL_DATA


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by its relative path: for byte-for-byte comparisons of stores."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def run_cli(*args: str) -> CliResult:
    """Run the CLI in-process, as a user would (errors -> exit code and stderr)."""
    from typer.testing import CliRunner

    from era5latent.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return CliResult(res.exit_code, res.stdout, res.stderr)


def cli_subprocess(*args: str, env: dict[str, str] | None = None,
                   cwd: Path | None = None) -> "subprocess.CompletedProcess[str]":
    import subprocess

    return subprocess.run([sys.executable, "-m", "era5latent.cli", *map(str, args)],
                          capture_output=True, text=True, env={**os.environ, **(env or {})},
                          cwd=cwd, timeout=600)


def assert_clean_error(res: CliResult, *needles: str) -> None:
    """Exit code 2, one line on stderr naming the problem, no traceback."""
    assert res.exit_code == 2, (res.exit_code, res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in res.stderr
    for n in needles:
        assert n.lower() in lines[0].lower(), (n, lines[0])


@pytest.fixture(scope="session")
def sample_zarr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from era5latent.io.sample import write_sample

    path = tmp_path_factory.mktemp("sample") / "sample.zarr"
    write_sample(str(path), grid=SAMPLE_GRID, times=24, variables=("z", "t", "t2m", "msl"),
                 levels=(500, 700, 850), seed=1)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, sample_zarr: Path) -> Path:
    """A tiny WLA trained briefly on the sample (enough to exercise the paths, not to be good)."""
    out = tmp_path_factory.mktemp("model") / "wla.safetensors"
    res = run_cli("train", sample_zarr, "--subset", TRAIN_SUBSET, "--out", out, "--steps", "20",
                  "--batch-size", "4", "--device", "cpu", "--checkpoint-every", "10")
    assert res.exit_code == 0, res.stderr
    return out


#: the channels of ``train_zarr``: two levels of one pressure group and the surface group
TRAIN_DATA_SUBSET = "z500,z850,t2m"


@pytest.fixture(scope="session")
def train_zarr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small source for the training tests (33 x 64, 24 six-hourly steps, z and t2m)."""
    from era5latent.io.sample import write_sample

    path = tmp_path_factory.mktemp("train") / "d.zarr"
    write_sample(str(path), grid=(33, 64), times=24, variables=("z", "t2m"), levels=(500, 850),
                 seed=5)
    return path
