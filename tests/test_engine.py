"""The logd engine: building stacks, key resolution, propagation results, start and rollback."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from nfkit import nflog
from nfkit.lab import Lab
from nfkit.logd.config import ConfigFile
from nfkit.logd.engine import Pipeline
from nfkit.logd.errors import ConfigError, StartError
from nfkit.logd.keys import Event, KeyType, keys
from nfkit.logd.loop import EventLoop
from nfkit.logd.plugin import ERROR, STOP, Context, InputPlugin, Option, Plugin, Role
from nfkit.logd.registry import plugins

SRC = str(Path(__file__).resolve().parent.parent / "src")
T = KeyType

#: What the test plugins did, in order: ("start", id), ("stop", id), ...
journal: list[tuple[str, str]] = []


class RecordingLoop(EventLoop):
    """The real loop, remembering which descriptors are registered."""

    def __init__(self) -> None:
        super().__init__()
        self.readers: set[int] = set()

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        super().add_reader(fd, callback)
        self.readers.add(fd)

    def remove_reader(self, fd: int) -> None:
        super().remove_reader(fd)
        self.readers.discard(fd)


def _fail(plugin: Plugin, when: str) -> None:
    """Raise what the instance's ``fail`` option asks for at ``when``."""
    mode = plugin.settings["fail"]
    if mode == f"{when}-start-error":
        raise StartError(f"{plugin.id} cannot start")
    if mode == f"{when}-oserror":
        raise OSError(errno.EACCES, "Permission denied")


class Source(InputPlugin):
    name = "TSOURCE"
    options = (Option("fail", str, ""),)
    output_keys = keys(("a", T.UINT32), ("oob.protocol", T.UINT16))

    def start(self) -> None:
        journal.append(("start", self.id))
        _fail(self, "start")

    def activate(self) -> None:
        _fail(self, "activate")
        self._pipe = os.pipe()
        self.context.loop.add_reader(self._pipe[0], lambda: None)
        journal.append(("activate", self.id))

    def stop(self) -> None:
        journal.append(("stop", self.id))
        if hasattr(self, "_pipe"):
            self.context.loop.remove_reader(self._pipe[0])
            for fd in self._pipe:
                os.close(fd)
            del self._pipe


class Override(Plugin):
    """Provides oob.protocol again, as BASE and HWHDR do after NFLOG."""

    name = "TOVERRIDE"
    input_keys = keys(("a", T.UINT32))
    output_keys = keys(("oob.protocol", T.UINT16))

    def interp(self, event: Event) -> int | None:
        event["oob.protocol"] = 2
        return None


class Judge(Plugin):
    """Drops a=1 silently (STOP), a=2 as an error, answers nonsense for a=3."""

    name = "TJUDGE"
    input_keys = keys(("a", T.UINT32))

    def interp(self, event: Event) -> int | None:
        return {1: STOP, 2: ERROR, 3: 7}.get(event["a"])


class Late(Plugin):
    name = "TLATE"
    output_keys = keys(("late.key", T.STRING))


class NeedsLate(Plugin):
    name = "TNEEDS"
    input_keys = keys(("late.key", T.STRING), ("never.there", T.STRING, "optional"))


class Sink(Plugin):
    name = "TSINK"
    role = Role.OUTPUT
    options = (Option("fail", str, ""),)
    input_keys = keys(("oob.protocol", T.UINT16, "optional"))

    def start(self) -> None:
        journal.append(("start", self.id))
        _fail(self, "start")
        self.seen: list[Event] = []
        self.hangups = 0

    def interp(self, event: Event) -> int | None:
        self.seen.append(dict(event))
        event["scribbled"] = self.id  # must not leak into another stack's copy
        return None

    def reopen(self) -> None:
        self.hangups += 1

    def stop(self) -> None:
        journal.append(("stop", self.id))


class Everything(Plugin):
    """An output that reads every upstream key (like JSON), declared at configure time."""

    name = "TEVERYTHING"
    role = Role.OUTPUT
    dynamic_inputs = True

    def configure(self, upstream: Sequence[Plugin]) -> None:
        self.inputs = ()


TEST_PLUGINS = (Source, Override, Judge, Late, NeedsLate, Sink, Everything)


@pytest.fixture(autouse=True)
def test_plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    table = plugins()
    for cls in TEST_PLUGINS:
        monkeypatch.setitem(table, cls.name, cls)
    journal.clear()
    yield
    journal.clear()


def build(text: str) -> Pipeline:
    return Pipeline(ConfigFile("test.conf", text=text), Context(RecordingLoop()))


def sink(pipeline: Pipeline, stack: int) -> Sink:
    output = pipeline.stacks[stack].elements[-1]
    assert isinstance(output, Sink)
    return output


# -- building ------------------------------------------------------------------------


