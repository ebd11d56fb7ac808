"""Kubernetes admission webhook: `admission.k8s.io/v1` AdmissionReview in, AdmissionReview out.

The objects under review go through the posture engine (`posture/`), the same one
`trustplane scan` uses. Each namespace has Pod Security Admission-style modes (rule packs
enforced, warned about, audited; `Settings.admission`, `admission.namespaces`), each capped by
the rule's own mode. The answer echoes the request's uid; a refusal carries status 403 and a
message listing every failed enforce rule; warn-mode findings become `warnings` (≤ 120
characters each); an update that leaves the pod as it was is allowed unreviewed, as in PSA.
An object the engine cannot read completely is refused whatever the namespace's modes: status
400 when `object.kind` is not `request.kind.kind` (a review answers for the kind the API server
asked about, never for one the object claims), 422 when a field a rule reads has another type
(`posture/shape.py`); the message names the field path.
Every review except a dry run is recorded in the decision ledger through the PDP's recorder:
reasons are the enforced rules that refused, the shadow answer is what enforcing the warn and
audit findings too would give (so `trustplane decisions --shadow-mismatch` lists what
tightening a namespace would refuse). A dry run has no side effects: nothing is recorded.

`zero-trust/image-attested` asks the in-memory attestation index (kept current by the change
feed) through the CEL function `unattested`; a review never queries the store.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from trustplane.config import AdmissionModes, AdmissionSettings
from trustplane.decision.point import PolicyDecisionPoint
from trustplane.model import (
    AccessRequest,
    Decision,
    Effect,
    EntityRef,
    PolicyReason,
    new_decision_id,
)
from trustplane.posture.engine import Engine, Finding, Unreadable, select
from trustplane.posture.image_attestations import AttestationIndex, unattested_function
from trustplane.posture.packs import PackRef, check_admission_settings, load_rule_file, selection
from trustplane.posture.rules import Mode, exemptions_by_rule
from trustplane.posture.shape import problems
from trustplane.posture.workloads import pod_of
from trustplane.problems import json_response, parse_model, read_body

API_VERSION = "admission.k8s.io/v1"
MAX_WARNING = 120
# Subresources whose requests carry a pod to review; others (status, exec, log …) are allowed.
REVIEWED_SUBRESOURCES = ("", "ephemeralcontainers")
# The reason recorded for an object that cannot be reviewed (no rule of any pack has this id).
UNREADABLE_POLICY = "trustplane/unreadable-object"
MAX_PROBLEMS = 10  # named in a refusal; a pod of 5,000 malformed containers gets a short answer


class _Lenient(BaseModel):
    # Kubernetes adds fields over time: read the ones this adapter needs, ignore the rest.
    model_config = ConfigDict(extra="ignore")


class GroupVersionKind(_Lenient):
    group: str = ""
    version: str = ""
    kind: str = Field(min_length=1)


class UserInfo(_Lenient):
    username: str = ""


class AdmissionRequest(_Lenient):
    uid: str = Field(min_length=1)
    kind: GroupVersionKind
    operation: Literal["CREATE", "UPDATE", "DELETE", "CONNECT"]
    namespace: str = ""
    name: str = ""
    subResource: str | None = None
    userInfo: UserInfo = Field(default_factory=UserInfo)
    object: dict[str, Any] | None = None
    oldObject: dict[str, Any] | None = None
    dryRun: bool = False


class AdmissionReview(_Lenient):
    apiVersion: Literal["admission.k8s.io/v1"]
    kind: Literal["AdmissionReview"]
    request: AdmissionRequest


class AdmissionWebhook:
    """`POST /v1/admission`: reviews pods (and workloads, ConfigMaps …) for one cluster."""

    PATH = "/v1/admission"

    def __init__(
        self,
        pdp: PolicyDecisionPoint | None,
        settings: AdmissionSettings,
        attestations: AttestationIndex | None = None,
        *,
        max_body_bytes: int = 1_048_576,
    ) -> None:
        """`attestations`: the index `unattested` answers from; None (no identity plane): no
        image counts as attested, and the refusal says why."""
        check_admission_settings(settings)
        self._pdp = pdp
        self._functions = {"unattested": unattested_function(attestations)}
        self._limit = max_body_bytes
        self._params = settings.params
        self._exemptions = exemptions_by_rule(settings.exemptions)
        self._own_rules = [rule for path in settings.rule_files for rule in load_rule_file(path)]
        self._default = self._engine(settings)
        self._namespaces = {
            name: self._engine(modes) for name, modes in settings.namespaces.items()
        }

    def _engine(self, modes: AdmissionModes) -> Engine:
        refs = [(PackRef.parse(p), Mode.ENFORCE) for p in modes.enforce]
        refs += [(PackRef.parse(p), Mode.WARN) for p in modes.warn]
        refs += [(PackRef.parse(p), Mode.AUDIT) for p in modes.audit]
        own = select(self._own_rules, None)  # every namespace, each rule with its own mode
        return Engine([*selection(refs), *own], self._params, self._exemptions, self._functions)

    async def handle(self, request: Request) -> Response:
        review = parse_model(AdmissionReview, await read_body(request, self._limit))
        answer, decision, findings = self.review(review.request)
        if not review.request.dryRun and self._pdp is not None:
            await self._pdp.record(access_request(review.request, findings), decision)
        return json_response({"apiVersion": API_VERSION, "kind": "AdmissionReview", **answer})

    def review(self, req: AdmissionRequest) -> tuple[dict[str, Any], Decision, list[Finding]]:
        """The AdmissionReview answer, its decision and the findings behind it."""
        started = time.perf_counter()
        findings: list[Finding] = []
        reviewed = req.operation in ("CREATE", "UPDATE") and req.object is not None
        if reviewed and (req.subResource or "") in REVIEWED_SUBRESOURCES:
            try:
                obj = _of_request_kind(req)
                if _same_pod(req):  # not reviewed, but never unread: refused if unreadable
                    _readable(obj)
                else:
                    engine = self._namespaces.get(req.namespace, self._default)
                    findings = engine.evaluate(obj, namespace=req.namespace, strict=True)
            except _Refusal as refusal:
                return self._refuse(req, refusal, started)
            except Unreadable as exc:
                return self._refuse(req, _Refusal(422, "Invalid", exc.problems), started)
        refused = [f for f in findings if f.mode is Mode.ENFORCE]
        warned = [f for f in findings if f.mode is Mode.WARN]
        decision = _decision(findings, refused, started)
        response: dict[str, Any] = {"uid": req.uid, "allowed": not refused}
        if refused:
            response["status"] = {
                "code": 403,
                "reason": "Forbidden",
                "message": "denied by trustplane: "
                + "; ".join(f"{f.rule_id}: {f.message}" for f in refused),
            }
        if warned:
            response["warnings"] = [warning(f) for f in warned]
        audited = [f for f in findings if f.mode is Mode.AUDIT]
        response["auditAnnotations"] = {"trustplane-decision": decision.decision_id}
        if audited:
            response["auditAnnotations"]["audit-violations"] = "; ".join(
                f"{f.rule_id}: {f.message}" for f in audited
            )
        return {"response": response}, decision, findings

    def _refuse(
        self, req: AdmissionRequest, refusal: _Refusal, started: float
    ) -> tuple[dict[str, Any], Decision, list[Finding]]:
        """The answer for an object that cannot be reviewed: refused in every mode, recorded
        with the problems as its reason and errors."""
        shown = refusal.problems[:MAX_PROBLEMS]
        message = "refused by trustplane: the object cannot be reviewed: " + "; ".join(shown)
        if len(refusal.problems) > len(shown):
            message += f" (and {len(refusal.problems) - len(shown)} more)"
        reason = PolicyReason(
            policy_id=UNREADABLE_POLICY,
            effect="forbid",
            mode=Mode.ENFORCE.value,
            owner="trustplane",
            description=message,
        )
        decision = Decision(
            decision_id=new_decision_id(),
            effect=Effect.DENY,
            reasons=(reason,),
            shadow_effect=Effect.DENY,
            shadow_reasons=(reason,),
            shadow_changes=(),
            errors=tuple(shown),
            revision=None,
            eval_micros=int((time.perf_counter() - started) * 1e6),
            timestamp=time.time(),
        )
        response = {
            "uid": req.uid,
            "allowed": False,
            "status": {"code": refusal.code, "reason": refusal.reason, "message": message},
            "auditAnnotations": {"trustplane-decision": decision.decision_id},
        }
        return {"response": response}, decision, []


class _Refusal(Exception):
    def __init__(self, code: int, reason: str, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.code = code
        self.reason = reason
        self.problems = problems


def _of_request_kind(req: AdmissionRequest) -> dict[str, Any]:
    """The object under review, its kind the request's: an object without a kind is what the
    request says it is; one claiming any other kind (`"pod"`, `"Pd"`, `7`) is refused (400)."""
    obj = req.object or {}
    kind = obj.get("kind")
    if kind is None or kind == "":
        return {**obj, "kind": req.kind.kind}
    if kind != req.kind.kind:
        got = f'"{_cut(kind)}"' if isinstance(kind, str) else f"{_cut(repr(kind))}, not a string"
        expected = f'expected "{req.kind.kind}" (request.kind.kind)'
        raise _Refusal(400, "BadRequest", [f"object.kind: {expected}, got {got}"])
    return obj


def _cut(text: str, limit: int = 64) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _readable(obj: dict[str, Any]) -> None:
    """Refuses (422) an object a rule could not read completely (the engine checks the same
    before it evaluates; this is for an update `_same_pod` lets through unevaluated)."""
    found = problems(obj)
    if found:
        raise _Refusal(422, "Invalid", found)


def _same_pod(req: AdmissionRequest) -> bool:
    """An update that leaves the pod as it was (spec and annotations; labels, owner references,
    status may change): not reviewed, as Pod Security Admission does, so existing workloads keep
    being relabelled and scaled when a namespace is tightened."""
    if req.operation != "UPDATE" or req.object is None or req.oldObject is None:
        return False
    new, old = pod_of(req.object), pod_of(req.oldObject)
    if new is None or old is None:
        return False
    annotations = (new.metadata.get("annotations"), old.metadata.get("annotations"))
    return new.spec == old.spec and annotations[0] == annotations[1]


def warning(finding: Finding) -> str:
    """The finding's message (written to stand alone: it names the check and the offender),
    cut to the 120 characters Kubernetes shows of a warning."""
    text = finding.message
    return text if len(text) <= MAX_WARNING else text[: MAX_WARNING - 1] + "…"


def access_request(req: AdmissionRequest, findings: list[Finding]) -> AccessRequest:
    """The review as the ledger records it: who asked to do what to which object."""
    obj: Mapping[str, Any] = req.object or {}
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    assert isinstance(metadata, dict)
    name = req.name or str(metadata.get("name") or metadata.get("generateName") or "")
    resource_id = f"{req.namespace}/{name}" if req.namespace else name
    return AccessRequest(
        principal=EntityRef("k8s::User", req.userInfo.username or "system:anonymous"),
        action=EntityRef("Action", f"admission:{req.operation.lower()}"),
        resource=EntityRef(f"k8s::{req.kind.kind}", resource_id),
        context={
            "uid": req.uid,
            "namespace": req.namespace,
            "operation": req.operation,
            "sub_resource": req.subResource or "",
            "findings": [f.as_dict() for f in findings],
        },
    )


def _decision(findings: list[Finding], refused: list[Finding], started: float) -> Decision:
    reasons = tuple(_reason(f) for f in refused)
    shadow = tuple(_reason(f) for f in findings)
    return Decision(
        decision_id=new_decision_id(),
        effect=Effect.DENY if refused else Effect.ALLOW,
        reasons=reasons,
        shadow_effect=Effect.DENY if findings else Effect.ALLOW,
        shadow_reasons=shadow,
        shadow_changes=tuple(_reason(f) for f in findings if f.mode is not Mode.ENFORCE)
        if findings and not refused
        else (),
        errors=tuple(f.message for f in findings if f.error),
        revision=None,
        eval_micros=int((time.perf_counter() - started) * 1e6),
        timestamp=time.time(),
    )


def _reason(finding: Finding) -> PolicyReason:
    return PolicyReason(
        policy_id=finding.rule_id,
        effect="forbid",
        mode=finding.mode.value,
        owner="posture",
        description=finding.message,
    )
