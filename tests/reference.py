"""Run Debian's ulogd 2.0.8 and ``nfkit logd`` side by side inside a lab namespace.

Shared by ``tests/test_differential.py`` and ``bench/nflog_bench.py``.  Both
daemons get the *same* configuration text (:func:`render_config`) except the
NFLOG group and the directory their files go to; both run in the foreground
(ulogd is never started with ``-d``) with a pidfile and every file in a
private temporary directory.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nfkit.lab import Lab, Node

ULOGD = "/usr/sbin/ulogd"
ULOGD_PLUGIN_DIR = "/usr/lib/x86_64-linux-gnu/ulogd"
#: Logged at INFO by both daemons once every stack is started (NFLOG group bound).
READY_LINE = "initialization finished, entering main loop"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def plugin_path(name: str) -> str:
    """The ulogd ``.so`` of plugin ``name`` (``ulogd_<kind>_<NAME>.so``)."""
    matches = glob.glob(os.path.join(ULOGD_PLUGIN_DIR, f"ulogd_*_{name}.so"))
    if len(matches) != 1:
        raise FileNotFoundError(f"no ulogd plugin {name} in {ULOGD_PLUGIN_DIR}")
    return matches[0]


def stack_plugins(stacks: Iterable[str]) -> list[str]:
    """Plugin names used by ``stack=`` values, in first-use order."""
    names: list[str] = []
    for stack in stacks:
        for token in stack.split(","):
            name = token.partition(":")[2]
            if name not in names:
                names.append(name)
    return names


def missing_reference(stacks: Iterable[str]) -> str | None:
    """Why the reference ulogd cannot run these stacks here (for skips), or None."""
    if not os.access(ULOGD, os.X_OK):
        return f"{ULOGD} not installed (apt-get install ulogd2)"
    for name in stack_plugins(stacks):
        try:
            plugin_path(name)
        except FileNotFoundError as exc:
            return f"{exc} (install ulogd2-json / ulogd2-pcap / ulogd2-sqlite3)"
    return None


def render_config(
    stacks: Sequence[str],
    group: int,
    workdir: Path,
    files: dict[str, str],
    input_options: Sequence[str] = (),
) -> str:
    """The ulogd.conf both daemons read; only ``group`` and ``workdir`` vary.

    Every stack must start with ``log1:NFLOG``.  ``files`` maps an output
    instance id to the file name it writes in ``workdir``; ``input_options``
    are extra ``key=value`` lines for ``[log1]``.
    """
    lines = ["[global]", f'logfile="{workdir / "daemon.log"}"', "loglevel=3"]
    # ulogd needs the .so paths; nfkit maps each path to its built-in plugin.
    lines += [f'plugin="{plugin_path(name)}"' for name in stack_plugins(stacks)]
    lines += [f"stack={stack}" for stack in stacks]
    lines += ["", "[log1]", f"group={group}", *input_options]
    for instance, name in files.items():
        lines += ["", f"[{instance}]", f'file="{workdir / name}"']
    return "\n".join(lines) + "\n"


def ulogd_argv(config: Path, pidfile: Path) -> list[str]:
    return [ULOGD, "-c", str(config), "-p", str(pidfile)]


def nfkit_argv(config: Path, pidfile: Path) -> list[str]:
    return [sys.executable, "-m", "nfkit.cli.main", "logd", "-c", str(config), "-p", str(pidfile)]


ARGV = {"ulogd": ulogd_argv, "nfkit": nfkit_argv}


@dataclass
class DaemonRun:
    """One daemon process (ulogd or nfkit) started in a lab namespace."""

    lab: Lab
    ns: Node
    kind: str  # "ulogd" or "nfkit"
    workdir: Path
    config_text: str
    #: prepended to the daemon's argv, e.g. ``("taskset", "-c", "1")`` (execs: same pid)
    wrapper: Sequence[str] = ()
    proc: subprocess.Popen[bytes] | None = None
    returncode: int | None = None
    cpu_at_ready: float = 0.0
    _stdout: Path = field(init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._stdout = self.workdir / "stdout.txt"
        self.config = self.workdir / "ulogd.conf"
        self.config.write_text(self.config_text)

    @property
    def logfile(self) -> Path:
        return self.workdir / "daemon.log"

    def start(self, timeout: float = 20.0) -> DaemonRun:
        """Start in the foreground; return once the daemon reports its main loop."""
        argv = [*self.wrapper, *ARGV[self.kind](self.config, self.workdir / "daemon.pid")]
        with self._stdout.open("wb") as out:
            self.proc = self.lab.popen(self.ns, *argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while READY_LINE not in self.log_text():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited ({self.proc.returncode}) before "
                                   f"entering its main loop:\n{self.diagnostics()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{self.kind} not ready after {timeout}s:\n"
                                   f"{self.diagnostics()}")
            time.sleep(0.02)
        self.cpu_at_ready = self.cpu_seconds()
        return self

    def log_text(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def diagnostics(self, lines: int = 40) -> str:
        """The tail of the daemon's log and of its stdout/stderr, for failure messages."""
        tail = self.log_text().splitlines()[-lines:]
        out = self._stdout.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join([f"--- {self.logfile}", *tail, f"--- {self._stdout}", *out])

    def cpu_seconds(self) -> float:
        """user+sys CPU time of the running daemon (``/proc/PID/stat``)."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def wait_idle(self, settle: float = 0.5, minimum: float = 0.0, timeout: float = 30.0) -> None:
        """Wait until the daemon has used no CPU for ``settle`` seconds (work drained)."""
        start = time.monotonic()
        last, since = self.cpu_seconds(), start
        while True:
            time.sleep(0.05)
            now = time.monotonic()
            cpu = self.cpu_seconds()
            if cpu != last:
                last, since = cpu, now
            elif now - since >= settle and now - start >= minimum:
                return
            if now - start > timeout:
                return

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (the daemon must flush and exit 0 by itself); returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.returncode = self.proc.returncode
        return self.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)

    def output(self, name: str) -> str:
        # surrogateescape: bytes that are not UTF-8 (a prefix can hold any) stay distinct
        return (self.workdir / name).read_text(errors="surrogateescape")

    def count_lines(self, name: str) -> int:
        """Lines in an output file (0 when the daemon never created it)."""
        try:
            with (self.workdir / name).open("rb") as f:
                return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
        except FileNotFoundError:
            return 0


def iptables_restore(lab: Lab, ns: Node, rules: str | bytes, ipv6: bool = False) -> None:
    """Apply an ``iptables-restore --noflush`` batch atomically (one transaction)."""
    cmd = "ip6tables-restore" if ipv6 else "iptables-restore"
    lab.run(ns, cmd, "--noflush", input=rules)


def remove_workdir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
