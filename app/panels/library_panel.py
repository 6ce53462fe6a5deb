"""The Runs step: every run in the runs folder (and added folders), with status and live progress."""

from __future__ import annotations

import time
from typing import List, Optional, Sequence

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (QAbstractItemView, QHBoxLayout, QHeaderView, QLabel, QLineEdit, QProgressBar,
                               QPushButton, QTableWidget, QTableWidgetItem, QWidget)

from .. import theme
from .common import Page, human_bytes

COLUMNS = ["Name", "Model", "Scheme", "Mode", "Status", "Result", "Size", "Date"]
PATH_ROLE = Qt.ItemDataRole.UserRole + 1
STATUS_KIND = {"completed": "ok", "running": "warn", "cancelled": "muted", "interrupted": "warn",
               "failed": "error", "unreadable": "error"}


class LibraryPanel(Page):
    open_requested = Signal(str)
    compare_requested = Signal(list)
    rename_requested = Signal(str)
    delete_requested = Signal(list)
    report_requested = Signal(list)
    add_folder_requested = Signal()
    rescan_requested = Signal()

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__("Runs", "Every run in your runs folder and the folders you add, from the window, the "
                         "command line or torchrun. Open one to see its results as they were; select two or more "
                         "to compare them.")
        top = QHBoxLayout()
        self.folders_label = QLabel("")
        self.folders_label.setWordWrap(True)
        self.filter = QLineEdit()
        self.filter.setPlaceholderText("Filter by name, model, scheme or status")
        self.filter.setClearButtonEnabled(True)
        self.filter.textChanged.connect(self._apply_filter)
        self.add_button = QPushButton("Add folder…")
        self.add_button.clicked.connect(self.add_folder_requested)
        self.rescan_button = QPushButton("Rescan")
        self.rescan_button.clicked.connect(self.rescan_requested)
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(140)
        self.progress.setVisible(False)
        top.addWidget(self.filter, 1)
        top.addWidget(self.progress)
        top.addWidget(self.add_button)
        top.addWidget(self.rescan_button)
        self.content.addLayout(top)
        self.content.addWidget(self.folders_label)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.setAlternatingRowColors(True)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        for i, w in enumerate((250, 100, 110, 50, 130, 130, 70)):
            self.table.setColumnWidth(i, w)
        self.table.itemSelectionChanged.connect(self._update_buttons)
        self.table.itemDoubleClicked.connect(lambda *_: self._open())
        self.content.addWidget(self.table, 1)

        buttons = QHBoxLayout()
        self.open_button = QPushButton("Open in Results")
        self.open_button.clicked.connect(self._open)
        self.compare_button = QPushButton("Compare selected")
        self.compare_button.clicked.connect(lambda: self.compare_requested.emit(self.selected_paths()))
        self.report_button = QPushButton("Write report…")
        self.report_button.setToolTip("One HTML page with the plots and tables of the selected runs, to share")
        self.report_button.clicked.connect(lambda: self.report_requested.emit(self.selected_paths()))
        self.rename_button = QPushButton("Rename…")
        self.rename_button.clicked.connect(lambda: self.rename_requested.emit(self.selected_paths()[0]))
        self.delete_button = QPushButton("Delete…")
        self.delete_button.clicked.connect(lambda: self.delete_requested.emit(self.selected_paths()))
        self.count_label = QLabel("")
        buttons.addWidget(self.count_label, 1)
        for b in (self.open_button, self.compare_button, self.report_button, self.rename_button, self.delete_button):
            buttons.addWidget(b)
        self.content.addLayout(buttons)
        self.rows: List = []
        self._sorted_once = False
        self._update_buttons()

    # -- data ------------------------------------------------------------------------------
    def set_folders(self, folders: Sequence[str]) -> None:
        self.folders_label.setText("Folders: " + "  ·  ".join(folders))

    def show_scan_progress(self, done: int, total: int) -> None:
        self.progress.setVisible(done < total)
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(done)

    def show_runs(self, rows: List) -> None:
        """Fill the table from RunSummary rows (keeps the selection by path)."""
        selected = set(self.selected_paths())
        self.rows = list(rows)
        colors = theme.status_colors()
        self.table.setUpdatesEnabled(False)
        self.table.setSortingEnabled(False)
        self.table.setRowCount(len(rows))
        for i, r in enumerate(rows):
            result = f"{r.metric_name} {r.metric:.4g}" if r.metric is not None else ""
            status = r.status + (f" · {r.progress_text}" if r.progress_text else "")
            date = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.started)) if r.started else ""
            values = [r.name, r.model, r.scheme, r.mode.upper(), status, result,
                      human_bytes(r.size_bytes) if r.size_bytes else "", date]
            for j, v in enumerate(values):
                item = self.table.item(i, j)
                if item is None:
                    item = QTableWidgetItem()
                    self.table.setItem(i, j, item)
                item.setText(v)
                item.setData(PATH_ROLE, r.path)
            status_item = self.table.item(i, 4)
            status_item.setForeground(theme_color(colors[STATUS_KIND.get(r.status, "muted")]))
            status_item.setToolTip(r.error or r.status)
        self.table.setSortingEnabled(True)
        if not self._sorted_once:  # newest first until the user sorts otherwise
            self.table.sortItems(len(COLUMNS) - 1, Qt.SortOrder.DescendingOrder)
            self._sorted_once = True
        self.table.setUpdatesEnabled(True)
        if selected:
            self.select_paths(selected)
        self._apply_filter()
        n_running = sum(r.status == "running" for r in rows)
        self.count_label.setText(f"{len(rows)} runs" + (f", {n_running} running" if n_running else ""))

    def row_of(self, path: str) -> int:
        for i in range(self.table.rowCount()):
            if self.table.item(i, 0).data(PATH_ROLE) == path:
                return i
        return -1

    def status_of(self, path: str) -> str:
        i = self.row_of(path)
        return self.table.item(i, 4).text() if i >= 0 else ""

    def select_paths(self, paths) -> None:
        paths = set(paths)
        self.table.clearSelection()
        mode = self.table.selectionMode()
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.MultiSelection)
        for i in range(self.table.rowCount()):
            if self.table.item(i, 0).data(PATH_ROLE) in paths:
                self.table.selectRow(i)
        self.table.setSelectionMode(mode)

    def selected_paths(self) -> List[str]:
        rows = sorted({i.row() for i in self.table.selectedIndexes()})
        return [self.table.item(r, 0).data(PATH_ROLE) for r in rows if self.table.item(r, 0)]

    def _apply_filter(self) -> None:
        text = self.filter.text().strip().lower()
        for i in range(self.table.rowCount()):
            hay = " ".join(self.table.item(i, j).text().lower() for j in (0, 1, 2, 4))
            self.table.setRowHidden(i, bool(text) and text not in hay)

    def _open(self) -> None:
        paths = self.selected_paths()
        if paths:
            self.open_requested.emit(paths[0])

    def _update_buttons(self) -> None:
        n = len(self.selected_paths())
        self.open_button.setEnabled(n == 1)
        self.rename_button.setEnabled(n == 1)
        self.delete_button.setEnabled(n >= 1)
        self.compare_button.setEnabled(n >= 2)
        self.report_button.setEnabled(n >= 1)


def theme_color(name: str) -> QBrush:
    return QBrush(QColor(name))
