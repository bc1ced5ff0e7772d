"""The text formats of ``conntrack`` 1.4.7 (libnetfilter_conntrack 1.0.9), byte for byte.

Every function here turns :mod:`nfkit.conntrack.model` objects into the
exact text conntrack-tools prints: the default line (``nfct_snprintf``),
the XML flow, ``-o save`` command lines, expectation lines and XML, per-CPU
statistics and the stderr summary prefix. A piece of a line is printed only
when the kernel sent the attribute (``None`` in the model), as the C library
tests its attribute bitmap.

Deliberate differences from 1.4.7 (see ``docs/compatibility.md``): XML names
SCTP and DCCP states from their own tables (1.4.7 uses TCP's), ``-o save``
prints SCTP verification tags as the kernel has them (1.4.7 swaps their
bytes) and a non-zero mark as ``-m`` (1.4.7 drops it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nfkit.conntrack.codec import FlowTarget, FlowValues
from nfkit.conntrack.model import (
    AF_INET,
    AF_INET6,
    IPPROTO_DCCP,
    IPPROTO_GRE,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPPROTO_UDPLITE,
    CPUStats,
    DCCPInfo,
    EventType,
    Expectation,
    ExpectFlag,
    Flow,
    SCTPInfo,
    Status,
    TCPInfo,
    Tuple,
)

PROGNAME = "conntrack"
#: The conntrack-tools release whose behaviour (and messages) nfkit reproduces.
VERSION = "1.4.7"
#: What every diagnostic and summary line on stderr starts with.
MESSAGE_PREFIX = f"{PROGNAME} v{VERSION} (conntrack-tools): "
#: ``conntrack -V``.
VERSION_LINE = f"{PROGNAME} v{VERSION} (conntrack-tools)"

L3_NAMES: dict[int, str] = {AF_INET: "ipv4", AF_INET6: "ipv6"}
L4_NAMES = {
    IPPROTO_TCP: "tcp",
    IPPROTO_UDP: "udp",
    IPPROTO_UDPLITE: "udplite",
    IPPROTO_ICMP: "icmp",
    IPPROTO_ICMPV6: "icmpv6",
    IPPROTO_SCTP: "sctp",
    IPPROTO_GRE: "gre",
    IPPROTO_DCCP: "dccp",
}
#: Protocols whose tuples carry ports (``sport=``/``dport=``).
PORT_PROTOCOLS = frozenset((IPPROTO_TCP, IPPROTO_UDP, IPPROTO_UDPLITE, IPPROTO_SCTP, IPPROTO_DCCP))

TCP_STATES = ("NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT",
              "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2")  # fmt: skip
SCTP_STATES = ("NONE", "CLOSED", "COOKIE_WAIT", "COOKIE_ECHOED", "ESTABLISHED",
               "SHUTDOWN_SENT", "SHUTDOWN_RECD", "SHUTDOWN_ACK_SENT", "HEARTBEAT_SENT",
               "HEARTBEAT_ACKED")  # fmt: skip
DCCP_STATES = ("NONE", "REQUEST", "RESPOND", "PARTOPEN", "OPEN", "CLOSEREQ", "CLOSING",
               "TIMEWAIT", "IGNORE", "INVALID")  # fmt: skip
DCCP_ROLES = ("client", "server")

# The status bits ``-o save`` names with ``-u`` (bit order), as conntrack maps them.
_SAVE_STATUS = ((Status.EXPECTED, "EXPECTED"), (Status.SEEN_REPLY, "SEEN_REPLY"),
                (Status.ASSURED, "ASSURED"), (Status.FIXED_TIMEOUT, "FIXED_TIMEOUT"))  # fmt: skip
_U64 = (1 << 64) - 1
NSEC_PER_SEC = 1_000_000_000


def message(text: str) -> str:
    """A diagnostic or summary line as conntrack writes it to stderr (with newline)."""
    return f"{MESSAGE_PREFIX}{text}\n"


def state_name(names: Sequence[str], state: int) -> str:
    """A protocol state's name; numbers past the table are NONE, as in the C library."""
    return names[state] if 0 <= state < len(names) else names[0]


def protoinfo_state(info: TCPInfo | SCTPInfo | DCCPInfo | None) -> str | None:
    """The state name of a flow's protocol info (None: no state was sent)."""
    if info is None or info.state is None:
        return None
    if isinstance(info, TCPInfo):
        return state_name(TCP_STATES, info.state)
    if isinstance(info, SCTPInfo):
        return state_name(SCTP_STATES, info.state)
    return state_name(DCCP_STATES, info.state)


# -- labels -------------------------------------------------------------------------------

#: connlabel.conf's place; ``conntrack -o labels`` and ``-l`` read it.
CONNLABEL_CONF = "/etc/xtables/connlabel.conf"
_LABEL_BITS = 1024
_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -")


