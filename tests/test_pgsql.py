"""PGSQL and DBI through a real PostgreSQL server, and packets from the kernel.

Every test makes its own database (owned by a role with a password) in the
session's throwaway server (tests/dbservers.py). The lab tests run the
daemon in a lab namespace; it reaches the server over its unix socket.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from dbservers import Postgres
from nfkit.cli import db as db_cli
from nfkit.lab import Lab
from nfkit.logd.db.spool import FileSpool
from nfkit.logd.errors import ConfigError
from nfkit.logd.plugin import Context, Plugin, Settings
from nfkit.logd.registry import plugins
from test_logd_nfct import needs_conntrack_tool, track
from test_logd_nflog import start_logd, stop_logd
from test_outputs import icmp4_event, tcp4_event, tcp6_event, udp4_event

ROLE = "nfkit_ulog"
PASSWORD = "Ul0g-S3cret"
PACKET_STACK = ("NFLOG", "BASE", "IFINDEX", "IP2STR", "HWHDR")
PACKET_STACK_LINE = "base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,mac2str1:HWHDR"
LOG = logging.getLogger("nfkit.logd.test")

pytest.importorskip("psycopg", reason="the PostgreSQL driver (psycopg 3) is not installed")


# -- databases --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def role(postgres: Postgres) -> str:
    postgres.psql(
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN "
        f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'; END IF; END $$"
    )
    return ROLE


@pytest.fixture
def database(postgres: Postgres, role: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database owned by the role, named after the test."""
    name = "pg_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:50]
    postgres.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    postgres.psql(f"CREATE DATABASE {name} OWNER {role}")
    yield name
    postgres.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def load_schema(postgres: Postgres, database: str, flat: bool = False) -> None:
    argv = ["init", "--dsn", postgres.dsn(database, ROLE, PASSWORD), *(["--flat"] if flat else [])]
    assert db_cli.main(argv) == 0


def query(postgres: Postgres, database: str, sql: str) -> list[list[str]]:
    return [line.split("|") for line in postgres.psql(sql, database, ROLE).splitlines() if line]


def connection_options(postgres: Postgres, database: str) -> dict[str, Any]:
    return {"db": database, "host": postgres.socket_dir, "port": postgres.port, "user": ROLE,
            "pass": PASSWORD}


def configured(postgres: Postgres, database: str, tmp_path: Path, table: str, procedure: str,
               upstream: Sequence[str] = PACKET_STACK, name: str = "PGSQL",
               **options: Any) -> Any:
    """A PostgreSQL instance configured at the end of ``upstream`` (not started)."""
    return configured_plugin(name, tmp_path, upstream, **(
        connection_options(postgres, database) | {"table": table, "procedure": procedure}
        | options))


def configured_plugin(name: str, tmp_path: Path, upstream: Sequence[str] = PACKET_STACK,
                      **options: Any) -> Any:
    """An instance of output ``name`` configured at the end of ``upstream`` (not started)."""
    cls = plugins()[name]
    values = {opt.name: opt.default for opt in cls.options} | {
        "spool_dir": str(tmp_path / "spool"), "batch_timeout_ms": 20} | options
    context = Context(None, LOG)
    plugin = cls("pg1", Settings("pg1", values, {}), context)
    chain: list[Plugin] = [plugins()[n](n.lower(), Settings("x", {}, {}), context)
                           for n in upstream]
    plugin.configure(chain)
    return plugin


def write(plugin: Any, events: list[dict[str, Any]]) -> None:
    plugin.start()
    finished: list[int] = []
    plugin.interp_batch(events, finished.append)
    plugin.stop()
    assert finished == []


def with_mac(event: dict[str, Any]) -> dict[str, Any]:
    return event | {"raw.type": 1, "oob.protocol": 0x0800, "mac.saddr.str": "02:00:00:00:00:0a",
                    "mac.daddr.str": "02:00:00:00:00:0b",
                    "mac.str": "02:00:00:00:00:0b:02:00:00:00:00:0a:08:00"}


# -- --info -------------------------------------------------------------------------------------

