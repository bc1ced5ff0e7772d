"""``nfkit logd``: ulogd's command line, plus ``--check``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from nfkit import __version__
from nfkit.cli.privileges import require_net_admin
from nfkit.errors import NfkitError
from nfkit.logd.config import plugin_name_from_path
from nfkit.logd.daemon import Daemon, Options
from nfkit.logd.errors import ConfigError, StartError
from nfkit.logd.plugin import Plugin, Role
from nfkit.logd.registry import plugins

VERSION_BANNER = f"nfkit logd {__version__} (ulogd 2.0.8 compatible)"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nfkit logd",
        description="Netfilter logging daemon reading ulogd2 configuration files.",
    )
    p.add_argument("-c", "--configfile", default="/etc/ulogd.conf", help="configuration file")
    p.add_argument("-d", "--daemon", action="store_true", help="detach and run in the background")
    p.add_argument("-p", "--pidfile", help="write and lock a pidfile")
    p.add_argument("-u", "--uid", help="drop to this user once sockets and files are open")
    p.add_argument("-g", "--gid", help="drop to this group once sockets and files are open")
    p.add_argument("-v", "--verbose", action="store_true", help="also copy the log to stderr")
    p.add_argument("-l", "--loglevel", type=int, help="1 debug, 3 info, 5 notice, 7 error, 8 fatal")
    p.add_argument(
        "-i", "--info", metavar="PLUGIN", help="describe a plugin (name or ulogd .so path)"
    )
    p.add_argument("-V", "--version", action="store_true", help="print the version and exit")
    p.add_argument("--check", action="store_true", help="validate the configuration and exit")
    p.add_argument(
        "--stats-interval", type=float, default=60.0, help="seconds between loss summaries (0: off)"
    )
    return p


def describe(cls: type[Plugin]) -> str:
    """A plugin in ulogd's ``--info`` layout."""
    lines = [f"Name: {cls.name}"]
    if cls.options:
        lines.append("Config options:")
        for opt in cls.options:
            kind = "Integer" if opt.type is int else "String"
            default = opt.default
            if isinstance(default, int) and default >= 2**31:
                default -= 2**32  # ulogd prints its integer defaults signed
            mandatory = ", Mandatory" if opt.mandatory else ""
            lines.append(f"\tVar: {opt.name} ({kind}, Default: {default}{mandatory})")
    lines.append("Input keys:")
    if cls.role is Role.INPUT:
        lines.append("\tInput plugin, No keys")
    elif cls.dynamic_inputs:
        lines.append("\tNo statically defined keys")
    for key in cls.input_keys:
        optional = ", optional" if key.optional else ""
        lines.append(f"\tKey: {key.name} ({key.type.label}{optional})")
    lines.append("Output keys:")
    if cls.role is Role.OUTPUT:
        lines.append("\tOutput plugin, No keys")
    elif cls.dynamic_outputs:
        lines.append("\tNo statically defined keys")
    for key in cls.output_keys:
        lines.append(f"\tKey: {key.name} ({key.type.label})")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    if args.version:
        print(VERSION_BANNER)
        return 0
    if args.info:
        name = plugin_name_from_path(args.info)
        cls = plugins().get(name)
        if cls is None:
            print(
                f"nfkit logd: no plugin {name!r}; built in: {', '.join(sorted(plugins()))}",
                file=sys.stderr,
            )
            return 1
        print(describe(cls), end="")
        return 0
    options = Options(
        configfile=args.configfile,
        daemon=args.daemon,
        pidfile=args.pidfile,
        user=args.uid,
        group=args.gid,
        verbose=args.verbose,
        loglevel=args.loglevel,
        check=args.check,
        stats_interval=args.stats_interval,
    )
    daemon = Daemon(options)
    try:
        daemon.load()
    except ConfigError as exc:
        print(f"nfkit logd: configuration error: {exc}", file=sys.stderr)
        return 2
    except StartError as exc:
        print(f"nfkit logd: {exc}", file=sys.stderr)
        return 1
    if args.check:
        assert daemon.pipeline is not None
        print(f"{args.configfile}: OK, {len(daemon.pipeline.stacks)} stack(s)")
        return 0
    assert daemon.pipeline is not None
    inputs = daemon.pipeline.inputs.values()
    refusal = require_net_admin("logd") if any(i.needs_net_admin for i in inputs) else None
    if refusal:
        print(refusal, file=sys.stderr)
        return 1
    try:
        return daemon.run()
    except ConfigError as exc:
        print(f"nfkit logd: configuration error: {exc}", file=sys.stderr)
        return 2
    except (StartError, NfkitError) as exc:
        print(f"nfkit logd: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
