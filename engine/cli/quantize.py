"""``lowbit quantize``: a run from flags (the recipe it used is written into --out)."""

from __future__ import annotations

from typing import Any, Dict

from ..errors import LowbitError
from ..io.demo import demo_available, demo_recipe_dict
from ..recipe import Recipe
from .run import check_recipe_paths, run_and_report


def _demo_recipe_from_args(args):
    if not demo_available():
        raise LowbitError("the demo model is missing from resources/demo-model; rebuild it with "
                          "`python -m engine.demo train`")
    d = demo_recipe_dict(args.mode)
    d["device"], d["seed"] = args.device, args.seed
    updates = {"quant.scheme": args.scheme,
               "quant.weight": args.weight_format, "quant.activation": args.act_format,
               "data.seq_len": args.seq_len, "data.batch_size": args.batch_size,
               "data.calib_batches": args.calib_batches, "data.eval_batches": args.eval_batches,
               "calibration.method": args.calib_method, "calibration.algorithm": args.algorithm,
               "train.steps": args.steps, "train.lr": args.lr,
               "train.kd_temperature": args.kd_temperature, "train.kd_alpha": args.kd_alpha,
               "export.format": args.export, "data.path": args.data, "data.eval_path": args.eval_data}
    recipe = Recipe.from_dict(d)
    return recipe.with_updates({k: v for k, v in updates.items() if v is not None})


_DEFAULT_SCHEME = "W4A16-INT4"


def recipe_from_args(args):
    if getattr(args, "demo", False):
        return _demo_recipe_from_args(args)
    if not args.model:
        raise LowbitError("--model is required: a Hugging Face model folder (config.json + safetensors)")
    if not args.data:
        raise LowbitError("--data is required: a .txt file, a folder of .txt files, or a .jsonl file")
    d: Dict[str, Any] = {
        "model": {"path": args.model},
        "data": {"path": args.data, "eval_path": args.eval_data},
        "quant": {"scheme": args.scheme or _DEFAULT_SCHEME},
        "mode": args.mode,
        "device": args.device,
        "seed": args.seed,
    }
    for flag, key in (("seq_len", "seq_len"), ("batch_size", "batch_size"), ("calib_batches", "calib_batches"),
                      ("eval_batches", "eval_batches")):
        if getattr(args, flag) is not None:
            d["data"][key] = getattr(args, flag)
    if args.weight_format:
        d["quant"]["weight"] = args.weight_format
    if args.act_format:
        d["quant"]["activation"] = args.act_format
    if args.calib_method:
        d["calibration"] = {"method": args.calib_method}
    if args.algorithm:
        d.setdefault("calibration", {})["algorithm"] = args.algorithm
    train = {}
    for flag in ("steps", "lr", "kd_temperature", "kd_alpha"):
        if getattr(args, flag, None) is not None:
            train[flag] = getattr(args, flag)
    if train:
        d["train"] = train
    if getattr(args, "export", None):
        d["export"] = {"format": args.export}
    return Recipe.from_dict(d, require_version=False)


def cmd_quantize(args) -> int:
    recipe = recipe_from_args(args)
    check_recipe_paths(recipe, "--model", "--data", "--eval-data")
    return run_and_report(recipe, args.out, args.quiet)



def register(sub) -> None:
    q = sub.add_parser("quantize", help="quantize a model from flags (writes the recipe it used into --out)")
    q.add_argument("--demo", action="store_true",
                   help="the built-in demo model and data, with the demo's scheme unless --scheme is given")
    q.add_argument("--model", help="Hugging Face model folder")
    q.add_argument("--data", help="calibration / training text (.txt, folder of .txt, .jsonl)")
    q.add_argument("--eval-data", help="separate evaluation text (default: a held-out part of --data)")
    q.add_argument("--scheme", help=f"named scheme (see `lowbit formats`) or 'custom'; default {_DEFAULT_SCHEME}")
    q.add_argument("--weight-format", help="weight format, overriding the scheme's ('none' keeps weights)")
    q.add_argument("--act-format", help="activation format, overriding the scheme's ('none' keeps them)")
    q.add_argument("--mode", choices=["ptq", "qat", "qad"], default="ptq")
    q.add_argument("--calib-method", choices=["max", "percentile", "mse"])
    q.add_argument("--algorithm", choices=["rtn", "gptq", "awq", "smoothquant", "awq+gptq", "smoothquant+gptq"],
                   help="PTQ algorithm (default rtn): gptq = error-compensating rounding layer by layer; "
                        "awq = activation-aware channel scales; smoothquant = outliers moved into the weights (W8A8/W4A4)")
    q.add_argument("--calib-batches", type=int)
    q.add_argument("--eval-batches", type=int)
    q.add_argument("--batch-size", type=int)
    q.add_argument("--seq-len", type=int)
    q.add_argument("--steps", type=int, help="training steps (qat / qad)")
    q.add_argument("--lr", type=float, help="learning rate (qat / qad)")
    q.add_argument("--kd-temperature", type=float, help="distillation temperature (qad)")
    q.add_argument("--kd-alpha", type=float, help="weight of the distillation loss against the task loss (qad)")
    q.add_argument("--export", choices=["compressed-tensors", "modelopt", "dense"], help="export after the run")
    q.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", required=True, help="run folder to create")
    q.add_argument("--quiet", action="store_true", help="no progress output")
    q.set_defaults(func=cmd_quantize)
