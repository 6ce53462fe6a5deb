"""Fixtures for the window tests: isolated settings, a window that is closed and joined, helpers.

Every test gets its own settings folder (``LOWBIT_SETTINGS_DIR``), so the real
user's settings are never read or written, and its own runs folder.
"""

from __future__ import annotations

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

@pytest.fixture(autouse=True)
def isolated_settings(tmp_path, monkeypatch):
    folder = tmp_path / "settings"
    monkeypatch.setenv("LOWBIT_SETTINGS_DIR", str(folder))
    return folder


@pytest.fixture(scope="session", autouse=True)
def light_theme(qapp):
    from app import theme

    theme.apply_theme(qapp, "light")
    yield


@pytest.fixture(autouse=True)
def gui_thread_gc(qapp):
    """The app's collector guard, as `lowbit-studio` runs it: cyclic garbage is freed on the GUI thread only.

    Without it, an earlier test's window caught in a reference cycle can be
    collected on a worker thread while the GUI thread deletes its children,
    and the two threads deadlock (CI hung that way once). Autouse, so it is set
    up before the window fixture and stopped after the window is gone.
    """
    from app.gcguard import GuiThreadCollector

    guard = GuiThreadCollector(qapp)
    guard.start()
    yield guard
    guard.stop()


@pytest.fixture
def window(qtbot, tmp_path):
    """A shown main window with its runs folder in tmp_path; closed, and its threads joined, afterwards."""
    from app.window import MainWindow

    win = MainWindow()
    win.confirm_close = False
    win.run_panel.run_folder.set_text(str(tmp_path / "runs"))
    win.resize(1280, 820)
    win.show()
    qtbot.waitExposed(win)
    yield win
    threads = [win.runner._thread] if win.runner._thread else []
    for slot in (win.model_task, win.device_task, win.compare_task, win.export_task, *win.data_tasks.values()):
        threads += slot.threads()
    win.close()
    for t in threads:
        assert t.wait(60_000), "a worker thread did not end"
        assert not t.isRunning()
    win.deleteLater()
    qtbot.wait(10)
