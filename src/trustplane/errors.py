"""The one base error of everything the CLI reports as a refusal: a message for one line, and
the exit status the CLI ends with (2 unless the error says otherwise)."""

from __future__ import annotations


class TrustplaneError(Exception):
    """A refusal with a message that names what went wrong; the CLI prints it and exits with
    `exit_code`, without a traceback."""

    exit_code: int = 2
