"""The UNIXSOCK input: ulogd2's record format, several clients, bad input, the socket file.

Clients are Python sockets sending records built by :func:`encode_record`
around packets from :mod:`nfkit.packet.build`. Daemons are real ``nfkit
logd`` processes (UNIXSOCK needs no privilege); the differential test feeds
the same records to Debian's ulogd 2.0.8 and compares LOGEMU and JSON lines.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from nfkit.cli.logd import describe
from nfkit.lab import Lab
from nfkit.logd.plugins.unixsock import (
    MARKER,
    OPTION_CACHE_SIZE,
    MalformedRecord,
    RecordOption,
    decode_record,
    encode_record,
)
from nfkit.logd.registry import plugins
from nfkit.packet import IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP
from nfkit.packet.build import (
    build_icmp_echo,
    build_icmpv6_echo,
    build_ipv4,
    build_ipv6,
    build_tcp,
    build_udp,
)
from reference import DaemonRun, missing_reference, plugin_path

SRC = str(Path(__file__).resolve().parent.parent / "src")
ENV = {**os.environ, "PYTHONPATH": SRC}
READY = "initialization finished, entering main loop"
T0 = 1700000000
HOST = socket.gethostname().split(".", 1)[0]
A4, B4 = "192.0.2.10", "198.51.100.20"
A6, B6 = "2001:db8::10", "2001:db8:1::20"
SYN, ACK = 0x02, 0x10

# -- the packets and what PRINTPKT makes of them ---------------------------------------------

TCP4 = build_ipv4(
    A4,
    B4,
    IPPROTO_TCP,
    build_tcp(40000, 80, 1000, 0, SYN, 29200, b"", A4, B4),
    tos=0x10,
    ident=4321,
    flags_frag=0x4000,
)
UDP4 = build_ipv4(A4, B4, IPPROTO_UDP, build_udp(5353, 53, b"query", A4, B4), ident=99)
ICMP4 = build_ipv4(A4, B4, IPPROTO_ICMP, build_icmp_echo(0x1234, 7, b"ping"), ident=77)
TCP6 = build_ipv6(
    A6,
    B6,
    IPPROTO_TCP,
    build_tcp(1234, 443, 5, 6, SYN | ACK, 1000, b"", A6, B6),
    hop_limit=63,
    flow_label=0x12345,
)
ICMP6 = build_ipv6(A6, B6, IPPROTO_ICMPV6, build_icmpv6_echo(9, 3, b"v6", A6, B6))
#: (packet, prefix, PRINTPKT text after the interfaces)
PACKETS = [
    (
        TCP4,
        "TCP-IN: ",
        f"SRC={A4} DST={B4} LEN=40 TOS=10 PREC=0x00 TTL=64 ID=4321 DF PROTO=TCP "
        "SPT=40000 DPT=80 SEQ=1000 ACK=0 WINDOW=29200 SYN URGP=0 ",
    ),
    (
        UDP4,
        "UDP",
        f"SRC={A4} DST={B4} LEN=33 TOS=00 PREC=0x00 TTL=64 ID=99 PROTO=UDP SPT=5353 DPT=53 LEN=13 ",
    ),
    (
        ICMP4,
        "ICMP",
        f"SRC={A4} DST={B4} LEN=32 TOS=00 PREC=0x00 TTL=64 ID=77 PROTO=ICMP "
        "TYPE=8 CODE=0 ID=4660 SEQ=7 ",
    ),
    (
        TCP6,
        "V6",
        f"SRC={A6} DST={B6} LEN=60 TC=0 HOPLIMIT=63 FLOWLBL=74565 PROTO=TCP "
        "SPT=1234 DPT=443 SEQ=5 ACK=6 WINDOW=1000 ACK SYN URGP=0 ",
    ),
    (
        ICMP6,
        "V6 ping",
        f"SRC={A6} DST={B6} LEN=50 TC=0 HOPLIMIT=64 FLOWLBL=0 PROTO=ICMPv6 "
        "TYPE=128 CODE=0 ID=9 SEQ=3 ",
    ),
]
NUFW = [
    (RecordOption.USER, "alice"),
    (RecordOption.USER_ID, 1000),
    (RecordOption.OS_NAME, "Linux"),
    (RecordOption.OS_RELEASE, "6.1"),
    (RecordOption.OS_VERSION, "#1 SMP"),
    (RecordOption.APP_NAME, "/usr/bin/curl"),
]

#: What NUFW becomes in an event.
NUFW_KEYS = {
    "nufw.user.name": "alice",
    "nufw.user.id": 1000,
    "nufw.os.name": "Linux",
    "nufw.os.rel": "6.1",
    "nufw.os.vers": "#1 SMP",
    "nufw.app.name": "/usr/bin/curl",
}


def options(prefix: str, state: int = 1) -> list[tuple[int, str | int | bytes]]:
    return [
        (RecordOption.PREFIX, prefix),
        (RecordOption.IN, "eth0"),
        (RecordOption.OUT, "eth1"),
        (RecordOption.TIME, T0),
        (RecordOption.STATE, state),
    ]


def logemu_line(prefix: str, text: str, when: int = T0) -> str:
    return f"{time.ctime(when)[4:19]} {HOST} {prefix} IN=eth0 OUT=eth1 MAC= {text}"


def good(prefix: str) -> bytes:
    """A valid record (UDP over IPv4) whose LOGEMU line carries ``prefix``."""
    return encode_record(UDP4, options(prefix))


def good_line(prefix: str) -> str:
    return logemu_line(prefix, PACKETS[1][2])


# -- the record format ---------------------------------------------------------------------------


def test_record_layout_and_every_option() -> None:
    record = encode_record(TCP4, [*options("TCP-IN: ", 2), *NUFW])
    marker, total_size, version, length = struct.unpack_from("!IHIH", record)
    assert (marker, total_size, version, length) == (MARKER, len(record) - 4, 0, 40)
    assert record[12:52] == TCP4
    assert struct.unpack_from("!II", record, 52) == (RecordOption.PREFIX, 9)  # NUL-terminated
    assert record[60:72] == b"TCP-IN: \0" + bytes(3)  # padded to 8 bytes
    assert len(record) % 8 == 4
    event, unknown = decode_record(record)
    assert unknown == ()
    assert event == {
        "oob.family": socket.AF_INET,
        "raw.pkt": TCP4,
        "raw.pktlen": 40,
        "raw.pktcount": 1,
        "oob.prefix": "TCP-IN: ",
        "oob.in": "eth0",
        "oob.out": "eth1",
        "oob.time.sec": T0,
        "raw.label": 2,
        **NUFW_KEYS,
    }
    assert decode_record(encode_record(TCP6))[0]["oob.family"] == socket.AF_INET6
    assert decode_record(encode_record(b""))[0]["oob.family"] == 0


def nuauth_record(packet: bytes, opts: Sequence[tuple[int, bytes]]) -> bytes:
    """A record as NuFW's nuauth writes it: values of length+1 (a NUL after each)."""
    body = struct.pack("!IH", 0, len(packet)) + packet + bytes(-len(packet) % 8)
    for option, value in opts:
        body += struct.pack("!II", option, len(value) + 1) + value + b"\0"
        body += b"\xaa" * (-(len(value) + 1) % 8)  # nuauth leaves the padding uninitialised
    return struct.pack("!IH", MARKER, len(body) + 2) + body


