"""HTML building blocks of the report: one self-contained page, every text escaped.

No template engine and no external resource: styles are inline in the page, images are
``data:image/png;base64`` URIs, and there is no script. Every value that reaches the page goes
through :func:`esc` (``html.escape`` with quotes), attribute values included.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto;
       max-width: 1300px; padding: 0 24px 48px; color: #1d1d1f; }
h1 { margin: 24px 0 4px; } h2 { margin-top: 36px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
nav a { margin-right: 14px; } .muted { color: #666; } .note { color: #555; max-width: 900px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.bad td { background: #fff2f0; } pre { background: #f6f6f8; padding: 10px; overflow-x: auto; font-size: 12px; }
figure { margin: 0 0 24px; padding: 12px; border: 1px solid #e3e3e3; border-radius: 6px; }
figure.preview .planes { display: flex; gap: 16px; align-items: flex-start; flex-wrap: wrap; }
figure.preview img { image-rendering: auto; border: 1px solid #ccc; background: #000; }
figcaption { font-size: 13px; color: #333; margin-top: 6px; max-width: 1100px; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 14px; font-size: 12px; margin-top: 8px; }
.swatch { display: inline-block; width: 12px; height: 12px; border: 1px solid #555; margin-right: 4px;
          vertical-align: -1px; }
.cards { display: flex; gap: 12px; flex-wrap: wrap; } .card { border: 1px solid #ddd; border-radius: 6px;
  padding: 8px 14px; min-width: 130px; } .card b { display: block; font-size: 22px; }
"""


def esc(value: Any) -> str:
    """Text of ``value`` escaped for HTML content and quoted attributes."""
    return html.escape("" if value is None else str(value), quote=True)


def fmt(value: Any, digits: int = 3) -> str:
    """A short display string: floats to ``digits`` significant digits, NaN/None as an empty cell."""
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.0f}"
    return str(value)


@dataclass(frozen=True)
class Cell:
    """A table cell: text (escaped) with an optional link target (``#anchor``) and CSS class."""

    text: str
    href: str | None = None
    css: str = ""

    def render(self) -> str:
        body = f'<a href="{esc(self.href)}">{esc(self.text)}</a>' if self.href else esc(self.text)
        return f'<td class="{esc(self.css)}">{body}</td>' if self.css else f"<td>{body}</td>"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], row_class: Callable[[int], str] | None = None,
          numeric: Iterable[int] = ()) -> str:
    """A table; a row item may be a :class:`Cell` or any value (formatted with :func:`fmt`)."""
    numeric = set(numeric)
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cells = "".join(item.render() if isinstance(item, Cell)
                        else Cell(fmt(item), css="num" if j in numeric else "").render()
                        for j, item in enumerate(row))
        css = row_class(i) if row_class else ""
        body.append(f'<tr class="{esc(css)}">{cells}</tr>' if css else f"<tr>{cells}</tr>")
    if not body:
        return f'<table><tr>{head}</tr><tr><td colspan="{len(header)}" class="muted">none</td></tr></table>'
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def png_img(png: bytes, alt: str, attrs: Mapping[str, Any] | None = None, width: int | None = None) -> str:
    """An ``<img>`` with the PNG embedded as a base64 data URI; ``attrs`` become escaped attributes."""
    data = base64.b64encode(png).decode("ascii")
    extra = "".join(f' {esc(k)}="{esc(v)}"' for k, v in (attrs or {}).items())
    size = f' width="{int(width)}"' if width else ""
    return f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}"{size}{extra}>'


def section(anchor: str, title: str, *parts: str) -> str:
    """A ``<section>`` with an ``<h2>``; ``parts`` are already rendered HTML."""
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{"".join(parts)}</section>'


def paragraph(text: str, css: str = "note") -> str:
    return f'<p class="{esc(css)}">{esc(text)}</p>'


def link(text: str, href: str) -> str:
    """A link (text and target escaped), e.g. to a file beside the page."""
    return f'<a href="{esc(href)}">{esc(text)}</a>'


def paragraph_with_link(before: str, target: str, after: str = "", css: str = "note") -> str:
    """A paragraph of text with a link to ``target`` (shown as its name) in it."""
    return f'<p class="{esc(css)}">{esc(before)}{link(target, target)}{esc(after)}</p>'


def pre(text: str) -> str:
    return f"<pre>{esc(text)}</pre>"


def cards(items: Iterable[tuple[str, Any]]) -> str:
    """Big numbers with a label (the report's headline counts)."""
    return '<div class="cards">' + "".join(f'<div class="card"><b>{esc(fmt(v))}</b>{esc(k)}</div>'
                                           for k, v in items) + "</div>"


def legend(entries: Iterable[tuple[str, tuple[int, int, int]]]) -> str:
    """Colour swatches with names."""
    items = "".join(f'<span><span class="swatch" style="background: rgb({int(r)}, {int(g)}, {int(b)})"></span>'
                    f"{esc(name)}</span>" for name, (r, g, b) in entries)
    return f'<div class="legend">{items}</div>'


def page(title: str, subtitle: str, nav: Iterable[tuple[str, str]], body: Iterable[str]) -> str:
    """The whole document: head with inline CSS, title, navigation to ``#anchor`` sections, body."""
    links = "".join(f'<a href="#{esc(anchor)}">{esc(text)}</a>' for anchor, text in nav)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1><p class=\"muted\">{esc(subtitle)}</p>"
            f"<nav>{links}</nav>{''.join(body)}</body></html>\n")
