-- nfkit: tables every PostgreSQL schema of nfkit has (normalized and flat).
-- Names as in ulogd2's schemas; the script only creates what is missing and
-- never drops anything, so it can be run again on a database in use.

CREATE TABLE IF NOT EXISTS _format (
  version integer
);

-- Extension tables joined to ulog2 by packet id (for tools that look here).
CREATE TABLE IF NOT EXISTS _extensions (
  ext_id serial PRIMARY KEY,
  ext_name varchar(64) NOT NULL,
  table_name varchar(64) NOT NULL,
  join_name varchar(64) NOT NULL
);

-- IP protocol numbers and names, to join with ip_protocol / orig_ip_protocol.
CREATE TABLE IF NOT EXISTS ip_proto (
  _proto_id integer PRIMARY KEY,
  proto_name varchar(16),
  proto_desc varchar(255)
);

INSERT INTO ip_proto (_proto_id, proto_name, proto_desc) VALUES
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
  (136, 'udplite', 'UDP-Lite')
ON CONFLICT (_proto_id) DO NOTHING;

-- The functions are created afresh: an older definition (ulogd2's takes
-- integer arguments) would otherwise stay as an ambiguous overload.
DO $$
DECLARE
  old regprocedure;
BEGIN
  FOR old IN
    SELECT p.oid::regprocedure FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname = current_schema() AND p.proname IN (
      'insert_ip_packet', 'insert_ip_packet_full', 'insert_tcp_full', 'insert_udp',
      'insert_sctp', 'insert_icmp', 'insert_icmpv6', 'insert_hardware_header',
      'insert_or_select_mac', 'insert_packet_full', 'insert_ct', 'insert_or_replace_ct',
      'insert_nfacct', 'delete_packet', 'delete_ct_flow', 'compress_tables',
      'ulog2_add_foreign_keys', 'ulog2_drop_foreign_keys')
  LOOP
    EXECUTE 'DROP FUNCTION ' || old;
  END LOOP;
END $$;

-- Tables made by ulogd2's schema are kept as they are: say which of their
-- columns are too narrow for some values (those rows would be rejected).
DO $$
DECLARE
  narrow record;
BEGIN
  FOR narrow IN
    SELECT table_name, column_name, data_type, character_maximum_length AS length
    FROM information_schema.columns
    WHERE table_schema = current_schema()
      AND table_name IN ('ulog2', 'udp', 'sctp', 'icmp', 'nfacct')
      AND ((column_name, data_type) IN (
             ('ip_totlen', 'smallint'), ('ip_fragoff', 'smallint'), ('udp_len', 'smallint'),
             ('sctp_csum', 'smallint'), ('icmp_fragmtu', 'smallint'),
             ('oob_time_sec', 'integer'), ('oob_mark', 'integer'), ('icmp_gateway', 'integer'),
             ('sum_pkts', 'integer'), ('sum_bytes', 'integer'))
           OR (column_name = 'oob_prefix' AND character_maximum_length < 128))
    ORDER BY table_name, ordinal_position
  LOOP
    RAISE WARNING 'column %.% is % (ulogd2''s schema): larger values will be rejected',
      narrow.table_name, narrow.column_name,
      narrow.data_type || COALESCE('(' || narrow.length || ')', '')
      USING HINT = format('drop the views on %I, ALTER TABLE %I ALTER COLUMN %I TYPE %s, '
                          'then run nfkit db init again', narrow.table_name, narrow.table_name,
                          narrow.column_name,
                          CASE WHEN narrow.column_name = 'oob_prefix' THEN 'text'
                               WHEN narrow.data_type = 'integer' THEN 'bigint'
                               ELSE 'integer' END);
  END LOOP;
END $$;
