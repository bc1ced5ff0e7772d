"""Conntrack and expectation events from ctnetlink's multicast groups.

An :class:`EventListener` joins the groups for the event types asked for
and turns each kernel message into an :class:`~nfkit.conntrack.model.Event`.
When the kernel drops events because the socket's receive buffer was full,
the listener yields an :class:`~nfkit.conntrack.model.Overrun` in their place
and carries on; dump the table to learn what was missed.

Two kernel behaviours surprise most users:

* ``net.netfilter.nf_conntrack_events`` defaults to 2 ("auto", Linux 5.19+):
  a flow gets the event extension only if a ctnetlink listener exists when
  the flow is *created*, and current kernels count listeners of every
  network namespace (one in another namespace is enough). Flows created
  while none existed never produce an event, not even DESTROY. Start the
  listener first, then dump the table to learn the flows that came before;
  ``nf_conntrack_events=1`` in the namespace gives every flow the extension.
* DESTROY events of flows that timed out come from the conntrack garbage
  collector, often many seconds after the expiry; the flow's ``stop``
  timestamp still tells the real expiry time.
"""

from __future__ import annotations

import errno
import select
import time
from collections.abc import Iterator
from types import TracebackType

from nfkit.conntrack import const as C
from nfkit.conntrack.client import kernel_error
from nfkit.conntrack.codec import Decoder
from nfkit.conntrack.filters import Filter
from nfkit.conntrack.model import Event, EventType, Overrun
from nfkit.netlink.codec import NLMSG_ERROR, NLMSG_MIN_TYPE, parse_error
from nfkit.netlink.errors import BufferOverrun, DecodeError, NetlinkError
from nfkit.netlink.socket import (
    NETLINK_BROADCAST_ERROR,
    NETLINK_NETFILTER,
    NETLINK_NO_ENOBUFS,
    NetlinkSocket,
)

#: Every flow event type.
ALL_EVENTS = EventType.NEW | EventType.UPDATE | EventType.DESTROY
NO_EVENTS = EventType(0)

# Groups are joined by number (NETLINK_ADD_MEMBERSHIP), never by the legacy
# bind() bitmask 1 << (number - 1): mixing the two joins the wrong group
# (bitmask DESTROY 4 is group EXP_NEW).
_FLOW_GROUPS = (
    (EventType.NEW, C.NFNLGRP_CONNTRACK_NEW),
    (EventType.UPDATE, C.NFNLGRP_CONNTRACK_UPDATE),
    (EventType.DESTROY, C.NFNLGRP_CONNTRACK_DESTROY),
)
# The kernel never sends expectation updates; the group is joined anyway so
# that a mask means the same for flows and expectations.
_EXPECTATION_GROUPS = (
    (EventType.NEW, C.NFNLGRP_CONNTRACK_EXP_NEW),
    (EventType.UPDATE, C.NFNLGRP_CONNTRACK_EXP_UPDATE),
    (EventType.DESTROY, C.NFNLGRP_CONNTRACK_EXP_DESTROY),
)

#: Datagrams :meth:`EventListener.receive` takes at most in one call.
DEFAULT_BATCH = 256


def event_groups(events: EventType, expectations: EventType = NO_EVENTS) -> list[int]:
    """The multicast group numbers that deliver ``events`` and ``expectations``."""
    return [group for kind, group in _FLOW_GROUPS if kind & events] + [
        group for kind, group in _EXPECTATION_GROUPS if kind & expectations
    ]


class EventDecoder:
    """Turns event datagrams into :class:`Event` objects.

    Parsers are compiled per attribute layout (see
    :class:`nfkit.conntrack.codec.Decoder`), so after the first event of a
    kind the next ones cost one masked compare and one ``struct`` unpack.

    Parameters:
        filter: flow events whose flow it does not match are dropped
            (expectation events always pass).
    """

    def __init__(self, filter: Filter | None = None) -> None:
        self.filter = filter
        self._decoder = Decoder(events=True)

    def decode(self, data: bytes) -> list[Event]:
        """The events of one datagram.

        Raises:
            NetlinkError: the datagram holds an error message.
            DecodeError: a message is malformed or not an event.
        """
        events, others = self._decoder.decode(data)
        for msg in others:
            if msg.type == NLMSG_ERROR:
                err = parse_error(msg.payload, msg.flags)
                if err.code:
                    raise NetlinkError.from_errno(-err.code, "conntrack events", err.message)
            elif msg.type >= NLMSG_MIN_TYPE:
                raise DecodeError(f"unexpected conntrack event message type 0x{msg.type:04x}")
        if self.filter is None:
            return events
        matches = self.filter.matches
        return [e for e in events if e.flow is None or matches(e.flow)]


