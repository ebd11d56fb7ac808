"""Step-up: what a policy asks of a person it denies, and how the ask is phrased to them.

A policy that needs more says so with `@step_up("acr_values=phr max_age=300")`; a deny it
determines carries that obligation, and the HTTP enforcement points answer with RFC 9470's
`WWW-Authenticate: Bearer error="insufficient_user_authentication"`, `acr_values` and `max_age`.
The grammar lives in the decision plane because bundles are refused when it does not parse.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_ACR_VALUE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")  # a token that needs no escaping in quotes


class StepUpError(ValueError):
    """A `@step_up` annotation that cannot be understood; the message says which part."""


@dataclass(frozen=True)
class StepUp:
    """What a person must do to be let in: authenticate with one of `acr_values`, within
    `max_age` seconds."""

    acr_values: tuple[str, ...]
    max_age: int | None


def parse_step_up(text: str) -> StepUp:
    """`acr_values=phr[,phrh] [max_age=SECONDS]`, as written in `@step_up("...")`."""
    acr: tuple[str, ...] = ()
    max_age: int | None = None
    for part in text.split():
        name, sep, value = part.partition("=")
        if not sep or not value:
            raise StepUpError(f"@step_up: {part!r} is not name=value")
        if name == "acr_values":
            acr = tuple(v for v in value.split(",") if v)
            bad = [v for v in acr if not _ACR_VALUE.fullmatch(v)]
            if bad:
                raise StepUpError(f"@step_up: acr value {bad[0]!r} has characters not allowed")
        elif name == "max_age":
            if not value.isdigit():
                raise StepUpError(f"@step_up: max_age {value!r} is not a number of seconds")
            max_age = int(value)
        else:
            raise StepUpError(f"@step_up: unknown parameter {name!r} (acr_values, max_age)")
    if not acr and max_age is None:
        raise StepUpError("@step_up needs acr_values=... and/or max_age=...")
    return StepUp(acr, max_age)


def step_up_challenge(step_ups: Sequence[StepUp]) -> str:
    """One RFC 9470 challenge for every step-up a deny asks for: the first policy's acr values,
    the shortest max_age."""
    acr = next((s.acr_values for s in step_ups if s.acr_values), ())
    ages = [s.max_age for s in step_ups if s.max_age is not None]
    parts = [
        'Bearer error="insufficient_user_authentication"',
        'error_description="a stronger or more recent authentication is required"',
    ]
    if acr:
        parts.append(f'acr_values="{" ".join(acr)}"')
    if ages:
        parts.append(f"max_age={min(ages)}")
    return ", ".join(parts)
