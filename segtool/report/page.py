"""The report's ``index.html``: one static page, its style and a few lines of script inline.

Pure: rows and a summary in, HTML text out. Nothing on the page points
outside the report's folder and the files it links to: no CDN, no font, no
URL. Cards are drawn lazily by the browser (``loading="lazy"`` thumbnails,
``content-visibility: auto``), so a page of 10,000 results scrolls smoothly.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

__all__ = ["render_page", "format_figures", "page_name"]

_STYLE = """
:root{--fg:#1d2330;--mute:#5b6475;--line:#d8dce3;--bad:#b42318;--warn:#9a6700;--bg:#f6f7f9}
*{box-sizing:border-box}body{margin:0;font:14px/1.4 system-ui,sans-serif;color:var(--fg);background:var(--bg)}
header,section,nav{padding:12px 20px}h1{margin:0 0 4px;font-size:22px}h2{font-size:16px;margin:8px 0}
.counts span{display:inline-block;margin-right:14px}.bad{color:var(--bad)}.warn{color:var(--warn)}
.run{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}.rules{font-size:12px;margin:0;padding-left:18px}
table.kv{border-collapse:collapse;font-size:13px;max-width:600px}table.kv td{padding:2px 8px;vertical-align:top;
border-bottom:1px solid var(--line)}table.kv td:first-child{color:var(--mute);white-space:nowrap}
code{font:12px ui-monospace,monospace;word-break:break-all}
svg.hist{background:#fff;border:1px solid var(--line);border-radius:4px;font:11px system-ui,sans-serif}
svg.hist rect{fill:#4a78c2}svg.hist .a{stroke:#666}svg.hist .m{stroke:#c2410c;fill:#c2410c;stroke-dasharray:4 3}
svg.hist .t{font-weight:600}
nav{position:sticky;top:0;background:var(--bg);border-bottom:1px solid var(--line);z-index:1}
#items{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:10px;padding:12px 20px;align-items:start}
.card{display:flex;gap:10px;background:#fff;border:1px solid var(--line);border-radius:6px;padding:8px;
content-visibility:auto;contain-intrinsic-size:auto 150px}
.card.flagged{border-color:#e8a39c;background:#fffafa}.card img{flex:none;background:#222;image-rendering:auto}
.card .body{min-width:0}.card h3{margin:0 0 2px;font-size:13px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.card p{margin:2px 0;font-size:12px}.card .meta{color:var(--mute)}ul.flags{margin:2px 0;padding:0;list-style:none}
ul.flags li{font-size:12px;color:var(--bad)}ul.flags li::before{content:"\\26A0  "}
.links a{margin-right:8px}.thumbs{display:flex;flex-direction:column;gap:2px;font-size:10px;color:var(--mute)}
body.only-flagged .card:not(.flagged){display:none}
"""

# The one behaviour the page has: hide the results without flags. Inline, so the page works from disk.
_SCRIPT = """
document.getElementById('only-flagged').addEventListener('change',function(e){
document.body.classList.toggle('only-flagged',e.target.checked)});
"""


def page_name(number: int) -> str:
    """File name of page ``number`` (1-based) of a report.

    Examples
    --------
    >>> page_name(1), page_name(12)
    ('index.html', 'page-12.html')
    """
    return "index.html" if number == 1 else f"page-{number}.html"


def _pager(page: int, pages: int, first: int, shown: int, total: int) -> str:
    if pages == 1:
        return f' &nbsp; <a href="#items">results</a> ({total})'
    links = " ".join(f"<b>{n}</b>" if n == page else f'<a href="{page_name(n)}">{n}</a>' for n in range(1, pages + 1))
    return f" &nbsp; results {first + 1}-{first + shown} of {total} &nbsp; page {links}"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def format_figures(row: dict[str, Any]) -> str:
    """The one-line figures of a result: count, median diameter, coverage, estimated diameter and scale.

    Examples
    --------
    >>> format_figures({"objects": 42, "median_diameter": 20.96, "coverage": 0.1234, "diameter": 30, "scale": 0.7})
    '42 objects · median Ø 21.0 px · coverage 12.3% · estimated Ø 30.0 px · scale 0.7'
    >>> format_figures({"objects": 0, "median_diameter": None, "coverage": 0.0})
    '0 objects · coverage 0.0%'
    """
    parts = [f"{row.get('objects', 0)} objects"]
    if row.get("median_diameter") is not None:
        parts.append(f"median Ø {row['median_diameter']:.1f} px")
    if row.get("coverage") is not None:
        parts.append(f"coverage {100 * row['coverage']:.1f}%")
    if isinstance(row.get("diameter"), (int, float)):
        parts.append(f"estimated Ø {row['diameter']:.1f} px")
    if isinstance(row.get("scale"), (int, float)):
        parts.append(f"scale {row['scale']:g}")
    return " · ".join(parts)


def _card(index: int, row: dict[str, Any]) -> str:
    flags = row.get("flags") or []
    cls = "card flagged" if flags else "card"
    out = [f'<article class="{cls}" id="r{index}">']
    thumbs = row.get("thumbs") or []
    if thumbs:
        out.append('<div class="thumbs">')
        for url, caption, (w, h) in thumbs:
            out.append(f'<a href="{_e(url)}"><img src="{_e(url)}" loading="lazy" decoding="async" width="{w}" '
                       f'height="{h}" alt="{_e(caption)}"></a>')
            if len(thumbs) > 1:
                out.append(f"<span>{_e(caption)}</span>")
        out.append("</div>")
    out.append(f'<div class="body"><h3 title="{_e(row["input"])}">{_e(row["name"])}</h3>')
    if flags:
        out.append('<ul class="flags">' + "".join(f'<li class="f-{_e(f.kind)}">{_e(f.reason)}</li>' for f in flags)
                   + "</ul>")
    if row.get("status") != "failed":
        out.append(f"<p>{_e(format_figures(row))}</p>")
    if row.get("model_text"):
        out.append(f'<p class="meta">{_e(row["model_text"])}</p>')
    links = row.get("links") or []
    if links:
        out.append('<p class="links">' + "".join(f'<a href="{_e(url)}">{_e(label)}</a>' for label, url in links)
                   + "</p>")
    out.append("</div></article>")
    return "".join(out)


def render_page(rows: Sequence[dict[str, Any]], summary: dict[str, Any], *, page: int = 1, pages: int = 1,
                first: int = 0, total: int | None = None) -> str:
    """One page of the report: the run's summary, then the results ``rows``.

    Parameters
    ----------
    rows : sequence of dict
        One per result, in the order shown (flagged first): ``name``,
        ``input``, ``status``, ``flags`` (list of
        :class:`segtool.report.flags.Flag`), ``thumbs`` (list of
        ``(url, caption, (width, height))``), ``links`` (list of
        ``(label, url)``), ``model_text`` and the figures
        :func:`format_figures` reads.
    summary : dict
        ``title``; ``counts`` (list of ``(label, number, css class)``);
        ``run`` (list of ``(key, value)`` rows: command line, versions,
        models); ``plots`` (SVG strings); ``rules`` (list of flag rule
        sentences).
    page, pages : int, optional
        This page's number (1-based) and how many there are: each page
        links the others (:func:`page_name`).
    first, total : int, optional
        Position of ``rows[0]`` among all results, and their number.

    Examples
    --------
    >>> page = render_page([{"name": "a.tif", "input": "a.tif", "status": "done", "objects": 3}],
    ...                    {"title": "run", "counts": [("done", 1, "")], "run": [], "plots": [], "rules": []})
    >>> page.startswith("<!doctype html>") and "a.tif" in page and "http" not in page
    True
    """
    counts = "".join(f'<span class="{_e(css)}"><b>{_e(n)}</b> {_e(label)}</span>' for label, n, css in summary["counts"])
    run = "".join(f"<tr><td>{_e(k)}</td><td><code>{_e(v)}</code></td></tr>" for k, v in summary["run"])
    rules = "".join(f"<li>{_e(rule)}</li>" for rule in summary["rules"])
    head = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{_e(summary['title'])}</title><style>{_STYLE}</style></head><body>"
        f"<header><h1>{_e(summary['title'])}</h1><div class=\"counts\">{counts}</div></header>"
        f'<section class="run"><table class="kv">{run}</table>{"".join(summary["plots"])}</section>'
        f'<section><h2>Flags</h2><ul class="rules">{rules}</ul></section>'
        '<nav><label><input type="checkbox" id="only-flagged"> show flagged results only</label>'
        f'{_pager(page, pages, first, len(rows), len(rows) if total is None else total)}</nav><main id="items">'
    )
    cards = "\n".join(_card(first + i, row) for i, row in enumerate(rows))
    return f"{head}{cards}</main><script>{_SCRIPT}</script></body></html>\n"
