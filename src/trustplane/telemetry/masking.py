"""Erase configured JSON pointers (RFC 6901) from a request document before it is recorded.

Masking happens before anything is written, so secrets never reach the store, the ledger or an
export. `/subject/...` is accepted as an alias of `/principal/...` (AuthZEN naming).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_ALIASES = {"subject": "principal"}


def parse_pointer(pointer: str) -> tuple[str, ...]:
    if pointer == "":
        return ()
    if not pointer.startswith("/"):
        raise ValueError(f"JSON pointer {pointer!r} must start with '/'")
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer[1:].split("/")]
    if parts and parts[0] in _ALIASES:
        parts[0] = _ALIASES[parts[0]]
    return tuple(parts)


class Masker:
    def __init__(self, pointers: Sequence[str]) -> None:
        self.pointers = list(pointers)
        self._paths = [parse_pointer(p) for p in pointers]

    def apply(self, document: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """A copy of `document` without the masked values (object members removed, array
        elements replaced by null), and the pointers that matched. Only containers along a
        masked path are copied; the input is never modified."""
        masked: list[str] = []
        result = document
        for pointer, path in zip(self.pointers, self._paths, strict=True):
            # Most documents hold none of the masked values: look before copying anything.
            if path and _holds(result, path):
                result, _ = _erase(result, path)
                masked.append(pointer)
        return result, masked


def _holds(node: Any, path: tuple[str, ...]) -> bool:
    """Whether `path` addresses a value in `node` (exactly when `_erase` would erase one)."""
    for key in path:
        if isinstance(node, dict):
            if key not in node:
                return False
            node = node[key]
        elif isinstance(node, list) and _is_index(key) and int(key) < len(node):
            node = node[int(key)]
        else:
            return False
    return True


def _erase(node: Any, path: tuple[str, ...]) -> tuple[Any, bool]:
    key, rest = path[0], path[1:]
    if isinstance(node, dict):
        if key not in node:
            return node, False
        if not rest:
            return {k: v for k, v in node.items() if k != key}, True
        child, hit = _erase(node[key], rest)
        return ({**node, key: child}, True) if hit else (node, False)
    if isinstance(node, list) and _is_index(key) and int(key) < len(node):
        index = int(key)
        if not rest:
            # Replace, never delete: deleting would shift later elements under later pointers.
            return [*node[:index], None, *node[index + 1 :]], True
        child, hit = _erase(node[index], rest)
        if not hit:
            return node, False
        return [*node[:index], child, *node[index + 1 :]], True
    return node, False


def _is_index(key: str) -> bool:
    """RFC 6901 array index: digits without leading zeros."""
    return key.isdigit() and (key == "0" or not key.startswith("0"))
