"""ulogd.conf reading: syntax, every configuration error (with file:line and a fix), real files."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nfkit.logd.config import ConfigFile, parse_int, parse_stack, plugin_name_from_path
from nfkit.logd.engine import Pipeline
from nfkit.logd.errors import ConfigError
from nfkit.logd.plugin import Context, Option
from nfkit.logd.registry import plugins

SRC = str(Path(__file__).resolve().parent.parent / "src")
DEBIAN_CONF = "/etc/ulogd.conf"
#: Plugins whose configure() needs an existing database; --check opens it.
DATABASE_PLUGINS = {"SQLITE3", "PGSQL", "MYSQL", "DBI"}

GOOD_STACK = "log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,print1:PRINTPKT,emu1:LOGEMU"


def build(text: str, path: str = "test.conf") -> Pipeline:
    return Pipeline(ConfigFile(path, text=text), Context())


def config_error(text: str, path: str = "test.conf") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        build(text, path)
    return info.value


def assert_located(error: ConfigError, line: int, *fix_words: str) -> None:
    """The error names ``test.conf:LINE`` and its fix hint contains ``fix_words``."""
    assert error.where.startswith(f"test.conf:{line}"), error.where
    assert str(error).startswith(f"test.conf:{line}")
    assert error.fix, "every configuration error carries a fix hint"
    assert "\n  fix: " in str(error)
    for word in fix_words:
        assert word in error.fix


def needs_plugins(*names: str) -> pytest.MarkDecorator:
    missing = [n for n in names if n not in plugins()]
    return pytest.mark.skipif(bool(missing), reason=f"plugins not built in yet: {missing}")


def run_logd(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run(
        [sys.executable, "-m", "nfkit.cli.main", "logd", *args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


# -- syntax ------------------------------------------------------------------------


def test_assignment_forms_quotes_and_comments() -> None:
    text = (
        "# a comment in the first column\n"
        "[global]\n"
        "loglevel=3\n"
        "   # an indented comment (ulogd ignores it too)\n"
        'logfile = "/tmp/with space.log"   # trailing text after the value\n'
        "\n"
        "stack\tlog1:NFLOG,emu1:LOGEMU\n"
        "[emu1]\n"
        'file="/tmp/a=b #not a comment.log"\n'
        "sync 1 # note\n"
        "[log1]\n"
        "group    =   7"  # last line without a newline
    )
    config = ConfigFile("x.conf", text=text)
    entries = {
        (s, e.key): (e.value, e.line) for s, sec in config.sections.items() for e in sec.entries
    }
    assert entries == {
        ("global", "loglevel"): ("3", 3),
        ("global", "logfile"): ("/tmp/with space.log", 5),
        ("global", "stack"): ("log1:NFLOG,emu1:LOGEMU", 7),
        ("emu1", "file"): ("/tmp/a=b #not a comment.log", 9),
        ("emu1", "sync"): ("1", 10),
        ("log1", "group"): ("7", 12),
    }
    assert (config.sections["emu1"].line, config.sections["log1"].line) == (8, 11)


def test_crlf_line_endings() -> None:
    config = ConfigFile("x.conf", text="[global]\r\nloglevel=3\r\n[log1]\r\ngroup=2\r\n")
    assert [e.value for e in config.sections["log1"].entries] == ["2"]


@needs_plugins("NFLOG", "BASE", "IFINDEX", "IP2STR", "PRINTPKT", "LOGEMU")
@pytest.mark.parametrize(
    ("text", "value"), [("010", 8), ("0x1f", 31), ("0X1F", 31), ("12", 12), ("0", 0)]
)
def test_integers_in_c_notation(text: str, value: int) -> None:
    pipeline = build(f"[global]\nstack={GOOD_STACK}\n[log1]\ngroup={text}\n")
    assert pipeline.inputs["log1"].settings["group"] == value
    assert pipeline.inputs["log1"].settings.where("group") == "test.conf:4 (group)"


@needs_plugins("NFLOG", "BASE", "IFINDEX", "IP2STR", "PRINTPKT", "LOGEMU")
def test_defaults_and_where_they_come_from() -> None:
    pipeline = build(f"[global]\nstack={GOOD_STACK}\n")
    settings = pipeline.stacks[0].elements[-1].settings
    assert settings["file"] == "/var/log/ulogd_syslogemu.log"
    assert settings.where("file") == "[emu1] file (default)"


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/usr/lib/x86_64-linux-gnu/ulogd/ulogd_inppkt_NFLOG.so", "NFLOG"),
        ("/usr/lib/x86_64-linux-gnu/ulogd/ulogd_raw2packet_BASE.so", "BASE"),
        ("ulogd_output_LOGEMU.so", "LOGEMU"),
        ("LOGEMU", "LOGEMU"),
    ],
)
def test_plugin_paths_map_to_builtin_names(path: str, name: str) -> None:
    assert plugin_name_from_path(path) == name


@needs_plugins("NFLOG", "BASE", "IFINDEX", "IP2STR", "PRINTPKT", "LOGEMU")
def test_plugin_lines_of_builtin_plugins_are_accepted() -> None:
    lines = "".join(
        f'plugin="/usr/lib/x86_64-linux-gnu/ulogd/ulogd_{kind}_{name}.so"\n'
        for kind, name in [("inppkt", "NFLOG"), ("raw2packet", "BASE"), ("output", "LOGEMU")]
    )
    assert len(build(f"[global]\n{lines}stack={GOOD_STACK}\n").stacks) == 1


def test_stack_parsing() -> None:
    stack = parse_stack("log1:NFLOG,base1:BASE,,emu1:LOGEMU", "f:1", 1)
    assert stack.elements == [("log1", "NFLOG"), ("base1", "BASE"), ("emu1", "LOGEMU")]


# -- errors ---------------------------------------------------------------------------


@needs_plugins("NFLOG", "BASE", "IFINDEX", "IP2STR", "PRINTPKT", "LOGEMU")
def test_unknown_option_suggests_the_close_one() -> None:
    error = config_error(f"[global]\nstack={GOOD_STACK}\n\n[log1]\ngruop=1\n")
    assert_located(error, 5, "did you mean 'group'?", "nfkit logd --info NFLOG")
    assert "unknown option 'gruop' for plugin NFLOG (instance log1)" in error.what


@needs_plugins("NFLOG", "BASE", "IFINDEX", "IP2STR", "PRINTPKT", "LOGEMU")
def test_option_for_a_plugin_without_options() -> None:
    error = config_error(f"[global]\nstack={GOOD_STACK}\n[base1]\nfoo=1\n")
    assert_located(error, 4, "BASE options are: none")


def test_unknown_global_option() -> None:
    error = config_error("[global]\nlogfle=/tmp/x\nstack=a:NFLOG,b:LOGEMU\n")
    assert_located(error, 2, "did you mean 'logfile'?")


@needs_plugins("NFLOG", "BASE", "IFINDEX", "IP2STR", "PRINTPKT", "LOGEMU")
def test_duplicate_option() -> None:
    error = config_error(f"[global]\nstack={GOOD_STACK}\n[emu1]\nsync=1\nfile=/tmp/x\nsync=0\n")
    assert_located(error, 6, "line 4")
    assert "'sync' occurred more than once in [emu1]" in error.what


def test_duplicate_global_option_and_section() -> None:
    error = config_error("[global]\nloglevel=1\nloglevel=3\nstack=a:NFLOG,b:LOGEMU\n")
    assert_located(error, 3, "line 2")
    error = config_error("[global]\nstack=a:NFLOG,b:LOGEMU\n[emu1]\n[emu1]\n")
    assert_located(error, 4, "merge")
    assert "first at line 3" in error.what


@needs_plugins("NFLOG", "BASE", "IFINDEX", "IP2STR", "PRINTPKT", "LOGEMU")
@pytest.mark.parametrize("value", ["ten", "08", "1_000", "0x", "12abc", "-"])
def test_bad_integer(value: str) -> None:
    error = config_error(f"[global]\nstack={GOOD_STACK}\n[log1]\ngroup={value}\n")
    assert_located(error, 4, "0x-prefixed hex")
    assert f"'group' needs an integer, got {value!r}" in error.what


def test_integer_out_of_range() -> None:
    with pytest.raises(ConfigError, match="out of range") as info:
        parse_int("0x" + "f" * 17, "group", "f.conf:3")
    assert info.value.where == "f.conf:3"


def test_mandatory_option_missing() -> None:
    config = ConfigFile("test.conf", text="[global]\n\n[db1]\ntable=ulog\n")
    options = (Option("db", str, "", mandatory=True), Option("table", str, "", mandatory=True))
    with pytest.raises(ConfigError) as info:
        config.settings("db1", "SQLITE3", options)
    assert_located(info.value, 3, "add db=... to the [db1] section")
    assert "mandatory option 'db' missing for db1:SQLITE3" in info.value.what
    # Without any section, the file itself is the place.
    with pytest.raises(ConfigError) as info:
        config.settings("db2", "SQLITE3", options)
    assert info.value.where == "test.conf"


def test_string_too_long() -> None:
    config = ConfigFile("test.conf", text="[global]\n[emu1]\nfile=" + "x" * 225 + "\n")
    with pytest.raises(ConfigError, match="longer than 224") as info:
        config.settings("emu1", "LOGEMU", (Option("file", str, ""),))
    assert_located(info.value, 3, "shorten")


def test_unknown_plugin_in_a_stack() -> None:
    error = config_error("[global]\nloglevel=3\nstack=log1:NFLOG,x1:NOSUCH,emu1:LOGEMU\n")
    assert_located(error, 3, "LOGEMU", "NFLOG")
    assert "unknown plugin 'NOSUCH' in stack element x1:NOSUCH" in error.what


def test_unknown_plugin_line() -> None:
    error = config_error(
        '[global]\nplugin="/usr/lib/ulogd/ulogd_output_NOSUCH.so"\nstack=a:NFLOG\n'
    )
    assert_located(error, 2, "remove the line", "LOGEMU")
    assert "(NOSUCH) is not built into nfkit" in error.what


@pytest.mark.parametrize(
    ("stack", "message", "fix"),
    [
        ("log1NFLOG,emu1:LOGEMU", "syntax error in stack element 'log1NFLOG'", "id:PLUGIN"),
        ("log1 NFLOG,emu1:LOGEMU", "syntax error in stack element 'log1'", "without spaces"),
        (":NFLOG,emu1:LOGEMU", "syntax error in stack element ':NFLOG'", "id:PLUGIN"),
        ("log1:NFLOG", "a stack needs an input and an output", "stack=log1:NFLOG"),
        ("x" * 31 + ":NFLOG,e:LOGEMU", "is too long (max 30)", "shorten"),
    ],
)
def test_stack_syntax_errors(stack: str, message: str, fix: str) -> None:
    error = config_error(f"[global]\n\nstack={stack}\n")
    assert_located(error, 3, fix)
    assert message in error.what


@needs_plugins("NFLOG", "BASE", "LOGEMU")
@pytest.mark.parametrize(
    ("stack", "message"),
    [
        ("base1:BASE,log1:NFLOG,emu1:LOGEMU", "first plugin in a stack must be an input, BASE"),
        ("log1:NFLOG,log2:NFLOG,emu1:LOGEMU", "input plugin NFLOG can only be first"),
        ("log1:NFLOG,base1:BASE", "last plugin in a stack must be an output, BASE is a filter"),
        ("log1:NFLOG,emu1:LOGEMU,base1:BASE", "output plugin LOGEMU must be last"),
    ],
)
def test_input_first_output_last(stack: str, message: str) -> None:
    error = config_error(f"[global]\nstack={stack}\n")
    assert_located(error, 2)
    assert message in error.what


@needs_plugins("NFLOG", "BASE", "IP2STR", "PRINTPKT", "LOGEMU", "IFINDEX")
def test_missing_key_names_key_consumer_and_providers() -> None:
    stack = "log1:NFLOG,base1:BASE,ip2str1:IP2STR,print1:PRINTPKT,emu1:LOGEMU"
    error = config_error(f"[global]\nstack={stack}\n")
    assert_located(error, 2, "before print1:PRINTPKT", "IFINDEX")
    assert error.what == f"cannot find key 'oob.in' needed by print1:PRINTPKT in stack {stack}"


@needs_plugins("NFLOG", "LOGEMU")
def test_missing_key_nobody_provides() -> None:
    error = config_error("[global]\nstack=log1:NFLOG,emu1:LOGEMU\n")
    assert_located(error, 2)
    assert "'print'" in error.what
    assert "PRINTPKT" in error.fix or "no built-in plugin provides" in error.fix


@pytest.mark.parametrize(
    ("text", "line", "message", "fix"),
    [
        ("loglevel=3\n[global]\n", 1, "outside any section", "[global]"),
        ("[global]\nloglevel\n", 2, "has no value", "loglevel=VALUE"),
        ("[global]\n[log1\n", 2, "malformed section header", "[name]"),
        ("[global]\n[]\n", 2, "malformed section header", "[name]"),
    ],
)
def test_syntax_errors(text: str, line: int, message: str, fix: str) -> None:
    error = config_error(text)
    assert_located(error, line, fix)
    assert message in error.what


def test_file_level_errors(tmp_path: Path) -> None:
    error = config_error("[log1]\ngroup=1\n")
    assert (error.where, error.what) == ("test.conf", "no [global] section")
    error = config_error("[global]\nloglevel=3\n")
    assert error.where == "test.conf"
    assert "no stack= line" in error.what and "stack=log1:NFLOG" in error.fix
    with pytest.raises(ConfigError) as info:
        ConfigFile(str(tmp_path / "missing.conf"))
    assert "cannot read the configuration file" in info.value.what
    assert "-c/--configfile" in info.value.fix


@needs_plugins("NFLOG", "BASE", "IFINDEX", "IP2STR", "PRINTPKT", "LOGEMU")
def test_bad_loglevel_is_a_config_error(tmp_path: Path) -> None:
    conf = tmp_path / "bad.conf"
    conf.write_text(f"[global]\nloglevel=high\nstack={GOOD_STACK}\n")
    result = run_logd("--check", "-c", str(conf))
    assert result.returncode == 2
    assert f"{conf}:2: option 'loglevel' needs an integer" in result.stderr


# -- real configuration files -------------------------------------------------------


def _enabled_plugins(path: str) -> set[str]:
    return {name for stack in ConfigFile(path).stacks() for _, name in stack.elements}


def debian_conf_or_skip() -> str:
    if not os.path.exists(DEBIAN_CONF):
        pytest.skip(f"{DEBIAN_CONF} not installed (apt-get install ulogd2)")
    missing = _enabled_plugins(DEBIAN_CONF) - set(plugins())
    if missing:
        pytest.skip(f"{DEBIAN_CONF} enables plugins nfkit lacks: {sorted(missing)}")
    return DEBIAN_CONF


def test_debian_config_checks() -> None:
    path = debian_conf_or_skip()
    result = run_logd("--check", "-c", path)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"{path}: OK, 1 stack(s)\n"


def test_debian_config_with_example_stacks_uncommented(tmp_path: Path) -> None:
    """Uncomment every example stack (and plugin= line) whose plugins nfkit has."""
    known = set(plugins()) - DATABASE_PLUGINS
    lines = []
    enabled = 0
    for line in Path(debian_conf_or_skip()).read_text().splitlines():
        stack = re.fullmatch(r"#(stack=(\S+))", line)
        plugin = re.fullmatch(r'#(plugin="(\S+)")', line)
        if stack and {token.split(":")[1] for token in stack[2].split(",")} <= known:
            line = stack[1]
            enabled += 1
        elif plugin and plugin_name_from_path(plugin[2]) in known:
            line = plugin[1]
        lines.append(line)
    if enabled < 3:
        pytest.skip(f"only {enabled} example stacks use plugins nfkit has")
    conf = tmp_path / "ulogd.conf"
    conf.write_text("\n".join(lines) + "\n")
    result = run_logd("--check", "-c", str(conf))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"{conf}: OK, {enabled + 1} stack(s)\n"
    pipeline = build(conf.read_text(), str(conf))
    # log2 feeds several example stacks: one shared instance.
    shared = [s.input for s in pipeline.stacks if s.input.id == "log2"]
    assert len(shared) >= 2 and all(i is shared[0] for i in shared)
