"""The Workload API modules in `identity/workload_api_pb/` are what `scripts/gen-protos.sh`
generates from the vendored workload.proto, and they share a process with the `spiffe`
client library's own copy of the same definitions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path("trustplane/identity/workload_api_pb")
GENERATED = ("workload_pb2.py", "workload_pb2.pyi", "workload_pb2_grpc.py")


def test_regenerating_the_stubs_reproduces_the_committed_files(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(ROOT / "scripts/gen-protos.sh"), str(tmp_path)],
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for name in GENERATED:
        committed = (ROOT / "src" / PACKAGE / name).read_text()
        regenerated = (tmp_path / PACKAGE / name).read_text()
        assert regenerated == committed, f"{name} is stale: run scripts/gen-protos.sh"


def test_the_stubs_and_the_spiffe_library_load_in_one_process() -> None:
    """workload.proto has no package: in protobuf's default pool, a second copy of its
    messages is refused ("duplicate symbol"). Ours are in a pool of their own."""
    code = (
        "from trustplane.identity.workload_api_pb import workload_pb2 as ours\n"
        "from spiffe._proto import workload_pb2 as theirs\n"
        "r = ours.ValidateJWTSVIDResponse(spiffe_id='spiffe://d/w')\n"
        "r.claims.update({'aud': ['x']})\n"
        "back = theirs.ValidateJWTSVIDResponse.FromString(r.SerializeToString())\n"
        "print(back.spiffe_id, list(back.claims['aud']))\n"
    )
    for order in (code, "import spiffe\n" + code):
        done = subprocess.run(
            [sys.executable, "-c", order], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == "spiffe://d/w ['x']\n"
