"""nfkit.nfacct (the accounting-object client) and the logd NFACCT input.

Unit tests speak to a fake kernel; the lab tests create objects with the
library and with Debian's ``nfacct``, count real traffic with
``-m nfacct`` rules and check the counters against the rules' own; the
differential tests run Debian's ulogd 2.0.8 and ``nfkit logd`` on the same
objects and compare their JSON and GPRINT lines.
"""

from __future__ import annotations

import errno
import json
import logging
import re
import signal
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nfkit.cli.logd import describe
from nfkit.lab import Lab
from nfkit.logd.config import ConfigFile
from nfkit.logd.engine import Pipeline
from nfkit.logd.errors import ConfigError
from nfkit.logd.loop import EventLoop
from nfkit.logd.plugin import Context
from nfkit.logd.plugins import nfacct as nfacct_plugin
from nfkit.logd.registry import plugins
from nfkit.netlink import (
    EncodeError,
    Message,
    NetlinkBusy,
    NetlinkExists,
    NetlinkNotFound,
    NetlinkPermissionError,
)
from nfkit.netlink.codec import (
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_MULTI,
    NLM_F_REPLACE,
    attr,
    attr_be32,
    attr_be64,
    attr_string,
    iter_attrs,
    nfgenmsg,
)
from nfkit.netlink.testing import FakeTransport, done, error
from nfkit.nfacct import (
    ATTR_BYTES,
    ATTR_FLAGS,
    ATTR_NAME,
    ATTR_PAD,
    ATTR_PKTS,
    ATTR_QUOTA,
    ATTR_USE,
    Accounting,
    Flag,
    Nfacct,
    decode,
)
from reference import DaemonRun, missing_reference, plugin_path

MSG_NEW, MSG_GET, MSG_GET_CTRZERO, MSG_DEL = (7 << 8) | 0, (7 << 8) | 1, (7 << 8) | 2, (7 << 8) | 3
PING_BYTES = 84  # IPv4 echo request: 20 + 8 + 56


# -- a fake kernel ----------------------------------------------------------------------------


def kernel_object(obj: Accounting, pad: bool = True) -> Message:
    """The message nfnetlink_acct sends for ``obj`` (with a 64-bit alignment pad)."""
    attrs = [attr_string(ATTR_NAME, obj.name)]
    if pad:  # what nla_put_be64() adds on hosts that need aligned 64-bit values
        attrs.append(attr(ATTR_PAD, b""))
    attrs += [
        attr_be64(ATTR_PKTS, obj.packets),
        attr_be64(ATTR_BYTES, obj.bytes),
        attr_be32(ATTR_USE, obj.use or 1),
    ]
    if obj.quota is not None:
        attrs += [attr_be32(ATTR_FLAGS, obj.flags), attr_be64(ATTR_QUOTA, obj.quota)]
    return Message(MSG_NEW, NLM_F_MULTI, payload=nfgenmsg(0) + b"".join(attrs))


def attributes(request: Message) -> dict[int, bytes]:
    payload = request.payload
    return {atype: payload[start:end] for atype, start, end in iter_attrs(payload, 4, len(payload))}


class FakeKernel:
    """Accounting objects in a dict; answers list/get/new/del like the kernel."""

    def __init__(self) -> None:
        self.objects: dict[str, Accounting] = {}
        self.requests: list[Message] = []
        self.refuse: int | None = None

    def __call__(self, request: Message) -> list[Message]:
        self.requests.append(request)
        if self.refuse is not None:
            return [error(request, self.refuse)]
        name = attributes(request).get(ATTR_NAME, b"").rstrip(b"\0").decode()
        if request.type in (MSG_GET, MSG_GET_CTRZERO):
            chosen = [o for o in self.objects.values() if not name or o.name == name]
            if name and not chosen:
                return [error(request, errno.ENOENT)]
            replies = [kernel_object(o) for o in chosen]
            if request.type == MSG_GET_CTRZERO:
                for o in chosen:
                    self.objects[o.name] = Accounting(o.name, use=o.use)
            return [*replies, done(request)] if request.flags & NLM_F_DUMP else replies
        if request.type == MSG_NEW:
            if name in self.objects and request.flags & NLM_F_EXCL:
                return [error(request, errno.EEXIST)]
            if name in self.objects and not request.flags & NLM_F_REPLACE:
                return [error(request, errno.EBUSY)]
            self.objects[name] = Accounting(name, use=1)  # a replacement zeroes the counters
            return []
        return [error(request, errno.EINVAL)]


