"""Throwaway network-namespace labs for demos and tests (needs root).

Quick start::

    from nfkit.lab import Lab

    with Lab() as lab:                      # a <-veth-> b, 192.0.2.0/24 + 2001:db8::/64
        assert lab.ping(lab.a, lab.b.ip6)
        lab.iptables(lab.b, "-A", "INPUT", "-p", "udp", "--dport", "5000", "-j", "ACCEPT")
        lab.udp(lab.a, lab.b.ip4, 5000, count=10, recv=True)
        lab.tcp_exchange(lab.a, lab.b.ip4, 8080, data=b"hello")
        with lab.entered(lab.b):            # this thread is now inside namespace b
            ...

``Lab(router=True)`` builds a---r---b with a router namespace in between.
Everything happens inside namespaces named ``nfk-<pid>-<random>-<role>``; the
host's own network namespace is never modified.  :func:`sweep_stale` removes
namespaces left behind by crashed runs (it is called by :meth:`Lab.start`).
"""

from nfkit.lab.core import (
    Iface,
    Lab,
    LabCommandError,
    LabError,
    Node,
    RuleCounter,
    ServerProcess,
    child_env,
    sweep_stale,
    traffic_argv,
    unavailable_reason,
)
from nfkit.netns import entered

__all__ = [
    "Iface",
    "Lab",
    "LabCommandError",
    "LabError",
    "Node",
    "RuleCounter",
    "ServerProcess",
    "child_env",
    "entered",
    "sweep_stale",
    "traffic_argv",
    "unavailable_reason",
]
