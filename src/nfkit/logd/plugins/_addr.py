"""Address conversions shared by IP2STR, IP2BIN, IP2HBIN and PRINTPKT.

IPADDR values are 4 (IPv4) or 16 (IPv6) bytes in network order; conversions go by that
length, so IPv6 is right everywhere. ulogd picks the address family from ``oob.family``
instead; :class:`AddressFilter` keeps its rule for which events are acceptable at all.

Addresses repeat a lot in logs, so conversions are memoized in bounded dicts.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import ClassVar, Generic, TypeVar

from nfkit.logd.keys import Event, KeyType, keys
from nfkit.logd.plugin import ERROR, BatchPlugin, Context, DataType, Plugin, Settings, without
from nfkit.packet import (
    ETH_P_ARP,
    ETH_P_IP,
    ETH_P_IPV6,
    NFPROTO_ARP,
    NFPROTO_BRIDGE,
    NFPROTO_IPV4,
    NFPROTO_IPV6,
)

CACHE_LIMIT = 4096
_IPV4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"

V = TypeVar("V", str, bytes)


class Memo(Generic[V]):
    """A conversion of addresses memoized in a dict that is emptied when full.

    Hot loops read :attr:`cache` directly and call the memo only on a miss
    (converted values are never empty)::

        text = memo.cache.get(addr) or memo(addr)
    """

    __slots__ = ("cache", "convert", "limit")

    def __init__(self, convert: Callable[[bytes], V], limit: int = CACHE_LIMIT) -> None:
        self.cache: dict[bytes, V] = {}
        self.convert: Callable[[bytes], V] = convert
        self.limit = limit

    def __call__(self, addr: bytes) -> V:
        value = self.cache.get(addr)
        if value is None:
            value = self.convert(addr)
            if len(self.cache) >= self.limit:
                self.cache.clear()  # cheaper than LRU bookkeeping; refills at once
            self.cache[bytes(addr)] = value
        return value


def _text(addr: bytes) -> str:
    size = len(addr)
    if size == 4:
        return socket.inet_ntop(socket.AF_INET, addr)
    if size == 16:
        return socket.inet_ntop(socket.AF_INET6, addr)
    return bytes(addr).hex() or "-"  # not an address: show its bytes rather than fail


def _hex128(addr: bytes) -> str:
    if len(addr) == 4:
        addr = _IPV4_MAPPED_PREFIX + addr
    return "0x" + bytes(addr).hex()


def _host_order(addr: bytes) -> bytes:
    # ulogd stores ntohl(addr) in a 32-bit slot: on x86 its bytes are the address reversed,
    # so a consumer reading the slot as an integer gets 3232235786 for 192.168.1.10.
    # IPv6 addresses are copied unchanged (ulogd 2.0.9).
    return addr[::-1] if len(addr) == 4 else bytes(addr)


#: ``192.0.2.1`` / ``2001:db8::1``: inet_ntop's spelling, as ulogd prints them.
address_text: Memo[str] = Memo(_text)
#: IP2BIN's ``0x`` + 32 hex digits, IPv4 mapped to ``::ffff:a.b.c.d`` first.
address_hex128: Memo[str] = Memo(_hex128)
#: IP2HBIN's host-order value.
address_host_order: Memo[bytes] = Memo(_host_order)

#: The inputs of IP2STR, IP2BIN and IP2HBIN: the family keys, then the addresses.
IP_ADDRESS_INPUTS = keys(
    ("oob.family", KeyType.UINT8),
    ("oob.protocol", KeyType.UINT16),
    ("ip.saddr", KeyType.IPADDR, "optional"),
    ("ip.daddr", KeyType.IPADDR, "optional"),
    ("orig.ip.saddr", KeyType.IPADDR, "optional"),
    ("orig.ip.daddr", KeyType.IPADDR, "optional"),
    ("reply.ip.saddr", KeyType.IPADDR, "optional"),
    ("reply.ip.daddr", KeyType.IPADDR, "optional"),
)

_ACCEPTED_FAMILIES = frozenset({NFPROTO_IPV4, NFPROTO_IPV6, NFPROTO_ARP})
_BRIDGED_ETHERTYPES = frozenset({ETH_P_IP, ETH_P_IPV6, ETH_P_ARP})


def family_error(event: Event) -> str | None:
    """Why ulogd's IP2* filters reject this event (they return ERROR), or None."""
    family = event.get("oob.family")
    if family in _ACCEPTED_FAMILIES:
        return None
    if family == NFPROTO_BRIDGE:
        protocol = event.get("oob.protocol")
        if protocol is None:
            return "No protocol inside AF_BRIDGE packet"
        if protocol not in _BRIDGED_ETHERTYPES:
            return f"Unexpected protocol 0x{protocol:04x} inside AF_BRIDGE packet"
        return None
    return f"Unknown protocol family {family}"


class AddressFilter(BatchPlugin):
    """IP2STR, IP2BIN and IP2HBIN: convert every valid address input into one output.

    Subclasses list ``conversions`` (input key, output key) and the ``memo`` to apply.
    """

    input_type = DataType.PACKET | DataType.FLOW
    output_type = DataType.PACKET | DataType.FLOW
    conversions: ClassVar[tuple[tuple[str, str], ...]] = ()
    memo: ClassVar[Memo[str] | Memo[bytes]]

    def __init__(self, instance_id: str, settings: Settings, context: Context) -> None:
        super().__init__(instance_id, settings, context)
        self._pairs = self.conversions
        self._reported: set[str] = set()

    def configure(self, upstream: Sequence[Plugin]) -> None:
        # Only look, per event, for the addresses some upstream plugin can produce.
        self._pairs = self.conversions
        provided: set[str] = set()
        for plugin in upstream:
            if plugin.dynamic_outputs:
                return  # undeclared outputs: anything may be there
            provided.update(key.name for key in plugin.output_keys)
        self._pairs = tuple(pair for pair in self.conversions if pair[0] in provided)

    def interp_batch(self, events: list[Event], finish: Callable[[int], None]) -> list[Event]:
        pairs = self._pairs
        memo = self.memo
        cached = memo.cache.get
        dropped: list[Event] = []
        for event in events:
            get = event.get
            if get("oob.family") not in _ACCEPTED_FAMILIES:
                error = family_error(event)
                if error is not None:
                    self._reject(error)
                    finish(ERROR)
                    dropped.append(event)
                    continue
            try:
                for source, target in pairs:
                    addr = get(source)
                    if addr is not None:
                        event[target] = cached(addr) or memo(addr)
            except TypeError:  # not bytes: a producer broke the IPADDR contract
                self._reject(f"an address key holds {type(addr).__name__}, not bytes")
                finish(ERROR)
                dropped.append(event)
        return without(events, dropped)

    def _reject(self, error: str) -> None:
        # ulogd logs every rejected event; once per reason is enough to diagnose it
        # (the daemon's summary counts the dropped events).
        if error in self._reported:
            self.log.debug("%s: %s", self.id, error)
            return
        self._reported.add(error)
        self.log.warning("%s: %s; events of this kind are dropped", self.id, error)
