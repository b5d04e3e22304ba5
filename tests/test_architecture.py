"""The import graph is the architecture picture: layers only go down, and nothing goes round.

Layers (docs/architecture.md): the CLIs -> ``alignprop/`` -> ``rewards/`` -> ``common/``.
A module may import its own layer or a lower one, at module level only: function-level
imports are for heavy third-party packages, never to hide a circle between our modules.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"common": 0, "rewards": 1, "alignprop": 2}
CLIS = ("alignprop_fluxkontext", "internvl_scorer", "benchmark_anti_periodic")
OURS = set(PACKAGES) | set(CLIS)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    found.update({name: ROOT / f"{name}.py" for name in CLIS})
    return found


def _layer(module: str) -> int:
    top = module.split(".")[0]
    return PACKAGES.get(top, 3)


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] not in OURS:
        return []
    # `from pkg import submodule` imports the submodule too
    known = _modules()
    return [target] + [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]


def _imports(module: str, path: Path):
    """(target module, at module level?, line) for every import of one of our modules."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top_level = set()
    for stmt in tree.body:  # module body, and the bodies of top-level if/try blocks
        top_level.add(id(stmt))
        if isinstance(stmt, (ast.If, ast.Try)):
            for block in (stmt.body, getattr(stmt, "orelse", []), getattr(stmt, "finalbody", []),
                          *[h.body for h in getattr(stmt, "handlers", [])]):
                top_level.update(id(s) for s in block)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            targets = _resolve(node, module, path.name == "__init__.py")
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names if a.name.split(".")[0] in OURS]
        else:
            continue
        out += [(t, id(node) in top_level, node.lineno) for t in targets]
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        graph[name] = {t if t in modules else t.rsplit(".", 1)[0]
                       for t, _, _ in _imports(name, path)} - {name}
    return graph


def test_imports_only_go_down():
    upward = []
    for name, path in _modules().items():
        for target, _, line in _imports(name, path):
            if _layer(target) > _layer(name) or (_layer(name) == 3 and target in CLIS):
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def test_no_function_level_imports_of_our_modules():
    hidden = [f"{path.relative_to(ROOT)}:{line} imports {target} inside a function"
              for name, path in _modules().items()
              for target, top, line in _imports(name, path) if not top]
    assert not hidden, ("our own modules are imported at module level (function-level imports "
                        "are for heavy third-party packages):\n" + "\n".join(hidden))


def test_no_import_circles():
    graph = _graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
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
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import circles: {cycles}"


def test_the_checker_sees_a_planted_violation(tmp_path):
    """The checks above can fail: a function-level import of a higher layer is found."""
    path = tmp_path / "planted.py"
    path.write_text("def f():\n    from alignprop.trainer import train\n")
    found = _imports("common.planted", path)
    assert found == [("alignprop.trainer", False, 2)]
    assert _layer("alignprop.trainer") > _layer("common.planted")
