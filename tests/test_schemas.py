"""The SQL schemas (nfkit.logd.db.schemas) and ``nfkit db init``, on real servers.

Every schema is created with ``nfkit db init`` in a database of its own,
twice (the second run must change nothing), then every function is called
with the values the kernel can send (the ones ulogd2's schema cannot hold
included) and the views are read back. The names are compared with ulogd2's
own schema files, loaded into the same servers: tables, columns in order,
views, function names and argument names in order; every difference is
listed below with its reason, and no column of ours is narrower.
"""

from __future__ import annotations

import gzip
import io
import ipaddress
import re
import sqlite3
import subprocess
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from nfkit.cli import main as nfkit_main
from nfkit.cli.db import parse_dsn
from nfkit.logd.db import schemas
from nfkit.logd.db.schemas import SCHEMAS, statements

psycopg = pytest.importorskip("psycopg")
pymysql = pytest.importorskip("pymysql")

ULOGD_DOC = Path("/usr/share/doc/ulogd2")
PASSWORD = "Sch3ma:p@ss"
QUOTED = urllib.parse.quote(PASSWORD, safe="")  # as it is written in a URI


def run_db(*argv: str) -> tuple[int, str, str]:
    """``nfkit db ARGV``: status, stdout, stderr."""
    from nfkit.cli.db import main

    out, err = io.StringIO(), io.StringIO()
    status = main(list(argv), out, err)
    return status, out.getvalue(), err.getvalue()


def ulogd_file(name: str) -> str:
    for path in (ULOGD_DOC / name, ULOGD_DOC / f"{name}.gz"):
        if path.exists():
            data = path.read_bytes()
            return (gzip.decompress(data) if path.suffix == ".gz" else data).decode()
    pytest.skip(f"ulogd2's {name} is not installed")


# -- without a server -----------------------------------------------------------------------


def test_every_schema_loads_from_the_package() -> None:
    for schema in SCHEMAS.values():
        text = schema.sql()
        assert "CREATE TABLE IF NOT EXISTS" in text, schema.name
        assert "DROP TABLE" not in text.upper(), f"{schema.name} must never drop data"


@pytest.mark.parametrize(
    ("dsn", "engine", "shown"),
    [
        ("postgresql://ulog:secret@db.example:5433/ulog2", "pgsql", "ulog@db.example:5433/ulog2"),
        ("host=/run/postgresql dbname=ulog2 user=ulog", "pgsql", "ulog@/run/postgresql/ulog2"),
        ("mysql://ulog:secret@db.example/ulog2", "mysql", "ulog@db.example/ulog2"),
        (
            "mysql://ulog@localhost/ulog2?unix_socket=/run/mysqld/mysqld.sock",
            "mysql",
            "ulog@/run/mysqld/mysqld.sock/ulog2",
        ),
        ("sqlite:///var/log/ulog/ulog.db", "sqlite3", "/var/log/ulog/ulog.db"),
        ("sqlite:ulog.db", "sqlite3", "ulog.db"),
    ],
)
def test_dsn_forms(dsn: str, engine: str, shown: str) -> None:
    target = parse_dsn(dsn)
    assert (target.engine, target.describe()) == (engine, shown)
    assert "secret" not in repr(target)


def test_a_bad_dsn_is_refused_without_its_password() -> None:
    status, out, err = run_db("init", "--dsn", "oracle://scott:tiger@db/orcl")
    assert status == 2 and out == ""
    assert "oracle://scott:***@db/orcl" in err and "tiger" not in err
    assert "postgresql://" in err and "sqlite:///" in err


def test_mariadb_needs_flat() -> None:
    status, _, err = run_db("init", "--dsn", "mysql://ulog@localhost/ulog2")
    assert status == 2
    assert "add --flat" in err


@pytest.mark.parametrize(
    ("argv", "first_file"),
    [
        (("--dsn", "postgresql://"), "pgsql-packets.sql"),
        (("--dsn", "host=/run/postgresql", "--flat"), "pgsql-flat.sql"),
        (("--dsn", "mysql://x@y/z", "--flat"), "mysql-flat.sql"),
        (("--dsn", "sqlite:///tmp/x.db"), "sqlite3.sql"),
    ],
)
def test_print_writes_the_sql(argv: Sequence[str], first_file: str) -> None:
    status, out, err = run_db("init", "--print", *argv)
    assert status == 0 and err == ""
    text = (Path(schemas.__file__).parent / first_file).read_text()
    assert text in out


def test_nfkit_db_is_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert nfkit_main.main(["db", "init", "--print", "--dsn", "sqlite:///x.db"]) == 0
    assert "CREATE TABLE IF NOT EXISTS ulog_pkt" in capsys.readouterr().out
    assert nfkit_main.main(["-h"]) == 0
    assert "nfkit db init -h" in capsys.readouterr().out


def test_statements_follow_delimiter_lines() -> None:
    script = (
        "-- a comment\nCREATE TABLE t (a int);\n\nDELIMITER $$\n"
        "CREATE FUNCTION f() RETURNS int\nBEGIN\n  RETURN 1;\nEND$$\nDELIMITER ;\nCALL p();\n"
    )
    assert statements(script) == [
        "CREATE TABLE t (a int)",
        "CREATE FUNCTION f() RETURNS int\nBEGIN\n  RETURN 1;\nEND",
        "CALL p()",
    ]


# -- PostgreSQL -----------------------------------------------------------------------------


def pg_database(postgres: Any, name: str) -> str:
    """A new, empty database owned by a user with a password; its URI."""
    postgres.psql(f"DROP DATABASE IF EXISTS {name}")
    postgres.psql(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'schemas') THEN "
        f"CREATE ROLE schemas LOGIN PASSWORD '{PASSWORD}'; END IF; END $$"
    )
    postgres.psql(f"CREATE DATABASE {name} OWNER schemas")
    return f"postgresql://schemas:{QUOTED}@127.0.0.1:{postgres.port}/{name}"


@pytest.fixture(scope="module")
def normalized(postgres: Any) -> str:
    """A database with the normalized schema, created by ``nfkit db init``."""
    uri = pg_database(postgres, "schemas_normalized")
    status, out, err = run_db("init", "--dsn", uri)
    assert (status, err) == (0, ""), err
    assert "normalized PostgreSQL schema ready in schemas@127.0.0.1" in out
    assert 'table="ulog" procedure="INSERT_PACKET_FULL"' in out
    assert PASSWORD not in out
    return uri


