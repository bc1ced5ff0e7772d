"""IP2HBIN: addresses in host byte order, for databases that store IPv4 as an integer.

An IPv4 value holds the bytes of the host-order 32-bit integer (the address reversed on
x86, as in ulogd); IPv6 addresses are copied unchanged (ulogd 2.0.9; 2.0.8 stored a
pointer). Unlike ulogd 2.0.8, ``reply.ip.daddr`` is converted too.
"""

from __future__ import annotations

from nfkit.logd.keys import KeyType, keys
from nfkit.logd.plugins._addr import IP_ADDRESS_INPUTS, AddressFilter, address_host_order
from nfkit.logd.registry import register

T = KeyType


@register
class IP2HBIN(AddressFilter):
    name = "IP2HBIN"
    summary = "convert IP addresses to host byte order (ip.saddr -> ip.hsaddr...)"
    input_keys = IP_ADDRESS_INPUTS
    output_keys = keys(
        ("ip.hsaddr", T.IPADDR),
        ("ip.hdaddr", T.IPADDR),
        ("orig.ip.hsaddr", T.IPADDR),
        ("orig.ip.hdaddr", T.IPADDR),
        ("reply.ip.hsaddr", T.IPADDR),
        ("reply.ip.hdaddr", T.IPADDR),
    )
    conversions = tuple(
        zip((key.name for key in input_keys[2:]), (key.name for key in output_keys), strict=True)
    )
    memo = address_host_order
