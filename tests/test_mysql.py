"""The MYSQL output and its MariaDB backend, against a throwaway MariaDB server.

Backend tests write through :class:`MariaDBBackend` directly (values, batches,
routines, refused rows, configuration errors); daemon tests run ``nfkit logd``
in a lab namespace with the kernel's packets and flows, the flat schema of
``nfkit db init``, an outage of the server and rows that do not fit.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dbservers import MariaDB
from nfkit.cli import logd as logd_cli
from nfkit.lab import Lab
from nfkit.logd.db.backend import (
    Column,
    ConnectParams,
    DatabaseMisconfigured,
    DatabaseUnreachable,
    Name,
    RowRejected,
    Statement,
)
from nfkit.logd.db.mariadb import DEFAULT_SOCKET, MariaDBBackend, socket_path
from nfkit.logd.db.output import SPOOL_OPTIONS
from nfkit.logd.db.schemas import SCHEMAS
from nfkit.logd.keys import Key, KeyType
from reference import ULOGD_PLUGIN_DIR

pymysql = pytest.importorskip("pymysql")

DATABASE = "nfkit_test_mysql"
FLAT = "nfkit_test_mysql_flat"
USER, PASSWORD = "logd", "Pw-not-in-any-log-4711"
GROUP = 7
MYSQL_SO = f"{ULOGD_PLUGIN_DIR}/ulogd_output_MYSQL.so"
PACKET_STACK = "log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2bin1:IP2BIN,mac2str1:HWHDR,my1:MYSQL"

VALUES_TABLE = """
CREATE TABLE vals (
    _id bigint unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY,
    txt varchar(64),
    addr binary(16),
    big bigint unsigned,
    small smallint unsigned,
    flag tinyint
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""
ROUTINES = (
    "CREATE FUNCTION add_val(t varchar(64), s smallint unsigned) RETURNS bigint unsigned "
    "MODIFIES SQL DATA BEGIN INSERT INTO vals (txt, small) VALUES (t, s); "
    "RETURN LAST_INSERT_ID(); END",
    "CREATE PROCEDURE put_val(t varchar(64), s smallint unsigned) "
    "BEGIN INSERT INTO vals (txt, small) VALUES (t, s); END",
)


def admin(server: MariaDB, *statements: str, database: str | None = None) -> list[Any]:
    """Run statements as root; the rows of the last one."""
    connection = pymysql.connect(unix_socket=server.socket, user="root", database=database,
                                 autocommit=True)  # fmt: skip
    try:
        with connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
            return list(cursor.fetchall())
    finally:
        connection.close()


@pytest.fixture(scope="module")
def server(mariadb: MariaDB) -> Iterator[MariaDB]:
    """The session's server with this module's database and a user with a password."""
    admin(mariadb, f"DROP DATABASE IF EXISTS {DATABASE}", f"CREATE DATABASE {DATABASE}",
          f"DROP DATABASE IF EXISTS {FLAT}", f"CREATE DATABASE {FLAT}",
          f"CREATE OR REPLACE USER '{USER}'@'localhost' IDENTIFIED BY '{PASSWORD}'",
          f"GRANT ALL ON {DATABASE}.* TO '{USER}'@'localhost'",
          f"GRANT ALL ON {FLAT}.* TO '{USER}'@'localhost'")  # fmt: skip
    subprocess.run(["mariadb", f"--socket={mariadb.socket}", "-uroot", FLAT],
                   input=SCHEMAS["mysql-flat"].sql(), text=True, check=True)  # fmt: skip
    yield mariadb
    admin(mariadb, f"DROP DATABASE IF EXISTS {DATABASE}", f"DROP DATABASE IF EXISTS {FLAT}",
          f"DROP USER IF EXISTS '{USER}'@'localhost'")  # fmt: skip


@pytest.fixture
def values_table(server: MariaDB) -> MariaDB:
    drop = ("DROP TABLE IF EXISTS vals", "DROP FUNCTION IF EXISTS add_val",
            "DROP PROCEDURE IF EXISTS put_val")  # fmt: skip
    admin(server, *drop, VALUES_TABLE, *ROUTINES, database=DATABASE)
    return server


def backend(server: MariaDB, database: str = DATABASE, **changes: Any) -> MariaDBBackend:
    fields: dict[str, Any] = {"database": database, "host": server.socket, "user": USER,
                              "password": PASSWORD, **changes}  # fmt: skip
    return MariaDBBackend(ConnectParams(**fields))


@contextlib.contextmanager
def connected(server: MariaDB, procedure: str, table: str = "vals",
              columns: tuple[str, ...] = ("txt", "small")) -> Iterator[MariaDBBackend]:
    """A backend connected, ``procedure`` prepared for ``columns`` of ``table``."""
    db = backend(server)
    db.connect()
    try:
        found = {column.name: column for column in db.columns(Name.parse(table))}
        db.prepare(Statement.parse(procedure, table, [found[name] for name in columns]))
        yield db
    finally:
        db.close()


def stored(server: MariaDB, columns: str = "txt, small") -> list[tuple[Any, ...]]:
    return [tuple(row) for row in admin(server, f"SELECT {columns} FROM vals ORDER BY _id",
                                        database=DATABASE)]  # fmt: skip


# -- --info and addresses of the server ------------------------------------------------------


@pytest.mark.reference
def test_info_is_ulogds_then_the_spool_options() -> None:
    if not os.access("/usr/sbin/ulogd", os.X_OK) or not os.path.exists(MYSQL_SO):
        pytest.skip("ulogd2 is not installed")
    expected = subprocess.run(["ulogd", "--info", MYSQL_SO], capture_output=True, text=True,
                              check=True).stdout  # fmt: skip
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert logd_cli.main(["-i", MYSQL_SO]) == 0
    ours = out.getvalue().splitlines(keepends=True)
    extras = [line for line in ours if line.split(" ")[1] in {o.name for o in SPOOL_OPTIONS}]
    assert [line.split(" ")[1] for line in extras] == [o.name for o in SPOOL_OPTIONS]
    assert "".join(line for line in ours if line not in extras) == expected


def test_localhost_is_the_local_socket_and_a_path_is_a_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MYSQL_UNIX_PORT", raising=False)
    assert socket_path("localhost") == socket_path("") == DEFAULT_SOCKET
    monkeypatch.setenv("MYSQL_UNIX_PORT", "/tmp/my.sock")
    assert socket_path("localhost") == "/tmp/my.sock"
    assert socket_path("/run/other.sock") == "/run/other.sock"
    assert socket_path("127.0.0.1") is None and socket_path("db.example") is None


def test_tcp_and_localhost_reach_the_server(values_table: MariaDB,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MYSQL_UNIX_PORT", values_table.socket)
    for host, port in (("127.0.0.1", values_table.port), ("localhost", 0)):
        admin(values_table, "DELETE FROM vals", database=DATABASE)
        db = backend(values_table, host=host, port=port, user="root", password="")
        db.connect()
        try:
            db.prepare(Statement.parse("INSERT", "vals", [Column("txt"), Column("small")]))
            db.write([(host, 1)])
        finally:
            db.close()
        assert stored(values_table) == [(host, 1)]


# -- values and batches -------------------------------------------------------------------


def test_values_arrive_exactly(values_table: MariaDB) -> None:
    tricky = ["it's", 'a "quote"', "back\\slash", "nul\0byte", "new\nline\r", "ctrl-z\x1a",
              "é ü 中 🙂", "", "%s %(x)s {}", "'); DROP TABLE vals; --"]  # fmt: skip
    address = bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 1])
    rows = [(text, address, 2**64 - 1 - i, i, i % 2) for i, text in enumerate(tricky)]
    rows.append((None, bytes(range(16)), None, None, None))
    with connected(values_table, "INSERT", columns=("txt", "addr", "big", "small", "flag")) as db:
        db.write(rows)
    assert stored(values_table, "txt, addr, big, small, flag") == rows


