"""Split Cedar source text into one statement per policy, remembering where each starts.

Cedar's parser reports errors without positions, so bundles parse policy by policy; this
splitter is what lets an error name its file and line. It only needs to know where a policy
ends: at a `;` outside string literals and `//` comments.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PolicySource:
    text: str
    line: int  # 1-based line of the statement's first token (its first annotation)


def split_policies(text: str) -> list[PolicySource]:
    """Cut `text` into policy statements. Text after the last `;` that is not blank or a comment
    is returned as a final statement so the parser can report it."""
    statements: list[PolicySource] = []
    start: int | None = None  # index of the statement's first significant character
    start_line = 0
    line = 1
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
            i += 1
            continue
        if ch == "/" and i + 1 < n and text[i + 1] == "/":
            end = text.find("\n", i)
            i = n if end == -1 else end
            continue
        if ch.isspace():
            i += 1
            continue
        if start is None:
            start, start_line = i, line
        if ch == '"':
            i += 1
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                if text[i] == "\n":
                    line += 1
                i += 1
            i += 1  # closing quote (or past the end of an unterminated string)
            continue
        if ch == ";":
            statements.append(PolicySource(text[start : i + 1], start_line))
            start = None
        i += 1
    if start is not None:
        statements.append(PolicySource(text[start:], start_line))
    return statements
