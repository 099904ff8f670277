"""Report blocks and their two renderings: Markdown (plots linked beside it) and one self-contained HTML
page (plots embedded as base64 PNG data: URIs, inline CSS, no external assets)."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str


@dataclass
class Note:
    """A one-line remark, e.g. why a section is skipped."""

    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    wrap: tuple[int, ...] = ()  # columns of free text that wrap in the HTML (others stay on one line)


@dataclass
class Figure:
    path: Path
    caption: str


Block = Heading | Paragraph | Note | Bullets | Table | Figure


def figure_or_note(path: Path | None, caption: str, missing: str) -> list[Block]:
    """The plot with its caption, or a Note saying why there is none."""
    return [Figure(path, caption)] if path is not None else [Note(missing)]


# --- Markdown ---------------------------------------------------------------------------------------------


def to_markdown(blocks: list[Block]) -> str:
    return "\n\n".join(_markdown(block) for block in blocks) + "\n"


def _markdown(block: Block) -> str:
    if isinstance(block, Heading):
        return "#" * block.level + " " + text(block.text)
    if isinstance(block, Paragraph):
        return text(block.text)
    if isinstance(block, Note):
        return f"_{text(block.text)}_"
    if isinstance(block, Bullets):
        return "\n".join(f"- {text(item)}" for item in block.items)
    if isinstance(block, Table):
        lines = [_markdown_row(block.header), "|" + "|".join("---" for _ in block.header) + "|"]
        return "\n".join(lines + [_markdown_row(row) for row in block.rows])
    if isinstance(block, Figure):
        caption = text(block.caption)
        return f"![{caption}]({block.path.name})\n\n_{caption}_"
    raise TypeError(f"unknown block {type(block).__name__}")


def _markdown_row(cells: list[str]) -> str:
    return "| " + " | ".join(text(cell).replace("|", "\\|") for cell in cells) + " |"


# User text (a study name, a run id, a line of a run's stderr) reaches report.md as it is written, and a Markdown
# viewer renders raw HTML, links and images: whatever would open a tag (`<` before a letter, `/`, `!` or `?`) is
# written as `&lt;`, a `]` that would close a link or image text as `\]`, and a backslash as `\\`. All still read
# as written; a lone `<` (`0.6 < r`), other brackets and the report's own code spans are left alone.
_TAG_OPEN = re.compile(r"<(?=[A-Za-z/!?])")
_LINK_CLOSE = re.compile(r"\](?=\s*[(\[:])")
# A line break would let text start a block of its own (a heading, an HTML block) out of its heading or cell.
_LINE_BREAK = re.compile(r"[ \t]*(?:\r\n|\r|\n)[ \t\r\n]*")


def text(value: object) -> str:
    """`value` as one line of Markdown text that opens no tag, link or image."""
    line = _LINE_BREAK.sub(" ", str(value)).replace("\\", "\\\\")  # `\\](` must not undo the escape below
    return _LINK_CLOSE.sub(r"\\]", _TAG_OPEN.sub("&lt;", line))


# --- HTML -------------------------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1360px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #bbb; padding-bottom: .15em; margin-top: 2em; }
li { margin: .35em 0; }
code { background: #f3f3f3; padding: 0 .2em; border-radius: 3px; }
table { border-collapse: collapse; margin: 1em 0; font-size: .8em; display: block; max-width: 100%;
        overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: .25em .5em; text-align: right; }
th { background: #f0f0f0; white-space: normal; vertical-align: bottom; min-width: 3.5em; }
td { white-space: nowrap; }
td.wrap { white-space: normal; min-width: 14em; text-align: left; }
td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption, .note { color: #666; font-style: italic; }
"""


def to_html(blocks: list[Block], title: str) -> str:
    body = "\n".join(_html(block) for block in blocks)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


# A code span of the report's Markdown (`scaling predict RUN`), shown as code in the HTML rather than with its
# backticks; applied after escaping, so its text stays text.
_CODE_SPAN = re.compile(r"`([^`\n]+)`")


def inline_html(value: object) -> str:
    """`value` escaped for HTML, its Markdown code spans as <code>."""
    return _CODE_SPAN.sub(r"<code>\1</code>", html.escape(str(value)))


def _html(block: Block) -> str:
    if isinstance(block, Heading):
        return f"<h{block.level}>{inline_html(block.text)}</h{block.level}>"
    if isinstance(block, Paragraph):
        return f"<p>{inline_html(block.text)}</p>"
    if isinstance(block, Note):
        return f"<p class=\"note\">{inline_html(block.text)}</p>"
    if isinstance(block, Bullets):
        return "<ul>\n" + "\n".join(f"<li>{inline_html(item)}</li>" for item in block.items) + "\n</ul>"
    if isinstance(block, Table):
        head = "".join(f"<th>{inline_html(cell)}</th>" for cell in block.header)
        rows = "\n".join("<tr>" + "".join(_cell(cell, i in block.wrap) for i, cell in enumerate(row)) + "</tr>"
                         for row in block.rows)
        return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>"
    if isinstance(block, Figure):
        return (f"<figure><img alt=\"{html.escape(block.caption)}\" src=\"{data_uri(block.path)}\">"
                f"<figcaption>{inline_html(block.caption)}</figcaption></figure>")
    raise TypeError(f"unknown block {type(block).__name__}")


def _cell(cell, wrap: bool) -> str:
    attribute = ' class="wrap"' if wrap else ""
    return f"<td{attribute}>{inline_html(cell)}</td>"


def data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")
