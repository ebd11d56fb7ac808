"""Build AccessRequests from the plain documents people write (bundle tests, `trustplane check`).

Errors name the offending field, because these documents are written by hand.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from trustplane.errors import TrustplaneError
from trustplane.model import AccessRequest, EntityRef

_TYPE = r"(?P<type>[A-Za-z_][A-Za-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)*)"
_QUOTED_UID = re.compile(_TYPE + r'::"(?P<id>.*)"$')
_SHORT_UID = re.compile(_TYPE + r":(?P<id>[^:].*)$")
REQUEST_KEYS = frozenset({"principal", "action", "resource", "context"})
# Cedar's Long, and what the ledger's canonical JSON encodes: a request holding an integer
# outside it could be answered but not recorded, so it is refused before anything is evaluated.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


class RequestError(TrustplaneError, ValueError):
    """A request document is malformed; `field` says where."""

    def __init__(self, field: str, message: str, pointer: str | None = None) -> None:
        self.field = field
        self.message = message
        self.pointer = pointer  # RFC 6901, when the caller's document is JSON (the HTTP API)
        super().__init__(f"{field}: {message}")


def check_values(value: Any, field: str, pointer: str | None = None) -> None:
    """Refuse (RequestError naming the member, e.g. `context.n` or `context.items[2]`, and its
    JSON pointer when `pointer` gives the value's own) any value a decision could not be
    recorded with: an integer outside the signed 64-bit range, or a string that is not
    encodable as UTF-8 (a lone surrogate, possible from `json.loads`).

    Most documents hold neither: one C-speed encode with 53-bit integers proves that, and only a
    document it refuses is walked to name the member."""
    try:
        orjson.dumps(value, option=orjson.OPT_STRICT_INTEGER)
        return
    except orjson.JSONEncodeError:
        pass
    _walk(value, field, pointer)


def _walk(value: Any, field: str, pointer: str | None) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            raise RequestError(
                field,
                f"integer {value} is outside the signed 64-bit range "
                f"({INT_MIN}..{INT_MAX}) that policies and the ledger accept",
                pointer,
            )
    elif isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            raise RequestError(
                field, "string is not valid Unicode (a lone surrogate)", pointer
            ) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            child = None if pointer is None else f"{pointer}/{_escape(str(key))}"
            _walk(key, f"{field} (a member name)", child)
            _walk(item, f"{field}.{key}", child)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _walk(item, f"{field}[{index}]", None if pointer is None else f"{pointer}/{index}")


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def parse_entity(value: Any, field: str, *, default_type: str | None = None) -> EntityRef:
    """`{type, id, properties?}`, `Type::"id"` or `Type:id`. With a default type (actions), a
    string that is not `Type::"id"` is an id of that type."""
    if isinstance(value, str):
        check_values(value, field)
        match = _QUOTED_UID.match(value)
        if match:
            return EntityRef(match["type"], match["id"])
        if default_type and value:
            # Action names such as "payments:refund" contain colons: the whole string is the id.
            return EntityRef(default_type, value)
        match = _SHORT_UID.match(value)
        if match:
            return EntityRef(match["type"], match["id"])
        raise RequestError(field, f'expected Type::"id" or Type:id, got {value!r}')
    if not isinstance(value, dict):
        raise RequestError(field, "expected an object with type and id")
    unknown = set(value) - {"type", "id", "properties"}
    if unknown:
        raise RequestError(f"{field}.{sorted(unknown)[0]}", "unknown field")
    etype = value.get("type", default_type)
    eid = value.get("id")
    if not isinstance(etype, str) or not etype:
        raise RequestError(f"{field}.type", "must be a non-empty string")
    if not isinstance(eid, str) or not eid:
        raise RequestError(f"{field}.id", "must be a non-empty string")
    props = value.get("properties")
    if props is not None and not isinstance(props, dict):
        raise RequestError(f"{field}.properties", "must be an object")
    check_values(etype, f"{field}.type")
    check_values(eid, f"{field}.id")
    if props:
        check_values(props, f"{field}.properties")
    return EntityRef(etype, eid, props or None)


def parse_request(document: Any, field: str = "request") -> AccessRequest:
    if not isinstance(document, dict):
        raise RequestError(field, "expected an object with principal, action, resource")
    unknown = set(document) - REQUEST_KEYS
    if unknown:
        raise RequestError(f"{field}.{sorted(unknown)[0]}", "unknown field")
    for key in ("principal", "action", "resource"):
        if key not in document:
            raise RequestError(f"{field}.{key}", "is required")
    context = document.get("context")
    if context is None:
        context = {}
    if not isinstance(context, dict):
        raise RequestError(f"{field}.context", "must be an object")
    check_values(context, f"{field}.context")
    return AccessRequest(
        principal=parse_entity(document["principal"], f"{field}.principal"),
        action=parse_entity(document["action"], f"{field}.action", default_type="Action"),
        resource=parse_entity(document["resource"], f"{field}.resource"),
        context=context,
    )
