"""PTQ algorithms side by side: perplexity and KL to the original after RTN / GPTQ / AWQ / SmoothQuant,
and after QAD from each start.

At 4 bits the perplexity gaps are smaller than the evaluation noise of the demo's few evaluation
blocks (24 of 128 tokens: RTN can land below the baseline), so every run is also judged on a
larger held-out set: up to ``held_out_blocks`` blocks of the training pool that no run of the
benchmark reads (:func:`unread_blocks`: not the calibration batches, not the blocks QAD trains
on, nor those its learning-rate probe reads), evaluated on the saved student against the
original. Each scheme says whether GPTQ closes at least half of RTN's gap in perplexity and in
KL (the mean per-token KL(original || quantized), which is zero only for the original and has no
noise floor of its own) on that set, with the small set's figures beside them.

Every cell is a whole run of the same recipe (same data, seed, calibration and evaluation
batches) with only ``calibration.algorithm`` (and, for the QAD column, ``mode`` and
``train.steps``) changed, so the figures are what a user of the pipeline gets. The GPTQ
time per block comes from the run's report.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Set

import torch

from ..analysis.metrics import evaluate
from ..devices import resolve_device
from ..io.data import batches
from ..io.model import load_model
from ..io.samples import sample_mode, splits_for
from ..io.demo import resolve_data_paths
from ..train import settings_from_recipe
from ..train.loop import BlockStream
from ..train.lr_probe import held_out_slice
from .runner import run
from .student import load_student

WEIGHT_ONLY = ("W4A16-INT4", "W3A16-INT3", "W2A16-INT2", "W4A16-NVFP4")
WEIGHT_ALGOS = ("rtn", "gptq", "awq")
ACT_SCHEMES = ("W8A8-INT8", "W4A4-NVFP4")
ACT_ALGOS = ("rtn", "smoothquant")


def default_cells() -> List[tuple]:
    return [(s, a) for s in WEIGHT_ONLY for a in WEIGHT_ALGOS] + [(s, a) for s in ACT_SCHEMES for a in ACT_ALGOS]


def _stream_rows(n: int, batch_size: int, seed: int, micro_batches: int) -> Set[int]:
    """The pool rows the first ``micro_batches`` micro-batches of a trainer's BlockStream take."""
    stream = BlockStream(torch.arange(n), batch_size, seed)  # a stream of row numbers gives the rows read
    return {int(i) for b in range(micro_batches) for i in stream.batch(b)}


def unread_blocks(recipe, n_pool: int, qad_steps: int, kind: str = "causal-lm") -> List[int]:
    """Rows of the training pool that neither calibration nor ``qad_steps`` of QAD read (QAD's
    BlockStream over the whole pool; with ``train.lr: auto`` also the probe's training part stream
    and its held-out slice), in pool order."""
    bs = recipe.data.batch_size
    read = set(range(min(n_pool, recipe.data.calib_batches * bs)))  # calibration: the first batches, in order
    if qad_steps:
        rq = recipe.with_updates({"mode": "qad", "train.steps": qad_steps})
        s = settings_from_recipe(rq, kind)
        read |= _stream_rows(n_pool, s.batch_size, s.seed, qad_steps * s.grad_accum)
        if rq.train.lr == "auto":
            train_part, held = held_out_slice(torch.arange(n_pool), s.batch_size)
            read |= {int(i) for i in held}
            read |= _stream_rows(int(train_part.shape[0]), s.batch_size, s.seed,
                                 rq.train.lr_probe_steps * s.grad_accum)
    return [i for i in range(n_pool) if i not in read]


