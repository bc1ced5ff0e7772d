"""ctnetlink numbers: subsystems, message types, groups and attributes.

Named as in ``include/uapi/linux/netfilter/nfnetlink_conntrack.h`` without
the ``IPCTNL_``/``CTA_`` prefixes' noise where that is unambiguous.
"""

from __future__ import annotations

from nfkit.netlink.codec import nfnl_type

NFNL_SUBSYS_CTNETLINK = 1
NFNL_SUBSYS_CTNETLINK_EXP = 2

# enum cntl_msg_types, combined with the subsystem into nlmsg_type.
CT_NEW = nfnl_type(NFNL_SUBSYS_CTNETLINK, 0)
CT_GET = nfnl_type(NFNL_SUBSYS_CTNETLINK, 1)
CT_DELETE = nfnl_type(NFNL_SUBSYS_CTNETLINK, 2)
CT_GET_CTRZERO = nfnl_type(NFNL_SUBSYS_CTNETLINK, 3)
CT_GET_STATS_CPU = nfnl_type(NFNL_SUBSYS_CTNETLINK, 4)
CT_GET_STATS = nfnl_type(NFNL_SUBSYS_CTNETLINK, 5)
CT_GET_DYING = nfnl_type(NFNL_SUBSYS_CTNETLINK, 6)
CT_GET_UNCONFIRMED = nfnl_type(NFNL_SUBSYS_CTNETLINK, 7)

# enum ctnl_exp_msg_types
EXP_NEW = nfnl_type(NFNL_SUBSYS_CTNETLINK_EXP, 0)
EXP_GET = nfnl_type(NFNL_SUBSYS_CTNETLINK_EXP, 1)
EXP_DELETE = nfnl_type(NFNL_SUBSYS_CTNETLINK_EXP, 2)
EXP_GET_STATS_CPU = nfnl_type(NFNL_SUBSYS_CTNETLINK_EXP, 3)
#: Replies to EXP_GET_STATS_CPU carry the conntrack subsystem's number (a kernel quirk).
EXP_STATS_CPU_REPLY = nfnl_type(NFNL_SUBSYS_CTNETLINK, 3)

#: nfgenmsg version that makes a flush honour its family (version 0 flushes all).
NFNETLINK_V1 = 1

# enum nfnetlink_groups (numbers for NETLINK_ADD_MEMBERSHIP, not bitmasks).
NFNLGRP_CONNTRACK_NEW = 1
NFNLGRP_CONNTRACK_UPDATE = 2
NFNLGRP_CONNTRACK_DESTROY = 3
NFNLGRP_CONNTRACK_EXP_NEW = 4
NFNLGRP_CONNTRACK_EXP_UPDATE = 5
NFNLGRP_CONNTRACK_EXP_DESTROY = 6

# enum ctattr_type
CTA_TUPLE_ORIG = 1
CTA_TUPLE_REPLY = 2
CTA_STATUS = 3
CTA_PROTOINFO = 4
CTA_HELP = 5
CTA_NAT_SRC = 6
CTA_TIMEOUT = 7
CTA_MARK = 8
CTA_COUNTERS_ORIG = 9
CTA_COUNTERS_REPLY = 10
CTA_USE = 11
CTA_ID = 12
CTA_NAT_DST = 13
CTA_TUPLE_MASTER = 14
CTA_SEQ_ADJ_ORIG = 15
CTA_SEQ_ADJ_REPLY = 16
CTA_SECMARK = 17
CTA_ZONE = 18
CTA_SECCTX = 19
CTA_TIMESTAMP = 20
CTA_MARK_MASK = 21
CTA_LABELS = 22
CTA_LABELS_MASK = 23
CTA_SYNPROXY = 24
CTA_FILTER = 25
CTA_STATUS_MASK = 26
CTA_TIMESTAMP_EVENT = 27

# enum ctattr_tuple
CTA_TUPLE_IP = 1
CTA_TUPLE_PROTO = 2
CTA_TUPLE_ZONE = 3

# enum ctattr_ip
CTA_IP_V4_SRC = 1
CTA_IP_V4_DST = 2
CTA_IP_V6_SRC = 3
CTA_IP_V6_DST = 4

# enum ctattr_l4proto
CTA_PROTO_NUM = 1
CTA_PROTO_SRC_PORT = 2
CTA_PROTO_DST_PORT = 3
CTA_PROTO_ICMP_ID = 4
CTA_PROTO_ICMP_TYPE = 5
CTA_PROTO_ICMP_CODE = 6
CTA_PROTO_ICMPV6_ID = 7
CTA_PROTO_ICMPV6_TYPE = 8
CTA_PROTO_ICMPV6_CODE = 9

# enum ctattr_protoinfo
CTA_PROTOINFO_TCP = 1
CTA_PROTOINFO_DCCP = 2
CTA_PROTOINFO_SCTP = 3

