"""NFQUEUE: decide in userspace what happens to packets (``iptables -j NFQUEUE``).

Accept everything on queue 0, marking TCP packets to port 22::

    from nfkit.nfqueue import ACCEPT, Queue, Server, Verdict

    def handler(packet):
        l4 = packet.headers.l4
        if packet.headers.l4_protocol == 6 and l4.dport == 22:
            return Verdict.accept(mark=0x22)
        return ACCEPT

    with Queue(0) as queue:
        Server(queue, handler).run()  # until Server.stop(); closing answers what waits

The pieces:

- :class:`Queue` owns one queue (one socket); :func:`open_queues` binds a
  range. It hands out :class:`QueuedPacket` objects, collects verdicts and
  sends them together (VERDICT_BATCH when all are equal), gives the default
  verdict at deadlines and answers every waiting packet when it closes.
- :class:`Verdict` is the one verdict type: ACCEPT, DROP, REPEAT, STOP or
  QUEUE to another queue, with options for the packet mark, priority,
  connection mark and labels, and a new payload (:mod:`.mangle`).
- :class:`Server` calls a handler per packet in the loop thread or in
  worker threads; :mod:`.aio` does it in an asyncio event loop. Handlers may
  ``return packet.defer()`` and ``packet.decide()`` later.
- :mod:`.modes`: Suricata's accept, repeat and route modes.
- :class:`QueueStats` and :meth:`Queue.kernel_counters` show losses.

Everything needs CAP_NET_ADMIN in the network namespace of the queue.
"""

from nfkit.nfqueue.const import Action, CopyMode, CtInfo, Flag, Hook, SkbInfo
from nfkit.nfqueue.errors import QueueInUse
from nfkit.nfqueue.mangle import fix_checksums, with_l4_payload
from nfkit.nfqueue.modes import Mode, RepeatMode, RouteMode
from nfkit.nfqueue.packet import Deferred, QueuedPacket
from nfkit.nfqueue.queue import Queue, open_queues, parse_range
from nfkit.nfqueue.serve import Handler, Server
from nfkit.nfqueue.stats import KernelCounters, QueueStats
from nfkit.nfqueue.verdict import ACCEPT, DROP, REPEAT, STOP, Verdict

__all__ = [
    "ACCEPT",
    "DROP",
    "REPEAT",
    "STOP",
    "Action",
    "CopyMode",
    "CtInfo",
    "Deferred",
    "Flag",
    "Handler",
    "Hook",
    "KernelCounters",
    "Mode",
    "Queue",
    "QueueInUse",
    "QueueStats",
    "QueuedPacket",
    "RepeatMode",
    "RouteMode",
    "Server",
    "SkbInfo",
    "Verdict",
    "fix_checksums",
    "open_queues",
    "parse_range",
    "with_l4_payload",
]
