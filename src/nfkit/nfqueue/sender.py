"""Verdicts collected and sent together: one ``send`` for many packets.

Individual VERDICT messages are concatenated into one datagram (the kernel
handles each in turn). When every collected verdict is the same simple one
(same action, same final mark and priority) and no other packet of the queue
with a lower id still waits, a single ``VERDICT_BATCH`` message answers them
all: the kernel applies it to every queued id up to the highest.

Plain verdicts (an action and nothing else) are written into a preallocated
datagram of VERDICT messages: only their sequence numbers, codes and packet
ids change, three strided writes for all of them.
"""

from __future__ import annotations

import logging
import struct
import sys
from array import array
from collections.abc import Callable, Collection, Sequence
from operator import attrgetter

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
_ID = attrgetter("id")
_PLAIN = attrgetter("plain")
#: Plain VERDICT messages one datagram holds at most (32 bytes each).
PLAIN_SLOTS = 1024
_PLAIN_SIZE = 32
# 32-bit words of a plain VERDICT message: nlmsghdr (length, type and flags, seq, port id),
# nfgenmsg, the attribute header, then the verdict's code and packet id (big-endian).
_WORDS = _PLAIN_SIZE // 4
_SEQ_WORD, _CODE_WORD, _ID_WORD = 2, 6, 7


def newest(ids: Sequence[int]) -> int:
    """The most recent of packet ids (they are 32-bit and wrap)."""
    top = max(ids)
    if top - min(ids) < _HALF:
        return top
    for packet_id in ids:  # the ids wrapped around
        if (packet_id - top) & U32 < _HALF:
            top = packet_id
    return top


def _big_endian(values: Sequence[int]) -> array[int]:
    """32-bit words to write into a memoryview of unsigned ints, in network order."""
    words = array("I", values)
    if sys.byteorder == "little":
        words.byteswap()
    return words


class VerdictSender:
    """Collects one queue's verdicts until :meth:`flush` sends them.

    The queue appends to :attr:`packets` and :attr:`verdicts` (one verdict each).

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
        #: Packets answered since the last flush, and their verdicts.
        self.packets: list[QueuedPacket] = []
        self.verdicts: list[Verdict] = []
        self._send = send
        self._stats = stats
        self._prefix = queue_prefix(queue_num)
        self._simple_tail = self._prefix + _VERDICT_HDR_ATTR
        plain = NLMSGHDR.pack(_PLAIN_SIZE, MSG_VERDICT, NLM_F_REQUEST, 0, 0) + self._simple_tail
        self._plain = bytearray((plain + bytes(8)) * PLAIN_SLOTS)
        self._plain_words = memoryview(self._plain).cast("I")
        self._plain_code: int | None = 0  # the code in every message of _plain (None: mixed)
        self._ct_later: list[tuple[QueuedPacket, Verdict]] = []
        self._throttle = Throttle(f"NFQUEUE queue {queue_num}")

    def __len__(self) -> int:
        return len(self.packets)

    def flush(self, waiting: Collection[int] = ()) -> None:
        """Send the collected verdicts; ``waiting``: ids of packets still without one."""
        packets, verdicts = self.packets, self.verdicts
        if not packets:
            return
        self.packets, self.verdicts = [], []
        first = verdicts[0]
        counts = self._stats.verdicts
        if verdicts.count(first) == len(verdicts):  # identical ones compare by identity first
            counts[first.action] += len(verdicts)
            if (
                first.simple
                and self.batch
                and len(packets) > 1
                and self._batch(packets, first, waiting)
            ):
                return
            if first.plain:
                self._send_plain(packets, first.code)
                return
        else:
            for verdict in verdicts:
                counts[verdict.action] += 1
            if all(map(_PLAIN, verdicts)):
                self._send_plain(packets, [verdict.code for verdict in verdicts])
                return
        self._send_individual(packets, verdicts)
        if self._ct_later:
            self._update_connections()

    def _batch(
        self, packets: Sequence[QueuedPacket], verdict: Verdict, waiting: Collection[int]
    ) -> bool:
        """Answer ``packets`` with one VERDICT_BATCH if that answers no other packet."""
        top = newest(list(map(_ID, packets)))
        if waiting and any((top - other) & U32 < _HALF for other in waiting):
            return False
        mark = verdict.mark
        if mark is not None and verdict.mark_mask != U32:
            marks = {verdict.mark_for(packet.mark) for packet in packets}
            if len(marks) > 1:
                return False  # the packets' own bits differ
            (mark,) = marks
        body = self._simple_tail + _BE_PAIR.pack(verdict.code, top)
        if mark is not None:
            body += attr_be32(ATTR_MARK, mark)
        if verdict.priority is not None:
            body += attr_be32(ATTR_PRIORITY, verdict.priority)
        header = NLMSGHDR.pack(16 + len(body), MSG_VERDICT_BATCH, NLM_F_REQUEST, top, 0)
        self._send_datagram(header + body, batches=1)
        return True

    def _send_plain(self, packets: Sequence[QueuedPacket], codes: int | list[int]) -> None:
        """VERDICT messages without options: ``codes`` is one code for all, or one each."""
        words = self._plain_words
        if isinstance(codes, int) and codes != self._plain_code:
            words[_CODE_WORD::_WORDS] = _big_endian([codes]) * PLAIN_SLOTS
            self._plain_code = codes
        for start in range(0, len(packets), PLAIN_SLOTS):
            end = min(len(packets), start + PLAIN_SLOTS)
            ids = array("I", map(_ID, packets[start:end]))
            last = (end - start) * _WORDS
            words[_SEQ_WORD:last:_WORDS] = ids  # the sequence number names the packet in errors
            words[_ID_WORD:last:_WORDS] = _big_endian(ids)
            if not isinstance(codes, int):
                words[_CODE_WORD:last:_WORDS] = _big_endian(codes[start:end])
                self._plain_code = None
            self._send_datagram(bytes(self._plain[: (end - start) * _PLAIN_SIZE]))

    def _send_individual(
        self, packets: Sequence[QueuedPacket], verdicts: Sequence[Verdict]
    ) -> None:
        with_ct = self.ct_updater is None
        parts: list[bytes] = []
        size = 0
        for packet, verdict in zip(packets, verdicts, strict=True):
            mark = verdict.mark
            if mark is not None and verdict.mark_mask != U32:
                mark = verdict.mark_for(packet.mark)
            if not with_ct and (verdict.ct_mark is not None or verdict.labels is not None):
                self._ct_later.append((packet, verdict))
            message = encode_verdict(verdict, self._prefix, packet.id, mark, with_ct)
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
