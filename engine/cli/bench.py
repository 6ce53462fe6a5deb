"""``lowbit bench kernels | train | recovery``: speed of the fake-quant kernels and of training
steps, and how much accuracy QAT / QAD win back."""

from __future__ import annotations

import json

from ..analysis.kernels import bench_kernels
from ..errors import LowbitError
from ..io.demo import demo_encoder_recipe_dict, demo_recipe_dict
from ..io.model import load_model
from ..pipeline.recovery import format_table, recovery
from ..pipeline.trainbench import bench_train
from ..train.lossbench import report as loss_report
from ..train.lossbench import run as loss_bench
from ..recipe import Recipe


def cmd_bench_kernels(args) -> int:
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
    model = None
    if args.model:
        model = load_model(args.model).model
    schemes_ = [n.strip() for n in args.schemes.split(",")]

    def show(row):
        if not args.json:
            verdict = "" if "goal" not in row else \
                f"   goal {row['goal']:.1f}x: {'holds' if row['holds'] else 'misses'}"
            print(f"{row['config']:<24} {row['step_ms']:>10.1f} ms/step   {row['ratio']:.3f}x plain{verdict}",
                  flush=True)

    if not args.json:
        print(f"training step time, batch {args.batch_size} x {args.seq_len} tokens on {args.device}; "
              "ratio = median step time / median plain fine-tuning step time, the plain steps taken in turns "
              "with each configuration's (same model, same run)")
    rows = bench_train(model, schemes_, args.device, args.batch_size, args.seq_len, args.steps, on_result=show)
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


def _bench_recipe(args, mode: str) -> Recipe:
    """The recipe a benchmark starts from: a recipe file, the demo Llama or the demo encoder."""
    if args.demo:
        return Recipe.from_dict(demo_recipe_dict(mode))
    if getattr(args, "demo_encoder", False):
        return Recipe.from_dict(demo_encoder_recipe_dict(mode))
    if args.recipe:
        return Recipe.load(args.recipe)
    raise LowbitError("give a recipe file, --demo" + (" or --demo-encoder" if hasattr(args, "demo_encoder") else ""))


def cmd_bench_recovery(args) -> int:
    recipe = _bench_recipe(args, "qad")
    updates = {k: v for k, v in (("quant.scheme", args.scheme), ("train.steps", args.steps), ("train.lr", args.lr))
               if v is not None}
    if updates:
        recipe = recipe.with_updates(updates)
    res = recovery(recipe, args.workdir, log=(lambda m: None) if args.json else print)
    print(json.dumps(res, indent=2, default=str) if args.json else format_table(res))
    return 0


def cmd_bench_ptq(args) -> int:
    from ..pipeline.ptqbench import default_cells, format_table, ptq_bench

    recipe = _bench_recipe(args, "ptq")
    cells = default_cells()
    if args.schemes:
        want = [s.strip() for s in args.schemes.split(",")]
        cells = [c for c in cells if c[0] in want]
    if args.algorithms:
        want = [a.strip() for a in args.algorithms.split(",")]
        cells = [c for c in cells if c[1] in want]
    if not cells:
        raise LowbitError("no benchmark cell left after --schemes / --algorithms")
    res = ptq_bench(recipe, cells, args.qad_steps, args.workdir, log=(lambda m: None) if args.json else print,
                    held_out_blocks=args.held_out_blocks)
    print(json.dumps(res, indent=2, default=str) if args.json else format_table(res))
    return 0


def cmd_bench_loss(args) -> int:
    rows = loss_bench(args.tokens, args.vocab, args.hidden, args.device, args.dtype)
    print(json.dumps(rows, indent=2) if args.json else loss_report(rows))
    return 0


def register(sub) -> None:
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
    bl = bsub.add_parser("loss", help="peak memory of the chunked vocabulary loss next to the unchunked one")
    bl.add_argument("--tokens", type=int, default=2048)
    bl.add_argument("--vocab", type=int, default=151_936)
    bl.add_argument("--hidden", type=int, default=896)
    bl.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    bl.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    bl.add_argument("--json", action="store_true")
    bl.set_defaults(func=cmd_bench_loss)
    br = bsub.add_parser("recovery", help="PTQ vs QAT vs QAD vs plain fine-tuning at the same step budget "
                                          "(encoders: PTQ vs QAD, sentence-embedding cosine)")
    br.add_argument("recipe", nargs="?", help="recipe file (mode is ignored: all are run)")
    br.add_argument("--demo", action="store_true", help="use the built-in demo model and data")
    br.add_argument("--demo-encoder", action="store_true",
                    help="use the built-in demo encoder and its sentences (sentence-embedding cosine)")
    br.add_argument("--scheme")
    br.add_argument("--steps", type=int)
    br.add_argument("--lr", type=lambda v: v if v.strip().lower() == "auto" else float(v),
                    help="a learning rate, or 'auto' to probe train.lr_candidates")
    br.add_argument("--workdir", help="where the runs go (default: a temporary folder)")
    br.add_argument("--json", action="store_true")
    br.set_defaults(func=cmd_bench_recovery)
    bp = bsub.add_parser("ptq", help="perplexity after RTN / GPTQ / AWQ / SmoothQuant, and after QAD from each start")
    bp.add_argument("recipe", nargs="?", help="recipe file (scheme, algorithm and mode are set per cell)")
    bp.add_argument("--demo", action="store_true", help="use the built-in demo Llama and data")
    bp.add_argument("--schemes", help="comma-separated schemes (default: W4A16 INT4/INT3/INT2/NVFP4, W8A8-INT8, W4A4-NVFP4)")
    bp.add_argument("--algorithms", help="comma-separated algorithms (default: all that fit each scheme)")
    bp.add_argument("--qad-steps", type=int, default=60, help="QAD steps from each start (0: PTQ only)")
    bp.add_argument("--held-out-blocks", type=int, default=256,
                    help="also judge every run on up to this many training-pool blocks that neither calibration nor "
                         "QAD reads (default 256, about 4 s per run on one CPU thread for the demo; 0: only the "
                         "recipe's evaluation set)")
    bp.add_argument("--workdir", help="where the runs go (default: a temporary folder)")
    bp.add_argument("--json", action="store_true")
    bp.set_defaults(func=cmd_bench_ptq)
    b.set_defaults(func=lambda a: (b.print_help(), 2)[1])
