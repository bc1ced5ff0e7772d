"""``nfkit queue``: serve NFQUEUE queues with a Python handler.

::

    nfkit queue --queue 0:3 --handler myips:inspect --mode repeat --repeat-mark 0x1/0x1

The handler (``module:function``; the current directory is searched first)
gets each :class:`~nfkit.nfqueue.QueuedPacket` and returns a
:class:`~nfkit.nfqueue.Verdict`, True/False for accept/drop, or
``packet.defer()`` to decide later. Without a handler every packet is
accepted. ``--mode`` decides what "accept" means (Suricata's NFQ modes).
Statistics go to stdout on SIGUSR1 and at exit; SIGTERM and SIGINT stop,
answering every packet still waiting with the default verdict.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from nfkit.cli.privileges import require_net_admin
from nfkit.netlink.errors import NetlinkError
from nfkit.nfqueue import (
    ACCEPT,
    DROP,
    Flag,
    Handler,
    Mode,
    Queue,
    RepeatMode,
    RouteMode,
    Server,
    open_queues,
    parse_range,
)

PROG = "nfkit queue"


class UsageError(Exception):
    """A bad option value: the message says which and what to write instead."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Decide the fate of packets sent to NFQUEUE queues with a Python handler.",
    )
    p.add_argument("--queue", required=True, metavar="N[:M]", help="queue number or range")
    p.add_argument("--handler", metavar="MODULE:FUNCTION", help="default: accept every packet")
    p.add_argument(
        "--mode",
        choices=("accept", "repeat", "route"),
        default="accept",
        help="what accept means: accept, repeat with --repeat-mark, or queue to --route-queue",
    )
    p.add_argument("--repeat-mark", metavar="MARK/MASK", help="mark bits set by repeat mode")
    p.add_argument("--route-queue", type=int, metavar="N", help="queue of route mode")
    p.add_argument(
        "--default-verdict",
        choices=("accept", "drop"),
        default="drop",
        help="for handler failures, deadlines and packets left at exit (default: drop)",
    )
    p.add_argument("--deadline-ms", type=int, metavar="N", help="time a packet may wait")
    p.add_argument("--fail-open", action="store_true", help="accept what the queue cannot take")
    p.add_argument("--maxlen", type=int, default=1024, metavar="N", help="queue length (1024)")
    return p


def parse_mark(text: str) -> tuple[int, int]:
    """``MARK/MASK`` (or ``MARK``, all bits) as iptables writes them, hex or decimal."""
    mark_text, _, mask_text = text.partition("/")
    try:
        mark = int(mark_text, 0)
        mask = int(mask_text, 0) if mask_text else 0xFFFFFFFF
    except ValueError:
        raise UsageError(f"--repeat-mark {text!r}: write MARK/MASK, e.g. 0x1/0x1") from None
    if not (0 <= mark <= 0xFFFFFFFF and 0 < mask <= 0xFFFFFFFF):
        raise UsageError(f"--repeat-mark {text!r}: mark and mask are 32-bit, the mask not 0")
    return mark, mask


def load_handler(spec: str) -> Handler:
    """Import ``module:function``; the current directory comes first on the path."""
    module_name, sep, function_name = spec.partition(":")
    if not (sep and module_name and function_name):
        raise UsageError(f"--handler {spec!r}: write MODULE:FUNCTION, e.g. myips:inspect")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(
            f"--handler {spec!r}: cannot import {module_name!r} ({exc}); "
            "run from its directory or add it to PYTHONPATH"
        ) from None
    handler = getattr(module, function_name, None)
    if not callable(handler):
        raise UsageError(f"--handler {spec!r}: {module_name} has no function {function_name!r}")
    loaded: Handler = handler
    return loaded


def make_mode(args: argparse.Namespace) -> Mode | None:
    if args.mode == "repeat":
        if not args.repeat_mark:
            raise UsageError("--mode repeat needs --repeat-mark MARK/MASK, e.g. 0x1/0x1")
        return RepeatMode(*parse_mark(args.repeat_mark))
    if args.mode == "route":
        if args.route_queue is None or not 0 <= args.route_queue <= 0xFFFF:
            raise UsageError("--mode route needs --route-queue N (0..65535)")
        return RouteMode(args.route_queue)
    return None


def queue_options(args: argparse.Namespace) -> dict[str, Any]:
    if args.maxlen < 1:
        raise UsageError(f"--maxlen {args.maxlen}: at least 1")
    if args.deadline_ms is not None and args.deadline_ms < 0:
        raise UsageError(f"--deadline-ms {args.deadline_ms}: not negative")
    return {
        "maxlen": args.maxlen,
        "flags": Flag.FAIL_OPEN if args.fail_open else Flag(0),
        "default": ACCEPT if args.default_verdict == "accept" else DROP,
        "deadline": None if args.deadline_ms is None else args.deadline_ms / 1000,
        "mode": make_mode(args),
    }


def stats_lines(queues: Sequence[Queue], kernel: dict[int, Any] | None = None) -> list[str]:
    """One ``queue N: key=value ...`` line per queue, kernel counters included."""
    lines = []
    for queue in queues:
        values = queue.stats.as_dict()
        del values["queue"]
        counters = kernel.get(queue.number) if kernel is not None else queue.kernel_counters()
        if counters is not None:
            values.update(
                kernel_waiting=counters.total,
                kernel_dropped=counters.dropped,
                kernel_user_dropped=counters.user_dropped,
                kernel_id_sequence=counters.id_sequence,
            )
        lines.append(f"queue {queue.number}: " + " ".join(f"{k}={v}" for k, v in values.items()))
    return lines


def print_stats(lines: list[str]) -> None:
    print("\n".join(lines), flush=True)


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"{PROG}: %(message)s", stream=sys.stderr)
    try:
        numbers = parse_range(args.queue)
        options = queue_options(args)
        handler = load_handler(args.handler) if args.handler else None
    except (UsageError, ValueError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    refusal = require_net_admin("queue")
    if refusal:
        print(refusal, file=sys.stderr)
        return 1
    try:
        queues = open_queues(numbers, **options)
    except NetlinkError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    server = Server(queues, handler)
    return serve(server, queues, args)


def serve(server: Server, queues: list[Queue], args: argparse.Namespace) -> int:
    """Run until SIGTERM/SIGINT; statistics on SIGUSR1 and at the end."""

    def stop(_signo: int, _frame: FrameType | None) -> None:
        server.stop()

    def report(_signo: int, _frame: FrameType | None) -> None:
        print_stats(stats_lines(queues))

    handlers: dict[int, Callable[[int, FrameType | None], None]] = {
        signal.SIGTERM: stop,
        signal.SIGINT: stop,
        signal.SIGUSR1: report,
    }
    previous = {signo: signal.signal(signo, function) for signo, function in handlers.items()}
    logging.getLogger("nfkit.nfqueue").info(
        "serving queue %s with %s (mode %s, default verdict %s)",
        args.queue,
        server.name if args.handler else "no handler (accept)",
        args.mode,
        args.default_verdict,
    )
    try:
        server.run()
    finally:
        kernel = {q.number: q.kernel_counters() for q in queues}
        for queue in queues:
            queue.close()
        for signo, function in previous.items():
            signal.signal(signo, function)
        print_stats(stats_lines(queues, kernel))
    return 0
