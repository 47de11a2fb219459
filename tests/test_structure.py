"""The package's structure: no import cycle, no private names across modules.

Read from the source with :mod:`ast`, so nothing is imported: every
``import`` statement counts, at module level and inside functions (a lazy
import still ties two modules together).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "segtool"
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import of segtool in ``path``."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((module, [alias.name for alias in node.names], node.lineno))
    return [item for item in found if item[0] == "segtool" or item[0].startswith("segtool.")]


def _import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for module, names, _ in _imports(name, path):
            targets = {module} | {f"{module}.{n}" for n in names}  # ``from pkg import submodule``
            graph[name] |= {target for target in targets if target in modules and target != name}
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_lazy_and_relative_imports(tmp_path):
    graph = _import_graph()
    # tasks/baseline.py imports segtool.baseline inside a function only.
    assert "segtool.baseline" in graph["segtool.tasks.baseline"]
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_segtool_has_no_import_cycle():
    cycle = _find_cycle(_import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_private_name_is_imported_across_modules():
    crossings = []
    for name, path in _modules().items():
        for module, names, line in _imports(name, path):
            if module == name:
                continue
            crossings += [
                f"{path.relative_to(PACKAGE.parent)}:{line}: from {module} import {n}"
                for n in names
                if n.startswith("_") and not n.startswith("__")
            ]
    assert not crossings, "\n".join(crossings)


def test_no_module_is_over_the_line_limit():
    """Small modules with one job: none over MAX_LINES lines (issue #23)."""
    counts = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in _modules().items()}
    assert len(counts) > 50  # the walk found the package
    large = sorted(((n, name) for name, n in counts.items() if n > MAX_LINES), reverse=True)
    assert not large, "modules over the limit: " + ", ".join(f"{name} ({n})" for n, name in large)

def _module_level_imports(path: Path) -> set[str]:
    """Every module imported at module level (not in functions, not under ``if TYPE_CHECKING``)."""
    found: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8"), filename=str(path)).body:
        nodes = [node] + (node.body + node.handlers[0].body if isinstance(node, ast.Try) and node.handlers else [])
        for n in nodes:
            if isinstance(n, ast.Import):
                found |= {alias.name for alias in n.names}
            elif isinstance(n, ast.ImportFrom) and n.module and not n.level:
                found |= {n.module} | {f"{n.module}.{alias.name}" for alias in n.names}
    return found


def test_the_cli_imports_no_torch_at_module_level():
    """``segtool --help`` and the commands without a network start without torch (issue #40).

    Walks the modules ``segtool.cli`` imports at module level, transitively (a module's packages
    included); none may import torch there: commands that need it import it inside the function.
    """
    modules = _modules()
    seen: dict[str, str | None] = {"segtool.cli": None}
    todo = ["segtool.cli"]
    offenders = []
    while todo:
        name = todo.pop()
        imported = _module_level_imports(modules[name])
        if any(m == "torch" or m.startswith("torch.") for m in imported):
            chain, step = [name], seen[name]
            while step:
                chain.append(step)
                step = seen[step]
            offenders.append(" <- ".join(chain))
        for module in imported:
            parts = module.split(".")
            for i in range(1, len(parts) + 1):
                parent = ".".join(parts[:i])
                if parent in modules and parent not in seen:
                    seen[parent] = name
                    todo.append(parent)
    assert len(seen) > 20  # the walk followed the CLI's imports
    assert not offenders, "torch imported at module level by: " + "; ".join(offenders)
