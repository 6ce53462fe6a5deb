"""The step list on the left: an icon, "1  Model", and below it the current choice in muted text."""

from __future__ import annotations

from PySide6.QtCore import QRect, QSize, Qt
from PySide6.QtGui import QColor, QFont, QPalette
from PySide6.QtWidgets import QListWidget, QListWidgetItem, QStyle, QStyledItemDelegate

from .. import theme

SUBTITLE_ROLE = Qt.ItemDataRole.UserRole + 2
KEY_ROLE = Qt.ItemDataRole.UserRole


class _StepDelegate(QStyledItemDelegate):
    def paint(self, painter, option, index):
        self.initStyleOption(option, index)
        title, subtitle = option.text, index.data(SUBTITLE_ROLE) or ""
        option.text = ""
        style = option.widget.style() if option.widget else None
        style.drawControl(QStyle.ControlElement.CE_ItemViewItem, option, painter, option.widget)
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        pal = option.palette
        text_color = pal.color(QPalette.ColorRole.HighlightedText if selected else QPalette.ColorRole.Text)
        sub_color = QColor(text_color)
        if not selected:
            sub_color = QColor(theme.muted_text())
        rect = option.rect.adjusted(44, 5, -6, -5)
        painter.save()
        font = QFont(option.font)
        font.setBold(True)
        painter.setFont(font)
        painter.setPen(text_color)
        line = option.fontMetrics.height() + 2
        painter.drawText(QRect(rect.left(), rect.top(), rect.width(), line), Qt.AlignmentFlag.AlignVCenter, title)
        if subtitle:
            painter.setFont(option.font)
            painter.setPen(sub_color)
            sub = option.fontMetrics.elidedText(subtitle, Qt.TextElideMode.ElideRight, rect.width())
            painter.drawText(QRect(rect.left(), rect.top() + line, rect.width(), line),
                             Qt.AlignmentFlag.AlignVCenter, sub)
        painter.restore()

    def sizeHint(self, option, index):
        return QSize(180, 2 * option.fontMetrics.height() + 16)


class StepList(QListWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setItemDelegate(_StepDelegate(self))
        self.setIconSize(QSize(22, 22))
        self.setSpacing(2)
        self.setMinimumWidth(190)
        self.setMaximumWidth(260)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)

    def add_step(self, key: str, title: str) -> QListWidgetItem:
        item = QListWidgetItem(theme.icon(key), title)
        item.setData(KEY_ROLE, key)
        self.addItem(item)
        return item

    def set_subtitle(self, row: int, text: str) -> None:
        self.item(row).setData(SUBTITLE_ROLE, text)
