"""The conntrack table fillers of tests/ctlab.py, checked with Debian's conntrack."""

from __future__ import annotations

import errno
import re
import shutil
import socket
import time

import pytest

from ctlab import create_flows, enable_labels, fill_table, varied_flows, varied_table
from nfkit.conntrack import SCTPInfo, Status, TCPInfo
from nfkit.lab import Lab
from nfkit.netlink import NETLINK_NETFILTER, NetlinkSocket
from nfkit.netlink.codec import (
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    Message,
    attr_spans,
    iter_message_spans,
    nfgenmsg,
    nfnl_type,
)

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(shutil.which("conntrack") is None, reason="needs conntrack-tools"),
]

PROTO_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6", 132: "sctp", 47: "gre"}


def count(lab: Lab) -> int:
    return int(lab.run(lab.a, "conntrack", "-C").stdout)


def listing(lab: Lab, *args: str) -> list[str]:
    return lab.run(lab.a, "conntrack", "-L", *args).stdout.splitlines()


def test_fill_table_creates_100k_flows_in_seconds(lab: Lab) -> None:
    started = time.monotonic()
    sources = fill_table(lab, lab.a, 100_000)
    elapsed = time.monotonic() - started
    assert count(lab) == 100_000
    assert elapsed < 10, f"filling 100k flows took {elapsed:.1f} s"
    assert sources[:2] == ["198.51.100.1", "198.51.100.2"] and len(sources) == 254
    # 100000 flows over 254 sources: 394 or 393 ports each, from 1024 up.
    first = listing(lab, "-s", "198.51.100.1")
    assert len(first) == 394
    assert re.fullmatch(
        r"udp +17 \d+ src=198\.51\.100\.1 dst=192\.0\.2\.100 sport=1024 dport=53 "
        r"src=192\.0\.2\.100 dst=198\.51\.100\.1 sport=53 dport=1024 \[ASSURED\] mark=0 use=1",
        min(first, key=lambda line: int(line.split("sport=")[1].split()[0])),
    )


def test_fill_table_ipv6_tcp_with_mark(lab: Lab) -> None:
    fill_table(lab, lab.a, 1000, family=6, proto="tcp", src_net="2001:db8:5::/120", mark=5)
    lines = listing(lab, "-f", "ipv6", "-p", "tcp", "--state", "ESTABLISHED", "-m", "5")
    assert len(lines) == 1000 == count(lab)
    assert all(" dst=2001:db8::100 " in line and " dport=443 " in line for line in lines)


def test_fill_table_refills_after_delete(lab: Lab) -> None:
    # One source address: what the conntrack benchmark deletes and refills.
    assert fill_table(lab, lab.a, 5000, src_net="203.0.113.7/32") == ["203.0.113.7"]
    fill_table(lab, lab.a, 300, src_net="192.0.2.0/28")
    assert count(lab) == 5300
    lab.run(lab.a, "conntrack", "-D", "-s", "203.0.113.7")
    assert count(lab) == 300
    fill_table(lab, lab.a, 5000, src_net="203.0.113.7/32")
    assert count(lab) == 5300


def test_fill_table_updates(lab: Lab) -> None:
    fill_table(lab, lab.a, 1000, proto="tcp")
    fill_table(lab, lab.a, 600, proto="tcp", mark=3, timeout=100, update=True)
    marked = listing(lab, "-m", "3")
    assert len(marked) == 600 and count(lab) == 1000
    assert all(int(line.split()[2]) <= 100 for line in marked)
    with pytest.raises(OSError) as info:
        fill_table(lab, lab.a, 10, src_net="203.0.113.0/24", update=True)
    assert info.value.errno == errno.ENOENT


def test_fill_table_reports_refusals(lab: Lab) -> None:
    fill_table(lab, lab.a, 10)
    with pytest.raises(OSError) as info:
        fill_table(lab, lab.a, 10)
    assert info.value.errno == errno.EEXIST
    assert count(lab) == 10


def test_fill_table_rejects_more_flows_than_ports(lab: Lab) -> None:
    with pytest.raises(ValueError, match="exceed 1 sources"):
        fill_table(lab, lab.a, 64_513, src_net="203.0.113.7/32")
    assert count(lab) == 0


def test_varied_table_has_each_kind(lab: Lab) -> None:
    flows = varied_table(lab)
    assert flows == varied_flows()
    v4, v6 = socket.AF_INET, socket.AF_INET6
    assert {(flow.family, PROTO_NAMES[flow.proto or 0]) for flow in flows} == {
        (v4, "tcp"), (v6, "tcp"), (v4, "udp"), (v6, "udp"), (v4, "icmp"), (v6, "icmpv6"),
        (v4, "sctp"), (v4, "gre"),
    }  # fmt: skip
    lines = listing(lab, "-o", "extended")
    assert len(lines) == len(flows) == count(lab)
    for flow in flows:
        assert flow.orig is not None
        (line,) = [line for line in lines if f" src={flow.orig.src} " in line]
        assert line.split()[2] == PROTO_NAMES[flow.proto or 0], line
        assert f" mark={flow.mark or 0} " in line
        assert (f" zone={flow.zone} " in line) == (flow.zone is not None)
        assert ("[UNREPLIED]" in line) == (not flow.status & Status.SEEN_REPLY)
        # Counters and timestamps are on: packets= and delta-time= are shown.
        assert " packets=0 bytes=0 " in line and " delta-time=" in line
        if isinstance(flow.protoinfo, TCPInfo | SCTPInfo):
            state = flow.protoinfo.state
            assert state is not None and f" {state.name} src=" in line
    gre = next(line for line in lines if line.split()[2] == "gre")
    assert " srckey=0x1234 dstkey=0x5678 " in gre
    assert labels_in_table(lab) == {
        flow.orig.src: flow.labels for flow in flows if flow.labels and flow.orig
    }


def test_labels_need_a_rule_using_them(lab: Lab) -> None:
    """Without enable_labels the kernel drops labels silently (Linux 6.6+)."""
    first, second = [flow for flow in varied_flows() if flow.labels][:2]
    create_flows(lab, lab.a, [first])
    assert labels_in_table(lab) == {}
    enable_labels(lab, lab.a)
    create_flows(lab, lab.a, [second])
    assert second.orig is not None
    assert labels_in_table(lab) == {second.orig.src: second.labels}


def labels_in_table(lab: Lab) -> dict[str, bytes]:
    """Source address -> CTA_LABELS of each labelled flow, read with a raw dump.

    conntrack 1.4.7 shows labels only by name, from a label map this machine
    does not have.
    """
    with lab.entered(lab.a):
        sock = NetlinkSocket(NETLINK_NETFILTER)
    found: dict[str, bytes] = {}
    with sock:
        request = Message(nfnl_type(1, 1), NLM_F_REQUEST | NLM_F_DUMP, 1, 0, nfgenmsg(0))
        sock.send(request.encode())
        for _ in range(1000):
            data = sock.recv()
            for mtype, _flags, _seq, _pid, start, end in iter_message_spans(data):
                if mtype == NLMSG_DONE:
                    return found
                top = attr_spans(data, start + 4, end)
                if 22 in top:  # CTA_LABELS
                    ip = attr_spans(data, *attr_spans(data, *top[1])[1])  # orig tuple, IP
                    src = ip.get(1) or ip[3]  # V4_SRC or V6_SRC
                    family = socket.AF_INET if src[1] - src[0] == 4 else socket.AF_INET6
                    found[socket.inet_ntop(family, data[slice(*src)])] = data[slice(*top[22])]
    raise AssertionError("dump did not end")
