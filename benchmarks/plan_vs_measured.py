"""The memory plan next to what a run measures, stage by stage, for several recipes on one model.

    python benchmarks/plan_vs_measured.py [--hidden 1024] [--layers 8] [--vocab 32000]
        [--dtype float32] [--cases W4A16-INT4:qad:rtn,W4A4-NVFP4:qad:rtn,W4A16-INT4:ptq:gptq]

Builds a Llama-shaped causal LM from a config (random weights, saved as safetensors), then for
each case (scheme:mode:algorithm) runs ``lowbit plan --json`` and ``lowbit run`` in subprocesses
and prints each stage's planned peak, the peak resident set measured in the run
(report.json ``memory.measured``) and the difference. Peaks are of the whole process, so take the
figures on a machine where nothing else allocates much.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build(folder: Path, hidden: int, layers: int, vocab: int, dtype: str) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from engine.io.tokenizer import train_tokenizer

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                      num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                      num_key_value_heads=max(1, hidden // 256), max_position_embeddings=1024,
                      architectures=["LlamaForCausalLM"])
    model = LlamaForCausalLM(cfg).to(getattr(torch, dtype))
    model.save_pretrained(folder, max_shard_size="200MB")
    words = ("the model reads a line of text and the quantized copy tries to say the same thing "
             "with fewer bits per weight while the original keeps watch").split()
    lines = [" ".join(words[(i * 7 + j) % len(words)] for j in range(40)) for i in range(4000)]
    train_tokenizer(lines, vocab_size=1024, kind="bpe").save_pretrained(folder)
    data = folder.parent / "data.txt"
    data.write_text("\n".join(lines))
    return data


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--cases", default="W4A16-INT4:qad:rtn,W4A4-NVFP4:qad:rtn,W4A16-INT4:ptq:gptq")
    p.add_argument("--out", default=None, help="keep the model and runs here (default: a temporary folder)")
    a = p.parse_args()
    from engine.memory import fmt_bytes
    from engine.pipeline.plan import RUN_STAGES

    work = Path(a.out or tempfile.mkdtemp(prefix="lowbit-planbench-"))
    folder = work / "model"
    data = build(folder, a.hidden, a.layers, a.vocab, a.dtype)
    env = {**os.environ, "LOWBIT_COMPILE": os.environ.get("LOWBIT_COMPILE", "0")}
    lowbit = [sys.executable, "-m", "engine.cli"]
    print(f"model: Llama hidden {a.hidden}, {a.layers} layers, vocab {a.vocab}, {a.dtype}; "
          f"batch {a.batch} x {a.seq_len} tokens")
    rows = []
    for case in a.cases.split(","):
        scheme, mode, algorithm = case.split(":")
        recipe = {"version": 1, "model": {"path": str(folder), "dtype": a.dtype}, "device": "cpu", "mode": mode,
                  "data": {"path": str(data), "seq_len": a.seq_len, "batch_size": a.batch, "calib_batches": 4,
                           "eval_batches": 1},
                  "quant": {"scheme": scheme}, "calibration": {"algorithm": algorithm},
                  "train": {"steps": 2, "lr": 1e-5, "warmup_steps": 0, "eval_every": 0, "checkpoint_every": 0},
                  "analysis": {"benchmark": False}}
        name = case.replace(":", "-")
        rf = work / f"{name}.json"
        rf.write_text(json.dumps(recipe))
        plan = json.loads(subprocess.run(lowbit + ["plan", str(rf), "--json"], capture_output=True, text=True,
                                         check=True, env=env).stdout)
        t0 = time.monotonic()
        done = subprocess.run(lowbit + ["run", str(rf), "--out", str(work / name), "--quiet"], capture_output=True,
                              text=True, env=env)
        if done.returncode != 0:
            print(f"{case}: the run failed\n{done.stderr[-1500:]}")
            return 1
        measured = json.loads((work / name / "report.json").read_text())["memory"]["measured"]
        print(f"\n{case}  ({time.monotonic() - t0:.0f} s)")
        for stage in plan["stages"]:
            peaks = [v for k, v in measured.items() if RUN_STAGES.get(k) == stage["name"]]
            if not peaks:
                continue
            got, want = max(peaks), stage["peak_bytes"]
            print(f"  {stage['name']:15s} planned {fmt_bytes(want):>10s}  measured {fmt_bytes(got):>10s}  "
                  f"({(want - got) / got:+.1%})")
            rows.append({"case": case, "stage": stage["name"], "planned": want, "measured": got})
    (work / "plan_vs_measured.json").write_text(json.dumps(rows, indent=1))
    print(f"\nfigures in {work / 'plan_vs_measured.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
