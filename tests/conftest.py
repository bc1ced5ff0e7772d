"""Shared pytest fixtures.

``lab``: a started :class:`nfkit.lab.Lab` (a <-> b), always closed afterwards;
skipped when not root or ``ip``/``iptables``/``ip6tables`` are missing.  Tests
using it should be marked ``@pytest.mark.lab``.  For other topologies
parametrize indirectly::

    @pytest.mark.parametrize("lab", [{"router": True}], indirect=True)
    def test_forwarding(lab): ...

``postgres`` and ``mariadb``: throwaway database servers, one per session
(see tests/dbservers.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from dbservers import mariadb, postgres
from nfkit.lab import Lab, unavailable_reason
from nfkit.logd.loop import EventLoop
from nfkit.logd.plugins import json_output


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"lab: {reason}")
    options: dict[str, Any] = getattr(request, "param", None) or {}
    the_lab = Lab(**options)
    try:
        the_lab.start()
        yield the_lab
    finally:
        the_lab.close()


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    """logd's event loop, closed afterwards."""
    the_loop = EventLoop()
    yield the_loop
    the_loop.close()


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Network outputs retry a connection after 50 ms (then twice as long each time)."""
    monkeypatch.setattr(json_output.LineSender, "retry_interval", 0.05)


__all__ = ["mariadb", "postgres"]  # fixtures defined in dbservers
