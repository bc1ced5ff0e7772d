"""The GRAPHITE output: plaintext lines to a TCP server that may be down.

Unit tests drive the plugin with NFACCT-shaped events (``sum.name``,
``sum.pkts``, ``sum.bytes``, ``oob.time.sec``) towards a local listener. The
lab test runs ``nfkit logd`` with one NFACCT input feeding two stacks,
GRAPHITE and JSON, while the Graphite server is down and after it comes up.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from nfkit.lab import Lab
from nfkit.logd.errors import ConfigError, StartError
from nfkit.logd.keys import Event
from nfkit.logd.loop import EventLoop
from nfkit.logd.plugin import ERROR, Context, Settings
from nfkit.logd.plugins import json_output
from nfkit.logd.plugins.graphite import GRAPHITE
from reference import DaemonRun
from test_ipfix import free_port, wait_for
from test_outputs import Listener, run_until

T = 1_700_000_000


def sample(name: str = "ipv4.tcp", packets: int = 123, octets: int = 45678,
           stamp: int | None = T) -> Event:
    event: Event = {"sum.name": name, "sum.pkts": packets, "sum.bytes": octets}
    if stamp is not None:
        event |= {"oob.time.sec": stamp, "oob.time.usec": 0}
    return event


def graphite(loop: EventLoop | None, port: int | str = 2003, **values: Any) -> GRAPHITE:
    settings = {"host": "127.0.0.1", "port": str(port), "prefix": "netfilter.nfacct"} | values
    plugin = GRAPHITE("graphite1", Settings("graphite1", settings, {}),
                      Context(loop, logging.getLogger("nfkit.logd.test")))
    plugin.configure([])
    return plugin


def send(loop: EventLoop, events: list[Event], **values: Any) -> list[str]:
    """The lines a Graphite server receives for ``events``."""
    listener = Listener(loop, "tcp", Path())
    plugin = graphite(loop, listener.port, **values)
    plugin.start()
    for event in events:
        assert plugin.interp(event) is None
    run_until(loop, lambda: len(listener.lines()) == 2 * len(events))
    plugin.stop()
    listener.close()
    return listener.lines()


def test_plaintext_lines(loop: EventLoop) -> None:
    assert send(loop, [sample(), sample("ipv6.udp", 0, 0, T + 60)]) == [
        f"netfilter.nfacct.ipv4.tcp.pkts 123 {T}\n",
        f"netfilter.nfacct.ipv4.tcp.bytes 45678 {T}\n",
        f"netfilter.nfacct.ipv6.udp.pkts 0 {T + 60}\n",
        f"netfilter.nfacct.ipv6.udp.bytes 0 {T + 60}\n",
    ]


def test_time_is_now_without_a_counter_timestamp(loop: EventLoop) -> None:
    before = int(time.time())
    lines = send(loop, [sample(stamp=None), sample(stamp=0)])
    after = int(time.time())
    stamps = [int(line.split()[2]) for line in lines]
    assert all(before <= stamp <= after for stamp in stamps)


def test_prefix_dots_and_unsafe_names(loop: EventLoop) -> None:
    lines = send(loop, [sample("web in\tlan\n"), sample("b\xe9", stamp=T)], prefix="")
    assert lines == [
        f"web_in_lan_.pkts 123 {T}\n", f"web_in_lan_.bytes 45678 {T}\n",
        f"b\xe9.pkts 123 {T}\n", f"b\xe9.bytes 45678 {T}\n",
    ]
    assert send(loop, [sample()], prefix="site.")[0] == f"site.ipv4.tcp.pkts 123 {T}\n"


def test_bad_events_are_dropped(loop: EventLoop) -> None:
    listener = Listener(loop, "tcp", Path())
    plugin = graphite(loop, listener.port)
    plugin.start()
    no_name = sample()
    del no_name["sum.name"]
    assert plugin.interp(no_name) == ERROR
    assert plugin.interp(sample(packets="many")) == ERROR  # type: ignore[arg-type]
    assert plugin.interp(sample()) is None
    run_until(loop, lambda: len(listener.lines()) == 2)
    plugin.stop()
    listener.close()


@pytest.mark.parametrize("option", ["host", "port"])
def test_host_and_port_are_required(option: str) -> None:
    with pytest.raises(ConfigError, match=f"no Graphite server {option}") as info:
        graphite(None, **{option: ""})
    assert "2003" in info.value.fix


def test_unresolvable_host() -> None:
    plugin = graphite(EventLoop(), "carbon", host="no-such-host.invalid")
    with pytest.raises(StartError, match=r"cannot resolve Graphite server no-such-host\.invalid"):
        plugin.start()


def test_server_down_lines_wait_then_arrive(
    loop: EventLoop, fast_retries: None, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    port = free_port()
    plugin = graphite(loop, port)
    plugin.start()  # nobody listens: the start succeeds
    assert plugin.sender is not None
    plugin.sender.capacity = 6
    for n in range(5):
        assert plugin.interp(sample(packets=n)) is None  # never blocks, never fails
    run_until(loop, lambda: "cannot deliver" in caplog.text, timeout=2)
    assert plugin.sender.dropped == 4  # two lines per event, six kept
    assert caplog.text.count("cannot deliver") == 1
    assert caplog.text.count("is full; dropping new lines") == 1
    listener = Listener(loop, "tcp", Path(), port)
    run_until(loop, lambda: len(listener.lines()) == 6)
    plugin.stop()
    listener.close()
    assert [line.split()[:2] for line in listener.lines()] == [
        [f"netfilter.nfacct.ipv4.tcp.{kind}", str(value)]
        for n in range(3) for kind, value in (("pkts", n), ("bytes", 45678))
    ]
    assert "connected to 127.0.0.1" in caplog.text
    assert "4 lines were dropped while it was full" in caplog.text


def test_retries_back_off(loop: EventLoop, fast_retries: None,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(json_output.LineSender, "max_retry_interval", 0.2)
    retries: list[float] = []
    call_later = loop.call_later

    def recorded(delay: float, callback: Any) -> Any:
        if getattr(callback, "__func__", None) is json_output.LineSender._connect:
            retries.append(delay)
        return call_later(delay, callback)

    monkeypatch.setattr(loop, "call_later", recorded)
    plugin = graphite(loop, free_port())
    plugin.start()
    run_until(loop, lambda: len(retries) == 5, timeout=10)
    plugin.stop()
    assert retries == [0.05, 0.1, 0.2, 0.2, 0.2]  # doubling up to max_retry_interval


# -- NFACCT -> GRAPHITE through the kernel, next to a JSON stack -------------------------

GRAPHITE_PORT = 2003
SERVER = """
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen()
conn, _ = server.accept()
with open(sys.argv[2], "wb") as out:
    while chunk := conn.recv(65536):
        out.write(chunk)
        out.flush()