class HeldOut:
    """The benchmark's large evaluation: unread pool blocks, and the original model as reference."""

    def __init__(self, recipe, qad_steps: int, max_blocks: int):
        self.device = resolve_device(recipe.device)
        self.loaded = load_model(recipe.model.path, kind=recipe.model.kind, dtype=recipe.model.dtype,
                                 device=str(self.device), trust_remote_code=recipe.model.trust_remote_code)
        self.loaded.model.eval()
        data_path, eval_path = resolve_data_paths(recipe)
        splits = splits_for(self.loaded.tokenizer, self.loaded.kind, data_path, recipe.data.seq_len,
                            sample_mode(recipe.data.samples, self.loaded.kind), eval_path=eval_path,
                            text_field=recipe.data.text_field, eval_fraction=recipe.data.eval_fraction,
                            seed=recipe.seed)
        self.pool_size = int(splits.train.shape[0])
        rows = unread_blocks(recipe, self.pool_size, qad_steps, self.loaded.kind)[:max_blocks]
        self.blocks = len(rows)
        self.batches = batches(splits.train[torch.tensor(rows, dtype=torch.long)], recipe.data.batch_size) \
            if rows else []
        self.baseline = None

    def measure(self, run_dir: Path) -> Dict[str, float]:
        """(perplexity, KL) of a finished run's saved student on the held-out blocks."""
        student, _, _ = load_student(run_dir, device=str(self.device))
        res = evaluate(student.model, self.batches, student.kind, self.device, reference=self.loaded.model)
        del student
        self.baseline = res["baseline"].get("perplexity")
        return {"perplexity": res["quantized"].get("perplexity"), "kl": res["quantized"].get("kl")}


def ptq_bench(recipe, cells: Optional[Sequence[tuple]] = None, qad_steps: int = 60, workdir: Optional[Path] = None,
              log: Callable[[str], None] = print, held_out_blocks: int = 256) -> Dict[str, object]:
    """Every cell's run (PTQ, and QAD from its result when ``qad_steps``), on the recipe's evaluation
    set and on up to ``held_out_blocks`` unread pool blocks (0: none)."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="lowbit-ptqbench-"))
    base = recipe.with_updates({"export.format": None, "analysis.benchmark": False, "analysis.formats": []})
    held = HeldOut(base, qad_steps, held_out_blocks) if held_out_blocks else None
    if held is not None and not held.batches:
        held = None
        log("no training-pool block is left unread by calibration and QAD: no held-out column")
    rows = []
    baseline = None
    for scheme, algo in (cells or default_cells()):
        r = base.with_updates({"quant.scheme": scheme, "calibration.algorithm": algo, "mode": "ptq"})
        ptq_dir = workdir / f"{scheme}-{algo}-ptq"
        rep = run(r, run_dir=ptq_dir).report
        baseline = rep["baseline"]["perplexity"]
        row = {"scheme": scheme, "algorithm": algo, "ptq": rep["ptq"]["perplexity"], "ptq_kl": rep["ptq"].get("kl"),
               "algorithm_seconds": rep["timings"].get("gptq", 0.0) + rep["timings"].get("awq", 0.0)
               + rep["timings"].get("smoothquant", 0.0)}
        gptq_step = next((s for s in (rep.get("ptq_algorithm") or {}).get("steps", []) if s["algorithm"] == "gptq"),
                         None)
        if gptq_step:
            row["gptq_block_seconds"] = [b["seconds"] for b in gptq_step["blocks"]]
        if held is not None:
            m = held.measure(ptq_dir)
            row["ptq_held"], row["ptq_held_kl"] = m["perplexity"], m["kl"]
        if qad_steps:
            rq = r.with_updates({"mode": "qad", "train.steps": qad_steps})
            qad_dir = workdir / f"{scheme}-{algo}-qad"
            final = run(rq, run_dir=qad_dir).report["final"]
            row["qad"], row["qad_kl"] = final["perplexity"], final.get("kl")
            if held is not None:
                m = held.measure(qad_dir)
                row["qad_held"], row["qad_held_kl"] = m["perplexity"], m["kl"]
        rows.append(row)
        log(format_row(row, baseline, held.baseline if held is not None else None))
    out = {"baseline": baseline, "qad_steps": qad_steps, "rows": rows}
    if held is not None:
        out["held_out"] = {"blocks": held.blocks, "pool": held.pool_size, "baseline": held.baseline}
    return out


def _num(v, width: int, digits: int) -> str:
    return f"{v:{width}.{digits}f}" if v is not None else f"{'-':>{width}}"


def format_row(row: Dict, baseline: float, held_baseline: Optional[float] = None) -> str:
    gap = row["ptq"] - baseline
    line = (f"{row['scheme']:<13} {row['algorithm']:<12} {row['ptq']:10.3f} {gap:10.3f} "
            f"{_num(row.get('ptq_kl'), 9, 5)} {_num(row.get('qad'), 10, 3)} {_num(row.get('qad_kl'), 9, 5)} ")
    if held_baseline:
        ratio = lambda v: v / held_baseline if v is not None else None  # noqa: E731
        line += (f"{_num(ratio(row.get('ptq_held')), 9, 5)} {_num(row.get('ptq_held_kl'), 9, 5)} "
                 f"{_num(ratio(row.get('qad_held')), 9, 5)} {_num(row.get('qad_held_kl'), 9, 5)} ")
    return line + f"{row['algorithm_seconds']:8.1f}"


def _share(rtn: Optional[float], other: Optional[float], base: float) -> Optional[float]:
    """The share of RTN's gap to ``base`` that ``other`` closes; None where RTN has none."""
    if rtn is None or other is None or rtn - base <= 0:
        return None
    return (rtn - other) / (rtn - base)


