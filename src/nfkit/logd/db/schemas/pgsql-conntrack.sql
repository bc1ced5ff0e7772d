-- nfkit: connection tracking flows for PostgreSQL, compatible by name with
-- the ulog2_ct part of ulogd2's schemas. The columns after _ct_id are the
-- arguments of INSERT_CT and INSERT_OR_REPLACE_CT, in order:
--     [pgsql2] table="ulog2_ct" procedure="INSERT_CT"
-- with a stack NFCT,IP2STR,PGSQL.

CREATE SEQUENCE IF NOT EXISTS ulog2_ct__ct_id_seq;
CREATE TABLE IF NOT EXISTS ulog2_ct (
  _ct_id bigint PRIMARY KEY DEFAULT nextval('ulog2_ct__ct_id_seq'),
  oob_family smallint,
  orig_ip_saddr_str inet,
  orig_ip_daddr_str inet,
  orig_ip_protocol smallint,
  orig_l4_sport integer,
  orig_l4_dport integer,
  orig_raw_pktlen bigint DEFAULT 0,
  orig_raw_pktcount bigint DEFAULT 0,
  reply_ip_saddr_str inet,
  reply_ip_daddr_str inet,
  reply_ip_protocol smallint,
  reply_l4_sport integer,
  reply_l4_dport integer,
  reply_raw_pktlen bigint DEFAULT 0,
  reply_raw_pktcount bigint DEFAULT 0,
  icmp_code smallint,
  icmp_type smallint,
  ct_mark bigint DEFAULT 0,
  flow_start_sec bigint DEFAULT 0,
  flow_start_usec bigint DEFAULT 0,
  flow_end_sec bigint DEFAULT 0,
  flow_end_usec bigint DEFAULT 0,
  ct_event smallint DEFAULT 0
);
ALTER SEQUENCE ulog2_ct__ct_id_seq OWNED BY ulog2_ct._ct_id;
CREATE INDEX IF NOT EXISTS ulog2_ct_orig_ip_saddr ON ulog2_ct (orig_ip_saddr_str);
CREATE INDEX IF NOT EXISTS ulog2_ct_orig_ip_daddr ON ulog2_ct (orig_ip_daddr_str);
CREATE INDEX IF NOT EXISTS ulog2_ct_reply_ip_saddr ON ulog2_ct (reply_ip_saddr_str);
CREATE INDEX IF NOT EXISTS ulog2_ct_reply_ip_daddr ON ulog2_ct (reply_ip_daddr_str);
CREATE INDEX IF NOT EXISTS ulog2_ct_orig_l4_sport ON ulog2_ct (orig_l4_sport);
CREATE INDEX IF NOT EXISTS ulog2_ct_orig_l4_dport ON ulog2_ct (orig_l4_dport);
CREATE INDEX IF NOT EXISTS ulog2_ct_reply_l4_sport ON ulog2_ct (reply_l4_sport);
CREATE INDEX IF NOT EXISTS ulog2_ct_reply_l4_dport ON ulog2_ct (reply_l4_dport);
CREATE INDEX IF NOT EXISTS ulog2_ct_event ON ulog2_ct (ct_event);
-- The flows still open (NEW seen, DESTROY not yet), for INSERT_OR_REPLACE_CT.
-- Ports and ICMP type/code are NULL for some protocols: -1 stands for NULL.
CREATE INDEX IF NOT EXISTS ulog2_ct_open ON ulog2_ct (
  orig_ip_saddr_str, orig_ip_daddr_str, orig_ip_protocol,
  COALESCE(orig_l4_sport, -1), COALESCE(orig_l4_dport, -1)) WHERE ct_event = 1;

-- One flow event; returns the new row's id.
CREATE OR REPLACE FUNCTION INSERT_CT(
  _oob_family bigint, _orig_ip_saddr inet, _orig_ip_daddr inet, _orig_ip_protocol bigint,
  _orig_l4_sport bigint, _orig_l4_dport bigint, _orig_raw_pktlen bigint,
  _orig_raw_pktcount bigint, _reply_ip_saddr inet, _reply_ip_daddr inet,
  _reply_ip_protocol bigint, _reply_l4_sport bigint, _reply_l4_dport bigint,
  _reply_raw_pktlen bigint, _reply_raw_pktcount bigint, _icmp_code bigint, _icmp_type bigint,
  _ct_mark bigint, _flow_start_sec bigint, _flow_start_usec bigint, _flow_end_sec bigint,
  _flow_end_usec bigint, _ct_event bigint)
