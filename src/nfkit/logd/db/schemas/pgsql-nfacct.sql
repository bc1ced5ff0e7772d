-- nfkit: nfacct accounting objects for PostgreSQL, compatible by name with
-- ulogd2's nfacct table. Its columns are the arguments of INSERT_NFACCT:
--     [pgsql4] table="nfacct" procedure="INSERT_NFACCT"
-- with a stack NFACCT,PGSQL (NFACCT timestamp=1).

CREATE TABLE IF NOT EXISTS nfacct (
  sum_name varchar(128),
  sum_pkts bigint DEFAULT 0,
  sum_bytes bigint DEFAULT 0,
  oob_time_sec bigint,
  oob_time_usec integer
);
CREATE UNIQUE INDEX IF NOT EXISTS unique_acct ON nfacct (sum_name, oob_time_sec, oob_time_usec);

-- One reading of one accounting object.
CREATE OR REPLACE FUNCTION INSERT_NFACCT(
  sum_name text, sum_pkts bigint, sum_bytes bigint, oob_time_sec bigint, oob_time_usec bigint)
RETURNS void LANGUAGE sql SECURITY INVOKER AS $$
  INSERT INTO nfacct (sum_name, sum_pkts, sum_bytes, oob_time_sec, oob_time_usec)
  VALUES ($1, $2, $3, $4, $5);
$$;
