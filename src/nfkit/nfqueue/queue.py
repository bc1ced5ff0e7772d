"""One NFQUEUE queue: its own netlink socket, its packets and their verdicts.

The loop of a program reads packets with :meth:`Queue.receive` (or iterates
over the queue) and answers them with :meth:`Queue.decide`. A burst of
packets comes in with one ``recvmmsg`` (see :mod:`nfkit.nfqueue.burst`), and
their verdicts are collected and go out together (see
:mod:`nfkit.nfqueue.sender`) just before the queue waits for more packets:
two system calls for the whole burst.

Any thread may :meth:`~Queue.decide` or :meth:`~Queue.defer` a packet: the
loop thread applies it at once, others hand it over through an eventfd that
wakes the loop. A packet without a verdict gets the default verdict at its
deadline, and every packet still waiting when the queue closes gets it too,
including those the kernel queued that were not read yet: nothing is left
in the kernel queue (closing the socket would drop them).
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import logging
import os
import select
import socket
import struct
import sys
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from itertools import repeat
from operator import attrgetter
from typing import Any

from nfkit import netns
from nfkit.conntrack.client import Conntrack
from nfkit.netlink.codec import (
    NLM_F_ACK,
    NLMSG_ERROR,
    NLMSG_MIN_TYPE,
    ErrorReply,
    Message,
    attr,
    attr_be32,
    iter_message_spans,
    parse_error,
)
from nfkit.netlink.conn import Connection, Transport
from nfkit.netlink.errors import (
    BufferOverrun,
    DecodeError,
    NetlinkError,
    NetlinkNotSupported,
    NetlinkPermissionError,
)
from nfkit.netlink.socket import (
    NETLINK_CAP_ACK,
    NETLINK_NETFILTER,
    NETLINK_NO_ENOBUFS,
    NetlinkSocket,
)
from nfkit.nfqueue.burst import BURST, HEADROOM, Reader, burst_reader
from nfkit.nfqueue.const import (
    ALL_FLAGS,
    CFG_CMD,
    CFG_FLAGS,
    CFG_MASK,
    CFG_PARAMS,
    CFG_QUEUE_MAXLEN,
    DEFAULT_MAXLEN,
    MAX_COPY_RANGE,
    MSG_CONFIG,
    MSG_PACKET,
    Action,
    Command,
    CopyMode,
    Flag,
)
from nfkit.nfqueue.ctupdate import ConntrackUpdater
from nfkit.nfqueue.errors import QueueInUse
from nfkit.nfqueue.layouts import AttributeLayouts
from nfkit.nfqueue.log import Throttle
from nfkit.nfqueue.modes import Mode
from nfkit.nfqueue.packet import Deferred, QueuedPacket
from nfkit.nfqueue.sender import VerdictSender
from nfkit.nfqueue.stats import PROC_QUEUES, KernelCounters, QueueStats, read_kernel_counters
from nfkit.nfqueue.verdict import DROP, U32, Verdict, queue_prefix

#: First bytes of a packet message: length, type; then the first attribute's header.
_FIRST = struct.Struct("=IH14xHH")
_PACKET_ID = struct.Struct("!I")
_CMD = struct.Struct("!BxH")
_PARAMS = struct.Struct("!IB")
_HALF = 0x80000000
_ID = attrgetter("id")
_PLAIN = attrgetter("plain")
#: The first 32-bit words of a packet message, as the kernel writes them (native order):
#: nlmsg_type with no flags, and the header of NFQA_PACKET_HDR (11 bytes, type 1).
_PACKET_TYPE_WORD = MSG_PACKET
_PACKET_HDR_WORD = int.from_bytes(struct.pack("=HH", 11, 1), sys.byteorder)

#: How long a blocking receive waits before it returns (empty) to let loops check for stop.
TICK = 0.25
#: Packets read per receive() at most.
BATCH = BURST
NO_FLAGS = Flag(0)


class Queue:
    """Owns queue ``number`` and hands out its packets.

    Parameters:
        number: the queue (``--queue-num`` of the NFQUEUE rule), 0..65535.
        maxlen: packets the kernel keeps waiting for a verdict at most;
            beyond, it drops them (accepts with ``Flag.FAIL_OPEN``).
        copy_mode, copy_range: how much of each packet to copy.
        flags: FAIL_OPEN, CONNTRACK, GSO, UID_GID, SECCTX.
        default: the verdict of packets whose handler failed, whose
            deadline passed, and of those left when the queue closes.
        deadline: seconds from its arrival a packet may wait for a verdict
            (None: forever); :meth:`defer` sets a packet's own.
        mode: what an ACCEPT verdict becomes (see :mod:`nfkit.nfqueue.modes`).
        batch_verdicts: answer equal verdicts with one VERDICT_BATCH.
        receive_buffer: the socket's receive buffer in bytes (default: room
            for ``maxlen`` packets).
        no_enobufs: set NETLINK_NO_ENOBUFS (losses then show as id gaps and
            kernel counters only; off: each overrun is counted as ENOBUFS).
        transport: a stand-in for the netlink socket (tests).

    Raises:
        QueueInUse: another program owns the queue.
        NetlinkPermissionError: no CAP_NET_ADMIN in this network namespace.
        NetlinkNotSupported: a flag this kernel lacks (CONNTRACK, SECCTX).
    """

    def __init__(
        self,
        number: int,
        *,
        maxlen: int = DEFAULT_MAXLEN,
        copy_mode: CopyMode = CopyMode.PACKET,
        copy_range: int = MAX_COPY_RANGE,
        flags: Flag = NO_FLAGS,
        default: Verdict = DROP,
        deadline: float | None = None,
        mode: Mode | None = None,
        batch_verdicts: bool = True,
        receive_buffer: int | None = None,
        no_enobufs: bool = True,
        transport: Transport | None = None,
    ) -> None:
        if not 0 <= number <= 0xFFFF:
            raise ValueError(f"queue number {number} is not within 0..65535")
        self.number = number
        self.flags = Flag(flags)
        self.default = default
        self.deadline = deadline
        self.mode = mode
        self.stats = QueueStats(number)
        #: Where the attributes of this queue's messages are (shared by its packets).
        self.layouts = AttributeLayouts()
        self.closed = False
        #: The earliest deadline of a waiting packet (monotonic seconds) at the last receive.
        self.next_due: float | None = None
        #: Called when a verdict was collected (an event loop schedules the flush).
        self.on_pending: Callable[[], None] | None = None
        self._outstanding: dict[int, QueuedPacket] = {}
        self._timed: list[tuple[float, int, QueuedPacket]] = []  # deadlines set by defer()
        self._timed_ids: set[int] = set()
        self._inbox: deque[tuple[QueuedPacket, Verdict | Deferred]] = deque()
        self._backlog: list[QueuedPacket] = []
        self._last_id = 0
        self._accepted_in: Verdict | None = None
        self._accepted_by: Mode | None = None
        self._accepted_out = DROP
        self._loop_thread = threading.get_ident()
        self._throttle = Throttle(f"NFQUEUE queue {number}")
        self._netns_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            copied = min(copy_range, MAX_COPY_RANGE) if copy_mode == CopyMode.PACKET else 0
            self._open(transport, maxlen, receive_buffer, no_enobufs, copied + HEADROOM)
            self._sender.batch = batch_verdicts
            try:
                self._bind(maxlen, copy_mode, copy_range)
            except BaseException:
                self._transport.close()  # a BIND may have worked before the error
                raise
        except BaseException:
            self._close_fds()
            raise
        self._poller = select.poll()
        self._poller.register(self._transport.fileno(), select.POLLIN)
        self._poller.register(self._wake_fd, select.POLLIN)

    # -- setup -------------------------------------------------------------------------

    def _open(
        self,
        transport: Transport | None,
        maxlen: int,
        receive_buffer: int | None,
        no_enobufs: bool,
        slot: int,
    ) -> None:
        if transport is None:
            sock = NetlinkSocket(NETLINK_NETFILTER)
            try:
                sock.set_receive_buffer(receive_buffer or min(max(maxlen, 128) * 2048, 64 << 20))
                sock.set_option(NETLINK_CAP_ACK)  # errors echo our header, not our payload
                if no_enobufs:
                    sock.set_option(NETLINK_NO_ENOBUFS)
                sock.set_receive_timeout(TICK)
            except BaseException:
                sock.close()
                raise
            transport = sock
        self._transport = transport
        self._reader = burst_reader(transport, slot)
        self.portid = transport.portid
        self._conn = Connection(transport, on_unsolicited=self._early_message)
        self._sender = VerdictSender(self.number, transport.send, self.stats)

    def _config(self, *attrs: bytes, operation: str) -> None:
        payload = queue_prefix(self.number) + b"".join(attrs)
        self._conn.request(Message(MSG_CONFIG, NLM_F_ACK, payload=payload), operation)

    def _bind(self, maxlen: int, copy_mode: CopyMode, copy_range: int) -> None:
        """BIND, copy mode, maxlen and flags in one message.

        After a BIND alone the queue copies nothing (COPY_NONE) and the
        kernel drops every packet queued to it, bypass or not.
        """
        operation = f"bind NFQUEUE queue {self.number}"
        try:
            self._config(
                attr(CFG_CMD, _CMD.pack(Command.BIND, 0)),
                attr(CFG_PARAMS, _PARAMS.pack(min(copy_range, MAX_COPY_RANGE), copy_mode)),
                attr_be32(CFG_QUEUE_MAXLEN, maxlen),
                attr_be32(CFG_MASK, ALL_FLAGS),
                attr_be32(CFG_FLAGS, self.flags),
                operation=operation,
            )
        except NetlinkPermissionError:
            owner = self._owner()
            if owner is not None and owner != self.portid:
                raise QueueInUse(self.number, owner) from None
            raise NetlinkPermissionError(
                errno.EPERM,
                operation,
                "needs CAP_NET_ADMIN in this network namespace (run as root)",
            ) from None
        except NetlinkNotSupported as exc:
            code = exc.errno or errno.EOPNOTSUPP
            raise NetlinkNotSupported(code, operation, _unsupported(self.flags)) from None
        glue = bool(self.flags & Flag.CONNTRACK) or self._probe_conntrack_glue()
        if not glue:
            self._sender.ct_updater = ConntrackUpdater(self._in_netns(Conntrack, prefetch=False))

    def _probe_conntrack_glue(self) -> bool:
        """Whether verdicts can change connections (the CONNTRACK flag is accepted).

        A kernel without the glue ignores a verdict's NFQA_CT without error.
        """
        mask = attr_be32(CFG_MASK, Flag.CONNTRACK)
        operation = f"probe NFQUEUE queue {self.number} for the conntrack glue"
        try:
            self._config(mask, attr_be32(CFG_FLAGS, Flag.CONNTRACK), operation=operation)
        except NetlinkNotSupported:
            return False
        self._config(mask, attr_be32(CFG_FLAGS, 0), operation=operation)
        return True

    def _owner(self) -> int | None:
        counters = self._in_netns(read_kernel_counters)()
        return counters[self.number].portid if self.number in counters else None

    def _in_netns(
        self, function: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Callable[[], Any]:
        """``function`` bound to run in the queue's network namespace (wherever the thread is)."""

        def run() -> Any:
            here = os.stat("/proc/thread-self/ns/net").st_ino
            if here == os.fstat(self._netns_fd).st_ino:
                return function(*args, **kwargs)
            with netns.entered(f"/proc/self/fd/{self._netns_fd}"):
                return function(*args, **kwargs)

        return run

    # -- receiving ---------------------------------------------------------------------

    def _early_message(self, message: Message) -> None:
        """Packets that arrive while a config request waits for its ACK."""
        self._take([message.encode()], self._backlog)

    def receive(self, timeout: float | None = None) -> list[QueuedPacket]:
        """Send the verdicts given so far, then wait for packets and return them.

        Returns up to :data:`BATCH` packets: what arrived within ``timeout``
        seconds (0: only what is there; None: until something happens). The
        list may be empty: when ``timeout`` passes, when only decisions of
        other threads or deadlines were handled, and every :data:`TICK`
        seconds, so that a loop can check whether it should stop.
        """
        self._loop_thread = threading.get_ident()
        if self._inbox:
            self._apply_inbox()
        if self._timed or (self.deadline is not None and self._outstanding):
            self.next_due = next_due = self._expire(time.monotonic())
        else:
            self.next_due = next_due = None
        self.flush()
        packets: list[QueuedPacket] = []
        if self._backlog:
            packets, self._backlog = self._backlog, packets
            return self._arrived(packets)
        try:
            if timeout is None and not self._outstanding:
                # Nobody can decide anything meanwhile: block in the receive itself
                # (one syscall); SO_RCVTIMEO returns us after TICK seconds.
                datagrams = self._reader.receive(True)
            elif self._wait(timeout, next_due):
                datagrams = self._reader.receive(False)
            else:
                return packets
        except (BlockingIOError, TimeoutError, InterruptedError):
            return packets
        except BufferOverrun:
            self.stats.enobufs += 1
            return packets
        except (DecodeError, NetlinkError) as exc:
            self.stats.malformed += 1
            self._throttle("recv", logging.WARNING, f"queue {self.number}: receive failed: {exc}")
            return packets
        self._take(datagrams, packets, self._reader)
        return self._arrived(packets) if packets else packets

    def _wait(self, timeout: float | None, next_due: float | None) -> bool:
        """Poll the socket and the wake fd; True when the socket is readable."""
        wait = TICK if timeout is None else timeout
        if next_due is not None:
            wait = min(wait, max(0.0, next_due - time.monotonic()))
        readable = False
        for fd, _events in self._poller.poll(int(wait * 1000 + 0.999)):
            if fd == self._wake_fd:
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(self._wake_fd)
                self._apply_inbox()
            else:
                readable = True
        return readable

    def _take(
        self, datagrams: list[bytes], packets: list[QueuedPacket], reader: Reader | None = None
    ) -> None:
        """Turn datagrams into packets (appended to ``packets``), or handle what else they are.

        ``reader``: the one that read them, which tells their headers at once.
        """
        if reader is not None:
            ids = _packet_ids(reader, len(datagrams))
            if ids is not None:
                self._count_gaps(ids)
                payload_at = repeat(self.layouts.payload_of_burst(reader, reader.lengths()))
                taken = list(map(QueuedPacket, repeat(self, len(ids)), datagrams, ids, payload_at))
                self._outstanding.update(zip(ids, taken, strict=True))
                packets += taken
                return
        outstanding = self._outstanding
        first, packet_id_at = _FIRST.unpack_from, _PACKET_ID.unpack_from
        for data in datagrams:
            if len(data) >= 32:
                length, mtype, hdr_len, hdr_type = first(data)
                if mtype == MSG_PACKET and hdr_type == 1 and hdr_len >= 11 and length <= len(data):
                    (packet_id,) = packet_id_at(data, 24)
                    self._count_gaps((packet_id,))
                    packet = outstanding[packet_id] = QueuedPacket(self, data, packet_id)
                    packets.append(packet)
                    continue
            self._other(data, packets)

    def _count_gaps(self, ids: list[int] | tuple[int]) -> None:
        """Count the ids skipped before and between ``ids`` (packets the socket could not take)."""
        last = self._last_id
        self._last_id = ids[-1]
        if ids[0] == last + 1 and ids[-1] - ids[0] == len(ids) - 1:
            return  # in a row, as they should be
        for packet_id in ids:
            if last:
                gap = (packet_id - last - 1) & U32  # 0 where the ids wrap
                if gap < _HALF:
                    self.stats.id_gaps += gap
            last = packet_id

    def _arrived(self, packets: list[QueuedPacket]) -> list[QueuedPacket]:
        """Count new packets, set their deadline; those the mode answers are not handed out."""
        self.stats.received += len(packets)
        if self.deadline is not None:
            due = time.monotonic() + self.deadline
            for packet in packets:
                packet.deadline = due
            if self.next_due is None:
                self.next_due = due
        mode = self.mode
        if mode is None:
            return packets
        handed_out = []
        for packet in packets:
            verdict = mode.prejudge(packet)
            if verdict is None:
                handed_out.append(packet)
            else:
                self._apply(packet, verdict, transform=False)
        return handed_out

    def _other(self, data: bytes, packets: list[QueuedPacket]) -> None:
        """Errors the kernel sent about our verdicts, and anything malformed."""
        try:
            if len(data) < 16:
                raise DecodeError(f"a datagram of {len(data)} bytes")
            for mtype, flags, seq, _pid, start, end in iter_message_spans(data):
                if mtype == NLMSG_ERROR:
                    self._kernel_error(parse_error(data[start:end], flags), seq)
                elif mtype == MSG_PACKET:
                    self._take([data[start - 16 : end]], packets)
                elif mtype >= NLMSG_MIN_TYPE:
                    raise DecodeError(f"unexpected message type 0x{mtype:04x}")
        except DecodeError as exc:
            self.stats.malformed += 1
            self._throttle("malformed", logging.WARNING, f"queue {self.number}: {exc}; skipped")

    def _kernel_error(self, error: ErrorReply, seq: int) -> None:
        if not error.code:
            return  # an ACK
        code = -error.code
        errors = self.stats.verdict_errors
        errors[code] = errors.get(code, 0) + 1
        what = "unknown packet id" if code == errno.ENOENT else os.strerror(code)
        detail = f" ({error.message})" if error.message else ""
        self._throttle(
            f"errno{code}",
            logging.WARNING,
            f"queue {self.number}: the kernel refused the verdict for packet {seq}: {what}{detail}",
        )

    def __iter__(self) -> Iterator[QueuedPacket]:
        """Packets until the queue is closed; verdicts go out before each wait."""
        while not self.closed:
            yield from self.receive()

    # -- verdicts ----------------------------------------------------------------------

    def decide(self, packet: QueuedPacket, verdict: Verdict) -> None:
        """Give ``packet`` its verdict (from any thread).

        It goes out with the next batch, before the loop waits again. A
        verdict for a packet that already had one (its deadline passed, say)
        is counted in ``stats.late`` and ignored.
        """
        if threading.get_ident() == self._loop_thread:
            self._apply(packet, verdict)
        else:
            self._post(packet, verdict)

    def defer(self, packet: QueuedPacket, timeout: float | None = None) -> None:
        """Keep ``packet`` for a later :meth:`decide` (from any thread).

        ``timeout``: seconds from now until the default verdict (None: the
        queue's deadline from the packet's arrival).
        """
        item = Deferred(timeout)
        if threading.get_ident() == self._loop_thread:
            self._hold(packet, item)
        else:
            self._post(packet, item)

    def _post(self, packet: QueuedPacket, item: Verdict | Deferred) -> None:
        if self.closed:  # the packet was answered at close; its fd may be another file now
            self.stats.late += 1
            return
        self._inbox.append((packet, item))
        self.wake()

    def _apply_inbox(self) -> None:
        inbox = self._inbox
        while inbox:
            packet, item = inbox.popleft()
            if isinstance(item, Deferred):
                self._hold(packet, item)
            else:
                self._apply(packet, item)

    def _hold(self, packet: QueuedPacket, deferred: Deferred) -> None:
        if self._outstanding.get(packet.id) is not packet:
            return
        self.stats.deferred += 1
        if deferred.timeout is not None:
            packet.deadline = time.monotonic() + deferred.timeout
            heapq.heappush(self._timed, (packet.deadline, packet.id, packet))
            self._timed_ids.add(packet.id)

    def _apply(self, packet: QueuedPacket, verdict: Verdict, transform: bool = True) -> None:
        """Collect ``verdict`` for ``packet``; ``transform``: apply the mode to an ACCEPT."""
        outstanding = self._outstanding
        found = outstanding.pop(packet.id, None)
        if found is not packet:
            self._late(packet, found)
            return
        if self._timed_ids:
            self._timed_ids.discard(packet.id)
        if not verdict.plain or self.mode is not None:
            verdict = self._final(packet, verdict, transform)
        if self.on_pending is not None:
            self.on_pending()
        self._sender.packets.append(packet)
        self._sender.verdicts.append(verdict)

    def _apply_all(self, packets: list[QueuedPacket], verdicts: list[Verdict]) -> None:
        """:meth:`_apply` for many packets at once (the loop thread; a Server's burst)."""
        ids = list(map(_ID, packets))
        found = list(map(self._outstanding.pop, ids, repeat(None)))
        if found != packets:  # some had a verdict already
            answered = [(p, v) for p, v, f in zip(packets, verdicts, found, strict=True) if f is p]
            for packet, other in zip(packets, found, strict=True):
                if other is not packet:
                    self._late(packet, other)
            if not answered:
                return
            packets, verdicts = map(list, zip(*answered, strict=True))
        if self._timed_ids:
            self._timed_ids.difference_update(ids)
        first = verdicts[0]
        uniform = verdicts.count(first) == len(verdicts)
        if self.mode is not None or not (first.plain if uniform else all(map(_PLAIN, verdicts))):
            verdicts = list(map(self._final, packets, verdicts, repeat(True)))
        if self.on_pending is not None:
            self.on_pending()
        self._sender.packets += packets
        self._sender.verdicts += verdicts

    def _late(self, packet: QueuedPacket, found: QueuedPacket | None) -> None:
        """``packet`` had its verdict already; ``found`` was outstanding under its id."""
        if found is not None:  # another packet with this id (after 2**32 packets)
            self._outstanding[packet.id] = found
        self.stats.late += 1

    def _final(self, packet: QueuedPacket, verdict: Verdict, transform: bool) -> Verdict:
        """The verdict to send: no new payload for a truncated packet; ``transform``: the
        mode's meaning of ACCEPT."""
        if verdict.payload is not None and packet.truncated:
            self._throttle(
                "truncated",
                logging.ERROR,
                f"queue {self.number}: packet {packet.id} was truncated (cap_len "
                f"{packet.cap_len}); its payload cannot be replaced, gave the default verdict",
            )
            verdict = self.default
        if transform and self.mode is not None and verdict.action is Action.ACCEPT:
            verdict = self._accepted(self.mode, verdict)
        return verdict

    def _accepted(self, mode: Mode, verdict: Verdict) -> Verdict:
        """What ``mode`` makes of ACCEPT ``verdict`` (the last answer is kept: handlers
        mostly return the same verdict object)."""
        if verdict is not self._accepted_in or mode is not self._accepted_by:
            self._accepted_in, self._accepted_by = verdict, mode
            self._accepted_out = mode.accepted(verdict)
        return self._accepted_out

    def _expire(self, now: float) -> float | None:
        """Give the default verdict to packets past their deadline; return the next deadline."""
        late: list[QueuedPacket] = []
        timed = self._timed
        while timed and timed[0][0] <= now:
            _due, _id, packet = heapq.heappop(timed)
            if packet.deadline is not None and packet.deadline <= now:
                late.append(packet)
        next_due = timed[0][0] if timed else None
        if self.deadline is not None:
            timed_ids = self._timed_ids
            for packet in self._outstanding.values():
                if packet.id in timed_ids or packet.deadline is None:
                    continue
                if packet.deadline > now:
                    next_due = min(next_due or packet.deadline, packet.deadline)
                    break
                late.append(packet)
        for packet in late:
            if self._outstanding.get(packet.id) is packet:
                self.stats.expired += 1
                self._apply(packet, self.default)
        return next_due

    def flush(self) -> None:
        """Send the verdicts given so far (loop thread)."""
        if self._sender.packets:
            self._sender.flush(self._outstanding)

    @property
    def waiting(self) -> int:
        """Packets handed out that have no verdict yet."""
        return len(self._outstanding)

    # -- loss visibility ---------------------------------------------------------------

    def kernel_counters(self) -> KernelCounters | None:
        """The kernel's counters of this queue (None once closed)."""
        if self.closed:
            return None
        found = self._in_netns(read_kernel_counters, PROC_QUEUES)().get(self.number)
        return found if found is not None and found.portid == self.portid else None

    # -- the end -----------------------------------------------------------------------

    def close(self, verdict: Verdict | None = None) -> None:
        """Answer every waiting packet with ``verdict`` (default: the default verdict); unbind.

        Packets the kernel queued but we did not read yet are read and
        answered too; closing the socket alone would drop them.
        """
        if self.closed:
            return
        final = verdict or self.default
        self._loop_thread = threading.get_ident()
        self._apply_inbox()
        self.flush()
        packets = self._backlog
        with contextlib.suppress(
            BlockingIOError, TimeoutError, InterruptedError, NetlinkError, DecodeError
        ):
            for _ in range(1 << 20):  # bounded: the kernel queue is at most maxlen long
                self._take(self._reader.receive(False), packets, self._reader)
        for packet in list(self._outstanding.values()):
            self.stats.answered_at_close += 1
            self._apply(packet, final)
        self.flush()
        self.closed = True
        updater = self._sender.ct_updater
        if updater is not None:
            updater.close()
        self._transport.close()
        self._close_fds()

    def _close_fds(self) -> None:
        for fd in (self._wake_fd, self._netns_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def fileno(self) -> int:
        """The socket (readable: packets are waiting)."""
        return self._transport.fileno()

    def interface_name(self, index: int | None) -> str | None:
        """The name of interface ``index`` in the queue's network namespace."""
        if index is None:
            return None
        try:
            name: str = self._in_netns(socket.if_indextoname, index)()
        except OSError:
            return None
        return name

    def wake_fileno(self) -> int:
        """The eventfd other threads' decisions signal on."""
        return self._wake_fd

    def wake(self) -> None:
        """Make a waiting :meth:`receive` return (from any thread, or a signal handler)."""
        if not self.closed:
            with contextlib.suppress(OSError):
                os.eventfd_write(self._wake_fd, 1)

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Queue {self.number} portid={self.portid} waiting={len(self._outstanding)}>"


def _unsupported(flags: Flag) -> str:
    hints = []
    if flags & Flag.CONNTRACK:
        hints.append("CONNTRACK needs CONFIG_NETFILTER_NETLINK_GLUE_CT")
    if flags & Flag.SECCTX:
        hints.append("SECCTX needs CONFIG_NETWORK_SECMARK")
    if flags & Flag.FAIL_OPEN:
        hints.append("FAIL_OPEN needs Linux 3.6")
    text = "; ".join(hints) or "a flag this kernel lacks"
    return f"this kernel refuses the queue flags {flags!r} ({text}); bind without them"


def parse_range(text: str) -> range:
    """``"3"`` or ``"0:3"`` (both ends included, as iptables' --queue-balance)."""
    first, sep, last = text.partition(":")
    try:
        low = int(first)
        high = int(last) if sep else low
    except ValueError:
        raise ValueError(f"{text!r} is not a queue number or range like 0:3") from None
    if not 0 <= low <= high <= 0xFFFF:
        raise ValueError(f"queue range {text!r}: write LOW:HIGH with 0 <= LOW <= HIGH <= 65535")
    return range(low, high + 1)


def open_queues(numbers: range | list[int] | str, **options: Any) -> list[Queue]:
    """Bind every queue of ``numbers`` (``"0:3"`` too), one socket each.

    With ``--queue-balance``, all packets of a connection stay on one queue.
    If one bind fails, the queues bound so far are closed again.
    """
    if isinstance(numbers, str):
        numbers = parse_range(numbers)
    queues: list[Queue] = []
    try:
        for number in numbers:
            queues.append(Queue(number, **options))
    except BaseException:
        for queue in queues:
            queue.close()
        raise
    return queues


def _packet_ids(reader: Reader, count: int) -> list[int] | None:
    """The ids of the last ``count`` datagrams of ``reader`` if every one is a packet
    message exactly as the kernel writes them (then no Python loop looks at them)."""
    lengths = reader.lengths()
    if (
        min(lengths) < 32
        or reader.words(4).count(_PACKET_TYPE_WORD) != count
        or reader.words(20).count(_PACKET_HDR_WORD) != count
        or reader.words(0) != lengths  # one message each, none cut short
    ):
        return None
    ids = array("I", reader.words(24))
    if sys.byteorder == "little":
        ids.byteswap()
    return ids.tolist()
