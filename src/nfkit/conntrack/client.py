"""The synchronous ctnetlink client: :class:`Conntrack`.

Each client owns its netlink sockets ("channels"). A dump streams from one
channel while it is iterated; a request made meanwhile (deleting the flows as
they come, say) goes through a second channel, as conntrack(8) does with its
"modifier" socket. A dump abandoned half-way closes its channel, which is the
only way to stop the kernel from sending the rest.

Requests are built by the functions of :mod:`nfkit.conntrack.codec`. Every
operation is written once, in :class:`ClientCore`, as a generator that never
reads a socket itself: it yields the channel whose next datagram it needs and
is sent the bytes back (a :data:`Call`); a dump also yields lists of results
(a :data:`Stream`). :class:`Conntrack` runs those generators with blocking
reads; :class:`nfkit.conntrack.aio.AsyncConntrack` runs the same generators
from an asyncio event loop.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import queue
import select
import struct
import threading
import weakref
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any, TypeVar

from nfkit.conntrack import const as C
from nfkit.conntrack.codec import (
    Decoder,
    FlowTarget,
    decode_cpu_stats,
    decode_global_stats,
    encode_expectation,
    encode_flow,
    expectation_key,
    lookup_attributes,
    request,
)
from nfkit.conntrack.filters import NEWEST_FIRST, Filter, KernelFilter
from nfkit.conntrack.model import AF_INET, AF_INET6, CPUStats, Expectation, Flow, GlobalStats, Tuple
from nfkit.netlink.codec import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_OVERRUN,
    NLMSGHDR,
    Message,
    parse_error,
)
from nfkit.netlink.conn import DumpInterrupted, Transport
from nfkit.netlink.errors import BufferOverrun, EncodeError, NetlinkError
from nfkit.netlink.socket import NETLINK_CAP_ACK, NETLINK_NETFILTER, NetlinkSocket

#: Bytes handed to each recv: the kernel fills dump datagrams up to what the
#: reader asked for before (capped at 32 KiB today), so this never truncates.
DEFAULT_RECV_SIZE = 1 << 20
#: Kernel receive buffer asked for (SO_RCVBUFFORCE, else SO_RCVBUF).
DEFAULT_RECEIVE_BUFFER = 4 << 20
#: Size of one datagram of batched requests (delete_many).
BATCH_BYTES = 64 << 10

_DONE_ERRNO = struct.Struct("=i")

TABLES = {"conntrack": C.CT_GET, "dying": C.CT_GET_DYING, "unconfirmed": C.CT_GET_UNCONFIRMED}

PERMISSION_HINT = "needs CAP_NET_ADMIN in this network namespace (run as root)"
LABELS_HINT = "labels need a ruleset using ct label / connlabel (kernel >= 6.6)"

T = TypeVar("T")


def open_socket(
    recv_size: int = DEFAULT_RECV_SIZE, receive_buffer: int = DEFAULT_RECEIVE_BUFFER
) -> NetlinkSocket:
    """A NETLINK_NETFILTER socket sized for large dumps.

    NETLINK_CAP_ACK keeps error replies short (the kernel no longer echoes
    whole requests), which matters when thousands of deletes are batched.
    """
    sock = NetlinkSocket(NETLINK_NETFILTER, recv_size=recv_size)
    try:
        if receive_buffer:
            sock.set_receive_buffer(receive_buffer)
        sock.set_option(NETLINK_CAP_ACK)
    except OSError:
        pass  # old kernels: smaller buffers, longer errors, still correct
    return sock


def kernel_error(
    code: int, operation: str, extack: str = "", hints: dict[int, str] | None = None
) -> NetlinkError:
    """The typed NetlinkError for ``code``, with a hint naming what is missing."""
    hint = (hints or {}).get(code)
    if hint is None and code in (errno.EPERM, errno.EACCES):
        hint = PERMISSION_HINT
    message = "; ".join(text for text in (extack, hint) if text)
    return NetlinkError.from_errno(code, operation, message)


class _Prefetch:
    """Reads a channel's datagrams in a thread, ahead of their consumer.

    The kernel builds each datagram of a dump inside the ``recvmsg`` that
    follows the previous one. Reading ahead in a thread (``recv`` releases the
    GIL) lets the kernel build the next datagrams while Python decodes this
    one: a dump then costs about max(kernel, decoding) instead of their sum.
    At most ``depth`` datagrams wait in the queue.
    """

    def __init__(self, transport: Transport, depth: int = 64) -> None:
        self.transport = transport
        self.queue: queue.Queue[bytes | BaseException] = queue.Queue(depth)
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="nfkit-ct-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        fds = [self.transport.fileno(), self._wake_r]
        try:
            while True:
                ready, _, _ = select.select(fds, [], [])
                if self._wake_r in ready:
                    return
                try:
                    data = self.transport.recv()
                except BlockingIOError:
                    continue
                self._put(data)
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put(exc)

    def _put(self, item: bytes | BaseException) -> None:
        while not self._stopping:
            try:
                self.queue.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def get(self) -> bytes:
        item = self.queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def stop(self) -> list[bytes | BaseException]:
        """End the thread; return what it read and nobody took yet, in order."""
        self._stopping = True
        os.write(self._wake_w, b"x")
        self._thread.join()
        os.close(self._wake_r)
        os.close(self._wake_w)
        leftovers = []
        with contextlib.suppress(queue.Empty):
            while True:
                leftovers.append(self.queue.get_nowait())
        return leftovers


class Exchange:
    """One channel: a transport and its sequence numbers, spoken request by request.

    Read it with :meth:`recv`, which honours a running :meth:`prefetch`.
    """

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._seq = itertools.count(1)
        #: Whether the last request sent was a dump (worth reading ahead).
        self.dumping = False
        self._prefetch: _Prefetch | None = None
        self._pending: deque[bytes | BaseException] = deque()

    def send(self, messages: Iterable[Message]) -> int:
        """Send ``messages`` in one datagram with fresh sequence numbers; return the last."""
        seq = 0
        chunks = []
        dumping = False
        for message in messages:
            seq = next(self._seq) & 0xFFFFFFFF or next(self._seq)
            message.seq = seq
            message.flags |= NLM_F_REQUEST
            dumping |= message.flags & NLM_F_DUMP == NLM_F_DUMP
            chunks.append(message.encode())
        self.transport.send(b"".join(chunks))
        self.dumping = dumping
        return seq

    def recv(self) -> bytes:
        """The next datagram of this channel (blocking)."""
        if self._pending:
            item = self._pending.popleft()
            if isinstance(item, BaseException):
                raise item
            return item
        if self._prefetch is not None:
            return self._prefetch.get()
        return self.transport.recv()

    def prefetch(self) -> bool:
        """Start reading ahead in a thread (see :class:`_Prefetch`); False if it already is."""
        if self._prefetch is not None:
            return False
        self._prefetch = _Prefetch(self.transport)
        return True

    def stop_prefetch(self) -> None:
        """Stop reading ahead; datagrams read already stay first in line for :meth:`recv`."""
        if self._prefetch is not None:
            self._pending.extend(self._prefetch.stop())
            self._prefetch = None

    def errors_until(self, last: int) -> Call[list[tuple[int, int, str]]]:
        """The ``(seq, errno, text)`` of failed requests, read until ``last`` is answered.

        ``last`` must have been sent with NLM_F_ACK (or fail). Other data
        replies are dropped.
        """
        errors = []
        while True:
            data = yield self
            for mtype, flags, seq, payload in _messages(data):
                if mtype == NLMSG_OVERRUN:
                    raise BufferOverrun(operation="request")
                if mtype != NLMSG_ERROR:
                    continue
                reply = parse_error(payload, flags)
                if reply.code:
                    errors.append((seq, -reply.code, reply.message))
                if seq == last:
                    return errors

    def close(self) -> None:
        self.stop_prefetch()
        self.transport.close()


#: An operation that needs datagrams: it yields the channel to read from, is
#: sent the next datagram of that channel, and returns its result.
Call = Generator[Exchange, bytes, T]
#: A streaming operation: like a :data:`Call`, and it also yields lists of
#: results to hand out as they arrive (it is sent ``b""`` after those).
Stream = Generator[Exchange | list[T], bytes, None]


def gather(stream: Stream[T]) -> Call[list[T]]:
    """A call that collects every result of ``stream``."""
    gathered: list[T] = []
    with contextlib.closing(stream):
        try:
            step = next(stream)
            while True:
                if isinstance(step, Exchange):
                    step = stream.send((yield step))
                else:
                    gathered += step
                    step = stream.send(b"")
        except StopIteration:
            return gathered


def _messages(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """``(type, flags, seq, payload)`` of each message of a datagram."""
    offset = 0
    total = len(data)
    while offset + NLMSGHDR.size <= total:
        length, mtype, flags, seq, _pid = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size or offset + length > total:
            break
        yield mtype, flags, seq, data[offset + NLMSGHDR.size : offset + length]
        offset += (length + 3) & ~3


def _seq_of(data: bytes) -> int:
    """The sequence number of a datagram's first message (0 if it has none)."""
    return NLMSGHDR.unpack_from(data)[3] if len(data) >= NLMSGHDR.size else 0


