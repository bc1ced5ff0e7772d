"""Database outputs: the highest packet rate Debian's ulogd 2.0.8 and ``nfkit logd`` log losslessly.

Three set-ups (``--scenarios``), each run with both daemons, one after the
other, on the same traffic, with the same ulogd.conf text (only the NFLOG
group, the database name and the directory of the files differ):

* ``pgsql-normalized``: PostgreSQL, the normalized schema, ``table="ulog"``
  and ``procedure="INSERT_PACKET_FULL"`` (one function call per packet);
* ``pgsql-flat``: PostgreSQL, the flat schema, ``table="ulog2"``,
  ``procedure="INSERT"``;
* ``mariadb-flat``: MariaDB, the flat schema, ``table="ulog2"``,
  ``procedure="INSERT"`` (addresses from IP2BIN into ``binary(16)``).

Stack: ``NFLOG,BASE,IFINDEX,IP2STR (or IP2BIN),HWHDR,PGSQL (or MYSQL)``, the
one the ulogd2 schemas are written for. Namespace a of a lab sends UDP
datagrams (64-byte payload) at a fixed rate for ``--seconds`` to b, where
``-j NFLOG`` logs each one and ``-j DROP`` discards it. The sender is pinned
to CPU 0, the daemon to CPU 1; the database server runs unpinned.

For each daemon the rate steps up (``--rates-<set-up>``) until a step loses
packets. A step is *lossless* when the rows in the database equal the packets
the kernel handed to the NFLOG rule (iptables counter), counted once the
daemon stopped writing after the traffic and again after its SIGTERM. Both
daemons can hold a backlog (ulogd in its socket buffer, nfkit also in its
queue and spool), so a short step can be lossless at a rate a daemon does not
sustain: a step is *kept up* when, besides, the last row arrived at most
``KEPT_UP`` seconds after the traffic. Reported per step: the sender's real
rate, packets logged by the kernel, rows, lost, when the last row arrived,
the daemon's CPU per row (for nfkit, the part spent in its writer thread),
the database server's CPU per row and the machine's other load before the
step. The servers commit durably (their defaults; the tests turn that off).

    python bench/db_bench.py [--scenarios pgsql-normalized,pgsql-flat,mariadb-flat]
                             [--seconds 20] [--rates-<set-up> 1000,2000,...]
                             [--tuned KEY=VALUE ...] [--schemas nfkit|debian]
                             [--output docs/benchmarks.md | --no-write]

``--tuned ring_buffer_size=100000`` adds a third daemon: nfkit with that
line in the output's section.

Needs root (network namespaces, the servers run as their system users),
Debian's ulogd2 with its PGSQL and MYSQL plugins, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]  # nfkit, and the shared helpers

from dbservers import MariaDB, Postgres  # noqa: E402
from nfkit.lab import Lab, traffic_argv, unavailable_reason  # noqa: E402
from nfkit.logd.db.schemas import SCHEMAS  # noqa: E402
from nflog_bench import (  # noqa: E402
    INPUT_OPTIONS,
    PORT,
    background_load,
    environment,
    loss_report,
    pin,
    rules,
)
from reference import (  # noqa: E402
    CLOCK_TICKS,
    DaemonRun,
    iptables_restore,
    missing_reference,
    plugin_path,
    remove_workdir,
)
from report import write_section  # noqa: E402

GROUPS = {"ulogd": 1, "nfkit": 2}
DEBIAN_SCHEMAS = Path("/usr/share/doc/ulogd2")
#: How long to wait, after the traffic, for the rows to stop coming.
SETTLE = 3.0
POLL = 0.5
#: A daemon keeps up with a rate when its last row arrives this soon after the traffic.
KEPT_UP = 2.0
#: One row per packet in both schemas (the normalized one adds rows in other tables).
PACKET_TABLE = "ulog2"


# -- database servers -------------------------------------------------------------------


class Server:
    """A throwaway server of the tests (tests/dbservers.py) seen by the benchmark."""

    name = ""
    output = ""  # the ulogd output plugin

    def reset(self, database: str, schema_sql: str) -> None:
        """(Re)create ``database`` holding ``schema_sql``."""
        raise NotImplementedError

    def count(self, database: str, table: str) -> int:
        raise NotImplementedError

    def options(self, database: str) -> list[str]:
        """The connection options of the output's section."""
        raise NotImplementedError

    def pids(self) -> list[int]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        """Environment both daemons need to reach the server."""
        return {}

    def cpu_seconds(self) -> float:
        """user+sys of every server process (connections included) so far."""
        return cpu_seconds(f"/proc/{pid}" for pid in self.pids())

    def close(self) -> None:
        raise NotImplementedError


