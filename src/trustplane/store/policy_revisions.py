"""Bundle revisions and their activation history: what makes rollback one command."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError

from trustplane.store.feed import announce
from trustplane.store.tables import bundle_activations, bundle_revisions

BUNDLES_TOPIC = "bundles"


@dataclass(frozen=True)
class Activation:
    id: int
    revision: str
    name: str
    activated_at: float
    reason: str
    actor: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "revision": self.revision,
            "name": self.name,
            "activated_at": self.activated_at,
            "reason": self.reason,
            "actor": self.actor,
        }


class BundleStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def save_revision(self, revision: str, name: str, files: dict[str, bytes], source: str) -> None:
        encoded = json.dumps(
            {path: base64.b64encode(data).decode() for path, data in sorted(files.items())}
        )
        try:
            with self._engine.begin() as connection:
                connection.execute(
                    insert(bundle_revisions).values(
                        revision=revision,
                        name=name,
                        files=encoded,
                        source=source,
                        created_at=time.time(),
                    )
                )
        except IntegrityError:
            pass  # content-addressed: the same revision is already kept

    def load_files(self, revision: str) -> dict[str, bytes] | None:
        with self._engine.connect() as connection:
            encoded = connection.execute(
                select(bundle_revisions.c.files).where(bundle_revisions.c.revision == revision)
            ).scalar()
        if encoded is None:
            return None
        return {path: base64.b64decode(data) for path, data in json.loads(encoded).items()}

    def resolve(self, prefix: str) -> list[str]:
        """Full revision ids starting with `prefix` (people type short ids)."""
        with self._engine.connect() as connection:
            rows = connection.execute(
                select(bundle_revisions.c.revision).where(
                    bundle_revisions.c.revision.startswith(prefix, autoescape=True)
                )
            ).all()
        return [r[0] for r in rows]

    def record_activation(self, revision: str, reason: str, actor: str) -> None:
        with self._engine.begin() as connection:
            connection.execute(
                insert(bundle_activations).values(
                    revision=revision, activated_at=time.time(), reason=reason, actor=actor
                )
            )
            announce(connection, BUNDLES_TOPIC)

    def history(self, limit: int = 50) -> list[Activation]:
        query = (
            select(
                bundle_activations.c.id,
                bundle_activations.c.revision,
                bundle_revisions.c.name,
                bundle_activations.c.activated_at,
                bundle_activations.c.reason,
                bundle_activations.c.actor,
            )
            .join(
                bundle_revisions,
                bundle_revisions.c.revision == bundle_activations.c.revision,
            )
            .order_by(bundle_activations.c.id.desc())
            .limit(limit)
        )
        with self._engine.connect() as connection:
            return [Activation(*row) for row in connection.execute(query).all()]

    def revisions(self, limit: int = 50) -> list[dict[str, Any]]:
        with self._engine.connect() as connection:
            rows = connection.execute(
                select(
                    bundle_revisions.c.revision,
                    bundle_revisions.c.name,
                    bundle_revisions.c.source,
                    bundle_revisions.c.created_at,
                )
                .order_by(bundle_revisions.c.created_at.desc())
                .limit(limit)
            ).all()
        return [{"revision": r[0], "name": r[1], "source": r[2], "created_at": r[3]} for r in rows]