def test_decode_skips_padding_and_reads_quota() -> None:
    obj = Accounting("web", 3, 252, Flag.QUOTA_BYTES | Flag.OVERQUOTA, 200, 2)
    assert decode(kernel_object(obj).payload) == obj
    assert obj.quota_in == "bytes" and obj.over_quota
    plain = Accounting("x", 1, 2, use=1)
    assert decode(kernel_object(plain, pad=False).payload) == plain
    assert plain.quota_in is None and plain.flags is Flag.NONE


def test_list_get_and_reset_requests() -> None:
    kernel = FakeKernel()
    kernel.objects = {"a": Accounting("a", 5, 500, use=2), "b": Accounting("b", 1, 60, use=1)}
    with Nfacct(FakeTransport(kernel)) as acct:
        assert acct.list() == list(kernel.objects.values())
        assert kernel.requests[-1].type == MSG_GET
        assert kernel.requests[-1].flags & NLM_F_DUMP == NLM_F_DUMP
        assert acct.get("a", reset=True) == Accounting("a", 5, 500, use=2)
        assert kernel.requests[-1].type == MSG_GET_CTRZERO
        assert acct.list(reset=True) == [Accounting("a", use=2), Accounting("b", 1, 60, use=1)]
        assert acct.list() == [Accounting("a", use=2), Accounting("b", use=1)]
        with pytest.raises(NetlinkNotFound, match="nfacct get nope"):
            acct.get("nope")


def test_create_encodes_counters_quota_and_exclusivity() -> None:
    kernel = FakeKernel()
    with Nfacct(FakeTransport(kernel)) as acct:
        acct.create("q", packets=7, bytes=700, quota=10, quota_in="packets")
        sent = kernel.requests[-1]
        assert sent.type == MSG_NEW and sent.flags & (NLM_F_CREATE | NLM_F_EXCL)
        assert attributes(sent) == {
            ATTR_NAME: b"q\0",
            ATTR_PKTS: struct.pack("!Q", 7),
            ATTR_BYTES: struct.pack("!Q", 700),
            ATTR_FLAGS: struct.pack("!I", Flag.QUOTA_PKTS),
            ATTR_QUOTA: struct.pack("!Q", 10),
        }
        with pytest.raises(NetlinkExists):
            acct.create("q")
        acct.create("q", replace=True)
        assert kernel.requests[-1].flags & NLM_F_REPLACE
        assert not kernel.requests[-1].flags & NLM_F_EXCL
        assert acct.get("q") == Accounting("q", use=1)


@pytest.mark.parametrize("name", ["", "x" * 32, "a\0b"])
def test_names_the_kernel_would_refuse(name: str) -> None:
    with Nfacct(FakeTransport(FakeKernel())) as acct, pytest.raises(EncodeError):
        acct.create(name)


def test_kernel_errors_carry_a_hint() -> None:
    kernel = FakeKernel()
    with Nfacct(FakeTransport(kernel)) as acct:
        kernel.refuse = errno.EBUSY
        with pytest.raises(NetlinkBusy, match=r"nfacct delete web: .*a rule still uses it"):
            acct.delete("web")
        kernel.refuse = errno.EPERM
        with pytest.raises(NetlinkPermissionError, match="CAP_NET_ADMIN"):
            acct.list()


# -- the NFACCT plugin without a kernel --------------------------------------------------------


def build(text: str, tmp_path: Path) -> Pipeline:
    conf = tmp_path / "ulogd.conf"
    conf.write_text(text)
    return Pipeline(ConfigFile(str(conf)), Context(EventLoop()))


@pytest.mark.parametrize("line", ["pollinterval=0", ""])
def test_pollinterval_must_be_positive(line: str, tmp_path: Path) -> None:
    text = (
        f"[global]\nstack=acct1:NFACCT,json1:JSON\n[acct1]\n{line}\n"
        f'[json1]\nfile="{tmp_path}/x.json"\n'
    )
    with pytest.raises(ConfigError) as caught:
        build(text, tmp_path)
    where = f"{tmp_path}/ulogd.conf:4 (pollinterval)" if line else "[acct1] pollinterval (default)"
    assert caught.value.where == where
    assert "must be > 0" in caught.value.what and "pollinterval=10" in caught.value.fix


