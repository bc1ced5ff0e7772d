"""The Conntrack client and its filters: request building (FakeTransport) and the real kernel.

The fake tests check what goes on the wire (flags, CONFIRMED, flush version,
no ACK on GET, batched deletes); the lab tests run every operation against
the kernel of a throwaway network namespace.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import nfkit.conntrack
from ctlab import DEFAULT_SRC_NET, enable_labels, fill_table, varied_flows, varied_table
from nfkit.conntrack import (
    Conntrack,
    Counters,
    Expectation,
    ExpectFlag,
    Filter,
    Flow,
    KernelFilter,
    NatMatch,
    SCTPInfo,
    SCTPState,
    Status,
    TCPFlag,
    TCPInfo,
    TCPState,
    Tuple,
)
from nfkit.conntrack import client as client_module
from nfkit.conntrack import const as C
from nfkit.conntrack.codec import FlowTarget, FlowValues, encode_flow
from nfkit.conntrack.model import AF_INET, AF_INET6
from nfkit.lab import Lab
from nfkit.netlink import (
    NetlinkExists,
    NetlinkNotFound,
    NetlinkNotSupported,
    NetlinkPermissionError,
)
from nfkit.netlink.codec import (
    NFGENMSG,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_MULTI,
    NLM_F_REQUEST,
    Message,
    attr_be32,
    attr_spans,
    nfgenmsg,
)
from nfkit.netlink.testing import FakeTransport, done, error

V4 = Tuple(AF_INET, "192.0.2.1", "192.0.2.2", 6, 40000, 22)

# -- a fake kernel --------------------------------------------------------------------------------


def entry(flow: Flow) -> Message:
    """A dump entry as the kernel sends it (create encoding plus an id)."""
    body = encode_flow(flow, create=True) + attr_be32(C.CTA_ID, flow.id or 1)
    return Message(C.CT_NEW, NLM_F_MULTI, payload=nfgenmsg(flow.family) + body)


def attributes(request: Message) -> dict[int, tuple[int, int]]:
    return attr_spans(request.payload, NFGENMSG.size, len(request.payload))


def header(request: Message) -> tuple[int, int, int]:
    return NFGENMSG.unpack_from(request.payload)


class FakeKernel:
    """Answers dumps with ``table`` (a few entries per datagram, as the kernel
    does) and everything else with an ACK, or the errno ``refuse`` returns."""

    def __init__(self, table: list[Flow] | None = None) -> None:
        self.table = table or []
        self.requests: list[Message] = []
        self.datagrams = 0
        self.transports: list[FakeTransport] = []
        self.refuse: Callable[[Message], int] = lambda request: 0
        self.replies: dict[int, list[Message]] = {}

    def handler(self, request: Message, transport: FakeTransport) -> list[Message]:
        self.requests.append(request)
        code = self.refuse(request)
        if code:
            return [error(request, code)]
        if request.type in self.replies:
            return [Message(m.type, m.flags, payload=m.payload) for m in self.replies[request.type]]
        if request.flags & NLM_F_DUMP == NLM_F_DUMP:
            family = header(request)[0]
            replies = [entry(flow) for flow in self.table if family in (0, flow.family)]
            replies.append(done(request))
            for start in range(0, len(replies), 4):
                chunk = replies[start : start + 4]
                for reply in chunk:
                    reply.seq, reply.pid = request.seq, transport.portid
                transport.inject(b"".join(reply.encode() for reply in chunk))
        return []

    def factory(self) -> FakeTransport:
        transport = FakeTransport(lambda request: self.handler(request, transport))
        send = transport.send

        def counting_send(data: bytes) -> None:
            self.datagrams += 1
            send(data)

        transport.send = counting_send  # type: ignore[method-assign]
        self.transports.append(transport)
        return transport

    def client(self, **options: Any) -> Conntrack:
        return Conntrack(transport_factory=self.factory, **options)


def flow_v4(n: int, **fields: Any) -> Flow:
    orig = Tuple(AF_INET, f"198.51.100.{n % 250 + 1}", "192.0.2.100", 17, 1024 + n, 53)
    return Flow(orig, orig.inverted(), status=Status(0), timeout=30, id=n + 1, **fields)


@pytest.fixture(params=[True, False], ids=["prefetch", "inline"])
def prefetch(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


# -- requests on the wire -------------------------------------------------------------------------


def test_dump_streams_and_asks_without_ack(prefetch: bool) -> None:
    kernel = FakeKernel([flow_v4(n) for n in range(5)])
    with kernel.client(prefetch=prefetch) as ct:
        flows = ct.dump()
        assert not isinstance(flows, list)
        assert [f.orig.sport for f in flows] == [1024 + n for n in range(5)]
    (request,) = kernel.requests
    assert request.type == C.CT_GET
    assert request.flags == NLM_F_REQUEST | NLM_F_DUMP
    assert header(request) == (0, 0, 0)


def test_dump_sends_the_kernel_filters() -> None:
    kernel = FakeKernel()
    flt = Filter(family=AF_INET, proto=6, dport=22, src="192.0.2.1", mark=1, mark_mask=0xFF,
                 status=Status.ASSURED, zone=3)  # fmt: skip
    with kernel.client() as ct:
        assert list(ct.dump(flt)) == []
    (request,) = kernel.requests
    spans = attributes(request)
    assert header(request)[0] == AF_INET
    assert {C.CTA_MARK, C.CTA_MARK_MASK, C.CTA_STATUS, C.CTA_STATUS_MASK, C.CTA_ZONE,
            C.CTA_TUPLE_ORIG, C.CTA_FILTER} <= set(spans)  # fmt: skip
    start, end = spans[C.CTA_FILTER]
    flags = attr_spans(request.payload, start, end)[C.CTA_FILTER_ORIG_FLAGS]
    value = int.from_bytes(request.payload[flags[0] : flags[1]], sys.byteorder)
    assert value == C.FILTER_IP_SRC | C.FILTER_PROTO_NUM | C.FILTER_PROTO_DST_PORT


def test_a_tuple_filter_without_family_asks_each_family() -> None:
    kernel = FakeKernel()
    with kernel.client() as ct:
        list(ct.dump(Filter(proto=6, dport=22)))
    assert [header(r)[0] for r in kernel.requests] == [AF_INET, AF_INET6]
    assert all(C.CTA_FILTER in attributes(r) for r in kernel.requests)


def test_ports_of_other_protocols_are_not_sent_to_the_kernel() -> None:
    kernel = FakeKernel()
    with kernel.client() as ct:
        list(ct.dump(Filter(family=AF_INET, proto=132, dport=9)))
    spans = attributes(kernel.requests[0])
    start, end = spans[C.CTA_FILTER]
    flags = attr_spans(kernel.requests[0].payload, start, end)[C.CTA_FILTER_ORIG_FLAGS]
    value = int.from_bytes(kernel.requests[0].payload[flags[0] : flags[1]], sys.byteorder)
    assert value == C.FILTER_PROTO_NUM


def test_refused_filter_parts_are_dropped_and_checked_here() -> None:
    table = [flow_v4(1, zone=3), flow_v4(2, zone=4), flow_v4(3)]
    kernel = FakeKernel(table)
    kernel.refuse = lambda r: errno.EOPNOTSUPP if C.CTA_ZONE in attributes(r) else 0
    with kernel.client() as ct:
        assert [f.id for f in ct.dump(zone=3)] == [2]
        assert KernelFilter.ZONE not in ct.kernel_filters and KernelFilter.ZONE in ct.refused
        assert [f.id for f in ct.dump(zone=4)] == [3]  # not tried again
    assert [C.CTA_ZONE in attributes(r) for r in kernel.requests] == [True, False, False]


def test_python_filtering_alone_gives_the_same_flows() -> None:
    table = [flow_v4(n, mark=n % 3) for n in range(30)]
    kernel = FakeKernel(table)
    with kernel.client(kernel_filters=KernelFilter(0)) as ct:
        assert [f.id for f in ct.dump(mark=1)] == [f.id for f in table if f.mark == 1]
    assert C.CTA_MARK not in attributes(kernel.requests[0])


def test_dump_as_gives_the_targets_items_with_or_without_criteria(prefetch: bool) -> None:
    table = [flow_v4(n, mark=n % 2, use=1) for n in range(9)]
    table += [dataclasses.replace(flow_v4(n, mark=1), helper="ftp") for n in range(9, 12)]
    kernel = FakeKernel(table)
    made: list[str] = []

    def compile_line(values: FlowValues) -> tuple[str, dict[str, Any]] | None:
        if values.get("helper") is not None:
            return None  # made from the Flow
        return f"MADE.append('compiled') or {values.get('orig.sport')}", {"MADE": made}

    def convert(flow: Flow) -> int:
        made.append("converted")
        return flow.orig.sport if flow.orig and flow.orig.sport else 0

    target = FlowTarget(convert, compile_line)
    with kernel.client(prefetch=prefetch) as ct:
        for _dump in range(2):  # the second dump reuses the decoder and its layouts
            made.clear()
            assert list(ct.dump_as(target)) == [1024 + n for n in range(12)]
            # the helper flows, and at first the one flow that taught the other layout
            assert made.count("converted") == (4 if _dump == 0 else 3)
        made.clear()
        assert list(ct.dump_as(target, Filter(mark=1))) == [1025, 1027, 1029, 1031, 1033, 1034,
                                                             1035]  # fmt: skip
        assert set(made) == {"converted"}  # flows checked here are made from Flow objects


def test_a_dump_failing_half_way_raises() -> None:
    kernel = FakeKernel()
    kernel.replies[C.CT_GET] = [
        entry(flow_v4(1)),
        Message(3, NLM_F_MULTI, payload=b"\xf4\xff\xff\xff"),
    ]
    with kernel.client() as ct, pytest.raises(OSError, match="Cannot allocate memory"):
        list(ct.dump())  # DONE carrying -ENOMEM


def test_get_has_no_ack_and_not_found_is_typed() -> None:
    kernel = FakeKernel()
    kernel.replies[C.CT_GET] = [entry(flow_v4(7))]
    with kernel.client() as ct:
        assert ct.get(flow_v4(7).orig).id == 8
        assert kernel.requests[-1].flags == NLM_F_REQUEST
        kernel.refuse = lambda r: errno.ENOENT
        with pytest.raises(NetlinkNotFound, match="no such flow"):
            ct.get(V4)


def test_create_update_and_delete_requests() -> None:
    kernel = FakeKernel()
    flow = Flow(V4, timeout=60, status=Status.ASSURED | Status.EXPECTED, id=99)
    with kernel.client() as ct:
        ct.create(flow)
        ct.update(Flow(V4, mark=1))
        ct.create_or_update(flow)
        ct.delete(flow)
        ct.delete(V4)
    create, update, upsert, delete, delete_tuple = kernel.requests
    assert create.flags == NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    assert update.flags == NLM_F_REQUEST | NLM_F_ACK
    assert upsert.flags == NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE
    status = attributes(create)[C.CTA_STATUS]
    value = int.from_bytes(create.payload[status[0] : status[1]], "big")
    assert value == Status.ASSURED | Status.CONFIRMED  # CONFIRMED added, EXPECTED dropped
    assert {C.CTA_TUPLE_ORIG, C.CTA_TUPLE_REPLY, C.CTA_TIMEOUT} <= set(attributes(create))
    assert set(attributes(update)) == {C.CTA_TUPLE_ORIG, C.CTA_MARK}
    assert delete.type == C.CT_DELETE and C.CTA_ID in attributes(delete)
    assert C.CTA_ID not in attributes(delete_tuple)


def test_kernel_errors_say_what_is_missing() -> None:
    kernel = FakeKernel()
    with kernel.client() as ct:
        kernel.refuse = lambda r: errno.EPERM
        with pytest.raises(NetlinkPermissionError, match="CAP_NET_ADMIN"):
            list(ct.dump())
        kernel.refuse = lambda r: errno.ENOSPC
        with pytest.raises(OSError, match="ct label"):
            ct.update(Flow(V4, labels=bytes(16)))
        kernel.refuse = lambda r: errno.EOPNOTSUPP
        with pytest.raises(NetlinkNotSupported, match="nf_conntrack_sip"):
            ct.create(Flow(V4, timeout=5, helper="sip"))
        kernel.refuse = lambda r: errno.EEXIST
        with pytest.raises(NetlinkExists):
            ct.create(Flow(V4, timeout=5))


def test_delete_many_batches_and_tolerates_vanished_flows() -> None:
    table = [flow_v4(n) for n in range(2000)]
    kernel = FakeKernel(table)
    kernel.refuse = lambda r: errno.ENOENT if r.type == C.CT_DELETE and r.seq % 10 == 0 else 0
    with kernel.client() as ct:
        deleted = ct.delete_many(Filter(proto=17))
    deletes = [r for r in kernel.requests if r.type == C.CT_DELETE]
    assert len(deletes) == 2000
    assert deleted == 2000 - sum(1 for r in deletes if r.seq % 10 == 0)
    assert all(C.CTA_ID in attributes(r) for r in deletes)
    # Many requests per datagram; only the last of each asks for an ACK.
    acked = [r for r in deletes if r.flags & NLM_F_ACK]
    assert kernel.datagrams == 2 + len(acked) and len(acked) <= 5


def test_delete_many_raises_other_errors_and_takes_predicates() -> None:
    kernel = FakeKernel([flow_v4(n) for n in range(10)])
    with kernel.client() as ct:
        assert ct.delete_many(lambda flow: flow.orig.sport % 2 == 0) == 5
        kernel.refuse = lambda r: errno.EPERM if r.type == C.CT_DELETE else 0
        with pytest.raises(NetlinkPermissionError):
            ct.delete_many()


def test_flush_is_family_scoped_with_version_1() -> None:
    kernel = FakeKernel()
    with kernel.client() as ct:
        ct.flush(family=AF_INET6)
        ct.flush(mark=1, mark_mask=3)
    family_flush, mark_flush = kernel.requests
    assert family_flush.type == C.CT_DELETE and header(family_flush)[:2] == (AF_INET6, 1)
    assert not attributes(family_flush)
    assert set(attributes(mark_flush)) == {C.CTA_MARK, C.CTA_MARK_MASK}


def test_flush_on_a_kernel_that_would_ignore_the_criterion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "kernel_release", lambda: (6, 1))
    kernel = FakeKernel([flow_v4(1, zone=5), flow_v4(2)])
    with kernel.client() as ct:
        ct.flush(zone=5)  # zones filter flushes since 6.8: delete one by one instead
    assert [r.type for r in kernel.requests] == [C.CT_GET, C.CT_DELETE]


def test_abandoned_dump_closes_its_channel(prefetch: bool) -> None:
    kernel = FakeKernel([flow_v4(n) for n in range(10)])
    with kernel.client(prefetch=prefetch) as ct:
        flows = ct.dump()
        next(flows)
        flows.close()
        assert kernel.transports[0]._closed
        assert len(list(ct.dump())) == 10


def test_requests_during_a_dump_use_another_channel(prefetch: bool) -> None:
    kernel = FakeKernel([flow_v4(n) for n in range(10)])
    with kernel.client(prefetch=prefetch) as ct:
        for flow in ct.dump():
            ct.delete(flow)
    assert len(kernel.transports) == 2
    assert sum(r.type == C.CT_DELETE for r in kernel.requests) == 10


def test_statistics_requests() -> None:
    kernel = FakeKernel()
    kernel.replies[C.CT_GET_STATS] = [
        Message(C.CT_GET_STATS, 0, payload=nfgenmsg(0) + attr_be32(1, 42) + attr_be32(2, 9))
    ]
    cpus = [Message(C.CT_GET_STATS_CPU, NLM_F_MULTI, payload=nfgenmsg(0, res_id=n)
                    + attr_be32(2, n)) for n in range(2)]  # fmt: skip
    kernel.replies[C.CT_GET_STATS_CPU] = [*cpus, Message(3, NLM_F_MULTI, payload=bytes(4))]
    with kernel.client() as ct:
        assert ct.count() == 42 and ct.stats().max_entries == 9
        stats = ct.stats_per_cpu()
    assert [(s.cpu, s.values) for s in stats] == [(0, {"found": 0}), (1, {"found": 1})]
    assert kernel.requests[-1].flags == NLM_F_REQUEST | NLM_F_DUMP


def test_expectation_requests() -> None:
    kernel = FakeKernel()
    exp = Expectation(master=V4, tuple=Tuple(AF_INET, "192.0.2.1", "192.0.2.2", 6, 0, 5000),
                      mask=Tuple(AF_INET, "255.255.255.255", "255.255.255.255", 6, 0, 0xFFFF),
                      timeout=30, id=4)  # fmt: skip
    with kernel.client() as ct:
        ct.create_expectation(exp)
        ct.delete_expectation(exp)
        ct.flush_expectations()
        assert list(ct.expectations(AF_INET)) == []
    create, delete, flush, dump = kernel.requests
    assert create.type == C.EXP_NEW and create.flags & NLM_F_CREATE | NLM_F_EXCL
    assert {C.CTA_EXPECT_MASTER, C.CTA_EXPECT_TUPLE, C.CTA_EXPECT_MASK} <= set(attributes(create))
    assert delete.type == C.EXP_DELETE and C.CTA_EXPECT_ID in attributes(delete)
    assert flush.type == C.EXP_DELETE and not attributes(flush)
    assert dump.type == C.EXP_GET and header(dump)[0] == AF_INET


# -- the client-side filter -----------------------------------------------------------------------


def nat_flow(
    reply_src: str, reply_dst: str, reply_sport: int = 22, reply_dport: int = 40000
) -> Flow:
    return Flow(V4, Tuple(AF_INET, reply_src, reply_dst, 6, reply_sport, reply_dport),
                status=Status.SEEN_REPLY | Status.ASSURED, mark=0x12, zone=None)  # fmt: skip


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        (Filter(), True),
        (Filter(family=AF_INET6), False),
        (Filter(proto=6, dport=22), True),
        (Filter(proto=6, dport=23), False),
        (Filter(src="192.0.2.0/24"), True),
        (Filter(src="192.0.3.0/24"), False),
        (Filter(dst="192.0.2.2"), True),
        (Filter(reply_src="192.0.2.2", reply_dport=40000), True),
        (Filter(mark=0x10, mark_mask=0xF0), True),
        (Filter(mark=0x12), True),
        (Filter(mark=0x10), False),
        (Filter(status=Status.ASSURED), True),
        (Filter(status=0, status_mask=Status.SEEN_REPLY), False),
        (Filter(zone=0), True),
        (Filter(zone=3), False),
        (Filter(src_nat=True), False),
        (Filter(any_nat=True), False),
        (Filter(labels={1}), False),
        (Filter(state=TCPState.ESTABLISHED), False),  # no protoinfo
    ],
)
def test_filter_matches(flt: Filter, expected: bool) -> None:
    assert flt.matches(nat_flow("192.0.2.2", "192.0.2.1")) is expected


def test_nat_criteria() -> None:
    snat = nat_flow("192.0.2.2", "203.0.113.9")
    dnat = nat_flow("198.51.100.7", "192.0.2.1", reply_sport=8022)
    assert Filter(src_nat=True).matches(snat) and not Filter(dst_nat=True).matches(snat)
    assert Filter(src_nat=NatMatch("203.0.113.9")).matches(snat)
    assert not Filter(src_nat=NatMatch("203.0.113.8")).matches(snat)
    assert Filter(dst_nat=NatMatch("198.51.100.7", 8022)).matches(dnat)
    assert not Filter(dst_nat=NatMatch(port=22)).matches(dnat)
    assert Filter(any_nat=True).matches(snat) and Filter(any_nat=True).matches(dnat)
    assert not Filter(src_nat=True, dst_nat=True).matches(snat)


def test_zones_labels_and_states() -> None:
    flow = Flow(Tuple(AF_INET6, "2001:db8::1", "2001:db8::2", 6, 1, 2, zone=4),
                Tuple(AF_INET6, "2001:db8::2", "2001:db8::1", 6, 2, 1),
                labels=(1 << 5 | 1 << 100).to_bytes(16, "little"),
                protoinfo=TCPInfo(TCPState.TIME_WAIT))  # fmt: skip
    assert Filter(zone=4).matches(flow) and Filter(zone=0).matches(flow)  # either direction
    assert Filter(orig_zone=4).matches(flow) and not Filter(reply_zone=4).matches(flow)
    assert Filter(labels={5, 100}).matches(flow) and not Filter(labels={5, 6}).matches(flow)
    assert Filter(proto=6, state=TCPState.TIME_WAIT).matches(flow)
    assert Filter(src="2001:DB8:0::1").matches(flow)  # spelled as the kernel does
    assert Filter(src="2001:db8::/32").matches(flow)


def test_filter_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="mixes"):
        Filter(src="192.0.2.1", dst="2001:db8::1")
    with pytest.raises(ValueError):
        Filter(src="not an address")
    with pytest.raises(ValueError):
        Filter(mark_mask=1)
    assert Filter(src="192.0.2.1").effective_family == AF_INET
    assert Filter.from_tuples(V4).criteria() == {
        "family": AF_INET, "proto": 6, "src": "192.0.2.1", "dst": "192.0.2.2",
        "sport": 40000, "dport": 22,
    }  # fmt: skip


# -- the real kernel -------------------------------------------------------------------------------


def client_in(lab: Lab, ns: Any = None, **options: Any) -> Conntrack:
    with lab.entered(lab.a if ns is None else ns):
        return Conntrack(**options)


def same(flow: Flow, want: Flow) -> bool:
    """Equal in what ctlab set (the kernel adds ids, counters, timestamps...)."""
    return all(
        getattr(want, name) is None or getattr(flow, name) == getattr(want, name)
        for name in ("orig", "reply", "mark", "zone", "labels")
    ) and (want.protoinfo is None or flow.protoinfo.state == want.protoinfo.state)


@pytest.mark.lab
def test_lab_every_protocol(lab: Lab) -> None:
    flows = varied_table(lab)
    with client_in(lab) as ct:
        dumped = list(ct.dump())
        assert len(dumped) == len(flows)
        for want in flows:
            (got,) = [f for f in dumped if f.orig == want.orig]
            assert same(got, want), got
            assert got.status & Status.CONFIRMED and got.timeout and got.id is not None
            assert got.counters_orig == Counters(0, 0) and got.start  # acct, timestamps on
            assert same(ct.get(want.orig, zone=want.zone), want)
            assert same(ct.get(got), want)
        sctp = next(f for f in dumped if f.proto == 132)
        assert sctp.protoinfo == SCTPInfo(SCTPState.ESTABLISHED, 0x11223344, 0x55667788)
        assert {frozenset(f.label_bits) for f in dumped if f.labels} == {
            frozenset({1, 5}), frozenset({127}), frozenset({0, 64})}  # fmt: skip
        # The text conntrack(8) prints for the same table names every flow.
        listing = lab.run(lab.a, "conntrack", "-L").stdout
        assert len(listing.splitlines()) == len(flows)
        for flow in dumped:
            ct.delete(flow)
        assert list(ct.dump()) == [] and ct.count() == 0


@pytest.mark.lab
def test_lab_create_update_delete(lab: Lab) -> None:
    enable_labels(lab, lab.a)
    liberal = TCPFlag.BE_LIBERAL | TCPFlag.SACK_PERM
    tcp = Flow(Tuple(AF_INET, "198.51.100.1", "203.0.113.1", 6, 1000, 80), timeout=100,
               status=Status.SEEN_REPLY | Status.ASSURED, mark=0x10, zone=2,
               protoinfo=TCPInfo(TCPState.ESTABLISHED, None, None, liberal, liberal),
               labels=(1 << 3).to_bytes(16, "little"))  # fmt: skip
    others = [
        Flow(Tuple(AF_INET6, "2001:db8::1", "2001:db8::2", 17, 5000, 53), timeout=30),
        Flow(
            Tuple(AF_INET, "198.51.100.2", "203.0.113.2", 1, icmp_type=8, icmp_code=0, icmp_id=9),
            timeout=30,
        ),
        Flow(
            Tuple(
                AF_INET6, "2001:db8::1", "2001:db8::2", 58, icmp_type=128, icmp_code=0, icmp_id=9
            ),
            timeout=30,
            zone=7,
        ),
        Flow(
            Tuple(AF_INET, "198.51.100.3", "203.0.113.3", 132, 1, 2),
            timeout=30,
            protoinfo=SCTPInfo(SCTPState.ESTABLISHED, 1, 2),
        ),
        Flow(Tuple(AF_INET, "198.51.100.4", "203.0.113.4", 47, 7, 8, zone=3), timeout=30),
    ]
    with client_in(lab) as ct:
        for flow in [tcp, *others]:
            ct.create(flow)
            got = ct.get(flow.orig, zone=flow.zone)
            assert got.orig == flow.orig
            assert got.reply == dataclasses.replace(flow.orig.inverted(), zone=None)
            assert got.timeout <= flow.timeout
        with pytest.raises(NetlinkExists):
            ct.create(tcp)
        got = ct.get(tcp.orig, zone=2)
        assert (got.mark, got.zone, got.label_bits) == (0x10, 2, {3})
        assert got.protoinfo.state == TCPState.ESTABLISHED
        # Masked updates: mark bits 0x0F only, add label 9 and keep label 3.
        ct.update(Flow(tcp.orig, zone=2, mark=0x05, mark_mask=0x0F, timeout=500,
                       labels=(1 << 9).to_bytes(16, "little"),
                       labels_mask=(1 << 9).to_bytes(16, "little")))  # fmt: skip
        got = ct.get(tcp.orig, zone=2)
        assert (got.mark, got.label_bits) == (0x15, {3, 9}) and got.timeout > 400
        ct.create_or_update(Flow(tcp.orig, zone=2, mark=1, timeout=50))
        ct.create_or_update(Flow(Tuple(AF_INET, "198.51.100.9", "203.0.113.9", 17, 1, 2),
                                 timeout=50))  # fmt: skip
        assert ct.get(tcp.orig, zone=2).mark == 1 and ct.count() == 7
        stale = Flow(tcp.orig, zone=2, id=got.id ^ 1)
        with pytest.raises(NetlinkNotFound):
            ct.delete(stale)  # another id: another flow
        ct.delete(got)
        with pytest.raises(NetlinkNotFound):
            ct.get(tcp.orig, zone=2)
        labelled = Flow(others[0].orig, labels=bytes(16))
    with client_in(lab, lab.b) as ct_b:  # no label rule in b: labels cannot be set
        ct_b.create(Flow(others[0].orig, timeout=30))
        with pytest.raises(OSError, match="ct label"):
            ct_b.update(labelled)


@pytest.mark.lab
def test_lab_counters_timestamps_and_zeroing(lab: Lab) -> None:
    for ns in (lab.a, lab.b):
        lab.sysctl(ns, "net.netfilter.nf_conntrack_acct", 1)
        lab.sysctl(ns, "net.netfilter.nf_conntrack_timestamp", 1)
    lab.iptables(lab.b, "-A", "INPUT", "-m", "conntrack", "--ctstate", "NEW,ESTABLISHED",
                 "-j", "ACCEPT")  # fmt: skip
    lab.ip6tables(lab.b, "-A", "INPUT", "-m", "conntrack", "--ctstate", "NEW,ESTABLISHED",
                  "-j", "ACCEPT")  # fmt: skip
    assert lab.ping(lab.a, lab.b.ip4, count=2)
    assert lab.ping(lab.a, lab.b.ip6, count=1)
    lab.tcp_exchange(lab.a, lab.b.ip4, 8080, b"x" * 1000)
    lab.udp(lab.a, lab.b.ip6, 5353, count=3)
    with client_in(lab, lab.b) as ct:
        flows = {f.proto: f for f in ct.dump()}
        assert set(flows) == {1, 6, 17, 58}
        assert flows[1].counters_orig.packets == 2 and flows[1].counters_reply.packets == 2
        assert (
            flows[17].counters_orig.packets == 3 and flows[17].reply.dport == flows[17].orig.sport
        )
        assert flows[6].counters_orig.bytes > 1000
        assert flows[6].protoinfo.state == TCPState.TIME_WAIT
        assert all(f.start and abs(f.start / 1e9 - time.time()) < 60 for f in flows.values())
        zeroed = list(ct.dump(reset_counters=True))
        assert any(f.counters_orig.packets for f in zeroed)
        assert all(f.counters_orig == Counters(0, 0) for f in ct.dump())


@pytest.mark.lab
def test_lab_filters_kernel_and_python_agree(lab: Lab) -> None:
    varied_table(lab)
    fill_table(lab, lab.a, 300, family=4, proto="tcp", mark=5)
    fill_table(lab, lab.a, 300, family=6, proto="udp")
    filters = [
        Filter(proto=6, dport=22),
        Filter(proto=6, dport=443, src="198.51.100.7"),
        Filter(family=AF_INET6),
        Filter(mark=5),
        Filter(mark=0x2, mark_mask=0x2),
        Filter(status=Status.ASSURED),
        Filter(status=0, status_mask=Status.SEEN_REPLY),
        Filter(zone=7),
        Filter(zone=3),
        Filter(proto=1, icmp_type=8, icmp_id=1234),
        Filter(proto=58, icmp_type=128),
        Filter(src=DEFAULT_SRC_NET[6], proto=17, reply_sport=53),
        Filter(proto=132, sport=40005),
        Filter(labels={64}),
        Filter(proto=6, state=TCPState.SYN_SENT),
    ]
    with client_in(lab) as ct, client_in(lab, kernel_filters=KernelFilter(0)) as plain:
        everything = list(ct.dump())
        for flt in filters:
            want = sorted(f.id for f in everything if flt.matches(f))
            assert want, flt
            assert sorted(f.id for f in ct.dump(flt)) == want, flt
            assert sorted(f.id for f in plain.dump(flt)) == want, flt
        assert ct.kernel_filters == KernelFilter.all() and not ct.refused


@pytest.mark.lab
def test_lab_delete_many_and_flush(lab: Lab) -> None:
    fill_table(lab, lab.a, 5000, family=4, proto="udp")
    fill_table(lab, lab.a, 200, family=6, proto="tcp", mark=3)
    fill_table(lab, lab.a, 100, family=4, proto="tcp", mark=9)
    with client_in(lab) as ct:
        assert ct.count() == 5300
        assert ct.delete_many(Filter(proto=17, dport=53)) == 5000
        assert ct.count() == 300
        ct.flush(family=AF_INET6)  # conntrack 1.4.7 -F -f ipv6 would flush everything
        assert {f.family for f in ct.dump()} == {AF_INET} and ct.count() == 100
        ct.flush(mark=8)
        assert ct.count() == 100
        ct.flush(mark=9)
        assert ct.count() == 0


@pytest.mark.lab
def test_lab_later_channels_open_in_the_clients_namespace(lab: Lab) -> None:
    fill_table(lab, lab.a, 10)
    with client_in(lab) as ct:  # this thread is back in its own namespace now
        busy = ct.dump()
        next(busy)  # holds the first channel
        assert ct.count() == 10  # through a second channel, opened in lab.a
        busy.close()


@pytest.mark.lab
def test_lab_stats_and_other_tables(lab: Lab) -> None:
    fill_table(lab, lab.a, 10)
    with client_in(lab) as ct:
        stats = ct.stats()
        assert stats.entries == 10 and stats.max_entries
        cpus = ct.stats_per_cpu()
        assert cpus and {"found", "insert", "drop"} <= set(cpus[0].values)
        assert ct.expectation_stats_per_cpu()[0].values.keys() == {
            "expect_new", "expect_create", "expect_delete"}  # fmt: skip
        assert list(ct.dump(table="dying")) == [] and list(ct.dump(table="unconfirmed")) == []
        with pytest.raises(ValueError):
            ct.dump(table="nope")


@pytest.mark.lab
def test_lab_expectations_created_directly(lab: Lab) -> None:
    master = Tuple(AF_INET, "192.0.2.1", "192.0.2.2", 6, 40000, 21)
    expected = Tuple(AF_INET, "192.0.2.1", "192.0.2.2", 6, 0, 5001)
    mask = Tuple(AF_INET, "255.255.255.255", "255.255.255.255", 6, 0, 0xFFFF)
    exp = Expectation(master=master, tuple=expected, mask=mask, timeout=300, helper="ftp")
    with client_in(lab) as ct:
        ct.create(Flow(master, timeout=300))
        with pytest.raises(NetlinkNotSupported, match="helper"):
            ct.create_expectation(exp)  # the master has no helper
        ct.delete(master)
        ct.create(Flow(master, timeout=300, helper="ftp",
                       protoinfo=TCPInfo(TCPState.ESTABLISHED)))  # fmt: skip
        ct.create_expectation(exp)
        (got,) = ct.expectations()
        assert (got.master, got.tuple, got.mask, got.helper) == (master, expected, mask, "ftp")
        assert 0 < got.timeout <= 300 and got.flags == ExpectFlag(0) and got.id is not None
        again = ct.get_expectation(expected)
        assert dataclasses.replace(again, timeout=None) == dataclasses.replace(got, timeout=None)
        ct.delete_expectation(got)
        assert list(ct.expectations()) == []
        ct.create_expectation(exp)
        ct.flush_expectations()
        assert list(ct.expectations()) == []
        with pytest.raises(NetlinkNotFound):
            ct.get_expectation(expected)


@pytest.mark.lab
def test_lab_expectation_from_ftp_control_traffic(lab: Lab) -> None:
    """A PASV reply on a connection with the ftp helper makes the kernel expect the data flow."""
    lab.iptables(lab.b, "-t", "raw", "-A", "PREROUTING", "-p", "tcp", "--dport", "21",
                 "-j", "CT", "--helper", "ftp")  # fmt: skip
    with lab.entered(lab.b):
        server = socket.create_server(("192.0.2.2", 21))

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"220 nfkit test\r\n")
            conn.recv(100)  # PASV
            conn.sendall(b"227 Entering Passive Mode (192,0,2,2,19,137)\r\n")
            conn.recv(100)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with lab.entered(lab.a):
        client = socket.create_connection(("192.0.2.2", 21), timeout=5)
    with client, server:
        client.recv(100)
        client.sendall(b"PASV\r\n")
        assert client.recv(100).startswith(b"227")
        with client_in(lab, lab.b) as ct:
            (exp,) = ct.expectations()
        client.sendall(b"QUIT\r\n")
    thread.join(5)
    assert exp.helper == "ftp" and exp.master.dport == 21
    assert exp.tuple.dst == "192.0.2.2" and exp.tuple.dport == 19 * 256 + 137


@pytest.mark.lab
def test_lab_without_cap_net_admin(lab: Lab) -> None:
    code = (
        "import os\n"
        "from nfkit.conntrack import Conntrack\n"
        "from nfkit.netlink import NetlinkPermissionError\n"
        "os.setgid(65534); os.setuid(65534)  # after the imports: /root is private\n"
        "try:\n"
        "    list(Conntrack().dump())\n"
        "except NetlinkPermissionError as exc:\n"
        "    print(exc)\n"
    )
    result = lab.run(lab.a, sys.executable, "-c", code, env=dict(os.environ, **lab.env))
    assert "CAP_NET_ADMIN" in result.stdout


@pytest.mark.lab
def test_lab_script_from_the_package_docstring(lab: Lab) -> None:
    fill_table(lab, lab.a, 20, proto="tcp")
    for flow in varied_flows():
        if flow.proto == 6 and flow.orig.dport == 22:
            lab.run(lab.a, "conntrack", "-I", "-p", "tcp", "-s", flow.orig.src, "-d", flow.orig.dst,
                    "--sport", str(flow.orig.sport), "--dport", "22", "-t", "60",
                    "--state", "ESTABLISHED")  # fmt: skip
    script = textwrap.dedent(nfkit.conntrack.__doc__.split("::\n", 1)[1].split("\n\n:class:")[0])
    output = lab.run(lab.a, sys.executable, "-c", script, env=dict(os.environ, **lab.env)).stdout
    assert output.count("Flow(") == 1 and "dport=22" in output
    assert lab.run(lab.a, "conntrack", "-L", "-p", "tcp", "--dport", "22", check=False).stdout == ""


def test_filter_mark_zero_matches_events_without_a_mark() -> None:
    # The kernel omits CTA_MARK from events when the mark is 0.
    from nfkit.conntrack import Filter, Flow, Tuple

    flow = Flow(orig=Tuple(src="192.0.2.1", dst="192.0.2.2", proto=17, sport=1, dport=2))
    assert flow.mark is None
    assert Filter(mark=0).matches(flow)
    assert not Filter(mark=1).matches(flow)
    flow.mark = 0x10
    assert Filter(mark=0x10, mark_mask=0x10).matches(flow)


@pytest.mark.lab
def test_delete_many_uses_one_filtered_flush_when_the_kernel_filter_is_exact(lab: Lab) -> None:
    fill_table(lab, lab.a, 300, src_net="203.0.113.7/32")
    fill_table(lab, lab.a, 300, src_net="198.51.100.0/24")
    deletes: list[int] = []
    real_request = client_module.request

    def counting_request(mtype: int, *args: Any, **kwargs: Any) -> Any:
        if mtype == C.CT_DELETE:
            deletes.append(mtype)
        return real_request(mtype, *args, **kwargs)

    with lab.entered(lab.a), Conntrack() as ct, pytest.MonkeyPatch.context() as patch:
        patch.setattr(client_module, "request", counting_request)
        assert ct.delete_many(Filter(src="203.0.113.7")) == 300
        assert len(deletes) == 1  # one flush, not 300 deletes
        left = list(ct.dump())
        assert len(left) == 300 and all(f.orig and f.orig.src != "203.0.113.7" for f in left)
        # A network (not exact in the kernel) falls back to per-flow deletes.
        assert ct.delete_many(Filter(src="198.51.100.0/25", proto=17)) == sum(
            1 for f in left if f.orig and int(f.orig.src.rsplit(".", 1)[1]) < 128
        )
        assert all(int(f.orig.src.rsplit(".", 1)[1]) >= 128 for f in ct.dump() if f.orig)


@pytest.mark.lab
def test_ipv6_address_filters_find_and_delete_their_flows(lab: Lab) -> None:
    fill_table(lab, lab.a, 20, family=6)
    with lab.entered(lab.a), Conntrack() as ct:
        flows = list(ct.dump())
        target = flows[0].orig
        assert target is not None and target.src is not None
        same_src = [f for f in flows if f.orig and f.orig.src == target.src]
        assert len(list(ct.dump(Filter(src=target.src)))) == len(same_src) > 0
        assert ct.delete_many(Filter(src=target.src)) == len(same_src)
        assert len(list(ct.dump())) == len(flows) - len(same_src)


@pytest.mark.lab
def test_delete_flows_and_delete_many_collect(lab: Lab) -> None:
    fill_table(lab, lab.a, 40, src_net="203.0.113.0/24")
    with lab.entered(lab.a), Conntrack() as ct:
        flows = list(ct.dump())
        assert ct.delete_flows(flows[:10]) == 10
        assert ct.delete_flows(flows[:10]) == 0  # already gone: not counted
        collected: list[Flow] = []
        wanted = flows[10].orig
        assert wanted is not None and wanted.src is not None
        count = ct.delete_many(Filter(src=wanted.src), also=lambda f: True, collect=collected)
        assert count == len(collected) >= 1
        assert all(f.orig is not None and f.orig.src == wanted.src for f in collected)
        assert len(list(ct.dump())) == 30 - count
