"""``nfkit logd`` as real processes: command line, pidfile, signals, privileges, losses.

The daemons run inside a lab namespace (b) that logs UDP packets from a with
an NFLOG rule; everything they open is under a per-test directory.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nfkit.lab import Lab
from nfkit.logd.registry import plugins

SRC = str(Path(__file__).resolve().parent.parent / "src")
ENV = {**os.environ, "PYTHONPATH": SRC}
LOGD = [sys.executable, "-m", "nfkit.cli.main", "logd"]
GROUP = 5
PORT = 5000
STATS = re.compile(
    rf"NFLOG group {GROUP}: (\d+) packets received, (\d+) lost \(sequence gaps\), "
    r"(\d+) buffer overruns, \d+ undecodable datagrams"
)
PRINT_STACK = "log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,print1:PRINTPKT,emu1:LOGEMU"

_missing = {"NFLOG", "BASE", "IFINDEX", "IP2STR", "PRINTPKT", "LOGEMU"} - set(plugins())
needs_print_stack = pytest.mark.skipif(
    bool(_missing), reason=f"plugins not built in yet: {sorted(_missing)}"
)
needs_setpriv = pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv missing")


def run_logd(*args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [*LOGD, *args]
    if user:
        command = ["setpriv", f"--reuid={user}", "--regid=nogroup", "--clear-groups", *command]
    return subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=60, check=False)


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A directory everybody may read (the config must be readable by ``nobody``)."""
    path = Path(tempfile.mkdtemp(prefix="nfkit-logd-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_config(
    directory: Path, nflog: str = "", emu: str = "sync=1", stack: str = PRINT_STACK
) -> Path:
    conf = directory / "ulogd.conf"
    conf.write_text(
        "[global]\n"
        f'logfile="{directory}/daemon.log"\n'
        "loglevel=3\n"
        f"stack={stack}\n"
        "[log1]\n"
        f"group={GROUP}\n"
        "netlink_qthreshold=1\n"  # no batching delay: lines appear at once
        f"{nflog}\n"
        "[emu1]\n"
        f'file="{directory}/emu.log"\n'
        f"{emu}\n"
    )
    conf.chmod(0o644)
    return conf


class Logd:
    """One daemon process inside namespace b, with helpers to watch its files."""

    def __init__(self, lab: Lab, conf: Path, *args: str) -> None:
        self.lab = lab
        self.directory = conf.parent
        self.daemon_log = self.directory / "daemon.log"
        self.emu_log = self.directory / "emu.log"
        self.proc = lab.popen(
            lab.b, *LOGD, "-c", str(conf), *args,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
        )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.daemon_log.read_text() if self.daemon_log.exists() else ""

    def wait_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"logd exited with {self.proc.returncode}: {self.output()}")
            return re.search(pattern, self.log_text())

        match: re.Match[str] = wait_for(found, f"{pattern!r} in the daemon log", timeout)
        return match

    def wait_ready(self) -> None:
        self.wait_log("initialization finished, entering main loop")

    def emu_lines(self, path: Path | None = None) -> list[str]:
        path = path or self.emu_log
        return path.read_text().splitlines() if path.exists() else []

    def wait_lines(self, count: int, path: Path | None = None) -> list[str]:
        lines: list[str] = wait_for(
            lambda: len(self.emu_lines(path)) >= count and self.emu_lines(path),
            f"{count} LOGEMU lines",
        )
        assert len(lines) == count
        return lines

    def send(self, count: int, size: int = 64, rate: float | None = None) -> None:
        self.lab.udp(self.lab.a, self.lab.b.ip4, PORT, count=count, size=size, rate=rate)

    def statistics(self) -> tuple[int, int, int] | None:
        """The latest loss summary: (received, lost to sequence gaps, overruns)."""
        found = STATS.findall(self.log_text())
        if not found:
            return None
        received, lost, overruns = (int(x) for x in found[-1])
        return received, lost, overruns

    def wait_statistics(
        self, condition: Callable[[tuple[int, int, int]], bool]
    ) -> tuple[int, int, int]:
        """SIGUSR1 until the summary it logs satisfies ``condition``."""

        def ask() -> tuple[int, int, int] | None:
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(0.1)
            latest = self.statistics()
            return latest if latest is not None and condition(latest) else None

        result: tuple[int, int, int] = wait_for(ask, "a matching statistics line")
        return result

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=10)

    def output(self) -> str:
        if self.proc.poll() is None:
            return ""
        assert self.proc.stdout and self.proc.stderr
        return (self.proc.stdout.read() + self.proc.stderr.read()).decode(errors="replace")


@pytest.fixture
def logging_lab(lab: Lab) -> Lab:
    """b logs every UDP packet it receives to NFLOG group 5."""
    lab.iptables(lab.b, "-A", "INPUT", "-p", "udp", "--dport", str(PORT),
                 "-j", "NFLOG", "--nflog-group", str(GROUP), "--nflog-prefix", "IN ")  # fmt: skip
    return lab


def proc_status(pid: int, field: str) -> list[str]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return line.split()[1:]
    raise AssertionError(f"no {field} in /proc/{pid}/status")


