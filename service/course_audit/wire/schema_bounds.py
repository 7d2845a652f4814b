"""Bounds on writer schemas, checked before a schema is used (docs/messages.md#schema-limits).

A writer schema comes from outside (a schema registry, a schema directory), and fastavro trusts
the schemas it is given: a recursive type lets a datum nest as deep as it has bytes (fastavro
recurses on the C stack and the process dies), an array of `null` reads a block count of 2^62
items without consuming a byte (the event loop spins for hours), and deeply nested JSON
exhausts Python's recursion limit. So every schema is checked twice:

- its text, before it is parsed (`check_text`): size and JSON nesting depth;
- its parsed form, before it decodes anything (`check_structure`): how many named types and
  fields it defines, no named type that contains itself, how deep a value can nest, how many
  schema nodes one value visits, and, for each array or map, that every item consumes at least
  one byte and not too much work per byte.

One more trap is not in the schema alone: when fastavro skips a value (a writer's field the
reader schema lacks) it reads booleans, floats, doubles and fixed without noticing that the
datum has ended, so an array of such items skips its whole block count of nothing. A schema
with such an array is accepted, but marked: it is decoded from a buffer that raises at its end
(`check_structure` returns True).

Together they bound the work of decoding one message: at most `MAX_VALUE_WORK` schema nodes
plus `MAX_ITEM_WORK_PER_BYTE` per byte of the datum, at most `MAX_VALUE_DEPTH` levels deep.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

#: Largest schema text, in characters. The built-in event schemas with every named type
#: written out are about 8,000.
MAX_SCHEMA_CHARS = 64 * 1024
#: Deepest JSON nesting of a schema text (arrays and objects). The built-in ones reach 8.
MAX_JSON_DEPTH = 32
#: Most named types (records, enums, fixed) one schema defines. The built-in ones: 5 at most.
MAX_NAMED_TYPES = 100
#: Most record fields one schema declares, over all its records. The built-in ones: 50 at most.
MAX_FIELDS = 1000
#: Deepest nesting of records, arrays, maps and unions in one value. The built-in ones: 4.
MAX_VALUE_DEPTH = 32
#: Most schema nodes visited to read one value apart from array and map items, each named
#: type counted at every use (a union counts its largest branch). The built-in ones: 116 at most.
MAX_VALUE_WORK = 10_000
#: Most schema nodes one array or map item may visit per byte it must consume at least.
#: The built-in `changes` map: 2.
MAX_ITEM_WORK_PER_BYTE = 16

_NAMED = frozenset({"record", "error", "enum", "fixed"})
#: The least bytes a value of each primitive type takes.
_PRIMITIVE_BYTES: dict[str, int] = {
    "null": 0,
    "boolean": 1,
    "int": 1,
    "long": 1,
    "float": 4,
    "double": 8,
    "bytes": 1,
    "string": 1,
}
#: Primitives read with a variable-length integer, which fails at the end of the datum whether
#: fastavro reads or skips the value (the others are read as a fixed number of bytes).
_VARINT_LED = frozenset({"int", "long", "bytes", "string"})
#: A JSON string (skipped whole) or a bracket.
_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


class SchemaLimitError(ValueError):
    """A schema beyond one of the bounds (the message says which, and where)."""


def json_depth_exceeds(text: str, limit: int) -> bool:
    """True when `text` nests arrays and objects more than `limit` deep (not parsed: a scan)."""
    depth = 0
    for match in _JSON_TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > limit:
                return True
        elif token in "]}":
            depth -= 1
    return False


def check_text(text: str) -> None:
    """Raise SchemaLimitError if schema text is too large or nests too deep to parse safely."""
    if len(text) > MAX_SCHEMA_CHARS:
        raise SchemaLimitError(
            f"the schema text is {len(text)} characters, more than the {MAX_SCHEMA_CHARS} allowed"
        )
    if json_depth_exceeds(text, MAX_JSON_DEPTH):
        raise SchemaLimitError(f"the schema JSON nests more than {MAX_JSON_DEPTH} levels deep")


@dataclass(frozen=True, slots=True)
class _Cost:
    """What reading one value of a type takes, items of arrays and maps aside."""

    work: int  # schema nodes visited
    min_bytes: int  # the fewest bytes a value can take
    depth: int  # records, arrays, maps and unions nested
    ends_seen: bool  # reading (or skipping) a value past the datum's end fails


class _Walker:
    def __init__(self) -> None:
        self.named: dict[str, _Cost] = {}
        self.in_progress: list[str] = []  # named types being walked, outermost first
        self.named_count = 0
        self.field_count = 0
        #: An array of items fastavro would skip past the datum's end without failing.
        self.strict_reads = False

    def cost(self, node: Any) -> _Cost:
        if isinstance(node, list):
            return self._union(node)
        if isinstance(node, str):
            return self._reference(node)
        if not isinstance(node, dict):
            raise SchemaLimitError(f"a schema node is a {type(node).__name__}")
        kind = node.get("type")
        if not isinstance(kind, str):
            # fastavro's parsed form always names the type; anything else is not a schema.
            raise SchemaLimitError(f"a schema node has no type name: {str(node)[:80]}")
        if kind in _NAMED:
            return self._named(node, kind)
        if kind == "array":
            item = self.cost(node.get("items"))
            self._check_item("array", item, item)
            if not item.ends_seen:
                self.strict_reads = True
            return _Cost(1, 1, item.depth + 1, True)
        if kind == "map":
            value = self.cost(node.get("values"))
            # Each entry also reads its key, a string of at least one byte.
            self._check_item("map", value, _Cost(value.work + 1, value.min_bytes + 1, 0, True))
            return _Cost(1, 1, value.depth + 1, True)
        return self._reference(kind)

    def _union(self, branches: list[Any]) -> _Cost:
        costs = [self.cost(b) for b in branches]
        if not costs:
            return _Cost(1, 1, 1, True)  # nothing can be read; the reader fails on the index
        return _Cost(
            1 + max(c.work for c in costs),
            1 + min(c.min_bytes for c in costs),
            1 + max(c.depth for c in costs),
            True,  # the branch index
        )

    def _reference(self, name: str) -> _Cost:
        if name in _PRIMITIVE_BYTES:
            return _Cost(1, _PRIMITIVE_BYTES[name], 0, name in _VARINT_LED)
        if name in self.in_progress:
            chain = [*self.in_progress[self.in_progress.index(name) :], name]
            raise SchemaLimitError(
                f"recursive type: {' -> '.join(chain)} (a named type may not contain itself)"
            )
        known = self.named.get(name)
        if known is None:
            raise SchemaLimitError(f"the type {name!r} is used but not defined")
        return known

    def _named(self, node: dict[str, Any], kind: str) -> _Cost:
        name = node.get("name")
        if not isinstance(name, str):
            raise SchemaLimitError(f"a {kind} has no name")
        self.named_count += 1
        if self.named_count > MAX_NAMED_TYPES:
            raise SchemaLimitError(f"more than {MAX_NAMED_TYPES} named types")
        if kind == "enum":
            cost = _Cost(1, 1, 0, True)
        elif kind == "fixed":
            size = node.get("size")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise SchemaLimitError(f"the fixed type {name} has size {size!r}")
            cost = _Cost(1, size, 0, False)
        else:
            fields = node.get("fields")
            if not isinstance(fields, list):
                raise SchemaLimitError(f"the record {name} has no list of fields")
            self.field_count += len(fields)
            if self.field_count > MAX_FIELDS:
                raise SchemaLimitError(f"more than {MAX_FIELDS} record fields")
            self.in_progress.append(name)
            costs = [self.cost(f.get("type") if isinstance(f, dict) else None) for f in fields]
            self.in_progress.pop()
            cost = _Cost(
                1 + sum(c.work for c in costs),
                sum(c.min_bytes for c in costs),
                1 + max((c.depth for c in costs), default=0),
                any(c.ends_seen for c in costs),
            )
        self.named[name] = cost
        return cost

    @staticmethod
    def _check_item(what: str, item: _Cost, per_item: _Cost) -> None:
        if per_item.min_bytes == 0:
            raise SchemaLimitError(
                f"an {what} of items that can take no bytes (null, an empty record, fixed of "
                "size 0): a block count alone could make the reader loop for ever"
            )
        if per_item.work > MAX_ITEM_WORK_PER_BYTE * per_item.min_bytes:
            raise SchemaLimitError(
                f"an {what} whose items visit {per_item.work} schema nodes for as few as "
                f"{per_item.min_bytes} byte(s), more than {MAX_ITEM_WORK_PER_BYTE} per byte"
            )


def check_structure(parsed: Any) -> bool:
    """Raise SchemaLimitError if a parsed schema (fastavro's form) is beyond the bounds.

    Returns whether it must be decoded from a buffer that raises at the datum's end (it has an
    array of items fastavro could skip past that end without noticing).
    """
    walker = _Walker()
    cost = walker.cost(parsed)
    if cost.depth > MAX_VALUE_DEPTH:
        raise SchemaLimitError(
            f"a value nests {cost.depth} records, arrays, maps or unions deep, more than "
            f"{MAX_VALUE_DEPTH}"
        )
    if cost.work > MAX_VALUE_WORK:
        raise SchemaLimitError(
            f"reading one value visits {cost.work} schema nodes (named types counted at each "
            f"use), more than {MAX_VALUE_WORK}"
        )
    return walker.strict_reads
