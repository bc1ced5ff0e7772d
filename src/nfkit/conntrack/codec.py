"""ctnetlink encoding and decoding: flows, tuples, expectations, statistics.

Decoding is built for dumps of 100 000 entries. A :class:`Decoder` walks the
first message of each attribute layout with the generic schema walk
(:func:`nfkit.netlink.layout.walk`) and compiles a parser for that layout;
later messages of the layout are proved by one masked compare, read by one
``struct`` unpack and turned into objects by generated code. Both paths
build objects with the same generated constructor code, so they can only
differ in where they find the values, which the tests check on real dumps.

Malformed input raises :class:`~nfkit.netlink.DecodeError`, never an
``IndexError`` or ``struct.error``.

Encoding follows libnetfilter_conntrack where the kernel is picky (§5.4 of
the reference): CONFIRMED is always set and EXPECTED never sent in
CTA_STATUS, a create carries both tuples and a timeout, labels masks have
the labels' length.
"""

from __future__ import annotations

import dataclasses
import socket
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from nfkit.conntrack import const as C
from nfkit.conntrack.model import (
    AF_INET,
    AF_INET6,
    IPPROTO_ICMPV6,
    Counters,
    CPUStats,
    DCCPInfo,
    DCCPState,
    Event,
    EventType,
    Expectation,
    ExpectFlag,
    Flow,
    GlobalStats,
    NatRange,
    SCTPInfo,
    SCTPState,
    SeqAdj,
    Status,
    Synproxy,
    TCPFlag,
    TCPInfo,
    TCPState,
    Tuple,
)
from nfkit.netlink.codec import (
    NFGENMSG,
    NLA_F_NESTED,
    NLATTR,
    NLM_F_CREATE,
    NLM_F_DUMP_INTR,
    NLMSGHDR,
    Message,
    attr,
    attr_be16,
    attr_be32,
    attr_be64,
    attr_nested,
    attr_string,
    attr_u8,
    iter_attrs,
    nfgenmsg,
)
from nfkit.netlink.errors import DecodeError, EncodeError, TruncatedError
from nfkit.netlink.layout import (
    BYTES,
    PRESENT,
    LayoutCache,
    Leaf,
    Nest,
    Schema,
    analyse,
    compile_parser,
    walk,
)

T = TypeVar("T")

# -- schemas -----------------------------------------------------------------------

_IP = Nest(
    "ip",
    {
        C.CTA_IP_V4_SRC: Leaf("v4_src", "4s"),
        C.CTA_IP_V4_DST: Leaf("v4_dst", "4s"),
        C.CTA_IP_V6_SRC: Leaf("v6_src", "16s"),
        C.CTA_IP_V6_DST: Leaf("v6_dst", "16s"),
    },
)
_PROTO = Nest(
    "proto",
    {
        # Pinned: it decides how the others read (ports, ICMP fields, state names).
        C.CTA_PROTO_NUM: Leaf("num", "B", pinned=True),
        C.CTA_PROTO_SRC_PORT: Leaf("sport", "H"),
        C.CTA_PROTO_DST_PORT: Leaf("dport", "H"),
        C.CTA_PROTO_ICMP_ID: Leaf("icmp_id", "H"),
        C.CTA_PROTO_ICMP_TYPE: Leaf("icmp_type", "B"),
        C.CTA_PROTO_ICMP_CODE: Leaf("icmp_code", "B"),
        C.CTA_PROTO_ICMPV6_ID: Leaf("icmpv6_id", "H"),
        C.CTA_PROTO_ICMPV6_TYPE: Leaf("icmpv6_type", "B"),
        C.CTA_PROTO_ICMPV6_CODE: Leaf("icmpv6_code", "B"),
    },
)
_TUPLE: Schema = {
    C.CTA_TUPLE_IP: _IP,
    C.CTA_TUPLE_PROTO: _PROTO,
    C.CTA_TUPLE_ZONE: Leaf("zone", "H"),
}
_COUNTERS: Schema = {
    C.CTA_COUNTERS_PACKETS: Leaf("packets", "Q"),
    C.CTA_COUNTERS_BYTES: Leaf("bytes", "Q"),
    C.CTA_COUNTERS32_PACKETS: Leaf("packets32", "I"),
    C.CTA_COUNTERS32_BYTES: Leaf("bytes32", "I"),
}
_SEQADJ: Schema = {
    C.CTA_SEQADJ_CORRECTION_POS: Leaf("correction_pos", "I"),
    C.CTA_SEQADJ_OFFSET_BEFORE: Leaf("offset_before", "I"),
    C.CTA_SEQADJ_OFFSET_AFTER: Leaf("offset_after", "I"),
}
_NAT: Schema = {
    C.CTA_NAT_V4_MINIP: Leaf("v4_min", "4s"),
    C.CTA_NAT_V4_MAXIP: Leaf("v4_max", "4s"),
    C.CTA_NAT_V6_MINIP: Leaf("v6_min", "16s"),
    C.CTA_NAT_V6_MAXIP: Leaf("v6_max", "16s"),
    C.CTA_NAT_PROTO: Nest(
        "proto",
        {
            C.CTA_PROTONAT_PORT_MIN: Leaf("port_min", "H"),
            C.CTA_PROTONAT_PORT_MAX: Leaf("port_max", "H"),
        },
    ),
}
_PROTOINFO: Schema = {
    C.CTA_PROTOINFO_TCP: Nest(
        "tcp",
        {
            C.CTA_PROTOINFO_TCP_STATE: Leaf("state", "B"),
            C.CTA_PROTOINFO_TCP_WSCALE_ORIGINAL: Leaf("wscale_orig", "B"),
            C.CTA_PROTOINFO_TCP_WSCALE_REPLY: Leaf("wscale_reply", "B"),
            C.CTA_PROTOINFO_TCP_FLAGS_ORIGINAL: Leaf("flags_orig", "BB"),
            C.CTA_PROTOINFO_TCP_FLAGS_REPLY: Leaf("flags_reply", "BB"),
        },
    ),
    C.CTA_PROTOINFO_DCCP: Nest(
        "dccp",
        {
            C.CTA_PROTOINFO_DCCP_STATE: Leaf("state", "B"),
            C.CTA_PROTOINFO_DCCP_ROLE: Leaf("role", "B"),
            C.CTA_PROTOINFO_DCCP_HANDSHAKE_SEQ: Leaf("handshake_seq", "Q"),
        },
    ),
    C.CTA_PROTOINFO_SCTP: Nest(
        "sctp",
        {
            C.CTA_PROTOINFO_SCTP_STATE: Leaf("state", "B"),
            C.CTA_PROTOINFO_SCTP_VTAG_ORIGINAL: Leaf("vtag_orig", "I"),
            C.CTA_PROTOINFO_SCTP_VTAG_REPLY: Leaf("vtag_reply", "I"),
        },
    ),
}