def test_undecodable_bytes_in_strings_are_stored_as_escapes(values_table: MariaDB) -> None:
    prefix = b"bad\xff ".decode("utf-8", "surrogateescape")  # as the NFLOG decoder keeps it
    with connected(values_table, "INSERT") as db:
        assert db.converter(Key("oob.prefix", KeyType.STRING), Column("txt", "varchar(64)")) is None
        db.write([(prefix, 1), (prefix, 2)])
    assert stored(values_table) == [("bad\\xff ", 1), ("bad\\xff ", 2)]


def test_a_batch_is_several_statements_in_one_transaction_in_order(
    values_table: MariaDB,
) -> None:
    rows = [(f"row {i}", i) for i in range(500)]
    with connected(values_table, "INSERT") as db:
        db.max_statement = 600  # a few dozen rows per statement
        assert len(db._chunks(rows)) > 10
        db.write(rows)
        db.write([("last", 0)])
    assert stored(values_table) == [*rows, ("last", 0)]


def test_a_refused_value_names_its_row_and_nothing_of_the_batch_is_stored(
    values_table: MariaDB,
) -> None:
    with connected(values_table, "INSERT") as db:
        db.max_statement = 100
        rows = [(f"row {i}", i) for i in range(30)]
        rows[17] = ("too big", 70000)  # smallint unsigned
        with pytest.raises(RowRejected) as refused:
            db.write(rows)
        assert refused.value.index == 17 and "small" in refused.value.reason
        rows[17] = ("x" * 65, 1)  # varchar(64) in strict mode
        with pytest.raises(RowRejected) as refused:
            db.write(rows)
        assert refused.value.index == 17 and "too long" in refused.value.reason
        rows[17] = (object(), 1)
        with pytest.raises(RowRejected) as refused:
            db.write(rows)
        assert refused.value.index == 17
        db.write(rows[:17])  # the connection is still good
    assert len(stored(values_table)) == 17


