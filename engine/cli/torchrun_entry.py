"""``python -m engine.run RECIPE --out DIR [--resume]``: the entry point torchrun starts.

    torchrun --standalone --nproc-per-node 8 -m engine.run recipe.yaml --out runs/big
    torchrun --standalone --nproc-per-node 8 -m engine.run --out runs/big --resume   # continue it

Every process runs the whole recipe on its share of the data (see engine.parallel);
rank 0 prints progress and writes events.jsonl, checkpoints' metadata and report.json.
Started without torchrun it runs in this one process, like ``lowbit run``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List, Optional

from ..errors import LowbitError
from ..events import ConsoleSink
from ..parallel import Dist, init_from_env, launched_by_torchrun, recipe_settings, teardown
from ..pipeline import run
from ..recipe import Recipe
from . import paths
from .common import print_summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.run",
                                description="Run a Lowbit recipe; under torchrun, on every process of the job.")
    p.add_argument("recipe", nargs="?", help="recipe file (YAML or JSON); not needed with --resume")
    p.add_argument("--out", help="run folder to create (or, with --resume, to continue)")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN_DIR",
                   help="continue an interrupted run from its last checkpoint (the --out folder, or RUN_DIR)")
    p.add_argument("--strategy", choices=["fsdp2", "ddp"],
                   help="how the student is spread over the processes (default: the recipe's, else fsdp2)")
    p.add_argument("--teacher", choices=["replicate", "shard"],
                   help="the QAD teacher: a copy per process, or sharded with FSDP2 (default: replicate)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    try:
        return _main(args)
    except LowbitError as exc:
        if rank == 0:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if rank == 0:
            print("interrupted", file=sys.stderr)
        return 130


def _main(args) -> int:
    resume = args.resume is not None
    if resume:
        run_dir = Path(args.resume if isinstance(args.resume, str) else (args.out or ""))
        if not str(run_dir) or not (run_dir / "recipe.yaml").exists():
            raise LowbitError(f"{run_dir or '(no folder)'} is not a run folder (no recipe.yaml); "
                              "give --out RUN_DIR --resume, or --resume RUN_DIR")
        recipe = Recipe.load(run_dir / "recipe.yaml")  # what ran, not what the file says now
    else:
        if not args.recipe or not args.out:
            raise LowbitError("give a recipe file and --out RUN_DIR, or --resume RUN_DIR")
        recipe = Recipe.load(paths.recipe_file(args.recipe, "RECIPE"))
        run_dir = paths.writable_folder(args.out, "--out", new_run=True)
    return run_recipe(recipe, run_dir, resume=resume, strategy=args.strategy, teacher=args.teacher,
                      quiet=args.quiet)


def run_recipe(recipe, run_dir: os.PathLike, resume: bool = False, strategy: Optional[str] = None,
               teacher: Optional[str] = None, quiet: bool = False) -> int:
    """Run ``recipe`` in this process: distributed when torchrun started it, else on its own."""
    strategy, teacher = recipe_settings(recipe, strategy, teacher)
    dist = init_from_env(recipe.device, strategy, teacher) if launched_by_torchrun() else Dist.single()
    try:
        sink = None if quiet or not dist.is_main else ConsoleSink()
        result = run(recipe, sink=sink, run_dir=run_dir, resume=resume, dist=dist)
        if dist.is_main:
            print_summary(result.report)
            if dist.active:
                print(f"distributed: {dist.world_size} processes ({dist.backend}), student {dist.strategy}, "
                      f"teacher {dist.teacher}")
            print(f"run folder: {result.run_dir}")
        dist.barrier()
        return 0
    finally:
        teardown(dist)
