"""``lowbit run`` and ``lowbit quantize``: runs from a recipe file or from flags."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict

from .errors import LowbitError


def _run_recipe(recipe, out: str, quiet: bool = False) -> int:
    from .events import ConsoleSink
    from .runner import run

    out_dir = Path(out)
    if out_dir.exists() and (out_dir / "report.json").exists():
        raise LowbitError(f"{out_dir} already holds a finished run (report.json); choose a new --out folder")
    sink = None if quiet else ConsoleSink()
    result = run(recipe, sink=sink, run_dir=out_dir)
    print_summary(result.report)
    print(f"run folder: {result.run_dir}")
    return 0


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1e4 else f"{v:.4g}"
    return str(v)


def print_summary(report: Dict[str, Any], out=None) -> None:
    out = out or sys.stdout
    rows = [("baseline", report.get("baseline", {})), ("ptq", report.get("ptq", {}))]
    if "final" in report:
        rows.append((report.get("mode", "final"), report["final"]))
    if "finetune_only" in report:
        rows.append(("finetune (no quant)", report["finetune_only"]))
    keys = [k for k in ("perplexity", "kl", "top1_agreement", "cosine", "embedding_cosine", "mse")
            if any(k in r for _, r in rows)]
    out.write(f"\n{report.get('scheme', '')} ({report.get('mode', '')})\n")
    out.write(f"{'':<20}" + "".join(f"{k:>18}" for k in keys) + "\n")
    for label, r in rows:
        out.write(f"{label:<20}" + "".join(f"{_fmt(r[k]) if k in r else '-':>18}" for k in keys) + "\n")


def _distributed(args) -> int:
    """``lowbit run --distributed``: under torchrun, run here; otherwise start torchrun on this machine."""
    import shlex
    import subprocess

    from . import distributed
    from .recipe import Recipe
    from .run import run_recipe

    if args.resume:
        run_dir = Path(args.resume)
        recipe_path = run_dir / "recipe.yaml"
        if not recipe_path.exists():
            raise LowbitError(f"{run_dir} is not a run folder (no recipe.yaml); give the folder of the run to resume")
    else:
        if not args.recipe or not args.out:
            raise LowbitError("give a recipe file and --out RUN_DIR, or --resume RUN_DIR")
        run_dir, recipe_path = Path(args.out), Path(args.recipe)
    recipe = Recipe.load(recipe_path)
    strategy, teacher = distributed.recipe_settings(recipe, args.strategy, args.teacher)
    if distributed.launched_by_torchrun():
        if not args.resume and (run_dir / "report.json").exists():
            raise LowbitError(f"{run_dir} already holds a finished run (report.json); choose a new --out folder")
        return run_recipe(recipe, run_dir, resume=bool(args.resume), strategy=strategy, teacher=teacher,
                          quiet=args.quiet)
    nproc = args.nproc_per_node or _local_devices()
    cmd = distributed.torchrun_command(recipe_path, run_dir, nproc, strategy=args.strategy, teacher=args.teacher,
                                       resume=bool(args.resume), python=shlex.quote(sys.executable))
    if args.quiet:
        cmd += " --quiet"
    if args.print_command:
        print(distributed.torchrun_command(recipe_path, run_dir, nproc, strategy=args.strategy,
                                           teacher=args.teacher, resume=bool(args.resume)))
        return 0
    print(f"starting: {cmd}", file=sys.stderr)
    return subprocess.call(shlex.split(cmd))


def _local_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 1


def cmd_run(args) -> int:
    from .recipe import Recipe

    if getattr(args, "distributed", False) or getattr(args, "print_command", False):
        return _distributed(args)
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "recipe.yaml").exists():
            raise LowbitError(f"{run_dir} is not a run folder (no recipe.yaml); give the folder of the run to resume")
        from .events import ConsoleSink
        from .runner import run

        result = run(Recipe.load(run_dir / "recipe.yaml"), sink=None if args.quiet else ConsoleSink(),
                     run_dir=run_dir, resume=True)
        print_summary(result.report)
        print(f"run folder: {result.run_dir}")
        return 0
    if not args.recipe or not args.out:
        raise LowbitError("give a recipe file and --out RUN_DIR, or --resume RUN_DIR")
    recipe = Recipe.load(args.recipe)
    return _run_recipe(recipe, args.out, args.quiet)


def _demo_recipe_from_args(args):
    from .demo import demo_available, demo_recipe_dict
    from .recipe import Recipe

    if not demo_available():
        raise LowbitError("the demo model is missing from resources/demo-model; rebuild it with "
                          "`python -m engine.demo train`")
    d = demo_recipe_dict(args.mode)
    d["device"], d["seed"] = args.device, args.seed
    updates = {"quant.scheme": args.scheme,
               "quant.weight": args.weight_format, "quant.activation": args.act_format,
               "data.seq_len": args.seq_len, "data.batch_size": args.batch_size,
               "data.calib_batches": args.calib_batches, "data.eval_batches": args.eval_batches,
               "calibration.method": args.calib_method, "train.steps": args.steps, "train.lr": args.lr,
               "train.kd_temperature": args.kd_temperature, "train.kd_alpha": args.kd_alpha,
               "export.format": args.export, "data.path": args.data, "data.eval_path": args.eval_data}
    recipe = Recipe.from_dict(d)
    return recipe.with_updates({k: v for k, v in updates.items() if v is not None})


_DEFAULT_SCHEME = "W4A16-INT4"


def recipe_from_args(args):
    from .recipe import Recipe

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
    return _run_recipe(recipe, args.out, args.quiet)


def register(sub) -> None:
    r = sub.add_parser("run", help="run a recipe file (YAML or JSON)")
    r.add_argument("recipe", nargs="?", help="recipe file")
    r.add_argument("--out", help="run folder to create")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    r.add_argument("--quiet", action="store_true", help="no progress output")
    d = r.add_argument_group("several processes / GPUs (torchrun; see docs/multi-gpu.md)")
    d.add_argument("--distributed", action="store_true",
                   help="run under torchrun: in place when torchrun started this process, else start "
                        "`torchrun --standalone --nproc-per-node N -m engine.run ...` on this machine")
    d.add_argument("--nproc-per-node", type=int, metavar="N",
                   help="processes to start with --distributed (default: the GPUs here, else 1)")
    d.add_argument("--strategy", choices=["fsdp2", "ddp"], help="student: sharded (fsdp2, default) or replicated")
    d.add_argument("--teacher", choices=["replicate", "shard"], help="QAD teacher: a copy per process or sharded")
    d.add_argument("--print-command", action="store_true",
                   help="print the torchrun command for this recipe (to copy to a cluster) and exit")
    r.set_defaults(func=cmd_run)

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
