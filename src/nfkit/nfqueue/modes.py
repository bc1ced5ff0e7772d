"""What "accept" means: Suricata's NFQ modes.

* plain accept (no mode): the packet goes on to the next hook function;
* :class:`RepeatMode`: the hook runs again with a mark bit set, so the rule
  ``-m mark ! --mark 0x1/0x1 -j NFQUEUE`` lets it through the rest of the
  ruleset (an IPS in the middle of a chain); packets that already carry the
  mark are accepted without asking anyone;
* :class:`RouteMode`: the packet goes on to another queue (the next program
  of a chain).

A queue asks :meth:`Mode.prejudge` about each packet it receives (a packet
it answers so is never handed out) and applies :meth:`Mode.accepted` to
every ACCEPT verdict given to it.
"""

from __future__ import annotations

from typing import Protocol

from nfkit.nfqueue.const import Action
from nfkit.nfqueue.packet import QueuedPacket
from nfkit.nfqueue.verdict import ACCEPT, U32, Verdict


class Mode(Protocol):
    def prejudge(self, packet: QueuedPacket) -> Verdict | None:
        """A verdict to give at once, as it is (the packet is not handed out), or None."""
        ...

    def accepted(self, verdict: Verdict) -> Verdict:
        """What an ACCEPT ``verdict`` becomes (its other options kept)."""
        ...


class RepeatMode:
    """ACCEPT becomes REPEAT with the bits of ``mask`` in the packet mark set to ``mark``."""

    def __init__(self, mark: int, mask: int = U32) -> None:
        self.mark = mark & mask
        self.mask = mask

    def prejudge(self, packet: QueuedPacket) -> Verdict | None:
        return ACCEPT if packet.mark & self.mask == self.mark else None

    def accepted(self, verdict: Verdict) -> Verdict:
        return verdict.replace(action=Action.REPEAT).with_mark(self.mark, self.mask)

    def __repr__(self) -> str:
        return f"RepeatMode(mark={self.mark:#x}, mask={self.mask:#x})"


class RouteMode:
    """ACCEPT becomes QUEUE to ``queue_num``."""

    def __init__(self, queue_num: int, bypass: bool = False) -> None:
        self.queue_num = queue_num
        self.bypass = bypass

    def prejudge(self, packet: QueuedPacket) -> Verdict | None:
        return None

    def accepted(self, verdict: Verdict) -> Verdict:
        return verdict.replace(action=Action.QUEUE, queue_num=self.queue_num, bypass=self.bypass)

    def __repr__(self) -> str:
        return f"RouteMode(queue_num={self.queue_num}, bypass={self.bypass})"
