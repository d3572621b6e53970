"""The package's architecture, checked from the source (docs/development.md, docs/design.md).

Every module of seq2seq/ is parsed with `ast` (nothing is imported) and its imports, at the top and
inside functions, absolute and relative, become edges of a graph between the package's modules. The
rules:

- layers: a module imports only from its own folder or the folders below it, bottom -> top
  config, temporaries < data < model < checkpoint < decoding < evaluation < training < lm < deploy
  < serving < cli; `seq2seq/__init__.py` may be imported by anyone;
- no import circles between modules (imports under `if TYPE_CHECKING:` never run and make none, but
  they count for the layers);
- nothing outside cli/ imports cli/ (the console entry points are leaves);
- seq2seq/deploy/runtime.py imports only the standard library, numpy, onnxruntime and sentencepiece
  (it runs where torch is not installed);
- no module above MAX_LINES lines.

`layout_violations(package_dir)` returns one line per broken rule and edge, so a failure names the
offending import (module and line) rather than only saying that something is wrong;
test_each_rule_fails_on_a_mutated_copy runs it on mutated copies of the package to show that each rule
can fail.
"""

from __future__ import annotations

import ast
import functools
import itertools
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "seq2seq"

# bottom -> top; modules in the same entry may import each other (config and temporaries: no folder)
LAYERS = (("config", "temporaries"), ("data",), ("model",), ("checkpoint",), ("decoding",), ("evaluation",),
          ("training",), ("lm",), ("deploy",), ("serving",), ("cli",))
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
RUNTIME = "seq2seq.deploy.runtime"
RUNTIME_ALLOWED = {"numpy", "onnxruntime", "sentencepiece"}  # besides the standard library
MAX_LINES = 700


@dataclass(frozen=True)
class Edge:
    """`source` imports `target` (both dotted module names; `target` may be outside the package)."""

    source: str
    target: str
    line: int
    type_only: bool = False  # under `if TYPE_CHECKING:`: never executed

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} (line {self.line})"


