"""Parsers compiled for one netlink attribute layout.

Messages of one kind from one kernel subsystem mostly share their *layout*:
the same attributes with the same lengths in the same order, only the values
differ (every TCP-over-IPv4 conntrack entry looks alike, for instance). A
layout can therefore be proved with one masked compare of the whole message
(``int.from_bytes(message) & mask == fixed``, the mask covering every header
byte) and all its values read with one ``struct`` unpack. This module knows
nothing about any subsystem; a caller describes its attributes with a
:data:`Schema` and supplies the code that turns the values into objects.

* :func:`walk` is the generic decoder: it walks any message with the schema,
  checks every length and returns the values by path. It is the reference
  the compiled parsers are tested against, and the fallback for messages of
  a layout not (yet) compiled.
* :func:`analyse` derives the :class:`Layout` of one message;
  :func:`compile_parser` turns it into a function.
* :class:`LayoutCache` keeps the compiled parsers of a stream of messages.
"""

from __future__ import annotations

import re
import struct
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nfkit.netlink.codec import NLA_TYPE_MASK, NLATTR
from nfkit.netlink.errors import DecodeError, TruncatedError

#: Leaf code of a payload read as raw bytes of whatever length it has.
BYTES = "*"

#: The little-endian integer trick needs the host order of netlink headers
#: (lengths and types) to be little-endian too.
COMPILABLE = sys.byteorder == "little"


@dataclass(frozen=True, slots=True)
class Leaf:
    """An attribute holding values: ``struct`` codes read big-endian, or :data:`BYTES`.

    ``"I"`` is a be32, ``"BB"`` two u8 (two values), ``"16s"`` exactly 16
    bytes. The payload length must equal the codes' size.

    A ``pinned`` leaf's value is part of the layout (as its headers are): a
    message with another value has another layout, and compiled code knows
    the value as a constant. Pin values that decide what the others mean
    (a protocol number).
    """

    name: str
    code: str
    pinned: bool = False
    #: Payload size the codes need (None: any, for :data:`BYTES`).
    size: int | None = field(init=False, compare=False)
    #: How many values the codes give.
    count: int = field(init=False, compare=False)
    _unpack: Callable[[bytes, int], tuple[Any, ...]] | None = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.code == BYTES:
            size, count, unpack = None, 1, None
        else:
            compiled = struct.Struct("!" + self.code)
            size, unpack = compiled.size, compiled.unpack_from
            count = len(compiled.unpack(bytes(size)))
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "count", count)
        object.__setattr__(self, "_unpack", unpack)


@dataclass(frozen=True, slots=True)
class Nest:
    """An attribute holding attributes, described by ``children``."""

    name: str
    children: Mapping[int, Leaf | Nest]


#: Attribute type -> description, for the attributes of one level.
Schema = Mapping[int, Leaf | Nest]

#: In :func:`walk` results: the value of a nest's path (the nest was present).
PRESENT = True


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def walk(data: bytes, start: int, end: int, schema: Schema, prefix: str = "") -> dict[str, Any]:
    """Decode the attributes in ``data[start:end]`` by ``schema``.

    Returns ``{path: value}``: a path joins names with dots (``"orig.ip.v4_src"``);
    a leaf of one code gives its value, a leaf of several codes a tuple,
    a :data:`BYTES` leaf its payload, a nest :data:`PRESENT`. Attributes the
    schema does not name are skipped; of repeated attributes the last wins.

    Raises:
        TruncatedError: an attribute length is inconsistent.
        DecodeError: a leaf's payload has the wrong size.
    """
    values: dict[str, Any] = {}
    _walk(data, start, end, schema, prefix, values)
    return values