#: The attributes of a conntrack message (pad attributes are simply not named).
FLOW_SCHEMA: Schema = {
    C.CTA_TUPLE_ORIG: Nest("orig", _TUPLE),
    C.CTA_TUPLE_REPLY: Nest("reply", _TUPLE),
    C.CTA_STATUS: Leaf("status", "I"),
    C.CTA_PROTOINFO: Nest("protoinfo", _PROTOINFO),
    C.CTA_HELP: Nest("help", {C.CTA_HELP_NAME: Leaf("name", BYTES)}),
    C.CTA_NAT_SRC: Nest("nat_src", _NAT),
    C.CTA_TIMEOUT: Leaf("timeout", "I"),
    C.CTA_MARK: Leaf("mark", "I"),
    C.CTA_COUNTERS_ORIG: Nest("counters_orig", _COUNTERS),
    C.CTA_COUNTERS_REPLY: Nest("counters_reply", _COUNTERS),
    C.CTA_USE: Leaf("use", "I"),
    C.CTA_ID: Leaf("id", "I"),
    C.CTA_NAT_DST: Nest("nat_dst", _NAT),
    C.CTA_TUPLE_MASTER: Nest("master", _TUPLE),
    C.CTA_SEQ_ADJ_ORIG: Nest("seqadj_orig", _SEQADJ),
    C.CTA_SEQ_ADJ_REPLY: Nest("seqadj_reply", _SEQADJ),
    C.CTA_ZONE: Leaf("zone", "H"),
    C.CTA_SECCTX: Nest("secctx", {C.CTA_SECCTX_NAME: Leaf("name", BYTES)}),
    C.CTA_TIMESTAMP: Nest(
        "timestamp",
        {C.CTA_TIMESTAMP_START: Leaf("start", "Q"), C.CTA_TIMESTAMP_STOP: Leaf("stop", "Q")},
    ),
    C.CTA_MARK_MASK: Leaf("mark_mask", "I"),
    C.CTA_LABELS: Leaf("labels", BYTES),
    C.CTA_LABELS_MASK: Leaf("labels_mask", BYTES),
    C.CTA_SYNPROXY: Nest(
        "synproxy",
        {
            C.CTA_SYNPROXY_ISN: Leaf("isn", "I"),
            C.CTA_SYNPROXY_ITS: Leaf("its", "I"),
            C.CTA_SYNPROXY_TSOFF: Leaf("tsoff", "I"),
        },
    ),
    C.CTA_STATUS_MASK: Leaf("status_mask", "I"),
    C.CTA_TIMESTAMP_EVENT: Leaf("event_time", "Q"),
}

#: The attributes of an expectation message.
EXPECT_SCHEMA: Schema = {
    C.CTA_EXPECT_MASTER: Nest("master", _TUPLE),
    C.CTA_EXPECT_TUPLE: Nest("tuple", _TUPLE),
    C.CTA_EXPECT_MASK: Nest("mask", _TUPLE),
    C.CTA_EXPECT_TIMEOUT: Leaf("timeout", "I"),
    C.CTA_EXPECT_ID: Leaf("id", "I"),
    C.CTA_EXPECT_HELP_NAME: Leaf("helper", BYTES),
    C.CTA_EXPECT_ZONE: Leaf("zone", "H"),
    C.CTA_EXPECT_FLAGS: Leaf("flags", "I"),
    C.CTA_EXPECT_CLASS: Leaf("klass", "I"),
    C.CTA_EXPECT_NAT: Nest(
        "nat",
        {C.CTA_EXPECT_NAT_DIR: Leaf("dir", "I"), C.CTA_EXPECT_NAT_TUPLE: Nest("tuple", _TUPLE)},
    ),
    C.CTA_EXPECT_FN: Leaf("fn", BYTES),
}

# -- value caches used by the generated code ------------------------------------------


class _Memo(dict[Any, Any]):
    """``memo[key]`` converts ``key`` once and remembers it (up to ``limit`` keys).

    A dict subclass with ``__missing__`` keeps hits at C speed: the few
    distinct addresses, status words and helper names of a table are
    converted once instead of once per entry.
    """

    def __init__(self, convert: Callable[[Any], Any], limit: int = 1 << 16) -> None:
        super().__init__()
        self.convert = convert
        self.limit = limit

    def __missing__(self, key: Any) -> Any:
        value = self.convert(key)
        if len(self) < self.limit:
            self[key] = value
        return value


def _address(raw: bytes) -> str:
    return socket.inet_ntop(AF_INET if len(raw) == 4 else AF_INET6, raw)


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _enum_or_int(enum: type[Any]) -> Callable[[int], Any]:
    """Map a number to its enum member; numbers the enum lacks stay plain ints."""
    members = enum._value2member_map_
    return lambda value: members.get(value, value)


ADDRESSES = _Memo(_address)
TEXTS = _Memo(_text, limit=4096)
STATUSES = _Memo(Status)
TCP_FLAGS = _Memo(TCPFlag)
TCP_STATES = _Memo(_enum_or_int(TCPState))
SCTP_STATES = _Memo(_enum_or_int(SCTPState))
DCCP_STATES = _Memo(_enum_or_int(DCCPState))
EXPECT_FLAGS = _Memo(ExpectFlag)

_NAMESPACE: dict[str, Any] = {
    "Flow": Flow,
    "Tuple": Tuple,
    "Counters": Counters,
    "TCPInfo": TCPInfo,
    "SCTPInfo": SCTPInfo,
    "DCCPInfo": DCCPInfo,
    "SeqAdj": SeqAdj,
    "Synproxy": Synproxy,
    "NatRange": NatRange,
    "Expectation": Expectation,
    "Event": Event,
    "EventType": EventType,
    "ADDRESSES": ADDRESSES,
    "TEXTS": TEXTS,
    "STATUSES": STATUSES,
    "TCP_FLAGS": TCP_FLAGS,
    "TCP_STATES": TCP_STATES,
    "SCTP_STATES": SCTP_STATES,
    "DCCP_STATES": DCCP_STATES,
    "EXPECT_FLAGS": EXPECT_FLAGS,
    "PID": struct.Struct("=I").unpack_from,
}

# -- constructor code generation --------------------------------------------------------

Fields = Mapping[str, Sequence[str]]


#: Memos turning numbers into enum members; ``_Source(enums=False)`` leaves the numbers.
_ENUM_MEMOS = frozenset(("STATUSES", "TCP_FLAGS", "TCP_STATES", "SCTP_STATES", "DCCP_STATES",
                         "EXPECT_FLAGS"))  # fmt: skip


