"""Print the project's import graph and fail on a cycle.

    python tools/import_graph.py          # edges, one module a line, then "no cycle" (exit 0) or the cycles (exit 1)

Every ``import``/``from ... import`` of a project module counts, at module level or inside a
function (a lazy import closes a cycle just the same). Project modules are the ``f5worker``
package and the entry points at the repository root.

Written with ``ast`` rather than grimp/import-linter: grimp cannot load the single-file entry
points at the root (``NotATopLevelModule``), and import-linter 2.17 needs rich>=14.2 while
cached_path (bench's upstream baseline) pins rich<14.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "f5worker"


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """Module name -> source file, for the package (its subpackages too) and the root entry points."""
    modules = {path.stem: path for path in root.glob("*.py")}
    for path in (root / PACKAGE).rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_names(path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """Every module name ``path`` imports, ``from pkg import module`` counted as ``pkg.module``."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # ``from pkg import module`` imports pkg.module; otherwise the module itself
                yield f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    modules = project_modules(root)
    return {name: {m for m in imported_names(path, modules) if m in modules and m != name}
            for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while (top := stack.pop()) != node:
                component.append(top)
            component.append(node)
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def main() -> int:
    graph = import_graph()
    for name in sorted(graph):
        print(f"{name} -> {', '.join(sorted(graph[name])) or '(nothing of ours)'}")
    found = cycles(graph)
    for component in found:
        print("CYCLE: " + " <-> ".join(component))
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} imports, "
          + ("no cycle" if not found else f"{len(found)} cycle(s)"))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
