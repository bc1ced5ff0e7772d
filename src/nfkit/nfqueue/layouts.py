"""Where the attributes of a queue's packet messages are, learned once per layout.

The packets of one queue mostly carry the same attributes with the same
sizes (one rule, one hook, the same devices): only the values and the
payload's length differ. The first message of a layout is walked; a later
one is proved to have the same attribute headers at the same offsets, the
payload's last: one ``struct`` read of the attribute headers (compiled per
layout) and one compare, which cost a fraction of a walk. The compare proves
the layout: the headers alone decide where a walk goes.
"""

from __future__ import annotations

import functools
import operator
import struct
import sys
from collections.abc import Callable
from itertools import repeat

from nfkit.netlink.codec import attr_spans, iter_attrs
from nfkit.nfqueue.burst import Reader
from nfkit.nfqueue.const import ATTR_PAYLOAD

#: Where the attributes after NFQA_PACKET_HDR begin (nlmsghdr, nfgenmsg, PACKET_HDR).
ATTRS_AT = 32
Spans = dict[int, tuple[int, int]]


class _Layout:
    __slots__ = ("headers", "offsets", "payload_at", "payload_type", "read", "spans")

    def __init__(
        self,
        read: Callable[[bytes, int], tuple[int, ...]],
        offsets: list[int],
        headers: tuple[int, ...],
        payload_at: int,
        payload_type: int,
        spans: Spans,
    ) -> None:
        #: Reads the header of each attribute before the payload (as one 32-bit word),
        #: then the payload's length and type.
        self.read = read
        #: Where those headers are, and what they hold.
        self.offsets = offsets
        self.headers = headers
        self.payload_at = payload_at
        self.payload_type = payload_type
        self.spans = spans


class AttributeLayouts:
    """The few most recent layouts of one queue's messages (safe to share between threads)."""

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self._recent: tuple[_Layout, ...] = ()

    def spans(self, data: bytes) -> Spans:
        """Attribute type -> ``(start, end)`` of its payload in ``data``, as :func:`attr_spans`.

        Raises:
            TruncatedError: an attribute length is inconsistent.
        """
        matched = self._match(data)
        if matched is not None:
            layout, end = matched
            spans = dict(layout.spans)
            spans[ATTR_PAYLOAD] = (layout.payload_at + 4, end)
            return spans
        spans = attr_spans(data, ATTRS_AT, len(data))
        learned = _learn(data, spans)
        if learned is not None:
            self._recent = (learned, *self._recent[: self.keep - 1])
        return spans

    def payload(self, data: bytes) -> tuple[int, int] | None:
        """``(start, end)`` of the payload if ``data`` has a known layout (None: unknown)."""
        matched = self._match(data)
        if matched is None:
            return None
        layout, end = matched
        return layout.payload_at + 4, end

    def payload_of_burst(self, reader: Reader, lengths: list[int]) -> int:
        """Where the payload starts in every datagram ``reader`` read last, if each is a
        packet message of the most recent layout with its payload unpadded (as the kernel
        writes them); else 0. C loops over the burst, one per attribute."""
        if not self._recent:
            return 0
        layout = self._recent[0]
        count = len(lengths)
        for offset, header in zip(layout.offsets, layout.headers, strict=True):
            if reader.words(offset).count(header) != count:
                return 0
        at = layout.payload_at
        if reader.words(at) != _payload_headers(lengths, at, layout.payload_type):
            return 0
        return at + 4

    def _match(self, data: bytes) -> tuple[_Layout, int] | None:
        """The known layout of ``data`` and where its payload ends, or None."""
        total = len(data)
        for layout in self._recent:
            at = layout.payload_at
            if at + 4 > total:
                continue
            fields = layout.read(data, ATTRS_AT)
            if fields[-1] != layout.payload_type or fields[:-2] != layout.headers:
                continue
            length = fields[-2]
            end = at + length
            # The payload fits, and no attribute follows it (at most padding).
            if at + 4 <= end <= total < at + ((length + 3) & ~3) + 4:
                return layout, end
        return None


def _learn(data: bytes, spans: Spans) -> _Layout | None:
    """The layout of ``data``, or None (no payload last, or an attribute type repeated)."""
    payload = spans.get(ATTR_PAYLOAD)
    headers = [start - 4 for _type, start, _end in iter_attrs(data, ATTRS_AT, len(data))]
    if payload is None or len(headers) != len(spans) or headers[-1] != payload[0] - 4:
        return None
    payload_at = headers[-1]
    layout = ["="]
    read_to = ATTRS_AT
    for at in headers[:-1]:
        layout.append(f"{at - read_to}xI")
        read_to = at + 4
    layout.append(f"{payload_at - read_to}xHH")
    read = _reader("".join(layout))
    *words, _length, payload_type = read(data, ATTRS_AT)
    known = {atype: span for atype, span in spans.items() if atype != ATTR_PAYLOAD}
    return _Layout(read, headers[:-1], tuple(words), payload_at, payload_type, known)


@functools.lru_cache(maxsize=64)
def _reader(layout: str) -> Callable[[bytes, int], tuple[int, ...]]:
    return struct.Struct(layout).unpack_from


def _payload_headers(lengths: list[int], at: int, payload_type: int) -> list[int]:
    """The 32-bit header of an unpadded payload attribute at ``at`` of messages of
    ``lengths`` (nla_len, then nla_type, in host order)."""
    sizes = map(operator.sub, lengths, repeat(at))
    if sys.byteorder == "little":
        return list(map(operator.or_, sizes, repeat(payload_type << 16)))
    return list(map(operator.or_, map(operator.lshift, sizes, repeat(16)), repeat(payload_type)))
