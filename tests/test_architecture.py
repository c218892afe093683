"""The shape of the package holds: imports form layers (no module imports one that imports it
back, directly or not), no module reaches for another's private names, and only the command
line picks an engine."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "acp"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _exists(module: str) -> bool:
    base = ROOT.joinpath(*module.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _imports(path: Path) -> Iterator[tuple[str, list[str]]]:
    """``(module, names)`` of every import of an ``acp`` module in ``path``, wherever it
    stands (inside functions too: a lazy import is still a dependency)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "acp":
                    yield alias.name, []
        elif (isinstance(node, ast.ImportFrom) and node.module and node.level == 0
              and node.module.split(".")[0] == "acp"):
            yield node.module, [alias.name for alias in node.names]


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        source = _module_name(path)
        targets = graph.setdefault(source, set())
        for module, names in _imports(path):
            found = {f"{module}.{n}" for n in names if _exists(f"{module}.{n}")}
            if not found or len(found) < len(names):
                found.add(module)
            targets.update(found - {source})
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_cycle() -> None:
    graph = _graph()
    assert "acp.generate.run" in graph and "acp.runfolder" in graph  # the walk found the package
    assert _cycles(graph) == []


def test_a_cycle_is_found() -> None:
    """The check above can fail: a made-up loop is reported."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("folder", ["acp", "tests", "bench"])
def test_no_module_imports_another_modules_private_names(folder: str) -> None:
    private = [
        f"{path.relative_to(ROOT)}: {module}.{name}"
        for path in (ROOT / folder).rglob("*.py")
        for module, names in _imports(path)
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert private == []


def test_only_the_command_line_names_ray_or_picks_an_engine() -> None:
    """The Ray engine is chosen by ``acp generate``'s command line (or a library user) and
    passed in; nothing below the CLI imports it, nor ray itself outside the engine."""
    naming = sorted({
        _module_name(path) for path in PACKAGE.rglob("*.py")
        for module, _ in _imports(path) if module == "acp.generate.ray"
    })
    assert naming == ["acp.cli.generate"]
    ray_users = sorted(
        _module_name(path) for path in PACKAGE.rglob("*.py")
        if any(isinstance(node, ast.Import | ast.ImportFrom)
               and any((getattr(node, "module", None) or alias.name).split(".")[0] == "ray"
                       for alias in node.names)
               for node in ast.walk(ast.parse(path.read_text())))
    )
    assert ray_users == ["acp.generate.ray"]
