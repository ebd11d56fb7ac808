"""Secrets in files, found by detect-secrets (a maintained detector), minus placeholders.

detect-secrets already filters templated values, sequential strings and ids; documentation
examples such as AWS's `AKIAIOSFODNN7EXAMPLE` still match its key patterns, so values that say
they are examples or placeholders are dropped here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from detect_secrets.core.secrets_collection import SecretsCollection
from detect_secrets.settings import default_settings

PLACEHOLDER = re.compile(
    r"example|placeholder|changeme|change_me|dummy|redacted|your[_-]|xxxx|\*\*\*\*|"
    r"^<.*>$|^\$\{.*\}$|\{\{.*\}\}",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class SecretHit:
    line: int
    types: tuple[str, ...]  # every detector that matched the line


def is_placeholder(value: str | None) -> bool:
    return value is not None and bool(PLACEHOLDER.search(value))


def find_secrets(path: Path) -> list[SecretHit]:
    """Lines of `path` holding something detect-secrets takes for a secret."""
    with default_settings():
        collection = SecretsCollection()
        collection.scan_file(str(path))
    by_line: dict[int, set[str]] = {}
    for _filename, secret in collection:
        if is_placeholder(secret.secret_value) or secret.line_number is None:
            continue
        by_line.setdefault(int(secret.line_number), set()).add(str(secret.type))
    return [SecretHit(line, tuple(sorted(types))) for line, types in sorted(by_line.items())]