def test_records_as_nuauth_writes_them() -> None:
    opts = [
        (RecordOption.PREFIX, b"Open "),
        (RecordOption.STATE, b"\x01"),
        (RecordOption.TIME, struct.pack("=I", T0)),
        (RecordOption.USER, b"bob"),
        (RecordOption.USER_ID, struct.pack("=I", 42)),
    ]
    event, unknown = decode_record(nuauth_record(UDP4, opts))
    assert unknown == ()
    assert event["oob.prefix"] == "Open " and event["raw.label"] == 1
    assert (event["oob.time.sec"], event["nufw.user.name"], event["nufw.user.id"]) == (
        T0,
        "bob",
        42,
    )


def test_last_padding_may_be_left_out_and_strings_need_no_nul() -> None:
    record = encode_record(UDP4, [(RecordOption.PREFIX, b"abcdefgh"), (RecordOption.IN, b"eth9")])[
        :-4
    ]
    record = struct.pack("!IH", MARKER, len(record) - 4) + record[6:]
    event, _ = decode_record(record)
    assert (event["oob.prefix"], event["oob.in"]) == ("abcdefgh", "eth9")


def malformed(packet_length: int | None = None, tail: bytes = b"", cut: int = 0) -> bytes:
    """A UDP record with ``tail`` bytes appended, ``cut`` bytes removed, lengths fixed up."""
    record = encode_record(UDP4, [(RecordOption.PREFIX, "x")]) + tail
    record = record[: len(record) - cut]
    length = len(UDP4) if packet_length is None else packet_length
    return struct.pack("!IHIH", MARKER, len(record) - 4, 0, length) + record[12:]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (struct.pack("!IHI", MARKER, 6, 0), "record of 10 bytes, shorter than its 12-byte header"),
        (malformed(packet_length=500), "packet of 500 bytes in a record of 68"),
        (
            malformed(tail=struct.pack("!II", RecordOption.PREFIX, 64) + b"short"),
            "option 1 declares 64 bytes, the record has 5 left",
        ),
        (malformed(tail=b"\1\2\3"), "3 bytes after the options: a cut option header"),
        (
            malformed(tail=struct.pack("!II", RecordOption.TIME, 2) + b"\1\2"),
            "option 4 of 2 bytes, 4 needed",
        ),
    ],
    ids=["header", "packet", "option", "option-header", "number"],
)
def test_malformed_records_are_refused(record: bytes, message: str) -> None:
    with pytest.raises(MalformedRecord, match=re.escape(message)):
        decode_record(record)


