"""Reading ulogd.conf files (ulogd2 2.0.8 syntax) with line numbers kept.

Syntax, as ulogd2 reads it:

* a line whose first character is ``#`` is a comment;
* ``[name]`` starts a section; ``[global]`` holds ``logfile``, ``loglevel``,
  ``plugin`` (repeatable) and ``stack`` (repeatable);
* ``key=value``, ``key = value`` and ``key value`` are equivalent; a value is
  one word, or a ``"quoted string"`` (no escapes); text after it is ignored,
  so ``key = value  # note`` works;
* integers take C's ``strtoul(..., 0)`` forms: ``10``, ``0x1f``, ``0660`` (octal).

Unlike ulogd2 2.0.8 we report unknown options, bad integers and repeated
options as errors, and accept a last line without a newline.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field

from nfkit.logd.errors import ConfigError
from nfkit.logd.plugin import Option, Settings

GLOBAL = "global"
MAX_STRING = 224
_C_INTEGER = re.compile(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*")


@dataclass(slots=True)
class Entry:
    key: str
    value: str
    line: int


@dataclass(slots=True)
class Section:
    name: str
    line: int
    entries: list[Entry] = field(default_factory=list)


@dataclass(slots=True)
class StackLine:
    """One ``stack=`` line: ``[(instance_id, plugin_name), ...]``."""

    elements: list[tuple[str, str]]
    text: str
    line: int


class ConfigFile:
    """A parsed ulogd configuration file."""

    def __init__(self, path: str, text: str | None = None) -> None:
        self.path = path
        if text is None:
            try:
                with open(path, encoding="utf-8", errors="surrogateescape") as fh:
                    text = fh.read()
            except OSError as exc:
                raise ConfigError(
                    f"cannot read the configuration file: {exc.strerror}",
                    path,
                    "pass an existing, readable file with -c/--configfile",
                ) from None
        self.sections: dict[str, Section] = {}
        self._parse(text)

    def where(self, line: int) -> str:
        return f"{self.path}:{line}"

    def _parse(self, text: str) -> None:
        current: Section | None = None
        for number, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip() or raw.startswith("#"):
                continue
            stripped = raw.strip()
            if stripped.startswith("["):
                close = stripped.find("]")
                name = stripped[1 : close if close > 0 else None].strip()
                if close < 0 or not name:
                    raise ConfigError(
                        f"malformed section header {stripped!r}",
                        self.where(number),
                        "write section headers as [name]",
                    )
                if name in self.sections:
                    raise ConfigError(
                        f"section [{name}] appears twice "
                        f"(first at line {self.sections[name].line})",
                        self.where(number),
                        "merge the two sections",
                    )
                current = self.sections[name] = Section(name, number)
                continue
            if stripped.startswith("#"):
                continue  # indented comment: ulogd ignores it silently
            key, value = _split_entry(stripped)
            if current is None:
                raise ConfigError(
                    f"option {key!r} outside any section",
                    self.where(number),
                    "put options below a [section] header such as [global]",
                )
            if value is None:
                raise ConfigError(
                    f"option {key!r} has no value",
                    self.where(number),
                    f'write {key}=VALUE (quote values with spaces: {key}="a b")',
                )
            current.entries.append(Entry(key, value, number))

    # -- [global] ------------------------------------------------------------

    def global_values(self, key: str) -> list[Entry]:
        section = self.sections.get(GLOBAL)
        return [e for e in section.entries if e.key == key] if section else []

    def stacks(self) -> list[StackLine]:
        out = []
        for entry in self.global_values("stack"):
            out.append(parse_stack(entry.value, self.where(entry.line), entry.line))
        return out

    def check_global(self) -> None:
        section = self.sections.get(GLOBAL)
        if section is None:
            raise ConfigError(
                "no [global] section",
                self.path,
                "add a [global] section with at least one stack= line",
            )
        known = ("logfile", "loglevel", "plugin", "stack", "rmem", "bufsize")
        for entry in section.entries:
            if entry.key not in known:
                raise ConfigError(
                    f"unknown option {entry.key!r} in [global]",
                    self.where(entry.line),
                    _suggest(entry.key, ("logfile", "loglevel", "plugin", "stack")),
                )
        for key in ("logfile", "loglevel"):
            entries = self.global_values(key)
            if len(entries) > 1:
                raise ConfigError(
                    f"option {key!r} occurs more than once",
                    self.where(entries[1].line),
                    f"keep one {key}= line (the first is at line {entries[0].line})",
                )

    # -- instance sections ---------------------------------------------------

    def settings(self, instance_id: str, plugin: str, options: tuple[Option, ...]) -> Settings:
        """Validate the section ``[instance_id]`` against a plugin's options."""
        section = self.sections.get(instance_id)
        by_name = {opt.name: opt for opt in options}
        values: dict[str, int | str] = {opt.name: opt.default for opt in options}
        origins: dict[str, str] = {}
        seen: dict[str, int] = {}
        for entry in section.entries if section else []:
            where = self.where(entry.line)
            opt = by_name.get(entry.key)
            if opt is None:
                hint = _suggest(entry.key, tuple(by_name))
                valid = ", ".join(by_name) if by_name else "none"
                raise ConfigError(
                    f"unknown option {entry.key!r} for plugin {plugin} (instance {instance_id})",
                    where,
                    f"{hint}; {plugin} options are: {valid} (see: nfkit logd --info {plugin})",
                )
            if entry.key in seen:
                raise ConfigError(
                    f"option {entry.key!r} occurred more than once in [{instance_id}]",
                    where,
                    f"remove one of the lines (the other is at line {seen[entry.key]})",
                )
            seen[entry.key] = entry.line
            values[opt.name] = convert(opt, entry.value, where)
            origins[opt.name] = f"{where} ({entry.key})"
        for opt in options:
            if opt.mandatory and opt.name not in seen:
                place = self.where(section.line) if section else self.path
                raise ConfigError(
                    f"mandatory option {opt.name!r} missing for {instance_id}:{plugin}",
                    place,
                    f"add {opt.name}=... to the [{instance_id}] section",
                )
        return Settings(instance_id, values, origins)


