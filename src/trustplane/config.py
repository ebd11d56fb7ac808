"""The one settings object: flags over the environment (`TRUSTPLANE_*`) over a TOML config file
over defaults.

Settings come in sections (`ledger`, `grpc`, `identity`, ...), named `TRUSTPLANE_LEDGER__FLUSH_
INTERVAL_MS` in the environment and `[ledger] flush_interval_ms` in the file. The server and the
CLI load one `Settings`; each component receives only its section. Nothing else reads the
environment.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from trustplane.errors import TrustplaneError

DEFAULT_CONFIG_FILE = "trustplane.toml"


class LedgerAppender(StrEnum):
    PROCESS = "process"
    THREAD = "thread"


class GrpcTransport(StrEnum):
    AUTO = "auto"  # the compiled front when it is installed, else grpcio
    NATIVE = "native"  # the compiled front (trustplane-extauthz) or refuse to start
    PYTHON = "python"  # grpcio's asyncio server


class PepAuth(StrEnum):
    OFF = "off"  # decision endpoints answer whoever connects (loopback only, see pep_auth)
    OPTIONAL = "optional"  # a credential, when presented, must be valid; none is anonymous
    REQUIRED = "required"  # every call names a registered PEP or is refused


class Durability(StrEnum):
    BATCH = "batch"
    SYNC = "sync"


class IssuerSettings(BaseModel):
    """A trusted issuer of bearer JWTs (an OIDC provider, a CI platform)."""

    model_config = ConfigDict(extra="forbid")

    issuer: str = Field(description="Expected `iss`, exactly.")
    jwks_uri: str = Field(description="Where the issuer publishes its signing keys (JWKS).")
    audiences: list[str] = Field(min_length=1, description="Accepted `aud` values.")
    algorithms: list[str] = Field(
        default_factory=lambda: ["RS256", "ES256", "EdDSA"],
        description="Signature algorithms this issuer uses (asymmetric only).",
    )
    leeway_seconds: int = Field(60, ge=0, le=600, description="Clock skew allowed.")
    jwks_cache_seconds: int = Field(
        300, ge=1, le=86_400, description="How long fetched JWKS keys are used before a refresh."
    )
    jwks_max_stale_seconds: int = Field(
        3600,
        ge=0,
        le=7 * 86_400,
        description="While the issuer cannot be reached, how long after the last successful "
        "fetch its cached keys still verify; after that its tokens are refused "
        "(token_issuer_unreachable).",
    )


class ExchangeRuleSettings(BaseModel):
    """A CI trust rule: tokens from `issuer` whose claims match `claims` become `spiffe_id`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="Named in the ledger and in refusals.")
    issuer: str = Field(description="The `iss` of the pipeline's OIDC token (in `pep.issuers`).")
    claims: dict[str, str | list[str]] = Field(
        min_length=1,
        description="Claim → accepted value(s); `*` at the end of a value matches any rest. "
        "Every listed claim must match (e.g. repository, ref, environment, workflow).",
    )
    spiffe_id: str = Field(description="SPIFFE ID issued; `{claim}` is replaced by its value.")
    ttl_seconds: int = Field(600, ge=30, le=900, description="Lifetime of the JWT-SVID.")
    owner: str = Field("", description="Who answers for this rule (inventory).")
    audiences: list[str] | None = Field(
        None,
        min_length=1,
        description="The only audiences a pipeline may ask for under this rule (default: any "
        "but admin.audience, which no rule can grant).",
    )


class AdmissionModes(BaseModel):
    """Pod Security Admission-style modes for a namespace: the rule packs (`name`, or
    `name@v1.N` for a pack at a Kubernetes minor version) enforced, warned about and audited."""

    model_config = ConfigDict(extra="forbid")

    enforce: list[str] = Field(
        default_factory=lambda: ["pss-baseline"],
        description="Rule packs whose failures refuse the object (status 403).",
    )
    warn: list[str] = Field(
        default_factory=lambda: ["pss-restricted"],
        description="Rule packs whose failures come back as warnings.",
    )
    audit: list[str] = Field(
        default_factory=lambda: ["pss-restricted", "zero-trust"],
        description="Rule packs whose failures are only recorded.",
    )


class PostureExemption(BaseModel):
    """An exception to one posture rule (admission, `trustplane scan --exemptions`): whose it is,
    why, until when, and which namespaces and/or labels it covers. Expired, it stops applying."""

    model_config = ConfigDict(extra="forbid")

    rule: str = Field(min_length=1, description="Rule id, e.g. pss-baseline/hostNamespaces.")
    owner: str = Field(min_length=1)
    expires: date
    reason: str = Field(min_length=1)
    namespaces: list[str] | None = None
    labels: dict[str, str] | None = None

    @model_validator(mode="after")
    def _has_a_selector(self) -> PostureExemption:
        if self.namespaces is None and self.labels is None:
            raise ValueError("an exemption needs namespaces or labels (or both)")
        return self


