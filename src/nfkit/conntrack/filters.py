"""Which flows to dump, delete or watch: one :class:`Filter` for all three.

A filter is pushed into the kernel as far as the running kernel supports it,
and every entry the kernel returns is checked again in Python with
:meth:`Filter.matches`, so results are the same on every kernel::

    Filter(proto=6, dport=22)                     # TCP flows to port 22
    Filter(src="198.51.100.0/24", mark=1)         # a network and a mark
    Filter(status=Status.ASSURED)                 # ASSURED set (others any)
    Filter(status=0, status_mask=Status.SEEN_REPLY)   # unreplied

What the kernel can filter during a dump (older kernels ignore the request
or refuse it, then the library asks again without it):

==================  ===============================================  =========
criterion           attributes                                       kernel
==================  ===============================================  =========
family              ``nfgenmsg.nfgen_family``                        2.6.16
mark, mark_mask     CTA_MARK, CTA_MARK_MASK                          3.4
exact tuple fields  CTA_TUPLE_ORIG/REPLY + CTA_FILTER flags          5.8
status, mask        CTA_STATUS, CTA_STATUS_MASK                      5.15
zone                CTA_ZONE                                         6.8
==================  ===============================================  =========

Exact tuple fields are addresses without a netmask, the protocol, ports of
TCP and UDP (the kernel compares ports of no other protocol) and ICMP or
ICMPv6 type, code and id. Netmasks, other protocols' ports, directional
zones, states, labels and NAT are matched in Python only.
"""

from __future__ import annotations

import enum
import ipaddress
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from nfkit.conntrack import const as C
from nfkit.conntrack.model import (
    AF_INET,
    AF_INET6,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    Flow,
    Tuple,
)
from nfkit.netlink.codec import attr, attr_be16, attr_be32, attr_nested, attr_u8

_HOST_U32 = struct.Struct("=I")


class KernelFilter(enum.Flag):
    """Parts of a dump request the kernel may filter on, in the order kernels got them."""

    MARK = enum.auto()  # Linux 3.4
    TUPLE = enum.auto()  # Linux 5.8 (CTA_FILTER)
    STATUS = enum.auto()  # Linux 5.15
    ZONE = enum.auto()  # Linux 6.8

    @classmethod
    def all(cls) -> KernelFilter:
        return cls.MARK | cls.TUPLE | cls.STATUS | cls.ZONE


#: Kernel parts from the newest to the oldest: the order in which a refused
#: request sheds them.
NEWEST_FIRST = (KernelFilter.ZONE, KernelFilter.STATUS, KernelFilter.TUPLE, KernelFilter.MARK)


@dataclass(frozen=True, slots=True)
class NatMatch:
    """A NAT criterion: the flow was translated, optionally to this address/port.

    Source NAT shows as a reply destination different from the original
    source; ``addr``/``port`` then compare with the reply destination.
    Destination NAT likewise with the reply source.
    """

    addr: str | None = None
    port: int | None = None


def _normal_address(text: str) -> tuple[int, str]:
    """``(family, text)`` in the kernel's (inet_ntop) spelling."""
    for family in (AF_INET, AF_INET6):
        try:
            return family, socket.inet_ntop(family, socket.inet_pton(family, text))
        except OSError:
            continue
    raise ValueError(f"{text!r} is not an IPv4 or IPv6 address")


@dataclass(frozen=True, slots=True)
class _Address:
    """An address criterion: exact (``network`` None) or a network."""

    family: int
    text: str
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None

    @classmethod
    def parse(cls, spec: str) -> _Address:
        if "/" not in spec:
            return cls(*_normal_address(spec), None)
        network = ipaddress.ip_network(spec, strict=False)
        family = AF_INET if network.version == 4 else AF_INET6
        if network.prefixlen == network.max_prefixlen:
            return cls(family, _normal_address(str(network.network_address))[1], None)
        return cls(family, str(network), network)

    def matches(self, text: str | None) -> bool:
        if text is None:
            return False
        if self.network is None:
            return text == self.text
        return _in_network(text, self.network)


_PARSED: dict[str, ipaddress.IPv4Address | ipaddress.IPv6Address] = {}


