-- nfkit: the normalized packet schema for PostgreSQL (12 or later).
--
-- Compatible by name with ulogd2's pgsql-ulogd2.sql: the same tables,
-- columns, views and functions, and the view `ulog` whose columns (after
-- _id) are the arguments of INSERT_PACKET_FULL, in order. Configure:
--     [pgsql1] table="ulog" procedure="INSERT_PACKET_FULL"
-- with a stack NFLOG,BASE,IFINDEX,IP2STR,HWHDR,PGSQL.
-- Column types hold every value the kernel can send (see docs/databases.md);
-- all integer arguments are bigint so that any integer argument resolves.

DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = 'ulog2'
               AND column_name = 'tcp_sport') THEN
    RAISE EXCEPTION 'table %.ulog2 holds the flat packet schema', current_schema()
      USING HINT = 'create the flat schema (nfkit db init --flat), or use another database';
  END IF;
END $$;

INSERT INTO _format (version) SELECT 6 WHERE NOT EXISTS (SELECT 1 FROM _format);

-- One row per packet: metadata, IPv4 or IPv6 header.
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
  label smallint,
  mac_id bigint,
  timestamp timestamptz NOT NULL DEFAULT now()
);
ALTER SEQUENCE ulog2__id_seq OWNED BY ulog2._id;
CREATE INDEX IF NOT EXISTS ulog2_ip_saddr ON ulog2 (ip_saddr_str);
CREATE INDEX IF NOT EXISTS ulog2_ip_daddr ON ulog2 (ip_daddr_str);
CREATE INDEX IF NOT EXISTS ulog2_timestamp ON ulog2 (timestamp);

-- Ethernet addresses, one row per (source, destination, ethertype).
CREATE SEQUENCE IF NOT EXISTS mac__id_seq;
CREATE TABLE IF NOT EXISTS mac (
  _mac_id bigint PRIMARY KEY DEFAULT nextval('mac__id_seq'),
  mac_saddr macaddr NOT NULL,
  mac_daddr macaddr,
  mac_protocol integer
);
ALTER SEQUENCE mac__id_seq OWNED BY mac._mac_id;
CREATE INDEX IF NOT EXISTS mac_daddr ON mac (mac_daddr);
CREATE UNIQUE INDEX IF NOT EXISTS unique_mac ON mac (mac_saddr, mac_daddr, mac_protocol);

-- Hardware headers of other link types (loopback, tunnels...).
CREATE TABLE IF NOT EXISTS hwhdr (
  _hw_id bigint PRIMARY KEY,
  raw_type integer,
  raw_header varchar(256)
);
CREATE INDEX IF NOT EXISTS raw_type ON hwhdr (raw_type);

-- Transport headers, one row per packet of that protocol, _xxx_id = ulog2._id.
CREATE TABLE IF NOT EXISTS tcp (
  _tcp_id bigint PRIMARY KEY,
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
  tcp_fin boolean
);
CREATE INDEX IF NOT EXISTS tcp_sport ON tcp (tcp_sport);
CREATE INDEX IF NOT EXISTS tcp_dport ON tcp (tcp_dport);

CREATE TABLE IF NOT EXISTS udp (
  _udp_id bigint PRIMARY KEY,
  udp_sport integer,
  udp_dport integer,
  udp_len integer
);
CREATE INDEX IF NOT EXISTS udp_sport ON udp (udp_sport);
CREATE INDEX IF NOT EXISTS udp_dport ON udp (udp_dport);

CREATE TABLE IF NOT EXISTS sctp (
  _sctp_id bigint PRIMARY KEY,
  sctp_sport integer,
  sctp_dport integer,
  sctp_csum bigint
);
CREATE INDEX IF NOT EXISTS sctp_sport ON sctp (sctp_sport);
CREATE INDEX IF NOT EXISTS sctp_dport ON sctp (sctp_dport);

CREATE TABLE IF NOT EXISTS icmp (
  _icmp_id bigint PRIMARY KEY,
  icmp_type smallint,
  icmp_code smallint,
  icmp_echoid integer,
  icmp_echoseq integer,
  icmp_gateway bigint,
  icmp_fragmtu integer
);

