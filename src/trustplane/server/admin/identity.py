"""Admin API: the identity plane's registration entries, its keys and their rotation, and the
inventory of identities issued or seen."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from trustplane.identity.entries import EntryError
from trustplane.identity.inventory import DriftCheck, inventory_report
from trustplane.identity.keys import KeyKind, RotationError
from trustplane.identity.service import IdentityService
from trustplane.problems import Problem, json_response, parse_model, read_body
from trustplane.server.admin_gate import AdminCall, AdminGate
from trustplane.server.runtime import Runtime


class EntryBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    spiffe_id: StrictStr = Field(min_length=1, max_length=2048)
    selectors: list[StrictStr] = Field(min_length=1, max_length=32)
    owner: StrictStr = Field("", max_length=256)
    x509_ttl_seconds: StrictInt | None = None
    jwt_ttl_seconds: StrictInt | None = None


class RotateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    step: StrictStr = Field("next", pattern="^(next|prepare|activate|retire|emergency)$")
    kind: KeyKind | None = None
    # emergency only: the compromised key (default: the active key of `kind`, or of both)
    kid: StrictStr | None = Field(None, min_length=1, max_length=64)


def rotate_step(
    service: IdentityService, step: str, kind: KeyKind | None, kid: str | None = None
) -> list[str]:
    """One rotation step for `kind` (both kinds when None). `next` prepares where nothing is
    prepared and activates where something is; every step also retires what is due.
    `emergency` retires a compromised key (`kid`, else the active one) at once."""
    keys = service.key_store
    if step == "emergency":  # a compromised key leaves the bundles now, not when due
        done = keys.emergency(kind, kid)
        service.refresh_keys()
        return done
    kinds = [kind] if kind else list(KeyKind)
    done = []
    prepared = {r.kind for r in keys.records() if r.state.value == "prepared"}
    for k in kinds:
        action = step if step != "next" else ("activate" if k in prepared else "prepare")
        if action == "prepare":
            done.append(f"prepared {k.value} key {keys.prepare(k).kid}")
        elif action == "activate":
            done.append(f"activated {k.value} key {keys.activate(k).kid}")
    done.extend(f"retired {r.kind.value} key {r.kid}" for r in keys.retire(kind))
    service.refresh_keys()
    return done


class IdentityAdminApi:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._limit = runtime.settings.server.max_body_bytes

    def _service(self) -> IdentityService:
        if self._runtime.identity is None:
            raise Problem(
                404,
                "identity-disabled",
                "Identity plane not configured",
                "set identity.kek_file (or TRUSTPLANE_IDENTITY__KEK) and run `trustplane init`",
            )
        return self._runtime.identity

    async def entries(self, request: Request, call: AdminCall) -> Response:
        items = await run_in_threadpool(self._service().entry_store.list)
        return json_response({"entries": [e.as_dict() for e in items]})

    async def create_entry(self, request: Request, call: AdminCall) -> Response:
        actor = call.caller.name
        body = parse_model(EntryBody, await read_body(request, self._limit))
        service = self._service()
        try:
            entry = await run_in_threadpool(
                lambda: service.entry_store.create(
                    body.spiffe_id,
                    body.selectors,
                    owner=body.owner,
                    created_by=actor,
                    x509_ttl_seconds=body.x509_ttl_seconds,
                    jwt_ttl_seconds=body.jwt_ttl_seconds,
                )
            )
        except EntryError as exc:
            field = str(exc).split(":", 1)[0]
            pointer = "/" + field if field in EntryBody.model_fields else ""
            raise Problem(
                422,
                "invalid-request",
                "Invalid registration entry",
                str(exc),
                [{"pointer": pointer, "detail": str(exc), "code": "invalid"}],
            ) from None
        await run_in_threadpool(service.entries.refresh)
        call.note(entry=entry.id, spiffe_id=body.spiffe_id)
        return json_response(entry.as_dict(), 201)

    async def delete_entry(self, request: Request, call: AdminCall) -> Response:
        service = self._service()
        try:
            entry = await run_in_threadpool(
                service.entry_store.delete, request.path_params["entry_id"]
            )
        except EntryError as exc:
            raise Problem(404, "not-found", "Entry not found", str(exc)) from None
        await run_in_threadpool(service.entries.refresh)
        call.note(spiffe_id=str(entry.spiffe_id))
        return json_response(entry.as_dict())

    async def keys(self, request: Request, call: AdminCall) -> Response:
        service = self._service()
        records = await run_in_threadpool(service.key_store.records, include_retired=True)
        return json_response(
            {
                "trust_domain": service.trust_domain,
                "keys": [
                    {**r.as_dict(), "retirable_at": service.key_store.retirable_at(r)}
                    for r in records
                ],
            }
        )

    async def rotate(self, request: Request, call: AdminCall) -> Response:
        raw = await read_body(request, self._limit)
        body = parse_model(RotateBody, raw) if raw.strip() else RotateBody()
        service = self._service()
        try:
            if body.kid is not None and body.step != "emergency":
                raise RotationError("kid names a compromised key: only with step emergency")
            done = await run_in_threadpool(rotate_step, service, body.step, body.kind, body.kid)
        except RotationError as exc:
            raise Problem(409, "rotation-refused", "Rotation step refused", str(exc)) from None
        call.note(done=done)
        return json_response({"done": done})

    async def inventory(self, request: Request, call: AdminCall) -> Response:
        """Served with or without the identity plane: callers seen at the enforcement points
        are recorded either way."""
        params = request.query_params
        options: dict[str, Any] = {}
        for name, cast in (("unused_days", float), ("long_lived_seconds", int)):
            if name in params:
                try:
                    options[name] = cast(params[name])
                except ValueError:
                    raise Problem(
                        400,
                        "invalid-query",
                        "Invalid query",
                        f"{name} must be a number",
                        [{"pointer": name, "detail": "must be a number", "code": "invalid"}],
                    ) from None
        await run_in_threadpool(self._runtime.inventory.flush)
        service = self._runtime.identity
        if service is not None:  # drift: registered entries against identities in use
            entries = await run_in_threadpool(service.entry_store.list)
            options["registered"] = [(str(e.spiffe_id), e.owner) for e in entries]
            options["drift"] = DriftCheck(
                service.trust_domain,
                lambda: (0, [spiffe_id for spiffe_id, _ in options["registered"]]),
                [rule.spiffe_id for rule in self._runtime.settings.identity.exchange_rules],
            )
        items = await run_in_threadpool(lambda: inventory_report(self._runtime.engine, **options))
        return json_response({"identities": [i.as_dict() for i in items]})


def routes(runtime: Runtime, gate: AdminGate) -> list[Route]:
    """The identity admin routes, each with its admin action, behind the gate."""
    api = IdentityAdminApi(runtime)
    read, write = "identity:read", "identity:write"
    return [
        gate.route("GET", "/v1/identity/entries", api.entries, action=read),
        gate.route("POST", "/v1/identity/entries", api.create_entry, action=write),
        gate.route("DELETE", "/v1/identity/entries/{entry_id}", api.delete_entry, action=write),
        gate.route("GET", "/v1/identity/keys", api.keys, action=read),
        gate.route("POST", "/v1/identity/rotate", api.rotate, action=write),
        gate.route("GET", "/v1/identity/inventory", api.inventory, action=read),
    ]