@pytest.fixture
def pg(normalized: str) -> Iterator[Any]:
    with psycopg.connect(normalized, autocommit=True) as connection:
        yield connection


def columns_of(connection: Any, relation: str) -> list[str]:
    rows = connection.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
        "AND NOT attisdropped ORDER BY attnum",
        (relation,),
    )
    return [row[0] for row in rows]


def call(connection: Any, function: str, relation: str, values: dict[str, Any]) -> Any:
    """``SELECT function(...)`` with one argument per column of ``relation`` after the
    first (as PGSQL calls it); columns missing from ``values`` are NULL."""
    names = columns_of(connection, relation)[1:]
    assert set(values) <= set(names), set(values) - set(names)
    placeholders = ", ".join(["%s"] * len(names))
    row = connection.execute(
        f"SELECT {function}({placeholders})", [values.get(name) for name in names]
    ).fetchone()
    return row[0]


def plain(value: Any) -> Any:
    """A value read back, comparable with the one written."""
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    return value


def ethernet(ethertype: int) -> dict[str, Any]:
    """HWHDR's keys for an Ethernet header from 02:..:01 to 02:..:02."""
    kind = f"{ethertype >> 8:02x}:{ethertype & 255:02x}"
    return {
        "raw_type": 1,
        "mac_str": f"02:00:00:00:00:02:02:00:00:00:00:01:{kind}",
        "mac_saddr_str": "02:00:00:00:00:01",
        "mac_daddr_str": "02:00:00:00:00:02",
        "oob_protocol": ethertype,
    }


ETHERNET = ethernet(0x0800)
ETHERNET6 = ethernet(0x86DD)
INPUT = {"oob_time_sec": 2**31 + 5, "oob_time_usec": 999999, "oob_hook": 1, "oob_in": "eth0"}

# One packet of each protocol, with values ulogd2's schema cannot hold:
# lengths over 32767 (GRO), marks and times over 2**31, a 63-character
# prefix, an SCTP checksum over 2**31, an ICMP redirect gateway over 2**31.
TCP = {
    **INPUT,
    **ETHERNET,
    "oob_prefix": "TCP-IN " + "x" * 56,
    "oob_mark": 0xFFFFFFFF,
    "oob_out": "",
    "oob_family": 2,
    "ip_saddr_str": "192.0.2.10",
    "ip_daddr_str": "198.51.100.20",
    "ip_protocol": 6,
    "ip_tos": 0x10,
    "ip_ttl": 64,
    "ip_totlen": 65535,
    "ip_ihl": 5,
    "ip_csum": 0xBEEF,
    "ip_id": 54321,
    "ip_fragoff": 0x8000 | 0x4000,
    "tcp_sport": 51000,
    "tcp_dport": 443,
    "tcp_seq": 0xFFFFFFF0,
    "tcp_ackseq": 0x80000000,
    "tcp_window": 65535,
    "tcp_urg": True,
    "tcp_urgp": 65535,
    "tcp_ack": True,
    "tcp_psh": True,
    "tcp_rst": False,
    "tcp_syn": False,
    "tcp_fin": False,
    "raw_label": 1,
}
UDP6 = {
    **ETHERNET6,
    "oob_time_sec": 1700000000,
    "oob_hook": 2,
    "oob_prefix": "fwd",
    "oob_in": "eth0",
    "oob_out": "eth1",
    "oob_family": 10,
    "ip_saddr_str": "2001:db8::1",
    "ip_daddr_str": "2001:db8:ffff::2",
    "ip_protocol": 17,
    "ip6_payloadlen": 65535,
    "ip6_priority": 0xB8,
    "ip6_hoplimit": 255,
    "ip6_flowlabel": 0xFFFFF,
    "udp_sport": 53,
    "udp_dport": 65535,
    "udp_len": 65535,
    "raw_label": 0,
}
ICMP_ECHO = {
    **INPUT,
    **ETHERNET,
    "oob_family": 2,
    "ip_saddr_str": "203.0.113.7",
    "ip_daddr_str": "192.0.2.10",
    "ip_protocol": 1,
    "ip_totlen": 84,
    "icmp_type": 8,
    "icmp_code": 0,
    "icmp_echoid": 0xFFFF,
    "icmp_echoseq": 65535,
}
ICMP_REDIRECT = {
    **INPUT,
    **ETHERNET,
    "oob_family": 2,
    "ip_saddr_str": "192.0.2.1",
    "ip_daddr_str": "192.0.2.10",
    "ip_protocol": 1,
    "icmp_type": 5,
    "icmp_code": 1,
    "icmp_gateway": int(ipaddress.ip_address("203.0.113.254")),
}
ICMP_FRAG_NEEDED = {
    **INPUT,
    **ETHERNET,
    "oob_family": 2,
    "ip_saddr_str": "192.0.2.1",
    "ip_daddr_str": "192.0.2.10",
    "ip_protocol": 1,
    "icmp_type": 3,
    "icmp_code": 4,
    "icmp_fragmtu": 65000,
}
ICMP6 = {
    **INPUT,
    **ETHERNET6,
    "oob_family": 10,
    "ip_saddr_str": "2001:db8::1",
    "ip_daddr_str": "2001:db8::2",
    "ip_protocol": 58,
    "icmpv6_type": 128,
    "icmpv6_code": 0,
    "icmpv6_echoid": 4242,
    "icmpv6_echoseq": 7,
    "icmpv6_csum": 0xFFFF,
}
SCTP = {
    **INPUT,
    **ETHERNET,
    "oob_family": 2,
    "ip_saddr_str": "192.0.2.10",
    "ip_daddr_str": "198.51.100.20",
    "ip_protocol": 132,
    "sctp_sport": 5000,
    "sctp_dport": 5001,
    "sctp_csum": 0xDEADBEEF,
}
# Loopback: a hardware header of another type, no MAC addresses.
LOOPBACK = {
    "oob_hook": 3,
    "oob_out": "lo",
    "oob_family": 2,
    "ip_saddr_str": "127.0.0.1",
    "ip_daddr_str": "127.0.0.1",
    "ip_protocol": 6,
    "tcp_sport": 40000,
    "tcp_dport": 5432,
    "raw_type": 772,
    "mac_str": "00:00:00:00:00:00:00:00:00:00:00:00:08:00",
    "oob_protocol": 0x0800,
}
# NFLOG's hardware address without a header (ARPHRD_VOID).
HWADDR_ONLY = {
    "oob_family": 10,
    "ip_saddr_str": "2001:db8::9",
    "ip_daddr_str": "2001:db8::1",
    "ip_protocol": 17,
    "udp_sport": 546,
    "udp_dport": 547,
    "udp_len": 100,
    "raw_type": 0xFFFF,
    "mac_saddr_str": "02:00:00:00:00:09",
    "oob_protocol": 0x86DD,
}
PACKETS = {
    "tcp": TCP,
    "udp6": UDP6,
    "icmp_echo": ICMP_ECHO,
    "icmp_redirect": ICMP_REDIRECT,
    "icmp_frag_needed": ICMP_FRAG_NEEDED,
    "icmp6": ICMP6,
    "sctp": SCTP,
    "loopback": LOOPBACK,
    "hwaddr_only": HWADDR_ONLY,
}