# enum ctattr_protoinfo_tcp
CTA_PROTOINFO_TCP_STATE = 1
CTA_PROTOINFO_TCP_WSCALE_ORIGINAL = 2
CTA_PROTOINFO_TCP_WSCALE_REPLY = 3
CTA_PROTOINFO_TCP_FLAGS_ORIGINAL = 4
CTA_PROTOINFO_TCP_FLAGS_REPLY = 5

# enum ctattr_protoinfo_dccp
CTA_PROTOINFO_DCCP_STATE = 1
CTA_PROTOINFO_DCCP_ROLE = 2
CTA_PROTOINFO_DCCP_HANDSHAKE_SEQ = 3
CTA_PROTOINFO_DCCP_PAD = 4

# enum ctattr_protoinfo_sctp
CTA_PROTOINFO_SCTP_STATE = 1
CTA_PROTOINFO_SCTP_VTAG_ORIGINAL = 2
CTA_PROTOINFO_SCTP_VTAG_REPLY = 3

# enum ctattr_counters
CTA_COUNTERS_PACKETS = 1
CTA_COUNTERS_BYTES = 2
CTA_COUNTERS32_PACKETS = 3
CTA_COUNTERS32_BYTES = 4
CTA_COUNTERS_PAD = 5

# enum ctattr_tstamp
CTA_TIMESTAMP_START = 1
CTA_TIMESTAMP_STOP = 2
CTA_TIMESTAMP_PAD = 3

# enum ctattr_nat
CTA_NAT_V4_MINIP = 1
CTA_NAT_V4_MAXIP = 2
CTA_NAT_PROTO = 3
CTA_NAT_V6_MINIP = 4
CTA_NAT_V6_MAXIP = 5

# enum ctattr_protonat
CTA_PROTONAT_PORT_MIN = 1
CTA_PROTONAT_PORT_MAX = 2

# enum ctattr_seqadj
CTA_SEQADJ_CORRECTION_POS = 1
CTA_SEQADJ_OFFSET_BEFORE = 2
CTA_SEQADJ_OFFSET_AFTER = 3

# enum ctattr_help
CTA_HELP_NAME = 1
CTA_HELP_INFO = 2

# enum ctattr_secctx
CTA_SECCTX_NAME = 1

# enum ctattr_synproxy
CTA_SYNPROXY_ISN = 1
CTA_SYNPROXY_ITS = 2
CTA_SYNPROXY_TSOFF = 3

# enum ctattr_filter
CTA_FILTER_ORIG_FLAGS = 1
CTA_FILTER_REPLY_FLAGS = 2

# CTA_FILTER flag bits (host-order u32): which tuple fields a dump compares.
FILTER_IP_SRC = 1 << 0
FILTER_IP_DST = 1 << 1
FILTER_TUPLE_ZONE = 1 << 2
FILTER_PROTO_NUM = 1 << 3
FILTER_PROTO_SRC_PORT = 1 << 4
FILTER_PROTO_DST_PORT = 1 << 5
FILTER_ICMP_TYPE = 1 << 6
FILTER_ICMP_CODE = 1 << 7
FILTER_ICMP_ID = 1 << 8
FILTER_ICMPV6_TYPE = 1 << 9
FILTER_ICMPV6_CODE = 1 << 10
FILTER_ICMPV6_ID = 1 << 11

# enum ctattr_expect
CTA_EXPECT_MASTER = 1
CTA_EXPECT_TUPLE = 2
CTA_EXPECT_MASK = 3
CTA_EXPECT_TIMEOUT = 4
CTA_EXPECT_ID = 5
CTA_EXPECT_HELP_NAME = 6
CTA_EXPECT_ZONE = 7
CTA_EXPECT_FLAGS = 8
CTA_EXPECT_CLASS = 9
CTA_EXPECT_NAT = 10
CTA_EXPECT_FN = 11

# enum ctattr_expect_nat
CTA_EXPECT_NAT_DIR = 1
CTA_EXPECT_NAT_TUPLE = 2

# enum ctattr_stats_cpu: names as conntrack -S prints them.
STATS_CPU_NAMES = {
    1: "searched",
    2: "found",
    3: "new",
    4: "invalid",
    5: "ignore",
    6: "delete",
    7: "delete_list",
    8: "insert",
    9: "insert_failed",
    10: "drop",
    11: "early_drop",
    12: "error",
    13: "search_restart",
    14: "clash_resolve",
    15: "chaintoolong",
}

# enum ctattr_stats_global
CTA_STATS_GLOBAL_ENTRIES = 1
CTA_STATS_GLOBAL_MAX_ENTRIES = 2

# enum ctattr_expect_stats: names as conntrack -S expect prints them.
STATS_EXP_NAMES = {1: "expect_new", 2: "expect_create", 3: "expect_delete"}
