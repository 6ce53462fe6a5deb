"""Per-layer error, sensitivity, mixed precision and benchmarks on tiny Llamas built in the tests."""

from __future__ import annotations

import itertools
import json
import math
import random
import threading
from types import SimpleNamespace

import pytest
import torch

from engine.analysis.benchmark import (bench_before_after, comparison_rows, param_size,
                                       side_by_side)
from engine.analysis.layers import analyze_layers, candidate_layers
from engine.pipeline.stages.analyze import analysis_stage
from engine.pipeline.stages.benchmark import benchmark_stage
from engine.analysis.metrics import evaluate
from engine.analysis.mixed import (BudgetError, average_bits, choose_formats, mixed_precision, mixed_recipe,
                                   solve_mckp)
from engine.analysis.sensitivity import ModelProbe, sensitivity
from engine.errors import Cancelled
from engine.events import CancelToken, LayerStats, Progress
from engine.quant import schemes
from engine.quant.select import apply_plan, plan_layers, quant_layers

OUTLIER_LAYER = "model.layers.0.mlp.up_proj"


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny matmuls on a shared 2-core machine run far faster without OpenMP's second thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _llama(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval()


def _batches(n=2, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (2, 64), generator=gen) for _ in range(n)]


def _with_outliers(model, name=OUTLIER_LAYER, per_row=2, magnitude=20.0):
    """Give each row of one layer's weight a few entries of +-magnitude x the weight's std."""
    w = model.get_submodule(name).weight
    with torch.no_grad():
        g = torch.Generator().manual_seed(2)
        rows = torch.arange(w.shape[0]).repeat_interleave(per_row)
        cols = torch.randint(0, w.shape[1], (rows.numel(),), generator=g)
        sign = torch.randint(0, 2, (rows.numel(),), generator=g) * 2 - 1
        w[rows, cols] = sign * magnitude * w.std()
    return model


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(model, state):
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


# -- per-layer analysis and sensitivity --------------------------------------------------------------


def test_outlier_layer_ranks_worst_in_weight_error_and_only_this_on(tmp_path):
    """Integer formats (a scale per row or per 128) lose a row's bulk to its outliers: the layer with
    outliers has the worst weight SQNR and the largest model-level KL when quantized alone.
    (NVFP4's 16-blocks with FP8 scales and per-tensor FP8 absorb a few outliers; not asserted.)"""
    model = _with_outliers(_llama())
    batches = _batches()
    before = _state(model)
    events = []
    fmts = ["int4_g128", "int8", "nvfp4"]
    res = analyze_layers(model, batches, fmts, sink=events.append)
    for f in ("int4_g128", "int8"):
        assert res.ranking("weight_sqnr_db", f)[0] == OUTLIER_LAYER
        assert res.ranking("output_sqnr_db", f)[0] == OUTLIER_LAYER
    row = res.row(OUTLIER_LAYER)
    assert row.stats["weight_outliers"] == 2 * row.out_features
    assert all(r.stats["weight_outliers"] == 0 for r in res.layers if r.name != OUTLIER_LAYER)
    # more bits, less error; SQNR and relative MSE say the same thing
    for r in res.layers:
        assert r.formats["int8"]["weight_sqnr_db"] > r.formats["int4_g128"]["weight_sqnr_db"] + 15
        m = r.formats["nvfp4"]
        assert m["weight_sqnr_db"] == pytest.approx(-10 * math.log10(m["weight_rel_mse"]), rel=1e-9)
        assert m["bits"] == 4.5
    # one LayerStats per (layer, format) plus one per layer, as they were computed; progress per layer
    cells = [(e.name, e.format) for e in events if isinstance(e, LayerStats) and e.format]
    assert cells == [(r.name, f) for r in res.layers for f in fmts]
    assert sum(isinstance(e, LayerStats) and e.format is None for e in events) == len(res.layers)
    assert [e.done for e in events if isinstance(e, Progress)] == list(range(1, len(res.layers) + 1))
    # weight metrics need no data
    no_data = analyze_layers(model, None, ["int8"])
    assert no_data.matrix("weight_sqnr_db") == [[r.formats["int8"]["weight_sqnr_db"]] for r in res.layers]
    assert "output_sqnr_db" not in no_data.layers[0].formats["int8"] and "act_amax" not in no_data.layers[0].stats

    sens = sensitivity(model, batches, ["int4_g128", "int8"])
    for f in ("int4_g128", "int8"):
        order = sens.ranking(f)
        assert order[0] == OUTLIER_LAYER
        assert sens.value(order[0], f) > 2 * sens.value(order[1], f)
    assert _same_state(model, before)  # nothing was left quantized or swapped

    res.add_sensitivity(sens)
    json_path, csv_path = res.write(tmp_path)
    data = json.loads(json_path.read_text())
    layer = next(r for r in data["layers"] if r["name"] == OUTLIER_LAYER)
    assert layer["params"] == 128 * 64
    assert set(layer["formats"]["int8"]) >= {"weight_sqnr_db", "output_sqnr_db", "sensitivity"}
    assert "sensitivity" not in layer["formats"]["nvfp4"]  # not measured for nvfp4
    lines = csv_path.read_text().splitlines()
    assert len(lines) == 1 + len(res.layers) and "int8.sensitivity" in lines[0].split(",")


