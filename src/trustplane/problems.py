"""RFC 9457 problem details, and request-body helpers that turn bad input into them."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

PROBLEM_TYPE = "urn:trustplane:problem:"
M = TypeVar("M", bound=BaseModel)


class Problem(Exception):
    """Raised anywhere in a handler; rendered as application/problem+json."""

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.errors = errors
        self.headers = headers

    def response(self, instance: str | None = None) -> Response:
        body: dict[str, Any] = {
            "type": PROBLEM_TYPE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        if self.errors:
            body["errors"] = self.errors
        return Response(
            orjson.dumps(body),
            status_code=self.status,
            media_type="application/problem+json",
            headers=self.headers,
        )


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing (413) more than `limit` bytes without reading past it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def too_large(limit: int) -> Problem:
    return Problem(
        413,
        "body-too-large",
        "Request body too large",
        f"the body exceeds the limit of {limit} bytes",
    )


def parse_model(model: type[M], body: bytes) -> M:
    """Validate a JSON body against `model`; errors carry a JSON pointer to each bad field."""
    if not body.strip():
        raise Problem(400, "invalid-request", "Invalid request", "the request body is empty")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = [_pointer_error(e) for e in exc.errors(include_url=False)]
        if errors and errors[0]["code"] == "json_invalid":
            raise Problem(
                400,
                "malformed-json",
                "Malformed JSON",
                f"the body is not valid JSON: {errors[0]['detail']}",
            ) from None
        first = errors[0]
        detail = f"{first['pointer'] or '/'}: {first['detail']}"
        if len(errors) > 1:
            detail += f" (and {len(errors) - 1} more)"
        raise Problem(422, "invalid-request", "Invalid request", detail, errors) from None


def _pointer_error(error: Any) -> dict[str, str]:
    loc = [str(part) for part in error.get("loc", ()) if not str(part).startswith("function-")]
    pointer = "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in loc)
    message = error.get("msg", "invalid")
    if error.get("type") == "extra_forbidden":
        message = "unknown field"
    elif error.get("type") == "missing":
        message = "field required"
    return {"pointer": pointer, "detail": message, "code": error.get("type", "invalid")}
