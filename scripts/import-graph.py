#!/usr/bin/env python3
"""Print trustplane's package import graph and check that dependencies point inward.

    python scripts/import-graph.py          the graph, then the verdict (exit 1 on a violation)
    python scripts/import-graph.py --dot    the graph in Graphviz dot (| dot -Tsvg > graph.svg)

Every `import trustplane.x…` in src/trustplane (module level, inside a function or under
TYPE_CHECKING alike, relative imports resolved) is an arrow from the importing package to `x`;
a top-level module (`config.py`, `model.py` …) is a package of its own. Two rules:

- no plane imports a composition layer (`server/`, `cli/`, `__main__`);
- the packages form no cycle.

`tests/test_architecture.py` runs the same checks (it loads this file), so the suite fails on
the first violation; this script is the same verdict with the whole graph in view.
"""

from __future__ import annotations

import ast
import itertools
import sys
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "trustplane"
COMPOSITION = frozenset({"server", "cli", "__main__"})

Graph = dict[str, dict[str, list[str]]]  # package → imported package → importing files


def _package_of(path: Path, src: Path) -> str:
    relative = path.relative_to(src)
    return relative.parts[0].removesuffix(".py") if len(relative.parts) > 1 else relative.stem


def _imported(node: ast.AST, module: list[str]) -> list[str]:
    """Absolute dotted names imported by `node`, in the file whose dotted path is `module`."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level == 0:
            return [node.module] if node.module else []
        base = module[: len(module) - node.level]  # `from .x` in a/b.py → a.x
        if node.module:
            return [".".join([*base, node.module])]
        return [".".join([*base, alias.name]) for alias in node.names]
    return []


def import_graph(src: Path = SRC) -> Graph:
    """package → imported package → the files (relative to src/trustplane) that import it."""
    graph: Graph = defaultdict(lambda: defaultdict(list))
    for path in sorted(src.rglob("*.py")):
        source = _package_of(path, src)
        module = ["trustplane", *path.relative_to(src).with_suffix("").parts]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for name in _imported(node, module):
                parts = name.split(".")
                if parts[0] == "trustplane" and len(parts) > 1 and parts[1] != source:
                    graph[source][parts[1]].append(str(path.relative_to(src)))
    return graph


def inward_violations(graph: Graph) -> list[str]:
    """Every arrow from a plane into a composition layer, with the files that draw it."""
    return [
        f"{source} → {target} ({', '.join(sorted(set(files)))})"
        for source, targets in sorted(graph.items())
        if source not in COMPOSITION
        for target, files in sorted(targets.items())
        if target in COMPOSITION
    ]


def find_cycle(graph: Graph | dict[str, dict[str, list[str]]]) -> list[str] | None:
    """One cycle as [a, b, …, a], or None (depth-first, in name order: stable output)."""
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


def describe_cycle(graph: Graph, cycle: list[str]) -> list[str]:
    return [f"{a} → {b} ({graph[a][b][0]})" for a, b in itertools.pairwise(cycle)]


def main(argv: list[str]) -> int:
    graph = import_graph()
    packages = sorted(set(graph) | {t for targets in graph.values() for t in targets})
    if "--dot" in argv:
        print("digraph trustplane {")
        for source in packages:
            for target in sorted(graph.get(source, {})):
                print(f'  "{source}" -> "{target}";')
        print("}")
    else:
        width = max(map(len, packages))
        for source in packages:
            print(f"{source:<{width}} → {', '.join(sorted(graph.get(source, {}))) or '-'}")
        print()
    problems = inward_violations(graph)
    cycle = find_cycle(graph)
    out = sys.stderr if "--dot" in argv else sys.stdout
    for arrow in problems:
        print(f"plane imports a composition layer: {arrow}", file=out)
    if cycle:
        print("import cycle between packages:", *describe_cycle(graph, cycle), sep="\n  ", file=out)
    if problems or cycle:
        return 1
    print(
        f"{len(packages)} packages: no arrow from a plane into server/ or cli/, no cycle",
        file=out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