def _closes(share: float, what: str, judged: bool = True) -> str:
    verdict = f" ({'at least' if share >= 0.5 else 'under'} half)" if judged else ""
    return f"closes {share:.0%} of RTN's {what}{verdict}"


def gap_verdicts(res: Dict) -> List[str]:
    """Per scheme with RTN and GPTQ rows: the share of RTN's perplexity gap and of its KL that GPTQ
    closes, and whether that is at least half (the goal at 3 and 4 bits): on the held-out blocks
    when the result has them, the small evaluation set's shares after them."""
    lines = []
    by_scheme: Dict[str, Dict[str, Dict]] = {}
    for r in res["rows"]:
        by_scheme.setdefault(r["scheme"], {})[r["algorithm"]] = r
    held = res.get("held_out")
    for scheme, algos in by_scheme.items():
        if "rtn" not in algos or "gptq" not in algos:
            continue
        rtn, gq = algos["rtn"], algos["gptq"]
        held_here = bool(held) and rtn.get("ptq_held") is not None
        g_rtn, g = rtn["ptq"] - res["baseline"], gq["ptq"] - res["baseline"]
        share = _share(rtn["ptq"], gq["ptq"], res["baseline"])
        if share is not None:
            ppl = _closes(share, "perplexity gap", not held_here)
        else:  # RTN already at or below the baseline (evaluation noise): a ratio would mean nothing
            ppl = f"RTN has no perplexity gap to close ({g_rtn:+.3f}; GPTQ's gap {g:+.3f})"
        kl_share = _share(rtn.get("ptq_kl"), gq.get("ptq_kl"), 0.0)
        kl = f"; {_closes(kl_share, 'KL', not held_here)}" if kl_share is not None else ""
        if not held_here:
            lines.append(f"{scheme}: GPTQ {ppl}{kl}")
            continue
        h_share = _share(rtn["ptq_held"], gq.get("ptq_held"), held["baseline"])
        h_ppl = (_closes(h_share, "perplexity gap") if h_share is not None else
                 f"RTN has no perplexity gap to close (x{rtn['ptq_held'] / held['baseline']:.5f})")
        h_kl_share = _share(rtn.get("ptq_held_kl"), gq.get("ptq_held_kl"), 0.0)
        h_kl = f"; {_closes(h_kl_share, 'KL')}" if h_kl_share is not None else ""
        lines.append(f"{scheme}: GPTQ on {held['blocks']} held-out blocks {h_ppl}{h_kl} | eval set: {ppl}{kl}")
    return lines


def format_table(res: Dict) -> str:
    held = res.get("held_out")
    head = (f"baseline perplexity {res['baseline']:.3f}; QAD: {res['qad_steps']} steps from each start; "
            f"KL: mean per-token KL(original || quantized)\n")
    cols = (f"{'scheme':<13} {'algorithm':<12} {'PTQ ppl':>10} {'gap':>10} {'PTQ KL':>9} {'QAD ppl':>10} "
            f"{'QAD KL':>9} ")
    if held:
        head += (f"held-out: {held['blocks']} of the {held['pool']} training-pool blocks that neither calibration "
                 f"nor QAD reads (baseline perplexity {held['baseline']:.3f}); x = perplexity / the original's "
                 f"there; the verdicts judge on these blocks\n")
        cols += f"{'PTQ x':>9} {'PTQ KL':>9} {'QAD x':>9} {'QAD KL':>9} "
        cols = cols.replace("PTQ ppl", "eval ppl", 1)
    head += cols + f"{'algo s':>8}"
    hb = held["baseline"] if held else None
    return "\n".join([head] + [format_row(r, res["baseline"], hb) for r in res["rows"]] + gap_verdicts(res))
