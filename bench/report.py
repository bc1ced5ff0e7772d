"""Writing a benchmark's results into docs/benchmarks.md between its own markers."""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, name: str, section: str, heading: str = "") -> None:
    """Replace the text between ``name``'s markers in ``path``, or append it under ``heading``."""
    begin, end = f"<!-- {name} results: begin -->", f"<!-- {name} results: end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{section}{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        title = f"## {heading}\n\n" if heading else ""
        text = text.rstrip("\n") + f"\n\n{title}{block}\n"
    path.write_text(text)