def test_unknown_options_are_reported_and_skipped() -> None:
    record = encode_record(UDP4, [(99, b"zz"), (RecordOption.PREFIX, "p"), (0, b"")])
    event, unknown = decode_record(record)
    assert unknown == (99, 0) and event["oob.prefix"] == "p"


def test_option_cache_is_bounded_and_never_shared() -> None:
    cache: dict[bytes, Any] = {}
    first, _ = decode_record(good("same"), cache)
    first["oob.prefix"] = "changed downstream"
    second, _ = decode_record(encode_record(TCP4, options("same")), cache)
    assert second["oob.prefix"] == "same" and second["raw.pkt"] == TCP4
    assert len(cache) == 1
    for n in range(OPTION_CACHE_SIZE + 10):
        decode_record(encode_record(b"", [(RecordOption.TIME, n)]), cache)
    assert len(cache) <= OPTION_CACHE_SIZE


def test_encode_refuses_what_no_record_can_hold() -> None:
    with pytest.raises(ValueError, match="takes a string or bytes"):
        encode_record(UDP4, [(RecordOption.PREFIX, 5)])
    with pytest.raises(ValueError, match="a record holds at most"):
        encode_record(bytes(70000))


# -- a daemon ------------------------------------------------------------------------------------


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A directory anybody may enter (the daemon may run as nobody)."""
    path = Path(tempfile.mkdtemp(prefix="nfkit-unixsock-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def config(workdir: Path, stacks: Sequence[str] = ("print",), unixsock: str = "") -> Path:
    """ulogd.conf with named stacks and ``unixsock`` lines for ``u1`` (socket: workdir/u.sock)."""
    known = {
        "print": "u1:UNIXSOCK,base1:BASE,ip2str1:IP2STR,print1:PRINTPKT,emu1:LOGEMU",
        "json": "u1:UNIXSOCK,base1:BASE,ip2str1:IP2STR,json1:JSON",
    }
    lines = ["[global]", f'logfile="{workdir}/daemon.log"', "loglevel=1"]
    lines += [f"stack={known[name]}" for name in stacks]
    if "socket_path" not in unixsock:
        unixsock += f'\nsocket_path="{workdir}/u.sock"'
    lines += ["[u1]", unixsock]
    lines += ["[emu1]", f'file="{workdir}/emu.log"', "sync=1"]
    lines += ["[json1]", f'file="{workdir}/json.log"', "sync=1"]
    path = workdir / "ulogd.conf"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o644)
    return path


def wait_for(condition: Any, what: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def logd_argv(conf: Path, user: str | None = None) -> list[str]:
    argv = [sys.executable, "-m", "nfkit.cli.main", "logd", "-c", str(conf)]
    if user:
        argv = ["setpriv", f"--reuid={user}", "--regid=nogroup", "--clear-groups", *argv]
    return argv


class Logd:
    """``nfkit logd`` reading ``conf``; started at once, ready when its main loop runs."""

    def __init__(self, conf: Path, user: str | None = None) -> None:
        self.dir = conf.parent
        self.proc = subprocess.Popen(
            logd_argv(conf, user), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        wait_for(lambda: self._alive() and READY in self.log(), "the daemon's main loop")

    def _alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"logd exited with {self.proc.returncode}: {self.stderr()}")
        return True

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        return (
            self.proc.stderr.read().decode(errors="replace") if self.proc.poll() is not None else ""
        )

    def log(self) -> str:
        path = self.dir / "daemon.log"
        return path.read_text() if path.exists() else ""

    def connect(self) -> socket.socket:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(10)
        client.connect(str(self.dir / "u.sock"))
        return client

    def lines(self, name: str = "emu.log") -> list[str]:
        path = self.dir / name
        return path.read_text(errors="surrogateescape").splitlines() if path.exists() else []

    def wait_lines(self, count: int, name: str = "emu.log") -> list[str]:
        wait_for(lambda: self._alive() and len(self.lines(name)) >= count, f"{count} lines")
        lines = self.lines(name)
        assert len(lines) == count, lines
        return lines

    def stop(self) -> str:
        """SIGTERM; returns the daemon's log (which ends with the UNIXSOCK summary)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=15) == 0, self.stderr()
        return self.log()


