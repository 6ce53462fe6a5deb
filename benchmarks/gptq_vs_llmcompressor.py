"""Our GPTQ next to llm-compressor's GPTQ on the demo Llama, same calibration batches and settings.

llm-compressor lives in its own virtual environment (it pins its own transformers), so the
comparison runs in three steps that share a folder of safetensors files:

    .venv/bin/python benchmarks/gptq_vs_llmcompressor.py prepare /tmp/cmp
    .venv/bin/python benchmarks/gptq_vs_llmcompressor.py ours /tmp/cmp
    /tmp/llmc/bin/python benchmarks/gptq_vs_llmcompressor.py llmc /tmp/cmp

Settings on both sides: 4-bit symmetric integer weights in groups of 64 (the demo's widths,
192 and 512, divide by 64), damping 0.01 of the mean Hessian diagonal, blocks of 128 columns,
no activation order, lm_head and embeddings kept. Each prints perplexity on the same held-out
blocks and the wall time of the GPTQ step alone. The grids differ slightly: ours is [-7, 7]
with scale amax / 7, compressed-tensors' is [-8, 7] with scale amax / 7.5.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

GROUP, DAMP, BLOCK, SEQ, N_CALIB, N_EVAL, BS = 64, 0.01, 128, 128, 64, 32, 8


def _ppl(model, eval_ids) -> float:
    nll, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, eval_ids.shape[0], BS):
            ids = eval_ids[i:i + BS]
            logits = model(input_ids=ids).logits.float()
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                     ids[:, 1:].reshape(-1), reduction="sum")
            nll += float(loss)
            n += ids[:, 1:].numel()
    return math.exp(nll / n)


def prepare(folder: Path) -> None:
    from safetensors.torch import save_file

    from engine.io.data import make_splits
    from engine.io.demo import demo_recipe_dict, resolve_data_paths, resolve_model_path
    from engine.io.model import load_model
    from engine.recipe import Recipe

    recipe = Recipe.from_dict(demo_recipe_dict("ptq"))
    loaded = load_model(resolve_model_path(recipe.model.path), dtype="float32")
    data_path, eval_path = resolve_data_paths(recipe)
    splits = make_splits(loaded.tokenizer, data_path, SEQ, eval_path=eval_path, seed=0)
    folder.mkdir(parents=True, exist_ok=True)
    loaded.model.save_pretrained(folder / "model", safe_serialization=True)
    loaded.tokenizer.save_pretrained(folder / "model")
    save_file({"calib": splits.calib[:N_CALIB].contiguous(), "eval": splits.eval[:N_EVAL].contiguous()},
              str(folder / "tokens.safetensors"))
    print(f"prepared {folder}: {N_CALIB} calibration and {min(N_EVAL, splits.eval.shape[0])} eval blocks of {SEQ}")


def _tokens(folder: Path):
    from safetensors.torch import load_file

    t = load_file(str(folder / "tokens.safetensors"))
    return t["calib"].long(), t["eval"].long()


def ours(folder: Path) -> None:
    from transformers import AutoModelForCausalLM

    from engine import calib
    from engine.calib.gptq import gptq
    from engine.quant import schemes
    from engine.quant.select import apply_plan, plan_layers

    calib_ids, eval_ids = _tokens(folder)
    model = AutoModelForCausalLM.from_pretrained(folder / "model", dtype=torch.float32).eval()
    base = _ppl(model, eval_ids)
    apply_plan(model, plan_layers(model, schemes.get("custom", f"int4_g{GROUP}", "none"))[0])
    calib.calibrate_weights(model)
    rtn = _ppl(model, eval_ids)
    t0 = time.perf_counter()
    gptq(model, lambda m: [m(input_ids=calib_ids[i:i + BS]) for i in range(0, calib_ids.shape[0], BS)],
         damp=DAMP, block_size=BLOCK)
    seconds = time.perf_counter() - t0
    print(json.dumps({"side": "lowbit", "baseline_ppl": base, "rtn_ppl": rtn, "gptq_ppl": _ppl(model, eval_ids),
                      "gptq_seconds": round(seconds, 2)}))


def llmc(folder: Path) -> None:
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from transformers import AutoModelForCausalLM

    calib_ids, eval_ids = _tokens(folder)
    model = AutoModelForCausalLM.from_pretrained(folder / "model", dtype=torch.float32).eval()
    base = _ppl(model, eval_ids)
    ds = Dataset.from_dict({"input_ids": calib_ids.tolist(), "attention_mask": torch.ones_like(calib_ids).tolist()})
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=4, type="int", symmetric=True, strategy="group", group_size=GROUP))
    modifier = GPTQModifier(config_groups={"group_0": scheme}, ignore=["lm_head"], block_size=BLOCK,
                            dampening_frac=DAMP, actorder=None)
    t0 = time.perf_counter()
    oneshot(model=model, dataset=ds, recipe=[modifier], num_calibration_samples=calib_ids.shape[0],
            max_seq_length=SEQ, batch_size=BS)
    seconds = time.perf_counter() - t0
    print(json.dumps({"side": "llm-compressor", "baseline_ppl": base, "gptq_ppl": _ppl(model, eval_ids),
                      "gptq_seconds": round(seconds, 2)}))


if __name__ == "__main__":
    step, folder = sys.argv[1], Path(sys.argv[2])
    {"prepare": prepare, "ours": ours, "llmc": llmc}[step](folder)
