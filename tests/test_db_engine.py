"""The database output layer without a database: statements, mapping, spool, writer, plugin.

A fake backend stands for the server: it stores rows, can be taken down,
refuses chosen values and can hang; the writer and the plugin base are
driven through it. Real servers: tests/test_pgsql.py.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import pwd
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from nfkit.logd.db import spool as spool_module
from nfkit.logd.db.backend import (
    Backend,
    Column,
    ConnectParams,
    DatabaseMisconfigured,
    DatabaseUnreachable,
    Name,
    RowRejected,
    Statement,
    StatementKind,
    redact,
)
from nfkit.logd.db.backend import quote_identifier as quote
from nfkit.logd.db.columns import FirstColumn, default_converter, map_columns
from nfkit.logd.db.output import COMMON_OPTIONS, SPOOL_OPTIONS, DatabaseOutput
from nfkit.logd.db.spool import FileSpool, MemorySpool, decode, encode
from nfkit.logd.db.writer import RejectFile, Writer, WriterSettings
from nfkit.logd.errors import ConfigError, StartError
from nfkit.logd.keys import Key, KeyType
from nfkit.logd.plugin import ERROR, Context, Option, Plugin, Settings
from nfkit.logd.registry import plugins

LOG = logging.getLogger("nfkit.logd.test")


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# -- statements ------------------------------------------------------------------------------

COLUMNS = (Column("oob_prefix"), Column("ip_saddr_str"))


@pytest.mark.parametrize(("procedure", "kind", "sql"), [
    ("INSERT", StatementKind.INSERT,
     'INSERT INTO "ulog" ("oob_prefix", "ip_saddr_str") VALUES (%s, %s)'),
    ("insert", StatementKind.INSERT,
     'INSERT INTO "ulog" ("oob_prefix", "ip_saddr_str") VALUES (%s, %s)'),
    ('INSERT INTO other."Mixed"', StatementKind.INSERT_INTO,
     'INSERT INTO "other"."Mixed" ("oob_prefix", "ip_saddr_str") VALUES (%s, %s)'),
    ("insert ignore into t2", StatementKind.INSERT_INTO,
     'INSERT IGNORE INTO "t2" ("oob_prefix", "ip_saddr_str") VALUES (%s, %s)'),
    ("INSERT_PACKET_FULL", StatementKind.FUNCTION, 'SELECT "insert_packet_full"(%s, %s)'),
    ("CALL ulog2.keep", StatementKind.CALL, 'CALL "ulog2"."keep"(%s, %s)'),
])  # fmt: skip
def test_statement_of_each_procedure(procedure: str, kind: StatementKind, sql: str) -> None:
    statement = Statement.parse(procedure, "ULOG", COLUMNS)
    assert statement.kind is kind
    assert statement.sql(quote, "%s", str.lower) == sql


@pytest.mark.parametrize("procedure", [
    "f(); DROP TABLE ulog", "INSERT OR REPLACE INTO t", "INSERT INTO t; --", "CALL", "a.b.c",
    'x"y',
])  # fmt: skip
def test_statement_refuses_anything_but_names(procedure: str) -> None:
    with pytest.raises(ValueError):
        Statement.parse(procedure, "ulog", COLUMNS)


def test_names_keep_quoted_parts_and_escape_quotes() -> None:
    name = Name.parse('Public."We""ird"')
    assert name.folded(str.lower) == ("public", 'We"ird')
    assert name.render(quote, str.lower) == '"public"."We""ird"'


# -- connection parameters ----------------------------------------------------------------------


def test_password_never_shown() -> None:
    params = ConnectParams("ulog", host="db.example", port=5432, user="ulog",
                           password="S3cret!", connstring="")
    assert "S3cret" not in repr(params) and "S3cret" not in params.describe()
    assert params.describe() == "ulog@db.example:5432/ulog"
    with_connstring = ConnectParams("x", connstring="host=h password='S3 cret' user=u")
    assert "S3" not in with_connstring.describe()
    assert "S3cret" not in redact("FATAL: password S3cret! rejected", params)
    assert redact("postgresql://u:pw@h/db", params) == "postgresql://u:***@h/db"


# -- columns and values --------------------------------------------------------------------------

AVAILABLE = {key.name: key for key in (
    Key("oob.prefix", KeyType.STRING), Key("ip.saddr", KeyType.IPADDR),
    Key("raw.mac_len", KeyType.UINT16), Key("tcp.syn", KeyType.BOOL),
)}  # fmt: skip


@pytest.mark.parametrize(("first", "columns", "active"), [
    (FirstColumn.UNDERSCORE, ["_id", "oob_prefix"], ["oob_prefix"]),
    (FirstColumn.UNDERSCORE, ["oob_prefix", "ip_saddr"], ["oob_prefix", "ip_saddr"]),
    (FirstColumn.SKIPPED, ["id", "oob_prefix"], ["oob_prefix"]),
    (FirstColumn.WRITTEN, ["raw_mac_len", "tcp_syn"], ["raw_mac_len", "tcp_syn"]),
])  # fmt: skip
def test_first_column_rules(first: FirstColumn, columns: list[str], active: list[str]) -> None:
    mapping = map_columns([Column(c) for c in columns], AVAILABLE, first, "table 't'", "here")
    assert [c.name for c in mapping.columns] == active


def test_unmapped_column_names_the_plugin_that_provides_it() -> None:
    with pytest.raises(ConfigError) as info:
        map_columns([Column("oob_prefix"), Column("ip_saddr_str")], AVAILABLE,
                    FirstColumn.WRITTEN, "table 'ulog'", "f.conf:9 (table)")
    error = info.value
    assert error.what == ("column 'ip_saddr_str' of table 'ulog' matches no key of the stack "
                          "(it would be 'ip.saddr.str')")
    assert "IP2STR" in error.fix and error.where == "f.conf:9 (table)"


@pytest.mark.parametrize(("ktype", "column_type", "value", "stored"), [
    (KeyType.IPADDR, "inet", bytes([192, 0, 2, 1]), "192.0.2.1"),
    (KeyType.IPADDR, "text", bytes.fromhex("20010db8" + "00" * 11 + "01"), "2001:db8::1"),
    (KeyType.IPADDR, "bigint", bytes([192, 0, 2, 1]), 3221225985),
    (KeyType.IPADDR, "int(10) unsigned", bytes([192, 0, 2, 1]), 3221225985),
    (KeyType.IPADDR, "binary(16)", bytes([192, 0, 2, 1]),
     bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 1])),
    (KeyType.RAWSTR, "binary(16)", "0x" + "00" * 15 + "01", bytes(15) + b"\x01"),
    (KeyType.BOOL, "boolean", 1, True),
    (KeyType.STRING, "character varying(32)", "caf\udce9", "caf\\xe9"),
    (KeyType.RAW, "text", b"\x00\x0a", "000a"),
])  # fmt: skip
def test_values_converted_for_their_column(
    ktype: KeyType, column_type: str, value: Any, stored: Any
) -> None:
    convert = default_converter(Key("k", ktype), Column("c", column_type))
    assert convert is not None and convert(value) == stored


@pytest.mark.parametrize(("ktype", "column_type"), [
    (KeyType.UINT32, "integer"), (KeyType.BOOL, "smallint"), (KeyType.RAW, "bytea"),
    (KeyType.RAWSTR, "text"), (KeyType.IPADDR, "bytea"),
])  # fmt: skip
def test_values_kept_as_they_are(ktype: KeyType, column_type: str) -> None:
    assert default_converter(Key("k", ktype), Column("c", column_type)) is None


# -- the spool -----------------------------------------------------------------------------------


def read_all(spool: FileSpool | MemorySpool) -> list[list[Any]]:
    records = spool.read(10_000)
    spool.consume(records)
    return [decode(record) for record in records]


def test_file_spool_keeps_order_across_restarts(tmp_path: Path) -> None:
    spool = FileSpool(str(tmp_path), "pg1", 1 << 20, LOG)
    for index in range(5):
        assert spool.append([index, "x", b"\x00\xff", None, True])
    spool.prepend([[-2], [-1]])
    first = spool.read(3)
    spool.consume(first)
    assert [decode(r)[0] for r in first] == [-2, -1, 0]
    spool.close()
    again = FileSpool(str(tmp_path), "pg1", 1 << 20, LOG)
    assert again.rows == 4
    assert read_all(again) == [[i, "x", b"\x00\xff", None, True] for i in range(1, 5)]
    assert not again and again.size == 0
    again.close()
    assert sorted(os.listdir(tmp_path)) == ["pg1.lock"]


def test_file_spool_reads_a_chunk_at_a_time_even_across_a_large_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "_READ_CHUNK", 64)  # a handful of records per read
    spool = FileSpool(str(tmp_path), "pg1", 1 << 20, LOG)
    rows = [[index, "x" * (200 if index == 7 else 3)] for index in range(20)]
    for row in rows:
        assert spool.append(row)
    sizes = []
    while spool:
        records = spool.read(1000)
        sizes.append(len(records))
        spool.consume(records)
        assert [decode(record) for record in records] == rows[: len(records)]
        del rows[: len(records)]
    assert not rows and max(sizes) < 10 and 1 in sizes  # the 200-byte record alone
    spool.close()


def test_two_instances_of_one_id_take_their_own_spools(tmp_path: Path) -> None:
    first = FileSpool(str(tmp_path), "pg1", 1 << 20, LOG)
    second = FileSpool(str(tmp_path), "pg1", 1 << 20, LOG)
    assert (first.name, second.name) == ("pg1", "pg1@2")
    first.append(["first"])
    second.append(["second"])
    first.close()
    second.close()
    # Whichever instance comes first after a restart replays either spool.
    again = FileSpool(str(tmp_path), "pg1", 1 << 20, LOG)
    assert read_all(again) == [["first"]]


def test_file_spool_is_bounded(tmp_path: Path) -> None:
    row = ["0123456789" * 2]
    spool = FileSpool(str(tmp_path), "pg1", 100, LOG)
    accepted = [spool.append(row) for _ in range(10)]
    fit = 100 // len(encode(row))
    assert fit >= 2 and accepted == [True] * fit + [False] * (10 - fit)
    assert spool.size <= 100


def test_file_spool_skips_a_torn_tail(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = FileSpool(str(tmp_path), "pg1", 1 << 20, LOG)
    for index in range(3):
        spool.append([index])
    spool.close()
    (segment,) = tmp_path.glob("pg1.*.spool")
    with segment.open("ab") as file:
        file.write(b"\x00\x00\x00\x40\x00\x00\x00\x00partial")
    again = FileSpool(str(tmp_path), "pg1", 1 << 20, LOG)
    assert again.damaged == 1 and "damaged record" in caplog.text
    assert read_all(again) == [[0], [1], [2]]


def test_a_json_spool_of_an_earlier_version_is_converted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Segments of the first format (rows as JSON, bytes as {"b": hex}) are replayed from
    their saved offset after an upgrade; a damaged tail is still skipped and counted."""
    rows = [[1, "stored already", None], [2, "caf\u00e9 \udcff", {"b": "00ff"}, True],
            [3, 1.5, None]]

    def record(row: list[Any]) -> bytes:
        payload = json.dumps(row, ensure_ascii=False).encode("utf-8", "surrogatepass")
        return struct.pack(">II", len(payload), zlib.crc32(payload)) + payload

    caplog.set_level(logging.INFO)
    records = [record(row) for row in rows]
    segment = tmp_path / "pg1.000001000000.spool"
    segment.write_bytes(b"NFKIT-SPOOL 1\n" + b"".join(records) + b"\x00\x00\x01")
    Path(f"{segment}.pos").write_text(f"{14 + len(records[0])}\n")
    spool = FileSpool(str(tmp_path), "pg1", 1 << 20, LOG)
    assert (spool.rows, spool.damaged) == (2, 1)
    assert "converted to the current format" in caplog.text
    assert not Path(f"{segment}.pos").exists()
    assert segment.read_bytes().startswith(b"NFKIT-SPOOL 2\n")
    assert read_all(spool) == [[2, "caf\u00e9 \udcff", b"\x00\xff", True], [3, 1.5, None]]
    spool.close()