def counts(log: str) -> dict[str, int]:
    """The numbers of the last UNIXSOCK summary line."""
    summary = re.findall(
        r"UNIXSOCK \S+: (\d+) records received, (\d+) malformed records skipped, (\d+) unknown "
        r"options ignored, (\d+) clients disconnected for garbage, (\d+) refused",
        log,
    )
    assert summary, log
    names = ("received", "malformed", "unknown", "disconnected", "refused")
    return dict(zip(names, map(int, summary[-1]), strict=True))


def test_packets_through_printpkt_logemu_and_json(workdir: Path) -> None:
    logd = Logd(config(workdir, ("print", "json")))
    with logd.connect() as client:
        for index, (packet, prefix, _text) in enumerate(PACKETS):
            extra = NUFW if index == 0 else []
            client.sendall(encode_record(packet, [*options(prefix, state=index % 2), *extra]))
        emu = logd.wait_lines(len(PACKETS))
        objects = [json.loads(line) for line in logd.wait_lines(len(PACKETS), "json.log")]
    logd.stop()
    assert emu == [logemu_line(prefix, text) for _packet, prefix, text in PACKETS]
    assert [(o["src_ip"], o["dest_ip"], o["oob.family"]) for o in objects] == [
        (A4, B4, 2),
        (A4, B4, 2),
        (A4, B4, 2),
        (A6, B6, 10),
        (A6, B6, 10),
    ]
    assert [o["raw.label"] for o in objects] == [0, 1, 0, 1, 0]
    first = objects[0]
    assert {k: v for k, v in first.items() if k.startswith("nufw.")} == NUFW_KEYS
    assert (first["oob.prefix"], first["oob.time.sec"], first["raw.pktlen"]) == ("TCP-IN: ", T0, 40)
    assert (first["src_port"], first["dest_port"], first["tcp.syn"]) == (40000, 80, 1)
    assert all("nufw.user.name" not in o for o in objects[1:])