class _Namespace:
    """The network namespace a client was made in; its later channels open there too.

    A socket belongs to the namespace of the thread that created it. Without
    this, a channel opened after the caller left the namespace (``with
    lab.entered(ns): ct = Conntrack()``) would talk to another table.
    """

    PATH = "/proc/thread-self/ns/net"

    def __init__(self) -> None:
        try:
            fd = os.open(self.PATH, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.fd: int | None = None  # no /proc: channels open where the caller is
            return
        self.fd = fd
        self.identity = _identity(os.fstat(fd))
        self._release = weakref.finalize(self, os.close, fd)  # also if never closed

    def run(self, make: Callable[[], Transport]) -> Transport:
        """``make()`` inside the namespace."""
        if self.fd is None or _identity(os.stat(self.PATH)) == self.identity:
            return make()
        from nfkit.netns import setns  # ctypes; only needed when threads moved

        back = os.open(self.PATH, os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(self.fd)
            try:
                return make()
            finally:
                setns(back)
        finally:
            os.close(back)

    def close(self) -> None:
        if self.fd is not None:
            self.fd = None
            self._release()


def _identity(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino


class ClientCore:
    """What :class:`Conntrack` and the asyncio client share: channels, decoder
    and every operation, written as :data:`Call`/:data:`Stream` generators.

    Parameters:
        transport_factory: makes a transport per channel (default: real
            netlink sockets; tests pass a FakeTransport factory).
        kernel_filters: which dump filter parts to try in the kernel
            (``KernelFilter(0)``: filter only in Python). Parts the kernel
            refuses are dropped from :attr:`kernel_filters` as they fail.
        compiled: decode with per-layout compiled parsers (off: the generic walk).
    """

    def __init__(
        self,
        *,
        transport_factory: Callable[[], Transport] | None = None,
        kernel_filters: KernelFilter = KernelFilter.all(),  # noqa: B008 (an immutable flag)
        compiled: bool = True,
    ) -> None:
        self._factory: Callable[[], Transport] = transport_factory or open_socket
        self._namespace = _Namespace()
        self.kernel_filters = kernel_filters
        #: Filter parts the kernel refused, with its error (for diagnostics).
        self.refused: dict[KernelFilter, NetlinkError] = {}
        self.decoder = Decoder(compiled=compiled)
        self._target_decoder: Decoder | None = None  # of the last dump_as target
        self._idle: list[Exchange] = [Exchange(self._factory())]
        self._closed = False

    # -- channels ---------------------------------------------------------------------

    def _acquire(self) -> Exchange:
        if self._closed:
            raise ValueError("this Conntrack is closed")
        if self._idle:
            return self._idle.pop()
        return Exchange(self._namespace.run(self._factory))

    def _release(self, channel: Exchange) -> None:
        if self._closed or len(self._idle) >= 2:
            channel.close()
        else:
            self._idle.append(channel)

    def close(self) -> None:
        """Close every idle channel; dumps still iterated close theirs when they end."""
        self._closed = True
        for channel in self._idle:
            channel.close()
        self._idle.clear()
        self._namespace.close()

    @property
    def portid(self) -> int:
        """The netlink port id of the first idle channel (events caused by its
        requests carry it); 0 when every channel is busy or the client is closed."""
        return self._idle[-1].transport.portid if self._idle else 0

    # -- conversations ----------------------------------------------------------------

    def _ack(
        self, message: Message, operation: str, hints: dict[int, str] | None = None
    ) -> Call[None]:
        """Send one request with NLM_F_ACK; raise the kernel's refusal."""
        message.flags |= NLM_F_ACK
        with self._channel() as channel:
            last = channel.send([message])
            for _seq, code, text in (yield from channel.errors_until(last)):
                raise kernel_error(code, operation, text, hints)

    def _get(
        self, message: Message, operation: str, hints: dict[int, str] | None = None
    ) -> Call[Any]:
        """Send a single (non-dump) GET without NLM_F_ACK and decode its one reply.

        An ACK would follow the reply into the socket and, with many GETs,
        fill it (conntrack 1.4.7's "No buffer space available" on -U).
        """
        with self._channel() as channel:
            seq = channel.send([message])
            result = yield from self._single_reply(channel, seq, operation, hints)
        return result

    @contextlib.contextmanager
    def _channel(self) -> Iterator[Exchange]:
        """A pooled channel for one request.

        It goes back to the pool after success or a kernel error (the
        exchange ended cleanly); any other failure leaves its state unknown,
        so it is closed.
        """
        channel = self._acquire()
        try:
            yield channel
        except NetlinkError:
            self._release(channel)
            raise
        except BaseException:
            channel.close()
            raise
        self._release(channel)

    def _single_reply(
        self, channel: Exchange, seq: int, operation: str, hints: dict[int, str] | None
    ) -> Call[Any]:
        while True:
            data = yield channel
            if _seq_of(data) != seq:
                continue
            items, others = self.decoder.decode(data)
            for other in others:
                if other.type == NLMSG_ERROR:
                    reply = parse_error(other.payload, other.flags)
                    if reply.code:
                        raise kernel_error(-reply.code, operation, reply.message, hints)
                elif other.seq == seq:
                    return other
            if items:
                return items[0]

    def _dump(
        self,
        message: Message,
        operation: str,
        hints: dict[int, str] | None = None,
        pick: Callable[[list[Any], list[Message]], list[T]] = lambda items, _others: items,
        decoder: Decoder | None = None,
    ) -> Stream[T]:
        """Stream a dump: per datagram, what ``pick`` keeps of its decoded
        objects and its other messages (by default the objects); ``decoder``
        replaces the client's.

        Raises (while iterating):
            NetlinkError: the kernel refused the dump (before any datagram).
            DumpInterrupted: the kernel flagged the dump inconsistent.
        """
        message.flags |= NLM_F_DUMP
        decode = (decoder or self.decoder).decode
        channel = self._acquire()
        finished = False
        try:
            seq = channel.send([message])
            interrupted = False
            while not finished:
                data = yield channel
                if _seq_of(data) != seq:
                    continue
                items, others = decode(data)
                rest = []
                for other in others:
                    if other.type == NLMSG_DONE:
                        finished = True
                        # A dump that fails half-way ends with the errno in its DONE.
                        payload = other.payload
                        code = _DONE_ERRNO.unpack_from(payload)[0] if len(payload) >= 4 else 0
                        if code < 0:
                            raise kernel_error(-code, operation, "", hints)
                    elif other.type == NLMSG_ERROR:
                        reply = parse_error(other.payload, other.flags)
                        finished = True
                        if reply.code:
                            raise kernel_error(-reply.code, operation, reply.message, hints)
                    elif other.type == NLMSG_OVERRUN:
                        raise BufferOverrun(operation=operation)
                    elif other.flags & NLM_F_DUMP_INTR and not other.payload:
                        interrupted = True
                    else:
                        rest.append(other)
                if items or rest:
                    picked = pick(items, rest)
                    if picked:
                        yield picked
            if interrupted:
                raise DumpInterrupted(operation, [])
        finally:
            if finished:
                self._release(channel)
            else:
                channel.close()

    # -- flows ----------------------------------------------------------------------------

    def _op_dump(
        self,
        criteria: Filter | int,
        orig: Tuple | None,
        reply: Tuple | None,
        table: str,
        reset_counters: bool,
        target: FlowTarget[Any] | None = None,
        **extra: int | None,
    ) -> Stream[Any]:
        """Check the arguments of a dump (see :meth:`Conntrack.dump` and
        :meth:`Conntrack.dump_as`) and plan it."""
        flt = _combine(criteria, orig, reply, **extra)
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r} (conntrack, dying, unconfirmed)")
        if reset_counters and table != "conntrack":
            raise ValueError("reset_counters only applies to the conntrack table")
        mtype = C.CT_GET_CTRZERO if reset_counters else TABLES[table]
        return self._dump_flows(flt, mtype, table == "conntrack", target)

    def _dump_flows(
        self, flt: Filter, mtype: int, kernel_side: bool, target: FlowTarget[Any] | None
    ) -> Stream[Any]:
        match = None if flt.is_empty else flt.matches
        family = flt.effective_family
        # CTA_FILTER needs a family: with tuple criteria but none given, ask per family.
        families = [family]
        if not family and kernel_side and KernelFilter.TUPLE in self.kernel_filters:
            _, used = flt.merged(family=AF_INET).kernel_attributes(KernelFilter.TUPLE)
            if used:
                families = [AF_INET, AF_INET6]
        for dump_family in families:
            yield from self._filtered_dump(flt, mtype, dump_family, kernel_side, match, target)

    def _filtered_dump(
        self,
        flt: Filter,
        mtype: int,
        family: int,
        kernel_side: bool,
        match: Callable[[Flow], bool] | None,
        target: FlowTarget[Any] | None,
    ) -> Stream[Any]:
        """The matching flows of a dump with as many kernel criteria as work,
        as ``target`` makes them (decoded straight into its items when no
        flow needs checking here)."""
        scoped = flt.merged(family=family) if family else flt
        decoder, convert = self.decoder, None
        if target is not None and match is None:
            decoder = self._decoder_for(target)
        elif target is not None:
            convert = target.convert
        while True:
            parts = self.kernel_filters if kernel_side else KernelFilter(0)
            attributes, used = scoped.kernel_attributes(parts)
            message = request(mtype, 0, family, attributes)
            received = False

            def pick(items: list[Any], _others: list[Message]) -> list[Any]:
                nonlocal received
                received = True
                if match is None:
                    return items
                kept = [flow for flow in items if match(flow)]
                return kept if convert is None else list(map(convert, kept))

            try:
                yield from self._dump(message, "conntrack dump", _DUMP_HINTS, pick, decoder)
                return
            except NetlinkError as exc:
                refused = _newest(used)
                if received or refused is None or exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                self.kernel_filters &= ~refused
                self.refused[refused] = exc

    def _decoder_for(self, target: FlowTarget[Any]) -> Decoder:
        """A decoder making ``target``'s items (kept for the next dump of an equal target)."""
        if self._target_decoder is None or self._target_decoder.target != target:
            self._target_decoder = Decoder(compiled=self.decoder.compiled, target=target)
        return self._target_decoder

    def _op_get(self, key: Flow | Tuple, zone: int | None) -> Call[Flow]:
        message = request(C.CT_GET, 0, key.family, lookup_attributes(key, zone, with_id=False))
        flow: Flow = yield from self._get(message, "conntrack get", {errno.ENOENT: "no such flow"})
        return flow

    def _op_new(self, flow: Flow, flags: int, operation: str) -> Call[None]:
        """Create and/or update ``flow`` (CT_NEW with ``flags``)."""
        create = bool(flags & NLM_F_CREATE)
        attributes = encode_flow(flow, create=create)
        hints = _change_hints(flow, create)
        # After auto-loading a helper or NAT module the kernel asks to retry (EAGAIN).
        for attempt in range(2):
            try:
                message = request(C.CT_NEW, flags, _family(flow), attributes)
                yield from self._ack(message, operation, hints)
                return
            except NetlinkError as exc:
                if exc.errno != errno.EAGAIN or attempt:
                    raise

    def _op_delete(self, key: Flow | Tuple) -> Call[None]:
        message = request(C.CT_DELETE, 0, key.family, lookup_attributes(key))
        yield from self._ack(message, "conntrack delete", {errno.ENOENT: "no such flow"})

    def _op_delete_many(
        self,
        criteria: Filter | Callable[[Flow], bool] | None,
        also: Callable[[Flow], bool] | None = None,
        collect: list[Flow] | None = None,
    ) -> Call[int]:
        flt = criteria if isinstance(criteria, Filter) else Filter()
        predicate = criteria if callable(criteria) and not isinstance(criteria, Filter) else None
        checks = [check for check in (predicate, also) if check is not None]

        def accept(flow: Flow) -> bool:
            return all(check(flow) for check in checks)

        plan = None if flt.is_empty else self._flush_plan(flt)
        if plan is None:
            flows = yield from gather(self._op_dump(flt, None, None, "conntrack", False))
            flows = [flow for flow in flows if accept(flow)] if checks else flows
            exact = False
        else:
            flows, exact = yield from self._selected(flt, accept, *plan)
        if collect is not None:
            collect += flows
        if not exact:
            return (yield from self._delete_flows(flows))
        if flows:
            family, attributes = plan  # type: ignore[misc]
            flush = request(C.CT_DELETE, 0, family, attributes, version=C.NFNETLINK_V1)
            yield from self._ack(flush, "conntrack flush")
        return len(flows)

    def _flush_plan(self, flt: Filter) -> tuple[int, bytes] | None:
        """The family and kernel attributes of a flush that could delete ``flt``'s flows.

        None when the kernel cannot scope a flush that way (CTA_FILTER, 5.8,
        scopes it to one family; criteria it would ignore must not be sent).
        """
        family = flt.effective_family
        parts = self.kernel_filters & (_flush_parts(kernel_release()) | KernelFilter.TUPLE)
        if not family or KernelFilter.TUPLE not in self.kernel_filters:
            return None
        attributes, used = flt.merged(family=family).kernel_attributes(parts)
        return (family, attributes) if used else None

    def _selected(
        self, flt: Filter, accept: Callable[[Flow], bool], family: int, attributes: bytes
    ) -> Call[tuple[list[Flow], bool]]:
        """The flows a dump with ``attributes`` selects that pass the checks.

        The second value says whether the kernel selected exactly those (every
        flow it returned passed): then a flush with the same attributes deletes
        them in the kernel, with no request per flow.
        """
        selected = 0
        kept: list[Flow] = []

        def pick(items: list[Flow], _others: list[Message]) -> list[Flow]:
            nonlocal selected
            selected += len(items)
            kept.extend(flow for flow in items if flt.matches(flow) and accept(flow))
            return []

        message = request(C.CT_GET, 0, family, attributes)
        yield from gather(self._dump(message, "conntrack dump", _DUMP_HINTS, pick))
        return kept, len(kept) == selected

    def _delete_flows(self, flows: list[Flow]) -> Call[int]:
        deleted = 0
        batch: list[Message] = []
        size = 0
        for flow in itertools.chain(flows, [None]):
            if flow is not None:
                message = request(C.CT_DELETE, 0, flow.family, lookup_attributes(flow))
                batch.append(message)
                size += len(message.payload) + NLMSGHDR.size
            if batch and (flow is None or size >= BATCH_BYTES):
                deleted += yield from self._send_batch(batch, "conntrack delete")
                batch = []
                size = 0
        return deleted

    def _send_batch(self, batch: list[Message], operation: str) -> Call[int]:
        """Send requests in one datagram, ACK asked only of the last; count successes.

        The kernel answers the others only when they fail. ENOENT (the flow
        is gone already) is tolerated; any other failure is raised after
        the batch.
        """
        batch[-1].flags |= NLM_F_ACK
        channel = self._acquire()
        failures = 0
        first_error: NetlinkError | None = None
        try:
            last = channel.send(batch)
            for _seq, code, text in (yield from channel.errors_until(last)):
                failures += 1
                if code != errno.ENOENT and first_error is None:
                    first_error = kernel_error(code, operation, text)
        except BaseException:
            channel.close()
            raise
        self._release(channel)
        if first_error is not None:
            raise first_error
        return len(batch) - failures

    def _op_flush(
        self,
        family: int | None,
        mark: int | None,
        mark_mask: int | None,
        zone: int | None,
        status: int | None,
        status_mask: int | None,
    ) -> Call[None]:
        flt = Filter(family=family or 0, mark=mark, mark_mask=mark_mask, zone=zone,
                     status=status, status_mask=status_mask)  # fmt: skip
        attributes, _ = flt.kernel_attributes(_flush_parts(kernel_release()))
        wanted, _ = flt.kernel_attributes(KernelFilter.all())
        if attributes != wanted:
            yield from self._op_delete_many(flt)
            return
        message = request(C.CT_DELETE, 0, family or 0, attributes, version=C.NFNETLINK_V1)
        yield from self._ack(message, "conntrack flush")

    def _op_stats(self) -> Call[GlobalStats]:
        reply: Message = yield from self._get(request(C.CT_GET_STATS, 0, 0), "conntrack stats")
        return decode_global_stats(reply)

    def _op_cpu_stats(self, mtype: int, names: dict[int, str]) -> Call[list[CPUStats]]:
        def pick(_items: list[Any], others: list[Message]) -> list[CPUStats]:
            return [decode_cpu_stats(other, names) for other in others]

        message = request(mtype, 0, 0)
        return (yield from gather(self._dump(message, "conntrack statistics", None, pick)))

    # -- expectations ------------------------------------------------------------------------

    def _op_expectations(self, family: int) -> Stream[Expectation]:
        return self._dump(request(C.EXP_GET, 0, family), "expectation dump")

    def _op_get_expectation(self, key: Expectation | Tuple, zone: int | None) -> Call[Expectation]:
        family = key.family if isinstance(key, Tuple) else _expectation_family(key)
        message = request(C.EXP_GET, 0, family, expectation_key(key, zone))
        expectation: Expectation = yield from self._get(
            message, "expectation get", {errno.ENOENT: "no such expectation"}
        )
        return expectation

    def _op_create_expectation(self, expectation: Expectation) -> Call[None]:
        family = _expectation_family(expectation)
        message = request(C.EXP_NEW, NLM_F_CREATE | NLM_F_EXCL, family,
                          encode_expectation(expectation))  # fmt: skip
        hints = {
            errno.ENOENT: "master flow not found",
            errno.EOPNOTSUPP: "the master flow needs a helper (and the helper must exist)",
        }
        for attempt in range(2):
            try:
                yield from self._ack(message, "expectation create", hints)
                return
            except NetlinkError as exc:
                if exc.errno != errno.EAGAIN or attempt:
                    raise

    def _op_delete_expectation(self, key: Expectation | Tuple) -> Call[None]:
        family = key.family if isinstance(key, Tuple) else _expectation_family(key)
        message = request(C.EXP_DELETE, 0, family, expectation_key(key))
        yield from self._ack(message, "expectation delete", {errno.ENOENT: "no such expectation"})

    def _op_flush_expectations(self) -> Call[None]:
        yield from self._ack(request(C.EXP_DELETE, 0, 0), "expectation flush")


class Conntrack(ClientCore):
    """A client of the kernel's connection tracking table (ctnetlink).

    Use it as a context manager; it needs CAP_NET_ADMIN in the network
    namespace it was created in.

    Parameters:
        prefetch: read dumps ahead in a thread, so that the kernel builds
            the next datagrams while this one is decoded (see :class:`_Prefetch`).
        others: see :class:`ClientCore`.
    """

    def __init__(self, *, prefetch: bool = True, **others: Any) -> None:
        super().__init__(**others)
        self.prefetch = prefetch

    def __enter__(self) -> Conntrack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- running the shared operations with blocking reads ----------------------------------

    def _read(self, channel: Exchange, prefetching: list[Exchange]) -> bytes:
        if self.prefetch and channel.dumping and channel.prefetch():
            prefetching.append(channel)
        return channel.recv()

    def _call(self, call: Call[T]) -> T:
        prefetching: list[Exchange] = []
        try:
            with contextlib.closing(call):
                try:
                    channel = next(call)
                    while True:
                        channel = call.send(self._read(channel, prefetching))
                except StopIteration as stop:
                    result: T = stop.value
                    return result
        finally:
            for channel in prefetching:
                channel.stop_prefetch()

    def _stream(self, stream: Stream[T]) -> Iterator[T]:
        prefetching: list[Exchange] = []
        try:
            with contextlib.closing(stream):
                try:
                    step = next(stream)
                    while True:
                        if isinstance(step, Exchange):
                            step = stream.send(self._read(step, prefetching))
                        else:
                            yield from step
                            step = stream.send(b"")
                except StopIteration:
                    return
        finally:
            for channel in prefetching:
                channel.stop_prefetch()

    # -- flows ----------------------------------------------------------------------------

    def dump(
        self,
        criteria: Filter | int = 0,
        *,
        mark: int | None = None,
        mark_mask: int | None = None,
        status: int | None = None,
        status_mask: int | None = None,
        zone: int | None = None,
        orig: Tuple | None = None,
        reply: Tuple | None = None,
        table: str = "conntrack",
        reset_counters: bool = False,
    ) -> Iterator[Flow]:
        """Stream the flows that match (all of them by default).

        Parameters:
            criteria: a :class:`Filter`, or a family (AF_INET, AF_INET6; 0: both).
            mark, mark_mask, status, status_mask, zone: more criteria (see Filter).
            orig, reply: tuples whose set fields must match exactly.
            table: ``"conntrack"``, ``"dying"`` (entries whose DESTROY event
                is pending) or ``"unconfirmed"`` (empty since Linux 5.19).
            reset_counters: zero the counters while reading them (Linux 2.6.x+;
                conntrack table only).

        Criteria the kernel supports are sent with the request (see
        :mod:`nfkit.conntrack.filters`); every entry is checked again here,
        so the result does not depend on the kernel version. A dump is not
        a snapshot: flows changing meanwhile may be missed or seen twice.

        Raises (while iterating):
            NetlinkPermissionError: without CAP_NET_ADMIN.
            ValueError: unknown table, or ``reset_counters`` with another table.
        """
        return self._stream(self._op_dump(criteria, orig, reply, table, reset_counters,
                                          mark=mark, mark_mask=mark_mask, status=status,
                                          status_mask=status_mask, zone=zone))  # fmt: skip

    def dump_as(
        self,
        target: FlowTarget[T],
        criteria: Filter | int = 0,
        *,
        table: str = "conntrack",
        reset_counters: bool = False,
    ) -> Iterator[T]:
        """Stream the matching flows as ``target`` makes them (see :meth:`dump`).

        When no criterion needs checking here (no criteria), the messages are
        decoded straight into the target's items, without :class:`Flow`
        objects: ``nfkit conntrack -L`` formats its lines so.
        """
        return self._stream(self._op_dump(criteria, None, None, table, reset_counters, target))

    def get(self, key: Flow | Tuple, zone: int | None = None) -> Flow:
        """The flow with this original tuple (a Flow: its original, else its reply tuple).

        Raises:
            NetlinkNotFound: no such flow.
        """
        return self._call(self._op_get(key, zone))

    def create(self, flow: Flow) -> None:
        """Create ``flow`` (it needs a tuple and a timeout; the other tuple is derived).

        Raises:
            NetlinkExists: a flow with this tuple exists.
            EncodeError: no timeout, or values that do not encode.
        """
        self._call(self._op_new(flow, NLM_F_CREATE | NLM_F_EXCL, "conntrack create"))

    def update(self, flow: Flow) -> None:
        """Change the existing flow with ``flow``'s tuple: the attributes ``flow`` sets.

        ``mark_mask`` limits the mark bits changed (new = old & ~mask ^ mark),
        ``labels_mask`` the label bits. Status bits can only be added.

        Raises:
            NetlinkNotFound: no such flow.
            NetlinkBusy: a status or helper change the kernel refuses.
        """
        self._call(self._op_new(flow, 0, "conntrack update"))

    def create_or_update(self, flow: Flow) -> None:
        """Create ``flow``, or update the flow that has its tuple."""
        self._call(self._op_new(flow, NLM_F_CREATE, "conntrack create-or-update"))

    def delete(self, key: Flow | Tuple) -> None:
        """Delete one flow (by its id too when known, so a successor is spared).

        Raises:
            NetlinkNotFound: no such flow (or it was replaced).
        """
        self._call(self._op_delete(key))

    def delete_many(
        self,
        criteria: Filter | Callable[[Flow], bool] | None = None,
        *,
        also: Callable[[Flow], bool] | None = None,
        collect: list[Flow] | None = None,
    ) -> int:
        """Delete every flow that matches; return how many this call deleted.

        ``criteria`` is a :class:`Filter` (pushed into the kernel's dump as
        far as possible) or any predicate on flows; ``also`` is one more
        predicate. The matching flows are dumped first, then deleted: by one
        filtered flush when the kernel's filter selected exactly them, else
        with many CT_DELETE requests per datagram (flows that vanished
        meanwhile are not counted). ``collect`` receives the matching flows.
        """
        return self._call(self._op_delete_many(criteria, also, collect))

    def delete_flows(self, flows: Iterable[Flow]) -> int:
        """Delete flows already in hand (e.g. from :meth:`dump`), many per datagram.

        Returns how many this call deleted; flows that vanished meanwhile
        (ENOENT) are not counted.
        """
        return self._call(self._delete_flows(list(flows)))

    def flush(
        self,
        family: int | None = None,
        mark: int | None = None,
        mark_mask: int | None = None,
        zone: int | None = None,
        status: int | None = None,
        status_mask: int | None = None,
    ) -> None:
        """Delete every flow, or those of a family, mark, zone or status.

        The request is sent with nfgenmsg version 1, the only way the kernel
        honours the family (conntrack 1.4.7's ``-F -f ipv4`` flushes every
        family). A kernel that would ignore a criterion (zone before Linux
        6.8, status before 5.15, mark before 4.0) must not flush more than
        asked: there the matching flows are deleted one by one instead.
        """
        self._call(self._op_flush(family, mark, mark_mask, zone, status, status_mask))

    def count(self) -> int:
        """The number of flows in the table (CT_GET_STATS)."""
        return self.stats().entries

    def stats(self) -> GlobalStats:
        """Flows in the table and the table's maximum (``nf_conntrack_max``)."""
        return self._call(self._op_stats())

    def stats_per_cpu(self) -> list[CPUStats]:
        """Per-CPU counters (found, invalid, insert, drop, early_drop, ...)."""
        return self._call(self._op_cpu_stats(C.CT_GET_STATS_CPU, C.STATS_CPU_NAMES))

    # -- expectations ------------------------------------------------------------------------

    def expectations(self, family: int = 0) -> Iterator[Expectation]:
        """Stream the expectation table (of one family, 0: all)."""
        return self._stream(self._op_expectations(family))

    def get_expectation(self, key: Expectation | Tuple, zone: int | None = None) -> Expectation:
        """The expectation with this (expected) tuple.

        Raises:
            NetlinkNotFound: no such expectation.
        """
        return self._call(self._op_get_expectation(key, zone))

    def create_expectation(self, expectation: Expectation) -> None:
        """Create an expectation: master tuple, expected tuple and mask are needed.

        The master flow must exist and have a helper (create it with
        ``helper="ftp"``, for instance), else the kernel refuses.

        Raises:
            NetlinkNotFound: no master flow with that tuple.
            NetlinkNotSupported: the master has no helper, or the helper is unknown.
        """
        self._call(self._op_create_expectation(expectation))

    def delete_expectation(self, key: Expectation | Tuple) -> None:
        """Delete one expectation by its tuple (and id when known).

        Raises:
            NetlinkNotFound: no such expectation.
        """
        self._call(self._op_delete_expectation(key))

    def flush_expectations(self) -> None:
        """Delete every expectation."""
        self._call(self._op_flush_expectations())

    def expectation_stats_per_cpu(self) -> list[CPUStats]:
        """Per-CPU expectation counters (expect_new, expect_create, expect_delete)."""
        return self._call(self._op_cpu_stats(C.EXP_GET_STATS_CPU, C.STATS_EXP_NAMES))


_DUMP_HINTS = {errno.EINVAL: "is nf_conntrack_netlink available?"}


def _combine(
    criteria: Filter | int, orig: Tuple | None, reply: Tuple | None, **extra: Any
) -> Filter:
    flt = criteria if isinstance(criteria, Filter) else Filter(family=criteria)
    if orig is not None or reply is not None:
        extra.update(Filter.from_tuples(orig, reply).criteria())
    return flt.merged(**extra)


def _newest(used: KernelFilter) -> KernelFilter | None:
    return next((part for part in NEWEST_FIRST if part in used), None)


def _family(flow: Flow) -> int:
    family = flow.family
    if family not in (AF_INET, AF_INET6):
        raise EncodeError("a flow needs a tuple of family AF_INET or AF_INET6")
    return family


def _expectation_family(expectation: Expectation) -> int:
    for tup in (expectation.tuple, expectation.master):
        if tup is not None:
            return tup.family
    raise EncodeError("an expectation needs its tuple")


def _change_hints(flow: Flow, create: bool) -> dict[int, str]:
    """What the errors of a create/update most likely mean for this flow."""
    hints = {
        errno.EEXIST: "the flow exists (update it instead)",
        errno.ENOENT: "no such flow" if not create else "master flow not found",
        errno.EBUSY: "the kernel refuses this status or helper change "
        "(SEEN_REPLY/ASSURED cannot be cleared, the helper cannot change)",
        errno.ETIME: "the flow is expiring",
        errno.EPERM: "the flow has a fixed timeout, or " + PERMISSION_HINT,
    }
    if flow.labels is not None:
        hints[errno.ENOSPC] = LABELS_HINT
        hints[errno.EOPNOTSUPP] = "this kernel lacks conntrack labels (CONFIG_NF_CONNTRACK_LABELS)"
    if flow.helper is not None:
        hints[errno.EOPNOTSUPP] = (
            f"helper {flow.helper!r} unavailable (module nf_conntrack_{flow.helper}?)"
            if create
            else "a helper cannot be added to an existing flow"
        )
    if create and (flow.nat_src is not None or flow.nat_dst is not None):
        hints[errno.EOPNOTSUPP] = "NAT needs the nf_nat module"
    if create and flow.timeout is None:
        hints[errno.EINVAL] = "creating a flow needs a timeout"
    return hints


def kernel_release() -> tuple[int, int]:
    """The running kernel's (major, minor) version."""
    release = os.uname().release
    numbers = release.split("-", 1)[0].split(".")
    try:
        return int(numbers[0]), int(numbers[1])
    except (IndexError, ValueError):
        return (0, 0)


def _flush_parts(version: tuple[int, int]) -> KernelFilter:
    """Flush criteria a kernel honours (an ignored one would flush too much)."""
    parts = KernelFilter(0)
    if version >= (4, 0):
        parts |= KernelFilter.MARK
    if version >= (5, 15):
        parts |= KernelFilter.STATUS
    if version >= (6, 8):
        parts |= KernelFilter.ZONE
    return parts
