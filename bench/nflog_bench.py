"""NFLOG throughput and CPU cost: Debian's ulogd 2.0.8 against ``nfkit logd``.

Both daemons run, one after the other, the stack of Debian's default config
with the same ulogd.conf text (only the NFLOG group and the file names differ)::

    log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,print1:PRINTPKT,emu1:LOGEMU

inside namespace b of a lab, while namespace a sends UDP datagrams (64-byte
payload) to b, where ``-j NFLOG`` logs each one and ``-j DROP`` discards it.
The sender is pinned to CPU 0 and the daemon to CPU 1 (when there are two).
For each rate: packets sent (and the sender's real rate), packets the kernel
handed to the NFLOG rule, lines logged, lost (= sent - logged), and the
daemon's CPU time (user+sys from /proc/PID/stat, from "main loop entered" to
"idle again after the traffic", so start-up is excluded).

    python bench/nflog_bench.py [--packets 300000] [--rates 50000,100000,max]
                                [--repeat N] [--output docs/benchmarks.md | --no-write]

Needs root (network namespaces) and Debian's ulogd2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]  # nfkit, and the shared helpers

from nfkit.lab import Lab, traffic_argv, unavailable_reason  # noqa: E402
from reference import (  # noqa: E402
    DaemonRun,
    iptables_restore,
    missing_reference,
    remove_workdir,
    render_config,
)
from report import write_section  # noqa: E402

STACK = "log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,print1:PRINTPKT,emu1:LOGEMU"
FILES = {"emu1": "emu.log"}
GROUPS = {"ulogd": 1, "nfkit": 2}
PORT = 9  # discard
# ulogd applies netlink_socket_buffer_size only when it is below the maxsize
# (ulogd2.md §11 item 15): maxsize is one byte larger so that 8 MiB is set.
INPUT_OPTIONS = ("netlink_socket_buffer_size=8388608", "netlink_socket_buffer_maxsize=8388609")
# Targets for nfkit (docs/benchmarks.md).
MAX_CPU_RATIO = 1.5


@dataclass
class Run:
    """One daemon on one burst of traffic."""

    kind: str
    rate: float  # target packets/s, 0 = as fast as the sender can
    sent: int
    sender_pps: float
    reached: int  # packets the kernel handed to the NFLOG rule
    logged: int
    cpu: float  # seconds, user+sys
    reported_loss: int  # what the daemon's own log says it lost (see loss_report)
    load: float  # the machine's CPU use just before the run (0-1)
    per_packet_runs: tuple[float, ...] = ()  # CPU µs/packet of each averaged run

    @property
    def lost(self) -> int:
        return self.sent - self.logged

    @property
    def cpu_us_per_packet(self) -> float:
        return self.cpu * 1e6 / self.logged if self.logged else float("nan")


def rules(group: int | None) -> str:
    """filter/INPUT of b: log the benchmark datagrams to ``group``, then drop them."""
    lines = ["*filter", "-F INPUT"]
    if group is not None:
        match = f"-A INPUT -p udp --dport {PORT}"
        lines += [f"{match} -j NFLOG --nflog-group {group} --nflog-prefix BENCH",
                  f"{match} -j DROP"]
    return "\n".join([*lines, "COMMIT", ""])


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def background_load(patience: float, threshold: float = 0.1, sample: float = 0.5) -> float:
    """The machine's CPU use (0-1) before a run, waiting up to ``patience`` seconds
    for it to drop below ``threshold``: other programs skew both daemons' numbers."""
    deadline = time.monotonic() + patience
    while True:
        busy0, total0 = cpu_times()
        time.sleep(sample)
        busy1, total1 = cpu_times()
        load = (busy1 - busy0) / max(1, total1 - total0)
        if load < threshold or time.monotonic() >= deadline:
            return load


def pin(cpu: int) -> tuple[str, ...]:
    return ("taskset", "-c", str(cpu)) if (os.cpu_count() or 1) >= 2 else ()


#: What each daemon's log says about losses: ulogd logs a notice per socket
#: overrun (ENOBUFS) without counting packets; nfkit counts sequence gaps.
LOSS_REPORT = {"ulogd": "ENOBUFS notices", "nfkit": "packets lost (sequence gaps)"}


