"""Every code block in README.md and docs/*.md runs in the tests, or says why not.

Each fenced block is one of:

* ``python``: executed, the blocks of one page in order, in one namespace, in a fresh directory;
* a shell block (no language, ``bash``, ``sh``, ``console``): each command must be an
  ``era5latent`` command, run in-process in the same directory as the page's other blocks, and
  must exit 0 (``console`` blocks: the ``$`` lines);
* marked input: ``<!-- file: NAME -->`` on the line before the fence writes the block to ``NAME``
  (a recipe the next blocks use);
* ``text`` (and other data languages): output, diagrams, formulas -- nothing to run;
* marked ``<!-- skip-test: REASON -->`` on the line before the fence: needs the network, a GPU,
  a cluster or much time. The test counts and lists them.

``<!-- test-append: VERB ARGS -->`` before a shell block appends ARGS to that block's
``era5latent VERB`` commands in the test only (tiny data, few training steps), so a quick start
written for a user's laptop runs here in seconds. Pages whose python blocks
``tests/test_python_docs.py`` already runs (slow; minutes) are counted as run there.
"""

from __future__ import annotations

import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"", "bash", "sh", "shell", "console"}
#: pages whose python blocks tests/test_python_docs.py runs (they train models: minutes)
PYTHON_DOCS = {"python-api.md", "latent-forecast.md"}
FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)\s*$")
MARK = re.compile(r"^<!--\s*(skip-test|file|test-append):\s*(.*?)\s*-->\s*$")


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    body: str
    skip: str | None = None
    file: str | None = None
    append: dict[str, list[str]] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m.group(1), m.group(2)
        j = i + 1
        while j < len(lines) and not lines[j].startswith(fence):
            j += 1
        b = Block(page, i + 1, lang, "\n".join(lines[i + 1:j]))
        k = i - 1
        while k >= 0 and (mm := MARK.match(lines[k])):  # the markers right above the fence
            kind, arg = mm.groups()
            if kind == "skip-test":
                b.skip = arg
            elif kind == "file":
                b.file = arg
            else:
                verb, _, args = arg.partition(" ")
                b.append[verb] = shlex.split(args)
            k -= 1
        out.append(b)
        i = j + 1
    return out


def commands(b: Block) -> list[list[str]]:
    """The shell commands of a block, split into words (comments and prompts removed)."""
    text = b.body
    if b.lang == "console":
        text = "\n".join(ln[2:] for ln in text.splitlines() if ln.startswith("$ "))
    text = re.sub(r"\\\n", " ", text)
    return [words for ln in text.splitlines() if (words := shlex.split(ln, comments=True))]


def kind(b: Block) -> str:
    if b.skip is not None:
        return "skipped"
    if b.file is not None:
        return "file"
    if b.lang == "python":
        return "python-docs" if b.page.name in PYTHON_DOCS else "python"
    if b.lang in SHELL:
        return "shell"
    return "text"


ALL = [b for p in PAGES for b in blocks(p)]


def test_every_block_is_run_or_says_why_not() -> None:
    counts: dict[str, int] = {}
    for b in ALL:
        counts[kind(b)] = counts.get(kind(b), 0) + 1
    bad = [f"{b.where}: {' '.join(c[:3])}" for b in ALL if kind(b) == "shell"
           for c in commands(b) if c[0] != "era5latent"]
    assert not bad, ("shell blocks the test cannot run (only era5latent commands run here); mark "
                     "them <!-- skip-test: REASON --> or make them era5latent commands:\n"
                     + "\n".join(bad))
    assert all(b.skip for b in ALL if b.skip is not None), "a skip-test marker needs a reason"
    skipped = [f"{b.where}: {b.skip}" for b in ALL if kind(b) == "skipped"]
    print(f"\ncode blocks: {counts}; skipped:\n  " + "\n  ".join(skipped))
    assert counts.get("shell", 0) >= 4 and counts.get("python", 0) >= 2, counts


RUNNABLE = sorted({b.page for b in ALL if kind(b) in ("shell", "python", "file")})


@pytest.mark.parametrize("page", RUNNABLE, ids=[p.name for p in RUNNABLE])
def test_page_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"docs.{page.stem}"}
    start = time.perf_counter()
    for b in blocks(page):
        k = kind(b)
        if k == "file":
            (tmp_path / b.file).write_text(b.body + "\n")  # type: ignore[operator]
        elif k == "python":
            exec(compile(b.body, b.where, "exec"), namespace)  # noqa: S102 -- our own docs
        elif k == "shell":
            for words in commands(b):
                args = words[1:] + b.append.get(words[1], [])
                res = run_cli(*args)
                assert res.exit_code == 0, (b.where, args, res.stdout[-2000:], res.stderr[-2000:])
    took = time.perf_counter() - start
    assert took < 60, f"{page.name}'s blocks took {took:.0f} s: keep the examples small"
