"""The database output layer shared by PGSQL, MYSQL, DBI and SQLITE3."""
