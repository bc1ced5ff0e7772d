"""Wildcard inputs: the outputs that read every key produced upstream.

ulogd gives such a plugin (OPRINT, GPRINT, JSON, SQLITE3) one input key per
output key of every upstream instance, duplicates included, and binds each of
them by name to the *nearest* provider. Since an event holds one value per
name, the duplicates carry the same value; keeping one entry per name, at the
position of its first occurrence, reproduces what JSON and SQLITE3 write (a
JSON object or a row holds a name once). OPRINT and GPRINT print every
duplicate (:func:`every_upstream_key`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

from nfkit.logd.keys import Event, Key
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


def every_upstream_key(upstream: Sequence[Plugin]) -> tuple[Key, ...]:
    """Every output key of ``upstream`` (input first), duplicates included.

    Each carries the declaration of its name's nearest provider, as a ulogd input key
    bound to that provider reads its type.
    """
    nearest = {key.name: key for plugin in upstream for key in plugin.output_keys}
    return tuple(nearest[key.name] for plugin in upstream for key in plugin.output_keys)


def tuple_getter(names: Sequence[str]) -> Callable[[Event], tuple[Any, ...]]:
    """A function giving an event's values of ``names``, as a tuple (for ``%`` formatting).

    Raises KeyError when the event lacks one of them.
    """
    if len(names) > 1:
        return operator.itemgetter(*names)
    if names:
        only = names[0]
        return lambda event: (event[only],)
    return lambda event: ()
