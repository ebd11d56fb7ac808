"""`trustplane identity` commands that work on the local store: init, new-kek, import."""

from __future__ import annotations

import json
from pathlib import Path

from tests.identity.test_keys import _ca
from tests.support import run_cli


def env_for(tmp_path: Path) -> dict[str, str]:
    return {
        "TRUSTPLANE_STATE_DIR": str(tmp_path / "state"),
        "TRUSTPLANE_IDENTITY__KEK_FILE": str(tmp_path / "kek"),
        "TRUSTPLANE_IDENTITY__TRUST_DOMAIN": "example.test",
    }


def test_init_creates_keys_once_and_import_prepares_the_next(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    assert run_cli("identity", "new-kek", "--out", str(tmp_path / "kek"), env=env).returncode == 0
    assert run_cli("init", env=env).returncode == 0  # creates the trust domain's keys too
    again = run_cli("identity", "init", "--json", env=env)
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    assert doc["created"] == [] and sorted(k["kind"] for k in doc["keys"]) == ["jwt", "x509"]
    key_pem, cert_pem = _ca()
    (tmp_path / "ca.key").write_bytes(key_pem)
    (tmp_path / "ca.pem").write_bytes(cert_pem)
    imported = run_cli(
        "identity",
        "import",
        "--key",
        str(tmp_path / "ca.key"),
        "--cert",
        str(tmp_path / "ca.pem"),
        "--json",
        env=env,
    )
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["state"] == "prepared"


def test_identity_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    run_cli("identity", "new-kek", "--out", str(tmp_path / "kek"), env=env)
    assert run_cli("init", env=env).returncode == 0
    (tmp_path / "kek").chmod(0o644)
    refused = run_cli("identity", "init", env=env)
    assert refused.returncode == 2
    assert "mode 0644" in refused.stderr and "Traceback" not in refused.stderr
    (tmp_path / "kek").chmod(0o600)
    (tmp_path / "bad.pem").write_text("nonsense")
    bad = run_cli("identity", "import", "--key", str(tmp_path / "bad.pem"), env=env)
    assert bad.returncode == 2 and "not an unencrypted PEM key" in bad.stderr
    missing = run_cli("identity", "import", "--key", str(tmp_path / "nope.pem"), env=env)
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    again = run_cli("identity", "new-kek", "--out", str(tmp_path / "kek"), env=env)
    assert again.returncode == 2 and "never overwritten" in again.stderr
    assert all("Traceback" not in r.stderr for r in (bad, missing, again))