"""


def json_samples(run: DaemonRun) -> list[dict[str, Any]]:
    return [json.loads(line) for line in run.output("acct.json").splitlines()]


@pytest.mark.lab
def test_nfacct_to_graphite_while_the_server_is_down(lab: Lab, tmp_path: Path) -> None:
    ns = lab.b
    lab.run(ns, "nfacct", "add", "ipv4.icmp")
    lab.iptables(ns, "-A", "INPUT", "-p", "icmp", "--icmp-type", "echo-request",
                 "-m", "nfacct", "--nfacct-name", "ipv4.icmp")
    assert lab.b.ip4 is not None
    assert lab.ping(lab.a, lab.b.ip4, count=3, interval=0.05)
    config = "\n".join([
        "[global]", f'logfile="{tmp_path / "daemon.log"}"', "loglevel=3",
        "stack=acct1:NFACCT,graphite1:GRAPHITE", "stack=acct1:NFACCT,json1:JSON",
        "[acct1]", "pollinterval=1", "zerocounter=0", "timestamp=1",
        "[graphite1]", 'host="127.0.0.1"', f'port="{GRAPHITE_PORT}"',
        'prefix="netfilter.nfacct"',
        "[json1]", f'file="{tmp_path / "acct.json"}"', "sync=1",
    ]) + "\n"
    run = DaemonRun(lab, ns, "nfkit", tmp_path, config).start()
    try:
        # Graphite is down: the JSON stack keeps logging every poll.
        wait_for(lambda: run.count_lines("acct.json") >= 3, "three polls in the JSON file")
        assert "graphite1:GRAPHITE: cannot deliver to 127.0.0.1:2003" in run.log_text()
        received = tmp_path / "graphite.txt"
        server = lab.popen(ns, "python3", "-c", SERVER, str(GRAPHITE_PORT), str(received))
        wait_for(lambda: "connected to 127.0.0.1:2003" in run.log_text(), "the reconnection",
                 timeout=60)
        assert lab.ping(lab.a, lab.b.ip4, count=2, interval=0.05)
        wait_for(lambda: any(s["sum.pkts"] == 5 for s in json_samples(run)), "the new count")
        wait_for(lambda: "ipv4.icmp.pkts 5 " in received.read_text(), "Graphite's new count")
    finally:
        assert run.stop() == 0
    server.wait(timeout=20)  # the daemon's connection closed: the server wrote everything
    samples = json_samples(run)
    assert {s["sum.name"] for s in samples} == {"ipv4.icmp"}
    assert received.read_text() == "".join(
        f"netfilter.nfacct.ipv4.icmp.{kind} {s[f'sum.{kind}']} {s['oob.time.sec']}\n"
        for s in samples for kind in ("pkts", "bytes")
    )
    log = run.log_text()
    assert log.count("cannot deliver") == 1  # said once, not per poll
    assert "buffered lines" in log
