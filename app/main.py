"""``lowbit-studio``: open the window.

    lowbit-studio [MODEL_DIR] [--data FILE] [--recipe FILE] [--theme system|light|dark]
                  [--screenshot PNG --quit-after SECONDS]

``--screenshot`` saves the window to a PNG just before quitting, so packaging
and CI can prove that the window opens (with ``QT_QPA_PLATFORM=offscreen``).
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lowbit-studio", description="Lowbit Studio: quantize models in a window.")
    p.add_argument("model", nargs="?", metavar="MODEL_DIR", help="a Hugging Face model folder to open")
    p.add_argument("--data", metavar="FILE", help="calibration / training text (.txt, .jsonl or a folder)")
    p.add_argument("--eval-data", metavar="FILE", help="evaluation text")
    p.add_argument("--recipe", metavar="FILE", help="a recipe (YAML or JSON) to open")
    p.add_argument("--step", choices=["model", "data", "format", "mode", "run", "results", "export"],
                   help="the step to show first")
    p.add_argument("--theme", choices=["system", "light", "dark"], help="colour theme (default: the saved one)")
    p.add_argument("--screenshot", metavar="PNG", help="save a picture of the window before quitting")
    p.add_argument("--quit-after", type=float, metavar="SECONDS",
                   help="quit after this many seconds (with --screenshot: take it then)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)

    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from . import gcguard, theme
    from .defaults import default_recipe_path
    from .settings import APPLICATION, ORGANIZATION, THEME, Settings
    from .window import MainWindow

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setOrganizationName(ORGANIZATION)
    app.setApplicationName(APPLICATION)
    app.setApplicationDisplayName("Lowbit Studio")
    app.setWindowIcon(theme.app_icon())
    gcguard.install(app)  # garbage that holds Qt objects is freed on this thread, never on a worker's
    settings = Settings()
    theme.apply_theme(app, args.theme or settings.get(THEME))

    window = MainWindow(settings)
    recipe = args.recipe
    if not recipe and not args.model:
        recipe = default_recipe_path()  # the demo, preselected
    if recipe:
        window.open_recipe(recipe)
        if not args.recipe:
            window.recipe_path = None  # "Save" asks where, rather than overwriting the cached demo recipe
            window._update_title()
    if args.model:
        window.open_model(args.model)
    if args.data:
        window.set_data("train", args.data)
    if args.eval_data:
        window.set_data("eval", args.eval_data)
    if args.step:
        window.go_to(args.step)
    window.show()

    previous_hook = sys.excepthook
    _show_unexpected_errors(window)
    if args.quit_after is not None or args.screenshot:
        window.confirm_close = False

        def finish() -> None:
            if args.screenshot:
                window.grab().save(args.screenshot)
                print(f"screenshot: {args.screenshot}")
            window.close()

        QTimer.singleShot(int(1000 * (args.quit_after if args.quit_after is not None else 3.0)), finish)
    try:
        return app.exec()
    finally:
        sys.excepthook = previous_hook


def _show_unexpected_errors(window) -> None:
    """A bug in a slot shows a message box (with the traceback to copy) instead of passing unnoticed."""
    import traceback

    def hook(exc_type, exc, tb):
        sys.__excepthook__(exc_type, exc, tb)
        details = "".join(traceback.format_exception(exc_type, exc, tb))
        window.show_error("Something went wrong", f"{exc_type.__name__}: {exc}\n\nThe window keeps working. "
                          "Please report this with \"Copy details\".", details)

    sys.excepthook = hook


if __name__ == "__main__":
    sys.exit(main())
