"""Building stacks from a configuration: instantiate, configure, resolve, start.

The order is ulogd's: every instance is created, then configured from the
output back to the input (outputs with dynamic inputs look at what is
upstream), then every input key is bound to the nearest upstream provider,
then instances start from the input to the output. Unlike ulogd2, a stack
that fails to start is rolled back completely, so no half-started input is
left feeding a freed stack.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from nfkit.logd.config import ConfigFile, StackLine, plugin_name_from_path
from nfkit.logd.errors import ConfigError, StartError
from nfkit.logd.keys import Event
from nfkit.logd.plugin import ERROR, STOP, Context, InputPlugin, Plugin, Role
from nfkit.logd.registry import plugins, providers_of

log = logging.getLogger("nfkit.logd")


@dataclass
class Stack:
    """One configured stack: an input followed by filters and an output."""

    line: StackLine
    where: str
    elements: list[Plugin]
    errors: int = 0
    stopped: int = 0
    events: int = 0

    @property
    def input(self) -> InputPlugin:
        first = self.elements[0]
        assert isinstance(first, InputPlugin)
        return first

    @property
    def text(self) -> str:
        return ",".join(f"{p.id}:{p.name}" for p in self.elements)

    def compile(self) -> None:
        """Generate this stack's per-batch function: the plugin calls, unrolled."""
        names = {f"step{i}": p.interp_batch for i, p in enumerate(self.elements[1:])}
        *filters, output = names
        lines = ["def run(events):", "    stack.events += len(events)"]
        for name in filters:
            lines += [
                f"    events = {name}(events, finish)",
                "    if not events:",
                "        return",
            ]
        lines.append(f"    {output}(events, finish)")
        namespace: dict[str, object] = {"stack": self, "finish": self._finish, **names}
        exec(compile("\n".join(lines), f"<stack {self.text}>", "exec"), namespace)
        self.run = namespace["run"]  # type: ignore[method-assign,assignment]

    def run(self, events: list[Event]) -> None:
        """Propagate a batch of events (replaced by the compiled version in compile())."""
        raise RuntimeError("stack used before compile()")

    def _finish(self, result: int) -> None:
        """A plugin's STOP or ERROR ended the event for this stack."""
        if result == STOP:
            self.stopped += 1
        elif result == ERROR:
            self.errors += 1
            log.debug("stack %s: event dropped by an ERROR result", self.text)
        else:
            self.errors += 1
            log.warning("stack %s: unknown return value %r", self.text, result)


def read_keys(plugins: Sequence[Plugin]) -> set[str] | None:
    """The keys ``plugins`` read (None when one reads everything)."""
    wanted: set[str] = set()
    for plugin in plugins:
        if plugin.dynamic_inputs and not plugin.inputs:
            return None
        wanted.update(k.name for k in plugin.inputs)
    return wanted


