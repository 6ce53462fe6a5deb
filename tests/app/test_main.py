"""``lowbit-studio`` opens, shows what it was given, saves a screenshot and quits."""

from __future__ import annotations

from app_helpers import SCREENSHOTS, image_is_not_blank

from app.defaults import default_model_path
from app.main import build_parser, main


def test_options():
    args = build_parser().parse_args(["m", "--data", "d.txt", "--recipe", "r.yaml", "--screenshot", "x.png",
                                      "--quit-after", "2.5"])
    assert (args.model, args.data, args.recipe, args.screenshot, args.quit_after) == ("m", "d.txt", "r.yaml",
                                                                                      "x.png", 2.5)
    from engine.io.demo import DEMO_MODEL_DIR

    assert default_model_path() == str(DEMO_MODEL_DIR)  # the demo ships with the project


def test_no_arguments_opens_the_demo_preselected(qapp, tmp_path, monkeypatch):
    from app.window import MainWindow
    from engine.io.demo import DEMO_MODEL_DIR, DEMO_SCHEME
    from engine.recipe import Recipe

    opened = []
    original = MainWindow.open_recipe

    def spy(self, path):
        ok = original(self, path)
        opened.append((path, ok, self.state.get("model.path"), self.state.get("data.path")))
        return ok

    monkeypatch.setattr(MainWindow, "open_recipe", spy)
    png = tmp_path / "demo.png"
    assert main(["--screenshot", str(png), "--quit-after", "6"]) == 0
    assert png.is_file() and image_is_not_blank(png)
    (path, ok, model, data), = opened
    assert ok and model == str(DEMO_MODEL_DIR) and data.endswith("python-docs-train.txt")
    recipe = Recipe.load(path)
    assert recipe.quant.scheme == DEMO_SCHEME and recipe.mode == "qad"
    qapp.processEvents()


def test_main_opens_the_window_and_saves_a_screenshot(qapp, tiny_llama_dir, text_file, tmp_path, capsys):
    from engine.recipe import Recipe

    recipe = tmp_path / "r.yaml"
    Recipe.from_dict({"model": {"path": str(tiny_llama_dir)}, "data": {"path": str(text_file)},
                      "quant": {"scheme": "W8A8-FP8"}, "mode": "qat"}).save(recipe)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    png = SCREENSHOTS / "main-window.png"
    png.unlink(missing_ok=True)
    code = main(["--recipe", str(recipe), "--step", "run", "--screenshot", str(png), "--quit-after", "6"])
    assert code == 0
    assert png.is_file() and image_is_not_blank(png)
    assert "screenshot:" in capsys.readouterr().out
    qapp.processEvents()
    assert not [w for w in qapp.topLevelWidgets() if w.isVisible()]  # the window closed