CREATE TABLE IF NOT EXISTS icmpv6 (
  _icmpv6_id bigint PRIMARY KEY,
  icmpv6_type smallint,
  icmpv6_code smallint,
  icmpv6_echoid integer,
  icmpv6_echoseq integer,
  icmpv6_csum integer
);

-- Foreign keys: every header row belongs to a packet (deleted with it), a
-- packet's mac_id names a mac row. Dropped and added again by the two
-- functions (bulk loads); ON DELETE CASCADE makes DELETE_PACKET one statement.
CREATE OR REPLACE FUNCTION ULOG2_ADD_FOREIGN_KEYS() RETURNS void
LANGUAGE plpgsql SECURITY INVOKER AS $$
DECLARE
  fk text[];
BEGIN
  FOREACH fk SLICE 1 IN ARRAY ARRAY[
    ['tcp', 'tcp_id_fk', 'FOREIGN KEY (_tcp_id) REFERENCES ulog2 (_id) ON DELETE CASCADE'],
    ['udp', 'udp_id_fk', 'FOREIGN KEY (_udp_id) REFERENCES ulog2 (_id) ON DELETE CASCADE'],
    ['sctp', 'sctp_id_fk', 'FOREIGN KEY (_sctp_id) REFERENCES ulog2 (_id) ON DELETE CASCADE'],
    ['icmp', 'icmp_id_fk', 'FOREIGN KEY (_icmp_id) REFERENCES ulog2 (_id) ON DELETE CASCADE'],
    ['icmpv6', 'icmpv6_id_fk',
     'FOREIGN KEY (_icmpv6_id) REFERENCES ulog2 (_id) ON DELETE CASCADE'],
    ['hwhdr', 'hwhdr_id_fk', 'FOREIGN KEY (_hw_id) REFERENCES ulog2 (_id) ON DELETE CASCADE'],
    ['ulog2', 'mac_id_fk', 'FOREIGN KEY (mac_id) REFERENCES mac (_mac_id)']]
  LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conname = fk[2] AND conrelid = fk[1]::regclass) THEN
      EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I %s', fk[1], fk[2], fk[3]);
    END IF;
  END LOOP;
END $$;

CREATE OR REPLACE FUNCTION ULOG2_DROP_FOREIGN_KEYS() RETURNS void
LANGUAGE plpgsql SECURITY INVOKER AS $$
DECLARE
  fk text[];
BEGIN
  FOREACH fk SLICE 1 IN ARRAY ARRAY[
    ['tcp', 'tcp_id_fk'], ['udp', 'udp_id_fk'], ['sctp', 'sctp_id_fk'], ['icmp', 'icmp_id_fk'],
    ['icmpv6', 'icmpv6_id_fk'], ['hwhdr', 'hwhdr_id_fk'], ['ulog2', 'mac_id_fk']]
  LOOP
    EXECUTE format('ALTER TABLE %I DROP CONSTRAINT IF EXISTS %I', fk[1], fk[2]);
  END LOOP;
END $$;

SELECT ULOG2_ADD_FOREIGN_KEYS();

-- Views

CREATE OR REPLACE VIEW view_tcp AS
  SELECT * FROM ulog2 INNER JOIN tcp ON ulog2._id = tcp._tcp_id;

CREATE OR REPLACE VIEW view_udp AS
  SELECT * FROM ulog2 INNER JOIN udp ON ulog2._id = udp._udp_id;

CREATE OR REPLACE VIEW view_icmp AS
  SELECT * FROM ulog2 INNER JOIN icmp ON ulog2._id = icmp._icmp_id;

CREATE OR REPLACE VIEW view_icmpv6 AS
  SELECT * FROM ulog2 INNER JOIN icmpv6 ON ulog2._id = icmpv6._icmpv6_id;

