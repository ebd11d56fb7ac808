"""What the audit trail needs is asked for before the CLI calls anything: a missing --reason or
--notes is a usage error even when the id would first need resolving on the server."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import run_cli


@pytest.mark.parametrize(
    "args",
    [
        ("access", "deny", "3b9e"),
        ("access", "revoke", "3b9e"),
        ("exceptions", "revoke", "3b9e"),
        ("break-glass", "review", "3b9e"),
    ],
    ids=" ".join,
)
def test_a_missing_reason_is_refused_before_any_call(tmp_path: Path, args: tuple[str, ...]) -> None:
    env = {
        "TRUSTPLANE_STATE_DIR": str(tmp_path),
        "TRUSTPLANE_CLI__SERVER_URL": "http://127.0.0.1:9",  # nothing listens: no call may go out
        "TRUSTPLANE_CLI__ADMIN_TOKEN": "unused",
    }
    result = run_cli(*args, env=env)
    assert result.returncode == 2, result.stderr
    assert "is required: it is what the audit trail shows" in result.stderr
    assert "cannot reach" not in result.stderr
