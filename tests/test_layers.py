"""The package's structure, enforced: layers import only from below, no cycles, no private names across modules.

Layers, bottom to top (``docs/architecture.md``)::

    core -> targets, tsu -> engine -> runs -> analysis -> experiments -> api -> cli

``targets`` and ``tsu`` share a level and do not import each other.  The
package root (``thermospec/__init__.py``) exports the public names of ``core``
and ``tsu`` and the notebook API; any module may read ``__version__`` from it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "thermospec"
LEVEL = {"core": 0, "targets": 1, "tsu": 1, "engine": 2, "runs": 3, "analysis": 4, "experiments": 5, "api": 6, "cli": 7,
         "__main__": 8}  # python -m thermospec: the thermospec command, above every layer
MAX_LINES = 450
# The one function-local import of the package: the optional compiled kernel, loaded on first use.
LOCAL_IMPORT_ALLOWED = {
    ("thermospec.engine.kernels", "thermospec.engine"),
    ("thermospec", "thermospec"),  # the root's lazy `thermospec.run` & co. (keeps `import thermospec` light)
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports(module: str) -> list[tuple[str, list[str], bool]]:
    """(imported module, names, at module level) of every ``from thermospec... import`` of `module`."""
    tree = ast.parse(MODULES[module].read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "thermospec":
            found.append((node.module, [a.name for a in node.names], id(node) in top))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "thermospec":
                    found.append((alias.name, [], id(node) in top))
    return found


def test_every_module_belongs_to_a_layer() -> None:
    stray = [m for m in MODULES if m != "thermospec" and layer(m) not in LEVEL]
    assert not stray, f"modules outside the layers: {stray}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "thermospec"))
def test_imports_only_from_below(module: str) -> None:
    mine = layer(module)
    for target, names, _ in imports(module):
        if target == "thermospec":
            assert names == ["__version__"], f"{module} imports {names} from the package root"
            continue
        other = layer(target)
        assert other in LEVEL, f"{module} imports the unknown module {target}"
        assert other == mine or LEVEL[other] < LEVEL[mine], f"{module} ({mine}) imports {target} ({other}) from above"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_function_local_imports_of_the_package(module: str) -> None:
    local = [t for t, _, top in imports(module) if not top and (module, t) not in LOCAL_IMPORT_ALLOWED]
    assert not local, f"{module} imports {local} inside a function: import at the top (a cycle means a layer is wrong)"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_names_across_modules(module: str) -> None:
    for target, names, _ in imports(module):
        private = [n for n in names if n.startswith("_") and n not in ("__version__", "_kernels")]
        assert not private, f"{module} imports private {private} from {target}"


def test_no_import_cycle() -> None:
    graph = {m: {t for t, _, _ in imports(m) if t in MODULES and t != "thermospec"} for m in MODULES}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(nxt):], nxt]))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_small(module: str) -> None:
    lines = MODULES[module].read_text().count("\n")
    assert lines <= MAX_LINES, f"{module} has {lines} lines (at most {MAX_LINES}): split it along a concept"


def test_core_needs_only_numpy() -> None:
    allowed = {"numpy", "scipy", "__future__", "thermospec"}
    import sys

    for module, path in MODULES.items():
        if layer(module) != "core":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            roots = []
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                roots = [node.module.split(".")[0]]
            bad = [r for r in roots if r not in allowed and r not in sys.stdlib_module_names]
            assert not bad, f"{module} imports {bad}: core is NumPy (and SciPy's special functions) only"