def convert(option: Option, text: str, where: str) -> int | str:
    """Convert an option value to its declared type."""
    if option.type is str:
        if len(text) > MAX_STRING:
            raise ConfigError(
                f"value of {option.name!r} is longer than {MAX_STRING} characters",
                where,
                "shorten it (ulogd2 refuses longer strings too)",
            )
        return text
    return parse_int(text, option.name, where)


def parse_int(text: str, name: str, where: str) -> int:
    """C ``strtoul(text, NULL, 0)`` without its silent garbage-is-zero."""
    value = text.strip()
    negative = value.startswith("-")
    digits = value[1:] if negative or value.startswith("+") else value
    # Python's int() would also take "1_000" and surrounding blanks; C does not.
    if not _C_INTEGER.fullmatch(digits):
        raise ConfigError(
            f"option {name!r} needs an integer, got {text!r}",
            where,
            "write a decimal, 0x-prefixed hex or 0-prefixed octal number",
        )
    if digits[:2].lower() == "0x":
        number = int(digits[2:], 16)
    elif digits.startswith("0"):
        number = int(digits, 8)
    else:
        number = int(digits, 10)
    if negative:
        number = -number
    if not -(2**63) <= number < 2**64:
        raise ConfigError(
            f"integer {text!r} is out of range for {name!r}", where, "use a smaller value"
        )
    return number


def parse_stack(text: str, where: str, line: int) -> StackLine:
    elements = []
    for token in text.replace("\n", ",").split(","):
        token = token.strip()
        if not token:
            continue
        instance, sep, plugin = token.partition(":")
        if not sep or not instance or not plugin:
            raise ConfigError(
                f"syntax error in stack element {token!r}",
                where,
                "write stacks as id:PLUGIN,id:PLUGIN,... without spaces",
            )
        if len(instance) >= 31:
            raise ConfigError(f"instance id {instance!r} is too long (max 30)", where, "shorten it")
        elements.append((instance, plugin))
    if len(elements) < 2:
        raise ConfigError(
            "a stack needs an input and an output",
            where,
            "write e.g. stack=log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,"
            "print1:PRINTPKT,emu1:LOGEMU",
        )
    return StackLine(elements, text, line)


def plugin_name_from_path(path: str) -> str:
    """``/usr/lib/.../ulogd_output_LOGEMU.so`` -> ``LOGEMU``."""
    base = os.path.basename(path)
    if base.endswith(".so"):
        base = base[:-3]
    return base.rsplit("_", 1)[-1]


def _split_entry(line: str) -> tuple[str, str | None]:
    """Split ``key=value`` / ``key = value`` / ``key value``; keep one word or a quoted string."""
    i = 0
    while i < len(line) and line[i] not in " \t=":
        i += 1
    key = line[:i]
    rest = line[i:].lstrip(" \t")
    if rest.startswith("="):
        rest = rest[1:].lstrip(" \t")
    if not rest:
        return key, None
    if rest.startswith('"'):
        end = rest.find('"', 1)
        return key, rest[1:end] if end > 0 else rest[1:]
    j = 0
    while j < len(rest) and rest[j] not in " \t=":
        j += 1
    return key, rest[:j]


def _suggest(word: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean {close[0]!r}?" if close else "remove it"
