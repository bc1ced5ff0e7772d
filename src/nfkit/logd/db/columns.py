"""Columns to keys, and key values to database values, for every SQL output.

As in ulogd2, a table's (or view's) columns choose what is stored: a column
names a key with ``.`` written ``_`` (``ip_saddr_str`` is ``ip.saddr.str``).
A column also matches a key whose own name contains ``_`` when exactly one
does (``raw_mac_len`` is ``raw.mac_len``), which ulogd2 cannot store.

Values are converted by the type of the column they go to, once per column
chosen at start-up (:func:`default_converter`): addresses become address
text for ``inet``/text columns, numbers for integer columns and 16 bytes for
``binary(16)``; ``0x`` hex strings from IP2BIN become bytes for binary
columns; BOOL keys become booleans for boolean columns; undecodable bytes in
strings (kept by the kernel decoders as surrogates) become ``\\xNN`` escapes.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nfkit.logd.db.backend import Column, Converter
from nfkit.logd.errors import ConfigError
from nfkit.logd.keys import Key, KeyType
from nfkit.logd.registry import providers_of

_IPV4_MAPPED = bytes(10) + b"\xff\xff"
_INTEGER_TYPE = re.compile(
    r"(tiny|small|medium|big)?int(eger|[248])?\b|(small|big)?serial|numeric|decimal"
)
_BINARY_TYPES = ("bytea", "binary", "varbinary", "blob", "tinyblob", "mediumblob", "longblob")


class FirstColumn(enum.Enum):
    """Whether the first column is left to the database (an id), as ulogd2 decides."""

    #: every column is written (SQLITE3)
    WRITTEN = "written"
    #: left out when its name starts with ``_`` (PGSQL: ``_id``)
    UNDERSCORE = "underscore"
    #: always left out (MYSQL, DBI)
    SKIPPED = "skipped"


def column_key(column: str, available: dict[str, Key]) -> Key | None:
    """The key a column stores: ulogd2's ``_`` -> ``.``, else a key spelt with ``_``."""
    key = available.get(column.replace("_", "."))
    if key is not None:
        return key
    spelt = [k for name, k in available.items() if name.replace(".", "_") == column]
    return spelt[0] if len(spelt) == 1 else None


@dataclass(frozen=True)
class Mapping:
    """The active columns of a table and the key each one stores, in order."""

    columns: tuple[Column, ...]
    keys: tuple[Key, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """The key names, one per active column."""
        return tuple(key.name for key in self.keys)

    @property
    def inputs(self) -> tuple[Key, ...]:
        """The plugin's input keys: one per name."""
        return tuple({key.name: key for key in self.keys}.values())


def map_columns(
    columns: Sequence[Column],
    available: dict[str, Key],
    first: FirstColumn,
    source: str,
    where: str,
) -> Mapping:
    """Map every active column to a key of ``available``; ConfigError names a bad column.

    ``source`` names the table in messages (``table 'pkt' in 'file.db'``).
    """
    if not columns:
        raise ConfigError(
            f"{source} has no columns", where, "create the table or view with its columns"
        )
    active = list(columns)
    if first is FirstColumn.SKIPPED or (
        first is FirstColumn.UNDERSCORE and active[0].name.startswith("_")
    ):
        active = active[1:]
    chosen: list[Key] = []
    for column in active:
        key = column_key(column.name, available)
        if key is None:
            raise unmapped(column.name, source, where, available)
        chosen.append(key)
    return Mapping(tuple(active), tuple(chosen))


def unmapped(column: str, source: str, where: str, available: dict[str, Key]) -> ConfigError:
    """The error for a column that matches no key of the stack."""
    wanted = column.replace("_", ".")
    providers = providers_of(wanted)
    if providers:
        fix = (
            f"add a plugin that provides {wanted!r} to the stack before this output "
            f"({', '.join(providers)}), or drop the column"
        )
    else:
        fix = "no plugin provides such a key: drop or rename the column"
    return ConfigError(
        f"column {column!r} of {source} matches no key of the stack (it would be {wanted!r})",
        where,
        fix
        + "; keys available here, as column names: "
        + (", ".join(name.replace(".", "_") for name in available) or "none"),
    )


# -- values -------------------------------------------------------------------


def _kind(column_type: str) -> str:
    """``address``, ``integer``, ``boolean``, ``binary``, ``binary16`` or ``text``."""
    name = column_type.lower()
    if name in ("inet", "cidr"):
        return "address"
    if name in ("boolean", "bool"):
        return "boolean"
    if name.startswith(("binary(16)", "varbinary(16)")):
        return "binary16"
    if name.startswith(_BINARY_TYPES):
        return "binary"
    if _INTEGER_TYPE.match(name):
        return "integer"
    return "text"


def address_text(value: bytes) -> str:
    return str(ipaddress.ip_address(value))


def address_number(value: bytes) -> int:
    return int.from_bytes(value, "big")


def address_binary16(value: bytes) -> bytes:
    """16 bytes, IPv4 mapped to ``::ffff:a.b.c.d`` (IP2BIN's convention)."""
    return _IPV4_MAPPED + value if len(value) == 4 else value


def hex_literal_bytes(value: str) -> bytes:
    """IP2BIN's ``0x0123...`` as bytes."""
    return bytes.fromhex(value[2:] if value[:2] in ("0x", "0X") else value)


def clean_text(value: str) -> str:
    """Lone surrogates (undecodable kernel bytes) as ``\\xNN`` escapes."""
    if value.isascii():
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def default_converter(key: Key, column: Column) -> Converter | None:
    """How a value of ``key`` becomes a parameter for ``column`` (None: as is)."""
    kind = _kind(column.type)
    ktype = key.type
    if ktype is KeyType.IPADDR:
        return {
            "integer": address_number,
            "binary16": address_binary16,
            "binary": None,
        }.get(kind, address_text)
    if ktype is KeyType.RAWSTR:
        return hex_literal_bytes if kind in ("binary", "binary16") else None
    if ktype is KeyType.BOOL and kind == "boolean":
        return bool
    if ktype is KeyType.STRING:
        return clean_text
    if ktype is KeyType.RAW and kind not in ("binary", "binary16"):
        return _raw_text
    return None


def _raw_text(value: Any) -> Any:
    return value.hex() if isinstance(value, bytes | bytearray) else str(value)