-- Every packet with all its headers. The columns after _id are the arguments
-- of INSERT_PACKET_FULL (PGSQL reads them to choose its keys). An Ethernet
-- packet keeps its header in `mac` only: raw_type and mac_str are rebuilt.
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
    COALESCE(raw_type, CASE WHEN mac_daddr IS NOT NULL THEN 1 END) AS raw_type,
    COALESCE(raw_header, (mac_daddr::text || ':' || mac_saddr::text || ':'
      || regexp_replace(lpad(to_hex(mac_protocol), 4, '0'), '^(..)', '\1:')))::varchar(256)
      AS mac_str,
    mac_saddr AS mac_saddr_str,
    mac_daddr AS mac_daddr_str,
    mac_protocol AS oob_protocol,
    label AS raw_label,
    sctp_sport, sctp_dport, sctp_csum
  FROM ulog2
    LEFT JOIN tcp ON ulog2._id = tcp._tcp_id
    LEFT JOIN udp ON ulog2._id = udp._udp_id
    LEFT JOIN sctp ON ulog2._id = sctp._sctp_id
    LEFT JOIN icmp ON ulog2._id = icmp._icmp_id
    LEFT JOIN icmpv6 ON ulog2._id = icmpv6._icmpv6_id
    LEFT JOIN mac ON ulog2.mac_id = mac._mac_id
    LEFT JOIN hwhdr ON ulog2._id = hwhdr._hw_id;

-- Connection quadruples: who talked to whom.
CREATE OR REPLACE VIEW view_tcp_quad AS
  SELECT ulog2._id, ulog2.ip_saddr_str, tcp.tcp_sport, ulog2.ip_daddr_str, tcp.tcp_dport
  FROM ulog2 INNER JOIN tcp ON ulog2._id = tcp._tcp_id;

CREATE OR REPLACE VIEW view_udp_quad AS
  SELECT ulog2._id, ulog2.ip_saddr_str, udp.udp_sport, ulog2.ip_daddr_str, udp.udp_dport
  FROM ulog2 INNER JOIN udp ON ulog2._id = udp._udp_id;

-- Insert functions. Each header function returns the packet id it was given.

CREATE OR REPLACE FUNCTION INSERT_IP_PACKET(
  oob_time_sec bigint, oob_time_usec bigint, oob_prefix text, oob_mark bigint, oob_in text,
  oob_out text, oob_family bigint, ip_saddr_str inet, ip_daddr_str inet, ip_protocol bigint)
RETURNS bigint LANGUAGE plpgsql SECURITY INVOKER AS $$
DECLARE
  packet_id bigint;
BEGIN
  INSERT INTO ulog2 (oob_time_sec, oob_time_usec, oob_prefix, oob_mark, oob_in, oob_out,
                     oob_family, ip_saddr_str, ip_daddr_str, ip_protocol)
  VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
  RETURNING _id INTO packet_id;
  RETURN packet_id;
END $$;

CREATE OR REPLACE FUNCTION INSERT_IP_PACKET_FULL(
  oob_time_sec bigint, oob_time_usec bigint, oob_hook bigint, oob_prefix text,
  oob_mark bigint, oob_in text, oob_out text, oob_family bigint, ip_saddr_str inet,
  ip_daddr_str inet, ip_protocol bigint, ip_tos bigint, ip_ttl bigint, ip_totlen bigint,
  ip_ihl bigint, ip_csum bigint, ip_id bigint, ip_fragoff bigint, ip6_payloadlen bigint,
  ip6_priority bigint, ip6_hoplimit bigint, ip6_flowlabel bigint, ip6_fragoff bigint,
  ip6_fragid bigint, label bigint)
RETURNS bigint LANGUAGE plpgsql SECURITY INVOKER AS $$
DECLARE
  packet_id bigint;
BEGIN
  INSERT INTO ulog2 (oob_time_sec, oob_time_usec, oob_hook, oob_prefix, oob_mark, oob_in,
                     oob_out, oob_family, ip_saddr_str, ip_daddr_str, ip_protocol, ip_tos,
                     ip_ttl, ip_totlen, ip_ihl, ip_csum, ip_id, ip_fragoff, ip6_payloadlen,
                     ip6_priority, ip6_hoplimit, ip6_flowlabel, ip6_fragoff, ip6_fragid, label)
  VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
          $19, $20, $21, $22, $23, $24, $25)
  RETURNING _id INTO packet_id;
  RETURN packet_id;
