"""Small SVG charts for the shareable report: scatter with a front, overlaid lines, a heatmap.

Plain strings, no dependencies, no external references (no xmlns URL either:
the charts are inline ``<svg>`` elements of an HTML5 page, which needs none).
"""

from __future__ import annotations

import math
from html import escape
from typing import List, Optional, Sequence, Tuple

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
           "#bcbd22"]
FRONT = "#d62728"


def _nice_ticks(lo: float, hi: float, n: int = 5) -> List[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    start = math.ceil(lo / step) * step
    ticks, t = [], start
    while t <= hi + 1e-9 * step:
        ticks.append(round(t, 12))
        t += step
    return ticks


def _fmt(v: float) -> str:
    return f"{v:.4g}"


class _Frame:
    """Axes, ticks and the mapping from data to pixels."""

    def __init__(self, xs: Sequence[float], ys: Sequence[float], width: int, height: int, pad: float = 0.06):
        self.w, self.h = width, height
        self.left, self.right, self.top, self.bottom = 64, 16, 40, 48
        x0, x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
        y0, y1 = (min(ys), max(ys)) if ys else (0.0, 1.0)
        dx, dy = (x1 - x0) or abs(x0) or 1.0, (y1 - y0) or abs(y0) or 1.0
        self.x0, self.x1 = x0 - pad * dx, x1 + pad * dx
        self.y0, self.y1 = y0 - pad * dy, y1 + pad * dy

    def px(self, x: float) -> float:
        return self.left + (x - self.x0) / (self.x1 - self.x0) * (self.w - self.left - self.right)

    def py(self, y: float) -> float:
        return self.h - self.bottom - (y - self.y0) / (self.y1 - self.y0) * (self.h - self.top - self.bottom)

    def axes(self, title: str, xlabel: str, ylabel: str) -> List[str]:
        out = [f'<rect x="0" y="0" width="{self.w}" height="{self.h}" fill="#ffffff"/>',
               f'<text x="{self.w / 2:.0f}" y="18" text-anchor="middle" font-size="14" font-weight="bold">'
               f'{escape(title)}</text>']
        for t in _nice_ticks(self.x0, self.x1):
            x = self.px(t)
            out.append(f'<line x1="{x:.1f}" y1="{self.top}" x2="{x:.1f}" y2="{self.h - self.bottom}" stroke="#e6e6e6"/>')
            out.append(f'<text x="{x:.1f}" y="{self.h - self.bottom + 16}" text-anchor="middle" font-size="11">'
                       f'{_fmt(t)}</text>')
        for t in _nice_ticks(self.y0, self.y1):
            y = self.py(t)
            out.append(f'<line x1="{self.left}" y1="{y:.1f}" x2="{self.w - self.right}" y2="{y:.1f}" stroke="#e6e6e6"/>')
            out.append(f'<text x="{self.left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{_fmt(t)}</text>')
        out.append(f'<rect x="{self.left}" y="{self.top}" width="{self.w - self.left - self.right}" '
                   f'height="{self.h - self.top - self.bottom}" fill="none" stroke="#444444"/>')
        out.append(f'<text x="{(self.left + self.w - self.right) / 2:.0f}" y="{self.h - 10}" text-anchor="middle" '
                   f'font-size="12">{escape(xlabel)}</text>')
        out.append(f'<text x="14" y="{(self.top + self.h - self.bottom) / 2:.0f}" text-anchor="middle" font-size="12" '
                   f'transform="rotate(-90 14 {(self.top + self.h - self.bottom) / 2:.0f})">{escape(ylabel)}</text>')
        return out


def _svg(width: int, height: int, body: List[str], label: str) -> str:
    return (f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="{escape(label)}" font-family="sans-serif">' + "".join(body) + "</svg>")


def scatter_front(points: Sequence[Tuple[float, float, str, bool, bool]], title: str, xlabel: str, ylabel: str,
                  width: int = 560, height: int = 380) -> str:
    """Points (x, y, label, on_front, highlighted); the front joined by a line, front points in red."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    f = _Frame(xs, ys, width, height, pad=0.12)
    body = f.axes(title, xlabel, ylabel)
    front = sorted((p for p in points if p[3]), key=lambda p: p[0])
    if len(front) > 1:
        path = " ".join(f"{f.px(x):.1f},{f.py(y):.1f}" for x, y, *_ in front)
        body.append(f'<polyline points="{path}" fill="none" stroke="{FRONT}" stroke-width="2" stroke-dasharray="6 3"/>')
    placed: List[Tuple[float, float]] = []  # label anchors already used: close labels step down
    for x, y, label, on_front, mixed in sorted(points, key=lambda p: (p[1], p[0])):
        cx, cy = f.px(x), f.py(y)
        colour = FRONT if on_front else "#1f77b4"
        shape = (f'<rect x="{cx - 6:.1f}" y="{cy - 6:.1f}" width="12" height="12" fill="{colour}" stroke="#222"/>'
                 if mixed else f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="6" fill="{colour}" stroke="#222"/>')
        body.append(shape)
        anchor = "end" if cx > width * 0.7 else "start"
        dx = -9 if anchor == "end" else 9
        ty = cy - 8
        while any(abs(ty - py) < 12 and abs(cx - px) < 90 for px, py in placed):
            ty += 12
        placed.append((cx, ty))
        body.append(f'<text x="{cx + dx:.1f}" y="{ty:.1f}" text-anchor="{anchor}" font-size="11">{escape(label)}</text>')
    lx = f.w - f.right - 100
    body.append(f'<circle cx="{lx + 5}" cy="{f.top - 9}" r="5" fill="{FRONT}" stroke="#222"/>'
                f'<text x="{lx + 14}" y="{f.top - 5}" font-size="11">Pareto front</text>')
    return _svg(width, height, body, title)


def lines(series: Sequence[Tuple[str, Sequence[float], Sequence[float]]], title: str, xlabel: str, ylabel: str,
          width: int = 560, height: int = 340) -> str:
    """Overlaid curves (label, xs, ys); a one-point series is drawn as a marker."""
    xs = [x for _, sx, _ in series for x in sx]
    ys = [y for _, _, sy in series for y in sy if math.isfinite(y)]
    f = _Frame(xs, ys, width, height)
    body = f.axes(title, xlabel, ylabel)
    for i, (label, sx, sy) in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        pts = [(f.px(x), f.py(y)) for x, y in zip(sx, sy) if math.isfinite(y)]
        if len(pts) > 1:
            body.append(f'<polyline points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in pts)}" fill="none" '
                        f'stroke="{colour}" stroke-width="2"/>')
        for a, b in pts:
            body.append(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{colour}"/>')
        ly = f.top + 14 + 15 * i
        body.append(f'<line x1="{f.w - f.right - 170}" y1="{ly - 4}" x2="{f.w - f.right - 150}" y2="{ly - 4}" '
                    f'stroke="{colour}" stroke-width="3"/><text x="{f.w - f.right - 145}" y="{ly}" font-size="11">'
                    f'{escape(label[:28])}</text>')
    return _svg(width, height, body, title)


def _diverging(v: float, limit: float) -> str:
    """Red (worse, negative) - white - blue (better, positive)."""
    t = max(-1.0, min(1.0, v / limit)) if limit > 0 else 0.0
    if t >= 0:
        r, g, b = (int(255 - t * (255 - c)) for c in (33, 102, 172))
    else:
        r, g, b = (int(255 + t * (255 - c)) for c in (178, 24, 43))
    return f"#{r:02x}{g:02x}{b:02x}"


def heatmap(rows: Sequence[str], columns: Sequence[str], values: Sequence[Sequence[float]], title: str,
            unit: str = "dB", limit: Optional[float] = None, cell_h: int = 14, width: int = 760) -> str:
    """A diverging heatmap of ``values[row][col]`` (NaN in grey), with row labels and a scale."""
    finite = [abs(v) for row in values for v in row if math.isfinite(v)]
    limit = limit or (max(finite) if finite else 1.0) or 1.0
    label_w, top = 230, 40
    n_cols = max(1, len(columns))
    cell_w = max(30, min(200, (width - label_w - 20) // n_cols))
    height = top + cell_h * len(rows) + 60
    body = [f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
            f'<text x="{width / 2:.0f}" y="18" text-anchor="middle" font-size="14" font-weight="bold">{escape(title)}</text>']
    for j, c in enumerate(columns):
        short = c if len(c) * 6 <= cell_w else c[:max(3, cell_w // 6 - 1)] + "…"
        body.append(f'<text x="{label_w + (j + 0.5) * cell_w:.0f}" y="{top - 6}" text-anchor="middle" font-size="10">'
                    f'<title>{escape(c)}</title>{escape(short)}</text>')
    for i, name in enumerate(rows):
        y = top + i * cell_h
        body.append(f'<text x="{label_w - 6}" y="{y + cell_h - 3}" text-anchor="end" font-size="10">{escape(name)}</text>')
        for j, v in enumerate(values[i]):
            fill = _diverging(v, limit) if math.isfinite(v) else "#bbbbbb"
            tip = f"{name} / {columns[j]}: " + (f"{v:+.2f} {unit}" if math.isfinite(v) else "not in both runs")
            body.append(f'<rect x="{label_w + j * cell_w}" y="{y}" width="{cell_w - 1}" height="{cell_h - 1}" '
                        f'fill="{fill}"><title>{escape(tip)}</title></rect>')
    y = top + cell_h * len(rows) + 18
    for k in range(21):
        v = -limit + 2 * limit * k / 20
        body.append(f'<rect x="{label_w + k * 12}" y="{y}" width="12" height="10" fill="{_diverging(v, limit)}"/>')
    body.append(f'<text x="{label_w - 6}" y="{y + 9}" text-anchor="end" font-size="10">worse {-limit:.3g} {unit}</text>')
    body.append(f'<text x="{label_w + 21 * 12 + 6}" y="{y + 9}" font-size="10">better +{limit:.3g} {unit}</text>')
    return _svg(width, height, body, title)