class LabelMap:
    """Label names of ``connlabel.conf`` (``<bit> <name>`` lines), read as conntrack reads them.

    The first name of a bit wins, a name can be given once, names are
    letters, digits, blanks and dashes, bits go up to 1023; comments start
    with ``#``.
    """

    def __init__(self, names: dict[int, str]) -> None:
        self._names = names
        self._bits = {name: bit for bit, name in names.items()}
        #: Bits up to the highest named one have a (possibly empty) name.
        self.namecount = max(names) + 1 if names else 0

    @classmethod
    def load(cls, path: str = CONNLABEL_CONF) -> LabelMap:
        """Read ``path``.

        Raises:
            OSError: the file cannot be read.
            ValueError: it names no label (errno 0 in the C library).
        """
        names: dict[int, str] = {}
        seen: set[str] = set()
        with Path(path).open("rb") as f:
            for raw in f:
                line = raw.decode("latin-1")
                if line.startswith("#"):
                    continue
                bit, rest = _leading_number(line)
                if bit is None or bit >= _LABEL_BITS or bit in names:
                    continue
                name = rest.split("\n", 1)[0].strip(" \f\r\t\v")
                if name and set(name) <= _LABEL_CHARS and name not in seen:
                    names[bit] = name
                    seen.add(name)
        if not names:
            raise ValueError("no label names")
        return cls(names)

    def bit(self, name: str) -> int | None:
        return self._bits.get(name)

    def name(self, bit: int) -> str | None:
        """The name of ``bit``: None past the highest named bit, "" for an unnamed bit below it."""
        if bit < self.namecount:
            return self._names.get(bit, "")
        return None

    def names_of(self, labels: bytes) -> list[str]:
        """The names of the bits set in a label bitmap (unnamed bits are left out)."""
        value = int.from_bytes(labels, "little")
        found = []
        bit = 0
        while value:
            if value & 1:
                name = self.name(bit)
                if name:
                    found.append(name)
            value >>= 1
            bit += 1
        return found


def _leading_number(text: str) -> tuple[int | None, str]:
    """``strtoul(text, &end, 0)`` for the label file: the number and what follows it."""
    stripped = text.lstrip(" \t\n\v\f\r")
    sign = ""
    if stripped[:1] in "+-" and stripped:
        sign, stripped = stripped[0], stripped[1:]
    if stripped[:2].lower() == "0x" and stripped[2:3] and stripped[2] in "0123456789abcdefABCDEF":
        base, digits, body = 16, "0123456789abcdefABCDEF", stripped[2:]
    elif stripped[:1] == "0":
        base, digits, body = 8, "01234567", stripped
    else:
        base, digits, body = 10, "0123456789", stripped
    end = 0
    while end < len(body) and body[end] in digits:
        end += 1
    if end == 0:
        return None, text
    value = int(body[:end], base)
    if sign == "-":
        value = -value & 0xFFFFFFFFFFFFFFFF
    return value, body[end:]


# -- tuples ---------------------------------------------------------------------------------


def _addresses(tup: Tuple | None, src_tag: str = "src", dst_tag: str = "dst") -> str:
    if tup is None or tup.family not in L3_NAMES:
        return ""
    return f"{src_tag}={tup.src} {dst_tag}={tup.dst} "


def _l4(tup: Tuple | None) -> str:
    """The protocol part of a tuple: ports, GRE keys or ICMP type/code/id."""
    if tup is None:
        return ""
    proto = tup.proto
    if proto in PORT_PROTOCOLS:
        return f"sport={tup.sport or 0} dport={tup.dport or 0} "
    if proto == IPPROTO_GRE:
        return f"srckey={tup.sport or 0:#x} dstkey={tup.dport or 0:#x} "
    if proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        return f"type={tup.icmp_type or 0} code={tup.icmp_code or 0} id={tup.icmp_id or 0} "
    return ""