END $$;

CREATE OR REPLACE FUNCTION INSERT_TCP_FULL(
  tcp_id bigint, tcp_sport bigint, tcp_dport bigint, tcp_seq bigint, tcp_ackseq bigint,
  tcp_window bigint, tcp_urg boolean, tcp_urgp bigint, tcp_ack boolean, tcp_psh boolean,
  tcp_rst boolean, tcp_syn boolean, tcp_fin boolean)
RETURNS bigint LANGUAGE plpgsql SECURITY INVOKER AS $$
BEGIN
  INSERT INTO tcp (_tcp_id, tcp_sport, tcp_dport, tcp_seq, tcp_ackseq, tcp_window, tcp_urg,
                   tcp_urgp, tcp_ack, tcp_psh, tcp_rst, tcp_syn, tcp_fin)
  VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13);
  RETURN $1;
END $$;

CREATE OR REPLACE FUNCTION INSERT_UDP(
  udp_id bigint, udp_sport bigint, udp_dport bigint, udp_len bigint)
RETURNS bigint LANGUAGE plpgsql SECURITY INVOKER AS $$
BEGIN
  INSERT INTO udp (_udp_id, udp_sport, udp_dport, udp_len) VALUES ($1, $2, $3, $4);
  RETURN $1;
END $$;

CREATE OR REPLACE FUNCTION INSERT_SCTP(
  sctp_id bigint, sctp_sport bigint, sctp_dport bigint, sctp_csum bigint)
RETURNS bigint LANGUAGE plpgsql SECURITY INVOKER AS $$
BEGIN
  INSERT INTO sctp (_sctp_id, sctp_sport, sctp_dport, sctp_csum) VALUES ($1, $2, $3, $4);
  RETURN $1;
END $$;

CREATE OR REPLACE FUNCTION INSERT_ICMP(
  icmp_id bigint, icmp_type bigint, icmp_code bigint, icmp_echoid bigint,
  icmp_echoseq bigint, icmp_gateway bigint, icmp_fragmtu bigint)
RETURNS bigint LANGUAGE plpgsql SECURITY INVOKER AS $$
BEGIN
  INSERT INTO icmp (_icmp_id, icmp_type, icmp_code, icmp_echoid, icmp_echoseq, icmp_gateway,
                    icmp_fragmtu)
  VALUES ($1, $2, $3, $4, $5, $6, $7);
  RETURN $1;
END $$;

CREATE OR REPLACE FUNCTION INSERT_ICMPV6(
  icmpv6_id bigint, icmpv6_type bigint, icmpv6_code bigint, icmpv6_echoid bigint,
  icmpv6_echoseq bigint, icmpv6_csum bigint)
RETURNS bigint LANGUAGE plpgsql SECURITY INVOKER AS $$
BEGIN
  INSERT INTO icmpv6 (_icmpv6_id, icmpv6_type, icmpv6_code, icmpv6_echoid, icmpv6_echoseq,
                      icmpv6_csum)
  VALUES ($1, $2, $3, $4, $5, $6);
  RETURN $1;
END $$;

CREATE OR REPLACE FUNCTION INSERT_HARDWARE_HEADER(
  hw_id bigint, hw_type bigint, hw_addr text)
RETURNS bigint LANGUAGE plpgsql SECURITY INVOKER AS $$
BEGIN
  INSERT INTO hwhdr (_hw_id, raw_type, raw_header) VALUES ($1, $2, $3);
  RETURN $1;
END $$;

-- The id of the mac row for these addresses, created when new.
CREATE OR REPLACE FUNCTION INSERT_OR_SELECT_MAC(
  in_mac_saddr macaddr, in_mac_daddr macaddr, in_mac_protocol bigint)