class TrustSettings(BaseModel):
    """The trust plane (docs/trust.md). Weights and thresholds are in the bundle's trust.yaml;
    these are the deployment's facts: who may supply trust values, and the address lists and
    databases the network signals read."""

    model_config = ConfigDict(extra="forbid")

    trusted_peps: list[str] = Field(
        default_factory=list,
        description="Registered PEPs (`trustplane pep add`) whose `context.trust` values are "
        "believed; from any other caller they are ignored and the record says so.",
    )
    geoip: bool = Field(
        True,
        description="Country and ASN of the source address from the database geoip2fast ships "
        "(the `country` and `asn` signals).",
    )
    bad_networks_files: list[Path] = Field(
        default_factory=list,
        description="Files of known-bad networks, one CIDR a line (# comments): the "
        "`bad_network` signal.",
    )
    corporate_networks_files: list[Path] = Field(
        default_factory=list,
        description="Files of corporate networks, one CIDR a line: the `corporate_network` "
        "signal (usually a negative weight).",
    )
    city_database: Path | None = Field(
        None,
        description="A MaxMind-format city database (GeoLite2-City or compatible): the "
        "coordinates `impossible_travel` needs; without it that signal is 0 and says why.",
    )
    device_header: str | None = Field(
        "X-Device-Id",
        min_length=1,
        description="The header naming the request's device (the `device` signal), believed "
        "only from `server.trusted_proxies`; none to read no header.",
    )
    device_uri_prefix: str | None = Field(
        None,
        min_length=1,
        description="A client certificate URI SAN under this prefix names the device by the "
        "rest of the URI (spiffe://example.org/device/ makes .../device/LAPTOP-7 the device "
        "LAPTOP-7); the certificate's serial is matched against posture reports either way.",
    )
    behaviour_interval_ms: int = Field(
        2000,
        ge=100,
        le=60_000,
        description="How often each process writes its behaviour history (novelty, velocity) "
        "to the store and reads the other replicas'.",
    )
    behaviour_retention_days: int = Field(
        90,
        ge=1,
        le=3650,
        description="How long a principal's use of an action or resource type is remembered "
        "(the longest `novelty.days` that can work).",
    )


class ConfigError(TrustplaneError):
    """A configuration value or file is wrong; the message names which."""


class StoreSettings(BaseModel):
    """Where the store lives and how serving processes learn of each other's changes."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        None, description="SQLAlchemy URL; default: SQLite in state_dir (WAL mode)."
    )
    change_poll_ms: int = Field(
        100,
        ge=10,
        le=10_000,
        description="On SQLite, how often a serving process polls the store for changes made by "
        "another (a bundle activated by another worker). PostgreSQL wakes it with NOTIFY "
        "and polls only as a fallback, every second.",
    )

    @field_validator("url")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sqlite", "postgresql")):
            raise ValueError("only sqlite:// and postgresql:// URLs are supported")
        return value


class ServerSettings(BaseModel):
    """The HTTP listener and the serving processes behind it."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="Address the HTTP API (and gRPC) listens on.")
    port: int = Field(8181, ge=0, le=65535, description="Port the HTTP API listens on.")
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Serving processes behind one listening socket. Each evaluates and "
        "appends to the one ledger; /metrics aggregates them all.",
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Largest request body the HTTP API accepts."
    )
    trusted_proxies: list[IPv4Network | IPv6Network] = Field(
        default_factory=list,
        description="Addresses (CIDR) of proxies whose forwarded headers (X-Forwarded-*, "
        "X-Original-*, the identity header) are believed; from anyone else they are ignored.",
    )
    switch_interval_us: int = Field(
        0,
        ge=0,
        le=100_000,
        description="Interpreter thread switch interval while serving (0: leave Python's "
        "5 ms). Cedar evaluation releases the GIL; while the ledger writer is busy, each "
        "evaluation can wait up to a full interval to get it back (docs/benchmarks.md).",
    )


class LedgerSettings(BaseModel):
    """How decisions are recorded, committed and checkpointed."""

    model_config = ConfigDict(extra="forbid")

    durability: Durability = Field(
        Durability.BATCH,
        description="batch: decisions are committed within ledger.flush_interval_ms; "
        "sync: the answer waits for the commit that contains its record.",
    )
    flush_interval_ms: int = Field(50, ge=1, le=1000, description="Ledger flush interval.")
    checkpoint_interval_ms: int = Field(
        1000,
        ge=100,
        le=60_000,
        description="Interval between signed checkpoints, each covering every record in the "
        "store (a clean stop signs one too): how long a record can stay not yet proven.",
    )
    ready_max_lag_ms: int = Field(
        10_000,
        ge=100,
        le=3_600_000,
        description="/readyz answers 503 once the oldest decision not yet in the ledger is "
        "older than this, or while ledger commits fail.",
    )
    queue_max: int = Field(
        100_000,
        ge=100,
        le=10_000_000,
        description="Decisions held in memory for the ledger; beyond that (and while the store "
        "fails) batch decisions go to the disk spool, and sync ones are answered 503.",
    )
    spool_max_mb: int = Field(
        1024,
        ge=1,
        le=1_048_576,
        description="Largest disk spool (state_dir/ledger-spool) of decisions the store has not "
        "taken; once full, decisions are answered 503 rather than left unrecorded.",
    )
    origin: str = Field(
        "trustplane.local/decisions", description="Origin line of signed checkpoints."
    )
    mask: list[str] = Field(
        default_factory=lambda: ["/context/token", "/context/authorization"],
        description="JSON pointers erased from recorded requests before anything is written.",
    )
    appender: LedgerAppender = Field(
        LedgerAppender.THREAD,
        description="Where the ledger is committed: `thread` (a writer thread in the serving "
        "process) or `process` (a child process, so commits never compete with evaluations for "
        "the interpreter lock; it costs more CPU in all, see docs/benchmarks.md finding 8).",
    )

    @field_validator("mask")
    @classmethod
    def _pointers_are_absolute(cls, value: list[str]) -> list[str]:
        for pointer in value:
            if not pointer.startswith("/"):
                raise ValueError(f"mask pointer {pointer!r} must start with '/'")
        return value


