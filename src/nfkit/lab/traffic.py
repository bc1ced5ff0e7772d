"""Small, bounded traffic generators for the lab.

Usable in-process (the functions below) or as a command inside a namespace::

    python -m nfkit.lab.traffic udp-send --dst 192.0.2.2 --port 5000 --count 1000
    python -m nfkit.lab.traffic udp-recv --port 5000 --count 1000 --timeout 5
    python -m nfkit.lab.traffic tcp-server --port 8080 --count 1
    python -m nfkit.lab.traffic tcp-client --dst 2001:db8::2 --port 8080 --data hello

Every command writes JSON lines to stdout.  Servers first print
``{"event": "ready", ...}`` once the socket is bound/listening; the last line
is always ``{"event": "result", ...}``.  Everything is bounded: counts are
finite and every blocking call has a timeout.  Exit status is 0 when the
command did what was asked (all packets received, echo matched, ...), 1
otherwise, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "family_of",
    "main",
    "tcp_client",
    "tcp_server",
    "udp_recv",
    "udp_send",
]

#: Largest UDP payload we allow (IPv4 limit, IPv6 would allow 8 bytes more).
MAX_UDP_PAYLOAD = 65507
#: Upper bound for --count, to keep every loop bounded even on typos.
MAX_COUNT = 100_000_000

#: Linux SO_RCVBUFFORCE (not exported by the socket module)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)

Emit = Callable[[dict[str, Any]], None]


def _no_emit(_event: dict[str, Any]) -> None:
    return None


def _print_event(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event, sort_keys=True) + "\n")
    sys.stdout.flush()


def family_of(addr: str) -> socket.AddressFamily:
    """AF_INET or AF_INET6 for a numeric address string."""
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


def _sockaddr(addr: str, port: int) -> tuple[str, int] | tuple[str, int, int, int]:
    if family_of(addr) == socket.AF_INET6:
        return (addr, port, 0, 0)
    return (addr, port)


def _listen_socket(kind: socket.SocketKind, bind: str | None, port: int) -> socket.socket:
    """A socket bound to ``bind``:``port``; ``None`` means dual-stack wildcard."""
    if bind is None:
        try:
            sock = socket.socket(socket.AF_INET6, kind)
        except OSError:  # IPv6 disabled: IPv4 wildcard only
            sock = socket.socket(socket.AF_INET, kind)
            bind = "0.0.0.0"
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            bind = "::"
    else:
        sock = socket.socket(family_of(bind), kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(_sockaddr(bind, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _check_count(count: int) -> None:
    if not 0 <= count <= MAX_COUNT:
        raise ValueError(f"count must be within 0..{MAX_COUNT}, got {count}")


# --------------------------------------------------------------------- UDP


def udp_send(
    dst: str,
    port: int,
    count: int = 1,
    size: int = 64,
    rate: float | None = None,
    sport: int | None = None,
    src: str | None = None,
) -> dict[str, Any]:
    """Send ``count`` UDP datagrams of ``size`` payload bytes to ``dst``:``port``.

    ``rate`` (packets/s) paces the loop against the clock in small chunks, so
    the average rate is exact and does not drift; ``None`` or 0 sends at full
    speed (a tight ``send()`` loop on a connected socket, which is the fastest
    thing pure Python can do).  ICMP port-unreachable (ECONNREFUSED) and
    ENOBUFS make a send fail without sending; it is retried and counted in
    ``errors``.  Returns ``{"sent", "errors", "elapsed", "pps", ...}``.
    """
    _check_count(count)
    if not 0 <= size <= MAX_UDP_PAYLOAD:
        raise ValueError(f"size must be within 0..{MAX_UDP_PAYLOAD}")
    if rate is not None and rate < 0:
        raise ValueError("rate must be >= 0")
    fam = family_of(dst)
    payload = bytes(size) if size < 16 else (b"nfkit-lab-udp-" + bytes(size))[:size]
    sock = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        if src is not None or sport is not None:
            sock.bind(_sockaddr(src or ("::" if fam == socket.AF_INET6 else "0.0.0.0"), sport or 0))
        sock.connect(_sockaddr(dst, port))
        local = sock.getsockname()
        send = sock.send
        sent = 0
        errors = 0
        max_errors = count + 1000
        # pacing: check the clock every `chunk` packets (~1 ms worth of packets)
        chunk = count if not rate else max(1, min(int(rate // 1000), 256))
        t0 = time.monotonic()
        while sent < count:
            try:
                while sent < count:
                    end = min(count, sent + chunk)
                    while sent < end:
                        send(payload)
                        sent += 1
                    if rate:
                        delay = t0 + sent / rate - time.monotonic()
                        if delay > 0:
                            time.sleep(delay)
            except OSError as exc:
                if exc.errno not in (errno.ECONNREFUSED, errno.ENOBUFS, errno.EAGAIN):
                    raise
                errors += 1
                if errors > max_errors:
                    raise
                if exc.errno != errno.ECONNREFUSED:
                    time.sleep(0.0005)
        elapsed = time.monotonic() - t0
    finally:
        sock.close()
    return {
        "event": "result",
        "cmd": "udp-send",
        "sent": sent,
        "errors": errors,
        "bytes": sent * size,
        "elapsed": elapsed,
        "pps": sent / elapsed if elapsed > 0 else 0.0,
        "sport": local[1],
    }


def udp_recv(
    port: int,
    count: int = 1,
    timeout: float = 10.0,
    bind: str | None = None,
    idle: float | None = None,
    emit: Emit = _no_emit,
) -> dict[str, Any]:
    """Receive up to ``count`` datagrams on ``port`` (dual-stack by default).

    Stops after ``count`` datagrams, after ``timeout`` seconds in total, or
    after ``idle`` seconds without a datagram once the first one arrived.
    ``emit`` gets the ``ready`` event once the socket is bound.
    """
    _check_count(count)
    sock = _listen_socket(socket.SOCK_DGRAM, bind, port)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
        emit({"event": "ready", "cmd": "udp-recv", "port": sock.getsockname()[1]})
        buf = bytearray(65536)
        recv_into = sock.recv_into
        received = 0
        nbytes = 0
        first = last = 0.0
        deadline = time.monotonic() + timeout
        peers: set[str] = set()
        while received < count:
            now = time.monotonic()
            wait = deadline - now
            if idle is not None and received:
                wait = min(wait, last + idle - now)
            if wait <= 0:
                break
            sock.settimeout(wait)
            try:
                n, peer = sock.recvfrom_into(buf)
            except TimeoutError:
                break
            last = time.monotonic()
            if not received:
                first = last
            received += 1
            nbytes += n
            if len(peers) < 16:
                peers.add(str(peer[0]))
            # fast path: drain whatever is queued without touching the clock
            sock.setblocking(False)
            try:
                while received < count:
                    n = recv_into(buf)
                    received += 1
                    nbytes += n
            except BlockingIOError:
                pass
            last = time.monotonic()
    finally:
        sock.close()
    span = last - first
    return {
        "event": "result",
        "cmd": "udp-recv",
        "received": received,
        "bytes": nbytes,
        "elapsed": span,
        "pps": received / span if span > 0 else 0.0,
        "peers": sorted(peers),
    }


# --------------------------------------------------------------------- TCP


def tcp_server(
    port: int,
    count: int = 1,
    timeout: float = 30.0,
    bind: str | None = None,
    emit: Emit = _no_emit,
) -> dict[str, Any]:
    """Accept ``count`` connections one after the other; echo each until EOF, then close.

    ``timeout`` bounds the whole run.  ``emit`` gets the ``ready`` event once
    the socket listens.
    """
    _check_count(count)
    sock = _listen_socket(socket.SOCK_STREAM, bind, port)
    conns = 0
    nbytes = 0
    peers: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        sock.listen(max(1, min(count, 128)))
        emit({"event": "ready", "cmd": "tcp-server", "port": sock.getsockname()[1]})
        while conns < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            try:
                conn, peer = sock.accept()
            except TimeoutError:
                break
            with conn:
                conns += 1
                if len(peers) < 16:
                    peers.append(f"{peer[0]}:{peer[1]}")
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    conn.settimeout(remaining)
                    try:
                        data = conn.recv(65536)
                    except (TimeoutError, ConnectionError):
                        break
                    if not data:
                        break
                    nbytes += len(data)
                    try:
                        conn.sendall(data)
                    except (TimeoutError, ConnectionError):
                        break
    finally:
        sock.close()
    return {
        "event": "result",
        "cmd": "tcp-server",
        "connections": conns,
        "bytes": nbytes,
        "peers": peers,
    }


def tcp_client(
    dst: str,
    port: int,
    data: bytes = b"hello",
    sport: int | None = None,
    src: str | None = None,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Connect, send ``data``, half-close (FIN), read the echo until EOF, close."""
    fam = family_of(dst)
    sock = socket.socket(fam, socket.SOCK_STREAM)
    chunks: list[bytes] = []
    try:
        sock.settimeout(timeout)
        if src is not None or sport is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(_sockaddr(src or ("::" if fam == socket.AF_INET6 else "0.0.0.0"), sport or 0))
        sock.connect(_sockaddr(dst, port))
        local = sock.getsockname()
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out waiting for the echo")
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        sock.close()
    received = b"".join(chunks)
    return {
        "event": "result",
        "cmd": "tcp-client",
        "sent": len(data),
        "received": received.decode("utf-8", "replace"),
        "received_hex": received.hex(),
        "ok": received == data,
        "sport": local[1],
    }