def test_shared_input_is_one_instance_feeding_two_stacks() -> None:
    pipeline = build(
        "[global]\n"
        "stack=in1:TSOURCE,over1:TOVERRIDE,out1:TSINK\n"
        "stack=in1:TSOURCE,judge1:TJUDGE,out2:TSINK\n"
        "stack=in2:TSOURCE,out3:TSINK\n"
    )
    first, second, third = pipeline.stacks
    assert first.input is second.input is pipeline.inputs["in1"]
    assert third.input is pipeline.inputs["in2"] is not first.input
    assert list(pipeline.inputs) == ["in1", "in2"]
    assert len(pipeline.instances()) == 7  # the shared input counted once
    pipeline.start()
    try:
        assert journal.count(("start", "in1")) == 1
        assert journal.count(("activate", "in1")) == 1
        pipeline.inputs["in1"].emit({"a": 0, "oob.protocol": 1})
        # Each stack gets its own copy: one stack's changes never show in the other.
        assert sink(pipeline, 0).seen == [{"a": 0, "oob.protocol": 2}]
        assert sink(pipeline, 1).seen == [{"a": 0, "oob.protocol": 1}]
        assert sink(pipeline, 2).seen == []
        pipeline.reopen()
        assert [sink(pipeline, i).hangups for i in range(3)] == [1, 1, 1]
    finally:
        pipeline.stop()
    assert journal.count(("stop", "in1")) == 1


def test_same_id_for_two_different_inputs_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    class OtherSource(Source):
        name = "TSOURCE2"

    monkeypatch.setitem(plugins(), OtherSource.name, OtherSource)
    with pytest.raises(ConfigError) as info:
        build("[global]\nstack=in1:TSOURCE,o:TSINK\n\nstack=in1:TSOURCE2,o:TSINK\n")
    assert info.value.where == "test.conf:4"
    assert "used for TSOURCE and TSOURCE2" in info.value.what


def test_filters_and_outputs_are_not_shared() -> None:
    pipeline = build(
        "[global]\nstack=in1:TSOURCE,j:TJUDGE,o:TSINK\nstack=in2:TSOURCE,j:TJUDGE,o:TSINK\n"
    )
    first, second = pipeline.stacks
    assert first.elements[1] is not second.elements[1]
    assert first.elements[2] is not second.elements[2]


def test_nearest_upstream_provider_wins() -> None:
    pipeline = build("[global]\nstack=in1:TSOURCE,over:TOVERRIDE,out:TSINK\n")
    pipeline.start()
    try:
        pipeline.inputs["in1"].emit({"a": 5, "oob.protocol": 1})
        assert sink(pipeline, 0).seen == [{"a": 5, "oob.protocol": 2}]
    finally:
        pipeline.stop()


def test_key_provided_only_downstream_is_missing() -> None:
    with pytest.raises(ConfigError) as info:
        build("[global]\nstack=in1:TSOURCE,need:TNEEDS,late:TLATE,out:TSINK\n")
    error = info.value
    assert error.where == "test.conf:2"
    assert error.what.startswith("cannot find key 'late.key' needed by need:TNEEDS")
    assert error.fix == "insert a plugin that provides it before need:TNEEDS: TLATE"
    # Upstream it is fine, and the optional key may stay unbound.
    build("[global]\nstack=in1:TSOURCE,late:TLATE,need:TNEEDS,out:TSINK\n")


def test_wanted_keys() -> None:
    pipeline = build(
        "[global]\nstack=in1:TSOURCE,j:TJUDGE,o:TSINK\nstack=in2:TSOURCE,o:TEVERYTHING\n"
    )
    assert pipeline.wanted_keys(pipeline.stacks[0]) == {"a", "oob.protocol"}
    assert pipeline.wanted_keys(pipeline.stacks[1]) is None  # reads everything
    pipeline.start()
    try:
        assert pipeline.inputs["in1"].wanted == {"a", "oob.protocol"}
        assert pipeline.inputs["in2"].wanted is None
    finally:
        pipeline.stop()


# -- propagation results ----------------------------------------------------------------


def test_stop_and_error_results_are_counted() -> None:
    pipeline = build("[global]\nstack=in1:TSOURCE,judge:TJUDGE,out:TSINK\n")
    pipeline.start()
    try:
        for a in (0, 1, 1, 2, 3, 0):
            pipeline.inputs["in1"].emit({"a": a})
        stack = pipeline.stacks[0]
        assert (stack.events, stack.stopped, stack.errors) == (6, 2, 2)  # 3 is unknown: error
        assert [e["a"] for e in sink(pipeline, 0).seen] == [0, 0]
    finally:
        pipeline.stop()


# -- start and rollback --------------------------------------------------------------


