"""The Runs step: every run in the runs folder (and added folders), with status and live progress.

The list is a model / view pair: a rescan swaps the model's rows in one reset,
and the view asks only for the cells it shows, so hundreds of runs cost the GUI
thread next to nothing.
"""

from __future__ import annotations

import time
from typing import Any, List, Optional, Sequence

from PySide6.QtCore import QAbstractTableModel, QModelIndex, Qt, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (QAbstractItemView, QHBoxLayout, QHeaderView, QLabel, QLineEdit, QProgressBar,
                               QPushButton, QTableView, QWidget)

from .. import theme
from .common import Page, human_bytes

COLUMNS = ["Name", "Model", "Scheme", "Mode", "Status", "Result", "Size", "Date"]
PATH_ROLE = Qt.ItemDataRole.UserRole + 1
STATUS_KIND = {"completed": "ok", "running": "warn", "cancelled": "muted", "interrupted": "warn",
               "failed": "error", "unreadable": "error"}


def _cells(r) -> List[str]:
    result = f"{r.metric_name} {r.metric:.4g}" if r.metric is not None else ""
    status = r.status + (f" · {r.progress_text}" if r.progress_text else "")
    date = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.started)) if r.started else ""
    return [r.name, r.model, r.scheme, r.mode.upper(), status, result, human_bytes(r.size_bytes) if r.size_bytes
            else "", date]


class RunsModel(QAbstractTableModel):
    """RunSummary rows; the cell texts are made once per rescan, not per paint."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.rows: List[Any] = []
        self.texts: List[List[str]] = []
        self.colors = theme.status_colors()

        self.sort_column, self.sort_order = len(COLUMNS) - 1, Qt.SortOrder.DescendingOrder

    def set_rows(self, rows: List[Any]) -> None:
        self.beginResetModel()
        self.rows = self._sorted(rows)
        self.texts = [_cells(r) for r in self.rows]
        self.colors = theme.status_colors()
        self.endResetModel()

    def _key(self, r):
        c = self.sort_column
        if c == 7:
            return r.started or 0.0
        if c == 6:
            return r.size_bytes or 0.0
        if c == 5:
            return r.metric if r.metric is not None else float("inf")
        return _cells(r)[c].lower()

    def _sorted(self, rows: List[Any]) -> List[Any]:
        return sorted(rows, key=self._key, reverse=self.sort_order == Qt.SortOrder.DescendingOrder)

    def sort(self, column: int, order=Qt.SortOrder.AscendingOrder) -> None:
        """Sorting in Python, once (a proxy model would call back into Python per comparison)."""
        self.sort_column, self.sort_order = column, order
        self.layoutAboutToBeChanged.emit()
        self.rows = self._sorted(self.rows)
        self.texts = [_cells(r) for r in self.rows]
        self.layoutChanged.emit()

    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section]
        return None

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        r = self.rows[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return self.texts[index.row()][index.column()]
        if role == PATH_ROLE:
            return r.path
        if role == Qt.ItemDataRole.ForegroundRole and index.column() == 4:
            return QBrush(QColor(self.colors[STATUS_KIND.get(r.status, "muted")]))
        if role == Qt.ItemDataRole.ToolTipRole and index.column() == 4:
            return r.error or r.status
        return None


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
        self.filter.textChanged.connect(lambda _: self._apply_filter())
        self.add_button = QPushButton("Add folder…")
        self.add_button.clicked.connect(self.add_folder_requested)
        self.rescan_button = QPushButton("Rescan")
        self.rescan_button.clicked.connect(self.rescan_requested)
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(140)
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(False)  # always shown: hiding and showing it would lay the page out again
        self.progress.setEnabled(False)
        top.addWidget(self.filter, 1)
        top.addWidget(self.progress)
        top.addWidget(self.add_button)
        top.addWidget(self.rescan_button)
        self.content.addLayout(top)
        self.content.addWidget(self.folders_label)

        self.model = RunsModel(self)
        self.proxy = self.model  # rows as shown (the model sorts itself)
        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(len(COLUMNS) - 1, Qt.SortOrder.DescendingOrder)  # newest first
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(24)
        self.table.setAlternatingRowColors(True)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        for i, w in enumerate((250, 100, 110, 50, 130, 130, 70)):
            self.table.setColumnWidth(i, w)
        self.table.selectionModel().selectionChanged.connect(lambda *_: self._update_buttons())
        self.table.doubleClicked.connect(lambda *_: self._open())
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
        self._update_buttons()

    # -- data ------------------------------------------------------------------------------
    def set_folders(self, folders: Sequence[str]) -> None:
        text = "Folders: " + "  ·  ".join(folders)
        if text != self.folders_label.text():
            self.folders_label.setText(text)

    def show_scan_progress(self, done: int, total: int) -> None:
        self.progress.setEnabled(done < total)
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(done if done < total else 0)

    def show_runs(self, rows: List) -> None:
        """Show RunSummary rows (keeps the selection by path)."""
        selected = set(self.selected_paths())
        self.rows = list(rows)
        self.model.set_rows(rows)
        self._apply_filter()
        if selected:
            self.select_paths(selected)
        n_running = sum(r.status == "running" for r in rows)
        self.count_label.setText(f"{len(rows)} runs" + (f", {n_running} running" if n_running else ""))
        self._update_buttons()

    def _apply_filter(self) -> None:
        text = self.filter.text().strip().lower()
        for i, texts in enumerate(self.model.texts):
            self.table.setRowHidden(i, bool(text) and not any(text in texts[j].lower() for j in (0, 1, 2, 4)))
        self._update_buttons()

    def rowCount(self) -> int:
        return self.proxy.rowCount()

    def row_of(self, path: str) -> int:
        for i in range(self.proxy.rowCount()):
            if self.proxy.index(i, 0).data(PATH_ROLE) == path:
                return i
        return -1

    def text(self, row: int, column: int) -> str:
        return self.proxy.index(row, column).data() or ""

    def status_of(self, path: str) -> str:
        i = self.row_of(path)
        return self.text(i, 4) if i >= 0 else ""

    def select_paths(self, paths) -> None:
        paths = set(paths)
        sel = self.table.selectionModel()
        sel.clearSelection()
        for i in range(self.proxy.rowCount()):
            if self.proxy.index(i, 0).data(PATH_ROLE) in paths:
                sel.select(self.proxy.index(i, 0), sel.SelectionFlag.Select | sel.SelectionFlag.Rows)

    def selected_paths(self) -> List[str]:
        rows = sorted(i.row() for i in self.table.selectionModel().selectedRows())
        return [self.proxy.index(r, 0).data(PATH_ROLE) for r in rows]

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
