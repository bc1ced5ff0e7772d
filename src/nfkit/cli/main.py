"""``nfkit``: one entry point, one subcommand per tool."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from nfkit import __version__

USAGE = f"""nfkit {__version__} - the Netfilter userspace toolbox

usage: nfkit <command> [options]

commands:
  conntrack  the conntrack-tools 1.4.7 command line (nfkit conntrack -h)
  db         create the database schemas of logd's SQL outputs (nfkit db init -h)
  demo       build a throwaway lab, log real traffic to SQLite and a text file, summarise
  logd       the ulogd2-compatible logging daemon (nfkit logd -h)
  queue      serve NFQUEUE queues with a Python handler (nfkit queue -h)

nfkit <command> -h shows the options of a command.
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    if args[0] in ("-V", "--version"):
        print(f"nfkit {__version__}")
        return 0
    command, rest = args[0], args[1:]
    if command == "conntrack":
        from nfkit.cli.conntrack import main as conntrack_main

        return conntrack_main(rest)
    if command == "logd":
        from nfkit.cli.logd import main as logd_main

        return logd_main(rest)
    if command == "queue":
        from nfkit.cli.queue import main as queue_main

        return queue_main(rest)
    if command == "db":
        from nfkit.cli.db import main as db_main

        return db_main(rest)
    if command == "demo":
        from nfkit.cli.demo import main as demo_main

        return demo_main(rest)
    print(f"nfkit: unknown command {command!r}\n\n{USAGE}", end="", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