class PolicySettings(BaseModel):
    """The policy bundle served, who may sign it, and how its answers are reused."""

    model_config = ConfigDict(extra="forbid")

    bundle_dir: Path | None = Field(None, description="Policy bundle directory to serve.")
    trusted_key_files: list[Path] = Field(
        default_factory=list,
        description="Paths of Ed25519 public-key PEM files; when set, only bundles signed by "
        "one of those keys load.",
    )
    watch: bool = Field(True, description="Reload the bundle when its files change.")
    expiry_warning_days: int = Field(7, ge=0, description="Warn when a policy expires sooner.")
    decision_cache_size: int = Field(
        10_000,
        ge=0,
        le=10_000_000,
        description="Answers kept per bundle revision for repeated identical requests "
        "(0: evaluate every request). Cached answers get their own decision id and are recorded.",
    )
    decision_ttl_seconds: int = Field(
        5,
        ge=0,
        le=3600,
        description="How long enforcement points (the SDK's cache) may reuse an answer that is "
        "neither evaluated live nor a low-risk read (writes, medium risk, unclassified tiers); "
        "never past the next policy @expires boundary, a grant's end or the token's expiry; 0 "
        "disables reuse.",
    )
    drift_check_seconds: float = Field(
        60,
        ge=0,
        le=86400,
        description="How often the server compares the active revision with the bundle "
        "directory it follows (the drift gauge, incidents in the store and the ledger); "
        "0 turns the check off.",
    )
    read_ttl_seconds: dict[str, int] = Field(
        default_factory=lambda: {"1": 15, "2": 60},
        description="By policy tier: how long a low-risk read may be reused (the evaluator's "
        "cache and enforcement points); a tier not named here gets decision_ttl_seconds. Tier "
        "0 is never reused, whatever this says (JSON object in the environment).",
    )
    read_action_group: str = Field(
        "read",
        min_length=1,
        description="The schema's action group whose members (directly or through other "
        'groups) are reads, e.g. `action "payments:read" in ["read"]`.',
    )
    live_risk_levels: list[str] = Field(
        default_factory=lambda: ["high", "critical"],
        description="Risk levels (trust.yaml) whose requests are always evaluated live and "
        "answered with no reuse.",
    )
    volatile_signals: list[str] = Field(
        default_factory=lambda: ["auth_age", "token_age", "impossible_travel", "new_country"],
        description="Signals that change with time or place: a request on which one of them "
        "fired (value above 0, enforced or observed) is evaluated live and not reused.",
    )
    epoch_wait_seconds: float = Field(
        25.0,
        gt=0,
        le=300,
        description="Longest a `GET /access/v1/epoch?after=N` long-poll is held open before "
        "it answers with the unchanged epoch.",
    )

    @field_validator("read_ttl_seconds")
    @classmethod
    def _tiers_and_bounds(cls, value: dict[str, int]) -> dict[str, int]:
        for tier, seconds in value.items():
            if tier not in {"0", "1", "2"}:
                raise ValueError(f'read_ttl_seconds: tier {tier!r} must be "1" or "2"')
            if tier == "0" and seconds:
                raise ValueError("read_ttl_seconds: tier 0 is always evaluated live")
            if not 0 <= seconds <= 3600:
                raise ValueError(f"read_ttl_seconds.{tier}: must be from 0 to 3600")
        return value


class PepSettings(BaseModel):
    """The enforcement points: who may ask for decisions and how callers are identified."""

    model_config = ConfigDict(extra="forbid")

    auth: PepAuth = Field(
        PepAuth.OFF,
        description="Authentication of the enforcement points calling the decision endpoints "
        "(AuthZEN, forward-auth, Envoy HTTP and gRPC ext_authz, admission): a per-PEP token "
        "(`trustplane pep add`), an mTLS client certificate or a JWT-SVID (audience "
        "pep.audience) of a registered PEP. `serve` refuses a host beyond loopback unless this "
        "is `required` or pep.allow_unauthenticated is set.",
    )
    audience: str = Field(
        "trustplane-pep", min_length=1, description="Audience a PEP's JWT-SVID must carry."
    )
    allow_unauthenticated: bool = Field(
        False,
        description="Serve beyond loopback although pep.auth is not `required`: anyone who "
        "can connect then gets decisions and names any principal (docs/threat-model.md).",
    )
    issuers: list[IssuerSettings] = Field(
        default_factory=list,
        description="Issuers whose bearer JWTs identify callers at the enforcement points "
        "and pipelines at token exchange (JSON list in the environment).",
    )
    identity_header: str | None = Field(
        None,
        description="Header in which a trusted proxy names an already authenticated caller "
        "(e.g. X-Forwarded-User from an OIDC proxy); off when unset.",
    )
    strip_credential: bool = Field(
        False,
        description="Ask Envoy to remove the caller's Authorization header before the request "
        "goes upstream (the upstream gets the identity headers instead).",
    )


