"""HWHDR: the link-layer header as text (``mac.str``, ``mac.saddr.str``, ``mac.daddr.str``).

ulogd 2.0.8's algorithm: ``raw.mac.saddr`` (NFLOG's hardware address) gives
``mac.saddr.str`` and ``raw.type`` = ARPHRD_VOID; then a header of type Ethernet (from
``raw.type``, or a 14-byte header when the type is unknown) gives the source and
destination MACs and **replaces ``oob.protocol`` with its ethertype**; ``mac.str`` is the
whole header. Bytes are lower-case hex joined with ``:``. Headers longer than 42 bytes
(ulogd's buffer) and a header without ``raw.mac_len`` give ERROR.

Unlike ulogd, an "Ethernet" header shorter than 14 bytes is not read past its end.
"""

from __future__ import annotations

from nfkit.logd.keys import Event, KeyType, keys
from nfkit.logd.plugin import ERROR, DataType, Plugin
from nfkit.logd.registry import register

T = KeyType

ARPHRD_ETHER = 1
ARPHRD_VOID = 0xFFFF
ETH_HLEN = 14
ETH_ALEN = 6
#: ulogd formats into 128-byte buffers: 3 characters per byte plus the terminator.
MAX_ADDRESS_BYTES = 42


@register
class HWHDR(Plugin):
    name = "HWHDR"
    summary = "convert the hardware header to text (mac.str, mac.saddr.str, mac.daddr.str)"
    input_type = DataType.PACKET
    output_type = DataType.PACKET
    input_keys = keys(
        ("raw.type", T.UINT16, "optional"),
        ("oob.protocol", T.UINT16),
        ("raw.mac", T.RAW, "optional"),
        ("raw.mac_len", T.UINT16, "optional"),
        ("raw.mac.saddr", T.RAW, "optional"),
        ("raw.mac.addrlen", T.UINT16, "optional"),
    )
    output_keys = keys(
        ("raw.type", T.UINT16),
        ("oob.protocol", T.UINT16),
        ("mac.saddr.str", T.STRING),
        ("mac.daddr.str", T.STRING),
        ("mac.str", T.STRING),
    )

    def interp(self, event: Event) -> int | None:
        get = event.get
        # raw.type is both an input and an output: read the input before writing.
        hwtype = get("raw.type")
        saddr = get("raw.mac.saddr")
        if saddr is not None:
            addrlen = get("raw.mac.addrlen")
            if addrlen is None or addrlen > MAX_ADDRESS_BYTES:
                return ERROR
            event["mac.saddr.str"] = saddr[:addrlen].hex(":")
            event["raw.type"] = ARPHRD_VOID
        header = get("raw.mac")
        if header is None:
            return None
        length = get("raw.mac_len")
        if length is None:
            return ERROR
        if hwtype is None:
            hwtype = ARPHRD_ETHER if length == ETH_HLEN else ARPHRD_VOID
        event["raw.type"] = hwtype
        if hwtype == ARPHRD_ETHER and len(header) >= ETH_HLEN:
            if saddr is None:
                event["mac.saddr.str"] = header[ETH_ALEN : 2 * ETH_ALEN].hex(":")
            event["mac.daddr.str"] = header[:ETH_ALEN].hex(":")
            event["oob.protocol"] = header[12] << 8 | header[13]
        if length > MAX_ADDRESS_BYTES:
            return ERROR
        event["mac.str"] = header[:length].hex(":")
        return None