class Pipeline:
    """Every stack of a configuration, built and (after start()) running."""

    def __init__(self, config: ConfigFile, context: Context) -> None:
        self.config = config
        self.context = context
        self.stacks: list[Stack] = []
        self.inputs: dict[str, InputPlugin] = {}
        self._started: list[Plugin] = []
        self._build()

    # -- building ---------------------------------------------------------------

    def _build(self) -> None:
        config = self.config
        config.check_global()
        known = plugins()
        for entry in config.global_values("plugin"):
            name = plugin_name_from_path(entry.value)
            if name not in known:
                raise ConfigError(
                    f"plugin {entry.value!r} ({name}) is not built into nfkit",
                    config.where(entry.line),
                    f"remove the line; built-in plugins: {', '.join(sorted(known))}",
                )
        stack_lines = config.stacks()
        if not stack_lines:
            raise ConfigError(
                "no stack= line in [global]",
                config.path,
                "add e.g. stack=log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,"
                "print1:PRINTPKT,emu1:LOGEMU",
            )
        for line in stack_lines:
            self.stacks.append(self._build_stack(line))

    def _build_stack(self, line: StackLine) -> Stack:
        where = self.config.where(line.line)
        known = plugins()
        elements: list[Plugin] = []
        for position, (instance_id, plugin_name) in enumerate(line.elements):
            cls = known.get(plugin_name)
            if cls is None:
                raise ConfigError(
                    f"unknown plugin {plugin_name!r} in stack element {instance_id}:{plugin_name}",
                    where,
                    f"use one of: {', '.join(sorted(known))}",
                )
            last = position == len(line.elements) - 1
            if position == 0 and cls.role is not Role.INPUT:
                raise ConfigError(
                    f"first plugin in a stack must be an input, "
                    f"{plugin_name} is a {cls.role.value}",
                    where,
                    "start the stack with NFLOG (or another input plugin)",
                )
            if position > 0 and cls.role is Role.INPUT:
                raise ConfigError(
                    f"input plugin {plugin_name} can only be first in a stack",
                    where,
                    "move it first",
                )
            if last and cls.role is not Role.OUTPUT:
                raise ConfigError(
                    f"last plugin in a stack must be an output, "
                    f"{plugin_name} is a {cls.role.value}",
                    where,
                    "end the stack with an output such as LOGEMU, JSON or SQLITE3",
                )
            if not last and cls.role is Role.OUTPUT:
                raise ConfigError(
                    f"output plugin {plugin_name} must be last in a stack",
                    where,
                    "split the stack in two lines sharing the same input id",
                )
            if position == 0 and instance_id in self.inputs:
                shared = self.inputs[instance_id]
                if shared.name != plugin_name:
                    raise ConfigError(
                        f"instance id {instance_id!r} is used for {shared.name} and {plugin_name}",
                        where,
                        "give the two inputs different ids",
                    )
                elements.append(shared)
                continue
            settings = self.config.settings(instance_id, plugin_name, cls.options)
            elements.append(cls(instance_id, settings, self.context))
        stack = Stack(line, where, elements)
        # Down to the input (index 0, nothing upstream); a shared input was
        # configured by its first stack already.
        last_configured = 1 if elements[0].id in self.inputs else 0
        for index in range(len(elements) - 1, last_configured - 1, -1):
            elements[index].configure(elements[:index])
        self._resolve(stack)
        for index in range(1, len(elements)):
            elements[index].wanted = read_keys(elements[index + 1 :])
        first = elements[0]
        assert isinstance(first, InputPlugin)
        self.inputs.setdefault(first.id, first)
        stack.compile()
        return stack

    def _resolve(self, stack: Stack) -> None:
        """Bind every input key to the nearest upstream provider, or explain why not."""
        elements = stack.elements
        for index in range(1, len(elements)):
            plugin = elements[index]
            upstream = elements[:index]
            available = {k.name for p in upstream for k in p.output_keys}
            if any(p.dynamic_outputs for p in upstream):
                continue  # cannot know statically; treated as satisfied
            for key in plugin.inputs:
                if key.optional or key.inactive or key.name in available:
                    continue
                providers = [p for p in providers_of(key.name) if p != plugin.name]
                if providers:
                    fix = (
                        f"insert a plugin that provides it before {plugin.id}:{plugin.name}: "
                        + ", ".join(providers)
                    )
                else:
                    fix = "no built-in plugin provides this key; check its spelling"
                raise ConfigError(
                    f"cannot find key {key.name!r} needed by {plugin.id}:{plugin.name} "
                    f"in stack {stack.text}",
                    stack.where,
                    fix,
                )

    # -- running -------------------------------------------------------------

    def wanted_keys(self, stack: Stack) -> set[str] | None:
        """Keys read downstream of the input (None when a plugin reads everything)."""
        return read_keys(stack.elements[1:])

    def start(self) -> None:
        """Start every instance (input first, per stack); roll back on failure."""
        try:
            for stack in self.stacks:
                for plugin in reversed(stack.elements):
                    if plugin not in self._started and not isinstance(plugin, InputPlugin):
                        self._start_one(plugin, stack)
                stack.input.attach(stack.run, self.wanted_keys(stack))
            for plugin in self.inputs.values():
                self._start_one(plugin, self._stack_of(plugin))
            for plugin in self.inputs.values():
                self._start_one(plugin, self._stack_of(plugin), activate=True)
        except BaseException:
            self.stop()
            raise

    def _stack_of(self, plugin: InputPlugin) -> Stack:
        return next(s for s in self.stacks if s.input is plugin)

    def _start_one(self, plugin: Plugin, stack: Stack, activate: bool = False) -> None:
        """start() (or, for inputs, activate()) ``plugin``; errors name the stack line."""
        try:
            if activate:
                assert isinstance(plugin, InputPlugin)
                plugin.activate()
            else:
                plugin.start()
        except StartError as exc:
            if exc.where:
                raise
            raise StartError(
                exc.what, f"{stack.where} ({plugin.id}:{plugin.name})", exc.fix
            ) from exc
        except OSError as exc:
            raise StartError(
                f"{plugin.id}:{plugin.name} failed to start: {exc}",
                stack.where,
                "check permissions and paths in its section",
            ) from exc
        if not activate:
            self._started.append(plugin)

    def stop(self) -> None:
        """Stop inputs first (no new events), then filters and outputs (flush)."""
        started, self._started = self._started, []
        for plugin in sorted(started, key=lambda p: not isinstance(p, InputPlugin)):
            try:
                plugin.stop()
            except Exception:  # one failing stop must not keep others from flushing
                log.exception("error while stopping %s", plugin)

    def instances(self) -> Sequence[Plugin]:
        seen: dict[int, Plugin] = {}
        for stack in self.stacks:
            for plugin in stack.elements:
                seen.setdefault(id(plugin), plugin)
        return list(seen.values())

    def reopen(self) -> None:
        for plugin in self.instances():
            plugin.reopen()

    def deliver(self, signo: int) -> None:
        for plugin in self.instances():
            plugin.signal(signo)
