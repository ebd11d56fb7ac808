"""Custom CEL functions, each for something the CEL standard library cannot express.

They are registered by name in every evaluation context and allowed by the rule loader; a rule
calling any other unknown function is refused at load.

`SERVICE_FUNCTIONS` are allowed at load too but need state only a server holds (the image
attestations): the admission webhook provides them; an engine built without them (`trustplane
scan`) leaves out the rules that call them and says so, rather than guessing an answer.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from typing import Any


def entropy(value: Any) -> float:
    """Shannon entropy of a string in bits per character.

    CEL has no loops over characters, logarithms or counting, so "this env value looks like a
    generated secret" (the generic high-entropy credential shape) cannot be written in CEL.
    """
    if not isinstance(value, str) or not value:
        return 0.0
    counts = Counter(value)
    total = len(value)
    return -sum(n / total * math.log2(n / total) for n in counts.values())


def matches_cached(value: Any, pattern: Any) -> bool:
    """`value.matchesCached(pattern)`: CEL's `matches` (a regular-expression search), with the
    compiled pattern kept.

    The CEL library compiles the pattern of `matches()` on every call (about 50-100 µs); a
    pattern applied to every env value of every container made one review of a 10-container
    Deployment cost tens of milliseconds. Python's `re` keeps compiled patterns. Patterns should
    stay within the syntax RE2 and Python share (no backreferences or lookaround), so a rule
    means the same under either.
    """
    if not isinstance(value, str) or not isinstance(pattern, str):
        raise TypeError("matchesCached(string, string)")
    return re.search(pattern, value) is not None


CUSTOM_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "entropy": entropy,
    "matchesCached": matches_cached,
}

# name → what it needs; implemented where that exists (posture/image_attestations.py).
SERVICE_FUNCTIONS: dict[str, str] = {
    "unattested": "the image attestations recorded in trustplane (checked at admission)",
}
