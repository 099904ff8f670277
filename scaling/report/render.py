"""Report blocks and their two renderings: Markdown (plots linked beside it) and one self-contained HTML
page (plots embedded as base64 PNG data: URIs, inline CSS, no external assets)."""

from __future__ import annotations

import base64
import html
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
        return "#" * block.level + " " + block.text
    if isinstance(block, Paragraph):
        return block.text
    if isinstance(block, Note):
        return f"_{block.text}_"
    if isinstance(block, Bullets):
        return "\n".join(f"- {item}" for item in block.items)
    if isinstance(block, Table):
        lines = [_markdown_row(block.header), "|" + "|".join("---" for _ in block.header) + "|"]
        return "\n".join(lines + [_markdown_row(row) for row in block.rows])
    if isinstance(block, Figure):
        return f"![{block.caption}]({block.path.name})\n\n_{block.caption}_"
    raise TypeError(f"unknown block {type(block).__name__}")


def _markdown_row(cells: list[str]) -> str:
    return "| " + " | ".join(str(cell).replace("|", "\\|").replace("\n", " ") for cell in cells) + " |"


# --- HTML -------------------------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1360px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #bbb; padding-bottom: .15em; margin-top: 2em; }
li { margin: .35em 0; }
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


def _html(block: Block) -> str:
    if isinstance(block, Heading):
        return f"<h{block.level}>{html.escape(block.text)}</h{block.level}>"
    if isinstance(block, Paragraph):
        return f"<p>{html.escape(block.text)}</p>"
    if isinstance(block, Note):
        return f"<p class=\"note\">{html.escape(block.text)}</p>"
    if isinstance(block, Bullets):
        return "<ul>\n" + "\n".join(f"<li>{html.escape(item)}</li>" for item in block.items) + "\n</ul>"
    if isinstance(block, Table):
        head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in block.header)
        rows = "\n".join("<tr>" + "".join(_cell(cell, i in block.wrap) for i, cell in enumerate(row)) + "</tr>"
                         for row in block.rows)
        return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>"
    if isinstance(block, Figure):
        return (f"<figure><img alt=\"{html.escape(block.caption)}\" src=\"{data_uri(block.path)}\">"
                f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
    raise TypeError(f"unknown block {type(block).__name__}")


def _cell(cell, wrap: bool) -> str:
    attribute = ' class="wrap"' if wrap else ""
    return f"<td{attribute}>{html.escape(str(cell))}</td>"


def data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")