def _in_network(text: str, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    address = _PARSED.get(text)
    if address is None:
        address = ipaddress.ip_address(text)
        if len(_PARSED) < 65536:
            _PARSED[text] = address
    return address in network


@dataclass(frozen=True)
class Filter:
    """Criteria a flow must all meet; a field left at None matches anything.

    Each parameter says from which Linux version the kernel filters a dump
    on it (CTA_FILTER: 5.8); the others are matched in Python only.

    Parameters:
        family: AF_INET or AF_INET6 (0: both). Kernel: always.
        proto: L4 protocol number of the original tuple. Kernel: 5.8.
        src, dst: original source/destination address, or a network
            (``"192.0.2.0/24"``). Kernel: 5.8, addresses without netmask.
        sport, dport: original ports (also GRE keys). Kernel: 5.8, TCP and UDP.
        icmp_type, icmp_code, icmp_id: ICMP or ICMPv6 fields of the original
            tuple. Kernel: 5.8 (with ``proto`` 1 or 58).
        orig_zone, reply_zone: directional zones. Python only.
        reply_src, reply_dst, reply_sport, reply_dport: the reply tuple.
            Kernel: 5.8, as for the original tuple.
        mark, mark_mask: ``flow.mark & mark_mask == mark`` (mask default all
            ones). Kernel: 3.4.
        status, status_mask: ``flow.status & status_mask == status`` (mask
            default ``status``: the bits given are set). Kernel: 5.15.
        zone: the flow's zone (either direction, as the kernel compares).
            Kernel: 6.8 (older kernels ignore it).
        state: the TCP, SCTP or DCCP state (with ``proto`` to say which).
            Python only.
        labels: label bit numbers that must all be set. Python only.
        src_nat, dst_nat: ``True`` or a :class:`NatMatch`: the flow was
            source/destination NATed (both given: both). Python only.
        any_nat: source or destination NATed. Python only.
        id: the conntrack id. Python only.
    """

    family: int = 0
    proto: int | None = None
    src: str | None = None
    dst: str | None = None
    sport: int | None = None
    dport: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    icmp_id: int | None = None
    orig_zone: int | None = None
    reply_src: str | None = None
    reply_dst: str | None = None
    reply_sport: int | None = None
    reply_dport: int | None = None
    reply_zone: int | None = None
    mark: int | None = None
    mark_mask: int | None = None
    status: int | None = None
    status_mask: int | None = None
    zone: int | None = None
    state: int | None = None
    labels: frozenset[int] | None = None
    src_nat: NatMatch | bool | None = None
    dst_nat: NatMatch | bool | None = None
    any_nat: NatMatch | bool | None = None
    id: int | None = None
    _addresses: dict[str, _Address] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _match: Callable[[Flow], bool] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.labels is not None and not isinstance(self.labels, frozenset):
            object.__setattr__(self, "labels", frozenset(self.labels))
        if self.mark_mask is not None and self.mark is None:
            raise ValueError("mark_mask needs a mark")
        if self.status_mask is not None and self.status is None:
            raise ValueError("status_mask needs a status")
        families = set()
        for name in ("src", "dst", "reply_src", "reply_dst"):
            spec = getattr(self, name)
            if spec is not None:
                address = _Address.parse(spec)
                self._addresses[name] = address
                families.add(address.family)
        for nat in (self.src_nat, self.dst_nat, self.any_nat):
            if isinstance(nat, NatMatch) and nat.addr is not None:
                families.add(_normal_address(nat.addr)[0])
        if self.family:
            families.add(self.family)
        if len(families) > 1:
            raise ValueError("the filter mixes IPv4 and IPv6")

    @classmethod
    def from_tuples(
        cls, orig: Tuple | None = None, reply: Tuple | None = None, **others: Any
    ) -> Filter:
        """A filter on the fields ``orig``/``reply`` have set (and any other criteria)."""
        if orig is not None:
            others.setdefault("family", orig.family)
            for name in ("proto", "src", "dst", "sport", "dport", "icmp_type", "icmp_code",
                         "icmp_id"):  # fmt: skip
                if getattr(orig, name) is not None:
                    others[name] = getattr(orig, name)
            if orig.zone is not None:
                others["orig_zone"] = orig.zone
        if reply is not None:
            others.setdefault("family", reply.family)
            if reply.proto is not None:
                others.setdefault("proto", reply.proto)
            for name in ("src", "dst", "sport", "dport", "zone"):
                if getattr(reply, name) is not None:
                    others["reply_" + name] = getattr(reply, name)
        return cls(**others)

    def criteria(self) -> dict[str, Any]:
        """The criteria this filter sets, as keyword arguments."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.init and getattr(self, f.name) is not None and (f.name != "family" or self.family)
        }

    def merged(self, **criteria: Any) -> Filter:
        """This filter with more criteria (those given as None are ignored)."""
        values = self.criteria()
        values.update({k: v for k, v in criteria.items() if v is not None})
        return Filter(**values)

    @property
    def effective_family(self) -> int:
        """The family, or the one the addresses imply (0: any)."""
        if self.family:
            return self.family
        for address in self._addresses.values():
            return address.family
        return 0

    # -- client side ------------------------------------------------------------

    def matches(self, flow: Flow) -> bool:
        """Whether ``flow`` meets every criterion (the client-side check).

        A flow that lacks an attribute a criterion needs (an event without
        counters) does not match; a missing mark counts as 0, because the
        kernel leaves zero marks out of events.
        """
        match = self._match
        if match is None:
            match = _compile_match(self)
            object.__setattr__(self, "_match", match)
        return match(flow)

    def __call__(self, flow: Flow) -> bool:
        return self.matches(flow)

    @property
    def is_empty(self) -> bool:
        """True when the filter matches every flow."""
        return not _conditions(self)

    # -- kernel side --------------------------------------------------------------

    def kernel_attributes(self, parts: KernelFilter) -> tuple[bytes, KernelFilter]:
        """The dump/flush attributes for ``parts``, and the parts actually used.

        A part is only used when the filter has criteria for it that the
        kernel can evaluate (e.g. TUPLE needs a family and exact fields).
        """
        out: list[bytes] = []
        used = KernelFilter(0)
        if KernelFilter.MARK in parts and self.mark is not None:
            out.append(attr_be32(C.CTA_MARK, self.mark))
            if self.mark_mask is not None:
                out.append(attr_be32(C.CTA_MARK_MASK, self.mark_mask))
            used |= KernelFilter.MARK
        if KernelFilter.STATUS in parts and self.status is not None:
            mask = self.status if self.status_mask is None else self.status_mask
            if mask:  # the kernel refuses a zero mask (it would match all or nothing)
                out += [attr_be32(C.CTA_STATUS, self.status), attr_be32(C.CTA_STATUS_MASK, mask)]
                used |= KernelFilter.STATUS
        if KernelFilter.ZONE in parts and self.zone is not None:
            out.append(attr_be16(C.CTA_ZONE, self.zone))
            used |= KernelFilter.ZONE
        if KernelFilter.TUPLE in parts:
            tuple_attrs = self._tuple_filter()
            if tuple_attrs:
                out.append(tuple_attrs)
                used |= KernelFilter.TUPLE
        return b"".join(out), used

    def _tuple_filter(self) -> bytes:
        family = self.effective_family
        if family not in (AF_INET, AF_INET6):
            return b""  # CTA_FILTER needs a family (EOPNOTSUPP otherwise)
        orig_attrs, orig_flags = self._exact_tuple(
            family, self._addresses.get("src"), self._addresses.get("dst"),
            self.sport, self.dport, orig=True,
        )  # fmt: skip
        reply_attrs, reply_flags = self._exact_tuple(
            family, self._addresses.get("reply_src"), self._addresses.get("reply_dst"),
            self.reply_sport, self.reply_dport, orig=False,
        )  # fmt: skip
        if not orig_flags and not reply_flags:
            return b""
        flags = []
        parts = []
        if orig_flags:
            flags.append(attr(C.CTA_FILTER_ORIG_FLAGS, _HOST_U32.pack(orig_flags)))
            parts.append(attr_nested(C.CTA_TUPLE_ORIG, orig_attrs))
        if reply_flags:
            flags.append(attr(C.CTA_FILTER_REPLY_FLAGS, _HOST_U32.pack(reply_flags)))
            parts.append(attr_nested(C.CTA_TUPLE_REPLY, reply_attrs))
        return b"".join(parts) + attr_nested(C.CTA_FILTER, flags)

    def _exact_tuple(
        self,
        family: int,
        src: _Address | None,
        dst: _Address | None,
        sport: int | None,
        dport: int | None,
        orig: bool,
    ) -> tuple[list[bytes], int]:
        """CTA_TUPLE_* children and CTA_FILTER flags for the exact fields of one direction.

        The protocol and the ICMP fields belong to the original direction;
        the reply direction names the protocol only for its ports.
        """
        flags = 0
        ip = []
        src_type = C.CTA_IP_V4_SRC if family == AF_INET else C.CTA_IP_V6_SRC
        for address, atype, flag in ((src, src_type, C.FILTER_IP_SRC),
                                     (dst, src_type + 1, C.FILTER_IP_DST)):  # fmt: skip
            # The kernel's IPv6 address comparison is inverted (6.18: a dump
            # filtered on a flow's own IPv6 address does not return it), so
            # IPv6 addresses are matched in Python only.
            if address is not None and address.network is None and family == AF_INET:
                ip.append(attr(atype, socket.inet_pton(family, address.text)))
                flags |= flag
        proto: list[bytes] = []
        if self.proto is not None:
            proto.append(attr_u8(C.CTA_PROTO_NUM, self.proto))
            proto_flags = 0
            if self.proto in (IPPROTO_TCP, IPPROTO_UDP):
                if sport is not None:
                    proto.append(attr_be16(C.CTA_PROTO_SRC_PORT, sport))
                    proto_flags |= C.FILTER_PROTO_SRC_PORT
                if dport is not None:
                    proto.append(attr_be16(C.CTA_PROTO_DST_PORT, dport))
                    proto_flags |= C.FILTER_PROTO_DST_PORT
            elif orig and self.proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
                proto_flags |= self._icmp_fields(proto)
            if orig or proto_flags:
                flags |= proto_flags | C.FILTER_PROTO_NUM
        children = []
        if ip:
            children.append(attr_nested(C.CTA_TUPLE_IP, ip))
        if flags & C.FILTER_PROTO_NUM:
            children.append(attr_nested(C.CTA_TUPLE_PROTO, proto))
        return children, flags

    def _icmp_fields(self, proto: list[bytes]) -> int:
        v6 = self.proto == IPPROTO_ICMPV6
        flags = 0
        for value, atype, flag in (
            (self.icmp_type, C.CTA_PROTO_ICMPV6_TYPE if v6 else C.CTA_PROTO_ICMP_TYPE,
             C.FILTER_ICMPV6_TYPE if v6 else C.FILTER_ICMP_TYPE),
            (self.icmp_code, C.CTA_PROTO_ICMPV6_CODE if v6 else C.CTA_PROTO_ICMP_CODE,
             C.FILTER_ICMPV6_CODE if v6 else C.FILTER_ICMP_CODE),
        ):  # fmt: skip
            if value is not None:
                proto.append(attr_u8(atype, value))
                flags |= flag
        if self.icmp_id is not None:
            id_type = C.CTA_PROTO_ICMPV6_ID if v6 else C.CTA_PROTO_ICMP_ID
            proto.append(attr_be16(id_type, self.icmp_id))
            flags |= C.FILTER_ICMPV6_ID if v6 else C.FILTER_ICMP_ID
        return flags


# -- the compiled client-side predicate ------------------------------------------------


def _conditions(flt: Filter) -> list[str]:
    """Python conditions over ``f`` (the flow), ``o``/``r`` (its tuples)."""
    conds: list[str] = []
    if flt.family:
        conds.append(f"f.family == {flt.family}")
    orig = [("proto", flt.proto), ("sport", flt.sport), ("dport", flt.dport),
            ("icmp_type", flt.icmp_type), ("icmp_code", flt.icmp_code),
            ("icmp_id", flt.icmp_id), ("zone", flt.orig_zone)]  # fmt: skip
    reply = [("sport", flt.reply_sport), ("dport", flt.reply_dport), ("zone", flt.reply_zone)]
    for var, pairs, addrs in (
        ("o", orig, ("src", "dst")),
        ("r", reply, ("reply_src", "reply_dst")),
    ):
        tuple_conds = [f"{var}.{name} == {value!r}" for name, value in pairs if value is not None]
        for name in addrs:
            if name in flt._addresses:
                attribute = name.removeprefix("reply_")
                tuple_conds.append(f"ADDR[{name!r}].matches({var}.{attribute})")
        if tuple_conds:
            conds.append(f"{var} is not None and " + " and ".join(tuple_conds))
    if flt.mark is not None:
        mask = 0xFFFFFFFF if flt.mark_mask is None else flt.mark_mask
        # The kernel leaves a zero mark out of events: no mark means mark 0.
        conds.append(f"(f.mark or 0) & {mask} == {flt.mark}")
    if flt.status is not None:
        mask = flt.status if flt.status_mask is None else flt.status_mask
        conds.append(f"f.status is not None and f.status & {int(mask)} == {int(flt.status)}")
    if flt.zone is not None:
        # As the kernel's zone filter: the zone of either direction.
        conds.append(f"ZONE_IS(f, {flt.zone})")
    if flt.state is not None:
        conds.append(f"f.protoinfo is not None and f.protoinfo.state == {flt.state}")
    if flt.labels:
        wanted = sum(1 << bit for bit in flt.labels)
        conds.append(f"LABELS(f) & {wanted} == {wanted}")
    if flt.id is not None:
        conds.append(f"f.id == {flt.id}")
    nat = []
    if flt.src_nat is not None:
        nat.append("SNAT(f, NATS['src_nat'])")
    if flt.dst_nat is not None:
        nat.append("DNAT(f, NATS['dst_nat'])")
    if nat:
        conds.append(" and ".join(nat))
    if flt.any_nat is not None:
        conds.append("SNAT(f, NATS['any_nat']) or DNAT(f, NATS['any_nat'])")
    return conds


def _compile_match(flt: Filter) -> Callable[[Flow], bool]:
    conds = _conditions(flt)
    body = " and ".join(f"({c})" for c in conds) or "True"
    source = f"def match(f):\n    o = f.orig\n    r = f.reply\n    return bool({body})\n"
    nats = {name: _nat_match(getattr(flt, name)) for name in ("src_nat", "dst_nat", "any_nat")}
    scope: dict[str, Any] = {
        "ADDR": flt._addresses,
        "NATS": nats,
        "SNAT": _source_nat,
        "DNAT": _destination_nat,
        "ZONE_IS": _zone_is,
        "LABELS": _label_value,
    }
    exec(compile(source, "<conntrack filter>", "exec"), scope)
    match: Callable[[Flow], bool] = scope["match"]
    return match


def _nat_match(spec: NatMatch | bool | None) -> NatMatch:
    if isinstance(spec, NatMatch):
        if spec.addr is not None:
            return NatMatch(_normal_address(spec.addr)[1], spec.port)
        return spec
    return NatMatch()


def _translated(
    before_addr: str | None,
    after_addr: str | None,
    before_port: int | None,
    after_port: int | None,
    want: NatMatch,
) -> bool:
    """Whether an address/port pair changed between the directions (as ``want`` asks)."""
    address_changed = before_addr != after_addr
    port_changed = before_port != after_port
    if want.addr is None and want.port is None:
        return address_changed or port_changed
    if want.addr is not None and not (address_changed and after_addr == want.addr):
        return False
    return want.port is None or (port_changed and after_port == want.port)


def _source_nat(flow: Flow, want: NatMatch) -> bool:
    """Source NAT: replies go to another address/port than the original source."""
    o, r = flow.orig, flow.reply
    return o is not None and r is not None and _translated(o.src, r.dst, o.sport, r.dport, want)


def _destination_nat(flow: Flow, want: NatMatch) -> bool:
    """Destination NAT: replies come from another address/port than the original destination."""
    o, r = flow.orig, flow.reply
    return o is not None and r is not None and _translated(o.dst, r.src, o.dport, r.sport, want)


def _zone_is(flow: Flow, zone: int) -> bool:
    """The kernel's zone filter: the zone of the original or of the reply direction.

    A zone for both directions comes as CTA_ZONE, a directional one inside
    its tuple; a direction without either is in the default zone 0.
    """
    if flow.zone is not None:
        return flow.zone == zone
    orig_zone = flow.orig.zone if flow.orig is not None else None
    reply_zone = flow.reply.zone if flow.reply is not None else None
    return zone in (orig_zone or 0, reply_zone or 0)


def _label_value(flow: Flow) -> int:
    return int.from_bytes(flow.labels, "little") if flow.labels else 0
