"""Light and dark palettes that follow the system, icons tinted to match, plot colours.

``apply_theme(app, "system" | "light" | "dark")`` sets the Fusion style and a
palette; "system" picks dark when the platform says so (Qt's colour scheme, else
the lightness of its default window colour). Icons are SVG files in
``resources/icons`` drawn with ``currentColor``, tinted with the palette's text
colour when loaded.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Dict, Tuple

from PySide6.QtCore import QByteArray, QSize, Qt
from PySide6.QtGui import QColor, QGuiApplication, QIcon, QPainter, QPalette, QPixmap
from PySide6.QtSvg import QSvgRenderer
from PySide6.QtWidgets import QApplication, QStyleFactory

from engine.resources import resource_path

ICONS = resource_path("icons")
MODES = ("system", "light", "dark")

# Distinct, colour-blind-friendly series colours (Okabe-Ito), same in both themes.
SERIES = {
    "loss": "#0072B2",
    "task_loss": "#E69F00",
    "kd_loss": "#CC79A7",
    "hidden_loss": "#56B4E9",
    "embedding_loss": "#D55E00",
    "scale_penalty": "#000000",
    "embedding_cosine": "#D55E00",
    "kd_alpha": "#CC79A7",
    "lr": "#009E73",
    "perplexity": "#D55E00",
    "baseline": "#999999",
    "ptq": "#E69F00",
    "qat": "#56B4E9",
    "qad": "#009E73",
}
HEATMAP_COLORMAP = "viridis"

_system_palette: QPalette | None = None


def _dark_palette() -> QPalette:
    p = QPalette()
    roles = {
        QPalette.ColorRole.Window: "#2b2d31",
        QPalette.ColorRole.WindowText: "#e6e6e6",
        QPalette.ColorRole.Base: "#1f2023",
        QPalette.ColorRole.AlternateBase: "#26282c",
        QPalette.ColorRole.ToolTipBase: "#3a3d42",
        QPalette.ColorRole.ToolTipText: "#f0f0f0",
        QPalette.ColorRole.PlaceholderText: "#8a8d93",
        QPalette.ColorRole.Text: "#e6e6e6",
        QPalette.ColorRole.Button: "#34373c",
        QPalette.ColorRole.ButtonText: "#e6e6e6",
        QPalette.ColorRole.BrightText: "#ff6b6b",
        QPalette.ColorRole.Highlight: "#3d7be0",
        QPalette.ColorRole.HighlightedText: "#ffffff",
        QPalette.ColorRole.Link: "#6ea8fe",
        QPalette.ColorRole.Light: "#45484e",
        QPalette.ColorRole.Midlight: "#3a3d42",
        QPalette.ColorRole.Mid: "#2f3236",
        QPalette.ColorRole.Dark: "#191a1c",
        QPalette.ColorRole.Shadow: "#000000",
    }
    for role, color in roles.items():
        p.setColor(role, QColor(color))
    for role in (QPalette.ColorRole.WindowText, QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText):
        p.setColor(QPalette.ColorGroup.Disabled, role, QColor("#7c7f85"))
    return p


def _light_palette() -> QPalette:
    p = QApplication.style().standardPalette() if QApplication.style() else QPalette()
    p.setColor(QPalette.ColorRole.Highlight, QColor("#2d6cdf"))
    p.setColor(QPalette.ColorRole.HighlightedText, QColor("#ffffff"))
    return p


def system_prefers_dark() -> bool:
    scheme = QGuiApplication.styleHints().colorScheme()
    if scheme == Qt.ColorScheme.Dark:
        return True
    if scheme == Qt.ColorScheme.Light:
        return False
    palette = _system_palette or QGuiApplication.palette()
    return palette.color(QPalette.ColorRole.Window).lightness() < 128


def apply_theme(app: QApplication, mode: str = "system") -> bool:
    """Set the style and palette; returns True when the result is dark."""
    global _system_palette
    if _system_palette is None:
        _system_palette = QPalette(app.palette())
    if mode not in MODES:
        mode = "system"
    app.setStyle(QStyleFactory.create("Fusion"))
    dark = mode == "dark" or (mode == "system" and system_prefers_dark())
    app.setPalette(_dark_palette() if dark else _light_palette())
    icon.cache_clear()
    return dark


def is_dark(palette: QPalette | None = None) -> bool:
    palette = palette or QGuiApplication.palette()
    return palette.color(QPalette.ColorRole.Window).lightness() < 128


def plot_colors() -> Tuple[str, str, str]:
    """(background, foreground, grid) for pyqtgraph, from the current palette."""
    p = QGuiApplication.palette()
    bg = p.color(QPalette.ColorRole.Base).name()
    fg = p.color(QPalette.ColorRole.Text).name()
    grid = p.color(QPalette.ColorRole.Mid).name()
    return bg, fg, grid


def muted_text() -> str:
    """Secondary text: the text colour 40% of the way to the window colour (readable in both themes)."""
    p = QGuiApplication.palette()
    t, w = p.color(QPalette.ColorRole.WindowText), p.color(QPalette.ColorRole.Window)
    return QColor(*(int(0.6 * a + 0.4 * b) for a, b in ((t.red(), w.red()), (t.green(), w.green()),
                                                           (t.blue(), w.blue())))).name()


@lru_cache(maxsize=None)
def icon(name: str, color: str | None = None) -> QIcon:
    """``resources/icons/<name>.svg`` tinted with ``color`` (default: the palette's text colour)."""
    path = ICONS / f"{name}.svg"
    if not path.exists():
        return QIcon()
    if color is None:
        color = QGuiApplication.palette().color(QPalette.ColorRole.WindowText).name()
    data = path.read_text(encoding="utf-8").replace("currentColor", color)
    renderer = QSvgRenderer(QByteArray(data.encode("utf-8")))
    result = QIcon()
    for size in (16, 20, 24, 32, 48):
        pix = QPixmap(QSize(size, size))
        pix.fill(Qt.GlobalColor.transparent)
        painter = QPainter(pix)
        renderer.render(painter)
        painter.end()
        result.addPixmap(pix)
    return result


def app_icon() -> QIcon:
    path = ICONS / "lowbit.svg"
    return QIcon(str(path)) if path.exists() else QIcon()


def status_colors() -> Dict[str, str]:
    dark = is_dark()
    return {
        "ok": "#4caf50" if dark else "#2e7d32",
        "warn": "#ffb74d" if dark else "#b26a00",
        "error": "#ef5350" if dark else "#c62828",
        "muted": muted_text(),
    }
