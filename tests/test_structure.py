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


# --------------------------------------------------------------------------- layers and one path per name (issue #34)

NETWORK_PACKAGES = ("segtool.model", "segtool.train", "segtool.infer", "segtool.unet")



def _top_level_names(path: Path) -> tuple[set[str], set[str]]:
    """(names a module defines, names it imports from other segtool modules), at module level."""
    defined: set[str] = set()
    imported: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    nodes = []
    for node in tree.body:
        nodes.append(node)
        if isinstance(node, (ast.If, ast.Try)):  # `if TYPE_CHECKING:`, `try: import ...`
            nodes += node.body + [n for handler in getattr(node, "handlers", []) for n in handler.body]
    for node in nodes:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.Assign):
            defined |= {n.id for target in node.targets for n in ast.walk(target) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            defined.add(node.target.id)
        elif isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("segtool")):
            imported |= {alias.asname or alias.name for alias in node.names}
    return defined, imported - defined


def _all_names(path: Path) -> list[str]:
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return [elt.value for elt in node.value.elts if isinstance(elt, ast.Constant)]
    return []


def test_the_unet_package_is_gone():
    """The network code lives in model/, train/, infer/ (split by job); nothing imports ``segtool.unet``."""
    assert not (PACKAGE / "unet").exists()
    stale = [f"{path.relative_to(PACKAGE.parent)}:{line}: {module}"
             for name, path in _modules().items() for module, _, line in _imports(name, path)
             if module == "segtool.unet" or module.startswith("segtool.unet.")]
    assert not stale, "\n".join(stale)


def test_pipeline_knows_the_network_only_as_callables():
    """``pipeline`` (stages and schedules) imports nothing of the network packages, lazily or not."""
    graph = _import_graph()
    assert "segtool.pipeline.tiling" in graph["segtool.pipeline.options"]  # the walk sees pipeline's own imports
    up = [f"{name} -> {target}" for name, targets in graph.items() if name.startswith("segtool.pipeline")
          for target in targets if target.startswith(NETWORK_PACKAGES)]
    assert not up, "\n".join(sorted(up))


def _reachable(graph: dict[str, set[str]], package: str) -> dict[str, str]:
    """Every module the modules of ``package`` import, directly or through others: {module: one importer}."""
    seen: dict[str, str] = {}
    todo = [name for name in graph if name == package or name.startswith(package + ".")]
    while todo:
        name = todo.pop()
        for target in graph[name]:
            if target not in seen:
                seen[target] = name
                todo.append(target)
    return seen


#: Layers point down (ARCHITECTURE.md, "Packages"): each package and what it may not reach, even through others.
LAYERS = {
    "segtool.model": ("segtool.train", "segtool.infer", "segtool.pipeline"),
    "segtool.infer": ("segtool.train",),
}


def test_network_layers_point_down():
    """``model`` (the network and its file) reaches nothing of train/infer/pipeline; ``infer`` nothing of train."""
    graph = _import_graph()
    assert "segtool.model.config" in _reachable(graph, "segtool.train")  # the walk follows imports
    up = [f"{package} -> {target} (imported by {importer})"
          for package, above in LAYERS.items() for target, importer in _reachable(graph, package).items()
          if target.startswith(above)]
    assert not up, "\n".join(sorted(up))


def test_no_module_re_exports_another_modules_names():
    """Every public name has one import path: the module that defines it.

    A module's ``__all__`` lists only names it defines, and ``from segtool.x import y`` takes ``y`` from the module
    that defines it (or ``y`` is a submodule of the package ``x``), not from one that merely imported it: in the
    package, and in the tests and benchmarks that import it.
    """
    modules = _modules()
    found = []
    for name, path in modules.items():
        defined, imported = _top_level_names(path)
        found += [f"{name}: __all__ lists {n}, imported from another module" for n in _all_names(path)
                  if n in imported]
    homes = {name: _top_level_names(path) for name, path in modules.items()}
    importers = dict(modules)
    for folder in ("tests", "bench"):
        importers |= {f"{folder}.{p.stem}": p for p in sorted((PACKAGE.parent / folder).rglob("*.py"))}
    for name, path in importers.items():
        for module, names, line in _imports(name, path):
            if module not in homes:
                continue
            _, only_imported = homes[module]
            found += [f"{path.relative_to(PACKAGE.parent)}:{line}: {n} is imported from {module}, which only "
                      f"imports it" for n in names if n in only_imported and f"{module}.{n}" not in modules]
    assert not found, "\n".join(found)


def test_the_re_export_rule_sees_a_re_export(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("from segtool.errors import InputError\n__all__ = ['InputError', 'f']\ndef f():\n    pass\n")
    defined, imported = _top_level_names(module)
    assert (defined, imported) == ({"__all__", "f"}, {"InputError"})
    assert _all_names(module) == ["InputError", "f"]
