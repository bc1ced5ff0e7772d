"""``nfkit conntrack``: the command line of conntrack-tools 1.4.7 on :mod:`nfkit.conntrack`.

Scripts written for ``conntrack`` keep working: the same commands and
options, parsed with the same quirks (GNU ``getopt_long`` with argument
permutation and abbreviated long options, prefix-matched keywords, the
per-command table of legal options, the default families), the same text on
stdout, the same diagnostics on stderr and the same exit codes: 0 success,
1 failure (or nothing matched for -D/-U/-G/-I), 2 bad parameters.

Where conntrack 1.4.7 has a bug listed in the reference (``-E -b`` sizing
the wrong socket, ``-F -f`` flushing every family, ``-u`` overriding the
mark, ``-U`` failing without ``-f``, ``-A`` not updating, ``-D expect``
failing, ...), nfkit does what was meant; ``docs/compatibility.md`` lists
every such deviation.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import gc
import ipaddress
import itertools
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from types import FrameType
from typing import IO, NoReturn

from nfkit.cli import ctformat as fmt
from nfkit.cli.ctformat import LabelMap
from nfkit.conntrack.client import Conntrack
from nfkit.conntrack.events import ALL_EVENTS, NO_EVENTS, EventListener
from nfkit.conntrack.filters import Filter
from nfkit.conntrack.model import (
    AF_INET,
    AF_INET6,
    IPPROTO_DCCP,
    IPPROTO_GRE,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPPROTO_UDPLITE,
    DCCPInfo,
    Event,
    EventType,
    Expectation,
    Flow,
    NatRange,
    Overrun,
    SCTPInfo,
    Status,
    TCPFlag,
    TCPInfo,
    TCPState,
    Tuple,
)
from nfkit.netlink.errors import EncodeError, NetlinkError, NetlinkNotFound
from nfkit.netlink.socket import NETLINK_NETFILTER

# -- errors -------------------------------------------------------------------------------

OTHER_PROBLEM = 1
PARAMETER_PROBLEM = 2
TRY_HELP = f"Try `{fmt.PROGNAME} -h' or '{fmt.PROGNAME} --help' for more information.\n"


class CommandFailed(Exception):
    """Ends the command: ``message`` goes to stderr (prefixed), the process exits with ``status``.

    A parameter problem (status 2) adds conntrack's "Try `conntrack -h'…" line.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def text(self) -> str:
        out = fmt.message(self.message)
        return out + TRY_HELP if self.status == PARAMETER_PROBLEM else out


def parameter_problem(message: str) -> NoReturn:
    raise CommandFailed(PARAMETER_PROBLEM, message)


def other_problem(message: str) -> NoReturn:
    raise CommandFailed(OTHER_PROBLEM, message)


# -- C library number parsing (conntrack parses with atoi, atol and strtoul) ---------------

_SPACES = " \t\n\v\f\r"


def c_strtol(text: str, base: int = 10) -> tuple[int, int]:
    """``strtol``/``strtoul`` digits: the value and how many characters were used (0: none).

    Base 0 means C's prefixes: ``0x`` hexadecimal, ``0`` octal, else decimal.
    The value is not range-checked (callers truncate as C's casts do).
    """
    pos = len(text) - len(text.lstrip(_SPACES))
    negative = False
    if text[pos : pos + 1] in ("+", "-"):
        negative = text[pos] == "-"
        pos += 1
    if base in (0, 16) and text[pos : pos + 2] in ("0x", "0X") and _digit(text, pos + 2, 16):
        pos += 2
        base = 16
    elif base == 0:
        base = 8 if text[pos : pos + 1] == "0" else 10
    start = pos
    while _digit(text, pos, base):
        pos += 1
    if pos == start:
        return 0, 0
    value = int(text[start:pos], base)
    return (-value if negative else value), pos


_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _digit(text: str, pos: int, base: int) -> bool:
    return pos < len(text) and text[pos].lower() in _DIGITS[:base]


def c_atoi(text: str) -> int:
    """``atoi``: decimal, leading blanks and sign, trailing garbage ignored, 0 if none."""
    return c_strtol(text)[0]


def c_unsigned(text: str, bits: int = 32) -> int:
    """``(uintN_t) strtoul(text, NULL, 0)``: any number C accepts, wrapped to ``bits``."""
    return c_strtol(text, 0)[0] & ((1 << bits) - 1)


# -- getopt_long ------------------------------------------------------------------------------

NO_ARGUMENT, REQUIRED_ARGUMENT, OPTIONAL_ARGUMENT = 0, 1, 2


@dataclass(frozen=True)
class LongOption:
    """``struct option``: a long option name, whether it takes an argument, and its code."""

    name: str
    has_arg: int
    code: int


class Getopt:
    """GNU ``getopt_long`` as conntrack uses it (glibc's permuting mode, ``:`` first in optstring).

    Non-options are skipped and moved behind the options, long options may
    be abbreviated to a unique prefix (several matches with the same code
    and argument kind are not ambiguous), an unknown or ambiguous option
    returns ``?`` and a missing argument ``:``. ``optind`` and ``argv`` are
    public because conntrack reads the element after an option itself (its
    optional table names and NAT addresses).

    Parameters:
        argv: the arguments, ``argv[0]`` being the program name.
        optstring: short options (``x``, ``x:`` required, ``x::`` optional).
        longopts: the long options; the list may grow while parsing
            (conntrack adds a protocol's options once ``-p`` is seen).
    """

    def __init__(self, argv: Sequence[str], optstring: str, longopts: list[LongOption]) -> None:
        self.argv = list(argv)
        self.longopts = longopts
        self.short = _short_options(optstring)
        self.colon_first = optstring.startswith(":")
        self.optind = 1
        self.optarg: str | None = None
        self._nextchar = ""
        self._first_nonopt = 1
        self._last_nonopt = 1

    def _nonoption(self, arg: str) -> bool:
        return not arg.startswith("-") or arg == "-"

    def _exchange(self) -> None:
        """Move the skipped non-options behind the options processed since."""
        bottom, middle, top = self._first_nonopt, self._last_nonopt, self.optind
        args = self.argv
        args[bottom:top] = args[middle:top] + args[bottom:middle]
        self._first_nonopt += top - middle
        self._last_nonopt = top

    def next(self) -> int | None:
        """The next option's code (``ord`` of a short option, ``?``, ``:``); None at the end."""
        self.optarg = None
        argc = len(self.argv)
        if not self._nextchar:
            if self._last_nonopt > self.optind:
                self._last_nonopt = self.optind
            if self._first_nonopt > self.optind:
                self._first_nonopt = self.optind
            if self._first_nonopt != self._last_nonopt and self._last_nonopt != self.optind:
                self._exchange()
            elif self._last_nonopt != self.optind:
                self._first_nonopt = self.optind
            while self.optind < argc and self._nonoption(self.argv[self.optind]):
                self.optind += 1
            self._last_nonopt = self.optind
            if self.optind != argc and self.argv[self.optind] == "--":
                self.optind += 1
                if self._first_nonopt != self._last_nonopt and self._last_nonopt != self.optind:
                    self._exchange()
                elif self._first_nonopt == self._last_nonopt:
                    self._first_nonopt = self.optind
                self._last_nonopt = argc
                self.optind = argc
            if self.optind == argc:
                if self._first_nonopt != self._last_nonopt:
                    self.optind = self._first_nonopt
                return None
            arg = self.argv[self.optind]
            if arg.startswith("--"):
                return self._long(arg[2:])
            self._nextchar = arg[1:]
        return self._short()

    def _short(self) -> int:
        char, self._nextchar = self._nextchar[0], self._nextchar[1:]
        if not self._nextchar:
            self.optind += 1
        has_arg = self.short.get(char)
        if has_arg is None or char in ":;":
            return ord("?")
        if has_arg == OPTIONAL_ARGUMENT:
            if self._nextchar:
                self.optarg = self._nextchar
                self.optind += 1
            self._nextchar = ""
        elif has_arg == REQUIRED_ARGUMENT:
            if self._nextchar:
                self.optarg = self._nextchar
                self.optind += 1
            elif self.optind == len(self.argv):
                self._nextchar = ""
                return ord(":") if self.colon_first else ord("?")
            else:
                self.optarg = self.argv[self.optind]
                self.optind += 1
            self._nextchar = ""
        return ord(char)

    def _long(self, text: str) -> int:
        name, equals, value = text.partition("=")
        found = next((opt for opt in self.longopts if opt.name == name), None)
        if found is None:
            for opt in self.longopts:
                if not opt.name.startswith(name):
                    continue
                if found is None:
                    found = opt
                elif (found.has_arg, found.code) != (opt.has_arg, opt.code):
                    self.optind += 1
                    return ord("?")  # ambiguous
        self.optind += 1
        if found is None:
            return ord("?")
        if equals:
            if found.has_arg == NO_ARGUMENT:
                return ord("?")
            self.optarg = value
        elif found.has_arg == REQUIRED_ARGUMENT:
            if self.optind < len(self.argv):
                self.optarg = self.argv[self.optind]
                self.optind += 1
            else:
                return ord(":") if self.colon_first else ord("?")
        return found.code

    def last_argument(self) -> str:
        """``argv[optind - 1]``, which conntrack names in its option errors."""
        return self.argv[self.optind - 1]

    def optional_argument(self) -> str | None:
        """conntrack's ``get_optional_arg``: the next element unless it looks like an option.

        A value attached to the option (``-Lexpect``, ``--src-nat=ADDR``) is
        ignored, as in conntrack 1.4.7.
        """
        if self.optarg is not None:
            return None
        if self.optind < len(self.argv) and self.argv[self.optind][:1] not in ("-", "!"):
            self.optind += 1
            return self.argv[self.optind - 1]
        return None


def _short_options(optstring: str) -> dict[str, int]:
    options = {}
    text = optstring.lstrip(":")
    i = 0
    while i < len(text):
        char = text[i]
        kind = NO_ARGUMENT
        if text[i + 1 : i + 3] == "::":
            kind, i = OPTIONAL_ARGUMENT, i + 2
        elif text[i + 1 : i + 2] == ":":
            kind, i = REQUIRED_ARGUMENT, i + 1
        options[char] = kind
        i += 1
    return options


# -- commands and options ---------------------------------------------------------------------


class Cmd(enum.IntEnum):
    """conntrack's commands; the value is the command's bit number (its legality row)."""

    LIST = 0
    CREATE = 1
    UPDATE = 2
    DELETE = 3
    GET = 4
    FLUSH = 5
    EVENT = 6
    VERSION = 7
    HELP = 8
    EXP_LIST = 9
    EXP_CREATE = 10
    EXP_DELETE = 11
    EXP_GET = 12
    EXP_FLUSH = 13
    EXP_EVENT = 14
    COUNT = 15
    EXP_COUNT = 16
    STATS = 17
    EXP_STATS = 18
    ADD = 19


class Opt(enum.IntFlag):
    """conntrack's option bits (``CT_OPT_*``), in the columns' order of the legality table."""

    ORIG_SRC = 1 << 0
    ORIG_DST = 1 << 1
    REPL_SRC = 1 << 2
    REPL_DST = 1 << 3
    PROTO = 1 << 4
    TIMEOUT = 1 << 5
    STATUS = 1 << 6
    ZERO = 1 << 7
    EVENT_MASK = 1 << 8
    EXP_SRC = 1 << 9
    EXP_DST = 1 << 10
    MASK_SRC = 1 << 11
    MASK_DST = 1 << 12
    NATRANGE = 1 << 13
    MARK = 1 << 14
    ID = 1 << 15
    FAMILY = 1 << 16
    SRC_NAT = 1 << 17
    DST_NAT = 1 << 18
    OUTPUT = 1 << 19
    SECMARK = 1 << 20
    BUFFERSIZE = 1 << 21
    ANY_NAT = 1 << 22
    ZONE = 1 << 23
    LABEL = 1 << 24
    ADD_LABEL = 1 << 25
    DEL_LABEL = 1 << 26
    ORIG_ZONE = 1 << 27
    REPL_ZONE = 1 << 28


NO_OPTIONS = Opt(0)
ORIG = Opt.ORIG_SRC | Opt.ORIG_DST
REPL = Opt.REPL_SRC | Opt.REPL_DST
#: Options that make conntrack compare entries with its template (``CT_COMPARISON``).
COMPARISON = (Opt.PROTO | ORIG | REPL | Opt.MARK | Opt.SECMARK | Opt.STATUS | Opt.ID | Opt.ZONE
              | Opt.LABEL | Opt.ORIG_ZONE | Opt.REPL_ZONE)  # fmt: skip
OPTION_NAMES = ("src", "dst", "reply-src", "reply-dst", "protonum", "timeout", "status", "zero",
                "event-mask", "tuple-src", "tuple-dst", "mask-src", "mask-dst", "nat-range",
                "mark", "id", "family", "src-nat", "dst-nat", "output", "secmark", "buffer-size",
                "any-nat", "zone", "label", "label-add", "label-del", "orig-zone",
                "reply-zone")  # fmt: skip