RETURNS bigint LANGUAGE plpgsql SECURITY INVOKER AS $$
DECLARE
  found_id bigint;
BEGIN
  FOR attempt IN 1..2 LOOP
    SELECT _mac_id INTO found_id FROM mac
    WHERE mac_saddr = in_mac_saddr AND mac_daddr IS NOT DISTINCT FROM in_mac_daddr
      AND mac_protocol IS NOT DISTINCT FROM in_mac_protocol
    LIMIT 1;
    IF found_id IS NOT NULL THEN
      RETURN found_id;
    END IF;
    -- Another session may insert the same addresses meanwhile: then read its row.
    INSERT INTO mac (mac_saddr, mac_daddr, mac_protocol)
    VALUES (in_mac_saddr, in_mac_daddr, in_mac_protocol)
    ON CONFLICT DO NOTHING
    RETURNING _mac_id INTO found_id;
    IF found_id IS NOT NULL THEN
      RETURN found_id;
    END IF;
  END LOOP;
  RETURN found_id;
END $$;

-- One packet, as PGSQL sends it with table="ulog": the ulog2 row, the row of
-- its transport protocol, its addresses in mac (when it has a source MAC
-- address) and other hardware headers in hwhdr. Returns the packet id.
CREATE OR REPLACE FUNCTION INSERT_PACKET_FULL(
  oob_time_sec bigint, oob_time_usec bigint, oob_hook bigint, oob_prefix text,
  oob_mark bigint, oob_in text, oob_out text, oob_family bigint, ip_saddr_str inet,
  ip_daddr_str inet, ip_protocol bigint, ip_tos bigint, ip_ttl bigint, ip_totlen bigint,
  ip_ihl bigint, ip_csum bigint, ip_id bigint, ip_fragoff bigint, ip6_payloadlen bigint,
  ip6_priority bigint, ip6_hoplimit bigint, ip6_flowlabel bigint, ip6_fragoff bigint,
  ip6_fragid bigint, tcp_sport bigint, tcp_dport bigint, tcp_seq bigint, tcp_ackseq bigint,
  tcp_window bigint, tcp_urg boolean, tcp_urgp bigint, tcp_ack boolean, tcp_psh boolean,
  tcp_rst boolean, tcp_syn boolean, tcp_fin boolean, udp_sport bigint, udp_dport bigint,
  udp_len bigint, icmp_type bigint, icmp_code bigint, icmp_echoid bigint,
  icmp_echoseq bigint, icmp_gateway bigint, icmp_fragmtu bigint, icmpv6_type bigint,
  icmpv6_code bigint, icmpv6_echoid bigint, icmpv6_echoseq bigint, icmpv6_csum bigint,
  raw_type bigint, raw_header text, mac_saddr macaddr, mac_daddr macaddr, mac_protocol bigint,
  label bigint, sctp_sport bigint, sctp_dport bigint, sctp_csum bigint)
RETURNS bigint LANGUAGE plpgsql SECURITY INVOKER AS $$
DECLARE
  packet_id bigint;
  packet_mac_id bigint;
BEGIN
  IF mac_saddr IS NOT NULL THEN
    packet_mac_id := INSERT_OR_SELECT_MAC(mac_saddr, mac_daddr, mac_protocol);
  END IF;
  INSERT INTO ulog2 (oob_time_sec, oob_time_usec, oob_hook, oob_prefix, oob_mark, oob_in,
                     oob_out, oob_family, ip_saddr_str, ip_daddr_str, ip_protocol, ip_tos,
                     ip_ttl, ip_totlen, ip_ihl, ip_csum, ip_id, ip_fragoff, ip6_payloadlen,
                     ip6_priority, ip6_hoplimit, ip6_flowlabel, ip6_fragoff, ip6_fragid, label,
                     mac_id)
  VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
          $19, $20, $21, $22, $23, $24, $56, packet_mac_id)
  RETURNING _id INTO packet_id;
  IF ip_protocol = 6 THEN
    PERFORM INSERT_TCP_FULL(packet_id, $25, $26, $27, $28, $29, $30, $31, $32, $33, $34,
                            $35, $36);
  ELSIF ip_protocol = 17 THEN
    PERFORM INSERT_UDP(packet_id, $37, $38, $39);
  ELSIF ip_protocol = 1 THEN
    PERFORM INSERT_ICMP(packet_id, $40, $41, $42, $43, $44, $45);
  ELSIF ip_protocol = 58 THEN
    PERFORM INSERT_ICMPV6(packet_id, $46, $47, $48, $49, $50);
  ELSIF ip_protocol = 132 THEN
    PERFORM INSERT_SCTP(packet_id, $57, $58, $59);
  END IF;
  -- Ethernet headers are all in mac; keep the others.
  IF raw_type IS DISTINCT FROM 1 AND (raw_type IS NOT NULL OR raw_header IS NOT NULL) THEN
    PERFORM INSERT_HARDWARE_HEADER(packet_id, raw_type, raw_header);
  END IF;
  RETURN packet_id;