def test_spooled_values_come_back_as_plain_types() -> None:
    class Hook(enum.IntEnum):
        FORWARD = 2

    row = [Hook.FORWARD, bytearray(b"\x01"), memoryview(b"\x02"), False, "x", 2**70, None]
    back = decode(encode(row))
    assert back == [2, b"\x01", b"\x02", False, "x", 2**70, None]
    assert [type(value) for value in back[:4]] == [int, bytes, bytes, bool]
    with pytest.raises(TypeError, match="cannot spool a object"):
        encode([object()])


def test_a_spool_directory_the_user_cannot_write_is_refused(tmp_path: Path) -> None:
    """-u: an existing directory must be writable for the user the daemon drops to; one it
    creates is given to that user."""
    nobody = pwd.getpwnam("nobody")
    owner = (nobody.pw_uid, nobody.pw_gid)
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)  # root's
    with pytest.raises(OSError, match=r"not writable for uid \d+ \(-u\)"):
        FileSpool(str(closed), "pg1", 1 << 20, LOG, owner)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    FileSpool(str(shared), "pg1", 1 << 20, LOG, owner).close()
    assert (shared / "pg1.lock").stat().st_uid == nobody.pw_uid
    created = tmp_path / "created"
    FileSpool(str(created), "pg1", 1 << 20, LOG, owner).close()
    assert created.stat().st_uid == nobody.pw_uid
    assert (created.stat().st_mode & 0o777) == 0o700


