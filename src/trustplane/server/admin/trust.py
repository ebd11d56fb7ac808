"""Admin API of the trust plane: device posture reports from MDM/EDR integrations, one
decision's score explained, and a summary of the signals that fired.

`POST /v1/trust/devices/{id}/posture` is authorized as `trust:device-report` (the admin policy
says which integrations may: a workload in Group::"device-reporters", security, the bootstrap
token) and recorded in the ledger like every admin call; the report is stored with the change
feed bumped, and this process reloads its device index before answering, so the next decision
here sees it and the other replicas within the feed's latency.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from trustplane.problems import Problem, json_response, parse_model
from trustplane.server.admin.common import bad_query
from trustplane.server.admin_gate import AdminCall, AdminGate
from trustplane.server.runtime import Runtime
from trustplane.telemetry.query import QueryError, parse_time
from trustplane.trust.device import DEVICE_ID, Posture
from trustplane.trust.device_store import get_posture, save_posture
from trustplane.trust.report import ReportError, explain, find_decision, summarise

FUTURE_SKEW = 300.0  # seconds a report's reported_at may be ahead of this server's clock


class PostureBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    disk_encrypted: StrictBool
    os_patch_age_days: StrictInt = Field(
        ge=0, le=36500, description="Days since the last OS patch."
    )
    edr_running: StrictBool
    screen_lock: StrictBool
    managed: StrictBool
    reported_at: float | None = Field(
        None,
        ge=0,
        allow_inf_nan=False,
        description="When the integration observed the device (UNIX seconds); default: now.",
    )
    certificate_serial: StrictStr | None = Field(
        None,
        min_length=1,
        max_length=80,
        description="The serial of the device's mTLS client certificate (decimal, or hex with "
        "0x): requests presenting it are from this device.",
    )
    owner: StrictStr = Field("", max_length=400, description="Who the device belongs to.")


def _serial(text: str | None) -> str | None:
    if text is None:
        return None
    raw = text.strip().lower().replace(":", "")
    try:
        value = int(raw, 16) if raw.startswith("0x") else int(raw)
    except ValueError:
        raise Problem(
            422,
            "invalid-request",
            "Invalid request",
            f"certificate_serial: {text!r} is not a decimal or 0x-hex serial number",
            [{"pointer": "/certificate_serial", "detail": "not a number", "code": "invalid"}],
        ) from None
    return str(value)


class TrustApi:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    @staticmethod
    def _device_id(request: Request) -> str:
        device_id = str(request.path_params["device_id"])
        if not DEVICE_ID.match(device_id):
            raise Problem(
                422,
                "invalid-request",
                "Invalid device id",
                f"device id {device_id[:80]!r}: letters, digits, '.', '_' and '-', at most 200, "
                "starting with a letter or digit",
            )
        return device_id

    async def report(self, request: Request, call: AdminCall) -> Response:
        device_id = self._device_id(request)
        body = parse_model(PostureBody, await call.body(request))
        now = time.time()
        reported_at = now if body.reported_at is None else body.reported_at
        if reported_at > now + FUTURE_SKEW:
            raise Problem(
                422,
                "invalid-request",
                "Invalid request",
                f"reported_at: {reported_at:.0f} is in the future (this server's clock: {now:.0f})",
                [{"pointer": "/reported_at", "detail": "in the future", "code": "invalid"}],
            )
        posture = Posture(
            device_id=device_id,
            disk_encrypted=body.disk_encrypted,
            os_patch_age_days=body.os_patch_age_days,
            edr_running=body.edr_running,
            screen_lock=body.screen_lock,
            managed=body.managed,
            reported_at=reported_at,
            received_at=now,
            reported_by=call.caller.name,
            certificate_serial=_serial(body.certificate_serial),
            owner=body.owner,
        )
        engine = self._runtime.engine
        stored = await run_in_threadpool(get_posture, engine, device_id)
        if stored is not None and stored.reported_at > reported_at:
            call.note(reason="older than the stored report: kept out")
            return json_response(
                {"stored": False, "reason": "a newer report is stored", **stored.as_dict()}, 409
            )
        created = await run_in_threadpool(save_posture, engine, posture)
        await run_in_threadpool(self._runtime.devices.refresh)  # this replica: at once
        call.note(
            reason="device posture reported",
            posture={k: v for k, v in posture.as_dict().items() if k != "reported_by"},
        )
        return json_response({"stored": True, **posture.as_dict()}, 201 if created else 200)

    async def posture(self, request: Request, call: AdminCall) -> Response:
        device_id = self._device_id(request)
        found = await run_in_threadpool(get_posture, self._runtime.engine, device_id)
        if found is None:
            raise Problem(404, "not-found", "Not found", f"no posture report for {device_id}")
        return json_response(found.as_dict())

    async def explain(self, request: Request, call: AdminCall) -> Response:
        reference = str(request.path_params["decision_ref"])
        try:
            record = await run_in_threadpool(find_decision, self._runtime.engine, reference)
        except ReportError as exc:
            titles = {404: "Not found", 409: "Ambiguous", 422: "Invalid request"}
            slug = {404: "not-found", 409: "conflict"}.get(exc.status, "invalid-request")
            raise Problem(exc.status, slug, titles[exc.status], str(exc)) from None
        return json_response(explain(record))

    async def signals(self, request: Request, call: AdminCall) -> Response:
        params = request.query_params
        unknown = set(params) - {"since", "until"}
        if unknown:
            raise bad_query(sorted(unknown)[0], "unknown query parameter")
        try:
            since = parse_time(params.get("since", "24h"), "since")
            until = parse_time(params["until"], "until") if "until" in params else None
        except QueryError as exc:
            raise bad_query(exc.field, exc.message) from None
        summary = await run_in_threadpool(summarise, self._runtime.engine, since, until)
        return json_response(summary)


def routes(runtime: Runtime, gate: AdminGate) -> list[Route]:
    """The trust routes, each with its admin action, behind the gate."""
    api = TrustApi(runtime)
    posture = "/v1/trust/devices/{device_id}/posture"
    read = "decisions:read"
    return [
        gate.route("POST", posture, api.report, action="trust:device-report"),
        gate.route("GET", posture, api.posture, action="trust:read"),
        gate.route("GET", "/v1/trust/decisions/{decision_ref}", api.explain, action=read),
        gate.route("GET", "/v1/trust/signals", api.signals, action=read),
    ]
