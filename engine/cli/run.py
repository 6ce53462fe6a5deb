"""``lowbit run``: a recipe file, in this process or under torchrun; ``--resume`` continues a run."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import torch

from ..errors import LowbitError
from ..events import ConsoleSink
from ..parallel import launched_by_torchrun, recipe_settings
from ..pipeline import run
from ..pipeline.torchrun import torchrun_command
from ..recipe import Recipe
from ..pipeline.plan import check_fits
from . import paths
from . import plan as plan_cli
from .common import print_summary
from .torchrun_entry import run_recipe


def check_recipe_paths(recipe, model_flag: str = "model.path", data_flag: str = "data.path",
                       eval_flag: str = "data.eval_path") -> None:
    """The recipe's model and data paths, checked before the run starts (named by flag or key)."""
    paths.model_folder(recipe.model.path, model_flag)
    paths.text_source(recipe.data.path, data_flag)
    paths.text_source(recipe.data.eval_path, eval_flag)


def run_and_report(recipe, out: str, quiet: bool = False) -> int:
    out_dir = paths.writable_folder(out, "--out", new_run=True)
    sink = None if quiet else ConsoleSink()
    result = run(recipe, sink=sink, run_dir=out_dir)
    print_summary(result.report)
    print(f"run folder: {result.run_dir}")
    return 0


def _distributed(args) -> int:
    """``lowbit run --distributed``: under torchrun, run here; otherwise start torchrun on this machine."""
    if args.resume:
        run_dir = paths.run_folder(args.resume, "--resume")
        recipe_path = run_dir / "recipe.yaml"
    else:
        if not args.recipe or not args.out:
            raise LowbitError("give a recipe file and --out RUN_DIR, or --resume RUN_DIR")
        run_dir, recipe_path = Path(args.out), paths.recipe_file(args.recipe, "RECIPE")
    recipe = Recipe.load(recipe_path)
    strategy, teacher = recipe_settings(recipe, args.strategy, args.teacher)
    if launched_by_torchrun():
        if not args.resume and (run_dir / "report.json").exists():
            raise LowbitError(f"{run_dir} already holds a finished run (report.json); choose a new --out folder")
        return run_recipe(recipe, run_dir, resume=bool(args.resume), strategy=strategy, teacher=teacher,
                          quiet=args.quiet)
    nproc = args.nproc_per_node or _local_devices()
    cmd = torchrun_command(recipe_path, run_dir, nproc, strategy=args.strategy, teacher=args.teacher,
                                       resume=bool(args.resume), python=shlex.quote(sys.executable))
    if args.quiet:
        cmd += " --quiet"
    if args.print_command:
        print(torchrun_command(recipe_path, run_dir, nproc, strategy=args.strategy,
                                           teacher=args.teacher, resume=bool(args.resume)))
        return 0
    print(f"starting: {cmd}", file=sys.stderr)
    return subprocess.call(shlex.split(cmd))


def _local_devices() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 1


def cmd_run(args) -> int:
    if getattr(args, "distributed", False) or getattr(args, "print_command", False):
        return _distributed(args)
    if args.resume:
        run_dir = paths.run_folder(args.resume, "--resume")
        result = run(Recipe.load(run_dir / "recipe.yaml"), sink=None if args.quiet else ConsoleSink(),
                     run_dir=run_dir, resume=True)
        print_summary(result.report)
        print(f"run folder: {result.run_dir}")
        return 0
    if not args.recipe or not (args.out or args.dry_run):
        raise LowbitError("give a recipe file and --out RUN_DIR, or --resume RUN_DIR")
    recipe = Recipe.load(paths.recipe_file(args.recipe, "RECIPE"))
    check_recipe_paths(recipe)
    if args.dry_run:  # the memory plan and the fit check, nothing loaded or written
        _, memory_plan = plan_cli.recipe_plan(args)
        plan_cli.show_plan(memory_plan, False)
        check_fits(memory_plan)
        return 0
    return run_and_report(recipe, args.out, args.quiet)



def register(sub) -> None:
    r = sub.add_parser("run", help="run a recipe file (YAML or JSON)")
    r.add_argument("recipe", nargs="?", help="recipe file")
    r.add_argument("--out", help="run folder to create")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    r.add_argument("--quiet", action="store_true", help="no progress output")
    r.add_argument("--dry-run", action="store_true",
                   help="print the memory plan and check that the run fits, without loading or running anything")
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