class PostgresServer(Server):
    name = "PostgreSQL"
    output = "PGSQL"

    def __init__(self, durable: bool) -> None:
        self.server = Postgres(fsync=durable)

    def reset(self, database: str, schema_sql: str) -> None:
        self.server.psql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        self.server.psql(f'CREATE DATABASE "{database}"')
        subprocess.run(
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", self.server.socket_dir,
             "-p", str(self.server.port), "-U", "postgres", "-d", database],
            input=schema_sql, text=True, check=True, capture_output=True,
        )  # fmt: skip

    def count(self, database: str, table: str) -> int:
        return int(self.server.psql(f"SELECT count(*) FROM {table}", dbname=database))

    def options(self, database: str) -> list[str]:
        return [f'db="{database}"', f'host="{self.server.socket_dir}"',
                f"port={self.server.port}", 'user="postgres"', 'pass=""']

    def pids(self) -> list[int]:
        with open(self.server.data / "postmaster.pid", encoding="ascii") as f:
            postmaster = int(f.readline())
        return [postmaster, *_children(postmaster)]

    def close(self) -> None:
        self.server.remove()


class MariaDBServer(Server):
    name = "MariaDB"
    output = "MYSQL"

    def __init__(self, durable: bool) -> None:
        self.server = MariaDB()
        # The tests' server writes its log at commit without flushing it; 1 is the default.
        self.server.sql(f"SET GLOBAL innodb_flush_log_at_trx_commit = {1 if durable else 0}")

    def reset(self, database: str, schema_sql: str) -> None:
        self.server.sql(f"DROP DATABASE IF EXISTS `{database}`; CREATE DATABASE `{database}`")
        subprocess.run(
            ["mariadb", f"--socket={self.server.socket}", "-uroot", database],
            input=schema_sql, text=True, check=True, capture_output=True,
        )  # fmt: skip

    def count(self, database: str, table: str) -> int:
        return int(self.server.sql(f"SELECT count(*) FROM {table}", database))

    def options(self, database: str) -> list[str]:
        # ulogd's MYSQL reaches "localhost" through the socket named by MYSQL_UNIX_PORT
        # (libmariadb), and so does nfkit's: the same text for both.
        return [f'db="{database}"', 'host="localhost"', 'user="root"', 'pass=""']

    def env(self) -> dict[str, str]:
        return {"MYSQL_UNIX_PORT": self.server.socket}

    def pids(self) -> list[int]:
        process = self.server.process
        return [process.pid] if process is not None else []

    def close(self) -> None:
        self.server.remove()


def stat_fields(path: str) -> list[str]:
    """The fields of ``path``/stat after the command name (empty: the process ended)."""
    try:
        with open(f"{path}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return []


def cpu_seconds(paths: Iterable[str]) -> float:
    """user+sys of the processes or threads at ``paths`` (/proc/PID...)."""
    ticks = 0
    for path in paths:
        fields = stat_fields(path)
        if fields:
            ticks += int(fields[11]) + int(fields[12])
    return float(ticks / CLOCK_TICKS)


def _children(parent: int) -> Iterator[int]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and stat_fields(entry.path)[1:2] == [str(parent)]:
            yield int(entry.name)


SERVERS: dict[str, Callable[[bool], Server]] = {
    "postgres": PostgresServer, "mariadb": MariaDBServer,
}
OUTPUTS = {"postgres": PostgresServer.output, "mariadb": MariaDBServer.output}


# -- set-ups ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    server: str  # key of SERVERS
    normalized: bool
    table: str
    procedure: str
    address_filter: str
    rates: tuple[float, ...]
    #: what the target says, and how to check it from the highest lossless rates
    target: str
    meets_target: Callable[[float, float], bool] = field(compare=False)

    def stack(self, output: str) -> str:
        return (f"log1:NFLOG,base1:BASE,ifi1:IFINDEX,addr1:{self.address_filter},"
                f"mac2str1:HWHDR,db1:{output}")


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("pgsql-normalized", "postgres", True, "ulog", "INSERT_PACKET_FULL", "IP2STR",
                 (500, 1000, 1500, 2000, 3000, 5000, 7500, 10000, 15000, 20000, 30000, 50000),
                 "lossless at 10 x ulogd's highest lossless rate or more",
                 lambda ulogd, nfkit: nfkit >= 10 * ulogd > 0),
        Scenario("pgsql-flat", "postgres", False, "ulog2", "INSERT", "IP2STR",
                 (2000, 5000, 10000, 20000, 30000, 50000, 75000, 100000),
                 "lossless at 50k packets/s",
                 lambda ulogd, nfkit: nfkit >= 50000),
        Scenario("mariadb-flat", "mariadb", False, "ulog2", "INSERT", "IP2BIN",
                 (2000, 5000, 10000, 15000, 20000, 30000, 50000, 75000),
                 "lossless at 20k packets/s",
                 lambda ulogd, nfkit: nfkit >= 20000),
    )
}  # fmt: skip