def _walk(
    data: bytes, start: int, end: int, schema: Schema, prefix: str, values: dict[str, Any]
) -> None:
    unpack_header = NLATTR.unpack_from
    while start < end:
        if end - start < 4:
            raise TruncatedError(f"{end - start} stray bytes after the attributes at {start}")
        length, atype = unpack_header(data, start)
        if length < 4 or start + length > end:
            raise TruncatedError(
                f"attribute type {atype & NLA_TYPE_MASK} at {start}: bad length {length}"
            )
        node = schema.get(atype & NLA_TYPE_MASK)
        pos, stop = start + 4, start + length
        if isinstance(node, Nest):
            path = _join(prefix, node.name)
            values[path] = PRESENT
            _walk(data, pos, stop, node.children, path, values)
        elif node is not None:
            path = _join(prefix, node.name)
            unpack = node._unpack
            if unpack is None:
                values[path] = data[pos:stop]
            else:
                if stop - pos != node.size:
                    raise DecodeError(f"{path}: {stop - pos} bytes, expected {node.size}")
                unpacked = unpack(data, pos)
                values[path] = unpacked[0] if node.count == 1 else unpacked
        start += (length + 3) & ~3


@dataclass(slots=True)
class Layout:
    """The shape of one message and where its values are.

    Attributes:
        length: the message length (the layout matches only this length).
        mask, fixed: a message ``m`` has this layout when
            ``int.from_bytes(m[:length], "little") & mask == fixed``.
        reads: the leaves read, in message order: ``(offset, struct code,
            names of its values)``, named ``v0``, ``v1``... in the parser.
        fields: path -> the names of its values in the parser (``"v3"``); a
            :data:`BYTES` leaf has one, its payload. A pinned leaf has
            literals instead (``"17"``). Of a repeated attribute the last
            occurrence counts, as in :func:`walk`.
        nests: paths of the nests present.
    """

    length: int
    mask: int
    fixed: int
    reads: list[tuple[int, str, list[str]]] = field(default_factory=list)
    fields: dict[str, list[str]] = field(default_factory=dict)
    nests: set[str] = field(default_factory=set)


def analyse(
    data: bytes,
    start: int,
    end: int,
    schema: Schema,
    attrs_at: int,
    fixed_spans: Sequence[tuple[int, int]],
) -> Layout | None:
    """The :class:`Layout` of the message ``data[start:end]``, or None.

    Parameters:
        attrs_at: where the attributes begin, counted from ``start``.
        fixed_spans: ``(offset, size)`` pieces of the headers before the
            attributes that must be equal too (type, flags, family...).

    Returns None when the message does not follow ``schema`` (wrong leaf
    sizes, bad lengths) or the host is big-endian.
    """
    if not COMPILABLE:
        return None
    length = end - start
    mask = bytearray(length)
    for offset, size in fixed_spans:
        mask[offset : offset + size] = b"\xff" * size
    layout = Layout(length, 0, 0)
    try:
        _analyse(data, start, start + attrs_at, end, schema, "", mask, layout)
    except (DecodeError, struct.error):
        return None
    layout.mask = int.from_bytes(mask, "little")
    layout.fixed = int.from_bytes(data[start:end], "little") & layout.mask
    return layout


def _analyse(
    data: bytes,
    base: int,
    start: int,
    end: int,
    schema: Schema,
    prefix: str,
    mask: bytearray,
    layout: Layout,
) -> None:
    while start < end:
        if end - start < 4:
            raise DecodeError("stray bytes")
        length, atype = NLATTR.unpack_from(data, start)
        if length < 4 or start + length > end:
            raise DecodeError("bad attribute length")
        mask[start - base : start - base + 4] = b"\xff\xff\xff\xff"
        node = schema.get(atype & NLA_TYPE_MASK)
        pos, size = start + 4, length - 4
        if isinstance(node, Nest):
            path = _join(prefix, node.name)
            layout.nests.add(path)
            _analyse(data, base, pos, pos + size, node.children, path, mask, layout)
        elif node is not None:
            if node.code == BYTES:
                code, count = f"{size}s", 1
            elif node.size == size:
                code, count = node.code, node.count
            else:
                raise DecodeError("leaf size")
            path = _join(prefix, node.name)
            if node.pinned:
                mask[pos - base : pos - base + size] = b"\xff" * size
                values = struct.unpack_from("!" + code, data, pos)
                layout.fields[path] = [repr(value) for value in values]
            else:
                index = sum(len(names) for _at, _code, names in layout.reads)
                names = [f"v{index + k}" for k in range(count)]
                layout.reads.append((pos - base, code, names))
                layout.fields[path] = names
        start += (length + 3) & ~3