# Which options each command takes: 0 illegal, 1 mandatory, 2 optional, 3 one of the
# address pairs (original or reply) must be complete. Columns as OPTION_NAMES.
_LEGAL = {
    Cmd.LIST: "22222022000220202222202220022",
    Cmd.CREATE: "33331120000002200220000202022",
    Cmd.UPDATE: "22222220000220222222000022200",
    Cmd.DELETE: "22222220000220222222000220022",
    Cmd.GET: "33331000000000020002000020000",
    Cmd.FLUSH: "00000000000000002000000000000",
    Cmd.EVENT: "22222000200220202222222220022",
    Cmd.HELP: "00002000000000000000000000000",
    Cmd.EXP_LIST: "00000000000000002002000000000",
    Cmd.EXP_CREATE: "11221120011110000000000000000",
    Cmd.EXP_DELETE: "11221000000000000000000000000",
    Cmd.EXP_GET: "11221000000000000000000000000",
    Cmd.EXP_EVENT: "00000000000000000002000000000",
    Cmd.ADD: "33331120000002200220000202022",
}
# Without a command conntrack reads past its table; on this build only --reply-zone passes.
_NO_COMMAND_LEGAL = "00000000000000000000000000002"

# -c/-C/-I... : the command for the conntrack table and for the expectation table.
_COMMAND_OF = {
    "L": (Cmd.LIST, Cmd.EXP_LIST),
    "I": (Cmd.CREATE, Cmd.EXP_CREATE),
    "D": (Cmd.DELETE, Cmd.EXP_DELETE),
    "G": (Cmd.GET, Cmd.EXP_GET),
    "F": (Cmd.FLUSH, Cmd.EXP_FLUSH),
    "E": (Cmd.EVENT, Cmd.EXP_EVENT),
    "V": (Cmd.VERSION, Cmd.VERSION),
    "h": (Cmd.HELP, Cmd.HELP),
    "C": (Cmd.COUNT, Cmd.EXP_COUNT),
    "S": (Cmd.STATS, Cmd.EXP_STATS),
    "U": (Cmd.UPDATE, None),
    "A": (Cmd.ADD, None),
}

# The summary line on stderr (-E writes its own when a signal ends it).
SUMMARIES = {
    Cmd.LIST: "{} flow entries have been shown.",
    Cmd.CREATE: "{} flow entries have been created.",
    Cmd.UPDATE: "{} flow entries have been updated.",
    Cmd.DELETE: "{} flow entries have been deleted.",
    Cmd.GET: "{} flow entries have been shown.",
    Cmd.EXP_LIST: "{} expectations have been shown.",
    Cmd.EXP_DELETE: "{} expectations have been deleted.",
    Cmd.ADD: "{} flow entries have been added.",
}
#: Commands that succeed although they matched nothing.
_NOTHING_IS_FINE = (Cmd.LIST, Cmd.EXP_LIST, Cmd.ADD)


def _long(name: str, has_arg: int, short: str) -> LongOption:
    return LongOption(name, has_arg, ord(short))


OPTSTRING = (
    ":L::I::U::D::G::E::F::A::hVs:d:r:q:p:t:u:e:a:z[:]:{:}:m:i:f:o:n::g::c:b:C::Sj::w:l:<:>::(:):"
)
LONG_OPTIONS = (
    _long("dump", 2, "L"), _long("create", 2, "I"), _long("add", 2, "A"),
    _long("delete", 2, "D"), _long("update", 2, "U"), _long("get", 2, "G"),
    _long("flush", 2, "F"), _long("event", 2, "E"), _long("counter", 2, "C"),
    _long("stats", 0, "S"), _long("version", 0, "V"), _long("help", 0, "h"),
    _long("orig-src", 1, "s"), _long("src", 1, "s"), _long("orig-dst", 1, "d"),
    _long("dst", 1, "d"), _long("reply-src", 1, "r"), _long("reply-dst", 1, "q"),
    _long("protonum", 1, "p"), _long("timeout", 1, "t"), _long("status", 1, "u"),
    _long("zero", 0, "z"), _long("event-mask", 1, "e"), _long("tuple-src", 1, "["),
    _long("tuple-dst", 1, "]"), _long("mask-src", 1, "{"), _long("mask-dst", 1, "}"),
    _long("nat-range", 1, "a"), _long("mark", 1, "m"), _long("secmark", 1, "c"),
    # conntrack 1.4.7 declares --id's value optional and crashes without one
    _long("id", 1, "i"), _long("family", 1, "f"), _long("src-nat", 2, "n"),
    _long("dst-nat", 2, "g"), _long("output", 1, "o"), _long("buffer-size", 1, "b"),
    _long("any-nat", 2, "j"), _long("zone", 1, "w"), _long("label", 1, "l"),
    _long("label-add", 1, "<"), _long("label-del", 2, ">"), _long("orig-zone", 1, "("),
    _long("reply-zone", 1, ")"),
)  # fmt: skip


def long_name(code: int) -> str:
    """conntrack's ``get_long_opt``: the first long name of an option code."""
    return next((opt.name for opt in LONG_OPTIONS if opt.code == code), "unknown")


# -- keyword lists (-u, -e, -o) ----------------------------------------------------------------

STATUS_KEYWORDS = (("ASSURED", int(Status.ASSURED)), ("SEEN_REPLY", int(Status.SEEN_REPLY)),
                   ("UNSET", 0), ("FIXED_TIMEOUT", int(Status.FIXED_TIMEOUT)),
                   ("EXPECTED", int(Status.EXPECTED)), ("OFFLOAD", int(Status.OFFLOAD)),
                   ("HW_OFFLOAD", int(Status.HW_OFFLOAD)))  # fmt: skip
EVENT_KEYWORDS = (("ALL", 7), ("NEW", 1), ("UPDATES", 2), ("DESTROY", 4))


class Output(enum.IntFlag):
    """``-o`` keywords (``userspace`` is accepted and does nothing since 1.4.7)."""

    XML = 1
    EXTENDED = 2
    TIMESTAMP = 4
    ID = 8
    KTIMESTAMP = 16
    LABELS = 32
    SAVE = 64


NO_OUTPUT = Output(0)
OUTPUT_KEYWORDS = (("xml", int(Output.XML)), ("extended", int(Output.EXTENDED)),
                   ("timestamp", int(Output.TIMESTAMP)), ("id", int(Output.ID)),
                   ("ktimestamp", int(Output.KTIMESTAMP)), ("labels", int(Output.LABELS)),
                   ("userspace", 0), ("save", int(Output.SAVE)))  # fmt: skip


def _keyword(word: str, keywords: Sequence[tuple[str, int]], warnings: IO[str]) -> int | None:
    """The value of the first keyword ``word`` abbreviates (case-insensitive), as conntrack.

    ``SRC_NAT`` and ``DST_NAT`` are tried first in every list: they only
    warn (conntrack then ignores them), so ``-o s`` or ``-e D`` do nothing.
    """
    upper = word.upper()
    for nat in ("SRC_NAT", "DST_NAT"):
        if nat.startswith(upper):
            warnings.write(f"WARNING: ignoring {nat}, use --{nat[:3].lower()}-nat instead\n")
            return 0
    for name, value in keywords:
        if name.upper().startswith(upper):
            return value
    return None


def parse_keywords(arg: str, keywords: Sequence[tuple[str, int]], warnings: IO[str]) -> int:
    """A comma-separated keyword list (``-e``, ``-o``), OR-ed together."""
    value = 0
    rest = arg
    while True:
        word, comma, tail = rest.partition(",")
        found = _keyword(word, keywords, warnings) if word else None
        if found is None:
            parameter_problem(f"Bad parameter `{rest}'")
        value |= found
        if not comma:
            return value
        rest = tail


def parse_status(arg: str, warnings: IO[str]) -> tuple[int, int]:
    """``-u``: the status bits wanted set and, from ``!NAME`` and UNREPLIED, the bits wanted clear.

    Returns ``(value, negated)``.
    """
    value = negated = 0
    rest = arg
    while True:
        word, comma, tail = rest.partition(",")
        if comma and not word:
            parameter_problem(f"Bad parameter `{rest}'")
        negative = word.startswith("!")
        if negative:
            word, rest = word[1:], rest[1:]
            if comma and not word:
                parameter_problem(f"Bad parameter `{rest}'")
        if not negative and word.startswith("UNREPLIED"):
            negated |= int(Status.SEEN_REPLY)
        else:
            found = _keyword(word, STATUS_KEYWORDS, warnings) if word else None
            if found is None:
                parameter_problem(f"Bad parameter `{rest}'")
            if negative:
                negated |= found
            else:
                value |= found
        if not comma:
            return value, negated
        rest = tail


# -- the template: what the command line says about flows ---------------------------------


@dataclass
class Template:
    """The values given on the command line, as conntrack keeps them in its template objects.

    Flow fields (``orig_*``, ``reply_*``, ICMP, states, meta) filter or
    create entries; ``mask_*`` are netmasks of ``-s``/``-d`` (and the mask
    of an expectation); ``exp_*`` the expected tuple of ``-I expect``.
    A field left at None was not given.
    """

    orig_family: int | None = None
    orig_src: str | None = None
    orig_dst: str | None = None
    reply_family: int | None = None
    reply_src: str | None = None
    reply_dst: str | None = None
    orig_proto: int | None = None
    reply_proto: int | None = None
    orig_sport: int | None = None
    orig_dport: int | None = None
    reply_sport: int | None = None
    reply_dport: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    icmp_id: int | None = None
    tcp_state: int | None = None
    sctp_state: int | None = None
    dccp_state: int | None = None
    dccp_role: int | None = None
    sctp_vtag_orig: int | None = None
    sctp_vtag_reply: int | None = None
    tcp_flags: int | None = None
    timeout: int | None = None
    status: int | None = None
    #: Status bits that must be clear (``!NAME``, UNREPLIED).
    status_clear: int = 0
    mark: int | None = None
    mark_mask: int = 0xFFFFFFFF
    secmark: int | None = None
    zone: int | None = None
    orig_zone: int | None = None
    reply_zone: int | None = None
    id: int | None = None
    snat_addr: str | None = None
    snat_port: int | None = None
    dnat_addr: str | None = None
    dnat_port: int | None = None
    mask_family: int | None = None
    mask_src: str | None = None
    mask_dst: str | None = None
    mask_proto: int | None = None
    mask_sport: int | None = None
    mask_dport: int | None = None
    exp_family: int | None = None
    exp_proto: int | None = None
    exp_src: str | None = None
    exp_dst: str | None = None
    exp_sport: int | None = None
    exp_dport: int | None = None
    #: ``-l``: label bits that must all be set.
    labels: int | None = None
    #: ``--label-add``/``--label-del NAME``: the bits, and the bitmap's size in bytes.
    labels_change: int | None = None
    labels_change_size: int = 0


# -- protocols (conntrack's extensions) ----------------------------------------------------


@dataclass(frozen=True)
class Protocol:
    """One of conntrack's protocol extensions (``-p tcp`` adds ``--sport``, ``--state``...).

    Option ``i`` (code ``i + 1``, flag bit ``1 << i``) is named
    ``flag_names[i]`` in errors and sets ``fields[i]`` of the template
    (None: parsed specially, e.g. states). ``long_names`` are the long
    options in conntrack's order with their codes. ``legal`` rows read as
    the main table's; where a row says 3, one of ``pairs`` (original ports,
    reply ports) must be complete, else ``pair_errors`` are reported.
    """

    name: str
    number: int
    long_names: tuple[tuple[str, int], ...]
    flag_names: tuple[str, ...]
    fields: tuple[str | None, ...]
    legal: dict[Cmd, str]
    help: str
    pairs: tuple[int, int] | None = None
    pair_errors: tuple[str, str] = ("", "")


_PORT_HELP = (
    "  --orig-port-src\t\toriginal source port\n"
    "  --orig-port-dst\t\toriginal destination port\n"
    "  --reply-port-src\t\treply source port\n"
    "  --reply-port-dst\t\treply destination port\n"
    "  --mask-port-src\t\tmask source port\n"
    "  --mask-port-dst\t\tmask destination port\n"
    "  --tuple-port-src\t\texpectation tuple src port\n"
    "  --tuple-port-src\t\texpectation tuple dst port\n"
)
_PORT_FLAGS = ("sport", "dport", "reply-port-src", "reply-port-dst", "mask-port-src",
               "mask-port-dst")  # fmt: skip
_PORT_FIELDS = ("orig_sport", "orig_dport", "reply_sport", "reply_dport", "mask_sport",
                "mask_dport")  # fmt: skip
_TUPLE_FLAGS = ("tuple-port-src", "tuple-port-dst")
_TUPLE_FIELDS = ("exp_sport", "exp_dport")
_PAIR_ERRORS = ("you have to specify `--sport' and `--dport'",
                "you have to specify `--reply-src-port' and `--reply-dst-port'")  # fmt: skip
_PORT_PAIRS = (0b11, 0b1100)
# udp, udplite and gre share their table (the columns differ only in name)
_UDP_LEGAL = {Cmd.LIST: "22220000", Cmd.CREATE: "33330000", Cmd.UPDATE: "22220000",
              Cmd.DELETE: "22220000", Cmd.GET: "33330000", Cmd.EVENT: "22220000",
              Cmd.EXP_CREATE: "11001111", Cmd.EXP_DELETE: "11110000",
              Cmd.EXP_GET: "11110000", Cmd.ADD: "33330000"}  # fmt: skip
