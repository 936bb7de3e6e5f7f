"""The package's layout stays as docs/architecture.md draws it: arrows point down.

The import graph of every module under ``era5latent/`` is read with :mod:`ast` (no package is
imported, so this runs in well under a second): every ``import era5latent...`` and
``from era5latent... import ...`` (relative imports resolved), at module level, under
``if TYPE_CHECKING:`` and inside functions alike, since an import moved into a function to dodge
a circle is still an arrow. Then:

* no two files import each other, directly or round a longer circle;
* no module imports one of a higher layer (:data:`LAYERS`, lowest first);
* no file imports a private (``_name``) name or module of another file;
* the package root holds the public API and a few base modules, no more than :data:`ROOT_MAX`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "era5latent"

#: the layers, lowest first: a module may import its own layer and those before it. A module's
#: layer is that of the longest prefix of its dotted name listed here.
LAYERS: dict[str, tuple[str, ...]] = {
    "base": ("era5latent.errors", "era5latent.version", "era5latent.fsutil", "era5latent.faults",
             "era5latent.malloc"),
    "io": ("era5latent.io",),
    "model": ("era5latent.model",),
    "store": ("era5latent.store",),
    "embed": ("era5latent.embed",),
    "evaluation": ("era5latent.evaluation",),
    "training": ("era5latent.training",),
    "pipeline": ("era5latent.pipeline",),
    "recipe": ("era5latent.recipe",),
    "api": ("era5latent", "era5latent.api", "era5latent.torch"),
    "cli": ("era5latent.cli", "era5latent.__main__"),
}
RANK = {prefix: rank for rank, prefixes in enumerate(LAYERS.values()) for prefix in prefixes}
LAYER_NAMES = list(LAYERS)
#: modules at the package root besides ``__init__`` and ``__main__``
ROOT_MAX = 8


def modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package is its ``__init__``)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = modules()


def resolve(name: str) -> str | None:
    """The module ``name`` lives in: itself, or (``from pkg import thing``) its longest prefix
    that is a module."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in MODULES:
            return ".".join(parts)
        parts.pop()
    return None


def imports(module: str) -> Iterator[tuple[str, int, str]]:
    """``(imported module, line, imported name)`` for every import of ``era5latent`` in
    ``module``, wherever it stands in the file; the name is the last dotted part imported."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            targets = [f"{origin}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            if target == "era5latent" or target.startswith("era5latent."):
                found = resolve(target)
                if found is not None and found != module:
                    yield found, node.lineno, target.rpartition(".")[2]


GRAPH: dict[str, dict[str, int]] = {
    m: {t: line for t, line, _ in sorted(imports(m), key=lambda x: -x[1])} for m in MODULES}


def layer_of(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        rank = RANK.get(".".join(parts[:n]))
        if rank is not None:
            return rank
    raise AssertionError(f"{module} is in no layer: add its folder to LAYERS in "
                         "tests/test_architecture.py (and to docs/architecture.md)")


def where(module: str) -> str:
    return str(MODULES[module].relative_to(PACKAGE.parent))


def test_the_graph_is_read() -> None:
    """The reader sees the imports it must (a guard against a test that passes on nothing)."""
    assert len(MODULES) > 80
    assert "era5latent.store.core" in GRAPH["era5latent.pipeline.encoding"]
    assert "era5latent.io.variables" in GRAPH["era5latent.io.sources"]
    assert "era5latent.cli.common" in GRAPH["era5latent.cli.store"]
    # function-level and relative imports count too
    assert "era5latent.io.sources" in GRAPH["era5latent.evaluation.climatology"]


def cycles() -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each as a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(circle(set(component)))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return found


def circle(component: set[str]) -> list[str]:
    """One circle through a strongly connected component, from its first module back to it."""
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    while queue:  # breadth first: the shortest way round
        v = queue.pop(0)
        for w in sorted(GRAPH[v]):
            if w == start:
                return paths[v] + [start]
            if w in component and w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    return sorted(component)


def test_no_import_circle_between_files() -> None:
    found = cycles()
    assert not found, "import circles (move the piece or invert the dependency; an import " \
        "inside a function counts too):\n" + "\n".join(
            " -> ".join(f"{where(m)}" for m in c) for c in found)


def test_imports_point_down_the_layers() -> None:
    """A module imports only its own layer and those below it (LAYERS, lowest first)."""
    up = []
    for module, targets in sorted(GRAPH.items()):
        mine = layer_of(module)
        for target, line in sorted(targets.items()):
            theirs = layer_of(target)
            if theirs > mine:
                up.append(f"{where(module)}:{line} ({LAYER_NAMES[mine]}) imports {where(target)} "
                          f"({LAYER_NAMES[theirs]})")
    assert not up, "imports that point up the layers " \
        f"({' < '.join(LAYER_NAMES)}):\n" + "\n".join(up)


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        layer_of(module)


def test_no_private_name_is_imported_from_another_file() -> None:
    """What one file shares with another is public there: no ``from x import _helper``, no
    import of a ``_private`` module (dunders such as ``__version__`` are not private)."""
    private = []
    for module in sorted(MODULES):
        for target, line, name in imports(module):
            names = [name, *target.split(".")]
            if any(n.startswith("_") and not n.startswith("__") for n in names):
                private.append(f"{where(module)}:{line} imports {name} from {where(target)}")
    assert not private, "private names imported from another file:\n" + "\n".join(private)


def test_the_root_holds_the_public_api_and_few_modules() -> None:
    root = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert {"api", "errors", "torch"} <= set(root)
    assert len(root) <= ROOT_MAX, f"{len(root)} modules at the package root ({', '.join(root)}); " \
        f"at most {ROOT_MAX}: move one into the subpackage it belongs to (docs/architecture.md)"


def test_the_layer_test_catches_an_upward_import() -> None:
    """The checks themselves: an import of the CLI from the store would be refused."""
    assert layer_of("era5latent.store.core") < layer_of("era5latent.cli.common")
    assert layer_of("era5latent.store.residual") == layer_of("era5latent.store")
    assert layer_of("era5latent") == layer_of("era5latent.api") > layer_of("era5latent.pipeline")