# --------------------------------------------------------------------- CLI


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}")
    return value


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nfkit.lab.traffic", description="bounded lab traffic generators"
    )
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("udp-send", help="send N UDP datagrams")
    p.add_argument("--dst", required=True)
    p.add_argument("--port", type=_port, required=True)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--size", type=int, default=64, help="payload bytes (default 64)")
    p.add_argument("--rate", type=float, default=None, help="packets/s (default: full speed)")
    p.add_argument("--sport", type=_port, default=None)
    p.add_argument("--src", default=None)

    p = sub.add_parser("udp-recv", help="receive up to N UDP datagrams")
    p.add_argument("--port", type=_port, required=True)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--idle", type=float, default=None, help="stop after S idle seconds")
    p.add_argument("--bind", default=None, help="default: dual-stack wildcard")

    p = sub.add_parser("tcp-server", help="accept N connections and echo")
    p.add_argument("--port", type=_port, required=True)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--bind", default=None, help="default: dual-stack wildcard")

    p = sub.add_parser("tcp-client", help="connect, send, read echo, close")
    p.add_argument("--dst", required=True)
    p.add_argument("--port", type=_port, required=True)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--data", default=None, help="text to send (default: hello)")
    g.add_argument("--data-hex", default=None, help="bytes to send, hex encoded")
    p.add_argument("--sport", type=_port, default=None)
    p.add_argument("--src", default=None)
    p.add_argument("--timeout", type=float, default=10.0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        if args.cmd == "udp-send":
            res = udp_send(
                args.dst, args.port, args.count, args.size, args.rate, args.sport, args.src
            )
            ok = res["sent"] == args.count
        elif args.cmd == "udp-recv":
            res = udp_recv(
                args.port, args.count, args.timeout, args.bind, args.idle, emit=_print_event
            )
            ok = res["received"] == args.count
        elif args.cmd == "tcp-server":
            res = tcp_server(args.port, args.count, args.timeout, args.bind, emit=_print_event)
            ok = res["connections"] == args.count
        else:
            if args.data_hex is not None:
                data = bytes.fromhex(args.data_hex)
            else:
                data = (args.data if args.data is not None else "hello").encode()
            res = tcp_client(args.dst, args.port, data, args.sport, args.src, args.timeout)
            ok = bool(res["ok"])
    except (OSError, ValueError) as exc:
        _print_event({"event": "error", "cmd": args.cmd, "error": f"{type(exc).__name__}: {exc}"})
        return 1
    _print_event(res)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
