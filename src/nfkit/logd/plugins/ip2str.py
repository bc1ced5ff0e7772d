"""IP2STR: addresses as text (``192.0.2.1``, ``2001:db8::1``).

Converts by the address's own length, so IPv6 is right everywhere; events of a family
ulogd does not accept (not 2, 3, 10, or bridge 7 with an IP/ARP ethertype) get ERROR.
"""

from __future__ import annotations

from nfkit.logd.keys import KeyType, keys
from nfkit.logd.plugins._addr import IP_ADDRESS_INPUTS, AddressFilter, address_text
from nfkit.logd.registry import register

T = KeyType


@register
class IP2STR(AddressFilter):
    name = "IP2STR"
    summary = "convert IP addresses to text (ip.saddr -> ip.saddr.str...)"
    input_keys = (
        *IP_ADDRESS_INPUTS,
        *keys(("arp.saddr", T.IPADDR, "optional"), ("arp.daddr", T.IPADDR, "optional")),
    )
    output_keys = keys(
        ("ip.saddr.str", T.STRING, "cim:src_ip"),
        ("ip.daddr.str", T.STRING, "cim:dest_ip"),
        ("orig.ip.saddr.str", T.STRING, "cim:src_ip"),
        ("orig.ip.daddr.str", T.STRING, "cim:dest_ip"),
        ("reply.ip.saddr.str", T.STRING),
        ("reply.ip.daddr.str", T.STRING),
        ("arp.saddr.str", T.STRING),
        ("arp.daddr.str", T.STRING),
    )
    conversions = tuple((key.name, f"{key.name}.str") for key in input_keys[2:])
    memo = address_text
