"""The logd daemon: its own log, pidfile, privileges, signals and main loop."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import logging
import logging.handlers
import os
import pwd
import signal
import sys
import time
from dataclasses import dataclass
from typing import TextIO

from nfkit.logd.config import ConfigFile
from nfkit.logd.engine import Pipeline
from nfkit.logd.errors import ConfigError, StartError
from nfkit.logd.loop import EventLoop
from nfkit.logd.plugin import Context

NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")

# ulogd's numeric levels (1 debug, 3 info, 5 notice, 7 error, 8 fatal) <-> logging's.
_TO_ULOGD = {logging.DEBUG: 1, logging.INFO: 3, NOTICE: 5, logging.WARNING: 5, logging.ERROR: 7}


def python_level(ulogd_level: int) -> int:
    """Threshold: ulogd drops messages whose level is below ``loglevel``."""
    if ulogd_level <= 1:
        return logging.DEBUG
    if ulogd_level <= 3:
        return logging.INFO
    if ulogd_level <= 5:
        return NOTICE
    if ulogd_level <= 7:
        return logging.ERROR
    return logging.CRITICAL


class UlogdFormatter(logging.Formatter):
    """``Sat Nov 21 10:47:32 2026 <5> file.py:123 message``, as ulogd writes its log."""

    def format(self, record: logging.LogRecord) -> str:
        level = _TO_ULOGD.get(record.levelno, 8)
        text = f"{time.ctime(record.created)} <{level}> {record.filename}:{record.lineno} "
        text += record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


@dataclass
class Options:
    configfile: str = "/etc/ulogd.conf"
    daemon: bool = False
    pidfile: str | None = None
    user: str | None = None
    group: str | None = None
    verbose: bool = False
    loglevel: int | None = None
    check: bool = False
    stats_interval: float = 60.0


class Pidfile:
    """A pidfile locked for the daemon's lifetime; the lock is the liveness test."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            # flock, not lockf: a POSIX record lock belongs to the process and
            # is lost when --daemon forks; a flock lock follows the descriptor.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            other = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise StartError(
                    f"another logd is already running with pid {other}",
                    self.path,
                    "stop it first, or give this one another --pidfile",
                ) from None
            raise
        self.fd = fd
        # Emptied now, written once the pid is final (after daemonizing), so
        # nobody reads the pid of a parent that is about to exit.
        os.ftruncate(fd, 0)

    def write(self) -> None:
        """(Re)write our pid, e.g. after daemonizing changed it."""
        assert self.fd is not None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            # After -u the directory may not be ours any more: the file stays,
            # unlocked, and the next start treats it as stale.
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            os.close(self.fd)
            self.fd = None


