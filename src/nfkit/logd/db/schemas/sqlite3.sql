-- nfkit: SQLite tables for the SQLITE3 output (one row per event, every
-- column names a key: no id column, SQLite's rowid numbers the rows).
--
-- ulog_pkt and ulog_ct have the columns of ulogd2's sqlite3.table; SQLITE3
-- stores IPv4 addresses there as numbers and IPv6 addresses as NULL. ulog2
-- and ulog2_ct hold both families as text (IP2STR), with the columns of the
-- flat PostgreSQL schema:
--     [sqlite1] db="/var/log/ulog/ulog.db" table="ulog2"     NFLOG,BASE,IFINDEX,IP2STR,HWHDR
--     [sqlite2] db="/var/log/ulog/ulog.db" table="ulog2_ct"  NFCT,IP2STR
--     [sqlite3] db="/var/log/ulog/ulog.db" table="nfacct"    NFACCT (timestamp=1)

CREATE TABLE IF NOT EXISTS ulog_ct (
  flow_start_sec INTEGER,
  flow_start_usec INTEGER,
  flow_end_sec INTEGER,
  flow_end_usec INTEGER,
  orig_ip_saddr INTEGER,
  orig_ip_daddr INTEGER,
  orig_l4_sport INTEGER,
  orig_l4_dport INTEGER,
  orig_ip_protocol INTEGER,
  icmp_type INTEGER,
  icmp_code INTEGER,
  orig_raw_pktlen INTEGER,
  orig_raw_pktcount INTEGER,
  reply_raw_pktlen INTEGER,
  reply_raw_pktcount INTEGER,
  ct_mark INTEGER
);

CREATE TABLE IF NOT EXISTS ulog_pkt (
  raw_pktlen INTEGER,
  raw_pktcount INTEGER,
  oob_prefix TEXT,
  oob_time_sec INTEGER,
  oob_time_usec INTEGER,
  oob_mark INTEGER,
  oob_hook INTEGER,
  oob_uid INTEGER,
  oob_gid INTEGER
);

CREATE TABLE IF NOT EXISTS ulog2 (
  oob_time_sec INTEGER,
  oob_time_usec INTEGER,
  oob_hook INTEGER,
  oob_prefix TEXT,
  oob_mark INTEGER,
  oob_in TEXT,
  oob_out TEXT,
  oob_family INTEGER,
  ip_saddr_str TEXT,
  ip_daddr_str TEXT,
  ip_protocol INTEGER,
  ip_tos INTEGER,
  ip_ttl INTEGER,
  ip_totlen INTEGER,
  ip_ihl INTEGER,
  ip_csum INTEGER,
  ip_id INTEGER,
  ip_fragoff INTEGER,
  ip6_payloadlen INTEGER,
  ip6_priority INTEGER,
  ip6_hoplimit INTEGER,
  ip6_flowlabel INTEGER,
  ip6_fragoff INTEGER,
  ip6_fragid INTEGER,
  raw_label INTEGER,
  mac_saddr_str TEXT,
  mac_daddr_str TEXT,
  oob_protocol INTEGER,
  raw_type INTEGER,
  mac_str TEXT,
  tcp_sport INTEGER,
  tcp_dport INTEGER,
  tcp_seq INTEGER,
  tcp_ackseq INTEGER,
  tcp_window INTEGER,
  tcp_urg INTEGER,
  tcp_urgp INTEGER,
  tcp_ack INTEGER,
  tcp_psh INTEGER,
  tcp_rst INTEGER,
  tcp_syn INTEGER,
  tcp_fin INTEGER,
  udp_sport INTEGER,
  udp_dport INTEGER,
  udp_len INTEGER,
  sctp_sport INTEGER,
  sctp_dport INTEGER,
  sctp_csum INTEGER,
  icmp_type INTEGER,
  icmp_code INTEGER,
  icmp_echoid INTEGER,
  icmp_echoseq INTEGER,
  icmp_gateway INTEGER,
  icmp_fragmtu INTEGER,
  icmpv6_type INTEGER,
  icmpv6_code INTEGER,
  icmpv6_echoid INTEGER,
  icmpv6_echoseq INTEGER,
  icmpv6_csum INTEGER
);
CREATE INDEX IF NOT EXISTS ulog2_ip_saddr ON ulog2 (ip_saddr_str);
CREATE INDEX IF NOT EXISTS ulog2_ip_daddr ON ulog2 (ip_daddr_str);

CREATE VIEW IF NOT EXISTS view_tcp_quad AS
  SELECT rowid AS _id, ip_saddr_str, tcp_sport, ip_daddr_str, tcp_dport
  FROM ulog2 WHERE ip_protocol = 6;

CREATE VIEW IF NOT EXISTS view_udp_quad AS
  SELECT rowid AS _id, ip_saddr_str, udp_sport, ip_daddr_str, udp_dport
  FROM ulog2 WHERE ip_protocol = 17;

CREATE TABLE IF NOT EXISTS ulog2_ct (
  oob_family INTEGER,
  orig_ip_saddr_str TEXT,
  orig_ip_daddr_str TEXT,
  orig_ip_protocol INTEGER,
  orig_l4_sport INTEGER,
  orig_l4_dport INTEGER,
  orig_raw_pktlen INTEGER,
  orig_raw_pktcount INTEGER,
  reply_ip_saddr_str TEXT,
  reply_ip_daddr_str TEXT,
  reply_ip_protocol INTEGER,
  reply_l4_sport INTEGER,
  reply_l4_dport INTEGER,
  reply_raw_pktlen INTEGER,
  reply_raw_pktcount INTEGER,
  icmp_code INTEGER,
  icmp_type INTEGER,
  ct_mark INTEGER,
  flow_start_sec INTEGER,
  flow_start_usec INTEGER,
  flow_end_sec INTEGER,
  flow_end_usec INTEGER,
  ct_event INTEGER
);
CREATE INDEX IF NOT EXISTS ulog2_ct_orig_ip_saddr ON ulog2_ct (orig_ip_saddr_str);
CREATE INDEX IF NOT EXISTS ulog2_ct_orig_ip_daddr ON ulog2_ct (orig_ip_daddr_str);

CREATE TABLE IF NOT EXISTS nfacct (
  sum_name TEXT,
  sum_pkts INTEGER,
  sum_bytes INTEGER,
  oob_time_sec INTEGER,
  oob_time_usec INTEGER
);
