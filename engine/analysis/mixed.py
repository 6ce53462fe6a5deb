"""Automatic mixed precision: one format per layer, the least sensitive mix within a bit budget.

The budget is in average bits per weight over the candidate layers (the layers a
run with the same selection would quantize; the default exclusions stay out of
the choice and out of the average), weighted by each layer's weight count:

    achieved_bits = sum(bits(layer, format) * params(layer)) / sum(params(layer))

with ``bits(layer, format) = format.effective_bits(row=in_features)``, which counts
the scales. With ``allow_keep`` a layer may also stay in high precision, counted
at ``keep_bits`` (16: a bf16 deployment) with sensitivity 0. The budget is met
exactly: ``achieved_bits <= budget_bits``, never over.

The choice minimises the summed measured sensitivity (the "only this on" KL
matrix of :mod:`engine.analysis.sensitivity`) under the budget: a multiple-choice
knapsack, solved by dynamic programming over the bits above each layer's
cheapest choice (:func:`solve_mckp`). When every cost is a whole number of bits
and the remaining budget divided by the costs' greatest common divisor fits in
``max_states`` cells, the solution is exact. Otherwise costs are rounded up to a
grid of ``u`` bits: the result never goes over the budget and is at least as good
as the exact optimum for a budget ``n_layers * u`` bits smaller (reported as
``slack_bits`` per weight); a greedy pass then spends what the rounding left.

The predicted result is the sum of the chosen sensitivities; the measured one is
the KL of the model with the whole assignment applied, on held-out batches, next
to the best single format that fits the budget, measured the same way.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .. import formats as registry
from ..errors import LowbitError
from ..events import CancelToken, ProgressTracker, Sink
from .layers import _noop, _resolve_layers, resolve_formats
from .sensitivity import ModelProbe, SensitivityResult, sensitivity

KEEP = "none"  # the "format" of a layer left in high precision
KEEP_BITS = 16.0
MAX_STATES = 1 << 18  # DP cells per layer; exact below this, near-exact (bounded) above


class BudgetError(LowbitError):
    """The budget is below what the cheapest choice of every layer needs."""


# -- the knapsack -------------------------------------------------------------------------------


@dataclass
class MCKPSolution:
    choice: List[int]  # per group, the index of the chosen item
    value: float  # sum of the chosen values
    cost: float  # sum of the chosen costs
    exact: bool  # True: optimal; False: optimal for costs rounded up to `unit`
    unit: float  # the cost grid (1 for integer costs solved exactly)
    slack: float  # the exact optimum for capacity - slack is no better than this solution


def _integral(costs: Sequence[Sequence[float]]) -> bool:
    return all(abs(c - round(c)) <= 1e-6 * max(1.0, abs(c)) for row in costs for c in row if math.isfinite(c))


def solve_mckp(values: Sequence[Sequence[float]], costs: Sequence[Sequence[float]], capacity: float,
               max_states: int = MAX_STATES) -> MCKPSolution:
    """Pick one item per group minimising the summed value with summed cost <= ``capacity``.

    ``values[g][i]`` and ``costs[g][i]`` (non-negative) describe item ``i`` of
    group ``g``; an infinite cost or value marks an item that cannot be picked.
    Exact for integer costs when ``(capacity - sum of cheapest) / gcd`` is at most
    ``max_states``; otherwise costs are rounded up to a grid (see the module doc).
    Raises BudgetError when even the cheapest items do not fit.
    """
    n = len(costs)
    if n == 0:
        return MCKPSolution([], 0.0, 0.0, True, 1.0, 0.0)
    vals = [[float(v) for v in row] for row in values]
    cs = [[float(c) if math.isfinite(v) else math.inf for c, v in zip(crow, vrow)] for crow, vrow in zip(costs, vals)]
    if any(c < 0 for row in cs for c in row):
        raise ValueError("costs must be non-negative")
    mins = [min(row) for row in cs]
    if any(not math.isfinite(m) for m in mins):
        raise ValueError("every group needs at least one item with a finite value and cost")
    integral = _integral(cs)
    if integral:
        cs = [[int(round(c)) if math.isfinite(c) else math.inf for c in row] for row in cs]
        mins = [min(row) for row in cs]
        base = sum(mins)
        cap = math.floor(capacity)  # whole bits: never round a budget up
        spare = cap - base
    else:
        base = sum(mins)
        spare = capacity - base
    if spare < 0:
        raise BudgetError(f"the budget ({capacity:g}) is below the cheapest choice of every group ({base:g})")
    resid = [[c - m if math.isfinite(c) else math.inf for c in row] for row, m in zip(cs, mins)]
    exact = False
    if integral:
        g = 0
        for row in resid:
            for c in row:
                if math.isfinite(c) and c:
                    g = math.gcd(g, int(c))
        g = g or 1
        if spare // g <= max_states:
            unit, n_cells, exact = g, int(spare // g), True
            units = [[int(c // g) if math.isfinite(c) else -1 for c in row] for row in resid]
    if not exact:
        unit = spare / max_states if spare > 0 else 1.0
        n_cells = max_states if spare > 0 else 0
        # rounded up (with a margin for float error), so a solution on the grid fits the real budget
        units = [[int(math.ceil(c / unit * (1 + 1e-12))) if math.isfinite(c) else -1 for c in row] for row in resid]
    choice = _dp(vals, units, n_cells)
    cost = sum(cs[gi][i] for gi, i in enumerate(choice))
    if not exact:
        choice = _spend_leftover(vals, cs, choice, capacity)
        cost = sum(cs[gi][i] for gi, i in enumerate(choice))
    if cost > capacity + (0 if integral else 1e-9 * max(1.0, abs(capacity))):
        raise AssertionError(f"knapsack went over the budget: {cost} > {capacity}")  # a bug, never expected
    value = sum(vals[gi][i] for gi, i in enumerate(choice))
    return MCKPSolution(choice, value, float(cost), exact, float(unit), 0.0 if exact else float(n * unit))


def _dp(values: List[List[float]], units: List[List[int]], n_cells: int) -> List[int]:
    """dp[k] = least summed value with at most k cost units; then backtrack the choices."""
    n = len(values)
    dp = np.zeros(n_cells + 1)
    pick = np.zeros((n, n_cells + 1), dtype=np.int32)
    for gi in range(n):
        new = np.full(n_cells + 1, np.inf)
        order = sorted((u, i) for i, u in enumerate(units[gi]) if u >= 0)  # ties go to the cheaper item
        for u, i in order:
            if u > n_cells:
                continue
            v = values[gi][i]
            cand = np.full(n_cells + 1, np.inf)
            cand[u:] = dp[: n_cells + 1 - u] + v
            better = cand < new
            new[better] = cand[better]
            pick[gi][better] = i
        dp = new
    if not math.isfinite(dp[n_cells]):
        raise BudgetError("no choice fits the budget")
    choice = [0] * n
    k = n_cells
    for gi in range(n - 1, -1, -1):
        i = int(pick[gi][k])
        choice[gi] = i
        k -= units[gi][i]
    return choice


def _spend_leftover(values, costs, choice, capacity) -> List[int]:
    """Greedy: while some single change lowers the value and still fits, make the best one."""
    choice = list(choice)
    cost = sum(costs[g][i] for g, i in enumerate(choice))
    while True:
        best = None
        for g, row in enumerate(values):
            for i, v in enumerate(row):
                gain = values[g][choice[g]] - v
                extra = costs[g][i] - costs[g][choice[g]]
                if gain > 0 and cost + extra <= capacity and (best is None or gain > best[0]):
                    best = (gain, g, i, extra)
        if best is None:
            return choice
        _, g, i, extra = best
        choice[g] = i
        cost += extra


# -- formats per layer from measured sensitivities --------------------------------------------


def layer_bits(fmt: str, in_features: int, keep_bits: float = KEEP_BITS) -> float:
    """Stored bits per weight of a layer with rows of ``in_features`` in ``fmt`` (scales included)."""
    return keep_bits if fmt == KEEP else registry.get(fmt).effective_bits(in_features)


@dataclass
class MixedPlan:
    assignment: Dict[str, str]  # layer -> format (or "none")
    budget_bits: float
    achieved_bits: float
    predicted: float  # summed sensitivity of the choice
    exact: bool
    slack_bits: float  # per weight; 0 when exact
    rows: List[Dict[str, Any]] = field(default_factory=list)


def average_bits(assignment: Mapping[str, str], shapes: Mapping[str, Tuple[int, int]],
                 keep_bits: float = KEEP_BITS) -> float:
    """Parameter-weighted bits per weight of ``assignment``; ``shapes[name] = (in_features, params)``."""
    total = sum(shapes[n][1] for n in assignment)
    return sum(layer_bits(f, shapes[n][0], keep_bits) * shapes[n][1] for n, f in assignment.items()) / total


def choose_formats(sens: SensitivityResult, shapes: Mapping[str, Tuple[int, int]], budget_bits: float, *,
                   allow_keep: bool = False, keep_bits: float = KEEP_BITS,
                   max_states: int = MAX_STATES) -> MixedPlan:
    """The format per layer that minimises the summed "only this on" sensitivity within the budget."""
    names = list(sens.layers)
    options = list(sens.formats) + ([KEEP] if allow_keep else [])
    total = sum(shapes[n][1] for n in names)
    values, costs = [], []
    for n in names:
        values.append([0.0 if f == KEEP else float(sens.value(n, f)) for f in options])
        costs.append([layer_bits(f, shapes[n][0], keep_bits) * shapes[n][1] for f in options])
    capacity = Fraction(budget_bits) * total
    cap: float | int = math.floor(capacity) if _integral(costs) else float(capacity)
    try:
        sol = solve_mckp(values, costs, cap, max_states)
    except BudgetError:
        low = sum(min(row) for row in costs) / total
        raise BudgetError(f"a budget of {budget_bits:g} bits per weight is below the smallest choice of these "
                          f"formats ({low:.4f} bits per weight); raise the budget or add a smaller format") from None
    assignment = {n: options[i] for n, i in zip(names, sol.choice)}
    rows = [{"name": n, "params": shapes[n][1], "in_features": shapes[n][0], "format": assignment[n],
             "bits": layer_bits(assignment[n], shapes[n][0], keep_bits),
             "sensitivity": values[j][sol.choice[j]]} for j, n in enumerate(names)]
    return MixedPlan(assignment, float(budget_bits), sol.cost / total, sol.value, sol.exact, sol.slack / total, rows)


# -- measure it ---------------------------------------------------------------------------------


@dataclass
class MixedResult:
    plan: MixedPlan
    metric: str
    measured: Dict[str, float]
    uniform: Dict[str, Dict[str, Any]]  # format -> {"bits", "fits", metrics...} for formats that fit
    uniform_format: Optional[str]
    sensitivity: SensitivityResult
    seconds: Dict[str, float] = field(default_factory=dict)

    @property
    def measured_kl(self) -> float:
        return self.measured[self.metric]

    @property
    def uniform_kl(self) -> Optional[float]:
        return self.uniform[self.uniform_format][self.metric] if self.uniform_format else None

    def to_dict(self) -> Dict[str, Any]:
        p = self.plan
        return {"budget_bits": p.budget_bits, "achieved_bits": p.achieved_bits, "assignment": p.assignment,
                "metric": self.metric, "predicted_kl": p.predicted, "measured_kl": self.measured_kl,
                "uniform_kl": self.uniform_kl, "uniform_format": self.uniform_format,
                "measured": self.measured, "uniform": self.uniform, "exact": p.exact, "slack_bits": p.slack_bits,
                "formats": list(self.sensitivity.formats), "layers": p.rows,
                "baseline": dict(self.sensitivity.baseline), "sensitivity": self.sensitivity.matrix("only_on"),
                "sensitivity_batches": self.sensitivity.batches, "seconds": self.seconds}


def mixed_precision(model: nn.Module, calib_batches: Sequence[torch.Tensor], eval_batches: Sequence[torch.Tensor],
                    formats: Iterable[str], budget_bits: float, *, layers=None, activation: Optional[str] = None,
                    allow_keep: bool = False, keep_bits: float = KEEP_BITS, device: Optional[torch.device] = None,
                    sink: Optional[Sink] = None, cancel: Optional[CancelToken] = None,
                    sens: Optional[SensitivityResult] = None) -> MixedResult:
    """Measure sensitivities on ``calib_batches``, choose formats within ``budget_bits``, measure the
    choice and the best uniform format that fits on ``eval_batches``.

    Emits Progress for stages ``"sensitivity"`` and ``"mixed"`` (the measurements);
    raises ``Cancelled`` when ``cancel`` is set, BudgetError for a budget too small.
    """
    t0 = time.monotonic()
    sink = sink or _noop
    fmts = [f.name for f in resolve_formats(formats)]
    layer_list = _resolve_layers(model, layers)
    shapes = {n: (m.in_features, m.weight.numel()) for n, m in layer_list}
    total = sum(p for _, p in shapes.values())
    options = fmts + ([KEEP] if allow_keep else [])
    cheapest = sum(min(layer_bits(f, i, keep_bits) for f in options) * p for i, p in shapes.values()) / total
    if budget_bits < cheapest:  # before the (slow) sensitivity measurement
        raise BudgetError(f"a budget of {budget_bits:g} bits per weight is below the smallest choice of these "
                          f"formats ({cheapest:.4f} bits per weight); raise the budget or add a smaller format")
    if sens is None:
        sens = sensitivity(model, calib_batches, fmts, layers=layer_list, activation=activation, device=device,
                           sink=sink, cancel=cancel)
    t_sens = time.monotonic() - t0
    plan = choose_formats(sens, shapes, budget_bits, allow_keep=allow_keep, keep_bits=keep_bits)
    fitting = [f for f in fmts if average_bits({n: f for n in shapes}, shapes, keep_bits) <= budget_bits]
    prog = ProgressTracker(sink, "mixed", 1 + len(fitting), cancel)
    uniform: Dict[str, Dict[str, Any]] = {}
    with ModelProbe(model, layer_list, eval_batches, device=device, activation=activation, cancel=cancel) as probe:
        measured = probe.measure(plan.assignment)
        prog.step(detail="mixed assignment")
        for f in fitting:
            m = probe.measure({n: f for n in shapes})
            uniform[f] = {"bits": average_bits({n: f for n in shapes}, shapes, keep_bits), **m}
            prog.step(detail=f"uniform {f}")
    metric = sens.metric
    best = min(uniform, key=lambda f: uniform[f][metric]) if uniform else None
    return MixedResult(plan, metric, measured, uniform, best, sens,
                       {"sensitivity": round(t_sens, 3), "total": round(time.monotonic() - t0, 3)})


# -- the recipe ---------------------------------------------------------------------------------


def _exact_pattern(name: str) -> str:
    """A quant.overrides pattern matching exactly ``name`` (glob characters escaped)."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def mixed_recipe_dict(assignment: Mapping[str, str], params: Mapping[str, int], base: Mapping[str, Any],
                      activation: Optional[str] = None) -> Dict[str, Any]:
    """A recipe (plain data) that quantizes each layer in its assigned format.

    ``base`` holds the other sections (model, data, device, seed, and quant's
    include / exclude / default_exclusions). The most common format (by weights)
    becomes ``quant.weight`` of a custom scheme; every other layer gets an
    override with its exact name. ``activation``: None, "same" (each layer's
    inputs in its weight format) or one format for all inputs.
    """
    weight_by_fmt: Dict[str, int] = {}
    for n, f in assignment.items():
        if f != KEEP:
            weight_by_fmt[f] = weight_by_fmt.get(f, 0) + params[n]
    if not weight_by_fmt:
        raise LowbitError("the assignment keeps every layer in high precision; nothing to quantize")
    default = max(weight_by_fmt, key=weight_by_fmt.get)
    same = activation == "same"
    act = default if same else (None if activation in (None, "", "none") else registry.get(activation).name)
    quant: Dict[str, Any] = {k: v for k, v in dict(base.get("quant", {})).items()
                             if k in ("include", "exclude", "default_exclusions")}
    quant.update({"scheme": "custom", "weight": default})
    if act:
        quant["activation"] = act
    overrides = []
    for n, f in assignment.items():
        if f == default:
            continue
        o: Dict[str, Any] = {"pattern": _exact_pattern(n), "weight": f}
        if same:
            o["activation"] = f
        overrides.append(o)
    if overrides:
        quant["overrides"] = overrides
    d = {k: v for k, v in base.items() if k != "quant"}
    d["quant"] = quant
    d.setdefault("calibration", {"method": "max"})
    return d


def mixed_recipe(assignment: Mapping[str, str], params: Mapping[str, int], base: Mapping[str, Any],
                 activation: Optional[str] = None):
    """:func:`mixed_recipe_dict` as a validated :class:`engine.recipe.Recipe`."""
    from ..recipe import Recipe

    return Recipe.from_dict(mixed_recipe_dict(assignment, params, base, activation), require_version=False)
