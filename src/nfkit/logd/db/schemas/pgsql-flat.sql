-- nfkit: the flat packet schema for PostgreSQL (12 or later).
--
-- Compatible by name with ulogd2's pgsql-ulogd2-flat.sql: one wide ulog2
-- table, one row per packet, written directly (COPY) with
--     [pgsql1] table="ulog2" procedure="INSERT"
-- and a stack NFLOG,BASE,IFINDEX,IP2STR,HWHDR,PGSQL. Every column after _id
-- names a key, so the table has no timestamp column (oob_time_sec is the
-- packet's time). Only the addresses are indexed (and the time, with a BRIN
-- index that costs next to nothing): every index costs more per row than the
-- row itself. docs/databases.md has the statements that add ulogd2's port
-- and MAC address indexes for databases queried by them.

DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM information_schema.tables
             WHERE table_schema = current_schema() AND table_name = 'ulog2')
     AND NOT EXISTS (SELECT 1 FROM information_schema.columns
                     WHERE table_schema = current_schema() AND table_name = 'ulog2'
                       AND column_name = 'tcp_sport') THEN
    RAISE EXCEPTION 'table %.ulog2 holds the normalized packet schema', current_schema()
      USING HINT = 'create the normalized schema (nfkit db init without --flat), '
                   'or use another database';
  END IF;
END $$;

INSERT INTO _format (version) SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM _format);

CREATE SEQUENCE IF NOT EXISTS ulog2__id_seq;
CREATE TABLE IF NOT EXISTS ulog2 (
  _id bigint PRIMARY KEY DEFAULT nextval('ulog2__id_seq'),
  oob_time_sec bigint,
  oob_time_usec integer,
  oob_hook smallint,
  oob_prefix text,
  oob_mark bigint,
  oob_in varchar(32),
  oob_out varchar(32),
  oob_family smallint,
  ip_saddr_str inet,
  ip_daddr_str inet,
  ip_protocol smallint,
  ip_tos smallint,
  ip_ttl smallint,
  ip_totlen integer,
  ip_ihl smallint,
  ip_csum integer,
  ip_id integer,
  ip_fragoff integer,
  ip6_payloadlen bigint,
  ip6_priority smallint,
  ip6_hoplimit smallint,
  ip6_flowlabel bigint,
  ip6_fragoff integer,
  ip6_fragid bigint,
  raw_label smallint,
  mac_saddr_str macaddr,
  mac_daddr_str macaddr,
  oob_protocol integer,
  raw_type integer,
  mac_str varchar(256),
  tcp_sport integer,
  tcp_dport integer,
  tcp_seq bigint,
  tcp_ackseq bigint,
  tcp_window integer,
  tcp_urg boolean,
  tcp_urgp integer,
  tcp_ack boolean,
  tcp_psh boolean,
  tcp_rst boolean,
  tcp_syn boolean,
  tcp_fin boolean,
  udp_sport integer,
  udp_dport integer,
  udp_len integer,
  sctp_sport integer,
  sctp_dport integer,
  sctp_csum bigint,
  icmp_type smallint,
  icmp_code smallint,
  icmp_echoid integer,
  icmp_echoseq integer,
  icmp_gateway bigint,
  icmp_fragmtu integer,
  icmpv6_type smallint,
  icmpv6_code smallint,
  icmpv6_echoid integer,
  icmpv6_echoseq integer,
  icmpv6_csum integer
);
ALTER SEQUENCE ulog2__id_seq OWNED BY ulog2._id;
CREATE INDEX IF NOT EXISTS ulog2_ip_saddr ON ulog2 (ip_saddr_str);
CREATE INDEX IF NOT EXISTS ulog2_ip_daddr ON ulog2 (ip_daddr_str);
CREATE INDEX IF NOT EXISTS ulog2_oob_time_sec ON ulog2 USING brin (oob_time_sec);

-- Views

CREATE OR REPLACE VIEW view_tcp AS SELECT * FROM ulog2 WHERE ip_protocol = 6;
CREATE OR REPLACE VIEW view_udp AS SELECT * FROM ulog2 WHERE ip_protocol = 17;
CREATE OR REPLACE VIEW view_icmp AS SELECT * FROM ulog2 WHERE ip_protocol = 1;
CREATE OR REPLACE VIEW view_icmpv6 AS SELECT * FROM ulog2 WHERE ip_protocol = 58;

-- The columns in the order of the normalized schema's ulog view.
CREATE OR REPLACE VIEW ulog AS
  SELECT _id,
    oob_time_sec, oob_time_usec, oob_hook, oob_prefix, oob_mark, oob_in, oob_out, oob_family,
    ip_saddr_str, ip_daddr_str, ip_protocol, ip_tos, ip_ttl, ip_totlen, ip_ihl, ip_csum,
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

CREATE OR REPLACE VIEW view_tcp_quad AS
  SELECT _id, ip_saddr_str, tcp_sport, ip_daddr_str, tcp_dport FROM ulog2 WHERE ip_protocol = 6;

CREATE OR REPLACE VIEW view_udp_quad AS
  SELECT _id, ip_saddr_str, udp_sport, ip_daddr_str, udp_dport FROM ulog2 WHERE ip_protocol = 17;

-- Delete one packet.
CREATE OR REPLACE FUNCTION DELETE_PACKET(_packet_id bigint) RETURNS void
LANGUAGE sql SECURITY INVOKER AS $$
  DELETE FROM ulog2 WHERE _id = $1;
$$;
