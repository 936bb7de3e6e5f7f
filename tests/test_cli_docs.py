from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from era5latent.cli.docs import render

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_cli_md_is_in_sync_with_the_app() -> None:
    assert DOC.read_text() == render(), "docs/cli.md is stale: run `make docs`"


def test_help_is_fast_and_does_not_import_torch() -> None:
    code = "import sys; from era5latent.cli import app; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
