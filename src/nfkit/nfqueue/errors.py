"""Errors of binding a queue, with what to do about them."""

from __future__ import annotations

import errno

from nfkit.netlink.errors import NetlinkPermissionError


class QueueInUse(NetlinkPermissionError):
    """Another program's socket owns the queue (the kernel allows one per queue)."""

    def __init__(self, queue: int, owner: int) -> None:
        super().__init__(
            errno.EPERM,
            f"bind NFQUEUE queue {queue}",
            f"queue {queue} is already bound by another program (netlink port {owner}); "
            "stop that program or choose another queue number",
        )
        self.queue = queue
        self.owner = owner