ADDITIONS = (
    "\tVar: spool_dir (String, Default: /var/spool/nfkit)\n"
    "\tVar: spool_max_bytes (Integer, Default: 1073741824)\n"
    "\tVar: reject_file (String, Default: )\n"
    "\tVar: batch_size (Integer, Default: 1000)\n"
    "\tVar: batch_timeout_ms (Integer, Default: 200)\n"
)


@pytest.mark.reference
@pytest.mark.parametrize("name", ["PGSQL", "DBI"])
def test_info_is_ulogds_plus_the_spool_options(name: str) -> None:
    library = f"/usr/lib/x86_64-linux-gnu/ulogd/ulogd_output_{name}.so"
    if not Path(library).exists():
        pytest.skip(f"ulogd2's {name} plugin is not installed")
    ulogd = subprocess.run(["ulogd", "--info", library], capture_output=True, text=True,
                           check=True).stdout
    ours = subprocess.run([sys.executable, "-m", "nfkit.cli.main", "logd", "-i", name],
                          capture_output=True, text=True, check=True).stdout
    assert ours == ulogd.replace("Input keys:", ADDITIONS + "Input keys:")


# -- writes ---------------------------------------------------------------------------------------


def test_flat_schema_via_insert_stores_typed_values(postgres: Postgres, database: str,
                                                    tmp_path: Path) -> None:
    load_schema(postgres, database, flat=True)
    plugin = configured(postgres, database, tmp_path, "ulog2", "INSERT")
    assert plugin.backend_class()(plugin.params).dbtype == "pgsql"
    big = tcp4_event() | {"tcp.seq": 4_000_000_000, "oob.prefix": "O'Brien \"quoted\" \\"}
    write(plugin, [with_mac(tcp4_event()), udp4_event(), icmp4_event(), tcp6_event(), big])
    assert query(postgres, database,
                 "SELECT oob_prefix, ip_saddr_str, ip_daddr_str, ip_protocol, tcp_dport, "
                 "tcp_seq, tcp_syn, raw_label, mac_saddr_str FROM ulog2 ORDER BY _id") == [
        ["TCP-IN: ", "192.168.1.10", "10.0.0.1", "6", "80", "1000", "t", "1",
         "02:00:00:00:00:0a"],
        ["UDP", "192.168.1.11", "8.8.8.8", "17", "", "", "", "0", ""],
        ["ICMP", "192.168.1.12", "1.1.1.1", "1", "", "", "", "1", ""],
        ["V6", "2001:db8::1", "2001:db8::2", "6", "443", "5", "t", "1", ""],
        ["O'Brien \"quoted\" \\", "192.168.1.10", "10.0.0.1", "6", "80", "4000000000", "t",
         "1", ""],
    ]  # fmt: skip


@pytest.mark.parametrize("twin", [True, False], ids=["set-based-twin", "row-by-row"])
def test_insert_packet_full_fills_the_normalized_schema(postgres: Postgres, database: str,
                                                        tmp_path: Path, twin: bool) -> None:
    load_schema(postgres, database)
    if not twin:  # as with ulogd2's schema: INSERT_PACKET_FULL once per row
        postgres.psql("DROP FUNCTION insert_packet_full_batch(regclass)", database)
    postgres.psql(f"ALTER DATABASE {database} SET track_functions = 'all'")
    rejects = tmp_path / "rejected.json"
    plugin = configured(postgres, database, tmp_path, "ulog", "INSERT_PACKET_FULL",
                        reject_file=str(rejects))
    assert len(plugin.names) == 59  # the ulog view without _id: INSERT_PACKET_FULL's arguments
    too_far = udp4_event() | {"oob.prefix": "TTL", "ip.ttl": 70_000}  # ip_ttl is a smallint
    write(plugin, [with_mac(tcp4_event()), udp4_event(), too_far, icmp4_event(), tcp6_event()])
    calls = {name: int(count) for name, count in query(
        postgres, database, "SELECT funcname, calls FROM pg_stat_user_functions")}
    if twin:
        assert calls.get("insert_packet_full_batch", 0) >= 1
        assert "insert_packet_full" not in calls
    else:
        assert calls["insert_packet_full"] >= 4
    refused = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(r["row"]["oob_prefix"], r["row"]["ip_ttl"]) for r in refused] == [("TTL", 70000)]
    assert "smallint out of range" in refused[0]["reason"]
    assert query(postgres, database,
                 "SELECT ip_saddr_str, tcp_sport, ip_daddr_str, tcp_dport FROM view_tcp_quad "
                 "ORDER BY _id") == [
        ["192.168.1.10", "40000", "10.0.0.1", "80"], ["2001:db8::1", "1234", "2001:db8::2", "443"],
    ]  # fmt: skip
    assert query(postgres, database, "SELECT oob_prefix, label FROM ulog2 ORDER BY _id") == [
        ["TCP-IN: ", "1"], ["UDP", "0"], ["ICMP", "1"], ["V6", "1"]]
    assert query(postgres, database, "SELECT mac_saddr, mac_daddr FROM mac") == [
        ["02:00:00:00:00:0a", "02:00:00:00:00:0b"]]


