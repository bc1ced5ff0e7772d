"""logd errors: every message says what, where and how to fix."""

from __future__ import annotations

from nfkit.errors import NfkitError


class LogdError(NfkitError):
    """Base of logd's errors.

    Parameters:
        what: the problem.
        where: ``file:line`` (and option) it comes from.
        fix: how to fix it.
    """

    def __init__(self, what: str, where: str = "", fix: str = "") -> None:
        self.what = what
        self.where = where
        self.fix = fix
        text = f"{where}: {what}" if where else what
        if fix:
            text = f"{text}\n  fix: {fix}"
        super().__init__(text)


class ConfigError(LogdError):
    """A configuration problem found before anything started (exit code 2)."""


class StartError(LogdError):
    """A plugin could not start (socket, file, permission...); exit code 1."""