def loss_report(kind: str, log: str) -> int:
    if kind == "ulogd":
        return log.count("We are losing events")
    gaps = re.findall(r"NFLOG group \d+: \d+ packets received, (\d+) lost", log)
    return int(gaps[-1]) if gaps else 0


def run_one(lab: Lab, kind: str, rate: float, packets: int, size: int, workdir: Path,
            patience: float) -> Run:
    load = background_load(patience)
    group = GROUPS[kind]
    config = render_config((STACK,), group, workdir, FILES, INPUT_OPTIONS)
    daemon = DaemonRun(lab, lab.b, kind, workdir, config, wrapper=pin(1)).start()
    try:
        iptables_restore(lab, lab.b, rules(group))
        argv = traffic_argv("udp-send", "--dst", str(lab.b.ip4), "--port", str(PORT),
                            "--count", str(packets), "--size", str(size))
        if rate:
            argv += ["--rate", str(rate)]
        output = lab.run(lab.a, *pin(0), *argv, timeout=packets / 1000 + 60).stdout
        sender = json.loads(output.splitlines()[-1])  # the generator's "result" event
        # the kernel flushes a partial NFLOG batch after 1 s; then wait until the daemon idles
        daemon.wait_idle(settle=0.5, minimum=1.2)
        cpu = daemon.cpu_seconds() - daemon.cpu_at_ready
        reached = sum(r.packets for r in lab.rule_counters(lab.b, "INPUT") if "NFLOG" in r.rule)
        iptables_restore(lab, lab.b, rules(None))
        if daemon.stop() != 0:
            raise RuntimeError(f"{kind} exited with {daemon.returncode}\n{daemon.diagnostics()}")
        return Run(kind, rate, sender["sent"], sender["pps"], reached,
                   daemon.count_lines("emu.log"), cpu, loss_report(kind, daemon.log_text()), load)
    finally:
        daemon.kill()


def mean_run(runs: list[Run]) -> Run:
    """The average of repeated runs (integers rounded)."""
    first = runs[0]

    def avg(name: str) -> float:
        return statistics.fmean(getattr(r, name) for r in runs)

    return Run(first.kind, first.rate, round(avg("sent")), avg("sender_pps"),
               round(avg("reached")), round(avg("logged")), avg("cpu"),
               round(avg("reported_loss")), max(r.load for r in runs),
               tuple(r.cpu_us_per_packet for r in runs))


def rate_label(rate: float) -> str:
    return f"{rate / 1000:g}k pps" if rate else "full blast"


def spread(values: tuple[float, ...]) -> str:
    """`` (min-max)`` of repeated runs, empty for a single run."""
    return f" ({min(values):.2f}-{max(values):.2f})" if len(values) > 1 else ""


