"""nfkit logd's NFLOG input through the kernel: group sharing, labels, group 0."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nfkit import nflog
from nfkit.lab import Lab
from nfkit.netlink import NetlinkNotSupported

pytestmark = pytest.mark.lab

GROUP = 9


def start_logd(lab: Lab, ns: object, conf: Path, logfile: Path,
               *options: str) -> subprocess.Popen[bytes]:
    daemon = lab.popen(
        ns, sys.executable, "-m", "nfkit.cli.main", "logd", "-c", str(conf), *options,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            out = daemon.stdout.read().decode() if daemon.stdout else ""
            pytest.fail(f"logd exited with {daemon.returncode}: {out}")
        if logfile.exists() and "entering main loop" in logfile.read_text():
            return daemon
        time.sleep(0.05)
    pytest.fail("logd did not start")


def stop_logd(daemon: subprocess.Popen[bytes]) -> None:
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=10) == 0


def json_stack(instance: str, output: str) -> str:
    return f"stack={instance}:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,{output}:JSON"


def test_two_input_ids_share_one_group_with_their_own_labels(lab: Lab, tmp_path: Path) -> None:
    # ulogd2 refuses the second bind ("unable to bind to log group"); nfkit fans out.
    conf = tmp_path / "ulogd.conf"
    conf.write_text(
        f'[global]\nlogfile="{tmp_path}/logd.log"\nloglevel=3\n'
        f"{json_stack('accept', 'json1')}\n{json_stack('drop', 'json2')}\n"
        f"[accept]\ngroup={GROUP}\nnumeric_label=1\nnetlink_qtimeout=1\n"
        f"[drop]\ngroup={GROUP}\nnumeric_label=0\n"
        f'[json1]\nfile="{tmp_path}/one.json"\nsync=1\n'
        f'[json2]\nfile="{tmp_path}/two.json"\nsync=1\n'
    )
    lab.iptables(lab.b, "-A", "INPUT", "-p", "icmp", "-j", "NFLOG", "--nflog-group", str(GROUP))
    daemon = start_logd(lab, lab.b, conf, tmp_path / "logd.log")
    assert lab.b.ip4 is not None and lab.ping(lab.a, lab.b.ip4, count=3, interval=0.05)
    time.sleep(0.3)
    stop_logd(daemon)
    one = [json.loads(line) for line in (tmp_path / "one.json").read_text().splitlines()]
    two = [json.loads(line) for line in (tmp_path / "two.json").read_text().splitlines()]
    assert len(one) == len(two) == 3
    assert {o["raw.label"] for o in one} == {1} and {o["raw.label"] for o in two} == {0}
    strip = [{k: v for k, v in o.items() if k != "raw.label"} for o in one]
    assert strip == [{k: v for k, v in o.items() if k != "raw.label"} for o in two]
    assert {(o["src_ip"], o["icmp.type"]) for o in one} == {(lab.a.ip4, 8)}


def test_group_0_takes_over_system_logging_in_the_namespace(lab: Lab, tmp_path: Path) -> None:
    conf = tmp_path / "ulogd.conf"
    conf.write_text(
        f'[global]\nlogfile="{tmp_path}/logd.log"\nloglevel=3\n{json_stack("log0", "json0")}\n'
        f'[log0]\ngroup=0\nnetlink_qtimeout=1\n[json0]\nfile="{tmp_path}/zero.json"\nsync=1\n'
    )
    # --nflog-group defaults to 0, the group of the kernel's default logger.
    lab.iptables(lab.b, "-A", "INPUT", "-p", "icmp", "-j", "NFLOG", "--nflog-prefix", "zero")
    daemon = start_logd(lab, lab.b, conf, tmp_path / "logd.log")
    loggers = lab.run(lab.b, "cat", "/proc/net/netfilter/nf_log").stdout.splitlines()
    current = {int(line.split()[0]): line.split()[1] for line in loggers}
    assert current[2] == current[10] == current[7] == "nfnetlink_log"
    assert lab.b.ip4 is not None and lab.ping(lab.a, lab.b.ip4, count=2, interval=0.05)
    time.sleep(0.3)
    stop_logd(daemon)
    events = [json.loads(line) for line in (tmp_path / "zero.json").read_text().splitlines()]
    assert [e["oob.prefix"] for e in events] == ["zero", "zero"]
    assert "forcing unbind of existing log handler" in (tmp_path / "logd.log").read_text()


def test_pcap_and_syslog_outputs_get_the_kernels_packets(lab: Lab, tmp_path: Path) -> None:
    sock_path = tmp_path / "log.sock"
    collector = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    collector.bind(str(sock_path))
    collector.settimeout(5)
    conf = tmp_path / "ulogd.conf"
    conf.write_text(
        f'[global]\nlogfile="{tmp_path}/logd.log"\nloglevel=3\n'
        "stack=log1:NFLOG,base1:BASE,pcap1:PCAP\n"
        "stack=log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,print1:PRINTPKT,sys1:SYSLOG\n"
        f"[log1]\ngroup={GROUP}\nnetlink_qtimeout=1\n"
        f'[pcap1]\nfile="{tmp_path}/out.pcap"\nsync=1\n'
        f'[sys1]\nfacility=LOG_LOCAL2\nsocket_path="{sock_path}"\n'
    )
    lab.iptables(lab.b, "-A", "INPUT", "-p", "icmp", "-j", "NFLOG", "--nflog-group", str(GROUP),
                 "--nflog-prefix", "pc")  # fmt: skip
    daemon = start_logd(lab, lab.b, conf, tmp_path / "logd.log")
    try:
        assert lab.b.ip4 is not None and lab.ping(lab.a, lab.b.ip4, count=2, interval=0.05)
        messages = [collector.recv(4096).decode() for _ in range(2)]
    finally:
        collector.close()
    stop_logd(daemon)
    # LOG_LOCAL2 | LOG_NOTICE = 18 * 8 + 5
    assert all(m.startswith("<149>") and "pc IN=nfkb0 OUT= MAC=" in m for m in messages)
    assert all(f"SRC={lab.a.ip4} DST={lab.b.ip4}" in m and "TYPE=8" in m for m in messages)
    fields = subprocess.run(
        ["tshark", "-r", str(tmp_path / "out.pcap"), "-T", "fields",
         "-e", "ip.src", "-e", "ip.dst", "-e", "icmp.type"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.split("\n")  # fmt: skip
    assert [line for line in fields if line] == [f"{lab.a.ip4}\t{lab.b.ip4}\t8"] * 2


def test_attach_conntrack_never_costs_the_stack(lab: Lab, tmp_path: Path) -> None:
    # Kernels built without NFLOG's conntrack glue refuse the whole bind
    # (EOPNOTSUPP) when the flag is asked for: the group is bound without it.
    conf = tmp_path / "ulogd.conf"
    conf.write_text(
        f'[global]\nlogfile="{tmp_path}/logd.log"\nloglevel=1\n{json_stack("ct1", "json1")}\n'
        f"[ct1]\ngroup={GROUP}\nattach_conntrack=1\nnetlink_qtimeout=1\n"
        f'[json1]\nfile="{tmp_path}/ct.json"\nsync=1\n'
    )
    lab.iptables(lab.b, "-A", "INPUT", "-p", "icmp", "-j", "NFLOG", "--nflog-group", str(GROUP))
    daemon = start_logd(lab, lab.b, conf, tmp_path / "logd.log")
    assert lab.b.ip4 is not None and lab.ping(lab.a, lab.b.ip4, count=2, interval=0.05)
    time.sleep(0.3)
    stop_logd(daemon)
    events = [json.loads(line) for line in (tmp_path / "ct.json").read_text().splitlines()]
    assert [(e["src_ip"], e["icmp.type"]) for e in events] == [(lab.a.ip4, 8)] * 2
    warned = "cannot attach conntrack" in (tmp_path / "logd.log").read_text()
    assert warned == (not kernel_attaches_conntrack(lab))


def kernel_attaches_conntrack(lab: Lab) -> bool:
    with lab.entered(lab.b), nflog.NflogSocket() as sock:
        try:
            sock.bind(GROUP, flags=nflog.Flag.CONNTRACK)
        except NetlinkNotSupported:
            return False
        sock.unbind(GROUP)
        return True
