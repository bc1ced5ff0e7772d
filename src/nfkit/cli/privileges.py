"""Capability checks shared by the commands that talk to the kernel."""

from __future__ import annotations

CAP_NET_ADMIN = 12


def has_net_admin() -> bool:
    """True when the effective capability set holds CAP_NET_ADMIN."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except OSError:
        pass
    return False


def require_net_admin(command: str) -> str | None:
    """The one-line refusal, or None when we may proceed."""
    if has_net_admin():
        return None
    return f"nfkit {command}: needs root (CAP_NET_ADMIN) to talk to netfilter; run it with sudo"
