"""Export end to end: a real PTQ run folder, then ``lowbit export`` in a subprocess; and a run whose
recipe asks for an export."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from engine.export import MARKER, read_export
from engine.recipe import Recipe
from engine.pipeline import run


def _recipe(model_dir, data, scheme, export=None):
    d = {"model": {"path": str(model_dir)},
         "data": {"path": str(data), "seq_len": 64, "batch_size": 2, "calib_batches": 2, "eval_batches": 2},
         "quant": {"scheme": scheme}, "device": "cpu"}
    if export:
        d["export"] = export
    return Recipe.from_dict(d, require_version=False)


def _export_command() -> list:
    return [sys.executable, "-m", "engine.cli", "export"]


def _export_main(args) -> int:
    from engine import cli

    return cli.main(["export", *[str(a) for a in args]])


def _lowbit_export(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "LOWBIT_COMPILE": "0"}
    return subprocess.run([*_export_command(), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.fixture(autouse=True)
def _eager(monkeypatch):
    monkeypatch.setenv("LOWBIT_COMPILE", "0")


def test_lowbit_export_writes_verifies_and_records(tiny_llama_dir, text_file, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run(_recipe(tiny_llama_dir, text_file, "W4A16-NVFP4"), run_dir=run_dir)
    out = tmp_path / "served"
    proc = _lowbit_export(run_dir, "--format", "compressed-tensors", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "verify passed" in proc.stdout

    report = json.loads((run_dir / "report.json").read_text())
    exp = report["export"]
    assert exp["format"] == "compressed-tensors" and exp["path"] == str(out.absolute())
    assert exp["verify"]["passed"] and exp["verify"]["max_abs_logit_diff"] <= exp["verify"]["tolerance"]
    assert 4.4 < exp["bits_per_param"] < 4.6 and exp["n_files"] == len(list(out.iterdir()))
    assert exp["bytes_on_disk"] == sum(p.stat().st_size for p in out.iterdir())
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["format"] == "nvfp4-pack-quantized"
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", MARKER):
        assert (out / name).exists(), name
    assert set(read_export(out).layers) == {row["name"] for row in report["layers"]}

    # a folder that is neither empty nor a previous export is refused (same command, in process), and nothing changes
    before = sorted(p.name for p in run_dir.iterdir())
    assert _export_main([run_dir, "--format", "modelopt", "--out", run_dir]) == 2
    assert "not a previous lowbit export" in capsys.readouterr().err
    assert sorted(p.name for p in run_dir.iterdir()) == before
    assert json.loads((run_dir / "report.json").read_text())["export"]["format"] == "compressed-tensors"


def test_recipe_export_runs_after_ptq(tiny_llama_dir, text_file, tmp_path):
    run_dir = tmp_path / "run"
    rep = run(_recipe(tiny_llama_dir, text_file, "W8A8-FP8", export={"format": "modelopt"}),
              run_dir=run_dir).report
    exp = rep["export"]
    assert rep["status"] == "completed" and exp["format"] == "modelopt"
    assert exp["path"] == str((run_dir / "export").absolute()) and exp["verify"]["passed"]
    hf = json.loads((run_dir / "export" / "hf_quant_config.json").read_text())
    assert hf["quantization"]["quant_algo"] == "FP8" and "lm_head" in hf["quantization"]["exclude_modules"]
    assert json.loads((run_dir / "report.json").read_text())["export"] == exp
