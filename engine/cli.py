"""The ``lowbit`` command line: every job the studio window does, from a terminal."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from .errors import LowbitError


def _print_table(rows: List[List[str]], header: List[str], out=None) -> None:
    out = out or sys.stdout
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    out.write(line.rstrip() + "\n" + "  ".join("-" * w for w in widths) + "\n")
    for r in rows:
        out.write("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() + "\n")


def cmd_formats(args) -> int:
    from . import formats

    rows = formats.table()
    if args.json:
        print(json.dumps([r.__dict__ for r in rows], indent=2))
        return 0
    _print_table(
        [[r.name, r.bits, r.block, r.scale_type, f"{r.effective_bits:.3f}", r.description] for r in rows],
        ["format", "bits", "block", "scale", "bits/weight", "description"],
    )
    print("\nbits/weight counts the scales, for rows of 4096 elements. Other widths and blocks:"
          " int2..int8 with _tensor/_g<N>/_asym, fp8_e4m3/_e5m2 with _channel/_g<N>.")
    return 0


def cmd_bench_kernels(args) -> int:
    from .analysis.kernels import bench_kernels

    names = [n.strip() for n in args.formats.split(",")] if args.formats else None
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise LowbitError("--device cuda: no CUDA device is available here; use --device cpu")

    def show(row):
        if not args.json:
            print(f"{row['format']:<18} {row['ms']:>9.2f} ms  {row['gbps']:>7.2f} GB/s   "
                  f"clone {row['clone_gbps']:>7.2f} GB/s   ratio {row['ratio_to_clone']:.2f}", flush=True)

    if not args.json:
        print(f"fake_quant of a {args.size}x{args.size} float32 tensor on {args.device}; "
              "ratio = clone time / fake_quant time (1.0 = as fast as a copy)")
    rows = bench_kernels(args.device, names, args.size, args.repeats, on_result=show)
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


def cmd_bench_train(args) -> int:
    from .analysis.trainbench import bench_train

    model = None
    if args.model:
        from .io.model import load_model

        model = load_model(args.model).model
    schemes_ = [n.strip() for n in args.schemes.split(",")]

    def show(row):
        if not args.json:
            print(f"{row['config']:<24} {row['step_ms']:>10.1f} ms/step   {row['ratio']:.2f}x plain", flush=True)

    if not args.json:
        print(f"training step time, batch {args.batch_size} x {args.seq_len} tokens on {args.device}; "
              "ratio = step time / plain fine-tuning step time (same model, same run)")
    rows = bench_train(model, schemes_, args.device, args.batch_size, args.seq_len, args.steps, on_result=show)
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


def cmd_bench_recovery(args) -> int:
    from .analysis.recovery import format_table, recovery
    from .recipe import Recipe

    if args.demo:
        from .demo import demo_recipe_dict

        recipe = Recipe.from_dict(demo_recipe_dict("qad"))
    elif args.recipe:
        recipe = Recipe.load(args.recipe)
    else:
        raise LowbitError("give a recipe file or --demo")
    updates = {k: v for k, v in (("quant.scheme", args.scheme), ("train.steps", args.steps), ("train.lr", args.lr))
               if v is not None}
    if updates:
        recipe = recipe.with_updates(updates)
    res = recovery(recipe, args.workdir, log=(lambda m: None) if args.json else print)
    print(json.dumps(res, indent=2, default=str) if args.json else format_table(res))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lowbit", description="Lowbit Studio: quantize models with PTQ, QAT or QAD.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    f = sub.add_parser("formats", help="list the numeric formats")
    f.add_argument("--json", action="store_true", help="print JSON")
    f.set_defaults(func=cmd_formats)

    b = sub.add_parser("bench", help="benchmarks")
    bsub = b.add_subparsers(dest="bench", metavar="WHAT")
    bk = bsub.add_parser("kernels", help="fake-quant throughput of every format next to x.clone()")
    bk.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    bk.add_argument("--json", action="store_true", help="print a JSON list")
    bk.add_argument("--formats", help="comma-separated format names (default: all standard formats)")
    bk.add_argument("--size", type=int, default=4096, help="tensor side (default 4096)")
    bk.add_argument("--repeats", type=int, default=7)
    bk.set_defaults(func=cmd_bench_kernels)
    bt = bsub.add_parser("train", help="step time of QAT / QAD next to plain fine-tuning")
    bt.add_argument("--model", help="model folder (default: a 4-layer, 256-wide Llama built in memory)")
    bt.add_argument("--schemes", default="W4A16-INT4,W4A16-NVFP4,W4A4-NVFP4")
    bt.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    bt.add_argument("--batch-size", type=int, default=8)
    bt.add_argument("--seq-len", type=int, default=128)
    bt.add_argument("--steps", type=int, default=8, help="timed steps per configuration (after 6 warm-up)")
    bt.add_argument("--json", action="store_true")
    bt.set_defaults(func=cmd_bench_train)
    br = bsub.add_parser("recovery", help="PTQ vs QAT vs QAD vs plain fine-tuning at the same step budget")
    br.add_argument("recipe", nargs="?", help="recipe file (mode is ignored: all are run)")
    br.add_argument("--demo", action="store_true", help="use the built-in demo model and data")
    br.add_argument("--scheme")
    br.add_argument("--steps", type=int)
    br.add_argument("--lr", type=float)
    br.add_argument("--workdir", help="where the runs go (default: a temporary folder)")
    br.add_argument("--json", action="store_true")
    br.set_defaults(func=cmd_bench_recovery)
    b.set_defaults(func=lambda a: (b.print_help(), 2)[1])

    _register_more(sub)
    return p


def _register_more(sub) -> None:
    """Commands that live in their own modules register here."""
    from . import cli_export, cli_run

    cli_run.register(sub)
    from . import cli_analyze; cli_analyze.register(sub)  # noqa: E702  (lowbit analyze / mixed / analyze-bench)
    cli_export.register(sub)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except LowbitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`lowbit formats | head`): not a failure, and nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
