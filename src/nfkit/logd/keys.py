"""Typed, named keys: what logd plugins exchange.

An event is a plain ``dict`` from key name to value; a key is VALID for the
event exactly when its name is present. Values by type:

* integers and BOOL: ``int`` (BOOL is 0/1, as ulogd prints it)
* IPADDR: ``bytes`` of length 4 (IPv4) or 16 (IPv6), network order
* STRING: ``str``; RAWSTR: ``str`` inserted verbatim into SQL
* RAW: ``bytes``
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

Event = dict[str, Any]


class KeyType(enum.IntEnum):
    """ulogd's key types, with its numeric codes."""

    NONE = 0x0000
    INT8 = 0x0001
    INT16 = 0x0002
    INT32 = 0x0003
    INT64 = 0x0004
    UINT8 = 0x0011
    UINT16 = 0x0012
    UINT32 = 0x0013
    UINT64 = 0x0014
    BOOL = 0x0050
    IPADDR = 0x0100
    IP6ADDR = 0x0200
    STRING = 0x8020
    RAW = 0x8030
    RAWSTR = 0x8040

    @property
    def label(self) -> str:
        """The spelling ulogd's ``--info`` uses."""
        return _LABELS.get(self, "Unknown type")

    @property
    def is_integer(self) -> bool:
        return self in _INTEGER_TYPES


_LABELS = {
    KeyType.INT8: "int 8",
    KeyType.INT16: "int 16",
    KeyType.INT32: "int 32",
    KeyType.INT64: "int 64",
    KeyType.UINT8: "unsigned int 8",
    KeyType.UINT16: "unsigned int 16",
    KeyType.UINT32: "unsigned int 32",
    KeyType.UINT64: "unsigned int 64",
    KeyType.BOOL: "boolean",
    KeyType.IPADDR: "IP addr",
    KeyType.STRING: "string",
    KeyType.RAW: "raw data",
}

_INTEGER_TYPES = frozenset(
    {
        KeyType.INT8,
        KeyType.INT16,
        KeyType.INT32,
        KeyType.INT64,
        KeyType.UINT8,
        KeyType.UINT16,
        KeyType.UINT32,
        KeyType.UINT64,
        KeyType.BOOL,
    }
)


@dataclass(frozen=True, slots=True)
class Key:
    """A key declaration.

    Parameters:
        name: the ulogd key name, e.g. ``ip.saddr``.
        type: its :class:`KeyType`.
        optional: (input keys) the stack works without a provider.
        cim_name: the alias the JSON output uses (``src_ip``...).
        inactive: (input keys) ignored by resolution, e.g. a DB id column.
    """

    name: str
    type: KeyType = KeyType.NONE
    optional: bool = False
    cim_name: str | None = None
    inactive: bool = False


def keys(*specs: tuple[Any, ...]) -> tuple[Key, ...]:
    """Build a key tuple from ``(name, type[, options...])`` rows, for compact tables."""
    out = []
    for spec in specs:
        name, ktype, *rest = spec
        flags = {r for r in rest if isinstance(r, str) and r in ("optional", "inactive")}
        cim = next((r[4:] for r in rest if isinstance(r, str) and r.startswith("cim:")), None)
        out.append(
            Key(
                name,
                ktype,
                optional="optional" in flags,
                cim_name=cim,
                inactive="inactive" in flags,
            )
        )
    return tuple(out)
