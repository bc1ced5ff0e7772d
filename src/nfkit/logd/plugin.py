"""The plugin API every logd plugin follows.

A plugin is a class with declarative tables (options, input keys, output
keys) and a few methods; an *instance* is created for each ``id:PLUGIN``
token of a ``stack=`` line. Filters and outputs implement :meth:`Plugin.interp`;
inputs produce events and hand them to :meth:`InputPlugin.emit`.

``interp`` returns ``None`` (or :data:`OK`) to continue, :data:`STOP` to drop
the event silently for this stack, :data:`ERROR` to drop it and count an
error, as ulogd's ULOGD_IRET_* do.

Events travel in batches (an NFLOG datagram's packets): the engine calls each
plugin's :meth:`Plugin.interp_batch` once per batch, which runs ``interp`` on
every event unless the plugin loops itself (:class:`BatchPlugin`, for the hot
path: no method call per event, locals looked up once per batch).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from nfkit.logd.keys import Event, Key

OK = 0
ERROR = -1
STOP = -2


class Role(enum.Enum):
    INPUT = "input"
    FILTER = "filter"
    OUTPUT = "output"


class DataType(enum.IntFlag):
    """ulogd's data-type masks, used to warn about odd stack orders."""

    SOURCE = 0x01
    RAW = 0x02
    PACKET = 0x04
    FLOW = 0x08
    SUM = 0x10
    SINK = 0x20


@dataclass(frozen=True, slots=True)
class Option:
    """A configuration option: ulogd name, type (``int`` or ``str``), default."""

    name: str
    type: type[int] | type[str]
    default: int | str
    mandatory: bool = False
    help: str = ""


class Settings:
    """An instance's option values, with where each one was set."""

    def __init__(self, section: str, values: dict[str, int | str], origins: dict[str, str]):
        self.section = section
        self._values = values
        self._origins = origins

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def where(self, name: str) -> str:
        """``file:line`` of the option, or a description of its default."""
        return self._origins.get(name, f"[{self.section}] {name} (default)")

    def items(self) -> list[tuple[str, int | str]]:
        return list(self._values.items())


class Context:
    """What the engine lends to plugins: logging, the event loop, shared resources."""

    def __init__(self, loop: Any = None, logger: logging.Logger | None = None) -> None:
        self.loop = loop
        self.log = logger or logging.getLogger("nfkit.logd")
        self._shared: dict[tuple[str, Any], Any] = {}
        #: (uid, gid) the daemon runs as once started (-u/-g), None: as it is. Files a
        #: plugin creates at start and keeps using must be theirs.
        self.run_as: tuple[int, int] | None = None

    def shared(self, kind: str, key: Any, factory: Callable[[], Any]) -> Any:
        """One object per ``(kind, key)`` for the whole daemon (e.g. an NFLOG group)."""
        slot = (kind, key)
        if slot not in self._shared:
            self._shared[slot] = factory()
        return self._shared[slot]

    def release(self, kind: str, key: Any) -> None:
        self._shared.pop((kind, key), None)