def schema_sql(scenario: Scenario, source: str) -> str:
    """The schema's SQL: nfkit's own (``nfkit db init``'s files) or Debian ulogd2's."""
    flavour = "" if scenario.normalized else "-flat"
    engine = "pgsql" if scenario.server == "postgres" else "mysql"
    if source == "debian":
        with gzip.open(DEBIAN_SCHEMAS / f"{engine}-ulogd2{flavour}.sql.gz", "rt") as f:
            return f.read()
    return SCHEMAS[engine + flavour].sql()


# -- one step ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Daemon:
    """A daemon of the comparison: the program and extra lines of the output's section."""

    label: str
    program: str  # "ulogd" or "nfkit" (reference.DaemonRun)
    options: tuple[str, ...] = ()


@dataclass
class Step:
    """One daemon, one rate, one burst of ``seconds``."""

    daemon: Daemon
    rate: float
    sent: int
    sender_pps: float
    reached: int  # packets the kernel handed to the NFLOG rule
    rows: int  # after SIGTERM
    catch_up: float  # seconds from the end of the traffic to the last new row
    cpu: float  # daemon user+sys, from ready to settled
    helper_cpu: float  # the part of it in threads other than the main one (nfkit's writer)
    server_cpu: float  # database server user+sys over the same time
    reported_loss: int
    load: float
    exit_code: int

    @property
    def lost(self) -> int:
        return self.reached - self.rows

    @property
    def lossless(self) -> bool:
        return self.rows == self.reached and self.reached > 0

    @property
    def kept_up(self) -> bool:
        return self.lossless and self.catch_up <= KEPT_UP

    def per_row(self, seconds: float) -> float:
        return seconds * 1e6 / self.rows if self.rows else float("nan")


def render_config(scenario: Scenario, server: Server, daemon: Daemon, database: str,
                  workdir: Path) -> str:
    """The ulogd.conf of one step; only the group, database and directory vary by daemon."""
    stack = scenario.stack(server.output)
    names = [token.partition(":")[2] for token in stack.split(",")]
    lines = ["[global]", f'logfile="{workdir / "daemon.log"}"', "loglevel=3",
             *[f'plugin="{plugin_path(name)}"' for name in names], f"stack={stack}",
             "", "[log1]", f"group={GROUPS[daemon.program]}", *INPUT_OPTIONS,
             "", "[db1]", *server.options(database), f'table="{scenario.table}"',
             f'procedure="{scenario.procedure}"',
             f'spool_dir="{workdir / "spool"}"',  # nfkit's; ulogd 2.0.8 ignores what it lacks
             *daemon.options]  # fmt: skip
    return "\n".join(lines) + "\n"


def settle(server: Server, database: str, daemon: DaemonRun, expected: int,
           timeout: float) -> float:
    """Wait until the rows reach ``expected`` or stop growing; the catch-up seconds."""
    start = last_change = time.monotonic()
    rows = server.count(database, PACKET_TABLE)
    while rows < expected and time.monotonic() - start < timeout:
        time.sleep(POLL)
        now = time.monotonic()
        fresh = server.count(database, PACKET_TABLE)
        if fresh != rows:
            rows, last_change = fresh, now
        elif now - last_change >= SETTLE:
            busy = daemon.cpu_seconds()
            time.sleep(POLL)
            if daemon.cpu_seconds() == busy:  # neither writing nor working: it gave up
                break
    return last_change - start


def helper_threads_cpu(pid: int) -> float:
    """user+sys of the threads of ``pid`` other than its main thread."""
    return cpu_seconds(task.path for task in os.scandir(f"/proc/{pid}/task")
                       if task.name != str(pid))