# -- command line without a kernel -------------------------------------------------


def test_version() -> None:
    result = run_logd("-V")
    assert (result.returncode, result.stderr) == (0, "")
    assert re.fullmatch(r"nfkit logd \S+ \(ulogd 2\.0\.8 compatible\)\n", result.stdout)


def test_help() -> None:
    result = run_logd("-h")
    assert result.returncode == 0
    for option in ("--configfile", "--daemon", "--pidfile", "--uid", "--gid", "--verbose",
                   "--loglevel", "--info", "--version", "--check"):  # fmt: skip
        assert option in result.stdout


def test_info_matches_ulogd() -> None:
    result = run_logd("-i", "NFLOG")
    assert result.returncode == 0
    assert result.stdout.startswith("Name: NFLOG\nConfig options:\n\tVar: bufsize (Integer")
    assert "\tKey: oob.prefix (string)\n" in result.stdout
    so = "/usr/lib/x86_64-linux-gnu/ulogd/ulogd_inppkt_NFLOG.so"
    assert run_logd("-i", so).stdout == result.stdout  # a .so path names the plugin too
    if shutil.which("ulogd") and os.path.exists(so):
        reference = subprocess.run(["ulogd", "--info", so], capture_output=True, text=True,
                                   timeout=30, check=False)  # fmt: skip
        assert result.stdout == reference.stdout
    unknown = run_logd("-i", "NOSUCH")
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("nfkit logd: no plugin 'NOSUCH'; built in: ")


@needs_setpriv
@needs_print_stack
def test_without_root_one_line_and_exit_1(workdir: Path) -> None:
    conf = write_config(workdir)
    result = run_logd("-c", str(conf), user="nobody")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "needs root (CAP_NET_ADMIN)" in result.stderr


@needs_print_stack
def test_malformed_config_exit_2_with_location(workdir: Path) -> None:
    conf = write_config(workdir, nflog="group=5\n")  # group twice
    result = run_logd("-c", str(conf))
    assert result.returncode == 2
    assert result.stderr.startswith(f"nfkit logd: configuration error: {conf}:8: option 'group'")
    assert "\n  fix: " in result.stderr
    check = run_logd("--check", "-c", str(conf))
    assert (check.returncode, check.stderr) == (2, result.stderr)


@needs_print_stack
def test_check_opens_no_sockets(workdir: Path) -> None:
    if shutil.which("strace") is None:
        pytest.skip("strace missing")
    conf = write_config(workdir)
    # syslog as the daemon's log would connect to /dev/log if --check opened it.
    conf.write_text(conf.read_text().replace(f'"{workdir}/daemon.log"', '"syslog"'))
    trace = workdir / "trace"
    result = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=socket,connect,bind", "-o", str(trace),
         *LOGD, "--check", "-c", str(conf)],
        capture_output=True, text=True, env=ENV, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{conf}: OK, 1 stack(s)\n"
    calls = [line for line in trace.read_text().splitlines() if "SIG" not in line]
    assert calls == []
    assert not (workdir / "emu.log").exists()
    assert not (workdir / "daemon.log").exists()


# -- running daemons ------------------------------------------------------------------


@pytest.mark.lab
@needs_print_stack
def test_logs_packets_and_sigterm_flushes(logging_lab: Lab, workdir: Path) -> None:
    conf = write_config(workdir, emu="sync=0")
    logd = Logd(logging_lab, conf, "-p", str(workdir / "logd.pid"))
    logd.wait_ready()
    assert (workdir / "logd.pid").read_text() == f"{logd.pid}\n"
    logd.send(3)
    logd.wait_statistics(lambda stats: stats[0] == 3)  # read, maybe still buffered
    assert logd.terminate() == 0
    lines = logd.emu_lines()
    assert len(lines) == 3
    for line in lines:
        assert re.match(r"\w{3} [ \d]\d \d\d:\d\d:\d\d \S+ IN  IN=nfkb0 OUT= MAC=", line), line
        assert f"SRC={logging_lab.a.ip4} DST={logging_lab.b.ip4}" in line
        assert "PROTO=UDP SPT=" in line and f"DPT={PORT}" in line
    text = logd.log_text()
    assert "Terminal signal received, exiting" in text
    assert not (workdir / "logd.pid").exists()


@pytest.mark.lab
@needs_print_stack
def test_sigusr1_logs_the_statistics_line(logging_lab: Lab, workdir: Path) -> None:
    logd = Logd(logging_lab, write_config(workdir))
    logd.wait_ready()
    logd.send(4)
    logd.wait_lines(4)
    assert logd.wait_statistics(lambda stats: stats[0] == 4) == (4, 0, 0)
    text = logd.log_text()
    assert re.search(r"<5> daemon\.py:\d+ signal received, calling pluginstances\n", text)
    # No loss: an INFO line, as ulogd's own informational messages.
    assert re.search(rf"<3> daemon\.py:\d+ NFLOG group {GROUP}: 4 packets received, 0 lost", text)
    assert logd.terminate() == 0


