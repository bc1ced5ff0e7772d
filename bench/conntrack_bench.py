"""Conntrack on a 100k-flow table: Debian's conntrack 1.4.7, nfkit and pyroute2.

Everything runs in one lab namespace, in one run, one contender at a time:

* listing: ``conntrack -L`` against ``nfkit conntrack -L`` (output to
  /dev/null), wall and CPU time of the process;
* iterating: the library's ``sum(1 for _ in ct.dump())`` and pyroute2's
  dumps, in this process, against ``conntrack -L``;
* deleting the half of the table that comes from one source address:
  ``conntrack -D -s ADDR`` against ``nfkit conntrack -D -s ADDR`` and the
  library's ``delete_many``, refilling the table before each run;
* decoding events: the same captured NEW, UPDATE and DESTROY event
  datagrams decoded by nfkit and by pyroute2, in µs per event.

Each number is the median of ``--repeat`` runs (pyroute2's slow dumps:
``--pyroute2-repeat``); ratios divide nfkit's median by conntrack's.

    python bench/conntrack_bench.py [--entries 100000] [--repeat 5]
                                    [--output docs/benchmarks.md | --no-write]

Needs root (network namespaces) and Debian's conntrack. pyroute2 is
installed with pip into this interpreter's environment when missing (it is
only a benchmark dependency); without it its rows say why they are empty.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import resource
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]  # nfkit, and the shared helpers

from ctlab import fill_table  # noqa: E402
from nfkit.conntrack import Conntrack, Filter  # noqa: E402
from nfkit.conntrack.events import EventDecoder  # noqa: E402
from nfkit.lab import Lab, Node, unavailable_reason  # noqa: E402
from nfkit.netlink import NETLINK_NETFILTER, NetlinkSocket  # noqa: E402
from nfkit.netlink.codec import NLM_F_CREATE, iter_message_spans, nfnl_type  # noqa: E402
from nflog_bench import background_load, environment  # noqa: E402
from report import write_section  # noqa: E402

CONNTRACK = "/usr/sbin/conntrack"
NFKIT = (sys.executable, "-m", "nfkit.cli.main", "conntrack")
DELETED_SOURCE = "203.0.113.7"
EVENT_GROUPS = (1, 2, 3)  # NFNLGRP_CONNTRACK_NEW, _UPDATE, _DESTROY
IPCTNL_MSG_CT_DELETE = nfnl_type(1, 2)  # also the type of DESTROY events
# Targets (issue 3): nfkit's wall time over conntrack-tools', and µs per event.
LIST_TARGET, ITERATE_TARGET, DELETE_TARGET = 1.5, 1.0, 1.0
EVENT_TARGET_US = 10.0
# Before each run: wait up to RUN_PATIENCE s for the machine's CPU use by
# others to drop under 10 %, sampling it over LOAD_SAMPLE s.
RUN_PATIENCE, LOAD_SAMPLE = 1.5, 0.2


#: One run: wall seconds, CPU seconds, the machine's CPU use (0-1) by others just before.
Timing = tuple[float, float, float]


@dataclass
class Measure:
    """Repeated timings of one contender on one task (seconds).

    ``baseline`` is conntrack-tools' measure of the same task, which ratios
    divide by; ``target`` the ratio nfkit must not exceed.
    """

    task: str
    tool: str
    baseline: Measure | None = None
    target: float | None = None
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)  # the machine's CPU use before each run
    note: str = ""

    @property
    def wall(self) -> float:
        return statistics.median(self.walls) if self.walls else float("nan")

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpus) if self.cpus else float("nan")

    def add(self, wall: float, cpu: float, load: float) -> None:
        self.walls.append(wall)
        self.cpus.append(cpu)
        self.loads.append(load)


# -- timing ----------------------------------------------------------------------------


def quiet() -> float:
    """Wait (a little) for other programs to leave the CPUs; their CPU use (0-1)."""
    return background_load(RUN_PATIENCE, sample=LOAD_SAMPLE)


def time_child(lab: Lab, ns: Node, argv: Sequence[str]) -> Timing:
    """Run ``argv`` in ``ns``, output to /dev/null: wall and CPU (user+sys) seconds,
    and the machine's load before.

    The child is started from a thread inside the namespace (no ``ip netns
    exec`` in the measured time); its CPU time includes the kernel's work
    for its netlink requests.
    """
    load = quiet()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with lab.entered(ns):
        started = time.perf_counter()
        done = subprocess.run(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=lab.env, check=False
        )
        wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} exited {done.returncode}: {done.stderr.decode()}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu, load


def time_call(call: Callable[[], int], expected: int) -> Timing:
    """Run ``call`` in this thread (CPU time: the whole process's), check it returns
    ``expected``: wall and CPU seconds, and the machine's load before."""
    load = quiet()
    started, cpu_started = time.perf_counter(), time.process_time()
    got = call()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    if got != expected:
        raise RuntimeError(f"{call} gave {got}, expected {expected}")
    return wall, cpu, load


def time_call_in(lab: Lab, ns: Node, call: Callable[[], int], expected: int) -> Timing:
    """:func:`time_call` with this thread inside ``ns`` (so are the sockets it opens)."""
    with lab.entered(ns):
        return time_call(call, expected)


def count(lab: Lab, ns: Node) -> int:
    return int(lab.run(ns, CONNTRACK, "-C").stdout)


# -- pyroute2 ----------------------------------------------------------------------------


def pyroute2_unavailable() -> str:
    """Why pyroute2 cannot be used ("" when it can); pip installs it first when missing."""
    if importlib.util.find_spec("pyroute2") is not None:
        return ""
    print("installing pyroute2 (benchmark only) ...", file=sys.stderr)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "pyroute2"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    importlib.invalidate_caches()
    if importlib.util.find_spec("pyroute2") is not None:
        return ""
    return f"pyroute2 could not be installed: {done.stderr.strip()[-200:]}"


def pyroute2_entries() -> int:
    """pyroute2's object-level dump (ConntrackEntry per flow), both families."""
    from pyroute2.conntrack import Conntrack as PyConntrack

    ct = PyConntrack(nfgen_family=socket.AF_UNSPEC)
    try:
        return sum(1 for _ in ct.dump_entries())
    finally:
        ct.close()


def pyroute2_messages() -> int:
    """pyroute2's message-level dump (decoded ``nfct_msg`` per flow)."""
    from pyroute2 import NFCTSocket

    sock = NFCTSocket(nfgen_family=socket.AF_UNSPEC)
    try:
        return sum(1 for _ in sock.dump())
    finally:
        sock.close()


def pyroute2_decode(datagrams: Sequence[bytes]) -> int:
    """pyroute2 decoding event datagrams into ``nfct_msg`` objects (every attribute).

    Its ``ConntrackEntry`` cannot take events: it raises on the sparse TCP
    protoinfo of UPDATE events.
    """
    from pyroute2.netlink.marshal import Marshal
    from pyroute2.netlink.nfnetlink.nfctsocket import AsyncNFCTSocket

    marshal = Marshal()
    marshal.msg_map.update(AsyncNFCTSocket.policy)
    return sum(1 for data in datagrams for _ in marshal.parse(data))


# -- the table ---------------------------------------------------------------------------


def fill(lab: Lab, ns: Node, entries: int) -> None:
    """Half the table from DELETED_SOURCE (UDP); the rest TCP over IPv4 and UDP over IPv6."""
    half = entries // 2
    fill_table(lab, ns, half, src_net=f"{DELETED_SOURCE}/32")
    rest = entries - half
    fill_table(lab, ns, rest - rest // 5, proto="tcp", src_net="198.51.100.0/24")
    fill_table(lab, ns, rest // 5, family=6, src_net="2001:db8:100::/64")


def mask_timeouts(text: str) -> str:
    """The ticking timeout column of ``conntrack -L`` lines, blanked."""
    return re.sub(r"^(\S+ +\d+) \d+ ", r"\1 T ", text, flags=re.MULTILINE)


def check_listings(lab: Lab, ns: Node, entries: int) -> str:
    """Both CLIs list the whole table, the same text (timeouts masked)?"""
    outputs = [lab.run(ns, *argv, "-L", timeout=120) for argv in ((CONNTRACK,), NFKIT)]
    lines = [len(cp.stdout.splitlines()) for cp in outputs]
    if lines != [entries, entries]:
        raise RuntimeError(f"listings have {lines} lines, expected {entries}")
    same = mask_timeouts(outputs[0].stdout) == mask_timeouts(outputs[1].stdout)
    same_summary = outputs[0].stderr == outputs[1].stderr
    return (
        f"both list {entries} flows; stdout "
        f"{'identical' if same else 'DIFFERENT'} (timeouts masked), stderr "
        f"{'identical' if same_summary else 'DIFFERENT'}"
    )


# -- the tasks ---------------------------------------------------------------------------


def bench_listing(lab: Lab, ns: Node, entries: int, repeat: int) -> list[Measure]:
    task = f"list {entries:,} flows"
    c = Measure(task, "`conntrack -L`")
    nfkit = Measure(task, "`nfkit conntrack -L`", c, LIST_TARGET)
    contenders = [(c, (CONNTRACK, "-L")), (nfkit, (*NFKIT, "-L"))]
    for _ in range(repeat):
        for measure, argv in contenders:
            measure.add(*time_child(lab, ns, argv))
        contenders.reverse()  # so that neither always goes first
    return [c, nfkit]


def bench_iteration(
    lab: Lab, ns: Node, listing: Measure, repeat: int, pyroute2_repeat: int, pyroute2_missing: str
) -> list[Measure]:
    """The library's dump and pyroute2's, against ``listing`` (``conntrack -L``)."""
    entries = count(lab, ns)
    task = f"iterate {entries:,} flows"

    def nfkit_dump() -> int:
        with Conntrack() as ct:
            return sum(1 for _ in ct.dump())

    nfkit = Measure(task, "nfkit `sum(1 for _ in ct.dump())`", listing, ITERATE_TARGET)
    for _ in range(repeat):
        nfkit.add(*time_call_in(lab, ns, nfkit_dump, entries))
    measures = [nfkit]
    for name, call in (
        ("pyroute2 `Conntrack.dump_entries()`", pyroute2_entries),
        ("pyroute2 `NFCTSocket.dump()`", pyroute2_messages),
    ):
        measure = Measure(task, name, listing, note=pyroute2_missing)
        for _ in range(0 if pyroute2_missing else pyroute2_repeat):
            measure.add(*time_call_in(lab, ns, call, entries))
        measures.append(measure)
    return measures


def bench_deletion(lab: Lab, ns: Node, entries: int, repeat: int) -> list[Measure]:
    half = entries // 2

    def nfkit_delete_many() -> int:
        with Conntrack() as ct:
            return ct.delete_many(Filter(src=DELETED_SOURCE))

    task = f"delete {half:,} flows"
    c = Measure(task, f"`conntrack -D -s {DELETED_SOURCE}`")
    contenders: list[tuple[Measure, Callable[[], Timing]]] = [
        (c, lambda: time_child(lab, ns, (CONNTRACK, "-D", "-s", DELETED_SOURCE))),
        (Measure(task, f"`nfkit conntrack -D -s {DELETED_SOURCE}`", c, DELETE_TARGET),
         lambda: time_child(lab, ns, (*NFKIT, "-D", "-s", DELETED_SOURCE))),
        (Measure(task, f"nfkit `ct.delete_many(Filter(src={DELETED_SOURCE!r}))`", c,
                 DELETE_TARGET),
         lambda: time_call_in(lab, ns, nfkit_delete_many, half)),
    ]  # fmt: skip
    for run in range(repeat):
        for i in range(len(contenders)):
            measure, timed = contenders[(i + run) % len(contenders)]
            measure.add(*timed())
            left = count(lab, ns)
            if left != entries - half:
                raise RuntimeError(f"{measure.tool} left {left} flows, expected {entries - half}")
            fill_table(lab, ns, half, src_net=f"{DELETED_SOURCE}/32")
    return [measure for measure, _ in contenders]


def capture_events(lab: Lab, ns: Node, per_kind: int) -> tuple[list[bytes], dict[str, int]]:
    """Datagrams of ``per_kind`` NEW, UPDATE and DESTROY events each (half UDP/IPv4,
    half TCP/IPv6, counters and timestamps on), and how many of each type came.

    The table must be empty: every flow is updated and flushed.
    """
    lab.sysctl(ns, "net.netfilter.nf_conntrack_acct", 1)
    lab.sysctl(ns, "net.netfilter.nf_conntrack_timestamp", 1)
    with lab.entered(ns):
        sock = NetlinkSocket(NETLINK_NETFILTER)
    datagrams: list[bytes] = []
    with sock:
        sock.set_receive_buffer(64 << 20)
        for group in EVENT_GROUPS:
            sock.join_group(group)
        sock.set_blocking(False)

        def drain() -> None:
            while True:
                try:
                    datagrams.append(sock.recv())
                except BlockingIOError:
                    return

        for update in (False, True):  # NEW events, then UPDATE events (the mark)
            mark = 1 if update else None
            fill_table(lab, ns, per_kind // 2, src_net="192.0.2.0/24", mark=mark, update=update)
            fill_table(lab, ns, per_kind - per_kind // 2, family=6, proto="tcp",
                       src_net="2001:db8:e::/64", mark=mark, update=update)  # fmt: skip
            drain()
        lab.run(ns, CONNTRACK, "-F")
        drain()
    lab.sysctl(ns, "net.netfilter.nf_conntrack_acct", 0)
    lab.sysctl(ns, "net.netfilter.nf_conntrack_timestamp", 0)
    kinds = {"NEW": 0, "UPDATE": 0, "DESTROY": 0}
    for data in datagrams:
        for mtype, flags, _seq, _pid, _start, _end in iter_message_spans(data):
            kind = "DESTROY" if mtype == IPCTNL_MSG_CT_DELETE else (
                "NEW" if flags & NLM_F_CREATE else "UPDATE")
            kinds[kind] += 1
    return datagrams, kinds


def bench_decoding(
    datagrams: Sequence[bytes], events: int, repeat: int, pyroute2_missing: str
) -> list[Measure]:
    def nfkit_decode() -> int:
        decoder = EventDecoder()
        return sum(len(decoder.decode(data)) for data in datagrams)

    decoders: dict[str, Callable[[], int]] = {"nfkit `EventDecoder().decode`": nfkit_decode}
    if not pyroute2_missing:
        decoders["pyroute2 `nfct_msg` decode"] = lambda: pyroute2_decode(datagrams)
    measures = []
    task = f"decode {events:,} events"
    for name, decode in decoders.items():
        measure = Measure(task, name)
        for _ in range(repeat):
            measure.add(*time_call(decode, events))
        measures.append(measure)
    if pyroute2_missing:
        measures.append(Measure(task, "pyroute2", note=pyroute2_missing))
    return measures


# -- the report --------------------------------------------------------------------------


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b and a == a else "-"


def table(timed: list[Measure], decoded: list[Measure], events: int) -> str:
    """Command and library timings, then event decoding, as markdown tables."""

    def row(*cells: object) -> str:
        return "| " + " | ".join(str(cell) for cell in cells) + " |"

    def load(m: Measure) -> str:
        return f"{100 * max(m.loads):.0f} %"

    lines = [
        row("task", "tool", "runs", "wall s: median (range)", "CPU s (median)",
            "wall / conntrack's", "CPU / conntrack's", "others' CPU use before (max)"),
        row(*["---"] * 8),
    ]  # fmt: skip
    for m in timed:
        base = m.baseline or m
        if not m.walls:
            lines.append(row(m.task, m.tool, 0, "-", "-", "-", "-", f"({m.note})"))
            continue
        spread = f" ({min(m.walls):.3f}-{max(m.walls):.3f})" if len(m.walls) > 1 else ""
        lines.append(row(m.task, m.tool, len(m.walls), f"{m.wall:.3f}{spread}", f"{m.cpu:.3f}",
                         ratio(m.wall, base.wall), ratio(m.cpu, base.cpu), load(m)))  # fmt: skip
    lines += [
        "",
        row("task", "decoder", "runs", "CPU µs per event (median)", "/ nfkit's",
            "others' CPU use before (max)"),
        row(*["---"] * 6),
    ]  # fmt: skip
    for m in decoded:
        if not m.walls:
            lines.append(row(m.task, m.tool, 0, "-", "-", f"({m.note})"))
            continue
        lines.append(row(m.task, m.tool, len(m.walls), f"{m.cpu * 1e6 / events:.2f}",
                         ratio(m.cpu, decoded[0].cpu), load(m)))  # fmt: skip
    return "\n".join(lines)


def verdicts(timed: list[Measure], decoded: list[Measure], events: int) -> list[str]:
    """The targets, PASS or FAIL."""
    out = []
    for m in timed:
        if m.baseline is None or m.target is None:
            continue
        r = m.wall / m.baseline.wall
        out.append(f"{'PASS' if r <= m.target else 'FAIL'}: {m.task}: {m.tool} wall time "
                   f"<= {m.target} x {m.baseline.tool}'s ({r:.2f} x: {m.wall:.3f} vs "
                   f"{m.baseline.wall:.3f} s)")  # fmt: skip
    us = decoded[0].cpu * 1e6 / events
    out.append(f"{'PASS' if us < EVENT_TARGET_US else 'FAIL'}: {decoded[0].tool} takes "
               f"< {EVENT_TARGET_US:g} µs per event ({us:.2f} µs)")  # fmt: skip
    return out


def nfkit_commit() -> str:
    """The commit the measured code is at, and whether src/ has changes on top."""

    def git(*args: str) -> str:
        argv = ["git", "-C", str(ROOT), *args]
        return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip()

    dirty = " with uncommitted changes in src/" if git("status", "--porcelain", "src") else ""
    return f"{git('rev-parse', '--short', 'HEAD') or 'unknown'}{dirty}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100_000,
                        help="flows in the table (at most 129024: half come from one address)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per contender")
    parser.add_argument("--pyroute2-repeat", type=int, default=1,
                        help="runs of pyroute2's dumps (about 25 s each on 100k flows)")
    parser.add_argument("--events", type=int, default=3000,
                        help="events of each type (NEW, UPDATE, DESTROY) to decode")
    parser.add_argument("--no-pyroute2", action="store_true", help="leave pyroute2 out")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true", help="only print the table")
    parser.add_argument("--patience", type=float, default=5.0,
                        help="seconds to wait at the start for other programs to go idle")
    args = parser.parse_args()  # fmt: skip
    reason = unavailable_reason() or (None if shutil.which(CONNTRACK) else f"needs {CONNTRACK}")
    if reason:
        print(f"conntrack_bench: cannot run: {reason}", file=sys.stderr)
        return 2
    pyroute2_missing = "left out (--no-pyroute2)" if args.no_pyroute2 else pyroute2_unavailable()
    # Every option that shapes the numbers (not where they are written).
    command = shlex.join([
        "python", "bench/conntrack_bench.py", "--entries", str(args.entries),
        "--repeat", str(args.repeat), "--pyroute2-repeat", str(args.pyroute2_repeat),
        "--events", str(args.events), "--patience", f"{args.patience:g}",
        *(["--no-pyroute2"] if args.no_pyroute2 else []),
    ])  # fmt: skip
    load = background_load(args.patience)
    started = time.monotonic()
    with Lab() as lab:
        ns = lab.a
        datagrams, kinds = capture_events(lab, ns, args.events)
        events = sum(kinds.values())
        if set(kinds.values()) != {args.events}:
            raise RuntimeError(f"captured {kinds} events, expected {args.events} of each type")
        fill(lab, ns, args.entries)
        if count(lab, ns) != args.entries:
            raise RuntimeError(f"the table has {count(lab, ns)} flows, not {args.entries}")
        sanity = check_listings(lab, ns, args.entries)
        print(sanity, file=sys.stderr)
        timed = bench_listing(lab, ns, args.entries, args.repeat)
        timed += bench_iteration(lab, ns, timed[0], args.repeat, args.pyroute2_repeat,
                                 pyroute2_missing)  # fmt: skip
        timed += bench_deletion(lab, ns, args.entries, args.repeat)
    decoded = bench_decoding(datagrams, events, args.repeat, pyroute2_missing)
    for m in timed + decoded:
        print(f"{m.task}, {m.tool}: wall {m.walls} CPU {m.cpus} others {m.loads} {m.note}",
              file=sys.stderr)
    half = args.entries // 2
    section = (
        f"{environment(command)}"
        f"* nfkit at commit {nfkit_commit()}; other load before: {100 * load:.0f} %; "
        f"took {time.monotonic() - started:.0f} s\n"
        f"* table: {args.entries:,} flows in one namespace: {half:,} UDP from "
        f"{DELETED_SOURCE} (the ones deleted), {args.entries - half - (args.entries - half) // 5:,}"
        f" TCP ESTABLISHED over IPv4, {(args.entries - half) // 5:,} UDP over IPv6; "
        f"no counters or timestamps (Debian's defaults)\n"
        f"* listings: {sanity}\n"
        f"* events: {events:,} datagrams ({args.events:,} NEW, UPDATE and DESTROY each, "
        f"counters and timestamps on)\n\n"
        f"{table(timed, decoded, events)}\n\n"
        + "".join(f"* {v}\n" for v in verdicts(timed, decoded, events))
    )
    print(section)
    if not args.no_write:
        write_section(args.output, "conntrack_bench", section, "conntrack")
        print(f"written to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
