"""Rollout plane: the would-denies and canary denials of each record, indexed by policy, and
decisions counted by kind and time.

Existing records are read once to fill `rollout_evidence` with the derivation the ledger writer
applies to new ones (telemetry/rowcheck.py `evidence`, restated here: a migration stays as it
was written, and the store imports no other plane).

Revision ID: 0015
Revises: 0018
"""

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0018"
branch_labels = None
depends_on = None

_CHUNK = 5000


def upgrade() -> None:
    op.create_table(
        "rollout_evidence",
        sa.Column("policy_id", sa.String(400), primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("decision_id", sa.String(36), nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("principal", sa.String(400), nullable=False),
        sa.Column("cohort", sa.String(10), nullable=False),
    )
    op.create_index("ix_rollout_evidence_policy_ts", "rollout_evidence", ["policy_id", "ts"])
    op.create_index("ix_decisions_kind_ts", "decisions", ["kind", "ts"])
    _backfill()


def _backfill() -> None:
    """Evidence of the records already stored: would-denies (allow, shadow deny) and denials
    whose record names canary cohorts."""
    bind = op.get_bind()
    table = sa.table(
        "rollout_evidence",
        sa.column("policy_id"),
        sa.column("seq"),
        sa.column("decision_id"),
        sa.column("ts"),
        sa.column("principal"),
        sa.column("cohort"),
    )
    last = -1
    while True:
        rows = bind.execute(
            sa.text(
                "SELECT seq, decision_id, ts, principal, record FROM decisions "
                "WHERE seq > :last AND kind = 'decision' AND "
                "((decision = 'allow' AND shadow = 'deny') OR decision = 'deny') "
                "ORDER BY seq LIMIT :chunk"
            ),
            {"last": last, "chunk": _CHUNK},
        ).all()
        if not rows:
            return
        found = []
        for seq, decision_id, ts, principal, record in rows:
            try:
                document = json.loads(bytes(record))
                derived = evidence(document) if isinstance(document, dict) else []
            except (ValueError, TypeError, AttributeError):
                continue
            for policy_id, cohort in derived:
                found.append(
                    {
                        "policy_id": policy_id,
                        "seq": seq,
                        "decision_id": decision_id,
                        "ts": ts,
                        "principal": principal,
                        "cohort": cohort,
                    }
                )
        if found:
            bind.execute(sa.insert(table), found)
        last = rows[-1][0]


def evidence(record: dict[str, Any]) -> list[tuple[str, str]]:
    """(policy id, cohort) rows of a record, as rowcheck.evidence derived them at 0015."""
    if record.get("kind") != "decision":
        return []
    cohorts = record.get("canary") or {}
    if not isinstance(cohorts, dict):
        return []
    effect, shadow = record.get("decision"), record.get("shadow")
    if effect == "allow" and shadow == "deny":
        changed = record.get("would_change") or []
        return [(p, str(cohorts.get(p, "observed"))) for p in dict.fromkeys(changed)]
    if effect == "deny" and cohorts:
        reasons = record.get("reasons") or []
        return [(p, "enforced") for p in dict.fromkeys(reasons) if cohorts.get(p) == "enforced"]
    return []


def downgrade() -> None:
    op.drop_index("ix_decisions_kind_ts", "decisions")
    op.drop_index("ix_rollout_evidence_policy_ts", "rollout_evidence")
    op.drop_table("rollout_evidence")