def test_memory_spool() -> None:
    spool = MemorySpool(60)
    assert [spool.append(["abcdefghijklmnopqrstuvwxyz"]) for _ in range(3)] == [True, False,
                                                                                False]
    spool.prepend([["old"]])
    assert read_all(spool) == [["old"], ["abcdefghijklmnopqrstuvwxyz"]]


# -- a fake database -------------------------------------------------------------------------------


class FakeServer:
    """What the fake backends of one test talk to."""

    def __init__(self) -> None:
        self.rows: list[list[Any]] = []
        self.batches: list[int] = []
        self.up = True
        self.refused_values: set[Any] = set()
        self.columns = [Column("_id", "bigint"), Column("oob_prefix", "text"),
                        Column("ip_saddr", "inet")]
        self.hang = threading.Event()
        self.misconfigured: DatabaseMisconfigured | None = None
        #: successful writes before the server goes down (None: never)
        self.down_after: int | None = None
        self.lock = threading.Lock()

    def values(self, index: int = 0) -> list[Any]:
        with self.lock:
            return [row[index] for row in self.rows]


class FakeBackend(Backend):
    server: ClassVar[FakeServer]
    dbtype = "fake"

    connected = False

    def connect(self) -> None:
        if self.server.misconfigured:
            raise self.server.misconfigured
        if not self.server.up:
            raise DatabaseUnreachable("connection refused")
        self.connected = True

    def close(self) -> None:
        self.connected = False

    def columns(self, table: Name) -> list[Column]:
        return list(self.server.columns)

    def prepare(self, statement: Statement) -> Sequence[Column]:
        return statement.columns

    def write(self, rows: Sequence[Sequence[Any]]) -> None:
        server = self.server
        while server.hang.is_set():
            time.sleep(0.01)
        if not (self.connected and server.up):
            self.connected = False
            raise DatabaseUnreachable("server closed the connection unexpectedly")
        for index, row in enumerate(rows):
            bad = server.refused_values.intersection(map(str, row))
            if bad:
                raise RowRejected(f"value {sorted(bad)[0]} does not fit",
                                  index if len(rows) % 2 else None)
        with server.lock:
            server.rows.extend(list(row) for row in rows)
            server.batches.append(len(rows))
        if server.down_after is not None:
            server.down_after -= 1
            server.up = server.down_after > 0


