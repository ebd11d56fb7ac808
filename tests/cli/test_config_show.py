"""`trustplane config show`: every setting's effective value with its origin (default, file,
environment, command line), credentials masked, through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from tests.support import TRUSTPLANE

SECRET_TOKEN = "tpa_do-not-print-me"
SECRET_KEK = "c2VjcmV0LWtlay1ieXRlcy0xMjM0NTY3ODkwMTIzNDU2"
DB_PASSWORD = "hunter2"


def config_show(
    tmp_path: Path, *args: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("TRUSTPLANE_")}
    return subprocess.run(
        [*TRUSTPLANE, *args],
        env={**clean, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_each_value_says_where_it_came_from_and_secrets_never_show(tmp_path: Path) -> None:
    config = tmp_path / "site.toml"
    config.write_text(
        '[ledger]\ndurability = "sync"\nflush_interval_ms = 20\n'
        '[governance]\nwebhook_url = "https://hooks.slack.com/services/T0/B0/XYZsecret"\n'
    )
    env = {
        "TRUSTPLANE_LEDGER__FLUSH_INTERVAL_MS": "30",
        "TRUSTPLANE_STORE__URL": f"postgresql://tp:{DB_PASSWORD}@db.internal:5432/tp",
        "TRUSTPLANE_CLI__ADMIN_TOKEN": SECRET_TOKEN,
        "TRUSTPLANE_IDENTITY__KEK": SECRET_KEK,
    }
    done = config_show(
        tmp_path, "--config", str(config), "--state-dir", "st", "config", "show", "--json", env=env
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    settings: dict[str, Any] = doc["settings"]
    assert doc["config_file"] == str(config)
    assert settings["ledger.durability"] == {
        "value": "sync",
        "origin": f"file {config}",
        "env": "TRUSTPLANE_LEDGER__DURABILITY",
    }
    assert settings["ledger.flush_interval_ms"]["value"] == 30
    assert settings["ledger.flush_interval_ms"]["origin"] == (
        "environment TRUSTPLANE_LEDGER__FLUSH_INTERVAL_MS"
    )
    assert settings["state_dir"] == {
        "value": "st",
        "origin": "command line",
        "env": "TRUSTPLANE_STATE_DIR",
    }
    assert settings["server.port"]["value"] == 8181
    assert settings["server.port"]["origin"] == "default"
    assert settings["store.url"]["value"] == "postgresql://tp:********@db.internal:5432/tp"
    assert settings["cli.admin_token"]["value"] == "********"
    assert settings["identity.kek"]["value"] == "********"
    assert settings["governance.webhook_url"]["value"] == "https://hooks.slack.com/********"
    for secret in (SECRET_TOKEN, SECRET_KEK, DB_PASSWORD, "XYZsecret"):
        assert secret not in done.stdout


def test_the_readable_form_lists_sections_and_origins(tmp_path: Path) -> None:
    env = {"TRUSTPLANE_GRPC__ENABLED": "false", "TRUSTPLANE_CLI__ADMIN_TOKEN": SECRET_TOKEN}
    done = config_show(tmp_path, "config", "show", env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "config file: none"
    assert "[grpc]" in lines
    assert "grpc.enabled = false  (environment TRUSTPLANE_GRPC__ENABLED)" in lines
    assert "server.port = 8181  (default)" in lines
    assert 'cli.admin_token = "********"  (environment TRUSTPLANE_CLI__ADMIN_TOKEN)' in lines
    assert SECRET_TOKEN not in done.stdout


def test_an_invalid_setting_is_refused_with_its_origin(tmp_path: Path) -> None:
    done = config_show(tmp_path, "config", "show", env={"TRUSTPLANE_SERVER__PORT": "eighty"})
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert "server.port:" in done.stderr
    assert "(from environment TRUSTPLANE_SERVER__PORT)" in done.stderr