class Plugin:
    """Base class of every plugin. Subclasses fill the class-level tables."""

    name: ClassVar[str] = ""
    role: ClassVar[Role] = Role.FILTER
    input_type: ClassVar[DataType] = DataType(0)
    output_type: ClassVar[DataType] = DataType(0)
    options: ClassVar[tuple[Option, ...]] = ()
    input_keys: ClassVar[tuple[Key, ...]] = ()
    output_keys: ClassVar[tuple[Key, ...]] = ()
    #: Inputs are derived at configure time (all upstream keys, DB columns...).
    dynamic_inputs: ClassVar[bool] = False
    #: Outputs are not declared statically (MARK).
    dynamic_outputs: ClassVar[bool] = False
    #: One line for ``--info`` and error messages.
    summary: ClassVar[str] = ""

    def __init__(self, instance_id: str, settings: Settings, context: Context) -> None:
        self.id = instance_id
        self.settings = settings
        self.context = context
        self.log = context.log
        #: The input keys after configure(): dynamic plugins replace them.
        self.inputs: tuple[Key, ...] = self.input_keys
        #: Keys read downstream of this instance, known before start(); None: any key.
        #: A plugin may leave out outputs nobody reads.
        self.wanted: set[str] | None = None

    def __repr__(self) -> str:
        return f"{self.id}:{self.name}"

    def configure(self, upstream: Sequence[Plugin]) -> None:
        """Check options; derive dynamic inputs from ``upstream`` (nearest last).

        Raises ConfigError (with the option's location) when something is wrong.
        """

    def start(self) -> None:
        """Open files and sockets. Raise StartError on failure."""

    def stop(self) -> None:
        """Flush and close everything; must be safe to call twice."""

    def reopen(self) -> None:
        """SIGHUP: reopen output files (log rotation)."""

    def signal(self, signo: int) -> None:
        """Any other signal delivered to the instance (SIGUSR1/SIGUSR2)."""

    def interp(self, event: Event) -> int | None:
        """Process one event (filters and outputs)."""
        return None

    def interp_batch(self, events: list[Event], finish: Callable[[int], None]) -> list[Event]:
        """Process a batch; return the events that go on (``events`` itself if all do).

        ``finish(result)`` is called with the STOP or ERROR (or unknown) result
        of each event dropped.
        """
        interp = self.interp
        dropped: list[Event] = []
        for event in events:
            result = interp(event)
            if result:
                finish(result)
                dropped.append(event)
        return without(events, dropped)


def without(events: list[Event], dropped: list[Event]) -> list[Event]:
    """``events`` minus the ``dropped`` ones (the same list when none is)."""
    if not dropped:
        return events
    gone = {id(event) for event in dropped}
    return [event for event in events if id(event) not in gone]


class BatchPlugin(Plugin):
    """A plugin whose work is written per batch: :meth:`interp` runs a batch of one."""

    def interp(self, event: Event) -> int | None:
        results: list[int] = []
        self.interp_batch([event], results.append)
        return results[0] if results else None

    def interp_batch(self, events: list[Event], finish: Callable[[int], None]) -> list[Event]:
        raise NotImplementedError


class InputPlugin(Plugin):
    """A source of events. The engine attaches the stacks it feeds."""

    role = Role.INPUT
    input_type = DataType.SOURCE
    #: The input talks to netfilter: the command line refuses to start it without
    #: CAP_NET_ADMIN. Inputs that read files or sockets of their own say False.
    needs_net_admin: ClassVar[bool] = True

    def __init__(self, instance_id: str, settings: Settings, context: Context) -> None:
        super().__init__(instance_id, settings, context)
        self.stacks: list[Callable[[list[Event]], None]] = []
        #: Names consumed downstream in any attached stack; None = everything.
        self.wanted = set()

    def attach(self, run_stack: Callable[[list[Event]], None], wanted: set[str] | None) -> None:
        """Feed event batches to one more stack that reads ``wanted`` keys (None: all)."""
        self.stacks.append(run_stack)
        if wanted is None or self.wanted is None:
            self.wanted = None
        else:
            self.wanted |= wanted

    def activate(self) -> None:
        """Called once every input has started: open shared sockets now.

        Instances that share a resource (an NFLOG group) register in start();
        the resource is opened here with everything its users asked for.
        """

    def emit(self, event: Event) -> None:
        """Run ``event`` through every attached stack (each gets its own copy)."""
        self.emit_batch([event])

    def emit_batch(self, events: list[Event]) -> None:
        """Run ``events`` through every attached stack (each gets its own copies)."""
        stacks = self.stacks
        if len(stacks) == 1:
            stacks[0](events)
            return
        for run in stacks:
            run([dict(event) for event in events])


PluginClass = type[Plugin]
