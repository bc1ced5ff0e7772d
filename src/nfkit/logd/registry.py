"""The table of built-in plugins, by ulogd name."""

from __future__ import annotations

import importlib
import pkgutil

from nfkit.logd.plugin import Plugin

_PLUGINS: dict[str, type[Plugin]] = {}
_discovered = False


def register(cls: type[Plugin]) -> type[Plugin]:
    """Class decorator: make a plugin available under ``cls.name``."""
    if cls.name in _PLUGINS and _PLUGINS[cls.name] is not cls:
        raise RuntimeError(f"plugin {cls.name} registered twice")
    _PLUGINS[cls.name] = cls
    return cls


def plugins() -> dict[str, type[Plugin]]:
    """Every built-in plugin (imports the plugin modules on first use)."""
    global _discovered
    # A flag, not "is the table empty": importing one plugin module directly
    # registers it before discovery ever ran.
    if not _discovered:
        import nfkit.logd.plugins as package

        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{info.name}")
        _discovered = True
    return _PLUGINS


def providers_of(key: str) -> list[str]:
    """Names of plugins that declare ``key`` as an output."""
    return sorted(
        name for name, cls in plugins().items() if any(k.name == key for k in cls.output_keys)
    )
