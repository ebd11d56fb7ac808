"""The CLI follows HTTPS: a configuration whose server serves TLS is called over https:// and
trusts that server's own certificate; a plain http:// URL to the TLS port is asked again over
HTTPS; a certificate nothing vouches for is one clear line, not a traceback."""

from __future__ import annotations

import os
import ssl
import subprocess
from pathlib import Path

import httpx

from tests.conftest import SHOP
from tests.support import TRUSTPLANE, Server, free_port, run_cli, server_env, wait_ready
from tests.tlscert import self_signed


def test_the_cli_calls_a_tls_server_over_https(tmp_path: Path, database_url: str) -> None:
    state = tmp_path / "state"
    state.mkdir()
    cert, key = self_signed(state)
    port = free_port()
    env = server_env(
        state,
        database_url,
        server__port=port,
        policy__bundle_dir=SHOP,
        policy__watch="false",
        tls__cert_file=cert,
        tls__key_file=key,
    )
    assert run_cli("init", env=env).returncode == 0
    with (state / "server.log").open("wb") as log:
        process = subprocess.Popen(
            [*TRUSTPLANE, "serve"], env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
        )
    server = Server(f"https://127.0.0.1:{port}", env, process, state / "server.log")
    server.client = httpx.Client(
        base_url=server.url, timeout=10, verify=ssl.create_default_context(cafile=str(cert))
    )
    try:
        wait_ready(server)
        revision = server.client.get("/readyz").json()["revision"]

        # No URL given: the configuration serves TLS, so https://, trusting tls.cert_file.
        status = run_cli("policy", "status", env=env)
        assert status.returncode == 0, status.stderr
        assert f"revision {revision}" in status.stdout

        # http:// to the TLS port: asked again over HTTPS.
        plain = run_cli("policy", "status", "--url", f"http://127.0.0.1:{port}", env=env)
        assert plain.returncode == 0, plain.stderr
        assert f"revision {revision}" in plain.stdout

        # A client that has not the server's configuration does not trust its certificate.
        elsewhere = {k: v for k, v in env.items() if not k.startswith("TRUSTPLANE_TLS__")}
        stranger = run_cli("policy", "status", "--url", server.url, env=elsewhere)
        assert stranger.returncode == 2
        assert "presented a certificate this machine does not trust" in stranger.stderr
        assert "SSL_CERT_FILE" in stranger.stderr and "Traceback" not in stranger.stderr
    finally:
        server.stop()