#: A class and the expressions of its fields.
_ClassArgs = tuple[type[Any], dict[str, str]]


class _Source:
    """Builds constructor expressions from the values a message has.

    ``fields`` maps a leaf path to one expression per value; ``nests`` holds
    the paths of the nests present. Every decision (is the attribute there?
    32- or 64-bit counters?) is taken here, once per layout, so the generated
    code only moves values into objects. The ``*_args`` methods give the
    expressions of an object's fields ("None" for absent ones); without
    ``enums``, enum-valued numbers stay plain ints.
    """

    def __init__(self, fields: Fields, nests: Iterable[str], family: str, enums: bool = True):
        self.fields = fields
        self.nests = set(nests)
        self.family = family
        self.enums = enums

    def get(self, path: str, index: int = 0, wrap: str = "") -> str:
        exprs = self.fields.get(path)
        if exprs is None:
            return "None"
        if wrap and (self.enums or wrap not in _ENUM_MEMOS):
            return f"{wrap}[{exprs[index]}]"
        return exprs[index]

    def first(self, *paths: str, wrap: str = "", default: str = "None") -> str:
        for path in paths:
            if path in self.fields:
                return self.get(path, wrap=wrap)
        return default

    def call(self, cls: type[Any], values: Mapping[str, str]) -> str:
        """``cls(...)`` with positional arguments, defaults where ``values`` lacks one."""
        args = [values.get(f.name, repr(f.default)) for f in dataclasses.fields(cls)]
        while len(args) > 1 and args[-1] == "None":
            args.pop()
        return f"{cls.__name__}({', '.join(args)})"

    def tuple_args(self, prefix: str) -> dict[str, str] | None:
        if prefix not in self.nests:
            return None
        p = prefix + "."
        return {
            "family": self.family,
            "src": self.first(p + "ip.v4_src", p + "ip.v6_src", wrap="ADDRESSES"),
            "dst": self.first(p + "ip.v4_dst", p + "ip.v6_dst", wrap="ADDRESSES"),
            "proto": self.get(p + "proto.num"),
            "sport": self.get(p + "proto.sport"),
            "dport": self.get(p + "proto.dport"),
            "icmp_type": self.first(p + "proto.icmp_type", p + "proto.icmpv6_type"),
            "icmp_code": self.first(p + "proto.icmp_code", p + "proto.icmpv6_code"),
            "icmp_id": self.first(p + "proto.icmp_id", p + "proto.icmpv6_id"),
            "zone": self.get(p + "zone"),
        }

    def tuple(self, prefix: str) -> str:
        args = self.tuple_args(prefix)
        return "None" if args is None else self.call(Tuple, args)

    def counters_args(self, prefix: str) -> dict[str, str] | None:
        if prefix not in self.nests:
            return None
        p = prefix + "."
        return {
            "packets": self.first(p + "packets", p + "packets32", default="0"),
            "bytes": self.first(p + "bytes", p + "bytes32", default="0"),
        }

    def counters(self, prefix: str) -> str:
        args = self.counters_args(prefix)
        return "None" if args is None else self.call(Counters, args)

    def protoinfo_args(self) -> _ClassArgs | None:
        if "protoinfo.tcp" in self.nests:
            p = "protoinfo.tcp."
            return TCPInfo, {
                "state": self.get(p + "state", wrap="TCP_STATES"),
                "wscale_orig": self.get(p + "wscale_orig"),
                "wscale_reply": self.get(p + "wscale_reply"),
                "flags_orig": self.get(p + "flags_orig", 0, "TCP_FLAGS"),
                "flags_reply": self.get(p + "flags_reply", 0, "TCP_FLAGS"),
                "mask_orig": self.get(p + "flags_orig", 1, "TCP_FLAGS"),
                "mask_reply": self.get(p + "flags_reply", 1, "TCP_FLAGS"),
            }
        if "protoinfo.sctp" in self.nests:
            p = "protoinfo.sctp."
            return SCTPInfo, {
                "state": self.get(p + "state", wrap="SCTP_STATES"),
                "vtag_orig": self.get(p + "vtag_orig"),
                "vtag_reply": self.get(p + "vtag_reply"),
            }
        if "protoinfo.dccp" in self.nests:
            p = "protoinfo.dccp."
            return DCCPInfo, {
                "state": self.get(p + "state", wrap="DCCP_STATES"),
                "role": self.get(p + "role"),
                "handshake_seq": self.get(p + "handshake_seq"),
            }
        return None

    def protoinfo(self) -> str:
        info = self.protoinfo_args()
        return "None" if info is None else self.call(*info)

    def triple(self, cls: type[Any], prefix: str, names: Sequence[str]) -> str:
        if prefix not in self.nests:
            return "None"
        args = [self.first(f"{prefix}.{name}", default="0") for name in names]
        return f"{cls.__name__}({', '.join(args)})"

    def nat(self, prefix: str) -> str:
        if prefix not in self.nests:
            return "None"
        p = prefix + "."
        return self.call(
            NatRange,
            {
                "min_ip": self.first(p + "v4_min", p + "v6_min", wrap="ADDRESSES"),
                "max_ip": self.first(p + "v4_max", p + "v6_max", wrap="ADDRESSES"),
                "min_port": self.get(p + "proto.port_min"),
                "max_port": self.get(p + "proto.port_max"),
            },
        )

    def flow_args(self) -> dict[str, str]:
        timestamp = "timestamp" in self.nests
        return {
            "orig": self.tuple("orig"),
            "reply": self.tuple("reply"),
            "status": self.get("status", wrap="STATUSES"),
            "timeout": self.get("timeout"),
            "mark": self.get("mark"),
            "secctx": self.get("secctx.name", wrap="TEXTS"),
            "zone": self.get("zone"),
            "use": self.get("use"),
            "id": self.get("id"),
            "counters_orig": self.counters("counters_orig"),
            "counters_reply": self.counters("counters_reply"),
            "start": self.get("timestamp.start") if timestamp else "None",
            "stop": self.get("timestamp.stop") if timestamp else "None",
            "protoinfo": self.protoinfo(),
            "helper": self.get("help.name", wrap="TEXTS"),
            "labels": self.get("labels"),
            "master": self.tuple("master"),
            "seqadj_orig": self.triple(SeqAdj, "seqadj_orig", _SEQADJ_NAMES),
            "seqadj_reply": self.triple(SeqAdj, "seqadj_reply", _SEQADJ_NAMES),
            "synproxy": self.triple(Synproxy, "synproxy", ("isn", "its", "tsoff")),
            "event_time": self.get("event_time"),
            "mark_mask": self.get("mark_mask"),
            "labels_mask": self.get("labels_mask"),
            "status_mask": self.get("status_mask"),
            "nat_src": self.nat("nat_src"),
            "nat_dst": self.nat("nat_dst"),
        }

    def flow(self) -> str:
        return self.call(Flow, self.flow_args())

    def expectation(self) -> str:
        return self.call(
            Expectation,
            {
                "master": self.tuple("master"),
                "tuple": self.tuple("tuple"),
                "mask": self.tuple("mask"),
                "timeout": self.get("timeout"),
                "id": self.get("id"),
                "helper": self.get("helper", wrap="TEXTS"),
                "zone": self.get("zone"),
                "flags": self.get("flags", wrap="EXPECT_FLAGS"),
                "klass": self.get("klass"),
                "nat_dir": self.get("nat.dir"),
                "nat_tuple": self.tuple("nat.tuple"),
                "fn": self.get("fn", wrap="TEXTS"),
            },
        )


