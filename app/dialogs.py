"""The error message box: the message in plain words, details to copy for a bug report."""

from __future__ import annotations

from typing import Optional

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QHBoxLayout, QLabel, QPlainTextEdit, QPushButton,
                               QStyle, QVBoxLayout, QWidget)

from . import theme


class ErrorDialog(QDialog):
    """Window-modal, non-blocking (``open()``): the window behind stays alive and usable afterwards."""

    def __init__(self, title: str, message: str, details: str = "", parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.setWindowTitle(title)
        self.setObjectName("errorDialog")
        self.message, self.details = message, details
        layout = QVBoxLayout(self)
        top = QHBoxLayout()
        icon = QLabel()
        icon.setPixmap(self.style().standardIcon(QStyle.StandardPixmap.SP_MessageBoxWarning).pixmap(40, 40))
        icon.setAlignment(Qt.AlignmentFlag.AlignTop)
        top.addWidget(icon)
        text = QLabel(f"<b>{title}</b><br><br>{_html(message)}")
        text.setWordWrap(True)
        text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        text.setMinimumWidth(420)
        top.addWidget(text, 1)
        layout.addLayout(top)

        self.details_view = QPlainTextEdit(details)
        self.details_view.setReadOnly(True)
        self.details_view.setVisible(False)
        self.details_view.setMinimumHeight(180)
        layout.addWidget(self.details_view)

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok)
        self.copy_button = QPushButton("Copy details")
        self.copy_button.setIcon(theme.icon("copy"))
        self.copy_button.setToolTip("Copy the message and the technical details, e.g. for a bug report.")
        self.copy_button.clicked.connect(self.copy_details)
        buttons.addButton(self.copy_button, QDialogButtonBox.ButtonRole.ActionRole)
        if details:
            self.toggle = QPushButton("Show details")
            self.toggle.setCheckable(True)
            self.toggle.toggled.connect(self._toggle_details)
            buttons.addButton(self.toggle, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.accepted.connect(self.accept)
        layout.addWidget(buttons)
        self.setWindowModality(Qt.WindowModality.WindowModal)

    def copy_details(self) -> None:
        text = f"{self.windowTitle()}\n\n{self.message}"
        if self.details:
            text += f"\n\n{self.details}"
        QGuiApplication.clipboard().setText(text)
        self.copy_button.setText("Copied")

    def _toggle_details(self, on: bool) -> None:
        self.details_view.setVisible(on)
        self.toggle.setText("Hide details" if on else "Show details")
        self.adjustSize()


def _html(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\n", "<br>"))
