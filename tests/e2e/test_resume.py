"""Kill a training run after a checkpoint, resume it, and get bit-identical weights; cancel cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from safetensors.torch import load_file

from engine.errors import Cancelled
from engine.events import CancelToken, Progress, read_events
from engine.recipe import Recipe
from engine.pipeline import run

STEPS = 80


def _recipe(model_dir, data, mode="qat", steps=STEPS, checkpoint_every=4):
    return Recipe.from_dict({
        "model": {"path": str(model_dir)},
        "data": {"path": str(data), "seq_len": 32, "batch_size": 2, "calib_batches": 2, "eval_batches": 1},
        "quant": {"scheme": "W4A16-INT4"},
        "mode": mode,
        "train": {"steps": steps, "lr": 1e-3, "warmup_steps": 2, "eval_every": 0,
                  "checkpoint_every": checkpoint_every},
        "device": "cpu",
    }, require_version=False)


def _lowbit(*args):
    return [sys.executable, "-m", "engine.cli", *args]


def test_killed_run_resumes_to_identical_weights(tiny_llama_dir, text_file, tmp_path):
    recipe_path = tmp_path / "recipe.yaml"
    _recipe(tiny_llama_dir, text_file).save(recipe_path)
    env = {**os.environ, "LOWBIT_COMPILE": "0"}

    whole = subprocess.run(_lowbit("run", str(recipe_path), "--out", str(tmp_path / "whole"), "--quiet"),
                           capture_output=True, text=True, timeout=600, env=env)
    assert whole.returncode == 0, whole.stderr

    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen(_lowbit("run", str(recipe_path), "--out", str(killed_dir), "--quiet"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    latest = killed_dir / "checkpoints" / "latest"
    deadline = time.monotonic() + 300
    while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert latest.exists(), "the run ended before its first checkpoint"
    killed_at = latest.read_text().strip()
    assert killed_at != f"step-{STEPS:06d}", "the run finished before it could be killed"
    assert not (killed_dir / "report.json").exists() or \
        json.loads((killed_dir / "report.json").read_text())["status"] != "completed"

    resumed = subprocess.run(_lowbit("run", "--resume", str(killed_dir), "--quiet"),
                             capture_output=True, text=True, timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stderr
    final = f"step-{STEPS:06d}"
    a = load_file(str(tmp_path / "whole" / "checkpoints" / final / "student.safetensors"))
    b = load_file(str(killed_dir / "checkpoints" / final / "student.safetensors"))
    assert a.keys() == b.keys()
    different = [k for k in a if not (a[k] == b[k]).all() or a[k].dtype != b[k].dtype]
    assert different == [], f"resumed from {killed_at}; tensors differ: {different[:5]}"
    rep = json.loads((killed_dir / "report.json").read_text())
    assert rep["status"] == "completed" and rep["train"]["steps"] == STEPS
    assert [h["step"] for h in rep["loss_history"]] == list(range(1, STEPS + 1))


def test_cancel_from_another_thread_leaves_a_consistent_run_folder(tiny_llama_dir, text_file, tmp_path):
    cancel = CancelToken()
    seen = []

    def sink(event):
        if isinstance(event, Progress) and event.stage == "train":
            seen.append(event.done)
            if event.done == 5:
                threading.Thread(target=cancel.cancel).start()

    run_dir = tmp_path / "run"
    with pytest.raises(Cancelled):
        run(_recipe(tiny_llama_dir, text_file, "qad", steps=500, checkpoint_every=2), sink=sink, cancel=cancel,
            run_dir=run_dir)
    assert max(seen) <= 6  # stopped within one step of the request
    rep = json.loads((run_dir / "report.json").read_text())
    assert rep["status"] == "cancelled" and "ptq" in rep
    events = read_events(run_dir / "events.jsonl")
    assert events[-1]["type"] == "RunFailed" and events[-1]["kind"] == "cancelled"
    leftovers = [p.name for p in run_dir.rglob("*") if ".tmp" in p.name]
    assert leftovers == []
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*"))
    assert ckpts and all((run_dir / "checkpoints" / c / "student.safetensors").exists() for c in ckpts)
