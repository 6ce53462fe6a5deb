"""``lowbit sweep``: one model and one data set under several schemes, and the trade-off between them."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Dict

from ..errors import LowbitError
from ..io.demo import demo_available, demo_recipe_dict
from ..pipeline.sweep import DEFAULT_SCHEMES, SweepSpec, run_sweep
from ..pipeline.tradeoff import describe_row, ship_rows, trade_points
from ..pipeline.library import read_run
from .common import print_table


def _names(text: str):
    return [n.strip() for n in (text or "").split(",") if n.strip()]


def base_recipe(args) -> Dict[str, Any]:
    if args.model in (None, "demo"):
        if not demo_available():
            raise LowbitError("the demo model is missing from resources/demo-model; give --model DIR")
        d = demo_recipe_dict("ptq")
        if args.data:
            d["data"]["path"] = args.data
    else:
        if not Path(args.model).is_dir():
            raise LowbitError(f"--model {args.model}: not a folder; give a Hugging Face model folder (or 'demo')")
        if not args.data:
            raise LowbitError("--data is required with --model: a .txt file, a folder of .txt files or a .jsonl file")
        d = {"model": {"path": args.model}, "data": {"path": args.data}}
    if args.data and not Path(args.data).exists():
        raise LowbitError(f"--data {args.data}: no such file or folder")
    if args.eval_data:
        d["data"]["eval_path"] = args.eval_data
    for flag in ("seq_len", "batch_size", "calib_batches", "eval_batches"):
        if getattr(args, flag) is not None:
            d["data"][flag] = getattr(args, flag)
    if args.steps is not None:
        d.setdefault("train", {})["steps"] = args.steps
    d["device"], d["seed"] = args.device, args.seed
    d.setdefault("analysis", {})["benchmark"] = not args.no_benchmark
    return d


def cmd_sweep(args) -> int:
    from ..events import ConsoleSink

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.compile == "off":
        # small models: compiling a kernel per format costs more than it saves over a sweep's short runs
        os.environ.setdefault("LOWBIT_COMPILE", "0")
    spec = SweepSpec(base_recipe(args), _names(args.formats), _names(args.qad),
                     args.mixed_budget, _names(args.mixed_formats))
    out = Path(args.out)
    sink = None if args.quiet else ConsoleSink()
    t0 = time.monotonic()

    def on_run(i, n, r):
        if i < n:
            print(f"\n== sweep {i + 1}/{n}: {r.name}", file=sys.stderr, flush=True)

    result = run_sweep(spec, out, sink=sink, on_run=on_run)
    seconds = time.monotonic() - t0
    points = trade_points([read_run(r.path, name=r.name) for r in result.runs if r.status == "completed"])
    print(f"\nsweep of {len(result.runs)} runs in {seconds:.1f} s -> {out}")
    if points:
        metric = points[0].metric
        rows = [[p.name, f"{p.bits:.3f}", f"{p.size_bytes / 1e6:.3f}", f"{p.value:.4g}",
                 "front" if p.front_size else ""] for p in sorted(points, key=lambda p: p.size_bytes)]
        print_table(rows, ["run", "bits/weight", "weights MB", metric, "Pareto"])
        print("\nwhich run to ship:")
        for row in ship_rows(points):
            print(f"  {row.point.name}: {describe_row(row)}")
    for r in result.runs:
        if r.status != "completed":
            print(f"  {r.name}: {r.status} {r.error}", file=sys.stderr)
    print(f"\nreport: lowbit report {out} --out {out / 'report.html'}")
    return 0 if all(r.status == "completed" for r in result.runs) else 1


def register(sub) -> None:
    s = sub.add_parser("sweep", help="PTQ (and QAD) under several schemes on the same data; the trade-off")
    s.add_argument("--model", help="Hugging Face model folder, or 'demo' (default: the demo)")
    s.add_argument("--data", help="calibration / training text (.txt, folder of .txt, .jsonl)")
    s.add_argument("--eval-data", help="separate evaluation text (default: a held-out part of --data)")
    s.add_argument("--formats", default=",".join(DEFAULT_SCHEMES),
                   help=f"comma-separated schemes, each run with PTQ (default {','.join(DEFAULT_SCHEMES)})")
    s.add_argument("--qad", default="", help="comma-separated schemes (of --formats) also run with QAD")
    s.add_argument("--steps", type=int, help="QAD training steps")
    s.add_argument("--mixed-budget", type=float, metavar="BITS",
                   help="also run the per-layer mix `lowbit mixed` finds within BITS bits per weight")
    s.add_argument("--mixed-formats", default="", help="formats the mix chooses from (default: the schemes' weights)")
    s.add_argument("--seq-len", type=int)
    s.add_argument("--batch-size", type=int)
    s.add_argument("--calib-batches", type=int)
    s.add_argument("--eval-batches", type=int)
    s.add_argument("--no-benchmark", action="store_true", help="skip the speed benchmark of each run")
    s.add_argument("--compile", choices=["off", "auto"], default="off",
                   help="torch.compile the fake-quant kernels: off (default: faster for a sweep's short runs) "
                        "or auto (LOWBIT_COMPILE decides)")
    s.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's; 1 is faster on a busy machine)")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="sweep folder to create (one run folder per run inside)")
    s.add_argument("--quiet", action="store_true", help="no progress output")
    s.set_defaults(func=cmd_sweep)
