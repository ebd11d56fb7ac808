"""The schema of everything trustplane keeps. Alembic migrations create it; code uses these
Table objects (SQLAlchemy Core) so the hot paths stay close to the SQL they run."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
)

metadata = MetaData()

bundle_revisions = Table(
    "bundle_revisions",
    metadata,
    Column("revision", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    # JSON object {path: base64 content}: enough to rebuild the bundle for a rollback.
    Column("files", Text, nullable=False),
    Column("source", Text, nullable=False, default=""),
    Column("created_at", Float, nullable=False),
)

bundle_activations = Table(
    "bundle_activations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("revision", String(64), nullable=False),
    Column("activated_at", Float, nullable=False),
    Column("reason", String(40), nullable=False),
    Column("actor", String(200), nullable=False, default=""),
)

# The change feed: one counter per topic ("bundles", ...), bumped in the transaction that makes
# the change; serving processes compare versions (and, on PostgreSQL, are woken by NOTIFY).
change_versions = Table(
    "change_versions",
    metadata,
    Column("topic", String(64), primary_key=True),
    Column("version", BigInteger, nullable=False),
)

# Principals and credentials denied whatever policies or tokens say (recovery/revocation.py).
# Revoking twice is the same revocation: (kind, target) is unique.
revocations = Table(
    "revocations",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("kind", String(16), nullable=False),  # principal | credential | certificate
    Column("target", String(512), nullable=False),  # User::"alice", a JWT id, a serial
    Column("reason", Text, nullable=False),
    Column("actor", String(256), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=True),  # None: until lifted
    Column("ended", String(8), nullable=True),  # None (in force) | lifted | expired
    Column("ended_at", Float, nullable=True),
    Column("ended_by", String(256), nullable=True),
    Column("end_reason", Text, nullable=True),
    # One revocation in force per target; lifted and expired ones stay as history.
    Index(
        "uq_revocations_in_force",
        "kind",
        "target",
        unique=True,
        sqlite_where=text("ended IS NULL"),
        postgresql_where=text("ended IS NULL"),
    ),
)

# One row; every ledger append updates it first, which takes the database's write lock (SQLite)
# or the row lock (PostgreSQL) before the appender reads where the tree ends.
ledger_lock = Table(
    "ledger_lock",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("appends", BigInteger, nullable=False),
)

decisions = Table(
    "decisions",
    metadata,
    # Leaf index in the ledger's Merkle tree: assigned by the appender, never reused.
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("decision_id", String(36), nullable=False, unique=True),
    Column("ts", Float, nullable=False),
    Column("kind", String(20), nullable=False),
    Column("principal", String(400), nullable=False),
    Column("action", String(400), nullable=False),
    Column("resource", String(400), nullable=False),
    Column("decision", String(5), nullable=False),
    Column("shadow", String(5), nullable=False),
    Column("policies", Text, nullable=False),  # " id1 id2 " for LIKE queries by policy
    Column("revision", String(64), nullable=True),
    Column("record", LargeBinary, nullable=False),  # canonical JSON: the leaf's data
    Column("leaf_hash", LargeBinary(32), nullable=False),
    # Committed after its caller was answered 503 (sync durability): never delivered.
    Column("undelivered", Boolean, nullable=False, server_default=false()),
    Index("ix_decisions_principal_ts", "principal", "ts"),
    Index("ix_decisions_ts", "ts"),
    Index("ix_decisions_kind_ts", "kind", "ts"),  # rollout status: decisions since a time
)

# A record the store refused as a `decisions` row: its leaf keeps its place (`seq`) in the tree
# and its canonical bytes are here with the reason (telemetry/ledger.py, audit verify).
ledger_quarantine = Table(
    "ledger_quarantine",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("decision_id", String(64), nullable=False),
    Column("record", LargeBinary, nullable=False),
    Column("leaf_hash", LargeBinary(32), nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("root_hash", LargeBinary(32), nullable=False),
    Column("note", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

admin_tokens = Table(
    "admin_tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("token_sha256", String(64), nullable=False, unique=True),
    Column("label", String(200), nullable=False),
    Column("created_at", Float, nullable=False),
)

# identity/: the trust domain's CA and JWT signing keys. Private keys are sealed with the KEK
# (identity/kek.py); state moves prepared → active → superseded → retired (identity/keys.py).
identity_keys = Table(
    "identity_keys",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("kind", String(8), nullable=False),  # x509 | jwt
    Column("state", String(12), nullable=False),
    Column("algorithm", String(16), nullable=False),
    Column("public_pem", Text, nullable=False),  # CA certificate (x509) or public key (jwt)
    Column("sealed_private", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("not_after", Float, nullable=False),
    Column("activated_at", Float, nullable=True),
    Column("superseded_at", Float, nullable=True),
    Column("retired_at", Float, nullable=True),
    Index("ix_identity_keys_kind_state", "kind", "state"),
)

# Workload registration entries: a SPIFFE ID for callers whose attested selectors include all
# of `selectors` (JSON list, sorted).
identity_entries = Table(
    "identity_entries",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("spiffe_id", String(2048), nullable=False),
    Column("selectors", Text, nullable=False),
    Column("x509_ttl_seconds", Integer, nullable=True),
    Column("jwt_ttl_seconds", Integer, nullable=True),
    Column("owner", String(256), nullable=False),
    Column("created_by", String(256), nullable=False),
    Column("created_at", Float, nullable=False),
)

# Every identity issued or seen: the inventory (identity/inventory.py).
identity_inventory = Table(
    "identity_inventory",
    metadata,
    Column("principal", String(2048), primary_key=True),
    Column("kind", String(16), nullable=False),  # workload | ci | human
    Column("owner", String(256), nullable=False),
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("max_lifetime_seconds", Integer, nullable=False),
    Column("issued", BigInteger, nullable=False),
)

# governance/: JIT access requests and the approvals they collect (one per approver).
access_requests = Table(
    "access_requests",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("principal", String(512), nullable=False),  # User::"bob"
    Column("role", String(512), nullable=False),  # Role::"sre": the parent the grant adds
    Column("reason", Text, nullable=False),
    Column("ticket", String(200), nullable=False),
    Column("duration_seconds", Integer, nullable=False),
    Column("approvals_required", Integer, nullable=False),
    Column("tier", String(4), nullable=False),
    Column("status", String(12), nullable=False),  # pending|approved|denied|expired
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),  # a pending request lapses then
    Column("decided_at", Float, nullable=True),
    Column("decided_by", String(512), nullable=True),
    Column("grant_id", String(36), nullable=True),
    Column("revision", String(64), nullable=False),  # the bundle whose access.yaml applied
    Index("ix_access_requests_status", "status", "expires_at"),
)

access_approvals = Table(
    "access_approvals",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(36), nullable=False),
    Column("approver", String(512), nullable=False),
    Column("verdict", String(8), nullable=False),  # approve | deny
    Column("comment", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("request_id", "approver", name="uq_access_approvals_approver"),
)

# Grants: a parent role added to a principal for [starts_at, expires_at), unless revoked.
# kind: jit (from an approved request) | break-glass (self-service, short, reviewed).
access_grants = Table(
    "access_grants",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("kind", String(12), nullable=False),
    Column("principal", String(512), nullable=False),
    Column("role", String(512), nullable=False),
    Column("request_id", String(36), nullable=True),
    Column("profile", String(128), nullable=True),
    Column("reason", Text, nullable=False),
    Column("ticket", String(200), nullable=False),
    Column("created_by", String(512), nullable=False),
    Column("starts_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
    Column("revoked_by", String(512), nullable=True),
    Column("revoke_reason", Text, nullable=True),
    Column("expiry_notified", Boolean, nullable=False, server_default=false()),
    Index("ix_access_grants_expires", "expires_at"),
)

break_glass_reviews = Table(
    "break_glass_reviews",
    metadata,
    Column("grant_id", String(36), primary_key=True),
    Column("opened_by", String(512), nullable=False),
    Column("due_at", Float, nullable=False),
    Column("closed_at", Float, nullable=True),
    Column("closed_by", String(512), nullable=True),
    Column("notes", Text, nullable=True),
)

# The exception register: forbid policy `policy_id` does not apply to the flow for
# [starts_at, expires_at) once approved. Expiry is mandatory (NOT NULL once approved).
policy_exceptions = Table(
    "policy_exceptions",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("policy_id", String(128), nullable=False),
    Column("policy_tier", String(4), nullable=False),
    Column("principal", String(512), nullable=False),
    Column("action", String(512), nullable=True),  # None: any action
    Column("resource", String(512), nullable=True),  # None: any resource
    Column("owner", String(256), nullable=False),
    Column("reason", Text, nullable=False),
    Column("ticket", String(200), nullable=False),
    Column("requested_by", String(512), nullable=False),
    Column("status", String(12), nullable=False),  # pending|approved|denied
    Column("approvals_required", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("duration_seconds", Integer, nullable=False),
    Column("starts_at", Float, nullable=True),
    Column("expires_at", Float, nullable=True),
    Column("decided_by", String(512), nullable=True),
    Column("revoked_at", Float, nullable=True),
    Column("revoked_by", String(512), nullable=True),
    Column("revoke_reason", Text, nullable=True),
)

# Notifications written in the transaction that causes them and delivered later with retries:
# a crash between the change and the webhook loses neither.
outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event", String(64), nullable=False),
    Column("payload", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", Float, nullable=False),
    Column("delivered_at", Float, nullable=True),
    Column("last_error", Text, nullable=True),
    Index("ix_outbox_due", "delivered_at", "next_attempt_at"),
)

# Image attestations (posture/image_attestations.py): what CI stated about an image digest.
# `envelope` is the DSSE envelope the server signed with the trust domain's JWT key over the
# in-toto statement and the signer's SPIFFE ID; the other columns are copies for queries, and
# admission trusts only what the envelope's verified payload says.
attestations = Table(
    "attestations",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("digest", String(71), nullable=False),  # sha256:<64 hex>
    Column("repository", String(2048), nullable=False),
    Column("image", String(2048), nullable=False),  # as CI named it, pinned by digest
    Column("predicate_type", String(512), nullable=False),
    Column("signer", String(2048), nullable=False),  # SPIFFE ID of the JWT-SVID presented
    Column("created_at", Float, nullable=False),
    Column("decision_id", String(36), nullable=False),  # its record in the ledger
    Column("envelope", Text, nullable=False),
    Index("ix_attestations_digest", "digest"),
    Index("ix_attestations_created_at", "created_at"),
)

# enforcement/pep.py: the policy enforcement points allowed to ask for decisions. A PEP proves
# itself with a token (only its sha256 is kept) or, when `spiffe_id` is set, with an mTLS client
# certificate or JWT-SVID naming that SPIFFE ID; `name` is what decision records and metrics show.
peps = Table(
    "peps",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("token_sha256", String(64), nullable=True, unique=True),
    Column("spiffe_id", String(2048), nullable=True, unique=True),
    Column("created_at", Float, nullable=False),
)

# trust/travel.py: where each principal was last seen from, one row per country, shared by the
# replicas (impossible travel compares a request with the newest row; a new country is one with
# no row seen within the configured days).
trust_locations = Table(
    "trust_locations",
    metadata,
    Column("principal", String(1024), primary_key=True),  # Cedar entity text: User::"alice"
    Column("country", String(8), primary_key=True),
    Column("last_seen", Float, nullable=False),
    Column("latitude", Float, nullable=True),
    Column("longitude", Float, nullable=True),
    Column("address", String(64), nullable=False),
    # The change feed's refresh reads the sightings written since its last read.
    Index("ix_trust_locations_last_seen", "last_seen"),
)

# rollout/labels.py: a person's verdict on one would-deny of an observe-mode policy (would it have
# denied rightly?), the evidence the promotion gates count. Labelling again replaces the verdict;
# the ledger keeps every labelling with who and why.
rollout_labels = Table(
    "rollout_labels",
    metadata,
    Column("decision_id", String(36), primary_key=True),
    Column("policy_id", String(400), primary_key=True),
    Column("verdict", String(20), nullable=False),  # true-positive | false-positive
    Column("note", Text, nullable=False),
    Column("actor", String(400), nullable=False),
    Column("principal", String(400), nullable=False),  # the decision's, for bulk and strata
    Column("labelled_at", Float, nullable=False),
    Index("ix_rollout_labels_policy", "policy_id"),
)

# trust/device_store.py: the newest posture report of each device, as an MDM/EDR integration
# posted it (POST /v1/trust/devices/{id}/posture); every replica holds them in memory
# (trust/device.py), reloaded when the change feed's `trust-devices` topic moves.
trust_devices = Table(
    "trust_devices",
    metadata,
    Column("device_id", String(200), primary_key=True),
    Column("disk_encrypted", Boolean, nullable=False),
    Column("os_patch_age_days", Integer, nullable=False),
    Column("edr_running", Boolean, nullable=False),
    Column("screen_lock", Boolean, nullable=False),
    Column("managed", Boolean, nullable=False),
    Column("reported_at", Float, nullable=False),  # when the integration observed the device
    Column("received_at", Float, nullable=False),  # when this server stored the report
    Column("reported_by", String(400), nullable=False),  # the admin caller who posted it
    Column("certificate_serial", String(80), nullable=True),  # decimal: the device's mTLS cert
    Column("owner", String(400), nullable=False),
)
Index("ix_trust_devices_serial", trust_devices.c.certificate_serial)

# trust/behaviour_store.py: each principal's history of use, written behind by every replica
# and read back by the others. kind `action` / `resource_type`: when the principal last used
# that name (novelty); kind `minute`: name is a minute number, count and denials are that
# minute's requests and denials summed over the replicas (velocity).
trust_behaviour = Table(
    "trust_behaviour",
    metadata,
    Column("principal", String(1024), primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("name", String(400), primary_key=True),
    Column("last_seen", Float, nullable=False),
    Column("count", BigInteger, nullable=False),
    Column("denials", BigInteger, nullable=False),
    Column("updated_at", Float, nullable=False),  # when a replica last wrote the row
)
Index("ix_trust_behaviour_updated", trust_behaviour.c.updated_at)

# outcomes/snapshots.py: the scorecard of a month as computed at a time, so the report shows
# trends; computing the same month again replaces it.
scorecard_snapshots = Table(
    "scorecard_snapshots",
    metadata,
    Column("period", String(7), primary_key=True),  # YYYY-MM
    Column("computed_at", Float, nullable=False),
    Column("revision", String(64), nullable=True),
    Column("document", Text, nullable=False),  # the scorecard's JSON
)

# The rollout evidence of each ledger record, derived from it (telemetry/rowcheck.py: evidence)
# by the ledger writer in the transaction that stores the record: one row per policy a decision
# was a would-deny of (cohort `observed`: an observe-mode policy, or a canary policy for a
# principal outside its enforced share) or was denied by as a canary (cohort `enforced`). The
# promotion gates count these by index instead of scanning every record; `audit verify`
# recomputes them from the records.
rollout_evidence = Table(
    "rollout_evidence",
    metadata,
    Column("policy_id", String(400), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("decision_id", String(36), nullable=False),
    Column("ts", Float, nullable=False),
    Column("principal", String(400), nullable=False),
    Column("cohort", String(10), nullable=False),  # observed | enforced
    Index("ix_rollout_evidence_policy_ts", "policy_id", "ts"),
)

# rollout/drift.py: one row per drift incident, the active revision no longer matching the source
# it was declared from (the bundle directory the server follows): opened when first detected,
# cleared when they match again. `trustplane policy drift --history` counts them per month (M10).
policy_drift = Table(
    "policy_drift",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("detected_at", Float, nullable=False),
    Column("cleared_at", Float, nullable=True),
    Column("revision", String(64), nullable=False),  # the active revision when detected
    Column("source", Text, nullable=False),  # where the declared source was read
    Column("source_revision", String(64), nullable=True),  # None: the source could not be read
    Column("files", Text, nullable=False),  # JSON {added, removed, changed}
    # True while open, NULL once cleared: the unique constraint lets one incident be open, so
    # workers or replicas detecting the same drift at once open it once.
    Column("is_open", Boolean, nullable=True),
    Index("ix_policy_drift_detected", "detected_at"),
    UniqueConstraint("is_open", name="uq_policy_drift_open"),
)

# outcomes/simulation_runs.py: the estate-wide figures of a `trustplane simulate --all --save`,
# so the scorecard measures lateral-movement resistance from a run, not an estimate.
simulation_runs = Table(
    "simulation_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_at", Float, nullable=False),
    Column("revision", String(64), nullable=True),  # the bundle simulated against
    Column("paths", Integer, nullable=False),  # (start, tier-0 target) pairs open without authz
    Column("blocked", Integer, nullable=False),  # ... of them blocked by the active policy
    Column("summary", Text, nullable=False),  # JSON: scenarios with their open tier-0 targets
    Index("ix_simulation_runs_run_at", "run_at"),
)
