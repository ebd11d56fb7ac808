"""Build AccessRequests from the plain documents people write (bundle tests, `trustplane check`).

Errors name the offending field, because these documents are written by hand.
"""

from __future__ import annotations

import re
from typing import Any

from trustplane.model import AccessRequest, EntityRef

_TYPE = r"(?P<type>[A-Za-z_][A-Za-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)*)"
_QUOTED_UID = re.compile(_TYPE + r'::"(?P<id>.*)"$')
_SHORT_UID = re.compile(_TYPE + r":(?P<id>[^:].*)$")
REQUEST_KEYS = frozenset({"principal", "action", "resource", "context"})


class RequestError(ValueError):
    """A request document is malformed; `field` says where."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


def parse_entity(value: Any, field: str, *, default_type: str | None = None) -> EntityRef:
    """`{type, id, properties?}`, `Type::"id"` or `Type:id`. With a default type (actions), a
    string that is not `Type::"id"` is an id of that type."""
    if isinstance(value, str):
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
    return AccessRequest(
        principal=parse_entity(document["principal"], f"{field}.principal"),
        action=parse_entity(document["action"], f"{field}.action", default_type="Action"),
        resource=parse_entity(document["resource"], f"{field}.resource"),
        context=context,
    )