def read_ulog(connection: Any, packet_id: int) -> dict[str, Any]:
    cursor = connection.execute("SELECT * FROM ulog WHERE _id = %s", (packet_id,))
    names = [column.name for column in cursor.description]
    (row,) = cursor.fetchall()
    return {name: plain(value) for name, value in zip(names, row, strict=True)}


def test_init_twice_changes_nothing(normalized: str, pg: Any) -> None:
    before = pg.execute("SELECT count(*) FROM pg_class").fetchone()
    status, out, err = run_db("init", "--dsn", normalized)
    assert (status, err) == (0, "")
    assert "objects were already there and were kept" in out
    assert pg.execute("SELECT count(*) FROM pg_class").fetchone() == before
    assert pg.execute("SELECT version FROM _format").fetchall() == [(6,)]


def test_insert_packet_full_takes_the_ulog_view_columns(pg: Any) -> None:
    arguments = pg.execute(
        "SELECT proargnames FROM pg_proc WHERE proname = 'insert_packet_full'"
    ).fetchall()
    assert len(arguments) == 1
    renamed = {  # ulogd2's argument names where they differ from the view's columns
        "mac_str": "raw_header",
        "mac_saddr_str": "mac_saddr",
        "mac_daddr_str": "mac_daddr",
        "oob_protocol": "mac_protocol",
        "raw_label": "label",
    }
    view = columns_of(pg, "ulog")
    assert view[0] == "_id" and len(view) == 60
    assert [renamed.get(name, name) for name in view[1:]] == arguments[0][0]


@pytest.mark.parametrize("name", PACKETS)
def test_insert_packet_full_round_trip(pg: Any, name: str) -> None:
    packet = PACKETS[name]
    packet_id = call(pg, "INSERT_PACKET_FULL", "ulog", packet)
    stored = read_ulog(pg, packet_id)
    assert stored.pop("_id") == packet_id
    expected = {column: packet.get(column) for column in stored}
    if "mac_saddr_str" not in packet:
        expected["oob_protocol"] = None  # kept in mac only, as in ulogd2
    assert stored == expected


def test_views_show_each_protocol(pg: Any) -> None:
    ids = {name: call(pg, "INSERT_PACKET_FULL", "ulog", packet) for name, packet in PACKETS.items()}

    def quad(view: str, packet_id: int) -> tuple[Any, ...]:
        row = pg.execute(f"SELECT * FROM {view} WHERE _id = %s", (packet_id,)).fetchone()
        return tuple(map(plain, row))

    assert quad("view_tcp_quad", ids["tcp"]) == (
        ids["tcp"], "192.0.2.10", 51000, "198.51.100.20", 443
    )  # fmt: skip
    assert quad("view_udp_quad", ids["udp6"]) == (
        ids["udp6"], "2001:db8::1", 53, "2001:db8:ffff::2", 65535
    )  # fmt: skip
    for view, names in {
        "view_tcp": ("tcp", "loopback"),
        "view_udp": ("udp6", "hwaddr_only"),
        "view_icmp": ("icmp_echo", "icmp_redirect", "icmp_frag_needed"),
        "view_icmpv6": ("icmp6",),
    }.items():
        wanted = sorted(ids[name] for name in names)
        found = pg.execute(
            f"SELECT _id FROM {view} WHERE _id = ANY(%s) ORDER BY _id", (list(ids.values()),)
        ).fetchall()
        assert [row[0] for row in found] == wanted, view
    tcp = pg.execute("SELECT tcp_seq, oob_mark FROM view_tcp WHERE _id = %s", (ids["tcp"],))
    assert tcp.fetchone() == (0xFFFFFFF0, 0xFFFFFFFF)


def test_one_mac_row_per_address_pair(pg: Any) -> None:
    pair = {**UDP6, "mac_saddr_str": "02:00:00:00:01:01", "mac_daddr_str": "02:00:00:00:01:02"}
    first = call(pg, "INSERT_PACKET_FULL", "ulog", pair)
    second = call(pg, "INSERT_PACKET_FULL", "ulog", pair)
    rows = pg.execute("SELECT _mac_id FROM mac WHERE mac_saddr = '02:00:00:00:01:01'").fetchall()
    assert len(rows) == 1
    linked = pg.execute(
        "SELECT DISTINCT mac_id FROM ulog2 WHERE _id IN (%s, %s)", (first, second)
    ).fetchall()
    assert linked == rows
    # Ethernet headers live in mac only: no hwhdr row
    assert pg.execute("SELECT count(*) FROM hwhdr WHERE _hw_id = %s", (first,)).fetchone() == (0,)