RETURNS bigint LANGUAGE plpgsql SECURITY INVOKER AS $$
DECLARE
  flow_id bigint;
BEGIN
  INSERT INTO ulog2_ct (oob_family, orig_ip_saddr_str, orig_ip_daddr_str, orig_ip_protocol,
                        orig_l4_sport, orig_l4_dport, orig_raw_pktlen, orig_raw_pktcount,
                        reply_ip_saddr_str, reply_ip_daddr_str, reply_ip_protocol,
                        reply_l4_sport, reply_l4_dport, reply_raw_pktlen, reply_raw_pktcount,
                        icmp_code, icmp_type, ct_mark, flow_start_sec, flow_start_usec,
                        flow_end_sec, flow_end_usec, ct_event)
  VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
          $19, $20, $21, $22, $23)
  RETURNING _ct_id INTO flow_id;
  RETURN flow_id;
END $$;

-- One row per flow from NEW and DESTROY events (NFCT with hash_enable=0): a
-- DESTROY completes the row of the latest NEW of the same flow (counters,
-- mark, end time, event) and returns its id; a DESTROY without that row, and
-- every other event, is inserted as INSERT_CT does. The original tuple
-- identifies a live flow (ICMP: addresses, type and code; the echo id is no
-- column, so of two concurrent pings the later NEW is completed first).
CREATE OR REPLACE FUNCTION INSERT_OR_REPLACE_CT(
  _oob_family bigint, _orig_ip_saddr inet, _orig_ip_daddr inet, _orig_ip_protocol bigint,
  _orig_l4_sport bigint, _orig_l4_dport bigint, _orig_raw_pktlen bigint,
  _orig_raw_pktcount bigint, _reply_ip_saddr inet, _reply_ip_daddr inet,
  _reply_ip_protocol bigint, _reply_l4_sport bigint, _reply_l4_dport bigint,
  _reply_raw_pktlen bigint, _reply_raw_pktcount bigint, _icmp_code bigint, _icmp_type bigint,
  _ct_mark bigint, _flow_start_sec bigint, _flow_start_usec bigint, _flow_end_sec bigint,
  _flow_end_usec bigint, _ct_event bigint)
RETURNS bigint LANGUAGE plpgsql SECURITY INVOKER AS $$
DECLARE
  flow_id bigint;
BEGIN
  IF _ct_event = 4 THEN
    UPDATE ulog2_ct
    SET orig_raw_pktlen = _orig_raw_pktlen, orig_raw_pktcount = _orig_raw_pktcount,
        reply_raw_pktlen = _reply_raw_pktlen, reply_raw_pktcount = _reply_raw_pktcount,
        ct_mark = _ct_mark, flow_end_sec = _flow_end_sec, flow_end_usec = _flow_end_usec,
        ct_event = _ct_event
    WHERE _ct_id = (
      SELECT _ct_id FROM ulog2_ct
      WHERE ct_event = 1 AND oob_family = _oob_family
        AND orig_ip_saddr_str = _orig_ip_saddr AND orig_ip_daddr_str = _orig_ip_daddr
        AND orig_ip_protocol = _orig_ip_protocol
        AND COALESCE(orig_l4_sport, -1) = COALESCE(_orig_l4_sport, -1)
        AND COALESCE(orig_l4_dport, -1) = COALESCE(_orig_l4_dport, -1)
        AND icmp_type IS NOT DISTINCT FROM _icmp_type
        AND icmp_code IS NOT DISTINCT FROM _icmp_code
      ORDER BY _ct_id DESC
      LIMIT 1)
    RETURNING _ct_id INTO flow_id;
    IF flow_id IS NOT NULL THEN
      RETURN flow_id;
    END IF;
  END IF;
  RETURN INSERT_CT($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                   $18, $19, $20, $21, $22, $23);
END $$;

-- Delete one flow row.
CREATE OR REPLACE FUNCTION DELETE_CT_FLOW(_ct_packet_id bigint) RETURNS void
LANGUAGE sql SECURITY INVOKER AS $$
  DELETE FROM ulog2_ct WHERE _ct_id = $1;
$$;
