"""The one verdict type: an action plus keyword options.

go-nfqueue grew seven ``SetVerdictWithXxx`` methods before it settled on
options and had to deprecate them; here every option exists from the start::

    Verdict.accept()                                  # or the constant ACCEPT
    Verdict.drop()                                    # DROP
    Verdict.accept(mark=0x10, mark_mask=0xF0)         # set bits 4-7 of the packet mark
    Verdict.repeat(mark=1, mark_mask=1)               # run the hook again, marked
    Verdict.to_queue(3, bypass=True)                  # hand over to queue 3
    Verdict.accept(ct_mark=7, labels=bytes(16))       # change the connection
    Verdict.accept(payload=new_packet)                # replace the packet (see mangle)

Verdicts are immutable and hashable; ``ACCEPT.with_mark(1, 1)`` and
:meth:`Verdict.replace` derive new ones.
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass, field
from typing import Any

from nfkit.conntrack import const as ct
from nfkit.netlink.codec import (
    NLM_F_REQUEST,
    NLMSGHDR,
    attr,
    attr_be32,
    attr_nested,
    nfgenmsg,
)
from nfkit.netlink.errors import EncodeError
from nfkit.nfqueue.const import (
    ATTR_CT,
    ATTR_MARK,
    ATTR_PAYLOAD,
    ATTR_PRIORITY,
    ATTR_VERDICT_HDR,
    MSG_VERDICT,
    QUEUE_BYPASS,
    Action,
)

U32 = 0xFFFFFFFF
_VERDICT_HDR = struct.Struct("!II")


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with a queued packet, and what to change on the way.

    Attributes:
        action: accept, drop, repeat (run the same hook again), queue (to
            ``queue_num``) or stop (accept, skipping later hook functions).
        queue_num, bypass: the target of a QUEUE verdict; ``bypass`` accepts
            the packet when nobody listens there (else the kernel drops it).
        mark, mark_mask: set the bits of ``mask`` in the packet mark to those
            of ``mark`` (the other bits keep the packet's value).
        priority: set skb->priority.
        ct_mark, ct_mark_mask: the same for the connection's mark.
        labels, labels_mask: set connection labels (a multiple of 4 bytes,
            usually 16; the mask has the same length). The kernel needs a
            ``connlabel`` rule somewhere to give connections labels at all.
        payload: the new packet, from its network header; fix its lengths
            and checksums first (:mod:`nfkit.nfqueue.mangle`).
    """

    action: Action = Action.ACCEPT
    queue_num: int = 0
    bypass: bool = False
    mark: int | None = None
    mark_mask: int = U32
    priority: int | None = None
    ct_mark: int | None = None
    ct_mark_mask: int = U32
    labels: bytes | None = None
    labels_mask: bytes | None = None
    payload: bytes | None = None
    #: The kernel's verdict number (action, target queue, bypass flag).
    code: int = field(init=False, repr=False, compare=False)
    #: Whether it changes only the packet mark and priority (VERDICT_BATCH can carry it).
    simple: bool = field(init=False, repr=False, compare=False)
    #: Whether it is the action alone (the shortest VERDICT message).
    plain: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        action = Action(self.action)
        _check_u32("mark", self.mark)
        _check_u32("mark_mask", self.mark_mask)
        _check_u32("priority", self.priority)
        _check_u32("ct_mark", self.ct_mark)
        _check_u32("ct_mark_mask", self.ct_mark_mask)
        if not 0 <= self.queue_num <= 0xFFFF:
            raise EncodeError(f"queue_num must be within 0..65535, not {self.queue_num}")
        if action is not Action.QUEUE and (self.queue_num or self.bypass):
            raise EncodeError("queue_num and bypass belong to a QUEUE verdict (Verdict.to_queue)")
        if self.labels is not None and (not self.labels or len(self.labels) % 4):
            raise EncodeError(f"labels must be a multiple of 4 bytes, not {len(self.labels)}")
        if self.labels_mask is not None and len(self.labels_mask) != len(self.labels or b""):
            raise EncodeError("labels_mask must have the length of labels")
        if self.payload is not None and not 0 < len(self.payload) <= 0xFFFF - 4:
            raise EncodeError(f"a payload of {len(self.payload)} bytes does not fit a verdict")
        code = action | (self.queue_num << 16) | (QUEUE_BYPASS if self.bypass else 0)
        simple = self.payload is None and self.ct_mark is None and self.labels is None
        object.__setattr__(self, "action", action)
        object.__setattr__(self, "code", code)
        object.__setattr__(self, "simple", simple)
        object.__setattr__(self, "plain", simple and self.mark is None and self.priority is None)

    # -- constructors ------------------------------------------------------------------

    @classmethod
    def accept(cls, **options: Any) -> Verdict:
        """Let the packet go on to the next hook function."""
        return cls(Action.ACCEPT, **options)

    @classmethod
    def drop(cls, **options: Any) -> Verdict:
        return cls(Action.DROP, **options)

    @classmethod
    def repeat(cls, **options: Any) -> Verdict:
        """Run the same hook function (table or base chain) again; set a mark to skip the queue."""
        return cls(Action.REPEAT, **options)

    @classmethod
    def stop(cls, **options: Any) -> Verdict:
        """Accept and skip the remaining hook functions of this hook."""
        return cls(Action.STOP, **options)

    @classmethod
    def to_queue(cls, queue_num: int, bypass: bool = False, **options: Any) -> Verdict:
        """Hand the packet to queue ``queue_num`` (chaining programs)."""
        return cls(Action.QUEUE, queue_num=queue_num, bypass=bypass, **options)

    # -- derived verdicts --------------------------------------------------------------

    def replace(self, **changes: Any) -> Verdict:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def with_mark(self, mark: int, mask: int = U32) -> Verdict:
        """This verdict, then also the bits of ``mask`` in the packet mark set from ``mark``."""
        if self.mark is None:
            return self.replace(mark=mark & mask, mark_mask=mask)
        merged = (self.mark & self.mark_mask & ~mask) | (mark & mask)
        return self.replace(mark=merged, mark_mask=self.mark_mask | mask)

    def mark_for(self, old: int) -> int | None:
        """The packet mark after this verdict for a packet marked ``old`` (None: unchanged)."""
        mark = self.mark
        if mark is None:
            return None
        mask = self.mark_mask
        if mask == U32:
            return mark
        return (old & ~mask) | (mark & mask)

    def __str__(self) -> str:
        name = self.action.name.lower()
        if self.action is Action.QUEUE:
            name += f" {self.queue_num}" + (" bypass" if self.bypass else "")
        return name