def _ctime(nanoseconds: int) -> str:
    """``ctime()`` of a kernel timestamp, without its newline (local time)."""
    return time.ctime(nanoseconds // NSEC_PER_SEC)


# -- the default line -----------------------------------------------------------------------

_EVENT_TAGS = {EventType.NEW: "    [NEW] ", EventType.UPDATE: " [UPDATE] ",
               EventType.DESTROY: "[DESTROY] "}  # fmt: skip


class FlowText:
    """The default one-line format of a flow (``nfct_snprintf``), with conntrack's ``-o`` flags.

    Parameters:
        layer3: ``-o extended``: the family column first.
        ktimestamp: ``-o ktimestamp``: ``[start=…] [stop=…]``.
        show_id: ``-o id``: the conntrack id at the end.
        labels: the label map for ``labels=`` (None: no labels column).
    """

    def __init__(
        self,
        *,
        layer3: bool = False,
        ktimestamp: bool = False,
        show_id: bool = False,
        labels: LabelMap | None = None,
    ) -> None:
        self.layer3 = layer3
        self.ktimestamp = ktimestamp
        self.show_id = show_id
        self.labels = labels
        self._compiled: dict[tuple[object, ...], Callable[[Flow, int | None], str | None]] = {}
        self._last: Callable[[Flow, int | None], str | None] = lambda flow, now: None
        self._last_event: EventType | None = None

    def line(self, flow: Flow, event: EventType | None = None, now: int | None = None) -> str:
        """The line without its newline; ``event`` adds the ``[NEW]``-style tag.

        ``now`` is the time ``delta-time`` counts to for running flows
        (default: the current time, as conntrack reads it per line).

        Lines of a common shape (protocol, protocol state, counters,
        timestamps present or not) come from a function compiled for that
        shape, one f-string for the whole line; the function of the last
        line is tried first (tables list runs of like flows). Other lines
        come from :meth:`generic_line`, which the tests hold both against.
        """
        if event is self._last_event:
            text = self._last(flow, now)
            if text is not None:
                return text
        o = flow.orig
        key = (
            event,
            None if o is None else o.proto,
            flow.protoinfo.__class__,
            flow.timeout is None,
            flow.counters_orig is None,
            flow.start is None,
        )
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._compiled[key] = self._compile(event, flow)
        self._last, self._last_event = compiled, event
        text = compiled(flow, now)
        assert text is not None  # the flow has the shape its function was compiled for
        return text

    def _compile(
        self, event: EventType | None, flow: Flow
    ) -> Callable[[Flow, int | None], str | None]:
        """A line function for flows shaped like ``flow``: None for another shape, and
        generic_line's text for flows of this shape with rare attributes."""
        o = flow.orig
        proto = None if o is None else o.proto
        if o is None or proto is None or (self.labels is not None and self.ktimestamp):
            return lambda f, now: self.generic_line(f, event, now)
        info = flow.protoinfo.__class__ if flow.protoinfo is not None else None
        text, needs = self._template(
            event, proto, info, flow.timeout is not None, flow.counters_orig is not None,
            flow.start is not None, _FLOW_VALUES.__getitem__,
            "(int(time()) if now is None else now)",
        )  # fmt: skip
        shape = [f"o.proto != {proto}", "f.protoinfo.__class__ is not INFO",
                 f"(f.timeout is None) is not {flow.timeout is None}",
                 f"(f.counters_orig is None) is not {flow.counters_orig is None}",
                 f"(f.start is None) is not {flow.start is None}"]  # fmt: skip
        rare = [f"{_FLOW_VALUES[name]} is {'None' if present else 'not None'}"
                for name, present in needs]  # fmt: skip
        rare += ["o.family not in L3", "r.family != o.family", "r.proto != o.proto"]
        source = (
            "def line(f, now):\n"
            "    o = f.orig\n"
            "    r = f.reply\n"
            f"    if o is None or {' or '.join(shape)}:\n"
            "        return None\n"
            "    status = f.status\n"
            f"    if {' or '.join(rare)}:\n"
            "        return generic(f, event, now)\n"
            "    status = status.__index__()  # IntFlag operators are slow\n"
            f"    return f{text!r}\n"
        )
        scope = {"generic": self.generic_line, "event": event, "L3": L3_NAMES,
                 "INFO": flow.protoinfo.__class__, **_line_names(info)}  # fmt: skip
        exec(compile(source, "<conntrack line format>", "exec"), scope)
        compiled: Callable[[Flow, int | None], str] = scope["line"]
        return compiled

    def _compile_layout(self, values: FlowValues) -> tuple[str, dict[str, Any]] | None:
        """:meth:`line` of the flow messages of one layout, straight from their values
        (:attr:`target`); None for layouts whose lines :meth:`line` makes generically."""
        proto = values.constant("orig.proto")
        if (
            proto is None
            or values.constant("reply.proto") != proto
            or values.family not in L3_NAMES
            or (self.labels is not None and self.ktimestamp)
        ):
            return None
        text, needs = self._template(
            None, proto, values.protoinfo, values.get("timeout") is not None,
            values.get("counters_orig") is not None, values.get("start") is not None,
            lambda name: values.get(name) or "None", "int(time())",
        )  # fmt: skip
        if any((values.get(name) is not None) is not present for name, present in needs):
            return None
        return f"f{text!r}", _line_names(values.protoinfo)

    @property
    def target(self) -> FlowTarget[str]:
        """Flows decoded straight into lines (a :class:`~nfkit.conntrack.codec.FlowTarget`)."""
        return FlowTarget(self.line, self._compile_layout)

    def _template(
        self,
        event: EventType | None,
        proto: int,
        info: type | None,
        timeout: bool,
        counters: bool,
        start: bool,
        value: Callable[[str], str],
        now: str,
    ) -> tuple[str, list[tuple[str, bool]]]:
        """The f-string of the lines of one shape, and the values it needs present (True)
        or absent (False); lines lacking one are made by generic_line.

        Parameters:
            proto, info: the protocol and the class of the protocol info (or None).
            timeout, counters, start: whether the flows have them.
            value: the expression of a value by its model name (``"orig.src"``).
            now: the expression of the current time in seconds.
        """
        needs = [("reply", True), ("status", True), ("mark", True), ("use", True),
                 ("zone", False), ("secctx", False), ("helper", False), ("stop", False),
                 ("orig.zone", False), ("reply.zone", False)]  # fmt: skip
        status = value("status")
        text = [_EVENT_TAGS[event] if event else ""]
        if self.layer3:
            text.append(f"{{L3_COLUMNS[{value('orig.family')}]}}")
        text.append(_PROTO_COLUMNS.get(proto) or f"{'unknown':<8} {proto} ")
        if timeout:
            text.append(f"{{{value('timeout')}}} ")
        if info is not None:
            needs.append(("protoinfo.state", True))
            text.append(f"{{STATES[{value('protoinfo.state')}]}}")
        text.append(_tuple_template(proto, "orig", value))
        needs.append(("counters_reply", counters))
        if counters:
            text.append(_counters_template("counters_orig", value))
        text.append(f"{{'' if {status} & 2 else '[UNREPLIED] '}}")
        text.append(_tuple_template(proto, "reply", value))
        if counters:
            text.append(_counters_template("counters_reply", value))
        text.append(
            f"{{'[HW_OFFLOAD] ' if {status} & 0x8000 else '[OFFLOAD] ' if {status} & 0x4000"
            f" else '[ASSURED] ' if {status} & 4 else ''}}mark={{{value('mark')}}} "
        )
        if start:
            text.append(f"delta-time={{({now} - {value('start')} // NS) & U64}} ")
            if self.ktimestamp:
                text.append(f"[start={{ctime({value('start')} // NS)}}] ")
        text.append(f"use={{{value('use')}}} ")
        if self.show_id:
            needs.append(("id", True))
            text.append(f"id={{{value('id')}}} ")
        if self.labels is not None:
            needs.append(("labels", False))
        return "".join(text)[:-1], needs  # conntrack drops the line's last blank

    def generic_line(
        self, flow: Flow, event: EventType | None = None, now: int | None = None
    ) -> str:
        """:meth:`line` for any flow, piece by piece as ``nfct_snprintf`` builds it."""
        o = flow.orig
        r = flow.reply
        status = -1 if flow.status is None else int(flow.status)  # IntFlag operators are slow
        text = _EVENT_TAGS[event] if event else ""
        if o is not None:
            if self.layer3:
                text += f"{L3_NAMES.get(o.family, 'unknown'):<8} {o.family} "
            if o.proto is not None:
                text += _PROTO_COLUMNS.get(o.proto) or f"{'unknown':<8} {o.proto} "
        if flow.timeout is not None:
            text += f"{flow.timeout} "
        info = flow.protoinfo
        if info is not None and info.state is not None:
            text += protoinfo_state(info) + " "  # type: ignore[operator]
        text += _tuple_text(o)
        if o is not None and o.zone is not None:
            text += f"zone-orig={o.zone} "
        counters = flow.counters_orig
        if counters is not None:
            text += f"packets={counters.packets} bytes={counters.bytes} "
        if not status & _SEEN_REPLY:  # also false without status (-1)
            text += "[UNREPLIED] "
        text += _tuple_text(r)
        if r is not None and r.zone is not None:
            text += f"zone-reply={r.zone} "
        counters = flow.counters_reply
        if counters is not None:
            text += f"packets={counters.packets} bytes={counters.bytes} "
        if status > 0:
            if status & _HW_OFFLOAD:
                text += "[HW_OFFLOAD] "
            elif status & _OFFLOAD:
                text += "[OFFLOAD] "
            elif status & _ASSURED:
                text += "[ASSURED] "
        if flow.mark is not None:
            text += f"mark={flow.mark} "
        if flow.secctx is not None:
            text += f"secctx={flow.secctx} "
        if flow.zone is not None:
            text += f"zone={flow.zone} "
        start = flow.start
        if start is not None:
            stop = flow.stop
            end = stop // NSEC_PER_SEC if stop else int(time.time()) if now is None else now
            text += f"delta-time={(end - start // NSEC_PER_SEC) & _U64} "
            if self.ktimestamp:
                text += f"[start={_ctime(start)}] "
        if self.ktimestamp and flow.stop is not None:
            text += f"[stop={_ctime(flow.stop)}] "
        if flow.helper is not None:
            text += f"helper={flow.helper} "
        if flow.use is not None:
            text += f"use={flow.use} "
        if self.show_id and flow.id is not None:
            text += f"id={flow.id} "
        if self.labels is not None and flow.labels is not None:
            names = self.labels.names_of(flow.labels)
            # conntrack overwrites the last "," (or, without names, the "=") with the blank
            text += "labels=" + ",".join(names) + " " if names else "labels "
        return text[:-1]


_PROTO_COLUMNS = {number: f"{name:<8} {number} " for number, name in L4_NAMES.items()}
_L3_COLUMNS = {family: f"{name:<8} {family} " for family, name in L3_NAMES.items()}
# "NAME " for every u8 state value, per protocol info class (names past the table: NONE)
_STATE_COLUMNS: dict[type | None, list[str]] = {
    kind: [state_name(names, value) + " " for value in range(256)]
    for kind, names in ((TCPInfo, TCP_STATES), (SCTPInfo, SCTP_STATES), (DCCPInfo, DCCP_STATES))
}


#: Where a Flow's compiled line finds the values of _template (f: the flow, o and r:
#: its tuples, status: its status as an int).
_FLOW_VALUES = {
    "reply": "r", "status": "status", "timeout": "f.timeout", "mark": "f.mark",
    "use": "f.use", "id": "f.id", "zone": "f.zone", "secctx": "f.secctx", "helper": "f.helper",
    "start": "f.start", "stop": "f.stop", "labels": "f.labels",
    "protoinfo.state": "f.protoinfo.state", "counters_reply": "f.counters_reply",
    **{f"{counters}.{name}": f"f.{counters}.{name}"
       for counters in ("counters_orig", "counters_reply") for name in ("packets", "bytes")},
    **{f"{direction}.{name}": f"{var}.{name}"
       for direction, var in (("orig", "o"), ("reply", "r"))
       for name in ("family", "src", "dst", "sport", "dport", "icmp_type", "icmp_code",
                    "icmp_id", "zone")},
}  # fmt: skip


def _line_names(info: type | None) -> dict[str, Any]:
    """The names a compiled line uses (for lines of flows with protocol info ``info``)."""
    return {"L3_COLUMNS": _L3_COLUMNS, "NS": NSEC_PER_SEC, "U64": _U64, "ctime": time.ctime,
            "time": time.time, "STATES": _STATE_COLUMNS.get(info)}  # fmt: skip


def _tuple_template(proto: int, direction: str, value: Callable[[str], str]) -> str:
    """The f-string of a tuple's addresses and protocol part (see _tuple_text)."""
    names = ("src", "dst", "sport", "dport", "icmp_type", "icmp_code", "icmp_id")
    src, dst, sport, dport, icmp_type, icmp_code, icmp_id = (
        value(f"{direction}.{name}") for name in names
    )
    text = f"src={{{src}}} dst={{{dst}}} "
    if proto in PORT_PROTOCOLS:
        return text + f"sport={{{sport} or 0}} dport={{{dport} or 0}} "
    if proto == IPPROTO_GRE:
        return text + f"srckey={{{sport} or 0:#x}} dstkey={{{dport} or 0:#x}} "
    if proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        return text + f"type={{{icmp_type} or 0}} code={{{icmp_code} or 0}} id={{{icmp_id} or 0}} "
    return text


def _counters_template(counters: str, value: Callable[[str], str]) -> str:
    return f"packets={{{value(counters + '.packets')}}} bytes={{{value(counters + '.bytes')}}} "


_SEEN_REPLY = int(Status.SEEN_REPLY)
_ASSURED = int(Status.ASSURED)
_OFFLOAD = int(Status.OFFLOAD)
_HW_OFFLOAD = int(Status.HW_OFFLOAD)


def _tuple_text(tup: Tuple | None) -> str:
    """Addresses and protocol part of one direction (``src=… dst=… sport=… dport=… ``)."""
    if tup is None:
        return ""
    proto = tup.proto
    if proto in PORT_PROTOCOLS:
        l4 = f"sport={tup.sport or 0} dport={tup.dport or 0} "
    elif proto == IPPROTO_GRE:
        l4 = f"srckey={tup.sport or 0:#x} dstkey={tup.dport or 0:#x} "
    elif proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        l4 = f"type={tup.icmp_type or 0} code={tup.icmp_code or 0} id={tup.icmp_id or 0} "
    else:
        l4 = ""
    if tup.family in L3_NAMES:
        return f"src={tup.src} dst={tup.dst} {l4}"
    return l4


# -- XML ------------------------------------------------------------------------------------

_XML_FLOW_OPEN = {None: "<flow>", EventType.NEW: '<flow type="new">',
                  EventType.UPDATE: '<flow type="update">',
                  EventType.DESTROY: '<flow type="destroy">'}  # fmt: skip


def xml_when(moment: float | None = None) -> str:
    """``<when>``: the local time of printing (``-o xml,timestamp`` with events)."""
    tm = time.localtime(moment)
    return (
        f"<when><hour>{tm.tm_hour}</hour><min>{tm.tm_min:02d}</min><sec>{tm.tm_sec:02d}</sec>"
        f"<wday>{(tm.tm_wday + 1) % 7 + 1}</wday><day>{tm.tm_mday}</day>"
        f"<month>{tm.tm_mon}</month><year>{tm.tm_year}</year></when>"
    )


def _xml_address(tup: Tuple | None, tag: str, value: str | None) -> str:
    if tup is None or tup.family not in L3_NAMES:
        return f"<{tag}></{tag}>"
    return f"<{tag}>{value}</{tag}>"


def _xml_l4(tup: Tuple | None) -> str:
    proto = tup.proto if tup is not None else None
    if tup is None or proto is None:
        return ""
    if proto in PORT_PROTOCOLS:
        return f"<sport>{tup.sport or 0}</sport><dport>{tup.dport or 0}</dport>"
    if proto == IPPROTO_GRE:
        return f"<srckey>{tup.sport or 0:#x}</srckey><dstkey>{tup.dport or 0:#x}</dstkey>"
    return ""


def _xml_direction(flow: Flow, tup: Tuple | None, direction: str, reply: bool) -> str:
    family = tup.family if tup is not None else 0
    proto = (tup.proto if tup is not None else None) or 0
    parts = [
        f'<meta direction="{direction}">',
        f'<layer3 protonum="{family}" protoname="{L3_NAMES.get(family, "unknown")}">',
        _xml_address(tup, "src", tup.src if tup is not None else None),
        _xml_address(tup, "dst", tup.dst if tup is not None else None),
        "</layer3>",
        f'<layer4 protonum="{proto}" protoname="{L4_NAMES.get(proto, "unknown")}">',
        _xml_l4(tup),
        "</layer4>",
    ]
    if tup is not None and tup.zone is not None:
        parts.append(f"<zone>{tup.zone}</zone>")
    # conntrack prints both directions' counters when the original ones are present
    if flow.counters_orig is not None:
        counters = flow.counters_reply if reply else flow.counters_orig
        packets, nbytes = (counters.packets, counters.bytes) if counters else (0, 0)
        parts.append(f"<counters><packets>{packets}</packets><bytes>{nbytes}</bytes></counters>")
    parts.append("</meta>")
    return "".join(parts)


def flow_xml(
    flow: Flow,
    event: EventType | None = None,
    *,
    ktimestamp: bool = False,
    when: bool = False,
    labels: LabelMap | None = None,
    now: int | None = None,
) -> str:
    """One ``<flow>`` element on one line, as ``conntrack -o xml`` prints it.

    Parameters:
        ktimestamp: ``-o ktimestamp``: the ``<timestamp>`` element.
        when: ``-o timestamp`` with events: the ``<when>`` element.
        labels: the label map for ``<labels>`` (None: no labels).
        now: the current time for ``<deltatime>`` of running flows.
    """
    parts = [
        _XML_FLOW_OPEN[event],
        _xml_direction(flow, flow.orig, "original", False),
        _xml_direction(flow, flow.reply, "reply", True),
    ]
    info = flow.protoinfo
    state = info.state if info is not None else None
    start, stop = flow.start, flow.stop
    status = flow.status
    independent = (
        state is not None
        or flow.timeout is not None
        or flow.mark is not None
        or flow.zone is not None
        or flow.use is not None
        or status is not None
        or flow.id is not None
        or flow.labels is not None
        or start is not None
        or stop is not None
    )
    if independent:
        parts.append('<meta direction="independent">')
    if state is not None:
        parts.append(f"<state>{protoinfo_state(info)}</state>")
    if flow.timeout is not None:
        parts.append(f"<timeout>{flow.timeout}</timeout>")
    if flow.mark is not None:
        parts.append(f"<mark>{flow.mark}</mark>")
    if labels is not None and flow.labels is not None:
        names = "".join(f"<label>{name}</label>" for name in labels.names_of(flow.labels))
        parts.append(f"<labels>{names}</labels>")
    if flow.secctx is not None:
        parts.append(f"<secctx>{flow.secctx}</secctx>")
    if flow.zone is not None:
        parts.append(f"<zone>{flow.zone}</zone>")
    if flow.use is not None:
        parts.append(f"<use>{flow.use}</use>")
    if flow.id is not None:
        parts.append(f"<id>{flow.id}</id>")
    if status is not None and status & Status.ASSURED:
        parts.append("<assured/>")
    if status is not None and not status & Status.SEEN_REPLY:
        parts.append("<unreplied/>")
    if ktimestamp and (start is not None or stop is not None):
        parts.append("<timestamp>")
        if start is not None:
            parts.append(f"<start>{start}</start>")
        if stop is not None:
            parts.append(f"<stop>{stop}</stop>")
        parts.append("</timestamp>")
    if start is not None:
        if stop is not None:
            delta = ((stop - start) & _U64) // NSEC_PER_SEC
        else:
            delta = (int(time.time()) if now is None else now) - start // NSEC_PER_SEC
        parts.append(f"<deltatime>{delta & _U64}</deltatime>")
    if independent:
        parts.append("</meta>")
    if when:
        parts.append(xml_when())
    if flow.helper is not None:
        parts.append(f"<helper>{flow.helper}</helper>")
    parts.append("</flow>")
    return "".join(parts)


XML_HEADER = '<?xml version="1.0" encoding="utf-8"?>\n'


# -- -o save --------------------------------------------------------------------------------

_SAVE_COMMANDS = {EventType.NEW: "-A ", EventType.UPDATE: "-U ", EventType.DESTROY: "-D "}


def _save_status(status: Status) -> str:
    names = [name for bit, name in _SAVE_STATUS if status & bit]
    return ",".join(names) if names else "UNSET"


def source_nat(flow: Flow) -> bool:
    """``NFCT_GOPT_IS_SNAT``: replies go to another address than the original source."""
    o, r = flow.orig, flow.reply
    if flow.status is not None and not flow.status & Status.SRC_NAT_DONE:
        return False
    if o is None or o.family not in L3_NAMES:
        return False
    return (r.dst if r is not None else None) != o.src


def destination_nat(flow: Flow) -> bool:
    """``NFCT_GOPT_IS_DNAT``: replies come from another address than the original destination."""
    o, r = flow.orig, flow.reply
    if flow.status is not None and not flow.status & Status.DST_NAT_DONE:
        return False
    if o is None or o.family not in L3_NAMES:
        return False
    return (r.src if r is not None else None) != o.dst


def _save_protocol(flow: Flow) -> str:
    o, r = flow.orig, flow.reply
    proto = o.proto if o is not None else None
    if proto is None:
        return "-p 0"
    name = L4_NAMES.get(proto)
    if name is None:
        return f"-p {proto}"
    opts = [f"-p {name}"]
    if proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        prefix = "--icmp" if proto == IPPROTO_ICMP else "--icmpv6"
        if o is not None and o.icmp_type is not None:
            opts.append(f"{prefix}-type {o.icmp_type}")
        if o is not None and o.icmp_code is not None:
            opts.append(f"{prefix}-code {o.icmp_code}")
        if o is not None and o.icmp_id is not None:
            opts.append(f"{prefix}-id {o.icmp_id}")
        return " ".join(opts)
    names = (
        ("--srckey", "--dstkey", "--reply-key-src", "--reply-key-dst")
        if proto == IPPROTO_GRE
        else ("--sport", "--dport", "--reply-port-src", "--reply-port-dst")
    )
    values = (
        o.sport if o is not None else None,
        o.dport if o is not None else None,
        r.sport if r is not None else None,
        r.dport if r is not None else None,
    )
    opts += [f"{option} {value}" for option, value in zip(names, values, strict=True)
             if value is not None]  # fmt: skip
    info = flow.protoinfo
    state = protoinfo_state(info)
    if proto == IPPROTO_TCP and isinstance(info, TCPInfo) and state is not None:
        opts.append(f"--state {state}")
    elif proto == IPPROTO_SCTP and isinstance(info, SCTPInfo):
        if state is not None:
            opts.append(f"--state {state}")
        if info.vtag_orig is not None:
            opts.append(f"--orig-vtag {info.vtag_orig}")
        if info.vtag_reply is not None:
            opts.append(f"--reply-vtag {info.vtag_reply}")
    elif proto == IPPROTO_DCCP and isinstance(info, DCCPInfo):
        if state is not None:
            opts.append(f"--state {state}")
        if info.role is not None:
            opts.append(f"--role {state_name(DCCP_ROLES, info.role)}")
    return " ".join(opts)


def flow_save(flow: Flow, event: EventType | None) -> str:
    """A flow as a conntrack command line (``-o save``), for ``conntrack -R``.

    Dumped flows and NEW events become ``-A``, UPDATE events ``-U``, DESTROY
    events and deleted flows ``-D``. A reply address that NAT changed is
    written as ``-g``/``-n`` (the NAT target) instead of ``-r``/``-q``.
    """
    parts = [_SAVE_COMMANDS[event]] if event else []
    if flow.timeout is not None:
        parts.append(f"-t {flow.timeout} ")
    if flow.status is not None:
        parts.append(f"-u {_save_status(flow.status)} ")
    if flow.mark:
        parts.append(f"-m {flow.mark} ")
    if flow.zone is not None:
        parts.append(f"-w {flow.zone} ")
    o, r = flow.orig, flow.reply
    if o is not None and o.zone is not None:
        parts.append(f"--orig-zone {o.zone} ")
    if r is not None and r.zone is not None:
        parts.append(f"--reply-zone {r.zone} ")
    if o is not None:
        parts.append(f"-s {o.src} -d {o.dst} ")
    if r is not None:
        parts.append(f"{'-g' if destination_nat(flow) else '-r'} {r.src} ")
        parts.append(f"{'-n' if source_nat(flow) else '-q'} {r.dst} ")
    parts.append(_save_protocol(flow))
    return "".join(parts).rstrip(" ")


# -- expectations ---------------------------------------------------------------------------


def _expect_flags(flags: ExpectFlag | None) -> str:
    if not flags:
        return ""
    known = ((ExpectFlag.PERMANENT, "PERMANENT"), (ExpectFlag.INACTIVE, "INACTIVE"),
             (ExpectFlag.USERSPACE, "USERSPACE"))  # fmt: skip
    names = [name for bit, name in known if flags & bit]
    return ",".join(names) + " "


def expectation_line(exp: Expectation, event: EventType | None = None) -> str:
    """An expectation as ``conntrack -L expect`` prints it (``nfexp_snprintf``)."""
    tup = exp.tuple
    parts = [_EVENT_TAGS[event]] if event else []
    if exp.timeout is not None:
        parts.append(f"{exp.timeout} ")
    parts.append(f"proto={(tup.proto if tup is not None else None) or 0} ")
    parts.append(_addresses(tup))
    parts.append(_l4(tup))
    parts.append(_addresses(exp.mask, "mask-src", "mask-dst"))
    parts.append(_l4(exp.mask))
    parts.append(_addresses(exp.master, "master-src", "master-dst"))
    parts.append(_l4(exp.master))
    if exp.zone is not None:
        parts.append(f"zone={exp.zone} ")
    parts.append(_expect_flags(exp.flags))
    if exp.klass is not None:
        parts.append(f"class={exp.klass} ")
    if exp.helper is not None:
        parts.append(f"helper={exp.helper}")
    text = "".join(parts)
    return text[:-1] if text.endswith(" ") else text


def _xml_tuple_addresses(tup: Tuple | None) -> str:
    return _xml_address(tup, "src", tup.src if tup else None) + _xml_address(
        tup, "dst", tup.dst if tup else None
    )


def expectation_xml(exp: Expectation, event: EventType | None = None, when: bool = False) -> str:
    """One expectation ``<flow>`` element, as ``conntrack -L expect -o xml`` prints it."""
    tup = exp.tuple
    family = tup.family if tup is not None else 0
    proto = (tup.proto if tup is not None else None) or 0
    parts = [
        _XML_FLOW_OPEN[event],
        f'<layer3 protonum="{family}" protoname="{L3_NAMES.get(family, "unknown")}">',
        f"<expected>{_xml_tuple_addresses(tup)}</expected>",
        f"<mask>{_xml_tuple_addresses(exp.mask)}</mask>",
        f"<master>{_xml_tuple_addresses(exp.master)}</master>",
        "</layer3>",
        f'<layer4 protonum="{proto}" protoname="{L4_NAMES.get(proto, "unknown")}">',
        f"<expected>{_xml_l4(tup)}</expected>",
        f"<mask>{_xml_l4(exp.mask)}</mask>",
        f"<master>{_xml_l4(exp.master)}</master>",
        "</layer4><meta>",
    ]
    if exp.helper is not None:
        parts.append(f"<helper-name>{exp.helper}</helper-name>")
    if exp.timeout is not None:
        parts.append(f"<timeout>{exp.timeout}</timeout>")
    if exp.klass is not None:
        parts.append(f"<class>{exp.klass}</class>")
    if exp.zone is not None:
        parts.append(f"<zone>{exp.zone}</zone>")
    if when:
        parts.append(xml_when())
    flags = exp.flags or 0
    if flags & ExpectFlag.PERMANENT:
        parts.append("<permanent/>")
    if flags & ExpectFlag.INACTIVE:
        parts.append("<inactive/>")
    if flags & ExpectFlag.USERSPACE:
        parts.append("<userspace/>")
    parts.append("</meta></flow>")
    return "".join(parts)


# -- statistics and event time --------------------------------------------------------------

# Counter names of ``-S`` by attribute number; numbers 16-19 are printed as unknown1..4.
_CPU_STAT_NUMBERS = {name: number for number, name in enumerate(
    ("searched", "found", "new", "invalid", "ignore", "delete", "delete_list", "insert",
     "insert_failed", "drop", "early_drop", "error", "search_restart", "clash_resolve",
     "chaintoolong"), start=1)}  # fmt: skip
_EXPECT_STAT_NUMBERS = {"expect_new": 1, "expect_create": 2, "expect_delete": 3}
_UNKNOWN_STATS = 4


def _stat_number(name: str, known: dict[str, int], last: int) -> tuple[int, str] | None:
    number = known.get(name)
    if number is not None:
        return number, name
    if name.startswith("attr") and name[4:].isdigit():
        number = int(name[4:])
        if last < number <= last + _UNKNOWN_STATS:
            return number, f"unknown{number - last}"
    return None


def cpu_stats_line(stats: CPUStats, expectations: bool = False) -> str:
    """One line of ``conntrack -S`` (or ``-S expect``): ``cpu=N`` and every counter sent."""
    if expectations:
        known, unknown = _EXPECT_STAT_NUMBERS, 0
    else:
        known, unknown = _CPU_STAT_NUMBERS, _UNKNOWN_STATS
    numbered = []
    for name, value in stats.values.items():
        found = _stat_number(name, known, len(known))
        if found is not None and (unknown or found[0] <= len(known)):
            numbered.append((found[0], found[1], value))
    counters = "".join(f"{name}={value} " for _number, name, value in sorted(numbered))
    return f"cpu={stats.cpu:<4}\t{counters}"


def proc_stats_lines(text: str) -> list[str]:
    """``conntrack -S`` from ``/proc/net/stat/nf_conntrack`` (its fallback): hex columns."""
    rows = text.split("\n")
    names = rows[0].split()[:64] if rows else []
    lines = []
    for cpu, row in enumerate(rows[1:]):
        if not row:
            continue
        values = [int(token, 16) & 0xFFFFFFFF for token in row.split()[:64]]
        counters = "".join(
            f"{name}={values[i] if i < len(values) else 0} " for i, name in enumerate(names)
        )
        lines.append(f"cpu={cpu:<4}\t{counters}")
    return lines


def event_time_prefix(nanoseconds: int) -> str:
    """``-E -o timestamp``: ``[<sec>.<usec>]`` and a tab before each event line."""
    seconds, rest = divmod(nanoseconds, NSEC_PER_SEC)
    return f"[{seconds:08d}.{rest // 1000:06d}]\t"


def join_lines(lines: Sequence[str]) -> str:
    """Lines as one block of text, each with its newline."""
    return "\n".join(lines) + "\n" if lines else ""