def test_the_set_based_twin_stores_what_insert_packet_full_stores(pg: Any) -> None:
    """INSERT_PACKET_FULL_BATCH over a staging table (as PGSQL fills it) against
    INSERT_PACKET_FULL row by row: the same ulog rows, ids in row order, one mac row
    per new address triple."""
    fresh = {**UDP6, "mac_saddr_str": "02:00:00:00:03:01", "mac_daddr_str": "02:00:00:00:03:02",
             "oob_protocol": 0x86DD}
    packets = [*PACKETS.values(), fresh, fresh, {**TCP, "oob_prefix": "no mac"}]
    names = columns_of(pg, "ulog")[1:]
    (arguments,) = pg.execute(
        "SELECT array_agg(format('%I %s', name, format_type(type, NULL)) ORDER BY n) "
        "FROM pg_proc, unnest(proargnames, proargtypes::oid[]) WITH ORDINALITY AS a(name, type, n) "
        "WHERE proname = 'insert_packet_full'"
    ).fetchone()
    with pg.transaction():
        pg.execute(f"CREATE TEMPORARY TABLE staged (_n bigserial, {', '.join(arguments)}) "
                   "ON COMMIT DROP")
        argument_names = [argument.split()[0] for argument in arguments]
        placeholders = ", ".join(["%s"] * len(names))
        for packet in packets:
            pg.execute(f"INSERT INTO staged ({', '.join(argument_names)}) VALUES ({placeholders})",
                       [packet.get(name) for name in names])
        (stored,) = pg.execute("SELECT INSERT_PACKET_FULL_BATCH('staged')").fetchone()
    assert stored == len(packets)
    (last,) = pg.execute("SELECT max(_id) FROM ulog2").fetchone()
    batch_ids = list(range(last - len(packets) + 1, last + 1))
    assert [row[0] for row in pg.execute(
        "SELECT _id FROM ulog2 WHERE _id >= %s ORDER BY _id", (batch_ids[0],))] == batch_ids
    row_ids = [call(pg, "INSERT_PACKET_FULL", "ulog", packet) for packet in packets]
    for batch_id, row_id in zip(batch_ids, row_ids, strict=True):
        by_batch, by_row = read_ulog(pg, batch_id), read_ulog(pg, row_id)
        assert (by_batch.pop("_id"), by_row.pop("_id")) == (batch_id, row_id)
        assert by_batch == by_row
    fresh_rows = "SELECT count(*) FROM mac WHERE mac_saddr = '02:00:00:00:03:01'"
    assert pg.execute(fresh_rows).fetchone() == (1,)
    for table, column in (("tcp", "_tcp_id"), ("udp", "_udp_id"), ("hwhdr", "_hw_id"),
                          ("icmp", "_icmp_id"), ("icmpv6", "_icmpv6_id"), ("sctp", "_sctp_id")):
        count = f"SELECT count(*) FROM {table} WHERE {column} = ANY(%s)"
        assert (pg.execute(count, (batch_ids,)).fetchone()
                == pg.execute(count, (row_ids,)).fetchone()), table


def test_delete_packet_and_compress_tables(pg: Any) -> None:
    lonely = {**TCP, "mac_saddr_str": "02:00:00:00:02:01", "mac_daddr_str": "02:00:00:00:02:02"}
    packet_id = call(pg, "INSERT_PACKET_FULL", "ulog", lonely)
    pg.execute("SELECT DELETE_PACKET(%s)", (packet_id,))
    for table, column in (("ulog2", "_id"), ("tcp", "_tcp_id")):
        count = pg.execute(f"SELECT count(*) FROM {table} WHERE {column} = %s", (packet_id,))
        assert count.fetchone() == (0,), table
    mac = "SELECT count(*) FROM mac WHERE mac_saddr = '02:00:00:00:02:01'"
    assert pg.execute(mac).fetchone() == (1,)
    pg.execute("SELECT COMPRESS_TABLES()")
    assert pg.execute(mac).fetchone() == (0,)
    assert pg.execute("SELECT count(*) FROM mac").fetchone()[0] >= 1  # the others stay


def test_foreign_keys_can_be_dropped_and_added(pg: Any) -> None:
    constraints = "SELECT count(*) FROM pg_constraint WHERE contype = 'f'"
    assert pg.execute(constraints).fetchone() == (7,)
    with pg.transaction():
        pg.execute("SELECT ULOG2_DROP_FOREIGN_KEYS()")
        assert pg.execute(constraints).fetchone() == (0,)
        pg.execute("INSERT INTO udp (_udp_id, udp_sport) VALUES (-1, 9)")  # no such packet
        pg.execute("SELECT COMPRESS_TABLES()")
        assert pg.execute("SELECT count(*) FROM udp WHERE _udp_id = -1").fetchone() == (0,)
        pg.execute("SELECT ULOG2_ADD_FOREIGN_KEYS()")
        pg.execute("SELECT ULOG2_ADD_FOREIGN_KEYS()")  # again: nothing to add
    assert pg.execute(constraints).fetchone() == (7,)


TCP_FLOW = {
    "oob_family": 2,
    "orig_ip_saddr_str": "192.0.2.10",
    "orig_ip_daddr_str": "198.51.100.20",
    "orig_ip_protocol": 6,
    "orig_l4_sport": 51000,
    "orig_l4_dport": 443,
    "reply_ip_saddr_str": "198.51.100.20",
    "reply_ip_daddr_str": "203.0.113.1",  # masqueraded
    "reply_ip_protocol": 6,
    "reply_l4_sport": 443,
    "reply_l4_dport": 61000,
    "ct_mark": 1,
    "flow_start_sec": 2**31 + 100,
    "flow_start_usec": 5,
    "ct_event": 1,
}
DESTROY = {
    "orig_raw_pktlen": 2**40,
    "orig_raw_pktcount": 2**33,
    "reply_raw_pktlen": 3000,
    "reply_raw_pktcount": 3,
    "ct_mark": 0xFFFFFFFF,
    "flow_end_sec": 2**31 + 200,
    "flow_end_usec": 7,
    "ct_event": 4,
}
ICMP_FLOW = {
    "oob_family": 2,
    "orig_ip_saddr_str": "192.0.2.10",
    "orig_ip_daddr_str": "203.0.113.7",
    "orig_ip_protocol": 1,
    "reply_ip_saddr_str": "203.0.113.7",
    "reply_ip_daddr_str": "192.0.2.10",
    "reply_ip_protocol": 1,
    "icmp_type": 8,
    "icmp_code": 0,
    "flow_start_sec": 1700000000,
    "ct_event": 1,
}
ICMP6_FLOW = {  # ulog2_ct has no ICMPv6 columns: type and code are NULL
    "oob_family": 10,
    "orig_ip_saddr_str": "2001:db8::1",
    "orig_ip_daddr_str": "2001:db8::2",
    "orig_ip_protocol": 58,
    "reply_ip_saddr_str": "2001:db8::2",
    "reply_ip_daddr_str": "2001:db8::1",
    "reply_ip_protocol": 58,
    "flow_start_sec": 1700000000,
    "ct_event": 1,
}