class Collector:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, events: list[dict[str, Any]]) -> None:
        self.events += events


def started_plugin(
    kernel: FakeKernel,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    options: str,
    wanted: set[str] | None = None,
) -> tuple[nfacct_plugin.NFACCT, Collector]:
    """An NFACCT instance talking to ``kernel``, feeding a Collector."""
    monkeypatch.setattr(nfacct_plugin, "Nfacct", lambda: Nfacct(FakeTransport(kernel)))
    pipeline = build(
        f"[global]\nstack=acct1:NFACCT,json1:JSON\n[acct1]\n{options}\n"
        f'[json1]\nfile="{tmp_path}/x.json"\n',
        tmp_path,
    )
    plugin = pipeline.inputs["acct1"]
    assert isinstance(plugin, nfacct_plugin.NFACCT)
    collector = Collector()
    plugin.attach(collector, wanted)
    plugin.start()
    return plugin, collector


def test_poll_events_and_sigusr2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    kernel = FakeKernel()
    kernel.objects = {"a": Accounting("a", 5, 500, use=2)}
    plugin, collector = started_plugin(
        kernel, monkeypatch, tmp_path, "pollinterval=60\ntimestamp=1", {"sum.name"}
    )
    assert kernel.requests[-1].type == MSG_GET  # the start-up check does not reset
    before = time.time()
    plugin.signal(signal.SIGUSR2)
    after = time.time()
    assert kernel.requests[-1].type == MSG_GET_CTRZERO
    (event,) = collector.events
    assert "sum" not in event  # nobody downstream reads the object
    stamp = event.pop("oob.time.sec") + event.pop("oob.time.usec") / 1e6
    assert before - 1e-3 <= stamp <= after + 1e-3
    assert event == {"sum.name": "a", "sum.pkts": 5, "sum.bytes": 500}
    plugin.signal(signal.SIGUSR1)  # not a poll
    assert len(collector.events) == 1
    plugin.stop()
    plugin.stop()


def test_cumulative_without_timestamp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    kernel = FakeKernel()
    kernel.objects = {"a": Accounting("a", 5, 500, use=2), "b": Accounting("b", use=1)}
    plugin, collector = started_plugin(
        kernel, monkeypatch, tmp_path, "pollinterval=60\nzerocounter=0"
    )
    plugin.poll()
    plugin.poll()
    assert [e["sum.pkts"] for e in collector.events] == [5, 0, 5, 0]
    assert collector.events[0]["sum"] == kernel.objects["a"]
    assert all("oob.time.sec" not in e for e in collector.events)
    plugin.stop()