def module_name(path: Path, package_dir: Path) -> str:
    """seq2seq/data/corpus.py -> seq2seq.data.corpus; seq2seq/data/__init__.py -> seq2seq.data."""
    parts = [package_dir.name, *path.relative_to(package_dir).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, name: str, modules: set[str]) -> list[Edge]:
    """Every import in the file at `path` (module `name`), anywhere in it, as edges. `from pkg import x`
    points at the module pkg.x when there is one, else at pkg (x is a name defined in pkg)."""
    is_package = path.name == "__init__.py"
    tree = _parse(path.read_text(encoding="utf-8"))
    type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and _is_type_checking(block.test)
                 for stmt in block.body for n in ast.walk(stmt)}
    edges = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            edges += [Edge(name, alias.name, node.lineno, id(node) in type_only) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: climb from this module's package
                base = name.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                edges.append(Edge(name, sub if sub in modules else target, node.lineno, id(node) in type_only))
    return edges


def _is_type_checking(test: ast.expr) -> bool:
    """`TYPE_CHECKING` or `typing.TYPE_CHECKING`."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


@functools.cache
def _parse(text: str) -> ast.Module:
    """Parsed once per text: the mutation tests below check copies that differ in one file."""
    return ast.parse(text)


def import_graph(package_dir: Path) -> tuple[dict[str, Path], list[Edge]]:
    """The package's modules (name -> file) and all their import edges (external targets included)."""
    files = {module_name(p, package_dir): p for p in sorted(package_dir.rglob("*.py"))}
    edges = [edge for name, path in files.items() for edge in imports(path, name, set(files))]
    return files, edges


def layer(module: str) -> str | None:
    """The layout folder a module belongs to: 'data' for seq2seq.data.corpus, 'config' for
    seq2seq.config; None for the package root seq2seq/__init__.py."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def circles(nodes: set[str], edges: list[Edge]) -> list[list[str]]:
    """The import circles: each strongly connected component of more than one module (or a module that
    imports itself), as the modules of one cycle through it, in import order."""
    graph: dict[str, set[str]] = {n: set() for n in nodes}
    for e in edges:
        graph[e.source].add(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(v: str) -> None:  # Tarjan's algorithm; the graph has ~80 nodes, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                components.append(component)

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return [_cycle(min(c), graph, c) for c in components]


def _cycle(start: str, graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """One cycle from `start` back to it inside `component` (breadth-first: a shortest one)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if w not in previous:
                    previous[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{start} is in an import circle but no cycle was found")


def layout_violations(package_dir: Path = PACKAGE) -> dict[str, list[str]]:
    """Rule -> one line per violation (empty lists when the layout holds)."""
    files, edges = import_graph(package_dir)
    root = package_dir.name
    internal = [e for e in edges if e.target in files]
    found: dict[str, list[str]] = {"layers": [], "circles": [], "cli": [], "runtime": [], "size": []}

    for name in files:
        if name != root and layer(name) not in RANK:
            found["layers"].append(f"{name} is in no layer of the layout ({', '.join(RANK)})")
    for e in internal:
        low, high = layer(e.source), layer(e.target)
        if high is None or low not in RANK or high not in RANK:
            continue  # the package root may be imported by anyone; unknown folders are reported above
        if high == "cli" and low != "cli":  # its own rule, so that each edge is named once
            found["cli"].append(f"{e}: only cli/ imports cli/")
        elif RANK[high] > RANK[low]:
            found["layers"].append(f"{e}: {low}/ may not import from {high}/, a higher layer")

    # `from . import name` in an __init__ is no edge; type-only imports make no circle (they never run),
    # though they count for the layers: a type from a higher layer still reaches up
    between = [e for e in internal if e.source != e.target and not e.type_only]
    lines = {(e.source, e.target): e.line for e in between}
    for cycle in circles(set(files), between):
        found["circles"].append("circle: " + ", ".join(
            str(Edge(a, b, lines[a, b])) for a, b in itertools.pairwise(cycle)))

    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    for e in edges:
        if e.source == RUNTIME and e.target.split(".")[0] not in stdlib | RUNTIME_ALLOWED:
            found["runtime"].append(f"{e}: the ONNX runtime must stay torch-free "
                                    f"(standard library, {', '.join(sorted(RUNTIME_ALLOWED))})")

    for name, path in files.items():
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_LINES:
            found["size"].append(f"{path.relative_to(package_dir.parent)}: {n} lines (at most {MAX_LINES})")
    return found


@pytest.fixture(scope="module")
def violations() -> dict[str, list[str]]:
    return layout_violations()


RULES = {
    "layers": "a module imports only from its own folder or lower ones (docs/development.md)",
    "circles": "no import circles between modules",
    "cli": "nothing outside cli/ imports cli/",
    "runtime": "seq2seq/deploy/runtime.py imports only the standard library, numpy, onnxruntime, sentencepiece",
    "size": f"no module above {MAX_LINES} lines",
}


@pytest.mark.parametrize("rule", RULES)
def test_layout(violations, rule):
    assert not violations[rule], f"{RULES[rule]}; broken by:\n  " + "\n  ".join(violations[rule])


def test_the_graph_sees_every_kind_of_import(tmp_path):
    """Top-level and in-function imports, absolute and relative (from a module and from a package's
    __init__), `from pkg import module` and `from pkg import name`; type-only imports make no circle."""
    pkg = tmp_path / "seq2seq"
    for rel, text in {"__init__.py": "", "data/__init__.py": "from .corpus import read\n",
                      "data/corpus.py": "import os\nfrom ..config import X\ndef read():\n    from .. import data\n",
                      "model/__init__.py": "",
                      "model/rnn.py": "from seq2seq.data import corpus\nfrom seq2seq.data import read\n",
                      "config.py": "import typing\nif typing.TYPE_CHECKING:\n    from .model import rnn\n"}.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    _, edges = import_graph(pkg)
    assert {(e.source, e.target, e.type_only) for e in edges if e.target != "typing"} == {
        ("seq2seq.config", "seq2seq.model.rnn", True)} | {(*pair, False) for pair in {
        ("seq2seq.data", "seq2seq.data.corpus"), ("seq2seq.data.corpus", "os"),
        ("seq2seq.data.corpus", "seq2seq.config"), ("seq2seq.data.corpus", "seq2seq.data"),
        ("seq2seq.model.rnn", "seq2seq.data.corpus"), ("seq2seq.model.rnn", "seq2seq.data")}}
    assert layout_violations(pkg)["circles"] == [
        "circle: seq2seq.data -> seq2seq.data.corpus (line 1), seq2seq.data.corpus -> seq2seq.data (line 4)"]


# Each mutation adds one bad line to a module of a copy of the package: (rule it breaks, file, line).
MUTATIONS = [
    ("layers", "data/corpus.py", "from seq2seq.training.loss import *  # data reaching up to training"),
    ("layers", "model/encoder.py", "def f():\n    from ..decoding import search  # in a function, relative"),
    ("layers", "data/corpus.py", "import typing\nif typing.TYPE_CHECKING:\n    from seq2seq.serving.app import Engine"),
    ("circles", "config.py", "import seq2seq.temporaries"),
    ("cli", "serving/app.py", "from seq2seq.cli import translate"),
    ("runtime", "deploy/runtime.py", "import torch"),
    ("runtime", "deploy/runtime.py", "from ..config import ConfigError"),
    ("size", "temporaries.py", "\n" * MAX_LINES),
]


@pytest.mark.parametrize("rule, file, line", MUTATIONS, ids=[f"{r}-{f}" for r, f, _ in MUTATIONS])
def test_each_rule_fails_on_a_mutated_copy(tmp_path, rule, file, line):
    """The checks are not vacuous: one bad import (or a too long module) in a copy of the package makes
    exactly its rule fail, naming the edge. (A circle needs two edges: the copy's temporaries.py also
    gets `import seq2seq.config`.)"""
    copy = tmp_path / PACKAGE.name
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "static"))
    before = layout_violations(copy)
    with open(copy / file, "a", encoding="utf-8") as f:
        f.write("\n" + line + "\n")
    if rule == "circles":
        with open(copy / "temporaries.py", "a", encoding="utf-8") as f:
            f.write("\nimport seq2seq.config\n")
    after = layout_violations(copy)
    new = {r: [v for v in after[r] if v not in before[r]] for r in after}
    assert new[rule], f"the {rule} rule missed: {line!r} in {file}"
    module = module_name(copy / file, copy)
    assert any(module in v or file in v for v in new[rule]), new[rule]
    assert not any(new[r] for r in new if r != rule), new


def test_the_slow_rule_names_objects_that_exist():
    """tests/conftest.py marks a test slow by the names of what it calls (SLOW_OBJECTS): a function that
    moved would silently put its training runs back into the fast tier."""
    import importlib

    from .conftest import SLOW_OBJECTS, _qualified

    for name in SLOW_OBJECTS:
        module, _, attr = name.rpartition(".")
        try:
            obj = importlib.import_module(name)
        except ImportError:
            obj = getattr(importlib.import_module(module), attr, None)
        assert obj is not None and _qualified(obj) == name, f"tests/conftest.py SLOW_OBJECTS: {name} is not there"