def flow_rows(connection: Any, flow: dict[str, Any]) -> list[dict[str, Any]]:
    cursor = connection.execute(
        "SELECT * FROM ulog2_ct WHERE orig_ip_saddr_str = %s AND orig_ip_daddr_str = %s "
        "AND orig_ip_protocol = %s ORDER BY _ct_id",
        (flow["orig_ip_saddr_str"], flow["orig_ip_daddr_str"], flow["orig_ip_protocol"]),
    )
    names = [column.name for column in cursor.description]
    return [{n: plain(v) for n, v in zip(names, row, strict=True)} for row in cursor]


@pytest.fixture
def empty_flows(pg: Any) -> Any:
    pg.execute("DELETE FROM ulog2_ct")
    return pg


def test_insert_ct_stores_every_column(empty_flows: Any) -> None:
    pg = empty_flows
    flow = {**TCP_FLOW, **DESTROY}
    flow_id = call(pg, "INSERT_CT", "ulog2_ct", flow)
    (row,) = flow_rows(pg, flow)
    assert row.pop("_ct_id") == flow_id
    assert row == {column: flow.get(column) for column in row}


def test_insert_or_replace_ct_completes_the_new_row(empty_flows: Any) -> None:
    pg = empty_flows
    earlier = call(pg, "INSERT_OR_REPLACE_CT", "ulog2_ct", {**TCP_FLOW, **DESTROY})
    new = call(pg, "INSERT_OR_REPLACE_CT", "ulog2_ct", TCP_FLOW)
    assert earlier != new
    destroyed = call(pg, "INSERT_OR_REPLACE_CT", "ulog2_ct", {**TCP_FLOW, **DESTROY})
    assert destroyed == new
    rows = flow_rows(pg, TCP_FLOW)
    assert [row["_ct_id"] for row in rows] == [earlier, new]
    completed = rows[1]
    assert completed["ct_event"] == 4
    assert completed["flow_start_sec"] == TCP_FLOW["flow_start_sec"]
    assert {k: completed[k] for k in DESTROY} == DESTROY


def test_insert_or_replace_ct_without_ports_or_icmp_type(empty_flows: Any) -> None:
    pg = empty_flows
    for flow in (ICMP_FLOW, ICMP6_FLOW):
        new = call(pg, "INSERT_OR_REPLACE_CT", "ulog2_ct", flow)
        assert call(pg, "INSERT_OR_REPLACE_CT", "ulog2_ct", {**flow, **DESTROY}) == new
        (row,) = flow_rows(pg, flow)
        assert (row["_ct_id"], row["ct_event"], row["orig_raw_pktlen"]) == (new, 4, 2**40)


def test_insert_or_replace_ct_inserts_other_events(empty_flows: Any) -> None:
    pg = empty_flows
    call(pg, "INSERT_OR_REPLACE_CT", "ulog2_ct", TCP_FLOW)
    call(pg, "INSERT_OR_REPLACE_CT", "ulog2_ct", {**TCP_FLOW, "ct_event": 2})
    other = {**TCP_FLOW, "orig_l4_sport": 51001}
    call(pg, "INSERT_OR_REPLACE_CT", "ulog2_ct", other)
    call(pg, "INSERT_OR_REPLACE_CT", "ulog2_ct", {**TCP_FLOW, **DESTROY})
    rows = flow_rows(pg, TCP_FLOW)
    assert [(row["orig_l4_sport"], row["ct_event"]) for row in rows] == [
        (51000, 4),
        (51000, 2),
        (51001, 1),
    ]
    pg.execute("SELECT DELETE_CT_FLOW(%s)", (rows[1]["_ct_id"],))
    assert len(flow_rows(pg, TCP_FLOW)) == 2


def test_insert_nfacct(pg: Any) -> None:
    reading = {
        "sum_name": "http-in",
        "sum_pkts": 2**33,
        "sum_bytes": 2**45,
        "oob_time_sec": 2**31 + 1,
        "oob_time_usec": 999999,
    }
    assert columns_of(pg, "nfacct") == list(reading)
    names = list(reading)
    pg.execute("SELECT INSERT_NFACCT(%s, %s, %s, %s, %s)", [reading[n] for n in names])
    row = pg.execute("SELECT * FROM nfacct WHERE sum_name = 'http-in'").fetchone()
    assert row == tuple(reading.values())


def test_ulogd2_schema_is_upgraded_in_place(postgres: Any) -> None:
    """ulogd2's own schema loaded first: init keeps its tables, replaces its functions
    (no ambiguous overloads) and names the columns that are too narrow."""
    uri = pg_database(postgres, "schemas_from_ulogd")
    with psycopg.connect(uri, autocommit=True) as connection:
        connection.execute(ulogd_file("pgsql-ulogd2.sql"))
    status, _, err = run_db("init", "--dsn", uri)
    assert status == 0
    assert "WARNING: column ulog2.ip_totlen is smallint (ulogd2's schema)" in err
    assert "ALTER TABLE ulog2 ALTER COLUMN ip_totlen TYPE integer" in err
    with psycopg.connect(uri, autocommit=True) as connection:
        packet_id = call(connection, "INSERT_PACKET_FULL", "ulog", {**TCP, "ip_totlen": 1500,
                         "oob_time_sec": 1700000000, "oob_mark": 1, "oob_prefix": "in",
                         "ip_fragoff": 0x4000})  # fmt: skip
        assert read_ulog(connection, packet_id)["ip_totlen"] == 1500
        count = connection.execute(
            "SELECT count(*) FROM pg_proc WHERE proname = 'insert_packet_full'"
        ).fetchone()
        assert count == (1,)


@pytest.fixture(scope="module")
def flat(postgres: Any) -> str:
    uri = pg_database(postgres, "schemas_flat")
    for _ in range(2):
        status, out, err = run_db("init", "--flat", "--dsn", uri)
        assert (status, err) == (0, ""), err
    assert 'table="ulog2" procedure="INSERT"' in out
    return uri


