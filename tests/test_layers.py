"""The package's shape: imports go only down the layers of docs/ARCHITECTURE.md, no import circles
(imports inside functions included), no file over 500 lines, no function over 80 lines.

Read with the standard library's ``ast``; nothing of aigc is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "aigc"

# Lowest first. A module may import from its own layer and the ones below it, never from above.
LAYERS = [
    ("base", ["aigc.errors", "aigc.atomic", "aigc.version", "aigc.runtime", "aigc.folders"]),
    ("models", ["aigc.models"]),
    ("config", ["aigc.config"]),
    ("data", ["aigc.data"]),
    ("formats", ["aigc.formats"]),
    ("generate", ["aigc.generate"]),
    ("evaluate", ["aigc.evaluate"]),
    ("train", ["aigc.train"]),
    ("serve", ["aigc.serve"]),
    ("api", ["aigc.api"]),
    ("cli", ["aigc.cli", "aigc.__main__", "aigc"]),  # `aigc` itself: the package __init__ re-exports the API
]
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80
LONG_FUNCTIONS: dict[str, str] = {}  # "module:function" -> why it stays long


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package under ``root``."""
    out = {}
    for f in sorted((root / "aigc").rglob("*.py")):
        parts = f.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The aigc modules that module ``name`` imports anywhere in its file (functions included)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def layer_of(name: str) -> int:
    """Index in LAYERS of the layer holding module ``name`` (the longest matching prefix)."""
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    if rank is None:
        raise AssertionError(f"{name} belongs to no layer; add it to LAYERS (and to docs/ARCHITECTURE.md)")
    return rank


def upward_imports(root: Path = ROOT) -> list[str]:
    """'a imports b' lines for every import from a higher layer."""
    known = modules(root)
    bad = []
    for name, path in known.items():
        for target in sorted(imports(name, path, known)):
            if layer_of(target) > layer_of(name):
                bad.append(f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})")
    return bad


def circles(root: Path = ROOT) -> list[list[str]]:
    """Strongly connected components of more than one module in the import graph (Tarjan)."""
    known = modules(root)
    graph = {n: imports(n, p, known) for n, p in known.items()}
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_imports_only_go_down_the_layers():
    bad = upward_imports()
    assert not bad, "imports from a higher layer:\n" + "\n".join(bad)


def test_no_import_circles():
    found = circles()
    assert not found, "import circles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_files_and_functions_stay_small():
    too_long = []
    for name, path in modules().items():
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_FILE_LINES:
            too_long.append(f"{path.relative_to(ROOT)}: {len(text.splitlines())} lines (> {MAX_FILE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES and f"{name}:{node.name}" not in LONG_FUNCTIONS:
                    too_long.append(f"{name}:{node.name}: {lines} lines (> {MAX_FUNCTION_LINES})")
    assert not too_long, "\n".join(too_long)


def test_every_layer_package_states_its_contract():
    """Each layer's package (or module) opens with a docstring saying what it knows and must not know."""
    for _, prefixes in LAYERS:
        for p in prefixes:
            path = PACKAGE.parent / (p.replace(".", "/") + ".py")
            if not path.is_file():
                path = PACKAGE.parent / p.replace(".", "/") / "__init__.py"
            if not path.is_file():
                continue
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
            assert doc.strip(), f"{path.relative_to(ROOT)}: no docstring stating the layer's contract"
