"""NFQUEUE numbers: message types, attributes, flags and verdict codes.

Named as in ``include/uapi/linux/netfilter/nfnetlink_queue.h`` and
``linux/netfilter.h`` without the ``NFQNL_``/``NFQA_`` prefixes.
"""

from __future__ import annotations

import enum

from nfkit.netlink.codec import nfnl_type

# NFQNL_CFG_CMD_* and NFQNL_COPY_* have NFLOG's numbers (BIND 1 ... PF_UNBIND 4;
# NONE 0, META 1, PACKET 2); NFQUEUE's PF commands are no-ops since Linux 3.8.
from nfkit.nflog import Command as Command  # re-exported
from nfkit.nflog import CopyMode as CopyMode  # re-exported

NFNL_SUBSYS_QUEUE = 3

MSG_PACKET = nfnl_type(NFNL_SUBSYS_QUEUE, 0)
MSG_VERDICT = nfnl_type(NFNL_SUBSYS_QUEUE, 1)
MSG_CONFIG = nfnl_type(NFNL_SUBSYS_QUEUE, 2)
MSG_VERDICT_BATCH = nfnl_type(NFNL_SUBSYS_QUEUE, 3)

# enum nfqnl_attr_type
ATTR_PACKET_HDR = 1
ATTR_VERDICT_HDR = 2
ATTR_MARK = 3
ATTR_TIMESTAMP = 4
ATTR_IFINDEX_INDEV = 5
ATTR_IFINDEX_OUTDEV = 6
ATTR_IFINDEX_PHYSINDEV = 7
ATTR_IFINDEX_PHYSOUTDEV = 8
ATTR_HWADDR = 9
ATTR_PAYLOAD = 10
ATTR_CT = 11
ATTR_CT_INFO = 12
ATTR_CAP_LEN = 13
ATTR_SKB_INFO = 14
ATTR_EXP = 15
ATTR_UID = 16
ATTR_GID = 17
ATTR_SECCTX = 18
ATTR_VLAN = 19
ATTR_L2HDR = 20
ATTR_PRIORITY = 21
ATTR_CGROUP_CLASSID = 22

# enum nfqnl_vlan_attr
VLAN_PROTO = 1
VLAN_TCI = 2

# enum nfqnl_attr_config
CFG_CMD = 1
CFG_PARAMS = 2
CFG_QUEUE_MAXLEN = 3
CFG_MASK = 4
CFG_FLAGS = 5

#: The kernel caps a packet copy at 0xFFFF minus the attribute header.
MAX_COPY_RANGE = 0xFFFF - 4
#: The kernel's default queue length.
DEFAULT_MAXLEN = 1024

#: OR-ed into a QUEUE verdict: continue as accepted when the target queue has no listener.
QUEUE_BYPASS = 0x8000


class Flag(enum.IntFlag):
    """NFQA_CFG_F_*: per-queue options (set with a mask, so others keep their value)."""

    FAIL_OPEN = 1  #: accept instead of drop when the queue or the socket is full
    CONNTRACK = 2  #: add the packet's conntrack entry (needs NETFILTER_NETLINK_GLUE_CT)
    GSO = 4  #: hand over GSO packets whole, with partial checksums (see SkbInfo)
    UID_GID = 8  #: add the owning socket's uid and gid
    SECCTX = 16  #: add the security context


#: Every flag the kernel knows (the config mask).
ALL_FLAGS = Flag.FAIL_OPEN | Flag.CONNTRACK | Flag.GSO | Flag.UID_GID | Flag.SECCTX


class SkbInfo(enum.IntFlag):
    """NFQA_SKB_*: the packet's checksum and GSO state."""

    CSUMNOTREADY = 1  #: the L4 checksum field holds only the pseudo-header sum
    GSO = 2  #: a GSO packet, possibly larger than the MTU
    CSUM_NOTVERIFIED = 4  #: nobody has verified the checksum yet


class CtInfo(enum.IntEnum):
    """enum ip_conntrack_info: the packet's relation to its connection."""

    ESTABLISHED = 0
    RELATED = 1
    NEW = 2
    ESTABLISHED_REPLY = 3
    RELATED_REPLY = 4
    UNTRACKED = 7


class Hook(enum.IntEnum):
    """Netfilter hooks of the inet families (bridge and ARP number theirs alike)."""

    PREROUTING = 0
    INPUT = 1
    FORWARD = 2
    OUTPUT = 3
    POSTROUTING = 4


class Action(enum.IntEnum):
    """The netfilter verdicts a program may give (NF_STOLEN is refused by the kernel)."""

    DROP = 0
    ACCEPT = 1
    QUEUE = 3
    REPEAT = 4
    STOP = 5