def test_flat_table_takes_copy_and_views_read_it(flat: str, normalized: str) -> None:
    with psycopg.connect(flat, autocommit=True) as connection:
        names = columns_of(connection, "ulog2")[1:]
        with connection.cursor() as cursor:
            with cursor.copy(f"COPY ulog2 ({', '.join(names)}) FROM STDIN") as copy:
                for packet in (TCP, UDP6, SCTP):
                    copy.write_row([packet.get(name) for name in names])
            quads = cursor.execute("SELECT * FROM view_tcp_quad").fetchall()
            assert [tuple(map(plain, row))[1:] for row in quads] == [
                ("192.0.2.10", 51000, "198.51.100.20", 443)
            ]
            cursor.execute("SELECT * FROM ulog WHERE ip_protocol = 132")
            view = [column.name for column in cursor.description]
            row = dict(zip(view, map(plain, cursor.fetchone()), strict=True))
            assert {k: v for k, v in row.items() if k != "_id"} == {
                k: SCTP.get(k) for k in view if k != "_id"
            }
            assert cursor.execute("SELECT version FROM _format").fetchall() == [(1,)]
        flow_id = call(connection, "INSERT_OR_REPLACE_CT", "ulog2_ct", TCP_FLOW)
        assert call(connection, "INSERT_OR_REPLACE_CT", "ulog2_ct", {**TCP_FLOW, **DESTROY}) == (
            flow_id
        )
    with psycopg.connect(normalized) as connection:
        assert columns_of(connection, "ulog") == view


def test_flat_and_normalized_do_not_mix(flat: str, normalized: str) -> None:
    status, _, err = run_db("init", "--dsn", flat)
    assert status == 2
    assert "ulog2 holds the flat packet schema" in err
    assert "fix: create the flat schema (nfkit db init --flat)" in err
    status, _, err = run_db("init", "--flat", "--dsn", normalized)
    assert status == 2
    assert "ulog2 holds the normalized packet schema" in err


def test_postgres_unreachable_and_missing_database(postgres: Any) -> None:
    status, _, err = run_db("init", "--dsn", f"postgresql://x:{QUOTED}@127.0.0.1:1/db")
    assert status == 2
    assert "cannot connect to x@127.0.0.1:1/db" in err
    assert "fix: check that the server runs" in err
    assert PASSWORD not in err and QUOTED not in err
    status, _, err = run_db("init", "--dsn", postgres.dsn(dbname="no_such_db"))
    assert status == 2
    assert 'database "no_such_db" does not exist' in err and "createdb" in err


# -- MariaDB --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mysql_flat(mariadb: Any) -> dict[str, Any]:
    """A database with the flat schema made by ``nfkit db init`` over the unix socket."""
    mariadb.sql(
        "DROP DATABASE IF EXISTS schemas_flat; CREATE DATABASE schemas_flat;"
        f"CREATE USER IF NOT EXISTS 'schemas'@'localhost' IDENTIFIED BY '{PASSWORD}';"
        f"CREATE USER IF NOT EXISTS 'schemas'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}';"
        "GRANT ALL ON schemas_flat.* TO 'schemas'@'localhost';"
        "GRANT ALL ON schemas_flat.* TO 'schemas'@'127.0.0.1';"
    )
    dsn = f"mysql://schemas:{QUOTED}@localhost/schemas_flat?unix_socket={mariadb.socket}"
    for _ in range(2):
        status, out, err = run_db("init", "--flat", "--dsn", dsn)
        assert (status, err) == (0, ""), err
    assert "objects were already there and were kept" in out
    assert 'table="conntrack" procedure="INSERT_CT"' in out
    return {"unix_socket": mariadb.socket, "user": "schemas", "password": PASSWORD,
            "database": "schemas_flat", "autocommit": True}  # fmt: skip


def ip2bin(text: str) -> bytes:
    """IP2BIN's value as bytes: IPv4 mapped into IPv6."""
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(f"::ffff:{address}").packed
    return address.packed


def binary_packet(packet: dict[str, Any]) -> dict[str, Any]:
    """A packet as the MariaDB stack gives it (IP2BIN instead of IP2STR)."""
    values = {k: v for k, v in packet.items() if k not in ("ip_saddr_str", "ip_daddr_str")}
    values["ip_saddr_bin"] = ip2bin(packet["ip_saddr_str"])
    values["ip_daddr_bin"] = ip2bin(packet["ip_daddr_str"])
    return values


def test_mariadb_flat_packets(mysql_flat: dict[str, Any]) -> None:
    connection = pymysql.connect(**mysql_flat)
    with connection, connection.cursor() as cursor:
        cursor.execute("SELECT * FROM ulog2 LIMIT 0")
        names = [column[0] for column in cursor.description][1:]
        rows = [binary_packet(p) for p in (TCP, UDP6, ICMP6, SCTP, HWADDR_ONLY)]
        for row in rows:
            row["ip6_fragoff"] = 65528 if row["oob_family"] == 10 else None
        cursor.executemany(
            f"INSERT INTO ulog2 ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(names))})",
            [[row.get(name) for name in names] for row in rows],
        )
        cursor.execute("SELECT ip_saddr_str, tcp_sport, ip_daddr_str, tcp_dport FROM view_tcp_quad")
        assert cursor.fetchall() == (("::ffff:192.0.2.10", 51000, "::ffff:198.51.100.20", 443),)
        cursor.execute("SELECT ip_saddr_str, udp_sport, ip_daddr_str, udp_dport FROM view_udp_quad")
        assert cursor.fetchall() == (
            ("2001:db8::1", 53, "2001:db8:ffff::2", 65535),
            ("2001:db8::9", 546, "2001:db8::1", 547),
        )
        cursor.execute("SELECT * FROM ulog WHERE ip_protocol = 6")
        view = [column[0] for column in cursor.description]
        stored = dict(zip(view, cursor.fetchone(), strict=True))
        expected = binary_packet(TCP)
        assert {k: v for k, v in stored.items() if k != "_id"} == {
            k: (int(v) if isinstance(v, bool) else v)
            for k, v in ((k, expected.get(k)) for k in view if k != "_id")
        }
        cursor.execute("SELECT count(*) FROM view_icmpv6 WHERE ip6_fragoff = 65528")
        assert cursor.fetchone() == (1,)