def test_a_value_that_does_not_fit_goes_to_the_reject_file(postgres: Postgres, database: str,
                                                           tmp_path: Path) -> None:
    postgres.psql(f"CREATE TABLE small (_id serial PRIMARY KEY, oob_prefix varchar(4), "
                  f"ip_totlen smallint); ALTER TABLE small OWNER TO {ROLE}", database)
    rejects = tmp_path / "rejected.json"
    plugin = configured(postgres, database, tmp_path, "small", "INSERT",
                        reject_file=str(rejects))
    events = [{"oob.prefix": "ok", "ip.totlen": 40}, {"oob.prefix": "too long", "ip.totlen": 40},
              {"oob.prefix": "big", "ip.totlen": 70_000}, {"oob.prefix": "last", "ip.totlen": 1}]
    write(plugin, events)
    assert query(postgres, database, "SELECT oob_prefix, ip_totlen FROM small ORDER BY _id") == [
        ["ok", "40"], ["last", "1"]]
    refused = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [r["row"] for r in refused] == [{"oob_prefix": "too long", "ip_totlen": 40},
                                           {"oob_prefix": "big", "ip_totlen": 70000}]
    assert "value too long for type character varying(4)" in refused[0]["reason"]
    assert "out of range for type smallint" in refused[1]["reason"]
    assert all(r["table"] == "small" for r in refused)


def test_schema_option(postgres: Postgres, database: str, tmp_path: Path) -> None:
    postgres.psql(f"CREATE SCHEMA logs AUTHORIZATION {ROLE}; "
                  f"CREATE TABLE logs.pkts (_id serial, oob_prefix text); "
                  f"ALTER TABLE logs.pkts OWNER TO {ROLE}", database)
    plugin = configured(postgres, database, tmp_path, "pkts", "INSERT", schema="logs")
    write(plugin, [{"oob.prefix": "in logs"}])
    assert query(postgres, database, "SELECT oob_prefix FROM logs.pkts") == [["in logs"]]
    with pytest.raises(ConfigError, match="schema 'nope' not found") as info:
        configured(postgres, database, tmp_path, "pkts", "INSERT", schema="nope")
    assert info.value.where == "[pg1] schema (default)"


def test_dbi_with_pgsql_and_sqlite3(postgres: Postgres, database: str, tmp_path: Path) -> None:
    load_schema(postgres, database, flat=True)
    plugin = configured(postgres, database, tmp_path, "ulog2", "INSERT", name="DBI",
                        dbtype="pgsql")
    write(plugin, [tcp4_event(), udp4_event()])
    assert query(postgres, database, "SELECT oob_prefix FROM ulog2 ORDER BY _id") == [
        ["TCP-IN: "], ["UDP"]]
    path = tmp_path / "ulog.sqlite"
    with sqlite3.connect(path) as db:  # DBI leaves the first column to the database
        db.execute("CREATE TABLE pkt (id INTEGER PRIMARY KEY, oob_prefix TEXT, "
                   "ip_saddr_str TEXT, tcp_dport INTEGER)")
    plugin = configured(postgres, database, tmp_path, "pkt", "INSERT", name="DBI",
                        dbtype="sqlite3", db=str(path))
    write(plugin, [tcp4_event(), udp4_event()])
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT * FROM pkt").fetchall() == [
            (1, "TCP-IN: ", "192.168.1.10", 80), (2, "UDP", "192.168.1.11", None)]
    with pytest.raises(ConfigError, match="SQLite has no stored functions"):
        configured(postgres, database, tmp_path, "pkt", "INSERT_PACKET_FULL", name="DBI",
                   dbtype="sqlite3", db=str(path))