class EventListener:
    """A ctnetlink event socket in the current network namespace.

    Parameters:
        events: flow event types to receive (a mask of :class:`EventType`).
        expectations: expectation event types to receive (none by default).
        receive_buffer: kernel receive buffer in bytes, set with
            SO_RCVBUFFORCE on this socket (SO_RCVBUF, capped by
            ``net.core.rmem_max``, without CAP_NET_ADMIN); the kernel
            reports twice the value. 0 keeps ``net.core.rmem_default``.
        reliable: ask the kernel to redeliver instead of dropping
            (NETLINK_BROADCAST_ERROR + NETLINK_NO_ENOBUFS, Linux 2.6.31+).
            A destroyed flow whose DESTROY event found the buffer full
            waits on the dying list (``Conntrack.dump(table="dying")``)
            and is sent again until it gets through; a NEW or UPDATE that
            found it full is folded into the flow's next event (a NEW may
            thus only arrive merged into a later one: size the buffer for
            bursts all the same). No :class:`Overrun` is reported, but a
            slow reader delays the freeing of conntrack entries, and
            expectation events are never redelivered.
        filter: a client-side filter; flow events whose flow it does not
            match are dropped (expectation events always pass).
        batch: datagrams :meth:`receive` takes at most in one call.

    Raises:
        NetlinkPermissionError: CAP_NET_ADMIN is missing in this namespace.
        ValueError: no event type was asked for.

    Create the listener *before* the flows it should see, and expect the
    DESTROY events of timed-out flows late (see the module documentation)::

        with EventListener(EventType.NEW | EventType.DESTROY) as listener:
            for event in listener:
                ...
    """

    def __init__(
        self,
        events: EventType = ALL_EVENTS,
        *,
        expectations: EventType = NO_EVENTS,
        receive_buffer: int = 0,
        reliable: bool = False,
        filter: Filter | None = None,
        batch: int = DEFAULT_BATCH,
    ) -> None:
        groups = event_groups(events, expectations)
        if not groups:
            raise ValueError("no flow or expectation event type selected")
        self.events = events
        self.expectations = expectations
        self.reliable = reliable
        self.batch = max(1, batch)
        self.sock = NetlinkSocket(NETLINK_NETFILTER)
        try:
            if receive_buffer:
                self.sock.set_receive_buffer(receive_buffer)
            if reliable:
                self.sock.set_option(NETLINK_BROADCAST_ERROR)
                self.sock.set_option(NETLINK_NO_ENOBUFS)
            for group in groups:
                self._join(group)
            self.sock.set_blocking(False)
        except BaseException:
            self.sock.close()
            raise
        self.decoder = EventDecoder(filter)
        self._poll = select.poll()
        self._poll.register(self.sock.fileno(), select.POLLIN)
        self._last_read = time.time()

    def _join(self, group: int) -> None:
        try:
            self.sock.join_group(group)
        except OSError as exc:
            operation = f"join conntrack event group {group}"
            raise kernel_error(exc.errno or errno.EIO, operation) from None

    @property
    def portid(self) -> int:
        """This socket's netlink port id."""
        return self.sock.portid

    @property
    def receive_buffer(self) -> int:
        """The kernel receive buffer of this socket, as the kernel reports it."""
        return self.sock.receive_buffer

    def set_receive_buffer(self, size: int) -> int:
        """Resize the receive buffer (e.g. after an overrun); return the granted size."""
        return self.sock.set_receive_buffer(size)

    def receive(self, timeout: float | None = None) -> list[Event | Overrun]:
        """The events of every datagram already queued, waiting for the first.

        ctnetlink sends each event in a datagram of its own, so a burst of
        events arrives as many datagrams; taking up to ``batch`` of them per
        call keeps the per-event cost low.

        Parameters:
            timeout: seconds to wait for the first datagram; None waits
                forever, 0 does not wait.

        Returns:
            Events in arrival order, with an :class:`Overrun` where the
            kernel dropped some; empty when ``timeout`` expired (or every
            event was filtered out).

        Raises:
            NetlinkError: the kernel sent an error message.
            DecodeError: a message is malformed.
        """
        out: list[Event | Overrun] = []
        recv = self.sock.recv
        decode = self.decoder.decode
        deadline = None if timeout is None else time.monotonic() + timeout
        taken = 0
        while taken < self.batch:
            try:
                data = recv()
            except BlockingIOError:
                if taken or not self._wait(deadline):
                    break
                continue
            except BufferOverrun:
                out.append(Overrun(self._last_read))
            else:
                out += decode(data)
            taken += 1
        if taken:
            self._last_read = time.time()
        return out

    def _wait(self, deadline: float | None) -> bool:
        """Wait until the socket is readable; False once ``deadline`` passed."""
        if deadline is None:
            return bool(self._poll.poll())
        remaining = deadline - time.monotonic()
        # poll() takes milliseconds; round up so a short timeout still waits.
        return remaining > 0 and bool(self._poll.poll(remaining * 1000 + 1))

    def __iter__(self) -> Iterator[Event | Overrun]:
        """Yield events forever (blocking), an :class:`Overrun` where some were lost."""
        while True:
            yield from self.receive()

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    @property
    def closed(self) -> bool:
        return self.sock.closed

    def __enter__(self) -> EventListener:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
