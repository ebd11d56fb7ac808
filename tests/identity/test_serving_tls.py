"""The HTTPS serving certificate issued by the trust-domain CA (tls.from_ca): its names, a real
TLS handshake by a client that trusts only the CA bundle, renewal into the live SSLContext."""

from __future__ import annotations

import base64
import ssl
import stat
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from pydantic import ValidationError
from sqlalchemy import Engine

from trustplane.config import ConfigError, Settings
from trustplane.identity.kek import Kek, new_kek
from trustplane.identity.keys import IdentityKeys, published_ca_certificates
from trustplane.server.tls import CaServingCertificate, CertificateRenewer, serving_certificate

TRUST_DOMAIN = "example.test"
NAMES = ["trustplane.trustplane.svc", "127.0.0.1"]


@pytest.fixture
def settings(engine: Engine, database_url: str, tmp_path: Path) -> Settings:
    raw = new_kek()
    kek = Kek(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    IdentityKeys(engine, kek, TRUST_DOMAIN).initialise()
    return Settings(
        state_dir=tmp_path / "state",
        store={"url": database_url},
        identity={"kek": raw, "trust_domain": TRUST_DOMAIN},
        tls={"from_ca": True, "dns_names": NAMES, "cert_ttl_seconds": 600},
    )


def client_context(engine: Engine, tmp_path: Path) -> ssl.SSLContext:
    """A client that trusts the trust domain's CA bundle and nothing else."""
    bundle = tmp_path / "ca.pem"
    bundle.write_text("".join(published_ca_certificates(engine)))
    return ssl.create_default_context(cafile=str(bundle))


def server_context(path: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(path, path)
    return context


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, hostname: str) -> x509.Certificate:
    """A TLS handshake over memory buffers; the certificate the client accepted."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_side = client.wrap_bio(to_client, to_server, server_hostname=hostname)
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_side = server.wrap_bio(server_in, server_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        try:
            client_side.do_handshake()
            done["client"] = True
        except ssl.SSLWantReadError:
            pass
        server_in.write(to_server.read())
        try:
            server_side.do_handshake()
            done["server"] = True
        except ssl.SSLWantReadError:
            pass
        to_client.write(server_out.read())
        if all(done.values()):
            break
    der = client_side.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_the_certificate_names_the_hosts_and_chains_to_the_trust_domain_ca(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    served = serving_certificate(settings)
    assert served is not None and served.context_factory is not None
    assert stat.S_IMODE(served.cert_file.stat().st_mode) == 0o600
    certificate = x509.load_pem_x509_certificate(served.cert_file.read_bytes())
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["trustplane.trustplane.svc"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert not certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert lifetime.total_seconds() <= 600 + 10

    client = client_context(engine, tmp_path)
    server = server_context(served.cert_file)
    accepted = handshake(server, client, "trustplane.trustplane.svc")
    assert accepted.serial_number == certificate.serial_number
    with pytest.raises(ssl.SSLCertVerificationError, match=r"mismatch|doesn't match"):
        handshake(server_context(served.cert_file), client, "elsewhere.example")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server_context(served.cert_file), ssl.create_default_context(), "127.0.0.1")


def test_renewed_at_half_its_life_into_the_live_context(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    issuer = CaServingCertificate(settings)
    assert issuer.renew_if_due(now=time.time() - 400) == "there is none yet"  # half life past
    server = server_context(issuer.path)
    client = client_context(engine, tmp_path)
    first = handshake(server, client, "trustplane.trustplane.svc")
    renewer = CertificateRenewer(issuer, server)
    assert renewer.maintain() is True  # renewed now and loaded into the same context
    second = handshake(server, client, "trustplane.trustplane.svc")
    assert second.serial_number != first.serial_number
    assert second.not_valid_after_utc > first.not_valid_after_utc
    assert renewer.maintain() is False  # fresh: nothing to do
    assert stat.S_IMODE(issuer.path.stat().st_mode) == 0o600


def test_changed_names_get_a_new_certificate(settings: Settings) -> None:
    CaServingCertificate(settings).renew_if_due()
    changed = settings.model_copy(
        update={"tls": settings.tls.model_copy(update={"dns_names": ["webhook.example"]})}
    )
    assert CaServingCertificate(changed).due(time.time()) == "tls.dns_names changed"


def test_configuration_errors_name_what_is_missing(tmp_path: Path) -> None:
    without_plane = Settings(state_dir=tmp_path, tls={"from_ca": True, "dns_names": ["a.example"]})
    with pytest.raises(ConfigError, match=r"identity\.kek_file"):
        serving_certificate(without_plane)
    with pytest.raises(ValidationError, match=r"tls\.from_ca needs tls\.dns_names"):
        Settings(state_dir=tmp_path, tls={"from_ca": True})
    cert = tmp_path / "c.pem"
    with pytest.raises(ValidationError, match="exclude each other"):
        Settings(
            state_dir=tmp_path,
            tls={"from_ca": True, "dns_names": ["a.example"], "cert_file": cert, "key_file": cert},
        )


def test_workers_get_the_kek_and_the_certificate_factory_intact(settings: Settings) -> None:
    """Workers are fresh interpreters: the settings reach them as JSON (where secrets would be
    masked) and the TLS context factory pickled."""
    import pickle

    from trustplane.server.serve import _worker_settings

    assert settings.identity.kek is not None
    worker = Settings.model_validate_json(_worker_settings(settings))
    assert worker.identity.kek is not None
    assert worker.identity.kek.get_secret_value() == settings.identity.kek.get_secret_value()
    served = serving_certificate(settings)
    assert served is not None
    copied = pickle.loads(pickle.dumps(served.context_factory))
    assert copied.settings.tls.dns_names == NAMES
