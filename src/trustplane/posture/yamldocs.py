"""Multi-document YAML with the line of every value, so problems can name file and line."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import yaml


class YamlError(Exception):
    """A file is not valid YAML; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Document:
    """One document of a YAML stream: its value, its index and its root node."""

    index: int
    data: Any
    node: yaml.Node

    @property
    def line(self) -> int:
        """1-based line where the document starts."""
        return self.node.start_mark.line + 1

    def line_of(self, path: Sequence[str | int]) -> int:
        """The line of the value at `path` (keys and list indexes), or of its nearest parent."""
        return line_of(self.node, path)


def read_documents(text: str, source: str) -> Iterator[Document]:
    """Every non-empty document of `text`; `source` names the file in errors."""
    loader = yaml.SafeLoader(text)
    index = 0
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            data = loader.construct_document(node)
            if data is not None:
                yield Document(index, data, node)
            index += 1
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise YamlError(f"{where}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise YamlError(f"{source}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()


def line_of(node: yaml.Node, path: Sequence[str | int]) -> int:
    current = node
    line = node.start_mark.line + 1
    for part in path:
        child: yaml.Node | None = None
        if isinstance(current, yaml.MappingNode):
            for key, value in current.value:
                if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                    child, line = value, key.start_mark.line + 1  # the key's line names it
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
