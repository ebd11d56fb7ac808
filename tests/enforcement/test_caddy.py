"""Forward-auth end to end through a real Caddy (Debian package) `forward_auth` in front of a
small upstream app: allowed, denied, unauthenticated and PDP-down, and the documented Caddyfile
passes `caddy validate`."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.issuer import Key, user_token
from tests.support import (
    REPO,
    Server,
    free_port,
    required_binary,
    start_listening,
    stop_process,
)
from tests.upstream import Upstream

pytestmark = pytest.mark.slow

CADDYFILE = """{{
    admin off
    auto_https off
    storage file_system {dir}/data
}}
http://127.0.0.1:{port} {{
    forward_auth {pdp} {{
        uri /v1/forward-auth
        copy_headers X-Auth-Request-User X-Trustplane-Decision-Id
    }}
    reverse_proxy 127.0.0.1:{upstream}
}}
"""


def caddy_binary() -> str:
    return required_binary("caddy")


def caddy_env(directory: Path) -> dict[str, str]:
    # Caddy writes state under XDG directories: keep it in the test's directory.
    return {
        **os.environ,
        "XDG_DATA_HOME": str(directory / "xdg-data"),
        "XDG_CONFIG_HOME": str(directory / "xdg-config"),
        "HOME": str(directory),
    }


def start_caddy(
    directory: Path, pdp: str, upstream: Upstream
) -> tuple[subprocess.Popen[bytes], str]:
    binary = caddy_binary()
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = directory / "Caddyfile"
    config.write_text(CADDYFILE.format(dir=directory, port=port, pdp=pdp, upstream=upstream.port))
    url = f"http://127.0.0.1:{port}"
    argv = [binary, "run", "--config", str(config), "--adapter", "caddyfile"]
    process = start_listening(argv, url, directory / "caddy.log", env=caddy_env(directory))
    return process, url


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    app = Upstream()
    yield app
    app.close()


@pytest.fixture(scope="module")
def caddy(
    server: Server, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    pdp = server.url.removeprefix("http://")
    process, url = start_caddy(tmp_path_factory.mktemp("caddy"), pdp, upstream)
    yield url
    stop_process(process)


def test_caddy_lets_allowed_requests_through_with_the_user(caddy: str, key: Key) -> None:
    response = httpx.post(
        f"{caddy}/ops/services/checkout/restart",
        headers={"authorization": f"Bearer {user_token(key)}"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["user"] == "alice", "Caddy copied the user header upstream"
    assert response.json()["decision"]


def test_caddy_denies_and_challenges_without_reaching_the_app(
    caddy: str, key: Key, upstream: Upstream
) -> None:
    before = len(upstream.seen)
    denied = httpx.get(
        f"{caddy}/admin/users",
        headers={"authorization": f"Bearer {user_token(key, 'erin', mfa=False)}"},
    )
    unauthenticated = httpx.get(f"{caddy}/ops/services/checkout/logs")
    assert denied.status_code == 403
    assert denied.json()["reasons"] == ["require-fresh-mfa-for-tier0-and-admin"]
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["www-authenticate"] == 'Bearer realm="trustplane"'
    assert len(upstream.seen) == before


def test_caddy_fails_closed_when_the_pdp_is_down(
    upstream: Upstream, key: Key, tmp_path: Path
) -> None:
    process, url = start_caddy(tmp_path / "caddy", f"127.0.0.1:{free_port()}", upstream)
    try:
        before = len(upstream.seen)
        response = httpx.get(
            f"{url}/ops/services/checkout/logs",
            headers={"authorization": f"Bearer {user_token(key)}"},
        )
        assert response.status_code >= 500
        assert len(upstream.seen) == before
    finally:
        stop_process(process)


def test_the_documented_caddyfile_is_valid(tmp_path: Path) -> None:
    """The Caddyfile in docs/enforcement.md passes `caddy validate`."""
    text = (REPO / "docs" / "enforcement.md").read_text()
    match = re.search(r"```caddyfile\n(.*?)```", text, re.S)
    assert match, "docs/enforcement.md has a caddyfile block"
    config = tmp_path / "Caddyfile"
    config.write_text(match.group(1))
    check = subprocess.run(
        [caddy_binary(), "validate", "--config", str(config), "--adapter", "caddyfile"],
        capture_output=True,
        env=caddy_env(tmp_path),
    )
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