def test_dbi_with_mysql(mariadb: Any, tmp_path: Path) -> None:
    pytest.importorskip("pymysql")
    mariadb.sql("DROP DATABASE IF EXISTS dbi_test; CREATE DATABASE dbi_test; "
                "CREATE TABLE dbi_test.pkt (id INT AUTO_INCREMENT PRIMARY KEY, "
                "oob_prefix VARCHAR(32), ip_saddr_str VARCHAR(40), tcp_dport INT)")
    try:
        plugin = configured_plugin(
            "DBI", tmp_path, db="dbi_test", host=mariadb.socket, user="root", table="pkt",
            procedure="INSERT", dbtype="mysql")
        write(plugin, [tcp4_event(), tcp6_event()])
        assert mariadb.sql("SELECT * FROM pkt", "dbi_test").splitlines() == [
            "1\tTCP-IN: \t192.168.1.10\t80", "2\tV6\t2001:db8::1\t443"]
    finally:
        mariadb.sql("DROP DATABASE IF EXISTS dbi_test")


# -- bad input at start-up ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def password_role(postgres: Postgres) -> str:
    """A role the server authenticates by password (the others are trusted)."""
    name = "nfkit_pw"
    hba = postgres.data / "pg_hba.conf"
    rules = f"local all {name} scram-sha-256\nhost all {name} 127.0.0.1/32 scram-sha-256\n"
    if rules not in hba.read_text():
        hba.write_text(rules + hba.read_text())
        postgres.psql("SELECT pg_reload_conf()")
    postgres.psql(
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}') THEN "
        f"CREATE ROLE {name} LOGIN PASSWORD '{PASSWORD}'; END IF; END $$"
    )
    return name


def check(tmp_path: Path, stack: str, section: str) -> subprocess.CompletedProcess[str]:
    conf = tmp_path / "ulogd.conf"
    conf.write_text(f'[global]\nlogfile="{tmp_path}/logd.log"\nstack={stack}\n'
                    f"[log1]\ngroup=1\n[pg1]\n{section}")
    return subprocess.run([sys.executable, "-m", "nfkit.cli.main", "logd", "-c", str(conf),
                           "--check"], capture_output=True, text=True, timeout=120)


def pg_section(postgres: Postgres, database: str, **values: Any) -> str:
    options = connection_options(postgres, database) | {
        "table": "ulog", "procedure": "INSERT_PACKET_FULL"} | values
    return "".join(f'{k}="{v}"\n' if isinstance(v, str) else f"{k}={v}\n"
                   for k, v in options.items())


def test_bad_input_is_one_clear_message_and_exit_2(postgres: Postgres, database: str,
                                                   password_role: str, tmp_path: Path) -> None:
    load_schema(postgres, database)
    packets = f"log1:NFLOG,{PACKET_STACK_LINE},pg1:PGSQL"
    ok = check(tmp_path, packets, pg_section(postgres, database, user=password_role))
    assert ok.returncode == 0, ok.stderr

    cases: list[tuple[str, str, Callable[[str], bool]]] = [
        (packets, pg_section(postgres, database, user=password_role, **{"pass": "Wr0ng-Pa55"}),
         lambda e: f'password authentication failed for user "{password_role}"' in e
         and "Wr0ng-Pa55" not in e and "check db=, user= and pass=" in e),
        (packets, pg_section(postgres, database, table="ulog_missing"),
         lambda e: "no table or view \"ulog_missing\"" in e and "nfkit db init" in e),
        ("log1:NFLOG,base1:BASE,ifi1:IFINDEX,mac2str1:HWHDR,pg1:PGSQL",
         pg_section(postgres, database),
         lambda e: "column 'ip_saddr_str' of table 'ulog'" in e and "(IP2STR)" in e),
        (packets, pg_section(postgres, database, procedure="INSERT_NOTHING"),
         lambda e: "no function insert_nothing taking 59 arguments" in e),
        (packets, pg_section(postgres, database, procedure="INSERT_PACKET_FULL; DROP TABLE x"),
         lambda e: "is not a name" in e),
    ]
    for stack, section, expected in cases:
        result = check(tmp_path, stack, section)
        assert result.returncode == 2, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 2 and "configuration error" in lines[0], result.stderr
        assert expected(result.stderr), result.stderr
        assert PASSWORD not in result.stderr + result.stdout

    nobody = check(tmp_path, packets, pg_section(postgres, database, host="127.0.0.1", port=1,
                                                 connect_timeout=2))
    assert nobody.returncode == 1 and "cannot connect to" in nobody.stderr
    assert PASSWORD not in nobody.stderr


