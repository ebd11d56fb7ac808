"""The universe and flows read from the store: registered workloads and what the ledger names,
on both backends."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import Engine, insert

from tests.conftest import ORIGIN
from trustplane.decision.policy_bundle import BundleSource, compile_bundle
from trustplane.model import AccessRequest, Decision, Effect, EntityRef, new_decision_id
from trustplane.outcomes.universe import KnownUniverse, from_store, observed_flows
from trustplane.store.tables import identity_entries
from trustplane.telemetry.checkpoint import NoteSigner
from trustplane.telemetry.ledger import Ledger, decision_entry, search_entry
from trustplane.telemetry.masking import Masker

ESTATE = Path(__file__).parent / "estate" / "bundle"
WEB = EntityRef("Service", "web")


def _entry(principal: EntityRef, action: str, resource: EntityRef, effect: Effect) -> object:
    decision = Decision(new_decision_id(), effect, (), effect, (), (), (), "rev", 5, time.time())
    request = AccessRequest(principal, EntityRef("Action", action), resource, {})
    return decision_entry(request, decision, Masker([]))


def test_store_evidence_joins_the_bundle(engine: Engine, signer: NoteSigner) -> None:
    bundle = compile_bundle(BundleSource.from_dir(ESTATE))
    ledger = Ledger(engine, signer, ORIGIN)
    ledger.append(
        [
            _entry(
                EntityRef("Service", "web"), "call", EntityRef("Api", "api.orders"), Effect.ALLOW
            ),
            _entry(
                EntityRef("Service", "web"), "call", EntityRef("Api", "ledger.post"), Effect.DENY
            ),
            _entry(EntityRef("User", "zed"), "ops:read", EntityRef("Service", "x"), Effect.ALLOW),
            search_entry(
                "subject",
                AccessRequest(
                    EntityRef("User", "*"), EntityRef("Action", "call"), EntityRef("Api", "x"), {}
                ),
                Masker([]),
                [],
                "",
                0,
                "rev",
                1,
            ),
        ]  # type: ignore[list-item]
    )
    with engine.begin() as conn:
        for spiffe in ("spiffe://bank.test/ns/web/sa/web", "spiffe://bank.test/ns/x/sa/new"):
            conn.execute(
                insert(identity_entries).values(
                    id=spiffe[-36:], spiffe_id=spiffe, selectors="[]", owner="t",
                    created_by="t", created_at=0.0,
                )
            )  # fmt: skip
    universe = from_store(engine, bundle)
    assert "zed" in universe.ids("User")  # only the ledger knows zed
    assert "x" in universe.ids("Service")
    # a registered SPIFFE ID is named as the adapters name it: the entity, else the ID
    assert "web" in universe.ids("Service")
    assert "spiffe://bank.test/ns/x/sa/new" in universe.ids("Service")
    assert "*" not in universe.ids("User")  # search records are not evidence of entities
    flows = observed_flows(engine, {"Service"})
    assert [(str(p), a, str(r)) for p, a, r in flows] == [
        ('Service::"web"', "call", 'Api::"api.orders"')
    ]  # allowed calls of workloads only


def test_the_served_universe_reads_only_new_rows(engine: Engine, signer: NoteSigner) -> None:
    """KnownUniverse: cached for max_age, then refreshed with the rows appended since."""
    bundle = compile_bundle(BundleSource.from_dir(ESTATE))
    ledger = Ledger(engine, signer, ORIGIN)
    ledger.append([_entry(EntityRef("User", "a"), "ops:read", WEB, Effect.ALLOW)])  # type: ignore[list-item]
    now = [0.0]
    known = KnownUniverse(engine, lambda: bundle, max_age=10, clock=lambda: now[0])
    assert "a" in known.current().ids("User")
    ledger.append([_entry(EntityRef("User", "b"), "ops:read", WEB, Effect.DENY)])  # type: ignore[list-item]
    assert "b" not in known.current().ids("User")  # cached
    now[0] = 11.0
    users = known.current().ids("User")
    assert "a" in users and "b" in users  # the old evidence kept, the new read
