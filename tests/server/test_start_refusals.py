"""What stops `trustplane init` and `trustplane serve` before they create or listen on anything:
a missing or empty bundle directory, a key-encryption key file others may read. Each is one
line naming the problem, exit status 2, and nothing left behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SHOP
from tests.support import TRUSTPLANE, run_cli, server_env

pytestmark = pytest.mark.slow


def refusal(done: subprocess.CompletedProcess[str]) -> str:
    """The one error line of a refused command (exit 2, no traceback)."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error:"), done.stderr
    return lines[0]


def serve(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`trustplane serve`, expected to refuse promptly (a server that starts times out)."""
    return subprocess.run(
        [*TRUSTPLANE, "serve", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("kind", ["missing", "empty", "no-bundle-files", "a-file"])
def test_serve_refuses_a_bundle_directory_with_nothing_to_serve(
    tmp_path: Path, database_url: str, kind: str
) -> None:
    bundle = tmp_path / "shop"
    if kind == "empty":
        bundle.mkdir()
    elif kind == "no-bundle-files":
        (bundle / ".git").mkdir(parents=True)
        (bundle / "README.md").write_text("policies go here\n")
    elif kind == "a-file":
        bundle.write_text("not a directory\n")
    state = tmp_path / "state"
    env = server_env(state, database_url, policy__bundle_dir=bundle)
    line = refusal(serve(env, "--init"))
    assert str(bundle) in line, line
    assert not state.exists(), "nothing is created for a server that cannot serve"


def test_serve_refuses_a_bundle_directory_that_vanished_since_init(
    tmp_path: Path, database_url: str
) -> None:
    state = tmp_path / "state"
    env = server_env(state, database_url, policy__bundle_dir=tmp_path / "gone")
    assert run_cli("init", env=env).returncode == 0
    line = refusal(serve(env))
    assert f"{tmp_path / 'gone'}" in line and "does not exist" in line, line


@pytest.fixture
def loose_kek(tmp_path: Path) -> Path:
    kek = tmp_path / "kek"
    made = run_cli("identity", "new-kek", "--out", str(kek))
    assert made.returncode == 0, made.stderr
    kek.chmod(0o644)
    return kek


def test_init_refuses_a_kek_file_others_may_read_and_creates_nothing(
    tmp_path: Path, database_url: str, loose_kek: Path
) -> None:
    state = tmp_path / "state"
    env = server_env(state, database_url, identity__kek_file=loose_kek)
    line = refusal(run_cli("init", env=env))
    assert str(loose_kek) in line and "0644" in line and "chmod 600" in line, line
    assert not state.exists(), "no half-initialised state directory"
    line = refusal(serve({**env, "TRUSTPLANE_POLICY__BUNDLE_DIR": str(SHOP)}, "--init"))
    assert str(loose_kek) in line and "0644" in line, line
    assert not state.exists()


def test_serve_refuses_a_kek_file_loosened_since_init(
    tmp_path: Path, database_url: str, loose_kek: Path
) -> None:
    loose_kek.chmod(0o600)
    state = tmp_path / "state"
    env = server_env(state, database_url, policy__bundle_dir=SHOP, identity__kek_file=loose_kek)
    assert run_cli("init", env=env).returncode == 0
    before = sorted(p.name for p in state.iterdir())
    loose_kek.chmod(0o640)
    line = refusal(serve(env))
    assert str(loose_kek) in line and "0640" in line, line
    assert sorted(p.name for p in state.iterdir()) == before


def test_serve_refuses_an_invalid_setting_naming_the_variable(
    tmp_path: Path, database_url: str
) -> None:
    state = tmp_path / "state"
    env = server_env(state, database_url, policy__bundle_dir=SHOP, ledger__flush_interval_ms=0)
    line = refusal(serve(env, "--init"))
    assert "ledger.flush_interval_ms:" in line, line
    assert "(from environment TRUSTPLANE_LEDGER__FLUSH_INTERVAL_MS)" in line, line
    assert not state.exists(), "nothing is created for settings that are refused"


def test_serve_refuses_an_invalid_setting_naming_the_file(
    tmp_path: Path, database_url: str
) -> None:
    state = tmp_path / "state"
    config = tmp_path / "trustplane.toml"
    config.write_text('[grpc]\ntransport = "carrier-pigeon"\n')
    env = server_env(state, database_url, policy__bundle_dir=SHOP)
    line = refusal(_serve_with_config(env, config))
    assert "grpc.transport:" in line and f"(from file {config})" in line, line
    assert not state.exists()


def test_serve_refuses_a_variable_from_before_the_sections(
    tmp_path: Path, database_url: str
) -> None:
    env = server_env(tmp_path / "state", database_url, policy__bundle_dir=SHOP)
    line = refusal(serve({**env, "TRUSTPLANE_WORKERS": "2"}, "--init"))
    assert "TRUSTPLANE_WORKERS is no longer read: use TRUSTPLANE_SERVER__WORKERS" in line, line


def _serve_with_config(env: dict[str, str], config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TRUSTPLANE, "--config", str(config), "serve", "--init"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
