"""Throwaway PostgreSQL and MariaDB servers for the database tests.

Each server lives in a private temporary directory, runs as the package's
system user (the servers refuse root) and listens on a unix socket in that
directory, which processes in any network namespace can reach, and on a
loopback TCP port. :meth:`stop` and :meth:`start` let outage tests take a
server away and bring it back on the same data and addresses.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

STARTUP_TIMEOUT = 60.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_user(user: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", user, "--", *argv], check=True, capture_output=True, text=True
    )


def _wait_for(check: Callable[[], bool], what: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise RuntimeError(f"{what} did not start in {STARTUP_TIMEOUT:.0f} s\n{tail}")


class _Server:
    user = ""

    def __init__(self) -> None:
        pw = pwd.getpwnam(self.user)
        self.root = Path(tempfile.mkdtemp(prefix=f"nfkit-{self.user}-"))
        os.chmod(self.root, 0o755)
        os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def stop(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError


class Postgres(_Server):
    """A PostgreSQL cluster; superuser ``postgres`` with trust authentication.

    Tests run it without fsync; ``fsync=True`` keeps the server's durable default
    (benchmarks: a commit then costs what it costs on a real server).
    """

    user = "postgres"

    def __init__(self, fsync: bool = False) -> None:
        super().__init__()
        self.fsync = fsync
        bindir = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1]
        self.pg_ctl = f"{bindir}/pg_ctl"
        _as_user(
            self.user, f"{bindir}/initdb", "-D", str(self.data), "-U", "postgres",
            "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8",
        )  # fmt: skip
        self.start()

    @property
    def socket_dir(self) -> str:
        return str(self.root)

    def dsn(self, dbname: str = "postgres", user: str = "postgres", password: str = "") -> str:
        """A libpq conninfo string reaching the server over its unix socket."""
        auth = f" password={password}" if password else ""
        return f"host={self.root} port={self.port} dbname={dbname} user={user}{auth}"

    def start(self) -> None:
        options = (f"-k {self.root} -p {self.port} -c listen_addresses=127.0.0.1 "
                   f"-c fsync={'on' if self.fsync else 'off'}")
        _as_user(
            self.user, self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", options,
            "-w", "-t", str(int(STARTUP_TIMEOUT)), "start",
        )  # fmt: skip

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.CalledProcessError):
                _as_user(self.user, self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop")

    def psql(self, sql: str, dbname: str = "postgres", user: str = "postgres") -> str:
        """Run SQL with psql (unaligned, tuples only); the output text."""
        out = subprocess.run(
            ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", str(self.root),
             "-p", str(self.port), "-U", user, "-d", dbname, "-c", sql],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        return out.stdout


class MariaDB(_Server):
    """A MariaDB server; ``root`` without password over the socket and TCP."""

    user = "mysql"

    def __init__(self) -> None:
        super().__init__()
        subprocess.run(
            ["mariadb-install-db", "--no-defaults", "--user=mysql", f"--datadir={self.data}",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            check=True, capture_output=True,
        )  # fmt: skip
        self.start()

    @property
    def socket(self) -> str:
        return str(self.root / "mysqld.sock")

    def start(self) -> None:
        log = self.log.open("ab")
        self.process = subprocess.Popen(
            ["mariadbd", "--no-defaults", "--user=mysql", f"--datadir={self.data}",
             f"--socket={self.socket}", f"--port={self.port}", "--bind-address=127.0.0.1",
             f"--pid-file={self.root / 'mysqld.pid'}", "--innodb-flush-log-at-trx-commit=0",
             "--skip-name-resolve", f"--log-error={self.log}"],
            stdout=log, stderr=log,
        )  # fmt: skip
        log.close()
        _wait_for(self._answers, "MariaDB", self.log)

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"mariadbd exited: {self.log.read_text(errors='replace')[-2000:]}")
        probe = subprocess.run(
            ["mariadb-admin", f"--socket={self.socket}", "-uroot", "ping"],
            capture_output=True,
        )
        return probe.returncode == 0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def sql(self, sql: str, database: str = "") -> str:
        """Run SQL with the mariadb client (batch mode, no column names); the output."""
        argv = ["mariadb", f"--socket={self.socket}", "-uroot", "-N", "-B", "-e", sql]
        if database:
            argv.append(database)
        return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def _unavailable(*programs: str) -> str | None:
    if os.geteuid() != 0:
        return "needs root (the servers run as their own system users)"
    missing = [p for p in programs if shutil.which(p) is None and not glob.glob(p)]
    return f"not installed: {', '.join(missing)}" if missing else None


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One PostgreSQL server for the whole test session."""
    reason = _unavailable("psql", "/usr/lib/postgresql/*/bin/initdb")
    if reason:
        pytest.skip(reason)
    server = Postgres()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDB]:
    """One MariaDB server for the whole test session."""
    reason = _unavailable("mariadbd", "mariadb-install-db", "mariadb")
    if reason:
        pytest.skip(reason)
    server = MariaDB()
    try:
        yield server
    finally:
        server.remove()
