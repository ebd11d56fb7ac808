"""The folder tree is the architecture: dependencies between planes point inward.

Every `import trustplane.x…` in src/ (module-level or inside a function alike) is an arrow from
the importing package to `x`. No plane may import the composition layers (`server/`, `cli/`),
and the packages form no cycle. `pytest tests/test_architecture.py -q` checks it.
"""

from __future__ import annotations

import ast
import itertools
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "trustplane"
COMPOSITION = {"server", "cli", "__main__"}


def _package_of(path: Path) -> str:
    relative = path.relative_to(SRC)
    return relative.parts[0].removesuffix(".py") if len(relative.parts) > 1 else relative.stem


def import_graph() -> dict[str, dict[str, list[str]]]:
    """package → imported package → the files that import it."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(SRC.rglob("*.py")):
        source = _package_of(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                parts = name.split(".")
                if parts[0] == "trustplane" and len(parts) > 1 and parts[1] != source:
                    graph[source][parts[1]].append(str(path.relative_to(SRC)))
    return graph


def _cycle(graph: dict[str, dict[str, list[str]]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_plane_imports_the_server_or_the_cli() -> None:
    graph = import_graph()
    arrows = [
        f"{source} → {target} ({', '.join(sorted(set(files)))})"
        for source, targets in sorted(graph.items())
        if source not in COMPOSITION
        for target, files in sorted(targets.items())
        if target in COMPOSITION
    ]
    assert not arrows, "planes must not depend on the composition layers:\n" + "\n".join(arrows)


def test_packages_form_no_cycle() -> None:
    graph = import_graph()
    cycle = _cycle(graph) or []
    hops = [f"{a} → {b} ({graph[a][b][0]})" for a, b in itertools.pairwise(cycle)]
    assert not cycle, "import cycle between packages:\n" + "\n".join(hops)


def test_the_checker_sees_a_cycle_and_an_inward_arrow() -> None:
    """The checks above can fail: a graph with a cycle is reported, one without is not."""
    assert _cycle({"a": {"b": ["a.py"]}, "b": {"a": ["b.py"]}}) == ["a", "b", "a"]
    assert _cycle({"a": {"b": ["a.py"]}, "b": {}}) is None
    assert "server" in import_graph()["enforcement"] or "decision" in import_graph()["enforcement"]
