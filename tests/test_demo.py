"""`nfkit demo`: the README's first command, end to end through the kernel."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from nfkit.cli import demo, privileges


def test_refuses_without_net_admin_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(privileges, "has_net_admin", lambda: False)
    assert demo.main([]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs root (CAP_NET_ADMIN)" in err


@pytest.mark.lab
def test_demo_logs_real_traffic_to_sqlite_and_text(lab: object, tmp_path: Path) -> None:
    # The lab fixture is only used to skip when namespaces are unavailable;
    # the demo builds (and removes) its own lab.
    result = subprocess.run(
        [sys.executable, "-m", "nfkit.cli.main", "demo", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    with sqlite3.connect(tmp_path / "packets.sqlite") as db:
        rows = db.execute(
            "SELECT oob_family, ip_protocol, count(*) FROM packets GROUP BY 1, 2"
        ).fetchall()
        ports = {
            p
            for (p,) in db.execute(
                "SELECT DISTINCT coalesce(tcp_dport, udp_dport) "
                "FROM packets WHERE oob_prefix = 'demo-in'"
            )
        }
    seen = {(family, proto) for family, proto, _count in rows}
    assert {(2, 1), (2, 6), (2, 17), (10, 58), (10, 6), (10, 17)} <= seen
    assert {8080, 53, 123, 514} <= ports
    lines = (tmp_path / "packets.log").read_text().splitlines()
    assert len(lines) == sum(count for _f, _p, count in rows)
    assert any("PROTO=TCP" in line and "DPT=8080" in line and " SYN " in line for line in lines)
    assert f"{len(lines)} packets logged" in result.stdout
    assert "packets per protocol:" in result.stdout and str(tmp_path) in result.stdout