def test_mariadb_insert_ct_through_the_conntrack_view(mysql_flat: dict[str, Any]) -> None:
    flow = {**TCP_FLOW, **DESTROY}
    values = {k: v for k, v in flow.items() if not k.endswith("_str") and k != "ct_event"}
    for column in ("orig_ip_saddr", "orig_ip_daddr", "reply_ip_saddr", "reply_ip_daddr"):
        values[f"{column}_bin"] = ip2bin(flow[f"{column}_str"])
    values["flow_start_sec"] = values["flow_end_sec"] = 2**32 - 1  # after 2038
    connection = pymysql.connect(**mysql_flat)
    with connection, connection.cursor() as cursor:
        cursor.execute("SELECT * FROM conntrack LIMIT 0")
        names = [column[0] for column in cursor.description][1:]
        assert len(names) == 22 and set(values) <= set(names)
        row = [values.get(name) for name in names]
        cursor.execute(f"SELECT INSERT_CT({', '.join(['%s'] * len(names))})", row)
        (flow_id,) = cursor.fetchone()
        cursor.execute("SELECT * FROM conntrack WHERE _ct_id = %s", (flow_id,))
        assert cursor.fetchone() == (flow_id, *row)
        cursor.execute("CALL DELETE_CT_FLOW(%s)", (flow_id,))
        cursor.execute("SELECT count(*) FROM ulog2_ct WHERE _ct_id = %s", (flow_id,))
        assert cursor.fetchone() == (0,)


def test_mariadb_wrong_password_and_unreachable(mysql_flat: dict[str, Any], mariadb: Any) -> None:
    status, _, err = run_db(
        "init", "--flat", "--dsn", f"mysql://schemas:Wr0ng%21pw@127.0.0.1:{mariadb.port}/x"
    )
    assert status == 2
    assert "Access denied for user 'schemas'" in err
    assert "fix: check the user and password" in err
    assert "Wr0ng" not in err
    status, _, err = run_db("init", "--flat", "--dsn", f"mysql://schemas:{QUOTED}@127.0.0.1:1/x")
    assert status == 2 and "cannot connect to schemas@127.0.0.1:1/x" in err
    assert PASSWORD not in err and QUOTED not in err


def test_mariadb_password_from_the_environment(
    mysql_flat: dict[str, Any], mariadb: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MYSQL_PWD", PASSWORD)
    dsn = f"mysql://schemas@127.0.0.1:{mariadb.port}/schemas_flat"
    status, out, err = run_db("init", "--flat", "--dsn", dsn)
    assert (status, err) == (0, "")
    assert "schema ready in schemas@127.0.0.1" in out


def test_mariadb_refuses_a_normalized_database(mariadb: Any) -> None:
    mariadb.sql(
        "DROP DATABASE IF EXISTS schemas_norm; CREATE DATABASE schemas_norm;"
        "CREATE TABLE schemas_norm.ulog2 (_id bigint, ip_saddr binary(16))"
    )
    dsn = f"mysql://root@localhost/schemas_norm?unix_socket={mariadb.socket}"
    status, _, err = run_db("init", "--flat", "--dsn", dsn)
    assert status == 2
    assert "table ulog2 holds a normalized packet schema" in err


# -- SQLite ---------------------------------------------------------------------------------


def test_sqlite_tables(tmp_path: Path) -> None:
    path = tmp_path / "ulog.db"
    for _ in range(2):
        status, out, err = run_db("init", "--dsn", f"sqlite://{path}")
        assert (status, err) == (0, ""), err
    assert 'table="ulog2_ct" (SQLITE3)' in out
    connection = sqlite3.connect(path)
    names = [row[1] for row in connection.execute("PRAGMA table_info(ulog2)")]
    connection.executemany(
        f"INSERT INTO ulog2 ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
        [[packet.get(name) for name in names] for packet in (TCP, UDP6)],
    )
    assert connection.execute("SELECT ip_saddr_str, tcp_sport FROM view_tcp_quad").fetchall() == [
        ("192.0.2.10", 51000)
    ]
    assert connection.execute("SELECT ip_daddr_str FROM view_udp_quad").fetchall() == [
        ("2001:db8:ffff::2",)
    ]


def test_missing_directory_for_sqlite(tmp_path: Path) -> None:
    status, _, err = run_db("init", "--dsn", f"sqlite://{tmp_path}/nowhere/ulog.db")
    assert status == 2 and "is not a directory" in err


# -- names compared with ulogd2's schema files ------------------------------------------------

# What ulogd2's files have and ours do not, or the reverse, and why.
NUFW = "NuFW (the authenticating firewall these objects serve) is discontinued"
NOT_IN_NFKIT = {
    "pgsql": {"nufw": NUFW, "view_nufw": NUFW},
    "pgsql-flat": {"nufw": NUFW, "view_nufw": NUFW},
    "mysql-flat": {
        "nufw": NUFW,
        "view_nufw": NUFW,
        "nulog": NUFW,
        "state_t": f"{NUFW}; its connection states are unused",
        "PACKET_ADD_NUFW": NUFW,
    },
    "sqlite3": {},
}
ONLY_IN_NFKIT = {
    "pgsql": {
        "INSERT_PACKET_FULL_BATCH": "INSERT_PACKET_FULL for a batch, which PGSQL calls instead",
    },
    "pgsql-flat": {
        "nfacct": "accounting objects fit the flat schema as well",
        "INSERT_NFACCT": "accounting objects fit the flat schema as well",
    },
    "mysql-flat": {},
    "sqlite3": {
        "ulog2": "packets of both families with text addresses (the flat columns)",
        "ulog2_ct": "flows of both families with text addresses",
        "nfacct": "accounting objects",
        "view_tcp_quad": "as in the other schemas",
        "view_udp_quad": "as in the other schemas",
    },
}
# Columns of ours that differ from ulogd2's by name or order: none. Types
# that differ in kind rather than width (never narrower in range):
OTHER_TYPE = {
    ("ulog2", "timestamp"): "timestamptz: the time a row was written, with its zone",
    ("view_tcp", "timestamp"): "timestamptz",
    ("view_udp", "timestamp"): "timestamptz",
    ("view_icmp", "timestamp"): "timestamptz",
    ("view_icmpv6", "timestamp"): "timestamptz",
}


class Catalog:
    """Relations (with columns and their value ranges) and routines (with argument names)."""

    def __init__(self) -> None:
        self.columns: dict[str, list[str]] = {}
        self.types: dict[tuple[str, str], str] = {}
        self.routines: dict[str, list[str]] = {}

    def names(self) -> set[str]:
        return set(self.columns) | set(self.routines)


_PG_RANGE = {"smallint": 2**15 - 1, "integer": 2**31 - 1, "bigint": 2**63 - 1}
_MYSQL_RANGE = {"tinyint": 2**7 - 1, "smallint": 2**15 - 1, "int": 2**31 - 1, "bigint": 2**63 - 1}


def capacity(column_type: str) -> tuple[str, float]:
    """The kind of a column type and the largest value or length it holds."""
    if column_type in _PG_RANGE:
        return "integer", _PG_RANGE[column_type]
    if column_type == "text":
        return "string", float("inf")
    integer = re.fullmatch(r"(tinyint|smallint|int|bigint)(\(\d+\))?( unsigned)?", column_type)
    if integer:
        largest = _MYSQL_RANGE[integer.group(1)]
        return "integer", largest * 2 + 1 if integer.group(3) else largest
    sized = re.fullmatch(r"(character varying|varchar|binary)\((\d+)\)", column_type)
    if sized:
        return ("binary" if sized.group(1) == "binary" else "string"), int(sized.group(2))
    return column_type, 0


def pg_catalog(uri: str) -> Catalog:
    catalog = Catalog()
    with psycopg.connect(uri) as connection:
        for relation, column, column_type in connection.execute(
            "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'v') ORDER BY c.relname, a.attnum"
        ):
            catalog.columns.setdefault(relation, []).append(column)
            catalog.types[relation, column] = column_type
        for name, arguments in connection.execute(
            "SELECT upper(p.proname), p.proargnames FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'"
        ):
            assert name not in catalog.routines, f"{name} is overloaded"
            catalog.routines[name] = list(arguments or [])
    return catalog


def mysql_catalog(mariadb: Any, database: str) -> Catalog:
    catalog = Catalog()
    connection = pymysql.connect(unix_socket=mariadb.socket, user="root", database=database)
    with connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT table_name, column_name, column_type FROM information_schema.columns "
            "WHERE table_schema = %s ORDER BY table_name, ordinal_position",
            (database,),
        )
        for relation, column, column_type in cursor.fetchall():
            catalog.columns.setdefault(relation, []).append(column)
            catalog.types[relation, column] = column_type
        cursor.execute(
            "SELECT r.routine_name, p.parameter_name FROM information_schema.routines r "
            "LEFT JOIN information_schema.parameters p ON p.specific_schema = r.routine_schema "
            "AND p.specific_name = r.specific_name AND p.ordinal_position > 0 "
            "WHERE r.routine_schema = %s ORDER BY r.routine_name, p.ordinal_position",
            (database,),
        )
        for name, parameter in cursor.fetchall():
            arguments = catalog.routines.setdefault(name.upper(), [])
            if parameter:
                arguments.append(parameter)
    return catalog


