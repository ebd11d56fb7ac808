"""Text every backend stores: the column-safe form of a value written to a text column.

PostgreSQL refuses a NUL character in text (`DataError: text fields cannot contain NUL`), and
neither PostgreSQL nor SQLite's driver can encode a lone surrogate ("\\ud800") as UTF-8; both can
arrive in a decision's principal, resource or path. The ledger's canonical record (JSON bytes)
keeps the exact value, escaped; its query columns are copies for filtering, and take this form:
such characters written as JSON-style escapes (`\\u0000`, `\\ud800`), cut to the column's length.
A value that needs none of this (nearly all) is returned as it is. Filters apply the same
function to what they look for, and `audit verify` compares each column with this form of its
record's value.
"""

from __future__ import annotations

import re

_UNSAFE = re.compile("[\x00\ud800-\udfff]")


def column_text(value: str, limit: int | None = None) -> str:
    """`value` as every backend can store it, at most `limit` characters."""
    if "\x00" in value or not _utf8(value):
        value = _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", value)
    return value if limit is None else value[:limit]


def _utf8(value: str) -> bool:
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True
