"""AuthZEN 1.0 Search (subject, resource, action) over the known universe.

A search is answered by evaluating every candidate of the searched type exactly as a single
evaluation would (the caller's `evaluate`: the decision point with revocations, grants,
exceptions and the trust plane, neither counted nor recorded one by one), so a result fed back
into `/access/v1/evaluation` is allowed, which is what the specification asks of a search, and
nothing the universe holds that an evaluation would allow is left out. The search itself is
one ledger record (kind `search`) with the page it answered.

Pages: results are in a stable order (entity id, action name). `page.limit` caps a page
(default 100, at most 1,000); `page.next_token` is an opaque cursor naming the search it
belongs to (a digest of the request without its page) and the last candidate returned, so a
page follows on from where the previous one ended even when the universe grows meanwhile. A
token from another search, or one that does not decode, is refused (400). A response's
`page.next_token` is empty on the last page, as the specification says.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from trustplane.errors import TrustplaneError
from trustplane.model import AccessRequest, Decision, EntityRef
from trustplane.outcomes.universe import Universe

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
KINDS = ("subject", "resource", "action")


class SearchError(TrustplaneError):
    """A search the PDP cannot answer as asked (a bad page token, a bad limit): a 400."""

    exit_code = 2


@dataclass(frozen=True)
class Query:
    """One search: `kind` names the member searched for; its id (or the action) is ignored."""

    kind: str  # subject | resource | action
    subject: EntityRef
    action: str | None
    resource: EntityRef
    context: dict[str, Any]

    def digest(self) -> str:
        document = {
            "k": self.kind,
            "s": [self.subject.type, None if self.kind == "subject" else self.subject.id],
            "a": None if self.kind == "action" else self.action,
            "r": [self.resource.type, None if self.kind == "resource" else self.resource.id],
            "c": self.context,
        }
        return hashlib.sha256(orjson.dumps(document, option=orjson.OPT_SORT_KEYS)).hexdigest()[:24]

    def request_for(self, candidate: str) -> AccessRequest:
        subject, resource, action = self.subject, self.resource, self.action
        if self.kind == "subject":
            subject = EntityRef(subject.type, candidate, subject.properties)
        elif self.kind == "resource":
            resource = EntityRef(resource.type, candidate, resource.properties)
        else:
            action = candidate
        assert action is not None
        return AccessRequest(subject, EntityRef("Action", action), resource, self.context)

    def result(self, candidate: str) -> dict[str, str]:
        if self.kind == "action":
            return {"name": candidate}
        kind = self.subject.type if self.kind == "subject" else self.resource.type
        return {"type": kind, "id": candidate}


@dataclass(frozen=True)
class Page:
    results: list[dict[str, str]]
    next_token: str
    evaluated: int
    decisions: list[Decision]

    def body(self) -> dict[str, Any]:
        return {
            "results": self.results,
            "page": {"next_token": self.next_token, "count": len(self.results)},
        }


def candidates(query: Query, universe: Universe) -> tuple[str, ...]:
    if query.kind == "subject":
        return universe.ids(query.subject.type)
    if query.kind == "resource":
        return universe.ids(query.resource.type)
    return universe.actions


def encode_token(query: Query, after: str) -> str:
    raw = orjson.dumps({"q": query.digest(), "after": after})
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_token(query: Query, token: str) -> str:
    """The candidate the previous page ended with; SearchError for a token of another search
    or one that does not decode."""
    try:
        padded = token + "=" * (-len(token) % 4)
        document = orjson.loads(base64.urlsafe_b64decode(padded.encode()))
        after, digest = document["after"], document["q"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise SearchError("page.token: not a page token this PDP issued") from None
    if digest != query.digest() or not isinstance(after, str):
        raise SearchError("page.token: the token belongs to a different search") from None
    return after


def search(
    query: Query,
    universe: Universe,
    evaluate: Callable[[AccessRequest], Decision],
    limit: int | None = None,
    token: str | None = None,
) -> Page:
    """One page of `query`'s results: candidates after the token's, in order, each allowed by
    `evaluate`; scans one allowed candidate past the page to know whether another page exists."""
    if limit is None:
        limit = DEFAULT_LIMIT
    if limit < 1 or limit > MAX_LIMIT:
        raise SearchError(f"page.limit: must be between 1 and {MAX_LIMIT}")
    after = decode_token(query, token) if token else None
    ordered: Iterable[str] = candidates(query, universe)
    results: list[dict[str, str]] = []
    decisions: list[Decision] = []
    evaluated = 0
    next_token = ""
    last = None
    for candidate in ordered:
        if after is not None and candidate <= after:
            continue
        evaluated += 1
        decision = evaluate(query.request_for(candidate))
        if not decision.allowed:
            continue
        if len(results) == limit:
            assert last is not None
            next_token = encode_token(query, last)
            break
        results.append(query.result(candidate))
        decisions.append(decision)
        last = candidate
    return Page(results, next_token, evaluated, decisions)


def naive(
    query: Query, universe: Universe, evaluate: Callable[[AccessRequest], Decision]
) -> list[dict[str, str]]:
    """Every candidate evaluated, allowed ones kept: the oracle the tests compare with."""
    return [
        query.result(c)
        for c in candidates(query, universe)
        if evaluate(query.request_for(c)).allowed
    ]