def test_run_time_errors_are_logged_not_fatal(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kernel = FakeKernel()
    kernel.objects = {"a": Accounting("a", 1, 84, use=2)}
    plugin, collector = started_plugin(kernel, monkeypatch, tmp_path, "pollinterval=60")
    kernel.refuse = errno.ENOMEM
    with caplog.at_level(logging.INFO, logger="nfkit.logd"):
        for _ in range(20):
            plugin.poll()
        kernel.refuse = None
        plugin.poll()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert (
        errors[0] == "NFACCT acct1: reading the counters failed: nfacct list reset: "
        "Cannot allocate memory"
    )
    assert len(errors) == 6  # five, then the number suppressed
    assert errors[-1] == "NFACCT acct1: 15 similar messages suppressed"
    assert "counters read again after 20 failed polls" in caplog.records[-1].getMessage()
    assert [e["sum.pkts"] for e in collector.events] == [1]
    plugin.stop()


# -- through the kernel -------------------------------------------------------------------------


def nfacct_cli_objects(lab: Lab) -> dict[str, dict[str, int]]:
    """``nfacct list`` (Debian's tool) as name -> {pkts, bytes[, quota]}."""
    found: dict[str, dict[str, int]] = {}
    for line in lab.run(lab.b, "nfacct", "list").stdout.splitlines():
        match = re.fullmatch(r"\{ (.*) \} = (\S+);", line.strip())
        assert match, line
        fields = dict(part.split(" = ") for part in match[1].split(", "))
        found[match[2]] = {k: int(v) for k, v in fields.items() if v.isdigit()}
    return found


def count_rules(lab: Lab) -> None:
    """b counts echo requests: IPv4 in ``lib4`` (created by us), IPv6 in ``deb6`` (by nfacct)."""
    lab.iptables(
        lab.b,
        "-A",
        "INPUT",
        "-p",
        "icmp",
        "--icmp-type",
        "echo-request",
        "-m",
        "nfacct",
        "--nfacct-name",
        "lib4",
    )
    lab.ip6tables(
        lab.b,
        "-A",
        "INPUT",
        "-p",
        "ipv6-icmp",
        "--icmpv6-type",
        "echo-request",
        "-m",
        "nfacct",
        "--nfacct-name",
        "deb6",
    )


def rule_counts(lab: Lab) -> dict[str, tuple[int, int]]:
    """name -> (packets, bytes) as the iptables rules themselves counted them."""
    counts = {}
    for ipv6 in (False, True):
        for rule in lab.rule_counters(lab.b, "INPUT", ipv6=ipv6):
            name = re.search(r"--nfacct-name +(\S+)", rule.rule)
            if name:
                counts[name[1]] = (rule.packets, rule.bytes)
    return counts


def ping(lab: Lab, v4: int, v6: int) -> None:
    assert lab.b.ip4 is not None and lab.b.ip6 is not None
    if v4:
        assert lab.ping(lab.a, lab.b.ip4, count=v4, interval=0.05)
    if v6:
        assert lab.ping(lab.a, lab.b.ip6, count=v6, interval=0.05)


@pytest.fixture
def acct_lab(lab: Lab) -> Iterator[tuple[Lab, Nfacct]]:
    """b with ``lib4`` (our library), ``deb6`` (nfacct add) and ``quota4`` objects."""
    with lab.entered(lab.b):
        acct = Nfacct()
    try:
        acct.create("lib4")
        lab.run(lab.b, "nfacct", "add", "deb6")
        acct.create("quota4", quota=2, quota_in="packets")
        count_rules(lab)
        yield lab, acct
    finally:
        acct.close()


@pytest.mark.lab
def test_library_and_nfacct_tool_see_the_same_objects(acct_lab: tuple[Lab, Nfacct]) -> None:
    lab, acct = acct_lab
    lab.iptables(lab.b, "-A", "INPUT", "-p", "icmp", "-m", "nfacct", "--nfacct-name", "quota4")
    ping(lab, 3, 2)
    objects = {o.name: o for o in acct.list()}
    counted = rule_counts(lab)
    assert [*objects] == ["lib4", "deb6", "quota4"]  # creation order
    for name in ("lib4", "deb6"):
        assert (objects[name].packets, objects[name].bytes) == counted[name]
        assert objects[name].use == 2  # the object and one rule
    assert counted["lib4"] == (3, 3 * PING_BYTES) and counted["deb6"][0] == 2
    quota = objects["quota4"]
    assert (quota.quota, quota.quota_in, quota.over_quota) == (2, "packets", True)
    assert quota.packets == 3  # counting goes on beyond the quota
    tool = nfacct_cli_objects(lab)
    assert tool["lib4"] == {"pkts": 3, "bytes": 3 * PING_BYTES}
    assert tool["quota4"]["quota"] == 2
    # read-and-reset: what was counted, then nothing
    assert acct.get("lib4", reset=True).packets == 3
    assert acct.get("lib4").packets == 0
    # the reset clears the over-quota flag; its answer still shows the flag it cleared
    assert acct.get("quota4", reset=True).over_quota
    assert not acct.get("quota4").over_quota


@pytest.mark.lab
def test_library_errors_from_the_kernel(acct_lab: tuple[Lab, Nfacct]) -> None:
    lab, acct = acct_lab
    with pytest.raises(NetlinkExists):
        acct.create("deb6")
    with pytest.raises(NetlinkBusy, match="a rule still uses it"):
        acct.delete("lib4")
    with pytest.raises(NetlinkNotFound):
        acct.get("missing")
    ping(lab, 2, 0)
    acct.create("lib4", replace=True)  # zeroes the counters of the existing object
    assert acct.get("lib4").packets == 0
    acct.create("spare", packets=10, bytes=1000)
    assert acct.get("spare") == Accounting("spare", 10, 1000, use=1)
    acct.delete()  # every object no rule uses
    assert [o.name for o in acct.list()] == ["lib4", "deb6"]
    lab.run(lab.b, "iptables", "-F", "INPUT")
    acct.delete("lib4")
    assert "lib4" not in nfacct_cli_objects(lab)


# -- nfkit logd's NFACCT through the kernel, and ulogd 2.0.8 beside it -----------------------

PLUGINS = ("NFACCT", "JSON", "GPRINT")
#: Traffic between two polls: (IPv4 echo requests, IPv6 echo requests).
ROUNDS = ((3, 2), (1, 0))
OBJECTS = ("lib4", "deb6", "quota4")


def logd_config(workdir: Path, stacks: list[str], sections: dict[str, str]) -> str:
    """A configuration both daemons read: NFACCT/JSON/GPRINT plugins, files in ``workdir``."""
    lines = ["[global]", f'logfile="{workdir}/daemon.log"', "loglevel=3"]
    lines += [f'plugin="{plugin_path(name)}"' for name in PLUGINS]
    lines += [f"stack={stack}" for stack in stacks]
    for section, body in sections.items():
        lines += [f"[{section}]", body]
    return "\n".join(lines) + "\n"


def outputs(workdir: Path) -> dict[str, str]:
    return {
        "json1": f'file="{workdir}/json1.log"\nsync=1',
        "gp1": f'file="{workdir}/gp1.log"\nsync=1',
    }


def wait_lines(run: DaemonRun, counts: dict[str, int], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while any(run.count_lines(name) < count for name, count in counts.items()):
        if run.proc is not None and run.proc.poll() is not None:
            pytest.fail(f"{run.kind} exited:\n{run.diagnostics()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{run.kind}: expected lines {counts}:\n{run.diagnostics()}")
        time.sleep(0.05)


def polled_by_signal(
    lab: Lab, acct: Nfacct, kind: str, workdir: Path, config: str, files: dict[str, int]
) -> DaemonRun:
    """Run ``kind`` on zeroed counters: traffic, SIGUSR2, wait for ``files`` lines; per round."""
    acct.list(reset=True)
    run = DaemonRun(lab, lab.b, kind, workdir, config).start()
    try:
        for done_rounds, (v4, v6) in enumerate(ROUNDS, start=1):
            ping(lab, v4, v6)
            assert run.proc is not None
            run.proc.send_signal(signal.SIGUSR2)
            wait_lines(run, {name: per_poll * done_rounds for name, per_poll in files.items()})
    finally:
        assert run.stop() == 0, run.diagnostics()
    return run


def json_lines(run: DaemonRun, name: str = "json1.log") -> list[dict[str, Any]]:
    return [json.loads(line) for line in run.output(name).splitlines()]


def summed(events: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    return [(e["sum.name"], e["sum.pkts"], e["sum.bytes"]) for e in events]


@pytest.mark.lab
def test_logd_deltas_with_zerocounter_in_two_stacks(
    acct_lab: tuple[Lab, Nfacct], tmp_path: Path
) -> None:
    lab, acct = acct_lab
    # One instance shared by two stacks: every stack gets the poll's time (ulogd2 gives
    # the second stack 0) and SIGUSR2 works (it crashes ulogd2 2.0.8).
    config = logd_config(
        tmp_path,
        ["acct1:NFACCT,json1:JSON", "acct1:NFACCT,gp1:GPRINT"],
        {"acct1": "pollinterval=3600\nzerocounter=1\ntimestamp=1", **outputs(tmp_path)},
    )
    run = polled_by_signal(lab, acct, "nfkit", tmp_path, config, {"json1.log": 3, "gp1.log": 3})
    events = json_lines(run)
    counted = rule_counts(lab)
    v6_bytes = counted["deb6"][1] // 2
    assert summed(events) == [
        ("lib4", 3, 3 * PING_BYTES),
        ("deb6", 2, 2 * v6_bytes),
        ("quota4", 0, 0),
        ("lib4", 1, PING_BYTES),
        ("deb6", 0, 0),
        ("quota4", 0, 0),
    ]
    assert counted["lib4"] == (4, 4 * PING_BYTES)
    gprint = run.output("gp1.log").splitlines()
    assert len(gprint) == len(events)
    for line, event in zip(gprint, events, strict=True):
        assert line == (
            f"sum.name={event['sum.name']},sum.pkts={event['sum.pkts']},"
            f"sum.bytes={event['sum.bytes']},oob.time.sec={event['oob.time.sec']},"
            f"oob.time.usec={event['oob.time.usec']}"
        )
    first, second = events[0]["oob.time.sec"], events[3]["oob.time.sec"]
    assert first <= second and events[0]["oob.time.sec"] == events[2]["oob.time.sec"]
    assert acct.get("lib4").packets == 0  # the daemon's polls reset it


@pytest.mark.lab
def test_logd_cumulative_polls_on_its_timer(acct_lab: tuple[Lab, Nfacct], tmp_path: Path) -> None:
    lab, acct = acct_lab
    ping(lab, 2, 1)
    sections = {"acct1": "pollinterval=1\nzerocounter=0", **outputs(tmp_path)}
    config = logd_config(tmp_path, ["acct1:NFACCT,json1:JSON"], sections)
    run = DaemonRun(lab, lab.b, "nfkit", tmp_path, config).start()
    try:
        wait_lines(run, {"json1.log": 2 * len(OBJECTS)})  # two polls, no signal
    finally:
        assert run.stop() == 0
    events = json_lines(run)
    counted = rule_counts(lab)
    expected = [("lib4", *counted["lib4"]), ("deb6", *counted["deb6"]), ("quota4", 0, 0)]
    assert summed(events[:6]) == expected * 2  # cumulative: every poll sees everything
    assert all("oob.time.sec" not in e for e in events)
    assert acct.get("lib4").packets == 2  # nothing was reset


@pytest.mark.lab
@pytest.mark.reference
@pytest.mark.parametrize("zerocounter", [1, 0])
def test_same_lines_as_ulogd(
    acct_lab: tuple[Lab, Nfacct], tmp_path: Path, zerocounter: int
) -> None:
    reason = missing_reference(["a:" + ",b:".join(PLUGINS)])
    if reason:
        pytest.skip(reason)
    lab, acct = acct_lab
    runs = {}
    for kind in ("ulogd", "nfkit"):
        workdir = tmp_path / kind
        sections = {
            "acct1": f"pollinterval=3600\nzerocounter={zerocounter}\ntimestamp=1",
            **outputs(workdir),
        }
        stacks = ["acct1:NFACCT,json1:JSON"]
        files = {"json1.log": len(OBJECTS)}
        if not zerocounter:
            # A second instance (ulogd2 cannot share one: SIGUSR2 crashes it); both read
            # cumulative counters, so neither disturbs the other.
            stacks.append("acct2:NFACCT,gp1:GPRINT")
            sections["acct2"] = "pollinterval=3600\nzerocounter=0"
            files["gp1.log"] = len(OBJECTS)
        config = logd_config(workdir, stacks, sections)
        runs[kind] = polled_by_signal(lab, acct, kind, workdir, config, files)
    ulogd, nfkit = (json_lines(runs[kind]) for kind in ("ulogd", "nfkit"))
    assert len(ulogd) == len(nfkit) == len(OBJECTS) * len(ROUNDS)
    for theirs, ours in zip(ulogd, nfkit, strict=True):
        # The instants differ (two runs); ulogd2 drops the UTC offset (compatibility.md).
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}", theirs.pop("timestamp"))
        assert re.fullmatch(
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d{4}", ours.pop("timestamp")
        )
        for event in (theirs, ours):
            event["oob.time.sec"] = event["oob.time.usec"] = "instant"
        assert list(theirs.items()) == list(ours.items())
    if not zerocounter:
        assert runs["ulogd"].output("gp1.log") == runs["nfkit"].output("gp1.log")
    counted = rule_counts(lab)
    final = {name: (pkts, size) for name, pkts, size in summed(nfkit)[-len(OBJECTS) :]}
    if zerocounter:
        assert final["lib4"] == (1, PING_BYTES)
    else:
        # Both runs counted the same traffic: half of what the rules saw.
        assert final["lib4"] == (counted["lib4"][0] // 2, counted["lib4"][1] // 2)
        assert final["deb6"] == (counted["deb6"][0] // 2, counted["deb6"][1] // 2)


# -- --info ---------------------------------------------------------------------------------------


@pytest.mark.reference
def test_info_matches_ulogd() -> None:
    so = "/usr/lib/x86_64-linux-gnu/ulogd/ulogd_inpflow_NFACCT.so"
    if missing_reference(["a:NFACCT"]):
        pytest.skip("ulogd2 is not installed")
    expected = subprocess.run(
        ["ulogd", "--info", so], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    assert describe(plugins()["NFACCT"]) == expected
