"""One YAML loader for every file a person writes: node policies and audit plans.

PyYAML's `SafeLoader` builds no arbitrary objects, but it is not safe against
small hostile documents: a 1 KB "billion laughs" file (anchors that alias anchors
that alias anchors) composes to a graph with a few dozen nodes that *expands* to
billions, and anything walking the loaded value (validation, an error message that
shows it) then runs for minutes and eats gigabytes. Deep nesting overflows the
recursive composer. And a repeated key silently replaces the first one, so the
value a reviewer read is not the value used.

`load_yaml` therefore refuses, before anything is constructed:

- a text longer than `MAX_BYTES`;
- more than `MAX_ALIASES` alias uses (`*name`);
- nesting deeper than `MAX_DEPTH`;
- a document whose node graph, with every alias expanded, has more than
  `MAX_EXPANDED_NODES` nodes (counted in time linear in the *composed* graph, by
  memoising each node's expanded size, so a bomb is measured without expanding it);
- duplicate keys in any mapping.

Every refusal is a `YamlError` naming the line and column where it applies, so the
caller (policy or plan) can prefix the file name and show it as is.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_BYTES = 1024 * 1024
"""A policy or plan is a few hundred lines; a megabyte is a mistake or an attack."""
MAX_ALIASES = 100
MAX_DEPTH = 64
MAX_EXPANDED_NODES = 100_000


class YamlError(ValueError):
    """A YAML text that is invalid or over a limit; the message names where."""


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""


class _LimitedLoader(yaml.SafeLoader):
    """A SafeLoader that counts aliases and depth while composing and refuses duplicate keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:  # type: ignore[override]
        if self.check_event(AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise YamlError(
                    f"{_where(mark)}refused: more than {MAX_ALIASES} aliases (*name); "
                    "a document that repeats itself this much is not a policy or a plan"
                )
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise YamlError(f"{_where(mark)}refused: nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1


def _construct_mapping(loader: _LimitedLoader, node: MappingNode) -> dict[Any, Any]:
    """A mapping whose own keys are unique; keys merged in with `<<` may be overridden."""
    own = sum(1 for key_node, _ in node.value if key_node.tag != "tag:yaml.org,2002:merge")
    loader.flatten_mapping(node)  # merged pairs first, then the mapping's own
    merged = len(node.value) - own
    result: dict[Any, Any] = {}
    seen: set[Any] = set()
    for index, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
        try:
            duplicate = key in seen
        except TypeError:
            raise YamlError(f"{_where(key_node.start_mark)}invalid YAML: unhashable key") from None
        if duplicate:
            raise YamlError(f"{_where(key_node.start_mark)}invalid YAML: duplicate key {key!r}")
        if index >= merged:
            seen.add(key)
        result[key] = loader.construct_object(value_node, deep=True)  # type: ignore[no-untyped-call]
    return result


_LimitedLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,  # type: ignore[arg-type]
)


def expanded_size(root: Node, limit: int = MAX_EXPANDED_NODES) -> int:
    """Nodes in the document with every alias expanded, capped just above `limit`.

    Aliased nodes are the same object in the composed graph, so each node's size is
    computed once (iteratively, no recursion) and reused wherever it is aliased.
    """
    sizes: dict[int, int] = {}
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if not children_done:
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)
            continue
        total = 1 + sum(sizes[id(child)] for child in children)
        sizes[id(node)] = min(total, limit + 1)
    return sizes[id(root)]


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, ScalarNode):
        return []
    return []


def load_yaml(text: str | bytes) -> Any:
    """Parse one YAML document within the limits above; raise `YamlError` otherwise."""
    if isinstance(text, bytes):
        size = len(text)
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise YamlError(f"not UTF-8 text (byte {exc.start})") from None
    else:
        size = len(text.encode("utf-8"))
    if size > MAX_BYTES:
        raise YamlError(f"refused: larger than {MAX_BYTES} bytes ({size})")
    loader: _LimitedLoader | None = None
    try:
        loader = _LimitedLoader(text)  # the reader checks characters here already
        root = loader.get_single_node()
        if root is None:
            return None
        expanded = expanded_size(root)
        if expanded > MAX_EXPANDED_NODES:
            raise YamlError(
                f"{_where(root.start_mark)}refused: with its aliases expanded the document has "
                f"more than {MAX_EXPANDED_NODES} values (an alias bomb?)"
            )
        return loader.construct_document(root)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise YamlError(f"{_where(mark)}invalid YAML: {problem}") from None
    except RecursionError:
        raise YamlError(f"refused: nested deeper than {MAX_DEPTH} levels") from None
    finally:
        if loader is not None:
            loader.dispose()