class Daemon:
    """Build the pipeline from a config file and run it until a terminal signal."""

    def __init__(self, options: Options, stderr: TextIO | None = None) -> None:
        self.options = options
        self.stderr = stderr or sys.stderr
        self.log = logging.getLogger("nfkit.logd")
        self.loop = EventLoop()
        self.context = Context(self.loop, self.log)
        self.pipeline: Pipeline | None = None
        self.pidfile: Pidfile | None = None
        self._handler: logging.Handler | None = None
        self._logfile: str | None = None

    # -- set-up ------------------------------------------------------------

    def load(self) -> Pipeline:
        """Parse and validate the configuration; nothing is opened (``--check``)."""
        config = ConfigFile(os.path.abspath(self.options.configfile))
        self._configure_logging(config)
        self.pipeline = Pipeline(config, self.context)
        return self.pipeline

    def _configure_logging(self, config: ConfigFile) -> None:
        entries = config.global_values("logfile")
        self._logfile = entries[0].value if entries else None
        level_entries = config.global_values("loglevel")
        ulogd_level = self.options.loglevel
        if ulogd_level is None and level_entries:
            from nfkit.logd.config import parse_int

            ulogd_level = parse_int(
                level_entries[0].value, "loglevel", config.where(level_entries[0].line)
            )
        self.log.setLevel(python_level(ulogd_level or 5))
        self.log.propagate = False

    def _open_log_handler(self) -> None:
        if self._handler is not None:
            self.log.removeHandler(self._handler)
            self._handler.close()
        target = self._logfile
        handler: logging.Handler
        if target == "syslog":
            handler = logging.handlers.SysLogHandler(
                address="/dev/log" if os.path.exists("/dev/log") else ("localhost", 514),
                facility=logging.handlers.SysLogHandler.LOG_DAEMON,
            )
            handler.setFormatter(logging.Formatter("ulogd[%(process)d]: %(message)s"))
        elif target in (None, "stdout"):
            # No logfile line: stderr (ulogd2 silently used syslog here).
            handler = logging.StreamHandler(sys.stdout if target == "stdout" else self.stderr)
            handler.setFormatter(UlogdFormatter())
        else:
            try:
                handler = logging.FileHandler(target, encoding="utf-8")
            except OSError as exc:
                raise StartError(
                    f"cannot open the daemon's logfile {target!r}: {exc.strerror}",
                    "[global] logfile",
                    "create the directory or point logfile= elsewhere",
                ) from None
            handler.setFormatter(UlogdFormatter())
        self.log.addHandler(handler)
        self._handler = handler
        if self.options.verbose and target not in (None, "syslog"):
            echo = logging.StreamHandler(self.stderr)
            echo.setFormatter(UlogdFormatter())
            self.log.addHandler(echo)

    # -- running -----------------------------------------------------------

    def run(self) -> int:
        """Start everything and serve until SIGTERM/SIGINT; returns the exit code."""
        pipeline = self.pipeline or self.load()
        # Opened here, not in load(): --check and the root check come first.
        self._open_log_handler()
        if self.options.pidfile:
            self.pidfile = Pidfile(os.path.abspath(self.options.pidfile))
            self.pidfile.acquire()
        try:
            if self.options.daemon:
                _daemonize()
            if self.pidfile is not None:
                self.pidfile.write()
            self.context.run_as = self._target_ids()
            pipeline.start()
            self._drop_privileges()
            for signo in (signal.SIGTERM, signal.SIGINT):
                self.loop.add_signal_handler(signo, self._terminate)
            self.loop.add_signal_handler(signal.SIGHUP, self._hangup)
            self.loop.add_signal_handler(signal.SIGUSR1, self._user_signal)
            self.loop.add_signal_handler(signal.SIGUSR2, self._user_signal)
            self.loop.add_signal_handler(signal.SIGALRM, self._user_signal)
            if self.options.stats_interval > 0:
                self.loop.call_every(self.options.stats_interval, self._report)
            self.log.info("initialization finished, entering main loop")
            self.loop.run()
            self._report(force=True)
            return 0
        finally:
            pipeline.stop()
            self.loop.close()
            if self.pidfile is not None:
                self.pidfile.release()

    def _terminate(self, signo: int) -> None:
        self.log.log(NOTICE, "Terminal signal received, exiting")
        self.loop.stop()

    def _hangup(self, signo: int) -> None:
        self.log.log(NOTICE, "signal received, calling pluginstances")
        self._open_log_handler()
        assert self.pipeline is not None
        self.pipeline.reopen()

    def _user_signal(self, signo: int) -> None:
        self.log.log(NOTICE, "signal received, calling pluginstances")
        assert self.pipeline is not None
        if signo == signal.SIGUSR1:
            self._report(force=True)
        self.pipeline.deliver(signo)

    def _report(self, force: bool = False) -> None:
        """The periodic statistics line of every shared input (loss accounting)."""
        for (_kind, _key), resource in list(self.context._shared.items()):
            summary = getattr(resource, "summary", None)
            if summary is None:
                continue
            line = summary(force)
            if line:
                lossy = any(v for k, v in resource.statistics().items() if k != "received")
                self.log.log(NOTICE if lossy else logging.INFO, "%s", line)
        assert self.pipeline is not None
        for stack in self.pipeline.stacks:
            if stack.errors and force:
                self.log.log(
                    NOTICE, "stack %s: %d events dropped on errors", stack.text, stack.errors
                )

    def _target_ids(self) -> tuple[int, int] | None:
        """The uid and gid -u/-g ask for (the current ones where one is missing), or None."""
        user, group = self.options.user, self.options.group
        if not user and not group:
            return None
        gid = _lookup_group(group) if group else None
        if user:
            entry = _lookup_user(user)
            return entry.pw_uid, entry.pw_gid if gid is None else gid
        return os.getuid(), gid if gid is not None else os.getgid()

    def _drop_privileges(self) -> None:
        target = self.context.run_as  # looked up before the plugins started
        if target is None:
            return
        uid, gid = target
        if self.options.user:
            os.setgid(gid)
            os.initgroups(pwd.getpwuid(uid).pw_name, gid)
            os.setuid(uid)
        else:
            os.setgroups([])
            os.setgid(gid)
        self.log.info("dropped privileges to uid %d gid %d", os.getuid(), os.getgid())


def _lookup_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name) if not name.isdigit() else pwd.getpwuid(int(name))
    except KeyError:
        raise ConfigError(
            f"unknown user {name!r}", "-u/--uid", "give an existing user name or uid"
        ) from None


def _lookup_group(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid if not name.isdigit() else int(name)
    except KeyError:
        raise ConfigError(
            f"unknown group {name!r}", "-g/--gid", "give an existing group name or gid"
        ) from None


def _daemonize() -> None:
    """Classic double fork: detach from the terminal, chdir /, stdio to /dev/null."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