def test_probe_matches_evaluate_and_skipping_blocks_changes_nothing():
    model = _llama()
    batches = _batches()
    names = [n for n, _ in candidate_layers(model)]
    with ModelProbe(model, names, batches) as fast, ModelProbe(model, names, batches, skip_blocks=False) as full:
        assert fast.measure({})["kl"] == 0.0
        for assignment in ({names[-1]: "int4_g128"}, {names[7]: "nvfp4", names[9]: "int8"},
                           {n: "int4_g128" for n in names}):
            assert fast.measure(assignment) == full.measure(assignment)
        kl = fast.measure({n: "int4_g128" for n in names})["kl"]
    apply_plan(model, plan_layers(model, schemes.get("W4A16-INT4"))[0])
    ref = evaluate(model, batches, "causal-lm", torch.device("cpu"))["quantized"]["kl"]
    assert kl == pytest.approx(ref, rel=1e-3)  # evaluate sums float32 log-softmax differences


def test_only_off_all_on_and_activation_quantization():
    model = _llama()
    batches = _batches(1)
    names = [n for n, _ in candidate_layers(model)][:4]
    sens = sensitivity(model, batches, ["int4_g128", "int8"], layers=names, modes=("only_on", "only_off"),
                       activation="same")
    assert sens.all_on["int8"]["kl"] < sens.all_on["int4_g128"]["kl"]
    for n in names:
        for f in ("int4_g128", "int8"):
            assert 0 < sens.value(n, f, "only_on") and 0 < sens.value(n, f, "only_off")
    # inputs quantized too: at least as much damage as weights only, for the same layer
    weights_only = sensitivity(model, batches, ["int4_g128"], layers=names[:1])
    assert sens.value(names[0], "int4_g128") > weights_only.value(names[0], "int4_g128")


def test_sensitivity_cancelled_from_another_thread():
    model = _llama()
    before = _state(model)
    token = CancelToken()
    first, done = threading.Event(), threading.Event()
    progress = []

    def sink(event):
        if isinstance(event, Progress):
            progress.append(event.done)
            first.set()
            done.wait(30)  # hold the run until the other thread has cancelled (no race with a fast run)

    def cancel_soon():
        first.wait(30)
        token.cancel()
        done.set()

    canceller = threading.Thread(target=cancel_soon)
    canceller.start()
    with pytest.raises(Cancelled):
        sensitivity(model, _batches(), ["int4_g128", "int8", "nvfp4"], sink=sink, cancel=token)
    canceller.join(5)
    assert progress == [1]  # stopped at the first check after the cancel
    assert _same_state(model, before)
    with pytest.raises(Cancelled):  # the per-layer analysis stops at the same token
        analyze_layers(model, _batches(), ["int8"], cancel=token)


# -- mixed precision -------------------------------------------------------------------------------


def _brute_force(values, costs, capacity):
    best = None
    for choice in itertools.product(*[range(len(r)) for r in values]):
        if sum(costs[g][i] for g, i in enumerate(choice)) <= capacity:
            v = sum(values[g][i] for g, i in enumerate(choice))
            best = v if best is None else min(best, v)
    return best


def test_knapsack_matches_brute_force():
    rng = random.Random(0)
    for trial in range(250):
        groups, items = rng.randint(1, 6), rng.randint(1, 4)
        unit = rng.choice([1, 64, 1000])
        integer_costs = trial % 3 != 0
        costs = [[(rng.randint(1, 50) * unit if integer_costs else rng.uniform(1, 50)) for _ in range(items)]
                 for _ in range(groups)]
        values = [[rng.random() for _ in range(items)] for _ in range(groups)]
        lo, hi = sum(min(r) for r in costs), sum(max(r) for r in costs)
        capacity = rng.randint(int(lo) - 5, int(hi) + 5)
        states = rng.choice([1 << 18, 5])
        best = _brute_force(values, costs, capacity)
        if best is None:
            with pytest.raises(BudgetError):
                solve_mckp(values, costs, capacity, states)
            continue
        sol = solve_mckp(values, costs, capacity, states)
        assert sol.cost <= capacity  # never over the budget
        assert sol.value == pytest.approx(sum(values[g][i] for g, i in enumerate(sol.choice)))
        if sol.exact:
            assert sol.value == pytest.approx(best, abs=1e-12)
        else:  # at least as good as the exact optimum with `slack` less budget
            tighter = _brute_force(values, costs, capacity - sol.slack)
            assert tighter is None or sol.value <= tighter + 1e-12
            assert sol.value >= best - 1e-12