def test_start_order_and_stop_order() -> None:
    pipeline = build("[global]\nstack=in1:TSOURCE,out1:TSINK\nstack=in2:TSOURCE,out2:TSINK\n")
    pipeline.start()
    # Outputs before inputs, and sockets only once every input has started.
    assert journal == [
        ("start", "out1"), ("start", "out2"), ("start", "in1"), ("start", "in2"),
        ("activate", "in1"), ("activate", "in2"),
    ]  # fmt: skip
    journal.clear()
    pipeline.stop()
    assert journal[:2] == [("stop", "in1"), ("stop", "in2")]  # no new events while flushing
    assert sorted(journal[2:]) == [("stop", "out1"), ("stop", "out2")]
    journal.clear()
    pipeline.stop()  # idempotent
    assert journal == []


@pytest.mark.parametrize(
    ("failing", "mode", "message"),
    [
        ("[out2]", "start-start-error", "out2 cannot start"),
        ("[out2]", "start-oserror", "out2:TSINK failed to start: [Errno 13] Permission denied"),
        ("[in2]", "start-start-error", "in2 cannot start"),
        ("[in2]", "activate-start-error", "in2 cannot start"),
        ("[in2]", "activate-oserror", "in2:TSOURCE failed to start: [Errno 13]"),
    ],
)
def test_failed_start_rolls_back_everything(failing: str, mode: str, message: str) -> None:
    pipeline = build(
        "[global]\n"
        "stack=in1:TSOURCE,out1:TSINK\n"
        "stack=in2:TSOURCE,out2:TSINK\n"
        f"{failing}\nfail={mode}\n"
    )
    loop = pipeline.context.loop
    assert isinstance(loop, RecordingLoop)
    with pytest.raises(StartError) as info:
        pipeline.start()
    instance = failing.strip("[]")
    assert message in info.value.what
    assert info.value.where.startswith("test.conf:3")  # the failing stack's line
    started = {who for what, who in journal if what == "start"}
    stopped = {who for what, who in journal if what == "stop"}
    assert started - {instance} <= stopped, "every started instance is stopped again"
    assert loop.readers == set(), "no input left registered in the loop"


@pytest.mark.lab
def test_rollback_unbinds_nflog_groups(lab: Lab) -> None:
    """The second NFLOG group is owned elsewhere: the first must be released again."""
    pipeline = Pipeline(
        ConfigFile(
            "test.conf",
            text="[global]\n"
            "stack=log1:NFLOG,out1:TSINK\n"
            "stack=log2:NFLOG,out2:TSINK\n"
            "[log1]\ngroup=5\n[log2]\ngroup=6\n",
        ),
        Context(RecordingLoop()),
    )
    with lab.entered(lab.a):
        owner = nflog.NflogSocket()
        owner.bind(6)
        with pytest.raises(StartError) as info:
            pipeline.start()
        probe = nflog.NflogSocket()
    with owner, probe:
        assert "cannot bind NFLOG group 6: another program owns it" in info.value.what
        assert info.value.where == "test.conf:3 (log2:NFLOG)"
        assert "stop the other listener" in info.value.fix
        probe.bind(5)  # group 5 was released by the rollback
        loop = pipeline.context.loop
        assert isinstance(loop, RecordingLoop) and loop.readers == set()
        assert {who for what, who in journal if what == "stop"} == {"out1", "out2"}


@pytest.mark.lab
def test_cli_start_failure_names_the_option_and_exits_1(lab: Lab, tmp_path: Path) -> None:
    available = set(plugins())
    needed = {"NFLOG", "BASE", "IFINDEX", "IP2STR", "PRINTPKT", "LOGEMU"}
    if needed - available:
        pytest.skip(f"plugins not built in yet: {sorted(needed - available)}")
    good = tmp_path / "good.log"
    conf = tmp_path / "ulogd.conf"
    conf.write_text(
        "[global]\n"
        f'logfile="{tmp_path}/daemon.log"\n'
        "stack=log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,print1:PRINTPKT,emu1:LOGEMU\n"
        "stack=log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,print1:PRINTPKT,emu2:LOGEMU\n"
        "[log1]\ngroup=5\n"
        f"[emu1]\nfile={good}\n"
        "[emu2]\nfile=/nonexistent/dir/x.log\n"
    )
    result = lab.run(
        lab.a, sys.executable, "-m", "nfkit.cli.main", "logd", "-c", str(conf),
        check=False, env={**os.environ, "PYTHONPATH": SRC},
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"nfkit logd: {conf}:10 (file): cannot open output file '/nonexistent/dir/x.log'"
    )
    assert "fix: create the directory" in result.stderr
    # Nothing is left bound: the group is free for somebody else.
    with lab.entered(lab.a):
        probe = nflog.NflogSocket()
    with probe:
        probe.bind(5)
