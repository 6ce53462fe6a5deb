"""Issue 16's GPU check: a Qwen2.5-0.5B-shaped model (494M parameters, 151,936-token vocabulary,
random weights, bf16, sharded safetensors) through PTQ W4A16-INT4 and a few QAD steps on the GPU,
with the memory plan's per-stage GPU estimate next to what torch measured.

    python benchmarks/gpu_qad_05b.py [--steps 8] [--seq-len 512] [--batch 4] [--out DIR]

Needs a CUDA device (run it through benchmarks/gpu_check.sh on a lent GPU). Prints a table and
writes gpu_qad_05b.json into --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))


def main() -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--out", default=".")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this check runs on a GPU", file=sys.stderr)
        return 2

    from engine.io.corpus import python_docs_corpus
    from engine.io.demo import demo_data
    from engine.pipeline import run
    from engine.recipe import Recipe
    from test_workstation_model import build_model

    work = Path(tempfile.mkdtemp(prefix="lowbit-gpu-05b-"))
    t0 = time.monotonic()
    build_model(work / "model", python_docs_corpus()[:200])
    built_s = time.monotonic() - t0
    train, evals = demo_data()
    recipe = Recipe.from_dict({
        "model": {"path": str(work / "model"), "dtype": "bfloat16"}, "device": "cuda", "mode": "qad",
        "data": {"path": str(train), "eval_path": str(evals), "seq_len": args.seq_len, "batch_size": args.batch,
                 "calib_batches": 4, "eval_batches": 2},
        "quant": {"scheme": "W4A16-INT4"},
        "train": {"steps": args.steps, "lr": 1e-5, "warmup_steps": 0, "eval_every": 0, "checkpoint_every": 0},
        "analysis": {"benchmark": False}}, require_version=False)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.monotonic()
    rep = run(recipe, run_dir=work / "run").report
    wall = time.monotonic() - t0
    peak = torch.cuda.max_memory_allocated()
    plan = rep["memory"]["plan"]
    measured = rep["memory"].get("measured", {})
    rows = []
    print(f"{torch.cuda.get_device_name()}: status {rep['status']}, model built in {built_s:.0f} s, run {wall:.0f} s")
    print(f"{'stage':<28}{'plan (GPU)':>14}{'measured':>14}{'measured/plan':>15}")
    for stage in plan["stages"]:
        gpu = {d: n for d, n in stage.get("per_device", {}).items() if d.startswith("cuda")}
        planned = max(gpu.values()) if gpu else 0
        got = measured.get(stage["name"])
        got = got.get("peak_bytes") if isinstance(got, dict) else got
        ratio = f"{got / planned:.2f}" if got and planned else "-"
        rows.append({"stage": stage["name"], "plan_bytes": planned, "measured": got})
        print(f"{stage['name']:<28}{planned / 2**30:>12.2f} G{(got or 0) / 2**30:>12.2f} G{ratio:>15}")
    cuda_plan = max(n for d, n in plan["peak_per_device"].items() if d.startswith("cuda"))
    print(f"whole run: plan {cuda_plan / 2**30:.2f} GiB on the GPU, torch.cuda.max_memory_allocated "
          f"{peak / 2**30:.2f} GiB ({peak / cuda_plan:.2f} of the plan)")
    train_ms = (rep.get("timings") or {}).get("train")
    print(f"timings (s): {json.dumps(rep.get('timings'))}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_qad_05b.json").write_text(json.dumps({
        "device": torch.cuda.get_device_name(), "status": rep["status"], "max_memory_allocated": peak,
        "plan_cuda_peak": cuda_plan, "stages": rows, "timings": rep.get("timings"), "train_s": train_ms,
        "final": rep.get("final"), "ptq": rep.get("ptq")}, indent=2))
    return 0 if rep["status"] == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