def run_step(lab: Lab, server: Server, scenario: Scenario, daemon: Daemon, rate: float,
             seconds: float, schema: str, workdir: Path, args: argparse.Namespace) -> Step:
    load = background_load(args.patience)
    database = f"bench_{daemon.program}"
    server.reset(database, schema)
    config = render_config(scenario, server, daemon, database, workdir)
    run = DaemonRun(lab, lab.b, daemon.program, workdir, config, wrapper=pin(1)).start(timeout=60)
    try:
        assert run.proc is not None
        server_cpu0, helper_cpu0 = server.cpu_seconds(), helper_threads_cpu(run.proc.pid)
        iptables_restore(lab, lab.b, rules(GROUPS[daemon.program]))
        argv = traffic_argv("udp-send", "--dst", str(lab.b.ip4), "--port", str(PORT),
                            "--count", str(int(rate * seconds)), "--size", "64",
                            "--rate", str(rate))  # fmt: skip
        output = lab.run(lab.a, *pin(0), *argv, timeout=seconds * 3 + 60).stdout
        sender = json.loads(output.splitlines()[-1])
        reached = sum(r.packets for r in lab.rule_counters(lab.b, "INPUT") if "NFLOG" in r.rule)
        iptables_restore(lab, lab.b, rules(None))
        catch_up = settle(server, database, run, reached, args.drain_timeout)
        cpu = run.cpu_seconds() - run.cpu_at_ready
        helper_cpu = helper_threads_cpu(run.proc.pid) - helper_cpu0
        server_cpu = server.cpu_seconds() - server_cpu0
        exit_code = run.stop(timeout=args.drain_timeout)
        rows = server.count(database, PACKET_TABLE)  # SIGTERM may have flushed more
        return Step(daemon, rate, sender["sent"], sender["pps"], reached, rows, catch_up, cpu,
                    helper_cpu, server_cpu, loss_report(daemon.program, run.log_text()), load,
                    exit_code)
    finally:
        run.kill()


# -- report ---------------------------------------------------------------------------------


def rate_label(rate: float) -> str:
    return f"{rate / 1000:g}k"


def highest(steps: list[Step], passed: Callable[[Step], bool]) -> float:
    """The highest rate of the steps that passed below the first that did not (0: none)."""
    best = 0.0
    for step in steps:
        if not passed(step):
            break
        best = step.rate
    return best


