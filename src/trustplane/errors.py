"""The one base error of everything the CLI reports as a refusal rather than a bug: a message
that names what went wrong, any detail lines under it, and the exit status the CLI ends with.

Kept free of imports so the CLI can test for it without loading the plane that raised it.
"""

from __future__ import annotations


class TrustplaneError(Exception):
    """A refusal the CLI prints without a traceback: the message (one line, `error: ...`), the
    `details()` under it, and `exit_code` (2, a usage, configuration or input error, unless a
    subclass says otherwise)."""

    exit_code: int = 2

    def headline(self) -> str:
        """What the CLI prints above the details (the message itself when there are none)."""
        return str(self)

    def details(self) -> list[str]:
        """Lines printed under the message (every problem of a refused bundle, say)."""
        return []