class FlowValues:
    """Where the values of one layout of flow messages are, for a :class:`FlowTarget`.

    Names are the model's: a :class:`Flow` field (``"timeout"``), or a field
    of its tuples, counters or protocol info (``"orig.src"``,
    ``"counters_orig.packets"``, ``"protoinfo.state"``). Enum-valued numbers
    (status, states, TCP flags) are plain ints here.

    Attributes:
        family: the layout's address family.
        protoinfo: the class of its protocol info (None: it has none).
        event: the event the layout's messages report (a :class:`Decoder`
            making events), else None.
    """

    def __init__(
        self, fields: Fields, nests: Iterable[str], family: int, event: EventType | None = None
    ) -> None:
        source = _Source(fields, nests, str(family), enums=False)
        self.family = family
        self.event = event
        self._fields = fields
        info = source.protoinfo_args()
        self.protoinfo: type[Any] | None = None if info is None else info[0]
        named: dict[str, str] = dict(source.flow_args())
        parts = [(name, source.tuple_args(name)) for name in ("orig", "reply", "master")]
        parts += [(name, source.counters_args(name)) for name in _COUNTER_NAMES]
        parts.append(("protoinfo", None if info is None else info[1]))
        for prefix, args in parts:
            named.update((f"{prefix}.{name}", expr) for name, expr in (args or {}).items())
        self._named = {name: expr for name, expr in named.items() if expr != "None"}

    def get(self, name: str) -> str | None:
        """The expression of a value (an object's: its constructor), None if absent."""
        return self._named.get(name)

    def leaf(self, path: str) -> str | None:
        """The expression of an attribute's raw value by its schema path, None if absent.

        ``"orig.ip.v4_src"`` is the address as 4 bytes (``get("orig.src")``
        is its text).
        """
        exprs = self._fields.get(path)
        return None if exprs is None else exprs[0]

    def constant(self, name: str) -> int | None:
        """The value when the layout fixes it (a pinned protocol number), else None."""
        expr = self._named.get(name, "")
        return int(expr) if expr.isdigit() else None


_COUNTER_NAMES = ("counters_orig", "counters_reply")
_SEQADJ_NAMES = ("correction_pos", "offset_before", "offset_after")

#: What a message of each type becomes: (schema, _Source method).
_KINDS: dict[int, tuple[Schema, Callable[[_Source], str]]] = {
    C.CT_NEW: (FLOW_SCHEMA, _Source.flow),
    C.CT_DELETE: (FLOW_SCHEMA, _Source.flow),
    C.EXP_NEW: (EXPECT_SCHEMA, _Source.expectation),
    C.EXP_DELETE: (EXPECT_SCHEMA, _Source.expectation),
}


def event_type(mtype: int, flags: int) -> EventType:
    """The event a ctnetlink message reports (dump entries read as UPDATE)."""
    if mtype in (C.CT_DELETE, C.EXP_DELETE):
        return EventType.DESTROY
    return EventType.NEW if flags & NLM_F_CREATE else EventType.UPDATE


def _result(expression: str, mtype: int, flags: int, events: bool) -> str:
    """The generated ``return`` statement (an object, or an Event wrapping it)."""
    return f"    return {_item(expression, mtype, flags, events)}"


def _item(expression: str, mtype: int, flags: int, events: bool) -> str:
    """The expression of the item decoded: the object, or an Event wrapping it."""
    if not events:
        return expression
    kind = f"EventType({int(event_type(mtype, flags))})"
    slot = "flow" if mtype in (C.CT_NEW, C.CT_DELETE) else "expectation"
    return f"Event({kind}, {slot}={expression}, portid=PID(data, offset + 12)[0])"


# -- the generic path --------------------------------------------------------------------

Builder = Callable[[dict[str, Any], int, bytes, int], Any]
_BUILDERS: dict[tuple[Any, ...], Builder] = {}
_MAX_BUILDERS = 1024


def _generic_builder(mtype: int, flags: int, events: bool, values: dict[str, Any]) -> Builder:
    """A compiled ``build(v, family, data, offset)`` for messages with these paths."""
    # A path's values always have the same shape (its schema leaf), so the
    # paths in arrival order identify the code.
    key = (mtype, event_type(mtype, flags) if events else None, tuple(values))
    cached = _BUILDERS.get(key)
    if cached is not None:
        return cached
    method = _KINDS[mtype][1]
    nests = {path for path, value in values.items() if value is PRESENT}
    fields = {
        path: [f"v[{path!r}][{k}]" for k in range(len(value))]
        if isinstance(value, tuple)
        else [f"v[{path!r}]"]
        for path, value in values.items()
        if path not in nests
    }
    source = _Source(fields, nests, "family")
    lines = ["def build(v, family, data, offset):", _result(method(source), mtype, flags, events)]
    scope = dict(_NAMESPACE)
    exec(compile("\n".join(lines) + "\n", "<ctnetlink builder>", "exec"), scope)
    builder: Builder = scope["build"]
    if len(_BUILDERS) >= _MAX_BUILDERS:
        _BUILDERS.clear()
    _BUILDERS[key] = builder
    return builder


_ADDRESS_SIZE: dict[int, int] = {AF_INET: 4, AF_INET6: 16}


def _address_paths(schema: Schema, version: str, prefix: str = "") -> set[str]:
    """Paths of the address leaves (``v4_*`` or ``v6_*``) of ``schema``."""
    paths = set()
    for node in schema.values():
        path = f"{prefix}{node.name}"
        if isinstance(node, Nest):
            paths |= _address_paths(node.children, version, path + ".")
        elif node.name.startswith(version):
            paths.add(path)
    return paths


