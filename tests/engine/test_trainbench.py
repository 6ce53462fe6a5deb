"""`lowbit bench train`: every row is judged against issue 16's step-time goal for its kind."""

import subprocess
import sys

from engine.pipeline.trainbench import GOALS, bench_train, goal_for


def test_goals_by_kind_of_configuration():
    assert goal_for("qad", "W4A16-INT4") == goal_for("qad", "W4A4-NVFP4") == GOALS["qad"] == 1.6
    assert goal_for("qat", "W4A4-NVFP4") == GOALS["qat_activations"] == 1.2
    assert goal_for("qat", "W4A16-NVFP4") == goal_for("qat", "W4A16-INT4") == GOALS["qat_weights"] == 1.1


def test_rows_carry_the_goal_and_whether_it_holds(tiny_llama_dir):
    from engine.io.model import load_model

    model = load_model(tiny_llama_dir).model
    rows = bench_train(model, ("W4A4-NVFP4",), batch_size=2, seq_len=16, steps=2, warmup=1)
    assert [r["config"] for r in rows] == ["plain fine-tuning", "QAT W4A4-NVFP4", "QAD W4A4-NVFP4"]
    for r in rows[1:]:
        assert r["goal"] == goal_for(r["mode"], r["scheme"])
        assert r["holds"] == (r["step_ms"] / r["plain_step_ms"] <= r["goal"] + 1e-3)
        assert r["ratio"] > 0 and r["plain_step_ms"] > 0


def test_cli_prints_each_verdict(tiny_llama_dir):
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "bench", "train", "--model", str(tiny_llama_dir),
                           "--schemes", "W4A16-INT4", "--batch-size", "2", "--seq-len", "16", "--steps", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [x for x in proc.stdout.splitlines() if x.startswith(("QAT", "QAD"))]
    assert len(lines) == 2
    assert "goal 1.1x" in lines[0] and "goal 1.6x" in lines[1]
    assert all(("holds" in x) != ("misses" in x) for x in lines)
