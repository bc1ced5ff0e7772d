"""``nfkit demo``: a throwaway lab, real traffic, logs in SQLite and a text file.

Two network namespaces joined by a veth pair (documentation addresses, IPv4
and IPv6); NFLOG rules inside the lab only; ``nfkit logd`` on the embedded
configuration; ICMP, TCP and UDP traffic both ways; a summary; the lab is
removed at the end, the files are kept.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib import resources
from typing import TYPE_CHECKING

from nfkit.cli.privileges import require_net_admin

if TYPE_CHECKING:
    from nfkit.lab import Lab

GROUP = 7
TABLE = """CREATE TABLE packets (
    oob_time_sec INTEGER, oob_prefix TEXT, oob_in TEXT, oob_out TEXT, oob_family INTEGER,
    ip_protocol INTEGER, ip_saddr_str TEXT, ip_daddr_str TEXT, raw_pktlen INTEGER,
    tcp_sport INTEGER, tcp_dport INTEGER, udp_sport INTEGER, udp_dport INTEGER,
    icmp_type INTEGER, icmpv6_type INTEGER)"""
PROTOCOLS = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6"}
UDP_PORTS = (53, 123, 514)
TCP_PORT = 8080


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="nfkit demo", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="folder for the logs (default: a new temporary folder)")
    parser.add_argument("--keep-lab", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    refusal = require_net_admin("demo")
    if refusal:
        print(refusal, file=sys.stderr)
        return 1
    from nfkit.lab import Lab, unavailable_reason

    reason = unavailable_reason()
    if reason:
        print(f"nfkit demo: {reason}", file=sys.stderr)
        return 1
    workdir = args.workdir or tempfile.mkdtemp(prefix="nfkit-demo-")
    os.makedirs(workdir, exist_ok=True)
    config = os.path.join(workdir, "ulogd.conf")
    template = resources.files("nfkit.logd").joinpath("demo.conf").read_text()
    with open(config, "w") as fh:
        fh.write(template.replace("{workdir}", workdir))
    with sqlite3.connect(os.path.join(workdir, "packets.sqlite")) as db:
        db.execute("DROP TABLE IF EXISTS packets")
        db.execute(TABLE)

    print("nfkit demo: building the lab (namespaces a <-> b, 192.0.2.0/24, 2001:db8::/64)")
    with Lab() as lab:
        for tool in (lab.iptables, lab.ip6tables):
            for chain, prefix in (("INPUT", "demo-in"), ("OUTPUT", "demo-out")):
                tool(
                    lab.b,
                    "-A",
                    chain,
                    "-j",
                    "NFLOG",
                    "--nflog-group",
                    str(GROUP),
                    "--nflog-prefix",
                    prefix,
                )
        daemon = lab.popen(
            lab.b,
            sys.executable,
            "-m",
            "nfkit.cli.main",
            "logd",
            "-c",
            config,
            "--stats-interval",
            "0",
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_for_start(daemon, os.path.join(workdir, "logd.log"))
            print("nfkit demo: logd is running in namespace b; sending traffic")
            _traffic(lab)
            time.sleep(0.5)  # let the last NFLOG batch reach the daemon
        finally:
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                daemon.kill()
        print("nfkit demo: lab removed")
    if daemon.returncode not in (0, -signal.SIGTERM):
        output = daemon.stdout.read().decode(errors="replace") if daemon.stdout else ""
        print(f"nfkit demo: logd failed (exit {daemon.returncode}):\n{output}", file=sys.stderr)
        return 1
    print(summary(workdir))
    return 0


def _wait_for_start(daemon: subprocess.Popen[bytes], logfile: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            output = daemon.stdout.read().decode(errors="replace") if daemon.stdout else ""
            raise SystemExit(
                f"nfkit demo: logd exited at start (code {daemon.returncode}):\n{output}"
            )
        if os.path.exists(logfile):
            with open(logfile) as fh:
                if "entering main loop" in fh.read():
                    return
        time.sleep(0.05)
    raise SystemExit("nfkit demo: logd did not start within 15 s")


def _traffic(lab: Lab) -> None:
    for dst in (lab.b.ip4, lab.b.ip6):
        assert dst is not None
        lab.ping(lab.a, dst, count=3, interval=0.05)
        lab.tcp_exchange(lab.a, dst, TCP_PORT, data=b"hello from the nfkit demo")
        for port in UDP_PORTS:
            lab.udp(lab.a, dst, port, count=2, size=32)


def summary(workdir: str) -> str:
    """Packets per protocol, top ports and where the files are."""
    db_path = os.path.join(workdir, "packets.sqlite")
    text_path = os.path.join(workdir, "packets.log")
    with sqlite3.connect(db_path) as db:
        total = db.execute("SELECT count(*) FROM packets").fetchone()[0]
        per_proto = db.execute(
            "SELECT oob_family, ip_protocol, count(*) FROM packets "
            "GROUP BY oob_family, ip_protocol ORDER BY count(*) DESC"
        ).fetchall()
        ports = db.execute(
            "SELECT coalesce(tcp_dport, udp_dport) AS port, count(*) FROM packets "
            "WHERE oob_prefix = 'demo-in' AND port IS NOT NULL "
            "GROUP BY port ORDER BY count(*) DESC, port LIMIT 5"
        ).fetchall()
    with open(text_path, encoding="utf-8", errors="replace") as fh:
        lines = fh.readlines()
    out = [
        f"\nnfkit demo: {total} packets logged ({len(lines)} text lines)",
        "",
        "packets per protocol:",
    ]
    for family, proto, count in per_proto:
        name = PROTOCOLS.get(proto, f"proto {proto}")
        out.append(f"  {name:<7} IPv{4 if family == 2 else 6}  {count:>5}")
    out.append("")
    out.append("top destination ports (inbound):")
    for port, count in ports:
        out.append(f"  {port:>5}  {count:>5}")
    out += ["", "first text line:", f"  {lines[0].rstrip() if lines else '(none)'}", ""]
    out += [
        f"text log: {text_path}",
        f"SQLite:   {db_path}  (table packets)",
        f"config:   {os.path.join(workdir, 'ulogd.conf')}",
    ]
    return "\n".join(out)