def table(steps: dict[Daemon, list[Step]]) -> str:
    head = ("| daemon | rate (pps) | sender's real rate | logged by the kernel | rows "
            "| lost | last row after the traffic | daemon CPU µs / row (writer thread) "
            "| server CPU µs / row | exit | other load before |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for daemon, runs in steps.items():
        for s in runs:
            lost = f"{s.lost} ({100 * s.lost / s.reached:.1f} %)" if s.reached else "-"
            helper = f" ({s.per_row(s.helper_cpu):.1f})" if s.helper_cpu else ""
            lines.append(
                f"| {daemon.label} | {rate_label(s.rate)} | {s.sender_pps:,.0f} | {s.reached} "
                f"| {s.rows} | {lost} | {s.catch_up:.1f} s | {s.per_row(s.cpu):.1f}{helper} "
                f"| {s.per_row(s.server_cpu):.1f} | {s.exit_code} | {100 * s.load:.0f} % |")
    return "\n".join(lines)


CRITERIA: tuple[tuple[str, Callable[[Step], bool]], ...] = (
    ("lossless", lambda step: step.lossless),
    (f"kept up (lossless, last row <= {KEPT_UP:g} s after the traffic)",
     lambda step: step.kept_up),
)  # fmt: skip


def summary(scenario: Scenario, steps: dict[Daemon, list[Step]]) -> str:
    """The highest rates of each daemon and the target's verdict for each nfkit variant."""

    def shown(runs: list[Step], passed: Callable[[Step], bool]) -> str:
        rate = highest(runs, passed)
        if not rate:
            return "none of the rates tried"
        return f"{rate_label(rate)} pps" + (" (the highest tried)" if passed(runs[-1]) else "")

    reference = next((runs for daemon, runs in steps.items() if daemon.program == "ulogd"), [])
    lines = []
    for what, passed in CRITERIA:
        found = [f"{daemon.label} {shown(runs, passed)}" for daemon, runs in steps.items()]
        lines.append(f"* highest rate {what}: " + ", ".join(found))
    ulogd = highest(reference, CRITERIA[0][1])
    for daemon, runs in steps.items():
        if daemon.program == "nfkit":
            nfkit = highest(runs, CRITERIA[0][1])
            ratio = f"; {nfkit / ulogd:.1f} x ulogd's" if ulogd and nfkit else ""
            verdict = "PASS" if scenario.meets_target(ulogd, nfkit) else "FAIL"
            lines.append(f"* {verdict}: {daemon.label} {scenario.target} "
                         f"(lossless up to {rate_label(nfkit)} pps{ratio})")
    return "\n".join(lines) + "\n"


# -- main -----------------------------------------------------------------------------------------


def parse_rates(text: str) -> tuple[float, ...]:
    return tuple(float(item) for item in text.split(",") if item)


def daemons(args: argparse.Namespace) -> list[Daemon]:
    chosen = [Daemon("ulogd", "ulogd"), Daemon("nfkit", "nfkit")]
    if args.tuned:
        chosen.append(Daemon(f"nfkit {' '.join(args.tuned)}", "nfkit", tuple(args.tuned)))
    return [daemon for daemon in chosen if daemon.program in args.daemons.split(",")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--daemons", default="ulogd,nfkit", help="ulogd, nfkit or both")
    parser.add_argument("--seconds", type=float, default=20.0, help="traffic per step")
    for name, scenario in SCENARIOS.items():
        parser.add_argument(f"--rates-{name}", type=parse_rates, default=scenario.rates,
                            help=f"packets/s, comma-separated (default {scenario.rates})")
    parser.add_argument("--durable", action=argparse.BooleanOptionalAction, default=True,
                        help="servers commit durably, their default (--no-durable: as the tests)")
    parser.add_argument("--schemas", choices=("nfkit", "debian"), default="nfkit",
                        help="whose SQL both daemons write to (default: nfkit db init's)")
    parser.add_argument("--tuned", action="append", default=[], metavar="KEY=VALUE",
                        help="also run nfkit with this line in the output's section")
    parser.add_argument("--drain-timeout", type=float, default=120.0,
                        help="seconds to wait for rows after the traffic")
    parser.add_argument("--patience", type=float, default=5.0,
                        help="seconds to wait before each step for other programs to go idle")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true", help="only print the results")
    args = parser.parse_args()
    chosen = [SCENARIOS[name] for name in args.scenarios.split(",")]
    stacks = [s.stack(OUTPUTS[s.server]) for s in chosen]
    reason = unavailable_reason() or missing_reference(stacks)
    if reason:
        print(f"db_bench: cannot run: {reason}", file=sys.stderr)
        return 2
    command = shlex.join(["python", "bench/db_bench.py", *sys.argv[1:]])
    workdir = Path(tempfile.mkdtemp(prefix="nfkit-db-bench-"))
    started = time.monotonic()
    sections: list[str] = []
    servers: dict[str, Server] = {}
    try:
        with Lab() as lab:
            lab.ping(lab.a, str(lab.b.ip4))  # resolve the neighbour before the bursts
            for scenario in chosen:
                if scenario.server not in servers:
                    servers[scenario.server] = SERVERS[scenario.server](args.durable)
                server = servers[scenario.server]
                lab.env.update(server.env())
                schema = schema_sql(scenario, args.schemas)
                steps: dict[Daemon, list[Step]] = {}
                for index, daemon in enumerate(daemons(args)):
                    steps[daemon] = []
                    for rate in getattr(args, f"rates_{scenario.name.replace('-', '_')}"):
                        directory = workdir / f"{scenario.name}-{index}-{rate:g}"
                        step = run_step(lab, server, scenario, daemon, rate, args.seconds,
                                        schema, directory, args)
                        steps[daemon].append(step)
                        print(f"{scenario.name} {daemon.label} {rate_label(rate)} pps: sent "
                              f"{step.sent} at {step.sender_pps:,.0f} pps, kernel logged "
                              f"{step.reached}, rows {step.rows} (lost {step.lost}), last row "
                              f"{step.catch_up:.1f} s after the traffic, "
                              f"{step.per_row(step.cpu):.1f} µs CPU/row "
                              f"(server {step.per_row(step.server_cpu):.1f}), "
                              f"exit {step.exit_code}", file=sys.stderr)
                        if step.lossless:
                            remove_workdir(directory)
                        else:
                            break
                sections.append(f"#### {scenario.name}: {server.name}, table=\"{scenario.table}\","
                                f" procedure=\"{scenario.procedure}\"\n\n{table(steps)}\n\n"
                                f"{summary(scenario, steps)}")
    finally:
        for server in servers.values():
            server.close()
    section = (f"{environment(command)}* {args.seconds:g} s of UDP datagrams (64 bytes) per "
               f"step, schemas: {args.schemas}, "
               f"{'durable commits' if args.durable else 'commits not flushed'}; "
               f"took {time.monotonic() - started:.0f} s; "
               f"files of lossy steps kept in {workdir}\n\n" + "\n".join(sections))
    print(section)
    if not args.no_write:
        write_section(args.output, "db_bench", section, heading="Database outputs")
        print(f"written to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
