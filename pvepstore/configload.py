"""Reading the configuration file with bounded time and memory.

The file is small and written by the operator, but a mistake (or a planted
file) must end in a ConfigError, never in a crash or in gigabytes: the size is
capped before parsing, the text must be UTF-8, and the YAML loader refuses
deep nesting (Python's recursion limit), integers of absurd length (Python's
int-from-string digit limit) and alias expansion beyond a node budget (the
"billion laughs": a few hundred bytes of anchors and aliases that stand for
billions of values once expanded).
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .text import terminal_safe

MAX_BYTES = 1 << 20  # 1 MiB: a real configuration is a few KiB
MAX_DEPTH = 64  # nesting of mappings/lists; the schema needs 4
MAX_NODES = 100_000  # values after alias expansion
MAX_INT_DIGITS = 100
MAX_MESSAGE = 200  # characters of a YAML error message shown


class _Refused(yaml.YAMLError):
    """A structural limit of this loader (reported like any YAML error, with the line)."""

    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


class BoundedLoader(yaml.SafeLoader):
    """SafeLoader with a nesting limit, an expanded-size budget and bounded integers."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self):
        node = super().compose_document()
        _expanded_size(node)  # before any Python object is built from it
        return node

    def construct_yaml_int(self, node):  # noqa: ANN001
        digits = sum(ch.isalnum() for ch in str(node.value))
        if digits > MAX_INT_DIGITS:
            raise _Refused(f"an integer of {digits} digits", node.start_mark)
        return super().construct_yaml_int(node)


BoundedLoader.add_constructor("tag:yaml.org,2002:int", BoundedLoader.construct_yaml_int)


def _expanded_size(root: yaml.Node) -> int:
    """Nodes of the document with every alias expanded, refused beyond MAX_NODES.

    Aliases make the node graph a DAG (or a cycle: an anchor used inside
    itself); sizes are memoised per node, so this is linear in the graph and
    does not expand anything.  Iterative: depth is bounded, but no recursion is
    simpler still.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        nid = id(node)
        children = _children(node)
        if done:
            active.discard(nid)
            sizes[nid] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[nid] > MAX_NODES:
                raise _Refused(f"more than {MAX_NODES} values once aliases are expanded", node.start_mark)
            continue
        if nid in sizes:
            continue
        if nid in active:
            raise _Refused("an alias used inside its own anchor (a recursive structure)", node.start_mark)
        active.add(nid)
        stack.append((node, True))
        for child in children:
            if id(child) in active:
                raise _Refused("an alias used inside its own anchor (a recursive structure)", child.start_mark)
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def read_config_text(path: Path) -> str:
    """The file's text: at most MAX_BYTES, UTF-8 (an optional BOM is dropped)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist",
                          hint="copy config.example.yaml there, or pass --config") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_BYTES >> 20} MiB",
                          hint="a pvepstore configuration is a few KiB; is this the right file?")
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise ConfigError(f"config file {path} is UTF-16/UTF-32 text", hint="save it as UTF-8")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"config file {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line})",
                          hint="save it as UTF-8") from None


def parse_yaml(text: str, path: Path) -> Any:
    """The YAML document, or a ConfigError with the line and a bounded problem text."""
    loader = None
    try:
        loader = BoundedLoader(text)  # the reader already checks the characters here
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        problem = str(getattr(exc, "problem", None) or exc)
        raise ConfigError(f"{path}: not valid YAML{where}: {_bounded(problem)}") from None
    except (ValueError, RecursionError, OverflowError) as exc:
        # PyYAML's constructors raise these on values it cannot build (a date like 2026-02-30).
        raise ConfigError(f"{path}: not valid YAML: {_bounded(f'{type(exc).__name__}: {exc}')}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _bounded(text: str) -> str:
    text = terminal_safe(text)
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 3] + "..."
