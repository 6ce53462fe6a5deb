"""``lowbit analyze``, ``lowbit mixed`` and ``lowbit analyze-bench``: per-layer error, sensitivity,
automatic mixed precision, and the analysis timing."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List

import torch

from .. import formats
from ..analysis.benchmark import bench_analysis
from ..analysis.layers import analyze_layers, candidate_layers, resolve_formats
from ..analysis.mixed import mixed_precision, mixed_recipe
from ..analysis.sensitivity import sensitivity
from ..devices import resolve_device
from ..errors import LowbitError
from ..events import CancelToken, ConsoleSink, StageStarted
from ..fsutil import clean_json, write_json_atomic
from ..io.data import batches
from ..io.model import load_model
from ..io.samples import splits_for
from . import paths

DEFAULT_FORMATS = "nvfp4,mxfp4,int4_g128,int8,fp8_e4m3"


def _formats(text: str) -> List[str]:
    return [f.name for f in resolve_formats(n for n in text.split(",") if n.strip())]


def _activation(text):
    if text in (None, "", "none"):
        return None
    if text == "same":
        return "same"
    return formats.get(text).name


class _Session:
    """Model, data and layers for one command, from its flags."""

    def __init__(self, args):
        self.args = args
        self.device = resolve_device(args.device)
        self.sink = (lambda e: None) if args.quiet else ConsoleSink()
        self.cancel = CancelToken()
        paths.model_folder(args.model, "--model")
        paths.text_source(args.data, "--data")
        paths.text_source(args.eval_data, "--eval-data")
        self.out = paths.writable_folder(args.out, "--out")
        self.loaded = load_model(args.model, dtype=args.dtype, device=str(self.device),
                                 trust_remote_code=args.trust_remote_code)
        if self.loaded.tokenizer is None:
            raise LowbitError(f"{args.model} has no tokenizer, so --data cannot be tokenized; add tokenizer files "
                              "to the model folder")
        self.splits = splits_for(self.loaded.tokenizer, self.loaded.kind, args.data, args.seq_len,
                                 eval_path=args.eval_data, seed=args.seed)
        self.calib = batches(self.splits.calib, args.batch_size, args.batches)
        self.eval = batches(self.splits.eval, args.batch_size, args.eval_batches)
        self.layers = candidate_layers(self.loaded.model, args.include or ("*",), args.exclude or (),
                                       not args.no_default_exclusions,
                                       warn=lambda w: print(f"warning: {w}", file=sys.stderr))

    def stage(self, name: str, total=None, detail: str = "") -> None:
        self.sink(StageStarted(name, total, detail))

    def base_recipe(self) -> Dict[str, Any]:
        a = self.args
        data = {"path": str(Path(a.data).resolve()), "seq_len": a.seq_len, "batch_size": a.batch_size,
                "eval_batches": a.eval_batches}
        if a.eval_data:
            data["eval_path"] = str(Path(a.eval_data).resolve())
        quant: Dict[str, Any] = {"include": list(a.include or ["*"]), "exclude": list(a.exclude or []),
                                 "default_exclusions": not a.no_default_exclusions}
        return {"model": {"path": str(Path(a.model).resolve()), "dtype": a.dtype,
                          "trust_remote_code": a.trust_remote_code},
                "data": data, "quant": quant, "device": a.device, "seed": a.seed}


def _short(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def cmd_analyze(args) -> int:
    fmts = _formats(args.formats)
    act = _activation(args.act_format)
    s = _Session(args)
    names = [n for n, _ in s.layers]
    s.stage("analyze", len(names), f"{len(names)} layers x {len(fmts)} formats, {len(s.calib)} batches")
    result = analyze_layers(s.loaded.model, s.calib, fmts, layers=s.layers, activation=act, device=s.device,
                            sink=s.sink, cancel=s.cancel)
    if args.sensitivity:
        modes = ("only_on", "only_off") if args.only_off else ("only_on",)
        s.stage("sensitivity", None, f"{' and '.join(modes)}: KL on {len(s.calib)} batches")
        sens = sensitivity(s.loaded.model, s.calib, fmts, layers=s.layers, modes=modes, activation=act,
                           device=s.device, sink=s.sink, cancel=s.cancel)
        result.add_sensitivity(sens)
    json_path, csv_path = result.write(s.out)
    metric = "sensitivity" if args.sensitivity else "weight_sqnr_db"
    print(f"\n{metric} per layer and format" + (" (KL, only this layer quantized)" if args.sensitivity else ""))
    width = max(len(n) for n in names)
    print(f"{'layer':<{width}}  {'params':>10}" + "".join(f"{f:>13}" for f in fmts))
    for r in result.layers:
        print(f"{r.name:<{width}}  {r.params:>10}" + "".join(f"{_short(r.formats[f].get(metric)):>13}" for f in fmts))
    worst = result.ranking(metric, fmts[0])[0]
    print(f"\nmost sensitive under {fmts[0]}: {worst}; analysis took {result.seconds['total']:.1f} s")
    print(f"wrote {json_path} and {csv_path}")
    return 0


def cmd_mixed(args) -> int:
    fmts = _formats(args.formats)
    act = _activation(args.act_format)
    s = _Session(args)
    s.stage("sensitivity", None, f"KL of every layer x format, {len(s.calib)} batches")
    res = mixed_precision(s.loaded.model, s.calib, s.eval, fmts, args.budget_bits, layers=s.layers,
                          activation=act, allow_keep=args.allow_keep, device=s.device, sink=s.sink,
                          cancel=s.cancel)
    params = {n: m.weight.numel() for n, m in s.layers}
    recipe = mixed_recipe(res.plan.assignment, params, s.base_recipe(), act)
    recipe_path = recipe.save(s.out / "recipe.yaml")
    data = res.to_dict()
    data["recipe"] = str(recipe_path)
    write_json_atomic(s.out / "mixed.json", clean_json(data))
    counts: Dict[str, int] = {}
    for f in res.plan.assignment.values():
        counts[f] = counts.get(f, 0) + 1
    print(f"\nbudget {res.plan.budget_bits:g} bits/weight -> achieved {res.plan.achieved_bits:.4f} "
          f"({'exact' if res.plan.exact else f'near-exact, slack {res.plan.slack_bits:.2g}'} knapsack)")
    print("layers per format: " + ", ".join(f"{f} {c}" for f, c in sorted(counts.items())))
    print(f"{res.metric}: predicted {_short(res.plan.predicted)}, measured {_short(res.measured_kl)}; "
          f"best uniform format within the budget: "
          + (f"{res.uniform_format} ({_short(res.uniform_kl)})" if res.uniform_format else "none fits"))
    print(f"wrote {recipe_path} (run it with: lowbit run {recipe_path} --out RUN_DIR) and {s.out / 'mixed.json'}")
    return 0


def cmd_analyze_bench(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    res = bench_analysis(_formats(args.formats), n_batches=args.batches, batch_size=args.batch_size,
                         seq_len=args.seq_len, sensitivity_layers=args.sensitivity_layers)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"Llama with {res['params'] / 1e6:.1f}M parameters, {res['layers']} layers x {len(res['formats'])} formats, "
          f"{res['batches']} batches of {res['batch_shape'][0]}x{res['batch_shape'][1]} tokens, "
          f"{res['threads']} threads on {res['cpus']} CPUs")
    print(f"analysis: {res['analysis_s']:.1f} s (capture {res['analysis_seconds']['capture']:.1f} s)")
    if "sensitivity_all_layers_est_s" in res:
        print(f"sensitivity: {res['sensitivity_s_per_measure']:.2f} s per (layer, format); all layers about "
              f"{res['sensitivity_all_layers_est_s']:.0f} s")
    print(f"load average before {_load(res['load_avg_before'])}, after {_load(res['load_avg_after'])}")
    return 0


def _load(v) -> str:
    return "n/a" if not v else " ".join(f"{x:.2f}" for x in v)


def _common(p) -> None:
    p.add_argument("--model", required=True, help="Hugging Face model folder")
    p.add_argument("--data", required=True, help="calibration text (.txt, folder of .txt, .jsonl)")
    p.add_argument("--eval-data", help="held-out text (default: a part of --data)")
    p.add_argument("--formats", default=DEFAULT_FORMATS, help=f"comma-separated candidate formats ({DEFAULT_FORMATS})")
    p.add_argument("--act-format", help="input activations: none (default), 'same' (each format), or one format")
    p.add_argument("--include", action="append", help="layer pattern to consider (repeatable; default all)")
    p.add_argument("--exclude", action="append", help="layer pattern to leave out (repeatable)")
    p.add_argument("--no-default-exclusions", action="store_true", help="also consider heads, embeddings, routers")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--batches", type=int, default=2, help="calibration batches measured (default 2)")
    p.add_argument("--eval-batches", type=int, default=2, help="held-out batches for measured results (default 2)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def register(sub) -> None:
    a = sub.add_parser("analyze", help="per-layer error of candidate formats (and sensitivity)")
    _common(a)
    a.add_argument("--sensitivity", action="store_true",
                   help="also measure model-level KL with only this layer quantized (layers x formats passes)")
    a.add_argument("--only-off", action="store_true", help="with --sensitivity: also 'all but this layer'")
    a.set_defaults(func=cmd_analyze)

    m = sub.add_parser("mixed", help="choose a format per layer within an average bits-per-weight budget")
    _common(m)
    m.add_argument("--budget-bits", type=float, required=True, help="average bits per weight, scales included")
    m.add_argument("--allow-keep", action="store_true", help="a layer may stay in high precision (16 bits)")
    m.set_defaults(func=cmd_mixed)

    b = sub.add_parser("analyze-bench", help="time the per-layer analysis on a ~14M-parameter Llama")
    b.add_argument("--formats", default=DEFAULT_FORMATS)
    b.add_argument("--batches", type=int, default=2)
    b.add_argument("--batch-size", type=int, default=4)
    b.add_argument("--seq-len", type=int, default=256)
    b.add_argument("--sensitivity-layers", type=int, default=0,
                   help="also time 'only this on' sensitivity for this many layers and extrapolate")
    b.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_analyze_bench)
