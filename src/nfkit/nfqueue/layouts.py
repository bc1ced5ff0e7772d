"""Where the attributes of a queue's packet messages are, learned once per layout.

The packets of one queue mostly carry the same attributes with the same
sizes (one rule, one hook, the same devices): only the values and the
payload's length differ. The first message of a layout is walked; a later
one is proved to have the same attribute headers at the same offsets, the
payload's last, with one masked compare of its bytes (read as one
little-endian integer), which costs a fraction of a walk. A compare proves
the layout: the headers alone decide where a walk goes.
"""

from __future__ import annotations

import struct

from nfkit.netlink.codec import attr_spans, iter_attrs
from nfkit.nfqueue.const import ATTR_PAYLOAD

#: Where the attributes after NFQA_PACKET_HDR begin (nlmsghdr, nfgenmsg, PACKET_HDR).
ATTRS_AT = 32
_U16 = struct.Struct("=H")
Spans = dict[int, tuple[int, int]]


class _Layout:
    __slots__ = ("fixed", "mask", "payload_at", "spans")

    def __init__(self, mask: int, fixed: int, payload_at: int, spans: Spans) -> None:
        self.mask = mask
        self.fixed = fixed
        self.payload_at = payload_at
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
        total = len(data)
        for layout in self._recent:
            at = layout.payload_at
            if at + 4 > total:
                continue
            if int.from_bytes(data[ATTRS_AT : at + 4], "little") & layout.mask != layout.fixed:
                continue
            (length,) = _U16.unpack_from(data, at)
            end = at + length
            # The payload fits, and no attribute follows it (at most padding).
            if at + 4 <= end <= total < at + ((length + 3) & ~3) + 4:
                spans = dict(layout.spans)
                spans[ATTR_PAYLOAD] = (at + 4, end)
                return spans
        spans = attr_spans(data, ATTRS_AT, total)
        learned = _learn(data, spans)
        if learned is not None:
            self._recent = (learned, *self._recent[: self.keep - 1])
        return spans


def _learn(data: bytes, spans: Spans) -> _Layout | None:
    """The layout of ``data``, or None (no payload last, or an attribute type repeated)."""
    payload = spans.get(ATTR_PAYLOAD)
    headers = [start - 4 for _type, start, _end in iter_attrs(data, ATTRS_AT, len(data))]
    if payload is None or len(headers) != len(spans) or headers[-1] != payload[0] - 4:
        return None
    payload_at = headers[-1]
    mask = bytearray(payload_at + 4 - ATTRS_AT)
    for at in headers:
        mask[at - ATTRS_AT : at - ATTRS_AT + 4] = b"\xff\xff\xff\xff"
    mask[payload_at - ATTRS_AT : payload_at - ATTRS_AT + 2] = b"\0\0"  # its length varies
    mask_value = int.from_bytes(mask, "little")
    fixed = int.from_bytes(data[ATTRS_AT : payload_at + 4], "little") & mask_value
    known = {atype: span for atype, span in spans.items() if atype != ATTR_PAYLOAD}
    return _Layout(mask_value, fixed, payload_at, known)
