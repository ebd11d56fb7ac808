"""F6 key compromise: `trustplane identity rotate --emergency` retires the compromised signing
keys at once, so every SVID they signed stops verifying (against the server's bundle endpoints
and through the Workload API with the `spiffe` client), while fresh SVIDs verify; and the
ledger's checkpoint key can be rotated with the checkpoints the old key signed still
verifying."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
import spiffe

from tests.conftest import SHOP
from tests.failure_modes.identity_support import (
    TRUST_DOMAIN,
    chains_to,
    identity_server,
    published_authorities,
    register_this_process,
)
from tests.support import Server, newest_checkpoint_size, run_cli, running_server, wait_for

pytestmark = pytest.mark.slow

BODY = {
    "subject": {"type": "Service", "id": "checkout"},
    "action": {"name": "payments:charge"},
    "resource": {"type": "Api", "id": "payments.charge"},
    "context": {"mfa": False, "auth_age_seconds": 30, "risk_score": 5},
}


@pytest.fixture(scope="module")
def socket_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("agent") / "workload.sock"


@pytest.fixture(scope="module")
def server(
    module_database_url: str, tmp_path_factory: pytest.TempPathFactory, socket_path: Path
) -> Iterator[Server]:
    state = tmp_path_factory.mktemp("state")
    with identity_server(
        state, module_database_url, identity__workload_socket=socket_path
    ) as running:
        register_this_process(running, "/ns/shop/sa/checkout")
        yield running


def identity_cli(server: Server, *args: str) -> dict[str, object]:
    result = run_cli(*args, "--json", env={**server.env, "TRUSTPLANE_CLI__SERVER_URL": server.url})
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_emergency_rotation_stops_every_svid_the_key_signed(
    server: Server, socket_path: Path
) -> None:
    client = spiffe.WorkloadApiClient(socket_path=f"unix:{socket_path}")
    with client:
        old_x509 = client.fetch_x509_svid()
        old_jwt = client.fetch_jwt_svid(audience={"payments"})
        # before: both verify, here and at the server
        assert chains_to(old_x509.leaf, published_authorities(server))
        assert str(client.validate_jwt_svid(old_jwt.token, "payments").spiffe_id) == str(
            old_jwt.spiffe_id
        )
        jwks = jwt.PyJWKClient(server.url + "/v1/identity/jwks", cache_keys=False)
        jwks.get_signing_key_from_jwt(old_jwt.token)

        done = identity_cli(server, "identity", "rotate", "--emergency")["done"]
        assert sum("retired compromised" in line for line in done) == 2, done
        assert sum(line.startswith("activated") for line in done) == 2, done

        # after: the compromised CA and JWT key are gone from every bundle at once ...
        assert not chains_to(old_x509.leaf, published_authorities(server))
        bundles = client.fetch_x509_bundles()
        authorities = bundles.get_bundle_for_trust_domain(
            spiffe.TrustDomain(TRUST_DOMAIN)
        ).x509_authorities
        assert not chains_to(old_x509.leaf, list(authorities))
        with pytest.raises(jwt.PyJWKClientError):
            jwt.PyJWKClient(
                server.url + "/v1/identity/jwks", cache_keys=False
            ).get_signing_key_from_jwt(old_jwt.token)
        # ... so the Workload API refuses the old JWT-SVID with the reason
        with pytest.raises(Exception, match="token_unknown_key"):
            client.validate_jwt_svid(old_jwt.token, "payments")

        # fresh SVIDs come from the new keys and verify
        new_x509 = client.fetch_x509_svid()
        new_jwt = client.fetch_jwt_svid(audience={"payments"})
        assert chains_to(new_x509.leaf, published_authorities(server))
        assert new_x509.leaf.serial_number != old_x509.leaf.serial_number
        assert (
            jwt.get_unverified_header(new_jwt.token)["kid"]
            != jwt.get_unverified_header(old_jwt.token)["kid"]
        )
        client.validate_jwt_svid(new_jwt.token, "payments")

    keys = identity_cli(server, "identity", "keys")["keys"]
    states = sorted(k["state"] for k in keys)  # type: ignore[index]
    assert states == ["active", "active", "compromised", "compromised"]


def test_emergency_rotation_of_a_named_key_and_clear_refusals(server: Server) -> None:
    keys = identity_cli(server, "identity", "keys")["keys"]
    jwt_key = next(k for k in keys if k["kind"] == "jwt" and k["state"] == "active")  # type: ignore[index]
    done = identity_cli(server, "identity", "rotate", "--emergency", "--kid", jwt_key["kid"])[
        "done"
    ]
    assert done[0] == f"retired compromised jwt key {jwt_key['kid']}"
    assert done[-1].startswith("activated jwt key")
    env = {**server.env, "TRUSTPLANE_CLI__SERVER_URL": server.url}
    unknown = run_cli("identity", "rotate", "--emergency", "--kid", "no-such-key", env=env)
    assert unknown.returncode == 2 and "no published key 'no-such-key'" in unknown.stderr
    misuse = run_cli("identity", "rotate", "--kid", "x", env=env)
    assert misuse.returncode == 2 and "--emergency" in misuse.stderr
    assert "Traceback" not in unknown.stderr + misuse.stderr


def signature_key_ids(note: str) -> set[str]:
    """The key IDs (hex) of a signed note's signatures."""
    import base64

    lines = note.split("\n\n", 1)[1].splitlines()
    return {base64.b64decode(line.rsplit(" ", 1)[1])[:4].hex() for line in lines}


