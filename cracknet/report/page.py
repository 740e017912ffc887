"""The report's page: HTML escaping and tables, figures as embedded PNGs, thumbnails, and sections that fail
alone (a section that cannot be drawn becomes a note; the report still opens)."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from cracknet import storage
from cracknet.errors import CracknetError
from cracknet.screen import first_line

THUMB = 160


class Html(str):
    """Markup made here (an image, a link): the one kind of text a table cell does not escape."""


def plain(text: Any) -> str:
    """Text for a matplotlib label, drawn as written ("$" would otherwise start mathtext)."""
    return str(text).replace("$", r"\$")


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


class Report:
    """Collects sections and figures; writes DIR/report.html and DIR/<figure>.png."""

    def __init__(self, out: str, title: str):
        self.out, self.title = out, title
        self.sections: list[str] = []
        self.files: list[str] = []

    def figure(self, name: str, fig) -> str:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        pyplot().close(fig)
        return self.png(name, buffer.getvalue())

    def png(self, name: str, data: bytes) -> str:
        uri = storage.join(self.out, f"{name}.png")
        storage.write_bytes(uri, data)
        self.files.append(uri)
        return f'<img alt="{html.escape(name)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'

    def section(self, title: str, body: str) -> None:
        self.sections.append(f"<section><h2>{html.escape(title)}</h2>\n{body}\n</section>")

    def attempt(self, title: str, build, *args) -> None:
        """Add a section by ``build(self, *args)``; one that fails becomes a note, and the report still opens."""
        try:
            build(self, *args)
        except Exception as exc:  # noqa: BLE001 - one bad figure or row must not cost the whole report
            pyplot().close("all")
            self.section(title, note_html(f"This section could not be drawn: {failure_text(exc)}"))

    def write(self) -> str:
        page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(self.title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
h1 {{ font-size: 1.6em; }} h2 {{ border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }}
table {{ border-collapse: collapse; margin: .5em 0; }} td, th {{ border: 1px solid #ddd; padding: .25em .6em;
text-align: left; font-size: .92em; }} img {{ max-width: 100%; }}
.gallery {{ display: flex; flex-wrap: wrap; gap: .6em; }} .gallery figure {{ margin: 0; width: {THUMB}px; }}
.gallery figcaption {{ font-size: .75em; word-break: break-all; }} .note {{ color: #555; font-size: .92em; }}
</style></head><body>
<h1>{html.escape(self.title)}</h1>
{"".join(self.sections)}
</body></html>
"""
        uri = storage.join(self.out, "report.html")
        storage.write_bytes(uri, page.encode())
        return uri


def table_html(rows: list[tuple[Any, ...]], header: tuple[str, ...] | None = None) -> str:
    """An HTML table; every cell is escaped unless it is ``Html``."""
    head = "<tr>" + "".join(f"<th>{cell_text(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{cell_text(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def cell_text(value: Any) -> str:
    return value if isinstance(value, Html) else html.escape(fmt(value))


def fmt(value: Any) -> str:
    """A value as plain text (escaped where it reaches HTML)."""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def note_html(text: str) -> Html:
    return Html(f'<p class="note">{html.escape(text)}</p>')


def failure_text(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, CracknetError) else first_line(exc, named=True)


def thumbnail_html(uri: str, side: int = THUMB) -> str:
    from cracknet.images.decoding import load_rgb

    try:
        img = load_rgb(storage.read_bytes(uri))
    except Exception:  # noqa: BLE001 - a missing or broken image just has no thumbnail
        return Html("<div>(unreadable)</div>")
    img.thumbnail((side, side))
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=85)
    return Html(f'<img alt="" src="data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode()}">')