def _check_u32(name: str, value: int | None) -> None:
    if value is not None and not 0 <= value <= U32:
        raise EncodeError(f"{name} must be within 0..0xFFFFFFFF, not {value}")


ACCEPT = Verdict.accept()
DROP = Verdict.drop()
REPEAT = Verdict.repeat()
STOP = Verdict.stop()


def encode_verdict(
    verdict: Verdict, prefix: bytes, packet_id: int, mark: int | None, with_ct: bool = True
) -> bytes:
    """The VERDICT message for packet ``packet_id``; ``mark`` is the final packet mark.

    ``prefix`` is the nfgenmsg of the queue; ``with_ct=False`` leaves the
    connection changes out. The message's sequence number is the packet id,
    so an error the kernel sends back names the packet.
    """
    parts = [prefix, attr(ATTR_VERDICT_HDR, _VERDICT_HDR.pack(verdict.code, packet_id))]
    if mark is not None:
        parts.append(attr_be32(ATTR_MARK, mark))
    if verdict.priority is not None:
        parts.append(attr_be32(ATTR_PRIORITY, verdict.priority))
    if with_ct and (verdict.ct_mark is not None or verdict.labels is not None):
        parts.append(attr_nested(ATTR_CT, conntrack_changes(verdict)))
    if verdict.payload is not None:
        parts.append(attr(ATTR_PAYLOAD, verdict.payload))
    body = b"".join(parts)
    return NLMSGHDR.pack(16 + len(body), MSG_VERDICT, NLM_F_REQUEST, packet_id, 0) + body


def conntrack_changes(verdict: Verdict) -> list[bytes]:
    """The CTA_* attributes of the verdict's connection changes.

    The kernel computes ``(old & ~mask) ^ mark``, so the mark is sent masked.
    """
    parts = []
    if verdict.ct_mark is not None:
        parts.append(attr_be32(ct.CTA_MARK, verdict.ct_mark & verdict.ct_mark_mask))
        if verdict.ct_mark_mask != U32:
            parts.append(attr_be32(ct.CTA_MARK_MASK, verdict.ct_mark_mask))
    if verdict.labels is not None:
        parts.append(attr(ct.CTA_LABELS, verdict.labels))
        if verdict.labels_mask is not None:
            parts.append(attr(ct.CTA_LABELS_MASK, verdict.labels_mask))
    return parts


def queue_prefix(queue_num: int) -> bytes:
    """The nfgenmsg header of every message about queue ``queue_num``."""
    return nfgenmsg(0, queue_num)
