"""The assessor: signals weighed into a score with each signal explained, caller-supplied
values believed only from trusted PEPs, and a failing provider that fails closed."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType, SimpleNamespace
from typing import Any

from tests.conftest import SHOP
from trustplane.model import CALLING_PEP, AccessRequest, EntityRef, Evidence
from trustplane.trust.assessor import TrustAssessor
from trustplane.trust.authentication import AuthenticationSignals
from trustplane.trust.policy import DEFAULT_POLICY, SignalRule, TrustPolicy, signals_optional
from trustplane.trust.signals import Signal, TrustInputs

NOW = 1_900_000_000.0


def policy(**weights: int) -> TrustPolicy:
    rules = {name: SignalRule(name, weight, True, 1.0) for name, weight in weights.items()}
    return TrustPolicy(MappingProxyType(rules), declared=True)


class FakeBundle:
    def __init__(self, trust: TrustPolicy, schema_text: str = "", *policy_texts: str) -> None:
        self.extras = {"trust.yaml": trust}
        self.schema_text = schema_text
        self.policies = [SimpleNamespace(text=text) for text in policy_texts]


def request(claims: dict[str, Any] | None, context: dict[str, Any] | None = None) -> AccessRequest:
    evidence = None if claims is None else Evidence(claims, "203.0.113.7", False, "token")
    return AccessRequest(
        EntityRef("User", "alice"),
        EntityRef("Action", "db:query"),
        EntityRef("Database", "prod"),
        dict(context or {}),
        evidence,
    )


def assess(
    trust: TrustPolicy, req: AccessRequest, *providers: Any, peps: tuple[str, ...] = ()
) -> tuple[AccessRequest, dict[str, Any]]:
    assessor = TrustAssessor(
        providers or (AuthenticationSignals(),), trusted_peps=peps, clock=lambda: NOW
    )
    return assessor(req, FakeBundle(trust))  # type: ignore[arg-type]


def test_a_password_only_stale_login_scores_with_every_signal_explained() -> None:
    claims = {"amr": ["pwd"], "auth_time": NOW - 7200, "iat": NOW - 7200, "exp": NOW + 86400}
    trust = policy(mfa_strength=20, auth_age=15, token_age=10, token_lifetime=5)
    cedar, record = assess(trust, request(claims))
    signals = {s["name"]: s for s in record["signals"]}
    assert signals["mfa_strength"]["points"] == 20 and signals["mfa_strength"]["observed"] == "none"
    assert signals["token_age"]["points"] == 10  # 2 h is past the 1 h stale mark
    assert signals["token_lifetime"]["points"] == 5  # 26 h lifetime
    assert 0 < signals["auth_age"]["points"] < 15  # between fresh (15 min) and stale (12 h)
    assert all(s["source"] == "token" for s in signals.values())
    assert record["score"] == sum(s["points"] for s in signals.values())
    assert record["summary"].startswith(f"risk {record['score']}: mfa_strength +20, ")
    assert cedar.context["trust"]["score"] == record["score"]
    assert cedar.context["trust"]["signals"]["mfa_strength"] == 20


def test_a_fresh_phishing_resistant_login_scores_zero() -> None:
    claims = {"amr": ["hwk", "pwd"], "auth_time": NOW - 30, "iat": NOW - 30, "exp": NOW + 300}
    trust = policy(mfa_strength=20, phishing_resistance=10, auth_age=15, token_age=10)
    _, record = assess(trust, request(claims))
    assert record["score"] == 0 and record["level"] == "low"
    assert record["summary"] == "risk 0"


def test_observed_signals_are_recorded_but_not_counted() -> None:
    rules = {"mfa_strength": SignalRule("mfa_strength", 40, False, 1.0)}
    trust = TrustPolicy(MappingProxyType(rules), declared=True)
    cedar, record = assess(trust, request({"amr": ["pwd"]}))
    (signal,) = record["signals"]
    assert signal["mode"] == "observe" and signal["points"] == 40
    assert record["score"] == 0
    assert cedar.context["trust"]["signals"] == {}  # Cedar sees only what counts


OPTIONAL = "type TrustContext = { score: Long, level: String, signals?: TrustSignals };"
REQUIRED = "type TrustContext = {\n  score: Long,\n  level: String,\n  signals: TrustSignals,\n};"


def test_signals_reach_cedar_only_where_the_fragment_allows_and_a_policy_reads_them() -> None:
    reads = "forbid (principal, action, resource) when { context.trust.signals has country };"
    quiet = request({"amr": ["hwk", "pwd"]})  # phishing-resistant MFA: nothing moves the score
    moved = request({"amr": ["pwd"]})  # no MFA: mfa_strength moves it

    def seen(req: AccessRequest, schema: str, *policies: str) -> dict[str, Any]:
        assessor = TrustAssessor((AuthenticationSignals(),), clock=lambda: NOW)
        bundle = FakeBundle(policy(mfa_strength=20), schema, *policies)
        assessed, _ = assessor(req, bundle)  # type: ignore[arg-type]
        return assessed.context["trust"]  # type: ignore[no-any-return]

    # Optional, and no policy names it: no policy could tell, so Cedar never gets it.
    assert seen(quiet, OPTIONAL) == {"score": 0, "level": "low"}
    assert seen(moved, OPTIONAL) == {"score": 20, "level": "low"}
    # Optional and read: only when a signal moved the score.
    assert seen(quiet, OPTIONAL, reads) == {"score": 0, "level": "low"}
    assert seen(moved, OPTIONAL, reads)["signals"] == {"mfa_strength": 20}
    # Required (an earlier copy of the fragment): always, empty or not.
    assert seen(quiet, REQUIRED)["signals"] == {}
    assert seen(moved, REQUIRED)["signals"] == {"mfa_strength": 20}


def test_the_fragment_is_read_from_the_schema_text() -> None:
    assert signals_optional(OPTIONAL)
    assert signals_optional("type TrustContext = {\n  score: Long, // 0-100\n  signals ? : S\n};")
    assert not signals_optional(REQUIRED)
    assert not signals_optional("// type TrustContext = { signals?: TrustSignals };")
    assert not signals_optional("type Other = { signals?: TrustSignals };")  # not the fragment
    assert not signals_optional("type TrustContext = { score: Long, mysignals?: Long };")


def test_without_trust_yaml_cedar_sees_no_trust_but_the_record_has_it() -> None:
    cedar, record = assess(DEFAULT_POLICY, request({"amr": ["pwd"]}))
    assert "trust" not in cedar.context
    names = [s["name"] for s in record["signals"]]  # what would count, observed only
    assert names == ["mfa_strength", "phishing_resistance"]
    assert all(s["mode"] == "observe" for s in record["signals"]) and record["score"] == 0
    assert "auth_age" in record["quiet"]  # no auth_time: nothing to weigh, named only


class Broken:
    names: tuple[str, ...] = ("mfa_strength",)
    params: MappingProxyType[str, Any] = MappingProxyType({})

    def signals(self, inputs: TrustInputs, wanted: frozenset[str]) -> Iterator[Signal]:
        raise RuntimeError("database unreadable")


def test_a_failing_provider_fails_closed_with_the_error_recorded() -> None:
    cedar, record = assess(policy(mfa_strength=60), request({"amr": ["hwk"]}), Broken())
    (signal,) = record["signals"]
    assert signal["error"] == "RuntimeError: database unreadable"
    assert signal["points"] == 60 and record["score"] == 60 and record["level"] == "high"
    assert cedar.context["trust"]["score"] == 60


def test_caller_supplied_trust_is_ignored_unless_the_pep_is_trusted() -> None:
    supplied = {"trust": {"score": 0, "signals": {"mfa_strength": 0.5}}}
    claims = {"amr": ["pwd"]}
    token = CALLING_PEP.set("edge")
    try:
        cedar, record = assess(policy(mfa_strength=50), request(claims, supplied))
        assert record["score"] == 50 and "not a PEP trusted" in record["ignored"]
        assert cedar.context["trust"]["score"] == 50
        cedar, record = assess(policy(mfa_strength=50), request(claims, supplied), peps=("edge",))
        (signal,) = record["signals"]
        assert signal["source"] == "pep:edge" and signal["points"] == 25
        assert "ignored" not in record
    finally:
        CALLING_PEP.reset(token)


def test_a_trusted_pep_supplies_inputs_when_the_pdp_verified_none() -> None:
    supplied = {"trust": {"inputs": {"amr": ["pwd", "otp"], "auth_time": NOW - 60}}}
    token = CALLING_PEP.set("gateway")
    try:
        _, record = assess(policy(mfa_strength=50), request(None, supplied), peps=("gateway",))
    finally:
        CALLING_PEP.reset(token)
    (signal,) = record["signals"]
    assert signal["observed"] == "otp" and signal["source"] == "pep:gateway"
    assert signal["points"] == 20  # otp counts 0.4 of the weight


def test_unverified_requests_share_one_assessment_per_policy() -> None:
    trust = policy(mfa_strength=20)
    assessor = TrustAssessor([AuthenticationSignals()], clock=lambda: NOW)
    first = assessor(request(None), FakeBundle(trust))  # type: ignore[arg-type]
    again = assessor(request(None), FakeBundle(trust))  # type: ignore[arg-type]
    assert first[1] is again[1] and first[1]["quiet"] == ["mfa_strength"]
    # Cedar sees the signals that moved the score; one that counted nothing is left out.
    assert first[0].context["trust"] == {"score": 0, "level": "low", "signals": {}}


def test_the_same_signals_reuse_one_weighing_and_different_ones_never_do() -> None:
    clock = [NOW]
    assessor = TrustAssessor([AuthenticationSignals()], clock=lambda: clock[0])
    trust = FakeBundle(policy(mfa_strength=20, auth_age=30))
    now = int(NOW)  # tokens carry whole seconds
    otp = {"amr": ["pwd", "otp"], "auth_time": now - 60, "iat": now - 60, "exp": now + 300}
    key = {"amr": ["hwk"], "auth_time": now - 60, "iat": now - 60, "exp": now + 300}
    stale = {"amr": ["pwd"], "auth_time": now - 86400, "iat": now - 60, "exp": now + 300}
    first = assessor(request(otp), trust)  # type: ignore[arg-type]
    again = assessor(request(dict(otp)), trust)  # type: ignore[arg-type]
    assert again[1] is first[1]  # the same token in the same second: the same record
    scores = []
    for claims in (otp, key, stale, otp, stale, key):  # alternating: each keeps its own score
        cedar, record = assessor(request(claims), trust)  # type: ignore[arg-type]
        scores.append((record["score"], cedar.context["trust"]["score"]))
    assert scores == [(8, 8), (0, 0), (50, 50), (8, 8), (50, 50), (0, 0)]
    _, stale_record = assessor(request(stale), trust)  # type: ignore[arg-type]
    assert stale_record["summary"] == "risk 50: auth_age +30, mfa_strength +20"
    clock[0] = NOW + 3600  # an hour on, the otp login's age counts: a new weighing
    _, later = assessor(request(otp), trust)  # type: ignore[arg-type]
    assert later is not first[1] and later["score"] > first[1]["score"]


def test_an_assessment_that_fails_as_a_whole_scores_100() -> None:
    class Exploding(TrustAssessor):
        def _score(self, *args: Any, **kwargs: Any) -> Any:
            raise ValueError("corrupt policy")

    assessor = Exploding([AuthenticationSignals()], clock=lambda: NOW)
    cedar, record = assessor(request({"amr": ["hwk"]}), FakeBundle(policy(mfa_strength=20)))  # type: ignore[arg-type]
    assert record["score"] == 100 and record["level"] == "critical"
    assert record["error"] == "ValueError: corrupt policy"
    assert cedar.context["trust"]["score"] == 100


def test_trustplane_decisions_shows_the_risk_summary(capsys: Any) -> None:
    from trustplane.cli.decisions import print_records

    row = {
        "seq": 7,
        "time": "2026-12-03T17:00:00Z",
        "kind": "decision",
        "request": {"principal": {"type": "User", "id": "alice"}, "action": {"id": "read"}},
        "decision": "deny",
        "shadow": "deny",
        "reason_code": "policy_forbids",
        "determining_policies": ["forbid-high-risk"],
        "trust": {"score": 80, "summary": "risk 80: impossible_travel +65, new_country +15"},
    }
    print_records([row], as_json=False)
    shown = capsys.readouterr().out
    assert "risk 80: impossible_travel +65," in shown and "new_country +15" in shown


def test_the_assessed_request_carries_every_field_of_the_original() -> None:
    # The assessor builds the request Cedar sees field by field (cheaper than
    # dataclasses.replace): a field added to AccessRequest must not be dropped there.
    original = request({"amr": ["pwd"]}, {"trust": {"score": 0}, "mfa": True})
    for bundle in (FakeBundle(policy(mfa_strength=20)), None):
        assessed, _ = TrustAssessor([AuthenticationSignals()], clock=lambda: NOW)(
            original,
            bundle,  # type: ignore[arg-type]
        )
        assert assessed == dataclasses.replace(original, context=assessed.context)
        assert assessed.context["mfa"] is True


def test_both_fragments_evaluate_without_errors_in_cedar(tmp_path: Path) -> None:
    """The shop's own fragment (`signals?`) and an earlier copy (`signals` required) both
    accept what the assessor sends, with or without signals that moved the score."""
    from trustplane.decision.loader import LoadOptions, load_bundle
    from trustplane.decision.policy_bundle import BundleSource
    from trustplane.trust.policy import BUNDLE_FILES

    old = tmp_path / "old"
    shutil.copytree(SHOP, old)
    schema = old / "schema.cedarschema"
    schema.write_text(schema.read_text().replace("signals?: TrustSignals", "signals: TrustSignals"))
    reads = tmp_path / "reads"
    shutil.copytree(SHOP, reads)
    (reads / "travel.cedar").write_text(
        '@id("forbid-travel")\n@owner("security")\n@description("Travel is refused.")\n'
        "forbid (principal, action, resource) when { context has trust && "
        "context.trust has signals && context.trust.signals has impossible_travel };\n"
    )
    options = LoadOptions(decision_cache_size=0, extra_files=BUNDLE_FILES)
    ci = AccessRequest(
        EntityRef("CiJob", "ci-deployer"),
        EntityRef("Action", "deploy:release"),
        EntityRef("Service", "payments"),
        {"mfa": False, "auth_age_seconds": 30},
    )
    token = {"amr": ["pwd"], "iat": NOW - 10, "exp": NOW + 300}  # no MFA: mfa_strength moves
    seen = []
    for directory in (SHOP, reads, old):
        loaded = load_bundle(BundleSource.from_dir(directory), options)
        assessor = TrustAssessor((AuthenticationSignals(),), clock=lambda: NOW)
        for asked in (ci, dataclasses.replace(ci, evidence=Evidence(token, None, False, "token"))):
            assessed, trust = assessor(asked, loaded.bundle)
            decision = loaded.evaluator.evaluate(assessed, trust=trust, reuse=False)
            assert decision.errors == (), (directory.name, decision.errors)
            seen.append("signals" in assessed.context["trust"])
    # The shop's policies never read it; `reads` does (sent when a signal moved the score);
    # the earlier fragment requires it.
    assert seen == [False, False, False, True, True, True], seen


def test_requests_without_a_token_share_one_weighing_whoever_asks() -> None:
    """An AuthZEN caller's requests carry an address but no token. Their authentication
    signals are the same shared objects every time, so the assessor reuses one weighing;
    fresh objects per request filled its memo with thousands of entries that the garbage
    collector then walked in 50 ms pauses under load (docs/benchmarks.md, finding 17)."""
    assessor = TrustAssessor((AuthenticationSignals(),), clock=lambda: NOW)
    bundle = FakeBundle(policy(mfa_strength=20, auth_age=15))
    records = []
    for n in range(500):
        asked = AccessRequest(
            EntityRef("User", f"user-{n}"),
            EntityRef("Action", "db:query"),
            EntityRef("Database", "prod"),
            {},
            Evidence(None, "198.51.100.7", False, "authzen"),
        )
        records.append(assessor(asked, bundle)[1])  # type: ignore[arg-type]
    assert all(r is records[0] for r in records), "one shared record for the same answer"
    assert records[0]["score"] == 0 and "mfa_strength" in records[0]["quiet"]
    assert len(assessor._weighings) == 1 and len(assessor._scored) <= 1


class Counting:
    """A provider that counts its runs and reads a posture that can change (with an epoch)."""

    names = ("device",)
    params: MappingProxyType[str, Any] = MappingProxyType({})

    def __init__(self) -> None:
        self.runs = 0
        self.epoch = 0
        self.value = 0.0

    def signals(self, inputs: TrustInputs, wanted: frozenset[str]) -> list[Signal]:
        self.runs += 1
        return [Signal("device", self.value, None, "posture", "test")]


def test_an_assessment_holds_for_the_second_unless_trust_state_moves() -> None:
    clock = [NOW]
    provider = Counting()
    assessor = TrustAssessor([provider], clock=lambda: clock[0])
    bundle = FakeBundle(policy(device=40))
    token = {"amr": ["hwk"], "auth_time": int(NOW) - 60, "iat": int(NOW) - 60}

    def score(req: AccessRequest, **options: Any) -> int:
        return assessor(req, bundle, **options)[1]["score"]  # type: ignore[arg-type,no-any-return]

    assert score(request(token)) == 0 and provider.runs == 1
    clock[0] += 0.5
    assert score(request(dict(token))) == 0 and provider.runs == 1, "held for its second"
    elsewhere = dataclasses.replace(
        request(token), evidence=Evidence(token, "198.51.100.9", False, "token")
    )
    assert score(elsewhere) == 0 and provider.runs == 2, "other evidence: assessed"
    provider.value, provider.epoch = 1.0, 1  # a device turned non-compliant: at once
    assert score(request(token)) == 40 and provider.runs == 3
    assert score(request(token), remember=False) == 40 and provider.runs == 4, "a what-if"
    workload = dataclasses.replace(
        request(None), evidence=Evidence(None, None, True, "mtls", "spiffe://example.org/a")
    )
    score(workload)
    score(workload)
    assert provider.runs == 6, "workloads are assessed every time"
    floats = {"amr": ["hwk"], "iat": NOW - 60.5}  # ages that change within a second
    score(request(floats))
    score(request(floats))
    assert provider.runs == 8
    provider.value = 0.0
    clock[0] = float(int(clock[0]) + 1)
    assert score(request(token)) == 0 and provider.runs == 9, "the next second: assessed"
