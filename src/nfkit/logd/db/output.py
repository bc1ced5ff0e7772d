"""The plugin base of the SQL outputs (PGSQL, MYSQL, DBI): options, configure, rows.

At configure time the output connects once, reads the columns of ``table``
(a table or a view), maps them to keys, checks ``procedure`` (the function
exists with one argument per column...) and disconnects: every problem is a
start-up error naming the option. At start a :class:`~nfkit.logd.db.writer.Writer`
thread takes over the connection; the daemon loop only builds rows.

Options: ulogd2's seven common ones first (``table``, ``reconnect``,
``connect_timeout``, ``procedure``, ``backlog_memcap``,
``backlog_oneshot_requests``, ``ring_buffer_size``), the driver's own, then
ours (:data:`SPOOL_OPTIONS`):

* ``spool_dir``: directory of the on-disk spool, where rows wait while the
  database is unreachable or slower than the traffic (``""``: memory only,
  ``backlog_memcap`` bytes, lost at stop; ``backlog_memcap=0`` then drops
  rows during outages as ulogd2 does);
* ``spool_max_bytes``: bound of the on-disk spool; rows beyond are dropped,
  counted and reported;
* ``reject_file``: rows the database refuses, one JSON object per line with
  the reason (``""``: ``<spool_dir>/<instance>.rejected``, or the daemon log);
* ``batch_size`` rows / ``batch_timeout_ms``: a batch is written when either
  is reached.

ulogd2's ``ring_buffer_size`` (statements queued for its writer thread) is
the number of rows the memory queue holds (0: ``QUEUE_BATCHES * batch_size``,
about 1 KiB of memory per row of ulogd2's flat packet table; rows beyond go
to the spool, which costs the writer twice the CPU per row until it is empty);
``backlog_memcap`` bounds the memory spool when there is no ``spool_dir``;
``backlog_oneshot_requests`` is accepted and unused (the spool is replayed
in full batches); ``reconnect`` is the number of seconds between connection
attempts (0: no reconnection, rows are spooled for the next start);
``connect_timeout`` is honoured by every driver (0: 10 seconds).
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from nfkit.logd.db.backend import (
    Backend,
    Column,
    ConnectParams,
    DatabaseMisconfigured,
    DatabaseUnreachable,
    Name,
    Statement,
)
from nfkit.logd.db.columns import FirstColumn, map_columns
from nfkit.logd.db.spool import FileSpool, MemorySpool, Row, Spool
from nfkit.logd.db.writer import RejectFile, Writer, WriterSettings
from nfkit.logd.errors import ConfigError, StartError
from nfkit.logd.keys import Event
from nfkit.logd.plugin import ERROR, BatchPlugin, DataType, Option, Plugin, Role
from nfkit.logd.plugins._wildcard import upstream_keys
from nfkit.ratelimit import LogLimiter

DEFAULT_CONNECT_TIMEOUT = 10
#: Memory queue, in batches: a second of 50k rows/s, so that a slow commit does not
#: send the rows through the spool (bench/db_bench.py; 10 batches lost rows at 30k/s).
QUEUE_BATCHES = 50

#: ulogd2's options common to PGSQL, MYSQL and DBI, in its order.
COMMON_OPTIONS = (
    Option("table", str, "", mandatory=True),
    Option("reconnect", int, 2),
    Option("connect_timeout", int, 0),
    Option("procedure", str, "", mandatory=True),
    Option("backlog_memcap", int, 0),
    Option("backlog_oneshot_requests", int, 10),
    Option("ring_buffer_size", int, 0),
)

#: The connection options of PGSQL and DBI (MYSQL makes more of them mandatory).
CONNECTION_OPTIONS = (
    Option("db", str, "", mandatory=True),
    Option("host", str, ""),
    Option("user", str, "", mandatory=True),
    Option("pass", str, ""),
    Option("port", int, 0),
    Option("schema", str, "public"),
)

#: nfkit's additions, after the driver's options.
SPOOL_OPTIONS = (
    Option("spool_dir", str, "/var/spool/nfkit", help="on-disk spool directory; '' for memory"),
    Option("spool_max_bytes", int, 1 << 30, help="bound of the on-disk spool"),
    Option("reject_file", str, "", help="rows the database refuses (JSON lines)"),
    Option("batch_size", int, 1000, help="rows per write"),
    Option("batch_timeout_ms", int, 200, help="longest wait before a partial batch is written"),
)


class DatabaseOutput(BatchPlugin):
    """An output writing one row per event through a :class:`Backend`.

    Subclasses set ``options`` (:data:`COMMON_OPTIONS` + their own +
    :data:`SPOOL_OPTIONS`), ``first_column`` and :meth:`backend_class`.
    """

    role = Role.OUTPUT
    input_type = DataType.PACKET | DataType.FLOW | DataType.SUM
    output_type = DataType.SINK
    dynamic_inputs = True
    #: ulogd2 leaves the first column to the database (an id): MYSQL and DBI always.
    first_column: ClassVar[FirstColumn] = FirstColumn.SKIPPED

    writer: Writer | None = None

    # -- what subclasses provide ---------------------------------------------------------

    def backend_class(self) -> type[Backend]:
        """The backend to use; ConfigError when its driver is missing."""
        raise NotImplementedError

    def connect_params(self) -> ConnectParams:
        """Connection parameters from the options (``db``, ``host``...)."""
        get = self._get
        timeout = get("connect_timeout") or DEFAULT_CONNECT_TIMEOUT
        return ConnectParams(
            database=get("db"),
            host=get("host"),
            port=get("port"),
            user=get("user"),
            password=get("pass"),
            schema=get("schema"),
            connstring=get("connstring"),
            timeout=float(timeout),
        )

    def _get(self, name: str) -> Any:
        """An option's value, or its type's empty value for options this plugin lacks."""
        try:
            return self.settings[name]
        except KeyError:
            return next((opt.type() for opt in self.options if opt.name == name), "")

    # -- configure ---------------------------------------------------------------------

    def configure(self, upstream: Sequence[Plugin]) -> None:
        self._check_numbers()
        cls = self.backend_class()
        self.params = self.connect_params()
        where_table = self.settings.where("table")
        try:
            table = Name.parse(self.settings["table"])
            Statement.parse(self.settings["procedure"], self.settings["table"], ())
        except ValueError as exc:
            option = "table" if "procedure" not in str(exc) else "procedure"
            raise ConfigError(str(exc), self.settings.where(option),
                              "write a plain name (or schema.name) of the database") from None
        backend = cls(self.params)
        try:
            backend.connect()
            try:
                columns = backend.columns(table)
                self.mapping = map_columns(
                    columns,
                    {key.name: key for key in upstream_keys(upstream)},
                    self.first_column,
                    f"table {self.settings['table']!r} in {self.params.describe()}",
                    where_table,
                )
                self.statement = Statement.parse(
                    self.settings["procedure"], self.settings["table"], self.mapping.columns
                )
                targets = backend.prepare(self.statement)
            finally:
                backend.close()
        except DatabaseMisconfigured as exc:
            raise ConfigError(
                f"{self.params.describe()}: {exc.what}",
                self.settings.where(exc.option or "table"),
                exc.fix,
            ) from None
        except DatabaseUnreachable as exc:
            raise StartError(
                f"cannot connect to {self.params.describe()}: {exc}",
                self.settings.where("host" if "host" in self._option_names() else "db"),
                "start the database server, or check host=, port= and connect_timeout=",
            ) from None
        self.inputs = self.mapping.inputs
        self.names = self.mapping.names
        self.conversions = self._conversions(backend, targets)

    def _option_names(self) -> set[str]:
        return {opt.name for opt in self.options}

    def _check_numbers(self) -> None:
        for name, low in (("reconnect", 0), ("connect_timeout", 0), ("backlog_memcap", 0),
                          ("ring_buffer_size", 0), ("spool_max_bytes", 0), ("batch_size", 1),
                          ("batch_timeout_ms", 1)):
            if self.settings[name] < low:
                raise ConfigError(f"{name}={self.settings[name]} is below {low}",
                                  self.settings.where(name), f"set {name} to {low} or more")

    def _conversions(
        self, backend: Backend, targets: Sequence[Column]
    ) -> tuple[tuple[int, Callable[[Any], Any]], ...]:
        found = []
        for index, (key, column) in enumerate(zip(self.mapping.keys, targets, strict=True)):
            convert = backend.converter(key, column)
            if convert is not None:
                found.append((index, convert))
        return tuple(found)

    # -- running --------------------------------------------------------------------------

    def start(self) -> None:
        settings = self.settings
        batch = settings["batch_size"]
        self.limiter = LogLimiter(self.log, f"{self}")
        spool, persistent = self._spool()
        rejects = RejectFile(self._reject_path(), settings["table"],
                             [column.name for column in self.mapping.columns], self.log)
        cls, params, statement = self.backend_class(), self.params, self.statement

        def open_backend() -> Backend:
            backend = cls(params)
            try:
                backend.connect()
                backend.prepare(statement)
            except BaseException:
                backend.close()
                raise
            return backend

        self.writer = Writer(
            f"{self}",
            open_backend,
            params.describe(),
            spool,
            rejects,
            WriterSettings(
                batch_size=batch,
                batch_timeout=settings["batch_timeout_ms"] / 1000,
                queue_rows=settings["ring_buffer_size"] or QUEUE_BATCHES * batch,
                reconnect=float(settings["reconnect"]),
            ),
            self.log,
            persistent,
        )
        self.writer.start()

    def _spool(self) -> tuple[Spool, bool]:
        directory = self.settings["spool_dir"]
        if not directory:
            return MemorySpool(self.settings["backlog_memcap"]), False
        try:
            return FileSpool(directory, self._file_name(), self.settings["spool_max_bytes"],
                             self.log, self.context.run_as), True
        except OSError as exc:
            raise StartError(
                f"cannot use spool directory {directory!r}: {exc.strerror or exc}",
                self.settings.where("spool_dir"),
                "create it writable for the daemon, point spool_dir= elsewhere, "
                "or set spool_dir=\"\" to keep rows in memory only",
            ) from None

    def _file_name(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]", "_", self.id)

    def _reject_path(self) -> str:
        path: str = self.settings["reject_file"]
        if path or not self.settings["spool_dir"]:
            return path
        return os.path.join(self.settings["spool_dir"], self._file_name() + ".rejected")

    def interp_batch(self, events: list[Event], finish: Callable[[int], None]) -> list[Event]:
        writer = self.writer
        if writer is None:
            return events
        names = self.names
        conversions = self.conversions
        rows: list[Row] = []
        failed: list[Event] = []
        for event in events:
            row = list(map(event.get, names))
            try:
                for index, convert in conversions:
                    value = row[index]
                    if value is not None:
                        row[index] = convert(value)
            except (TypeError, ValueError, AttributeError) as exc:
                self.limiter(40, "%s: event skipped, a value does not convert: %s", self, exc)
                finish(ERROR)
                failed.append(event)
                continue
            rows.append(row)
        writer.put(rows)
        if failed:
            gone = {id(event) for event in failed}
            return [event for event in events if id(event) not in gone]
        return events

    def signal(self, signo: int) -> None:
        if signo == signal.SIGUSR1 and self.writer is not None:
            self.log.info("%s: %s", self, self.writer.status())

    def stop(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.stop()
            self.limiter.flush()