def test_several_clients_at_once_with_records_split_anywhere(workdir: Path) -> None:
    logd = Logd(config(workdir))
    clients = [logd.connect() for _ in range(3)]
    records = {name: [good(f"{name}{n}") for n in range(4)] for name in ("a", "b", "c")}
    streams = {name: b"".join(recs) for name, recs in records.items()}
    # Interleave the three streams in pieces of odd sizes: records are split at every
    # possible place, across reads, while the other clients' bytes arrive in between.
    offsets = dict.fromkeys(streams, 0)
    sizes = [1, 5, 6, 7, 13, 64, 3]
    step = 0
    while any(offsets[name] < len(stream) for name, stream in streams.items()):
        for client, (name, stream) in zip(clients, streams.items(), strict=True):
            size = sizes[step % len(sizes)]
            client.sendall(stream[offsets[name] : offsets[name] + size])
            offsets[name] += size
            step += 1
    lines = logd.wait_lines(12)
    for client in clients:
        client.close()
    log = logd.stop()
    for name in records:  # each client's records, in its order
        assert [line for line in lines if f" {name}" in line] == [
            good_line(f"{name}{n}") for n in range(4)
        ]
    assert counts(log) == {
        "received": 12,
        "malformed": 0,
        "unknown": 0,
        "disconnected": 0,
        "refused": 0,
    }


def test_malformed_input_is_skipped_counted_and_logged(workdir: Path) -> None:
    logd = Logd(config(workdir, unixsock="bufsize=200"))
    steady, noisy, garbage, quitter = (logd.connect() for _ in range(4))
    big = encode_record(bytes(300), options("big"))
    steady.sendall(good("s1") + malformed(packet_length=500) + good("s2"))
    steady.sendall(malformed(tail=struct.pack("!II", RecordOption.PREFIX, 64)) + good("s3"))
    steady.sendall(encode_record(UDP4, [*options("s4"), (77, b"?")]))  # unknown option: kept
    steady.sendall(big + good("s5"))  # larger than bufsize: skipped
    logd.wait_lines(5)
    garbage.sendall(good("g1") + b"GET / HTTP/1.0\r\n\r\n" + good("g2"))
    assert garbage.recv(1) == b""  # the daemon hung up on it
    quitter.sendall(good("q1")[:30])
    quitter.close()  # leaves in the middle of a record
    noisy.sendall(b"".join(malformed(tail=b"\1") for _ in range(20)) + good("n1"))
    steady.sendall(good("s6"))  # the others go on
    lines = logd.wait_lines(8)
    for client in (steady, noisy, garbage):
        client.close()
    log = logd.stop()
    assert sorted(line.split()[4] for line in lines) == [
        "g1",
        "n1",
        "s1",
        "s2",
        "s3",
        "s4",
        "s5",
        "s6",
    ]
    assert counts(log) == {
        "received": 8,
        "malformed": 3 + 1 + 20,
        "unknown": 1,
        "disconnected": 1,
        "refused": 0,
    }
    # The first five messages of the minute, in the order things happened ...
    assert re.findall(r"UNIXSOCK u1: client pid \d+ \(uid \d+\): (.*)", log) == [
        "record skipped: packet of 500 bytes in a record of 68",
        "record skipped: option 1 declares 64 bytes, the record has 0 left",
        "unknown option 77 ignored",
        f"record skipped: record of {len(big)} bytes, larger than bufsize",
    ]
    assert re.search(
        r"client pid \d+ \(uid \d+\) sent bytes that do not start a record "
        r"\(marker 0x47455420, expected 0x41c90fd4\): disconnected",
        log,
    )
    # ... then one line with the number held back (the quitter's and the noisy client's).
    assert "UNIXSOCK u1: 21 similar messages suppressed" in log


def test_more_stacks_share_the_instance(workdir: Path) -> None:
    # ulogd2 feeds only the first stack of a shared UNIXSOCK instance.
    logd = Logd(config(workdir, ("print", "json")))
    with logd.connect() as client:
        client.sendall(good("one") + good("two"))
        assert logd.wait_lines(2) == [good_line("one"), good_line("two")]
        objects = [json.loads(line) for line in logd.wait_lines(2, "json.log")]
    logd.stop()
    assert [o["oob.prefix"] for o in objects] == ["one", "two"]


needs_setpriv = pytest.mark.skipif(
    shutil.which("setpriv") is None or os.geteuid() != 0, reason="needs root and setpriv"
)


# -- the socket file -----------------------------------------------------------------------------


def run_logd(conf: Path, user: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = logd_argv(conf, user)
    return subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=60, check=False)


