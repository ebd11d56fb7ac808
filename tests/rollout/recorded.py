"""Decision records made as the server makes them (trust assessor, evaluator, masked ledger
entry), without a server: for the replay and suggestion tests."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from tests.conftest import SHOP
from trustplane.decision.loader import LoadedBundle, LoadOptions, load_bundle
from trustplane.decision.policy_bundle import BundleSource
from trustplane.governance.catalog import BUNDLE_FILES
from trustplane.model import AccessRequest, EntityRef
from trustplane.rollout.policy import BUNDLE_FILES as ROLLOUT_FILES
from trustplane.telemetry.ledger import decision_entry
from trustplane.telemetry.masking import Masker
from trustplane.trust.assessor import TrustAssessor
from trustplane.trust.policy import BUNDLE_FILES as TRUST_FILES

OPTIONS = LoadOptions(extra_files=BUNDLE_FILES + TRUST_FILES + ROLLOUT_FILES)
ASSESS = TrustAssessor([])


def load(directory: Path, run_tests: bool = True) -> LoadedBundle:
    options = OPTIONS if run_tests else replace(OPTIONS, run_tests=False)
    return load_bundle(BundleSource.from_dir(directory), options)


SHOP_BUNDLE = load(SHOP)
ENTITIES = json.loads((SHOP / "entities.json").read_text())
PRINCIPALS = [e["uid"] for e in ENTITIES if e["uid"]["type"] in ("User", "Service", "CiJob")]
RESOURCES = [e["uid"] for e in ENTITIES if e["uid"]["type"] in ("Api", "Service", "Dataset")]
RESOURCES += [e["uid"] for e in ENTITIES if e["uid"]["type"] == "Database"]
ACTIONS = [
    "payments:refund",
    "payments:read",
    "payments:charge",
    "inventory:read",
    "billing:read",
    "ops:read-logs",
    "ops:restart",
    "db:query",
    "db:admin",
    "customers:export",
    "admin:console-login",
]


def record_of(
    loaded: LoadedBundle, request: AccessRequest, masker: Masker | None = None
) -> dict[str, Any]:
    """What the server records for `request`: assessed, evaluated, masked."""
    seen, assessment = ASSESS(request, loaded.bundle)
    decision = loaded.evaluator.evaluate(seen, trust=assessment)
    entry = decision_entry(request, decision, masker or Masker([]))
    return dict(orjson.loads(entry.record))


def ask(principal: dict[str, str], action: str, resource: dict[str, str], **context: Any) -> Any:
    return AccessRequest(
        EntityRef(principal["type"], principal["id"]),
        EntityRef("Action", action),
        EntityRef(resource["type"], resource["id"]),
        context,
    )