class GrpcSettings(BaseModel):
    """Envoy ext_authz over gRPC."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        True, description="Serve Envoy ext_authz (envoy.service.auth.v3.Authorization) over gRPC."
    )
    port: int = Field(9191, ge=0, le=65535, description="Port of the ext_authz gRPC server.")
    transport: GrpcTransport = Field(
        GrpcTransport.AUTO,
        description="What terminates ext_authz gRPC: `native`, the compiled front "
        "trustplane-extauthz (built by scripts/bootstrap.sh with Debian's libgrpc++), which "
        "hands each call's bytes to this process; `python`, grpcio's asyncio server; `auto`, "
        "native when installed. Same answers either way; the front costs far less per call.",
    )
    answer_timeout_ms: int = Field(
        10_000,
        ge=50,
        le=60_000,
        description="On the compiled front: a call the serving process has not answered in "
        "this time ends UNAVAILABLE (a deny at Envoy, whose own ext_authz timeout is usually "
        "shorter).",
    )
    native_binary: Path | None = Field(
        None,
        description="Path of trustplane-extauthz (default: beside this Python; PATH is not "
        "searched, since it answers every Envoy authorization call).",
    )


class IdentitySettings(BaseModel):
    """The identity plane: trust domain, keys, SVID lifetimes, token exchange."""

    model_config = ConfigDict(extra="forbid")

    trust_domain: str = Field(
        "trustplane.local", description="SPIFFE trust domain of the identities issued here."
    )
    kek: SecretStr | None = Field(
        None,
        description="Key-encryption key for identity private keys: 32 bytes, base64url "
        "(`trustplane identity new-kek`); prefer identity.kek_file.",
    )
    kek_file: Path | None = Field(
        None, description="File holding the key-encryption key (mode 0600, refused otherwise)."
    )
    issuer: str | None = Field(
        None, description="`iss` of JWT-SVIDs and the OIDC discovery issuer; default server URL."
    )
    workload_socket: Path | None = Field(
        None, description="Serve the SPIFFE Workload API on this unix socket (off when unset)."
    )
    x509_svid_ttl_seconds: int = Field(3600, ge=60, description="Default X.509-SVID lifetime.")
    jwt_svid_ttl_seconds: int = Field(300, ge=30, description="Default JWT-SVID lifetime.")
    svid_max_ttl_seconds: int = Field(
        86_400, ge=60, description="Longest SVID lifetime an entry may ask for (bounds retirement)."
    )
    ca_ttl_seconds: int = Field(
        604_800, ge=3600, description="Lifetime of a trust-domain CA and JWT signing key."
    )
    rotation: bool = Field(
        True, description="Prepare, activate and retire keys on schedule while serving."
    )
    exchange_rules: list[ExchangeRuleSettings] = Field(
        default_factory=list, description="CI trust rules for POST /v1/token (RFC 8693)."
    )

    @property
    def configured(self) -> bool:
        """Whether the identity plane is on: a key-encryption key is configured."""
        return self.kek is not None or self.kek_file is not None


class AdmissionSettings(AdmissionModes):
    """The admission webhook: the modes for every namespace not listed in `namespaces`, the
    per-namespace modes, own rule files, exemptions and rule-pack parameters."""

    namespaces: dict[str, AdmissionModes] = Field(
        default_factory=dict,
        description="Admission webhook modes per namespace, like Pod Security Admission's "
        "namespace labels.",
    )
    rule_files: list[Path] = Field(
        default_factory=list,
        description="Your own posture rule files (the rule packs' format), reviewed in every "
        "namespace with each rule's own mode; `trustplane scan --rules` takes the same files.",
    )
    exemptions: list[PostureExemption] = Field(
        default_factory=list,
        description="Exceptions to posture rules at admission, each with owner, reason and expiry.",
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Parameters of the rule packs (e.g. approved_registries for zero-trust).",
    )


class TlsSettings(BaseModel):
    """HTTPS for the HTTP API: a certificate of yours, or one the trust-domain CA issues."""

    model_config = ConfigDict(extra="forbid")

    cert_file: Path | None = Field(
        None, description="PEM certificate (chain) to serve HTTPS with; with tls.key_file."
    )
    key_file: Path | None = Field(None, description="PEM private key of tls.cert_file.")
    from_ca: bool = Field(
        False,
        description="Serve HTTPS with a certificate the trust-domain CA issues to this server "
        "(state_dir/tls/serving.pem, renewed at half its life while serving); needs the "
        "identity plane and tls.dns_names; instead of tls.cert_file.",
    )
    dns_names: list[str] = Field(
        default_factory=list,
        description="Names in the CA-issued serving certificate: the DNS names clients use "
        "(e.g. trustplane.trustplane.svc for the webhook's Service); IP addresses become IP SANs.",
    )
    cert_ttl_seconds: int = Field(
        86_400, ge=600, le=2_592_000, description="Lifetime of the CA-issued serving certificate."
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls.cert_file and tls.key_file must be set together")
        if self.from_ca and self.cert_file is not None:
            raise ValueError("tls.from_ca and tls.cert_file exclude each other: choose one")
        if self.from_ca and not self.dns_names:
            raise ValueError("tls.from_ca needs tls.dns_names (the names clients connect to)")
        return self

    @property
    def enabled(self) -> bool:
        """Whether the HTTP API serves HTTPS."""
        return self.from_ca or self.cert_file is not None


class AdminSettings(BaseModel):
    """Who may call the admin API, and with what."""

    model_config = ConfigDict(extra="forbid")

    issuers: list[IssuerSettings] = Field(
        default_factory=list,
        description="OIDC issuers whose tokens authenticate people at the admin API (JSON list "
        'in the environment); the caller is `admin.subject_type::"<sub>"`.',
    )
    subject_type: str = Field(
        "User", description="Cedar entity type of people calling the admin API (OIDC `sub`)."
    )
    groups_claim: str = Field(
        "groups", description="Claim of admin OIDC tokens listing the caller's groups."
    )
    audience: str = Field(
        "trustplane-admin", description="Audience a JWT-SVID must carry to call the admin API."
    )
    policy_dir: Path | None = Field(
        None,
        description="Cedar policies (*.cedar) authorizing admin actions, replacing the ones "
        "shipped with trustplane (validated against the shipped admin schema at start).",
    )
    bootstrap_token: bool = Field(
        True,
        description="Accept the bootstrap admin token from `trustplane init` (first setup); "
        "turn off once admins sign in with OIDC or SVIDs.",
    )


class GovernanceSettings(BaseModel):
    """Pending requests, notifications, and the deny-spike alarm and automatic rollback after
    an activation."""

    model_config = ConfigDict(extra="forbid")

    webhook_url: str | None = Field(
        None, description="Where governance notifications are POSTed (JSON); off when unset."
    )
    webhook_format: str = Field(
        "generic",
        pattern="^(generic|slack)$",
        description="generic: {event, time, text, subject}; slack: {text} (incoming webhooks).",
    )
    interval_ms: int = Field(
        1000,
        ge=50,
        le=60_000,
        description="How often pending requests are expired, notifications delivered, and "
        "revocations past their expiry recorded as expired.",
    )
    deny_spike_threshold: float = Field(
        0.3,
        gt=0,
        le=1,
        description="Alarm when, after a bundle activation, the share of denied decisions "
        "rises by this much or more over the share before it (0.3: from 5 % to 35 %).",
    )
    deny_spike_decisions: int = Field(
        100,
        ge=1,
        description="Decisions compared on each side of an activation for the deny-spike alarm.",
    )
    deny_spike_window_seconds: float = Field(
        300,
        gt=0,
        description="How long after an activation its decisions are gathered for the alarm.",
    )
    deny_jump_ratio: float = Field(
        3.0,
        ge=0,
        description="After an activation, a route whose deny rate by one policy reaches this "
        "many times its rate in the deny_spike_window_seconds before (smoothed) raises the "
        "deny-jump alarm (rollout/rollback.py); 0 turns the per-route judgement off.",
    )
    deny_jump_min_denies: int = Field(
        20,
        ge=1,
        description="Denies by one policy on one route after an activation before a jump is "
        "judged: a few denies on a quiet route are not a misdeploy.",
    )
    auto_rollback: bool = Field(
        False,
        description="On a deny-rate jump, activate the revision active before (the alarm is "
        "raised either way: metric, ledger record, webhook).",
    )


class UiSettings(BaseModel):
    """The pages under /ui (web/): people sign in with OIDC's authorization code flow (PKCE)
    against one of `admin.issuers`, whose ID token then authenticates every page like an
    admin API call."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Serve the pages under /ui.")
    issuer: str | None = Field(
        None,
        description="Which of `admin.issuers` people sign in with (its `issuer`); the first "
        "when unset.",
    )
    client_id: str = Field(
        "trustplane-ui",
        min_length=1,
        description="OAuth client id registered at the issuer; the ID token's `aud`, so list it "
        "in that issuer's `audiences`.",
    )
    client_secret: str | None = Field(
        None, description="Client secret, for an issuer that wants a confidential client."
    )
    authorization_endpoint: str | None = Field(
        None,
        description="The issuer's authorization endpoint; read from its OpenID discovery "
        "document when unset.",
    )
    token_endpoint: str | None = Field(
        None,
        description="The issuer's token endpoint; read from its OpenID discovery document "
        "when unset.",
    )
    redirect_uri: str | None = Field(
        None,
        description="Where the issuer sends people back (…/ui/callback); derived from the "
        "request's own URL when unset.",
    )
    scopes: list[str] = Field(
        default_factory=lambda: ["openid", "profile"], description="Scopes asked for."
    )
    session_hours: float = Field(
        8,
        gt=0,
        le=24,
        description="A session ends after this long, or when its ID token expires if sooner.",
    )
    summary_seconds: float = Field(
        60,
        ge=0,
        description="How long the executive page keeps the figures that read a month of "
        "records (30-day auth success, entitlement coverage) before reading them again; 0 "
        "reads them at every view.",
    )