# -- through the kernel ---------------------------------------------------------------------------

GROUP = 21


def daemon_config(tmp_path: Path, stacks: Sequence[str], sections: str) -> Path:
    conf = tmp_path / "ulogd.conf"
    conf.write_text(f'[global]\nlogfile="{tmp_path}/logd.log"\nloglevel=3\n'
                    + "".join(f"stack={stack}\n" for stack in stacks) + sections)
    return conf


def pg_daemon_section(postgres: Postgres, database: str, tmp_path: Path, name: str,
                      **values: Any) -> str:
    return f"[{name}]\n" + pg_section(postgres, database, spool_dir=str(tmp_path / "spool"),
                                      **values)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.mark.lab
def test_seed_walkthrough_tcp_connections_in_view_tcp_quad(
    lab: Lab, postgres: Postgres, tmp_path: Path
) -> None:
    # The article: a user and a database for ulogd, the schema, then the stack.
    postgres.psql("DROP DATABASE IF EXISTS ulog2_walk WITH (FORCE)")
    postgres.psql(f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') "
                  f"THEN CREATE USER {ROLE} WITH PASSWORD '{PASSWORD}'; END IF; END $$")
    postgres.psql(f"CREATE DATABASE ulog2_walk OWNER {ROLE}")
    try:
        load_schema(postgres, "ulog2_walk")
        conf = daemon_config(
            tmp_path, [f"log2:NFLOG,{PACKET_STACK_LINE},pgsql1:PGSQL"],
            f"[log2]\ngroup={GROUP}\nnetlink_qtimeout=1\n"
            + pg_daemon_section(postgres, "ulog2_walk", tmp_path, "pgsql1"),
        )
        lab.iptables(lab.b, "-A", "INPUT", "-p", "tcp", "-j", "NFLOG", "--nflog-group",
                     str(GROUP))  # fmt: skip
        daemon = start_logd(lab, lab.b, conf, tmp_path / "logd.log")
        server = lab.b.ip4 or ""
        for port in (8080, 8081):
            assert lab.tcp_exchange(lab.a, server, port, data=b"hello") == b"hello"
        logged = lab.rule_counters(lab.b, "INPUT")[0].packets
        wait_for(lambda: query(postgres, "ulog2_walk", "SELECT count(*) FROM ulog2")
                 == [[str(logged)]], f"{logged} rows")
        stop_logd(daemon)
        quads = query(postgres, "ulog2_walk", "SELECT * FROM view_tcp_quad")
        assert len(quads) == logged >= 8
        assert {(q[1], q[3], q[4]) for q in quads} == {(lab.a.ip4, server, "8080"),
                                                       (lab.a.ip4, server, "8081")}
        assert len({q[2] for q in quads}) == 2  # one client port per connection
    finally:
        postgres.psql("DROP DATABASE IF EXISTS ulog2_walk WITH (FORCE)")