#: Per family, the address paths of the other family.
_FOREIGN_ADDRESSES: dict[int, frozenset[str]] = {
    AF_INET: frozenset(_address_paths(FLOW_SCHEMA, "v6_") | _address_paths(EXPECT_SCHEMA, "v6_")),
    AF_INET6: frozenset(_address_paths(FLOW_SCHEMA, "v4_") | _address_paths(EXPECT_SCHEMA, "v4_")),
}


def _check_addresses(values: dict[str, Any], family: int) -> None:
    """Refuse addresses of the other family (they would print wrongly)."""
    foreign = _FOREIGN_ADDRESSES.get(family)
    if foreign is None:
        raise DecodeError(f"conntrack message of unknown family {family}")
    wrong = values.keys() & foreign
    if wrong:
        raise DecodeError(f"{min(wrong)}: address of the wrong family for family {family}")


def decode_message(
    mtype: int, flags: int, data: bytes, start: int, end: int, events: bool = False
) -> Any:
    """Decode one CT_NEW/CT_DELETE/EXP_NEW/EXP_DELETE message with the generic walk.

    ``data[start:end]`` is the message (header included). Returns a
    :class:`Flow` or :class:`Expectation`, or with ``events`` an
    :class:`Event` holding it.

    Raises:
        DecodeError: the message is malformed.
    """
    if mtype not in _KINDS:
        raise DecodeError(f"not a conntrack or expectation message: type 0x{mtype:04x}")
    if end - start < NLMSGHDR.size + NFGENMSG.size:
        raise TruncatedError(f"conntrack message of {end - start} bytes")
    family = data[start + NLMSGHDR.size]
    values = walk(data, start + NLMSGHDR.size + NFGENMSG.size, end, _KINDS[mtype][0])
    _check_addresses(values, family)
    return _generic_builder(mtype, flags, events, values)(values, family, data, start)


def decode_flow(payload: bytes) -> Flow:
    """Decode the payload (nfgenmsg and attributes) of a CT_NEW/CT_DELETE message."""
    data = _as_message(C.CT_NEW, payload)
    flow: Flow = decode_message(C.CT_NEW, 0, data, 0, len(data))
    return flow


def decode_expectation(payload: bytes) -> Expectation:
    """Decode the payload (nfgenmsg and attributes) of an EXP_NEW/EXP_DELETE message."""
    data = _as_message(C.EXP_NEW, payload)
    expectation: Expectation = decode_message(C.EXP_NEW, 0, data, 0, len(data))
    return expectation


def _as_message(mtype: int, payload: bytes) -> bytes:
    return NLMSGHDR.pack(16 + len(payload), mtype, 0, 0, 0) + payload


# -- the decoder ---------------------------------------------------------------------------

_NLMSG_FIXED = ((0, 8), (16, 4))  # length, type, flags; nfgenmsg (seq and pid vary)


_FLOW_TYPES = frozenset((C.CT_NEW, C.CT_DELETE))


@dataclasses.dataclass(frozen=True)
class FlowTarget(Generic[T]):
    """What a :class:`Decoder` makes of flow messages instead of :class:`Flow` objects.

    Building the item straight from a layout's values spares a Flow per
    message (a listing formats lines, say).

    Attributes:
        convert: the item of a :class:`Flow` (of an :class:`Event` when the
            decoder makes events): the reference, and what the messages of
            layouts ``compile`` declines become.
        compile: for one layout of flow messages (see :class:`FlowValues`),
            an expression building the same item as ``convert`` and the
            names it uses (none of the codec's), or None.
    """

    convert: Callable[[Any], T]
    compile: Callable[[FlowValues], tuple[str, Mapping[str, Any]] | None]


class Decoder:
    """Turns ctnetlink datagrams into :class:`Flow`/:class:`Expectation` objects.

    Parameters:
        events: produce :class:`Event` objects (type from the message type
            and flags, ``portid`` from the header) instead.
        compiled: compile parsers per layout (off: always the generic walk,
            the reference for tests).
        target: make flows (flow events, with ``events``) into what it makes of them.
    """

    def __init__(
        self, events: bool = False, compiled: bool = True, target: FlowTarget[Any] | None = None
    ) -> None:
        self.events = events
        self.compiled = compiled
        self.target = target
        self.layouts = LayoutCache()

    def decode(self, data: bytes) -> tuple[list[Any], list[Message]]:
        """Split a datagram into decoded objects and other messages.

        Other messages are errors, NLMSG_DONE, statistics and so on, in
        arrival order. A conntrack message flagged NLM_F_DUMP_INTR is decoded
        and also reported among them (with an empty payload) so dump readers
        learn that the dump was inconsistent.

        Raises:
            DecodeError: a message is malformed.
        """
        items: list[Any] = []
        append = items.append
        others: list[Message] = []
        parsers = self.layouts.parsers
        offset = 0
        total = len(data)
        while offset < total:
            entry = parsers.get(data[offset : offset + 8])
            if entry is not None:
                length, step, parse = entry
                if offset + length <= total:
                    item = parse(data, offset)
                    if item is not None:
                        append(item)
                        offset += step
                        continue
            offset = self._slow(data, offset, total, append, others)
        return items, others

    def _slow(
        self,
        data: bytes,
        offset: int,
        total: int,
        append: Callable[[Any], None],
        others: list[Message],
    ) -> int:
        if total - offset < NLMSGHDR.size:
            raise TruncatedError(f"{total - offset} stray bytes at the end of a datagram")
        length, mtype, flags, seq, pid = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size or offset + length > total:
            raise TruncatedError(
                f"netlink message at {offset} declares {length} bytes, {total - offset} available"
            )
        end = offset + length
        if mtype in _KINDS:
            item = decode_message(mtype, flags, data, offset, end, self.events)
            append(self.target.convert(item) if self.target and mtype in _FLOW_TYPES else item)
            if flags & NLM_F_DUMP_INTR:
                others.append(Message(mtype, flags, seq, pid))
            elif self.compiled:
                self._learn(mtype, flags, data, offset, end)
        else:
            others.append(Message(mtype, flags, seq, pid, data[offset + NLMSGHDR.size : end]))
        return int(offset + ((length + 3) & ~3))

    def _learn(self, mtype: int, flags: int, data: bytes, start: int, end: int) -> None:
        key = data[start : start + 8]
        if not self.layouts.wants(key):
            return
        schema, method = _KINDS[mtype]
        layout = analyse(data, start, end, schema, 20, _NLMSG_FIXED)
        if layout is None:
            self.layouts.add(key, end - start, None)
            return
        family = data[start + NLMSGHDR.size]
        expression = method(_Source(layout.fields, layout.nests, str(family)))
        namespace = _NAMESPACE
        names: Mapping[str, Any]
        expression = _item(expression, mtype, flags, self.events)
        if self.target is not None and mtype in _FLOW_TYPES:
            event = event_type(mtype, flags) if self.events else None
            made = self.target.compile(FlowValues(layout.fields, layout.nests, family, event))
            if made is None:
                expression, names = f"CONVERT({expression})", {"CONVERT": self.target.convert}
            else:
                expression, names = made
            if names.keys() & _NAMESPACE.keys():
                raise ValueError(f"a flow target redefines {sorted(names.keys() & _NAMESPACE)}")
            namespace = {**_NAMESPACE, **names}
        body = [f"    return {expression}"]
        parser = compile_parser(layout, body, namespace, "<ctnetlink layout>")
        self.layouts.add(key, layout.length, parser)


