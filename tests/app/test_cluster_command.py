"""The Run page shows the exact torchrun command for the saved recipe, ready to copy to a cluster."""

from __future__ import annotations

import shlex

from PySide6.QtWidgets import QApplication


def test_run_page_shows_the_torchrun_command_of_the_saved_recipe(qtbot, window, tmp_path):
    panel = window.run_panel
    assert "torchrun --standalone --nproc-per-node=8 -m engine.run recipe.yaml" in panel.cluster_command.text()
    window.state.set("model.path", "demo")
    path = tmp_path / "my recipe.yaml"
    assert window.save_recipe(path=str(path))
    panel.gpus.setValue(4)
    panel.nodes.setValue(2)
    panel.strategy.setCurrentIndex(panel.strategy.findData("ddp"))
    text = panel.cluster_command.text()
    args = shlex.split(text)
    assert args[:3] == ["torchrun", "--nnodes=2", "--nproc-per-node=4"]
    assert str(path) in args and args[args.index("--strategy") + 1] == "ddp"
    assert window.state.get("distributed.strategy") == "ddp"  # the recipe says it too
    for button in panel.findChildren(type(panel.start_button)):
        if button.text() == "Copy":
            button.click()
    assert QApplication.clipboard().text() == text