def test_stale_socket_is_replaced_and_removed_at_stop(workdir: Path) -> None:
    path = workdir / "u.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # what a daemon killed with SIGKILL leaves: a socket, no listener
    logd = Logd(config(workdir))
    assert f"UNIXSOCK u1: removed the stale socket {path}" in logd.log()
    with logd.connect() as client:
        client.sendall(good("fresh"))
        logd.wait_lines(1)
    logd.stop()
    assert not path.exists()


def test_live_listener_is_left_alone(workdir: Path) -> None:
    path = workdir / "u.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(str(path))
        other.listen(1)
        result = run_logd(config(workdir))
        assert result.returncode == 1
        assert f"{path} is in use: another program listens on it" in result.stderr
        assert "fix: stop that program (another ulogd or nfkit logd?)" in result.stderr
        assert stat.S_ISSOCK(os.lstat(path).st_mode)  # still there, still the other's
        other.settimeout(5)
        probe, _ = other.accept()  # nfkit's liveness check was a connection, nothing more
        probe.close()


def test_a_file_in_the_way_is_left_alone(workdir: Path) -> None:
    path = workdir / "u.sock"
    path.write_text("precious\n")
    result = run_logd(config(workdir))
    assert result.returncode == 1
    assert re.search(
        rf"ulogd.conf:\d+ \(socket_path\): {path} exists and is not a socket", result.stderr
    )
    assert path.read_text() == "precious\n"


def test_missing_directory_is_explained(workdir: Path) -> None:
    conf = config(workdir, unixsock=f'socket_path="{workdir}/run/ulogd/u.sock"')
    result = run_logd(conf)
    assert result.returncode == 1
    assert "cannot create the unix socket" in result.stderr
    assert "No such file or directory" in result.stderr
    assert "fix: create the directory first (mkdir -p)" in result.stderr