class TracingSettings(BaseModel):
    """OpenTelemetry traces of decisions (telemetry/tracing.py), exported over OTLP/HTTP. Off by
    default: off, no span is ever made and OpenTelemetry is not even imported."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Trace decisions and export the spans.")
    endpoint: str = Field(
        "http://127.0.0.1:4318/v1/traces",
        pattern="^https?://",
        description="OTLP/HTTP traces endpoint (a collector's `/v1/traces`).",
    )
    sample_ratio: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Share of new traces sampled; a caller's `traceparent` decides for its own "
        "trace (sampled flag honoured).",
    )
    service_name: str = Field(
        "trustplane", min_length=1, description="`service.name` of the exported spans."
    )
    export_interval_ms: int = Field(
        2000, ge=10, le=60_000, description="How often batched spans are sent to the endpoint."
    )


class CliSettings(BaseModel):
    """How the CLI reaches a server."""

    model_config = ConfigDict(extra="forbid")

    server_url: str | None = Field(
        None,
        description="Server the CLI talks to; default: http://server.host:server.port "
        "(https:// when tls is on).",
    )
    admin_token: SecretStr | None = Field(
        None, description="Admin token for CLI calls to a server; default: state_dir/admin.token."
    )


# The settings before they were grouped into sections: old flat name -> new dotted name. Old
# environment names and file keys are refused with the new name (see `_renamed`).
RENAMED: dict[str, str] = {
    "database_url": "store.url",
    "change_poll_ms": "store.change_poll_ms",
    "host": "server.host",
    "port": "server.port",
    "workers": "server.workers",
    "max_body_bytes": "server.max_body_bytes",
    "trusted_proxies": "server.trusted_proxies",
    "switch_interval_us": "server.switch_interval_us",
    "durability": "ledger.durability",
    "flush_interval_ms": "ledger.flush_interval_ms",
    "checkpoint_interval_ms": "ledger.checkpoint_interval_ms",
    "ledger_ready_max_lag_ms": "ledger.ready_max_lag_ms",
    "ledger_queue_max": "ledger.queue_max",
    "ledger_spool_max_mb": "ledger.spool_max_mb",
    "ledger_origin": "ledger.origin",
    "mask": "ledger.mask",
    "ledger_appender": "ledger.appender",
    "bundle_dir": "policy.bundle_dir",
    "trusted_bundle_keys": "policy.trusted_key_files",
    "watch": "policy.watch",
    "expiry_warning_days": "policy.expiry_warning_days",
    "decision_cache_size": "policy.decision_cache_size",
    "decision_ttl_seconds": "policy.decision_ttl_seconds",
    "pep_auth": "pep.auth",
    "pep_audience": "pep.audience",
    "allow_unauthenticated_peps": "pep.allow_unauthenticated",
    "issuers": "pep.issuers",
    "identity_header": "pep.identity_header",
    "strip_credential": "pep.strip_credential",
    "grpc_enabled": "grpc.enabled",
    "grpc_port": "grpc.port",
    "grpc_transport": "grpc.transport",
    "grpc_answer_timeout_ms": "grpc.answer_timeout_ms",
    "grpc_native_binary": "grpc.native_binary",
    "trust_domain": "identity.trust_domain",
    "identity_kek": "identity.kek",
    "identity_kek_file": "identity.kek_file",
    "identity_issuer": "identity.issuer",
    "workload_socket": "identity.workload_socket",
    "x509_svid_ttl_seconds": "identity.x509_svid_ttl_seconds",
    "jwt_svid_ttl_seconds": "identity.jwt_svid_ttl_seconds",
    "svid_max_ttl_seconds": "identity.svid_max_ttl_seconds",
    "ca_ttl_seconds": "identity.ca_ttl_seconds",
    "identity_rotation": "identity.rotation",
    "token_exchange_rules": "identity.exchange_rules",
    "admission_namespaces": "admission.namespaces",
    "admission_rule_files": "admission.rule_files",
    "admission_exemptions": "admission.exemptions",
    "admission_params": "admission.params",
    "tls_cert_file": "tls.cert_file",
    "tls_key_file": "tls.key_file",
    "tls_from_ca": "tls.from_ca",
    "tls_dns_names": "tls.dns_names",
    "tls_cert_ttl_seconds": "tls.cert_ttl_seconds",
    "admin_issuers": "admin.issuers",
    "admin_subject_type": "admin.subject_type",
    "admin_groups_claim": "admin.groups_claim",
    "admin_audience": "admin.audience",
    "admin_policy_dir": "admin.policy_dir",
    "bootstrap_token": "admin.bootstrap_token",
    "webhook_url": "governance.webhook_url",
    "webhook_format": "governance.webhook_format",
    "governance_interval_ms": "governance.interval_ms",
    "deny_spike_threshold": "governance.deny_spike_threshold",
    "deny_spike_decisions": "governance.deny_spike_decisions",
    "deny_spike_window_seconds": "governance.deny_spike_window_seconds",
    "server_url": "cli.server_url",
    "admin_token": "cli.admin_token",
}

ENV_PREFIX = "TRUSTPLANE_"
ENV_DELIMITER = "__"


def env_name(path: str) -> str:
    """The environment variable of a dotted setting: `ledger.flush_interval_ms` ->
    `TRUSTPLANE_LEDGER__FLUSH_INTERVAL_MS`."""
    return ENV_PREFIX + path.replace(".", ENV_DELIMITER).upper()


# The TOML source `load_settings` hands to the settings; none for `Settings()` built directly.
_toml: ContextVar[TomlConfigSettingsSource | None] = ContextVar("trustplane_toml", default=None)


class Settings(BaseSettings):
    """Everything configurable, in sections; each component receives only its section."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        extra="forbid",
        validate_default=True,
    )

    state_dir: Path = Field(
        Path(".trustplane"), description="Where keys, the admin token and SQLite live."
    )
    log_level: str = Field("info", description="Python logging level.")
    log_format: str = Field(
        "text",
        pattern="^(text|json)$",
        description="`json`: one JSON object per log line, with the decision id and trace id "
        "when the line is about a decision.",
    )
    store: StoreSettings = Field(default_factory=StoreSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    ledger: LedgerSettings = Field(default_factory=LedgerSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    pep: PepSettings = Field(default_factory=PepSettings)
    grpc: GrpcSettings = Field(default_factory=GrpcSettings)
    identity: IdentitySettings = Field(default_factory=IdentitySettings)
    admission: AdmissionSettings = Field(default_factory=AdmissionSettings)
    tls: TlsSettings = Field(default_factory=TlsSettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    governance: GovernanceSettings = Field(default_factory=GovernanceSettings)
    trust: TrustSettings = Field(default_factory=TrustSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    cli: CliSettings = Field(default_factory=CliSettings)
    ui: UiSettings = Field(default_factory=UiSettings)

    @model_validator(mode="after")
    def _admin_audience_reserved(self) -> Settings:
        """A JWT-SVID for `admin.audience` is an admin API credential: token exchange must
        never mint one (see identity/exchange.py, which refuses it at exchange time too)."""
        reserved = self.admin.audience
        for index, rule in enumerate(self.identity.exchange_rules):
            if rule.audiences is not None and reserved in rule.audiences:
                raise ValueError(
                    f"identity.exchange_rules[{index}] ({rule.name}): audience {reserved!r} is "
                    "admin.audience, reserved for the admin API: no exchange rule can grant it"
                )
        known = [issuer.issuer for issuer in self.admin.issuers]
        if self.ui.issuer is not None and self.ui.issuer not in known:
            listed = ", ".join(known) or "none configured"
            raise ValueError(
                f"ui.issuer {self.ui.issuer!r} is not one of admin.issuers ({listed}): the pages "
                "sign people in as admin API callers"
            )
        if self.identity.issuer == reserved:
            raise ValueError(
                f"identity.issuer {reserved!r} equals admin.audience: JWT-SVIDs addressed to "
                "the issuer (token exchange's default audience) would be admin API credentials"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags over the environment over the config file (when `load_settings` names one)."""
        toml = _toml.get()
        if toml is None:
            return (init_settings, env_settings)
        return (init_settings, env_settings, toml)

    @property
    def effective_database_url(self) -> str:
        if self.store.url:
            return self.store.url
        return f"sqlite:///{(self.state_dir / 'trustplane.db').as_posix()}"

    @property
    def ledger_key_file(self) -> Path:
        return self.state_dir / "ledger.key"

    @property
    def admin_token_file(self) -> Path:
        return self.state_dir / "admin.token"


SECTIONS: tuple[str, ...] = tuple(
    name
    for name, field in Settings.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
)


def setting_fields() -> Iterator[tuple[str, FieldInfo]]:
    """Every setting as (dotted name, field), in the order of the model: the global ones,
    then each section's."""
    for name, field in Settings.model_fields.items():
        if name in SECTIONS:
            model = field.annotation
            assert isinstance(model, type) and issubclass(model, BaseModel)
            for sub, sub_field in model.model_fields.items():
                yield f"{name}.{sub}", sub_field
        else:
            yield name, field


def config_file_path(config_file: Path | None = None) -> Path | None:
    """The config file to read: `config_file`, else `$TRUSTPLANE_CONFIG`, else ./trustplane.toml
    when it exists, else none."""
    if config_file is not None:
        return config_file
    named = os.environ.get("TRUSTPLANE_CONFIG")
    if named:
        return Path(named)
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def _nested(overrides: dict[str, Any]) -> dict[str, Any]:
    """Overrides as nested dicts: `{"policy.watch": False}` and `{"policy": {"watch": False}}`
    both become the second; None (a flag not given) is dropped."""
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        if key in SECTIONS and isinstance(value, dict):
            flat.update({f"{key}.{name}": item for name, item in value.items()})
        else:
            flat[key] = value
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        if value is None:
            continue
        *parents, name = dotted.split(".")
        target = nested
        for part in parents:
            target = target.setdefault(part, {})
        target[name] = value
    return nested


def _environment() -> dict[str, str]:
    """TRUSTPLANE_* variables by upper-case name (pydantic-settings matches case-insensitively)."""
    return {name.upper(): name for name in os.environ if name.upper().startswith(ENV_PREFIX)}


def _renamed_problems(
    environment: dict[str, str], file_values: dict[str, Any], path: Path | None
) -> list[str]:
    """Names from before the sections, still set: refused with their new name rather than
    silently ignored."""
    problems = []
    for old, new in RENAMED.items():
        if env_name(old) in environment:
            problems.append(f"{environment[env_name(old)]} is no longer read: use {env_name(new)}")
        if old in file_values:
            problems.append(f"{old}: now {new} (from file {path})")
    return problems


def _lookup(values: Any, loc: tuple[str | int, ...]) -> bool:
    """Whether the nested `values` hold something at `loc` (or at a prefix of it that is not a
    mapping, e.g. a whole list)."""
    for part in loc:
        in_dict = isinstance(values, dict) and part in values
        in_list = isinstance(values, list) and isinstance(part, int) and part < len(values)
        if not (in_dict or in_list):
            return False
        values = values[part]
    return True


def origin_of(
    loc: tuple[str | int, ...],
    overrides: dict[str, Any],
    environment: dict[str, str],
    file_values: dict[str, Any],
    path: Path | None,
) -> str:
    """Where the value at `loc` came from: `command line`, `environment NAME`, `file PATH` or
    `default`, in the order the sources win."""
    names = _strings(loc)
    if names and _lookup(overrides, names):
        return "command line"
    for end in range(len(names), 0, -1):
        name = env_name(".".join(names[:end]))
        if name in environment:
            return f"environment {environment[name]}"
    if names:  # a problem with a whole section: the variables that set part of it
        inside = sorted(
            original
            for upper, original in environment.items()
            if upper.startswith(env_name(".".join(names)) + ENV_DELIMITER)
        )
        if inside:
            return "environment " + ", ".join(inside)
    if path is not None and _lookup(file_values, loc):
        return f"file {path}"
    return "default"


def _strings(loc: tuple[str | int, ...]) -> tuple[str, ...]:
    """The leading names of `loc`, up to the first list index."""
    names: list[str] = []
    for part in loc:
        if not isinstance(part, str):
            break
        names.append(part)
    return tuple(names)


@dataclass(frozen=True)
class _Sources:
    """What one load read, kept to say where each value came from."""

    path: Path | None
    file_values: dict[str, Any]
    environment: dict[str, str]
    overrides: dict[str, Any]

    def origin(self, loc: tuple[str | int, ...]) -> str:
        return origin_of(loc, self.overrides, self.environment, self.file_values, self.path)


def _toml_source(path: Path) -> TomlConfigSettingsSource:
    """pydantic-settings' TOML source for `path`, with a missing or malformed file refused
    (the source itself would skip a missing file silently)."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        return TomlConfigSettingsSource(Settings, path)
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None


def _load(config_file: Path | None, overrides: dict[str, Any] | None) -> tuple[Settings, _Sources]:
    path = config_file_path(config_file)
    source = _toml_source(path) if path is not None else None
    sources = _Sources(
        path,
        source.toml_data if source is not None else {},
        _environment(),
        _nested(overrides or {}),
    )
    renamed = _renamed_problems(sources.environment, sources.file_values, path)
    if renamed:
        raise ConfigError(f"invalid configuration: {'; '.join(renamed)}")
    token = _toml.set(source)
    try:
        return Settings(**sources.overrides), sources
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            field = ".".join(str(p) for p in loc) or "settings"
            problems.append(f"{field}: {err['msg']} (from {sources.origin(loc)})")
        raise ConfigError(f"invalid configuration: {'; '.join(problems)}") from None
    finally:
        _toml.reset(token)


def load_settings(
    config_file: Path | None = None, overrides: dict[str, Any] | None = None
) -> Settings:
    """Settings from `config_file` (or `$TRUSTPLANE_CONFIG`, or ./trustplane.toml if present),
    then the environment (`TRUSTPLANE_SECTION__NAME`), then explicit overrides (CLI flags).
    An invalid value is refused with its field and where it came from."""
    return _load(config_file, overrides)[0]


# Settings whose values are credentials: shown masked. URLs are masked in part (below).
SECRET_SETTINGS = frozenset({"identity.kek", "cli.admin_token"})
MASK = "********"


@dataclass(frozen=True)
class EffectiveSetting:
    """One setting as `trustplane config show` prints it."""

    name: str
    value: Any  # as JSON would have it, secrets masked
    origin: str  # `default`, `file PATH`, `environment NAME` or `command line`
    env: str


def effective_settings(
    config_file: Path | None = None, overrides: dict[str, Any] | None = None
) -> tuple[Path | None, list[EffectiveSetting]]:
    """The config file read (if any) and every setting's effective value and origin, in the
    order of the model, with credentials masked."""
    settings, sources = _load(config_file, overrides)
    dumped = settings.model_dump(mode="json")
    shown = []
    for name, _field in setting_fields():
        value: Any = dumped
        for part in name.split("."):
            value = value[part]
        shown.append(
            EffectiveSetting(
                name,
                _masked(name, value),
                sources.origin(tuple(name.split("."))),
                env_name(name),
            )
        )
    return sources.path, shown


def _masked(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in SECRET_SETTINGS:
        return MASK
    if name == "store.url":
        return _masked_url(value, keep_path=True)
    if name == "governance.webhook_url":
        return _masked_url(value, keep_path=False)  # chat webhooks carry their secret in it
    return value


def _masked_url(url: str, keep_path: bool) -> str:
    """`url` with its password (and, unless `keep_path`, its path and query) masked."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{host}" if ":" in userinfo else f"{user}@{host}"
    path, query = parts.path, parts.query
    if not keep_path:
        path, query = ("/" + MASK if path.strip("/") else path), (MASK if query else "")
    return urlunsplit((parts.scheme, netloc, path, query, ""))
