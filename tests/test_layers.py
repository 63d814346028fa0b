"""The layer rule of ARCHITECTURE.md, checked by reading the sources (no build needed): every
module belongs to one layer, imports (and cimports) only from its own layer or lower ones, lazy
imports inside functions included, and no two modules import each other, directly or around a
cycle."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SPEC = Path(__file__).resolve().parent.parent / "spec"

#: Lowest first. A module belongs to the layer of the longest prefix naming it (a prefix names a
#: module and everything under it; "spec" alone is only the package's __init__).
LAYERS = [
    ("C declarations", ["spec._c", "spec._build_info"]),
    ("runtime", ["spec._runtime"]),
    ("drafters", ["spec.drafters"]),
    ("loop", ["spec._loop"]),
    ("Python API", ["spec", "spec.engine", "spec.sessions", "spec.models", "spec.testing",
                    "spec.ngram", "spec.divergence"]),
    ("jobs", ["spec.jobs", "spec.batch", "spec.ray"]),
    ("command line", ["spec.cli", "spec.__main__"]),
]

SOURCE_SUFFIXES = (".py", ".pyx", ".pxd", ".pyi")
# `from spec.x import a, b` / `from spec.x cimport (a, b)` / `import spec.x` / `cimport spec.x`
_FROM = re.compile(r"^[ \t]*from[ \t]+(spec(?:\.\w+)*)[ \t]+c?import[ \t]+(\([^)]*\)|[^\n]*)",
                   re.M)
_IMPORT = re.compile(r"^[ \t]*c?import[ \t]+([^\n]*)", re.M)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path = SPEC) -> dict[str, list[Path]]:
    """Every module of the package, with its source files (.pyx / .pxd / .pyi of one module)."""
    found: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix in SOURCE_SUFFIXES and "_lib" not in path.parts:
            found.setdefault(module_name(path, root), []).append(path)
    return found


def _names(text: str) -> list[str]:
    text = text.split("#", 1)[0].strip().strip("()")
    return [n.split(" as ")[0].strip() for n in text.replace("\n", " ").split(",") if n.strip()]


def _resolve(package: str, name: str, known) -> str:
    """``from package import name``: the submodule when there is one, else the package."""
    sub = f"{package}.{name}"
    return sub if sub in known or sub == "spec._build_info" else package


def imports(path: Path, known) -> set[str]:
    """The spec modules ``path`` imports or cimports, anywhere in the file."""
    text = path.read_text()
    found = set()
    if path.suffix in (".py", ".pyi"):
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.split(".")[0] == "spec")
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                if node.module.split(".")[0] == "spec":
                    found.update(_resolve(node.module, a.name, known) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level:
                raise AssertionError(f"{path}: relative import (spec uses absolute ones)")
        return found
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    for m in _FROM.finditer(code):
        found.update(_resolve(m.group(1), n, known) for n in _names(m.group(2)))
    for m in _IMPORT.finditer(code):
        found.update(n for n in _names(m.group(1)) if n.split(".")[0] == "spec")
    return found


def layer_of(module: str) -> int:
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            hit = module == p if p == "spec" else module == p or module.startswith(p + ".")
            if hit and len(p) > best_len:
                best, best_len = i, len(p)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS (tests/test_layers.py) "
                             f"and to ARCHITECTURE.md")
    return best


def graph(root: Path = SPEC) -> dict[str, set[str]]:
    mods = modules(root)
    return {m: set().union(*(imports(p, mods) for p in paths)) - {m} for m, paths in mods.items()}


def back_imports(g: dict[str, set[str]]) -> list[str]:
    bad = []
    for m, deps in sorted(g.items()):
        for d in sorted(deps):
            if layer_of(d) > layer_of(m):
                bad.append(f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} "
                           f"({LAYERS[layer_of(d)][0]})")
    return bad


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in g:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_every_module_is_in_a_layer():
    for m in modules():
        layer_of(m)


def test_no_module_imports_from_a_higher_layer():
    assert back_imports(graph()) == []


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_the_checker_sees_what_it_checks():
    g = graph()
    # a cimport in a .pxd, a lazy import inside a function, `from spec.x import submodule`
    assert "spec._runtime._handle" in g["spec._runtime._core"]
    assert "spec.engine" in g["spec.jobs.batch"]
    assert "spec.jobs.ray" in g["spec.jobs.ray_batch"]
    assert "spec.drafters.sessions._sessions" in g["spec.drafters._chain"]


@pytest.mark.parametrize("suffix, line", [
    (".py", "def f():\n    from spec.engine import Engine\n"),
    (".py", "from spec import cli\n"),
    (".pyx", "from spec._loop._verify cimport argmax\n"),
    (".pxd", "from spec.drafters._base cimport (\n    Drafter,\n)\n"),
])
def test_a_back_import_is_caught(tmp_path, suffix, line):
    """A copy of the package with one back-import added to a runtime module fails the check."""
    import shutil
    root = tmp_path / "spec"
    shutil.copytree(SPEC, root, ignore=shutil.ignore_patterns("*.so", "*.cpp", "_lib"))
    (root / "_runtime" / f"_added{suffix}").write_text(line)
    assert back_imports(graph(root)), line
