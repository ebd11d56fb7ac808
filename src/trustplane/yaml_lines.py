"""YAML with the line of every value, so that a problem can name its file and line.

The one YAML reader of the planes that locate problems: policy bundle files (`decision/`, and
governance's `access.yaml` through them) read one document each, posture's rules, exemptions,
manifests and pipelines read multi-document streams. One parse gives both the data and the
node tree the lines come from.

libyaml (`CSafeLoader`) parses when present: bundle YAML, tests above all, is parsed on every
load, and the pure-Python parser costs most of a `trustplane check`. libyaml words its syntax
errors differently, so a refused text is parsed again by the pure-Python parser: an error reads
the same whichever parser is installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

_FAST_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlError(ValueError):
    """A text is not valid YAML: `source:line: invalid YAML: reason`."""

    def __init__(self, source: str, line: int | None, reason: str) -> None:
        self.source = source
        self.line = line  # 1-based; None when the parser named no place
        self.reason = reason
        where = source if line is None else f"{source}:{line}"
        super().__init__(f"{where}: invalid YAML: {reason}")


@dataclass(frozen=True, slots=True)
class Document:
    """One document of a YAML text: its value, its index in the stream and its root node
    (None for an empty text)."""

    index: int
    data: Any
    node: yaml.Node | None

    @property
    def line(self) -> int:
        """1-based line where the document starts."""
        return 1 if self.node is None else self.node.start_mark.line + 1

    def line_of(self, path: Sequence[str | int]) -> int:
        """The line of the value at `path` (keys and list indexes), or of its nearest parent:
        a key's own line for a mapping value, so a problem points at the key that names it."""
        if self.node is None:
            return 1
        current = self.node
        line = current.start_mark.line + 1
        for part in path:
            child: yaml.Node | None = None
            if isinstance(current, yaml.MappingNode):
                for key, value in current.value:
                    if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                        child, line = value, key.start_mark.line + 1
                        break
            elif (
                isinstance(current, yaml.SequenceNode)
                and isinstance(part, int)
                and 0 <= part < len(current.value)
            ):
                child = current.value[part]
                line = child.start_mark.line + 1
            if child is None:
                break
            current = child
        return line

    def item_lines(self, key: str) -> list[int]:
        """1-based line of each item of the top-level list `key` ([] when there is none)."""
        if not isinstance(self.node, yaml.MappingNode):
            return []
        for name, value in self.node.value:
            if getattr(name, "value", None) == key and isinstance(value, yaml.SequenceNode):
                return [int(item.start_mark.line) + 1 for item in value.value]
        return []


def read_document(text: str, source: str) -> Document:
    """The single document of `text` (data None for an empty text); `source` names the file in
    errors. A text of several documents is refused, as `yaml.safe_load` refuses it."""
    try:
        return _single(text, _FAST_LOADER)
    except yaml.YAMLError:
        pass
    try:
        return _single(text, yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise _error(exc, source) from None


def read_documents(text: str, source: str) -> list[Document]:
    """Every non-empty document of a YAML stream; `index` counts the empty ones too."""
    try:
        return _stream(text, _FAST_LOADER)
    except yaml.YAMLError:
        pass
    try:
        return _stream(text, yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise _error(exc, source) from None


def node_line(node: yaml.Node | None) -> int | None:
    """1-based line of a node, None when there is no node to point at."""
    return None if node is None else int(node.start_mark.line) + 1


def key_node(node: yaml.Node | None, key: Any) -> yaml.Node | None:
    """The node of `key` in a mapping node, or the mapping itself when the key is absent:
    a problem about a key then points at the key, or at least at its mapping."""
    if isinstance(node, yaml.MappingNode):
        for name, _ in node.value:
            if getattr(name, "value", None) == str(key):
                return name  # type: ignore[no-any-return]
    return node


def value_node(node: yaml.Node | None, key: Any) -> yaml.Node | None:
    """The value node of `key` in a mapping node, None when absent."""
    if isinstance(node, yaml.MappingNode):
        for name, value in node.value:
            if getattr(name, "value", None) == str(key):
                return value  # type: ignore[no-any-return]
    return None


def _single(text: str, loader_class: Any) -> Document:
    loader = loader_class(text)
    try:
        node = loader.get_single_node()
        return Document(0, None if node is None else loader.construct_document(node), node)
    finally:
        loader.dispose()


def _stream(text: str, loader_class: Any) -> list[Document]:
    loader = loader_class(text)
    documents: list[Document] = []
    try:
        index = 0
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            data = loader.construct_document(node)
            if data is not None:
                documents.append(Document(index, data, node))
            index += 1
        return documents
    finally:
        loader.dispose()


def _error(exc: yaml.YAMLError, source: str) -> YamlError:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        reason = exc.problem or exc.context or str(exc)
        return YamlError(source, None if mark is None else mark.line + 1, reason)
    return YamlError(source, None, str(exc))