# -- statistics ------------------------------------------------------------------------------


def _u32_values(payload: bytes, names: Mapping[int, str]) -> dict[str, int]:
    values: dict[str, int] = {}
    for atype, pos, stop in iter_attrs(payload, NFGENMSG.size, len(payload)):
        if stop - pos != 4:
            raise DecodeError(f"statistics attribute {atype}: {stop - pos} bytes, expected 4")
        values[names.get(atype, f"attr{atype}")] = int.from_bytes(payload[pos:stop], "big")
    return values


def decode_cpu_stats(message: Message, names: Mapping[int, str] = C.STATS_CPU_NAMES) -> CPUStats:
    """One CT_GET_STATS_CPU (or, with the expectation names, EXP_GET_STATS_CPU) reply.

    Counters keep the kernel's attribute order; numbers without a known
    name become ``"attr<N>"``.
    """
    if len(message.payload) < NFGENMSG.size:
        raise TruncatedError("statistics message without nfgenmsg")
    _family, _version, cpu = NFGENMSG.unpack_from(message.payload)
    return CPUStats(cpu, _u32_values(message.payload, names))


def decode_global_stats(message: Message) -> GlobalStats:
    """The CT_GET_STATS reply: entries and (kernel 5.x+) the table's maximum."""
    values = _u32_values(message.payload, {1: "entries", 2: "max_entries"})
    if "entries" not in values:
        raise DecodeError("CT_GET_STATS reply without CTA_STATS_GLOBAL_ENTRIES")
    return GlobalStats(values["entries"], values.get("max_entries"))


# -- encoding ----------------------------------------------------------------------------------


def _packed_address(family: int, text: str | None, what: str) -> bytes:
    if text is None:
        raise EncodeError(f"{what} is missing")
    try:
        return socket.inet_pton(family, text)
    except (OSError, ValueError, TypeError):
        raise EncodeError(f"{what}: {text!r} is not an address of family {family}") from None


def _ip_types(family: int) -> tuple[int, int]:
    if family == AF_INET:
        return C.CTA_IP_V4_SRC, C.CTA_IP_V4_DST
    if family == AF_INET6:
        return C.CTA_IP_V6_SRC, C.CTA_IP_V6_DST
    raise EncodeError(f"tuples need family AF_INET or AF_INET6, not {family}")


def _pack_address(key: tuple[int, str]) -> bytes:
    family, text = key
    return _packed_address(family, text, "address")


PACKED_ADDRESSES = _Memo(_pack_address)

# A tuple nest as a tree: (type, [children]) for nests, (type, code, expression) for leaves.
_Tree = list[Any]


def _tuple_tree(nest_type: int, family: int, present: frozenset[str], icmpv6: bool) -> _Tree:
    src_type, dst_type = _ip_types(family)
    size = _ADDRESS_SIZE[family]
    ip = [(atype, f"{size}s", f"A[(F, t.{name})]")
          for atype, name in ((src_type, "src"), (dst_type, "dst")) if name in present]  # fmt: skip
    icmp = (
        (C.CTA_PROTO_ICMPV6_ID, C.CTA_PROTO_ICMPV6_TYPE, C.CTA_PROTO_ICMPV6_CODE)
        if icmpv6
        else (C.CTA_PROTO_ICMP_ID, C.CTA_PROTO_ICMP_TYPE, C.CTA_PROTO_ICMP_CODE)
    )
    proto = [
        (atype, code, f"t.{name}")
        for atype, code, name in (
            (C.CTA_PROTO_NUM, "B", "proto"),
            (C.CTA_PROTO_SRC_PORT, "H", "sport"),
            (C.CTA_PROTO_DST_PORT, "H", "dport"),
            (icmp[0], "H", "icmp_id"),
            (icmp[1], "B", "icmp_type"),
            (icmp[2], "B", "icmp_code"),
        )
        if name in present
    ]
    children: _Tree = []
    if ip:
        children.append((C.CTA_TUPLE_IP, ip))
    if proto:
        children.append((C.CTA_TUPLE_PROTO, proto))
    if "zone" in present:
        children.append((C.CTA_TUPLE_ZONE, "H", "t.zone"))
    return [(nest_type, children)]


def _tree_size(node: Any) -> int:
    if len(node) == 2:
        return 4 + sum((_tree_size(child) + 3) & ~3 for child in node[1])
    return 4 + struct.calcsize("!" + node[1])


def _tree_format(node: Any, codes: list[str], args: list[str]) -> None:
    """Append struct codes and argument expressions that write ``node``."""
    size = _tree_size(node)
    codes.append("4s")
    if len(node) == 2:
        args.append(repr(NLATTR.pack(size, node[0] | NLA_F_NESTED)))
        for child in node[1]:
            _tree_format(child, codes, args)
    else:
        args.append(repr(NLATTR.pack(size, node[0])))
        codes.append(node[1])
        args.append(node[2])
    if size % 4:
        codes.append(f"{4 - size % 4}x")


_TUPLE_ENCODERS: dict[tuple[Any, ...], Callable[[Tuple], bytes]] = {}
_TUPLE_FIELDS = ("src", "dst", "proto", "sport", "dport", "icmp_id", "icmp_type", "icmp_code",
                 "zone")  # fmt: skip