@pytest.mark.lab
@needs_print_stack
def test_sighup_reopens_the_rotated_file(logging_lab: Lab, workdir: Path) -> None:
    logd = Logd(logging_lab, write_config(workdir))
    logd.wait_ready()
    logd.send(2)
    logd.wait_lines(2)
    rotated = workdir / "emu.log.1"
    logd.emu_log.rename(rotated)
    logd.proc.send_signal(signal.SIGHUP)
    wait_for(logd.emu_log.exists, "the reopened file")
    logd.send(3)
    logd.wait_lines(3)
    assert len(logd.emu_lines(rotated)) == 2  # nothing more went to the old file
    assert logd.terminate() == 0
    assert "signal received, calling pluginstances" in logd.log_text()


@pytest.mark.lab
@needs_print_stack
def test_pidfile_lock_and_stale_pidfile(logging_lab: Lab, workdir: Path) -> None:
    pidfile = workdir / "logd.pid"
    pidfile.write_text("999999\n")  # a dead daemon's leftover: not locked
    conf = write_config(workdir)
    first = Logd(logging_lab, conf, "-p", str(pidfile))
    first.wait_ready()
    assert pidfile.read_text() == f"{first.pid}\n"
    second = logging_lab.run(
        logging_lab.a, *LOGD, "-c", str(conf), "-p", str(pidfile), check=False, env=ENV
    )
    assert second.returncode == 1
    assert second.stderr.startswith(
        f"nfkit logd: {pidfile}: another logd is already running with pid {first.pid}"
    )
    assert pidfile.read_text() == f"{first.pid}\n"
    assert first.terminate() == 0
    assert not pidfile.exists()


@pytest.mark.lab
@needs_print_stack
def test_drops_privileges_after_start(logging_lab: Lab, workdir: Path) -> None:
    pidfile = workdir / "logd.pid"
    logd = Logd(logging_lab, write_config(workdir), "-u", "nobody", "-p", str(pidfile))
    logd.wait_ready()
    assert proc_status(logd.pid, "Uid") == ["65534"] * 4
    assert proc_status(logd.pid, "Gid") == ["65534"] * 4
    assert proc_status(logd.pid, "CapEff") == ["0000000000000000"]
    assert "dropped privileges to uid 65534 gid 65534" in logd.log_text()
    # The socket and the file were opened as root and keep working.
    logd.send(2)
    logd.wait_lines(2)
    assert logd.terminate() == 0, logd.output()


@pytest.mark.lab
@needs_print_stack
def test_daemon_mode(logging_lab: Lab, workdir: Path) -> None:
    pidfile = workdir / "logd.pid"
    conf = write_config(workdir)
    launcher = logging_lab.run(
        logging_lab.b, *LOGD, "-d", "-c", str(conf), "-p", str(pidfile), env=ENV, timeout=20
    )
    assert (launcher.returncode, launcher.stdout, launcher.stderr) == (0, "", "")
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), "the pidfile"))
    try:
        assert proc_status(pid, "PPid") != [str(os.getpid())]
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
        assert os.getsid(pid) != os.getsid(0)  # a session of its own (double fork)
        wait_for(lambda: "initialization finished" in (workdir / "daemon.log").read_text(),
                 "the daemon's start")  # fmt: skip
        logging_lab.udp(logging_lab.a, logging_lab.b.ip4, PORT, count=2)
        wait_for(lambda: len((workdir / "emu.log").read_text().splitlines()) == 2, "2 lines")
        # The lock survived the forks: a second instance is refused.
        second = logging_lab.run(
            logging_lab.a, *LOGD, "-c", str(conf), "-p", str(pidfile), check=False, env=ENV
        )
        assert second.returncode == 1
        assert f"another logd is already running with pid {pid}" in second.stderr
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not pidfile.exists(), "the daemon's exit")
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), "the process to go away")


@pytest.mark.lab
@needs_print_stack
def test_losses_are_accounted(logging_lab: Lab, workdir: Path) -> None:
    """A tiny socket buffer and a burst while the daemon sleeps: losses get reported."""
    conf = write_config(
        workdir,
        nflog="netlink_socket_buffer_size=4096\nnetlink_socket_buffer_maxsize=0",
        emu="sync=0",
    )
    logd = Logd(logging_lab, conf)
    logd.wait_ready()
    logd.proc.send_signal(signal.SIGSTOP)  # the kernel keeps logging; nobody reads
    try:
        logd.send(200, size=200)
    finally:
        logd.proc.send_signal(signal.SIGCONT)
    logd.wait_statistics(lambda stats: stats[2] >= 1)  # the overrun was noticed
    logd.send(5, rate=100)  # sequence numbers after the loss show how many went missing
    received, lost, overruns = logd.wait_statistics(lambda stats: stats[0] + stats[1] == 205)
    assert lost > 0 and overruns >= 1
    assert received >= 5
    assert logd.terminate() == 0
    # The summary is repeated at exit with the same totals, as a NOTICE (losses).
    assert logd.statistics() == (received, lost, overruns)
    assert re.search(
        rf"<5> daemon\.py:\d+ NFLOG group {GROUP}: {received} packets", logd.log_text()
    )
    assert "losing events (socket buffer overrun)" in logd.log_text()
