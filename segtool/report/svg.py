"""Histograms as inline SVG text, drawn by the report itself (no plotting library, no script)."""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np

__all__ = ["histogram_svg"]


def _tick(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 10 or float(value).is_integer() else f"{value:.2g}"


def histogram_svg(
    values: Sequence[float],
    *,
    title: str,
    xlabel: str,
    bins: int = 30,
    width: int = 360,
    height: int = 180,
    marker: float | None = None,
    marker_label: str = "",
) -> str:
    """A bar histogram of ``values`` as an ``<svg>`` element for an HTML page.

    Parameters
    ----------
    values : sequence of float
        NaN and inf are left out.
    title, xlabel : str
        Text above the bars and under the axis (escaped here).
    bins : int, optional
        At most this many bars (fewer when the values are few integers).
    width, height : int, optional
        Size in CSS pixels.
    marker : float, optional
        A value to mark with a vertical dashed line (say, the model's
        training diameter), labelled ``marker_label``.

    Returns
    -------
    svg : str
        Self-contained markup with no external reference (no namespace URL:
        inside HTML5 the ``<svg>`` element needs none).

    Examples
    --------
    >>> svg = histogram_svg([1, 2, 2, 3], title="objects", xlabel="count")
    >>> svg.startswith("<svg") and svg.count("<rect") == 3 and "http" not in svg
    True
    >>> "no data" in histogram_svg([], title="t", xlabel="x")
    True
    """
    data = np.asarray([v for v in values if v is not None], dtype=np.float64)
    data = data[np.isfinite(data)]
    left, right, top, bottom = 40, 10, 22, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    parts = [f'<svg class="hist" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{html.escape(title)}">',
             f'<text x="{left}" y="14" class="t">{html.escape(title)}</text>']
    if data.size == 0:
        parts.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}" text-anchor="middle">no data</text></svg>')
        return "".join(parts)
    low, high = float(data.min()), float(data.max())
    if marker is not None and np.isfinite(marker):
        low, high = min(low, marker), max(high, marker)
    integers = bool(np.all(data == np.round(data)))
    if integers and high - low + 1 <= bins:
        edges = np.arange(low - 0.5, high + 1.5)  # one bar per integer value
    else:
        edges = np.linspace(low, high if high > low else low + 1, bins + 1)
    counts, edges = np.histogram(data, bins=edges)
    peak = max(int(counts.max()), 1)
    span = float(edges[-1] - edges[0])

    def x_of(value: float) -> float:
        return left + (value - edges[0]) / span * plot_w

    for count, a, b in zip(counts, edges[:-1], edges[1:]):
        if count == 0:
            continue
        h = count / peak * plot_h
        parts.append(f'<rect x="{x_of(a) + 0.5:.1f}" y="{top + plot_h - h:.1f}" width="{max(x_of(b) - x_of(a) - 1, 1):.1f}" '
                     f'height="{h:.1f}"><title>{_tick(a)}-{_tick(b)}: {count}</title></rect>')
    axis_y = top + plot_h
    parts.append(f'<line x1="{left}" y1="{axis_y}" x2="{left + plot_w}" y2="{axis_y}" class="a"/>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{axis_y}" class="a"/>')
    lo_edge, hi_edge = float(edges[0]), float(edges[-1])
    for value, anchor in ((lo_edge, "start"), ((lo_edge + hi_edge) / 2, "middle"), (hi_edge, "end")):
        shown = value + 0.5 if integers and anchor == "start" and edges[1] - edges[0] == 1 else value
        shown = shown - 1 if integers and anchor == "end" and edges[1] - edges[0] == 1 else shown
        parts.append(f'<text x="{x_of(value):.1f}" y="{axis_y + 13}" text-anchor="{anchor}">{_tick(shown)}</text>')
    parts.append(f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">{peak}</text>')
    parts.append(f'<text x="{left - 4}" y="{axis_y}" text-anchor="end">0</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 4}" text-anchor="middle">{html.escape(xlabel)}</text>')
    if marker is not None and np.isfinite(marker):
        mx = x_of(float(marker))
        parts.append(f'<line x1="{mx:.1f}" y1="{top}" x2="{mx:.1f}" y2="{axis_y}" class="m"/>')
        parts.append(f'<text x="{mx + 3:.1f}" y="{top + 10}" class="m">{html.escape(marker_label)}</text>')
    parts.append("</svg>")
    return "".join(parts)
