"""Wildcard inputs: the outputs that read every key produced upstream.

ulogd gives such a plugin (OPRINT, GPRINT, JSON, SQLITE3) one input key per
output key of every upstream instance, duplicates included, and binds each of
them by name to the *nearest* provider. Since an event holds one value per
name, the duplicates carry the same value; keeping one entry per name, at the
position of its first occurrence, reproduces what ulogd prints.
"""

from __future__ import annotations

from collections.abc import Sequence

from nfkit.logd.keys import Key
from nfkit.logd.plugin import Plugin


def upstream_keys(upstream: Sequence[Plugin]) -> tuple[Key, ...]:
    """Every output key of ``upstream`` (input first), one per name.

    A name keeps the position of its first declaration in stack order, and
    the declaration (type, CIM name) of its nearest provider, the one whose
    value the event carries.
    """
    by_name: dict[str, Key] = {}
    for plugin in upstream:
        for key in plugin.output_keys:
            # Re-assigning an existing dict key keeps its position.
            by_name[key.name] = key
    return tuple(by_name.values())
