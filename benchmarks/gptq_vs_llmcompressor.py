"""Our GPTQ next to llm-compressor's GPTQ on the demo Llama, same calibration batches and settings.

llm-compressor lives in its own virtual environment (it pins its own transformers and
compressed-tensors, older than ours), so the comparison runs in three steps that share a folder
of safetensors files. The environment can borrow our torch instead of downloading its own:

    python3 -m venv /tmp/llmc
    echo "$PWD/.venv/lib/python3.11/site-packages" > /tmp/llmc/lib/python3.11/site-packages/zz_lowbit.pth
    /tmp/llmc/bin/pip install llmcompressor==0.14.0.1    # brings transformers 5.17, compressed-tensors 0.19

    .venv/bin/python benchmarks/gptq_vs_llmcompressor.py prepare /tmp/cmp
    .venv/bin/python benchmarks/gptq_vs_llmcompressor.py ours /tmp/cmp [--scale-search on|off|both]
    /tmp/llmc/bin/python benchmarks/gptq_vs_llmcompressor.py llmc /tmp/cmp

``ours`` runs our GPTQ with its group-scale search (calibration.gptq_scale_search) on and
off (``both``, the default): llm-compressor's GPTQ takes each group's scale from its max, as
ours does with the search off.

Settings on both sides: 4-bit symmetric integer weights in groups of 64 (the demo's widths,
192 and 512, divide by 64), damping 0.01 of the mean Hessian diagonal, blocks of 128 columns,
no activation order, lm_head and embeddings kept. Each prints perplexity on the same held-out
blocks, the mean per-token KL(original || quantized) there, and the wall time of the GPTQ step
alone (llm-compressor's includes its own calibration forward passes and setup). The grids differ slightly: ours is [-7, 7]
with scale amax / 7, compressed-tensors' is [-8, 7] with scale amax / 7.5.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

GROUP, DAMP, BLOCK, SEQ, N_CALIB, N_EVAL, BS = 64, 0.01, 128, 128, 64, 32, 8


def _logits(model, eval_ids) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(input_ids=eval_ids[i:i + BS]).logits.float() for i in range(0, eval_ids.shape[0], BS)])


def _metrics(model, eval_ids, ref=None) -> dict:
    """Perplexity on ``eval_ids`` and, given the original model's logits ``ref``, the mean per-token
    KL(original || model)."""
    logits = _logits(model, eval_ids)
    logp = torch.log_softmax(logits[:, :-1], -1).reshape(-1, logits.shape[-1])
    nll = torch.nn.functional.nll_loss(logp, eval_ids[:, 1:].reshape(-1))
    out = {"ppl": math.exp(float(nll)), "logits": logits}
    if ref is not None:
        ref_logp = torch.log_softmax(ref[:, :-1], -1).reshape(-1, ref.shape[-1])
        out["kl"] = float(torch.nn.functional.kl_div(logp, ref_logp, log_target=True, reduction="batchmean"))
    return out


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


def ours(folder: Path, scale_search: str = "both") -> None:
    from transformers import AutoModelForCausalLM

    from engine import calib
    from engine.calib.gptq import gptq
    from engine.quant import schemes
    from engine.quant.select import apply_plan, plan_layers

    calib_ids, eval_ids = _tokens(folder)
    for search in {"on": [True], "off": [False], "both": [True, False]}[scale_search]:
        model = AutoModelForCausalLM.from_pretrained(folder / "model", dtype=torch.float32).eval()
        base = _metrics(model, eval_ids)
        apply_plan(model, plan_layers(model, schemes.get("custom", f"int4_g{GROUP}", "none"))[0])
        calib.calibrate_weights(model)
        rtn = _metrics(model, eval_ids, base["logits"])
        t0 = time.perf_counter()
        gptq(model, lambda m: [m(input_ids=calib_ids[i:i + BS]) for i in range(0, calib_ids.shape[0], BS)],
             damp=DAMP, block_size=BLOCK, scale_search=search)
        seconds = time.perf_counter() - t0
        got = _metrics(model, eval_ids, base["logits"])
        print(json.dumps({"side": "lowbit", "scale_search": search, "baseline_ppl": base["ppl"],
                          "rtn_ppl": rtn["ppl"], "rtn_kl": rtn["kl"], "gptq_ppl": got["ppl"], "gptq_kl": got["kl"],
                          "gptq_seconds": round(seconds, 2), "threads": torch.get_num_threads()}))


def llmc(folder: Path) -> None:
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from transformers import AutoModelForCausalLM

    calib_ids, eval_ids = _tokens(folder)
    model = AutoModelForCausalLM.from_pretrained(folder / "model", dtype=torch.float32).eval()
    base = _metrics(model, eval_ids)
    ds = Dataset.from_dict({"input_ids": calib_ids.tolist(), "attention_mask": torch.ones_like(calib_ids).tolist()})
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=4, type="int", symmetric=True, strategy="group", group_size=GROUP))
    modifier = GPTQModifier(config_groups={"group_0": scheme}, ignore=["lm_head"], block_size=BLOCK,
                            dampening_frac=DAMP, actorder=None)
    t0 = time.perf_counter()
    oneshot(model=model, dataset=ds, recipe=[modifier], num_calibration_samples=calib_ids.shape[0],
            max_seq_length=SEQ, batch_size=BS)
    seconds = time.perf_counter() - t0
    got = _metrics(model, eval_ids, base["logits"])
    print(json.dumps({"side": "llm-compressor", "baseline_ppl": base["ppl"], "gptq_ppl": got["ppl"],
                      "gptq_kl": got["kl"], "gptq_seconds": round(seconds, 2), "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=["prepare", "ours", "llmc"])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--scale-search", choices=["on", "off", "both"], default="both",
                    help="ours: our GPTQ's group-scale search on, off, or one run each (default)")
    args = ap.parse_args()
    if args.step == "ours":
        ours(args.folder, args.scale_search)
    else:
        {"prepare": prepare, "llmc": llmc}[args.step](args.folder)
