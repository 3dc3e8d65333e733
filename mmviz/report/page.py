"""The report's HTML: escaping, tables, images as data URIs, plotly figures as JSON, and the
page around them (plotly.js inlined once, a Content-Security-Policy that allows no network
request of any kind, system fonts only)."""
from __future__ import annotations

import base64
import html
import io
import json
import numbers
from collections.abc import Iterable, Sequence

PLOTLY_CONFIG = {"displaylogo": False, "showLink": False, "responsive": True, "typesetMath": False,
                 "modeBarButtonsToRemove": ["sendDataToCloud", "editInChartStudio"]}
# Nothing outside the file may be fetched: no script, style, font, image, frame or connection.
# Inline scripts and styles (plotly.js, the figures, the page's CSS) and data: images only.
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; "
       "font-src data:; base-uri 'none'; form-action 'none'")
PLOTLY_SCRIPT_ID = "plotly-js"


class Markup(str):
    """Text that is already HTML (built here from escaped parts): not escaped again."""


def esc(value) -> Markup:
    """Any value as HTML text: data (captions, ids, names) is untrusted, so always through here."""
    return value if isinstance(value, Markup) else Markup(html.escape("" if value is None else str(value), quote=True))


def plot_text(value) -> str:
    """Data as plotly text (hover, titles, tick labels), which plotly reads as a little HTML:
    escaped so that it shows as written. Plotly decodes &amp;, &lt;, &gt; and numeric
    entities, not &quot;, hence numeric ones for quotes."""
    return (str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&#34;").replace("'", "&#39;"))


def num(x, digits: int = 3) -> str:
    """A number for a table cell; "-" where there is none (None, NaN)."""
    if isinstance(x, numbers.Integral) and not isinstance(x, bool):
        return f"{int(x):,}"
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "-" if x is None else str(x)
    return "-" if x != x else f"{x:.{digits}f}"


def data_uri(image: bytes | None) -> str | None:
    """PNG or JPEG bytes as a data: URI (stored thumbnails are JPEG)."""
    if not image:
        return None
    mime = "png" if image.startswith(b"\x89PNG") else "jpeg"
    return f"data:image/{mime};base64," + base64.b64encode(image).decode("ascii")


def png_uri(picture) -> str:
    """A PIL image as a PNG data: URI."""
    buf = io.BytesIO()
    picture.save(buf, "PNG", optimize=True)
    return data_uri(buf.getvalue())


def img(image: bytes | None, alt: str, size: int = 48) -> Markup:
    uri = data_uri(image)
    if uri is None:
        return Markup('<span class="noimg">no image</span>')
    return Markup(f'<img class="thumb" src="{uri}" alt="{esc(alt)}" width="{size}" height="{size}">')


def table(headers: Sequence[str], rows: Iterable[Sequence], numeric: Sequence[int] = (), cls: str = "") -> Markup:
    """An HTML table; cells are escaped unless they are Markup. `numeric`: right-aligned columns."""
    head = "".join(f'<th{" class=num" if i in numeric else ""}>{esc(h)}</th>' for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td{" class=num" if i in numeric else ""}>{esc(c)}</td>'
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return Markup(f'<table class="{esc(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')


def definition_list(items: Iterable[tuple[str, object]]) -> Markup:
    return Markup('<dl class="facts">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items) + "</dl>")


def note(text, kind: str = "note") -> Markup:
    return Markup(f'<p class="{kind}">{esc(text)}</p>')


def para(text) -> Markup:
    return Markup(f"<p>{esc(text)}</p>")


class Figures:
    """The report's plotly figures, each a <div> plus its JSON in a <script type=application/json>;
    one script at the end of the page draws them all with the one inlined plotly.js."""

    def __init__(self):
        self.count = 0

    def add(self, fig, caption: str | None = None) -> Markup:
        import plotly.io as pio

        self.count += 1
        fid = f"figure-{self.count}"
        fig.update_layout(dragmode="zoom" if fig.layout.dragmode in ("lasso", "select") else fig.layout.dragmode)
        # plotly's JSON escapes <, > and / (no "</script>" can end the element early); the
        # replace is a second guard should that ever change
        data = pio.to_json(fig, validate=False).replace("</", "<\\/")
        cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
        return Markup(f'<figure><div class="mmviz-figure" id="{fid}" data-figure="{fid}"></div>'
                      f'<script type="application/json" id="{fid}-data">{data}</script>{cap}</figure>')


CSS = """
:root { color-scheme: light; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       margin: 0 auto; max-width: 1200px; padding: 0 24px 64px; color: #1d1d1f; background: #fff; }
header { border-bottom: 1px solid #ddd; margin-bottom: 16px; }
h1 { font-size: 26px; margin: 24px 0 4px; }
h2 { font-size: 20px; margin: 36px 0 8px; border-bottom: 1px solid #eee; padding-bottom: 4px; }
h3 { font-size: 16px; margin: 20px 0 6px; }
.meta { color: #555; margin: 4px 0 12px; }
nav ol { columns: 3; margin: 8px 0 16px; padding-left: 20px; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 13px; }
th, td { border-bottom: 1px solid #e5e5e5; padding: 4px 8px; text-align: left; vertical-align: middle; }
th { background: #f6f6f6; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.wide td:last-child { color: #555; }
.thumb { image-rendering: pixelated; border: 1px solid #ddd; display: block; }
.noimg { color: #999; font-size: 12px; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 8px 0; }
dl.facts dt { color: #555; } dl.facts dd { margin: 0; overflow-wrap: anywhere; }
figure { margin: 8px 0 16px; } figcaption, .note { color: #555; font-size: 13px; }
.skipped { background: #fff8e1; border-left: 4px solid #f0b400; padding: 8px 12px; }
.row { display: flex; gap: 24px; flex-wrap: wrap; align-items: flex-start; }
.row > * { flex: 1 1 420px; min-width: 0; }
.mmviz-figure { width: 100%; }
code { background: #f3f3f3; padding: 0 3px; border-radius: 3px; }
"""

DRAW = """
(function () {
  var config = %s;
  var divs = document.querySelectorAll("div.mmviz-figure[data-figure]");
  var pending = [];
  for (var i = 0; i < divs.length; i++) {
    var div = divs[i];
    var spec = JSON.parse(document.getElementById(div.getAttribute("data-figure") + "-data").textContent);
    pending.push(Plotly.newPlot(div, spec.data, spec.layout || {}, config));
  }
  Promise.all(pending).then(function () {
    document.body.setAttribute("data-drawn", String(pending.length));
  }, function (e) {
    document.body.setAttribute("data-draw-error", String(e));
    console.error("mmviz report: a figure failed to draw", e);
  });
})();
"""


def page(title: str, header: Markup, nav: Sequence[tuple[str, str]], sections: Sequence[Markup],
         figures: int) -> str:
    """The whole document. plotly.js is inlined once, only when there are figures to draw."""
    from .. import __version__

    toc = "".join(f'<li><a href="#{esc(anchor)}">{esc(label)}</a></li>' for anchor, label in nav)
    scripts = ""
    if figures:
        from plotly.offline import get_plotlyjs

        scripts = (f'<script id="{PLOTLY_SCRIPT_ID}">{get_plotlyjs()}</script>\n'
                   f"<script>{DRAW % json.dumps(PLOTLY_CONFIG)}</script>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta name="generator" content="mmviz {esc(__version__)}">\n'
        f'<meta name="mmviz-figures" content="{figures}">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<header>{header}<nav><ol>{toc}</ol></nav></header>\n<main>\n" + "\n".join(sections) +
        f"\n</main>\n{scripts}\n</body>\n</html>\n")