END $$;

-- INSERT_PACKET_FULL for a whole batch: PGSQL copies each batch into a
-- temporary table (its columns: _n, the order of the rows, then the
-- arguments of INSERT_PACKET_FULL under their names) and, finding this twin,
-- calls it once instead of INSERT_PACKET_FULL once per row. The same rows
-- land in the same tables, ids in row order; a few statements per batch
-- instead of four or five per packet. Returns the number of packets stored.
CREATE OR REPLACE FUNCTION INSERT_PACKET_FULL_BATCH(batch regclass)
RETURNS bigint LANGUAGE plpgsql SECURITY INVOKER AS $$
DECLARE
  stored bigint;
BEGIN
  -- New address triples first (in one statement), so that every packet
  -- finds its mac row in the next one.
  EXECUTE format($sql$
    INSERT INTO mac (mac_saddr, mac_daddr, mac_protocol)
    SELECT DISTINCT b.mac_saddr, b.mac_daddr, b.mac_protocol FROM %s AS b
    WHERE b.mac_saddr IS NOT NULL AND NOT EXISTS (
      SELECT 1 FROM mac
      WHERE mac.mac_saddr = b.mac_saddr AND mac.mac_daddr IS NOT DISTINCT FROM b.mac_daddr
        AND mac.mac_protocol IS NOT DISTINCT FROM b.mac_protocol)
    ON CONFLICT DO NOTHING $sql$, batch);
  EXECUTE format($sql$
    WITH packet AS MATERIALIZED (
      SELECT nextval('ulog2__id_seq') AS packet_id, b.*,
        (SELECT mac._mac_id FROM mac
         WHERE mac.mac_saddr = b.mac_saddr AND mac.mac_daddr IS NOT DISTINCT FROM b.mac_daddr
           AND mac.mac_protocol IS NOT DISTINCT FROM b.mac_protocol
         LIMIT 1) AS packet_mac_id
      FROM (SELECT * FROM %s ORDER BY _n) AS b),
    packets AS (
      INSERT INTO ulog2 (_id, oob_time_sec, oob_time_usec, oob_hook, oob_prefix, oob_mark,
                         oob_in, oob_out, oob_family, ip_saddr_str, ip_daddr_str, ip_protocol,
                         ip_tos, ip_ttl, ip_totlen, ip_ihl, ip_csum, ip_id, ip_fragoff,
                         ip6_payloadlen, ip6_priority, ip6_hoplimit, ip6_flowlabel, ip6_fragoff,
                         ip6_fragid, label, mac_id)
      SELECT packet_id, oob_time_sec, oob_time_usec, oob_hook, oob_prefix, oob_mark, oob_in,
             oob_out, oob_family, ip_saddr_str, ip_daddr_str, ip_protocol, ip_tos, ip_ttl,
             ip_totlen, ip_ihl, ip_csum, ip_id, ip_fragoff, ip6_payloadlen, ip6_priority,
             ip6_hoplimit, ip6_flowlabel, ip6_fragoff, ip6_fragid, label, packet_mac_id
      FROM packet ORDER BY packet_id),
    tcp_rows AS (
      INSERT INTO tcp (_tcp_id, tcp_sport, tcp_dport, tcp_seq, tcp_ackseq, tcp_window,
                       tcp_urg, tcp_urgp, tcp_ack, tcp_psh, tcp_rst, tcp_syn, tcp_fin)
      SELECT packet_id, tcp_sport, tcp_dport, tcp_seq, tcp_ackseq, tcp_window, tcp_urg,
             tcp_urgp, tcp_ack, tcp_psh, tcp_rst, tcp_syn, tcp_fin
      FROM packet WHERE ip_protocol = 6),
    udp_rows AS (
      INSERT INTO udp (_udp_id, udp_sport, udp_dport, udp_len)
      SELECT packet_id, udp_sport, udp_dport, udp_len FROM packet WHERE ip_protocol = 17),
    icmp_rows AS (
      INSERT INTO icmp (_icmp_id, icmp_type, icmp_code, icmp_echoid, icmp_echoseq,
                        icmp_gateway, icmp_fragmtu)
      SELECT packet_id, icmp_type, icmp_code, icmp_echoid, icmp_echoseq, icmp_gateway,
             icmp_fragmtu
      FROM packet WHERE ip_protocol = 1),
    icmpv6_rows AS (
      INSERT INTO icmpv6 (_icmpv6_id, icmpv6_type, icmpv6_code, icmpv6_echoid,
                          icmpv6_echoseq, icmpv6_csum)
      SELECT packet_id, icmpv6_type, icmpv6_code, icmpv6_echoid, icmpv6_echoseq, icmpv6_csum
      FROM packet WHERE ip_protocol = 58),
    sctp_rows AS (
      INSERT INTO sctp (_sctp_id, sctp_sport, sctp_dport, sctp_csum)
      SELECT packet_id, sctp_sport, sctp_dport, sctp_csum FROM packet WHERE ip_protocol = 132),
    hardware_rows AS (
      INSERT INTO hwhdr (_hw_id, raw_type, raw_header)
      SELECT packet_id, raw_type, raw_header FROM packet
      WHERE raw_type IS DISTINCT FROM 1 AND (raw_type IS NOT NULL OR raw_header IS NOT NULL))
    SELECT count(*) FROM packet $sql$, batch) INTO stored;
  RETURN stored;
