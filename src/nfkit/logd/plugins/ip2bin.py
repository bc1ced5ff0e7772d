"""IP2BIN: addresses as ``0x`` + 32 hex digits, for MySQL ``BINARY(16)`` columns.

IPv4 is mapped to ``::ffff:a.b.c.d`` first. The values are RAWSTR: the SQL layer inserts
them unquoted, as hex literals. Unlike ulogd 2.0.8, ``reply.ip.daddr`` is converted too.
"""

from __future__ import annotations

from nfkit.logd.keys import KeyType, keys
from nfkit.logd.plugins._addr import IP_ADDRESS_INPUTS, AddressFilter, address_hex128
from nfkit.logd.registry import register

T = KeyType


@register
class IP2BIN(AddressFilter):
    name = "IP2BIN"
    summary = "convert IP addresses to 0x-prefixed 128-bit hex literals (ip.saddr.bin...)"
    input_keys = IP_ADDRESS_INPUTS
    output_keys = keys(
        ("ip.saddr.bin", T.RAWSTR),
        ("ip.daddr.bin", T.RAWSTR),
        ("orig.ip.saddr.bin", T.RAWSTR),
        ("orig.ip.daddr.bin", T.RAWSTR),
        ("reply.ip.saddr.bin", T.RAWSTR),
        ("reply.ip.daddr.bin", T.RAWSTR),
    )
    conversions = tuple((key.name, f"{key.name}.bin") for key in input_keys[2:])
    memo = address_hex128
