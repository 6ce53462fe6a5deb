"""Make README's screenshot: the demo, a real QAD run, the results page.

    QT_QPA_PLATFORM=offscreen python docs/make_screenshot.py docs/screenshot.png [--steps 60] [--tab 0]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--tab", type=int, default=0, help="results tab: 0 curves, 1 layers, 2 benchmark")
    args = p.parse_args()
    os.environ.setdefault("LOWBIT_SETTINGS_DIR", tempfile.mkdtemp(prefix="lowbit-shot-settings-"))

    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from app import theme
    from app.defaults import default_recipe_path
    from app.settings import Settings
    from app.window import MainWindow

    app = QApplication(sys.argv[:1])
    theme.apply_theme(app, "light")
    window = MainWindow(Settings())
    window.confirm_close = False
    window.open_recipe(default_recipe_path())
    window.state.set("train.steps", args.steps)
    window.state.set("train.eval_every", max(1, args.steps // 6))
    window.run_panel.run_folder.set_text(tempfile.mkdtemp(prefix="lowbit-shot-runs-"))
    window.resize(1280, 820)
    window.show()

    def try_start():
        if window.readiness()[0]:
            window.start_run()
            QTimer.singleShot(500, wait_end)
        else:
            QTimer.singleShot(500, try_start)

    def wait_end():
        if window.runner.running:
            QTimer.singleShot(500, wait_end)
            return
        window.go_to("results")
        window.results_panel.tabs.setCurrentIndex(args.tab)
        QTimer.singleShot(1500, shoot)

    def shoot():
        window.grab().save(args.out)
        print(f"saved {args.out}")
        window.close()
        app.quit()

    QTimer.singleShot(1000, try_start)
    return app.exec()


if __name__ == "__main__":
    raise SystemExit(main())