@pytest.mark.parametrize("procedure", ["add_val", "CALL put_val", "INSERT INTO vals"])
def test_routines_and_insert_into_write_every_row(values_table: MariaDB,
                                                  procedure: str) -> None:
    rows = [(f"row {i}", i) for i in range(300)]
    with connected(values_table, procedure) as db:
        db.max_statement = 2000
        db.write(rows)
    assert stored(values_table) == rows


def test_a_function_names_the_row_it_refused(values_table: MariaDB) -> None:
    rows = [(f"row {i}", i) for i in range(10)]
    rows[6] = ("bad", 70000)
    with connected(values_table, "add_val") as db:
        with pytest.raises(RowRejected) as refused:
            db.write(rows)
        assert refused.value.index == 6
    assert stored(values_table) == []


def test_a_routine_reports_its_argument_types(values_table: MariaDB) -> None:
    db = backend(values_table)
    db.connect()
    try:
        arguments = db.prepare(Statement.parse("add_val", "vals",
                                               [Column("txt"), Column("small")]))  # fmt: skip
    finally:
        db.close()
    assert [(a.name, a.type) for a in arguments] == [("t", "varchar(64)"),
                                                     ("s", "smallint(5) unsigned")]  # fmt: skip


# -- configuration errors -----------------------------------------------------------------


def test_wrong_password_never_shows_the_password(values_table: MariaDB) -> None:
    db = backend(values_table, password="Wrong-" + PASSWORD)
    with pytest.raises(DatabaseMisconfigured) as wrong:
        db.connect()
    assert wrong.value.option == "pass" and "Access denied" in str(wrong.value)
    assert PASSWORD not in str(wrong.value) and PASSWORD not in repr(db.params)


@pytest.mark.parametrize(
    ("table", "procedure", "option", "words"),
    [
        ("nosuch", "INSERT", "table", "no table or view 'nosuch'"),
        ("vals", "no_such_function", "procedure", "no function 'no_such_function'"),
        ("vals", "CALL add_val", "procedure", "no procedure 'add_val'"),
        ("vals", "INSERT INTO nosuch", "", "nosuch"),
    ],
)
def test_missing_objects_are_configuration_errors(
    values_table: MariaDB, table: str, procedure: str, option: str, words: str
) -> None:
    db = backend(values_table)
    db.connect()
    try:
        with pytest.raises(DatabaseMisconfigured) as missing:
            columns = db.columns(Name.parse(table))
            db.prepare(Statement.parse(procedure, table, columns[1:]))
    finally:
        db.close()
    assert missing.value.option == option and words in str(missing.value)


