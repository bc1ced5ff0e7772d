"""PWSNIFF: clear-text FTP and POP3 logins, in ``pwsniff.user`` / ``pwsniff.pass``.

A TCP segment to port 21 (FTP) or 110 (POP3), over IPv4 or IPv6, whose payload holds a
``USER name`` or ``PASS secret`` command line sets the matching key to the argument (the
rest of the line: POP3 passwords may contain spaces). Every event goes on, with or
without credentials.

ulogd 2.0.8's PWSNIFF tested the validity of its own input key, which is never set, so
it dropped every event (§11.8); what it meant to do differs from this in details too: it
looked at IPv4 only, took the argument up to the first blank, and matched ``USER ``
anywhere in the segment (inside TCP options too, as it skipped a fixed 20-byte header).
Here a command counts at the start of a line and only when the line ends in the segment;
the last ``USER`` and the last ``PASS`` of a segment win.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from nfkit.logd.keys import Event, KeyType, keys
from nfkit.logd.plugin import BatchPlugin, DataType
from nfkit.logd.registry import register
from nfkit.packet import (
    IPPROTO_AH,
    IPPROTO_DSTOPTS,
    IPPROTO_FRAGMENT,
    IPPROTO_HOPOPTS,
    IPPROTO_ROUTING,
    IPPROTO_TCP,
    NFPROTO_IPV4,
    NFPROTO_IPV6,
    TCP,
    decode,
)

PORT_FTP = 21
PORT_POP3 = 110
LOGIN_PORTS = frozenset({PORT_FTP, PORT_POP3})
IPV6_HEADER_SIZE = 40
_IPV6_EXTENSIONS = frozenset(
    {IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_FRAGMENT, IPPROTO_DSTOPTS, IPPROTO_AH}
)
# "USER alice\r\n": the command (case-insensitive, as FTP and POP3 read it), blanks, an
# argument up to the line end, trailing blanks left out.
_COMMAND = re.compile(rb"^(USER|PASS)[ \t]+(\S[^\r\n]*?)[ \t]*\r?\n", re.IGNORECASE | re.MULTILINE)
_KEYS = {b"USER": "pwsniff.user", b"PASS": "pwsniff.pass"}


def _candidate_family(pkt: bytes) -> int:
    """The family to decode ``pkt`` as if it may be TCP to a login port, else 0.

    Reads a few bytes only: most packets are ruled out without decoding them.
    """
    if not pkt:
        return 0
    version = pkt[0] >> 4
    if version == 4:
        if len(pkt) < 20 or pkt[9] != IPPROTO_TCP:
            return 0
        family, at = NFPROTO_IPV4, (pkt[0] & 0x0F) * 4
    elif version == 6:
        if len(pkt) < IPV6_HEADER_SIZE:
            return 0
        following = pkt[6]
        if following in _IPV6_EXTENSIONS:
            return NFPROTO_IPV6  # the TCP header is further on: let the decoder find it
        if following != IPPROTO_TCP:
            return 0
        family, at = NFPROTO_IPV6, IPV6_HEADER_SIZE
    else:
        return 0
    if len(pkt) < at + 4 or (pkt[at + 2] << 8 | pkt[at + 3]) not in LOGIN_PORTS:
        return 0
    return family


def credentials(pkt: bytes) -> dict[str, str]:
    """``pwsniff.user`` / ``pwsniff.pass`` found in the IP packet ``pkt`` (maybe none)."""
    family = _candidate_family(pkt)
    if not family:
        return {}
    packet = decode(pkt, family)
    segment = packet.l4
    if not isinstance(segment, TCP) or segment.dport not in LOGIN_PORTS or not packet.payload:
        return {}
    return {
        _KEYS[match[1].upper()]: match[2].decode("utf-8", "surrogateescape")
        for match in _COMMAND.finditer(packet.payload)
    }


@register
class PWSNIFF(BatchPlugin):
    name = "PWSNIFF"
    summary = "find clear-text FTP/POP3 USER and PASS in packets (pwsniff.user/pass)"
    input_type = DataType.PACKET
    output_type = DataType.PACKET
    input_keys = keys(("raw.pkt", KeyType.NONE))
    output_keys = keys(("pwsniff.user", KeyType.STRING), ("pwsniff.pass", KeyType.STRING))

    def interp_batch(self, events: list[Event], finish: Callable[[int], None]) -> list[Event]:
        find = credentials
        for event in events:
            pkt = event.get("raw.pkt")
            if pkt:
                found = find(pkt)
                if found:
                    event.update(found)
        return events