def test_checkpoint_key_rotation_keeps_old_checkpoints_verifying(
    tmp_path: Path, database_url: str
) -> None:
    state = tmp_path / "state"
    with running_server(
        state, database_url, SHOP, policy__watch="false", ledger__checkpoint_interval_ms=200
    ) as server:
        for _ in range(3):
            assert server.client.post("/access/v1/evaluation", json=BODY).status_code == 200
        wait_for(lambda: newest_checkpoint_size(database_url) == 3)
        env = server.env
    old_key = (state / "ledger.pub").read_text().split()[0]

    rotated = run_cli("audit", "rotate-key", "--json", env=env)
    assert rotated.returncode == 0, rotated.stderr
    keys = json.loads(rotated.stdout)
    assert keys["old_verifier_key"] == old_key and keys["verifier_key"] != old_key
    assert (state / "ledger.pub").read_text().split() == [keys["verifier_key"], old_key]
    assert (state / "ledger.key").stat().st_mode & 0o777 == 0o600

    with running_server(
        state, database_url, SHOP, policy__watch="false", ledger__checkpoint_interval_ms=200
    ) as server:
        for _ in range(2):
            assert server.client.post("/access/v1/evaluation", json=BODY).status_code == 200
        wait_for(lambda: newest_checkpoint_size(database_url) == 5)
        checkpoints = server.client.get("/v1/ledger/checkpoints", headers=server.admin).json()
        assert checkpoints["verifier_key"] == keys["verifier_key"]

    by_size = {c["tree_size"]: c["checkpoint"] for c in checkpoints["checkpoints"]}
    old_id, new_id = old_key.split("+")[1], keys["verifier_key"].split("+")[1]
    assert signature_key_ids(by_size[3]) == {old_id}  # signed before the rotation
    assert signature_key_ids(by_size[5]) == {new_id}  # signed after it

    verified = run_cli("audit", "verify", "--json", env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    report = json.loads(verified.stdout)
    # five decisions, and the admin read of the checkpoints (every admin call is recorded)
    assert report["ok"] and report["records"] == 6 and report["checkpoints"] >= 2
    # the new key alone does not vouch for what the old one signed
    alone = run_cli("audit", "verify", "--json", "--key", keys["verifier_key"], env=env)
    assert alone.returncode == 1
    assert any("checkpoint at size 3" in p for p in json.loads(alone.stdout)["problems"])


def test_the_serving_certificate_of_a_compromised_ca_is_replaced_at_once(
    tmp_path: Path, database_url: str
) -> None:
    """HTTPS from the trust-domain CA (tls.from_ca): after an emergency rotation the serving
    certificate the compromised CA signed is replaced at the next look, not at half its life."""
    from cryptography import x509 as x509_

    from trustplane.config import Settings
    from trustplane.identity.kek import new_kek
    from trustplane.identity.service import IdentityService
    from trustplane.server.tls import CaServingCertificate
    from trustplane.store.database import create_store_engine, migrate

    settings = Settings(
        state_dir=tmp_path / "state",
        identity={"trust_domain": TRUST_DOMAIN, "kek": new_kek()},
        store={"url": database_url},
        tls={"from_ca": True, "dns_names": ["127.0.0.1"]},
    )
    engine = create_store_engine(database_url)
    migrate(engine)
    try:
        service = IdentityService.from_settings(settings, engine)
        service.key_store.initialise()
        serving = CaServingCertificate(settings)
        assert serving.renew_if_due() == "there is none yet"
        assert serving.renew_if_due() is None, "fresh: nothing to do"
        before = x509_.load_pem_x509_certificate(serving.path.read_bytes())
        service.key_store.emergency(None)
        assert serving.renew_if_due() == "its CA is no longer published (retired or compromised)"
        after = x509_.load_pem_x509_certificate(serving.path.read_bytes())
        assert after.serial_number != before.serial_number
        assert serving.renew_if_due() is None
    finally:
        engine.dispose()