def test_wrong_argument_count_and_unknown_database(values_table: MariaDB) -> None:
    db = backend(values_table)
    db.connect()
    try:
        with pytest.raises(DatabaseMisconfigured, match="takes 2 arguments, but the table "
                                                        "gives 1"):  # fmt: skip
            db.prepare(Statement.parse("add_val", "vals", [Column("txt")]))
    finally:
        db.close()
    with pytest.raises(DatabaseMisconfigured, match="Unknown database") as unknown:
        backend(values_table, database="nfkit_no_such_db", user="root", password="").connect()
    assert unknown.value.option == "db"
    with pytest.raises(DatabaseUnreachable):
        backend(values_table, host="/nonexistent/mysqld.sock").connect()


# -- the daemon, through the kernel -----------------------------------------------------------


def logd_config(tmp_path: Path, stack: str, output: dict[str, Any],
                log1: tuple[str, ...] = ("netlink_qtimeout=1",)) -> Path:  # fmt: skip
    """A ulogd.conf for one stack whose output instance is ``my1``."""
    lines = ["[global]", f'logfile="{tmp_path}/logd.log"', "loglevel=3", f"stack={stack}",
             "", "[log1]", f"group={GROUP}", *log1, "", "[ct1]", "hash_enable=0",
             "", "[my1]", *(f'{key}="{value}"' for key, value in output.items())]  # fmt: skip
    conf = tmp_path / "ulogd.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


def output_options(server: MariaDB, tmp_path: Path, **changes: Any) -> dict[str, Any]:
    return {"db": FLAT, "host": server.socket, "user": USER, "pass": PASSWORD,
            "table": "ulog2", "procedure": "INSERT", "spool_dir": tmp_path / "spool",
            "batch_timeout_ms": 100, **changes}  # fmt: skip


class Daemon:
    """``nfkit logd`` in a lab namespace, its output collected."""

    def __init__(self, lab: Lab, conf: Path) -> None:
        self.log = conf.parent / "logd.log"
        self.out = conf.parent / "stdout.txt"
        with self.out.open("wb") as out:
            self.proc = lab.popen(lab.b, sys.executable, "-m", "nfkit.cli.main", "logd", "-c",
                                  str(conf), stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 30
        while "entering main loop" not in self.text():
            assert self.proc.poll() is None, f"logd exited: {self.text()}"
            assert time.monotonic() < deadline, f"logd did not start: {self.text()}"
            time.sleep(0.05)

    def text(self) -> str:
        log = self.log.read_text(errors="replace") if self.log.exists() else ""
        return log + self.out.read_text(errors="replace")

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=60) == 0, self.text()
        return self.text()


def flat_rows(server: MariaDB, columns: str, table: str = "ulog2") -> list[tuple[Any, ...]]:
    return [tuple(r) for r in admin(server, f"SELECT {columns} FROM {table} ORDER BY _id",
                                    database=FLAT)]  # fmt: skip


def nflog_rule(lab: Lab, prefix: str, ipv6: bool = False) -> None:
    tables = lab.ip6tables if ipv6 else lab.iptables
    tables(lab.b, "-A", "INPUT", "-p", "udp", "--dport", "9", "-j", "NFLOG",
           "--nflog-group", str(GROUP), "--nflog-prefix", prefix)  # fmt: skip


def logged(lab: Lab, ipv6: bool = False) -> int:
    """Packets the NFLOG rules of b's INPUT chain saw."""
    return sum(rule.packets for rule in lab.rule_counters(lab.b, "INPUT", ipv6=ipv6)
               if "NFLOG" in rule.rule)  # fmt: skip


