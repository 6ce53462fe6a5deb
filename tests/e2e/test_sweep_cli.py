"""``lowbit sweep`` and ``lowbit report`` in subprocesses, on the tiny Llama."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from engine.pipeline.tradeoff import pareto_front


def _lowbit(*args, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "engine.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_sweep_then_report(tmp_path, tiny_llama_dir, text_file, eval_text_file):
    out = tmp_path / "sweep"
    proc = _lowbit("sweep", "--model", tiny_llama_dir, "--data", text_file, "--eval-data", eval_text_file,
                   "--formats", "W8A8-INT8,W4A16-NVFP4,W2A16-INT2", "--seq-len", 64, "--batch-size", 2,
                   "--calib-batches", 2, "--eval-batches", 2, "--no-benchmark", "--quiet", "--out", out)
    sweep = json.loads((out / "sweep.json").read_text())
    assert [r["status"] for r in sweep["runs"]] == ["completed"] * 3
    points = sweep["points"]
    assert len(points) == 3 and {p["name"] for p in points} == {"W8A8-INT8-ptq", "W4A16-NVFP4-ptq", "W2A16-INT2-ptq"}
    # every run is a normal run folder, on the same evaluation data
    reports = [json.loads((out / p["name"] / "report.json").read_text()) for p in points]
    assert len({r["data"]["eval_blocks"] for r in reports}) == 1
    assert len({round(r["baseline"]["perplexity"], 6) for r in reports}) == 1
    # the front the sweep marked is the front of its own points
    front = {points[i]["name"] for i in pareto_front([p["size_bytes"] for p in points], [p["value"] for p in points])}
    assert {p["name"] for p in points if p["front_size"]} == front
    assert "which run to ship" in proc.stdout

    html = tmp_path / "report.html"
    _lowbit("report", out, "--out", html)
    text = html.read_text(encoding="utf-8")
    assert text.count("<svg") >= 3
    bad = re.search(r"https?:|//|\bsrc\s*=|\bhref\s*=|url\(", text)
    assert bad is None, f"external reference in the report: {bad.group(0)}"
