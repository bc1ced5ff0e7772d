"""XML: packets, flows and accounting objects as XML documents.

Each record is the XML the netfilter libraries produce for ulogd2:
libnetfilter_log's ``nflog_snprintf_xml`` (every flag) for a packet (``raw``),
libnetfilter_conntrack's ``nfct_snprintf`` (XML, message type 0, flags
SHOW_LAYER3|ID|TIME) for a flow (``ct``) and libnetfilter_acct's
``nfacct_snprintf`` (XML, with time) for an accounting object (``sum``); an
event holding several gets them in that order on one line.

A file is one document: ``<?xml ...?>``, the root element named after the
stack's input (``<conntrack>``, ``<packet>`` or ``<sum>``), the records, and
the closing tag written on SIGHUP (which starts the next file) and on exit.
Unlike ulogd2, a document is well-formed whatever happens: records have no
size limit (ulogd2 drops those beyond 4096 bytes), text is escaped, a file
name already taken (two opens within one second) gets a ``-N`` suffix
instead of a second document appended to it, and a packet's ``<when>`` is
the kernel's timestamp when the packet has one (ulogd2 prints the time it
formats the record, up to the kernel's 1 s batching later).
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Sequence

from nfkit.cli.ctformat import flow_xml, xml_when
from nfkit.conntrack.codec import decode_flow
from nfkit.conntrack.const import CTA_ID
from nfkit.conntrack.model import Flow
from nfkit.logd.errors import ConfigError, StartError
from nfkit.logd.files import FLUSH_INTERVAL, OutputFile
from nfkit.logd.keys import Event, KeyType, keys
from nfkit.logd.plugin import ERROR, BatchPlugin, DataType, Option, Plugin, Role, without
from nfkit.logd.registry import register
from nfkit.netlink.codec import attr_spans, nfgenmsg
from nfkit.netlink.errors import DecodeError
from nfkit.nfacct import Accounting
from nfkit.nflog import LogPacket

#: (input data type, file name infix, root element), in ulogd2's order of preference.
DOCUMENT_KINDS = (
    (DataType.FLOW, "flow", "conntrack"),
    (DataType.RAW, "pkt", "packet"),
    (DataType.SUM, "sum", "sum"),
)
DECLARATION = '<?xml version="1.0" encoding="utf-8"?>\n'
#: Files of one kind opened within one second: ``name.xml``, ``name-2.xml``, ...
MAX_NAMES_PER_SECOND = 1000

# Characters XML 1.0 cannot hold at all (C0 controls, lone surrogates from
# undecodable bytes, U+FFFE/U+FFFF) become U+FFFD.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_MARKUP = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
_ESCAPED: dict[str, str] = {}


def xml_text(text: str) -> str:
    """``text`` as XML character data; the few distinct prefixes are cached."""
    escaped = _ESCAPED.get(text)
    if escaped is None:
        escaped = _NOT_XML.sub("\ufffd", text).translate(_MARKUP)
        if len(_ESCAPED) < 4096:
            _ESCAPED[text] = escaped
    return escaped


class Clock:
    """``<when>`` of the last second asked for (the records of a batch share it).

    ``fields`` is the same without the ``<when>`` wrapper (nfacct's form).
    """

    def __init__(self) -> None:
        self.second = -1
        self.when = self.fields = ""

    def __call__(self, seconds: int) -> Clock:
        if seconds != self.second:
            self.second = seconds
            self.when = xml_when(seconds)
            self.fields = self.when[len("<when>") : -len("</when>")]
        return self


def conntrack_id(ct: bytes) -> int | None:
    """``CTA_ID`` of the conntrack attribute NFLOG attached to a packet."""
    try:
        span = attr_spans(ct, 0, len(ct)).get(CTA_ID)
    except DecodeError:
        return None
    if span is None or span[1] - span[0] < 4:
        return None
    return int.from_bytes(ct[span[0] : span[0] + 4], "big")


def packet_xml(packet: LogPacket, when: str) -> str:
    """``nflog_snprintf_xml(NFLOG_XML_ALL)``; ``when``: the ``<when>`` element."""
    parts = ["<log>", when]
    if packet.prefix is not None:
        parts += ("<prefix>", xml_text(packet.prefix), "</prefix>")
    if packet.hook is not None:  # the packet header attribute
        parts.append(f"<hook>{packet.hook}</hook><hw><proto>{packet.hw_protocol:04x}</proto>")
        if packet.hwaddr is not None:
            parts += ("<src>", packet.hwaddr.hex(), "</src>")
        parts.append("</hw>")
    for tag, value in (
        ("mark", packet.mark),
        ("indev", packet.indev),
        ("outdev", packet.outdev),
        ("physindev", packet.physindev),
        ("physoutdev", packet.physoutdev),
    ):
        if value:
            parts.append(f"<{tag}>{value}</{tag}>")
    if packet.ct is not None:
        ctid = conntrack_id(packet.ct)
        if ctid is not None:
            parts.append(f"<ctid>{ctid}</ctid>")
    if packet.payload is not None:
        parts += ("<payload>", packet.payload.hex(), "</payload>")
    parts.append("</log>")
    return "".join(parts)


def sum_xml(name: str, packets: int, octets: int, when: str) -> str:
    """``nfacct_snprintf(NFACCT_SNPRINTF_T_XML, NFACCT_SNPRINTF_F_TIME)``; ``when``: the
    ``<hour>``...``<year>`` elements, without ``<when>``."""
    return (
        f"<obj><name>{xml_text(name)}</name><pkts>{packets:020d}</pkts>"
        f"<bytes>{octets:020d}</bytes>{when}</obj>"
    )


class StandardOutput(OutputFile):
    """Standard output (``stdout=1``) behind the :class:`OutputFile` interface.

    A duplicate of the descriptor is written to, so closing it leaves the
    process's own stdout alone.
    """

    def __init__(self, sync: bool) -> None:
        super().__init__("<stdout>", sync=sync)

    def open(self) -> None:
        self.file = os.fdopen(
            os.dup(sys.stdout.fileno()), "w", encoding="utf-8", errors="surrogateescape"
        )


def fresh_path(directory: str, infix: str, seconds: float) -> str:
    """``directory/ulogd-<infix>-DDMMYYYY-HHMMSS.xml``, or ``...-N.xml`` if that exists."""
    stamp = time.strftime("%d%m%Y-%H%M%S", time.localtime(seconds))
    base = os.path.join(directory, f"ulogd-{infix}-{stamp}")
    for number in range(1, MAX_NAMES_PER_SECOND + 1):
        path = f"{base}.xml" if number == 1 else f"{base}-{number}.xml"
        if not os.path.lexists(path):
            return path
    raise StartError(f"{MAX_NAMES_PER_SECOND} XML files named {base}*.xml exist already")


@register
class XML(BatchPlugin):
    name = "XML"
    summary = "write packets, flows and nfacct counters as XML documents"
    role = Role.OUTPUT
    input_type = DataType.FLOW | DataType.SUM | DataType.RAW
    output_type = DataType.SINK
    options = (
        Option("directory", str, "/var/log/"),
        Option("sync", int, 0),
        Option("stdout", int, 0),
    )
    input_keys = keys(
        ("ct", KeyType.RAW, "optional"),
        ("raw", KeyType.RAW, "optional"),
        ("sum", KeyType.RAW, "optional"),
    )

    out: OutputFile | None = None
    _timer = None

    def configure(self, upstream: Sequence[Plugin]) -> None:
        source = upstream[0]
        kind = next((k for k in DOCUMENT_KINDS if source.output_type & k[0]), None)
        provided = {key.name for plugin in upstream for key in plugin.output_keys}
        dynamic = any(plugin.dynamic_outputs for plugin in upstream)
        if kind is None or not (dynamic or provided & {"ct", "raw", "sum"}):
            raise ConfigError(
                f"{self.id}:XML has nothing to write: {source.id}:{source.name} provides "
                "no packet ('raw'), flow ('ct') or accounting object ('sum')",
                fix="put XML in a stack that starts with NFLOG, NFCT, NFACCT or PCAPREPLAY",
            )
        _, self.infix, self.root = kind

    def start(self) -> None:
        self.clock = Clock()  # now
        self.packet_clock = Clock()  # kernel timestamps
        self.undecodable = 0
        self.out = self._open_document()
        if not self.settings["sync"] and self.context.loop is not None:
            self._timer = self.context.loop.call_every(FLUSH_INTERVAL, self._flush)

    def _open_document(self) -> OutputFile:
        """A new output (file or stdout) with the declaration and root start tag written."""
        sync = bool(self.settings["sync"])
        if self.settings["stdout"]:
            out: OutputFile = StandardOutput(sync)
            out.open()
        else:
            try:
                out = OutputFile(fresh_path(self.settings["directory"], self.infix, time.time()),
                                 sync=sync)  # fmt: skip
                out.open()
            except StartError as exc:
                raise StartError(
                    exc.what,
                    self.settings.where("directory"),
                    "create the directory, let the daemon write there, or set directory= "
                    "to another one",
                ) from None
        out.write(f"{DECLARATION}<{self.root}>\n")
        return out

    def _close_document(self, out: OutputFile) -> None:
        out.write(f"</{self.root}>\n")
        out.close()

    def _flush(self) -> None:
        if self.out is not None:
            self.out.flush()

    def interp_batch(self, events: list[Event], finish: Callable[[int], None]) -> list[Event]:
        records: list[str] = []
        failed: list[Event] = []
        now = int(time.time())
        for event in events:
            record = self.record(event, now)
            if record:
                records.append(record)
            else:
                finish(ERROR)
                failed.append(event)
        if records and self.out is not None:
            self.out.write("".join(records))
        return without(events, failed)

    def record(self, event: Event, now: int) -> str:
        """One line: the packet, flow and accounting XML the event holds ("" for none)."""
        parts = []
        packet = event.get("raw")
        if isinstance(packet, LogPacket):
            stamp = packet.timestamp
            clock = self.packet_clock(stamp[0]) if stamp and stamp[0] else self.clock(now)
            parts.append(packet_xml(packet, clock.when))
        else:
            packet = None
        flow = event.get("ct")
        if isinstance(flow, bytes):  # NFLOG's attach_conntrack: the nested attributes
            flow = self._decode_attached(flow, packet)
        if isinstance(flow, Flow):
            parts.append(flow_xml(flow, when=True, now=now))
        acct = event.get("sum")
        if isinstance(acct, Accounting):
            parts.append(sum_xml(acct.name, acct.packets, acct.bytes, self.clock(now).fields))
        if not parts:
            return ""
        parts.append("\n")
        return "".join(parts)

    def _decode_attached(self, ct: bytes, packet: LogPacket | None) -> Flow | None:
        if packet is None:
            return None
        try:
            return decode_flow(nfgenmsg(packet.family) + ct)
        except ValueError as exc:  # DecodeError, or a value no enum knows
            self.undecodable += 1
            self.log.debug("%s: undecodable conntrack attached to a packet: %s", self, exc)
            return None

    def reopen(self) -> None:
        """SIGHUP: close this document and start a new file (stdout stays as it is)."""
        if self.out is None or self.settings["stdout"]:
            return
        try:
            new = self._open_document()
        except StartError as exc:
            self.log.error("%s: keeping %s: %s", self, self.out.path, exc)
            return
        self.log.info("%s: %s closed, now writing %s", self, self.out.path, new.path)
        self._close_document(self.out)
        self.out = new

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.out is not None:
            self._close_document(self.out)
            self.out = None
