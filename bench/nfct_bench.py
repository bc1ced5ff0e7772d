"""Flow logging: Debian's ulogd 2.0.8 against nfkit logd on a burst of short flows.

Both daemons run the stack of the seed article,

    ct1:NFCT,ip2str1:IP2STR,print1:PRINTFLOW,emu1:LOGEMU

with the same ulogd.conf (only file names differ), in a lab namespace,
pinned to CPU 1, one after the other and on exactly the same flows: the
flows are created and deleted over ctnetlink by this process (pinned to CPU
0) at a fixed rate, each living ``--lifetime`` seconds, so that every flow
gives one NEW and one DESTROY event and, in the default flow-table mode,
one LOGEMU line. Real traffic cannot open and close 20 000 connections a
second from Python; a flow created over ctnetlink makes the same events as
one created by packets.

Each daemon runs in three modes: with its defaults (the socket's receive
buffer is the kernel's default for ulogd, 4 MiB for nfkit), with the same
4 MiB buffer for both, and with ``reliable=1`` (the kernel redelivers the
events a full socket had no room for). A flow is *lost* when it has no line
by the time the daemon went idle after the burst.

    python bench/nfct_bench.py [--rate 20000] [--seconds 10] [--lifetime 0.1]
                               [--output docs/benchmarks.md | --no-write]

Needs root (network namespaces) and Debian's ulogd2.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]  # nfkit, and the shared helpers

from nfkit.conntrack import Flow, Status, Tuple  # noqa: E402
from nfkit.conntrack import const as C  # noqa: E402
from nfkit.conntrack.codec import encode_flow, lookup_attributes, request  # noqa: E402
from nfkit.lab import Lab, unavailable_reason  # noqa: E402
from nfkit.netlink import NETLINK_NETFILTER, NetlinkSocket  # noqa: E402
from nfkit.netlink.codec import (  # noqa: E402
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    iter_message_spans,
    parse_error,
)
from nfkit.netlink.socket import NETLINK_CAP_ACK  # noqa: E402
from nflog_bench import background_load, environment, pin  # noqa: E402
from reference import DaemonRun, missing_reference, plugin_path, remove_workdir  # noqa: E402
from report import write_section  # noqa: E402

STACK = "ct1:NFCT,ip2str1:IP2STR,print1:PRINTFLOW,emu1:LOGEMU"
MAX_CPU_RATIO = 1.5
TICK = 0.01  # seconds between two batches of creations and deletions
BUFFER = 4 << 20
#: Benchmark modes: options of [ct1]. ulogd 2.0.8 applies a buffer size only
#: below the maxsize, hence maxsize = size + 1.
MODES = {
    "defaults": {},
    "4 MiB buffer": {"netlink_socket_buffer_size": BUFFER,
                     "netlink_socket_buffer_maxsize": BUFFER + 1},
    "reliable=1": {"reliable": 1},
}  # fmt: skip
SOURCES = [f"198.51.100.{host}" for host in range(1, 255)]
DESTINATION, DPORT = "192.0.2.100", 53


def config(workdir: Path, options: dict[str, int]) -> str:
    """The ulogd.conf of both daemons, ``options`` in [ct1]."""
    lines = ["[global]", f'logfile="{workdir / "daemon.log"}"', "loglevel=3"]
    names = [token.partition(":")[2] for token in STACK.split(",")]
    lines += [f'plugin="{plugin_path(name)}"' for name in names]
    lines += [f"stack={STACK}", "", "[ct1]", *(f"{k}={v}" for k, v in options.items()),
              "", "[emu1]", f'file="{workdir / "flows.log"}"', "sync=0"]  # fmt: skip
    return "\n".join(lines) + "\n"


# -- the flows ---------------------------------------------------------------------------


def flow_tuple(index: int) -> Tuple:
    source = SOURCES[index % len(SOURCES)]
    return Tuple(socket.AF_INET, source, DESTINATION, 17, 1024 + index // len(SOURCES), DPORT)


def batches(rate: int, seconds: float, lifetime: float) -> list[bytes]:
    """One datagram per tick: the flows born in it and those dying in it.

    Encoded beforehand, so the rate does not depend on this process's speed.
    """
    per_tick = round(rate * TICK)
    ticks = round(seconds / TICK)
    lag = max(1, round(lifetime / TICK))
    create = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL
    out = []
    for tick in range(ticks + lag):
        messages = []
        if tick < ticks:
            for i in range(tick * per_tick, (tick + 1) * per_tick):
                flow = Flow(flow_tuple(i), status=Status.SEEN_REPLY, timeout=60)
                messages.append(request(C.CT_NEW, create, socket.AF_INET,
                                        encode_flow(flow, create=True)))  # fmt: skip
        if tick >= lag:
            for i in range((tick - lag) * per_tick, (tick - lag + 1) * per_tick):
                messages.append(request(C.CT_DELETE, NLM_F_REQUEST, socket.AF_INET,
                                        lookup_attributes(flow_tuple(i))))  # fmt: skip
        out.append(b"".join(m.encode() for m in messages))
    return out


@dataclass
class Generated:
    flows: int
    seconds: float
    refused: int

    @property
    def rate(self) -> float:
        return self.flows / self.seconds if self.seconds else 0.0


def generate(lab: Lab, datagrams: list[bytes], flows: int) -> Generated:
    """Send one datagram per tick (the kernel handles it inside send)."""
    with lab.entered(lab.b):
        sock = NetlinkSocket(NETLINK_NETFILTER)
    refused = 0
    with sock:
        sock.set_option(NETLINK_CAP_ACK)
        sock.set_blocking(False)
        start = time.monotonic()
        for tick, datagram in enumerate(datagrams):
            delay = start + tick * TICK - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sock.send(datagram)
            refused += drain_errors(sock)
        elapsed = time.monotonic() - start
    return Generated(flows, elapsed, refused)


def drain_errors(sock: NetlinkSocket) -> int:
    """Requests the kernel refused (only failures are answered)."""
    count = 0
    while True:
        try:
            data = sock.recv()
        except BlockingIOError:
            return count
        for mtype, flags, _seq, _pid, start, end in iter_message_spans(data):
            if mtype == NLMSG_ERROR and parse_error(data[start:end], flags).code:
                count += 1


# -- one run -------------------------------------------------------------------------------


@dataclass
class Run:
    kind: str
    mode: str
    generated: Generated
    logged: int
    cpu: float
    loss_notices: int
    load: float

    @property
    def lost(self) -> int:
        return self.generated.flows - self.logged

    @property
    def cpu_us_per_flow(self) -> float:
        return 1e6 * self.cpu / self.logged if self.logged else float("nan")


def loss_notices(kind: str, log: str) -> int:
    """ulogd logs a notice per overrun it cares to report; nfkit counts every overrun."""
    if kind == "ulogd":
        return log.count("We are losing events")
    counts = re.findall(r"NFCT ct1: \d+ conntrack messages, \d+ filtered out, (\d+) buffer", log)
    return int(counts[-1]) if counts else 0


def run_one(lab: Lab, kind: str, mode: str, datagrams: list[bytes], flows: int,
            workdir: Path, patience: float) -> Run:  # fmt: skip
    lab.run(lab.b, "conntrack", "-F", check=False)
    load = background_load(patience)
    daemon = DaemonRun(lab, lab.b, kind, workdir, config(workdir, MODES[mode]),
                       wrapper=pin(1)).start()  # fmt: skip
    try:
        generated = generate(lab, datagrams, flows)
        daemon.wait_idle(settle=1.0, minimum=1.0)
        cpu = daemon.cpu_seconds() - daemon.cpu_at_ready
        if daemon.stop() != 0:
            raise RuntimeError(f"{kind} exited with {daemon.returncode}\n{daemon.diagnostics()}")
        return Run(kind, mode, generated, daemon.count_lines("flows.log"), cpu,
                   loss_notices(kind, daemon.log_text()), load)  # fmt: skip
    finally:
        daemon.kill()


# -- the report ------------------------------------------------------------------------------

LOSS_REPORT = {"ulogd": "'losing events' notices", "nfkit": "overruns counted"}


def table(runs: list[Run]) -> str:
    head = ("| mode | daemon | flows created | creation rate | flows logged | lost "
            "| CPU s | CPU µs / flow | daemon's own loss report | other load before |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for mode in MODES:
        pair = {r.kind: r for r in runs if r.mode == mode}
        for kind in ("ulogd", "nfkit"):
            r = pair[kind]
            lost = f"{r.lost} ({100 * r.lost / r.generated.flows:.1f} %)"
            lines.append(f"| {mode} | {kind} | {r.generated.flows} "
                         f"| {r.generated.rate:,.0f} /s | {r.logged} | {lost} | {r.cpu:.2f} "
                         f"| {r.cpu_us_per_flow:.2f} | {r.loss_notices} {LOSS_REPORT[kind]} "
                         f"| {100 * r.load:.0f} % |")  # fmt: skip
        u, n = pair["ulogd"], pair["nfkit"]
        lines.append(f"| {mode} | **nfkit / ulogd** | | | "
                     f"{n.logged / u.logged if u.logged else float('nan'):.2f} | | "
                     f"{n.cpu / u.cpu if u.cpu else float('nan'):.2f} "
                     f"| {n.cpu_us_per_flow / u.cpu_us_per_flow:.2f} | | |")  # fmt: skip
    return "\n".join(lines)


def verdicts(runs: list[Run]) -> list[str]:
    out = []
    for mode in MODES:
        pair = {r.kind: r for r in runs if r.mode == mode}
        u, n = pair["ulogd"], pair["nfkit"]
        ratio = n.cpu_us_per_flow / u.cpu_us_per_flow
        out.append(f"{'PASS' if ratio <= MAX_CPU_RATIO else 'FAIL'}: CPU per flow with "
                   f"{mode} <= {MAX_CPU_RATIO} x ulogd's ({ratio:.2f} x: "
                   f"{n.cpu_us_per_flow:.2f} vs {u.cpu_us_per_flow:.2f} µs)")  # fmt: skip
        if "reliable" in MODES[mode]:
            out.append(f"{'PASS' if n.lost == 0 else 'FAIL'}: nfkit with reliable=1 loses no "
                       f"flow (lost {n.lost}; ulogd lost {u.lost})")  # fmt: skip
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=20_000, help="new flows per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the burst")
    parser.add_argument("--lifetime", type=float, default=0.1, help="seconds a flow lives")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true", help="only print the table")
    parser.add_argument("--patience", type=float, default=5.0,
                        help="seconds to wait before each run for other programs to go idle")
    args = parser.parse_args()
    reason = unavailable_reason() or missing_reference((STACK,))
    if reason:
        print(f"nfct_bench: cannot run: {reason}", file=sys.stderr)
        return 2
    command = shlex.join(["python", "bench/nfct_bench.py", *sys.argv[1:]])
    datagrams = batches(args.rate, args.seconds, args.lifetime)
    flows = round(args.rate * TICK) * round(args.seconds / TICK)
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {0})  # the flow generator; the daemons get CPU 1
    workdir = Path(tempfile.mkdtemp(prefix="nfkit-nfct-bench-"))
    started = time.monotonic()
    runs: list[Run] = []
    try:
        with Lab() as lab:
            for number, mode in enumerate(MODES):
                for kind in ("ulogd", "nfkit"):
                    directory = workdir / f"{kind}-{number}"
                    run = run_one(lab, kind, mode, datagrams, flows, directory, args.patience)
                    remove_workdir(directory)
                    runs.append(run)
                    print(f"{mode} {kind}: {run.generated.flows} flows at "
                          f"{run.generated.rate:,.0f}/s ({run.generated.refused} refused), "
                          f"logged {run.logged}, lost {run.lost}, {run.cpu:.2f} s CPU = "
                          f"{run.cpu_us_per_flow:.2f} µs/flow, {run.loss_notices} loss reports "
                          f"(other load before: {100 * run.load:.0f} %)",
                          file=sys.stderr)  # fmt: skip
    finally:
        remove_workdir(workdir)
    section = (f"{environment(command)}* {flows} UDP flows created and deleted over ctnetlink "
               f"at {args.rate:,}/s for {args.seconds:g} s, each living {args.lifetime:g} s; "
               f"took {time.monotonic() - started:.0f} s\n\n"
               f"{table(runs)}\n\n" + "".join(f"* {v}\n" for v in verdicts(runs)))  # fmt: skip
    print(section)
    if not args.no_write:
        write_section(args.output, "nfct_bench", section, heading="NFCT flow logging")
        print(f"written to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
