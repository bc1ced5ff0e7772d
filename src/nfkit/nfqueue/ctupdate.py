"""Connection changes of verdicts, over ctnetlink, for kernels without the NFQA_CT glue.

A verdict's ``NFQA_CT`` nest is applied by ``nfnetlink_glue``; a kernel built
without ``CONFIG_NETFILTER_NETLINK_GLUE_CT`` ignores the nest *without any
error*. The queue finds out when it binds (the CONNTRACK flag is refused) and
then makes the same change with a ctnetlink update of the flow with the
packet's tuple, right after the verdict was sent: the kernel reinjects the
packet while it handles the verdict, so a new connection is confirmed (and
can be found) by then. Packets that are queued again (QUEUE, REPEAT) are not
confirmed yet; their update fails with ENOENT and is counted.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

from nfkit.conntrack.client import Conntrack
from nfkit.conntrack.model import Flow, Tuple
from nfkit.nfqueue.packet import QueuedPacket
from nfkit.nfqueue.verdict import U32, Verdict
from nfkit.packet import ICMP, SCTP, TCP, UDP, ICMPv6, IPv4

#: Echo requests and replies: conntrack keys them by their id.
_ECHO_TYPES = {ICMP: (0, 8), ICMPv6: (128, 129)}


def flow_tuple(packet: QueuedPacket) -> Tuple | None:
    """The conntrack tuple of the packet's direction, or None (no IP, not trackable here)."""
    headers = packet.headers
    ip, l4 = headers.ip, headers.l4
    if ip is None:
        return None
    family = socket.AF_INET if isinstance(ip, IPv4) else socket.AF_INET6
    tup = Tuple(
        family,
        str(ipaddress.ip_address(ip.src)),
        str(ipaddress.ip_address(ip.dst)),
        headers.l4_protocol,
    )
    if isinstance(l4, TCP | UDP | SCTP):
        tup.sport, tup.dport = l4.sport, l4.dport
    elif isinstance(l4, ICMP | ICMPv6) and l4.type in _ECHO_TYPES[type(l4)]:
        tup.icmp_type, tup.icmp_code, tup.icmp_id = l4.type, l4.code, l4.echo_id
    elif l4 is not None:
        return None
    return tup


class ConntrackUpdater:
    """Applies verdicts' connection changes with ctnetlink updates.

    Parameters:
        open_client: makes the ctnetlink client (called once, on first use,
            in the queue's network namespace).
    """

    def __init__(self, open_client: Callable[[], Conntrack]) -> None:
        self._open_client = open_client
        self._client: Conntrack | None = None

    def apply(self, packet: QueuedPacket, verdict: Verdict) -> None:
        """Change the packet's connection as ``verdict`` says.

        Raises:
            NetlinkError: the kernel refused (ENOENT: no confirmed connection).
            ValueError: the packet has no tuple conntrack could look up.
        """
        tup = flow_tuple(packet)
        if tup is None:
            raise ValueError(f"packet {packet.id}: no IP tuple to find its connection by")
        flow = Flow(orig=tup)
        if verdict.ct_mark is not None:
            flow.mark = verdict.ct_mark & verdict.ct_mark_mask
            if verdict.ct_mark_mask != U32:
                flow.mark_mask = verdict.ct_mark_mask
        if verdict.labels is not None:
            flow.labels, flow.labels_mask = verdict.labels, verdict.labels_mask
        if self._client is None:
            self._client = self._open_client()
        self._client.update(flow)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