def test_mixed_meets_the_budget_and_beats_the_uniform_choice():
    model = _llama()
    layers = candidate_layers(model)
    res = mixed_precision(model, _batches(2, seed=1), _batches(2, seed=3), ["int4_g128", "int8"], 6.0)
    plan = res.plan
    shapes = {n: (m.in_features, m.weight.numel()) for n, m in layers}
    assert plan.exact and plan.achieved_bits <= 6.0
    assert plan.achieved_bits == pytest.approx(average_bits(plan.assignment, shapes))
    assert plan.achieved_bits > 5.5  # the budget is used, not just met
    assert set(plan.assignment.values()) == {"int4_g128", "int8"}
    assert res.uniform_format == "int4_g128" and list(res.uniform) == ["int4_g128"]  # int8 (>8 bits) does not fit
    assert res.measured_kl < res.uniform_kl
    assert res.plan.predicted == pytest.approx(sum(r["sensitivity"] for r in plan.rows))
    d = res.to_dict()
    assert d["assignment"] == plan.assignment and d["measured_kl"] == res.measured_kl

    # the recipe reproduces the assignment through the ordinary layer selection
    recipe = mixed_recipe(plan.assignment, {n: p for n, (_, p) in shapes.items()},
                          {"model": {"path": "unused"}, "data": {"path": "unused.txt"}})
    q = recipe.quant
    plans, warnings = plan_layers(model, q.resolve(), q.include, q.exclude, q.default_exclusions,
                                  [o.__dict__ for o in q.overrides])
    assert not warnings
    assert {p.name: p.weight for p in plans if p.quantized} == plan.assignment

    # budget below every choice: a clear error before any measuring
    with pytest.raises(BudgetError, match="below the smallest choice"):
        mixed_precision(model, _batches(1), _batches(1), ["int4_g128", "int8"], 4.0)


def test_choose_formats_with_keep_and_a_budget_between():
    from engine.analysis.sensitivity import SensitivityResult

    names = ["a", "b", "c"]
    shapes = {"a": (128, 128 * 128), "b": (128, 128 * 256), "c": (256, 256 * 128)}
    sens = SensitivityResult(names, ["int4_g128", "int8"], "kl",
                             only_on={"a": {"int4_g128": {"kl": 5.0}, "int8": {"kl": 3.0}},
                                      "b": {"int4_g128": {"kl": 1.0}, "int8": {"kl": 0.1}},
                                      "c": {"int4_g128": {"kl": 2.0}, "int8": {"kl": 0.2}}})
    # 7 bits: a and c in int8 (8.25 / 8.125 bits) with b in int4 fits; b and c in int8 would not
    plan = choose_formats(sens, shapes, 7.0)
    assert plan.assignment == {"a": "int8", "b": "int4_g128", "c": "int8"}
    assert plan.achieved_bits == pytest.approx((8.25 * 128 * 128 + 4.25 * 128 * 256 + 8.125 * 256 * 128) / 81920)
    assert plan.achieved_bits <= 7.0 and plan.predicted == pytest.approx(4.2)
    # a may stay in high precision (16 bits, no loss) when that is the best use of the bits
    keep = choose_formats(sens, shapes, 9.5, allow_keep=True)
    assert keep.assignment == {"a": "none", "b": "int4_g128", "c": "int8"} and keep.achieved_bits <= 9.5


# -- benchmarks and the runner's stages ------------------------------------------------------------------


