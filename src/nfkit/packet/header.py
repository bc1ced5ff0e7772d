"""Declarative fixed-size headers in network byte order.

A subclass lists its wire fields once, in ``__hdr__`` as ``(name, struct format)`` pairs, and
annotates each with its Python type::

    class UDP(Header):
        __hdr__ = (("sport", "H"), ("dport", "H"), ("length", "H"), ("checksum", "H"))
        sport: int
        dport: int
        length: int
        checksum: int

At class creation :class:`HeaderMeta` derives ``__slots__``, ``FIELDS``, one precompiled
``STRUCT`` and its ``SIZE``, plus an ``__init__`` taking the fields in wire order, so
``UDP(*UDP.STRUCT.unpack_from(buf, offset))`` builds a header. The annotations must name the
same fields in the same order: type checkers read them (the metaclass is a
``dataclass_transform``), and the metaclass rejects a class where they disagree.
"""

import ipaddress
import keyword
import struct
from collections.abc import Callable
from typing import Any, ClassVar, Self, dataclass_transform

Buffer = bytes | bytearray | memoryview
"""Anything ``struct.unpack_from`` reads; a memoryview must have the byte format ``B``."""


def _make_init(class_name: str, names: tuple[str, ...]) -> Callable[..., None]:
    # Generated source, as dataclasses does it: a setattr() loop makes unpacking twice as slow.
    body = "".join(f"\n    self.{name} = {name}" for name in names) or "\n    pass"
    namespace: dict[str, Any] = {}
    exec(f"def __init__(self, {', '.join(names)}):{body}", namespace)
    init: Callable[..., None] = namespace["__init__"]
    init.__qualname__ = f"{class_name}.__init__"
    return init


def _check_field_names(class_name: str, names: tuple[str, ...]) -> None:
    for name in names:
        if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
            raise TypeError(f"{class_name}: bad field name {name!r}")
    if len(set(names)) != len(names):
        raise TypeError(f"{class_name}: duplicate field names in __hdr__")


@dataclass_transform()
class HeaderMeta(type):
    """Compiles ``__hdr__`` into ``__slots__``, ``FIELDS``, ``STRUCT``, ``SIZE`` and ``__init__``.

    A class without its own ``__hdr__`` (the base, or a subclass that only adds behaviour)
    keeps its parent's layout.
    """

    def __new__(
        mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **kwargs: Any
    ) -> "HeaderMeta":
        fields: tuple[tuple[str, str], ...] | None = namespace.get("__hdr__")
        if fields is None:
            namespace["__slots__"] = ()
            return super().__new__(mcs, name, bases, namespace, **kwargs)
        names = tuple(field_name for field_name, _ in fields)
        _check_field_names(name, names)
        layout = struct.Struct("!" + "".join(fmt for _, fmt in fields))
        namespace.update(
            __slots__=names,
            __match_args__=names,
            __init__=_make_init(name, names),
            FIELDS=names,
            STRUCT=layout,
            SIZE=layout.size,
        )
        namespace.setdefault("REPR_FIELDS", names)
        cls = super().__new__(mcs, name, bases, namespace, **kwargs)
        # Read from the finished class: since 3.14 the namespace holds no annotations dict.
        if tuple(cls.__annotations__) != names:
            raise TypeError(f"{name}: annotations must list the __hdr__ fields, in order")
        return cls


def _format_value(value: object) -> str:
    if isinstance(value, bytes):
        if len(value) == 4:
            return str(ipaddress.IPv4Address(value))
        if len(value) == 16:
            return str(ipaddress.IPv6Address(value))
        return value.hex(":")  # MAC addresses
    return str(value)


class Header(metaclass=HeaderMeta):
    """Base of all headers; see the module docstring for how to declare one."""

    __hdr__: ClassVar[tuple[tuple[str, str], ...]]
    FIELDS: ClassVar[tuple[str, ...]]
    """Field names in wire order: the order of ``STRUCT.unpack_from()``'s tuple."""
    STRUCT: ClassVar[struct.Struct]
    SIZE: ClassVar[int]
    REPR_FIELDS: ClassVar[tuple[str, ...]]
    """Attributes (fields or properties) that ``repr()`` shows; defaults to ``FIELDS``."""

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> Self | None:
        """Decode the header at ``offset``, or return None if ``buf`` is too short there."""
        if offset < 0 or len(buf) - offset < cls.SIZE:
            return None
        values: tuple[Any, ...] = cls.STRUCT.unpack_from(buf, offset)
        return cls(*values)

    def values(self) -> tuple[Any, ...]:
        """The field values in wire order."""
        return tuple(getattr(self, name) for name in self.FIELDS)

    def pack(self) -> bytes:
        """Encode the fields back to wire format."""
        return self.STRUCT.pack(*self.values())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Header) or type(other) is not type(self):
            return NotImplemented
        return self.values() == other.values()

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={_format_value(getattr(self, name))}" for name in self.REPR_FIELDS
        )
        return f"{type(self).__name__}({shown})"