_UDP_LONG = (("orig-port-src", 1), ("sport", 1), ("orig-port-dst", 2), ("dport", 2),
             ("reply-port-src", 3), ("reply-port-dst", 4), ("mask-port-src", 5),
             ("mask-port-dst", 6), ("tuple-port-src", 7), ("tuple-port-dst", 8))  # fmt: skip
_ICMP_LEGAL = {Cmd.LIST: "222", Cmd.CREATE: "112", Cmd.UPDATE: "222", Cmd.DELETE: "222",
               Cmd.GET: "112", Cmd.EVENT: "222", Cmd.ADD: "112"}  # fmt: skip


def _icmp(name: str, number: int) -> Protocol:
    return Protocol(
        name, number,
        ((f"{name}-type", 1), (f"{name}-code", 2), (f"{name}-id", 3)),
        (f"{name}-type", f"{name}-code", f"{name}-id"),
        ("icmp_type", "icmp_code", "icmp_id"),
        _ICMP_LEGAL,
        f"  --{name}-type\t\t\t{name} type\n  --{name}-code\t\t\t{name} code\n"
        f"  --{name}-id\t\t\t{name} id\n",
    )  # fmt: skip


PROTOCOLS = (
    Protocol(
        "tcp", IPPROTO_TCP,
        (("orig-port-src", 1), ("sport", 1), ("orig-port-dst", 2), ("dport", 2),
         ("reply-port-src", 3), ("reply-port-dst", 4), ("mask-port-src", 5),
         ("mask-port-dst", 6), ("state", 7), ("tuple-port-src", 8), ("tuple-port-dst", 9)),
        (*_PORT_FLAGS, "state", *_TUPLE_FLAGS),
        (*_PORT_FIELDS, None, *_TUPLE_FIELDS),
        {Cmd.LIST: "222200200", Cmd.CREATE: "333300100", Cmd.UPDATE: "222200200",
         Cmd.DELETE: "222200200", Cmd.GET: "333300200", Cmd.EVENT: "222200200",
         Cmd.EXP_CREATE: "110011011", Cmd.EXP_DELETE: "111100000", Cmd.EXP_GET: "111100000",
         Cmd.ADD: "333300100"},
        _PORT_HELP + "  --state\t\t\tTCP state, fe. ESTABLISHED\n",
        _PORT_PAIRS, _PAIR_ERRORS,
    ),
    Protocol("udp", IPPROTO_UDP, _UDP_LONG, (*_PORT_FLAGS, *_TUPLE_FLAGS),
             (*_PORT_FIELDS, *_TUPLE_FIELDS), _UDP_LEGAL, _PORT_HELP, _PORT_PAIRS, _PAIR_ERRORS),
    Protocol(
        "udplite", IPPROTO_UDPLITE,
        (("orig-port-src", 1), ("orig-port-dst", 2), ("reply-port-src", 3),
         ("reply-port-dst", 4), ("mask-port-src", 5), ("mask-port-dst", 6),
         ("tuple-port-src", 7), ("tuple-port-dst", 8), ("sport", 1), ("dport", 2)),
        (*_PORT_FLAGS, *_TUPLE_FLAGS), (*_PORT_FIELDS, *_TUPLE_FIELDS),
        _UDP_LEGAL, _PORT_HELP, _PORT_PAIRS, _PAIR_ERRORS,
    ),
    Protocol(
        "sctp", IPPROTO_SCTP,
        (("orig-port-src", 1), ("orig-port-dst", 2), ("reply-port-src", 3),
         ("reply-port-dst", 4), ("mask-port-src", 5), ("mask-port-dst", 6), ("state", 7),
         ("tuple-port-src", 8), ("tuple-port-dst", 9), ("orig-vtag", 10), ("reply-vtag", 11),
         ("sport", 1), ("dport", 2)),
        (*_PORT_FLAGS, "state", *_TUPLE_FLAGS, "orig-vtag", "reply-vtag"),
        (*_PORT_FIELDS, None, *_TUPLE_FIELDS, "sctp_vtag_orig", "sctp_vtag_reply"),
        {Cmd.LIST: "22220020000", Cmd.CREATE: "33330010011", Cmd.UPDATE: "22220020022",
         Cmd.DELETE: "22220020000", Cmd.GET: "33330020022", Cmd.EVENT: "22220020000",
         Cmd.EXP_CREATE: "11001101111", Cmd.EXP_DELETE: "11110000000",
         Cmd.EXP_GET: "11110000000", Cmd.ADD: "33330010011"},
        _PORT_HELP + "  --state\t\t\tSCTP state, fe. ESTABLISHED\n"
        "  --orig-vtag\t\toriginal verification tag\n"
        "  --reply-vtag\t\treply verification tag\n",
        _PORT_PAIRS, _PAIR_ERRORS,
    ),
    Protocol(
        "dccp", IPPROTO_DCCP,
        (("orig-port-src", 1), ("orig-port-dst", 2), ("reply-port-src", 3),
         ("reply-port-dst", 4), ("mask-port-src", 5), ("mask-port-dst", 6), ("state", 7),
         ("tuple-port-src", 8), ("tuple-port-dst", 9), ("sport", 1), ("dport", 2),
         ("role", 10)),
        (*_PORT_FLAGS, "state", *_TUPLE_FLAGS, "role"),
        (*_PORT_FIELDS, None, *_TUPLE_FIELDS, None),
        {Cmd.LIST: "2222002000", Cmd.CREATE: "3333001001", Cmd.UPDATE: "2222002000",
         Cmd.DELETE: "2222002000", Cmd.GET: "3333002000", Cmd.EVENT: "2222002000",
         Cmd.EXP_CREATE: "1100110111", Cmd.EXP_DELETE: "1111000000",
         Cmd.EXP_GET: "1111000000", Cmd.ADD: "3333001001"},
        _PORT_HELP + "  --state\t\t\tDCCP state, fe. RESPOND\n",
        _PORT_PAIRS,
        (_PAIR_ERRORS[0], "you have to specify `--reply-port-src' and `--report-port-dst'"),
    ),
    _icmp("icmp", IPPROTO_ICMP),
    _icmp("icmpv6", IPPROTO_ICMPV6),
    Protocol(
        "gre", IPPROTO_GRE,
        (("orig-key-src", 1), ("srckey", 1), ("orig-key-dst", 2), ("dstkey", 2),
         ("reply-key-src", 3), ("reply-key-dst", 4), ("mask-key-src", 5), ("mask-key-dst", 6),
         ("tuple-key-src", 7), ("tuple-key-dst", 8)),
        ("srckey", "dstkey", "reply-key-src", "reply-key-dst", "mask-key-src", "mask-key-dst",
         "tuple-key-src", "tuple-key-dst"),
        (*_PORT_FIELDS, *_TUPLE_FIELDS),
        _UDP_LEGAL | {Cmd.EXP_CREATE: "11111111"},
        "  --orig-key-src\t\toriginal source key\n"
        "  --orig-key-dst\t\toriginal destination key\n"
        "  --reply-key-src\t\treply source key\n"
        "  --reply-key-dst\t\treply destination key\n"
        "  --mask-key-src\t\tmask source key\n"
        "  --mask-key-dst\t\tmask destination key\n"
        "  --tuple-key-src\t\texpectation tuple src key\n"
        "  --tuple-key-src\t\texpectation tuple dst key\n",
        _PORT_PAIRS,
        ("you have to specify `--srckey' and `--dstkey'",
         "you have to specify `--reply-src-key' and `--reply-dst-key'"),
    ),
)  # fmt: skip
PROTOCOL_BY_NAME = {proto.name: proto for proto in PROTOCOLS}
PROTOCOL_BY_NUMBER = {proto.number: proto for proto in PROTOCOLS}
#: Protocols conntrack has no extension for: no options, any number.
UNKNOWN_PROTOCOL = Protocol("unknown", 0, (), (), (), {}, "  no options (unsupported)\n")


def find_protocol(name: str) -> tuple[Protocol, int] | None:
    """conntrack's ``findproto``: a built-in name, a name of /etc/protocols, or a number."""
    for proto in PROTOCOLS:
        if proto.name.lower() == name.lower():
            return proto, proto.number
    try:
        return UNKNOWN_PROTOCOL, socket.getprotobyname(name)
    except OSError:
        pass
    value, used = c_strtol(name, 0)
    if used == 0 or used != len(name) or not 0 <= value <= 255:
        return None
    return PROTOCOL_BY_NUMBER.get(value, UNKNOWN_PROTOCOL), value


def protocol_name(number: int, path: str = "/etc/protocols") -> str | None:
    """``getprotobynumber(number)->p_name`` from /etc/protocols (None: not listed)."""
    try:
        with open(path, encoding="latin-1") as f:
            for line in f:
                fields = line.split("#", 1)[0].split()
                if len(fields) >= 2 and fields[1].isdigit() and int(fields[1]) == number:
                    return fields[0]
    except OSError:
        pass
    return None


# -- addresses -----------------------------------------------------------------------------

NO_NETMASK, BAD_NETMASK = -1, -2


def parse_address(text: str, with_netmask: bool) -> tuple[int, str, int]:
    """conntrack's ``parse_addr``: ``(family, address, prefix)`` of ``ADDR[/PREFIX]``.

    IPv4 is read by ``inet_aton`` (``10.1``, ``0x0a000001`` and trailing
    blanks with anything after them are fine), then IPv6 by ``inet_pton``.
    The family is 0 for neither. The prefix is NO_NETMASK without a slash
    and BAD_NETMASK when it is not a number in range.
    """
    buf = text[:45]  # conntrack copies into INET6_ADDRSTRLEN bytes
    prefix = NO_NETMASK
    if with_netmask and "/" in buf:
        buf, _, after = buf.partition("/")
        value, used = c_strtol(after)
        prefix = value if value >= 0 and used == len(after) else BAD_NETMASK
    try:
        packed = socket.inet_aton(buf)
    except OSError:
        try:
            packed6 = socket.inet_pton(AF_INET6, buf)
        except (OSError, ValueError):
            return 0, "", prefix
        if prefix > 128:
            prefix = BAD_NETMASK
        return AF_INET6, socket.inet_ntop(AF_INET6, packed6), prefix
    except ValueError:  # an embedded NUL
        return 0, "", prefix
    if prefix > 32:
        prefix = BAD_NETMASK
    return AF_INET, socket.inet_ntoa(packed), prefix