def test_bench_before_after_and_side_by_side_rows():
    model = _llama()
    apply_plan(model, plan_layers(model, schemes.get("W4A16-INT4"))[0])
    bench = bench_before_after(model, _batches(1), "cpu", repeats=2)
    base, quant = bench["baseline"], bench["quantized"]
    assert base["bits_per_weight"] == 32.0 and base["quantized_bits_per_weight"] is None
    # every linear but lm_head (64 x 256, fp32) is int4_g128 at 4.25 bits
    n_q = sum(m.weight.numel() for _, m in quant_layers(model))
    assert quant["quantized_bits_per_weight"] == pytest.approx(4.25)
    assert quant["bits_per_weight"] == pytest.approx((4.25 * n_q + 32 * 64 * 256) / (n_q + 64 * 256))
    assert base["param_bytes"] - quant["param_bytes"] == pytest.approx(n_q * (4 - 4.25 / 8), abs=1)
    assert base["param_bytes"] == sum(p.numel() * 4 for p in model.parameters())
    for r in (base, quant):
        assert r["latency_ms"] > 0 and r["tokens_per_s"] > 0 and r["peak_memory_mb"] > 0

    report = {"mode": "qat", "scheme": "W4A16-INT4", "baseline": {"perplexity": 10.0},
              "ptq": {"perplexity": 11.0, "kl": 0.1}, "final": {"perplexity": 10.5, "kl": 0.05},
              "benchmark": bench, "export": {"bytes_on_disk": 12345}}
    rows = comparison_rows(report)
    assert [r["stage"] for r in rows] == ["baseline", "ptq", "qat"]
    assert rows[2]["kl"] == 0.05 and rows[2]["checkpoint_bytes"] == 12345
    assert rows[1]["param_bytes"] == quant["param_bytes"] and rows[0]["param_bytes"] == base["param_bytes"]
    qad = dict(report, mode="qad", final={"perplexity": 10.2, "kl": 0.03})
    assert [r["stage"] for r in side_by_side([report, qad])] == ["baseline", "ptq", "qat", "qad"]
    assert param_size(model) == {k: quant[k] for k in ("param_bytes", "bits_per_weight", "quantized_bits_per_weight")}


def test_analysis_stage_leaves_the_run_quantizers_alone(tmp_path):
    from engine.pipeline import RunContext

    model = _llama()
    apply_plan(model, plan_layers(model, schemes.get("W8A8-INT8"))[0])
    from engine import calib

    calib.calibrate(model, lambda m: [m(input_ids=b) for b in _batches()])
    before = _state(model)
    states = [(q.enabled, q.fmt.name) for _, layer in quant_layers(model)
              for q in (layer.weight_quantizer, layer.input_quantizer)]
    events = []
    blocks = torch.cat(_batches(2))
    ctx = RunContext(SimpleNamespace(data=SimpleNamespace(batch_size=2)), tmp_path, events.append, CancelToken(),
                     torch.device("cpu"), loaded=SimpleNamespace(model=model, kind="causal-lm"),
                     splits=SimpleNamespace(calib=blocks, eval=blocks))
    summary = analysis_stage(ctx, ["int4_g128", "nvfp4"], sensitivity=True)
    assert (tmp_path / "analysis.json").exists() and (tmp_path / "analysis.csv").exists()
    assert ctx.report["analysis"] is summary and len(summary["sensitivity"]) == len(quant_layers(model))
    assert _same_state(model, before)
    assert states == [(q.enabled, q.fmt.name) for _, layer in quant_layers(model)
                      for q in (layer.weight_quantizer, layer.input_quantizer)]
    assert {"analyze", "sensitivity"} <= {e.stage for e in events if type(e).__name__ == "StageFinished"}

    ctx.report.update(baseline={"perplexity": 9.0}, ptq={"perplexity": 9.5, "kl": 0.01})
    benchmark_stage(ctx, repeats=1)
    rows = ctx.report["comparison"]
    assert [r["stage"] for r in rows] == ["baseline", "ptq"]
    assert rows[0]["bits_per_weight"] == 32.0 and rows[1]["quantized_bits_per_weight"] > 8.0  # int8 + scales
    assert rows[1]["param_bytes"] < rows[0]["param_bytes"]


def test_layer_inputs_are_taken_after_an_explicit_input_multiplier():
    """A layer AWQ left an explicit input multiplier p (QuantLinear.pre_quant_scale) multiplies x * p:
    its input range and output error are those of x * p, not of x."""
    import torch.nn.functional as F
    from torch import nn

    from engine import formats
    from engine.analysis.layers import fake_quant_once
    from engine.quant.linear import QuantLinear

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.fc = nn.Embedding(50, 32), nn.Linear(32, 16)

        def forward(self, input_ids, attention_mask=None):
            return self.fc(self.emb(input_ids))

    torch.manual_seed(0)
    model = Toy().eval()
    QuantLinear.convert(model.fc, formats.get("int4_g32"), None)
    p = torch.linspace(0.25, 4.0, 32)
    model.fc.set_pre_quant_scale(p)
    batches = [torch.randint(0, 50, (2, 6)) for _ in range(2)]
    res = analyze_layers(model, batches, ["int4_g32"], layers=["fc"])
    row = res.row("fc")
    with torch.no_grad():
        x = torch.cat([model.emb(b).reshape(-1, 32) for b in batches]) * p
        w = model.fc.weight.detach()
        y = F.linear(x, w, model.fc.bias)
        err = float((F.linear(x, fake_quant_once(formats.get("int4_g32"), w) - w) ** 2).sum())
    assert row.stats["act_amax"] == pytest.approx(float(x.abs().max()), rel=1e-6)
    assert row.formats["int4_g32"]["output_rel_mse"] == pytest.approx(err / float((y ** 2).sum()), rel=1e-4)