def table(results: dict[float, dict[str, Run]]) -> str:
    head = ("| target rate | daemon | sent | sender's real rate | reached NFLOG rule | logged "
            "| lost (sent - logged) | CPU s | CPU µs / logged packet (range) "
            "| daemon's own loss report "
            "| other load before |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for rate, by_kind in results.items():
        for kind in ("ulogd", "nfkit"):
            r = by_kind[kind]
            loss = f"{r.lost} ({100 * r.lost / r.sent:.1f} %)" if r.sent else "-"
            lines.append(f"| {rate_label(rate)} | {kind} | {r.sent} | {r.sender_pps:,.0f} pps "
                         f"| {r.reached} | {r.logged} | {loss} | {r.cpu:.2f} "
                         f"| {r.cpu_us_per_packet:.2f}{spread(r.per_packet_runs)} "
                         f"| {r.reported_loss} {LOSS_REPORT[kind]} | {100 * r.load:.0f} % |")
        u, n = by_kind["ulogd"], by_kind["nfkit"]
        lines.append(f"| {rate_label(rate)} | **nfkit / ulogd** | | | | "
                     f"{n.logged / u.logged if u.logged else float('nan'):.2f} | | "
                     f"{n.cpu / u.cpu if u.cpu else float('nan'):.2f} "
                     f"| {n.cpu_us_per_packet / u.cpu_us_per_packet:.2f} | | |")
    return "\n".join(lines)


def verdicts(results: dict[float, dict[str, Run]]) -> list[str]:
    """The targets, PASS or FAIL."""
    out = []
    for rate, by_kind in results.items():
        u, n = by_kind["ulogd"], by_kind["nfkit"]
        if rate:
            ok = n.lost == 0
            out.append(f"{'PASS' if ok else 'FAIL'}: nfkit loses nothing at {rate_label(rate)} "
                       f"(lost {n.lost})")
        else:
            ok = n.logged >= u.logged
            out.append(f"{'PASS' if ok else 'FAIL'}: at full blast nfkit logs at least as many "
                       f"as ulogd ({n.logged} vs {u.logged})")
        ratio = n.cpu_us_per_packet / u.cpu_us_per_packet
        out.append(f"{'PASS' if ratio <= MAX_CPU_RATIO else 'FAIL'}: CPU per logged packet at "
                   f"{rate_label(rate)} <= {MAX_CPU_RATIO} x ulogd's ({ratio:.2f} x: "
                   f"{n.cpu_us_per_packet:.2f} vs {u.cpu_us_per_packet:.2f} µs)")
    return out


def environment(command: str) -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = f"{names[0]} x {len(names)}" if names else cpu
    except OSError:
        pass
    return (f"* command: `{command}`\n"
            f"* date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}\n"
            f"* kernel: {platform.release()}, CPU: {cpu}, Python {platform.python_version()}\n")


def parse_rates(text: str) -> list[float]:
    return [0.0 if item in ("max", "0") else float(item) for item in text.split(",")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=300_000)
    parser.add_argument("--size", type=int, default=64, help="UDP payload bytes")
    parser.add_argument("--rates", default="50000,100000,max",
                        help="packets/s, comma-separated; max = as fast as possible")
    parser.add_argument("--repeat", type=int, default=1, help="runs to average per rate")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true", help="only print the table")
    parser.add_argument("--patience", type=float, default=5.0,
                        help="seconds to wait before each run for other programs to go idle")
    args = parser.parse_args()
    reason = unavailable_reason() or missing_reference((STACK,))
    if reason:
        print(f"nflog_bench: cannot run: {reason}", file=sys.stderr)
        return 2
    command = shlex.join(["python", "bench/nflog_bench.py", *sys.argv[1:]])
    workdir = Path(tempfile.mkdtemp(prefix="nfkit-bench-"))
    started = time.monotonic()
    results: dict[float, dict[str, Run]] = {}
    try:
        with Lab() as lab:
            lab.ping(lab.a, str(lab.b.ip4))  # resolve the neighbour before the bursts
            for rate in parse_rates(args.rates):
                runs: dict[str, list[Run]] = {"ulogd": [], "nfkit": []}
                for repeat in range(args.repeat):
                    # alternate who goes first, so neither always gets a cold cache
                    order = ("ulogd", "nfkit") if repeat % 2 == 0 else ("nfkit", "ulogd")
                    for kind in order:
                        directory = workdir / f"{kind}-{rate:g}-{repeat}"
                        run = run_one(lab, kind, rate, args.packets, args.size, directory,
                                      args.patience)
                        remove_workdir(directory)
                        runs[kind].append(run)
                        print(f"{rate_label(rate)} #{repeat + 1} {kind}: sent {run.sent} at "
                              f"{run.sender_pps:,.0f} pps, logged {run.logged}, lost {run.lost}, "
                              f"{run.cpu:.2f} s CPU = {run.cpu_us_per_packet:.2f} µs/packet"
                              f" (other load before: {100 * run.load:.0f} %)",
                              file=sys.stderr)
                results[rate] = {kind: mean_run(r) for kind, r in runs.items()}
    finally:
        remove_workdir(workdir)
    section = (f"{environment(command)}* {args.packets} UDP datagrams of {args.size} bytes per "
               f"run, mean of {args.repeat} run(s); took {time.monotonic() - started:.0f} s\n\n"
               f"{table(results)}\n\n" + "".join(f"* {v}\n" for v in verdicts(results)))
    print(section)
    if not args.no_write:
        write_section(args.output, "nflog_bench", section)
        print(f"written to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