def wait_rows(server: MariaDB, count: int, timeout: float = 60.0, table: str = "ulog2") -> int:
    """The rows in ``table`` once there are ``count`` (or after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    rows = 0
    while time.monotonic() < deadline:
        rows = int(admin(server, f"SELECT count(*) FROM {table}", database=FLAT)[0][0])
        if rows >= count:
            break
        time.sleep(0.2)
    return rows


@pytest.fixture
def flat(server: MariaDB) -> MariaDB:
    admin(server, "DELETE FROM ulog2", database=FLAT)
    return server


@pytest.mark.lab
def test_packets_of_both_families_land_in_the_flat_table(lab: Lab, flat: MariaDB,
                                                         tmp_path: Path) -> None:
    conf = logd_config(tmp_path, PACKET_STACK, output_options(flat, tmp_path))
    # Four-byte UTF-8 in a prefix fits the table whatever the database's default charset
    # (this server's is latin1).
    nflog_rule(lab, "v4 ")
    nflog_rule(lab, "v6 \U0001F525 ", ipv6=True)
    daemon = Daemon(lab, conf)
    assert lab.b.ip4 and lab.b.ip6 and lab.a.ip4 and lab.a.ip6
    lab.udp(lab.a, lab.b.ip4, 9, count=5, sport=4000)
    lab.udp(lab.a, lab.b.ip6, 9, count=3, sport=6000, size=10)
    assert wait_rows(flat, 8) == 8
    log = daemon.stop()
    assert logged(lab) == 5 and logged(lab, ipv6=True) == 3
    assert "8 rows written" in log and PASSWORD not in log
    rows = flat_rows(flat, "oob_family, hex(ip_saddr_bin), hex(ip_daddr_bin), oob_prefix, "
                           "oob_in, ip_protocol, udp_sport, udp_dport, udp_len, mac_saddr_str, "
                           "raw_type")  # fmt: skip
    mapped = "00000000000000000000FFFF"
    v4 = (2, mapped + "C0000201", mapped + "C0000202", "v4 ", lab.b.ifname, 17, 4000, 9, 72,
          lab.a.mac, 1)  # fmt: skip
    v6 = (10, "20010DB8" + "0" * 23 + "1", "20010DB8" + "0" * 23 + "2", "v6 \U0001F525 ",
          lab.b.ifname, 17,
          6000, 9, 18, lab.a.mac, 1)  # fmt: skip
    assert rows == [v4] * 5 + [v6] * 3


@pytest.mark.lab
def test_flows_from_nfct_go_through_insert_ct(lab: Lab, server: MariaDB, tmp_path: Path) -> None:
    admin(server, "DELETE FROM ulog2_ct", database=FLAT)
    options = output_options(server, tmp_path, table="conntrack", procedure="INSERT_CT")
    conf = logd_config(tmp_path, "ct1:NFCT,ip2bin1:IP2BIN,my1:MYSQL", options)
    lab.sysctl(lab.b, "net.netfilter.nf_conntrack_acct", 1)
    for tables in (lab.iptables, lab.ip6tables):  # conntrack on for both families
        tables(lab.b, "-A", "INPUT", "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT")
    daemon = Daemon(lab, conf)
    assert lab.b.ip4 and lab.b.ip6
    lab.udp(lab.a, lab.b.ip4, 5353, count=2, sport=5000)
    lab.udp(lab.a, lab.b.ip6, 5353, count=1, sport=5001)
    for family in ("ipv4", "ipv6"):  # end the flows: DESTROY events now
        lab.run(lab.b, "conntrack", "-D", "-f", family, "-p", "udp", "--dport", "5353")
    deadline = time.monotonic() + 30
    query = ("SELECT hex(orig_ip_saddr), orig_l4_sport, orig_l4_dport, orig_ip_protocol, "
             "orig_packets FROM ulog2_ct ORDER BY orig_l4_sport, orig_packets")
    rows: list[Any] = []
    while len(rows) < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
        rows = [tuple(r) for r in admin(server, query, database=FLAT)]
    daemon.stop()
    # NEW (no counters yet) and DESTROY of each flow
    assert rows == [("00000000000000000000FFFFC0000201", 5000, 5353, 17, 0),
                    ("00000000000000000000FFFFC0000201", 5000, 5353, 17, 2),
                    ("20010DB8" + "0" * 23 + "1", 5001, 5353, 17, 0),
                    ("20010DB8" + "0" * 23 + "1", 5001, 5353, 17, 1)]  # fmt: skip


@pytest.mark.lab
def test_no_row_is_lost_while_the_server_is_away(lab: Lab, flat: MariaDB,
                                                 tmp_path: Path) -> None:
    conf = logd_config(tmp_path, PACKET_STACK, output_options(flat, tmp_path, reconnect=1))
    nflog_rule(lab, "outage ")
    daemon = Daemon(lab, conf)
    assert lab.b.ip4
    sender = threading.Thread(target=lab.udp, args=(lab.a, lab.b.ip4, 9),
                              kwargs={"count": 6000, "rate": 200, "timeout": 90})  # fmt: skip
    sender.start()
    time.sleep(5)
    flat.stop()
    try:
        time.sleep(15)
    finally:
        flat.start()
    sender.join(timeout=120)
    assert not sender.is_alive()
    assert wait_rows(flat, 6000, timeout=120) == 6000
    log = daemon.stop()
    assert logged(lab) == 6000
    assert "no connection to" in log and "connected to" in log and "again" in log
    assert PASSWORD not in log
    assert flat_rows(flat, "count(DISTINCT ip_id)") == [(6000,)]  # each packet once


@pytest.mark.lab
def test_a_value_that_does_not_fit_goes_to_the_reject_file(lab: Lab, server: MariaDB,
                                                           tmp_path: Path) -> None:
    admin(server, "CREATE OR REPLACE TABLE narrow LIKE ulog2",
          "ALTER TABLE narrow MODIFY oob_prefix varchar(8)", database=FLAT)  # fmt: skip
    rejects = tmp_path / "rejected.jsonl"
    options = output_options(server, tmp_path, table="narrow", reject_file=rejects)
    conf = logd_config(tmp_path, PACKET_STACK, options)
    for sport, prefix in ((7000, "short "), (7001, "much too long "), (7002, "short ")):
        lab.iptables(lab.b, "-A", "INPUT", "-p", "udp", "--sport", str(sport), "-j", "NFLOG",
                     "--nflog-group", str(GROUP), "--nflog-prefix", prefix)  # fmt: skip
    daemon = Daemon(lab, conf)
    assert lab.b.ip4
    for sport, count in ((7000, 3), (7001, 1), (7002, 2)):
        lab.udp(lab.a, lab.b.ip4, 9, count=count, sport=sport)
    assert wait_rows(server, 5, table="narrow") == 5
    log = daemon.stop()
    assert "5 rows written" in log and "1 rejected" in log
    (refused,) = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert "oob_prefix" in refused["reason"] and "too long" in refused["reason"]
    assert (refused["row"]["oob_prefix"], refused["row"]["udp_sport"]) == ("much too long ", 7001)
    assert flat_rows(server, "udp_sport, oob_prefix", table="narrow") == [
        (7000, "short ")] * 3 + [(7002, "short ")] * 2  # fmt: skip


def start_up_error(lab: Lab, conf: Path) -> tuple[int, str]:
    run = lab.run(lab.b, sys.executable, "-m", "nfkit.cli.main", "logd", "-c", str(conf),
                  check=False, timeout=60)  # fmt: skip
    return run.returncode, run.stdout + run.stderr


@pytest.mark.lab
def test_start_up_errors_are_one_clear_message_and_exit_2(lab: Lab, server: MariaDB,
                                                          tmp_path: Path) -> None:
    admin(server, "CREATE OR REPLACE TABLE extra LIKE ulog2",
          "ALTER TABLE extra ADD COLUMN ip_saddr_str varchar(40)", database=FLAT)  # fmt: skip
    cases = [
        ({"pass": "Wrong-" + PASSWORD}, "Access denied", "pass="),
        ({"table": "nosuch"}, "no table or view 'nosuch'", "table="),
        ({"table": "extra"}, "column 'ip_saddr_str'", "IP2STR"),
    ]
    for changes, words, fix in cases:
        conf = logd_config(tmp_path, PACKET_STACK, output_options(server, tmp_path, **changes))
        code, output = start_up_error(lab, conf)
        assert code == 2, output
        assert words in output and fix in output and PASSWORD not in output
        assert output.count("configuration error") == 1