def compile_parser(
    layout: Layout,
    body: Sequence[str],
    namespace: Mapping[str, Any],
    filename: str = "<netlink layout>",
) -> Callable[[bytes, int], Any]:
    """Compile ``parse(data, offset)`` for messages of ``layout``.

    The function returns None for a message of another layout; else it
    unpacks the values ``body`` uses into the local names of
    ``layout.fields`` (one ``struct`` call; locals are faster to read than
    tuple items) and runs ``body`` (lines of code indented by four spaces,
    using those names and ``namespace``), which must ``return`` the result.
    The caller checks that ``offset + layout.length`` is within ``data``.
    """
    used = set(re.findall(r"\bv\d+\b", "\n".join(body)))
    codes: list[str] = []
    names: list[str] = []
    read_to = 0
    for at, code, leaf_names in layout.reads:
        if used.isdisjoint(leaf_names):
            continue  # nobody reads it: the struct skips it
        codes.append(f"{at - read_to}x{code}" if at > read_to else code)
        names += leaf_names
        read_to = at + struct.calcsize("!" + code)
    lines = [
        "def parse(data, offset):",
        f"    if from_bytes(data[offset:offset + {layout.length}], 'little') & MASK != FIXED:",
        "        return None",
    ]
    if names:
        lines.append(f"    {', '.join(names)}, = unpack_from(data, offset)")
    lines += body
    scope = dict(namespace)
    scope.update(
        from_bytes=int.from_bytes,
        MASK=layout.mask,
        FIXED=layout.fixed,
        unpack_from=struct.Struct("!" + "".join(codes)).unpack_from,
    )
    exec(compile("\n".join(lines) + "\n", filename, "exec"), scope)
    parser: Callable[[bytes, int], Any] = scope["parse"]
    return parser


#: A compiled parser: ``parse(data, offset) -> object | None``.
Parser = Callable[[bytes, int], Any]


class LayoutCache:
    """The compiled parsers met in a stream of messages, by their first 8 bytes.

    Those bytes (nlmsg length, type and flags) key the layouts, so every
    layout under one key has the same length. A lookup is a plain dict read::

        entry = cache.parsers.get(data[offset:offset + 8])
        if entry is not None:
            length, step, parse = entry  # step: the length aligned to 4

    ``parse`` tries every layout of the key.

    Parameters:
        limit: layouts compiled at most (a stream of odd messages must not
            compile without end).
        failures: uncompilable messages tolerated per key before giving up on it.
    """

    def __init__(self, limit: int = 256, failures: int = 8) -> None:
        self.limit = limit
        self.max_failures = failures
        self.parsers: dict[bytes, tuple[int, int, Parser]] = {}
        self.count = 0
        self._layouts: dict[bytes, list[Parser]] = {}
        self._failures: dict[bytes, int] = {}

    def wants(self, key: bytes) -> bool:
        """Whether compiling a layout for ``key`` is still worth a try."""
        return self.count < self.limit and self._failures.get(key, 0) < self.max_failures

    def add(self, key: bytes, length: int, parser: Parser | None) -> None:
        """Remember ``parser`` for ``key``, or (None) that a layout could not be compiled."""
        if parser is None:
            self._failures[key] = self._failures.get(key, 0) + 1
            return
        layouts = self._layouts.setdefault(key, [])
        layouts.append(parser)
        self.count += 1
        self.parsers[key] = (
            length,
            (length + 3) & ~3,
            parser if len(layouts) == 1 else _first(layouts),
        )


def _first(parsers: Sequence[Parser]) -> Parser:
    """A parser trying ``parsers`` in turn (layouts sharing a key)."""

    def parse(data: bytes, offset: int) -> Any:
        for parser in parsers:
            item = parser(data, offset)
            if item is not None:
                return item
        return None

    return parse
