"""The plots: buffers, the heatmap (values, hover text, click), redraw times."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtTest import QTest

from app.bench_plots import bench_heatmap, bench_loss_plot
from app.plots.buffers import Series
from app.plots.curves import LiveCurves
from app.plots.heatmap import LayerHeatmap, short_names


def test_series_grows_by_doubling_and_keeps_its_data():
    s = Series(capacity=4)
    for i in range(9):
        s.append(i, i * i)
    assert s.capacity == 16 and len(s) == 9
    s.extend(np.arange(9, 40), np.arange(9, 40) ** 2)
    x, y = s.view()
    assert s.capacity == 64
    np.testing.assert_array_equal(x, np.arange(40))
    np.testing.assert_array_equal(y, np.arange(40) ** 2)
    assert x.base is not None  # a view into the buffer, not a copy


def test_short_names_drop_the_shared_prefix():
    assert short_names(["model.layers.0.q", "model.layers.1.k"]) == ["0.q", "1.k"]
    assert short_names(["model.a", "lm_head"]) == ["model.a", "lm_head"]


@pytest.fixture
def heatmap(qtbot):
    widget = LayerHeatmap()
    qtbot.addWidget(widget)
    widget.resize(600, 500)
    widget.set_table([f"model.layers.{i}.mlp" for i in range(4)], ["int8", "nvfp4"],
                     [[40.0, 20.0], [41.0, np.nan], [np.inf, 19.5], [38.0, 17.25]])
    widget.show()
    qtbot.waitExposed(widget)
    return widget


def test_heatmap_levels_are_fixed_and_cells_describe_themselves(heatmap):
    assert tuple(heatmap.image.levels) == heatmap.levels == (0.0, 45.0)
    heatmap.set_value("model.layers.3.mlp", "nvfp4", 44.0)
    heatmap.redraw()
    assert tuple(heatmap.image.levels) == (0.0, 45.0)  # no auto-levelling on new data
    assert heatmap.describe(3, 1) == "model.layers.3.mlp\nnvfp4: weight SQNR 44.00 dB"
    assert "not computed" in heatmap.describe(1, 1)
    assert "exact" in heatmap.describe(2, 0)
    heatmap.missing_text["nvfp4"] = "kept in high precision"
    assert "kept in high precision" in heatmap.describe(1, 1)
    assert heatmap.describe(9, 0) == ""


def test_heatmap_click_selects_the_layer(qtbot, heatmap):
    """A real mouse click on the cell (row 2, column 1) through the view."""
    view = heatmap.view
    scene_pos = heatmap.image.mapToScene(1.5, 2.5)
    pos = view.mapFromScene(scene_pos)
    with qtbot.waitSignal(heatmap.layer_clicked, timeout=2000) as blocker:
        QTest.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, QPoint(pos))
    assert blocker.args == ["model.layers.2.mlp"]
    assert heatmap.selected_row == 2 and heatmap.selection.isVisible()


def test_heatmap_hover_reports_the_cell(qtbot, heatmap):
    cells = []
    heatmap.image.hovered.connect(lambda r, c, _: cells.append((r, c)))
    view = heatmap.view
    pos = view.mapFromScene(heatmap.image.mapToScene(0.5, 3.5))
    QTest.mouseMove(view.viewport(), QPoint(pos))
    qtbot.waitUntil(lambda: (3, 0) in cells, timeout=2000)
    assert "38.00 dB" in heatmap.describe(*cells[-1])


def test_curves_redraw_on_the_timer_not_per_point(qtbot):
    curves = LiveCurves(fps=20)
    qtbot.addWidget(curves)
    curves.show()
    curves.set_live(True)
    for step in range(500):
        curves.add("loss", step, 1.0 / (step + 1))
    assert curves.frames == 0  # nothing drawn yet: points only went into the buffer
    qtbot.waitUntil(lambda: curves.frames >= 1, timeout=2000)
    assert len(curves.curves["loss"].xData) == 500
    frames = curves.frames
    qtbot.wait(200)
    assert curves.frames == frames  # nothing new, nothing redrawn
    curves.set_live(False)


def test_heatmap_redraw_is_fast(qapp):
    """200 layers x 6 formats, new values painted: median well under 50 ms even on a busy machine."""
    ms = bench_heatmap(repeats=9)
    print(f"heatmap 200x6 redraw: {ms:.2f} ms")
    assert ms < 50


def test_loss_plot_frame_with_100k_points(qapp):
    """Three curves of 100,000 noisy points: clip-to-view and peak downsampling keep a frame short."""
    ms = bench_loss_plot(repeats=7)
    print(f"loss plot 100k-point frame: {ms:.2f} ms")
    assert ms < 300  # generous; measured ~35 ms on 2 shared cores


def test_alpha_plot_appears_only_when_a_run_anneals_alpha(qtbot):
    """A run with a constant distillation weight sends no alpha curve: no empty alpha plot is drawn."""
    curves = LiveCurves(fps=20)
    qtbot.addWidget(curves)
    curves.resize(600, 700)
    curves.show()
    layout = curves.graphics.ci
    curves.add("loss", 1, 0.5)
    curves.redraw()
    assert curves.plots["kd_alpha"] not in layout.items
    assert curves.plots["loss"] in layout.items
    curves.add("kd_alpha", 1, 1.0)
    curves.add("kd_alpha", 2, 0.9)
    curves.redraw()
    assert curves.plots["kd_alpha"] in layout.items
    assert len(curves.curves["kd_alpha"].xData) == 2
    curves.clear()
    assert curves.plots["kd_alpha"] not in layout.items  # the next run starts without it again
    curves.add("kd_alpha", 1, 1.0)
    curves.redraw()
    assert curves.plots["kd_alpha"] in layout.items
