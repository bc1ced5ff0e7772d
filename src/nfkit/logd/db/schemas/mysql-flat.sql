-- nfkit: the flat schema for MariaDB (10.3 or later) and MySQL (5.7 or later).
--
-- Compatible by name with ulogd2's mysql-ulogd2-flat.sql: one wide ulog2
-- table written directly with
--     [mysql1] table="ulog2" procedure="INSERT"
-- and a stack NFLOG,BASE,IFINDEX,IP2BIN,HWHDR,MYSQL; addresses are binary(16)
-- (IPv4 as ::ffff:a.b.c.d), shown as text by BIN_TO_IPV6 and the quad views.
-- Flows: [mysql2] table="conntrack" procedure="INSERT_CT", stack
-- NFCT,IP2BIN,MYSQL. Load with the mariadb client or nfkit db init --flat.
-- Creating functions with binary logging on needs the SUPER privilege or
-- log_bin_trust_function_creators=1.

-- A database that holds ulogd2's normalized schema would get views that do not fit.
DROP PROCEDURE IF EXISTS nfkit_refuse_normalized;
DELIMITER $$
CREATE PROCEDURE nfkit_refuse_normalized()
BEGIN
  IF EXISTS (SELECT 1 FROM information_schema.tables
             WHERE table_schema = DATABASE() AND table_name = 'ulog2')
     AND NOT EXISTS (SELECT 1 FROM information_schema.columns
                     WHERE table_schema = DATABASE() AND table_name = 'ulog2'
                       AND column_name = 'tcp_sport') THEN
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT =
      'table ulog2 holds a normalized packet schema: use another database for the flat one';
  END IF;
END$$
DELIMITER ;
CALL nfkit_refuse_normalized();
DROP PROCEDURE nfkit_refuse_normalized;

