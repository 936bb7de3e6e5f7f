"""The Python examples in docs/ run as written: every ```python block, in order, in a fresh dir."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text(encoding="utf-8"))


@pytest.mark.slow
@pytest.mark.parametrize("doc", ["python-api.md", "latent-forecast.md"])
def test_doc_examples_run(doc: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    path = DOCS / doc
    blocks = python_blocks(path)
    assert len(blocks) >= 3, f"{doc} should hold runnable ```python blocks"
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"docs.{path.stem}"}
    start = time.perf_counter()
    for i, block in enumerate(blocks):
        code = compile(block, f"{path}:block{i + 1}", "exec")
        exec(code, namespace)  # noqa: S102 -- our own documentation
    took = time.perf_counter() - start
    out = capsys.readouterr().out
    assert out.strip(), "the examples print what they show"
    if doc == "latent-forecast.md":
        table = [ln.split() for ln in out.splitlines() if ln.startswith(("forecast", "persistence"))]
        assert len(table) == 2 and all(len(row) == 5 for row in table), out
    assert took < 300, f"{doc} took {took:.0f} s; keep the examples small"


@pytest.mark.slow
def test_readme_python_snippet_runs_verbatim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             sample_zarr: Path, tiny_model: Path) -> None:
    """README's Python block, as written, on the files its quick start makes."""
    import xarray as xr

    from .conftest import run_cli

    readme = DOCS.parent / "README.md"
    (block,) = python_blocks(readme)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo.zarr").symlink_to(sample_zarr)
    (tmp_path / "wla.safetensors").symlink_to(tiny_model)
    res = run_cli("encode", "demo.zarr", "--model", "wla.safetensors", "--subset", "z500,t850",
                  "--out", "latent.zarr", "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    namespace: dict[str, object] = {"__name__": "readme"}
    exec(compile(block, f"{readme}:python", "exec"), namespace)  # noqa: S102 -- our own README
    assert isinstance(namespace["codes"], xr.Dataset) and isinstance(namespace["fields"], xr.Dataset)