def test_perms_owner_and_group_are_applied(workdir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    nobody = pwd.getpwnam("nobody")
    group = grp.getgrgid(nobody.pw_gid).gr_name
    logd = Logd(config(workdir, unixsock=f"perms=0660\nowner=nobody\ngroup={group}"))
    info = os.stat(workdir / "u.sock")
    logd.stop()
    assert stat.S_IMODE(info.st_mode) == 0o660 and stat.S_ISSOCK(info.st_mode)
    assert (info.st_uid, info.st_gid) == (nobody.pw_uid, nobody.pw_gid)


def test_unknown_owner_is_a_configuration_error(workdir: Path) -> None:
    conf = config(workdir, unixsock="owner=no-such-user-here")
    result = run_logd(conf)
    assert result.returncode == 2
    assert re.search(rf"{conf}:\d+ \(owner\): unknown user 'no-such-user-here'", result.stderr)
    assert not (workdir / "u.sock").exists()


@needs_setpriv
def test_runs_without_privileges(workdir: Path) -> None:
    logd = Logd(config(workdir, unixsock="perms=0666"), user="nobody")
    with logd.connect() as client:
        client.sendall(good("unprivileged"))
        assert logd.wait_lines(1) == [good_line("unprivileged")]
    logd.stop()
    assert not (workdir / "u.sock").exists()


@needs_setpriv
def test_changing_the_owner_without_root_fails_the_start(workdir: Path) -> None:
    conf = config(workdir, unixsock="owner=root")
    result = run_logd(conf, user="nobody")
    assert result.returncode == 1
    assert re.search(rf"{conf}:\d+ \(owner\): cannot set up the unix socket", result.stderr)
    assert "fix: changing the owner or group needs root" in result.stderr
    assert not (workdir / "u.sock").exists()


# -- --info and ulogd 2.0.8 ----------------------------------------------------------------------


@pytest.mark.reference
def test_info_matches_ulogd() -> None:
    if missing_reference(["u:UNIXSOCK"]):
        pytest.skip("ulogd2 is not installed")
    expected = subprocess.run(
        ["ulogd", "--info", plugin_path("UNIXSOCK")],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert describe(plugins()["UNIXSOCK"]) == expected


DIFFERENTIAL_STACKS = (
    "u1:UNIXSOCK,base1:BASE,ip2str1:IP2STR,print1:PRINTPKT,emu1:LOGEMU",
    "u2:UNIXSOCK,base1:BASE,ip2str1:IP2STR,json1:JSON",
)


def reference_config(workdir: Path) -> str:
    """Two instances (ulogd2 feeds only one stack per instance), the same in both daemons."""
    plugin_names = ["UNIXSOCK", "BASE", "IP2STR", "PRINTPKT", "LOGEMU", "JSON"]
    lines = ["[global]", f'logfile="{workdir}/daemon.log"', "loglevel=3"]
    lines += [f'plugin="{plugin_path(name)}"' for name in plugin_names]
    lines += [f"stack={stack}" for stack in DIFFERENTIAL_STACKS]
    lines += [
        "[u1]",
        f'socket_path="{workdir}/u1.sock"',
        "[u2]",
        f'socket_path="{workdir}/u2.sock"',
    ]
    lines += ["[emu1]", f'file="{workdir}/emu.log"', "sync=1"]
    lines += ["[json1]", f'file="{workdir}/json.log"', "sync=1"]
    return "\n".join(lines) + "\n"


def reference_records() -> list[bytes]:
    """The packets above, with every option, NUL-terminated and nuauth-style.

    Every record carries options: ulogd2 2.0.8 reads past the end of a record
    without any (compatibility.md).
    """
    records = []
    for index, (packet, prefix, _text) in enumerate(PACKETS):
        opts = [*options(prefix, state=index % 2), *(NUFW if index == 0 else [])]
        records.append(encode_record(packet, opts))
    nuauth = [
        (RecordOption.PREFIX, b"Drop "),
        (RecordOption.IN, b"eth2"),
        (RecordOption.OUT, b"eth3"),
        (RecordOption.STATE, b"\0"),
        (RecordOption.TIME, struct.pack("=I", T0 + 1)),
        (RecordOption.USER, b"carol"),
    ]
    records.append(nuauth_record(TCP4, nuauth))
    return records


def enough_lines(run: DaemonRun, name: str, count: int) -> bool:
    return run.count_lines(name) >= count


def ulogd_fixed(line: str) -> str:
    """ulogd's JSON line as nfkit writes it: the two ulogd2 bugs nfkit fixes (compatibility.md).

    The timestamp gets its UTC offset (2.0.8 drops ``+0000`` on UTC hosts) and
    ``tcp.offset`` the real data offset (2.0.8: always 0; every TCP header here has 20 bytes).
    """
    line = re.sub(r'^(\{"timestamp": "[-\d]+T[:.\d]+)"', r'\1+0000"', line)
    return line.replace('"tcp.offset": 0,', '"tcp.offset": 5,')


@pytest.mark.lab
@pytest.mark.reference
def test_same_lines_as_ulogd(lab: Lab, tmp_path: Path) -> None:
    reason = missing_reference(DIFFERENTIAL_STACKS)
    if reason:
        pytest.skip(reason)
    records = reference_records()
    runs = {}
    for kind in ("ulogd", "nfkit"):
        workdir = tmp_path / kind
        run = DaemonRun(lab, lab.b, kind, workdir, reference_config(workdir)).start()
        try:
            for instance in ("u1", "u2"):
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                    client.connect(str(workdir / f"{instance}.sock"))
                    client.sendall(b"".join(records))
            for name in ("emu.log", "json.log"):
                wait_for(partial(enough_lines, run, name, len(records)), f"{kind} {name}")
        finally:
            assert run.stop() == 0, run.diagnostics()
        runs[kind] = run
    ulogd, nfkit = runs["ulogd"], runs["nfkit"]
    assert nfkit.output("emu.log") == ulogd.output("emu.log")
    expected = [logemu_line(prefix, text) for _packet, prefix, text in PACKETS]
    assert nfkit.output("emu.log").splitlines()[: len(PACKETS)] == expected
    ours, theirs = nfkit.output("json.log").splitlines(), ulogd.output("json.log").splitlines()
    assert len(ours) == len(theirs) == len(records)
    for mine, reference in zip(ours, theirs, strict=True):
        assert mine == ulogd_fixed(reference)