@pytest.mark.lab
@needs_conntrack_tool
def test_nfct_mark_ip2str_pgsql_keeps_only_mark_1_flows(
    lab: Lab, postgres: Postgres, database: str, tmp_path: Path
) -> None:
    load_schema(postgres, database)
    track(lab)
    for port, mark in ((5001, 1), (5002, 2)):
        lab.iptables(lab.b, "-t", "mangle", "-A", "PREROUTING", "-p", "udp", "--dport",
                     str(port), "-j", "CONNMARK", "--set-mark", str(mark))  # fmt: skip
    conf = daemon_config(
        tmp_path,
        ["ct1:NFCT,mark1:MARK,ip2str1:IP2STR,pgsql2:PGSQL",
         "ct1:NFCT,ip2str1:IP2STR,json1:JSON"],
        "[mark1]\nmark=1\n"
        f'[json1]\nfile="{tmp_path}/flows.json"\nsync=1\n'
        + pg_daemon_section(postgres, database, tmp_path, "pgsql2", table="ulog2_ct",
                            procedure="INSERT_CT"),
    )
    daemon = start_logd(lab, lab.b, conf, tmp_path / "logd.log")
    server = lab.b.ip4 or ""
    for port in (5001, 5002):
        lab.udp(lab.a, server, port, count=2)
    lab.run(lab.b, "conntrack", "-D", "-p", "udp", check=False)  # the flows end: records
    flows = tmp_path / "flows.json"
    wait_for(lambda: flows.exists() and len(flows.read_text().splitlines()) >= 2, "two flows")
    wait_for(lambda: query(postgres, database, "SELECT count(*) FROM ulog2_ct") == [["1"]],
             "the mark-1 flow")
    stop_logd(daemon)
    seen = {json.loads(line)["orig.l4.dport"] for line in flows.read_text().splitlines()}
    assert seen == {5001, 5002}
    assert query(postgres, database,
                 "SELECT orig_ip_saddr_str, orig_ip_daddr_str, orig_ip_protocol, orig_l4_dport, "
                 "ct_mark, orig_raw_pktcount FROM ulog2_ct") == [
        [lab.a.ip4, server, "17", "5001", "1", "2"]]


@pytest.mark.lab
def test_accepted_and_dropped_labels_land_in_the_label_column(
    lab: Lab, postgres: Postgres, database: str, tmp_path: Path
) -> None:
    load_schema(postgres, database)
    conf = daemon_config(
        tmp_path,
        [f"accepted:NFLOG,{PACKET_STACK_LINE},pgsql1:PGSQL",
         f"dropped:NFLOG,{PACKET_STACK_LINE},pgsql1:PGSQL"],
        f"[accepted]\ngroup={GROUP}\nnumeric_label=1\nnetlink_qtimeout=1\n"
        f"[dropped]\ngroup={GROUP + 1}\nnumeric_label=0\nnetlink_qtimeout=1\n"
        + pg_daemon_section(postgres, database, tmp_path, "pgsql1"),
    )
    for port, group, verdict in ((5001, GROUP, "ACCEPT"), (5002, GROUP + 1, "DROP")):
        rule = ("-A", "INPUT", "-p", "udp", "--dport", str(port))
        lab.iptables(lab.b, *rule, "-j", "NFLOG", "--nflog-group", str(group))
        lab.iptables(lab.b, *rule, "-j", verdict)
    daemon = start_logd(lab, lab.b, conf, tmp_path / "logd.log")
    lab.udp(lab.a, lab.b.ip4 or "", 5001, count=3)
    lab.udp(lab.a, lab.b.ip4 or "", 5002, count=2)
    labels = "SELECT u.label, d.udp_dport FROM ulog2 u JOIN udp d ON d._udp_id = u._id ORDER BY 2"
    wait_for(lambda: len(query(postgres, database, labels)) == 5, "five rows")
    stop_logd(daemon)
    assert query(postgres, database, labels) == [["1", "5001"]] * 3 + [["0", "5002"]] * 2
    assert sorted(p.name for p in (tmp_path / "spool").glob("*.lock")) == [
        "pgsql1.lock", "pgsql1@2.lock"]  # one instance per stack, each with its spool


