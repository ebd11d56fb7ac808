"""The folder tree is the architecture: dependencies between planes point inward.

The checks live in `scripts/import-graph.py` (run it to see the whole package graph and the
verdict); this test runs them, so the suite fails on an arrow from a plane into `server/` or
`cli/`, or on a cycle between packages.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "import-graph.py"


def _checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


checker = _checker()


def test_no_plane_imports_the_server_or_the_cli() -> None:
    arrows = checker.inward_violations(checker.import_graph())
    assert arrows == [], "planes must not depend on the composition layers:\n" + "\n".join(arrows)


def test_packages_form_no_cycle() -> None:
    graph = checker.import_graph()
    cycle = checker.find_cycle(graph) or []
    hops = checker.describe_cycle(graph, cycle) if cycle else []
    assert cycle == [], "import cycle between packages:\n" + "\n".join(hops)


def test_the_checker_sees_cycles_inward_arrows_and_relative_imports(tmp_path: Path) -> None:
    """The checks above can fail: made-up trees with each violation are reported."""
    assert checker.find_cycle({"a": {"b": ["a.py"]}, "b": {"a": ["b.py"]}}) == ["a", "b", "a"]
    assert checker.find_cycle({"a": {"b": ["a.py"]}, "b": {}}) is None
    tree = {
        "decision/point.py": "from trustplane.server import app\n",
        "decision/typed.py": "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from trustplane.cli.common import emit\n",
        "posture/engine.py": "from ..telemetry import metrics\n",
        "telemetry/metrics.py": "def f():\n    import trustplane.posture.engine\n",
        "server/app.py": "from trustplane.decision import point\n",
    }
    for name, text in tree.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = checker.import_graph(tmp_path)
    assert checker.inward_violations(graph) == [
        "decision → cli (decision/typed.py)",
        "decision → server (decision/point.py)",
    ]
    assert checker.find_cycle(graph) == ["decision", "server", "decision"]
    assert graph["posture"]["telemetry"] == ["posture/engine.py"], "relative import resolved"
    assert graph["telemetry"]["posture"] == ["telemetry/metrics.py"], "import inside a function"


def test_the_command_prints_the_graph_and_its_verdict() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("enforcement ") and "decision" in line for line in lines)
    assert lines[-1].endswith("no arrow from a plane into server/ or cli/, no cycle")
    dot = subprocess.run(
        [sys.executable, str(SCRIPT), "--dot"], capture_output=True, text=True, timeout=60
    )
    assert dot.stdout.startswith("digraph trustplane {"), textwrap.shorten(dot.stdout, 200)
    assert '"server" -> "decision";' in dot.stdout
