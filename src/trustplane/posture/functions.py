"""Custom CEL functions, each for something the CEL standard library cannot express.

They are registered by name in every evaluation context and allowed by the rule loader; a rule
calling any other unknown function is refused at load.
"""

from __future__ import annotations

import math
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


CUSTOM_FUNCTIONS: dict[str, Callable[..., Any]] = {"entropy": entropy}