def encode_tuple(tup: Tuple, nest_type: int) -> bytes:
    """A CTA_TUPLE_* nest (``nest_type``) with the fields ``tup`` has set.

    The encoder of each combination of fields is compiled once (one
    ``struct.pack``), which keeps batched deletes of many flows cheap.

    Raises:
        EncodeError: family, address or a number out of range.
    """
    icmpv6 = tup.proto == IPPROTO_ICMPV6
    # Spelled out: this key is computed for every flow of a batched delete.
    key = (nest_type, tup.family, icmpv6, tup.src is None, tup.dst is None, tup.proto is None,
           tup.sport is None, tup.dport is None, tup.icmp_id is None, tup.icmp_type is None,
           tup.icmp_code is None, tup.zone is None)  # fmt: skip
    encode = _TUPLE_ENCODERS.get(key)
    if encode is None:
        present = frozenset(name for name in _TUPLE_FIELDS if getattr(tup, name) is not None)
        codes: list[str] = []
        args: list[str] = []
        for node in _tuple_tree(nest_type, tup.family, present, icmpv6):
            _tree_format(node, codes, args)
        pack = struct.Struct("!" + "".join(codes)).pack
        scope: dict[str, Any] = {"pack": pack, "A": PACKED_ADDRESSES, "F": tup.family}
        source = f"def encode(t):\n    return pack({', '.join(args)})\n"
        exec(compile(source, "<ctnetlink tuple encoder>", "exec"), scope)
        encode = scope["encode"]
        _TUPLE_ENCODERS[key] = encode
    try:
        return encode(tup)
    except struct.error as exc:
        raise EncodeError(f"tuple {tup}: {exc}") from None


def _encode_protoinfo(info: TCPInfo | SCTPInfo | DCCPInfo) -> bytes:
    children = []
    if isinstance(info, TCPInfo):
        if info.state is not None:
            children.append(attr_u8(C.CTA_PROTOINFO_TCP_STATE, info.state))
        if info.wscale_orig is not None:
            children.append(attr_u8(C.CTA_PROTOINFO_TCP_WSCALE_ORIGINAL, info.wscale_orig))
        if info.wscale_reply is not None:
            children.append(attr_u8(C.CTA_PROTOINFO_TCP_WSCALE_REPLY, info.wscale_reply))
        for atype, flags, mask in (
            (C.CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, info.flags_orig, info.mask_orig),
            (C.CTA_PROTOINFO_TCP_FLAGS_REPLY, info.flags_reply, info.mask_reply),
        ):
            if flags is not None or mask is not None:
                # Without a mask, set exactly the bits given.
                value = int(flags or 0)
                children.append(attr(atype, bytes((value, value if mask is None else int(mask)))))
        return attr_nested(C.CTA_PROTOINFO, [attr_nested(C.CTA_PROTOINFO_TCP, children)])
    if isinstance(info, SCTPInfo):
        if info.state is not None:
            children.append(attr_u8(C.CTA_PROTOINFO_SCTP_STATE, info.state))
        if info.vtag_orig is not None:
            children.append(attr_be32(C.CTA_PROTOINFO_SCTP_VTAG_ORIGINAL, info.vtag_orig))
        if info.vtag_reply is not None:
            children.append(attr_be32(C.CTA_PROTOINFO_SCTP_VTAG_REPLY, info.vtag_reply))
        return attr_nested(C.CTA_PROTOINFO, [attr_nested(C.CTA_PROTOINFO_SCTP, children)])
    if info.state is not None:
        children.append(attr_u8(C.CTA_PROTOINFO_DCCP_STATE, info.state))
    if info.role is not None:
        children.append(attr_u8(C.CTA_PROTOINFO_DCCP_ROLE, info.role))
    if info.handshake_seq is not None:
        children.append(attr_be64(C.CTA_PROTOINFO_DCCP_HANDSHAKE_SEQ, info.handshake_seq))
    return attr_nested(C.CTA_PROTOINFO, [attr_nested(C.CTA_PROTOINFO_DCCP, children)])


def _encode_nat(nest_type: int, family: int, nat: NatRange) -> bytes:
    min_type, max_type = (
        (C.CTA_NAT_V4_MINIP, C.CTA_NAT_V4_MAXIP)
        if family == AF_INET
        else (C.CTA_NAT_V6_MINIP, C.CTA_NAT_V6_MAXIP)
    )
    children = []
    if nat.min_ip is not None:
        children.append(attr(min_type, _packed_address(family, nat.min_ip, "NAT address")))
        max_ip = nat.max_ip if nat.max_ip is not None else nat.min_ip
        children.append(attr(max_type, _packed_address(family, max_ip, "NAT address")))
    if nat.min_port is not None:
        max_port = nat.max_port if nat.max_port is not None else nat.min_port
        ports = [
            attr_be16(C.CTA_PROTONAT_PORT_MIN, nat.min_port),
            attr_be16(C.CTA_PROTONAT_PORT_MAX, max_port),
        ]
        children.append(attr_nested(C.CTA_NAT_PROTO, ports))
    return attr_nested(nest_type, children)


def _seqadj(nest_type: int, seq: SeqAdj) -> bytes:
    return attr_nested(
        nest_type,
        [
            attr_be32(C.CTA_SEQADJ_CORRECTION_POS, seq.correction_pos),
            attr_be32(C.CTA_SEQADJ_OFFSET_BEFORE, seq.offset_before),
            attr_be32(C.CTA_SEQADJ_OFFSET_AFTER, seq.offset_after),
        ],
    )


def creation_tuples(flow: Flow) -> tuple[Tuple, Tuple]:
    """Both tuples of a flow to create; a missing one is the other one inverted.

    A directional zone stays with its direction (the kernel refuses a zone
    in both tuples).

    Raises:
        EncodeError: the flow has no tuple at all.
    """
    if flow.orig is not None and flow.reply is not None:
        return flow.orig, flow.reply
    if flow.orig is not None:
        return flow.orig, dataclasses.replace(flow.orig.inverted(), zone=None)
    if flow.reply is not None:
        return dataclasses.replace(flow.reply.inverted(), zone=None), flow.reply
    raise EncodeError("a flow needs its original or reply tuple")