def fake_backend(server: FakeServer) -> type[FakeBackend]:
    return type("ServerBackend", (FakeBackend,), {"server": server})


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


def new_writer(server: FakeServer, spool: Any, tmp_path: Path, **settings: Any) -> Writer:
    backend = fake_backend(server)

    def open_backend() -> Backend:
        instance = backend(ConnectParams("db"))
        instance.connect()
        return instance

    values = {"batch_size": 10, "batch_timeout": 0.02, "queue_rows": 50, "reconnect": 0.05,
              "stop_timeout": 5.0} | settings
    return Writer("pg1:FAKE", open_backend, "fake/db", spool,
                  RejectFile(str(tmp_path / "rejects"), "t", ["n", "text"], LOG),
                  WriterSettings(**values), LOG, isinstance(spool, FileSpool))


@pytest.fixture
def writers() -> Iterator[list[Writer]]:
    """Writers to stop at the end, whatever the test did."""
    made: list[Writer] = []
    yield made
    for writer in made:
        if writer._thread.is_alive():
            writer.stop()


def rows(start: int, stop: int) -> list[list[Any]]:
    return [[n, f"row {n}"] for n in range(start, stop)]


# -- the writer ------------------------------------------------------------------------------------


def test_batches_by_size_and_by_time(server: FakeServer, tmp_path: Path,
                                     writers: list[Writer]) -> None:
    writer = new_writer(server, MemorySpool(0), tmp_path, batch_timeout=0.05)
    writers.append(writer)
    writer.start()
    writer.put(rows(0, 25))
    wait_until(lambda: len(server.rows) == 25, "25 rows")
    assert server.batches == [10, 10, 5]  # the last 5 after the batch timeout
    writer.put(rows(25, 28))
    writer.stop()  # no waiting for the timer: stop writes what is queued
    assert server.values() == list(range(28))
    assert writer.counters.written == 28 and writer.counters.spooled == 0