def netmask(family: int, prefix: int) -> str:
    """The netmask of a prefix length, as an address."""
    bits = 32 if family == AF_INET else 128
    value = ((1 << bits) - 1) ^ ((1 << (bits - prefix)) - 1)
    return socket.inet_ntop(family, value.to_bytes(bits // 8, "big"))


def split_nat_address(arg: str) -> tuple[str, str | None]:
    """``--src-nat ADDR[:PORT]`` (IPv6 with a port as ``[ADDR]:PORT``): address and port text."""
    if "[" in arg:
        start = arg.index("[") + 1
        close = arg.find("]", start)
        if close == start:
            parameter_problem("No IPv6 address specified")
        if close < 0:
            parameter_problem("No closing ']' around IPv6 address")
        colon = arg.find(":", close)
        if colon < 0:
            return arg, None
        address, port = arg[start:close], arg[colon + 1 :]
    else:
        colon = arg.find(":")
        if colon < 0 or ":" in arg[colon + 1 :]:
            return arg, None  # no port, or an IPv6 address
        address, port = arg[:colon], arg[colon + 1 :]
    if not port:
        parameter_problem("No port specified after `:'")
    if not port.isascii() or not port.isdigit() or int(port) > 0xFFFF:
        parameter_problem(f"Invalid port `{port}'")
    return address, port


# -- parsing the command line ----------------------------------------------------------------

_TABLES = ("expect", "conntrack", "dying", "unconfirmed")
# Address options: the template fields of (family, address), the option bit, and the
# option of the netmask a /PREFIX gives (None: no prefix allowed).
_ADDRESS_OPTIONS: dict[str, tuple[str, str, Opt, str | None]] = {
    "s": ("orig_family", "orig_src", Opt.ORIG_SRC, "{"),
    "d": ("orig_family", "orig_dst", Opt.ORIG_DST, "}"),
    "r": ("reply_family", "reply_src", Opt.REPL_SRC, None),
    "q": ("reply_family", "reply_dst", Opt.REPL_DST, None),
    "{": ("mask_family", "mask_src", Opt.MASK_SRC, None),
    "}": ("mask_family", "mask_dst", Opt.MASK_DST, None),
    "[": ("exp_family", "exp_src", Opt.EXP_SRC, "{"),
    "]": ("exp_family", "exp_dst", Opt.EXP_DST, "}"),
    "n": ("orig_family", "snat_addr", Opt.SRC_NAT, None),
    "g": ("orig_family", "dnat_addr", Opt.DST_NAT, None),
}
_NAT_OPTIONS = {"n": Opt.SRC_NAT, "g": Opt.DST_NAT, "j": Opt.ANY_NAT}
_NUMBER_OPTIONS = {"w": ("zone", Opt.ZONE, 16), "(": ("orig_zone", Opt.ORIG_ZONE, 16),
                   ")": ("reply_zone", Opt.REPL_ZONE, 16), "i": ("id", Opt.ID, 32),
                   "c": ("secmark", Opt.SECMARK, 32)}  # fmt: skip
_LABEL_OPTIONS = {"l": Opt.LABEL, "<": Opt.ADD_LABEL, ">": Opt.DEL_LABEL}
# Commands whose family stays "both" when none is given; the others default to IPv4.
# Listing and counting expectations cover both families too (conntrack 1.4.7: IPv4 only).
_ANY_FAMILY = (Cmd.LIST, Cmd.UPDATE, Cmd.DELETE, Cmd.GET, Cmd.FLUSH, Cmd.EVENT, Cmd.EXP_LIST,
               Cmd.EXP_COUNT)  # fmt: skip


@dataclass
class Parsed:
    """One conntrack command line, checked."""

    command: Cmd | None = None
    table: str = "conntrack"
    options: Opt = NO_OPTIONS
    family: int = 0
    protocol: Protocol | None = None
    protonum: int = 0
    proto_flags: int = 0
    event_mask: int = 0
    output: Output = NO_OUTPUT
    buffer_size: int = 0
    tmpl: Template = field(default_factory=Template)
    labelmap: LabelMap | None = None


class Parser:
    """conntrack's ``do_parse``: one command line into a :class:`Parsed`, or CommandFailed.

    Parameters:
        labels_path: the label map (``connlabel.conf``) read when labels are used.
        stderr: where warnings go (conntrack prints them while parsing).
    """

    def __init__(self, labels_path: str = fmt.CONNLABEL_CONF, stderr: IO[str] | None = None):
        self.labels_path = labels_path
        self.stderr = stderr if stderr is not None else sys.stderr
        self._labels_loaded = False

    def parse(self, argv: Sequence[str]) -> Parsed:
        """Parse ``argv`` (``argv[0]`` is the program name)."""
        self.result = result = Parsed()
        self.getopt = getopt = Getopt(argv, OPTSTRING, list(LONG_OPTIONS))
        self.offset = 0
        while (code := getopt.next()) is not None:
            if code >= 256:
                self._protocol_option(code - self.offset, getopt.optarg or "")
                continue
            self._option(chr(code), getopt.optarg)
        if result.family == 0 and result.command not in _ANY_FAMILY:
            result.family = AF_INET
        if result.options & Opt.ANY_NAT and result.options & (Opt.SRC_NAT | Opt.DST_NAT):
            parameter_problem("cannot specify `--src-nat' or `--dst-nat' with `--any-nat'")
        row = _NO_COMMAND_LEGAL if result.command is None else _LEGAL.get(result.command, "")
        partial = check_options(int(result.options), row, OPTION_NAMES, (int(ORIG), int(REPL)))
        if partial is not None:
            parameter_problem(
                "you have to specify `--reply-src' and `--reply-dst'"
                if partial == 1
                else "you have to specify `--src' and `--dst'"
            )
        if result.command is not Cmd.HELP and result.protocol is not None:
            self._final_check(result.protocol)
        return result

    # -- options ------------------------------------------------------------------------

    def _option(self, char: str, arg: str | None) -> None:
        result, tmpl = self.result, self.result.tmpl
        if char in _COMMAND_OF:
            self._command(char)
        elif char in "sdrq[]{}":
            self._address(char, arg or "")
        elif char == "p":
            self._protonum(arg or "")
        elif char == "t":
            result.options |= Opt.TIMEOUT
            tmpl.timeout = c_atoi(arg or "") & 0xFFFFFFFF
        elif char == "u":
            result.options |= Opt.STATUS
            value, clear = parse_status(arg or "", self.stderr)
            tmpl.status = (tmpl.status or 0) | value
            tmpl.status_clear |= clear
        elif char == "e":
            result.options |= Opt.EVENT_MASK
            result.event_mask |= parse_keywords(arg or "", EVENT_KEYWORDS, self.stderr)
        elif char == "o":
            result.options |= Opt.OUTPUT
            result.output |= parse_keywords(arg or "", OUTPUT_KEYWORDS, self.stderr)
            if result.output & Output.LABELS:
                self._load_labels()
            if result.output & Output.SAVE and result.output & ~Output.SAVE:
                other_problem(
                    "cannot combine save output with any other output type, use -o save only"
                )
        elif char == "z":
            result.options |= Opt.ZERO
        elif char in _NAT_OPTIONS:
            self._nat(char)
        elif char in _NUMBER_OPTIONS:
            name, bit, bits = _NUMBER_OPTIONS[char]
            result.options |= bit
            setattr(tmpl, name, c_unsigned(arg or "", bits))
        elif char == "m":
            result.options |= Opt.MARK
            value, used = c_strtol(arg or "", 0)
            tmpl.mark = value & 0xFFFFFFFF
            rest = (arg or "")[used:]
            tmpl.mark_mask = c_unsigned(rest[1:]) if rest.startswith("/") else 0xFFFFFFFF
        elif char in _LABEL_OPTIONS:
            self._labels(char, arg)
        elif char == "a":
            self.stderr.write("WARNING: ignoring -a, deprecated option.\n")
        elif char == "f":
            result.options |= Opt.FAMILY
            text = arg or ""
            if text.startswith("ipv4"):
                self._set_family(AF_INET)
            elif text.startswith("ipv6"):
                self._set_family(AF_INET6)
            else:
                parameter_problem(f"`{text}' unsupported protocol")
        elif char == "b":
            result.options |= Opt.BUFFERSIZE
            # conntrack hands setsockopt a size_t; the kernel reads its low 32 bits as an int
            size = c_atoi(arg or "") & 0xFFFFFFFF
            result.buffer_size = max(size - (1 << 32) if size >> 31 else size, 0)
        elif char == ":":
            parameter_problem(f"option `{self.getopt.last_argument()}' requires an argument")
        else:
            parameter_problem(f"unknown option `{self.getopt.last_argument()}'")

    def _command(self, char: str) -> None:
        table = self._table()
        result = self.result
        if table in ("dying", "unconfirmed"):
            if char != "L":
                parameter_problem("Can't do that command with tables `dying' and `unconfirmed'")
            command: Cmd | None = Cmd.LIST
        else:
            command = _COMMAND_OF[char][table == "expect"]
            if command is None:
                parameter_problem(f"Can't do --{long_name(ord(char))} on expectations")
        if result.command is not None:
            parameter_problem("Invalid commands combination")
        result.command = command
        result.table = table

    def _table(self) -> str:
        """conntrack's ``check_type``: the table named after a command (an abbreviation)."""
        name = self.getopt.optional_argument()
        if name is None:
            return "conntrack"
        for table in _TABLES:
            if table.startswith(name):
                return table
        parameter_problem(f"unknown type `{name}'")

    def _set_family(self, family: int) -> None:
        if self.result.family == 0:
            self.result.family = family
        elif self.result.family != family:
            parameter_problem("mismatched address family")

    def _address(self, char: str, arg: str) -> None:
        family_field, address_field, bit, mask_char = _ADDRESS_OPTIONS[char]
        family, address, prefix = parse_address(arg, with_netmask=True)
        if not family:
            parameter_problem(f"Invalid IP address `{arg}'")
        self._set_family(family)
        if prefix != NO_NETMASK and mask_char is None:
            parameter_problem(f"CIDR notation unavailable for `--{long_name(ord(char))}'")
        if prefix == BAD_NETMASK:
            parameter_problem("Invalid netmask")
        tmpl = self.result.tmpl
        self.result.options |= bit
        setattr(tmpl, family_field, family)
        setattr(tmpl, address_field, address)
        if mask_char is None or prefix in (NO_NETMASK, 32 if family == AF_INET else 128):
            return
        _, mask_field, mask_bit, _ = _ADDRESS_OPTIONS[mask_char]
        self.result.options |= mask_bit
        tmpl.mask_family = family
        setattr(tmpl, mask_field, netmask(family, prefix))

    def _nat(self, char: str) -> None:
        self.result.options |= _NAT_OPTIONS[char]
        arg = self.getopt.optional_argument()
        if arg is None:
            return
        address, port = split_nat_address(arg)
        tmpl = self.result.tmpl
        # --any-nat sets both NAT addresses (conntrack 1.4.7 clobbers the source address)
        for target in ("n", "g") if char == "j" else (char,):
            family, parsed, prefix = parse_address(address, with_netmask=True)
            if not family:
                parameter_problem(f"Invalid IP address `{address}'")
            self._set_family(family)
            if prefix != NO_NETMASK:
                parameter_problem(f"CIDR notation unavailable for `--{long_name(ord(char))}'")
            tmpl.orig_family = family
            port_value = c_atoi(port) & 0xFFFF if port is not None else None
            if target == "n":
                tmpl.snat_addr, tmpl.snat_port = parsed, port_value
            else:
                tmpl.dnat_addr, tmpl.dnat_port = parsed, port_value

    def _protonum(self, arg: str) -> None:
        found = find_protocol(arg)
        if found is None:
            parameter_problem(f"`{arg}' unsupported protocol")
        result = self.result
        result.options |= Opt.PROTO
        result.protocol, result.protonum = found
        # each -p adds its protocol's long options with codes 256 above the previous ones
        self.offset += 256
        self.getopt.longopts.extend(
            LongOption(name, REQUIRED_ARGUMENT, self.offset + code)
            for name, code in result.protocol.long_names
        )
        result.tmpl.orig_proto = result.protonum

    def _load_labels(self) -> None:
        if self._labels_loaded:
            return
        self._labels_loaded = True
        try:
            self.result.labelmap = LabelMap.load(self.labels_path)
        except OSError as exc:
            self.stderr.write(f"nfct_labelmap_new: {os.strerror(exc.errno or 0)}\n")
        except ValueError:
            self.stderr.write("nfct_labelmap_new: Success\n")  # errno 0, as conntrack says

    def _labels(self, char: str, arg: str | None) -> None:
        result, tmpl = self.result, self.result.tmpl
        result.options |= _LABEL_OPTIONS[char]
        self._load_labels()
        if result.options & Opt.ADD_LABEL and result.options & Opt.DEL_LABEL:
            other_problem("cannot use --label-add and --label-del at the same time")
        if char == ">" and arg is None:
            arg = self.getopt.optional_argument()
            if arg is None:
                return  # delete all labels
        bits = 0
        highest = 0
        for name in (arg or "").split(","):
            bit = result.labelmap.bit(name) if result.labelmap is not None else None
            if bit is None:
                parameter_problem(f"unknown label '{name}'")
            bits |= 1 << bit
            highest = max(highest, bit)
        size = (highest // 32 + 1) * 4
        if char == "l":
            tmpl.labels = (tmpl.labels or 0) | bits
        else:
            tmpl.labels_change = (tmpl.labels_change or 0) | bits
            tmpl.labels_change_size = max(tmpl.labels_change_size, size)

    # -- protocol options -----------------------------------------------------------------

    def _protocol_option(self, code: int, arg: str) -> None:
        proto = self.result.protocol
        if proto is None or not 1 <= code <= len(proto.fields):
            return  # an option of a protocol given before the last -p: conntrack ignores it
        tmpl = self.result.tmpl
        self.result.proto_flags |= 1 << (code - 1)
        name = proto.flag_names[code - 1]
        target = proto.fields[code - 1]
        if name == "state":
            self._state(proto, arg)
        elif name == "role":
            if "client".startswith(arg.lower()):
                tmpl.dccp_role = 0
            elif "server".startswith(arg.lower()):
                tmpl.dccp_role = 1
            else:
                parameter_problem(f"Unknown DCCP role `{arg}'")
        elif target is not None and target.startswith("icmp_"):
            bits = 0xFFFF if target == "icmp_id" else 0xFF
            setattr(tmpl, target, c_atoi(arg) & bits)
            tmpl.orig_proto = proto.number
            if tmpl.reply_family is not None:
                tmpl.reply_proto = proto.number
        elif target is not None and target.startswith("sctp_vtag"):
            setattr(tmpl, target, c_atoi(arg) & 0xFFFFFFFF)
        elif target is not None:
            value = c_unsigned(arg, 16) if proto.number == IPPROTO_GRE else c_atoi(arg) & 0xFFFF
            setattr(tmpl, target, value)
            direction = target.split("_", 1)[0]  # orig, reply, mask or exp
            setattr(tmpl, f"{direction}_proto", proto.number)

    def _state(self, proto: Protocol, arg: str) -> None:
        tmpl = self.result.tmpl
        if proto.number == IPPROTO_TCP:
            if arg == "LISTEN":  # the name of SYN_SENT2 before Linux 2.6.31
                tmpl.tcp_state = 9
            elif arg in fmt.TCP_STATES:
                tmpl.tcp_state = fmt.TCP_STATES.index(arg)
            else:
                parameter_problem(f"unknown TCP state `{arg}'")
        elif proto.number == IPPROTO_SCTP:
            # conntrack 1.4.7 knows the states up to SHUTDOWN_ACK_SENT (and crashes on others)
            if arg in fmt.SCTP_STATES[:8]:
                tmpl.sctp_state = fmt.SCTP_STATES.index(arg)
            else:
                parameter_problem(f"unknown SCTP state `{arg}'")
        elif arg in fmt.DCCP_STATES:
            tmpl.dccp_state = fmt.DCCP_STATES.index(arg)
        else:
            parameter_problem(f"Unknown DCCP state `{arg}'")

    def _final_check(self, proto: Protocol) -> None:
        result, tmpl = self.result, self.result.tmpl
        if proto is UNKNOWN_PROTOCOL:
            if tmpl.reply_family is not None and tmpl.reply_proto is None:
                tmpl.reply_proto = tmpl.orig_proto
            return
        assert result.command is not None
        row = proto.legal.get(result.command, "")
        partial = check_options(result.proto_flags, row, proto.flag_names, proto.pairs)
        if partial is not None:
            parameter_problem(proto.pair_errors[1 if partial == 1 else 0])
        if proto.number == IPPROTO_TCP:
            # window tracking would drop packets of a flow created by hand
            flags = int(TCPFlag.BE_LIBERAL | TCPFlag.SACK_PERM)
            if (tmpl.tcp_state or 0) >= TCPState.TIME_WAIT:
                flags |= TCPFlag.CLOSE_INIT  # lets a new connection reuse the tuple
            tmpl.tcp_flags = flags


def check_options(
    given: int, row: str, names: Sequence[str], pairs: tuple[int, int] | None
) -> int | None:
    """conntrack's ``generic_opt_check``: raise for an illegal or missing option.

    Returns None when fine, else the index of the address pair that was
    partly given (-1: none) where the row asks for a complete one (3).
    """
    special = False
    for i, name in enumerate(names):
        legal = row[i] if i < len(row) else "0"
        if not given & (1 << i):
            if legal == "1":
                parameter_problem(f"You need to supply the `--{name}' option for this command")
        elif legal == "0":
            parameter_problem(f"Illegal option `--{name}' with this command")
        special = special or legal == "3"
    if not special or pairs is None:
        return None
    partial = -1
    for i, pair in enumerate(pairs):
        if given & pair == pair:
            return None
        if given & pair and partial < 0:
            partial = i
    return partial


# -- which flows a command line selects (conntrack's nfct_filter and nfct_cmp) ----------------

Check = Callable[[Flow], bool]


def _l4_source(tup: Tuple | None) -> int:
    """The 16 bits conntrack compares as a tuple's source port (the ICMP id for ICMP)."""
    if tup is None:
        return 0
    if tup.proto == IPPROTO_ICMP or tup.proto == IPPROTO_ICMPV6:
        return tup.icmp_id or 0
    return tup.sport or 0


def _l4_destination(tup: Tuple | None) -> int:
    """The 16 bits conntrack compares as a tuple's destination port (ICMP type and code)."""
    if tup is None:
        return 0
    if tup.proto == IPPROTO_ICMP or tup.proto == IPPROTO_ICMPV6:
        return (tup.icmp_type or 0) << 8 | (tup.icmp_code or 0)
    return tup.dport or 0


def _status_has(flow: Flow, bit: int) -> bool:
    """A status bit, true when the flow has no status at all (as libnetfilter_conntrack)."""
    return flow.status is None or bool(int(flow.status) & bit)


def _source_port_translated(flow: Flow) -> bool:
    """``NFCT_GOPT_IS_SPAT``."""
    return _status_has(flow, Status.SRC_NAT_DONE) and _l4_destination(flow.reply) != _l4_source(
        flow.orig
    )


def _destination_port_translated(flow: Flow) -> bool:
    """``NFCT_GOPT_IS_DPAT``."""
    return _status_has(flow, Status.DST_NAT_DONE) and _l4_source(flow.reply) != _l4_destination(
        flow.orig
    )


def _translated(flow: Flow, address: str | None, port: int | None, source: bool) -> bool:
    """conntrack's NAT test of one direction: translated (to ``address``/``port`` if given)."""
    reply = flow.reply
    if source:
        nat, pat = fmt.source_nat, _source_port_translated
        reply_address = reply.dst if reply is not None else None
        reply_port = _l4_destination(reply)
    else:
        nat, pat = fmt.destination_nat, _destination_port_translated
        reply_address = reply.src if reply is not None else None
        reply_port = _l4_source(reply)
    if address is None and port is None:
        return nat(flow) or pat(flow)
    found = address is not None and nat(flow) and reply_address == address
    if port is not None:
        port_matches = pat(flow) and reply_port == port
        if address is None:
            found = port_matches
        elif not port_matches:
            found = False
    return found


def _nat_check(parsed: Parsed) -> Check:
    t, options = parsed.tmpl, parsed.options

    def source(flow: Flow) -> bool:
        return _translated(flow, t.snat_addr, t.snat_port, source=True)

    def destination(flow: Flow) -> bool:
        return _translated(flow, t.dnat_addr, t.dnat_port, source=False)

    if options & Opt.ANY_NAT:
        return lambda flow: source(flow) or destination(flow)
    if options & Opt.SRC_NAT and options & Opt.DST_NAT:
        return lambda flow: source(flow) and destination(flow)
    return source if options & Opt.SRC_NAT else destination


def _network_check(family: int, field_name: str, address: str, mask: str) -> Check:
    mask_value = int(ipaddress.ip_address(mask))
    network = int(ipaddress.ip_address(address)) & mask_value
    values: dict[str, int] = {}

    def check(flow: Flow) -> bool:
        o = flow.orig
        if o is None or o.family != family:
            return False
        text = getattr(o, field_name)
        value = values.get(text)
        if value is None:
            value = values[text] = int(ipaddress.ip_address(text))
        return value & mask_value == network

    return check


def _status_check(value: int, clear: int) -> Check | None:
    """``-u``: the bits given set, those negated clear (None: every flow passes)."""
    mask = value | clear
    if not mask:
        return None
    return lambda flow: flow.status is not None and int(flow.status) & mask == value


def _equal(get: Callable[[Flow], object], want: object) -> Check:
    return lambda flow: get(flow) == want


def _original(flow: Flow) -> Tuple | None:
    return flow.orig


def _reply(flow: Flow) -> Tuple | None:
    return flow.reply


def _tuple_field(direction: Callable[[Flow], Tuple | None], name: str, want: object) -> Check:
    def check(flow: Flow) -> bool:
        tup = direction(flow)
        return tup is not None and getattr(tup, name) == want

    return check


def _tuple_address(direction: Callable[[Flow], Tuple | None], name: str, address: str) -> Check:
    family = AF_INET6 if ":" in address else AF_INET

    def check(flow: Flow) -> bool:
        tup = direction(flow)
        return tup is not None and tup.family == family and getattr(tup, name) == address

    return check


def _tuple_zone(direction: Callable[[Flow], Tuple | None], zone: int) -> Check:
    def check(flow: Flow) -> bool:
        tup = direction(flow)
        return (tup.zone if tup is not None and tup.zone is not None else 0) == zone

    return check


def _tuple_checks(t: Template, reply: bool, covered: Collection[str] = ()) -> list[Check]:
    """conntrack's ``__cmp_orig``/``cmp_repl`` (NFCT_CMP_MASK): the tuple fields the template has.

    A field the template has but the flow lacks fails. Ports are compared for
    the port protocols only (not GRE keys); ICMP fields are always those of
    the original direction; zones compare as 0 when the flow has none.
    Fields named in ``covered`` (template field names) are left out: the
    dump's filter already checked them the same way.
    """
    prefix = "reply" if reply else "orig"
    direction = _reply if reply else _original
    checks: list[Check] = []
    family = getattr(t, f"{prefix}_family")
    proto = getattr(t, f"{prefix}_proto")
    if family is not None and f"{prefix}_family" not in covered:
        checks.append(_tuple_field(direction, "family", family))
    if proto is not None:
        if f"{prefix}_proto" not in covered:
            checks.append(_tuple_field(direction, "proto", proto))
        if proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
            for name in ("icmp_id", "icmp_code", "icmp_type"):
                if getattr(t, name) is not None and name not in covered:
                    checks.append(_tuple_field(_original, name, getattr(t, name)))
        elif proto in fmt.PORT_PROTOCOLS:
            for name in ("sport", "dport"):
                want = getattr(t, f"{prefix}_{name}")
                if want is not None and f"{prefix}_{name}" not in covered:
                    checks.append(_tuple_field(direction, name, want))
    for name in ("src", "dst"):
        address = getattr(t, f"{prefix}_{name}")
        if address is not None and f"{prefix}_{name}" not in covered:
            checks.append(_tuple_address(direction, name, address))
    zone = getattr(t, f"{prefix}_zone")
    if zone is not None:
        checks.append(_tuple_zone(direction, zone))
    return checks


def _state_of(flow: Flow, kind: type[TCPInfo | SCTPInfo | DCCPInfo]) -> int | None:
    info = flow.protoinfo
    return info.state if isinstance(info, kind) else None


def _state_is(kind: type[TCPInfo | SCTPInfo | DCCPInfo], state: int) -> Check:
    return lambda flow: _state_of(flow, kind) == state


def _meta_checks(t: Template) -> list[Check]:
    """conntrack's ``cmp_meta``: id, timeout, status, states and zone of the template."""
    checks: list[Check] = []
    if t.id is not None:
        checks.append(_equal(lambda f: f.id, t.id))
    if t.timeout is not None:
        checks.append(_equal(lambda f: f.timeout, t.timeout))
    if t.status is not None:
        status = _status_check(t.status, t.status_clear)
        if status is not None:
            checks.append(status)
    states = ((t.tcp_state, TCPInfo), (t.sctp_state, SCTPInfo), (t.dccp_state, DCCPInfo))
    checks += [_state_is(kind, state) for state, kind in states if state is not None]
    if t.zone is not None:
        checks.append(_equal(lambda f: f.zone or 0, t.zone))
    return checks


def _label_check(wanted: int) -> Check:
    def check(flow: Flow) -> bool:
        labels = flow.labels
        return labels is not None and int.from_bytes(labels, "little") & wanted == wanted

    return check


def _all(checks: list[Check]) -> Check | None:
    """One check for all of them (None: no checks), chained with ``and``."""
    if not checks:
        return None
    combined = checks[-1]
    for check in reversed(checks[:-1]):
        combined = _both(check, combined)
    return combined


def _both(first: Check, second: Check) -> Check:
    return lambda flow: first(flow) and second(flow)


def flow_filter(
    parsed: Parsed, networks: Sequence[Check] = (), covered: Collection[str] = ()
) -> Check | None:
    """Which flows ``-L``, ``-D``, ``-G`` and ``-E`` keep (None: all of them).

    conntrack's ``nfct_filter``: NAT, mark, labels, netmasks (``networks``,
    see :func:`network_checks`), then the template's meta and tuple fields
    (except the ``covered`` ones, see :meth:`Runner.prefilter`).
    """
    t, options = parsed.tmpl, parsed.options
    checks: list[Check] = []
    if options & (Opt.SRC_NAT | Opt.DST_NAT | Opt.ANY_NAT):
        checks.append(_nat_check(parsed))
    if options & Opt.MARK and t.mark is not None:
        mark, mask = t.mark, t.mark_mask
        checks.append(lambda f: f.mark is not None and f.mark & mask == mark)
    if t.labels is not None:
        checks.append(_label_check(t.labels))
    checks += networks
    if options & COMPARISON:
        checks += _meta_checks(t)
        checks += _tuple_checks(t, False, covered) + _tuple_checks(t, True, covered)
    return _all(checks)


def update_filter(parsed: Parsed, networks: Sequence[Check] = ()) -> Check | None:
    """Which flows ``-U`` changes: NAT, labels, netmasks, id and the tuples given.

    The template's meta fields (mark, status, timeout...) are what ``-U``
    sets, not criteria.
    """
    t, options = parsed.tmpl, parsed.options
    checks: list[Check] = []
    if options & (Opt.SRC_NAT | Opt.DST_NAT | Opt.ANY_NAT):
        checks.append(_nat_check(parsed))
    if t.labels is not None:
        checks.append(_label_check(t.labels))
    checks += networks
    if t.id is not None:
        checks.append(lambda f: f.id is None or f.id == t.id)
    if options & (ORIG | Opt.PROTO):
        checks += _tuple_checks(t, reply=False)
    if options & (REPL | Opt.PROTO):
        checks += _tuple_checks(t, reply=True)
    return _all(checks)


def network_checks(parsed: Parsed) -> list[Check]:
    """conntrack's ``nfct_filter_init``: netmask criteria from ``-s``/``-d`` with a /PREFIX
    or ``--mask-src``/``--mask-dst``.

    The exact original address then no longer filters (it is removed from
    the template), as in conntrack.
    """
    t, options = parsed.tmpl, parsed.options
    checks = []
    for bit, name, option in ((Opt.MASK_SRC, "src", "mask-src"), (Opt.MASK_DST, "dst", "mask-dst")):
        if not options & bit:
            continue
        address = getattr(t, f"orig_{name}")
        if not options & (Opt.ORIG_SRC if name == "src" else Opt.ORIG_DST) or address is None:
            parameter_problem(f"Can't use --{option} without --{name}")
        mask = getattr(t, f"mask_{name}")
        checks.append(_network_check(parsed.family, name, address, mask))
        setattr(t, f"orig_{name}", None)
    return checks


# -- building flows and expectations from the template --------------------------------------


def template_tuple(t: Template, reply: bool) -> Tuple | None:
    """The original (or reply) tuple of a request, None without the direction's family.

    As libnetfilter_conntrack builds it: fields not given are sent as zeros
    (``0.0.0.0``, protocol 0, port 0, ICMP id 0).
    """
    prefix = "reply" if reply else "orig"
    family = getattr(t, f"{prefix}_family")
    if family is None:
        return None
    proto = getattr(t, f"{prefix}_proto") or 0
    icmp = proto in (IPPROTO_ICMP, IPPROTO_ICMPV6)
    ports = proto in fmt.PORT_PROTOCOLS or proto == IPPROTO_GRE
    unspecified = "0.0.0.0" if family == AF_INET else "::"
    return Tuple(
        family,
        getattr(t, f"{prefix}_src") or unspecified,
        getattr(t, f"{prefix}_dst") or unspecified,
        proto,
        getattr(t, f"{prefix}_sport") or 0 if ports else None,
        getattr(t, f"{prefix}_dport") or 0 if ports else None,
        t.icmp_type or 0 if icmp else None,
        t.icmp_code or 0 if icmp else None,
        t.icmp_id or 0 if icmp else None,
        getattr(t, f"{prefix}_zone"),
    )


def _protoinfo(t: Template) -> TCPInfo | SCTPInfo | DCCPInfo | None:
    if t.tcp_flags is not None or t.tcp_state is not None:
        flags = None if t.tcp_flags is None else TCPFlag(t.tcp_flags)
        state = None if t.tcp_state is None else TCPState(t.tcp_state)
        return TCPInfo(state, flags_orig=flags, flags_reply=flags, mask_orig=flags,
                       mask_reply=flags)  # fmt: skip
    if t.sctp_state is not None or t.sctp_vtag_orig is not None or t.sctp_vtag_reply is not None:
        return SCTPInfo(t.sctp_state, t.sctp_vtag_orig, t.sctp_vtag_reply)  # type: ignore[arg-type]
    if t.dccp_state is not None or t.dccp_role is not None:
        return DCCPInfo(t.dccp_state, t.dccp_role)  # type: ignore[arg-type]
    return None


def creation_flow(parsed: Parsed) -> Flow:
    """The flow ``-I``/``-A`` creates: the tuples given (a missing one is the other
    inverted), timeout, status, mark, zone, labels, protocol state and NAT."""
    t = parsed.tmpl
    # which tuples were given is what -s/-d and -r/-q say (-n/-g set the family too)
    orig = template_tuple(t, reply=False) if parsed.options & ORIG else None
    reply = template_tuple(t, reply=True) if parsed.options & REPL else None
    if orig is not None and reply is None:
        reply = replace(orig.inverted(), zone=t.reply_zone)
    elif reply is not None and orig is None:
        orig = replace(reply.inverted(), zone=t.orig_zone)
    elif orig is not None and reply is not None and t.icmp_type is not None:
        reply.icmp_type = orig.inverted().icmp_type  # the reply to an echo request is a reply
    flow = Flow(orig, reply, timeout=t.timeout, zone=t.zone, protoinfo=_protoinfo(t))
    if parsed.options & Opt.STATUS:
        flow.status = Status(t.status or 0)
    if parsed.options & Opt.MARK:
        flow.mark = t.mark
    if parsed.options & Opt.ADD_LABEL and t.labels_change is not None:
        flow.labels = t.labels_change.to_bytes(t.labels_change_size, "little")
    if t.snat_addr is not None or t.snat_port is not None:
        flow.nat_src = NatRange(t.snat_addr, min_port=t.snat_port)
    if t.dnat_addr is not None or t.dnat_port is not None:
        flow.nat_dst = NatRange(t.dnat_addr, min_port=t.dnat_port)
    return flow


def _label_update(parsed: Parsed, current: bytes | None) -> tuple[bytes, bytes | None] | None:
    """conntrack's ``copy_label``: the labels (and mask) an update sends, None for none."""
    t, options = parsed.tmpl, parsed.options
    change = t.labels_change
    if options & Opt.ADD_LABEL and change is not None:
        if current is None:
            return change.to_bytes(t.labels_change_size, "little"), None
        # only the bits sent in the mask change; the same size as the kernel's bitmap
        bits = (change & ((1 << len(current) * 8) - 1)).to_bytes(len(current), "little")
        return bits, bits
    if options & Opt.DEL_LABEL and current is not None:
        if change is None:
            return bytes(4), None  # delete them all
        kept = int.from_bytes(current, "little") & ~change
        return kept.to_bytes(len(current), "little"), None
    return None


def update_flow(parsed: Parsed, flow: Flow) -> Flow | None:
    """The update ``-U`` sends for ``flow``, None when it would change nothing.

    The flow is named by its original tuple in its zone; the mark becomes
    ``(mark & ~mask) ^ value``, status bits are added to the current ones.
    """
    t, options = parsed.tmpl, parsed.options
    change = Flow(flow.orig, zone=flow.zone, timeout=t.timeout, protoinfo=_protoinfo(t))
    changed = t.timeout is not None and flow.timeout != t.timeout
    if options & Opt.MARK and t.mark is not None:
        change.mark = ((flow.mark or 0) & ~t.mark_mask ^ t.mark) & 0xFFFFFFFF
        changed = changed or change.mark != (flow.mark or 0)
    if options & Opt.STATUS:
        current = 0 if flow.status is None else int(flow.status)
        change.status = Status(current | (t.status or 0))
        changed = changed or flow.status is None or change.status != current
    for state, kind in ((t.tcp_state, TCPInfo), (t.sctp_state, SCTPInfo), (t.dccp_state, DCCPInfo)):
        if state is not None:
            changed = changed or _state_of(flow, kind) != state
    labels = _label_update(parsed, flow.labels)
    if labels is not None:
        change.labels, change.labels_mask = labels
        changed = True
    return change if changed else None


def expectation_tuples(t: Template) -> tuple[Tuple | None, Tuple | None, Tuple | None]:
    """The master, expected and mask tuples of ``-I expect`` (and the key of -G/-D expect)."""
    master = template_tuple(t, reply=False)
    proto = t.orig_proto
    expected = mask = None
    if t.exp_family is not None:
        expected = Tuple(t.exp_family, t.exp_src, t.exp_dst, t.exp_proto or proto,
                         t.exp_sport, t.exp_dport)  # fmt: skip
    if t.mask_family is not None:
        mask = Tuple(t.mask_family, t.mask_src, t.mask_dst, t.mask_proto or proto,
                     t.mask_sport, t.mask_dport)  # fmt: skip
    return master, expected, mask


# -- running a command ------------------------------------------------------------------------

ENOTSUPP = 524  # the kernel-internal "not supported" that leaks to userspace
_ALL_COMMANDS = frozenset(Cmd)
_ERROR_TEXTS: tuple[tuple[frozenset[Cmd], int, str], ...] = (
    (frozenset({Cmd.LIST}), ENOTSUPP, "function not implemented"),
    # conntrack's mask 0xFFFF: the commands numbered below 16
    (frozenset(c for c in Cmd if c < 16), errno.EINVAL, "invalid parameters"),
    (frozenset({Cmd.CREATE}), errno.EEXIST, "Such conntrack exists, try -U to update"),
    (frozenset({Cmd.CREATE, Cmd.GET, Cmd.DELETE, Cmd.ADD}), errno.ENOENT,
     "such conntrack doesn't exist"),
    (frozenset({Cmd.CREATE, Cmd.GET, Cmd.ADD}), errno.ENOMEM, "not enough memory"),
    (frozenset({Cmd.GET}), errno.EAFNOSUPPORT, "protocol not supported"),
    (frozenset({Cmd.CREATE, Cmd.ADD}), errno.ETIME, "conntrack has expired"),
    (frozenset({Cmd.EXP_CREATE}), errno.ENOENT, "master conntrack not found"),
    (frozenset({Cmd.EXP_CREATE}), errno.EINVAL, "invalid parameters"),
    (_ALL_COMMANDS, errno.EPERM,
     "sorry, you must be root or get CAP_NET_ADMIN capability to do this"),
)  # fmt: skip


def error_text(code: int, command: Cmd | None) -> str:
    """conntrack's ``err2str``: its own words for some errors, else ``strerror``."""
    for commands, known, text in _ERROR_TEXTS:
        if command in commands and code == known:
            return text
    return os.strerror(code)


def operation_failed(exc: OSError, command: Cmd | None) -> NoReturn:
    other_problem(f"Operation failed: {error_text(exc.errno or errno.EIO, command)}")


USAGE = (
    "Command line interface for the connection tracking system. Version {version}\n"
    "Usage: {prog} [commands] [options]\n"
    "\n"
    "Commands:\n"
    "  -L [table] [options]\t\tList conntrack or expectation table\n"
    "  -G [table] parameters\t\tGet conntrack or expectation\n"
    "  -D [table] parameters\t\tDelete conntrack or expectation\n"
    "  -I [table] parameters\t\tCreate a conntrack or expectation\n"
    "  -U [table] parameters\t\tUpdate a conntrack\n"
    "  -E [table] [options]\t\tShow events\n"
    "  -F [table]\t\t\tFlush table\n"
    "  -C [table]\t\t\tShow counter\n"
    "  -S\t\t\t\tShow statistics\n"
    "\n"
    "Tables: conntrack, expect, dying, unconfirmed\n"
    "\n"
    "Conntrack parameters and options:\n"
    "  -n, --src-nat ip\t\t\tsource NAT ip\n"
    "  -g, --dst-nat ip\t\t\tdestination NAT ip\n"
    "  -j, --any-nat ip\t\t\tsource or destination NAT ip\n"
    "  -m, --mark mark\t\t\tSet mark\n"
    "  -c, --secmark secmark\t\t\tSet selinux secmark\n"
    "  -e, --event-mask eventmask\t\tEvent mask, eg. NEW,DESTROY\n"
    "  -z, --zero \t\t\t\tZero counters while listing\n"
    "  -o, --output type[,...]\t\tOutput format, eg. xml\n"
    "  -l, --label label[,...]\t\tconntrack labels\n"
    "\n"
    "Expectation parameters and options:\n"
    "  --tuple-src ip\tSource address in expect tuple\n"
    "  --tuple-dst ip\tDestination address in expect tuple\n"
    "\n"
    "Updating parameters and options:\n"
    "  --label-add label\tAdd label\n"
    "  --label-del label\tDelete label\n"
    "\n"
    "Common parameters and options:\n"
    "  -s, --src, --orig-src ip\t\tSource address from original direction\n"
    "  -d, --dst, --orig-dst ip\t\tDestination address from original direction\n"
    "  -r, --reply-src ip\t\tSource addres from reply direction\n"
    "  -q, --reply-dst ip\t\tDestination address from reply direction\n"
    "  -p, --protonum proto\t\tLayer 4 Protocol, eg. 'tcp'\n"
    "  -f, --family proto\t\tLayer 3 Protocol, eg. 'ipv6'\n"
    "  -t, --timeout timeout\t\tSet timeout\n"
    "  -u, --status status\t\tSet status, eg. ASSURED\n"
    "  -w, --zone value\t\tSet conntrack zone\n"
    "  --orig-zone value\t\tSet zone for original direction\n"
    "  --reply-zone value\t\tSet zone for reply direction\n"
    "  -b, --buffer-size\t\tNetlink socket buffer size\n"
    "  --mask-src ip\t\t\tSource mask address\n"
    "  --mask-dst ip\t\t\tDestination mask address\n"
    "\n"
)
ENOBUFS_WARNING = (
    "WARNING: We have hit ENOBUFS! We are losing events.\n"
    "This message means that the current netlink socket buffer size is too small.\n"
    "Please, check --buffer-size in conntrack(8) manpage.\n"
)
PROC_COUNT = "/proc/sys/net/netfilter/nf_conntrack_count"
PROC_STATS = "/proc/net/stat/nf_conntrack"
#: Lines written to stdout at once while listing.
_CHUNK = 4096


class _Stop(Exception):
    """SIGINT or SIGTERM ended ``-E``."""


def _stop(_signum: int, _frame: FrameType | None) -> None:
    raise _Stop


class Runner:
    """Runs one parsed command against the kernel, writing what conntrack writes.

    Parameters:
        parsed: the command line.
        out, err: stdout and stderr.
        connect: makes the :class:`~nfkit.conntrack.Conntrack` client (tests pass fakes).
        listen: makes the :class:`~nfkit.conntrack.EventListener` of ``-E``.
    """

    def __init__(
        self,
        parsed: Parsed,
        out: IO[str],
        err: IO[str],
        connect: Callable[[], Conntrack] = Conntrack,
        listen: Callable[..., EventListener] = EventListener,
    ) -> None:
        self.parsed = parsed
        self.out = out
        self.err = err
        self.connect = connect
        self.listen = listen
        #: Entries shown, deleted, created... (the number in the summary line).
        self.count = 0
        self._client: Conntrack | None = None
        self._xml_root: str | None = None

    @property
    def client(self) -> Conntrack:
        if self._client is None:
            try:
                self._client = self.connect()
            except OSError:
                other_problem("Can't open handler")
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def run(self) -> None:
        """Carry the command out (raises CommandFailed as conntrack's exit_error)."""
        command = self.parsed.command
        actions: dict[Cmd | None, Callable[[], None]] = {
            Cmd.LIST: self.list_flows,
            Cmd.GET: self.get_flow,
            Cmd.DELETE: self.delete_flows,
            Cmd.CREATE: self.create_flow,
            Cmd.ADD: self.create_flow,
            Cmd.UPDATE: self.update_flows,
            Cmd.FLUSH: self.flush,
            Cmd.EVENT: self.events,
            Cmd.COUNT: self.count_flows,
            Cmd.STATS: self.stats,
            Cmd.EXP_LIST: self.list_expectations,
            Cmd.EXP_GET: self.get_expectation,
            Cmd.EXP_DELETE: self.delete_expectation,
            Cmd.EXP_CREATE: self.create_expectation,
            Cmd.EXP_FLUSH: self.flush_expectations,
            Cmd.EXP_EVENT: self.events,
            Cmd.EXP_COUNT: self.count_expectations,
            Cmd.EXP_STATS: self.stats,
            Cmd.VERSION: self.version,
        }
        actions.get(command, self.usage)()

    def summary(self) -> int:
        """Write the summary line (if the command has one); the exit status."""
        command = self.parsed.command
        if command not in SUMMARIES:
            return 0
        self.err.write(fmt.message(SUMMARIES[command].format(self.count)))
        return 0 if self.count or command in _NOTHING_IS_FINE else OTHER_PROBLEM

    # -- output ---------------------------------------------------------------------------

    def _open_xml(self, root: str) -> None:
        if self._xml_root is None:
            self._xml_root = root
            self.out.write(f"{fmt.XML_HEADER}<{root}>\n")

    def _close_xml(self) -> None:
        if self._xml_root is not None:
            self.out.write(f"</{self._xml_root}>\n")
            self._xml_root = None

    def flow_printer(self, context: str) -> Callable[[Flow, EventType | None], str]:
        """How flows look in ``context``: "dump" (-L, -G), "delete", "update" or "event".

        As in conntrack: -D shows no labels and no kernel timestamps, -U no
        kernel timestamps; -D and -U write XML flows without a document.
        """
        output = self.parsed.output
        labels, ktimestamp = self._shown(context)
        if output & Output.SAVE:
            kind = {"dump": EventType.NEW, "update": EventType.NEW, "delete": EventType.DESTROY}

            def save(flow: Flow, event: EventType | None) -> str:
                return fmt.flow_save(flow, event or kind[context])

            return save
        if output & Output.XML:
            when = bool(output & Output.TIMESTAMP) and context == "event"
            document = context in ("dump", "event")

            def xml(flow: Flow, event: EventType | None) -> str:
                if document:
                    self._open_xml("conntrack")
                return fmt.flow_xml(flow, event, ktimestamp=ktimestamp, when=when, labels=labels)

            return xml
        return self.flow_text(context).line

    def flow_text(self, context: str) -> fmt.FlowText:
        """The default line format of flows in ``context`` (see :meth:`flow_printer`)."""
        output = self.parsed.output
        labels, ktimestamp = self._shown(context)
        return fmt.FlowText(
            layer3=bool(output & Output.EXTENDED),
            ktimestamp=ktimestamp,
            show_id=bool(output & Output.ID),
            labels=labels,
        )

    def _shown(self, context: str) -> tuple[fmt.LabelMap | None, bool]:
        """The label map (None: no labels) and whether kernel timestamps show in ``context``."""
        ktimestamp = bool(self.parsed.output & Output.KTIMESTAMP) and context in ("dump", "event")
        return (self.parsed.labelmap if context != "delete" else None), ktimestamp

    def expectation_printer(self) -> Callable[[Expectation, EventType | None], str]:
        output = self.parsed.output
        if output & Output.XML:
            when = bool(output & Output.TIMESTAMP)

            def xml(exp: Expectation, event: EventType | None) -> str:
                self._open_xml("expect")
                return fmt.expectation_xml(exp, event, when)

            return xml
        if output & Output.TIMESTAMP:
            return lambda exp, event: (
                fmt.event_time_prefix(time.time_ns()) + fmt.expectation_line(exp, event)
            )
        return fmt.expectation_line

    def _write_flows(self, flows: Iterable[Flow], context: str) -> None:
        """Print the flows (one line each), counting them."""
        self._write_lines(map(self.flow_printer(context), flows, itertools.repeat(None)))

    def _write_lines(self, lines: Iterable[str]) -> None:
        """Print the lines of flows, counting them."""
        remaining = iter(lines)
        while chunk := list(itertools.islice(remaining, _CHUNK)):
            self.out.write(fmt.join_lines(chunk))
            self.count += len(chunk)

    # -- what the kernel filters ------------------------------------------------------------

    def prefilter(self, with_status: bool) -> tuple[Filter, frozenset[str]]:
        """The criteria sent with the dump, and the template fields they cover.

        Family, mark, status and, once the family is known, the tuple fields
        conntrack compares for equality; the library sends the kernel what
        the kernel can filter and checks the rest itself, with the same
        meaning as conntrack for these fields, which the caller then need
        not check again.
        """
        p, t = self.parsed, self.parsed.tmpl
        criteria: dict[str, object] = {"family": p.family}
        if p.options & Opt.MARK:
            criteria.update(mark=t.mark, mark_mask=t.mark_mask)
        status_mask = (t.status or 0) | t.status_clear
        if with_status and p.options & Opt.STATUS and status_mask:
            criteria.update(status=t.status or 0, status_mask=status_mask)
        # Without a family the kernel needs one dump per family for tuple criteria,
        # which would change the order of the entries: leave them to Python then.
        covered: dict[str, object] = {}
        if p.family and p.options & COMPARISON:
            covered = _exact_tuple_criteria(t, addresses=p.family == AF_INET)
            criteria.update((_FILTER_NAMES[name], value) for name, value in covered.items())
        return Filter(**criteria), frozenset(covered)  # type: ignore[arg-type]

    # -- flows --------------------------------------------------------------------------------

    def list_flows(self) -> None:
        p, t = self.parsed, self.parsed.tmpl
        conntrack = p.table == "conntrack"
        zero = bool(p.options & Opt.ZERO)
        if conntrack and p.options & COMPARISON and zero:
            parameter_problem("Can't use -z with filtering parameters")
        networks = network_checks(p)  # first: they take the exact addresses' place
        criteria, covered = self.prefilter(with_status=conntrack)
        match = flow_filter(p, networks, covered)
        if conntrack and p.options & Opt.STATUS and not (t.status or 0) | t.status_clear:
            # conntrack sends a zero status mask, which the kernel refuses
            operation_failed(OSError(errno.EINVAL, ""), Cmd.LIST)
        reset = zero and conntrack
        try:
            if match is None and not p.output & (Output.SAVE | Output.XML):
                # the lines straight from the messages, without Flow objects
                target = self.flow_text("dump").target
                self._write_lines(self.client.dump_as(target, criteria, table=p.table,
                                                      reset_counters=reset))  # fmt: skip
            else:
                flows = self.client.dump(criteria, table=p.table, reset_counters=reset)
                self._write_flows(flows if match is None else filter(match, flows), "dump")
        except NetlinkError as exc:
            operation_failed(exc, Cmd.LIST)
        self._close_xml()

    def get_flow(self) -> None:
        key = template_tuple(self.parsed.tmpl, reply=False)
        if key is None:
            # conntrack cannot build a request without the original tuple's family
            operation_failed(OSError(errno.EINVAL, ""), Cmd.GET)
        try:
            flow = self.client.get(key)
        except NetlinkError as exc:
            operation_failed(exc, Cmd.GET)
        match = flow_filter(self.parsed)
        # conntrack opens an XML document here but never closes it
        self._write_flows([flow] if match is None or match(flow) else [], "dump")

    def delete_flows(self) -> None:
        p = self.parsed
        networks = network_checks(p)
        criteria, covered = self.prefilter(with_status=True)
        match = flow_filter(p, networks, covered)
        client = self.client
        flows: list[Flow] = []
        try:
            # One filtered flush when the kernel selects exactly the flows to delete, else
            # batched deletes; flows gone meanwhile are not counted (conntrack 1.4.7 fails).
            deleted = client.delete_many(criteria, also=match, collect=flows)
        except NetlinkError as exc:
            operation_failed(exc, Cmd.DELETE)
        self._write_flows(flows, "delete")
        self.count = deleted

    def create_flow(self) -> None:
        command = self.parsed.command
        flow = creation_flow(self.parsed)
        if flow.orig is None or flow.orig.family not in (AF_INET, AF_INET6):
            operation_failed(OSError(errno.EINVAL, ""), command)
        try:
            if command is Cmd.ADD:
                self.client.create_or_update(flow)
            else:
                self.client.create(flow)
        except (NetlinkError, EncodeError) as exc:
            code = exc.errno if isinstance(exc, NetlinkError) else errno.EINVAL
            operation_failed(OSError(code, ""), command)
        self.count = 1

    def update_flows(self) -> None:
        p = self.parsed
        match = update_filter(p, network_checks(p))
        client = self.client
        show = self.flow_printer("update")
        try:
            flows = list(client.dump(p.family))
        except NetlinkError as exc:
            operation_failed(exc, Cmd.UPDATE)
        for flow in flows:
            if match is not None and not match(flow):
                continue
            change = update_flow(p, flow)
            if change is None:
                continue
            try:
                client.update(change)
            except NetlinkError as exc:
                # conntrack reports this without its prefix and goes on
                self.err.write(f"Operation failed: {error_text(exc.errno or 0, Cmd.UPDATE)}\n")
            try:
                current = client.get(Flow(flow.orig, zone=flow.zone))
            except NetlinkNotFound:
                continue  # the flow vanished meanwhile
            except NetlinkError as exc:
                operation_failed(exc, Cmd.UPDATE)
            self.out.write(show(current, None) + "\n")
            self.count += 1

    def flush(self) -> None:
        failure = None
        try:
            self.client.flush(family=self.parsed.family or None)
        except NetlinkError as exc:
            failure = exc
        self.err.write(fmt.message("connection tracking table has been emptied."))
        if failure is not None:
            operation_failed(failure, Cmd.FLUSH)

    def count_flows(self) -> None:
        try:
            self.out.write(f"{self.client.count()}\n")
        except NetlinkError as exc:
            # conntrack falls back to /proc, prints what it finds there, then fails
            try:
                with open(PROC_COUNT, encoding="ascii") as f:
                    text = f.read()
            except OSError:
                other_problem(f"Can't open {PROC_COUNT}")
            value, used = c_strtol(text)
            if not used:
                other_problem(f"Can't read {PROC_COUNT}")
            self.out.write(f"{value}\n")
            operation_failed(exc, Cmd.COUNT)

    def stats(self) -> None:
        expectations = self.parsed.command is Cmd.EXP_STATS
        client = self.client
        try:
            rows = client.expectation_stats_per_cpu() if expectations else client.stats_per_cpu()
        except NetlinkError as exc:
            try:
                with open(PROC_STATS, encoding="ascii") as f:
                    lines = fmt.proc_stats_lines(f.read())
            except OSError:
                lines = []
            if not lines:
                other_problem("Can't open /proc interface")
            self.out.write(fmt.join_lines(lines))
            operation_failed(exc, self.parsed.command)
        self.out.write(fmt.join_lines([fmt.cpu_stats_line(row, expectations) for row in rows]))

    # -- expectations -------------------------------------------------------------------

    def list_expectations(self) -> None:
        show = self.expectation_printer()
        try:
            for exp in self.client.expectations(self.parsed.family):
                self.out.write(show(exp, None) + "\n")
                self.count += 1
        except NetlinkError as exc:
            operation_failed(exc, Cmd.EXP_LIST)
        self._close_xml()

    def count_expectations(self) -> None:
        total = 0
        try:
            for _ in self.client.expectations(self.parsed.family):
                total += 1
        except NetlinkError as exc:
            self.out.write(f"{total}\n")  # conntrack prints its count before failing
            operation_failed(exc, Cmd.EXP_COUNT)
        self.out.write(f"{total}\n")

    def _expectation_key(self) -> Tuple:
        key = template_tuple(self.parsed.tmpl, reply=False)
        if key is None:
            operation_failed(OSError(errno.EINVAL, ""), self.parsed.command)
        return key

    def get_expectation(self) -> None:
        key = self._expectation_key()
        try:
            exp = self.client.get_expectation(key)
        except NetlinkError as exc:
            operation_failed(exc, Cmd.EXP_GET)
        self.out.write(self.expectation_printer()(exp, None) + "\n")  # XML left open, as -G
        self.count += 1

    def delete_expectation(self) -> None:
        key = self._expectation_key()
        try:
            self.client.delete_expectation(key)
        except NetlinkError as exc:
            operation_failed(exc, Cmd.EXP_DELETE)
        self.count = 1

    def create_expectation(self) -> None:
        master, expected, mask = expectation_tuples(self.parsed.tmpl)
        exp = Expectation(master, expected, mask, timeout=self.parsed.tmpl.timeout)
        try:
            self.client.create_expectation(exp)
        except (NetlinkError, EncodeError) as exc:
            code = exc.errno if isinstance(exc, NetlinkError) else errno.EINVAL
            operation_failed(OSError(code, ""), Cmd.EXP_CREATE)

    def flush_expectations(self) -> None:
        failure = None
        try:
            self.client.flush_expectations()
        except NetlinkError as exc:
            failure = exc
        self.err.write(fmt.message("expectation table has been emptied."))
        if failure is not None:
            operation_failed(failure, Cmd.EXP_FLUSH)

    # -- events --------------------------------------------------------------------------------

    def events(self) -> None:
        """``-E``: print events until SIGINT or SIGTERM, then the summary; exit 0."""
        p = self.parsed
        flows = p.command is Cmd.EVENT
        mask = EventType(p.event_mask & 7) if p.options & Opt.EVENT_MASK else ALL_EVENTS
        match = flow_filter(p, network_checks(p)) if flows else None
        previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        listener = None
        try:
            if mask:
                try:
                    listener = self.listen(
                        mask if flows else NO_EVENTS,
                        expectations=NO_EVENTS if flows else mask,
                        receive_buffer=p.buffer_size if p.options & Opt.BUFFERSIZE else 0,
                    )
                except OSError as exc:
                    # what conntrack says when joining the groups fails
                    if flows:
                        self.err.write(f"mnl_socket_bind: {os.strerror(exc.errno or 0)}\n")
                        other_problem("Can't open netlink socket")
                    other_problem("Can't open handler")
                if p.options & Opt.BUFFERSIZE:
                    self.err.write("NOTICE: Netlink socket buffer size has been set to "
                                   f"{listener.receive_buffer} bytes.\n")  # fmt: skip
            self._event_loop(listener, match)
        except _Stop:
            pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if listener is not None:
                listener.close()
        self._close_xml()
        self.out.flush()
        what = "flow events" if flows else "expectation events"
        self.err.write(fmt.message(f"{self.count} {what} have been shown."))

    def _event_loop(self, listener: EventListener | None, match: Check | None) -> None:
        if listener is None:  # no group joined (e.g. -e with only ignored keywords)
            while True:
                signal.pause()
        family = self.parsed.family
        show_flow = self.flow_printer("event")
        show_expectation = self.expectation_printer()
        output = self.parsed.output
        stamp = bool(output & Output.TIMESTAMP) and not output & (Output.XML | Output.SAVE)
        origin = not output & (Output.XML | Output.SAVE)
        programs = ProgramNames()
        while True:
            try:
                received = listener.receive()
            except NetlinkError as exc:
                other_problem(f"failed to received netlink event: {os.strerror(exc.errno or 0)}")
            if origin:  # before the requesting processes exit
                for item in received:
                    if isinstance(item, Event) and item.portid and item.flow is not None:
                        programs.name(item.portid)
            lines: list[str] = []
            for item in received:
                if isinstance(item, Overrun):
                    self.out.write("".join(lines))
                    self.out.flush()
                    lines = []
                    self.err.write(ENOBUFS_WARNING)
                    continue
                line = self._event_line(item, family, match, show_flow, show_expectation, stamp)
                if line is None:
                    continue
                if origin and item.portid and item.flow is not None:
                    line += programs.describe(item.portid)
                lines.append(line + "\n")
                self.count += 1
            self.out.write("".join(lines))
            self.out.flush()

    def _event_line(
        self,
        event: Event,
        family: int,
        match: Check | None,
        show_flow: Callable[[Flow, EventType | None], str],
        show_expectation: Callable[[Expectation, EventType | None], str],
        stamp: bool,
    ) -> str | None:
        if event.expectation is not None:
            return show_expectation(event.expectation, event.type)
        flow = event.flow
        if flow is None or (family and flow.family != family):
            return None
        if match is not None and not match(flow):
            return None
        line = show_flow(flow, event.type)
        return fmt.event_time_prefix(time.time_ns()) + line if stamp else line

    # -- help ------------------------------------------------------------------------------

    def version(self) -> None:
        self.out.write(fmt.VERSION_LINE + "\n")

    def usage(self) -> None:
        self.out.write(USAGE.format(version=fmt.VERSION, prog=fmt.PROGNAME))
        p = self.parsed
        if p.command is Cmd.HELP and p.options & Opt.PROTO and p.protocol is not None:
            name = p.protocol.name
            if p.protocol is UNKNOWN_PROTOCOL:
                name = protocol_name(p.protonum) or name
            self.out.write(f"Proto `{name}' help:\n{p.protocol.help}")


# Template fields whose Filter criterion means what conntrack's comparison means.
_FILTER_NAMES = {"orig_family": "family", "orig_proto": "proto", "orig_sport": "sport",
                 "orig_dport": "dport", "icmp_type": "icmp_type", "icmp_code": "icmp_code",
                 "icmp_id": "icmp_id", "orig_src": "src", "orig_dst": "dst",
                 "reply_src": "reply_src", "reply_dst": "reply_dst"}  # fmt: skip


def _exact_tuple_criteria(t: Template, addresses: bool) -> dict[str, object]:
    """The template's tuple fields that become Filter criteria (by template field name).

    Reply ports stay with conntrack's own check (it also compares the reply
    protocol). ``addresses``: include the addresses (a kernel filter on IPv6
    addresses returns no entries at all on Linux 6.18, so they are matched
    in Python).
    """
    fields: list[str] = ["orig_family"]
    proto = t.orig_proto
    if proto is not None:
        fields.append("orig_proto")
        if proto in fmt.PORT_PROTOCOLS:
            fields += ["orig_sport", "orig_dport"]
        elif proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
            fields += ["icmp_type", "icmp_code", "icmp_id"]
    if addresses:
        fields += ["orig_src", "orig_dst", "reply_src", "reply_dst"]
    values = {name: getattr(t, name) for name in fields}
    return {name: value for name, value in values.items() if value is not None}


class ProgramNames:
    """The `` [USERSPACE] portid=N progname=NAME`` of events caused by a process.

    As conntrack: the socket's inode from /proc/net/netlink, then the process
    holding it (first the pid equal to the port id, then every process).
    """

    def __init__(self) -> None:
        self._last: tuple[int, int, str | None] | None = None

    def describe(self, portid: int) -> str:
        name = self.name(portid)
        return f" [USERSPACE] portid={portid}" + (f" progname={name}" if name else "")

    def name(self, portid: int) -> str | None:
        inode = _netlink_inode(portid)
        if inode is None:
            return None
        if self._last is not None and self._last[:2] == (portid, inode):
            return self._last[2]
        name = _program_of(portid, inode)
        if name is None:
            # The newest processes first: the requester is usually a short-lived command
            # that is about to exit (conntrack -I, -D, -U).
            pids = sorted((int(e) for e in os.listdir("/proc") if e.isdigit()), reverse=True)
            for pid in pids:
                if pid > 1 and pid != portid:
                    name = _program_of(pid, inode)
                    if name is not None:
                        break
        self._last = (portid, inode, name)
        return name


def _netlink_inode(portid: int) -> int | None:
    try:
        with open("/proc/net/netlink", encoding="ascii") as f:
            rows = f.read().split("\n")[1:]
    except OSError:
        return None
    for row in rows:
        fields = row.split()
        netfilter = fields[1:2] == [str(NETLINK_NETFILTER)]
        if len(fields) >= 10 and netfilter and fields[2] == str(portid):
            return int(fields[9])
    return None


def _program_of(pid: int, inode: int) -> str | None:
    wanted = f"socket:[{inode}]"
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == wanted:
                    with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
                        stat = f.read()
                    start = stat.find("(")
                    end = stat.find(")", start + 1)
                    return stat[start + 1 : end] if start >= 0 and end > start + 1 else None
            except OSError:
                continue
    except OSError:
        return None
    return None


# -- --load-file ----------------------------------------------------------------------------

#: Commands ``-R`` runs; the others are refused after the whole file was parsed.
_FILE_COMMANDS = (Cmd.CREATE, Cmd.ADD, Cmd.UPDATE, Cmd.DELETE, Cmd.FLUSH)
_FILE_COMMAND_NAMES = {
    Cmd.LIST: "-L", Cmd.GET: "-G", Cmd.EVENT: "-E", Cmd.VERSION: "-V", Cmd.HELP: "-h",
    Cmd.EXP_LIST: "-L expect", Cmd.EXP_CREATE: "-C expect", Cmd.EXP_DELETE: "-D expect",
    Cmd.EXP_GET: "-G expect", Cmd.EXP_FLUSH: "-F expect", Cmd.EXP_EVENT: "-E expect",
    Cmd.COUNT: "-C", Cmd.EXP_COUNT: "-C expect", Cmd.STATS: "-S", Cmd.EXP_STATS: "-S expect",
}  # fmt: skip
_MAX_ARGUMENTS = 255
_MAX_PARAMETER = 1024
_LINE_BUFFER = 10240


def split_line(line: str) -> list[str]:
    """Words of a ``-R`` line as conntrack splits them (iptables-restore's rules).

    Blanks separate words; double quotes group, and inside quotes a
    backslash takes the next character literally.
    """
    words: list[str] = []
    word: list[str] = []
    quoted = escaped = False
    for char in line:
        if quoted:
            if escaped:
                word.append(char)
                escaped = False
                continue
            if char == "\\":
                escaped = True
                continue
            if char != '"':
                word.append(char)
                continue
            quoted = False
        elif char == '"':
            quoted = True
            continue
        if char in " \t\n":
            if not word:
                continue
        elif char != '"':
            word.append(char)
            if len(word) >= _MAX_PARAMETER:
                parameter_problem("Parameter too long!")
            continue
        words.append("".join(word))
        word = []
    if word:
        words.append("".join(word))
    if len(words) + 1 >= _MAX_ARGUMENTS:
        parameter_problem("too many arguments")
    return words


def _file_lines(path: str) -> Iterator[str]:
    """The file's lines as conntrack's ``fgets`` into a 10 KiB buffer reads them."""
    name = "/dev/stdin" if path == "-" else path
    try:
        with open(name, encoding="utf-8", errors="surrogateescape", newline="") as f:
            text = f.read()
    except OSError:
        parameter_problem(f"Failed to open file {name} for reading")
    for line in text.splitlines(keepends=True):
        while len(line) > _LINE_BUFFER - 1:
            yield line[: _LINE_BUFFER - 1]
            line = line[_LINE_BUFFER - 1 :]
        yield line


def load_file(path: str, parser: Parser, make_runner: Callable[[Parsed], Runner]) -> int:
    """``conntrack -R FILE``: parse every line first, then run them in order.

    Only -I, -A, -U, -D and -F are allowed; the first failing command ends
    the run (exit 1). No summary lines are printed.
    """
    commands = []
    for raw in _file_lines(path):
        line = raw.lstrip(" \t")
        if line.startswith(("\n", "#")):
            continue
        commands.append(parser.parse([fmt.PROGNAME, *split_line(line)]))
    for parsed in commands:
        if parsed.command not in _FILE_COMMANDS:
            name = _FILE_COMMAND_NAMES.get(parsed.command, "unknown")  # type: ignore[arg-type]
            parameter_problem(f"Cannot use command `{name}' with --load-file")
    for parsed in commands:
        runner = make_runner(parsed)
        try:
            runner.run()
        finally:
            runner.close()
    return 0


# -- entry point ------------------------------------------------------------------------------


def main(
    argv: Sequence[str] | None = None,
    *,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
    connect: Callable[[], Conntrack] = Conntrack,
    labels_path: str = fmt.CONNLABEL_CONF,
) -> int:
    """``nfkit conntrack ARGS``: run conntrack's command line; the exit status."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    args = [fmt.PROGNAME, *(sys.argv[1:] if argv is None else argv)]
    parser = Parser(labels_path, err)

    def make_runner(parsed: Parsed) -> Runner:
        return Runner(parsed, out, err, connect)

    runner = None
    # A command lives for one table's worth of objects without reference cycles: the
    # cyclic collector would only rescan them (a third of a 100k-flow -D). -E runs for
    # long and keeps it.
    collecting = gc.isenabled()
    try:
        if len(args) > 2 and args[1] in ("-R", "--load-file"):
            gc.disable()
            return load_file(args[2], parser, make_runner)
        runner = make_runner(parser.parse(args))
        if runner.parsed.command not in (Cmd.EVENT, Cmd.EXP_EVENT):
            gc.disable()
        runner.run()
        out.flush()
        return runner.summary()
    except CommandFailed as exc:
        out.flush()
        err.write(exc.text())
        return exc.status
    except KeyboardInterrupt:
        return 128 + signal.SIGINT  # conntrack dies of SIGINT outside -E, silently
    except BrokenPipeError:
        # conntrack dies of SIGPIPE when its reader goes away (e.g. "| head")
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (replaces the broken stream)
        return 128 + signal.SIGPIPE
    finally:
        if runner is not None:
            runner.close()
        if collecting:
            gc.enable()