def encode_flow(flow: Flow, create: bool) -> bytes:
    """The attributes of a CT_NEW request that creates (``create``) or updates ``flow``.

    Only attributes ``flow`` has set are sent. The status always includes
    CONFIRMED, and EXPECTED only in updates of a flow that has it: the
    kernel refuses (EBUSY) a status whose CONFIRMED or EXPECTED differs from
    the entry's, and a creation gets EXPECTED from its master tuple. NAT
    ranges and the master tuple only go into creations.

    Raises:
        EncodeError: a creation lacks its timeout, a labels mask has
            another length than the labels, or a value does not encode.
    """
    parts = []
    if create:
        if flow.timeout is None:
            raise EncodeError("creating a flow needs a timeout")
        orig, reply = creation_tuples(flow)
        parts += [encode_tuple(orig, C.CTA_TUPLE_ORIG), encode_tuple(reply, C.CTA_TUPLE_REPLY)]
    else:
        if flow.orig is None and flow.reply is None:
            raise EncodeError("a flow needs its original or reply tuple")
        if flow.orig is not None:
            parts.append(encode_tuple(flow.orig, C.CTA_TUPLE_ORIG))
        if flow.reply is not None:
            parts.append(encode_tuple(flow.reply, C.CTA_TUPLE_REPLY))
    if flow.zone is not None:
        parts.append(attr_be16(C.CTA_ZONE, flow.zone))
    if flow.status is not None:
        status = int(flow.status) | Status.CONFIRMED
        if create:
            status &= ~Status.EXPECTED
        parts.append(attr_be32(C.CTA_STATUS, status))
    if flow.timeout is not None:
        parts.append(attr_be32(C.CTA_TIMEOUT, flow.timeout))
    if flow.mark is not None:
        parts.append(attr_be32(C.CTA_MARK, flow.mark))
        if flow.mark_mask is not None:
            parts.append(attr_be32(C.CTA_MARK_MASK, flow.mark_mask))
    if flow.protoinfo is not None:
        parts.append(_encode_protoinfo(flow.protoinfo))
    if flow.helper is not None:
        parts.append(attr_nested(C.CTA_HELP, [attr_string(C.CTA_HELP_NAME, flow.helper)]))
    if flow.labels is not None:
        parts += _encode_labels(flow.labels, flow.labels_mask)
    if flow.seqadj_orig is not None:
        parts.append(_seqadj(C.CTA_SEQ_ADJ_ORIG, flow.seqadj_orig))
    if flow.seqadj_reply is not None:
        parts.append(_seqadj(C.CTA_SEQ_ADJ_REPLY, flow.seqadj_reply))
    if flow.synproxy is not None:
        s = flow.synproxy
        parts.append(
            attr_nested(
                C.CTA_SYNPROXY,
                [
                    attr_be32(C.CTA_SYNPROXY_ISN, s.isn),
                    attr_be32(C.CTA_SYNPROXY_ITS, s.its),
                    attr_be32(C.CTA_SYNPROXY_TSOFF, s.tsoff),
                ],
            )
        )
    if create:
        if flow.master is not None:
            parts.append(encode_tuple(flow.master, C.CTA_TUPLE_MASTER))
        family = flow.family
        if flow.nat_src is not None:
            parts.append(_encode_nat(C.CTA_NAT_SRC, family, flow.nat_src))
        if flow.nat_dst is not None:
            parts.append(_encode_nat(C.CTA_NAT_DST, family, flow.nat_dst))
    return b"".join(parts)


def _encode_labels(labels: bytes, mask: bytes | None) -> list[bytes]:
    if not labels or len(labels) % 4:
        raise EncodeError(f"labels must be a non-empty multiple of 4 bytes, not {len(labels)}")
    parts = [attr(C.CTA_LABELS, labels)]
    if mask is not None:
        if len(mask) != len(labels):
            raise EncodeError(
                f"the labels mask has {len(mask)} bytes, the labels {len(labels)}: "
                "the kernel wants the same length"
            )
        parts.append(attr(C.CTA_LABELS_MASK, mask))
    return parts


def lookup_attributes(key: Flow | Tuple, zone: int | None = None, with_id: bool = True) -> bytes:
    """Attributes naming one entry: a tuple, the zone, and the flow's id if known.

    A flow is looked up by its original tuple (else its reply tuple); the
    kernel compares the id when given, so a flow that was replaced by a
    new one with the same tuple is not touched.
    """
    if isinstance(key, Tuple):
        parts = [encode_tuple(key, C.CTA_TUPLE_ORIG)]
    elif key.orig is not None:
        parts = [encode_tuple(key.orig, C.CTA_TUPLE_ORIG)]
    elif key.reply is not None:
        parts = [encode_tuple(key.reply, C.CTA_TUPLE_REPLY)]
    else:
        raise EncodeError("a flow needs its original or reply tuple")
    if zone is None and isinstance(key, Flow):
        zone = key.zone
    if zone is not None:
        parts.append(attr_be16(C.CTA_ZONE, zone))
    if with_id and isinstance(key, Flow) and key.id is not None:
        parts.append(attr_be32(C.CTA_ID, key.id))
    return b"".join(parts)


def encode_expectation(exp: Expectation) -> bytes:
    """The attributes of an EXP_NEW request creating ``exp``.

    Raises:
        EncodeError: master, tuple or mask missing.
    """
    if exp.master is None or exp.tuple is None or exp.mask is None:
        raise EncodeError("an expectation needs its master tuple, tuple and mask")
    parts = [
        encode_tuple(exp.master, C.CTA_EXPECT_MASTER),
        encode_tuple(exp.tuple, C.CTA_EXPECT_TUPLE),
        encode_tuple(exp.mask, C.CTA_EXPECT_MASK),
    ]
    if exp.timeout is not None:
        parts.append(attr_be32(C.CTA_EXPECT_TIMEOUT, exp.timeout))
    if exp.helper is not None:
        parts.append(attr_string(C.CTA_EXPECT_HELP_NAME, exp.helper))
    if exp.zone is not None:
        parts.append(attr_be16(C.CTA_EXPECT_ZONE, exp.zone))
    if exp.flags is not None:
        parts.append(attr_be32(C.CTA_EXPECT_FLAGS, int(exp.flags)))
    if exp.klass is not None:
        parts.append(attr_be32(C.CTA_EXPECT_CLASS, exp.klass))
    if exp.nat_tuple is not None:
        nat = [
            attr_be32(C.CTA_EXPECT_NAT_DIR, exp.nat_dir or 0),
            encode_tuple(exp.nat_tuple, C.CTA_EXPECT_NAT_TUPLE),
        ]
        parts.append(attr_nested(C.CTA_EXPECT_NAT, nat))
    if exp.fn is not None:
        parts.append(attr_string(C.CTA_EXPECT_FN, exp.fn))
    return b"".join(parts)


def expectation_key(key: Expectation | Tuple, zone: int | None = None) -> bytes:
    """Attributes naming one expectation: its tuple, zone and id when known."""
    if isinstance(key, Tuple):
        parts = [encode_tuple(key, C.CTA_EXPECT_TUPLE)]
    elif key.tuple is not None:
        parts = [encode_tuple(key.tuple, C.CTA_EXPECT_TUPLE)]
        zone = key.zone if zone is None else zone
        if key.id is not None:
            parts.append(attr_be32(C.CTA_EXPECT_ID, key.id))
    else:
        raise EncodeError("an expectation needs its tuple")
    if zone is not None:
        parts.append(attr_be16(C.CTA_EXPECT_ZONE, zone))
    return b"".join(parts)


def request(
    mtype: int, flags: int, family: int, attributes: bytes = b"", version: int = 0
) -> Message:
    """A ctnetlink request message (``nlmsg_seq`` is set when sent)."""
    return Message(mtype, flags, payload=nfgenmsg(family, version=version) + attributes)