END $$;

-- Maintenance

-- Delete one packet and its headers.
CREATE OR REPLACE FUNCTION DELETE_PACKET(_packet_id bigint) RETURNS void
LANGUAGE sql SECURITY INVOKER AS $$
  DELETE FROM ulog2 WHERE _id = $1;
$$;

-- Delete header rows whose packet is gone (left by deletes made while the
-- foreign keys were dropped) and mac rows no packet refers to.
CREATE OR REPLACE FUNCTION COMPRESS_TABLES() RETURNS void
LANGUAGE sql SECURITY INVOKER AS $$
  DELETE FROM tcp WHERE NOT EXISTS (SELECT 1 FROM ulog2 WHERE ulog2._id = tcp._tcp_id);
  DELETE FROM udp WHERE NOT EXISTS (SELECT 1 FROM ulog2 WHERE ulog2._id = udp._udp_id);
  DELETE FROM sctp WHERE NOT EXISTS (SELECT 1 FROM ulog2 WHERE ulog2._id = sctp._sctp_id);
  DELETE FROM icmp WHERE NOT EXISTS (SELECT 1 FROM ulog2 WHERE ulog2._id = icmp._icmp_id);
  DELETE FROM icmpv6
    WHERE NOT EXISTS (SELECT 1 FROM ulog2 WHERE ulog2._id = icmpv6._icmpv6_id);
  DELETE FROM hwhdr WHERE NOT EXISTS (SELECT 1 FROM ulog2 WHERE ulog2._id = hwhdr._hw_id);
  DELETE FROM mac WHERE _mac_id NOT IN (SELECT mac_id FROM ulog2 WHERE mac_id IS NOT NULL);
$$;