@pytest.mark.lab
def test_a_30_second_outage_loses_no_row(
    lab: Lab, postgres: Postgres, database: str, tmp_path: Path
) -> None:
    load_schema(postgres, database)
    conf = daemon_config(
        tmp_path,
        [f"log1:NFLOG,{PACKET_STACK_LINE},pgsql1:PGSQL",
         "log1:NFLOG,base1:BASE,ip2str1:IP2STR,json1:JSON"],
        f"[log1]\ngroup={GROUP}\nnetlink_qtimeout=1\n"
        f'[json1]\nfile="{tmp_path}/packets.json"\n'
        + pg_daemon_section(postgres, database, tmp_path, "pgsql1", reconnect=1),
    )
    lab.iptables(lab.b, "-A", "INPUT", "-p", "udp", "--dport", "5001", "-j", "NFLOG",
                 "--nflog-group", str(GROUP))  # fmt: skip
    daemon = start_logd(lab, lab.b, conf, tmp_path / "logd.log")
    rate, seconds = 200, 45
    sent: dict[str, Any] = {}
    stream = threading.Thread(target=lambda: sent.update(lab.udp(
        lab.a, lab.b.ip4 or "", 5001, count=rate * seconds, rate=rate, timeout=seconds + 30)))
    stream.start()
    try:
        time.sleep(5)
        postgres.stop()
        time.sleep(30)
    finally:
        postgres.start()
        stream.join()
    logged = lab.rule_counters(lab.b, "INPUT")[0].packets
    assert logged == sent["sent"] == rate * seconds
    count = "SELECT count(*) FROM ulog2"
    wait_for(lambda: query(postgres, database, count) == [[str(logged)]], f"{logged} rows", 120)
    stop_logd(daemon)
    assert query(postgres, database, count) == [[str(logged)]]
    assert len((tmp_path / "packets.json").read_text().splitlines()) == logged
    # In order: the ids follow the packets' times.
    assert query(postgres, database,
                 "SELECT count(*) FROM (SELECT oob_time_sec * 1000000 + oob_time_usec AS t, "
                 "lag(oob_time_sec * 1000000 + oob_time_usec) OVER (ORDER BY _id) AS before "
                 "FROM ulog2) s WHERE t < before") == [["0"]]
    log = (tmp_path / "logd.log").read_text()
    assert "no connection to" in log and "connected to" in log and "again" in log
    assert PASSWORD not in log
    assert not list((tmp_path / "spool").glob("*.spool"))


@pytest.mark.lab
def test_the_spool_belongs_to_the_user_the_daemon_drops_to(
    lab: Lab, postgres: Postgres, database: str, tmp_path: Path
) -> None:
    """With -u nobody the spool directory the daemon creates, and its files, are nobody's:
    rows spooled during an outage are kept, and a second run as nobody replays them."""
    load_schema(postgres, database)
    base = Path(tempfile.mkdtemp(prefix="nfkit-spool-"))  # nobody can traverse /tmp
    os.chmod(base, 0o755)
    spool = base / "spool"
    try:
        conf = daemon_config(
            tmp_path, [f"log1:NFLOG,{PACKET_STACK_LINE},pgsql1:PGSQL"],
            f"[log1]\ngroup={GROUP}\nnetlink_qtimeout=1\n[pgsql1]\n"
            + pg_section(postgres, database, spool_dir=str(spool), reconnect=1),
        )
        lab.iptables(lab.b, "-A", "INPUT", "-p", "udp", "--dport", "5002", "-j", "NFLOG",
                     "--nflog-group", str(GROUP))  # fmt: skip
        log = tmp_path / "logd.log"
        daemon = start_logd(lab, lab.b, conf, log, "-u", "nobody")
        postgres.stop()
        try:
            lab.udp(lab.a, lab.b.ip4 or "", 5002, count=50, rate=100, timeout=10)
            logged = lab.rule_counters(lab.b, "INPUT")[0].packets
            assert logged == 50
            stop_logd(daemon)
        finally:
            postgres.start()
        nobody = pwd.getpwnam("nobody").pw_uid
        files = list(spool.iterdir())
        assert spool.stat().st_uid == nobody
        assert any(f.name.endswith(".spool") for f in files), files
        assert all(f.stat().st_uid == nobody for f in files), files
        assert "cannot write" not in log.read_text()
        held = FileSpool(str(spool), "pgsql1", 1 << 30)
        try:
            assert held.rows == logged
        finally:
            held.close()
        daemon = start_logd(lab, lab.b, conf, log, "-u", "nobody")
        count = "SELECT count(*) FROM ulog2"
        wait_for(lambda: query(postgres, database, count) == [[str(logged)]], f"{logged} rows")
        stop_logd(daemon)
        assert not list(spool.glob("*.spool"))
    finally:
        shutil.rmtree(base, ignore_errors=True)
