"""The SQL schemas nfkit ships for its database outputs (``nfkit db init``).

They are compatible by name with ulogd2's (same tables, columns in the same
order, views, function names and argument order), with the column types
fixed to hold every value; ``docs/databases.md`` describes them. A schema is
a list of SQL files of this directory, run in order; each file creates only
what is missing, so a schema can be loaded again into a database in use.

MariaDB files use the ``DELIMITER`` lines of the ``mariadb`` client for
their routines; :func:`statements` splits such a script for a driver.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

PGSQL = "pgsql"
MYSQL = "mysql"
SQLITE3 = "sqlite3"


@dataclass(frozen=True)
class Schema:
    """One schema for one database engine.

    ``usage`` lists (table, procedure, what) for the output plugin options.
    """

    name: str
    engine: str
    title: str
    files: tuple[str, ...]
    usage: tuple[tuple[str, str, str], ...]

    def sql(self) -> str:
        """The whole script: the files in order."""
        folder = resources.files(__name__)
        return "\n".join(folder.joinpath(name).read_text(encoding="utf-8") for name in self.files)


_PGSQL_FLOWS = (
    ("ulog2_ct", "INSERT_CT", "flows (NFCT, IP2STR)"),
    ("ulog2_ct", "INSERT_OR_REPLACE_CT", "one row per flow (NFCT hash_enable=0, IP2STR)"),
    ("nfacct", "INSERT_NFACCT", "nfacct counters (NFACCT timestamp=1)"),
)

SCHEMAS = {
    schema.name: schema
    for schema in (
        Schema(
            "pgsql",
            PGSQL,
            "normalized PostgreSQL",
            ("pgsql-base.sql", "pgsql-packets.sql", "pgsql-conntrack.sql", "pgsql-nfacct.sql"),
            (
                ("ulog", "INSERT_PACKET_FULL", "packets (NFLOG, BASE, IFINDEX, IP2STR, HWHDR)"),
                *_PGSQL_FLOWS,
            ),
        ),
        Schema(
            "pgsql-flat",
            PGSQL,
            "flat PostgreSQL",
            ("pgsql-base.sql", "pgsql-flat.sql", "pgsql-conntrack.sql", "pgsql-nfacct.sql"),
            (
                ("ulog2", "INSERT", "packets (NFLOG, BASE, IFINDEX, IP2STR, HWHDR)"),
                *_PGSQL_FLOWS,
            ),
        ),
        Schema(
            "mysql-flat",
            MYSQL,
            "flat MariaDB/MySQL",
            ("mysql-flat.sql",),
            (
                ("ulog2", "INSERT", "packets (NFLOG, BASE, IFINDEX, IP2BIN, HWHDR)"),
                ("conntrack", "INSERT_CT", "flows (NFCT, IP2BIN)"),
            ),
        ),
        Schema(
            "sqlite3",
            SQLITE3,
            "SQLite",
            ("sqlite3.sql",),
            (
                ("ulog_pkt", "-", "packet metadata (NFLOG), ulogd2's sqlite3.table"),
                ("ulog_ct", "-", "IPv4 flows (NFCT), ulogd2's sqlite3.table"),
                ("ulog2", "-", "packets, IPv4 and IPv6 (NFLOG, BASE, IFINDEX, IP2STR, HWHDR)"),
                ("ulog2_ct", "-", "flows, IPv4 and IPv6 (NFCT, IP2STR)"),
                ("nfacct", "-", "nfacct counters (NFACCT timestamp=1)"),
            ),
        ),
    )
}


def schema_for(engine: str, flat: bool) -> Schema:
    """The schema of ``engine`` (normalized or flat); KeyError when nfkit has none."""
    if engine == PGSQL:
        return SCHEMAS["pgsql-flat" if flat else "pgsql"]
    if engine == MYSQL and flat:
        return SCHEMAS["mysql-flat"]
    if engine == SQLITE3:
        return SCHEMAS["sqlite3"]
    raise KeyError(engine)


_DELIMITER = re.compile(r"^\s*DELIMITER\s+(\S+)\s*$", re.IGNORECASE)


def statements(script: str) -> list[str]:
    """The statements of a MariaDB script written for the ``mariadb`` client.

    A statement ends with the current delimiter at the end of a line (``;``
    until a ``DELIMITER $$`` line changes it); comment lines are dropped.
    """
    found: list[str] = []
    delimiter = ";"
    lines: list[str] = []
    for line in script.splitlines():
        switch = _DELIMITER.match(line)
        if switch:
            delimiter = switch.group(1)
            continue
        if not lines and (not line.strip() or line.lstrip().startswith("--")):
            continue
        stripped = line.rstrip()
        if stripped.endswith(delimiter):
            lines.append(stripped[: -len(delimiter)])
            found.append("\n".join(lines).strip())
            lines = []
        else:
            lines.append(line)
    if any(line.strip() and not line.lstrip().startswith("--") for line in lines):
        found.append("\n".join(lines).strip())
    return found