def test_a_few_rows_after_an_idle_time_are_written(server: FakeServer, tmp_path: Path,
                                                   writers: list[Writer]) -> None:
    writer = new_writer(server, MemorySpool(0), tmp_path)
    writers.append(writer)
    writer.start()
    wait_until(lambda: writer._thread.is_alive() and not writer._queue, "an idle writer")
    time.sleep(0.1)  # the writer waits for rows now
    writer.put(rows(0, 1))
    wait_until(lambda: len(server.rows) == 1, "the row, after the batch timeout")


def test_outage_spools_and_replays_in_order(server: FakeServer, tmp_path: Path,
                                            writers: list[Writer],
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    spool = FileSpool(str(tmp_path), "pg1", 1 << 20, LOG)
    writer = new_writer(server, spool, tmp_path)
    writers.append(writer)
    writer.start()
    writer.put(rows(0, 10))
    wait_until(lambda: len(server.rows) == 10, "the first batch")
    server.up = False
    for start in range(10, 200, 7):  # more than the queue holds
        writer.put(rows(start, min(start + 7, 200)))
    wait_until(lambda: writer.counters.spooled >= 190, "rows in the spool")
    assert len(server.rows) == 10
    server.up = True
    wait_until(lambda: len(server.rows) == 200, "the replay")
    writer.put(rows(200, 210))
    writer.stop()
    assert server.values() == list(range(210))
    assert "no connection to fake/db" in caplog.text and "connected to fake/db again" in caplog.text
    assert not list(tmp_path.glob("pg1.*.spool"))


def test_full_queue_overflows_to_the_spool_in_order(server: FakeServer, tmp_path: Path,
                                                     writers: list[Writer]) -> None:
    server.hang.set()  # the database is slow: the queue fills
    writer = new_writer(server, FileSpool(str(tmp_path), "pg1", 1 << 20, LOG), tmp_path,
                        queue_rows=20)
    writers.append(writer)
    writer.start()
    for start in range(0, 100, 5):
        writer.put(rows(start, start + 5))
    assert writer.counters.spooled >= 70
    server.hang.clear()
    wait_until(lambda: len(server.rows) == 100, "every row")
    writer.put(rows(100, 105))
    writer.stop()
    assert server.values() == list(range(105))


def test_refused_rows_go_to_the_reject_file(server: FakeServer, tmp_path: Path,
                                            writers: list[Writer]) -> None:
    server.refused_values = {"13", "row 14", "99"}
    writer = new_writer(server, MemorySpool(0), tmp_path)
    writers.append(writer)
    writer.start()
    writer.put([*rows(0, 30), [99, "last"]])
    writer.stop()
    assert server.values() == [n for n in range(30) if n not in (13, 14)]
    lines = (tmp_path / "rejects").read_text().splitlines()
    assert len(lines) == 3 and writer.counters.rejected == 3
    assert '"reason": "value 13 does not fit"' in lines[0]
    assert '"row": {"n": 13, "text": "row 13"}' in lines[0]
    assert '"n": 99' in lines[2] and '"table": "t"' in lines[2]


def test_an_outage_while_a_refused_row_is_searched(server: FakeServer, tmp_path: Path,
                                                   writers: list[Writer]) -> None:
    server.refused_values = {"7"}
    server.down_after = 1  # the first half of the batch gets in, then the server goes
    writer = new_writer(server, FileSpool(str(tmp_path), "pg1", 1 << 20, LOG), tmp_path)
    writers.append(writer)
    writer.start()
    writer.put(rows(0, 10))
    wait_until(lambda: writer.spool.rows == 5, "the rest of the batch in the spool")
    server.down_after = None
    server.up = True
    wait_until(lambda: len(server.rows) == 9, "the rest, once back")
    writer.stop()
    assert server.values() == [0, 1, 2, 3, 4, 5, 6, 8, 9]  # once each; 7 is in the reject file
    assert writer.counters.rejected == 1


def test_full_spool_drops_counts_and_reports(server: FakeServer, tmp_path: Path,
                                             writers: list[Writer],
                                             caplog: pytest.LogCaptureFixture) -> None:
    server.up = False
    writer = new_writer(server, MemorySpool(300), tmp_path)
    writers.append(writer)
    writer.start()
    wait_until(lambda: writer._spooling, "the failed connection")
    for start in range(0, 100, 10):
        writer.put(rows(start, start + 10))
    assert writer.counters.dropped > 0
    assert "spool full (300 bytes)" in caplog.text
    server.up = True
    wait_until(lambda: len(server.rows) == writer.counters.spooled, "the replay")
    wait_until(lambda: "rows were dropped while the spool was full" in caplog.text, "report")
    writer.stop()
    assert len(server.rows) + writer.counters.dropped == 100
    assert server.values() == sorted(server.values())


def test_rows_of_an_earlier_run_come_first(server: FakeServer, tmp_path: Path,
                                           writers: list[Writer]) -> None:
    server.up = False
    first = new_writer(server, FileSpool(str(tmp_path), "pg1", 1 << 20, LOG), tmp_path,
                       reconnect=0, stop_timeout=0.5)
    writers.append(first)
    first.start()
    first.put(rows(0, 15))
    first.stop()
    assert first.counters.dropped == 0 and first.spool.rows == 15
    server.up = True
    second = new_writer(server, FileSpool(str(tmp_path), "pg1", 1 << 20, LOG), tmp_path)
    writers.append(second)
    second.put(rows(15, 20))  # before the thread runs: behind the spooled rows
    second.start()
    wait_until(lambda: len(server.rows) == 20, "every row")
    second.stop()
    assert server.values() == list(range(20))


def test_a_hanging_database_at_stop_keeps_the_rows(server: FakeServer, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("nfkit.logd.db.writer.STOP_GRACE", 0.1)
    writer = new_writer(server, FileSpool(str(tmp_path), "pg1", 1 << 20, LOG), tmp_path,
                        stop_timeout=0.1)
    writer.start()
    wait_until(lambda: not writer._spooling, "the connection")
    server.hang.set()
    writer.put(rows(0, 25))
    writer.stop()
    leftover = FileSpool(str(tmp_path), "pg1", 1 << 20, LOG)
    assert [row[0] for row in read_all(leftover)] == list(range(25))
    server.hang.clear()


# -- the plugin base ------------------------------------------------------------------------------


class FAKESQL(DatabaseOutput):
    name = "FAKESQL"
    first_column = FirstColumn.UNDERSCORE
    options = (*COMMON_OPTIONS, Option("db", str, ""), Option("pass", str, ""), *SPOOL_OPTIONS)
    server: ClassVar[FakeServer]

    def backend_class(self) -> type[Backend]:
        return fake_backend(self.server)


def configured(server: FakeServer, tmp_path: Path, upstream: Sequence[str] = ("NFLOG", "BASE"),
               **values: Any) -> FAKESQL:
    FAKESQL.server = server
    settings = {opt.name: opt.default for opt in FAKESQL.options} | {
        "table": "ulog", "procedure": "INSERT", "db": "ulogd", "pass": "S3cret!",
        "spool_dir": str(tmp_path / "spool"), "batch_timeout_ms": 10,
    } | values
    context = Context(None, LOG)
    plugin = FAKESQL("fake1", Settings("fake1", settings, {"table": "u.conf:7"}), context)
    chain: list[Plugin] = [plugins()[name](name.lower(), Settings("x", {}, {}), context)
                           for name in upstream]
    plugin.configure(chain)
    return plugin


def test_plugin_rows_from_events(server: FakeServer, tmp_path: Path) -> None:
    plugin = configured(server, tmp_path)
    assert [key.name for key in plugin.inputs] == ["oob.prefix", "ip.saddr"]
    plugin.start()
    events = [{"oob.prefix": "in", "ip.saddr": bytes([192, 0, 2, 1])}, {"oob.prefix": "v6"},
              {"oob.prefix": "bad", "ip.saddr": b"\x01"}]
    finished: list[int] = []
    kept = plugin.interp_batch(events, finished.append)
    plugin.stop()
    assert server.rows == [["in", "192.0.2.1"], ["v6", None]]
    assert finished == [ERROR] and kept == events[:2]


def test_plugin_configuration_errors(server: FakeServer, tmp_path: Path) -> None:
    server.columns.append(Column("ip_saddr_str", "inet"))
    with pytest.raises(ConfigError, match="column 'ip_saddr_str' of table 'ulog'") as info:
        configured(server, tmp_path)
    assert "IP2STR" in info.value.fix and info.value.where == "u.conf:7"
    server.misconfigured = DatabaseMisconfigured("password authentication failed", "check pass=",
                                                 option="pass")
    with pytest.raises(ConfigError, match="password authentication failed") as info:
        configured(server, tmp_path)
    assert info.value.where == "[fake1] pass (default)" and "S3cret" not in str(info.value)
    server.misconfigured = None
    server.up = False
    with pytest.raises(StartError, match="cannot connect to local socket/ulogd: connection ref"):
        configured(server, tmp_path)
    with pytest.raises(ConfigError, match="not a name"):
        configured(server, tmp_path, procedure="f(1); drop table x")
    with pytest.raises(ConfigError, match="batch_size=0 is below 1"):
        configured(server, tmp_path, batch_size=0)


def test_plugin_spool_dir_must_be_usable(server: FakeServer, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    plugin = configured(server, tmp_path, spool_dir=str(tmp_path / "file" / "spool"))
    with pytest.raises(StartError, match="cannot use spool directory") as info:
        plugin.start()
    assert 'spool_dir=""' in info.value.fix
