"""Verdicts collected and sent together: one ``send`` for many packets.

Individual VERDICT messages are concatenated into one datagram (the kernel
handles each in turn). When every collected verdict is the same simple one
(same action, same final mark and priority) and no other packet of the queue
with a lower id still waits, a single ``VERDICT_BATCH`` message answers them
all: the kernel applies it to every queued id up to the highest.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Collection

from nfkit.netlink.codec import NLM_F_REQUEST, NLMSGHDR, attr_be32
from nfkit.netlink.errors import NetlinkError
from nfkit.nfqueue.const import ATTR_MARK, ATTR_PRIORITY, MSG_VERDICT, MSG_VERDICT_BATCH
from nfkit.nfqueue.ctupdate import ConntrackUpdater
from nfkit.nfqueue.log import Throttle
from nfkit.nfqueue.packet import QueuedPacket
from nfkit.nfqueue.stats import QueueStats
from nfkit.nfqueue.verdict import U32, Verdict, encode_verdict, queue_prefix

_VERDICT_HDR_ATTR = struct.Struct("=HH").pack(12, 2)  # nla_len, NFQA_VERDICT_HDR
_BE_PAIR = struct.Struct("!II")
#: Keep datagrams of new payloads below the default socket send buffer.
MAX_DATAGRAM = 1 << 17
_HALF = 0x80000000


def newest(ids: Collection[int]) -> int:
    """The most recent of packet ids (they are 32-bit and wrap)."""
    it = iter(ids)
    top = next(it)
    for packet_id in it:
        if (packet_id - top) & U32 < _HALF:
            top = packet_id
    return top


class VerdictSender:
    """Collects one queue's verdicts until :meth:`flush` sends them.

    Parameters:
        queue_num: the queue.
        send: sends one datagram (the queue's socket).
        stats: counters to update.
        batch: allow VERDICT_BATCH (off: always individual verdicts).
        ct_updater: applies connection changes over ctnetlink (kernels
            without the NFQA_CT glue); None sends them in the verdict.
    """

    def __init__(
        self,
        queue_num: int,
        send: Callable[[bytes], None],
        stats: QueueStats,
        batch: bool = True,
        ct_updater: ConntrackUpdater | None = None,
    ) -> None:
        self.batch = batch
        self.ct_updater = ct_updater
        self._send = send
        self._stats = stats
        self._prefix = queue_prefix(queue_num)
        self._simple_tail = self._prefix + _VERDICT_HDR_ATTR
        self._items: list[tuple[int, Verdict, int | None]] = []
        #: The simple verdict and final mark all collected ones share (None: they differ).
        self._uniform: Verdict | None = None
        self._uniform_mark: int | None = None
        self._ct_later: list[tuple[QueuedPacket, Verdict]] = []
        self._throttle = Throttle(f"NFQUEUE queue {queue_num}")

    def __len__(self) -> int:
        return len(self._items)

    def add(self, packet: QueuedPacket, verdict: Verdict) -> None:
        """Collect ``verdict`` for ``packet`` (sent at the next :meth:`flush`)."""
        mark = verdict.mark
        if mark is not None and verdict.mark_mask != U32:
            mark = verdict.mark_for(packet.mark)
        items = self._items
        if verdict.simple:
            if not items:
                self._uniform, self._uniform_mark = verdict, mark
            elif verdict is not self._uniform or mark != self._uniform_mark:
                uniform = self._uniform
                if not (
                    uniform is not None
                    and mark == self._uniform_mark
                    and verdict.code == uniform.code
                    and verdict.priority == uniform.priority
                ):
                    self._uniform = None
        else:
            self._uniform = None
            if self.ct_updater is not None and (
                verdict.ct_mark is not None or verdict.labels is not None
            ):
                self._ct_later.append((packet, verdict))
        items.append((packet.id, verdict, mark))

    def flush(self, waiting: Collection[int] = ()) -> None:
        """Send the collected verdicts; ``waiting``: ids of packets still without one."""
        items = self._items
        if not items:
            return
        self._items = []
        uniform = self._uniform
        if uniform is not None and self.batch and len(items) > 1:
            top = newest([item[0] for item in items])
            if not any((top - other) & U32 < _HALF for other in waiting):
                self._stats.verdicts[uniform.action] += len(items)
                message = self._batch_message(top, uniform, self._uniform_mark)
                self._send_datagram(message, batches=1)
                return
        self._send_individual(items)
        if self._ct_later:
            self._update_connections()

    def _batch_message(self, top: int, verdict: Verdict, mark: int | None) -> bytes:
        body = self._simple_tail + _BE_PAIR.pack(verdict.code, top)
        if mark is not None:
            body += attr_be32(ATTR_MARK, mark)
        if verdict.priority is not None:
            body += attr_be32(ATTR_PRIORITY, verdict.priority)
        return NLMSGHDR.pack(16 + len(body), MSG_VERDICT_BATCH, NLM_F_REQUEST, top, 0) + body

    def _send_individual(self, items: list[tuple[int, Verdict, int | None]]) -> None:
        pack_header = NLMSGHDR.pack
        pack_pair = _BE_PAIR.pack
        tail = self._simple_tail
        prefix = self._prefix
        with_ct = self.ct_updater is None
        counts = self._stats.verdicts
        parts: list[bytes] = []
        size = 0
        for packet_id, verdict, mark in items:
            counts[verdict.action] += 1
            if mark is None and verdict.simple and verdict.priority is None:
                message = (
                    pack_header(32, MSG_VERDICT, NLM_F_REQUEST, packet_id, 0)
                    + tail
                    + pack_pair(verdict.code, packet_id)
                )
            else:
                message = encode_verdict(verdict, prefix, packet_id, mark, with_ct)
            if size + len(message) > MAX_DATAGRAM and parts:
                self._send_datagram(b"".join(parts))
                parts, size = [], 0
            parts.append(message)
            size += len(message)
        self._send_datagram(b"".join(parts))

    def _send_datagram(self, data: bytes, batches: int = 0) -> None:
        stats = self._stats
        try:
            self._send(data)
        except NetlinkError as exc:
            stats.send_errors += 1
            self._throttle("send", logging.ERROR, f"queue {stats.queue}: verdicts not sent: {exc}")
            return
        stats.sends += 1
        stats.batches += batches

    def _update_connections(self) -> None:
        later, self._ct_later = self._ct_later, []
        updater = self.ct_updater
        assert updater is not None
        stats = self._stats
        for packet, verdict in later:
            try:
                updater.apply(packet, verdict)
            except (NetlinkError, ValueError) as exc:
                stats.ct_update_errors += 1
                self._throttle(
                    "ct",
                    logging.WARNING,
                    f"queue {stats.queue}: connection of packet {packet.id} not changed: {exc}",
                )
            else:
                stats.ct_updates += 1
