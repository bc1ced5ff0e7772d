"""What a queue counted, and the kernel's own counters of it.

Losses show in three places: the kernel's ``queue_dropped`` (the queue was
full) and ``queue_user_dropped`` (the socket buffer was full), read from
``/proc/net/netfilter/nfnetlink_queue``; gaps in packet ids (a packet the
socket could not take still used up an id); and ENOBUFS, when
NETLINK_NO_ENOBUFS is off. With FAIL_OPEN the kernel accepts instead of
dropping and counts nothing: only :attr:`QueueStats.received` falling short
of the traffic tells.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from nfkit.nfqueue.const import Action

PROC_QUEUES = "/proc/thread-self/net/netfilter/nfnetlink_queue"


@dataclass(frozen=True, slots=True)
class KernelCounters:
    """One line of ``/proc/net/netfilter/nfnetlink_queue``."""

    queue: int
    portid: int
    #: packets waiting for a verdict now
    total: int
    copy_mode: int
    copy_range: int
    #: dropped because the queue was full (maxlen)
    dropped: int
    #: dropped because the socket's receive buffer was full
    user_dropped: int
    #: the last packet id handed out
    id_sequence: int


def read_kernel_counters(path: str = PROC_QUEUES) -> dict[int, KernelCounters]:
    """Every bound queue of this thread's network namespace, by number."""
    out: dict[int, KernelCounters] = {}
    try:
        with open(path, encoding="ascii") as fh:
            for line in fh:
                values = [int(word) for word in line.split()[:8]]
                if len(values) == 8:
                    out[values[0]] = KernelCounters(*values)
    except (OSError, ValueError):
        pass
    return out


@dataclass(slots=True)
class QueueStats:
    """Counters of one queue.

    The loop thread writes them, except ``handler_errors`` and
    ``invalid_results``, which worker threads count too.
    """

    queue: int
    #: packets read from the socket
    received: int = 0
    #: verdicts sent, by action (index: Action value)
    verdicts: list[int] = field(default_factory=lambda: [0] * 6)
    #: datagrams of verdicts sent, and how many were one VERDICT_BATCH
    sends: int = 0
    batches: int = 0
    #: packets a handler kept for later (Deferred)
    deferred: int = 0
    #: packets that got the default verdict at their deadline
    expired: int = 0
    #: decisions that came after the packet already had its verdict (ignored)
    late: int = 0
    #: packets answered with the default verdict when the queue closed
    answered_at_close: int = 0
    #: handler exceptions and non-verdict results (both got the default verdict)
    handler_errors: int = 0
    invalid_results: int = 0
    #: verdicts the kernel refused (ENOENT: unknown id, ...), by errno
    verdict_errors: dict[int, int] = field(default_factory=dict)
    #: datagrams that could not be sent
    send_errors: int = 0
    #: messages that were not understood
    malformed: int = 0
    #: packet ids skipped: packets the socket could not take
    id_gaps: int = 0
    #: receive buffer overruns reported (only without NETLINK_NO_ENOBUFS)
    enobufs: int = 0
    #: conntrack changes made over ctnetlink (kernels without the NFQA_CT glue), and failures
    ct_updates: int = 0
    ct_update_errors: int = 0

    def count(self, action: Action | int) -> int:
        """Verdicts given with ``action``."""
        return self.verdicts[int(action)]

    def as_dict(self) -> dict[str, int]:
        """Flat counters, verdicts as ``accepted``/``dropped``/... (for printing)."""
        out: dict[str, int] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "verdicts":
                for action in Action:
                    out[_VERDICT_NAMES[action]] = value[action]
            elif item.name == "verdict_errors":
                out[item.name] = sum(value.values())
            else:
                out[item.name] = value
        return out


_VERDICT_NAMES = {
    Action.DROP: "dropped",
    Action.ACCEPT: "accepted",
    Action.QUEUE: "queued",
    Action.REPEAT: "repeated",
    Action.STOP: "stopped",
}