CREATE TABLE IF NOT EXISTS _format (
  version int NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
INSERT INTO _format (version) SELECT 1 FROM DUAL WHERE NOT EXISTS (SELECT 1 FROM _format);

-- Extension tables joined to ulog2 by packet id (for tools that look here).
CREATE TABLE IF NOT EXISTS _extensions (
  ext_id int unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY,
  ext_name varchar(64) NOT NULL,
  table_name varchar(64) NOT NULL,
  join_name varchar(64) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS ip_proto (
  _proto_id int unsigned NOT NULL PRIMARY KEY,
  proto_name varchar(16) DEFAULT NULL,
  proto_desc varchar(255) DEFAULT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
INSERT IGNORE INTO ip_proto (_proto_id, proto_name, proto_desc) VALUES
  (0, 'ip', 'Internet Protocol (pseudo protocol number)'),
  (1, 'icmp', 'Internet Control Message Protocol'),
  (2, 'igmp', 'Internet Group Management Protocol'),
  (4, 'ipencap', 'IPv4 encapsulated in IPv4'),
  (6, 'tcp', 'Transmission Control Protocol'),
  (17, 'udp', 'User Datagram Protocol'),
  (33, 'dccp', 'Datagram Congestion Control Protocol'),
  (41, 'ipv6', 'IPv6 encapsulated in IPv4'),
  (47, 'gre', 'Generic Routing Encapsulation'),
  (50, 'esp', 'IPsec Encapsulating Security Payload'),
  (51, 'ah', 'IPsec Authentication Header'),
  (58, 'ipv6-icmp', 'ICMP for IPv6'),
  (112, 'vrrp', 'Virtual Router Redundancy Protocol'),
  (132, 'sctp', 'Stream Control Transmission Protocol'),
  (136, 'udplite', 'UDP-Lite');

-- One row per packet. Only the addresses are indexed: every index costs
-- more per row than the row itself. docs/databases.md has the statements
-- that add ulogd2's port and MAC address indexes.
CREATE TABLE IF NOT EXISTS ulog2 (
  _id bigint unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY,
  oob_time_sec int unsigned DEFAULT NULL,
  oob_time_usec int unsigned DEFAULT NULL,
  oob_hook tinyint unsigned DEFAULT NULL,
  oob_prefix varchar(255) DEFAULT NULL,
  oob_mark int unsigned DEFAULT NULL,
  oob_in varchar(32) DEFAULT NULL,
  oob_out varchar(32) DEFAULT NULL,
  oob_family tinyint unsigned DEFAULT NULL,
  ip_saddr_bin binary(16) DEFAULT NULL,
  ip_daddr_bin binary(16) DEFAULT NULL,
  ip_protocol tinyint unsigned DEFAULT NULL,
  ip_tos tinyint unsigned DEFAULT NULL,
  ip_ttl tinyint unsigned DEFAULT NULL,
  ip_totlen smallint unsigned DEFAULT NULL,
  ip_ihl tinyint unsigned DEFAULT NULL,
  ip_csum smallint unsigned DEFAULT NULL,
  ip_id smallint unsigned DEFAULT NULL,
  ip_fragoff smallint unsigned DEFAULT NULL,
  ip6_payloadlen smallint unsigned DEFAULT NULL,
  ip6_priority tinyint unsigned DEFAULT NULL,
  ip6_hoplimit tinyint unsigned DEFAULT NULL,
  ip6_flowlabel int unsigned DEFAULT NULL,
  ip6_fragoff smallint unsigned DEFAULT NULL,
  ip6_fragid int unsigned DEFAULT NULL,
  raw_label tinyint unsigned DEFAULT NULL,
  mac_saddr_str varchar(32) DEFAULT NULL,
  mac_daddr_str varchar(32) DEFAULT NULL,
  oob_protocol smallint unsigned DEFAULT NULL,
  raw_type int unsigned DEFAULT NULL,
  mac_str varchar(255) DEFAULT NULL,
  tcp_sport int unsigned DEFAULT NULL,
  tcp_dport int unsigned DEFAULT NULL,
  tcp_seq int unsigned DEFAULT NULL,
  tcp_ackseq int unsigned DEFAULT NULL,
  tcp_window int unsigned DEFAULT NULL,
  tcp_urg tinyint DEFAULT NULL,
  tcp_urgp int unsigned DEFAULT NULL,
  tcp_ack tinyint DEFAULT NULL,
  tcp_psh tinyint DEFAULT NULL,
  tcp_rst tinyint DEFAULT NULL,
  tcp_syn tinyint DEFAULT NULL,
  tcp_fin tinyint DEFAULT NULL,
  udp_sport int unsigned DEFAULT NULL,
  udp_dport int unsigned DEFAULT NULL,
  udp_len int unsigned DEFAULT NULL,
  sctp_sport int unsigned DEFAULT NULL,
  sctp_dport int unsigned DEFAULT NULL,
  sctp_csum int unsigned DEFAULT NULL,
  icmp_type tinyint unsigned DEFAULT NULL,
  icmp_code tinyint unsigned DEFAULT NULL,
  icmp_echoid smallint unsigned DEFAULT NULL,
  icmp_echoseq smallint unsigned DEFAULT NULL,
  icmp_gateway int unsigned DEFAULT NULL,
  icmp_fragmtu smallint unsigned DEFAULT NULL,
  icmpv6_type tinyint unsigned DEFAULT NULL,
  icmpv6_code tinyint unsigned DEFAULT NULL,
  icmpv6_echoid smallint unsigned DEFAULT NULL,
  icmpv6_echoseq smallint unsigned DEFAULT NULL,
  icmpv6_csum int unsigned DEFAULT NULL,
  KEY ip_saddr (ip_saddr_bin),
  KEY ip_daddr (ip_daddr_bin)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COMMENT='IP packets';

-- An address of a binary(16) column as text: ::ffff:192.0.2.1, 2001:db8::1.
DROP FUNCTION IF EXISTS BIN_TO_IPV6;
CREATE FUNCTION BIN_TO_IPV6(_in binary(16)) RETURNS varchar(64)
  DETERMINISTIC NO SQL SQL SECURITY INVOKER
  RETURN INET6_NTOA(_in);

CREATE OR REPLACE SQL SECURITY INVOKER VIEW view_tcp AS
  SELECT * FROM ulog2 WHERE ulog2.ip_protocol = 6;
CREATE OR REPLACE SQL SECURITY INVOKER VIEW view_udp AS
  SELECT * FROM ulog2 WHERE ulog2.ip_protocol = 17;
CREATE OR REPLACE SQL SECURITY INVOKER VIEW view_icmp AS
  SELECT * FROM ulog2 WHERE ulog2.ip_protocol = 1;
CREATE OR REPLACE SQL SECURITY INVOKER VIEW view_icmpv6 AS
  SELECT * FROM ulog2 WHERE ulog2.ip_protocol = 58;

-- The columns in the order of the normalized schema's ulog view.
CREATE OR REPLACE SQL SECURITY INVOKER VIEW ulog AS
  SELECT _id,
    oob_time_sec, oob_time_usec, oob_hook, oob_prefix, oob_mark, oob_in, oob_out, oob_family,
    ip_saddr_bin, ip_daddr_bin, ip_protocol, ip_tos, ip_ttl, ip_totlen, ip_ihl, ip_csum,
    ip_id, ip_fragoff,
    ip6_payloadlen, ip6_priority, ip6_hoplimit, ip6_flowlabel, ip6_fragoff, ip6_fragid,
    tcp_sport, tcp_dport, tcp_seq, tcp_ackseq, tcp_window, tcp_urg, tcp_urgp, tcp_ack,
    tcp_psh, tcp_rst, tcp_syn, tcp_fin,
    udp_sport, udp_dport, udp_len,
    icmp_type, icmp_code, icmp_echoid, icmp_echoseq, icmp_gateway, icmp_fragmtu,
    icmpv6_type, icmpv6_code, icmpv6_echoid, icmpv6_echoseq, icmpv6_csum,
    raw_type, mac_str, mac_saddr_str, mac_daddr_str, oob_protocol, raw_label,
    sctp_sport, sctp_dport, sctp_csum
  FROM ulog2;

CREATE OR REPLACE SQL SECURITY INVOKER VIEW view_tcp_quad AS
  SELECT _id, BIN_TO_IPV6(ip_saddr_bin) AS ip_saddr_str, tcp_sport,
         BIN_TO_IPV6(ip_daddr_bin) AS ip_daddr_str, tcp_dport
  FROM ulog2 WHERE ulog2.ip_protocol = 6;

CREATE OR REPLACE SQL SECURITY INVOKER VIEW view_udp_quad AS
  SELECT _id, BIN_TO_IPV6(ip_saddr_bin) AS ip_saddr_str, udp_sport,
         BIN_TO_IPV6(ip_daddr_bin) AS ip_daddr_str, udp_dport
  FROM ulog2 WHERE ulog2.ip_protocol = 17;

-- Flows. The conntrack view names the columns after the keys (its columns
-- after _ct_id are the arguments of INSERT_CT); state is not used by nfkit.
CREATE TABLE IF NOT EXISTS ulog2_ct (
  _ct_id bigint unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY,
  oob_family tinyint unsigned DEFAULT NULL,
  orig_ip_saddr binary(16) DEFAULT NULL,
  orig_ip_daddr binary(16) DEFAULT NULL,
  orig_ip_protocol tinyint unsigned DEFAULT NULL,
  orig_l4_sport int unsigned DEFAULT NULL,
  orig_l4_dport int unsigned DEFAULT NULL,
  orig_bytes bigint unsigned DEFAULT 0,
  orig_packets bigint unsigned DEFAULT 0,
  reply_ip_saddr binary(16) DEFAULT NULL,
  reply_ip_daddr binary(16) DEFAULT NULL,
  reply_ip_protocol tinyint unsigned DEFAULT NULL,
  reply_l4_sport int unsigned DEFAULT NULL,
  reply_l4_dport int unsigned DEFAULT NULL,
  reply_bytes bigint unsigned DEFAULT 0,
  reply_packets bigint unsigned DEFAULT 0,
  icmp_code tinyint unsigned DEFAULT NULL,
  icmp_type tinyint unsigned DEFAULT NULL,
  ct_mark bigint DEFAULT 0,
  flow_start_sec int unsigned DEFAULT 0,
  flow_start_usec int unsigned DEFAULT 0,
  flow_end_sec int unsigned DEFAULT 0,
  flow_end_usec int unsigned DEFAULT 0,
  state tinyint unsigned DEFAULT 0,
  KEY orig_tuple (orig_ip_saddr, orig_ip_daddr, orig_ip_protocol, orig_l4_sport, orig_l4_dport),
  KEY reply_tuple (reply_ip_saddr, reply_ip_daddr, reply_ip_protocol, reply_l4_sport,
                   reply_l4_dport),
  KEY orig_ip_daddr (orig_ip_daddr),
  KEY orig_l4_dport (orig_l4_dport)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COMMENT='conntrack flows';

CREATE OR REPLACE SQL SECURITY INVOKER VIEW conntrack AS
  SELECT _ct_id, oob_family,
    orig_ip_saddr AS orig_ip_saddr_bin, orig_ip_daddr AS orig_ip_daddr_bin, orig_ip_protocol,
    orig_l4_sport, orig_l4_dport, orig_bytes AS orig_raw_pktlen, orig_packets AS orig_raw_pktcount,
    reply_ip_saddr AS reply_ip_saddr_bin, reply_ip_daddr AS reply_ip_daddr_bin,
    reply_ip_protocol, reply_l4_sport, reply_l4_dport,
    reply_bytes AS reply_raw_pktlen, reply_packets AS reply_raw_pktcount,
    icmp_code, icmp_type, ct_mark, flow_start_sec, flow_start_usec, flow_end_sec, flow_end_usec
  FROM ulog2_ct;

-- One flow event; returns the new row's id.
DROP FUNCTION IF EXISTS INSERT_CT;
DELIMITER $$
CREATE FUNCTION INSERT_CT(
  _oob_family bigint, _orig_ip_saddr binary(16), _orig_ip_daddr binary(16),
  _orig_ip_protocol bigint, _orig_l4_sport bigint, _orig_l4_dport bigint, _orig_bytes bigint,
  _orig_packets bigint, _reply_ip_saddr binary(16), _reply_ip_daddr binary(16),
  _reply_ip_protocol bigint, _reply_l4_sport bigint, _reply_l4_dport bigint,
  _reply_bytes bigint, _reply_packets bigint, _icmp_code bigint, _icmp_type bigint,
  _ct_mark bigint, _flow_start_sec bigint, _flow_start_usec bigint, _flow_end_sec bigint,
  _flow_end_usec bigint)
RETURNS bigint unsigned
NOT DETERMINISTIC MODIFIES SQL DATA SQL SECURITY INVOKER
BEGIN
  INSERT INTO ulog2_ct (oob_family, orig_ip_saddr, orig_ip_daddr, orig_ip_protocol,
                        orig_l4_sport, orig_l4_dport, orig_bytes, orig_packets,
                        reply_ip_saddr, reply_ip_daddr, reply_ip_protocol, reply_l4_sport,
                        reply_l4_dport, reply_bytes, reply_packets, icmp_code, icmp_type,
                        ct_mark, flow_start_sec, flow_start_usec, flow_end_sec, flow_end_usec)
  VALUES (_oob_family, _orig_ip_saddr, _orig_ip_daddr, _orig_ip_protocol, _orig_l4_sport,
          _orig_l4_dport, _orig_bytes, _orig_packets, _reply_ip_saddr, _reply_ip_daddr,
          _reply_ip_protocol, _reply_l4_sport, _reply_l4_dport, _reply_bytes, _reply_packets,
          _icmp_code, _icmp_type, _ct_mark, _flow_start_sec, _flow_start_usec, _flow_end_sec,
          _flow_end_usec);
  RETURN LAST_INSERT_ID();
END$$
DELIMITER ;

-- Maintenance: delete one packet, one flow.
DROP PROCEDURE IF EXISTS DELETE_PACKET;
CREATE PROCEDURE DELETE_PACKET(IN _packet_id bigint unsigned)
  SQL SECURITY INVOKER
  DELETE FROM ulog2 WHERE ulog2._id = _packet_id;

DROP PROCEDURE IF EXISTS DELETE_CT_FLOW;
CREATE PROCEDURE DELETE_CT_FLOW(IN _ct_packet_id bigint unsigned)
  SQL SECURITY INVOKER
  DELETE FROM ulog2_ct WHERE ulog2_ct._ct_id = _ct_packet_id;
