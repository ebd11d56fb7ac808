"""The one settings object: environment (`TRUSTPLANE_*`) over a TOML config file over defaults.

Every component receives a `Settings`; nothing else reads the environment.
"""

from __future__ import annotations

import os
import tomllib
from datetime import date
from enum import StrEnum
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

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
    issuer: str = Field(description="The `iss` of the pipeline's OIDC token (in `issuers`).")
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
        "but admin_audience, which no rule can grant).",
    )


class AdmissionModes(BaseModel):
    """Pod Security Admission-style modes for a namespace: the rule packs (`name`, or
    `name@v1.N` for a pack at a Kubernetes minor version) enforced, warned about and audited."""

    model_config = ConfigDict(extra="forbid")

    enforce: list[str] = Field(default_factory=lambda: ["pss-baseline"])
    warn: list[str] = Field(default_factory=lambda: ["pss-restricted"])
    audit: list[str] = Field(default_factory=lambda: ["pss-restricted", "zero-trust"])


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


class ConfigError(Exception):
    """A configuration value or file is wrong; the message names which."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TRUSTPLANE_", extra="forbid", validate_default=True
    )

    state_dir: Path = Field(
        Path(".trustplane"), description="Where keys, the admin token and SQLite live."
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: SQLite in state_dir (WAL mode)."
    )
    bundle_dir: Path | None = Field(None, description="Policy bundle directory to serve.")
    host: str = Field("127.0.0.1", description="Address the HTTP API listens on.")
    port: int = Field(8181, ge=0, le=65535, description="Port the HTTP API listens on.")
    durability: Durability = Field(
        Durability.BATCH,
        description="batch: decisions are committed within flush_interval_ms; "
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
    ledger_ready_max_lag_ms: int = Field(
        10_000,
        ge=100,
        le=3_600_000,
        description="/readyz answers 503 once the oldest decision not yet in the ledger is "
        "older than this, or while ledger commits fail.",
    )
    ledger_queue_max: int = Field(
        100_000,
        ge=100,
        le=10_000_000,
        description="Decisions held in memory for the ledger; beyond that (and while the store "
        "fails) batch decisions go to the disk spool, and sync ones are answered 503.",
    )
    ledger_spool_max_mb: int = Field(
        1024,
        ge=1,
        le=1_048_576,
        description="Largest disk spool (state_dir/ledger-spool) of decisions the store has not "
        "taken; once full, decisions are answered 503 rather than left unrecorded.",
    )
    ledger_origin: str = Field(
        "trustplane.local/decisions", description="Origin line of signed checkpoints."
    )
    mask: list[str] = Field(
        default_factory=lambda: ["/context/token", "/context/authorization"],
        description="JSON pointers erased from recorded requests before anything is written.",
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Largest request body the HTTP API accepts."
    )
    trusted_bundle_keys: list[Path] = Field(
        default_factory=list,
        description="Paths of Ed25519 public-key PEM files; when set, only bundles signed by "
        "one of those keys load.",
    )
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
        description="How long enforcement points (the SDK's cache) may reuse an answer; never "
        "past the next policy @expires boundary; 0 disables reuse.",
    )
    ledger_appender: LedgerAppender = Field(
        LedgerAppender.THREAD,
        description="Where the ledger is committed: `thread` (a writer thread in the serving "
        "process) or `process` (a child process, so commits never compete with evaluations for "
        "the interpreter lock; it costs more CPU in all, see docs/benchmarks.md finding 8).",
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Serving processes behind one listening socket. Each evaluates and "
        "appends to the one ledger; /metrics aggregates them all.",
    )
    change_poll_ms: int = Field(
        100,
        ge=10,
        le=10_000,
        description="On SQLite, how often a serving process polls the store for changes made by "
        "another (a bundle activated by another worker). PostgreSQL wakes it with NOTIFY "
        "and polls only as a fallback, every second.",
    )
    issuers: list[IssuerSettings] = Field(
        default_factory=list,
        description="Issuers whose bearer JWTs identify callers at the enforcement points "
        "(JSON list in the environment).",
    )
    trusted_proxies: list[IPv4Network | IPv6Network] = Field(
        default_factory=list,
        description="Addresses (CIDR) of proxies whose forwarded headers (X-Forwarded-*, "
        "X-Original-*, the identity header) are believed; from anyone else they are ignored.",
    )
    identity_header: str | None = Field(
        None,
        description="Header in which a trusted proxy names an already authenticated caller "
        "(e.g. X-Forwarded-User from an OIDC proxy); off when unset.",
    )
    grpc_enabled: bool = Field(
        True, description="Serve Envoy ext_authz (envoy.service.auth.v3.Authorization) over gRPC."
    )
    grpc_port: int = Field(9191, ge=0, le=65535, description="Port of the ext_authz gRPC server.")
    grpc_transport: GrpcTransport = Field(
        GrpcTransport.AUTO,
        description="What terminates ext_authz gRPC: `native`, the compiled front "
        "trustplane-extauthz (built by scripts/bootstrap.sh with Debian's libgrpc++), which "
        "hands each call's bytes to this process; `python`, grpcio's asyncio server; `auto`, "
        "native when installed. Same answers either way; the front costs far less per call.",
    )
    grpc_answer_timeout_ms: int = Field(
        10_000,
        ge=50,
        le=60_000,
        description="On the compiled front: a call the serving process has not answered in "
        "this time ends UNAVAILABLE (a deny at Envoy, whose own ext_authz timeout is usually "
        "shorter).",
    )
    grpc_native_binary: Path | None = Field(
        None,
        description="Path of trustplane-extauthz (default: beside this Python; PATH is not "
        "searched, since it answers every Envoy authorization call).",
    )
    strip_credential: bool = Field(
        False,
        description="Ask Envoy to remove the caller's Authorization header before the request "
        "goes upstream (the upstream gets the identity headers instead).",
    )
    pep_auth: PepAuth = Field(
        PepAuth.OFF,
        description="Authentication of the enforcement points calling the decision endpoints "
        "(AuthZEN, forward-auth, Envoy HTTP and gRPC ext_authz, admission): a per-PEP token "
        "(`trustplane pep add`), an mTLS client certificate or a JWT-SVID (audience "
        "pep_audience) of a registered PEP. `serve` refuses a host beyond loopback unless this "
        "is `required` or allow_unauthenticated_peps is set.",
    )
    pep_audience: str = Field(
        "trustplane-pep", min_length=1, description="Audience a PEP's JWT-SVID must carry."
    )
    allow_unauthenticated_peps: bool = Field(
        False,
        description="Serve beyond loopback although pep_auth is not `required`: anyone who "
        "can connect then gets decisions and names any principal (docs/threat-model.md).",
    )
    watch: bool = Field(True, description="Reload the bundle when its files change.")
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
    expiry_warning_days: int = Field(7, ge=0, description="Warn when a policy expires sooner.")
    log_level: str = Field("info", description="Python logging level.")
    switch_interval_us: int = Field(
        0,
        ge=0,
        le=100_000,
        description="Interpreter thread switch interval while serving (0: leave Python's "
        "5 ms). Cedar evaluation releases the GIL; while the ledger writer is busy, each "
        "evaluation can wait up to a full interval to get it back (docs/benchmarks.md).",
    )
    trust_domain: str = Field(
        "trustplane.local", description="SPIFFE trust domain of the identities issued here."
    )
    identity_kek: SecretStr | None = Field(
        None,
        description="Key-encryption key for identity private keys: 32 bytes, base64url "
        "(`trustplane identity new-kek`); prefer identity_kek_file.",
    )
    identity_kek_file: Path | None = Field(
        None, description="File holding the key-encryption key (mode 0600, refused otherwise)."
    )
    identity_issuer: str | None = Field(
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
    identity_rotation: bool = Field(
        True, description="Prepare, activate and retire keys on schedule while serving."
    )
    token_exchange_rules: list[ExchangeRuleSettings] = Field(
        default_factory=list, description="CI trust rules for POST /v1/token (RFC 8693)."
    )
    admission: AdmissionModes = Field(
        default_factory=AdmissionModes,
        description="Admission webhook modes for every namespace not in admission_namespaces "
        "(JSON in the environment).",
    )
    admission_namespaces: dict[str, AdmissionModes] = Field(
        default_factory=dict,
        description="Admission webhook modes per namespace, like Pod Security Admission's "
        "namespace labels.",
    )
    admission_rule_files: list[Path] = Field(
        default_factory=list,
        description="Your own posture rule files (the rule packs' format), reviewed in every "
        "namespace with each rule's own mode; `trustplane scan --rules` takes the same files.",
    )
    admission_exemptions: list[PostureExemption] = Field(
        default_factory=list,
        description="Exceptions to posture rules at admission, each with owner, reason and expiry.",
    )
    admission_params: dict[str, Any] = Field(
        default_factory=dict,
        description="Parameters of the rule packs (e.g. approved_registries for zero-trust).",
    )
    tls_cert_file: Path | None = Field(
        None, description="PEM certificate (chain) to serve HTTPS with; with tls_key_file."
    )
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file.")
    tls_from_ca: bool = Field(
        False,
        description="Serve HTTPS with a certificate the trust-domain CA issues to this server "
        "(state_dir/tls/serving.pem, renewed at half its life while serving); needs the "
        "identity plane and tls_dns_names; instead of tls_cert_file.",
    )
    tls_dns_names: list[str] = Field(
        default_factory=list,
        description="Names in the CA-issued serving certificate: the DNS names clients use "
        "(e.g. trustplane.trustplane.svc for the webhook's Service); IP addresses become IP SANs.",
    )
    tls_cert_ttl_seconds: int = Field(
        86_400, ge=600, le=2_592_000, description="Lifetime of the CA-issued serving certificate."
    )
    admin_issuers: list[IssuerSettings] = Field(
        default_factory=list,
        description="OIDC issuers whose tokens authenticate people at the admin API (JSON list "
        'in the environment); the caller is `admin_subject_type::"<sub>"`.',
    )
    admin_subject_type: str = Field(
        "User", description="Cedar entity type of people calling the admin API (OIDC `sub`)."
    )
    admin_groups_claim: str = Field(
        "groups", description="Claim of admin OIDC tokens listing the caller's groups."
    )
    admin_audience: str = Field(
        "trustplane-admin", description="Audience a JWT-SVID must carry to call the admin API."
    )
    admin_policy_dir: Path | None = Field(
        None,
        description="Cedar policies (*.cedar) authorizing admin actions, replacing the ones "
        "shipped with trustplane (validated against the shipped admin schema at start).",
    )
    bootstrap_token: bool = Field(
        True,
        description="Accept the bootstrap admin token from `trustplane init` (first setup); "
        "turn off once admins sign in with OIDC or SVIDs.",
    )
    webhook_url: str | None = Field(
        None, description="Where governance notifications are POSTed (JSON); off when unset."
    )
    webhook_format: str = Field(
        "generic",
        pattern="^(generic|slack)$",
        description="generic: {event, time, text, subject}; slack: {text} (incoming webhooks).",
    )
    governance_interval_ms: int = Field(
        1000,
        ge=50,
        le=60_000,
        description="How often pending requests are expired and notifications delivered.",
    )
    admin_token: str | None = Field(
        None, description="Admin token for CLI calls to a server; default: state_dir/admin.token."
    )
    server_url: str | None = Field(
        None, description="Server the CLI talks to; default: http://host:port."
    )
    trust: TrustSettings = Field(
        default_factory=TrustSettings, description="The trust plane (TRUSTPLANE_TRUST__…)."
    )

    @field_validator("mask")
    @classmethod
    def _pointers_are_absolute(cls, value: list[str]) -> list[str]:
        for pointer in value:
            if not pointer.startswith("/"):
                raise ValueError(f"mask pointer {pointer!r} must start with '/'")
        return value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sqlite", "postgresql")):
            raise ValueError("only sqlite:// and postgresql:// URLs are supported")
        return value

    @model_validator(mode="after")
    def _admin_audience_reserved(self) -> Settings:
        """A JWT-SVID for `admin_audience` is an admin API credential: token exchange must
        never mint one (see identity/exchange.py, which refuses it at exchange time too)."""
        reserved = self.admin_audience
        for index, rule in enumerate(self.token_exchange_rules):
            if rule.audiences is not None and reserved in rule.audiences:
                raise ValueError(
                    f"token_exchange_rules[{index}] ({rule.name}): audience {reserved!r} is "
                    "admin_audience, reserved for the admin API: no exchange rule can grant it"
                )
        if self.identity_issuer == reserved:
            raise ValueError(
                f"identity_issuer {reserved!r} equals admin_audience: JWT-SVIDs addressed to "
                "the issuer (token exchange's default audience) would be admin API credentials"
            )
        return self

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be set together")
        if self.tls_from_ca and self.tls_cert_file is not None:
            raise ValueError("tls_from_ca and tls_cert_file exclude each other: choose one")
        if self.tls_from_ca and not self.tls_dns_names:
            raise ValueError("tls_from_ca needs tls_dns_names (the names clients connect to)")
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
        return (init_settings, env_settings)

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.state_dir / 'trustplane.db').as_posix()}"

    @property
    def ledger_key_file(self) -> Path:
        return self.state_dir / "ledger.key"

    @property
    def admin_token_file(self) -> Path:
        return self.state_dir / "admin.token"


def load_settings(
    config_file: Path | None = None, overrides: dict[str, Any] | None = None
) -> Settings:
    """Settings from `config_file` (or `$TRUSTPLANE_CONFIG`, or ./trustplane.toml if present),
    then the environment, then explicit overrides (CLI flags)."""
    env_path = os.environ.get("TRUSTPLANE_CONFIG")
    path = config_file or (Path(env_path) if env_path else None)
    file_values: dict[str, Any] = {}
    if path is None and Path(DEFAULT_CONFIG_FILE).is_file():
        path = Path(DEFAULT_CONFIG_FILE)
    if path is not None:
        try:
            file_values = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
    env_keys = {
        name for name in Settings.model_fields if f"TRUSTPLANE_{name.upper()}" in os.environ
    }
    # Environment beats the file: drop file values the environment sets.
    values = {k: v for k, v in file_values.items() if k not in env_keys}
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "settings"
            name = str(err["loc"][0]) if err["loc"] else ""
            if (overrides or {}).get(name) is not None:
                origin = "command line"
            elif name in env_keys:
                origin = f"environment TRUSTPLANE_{name.upper()}"
            elif name in file_values:
                origin = str(path)
            else:
                origin = "default"
            problems.append(f"{field}: {err['msg']} (from {origin})")
        raise ConfigError(f"invalid configuration: {'; '.join(problems)}") from None
