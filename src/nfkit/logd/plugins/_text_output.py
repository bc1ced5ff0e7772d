"""What the text file outputs OPRINT, GPRINT and NACCT share.

:class:`TextFileOutput` is their file handling (``file``/``sync``, SIGHUP reopen, one
write per batch); :class:`KeyValueFormat` prints the valid keys of a wildcard input as
``name=value`` items, as OPRINT and GPRINT do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from nfkit.logd.files import OutputFile
from nfkit.logd.keys import Event, Key, KeyType
from nfkit.logd.plugin import ERROR, BatchPlugin, DataType, Role, without
from nfkit.logd.plugins._addr import address_text
from nfkit.logd.plugins._wildcard import tuple_getter

# INT64 included, as ulogd 2.0.9 prints it (2.0.8: "default" in OPRINT, nothing in GPRINT).
_INTEGER_TYPES = frozenset(t for t in KeyType if t.is_integer)
_VALUE_TYPES = _INTEGER_TYPES | {KeyType.STRING, KeyType.IPADDR}


class TextFileOutput(BatchPlugin):
    """An output appending one text record per event to ``file``.

    Subclasses declare the ``file``/``sync`` options and implement :meth:`record`.
    """

    role = Role.OUTPUT
    output_type = DataType.SINK
    out: OutputFile | None = None
    _reported = False

    def record(self, event: Event) -> str:
        """The text written for ``event`` (raises on values of unexpected types)."""
        raise NotImplementedError

    def start(self) -> None:
        self.out = OutputFile.opened_for(self)

    def interp_batch(self, events: list[Event], finish: Callable[[int], None]) -> list[Event]:
        record = self.record
        records: list[str] = []
        dropped: list[Event] = []
        for event in events:
            try:
                records.append(record(event))
            except (LookupError, TypeError, ValueError, AttributeError) as exc:
                # A filter put a value of an unexpected type: drop the event, not the daemon.
                self._report(exc)
                finish(ERROR)
                dropped.append(event)
        if records and self.out is not None:
            self.out.write("".join(records))  # one write (and with sync=1 one flush) per batch
        return without(events, dropped)

    def _report(self, exc: Exception) -> None:
        if self._reported:
            self.log.debug("%s: cannot format an event: %s", self, exc)
            return
        self._reported = True
        self.log.warning("%s: cannot format an event (%s); such events are dropped", self, exc)

    def reopen(self) -> None:
        if self.out is not None and not self.out.reopen():
            self.log.error("%s: cannot reopen %s; still writing to the old file", self,
                           self.out.path)

    def stop(self) -> None:
        out, self.out = self.out, None
        if out is not None:
            out.close()


class _Layout:
    """The items of events holding one given set of keys: ``template % values(event)``."""

    __slots__ = ("addresses", "getter", "template")

    def __init__(self, template: str, names: Sequence[str], addresses: tuple[int, ...]) -> None:
        self.template = template
        self.addresses = addresses
        self.getter = tuple_getter(names)


class KeyValueFormat:
    """``name=value`` + ``separator`` for every valid key among ``fields``, in their order.

    ``fields`` may name a key more than once (a wildcard input's duplicates): it is then
    printed at each place. Strings print as they are, integers in decimal, addresses as
    inet_ntop text of either family (ulogd 2.0.8 printed IPv4 byte-reversed in OPRINT and
    IPv6 as a dotted quad in GPRINT; 2.0.9 fixed both). A key of a type in ``literals``
    prints that text instead of its value (OPRINT's ``default``); other types are left out.

    Events of one kind hold the same keys in the same order, so the line's layout is
    computed once per key set and cached; a line is then one ``%`` formatting.
    """

    max_layouts = 1024

    def __init__(
        self, fields: Sequence[Key], separator: str, literals: Mapping[KeyType, str] = {}
    ) -> None:
        self.separator = separator
        self._literals = literals
        #: The printed keys, in order (duplicates included).
        self.fields = tuple(
            key for key in fields if key.type in _VALUE_TYPES or key.type in literals
        )
        self.names = frozenset(key.name for key in self.fields)
        self._layouts: dict[tuple[str, ...], _Layout] = {}

    def items(self, event: Event) -> str:
        """The items of ``event``'s valid keys, each followed by the separator."""
        shape = tuple(event)
        layout = self._layouts.get(shape)
        if layout is None:
            layout = self._layout(set(shape))
            if len(self._layouts) >= self.max_layouts:
                self._layouts.clear()  # cheaper than LRU bookkeeping; refills at once
            self._layouts[shape] = layout
        values = layout.getter(event)
        if layout.addresses:
            converted = list(values)
            for index in layout.addresses:
                converted[index] = address_text(converted[index])
            values = tuple(converted)
        return layout.template % values

    def _layout(self, present: set[str]) -> _Layout:
        template: list[str] = []
        names: list[str] = []
        addresses: list[int] = []
        separator = self.separator.replace("%", "%%")
        for key in self.fields:
            if key.name not in present:
                continue
            literal = self._literals.get(key.type)
            if literal is not None:
                value = literal.replace("%", "%%")
            else:
                if key.type is KeyType.IPADDR:
                    addresses.append(len(names))
                value = "%d" if key.type in _INTEGER_TYPES else "%s"
                names.append(key.name)
            template.append(f"{key.name.replace('%', '%%')}={value}{separator}")
        return _Layout("".join(template), names, tuple(addresses))