def sqlite_catalog(script: str) -> Catalog:
    catalog = Catalog()
    connection = sqlite3.connect(":memory:")
    connection.executescript(script)
    for (name,) in connection.execute(
        "SELECT name FROM sqlite_master WHERE type IN ('table', 'view')"
    ):
        for row in connection.execute(f"PRAGMA table_info({name})"):
            catalog.columns.setdefault(name, []).append(row[1])
    return catalog


def compare(schema: str, ulogd: Catalog, ours: Catalog) -> None:
    assert ulogd.names() - ours.names() == set(NOT_IN_NFKIT[schema])
    assert ours.names() - ulogd.names() == set(ONLY_IN_NFKIT[schema])
    for relation in set(ulogd.columns) & set(ours.columns):
        assert ours.columns[relation] == ulogd.columns[relation], relation
    for routine in set(ulogd.routines) & set(ours.routines):
        assert ours.routines[routine] == ulogd.routines[routine], routine
    for key, theirs in ulogd.types.items():
        if key not in ours.types or key in OTHER_TYPE:
            continue
        (their_kind, their_size), (kind, size) = capacity(theirs), capacity(ours.types[key])
        assert kind == their_kind and size >= their_size, (key, theirs, ours.types[key])


@pytest.mark.parametrize(
    ("schema", "ulogd_name"),
    [("pgsql", "pgsql-ulogd2.sql"), ("pgsql-flat", "pgsql-ulogd2-flat.sql")],
)
def test_postgres_names_match_ulogd2(postgres: Any, schema: str, ulogd_name: str) -> None:
    database = f"schemas_names_{schema.replace('-', '_')}"
    reference = pg_database(postgres, f"{database}_ulogd")
    with psycopg.connect(reference, autocommit=True) as connection:
        connection.execute(ulogd_file(ulogd_name))
    ours = pg_database(postgres, database)
    with psycopg.connect(ours) as connection:
        connection.execute(SCHEMAS[schema].sql())
    compare(schema, pg_catalog(reference), pg_catalog(ours))


def test_mariadb_names_match_ulogd2(mariadb: Any) -> None:
    mariadb.sql("DROP DATABASE IF EXISTS schemas_ulogd; CREATE DATABASE schemas_ulogd;"
                "DROP DATABASE IF EXISTS schemas_ours; CREATE DATABASE schemas_ours;")  # fmt: skip
    # ulogd2's file needs the client (several statements between two $$).
    subprocess.run(
        ["mariadb", f"--socket={mariadb.socket}", "-uroot", "schemas_ulogd"],
        input=ulogd_file("mysql-ulogd2-flat.sql"), text=True, check=True, capture_output=True,
    )  # fmt: skip
    connection = pymysql.connect(unix_socket=mariadb.socket, user="root", database="schemas_ours")
    with connection, connection.cursor() as cursor:
        for statement in statements(SCHEMAS["mysql-flat"].sql()):
            cursor.execute(statement)
    compare("mysql-flat", mysql_catalog(mariadb, "schemas_ulogd"),
            mysql_catalog(mariadb, "schemas_ours"))  # fmt: skip


def test_sqlite_names_match_ulogd2() -> None:
    compare(
        "sqlite3",
        sqlite_catalog(ulogd_file("sqlite3.table")),
        sqlite_catalog(SCHEMAS["sqlite3"].sql()),
    )
