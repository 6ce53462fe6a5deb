"""Per-layer error of candidate formats, measured on calibration batches.

For every quantizable layer and every candidate format:

- weight error: relative MSE ``||Q(W) - W||^2 / ||W||^2`` and SQNR in dB (no data needed);
- output error: SQNR of the layer's output ``F.linear(Qa(x), Q(W), b)`` against
  ``F.linear(x, W, b)`` on the layer's real inputs. Forward pre-hooks capture each
  layer's input once per calibration batch (a fixed sample of rows), so the whole
  model runs only once per batch, with its quantizers off; where AWQ left an explicit
  input multiplier (``QuantLinear.pre_quant_scale``), x is the input times it, what the
  matmul and the input quantizer see;

and, per layer, the input activations' range: amax and rms over everything seen,
percentiles of ``|x|``, outliers (values beyond ``OUTLIER_SIGMAS`` robust standard
deviations, ``sigma = median(|x|) / 0.6745``, which the outliers themselves do not
inflate as they would the rms) and outlier channels (input channels holding one)
over the sampled rows; the same outlier count for the weight.

The result is a layers x formats matrix (plus layers x metrics) that
:meth:`LayerAnalysis.write` saves as ``analysis.json`` and ``analysis.csv``. While
it is computed, every (layer, format) cell is emitted as a
``LayerStats(name, format, stats)`` event with ``stats["source"] == "analysis"``
(and each layer's activation statistics as ``LayerStats(name, None, ...)``), so a
heatmap can fill in progressively. The cancel token is checked between layers.
"""

from __future__ import annotations

import csv
import inspect
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import formats as registry
from ..errors import LowbitError
from ..events import CancelToken, LayerStats, ProgressTracker, Sink
from ..fsutil import clean_json, write_json_atomic
from ..io.batch import model_inputs
from ..formats import Format
from ..quant import schemes
from ..quant.select import plan_layers, quantization_disabled

OUTLIER_SIGMAS = 6.0  # a value is an outlier beyond this many robust standard deviations
DEFAULT_BATCHES = 2  # calibration batches the analysis and the sensitivity see by default
DEFAULT_MAX_ROWS = 512  # input rows (tokens) kept per layer for the output error
MAX_CAPTURE_MB = 1024.0  # fewer rows per layer when all layers' kept inputs would need more
_QUANTILE_SAMPLES = 1 << 16  # |x| values the percentiles are computed on
PERCENTILES = (99.0, 99.9)
ACTIVATION_SAME = "same"  # activation mode: each format quantizes the inputs too (W4A4-style)


def _noop(event) -> None:
    pass


# -- shared helpers (also used by sensitivity and mixed) ----------------------------------


def resolve_formats(names: Iterable[str | Format]) -> List[Format]:
    """Formats from names (raises UnknownFormatError naming a bad one); duplicates dropped."""
    out: List[Format] = []
    for n in names:
        f = registry.get(n.strip() if isinstance(n, str) else n)
        if f.name not in [g.name for g in out]:
            out.append(f)
    if not out:
        raise LowbitError("no candidate formats were given")
    return out


def activation_format(activation: Optional[str], weight_fmt: Format) -> Optional[Format]:
    """The input format that goes with ``weight_fmt``: None, the same format, or a fixed one."""
    if activation in (None, "", "none"):
        return None
    if activation == ACTIVATION_SAME:
        return weight_fmt
    return registry.get(activation)


def takes_static_scale(fmt: Format) -> bool:
    """Whether calibration freezes this input format's scale (as ``calib.calibrate_activations`` does)."""
    return fmt.calibratable and fmt.has_tensor_scale


def fake_quant_once(fmt: Format, x: torch.Tensor, amax: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``fmt.fake_quant(x, amax)`` through the eager kernel.

    The analysis quantizes each weight once per format; compiling a kernel costs
    seconds per format and shape and pays off only over many calls. Eager and
    compiled kernels agree bit for bit (tested in the formats' tests).
    """
    with torch.no_grad():
        if x.numel() == 0:
            return x.clone()
        return fmt._fake_quant_impl(x, amax, False)[0]


def model_forward(model: nn.Module, ids):
    """One forward pass without a KV cache (when the model takes ``use_cache``); ``ids`` is a packed
    ``[B, T]`` tensor or a padded batch (its attention mask goes along)."""
    inputs = model_inputs(ids)
    if _takes_use_cache(model):
        return model(**inputs, use_cache=False)
    return model(**inputs)


_USE_CACHE_KWARG: Dict[type, bool] = {}


def _takes_use_cache(model: nn.Module) -> bool:
    cls = type(model)
    if cls not in _USE_CACHE_KWARG:
        try:
            _USE_CACHE_KWARG[cls] = "use_cache" in inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            _USE_CACHE_KWARG[cls] = False
    return _USE_CACHE_KWARG[cls]


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def candidate_layers(model: nn.Module, include: Sequence[str] = ("*",), exclude: Sequence[str] = (),
                     default_exclusions: bool = True,
                     warn: Optional[Callable[[str], None]] = None) -> List[Tuple[str, nn.Linear]]:
    """The Linear layers a run with these selection rules would quantize, in model order.

    Same rules as :func:`engine.quant.select.plan_layers` (the default exclusions
    keep heads, embeddings, norms and routers out); its warnings (a pattern that
    matches nothing) go to ``warn``.
    """
    plans, warnings = plan_layers(model, schemes.get(schemes.CUSTOM, weight="int8"), include, exclude,
                                  default_exclusions)
    for w in warnings:
        if warn:
            warn(w)
    modules = dict(model.named_modules())
    layers = [(p.name, modules[p.name]) for p in plans if p.quantized]
    if not layers:
        raise LowbitError("no layer is selected for analysis: check include / exclude (the default exclusions "
                          "skip heads, embeddings, norms and routers)")
    return layers


def _resolve_layers(model: nn.Module, layers) -> List[Tuple[str, nn.Linear]]:
    if layers is None:
        return candidate_layers(model)
    modules = dict(model.named_modules())
    out = []
    for item in layers:
        name, mod = (item, modules.get(item)) if isinstance(item, str) else item
        if not isinstance(mod, nn.Linear):
            raise LowbitError(f"{name!r} is not a Linear layer of the model")
        out.append((name, mod))
    return out


# -- statistics -----------------------------------------------------------------------------


@torch.no_grad()
def weight_error(w: torch.Tensor, w_hat: torch.Tensor, signal: Optional[float] = None) -> Dict[str, float]:
    """Relative MSE and SQNR (dB) of a quantized weight against the original.

    ``signal``: ``sum(w**2)`` when the caller has it already. Differences are taken
    in the weight's precision, sums accumulate in float64.
    """
    err = _sumsq(w_hat.detach().float() - w.detach().float())
    sig = _sumsq(w.detach().float()) if signal is None else signal
    rel = err / sig if sig > 0 else (0.0 if err == 0 else math.inf)
    return {"weight_rel_mse": rel, "weight_sqnr_db": _db(sig, err)}


def _sumsq(t: torch.Tensor) -> float:
    """Sum of squares (vector_norm: one fused pass, accurate to ~1e-6 relative in float32)."""
    return torch.linalg.vector_norm(t.float()).item() ** 2


def _db(sig: float, err: float) -> float:
    if err == 0:
        return math.inf
    if sig == 0:
        return -math.inf
    return 10.0 * math.log10(sig / err)


def robust_sigma(mag: torch.Tensor) -> float:
    """The standard deviation a Gaussian with this median |x| would have (from a sample of at most 2^16)."""
    flat = _sample(mag.reshape(-1))
    return flat.float().median().item() / 0.6745 if flat.numel() else 0.0


def _sample(flat: torch.Tensor) -> torch.Tensor:
    if flat.numel() <= _QUANTILE_SAMPLES:
        return flat
    g = torch.Generator().manual_seed(0)
    return flat[torch.randint(0, flat.numel(), (_QUANTILE_SAMPLES,), generator=g).to(flat.device)]


@torch.no_grad()
def weight_stats(w: torch.Tensor) -> Dict[str, float]:
    mag = w.detach().float().abs()
    rms = math.sqrt(_sumsq(mag) / mag.numel()) if mag.numel() else 0.0
    amax = mag.amax().item() if mag.numel() else 0.0
    sigma = robust_sigma(mag)
    outliers = int((mag > OUTLIER_SIGMAS * sigma).sum().item()) if sigma > 0 else 0
    return {"weight_amax": amax, "weight_rms": rms, "weight_outliers": outliers}


class _Capture:
    """A layer's inputs as they pass: full-data amax / rms, plus a fixed sample of rows."""

    def __init__(self, rows_per_batch: int, seed: int):
        self.rows_per_batch = rows_per_batch
        self.gen = torch.Generator().manual_seed(seed)
        self.rows: List[torch.Tensor] = []
        self.amax = 0.0
        self.sumsq = 0.0
        self.count = 0

    @torch.no_grad()
    def __call__(self, module, args):
        x = args[0].detach()
        p = getattr(module, "pre_quant_scale", None)
        if p is not None:  # an explicit input multiplier (AWQ without a fold): the matmul and quantizer see x * p
            x = x * p.to(x.dtype)
        x2 = x.reshape(-1, x.shape[-1])
        if x2.numel():
            amax = x2.abs().amax().float().item()
            if not math.isfinite(amax):  # rare: take the finite values only
                mag = x2.float().abs()
                amax = torch.where(torch.isfinite(mag), mag, 0.0).amax().item()
            self.amax = max(self.amax, amax)
            self.sumsq += _sumsq(x2.float())
            self.count += x2.numel()
        n = x2.shape[0]
        if n > self.rows_per_batch:
            idx = torch.randperm(n, generator=self.gen)[: self.rows_per_batch].sort().values
            x2 = x2[idx.to(x2.device)]
        self.rows.append(x2.clone())

    def sample(self) -> torch.Tensor:
        return torch.cat(self.rows) if self.rows else torch.empty(0)


@torch.no_grad()
def activation_stats(x: torch.Tensor, amax: float, rms: float) -> Dict[str, float]:
    """Range statistics of a layer's input; ``x`` is the [rows, in_features] sample."""
    mag = x.float().abs()
    out: Dict[str, float] = {"act_amax": amax, "act_rms": rms, "act_rows": int(x.shape[0])}
    flat = _sample(mag.reshape(-1))
    if flat.numel():
        qs = torch.quantile(flat, torch.tensor([p / 100 for p in PERCENTILES], device=flat.device))
        for p, v in zip(PERCENTILES, qs.tolist()):
            out[f"act_p{p:g}"] = v
        limit = OUTLIER_SIGMAS * flat.median().item() / 0.6745
        out["act_outliers"] = int((mag > limit).sum().item()) if limit > 0 else 0
        out["act_outlier_channels"] = int((mag.amax(0) > limit).sum().item()) if limit > 0 else 0
    return out


# -- the analysis -------------------------------------------------------------------------------


@dataclass
class LayerRow:
    """One layer: its shape, format-independent statistics and one metrics dict per format."""

    name: str
    in_features: int
    out_features: int
    params: int
    stats: Dict[str, float] = field(default_factory=dict)
    formats: Dict[str, Dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "in_features": self.in_features, "out_features": self.out_features,
                "params": self.params, **self.stats, "formats": self.formats}


@dataclass
class LayerAnalysis:
    """The layers x formats matrix of one analysis (and the layers x metrics of its layers)."""

    formats: List[str]
    activation: Optional[str]
    layers: List[LayerRow]
    batches: int = 0
    tokens: int = 0
    seconds: Dict[str, float] = field(default_factory=dict)
    sensitivity: Optional[Dict[str, Any]] = None  # SensitivityResult.to_dict(), when measured

    def row(self, name: str) -> LayerRow:
        for r in self.layers:
            if r.name == name:
                return r
        raise KeyError(name)

    def matrix(self, metric: str) -> List[List[Optional[float]]]:
        """``metric`` of every (layer, format), rows in layer order, columns in ``formats`` order."""
        return [[r.formats.get(f, {}).get(metric) for f in self.formats] for r in self.layers]

    def ranking(self, metric: str = "weight_sqnr_db", fmt: Optional[str] = None, worst_first: bool = True) -> List[str]:
        """Layer names ordered by ``metric`` under ``fmt`` (default: the first format), worst first.

        SQNR is worse when lower; errors and sensitivities are worse when higher.
        """
        fmt = fmt or self.formats[0]
        higher_is_worse = not metric.endswith("_db")
        vals = [(r.formats[fmt].get(metric, math.nan), r.name) for r in self.layers]
        return [n for _, n in sorted(vals, key=lambda t: t[0], reverse=higher_is_worse == worst_first)]

    def add_sensitivity(self, result) -> None:
        """Merge a :class:`~engine.analysis.sensitivity.SensitivityResult` into the rows."""
        self.sensitivity = result.to_dict(matrix=False)
        for r in self.layers:
            for f in self.formats:
                if r.name in result.only_on and f in result.only_on[r.name]:
                    on = result.only_on[r.name][f]
                    r.formats.setdefault(f, {})["sensitivity"] = on[result.metric]
                    if "loss_delta" in on:
                        r.formats[f]["loss_delta"] = on["loss_delta"]
                if r.name in result.only_off and f in result.only_off[r.name]:
                    r.formats.setdefault(f, {})["sensitivity_only_off"] = result.only_off[r.name][f][result.metric]

    def to_dict(self) -> Dict[str, Any]:
        d = {"formats": list(self.formats), "activation": self.activation, "batches": self.batches,
             "tokens": self.tokens, "seconds": dict(self.seconds),
             "layers": [r.to_dict() for r in self.layers]}
        if self.sensitivity is not None:
            d["sensitivity"] = self.sensitivity
        return d

    def write(self, out_dir, stem: str = "analysis") -> Tuple[Path, Path]:
        """Write ``<stem>.json`` and ``<stem>.csv`` (one row per layer, one column per format and metric)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        json_path = out / f"{stem}.json"
        write_json_atomic(json_path, clean_json(self.to_dict()))
        csv_path = out / f"{stem}.csv"
        stat_keys: List[str] = []
        for r in self.layers:
            stat_keys += [k for k in r.stats if k not in stat_keys]
        metric_keys: List[str] = []
        for r in self.layers:
            for f in self.formats:
                metric_keys += [k for k in r.formats.get(f, {}) if k not in metric_keys]
        header = ["name", "in_features", "out_features", "params", *stat_keys,
                  *[f"{f}.{k}" for f in self.formats for k in metric_keys]]
        with open(csv_path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            for r in self.layers:
                w.writerow([r.name, r.in_features, r.out_features, r.params, *[r.stats.get(k, "") for k in stat_keys],
                            *[_csv_value(r.formats.get(f, {}).get(k, "")) for f in self.formats for k in metric_keys]])
        return json_path, csv_path


def _csv_value(v):
    return f"{v:.6g}" if isinstance(v, float) and math.isfinite(v) else v


@torch.no_grad()
def capture_inputs(model: nn.Module, layers: Sequence[Tuple[str, nn.Linear]], batches: Sequence[torch.Tensor],
                   device: Optional[torch.device] = None, max_rows: int = DEFAULT_MAX_ROWS,
                   cancel: Optional[CancelToken] = None,
                   on_batch: Optional[Callable[[int], None]] = None) -> Dict[str, _Capture]:
    """Run ``batches`` through the original model (quantizers off) and keep each layer's inputs.

    At most ``max_rows`` rows per layer, fewer when all layers' rows together would
    pass ``MAX_CAPTURE_MB`` (large models).
    """
    device = device or model_device(model)
    row_bytes = sum(m.in_features for _, m in layers) * next(model.parameters()).element_size()
    max_rows = max(16, min(max_rows, int(MAX_CAPTURE_MB * 2 ** 20 // max(1, row_bytes))))
    per_batch = max(1, math.ceil(max_rows / max(1, len(batches))))
    caps = {name: _Capture(per_batch, seed=i) for i, (name, _) in enumerate(layers)}
    handles = [mod.register_forward_pre_hook(caps[name]) for name, mod in layers]
    was_training = model.training
    model.eval()
    try:
        with quantization_disabled(model):
            for i, ids in enumerate(batches):
                if cancel is not None:
                    cancel.check()
                model_forward(model, ids.to(device))
                if on_batch:
                    on_batch(i + 1)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return caps


@torch.no_grad()
def analyze_layers(model: nn.Module, batches: Optional[Sequence[torch.Tensor]], formats: Iterable[str | Format], *,
                   layers=None, activation: Optional[str] = None, device: Optional[torch.device] = None,
                   max_rows: int = DEFAULT_MAX_ROWS, sink: Optional[Sink] = None,
                   cancel: Optional[CancelToken] = None) -> LayerAnalysis:
    """Weight and output error of every layer under every format, and its activation ranges.

    ``batches``: calibration batches; without any, only the weight metrics (no
    data needed). ``layers``: names (or (name, module) pairs) to analyse; default
    :func:`candidate_layers`. ``activation``: None (weight-only, inputs kept),
    ``"same"`` (each format quantizes the inputs too) or a format name for all
    inputs; a per-tensor input scale is calibrated as max over the batches.
    Emits ``Progress`` (stage ``"analyze"``, one step per layer) and
    ``LayerStats`` events; raises ``Cancelled`` when ``cancel`` is set.
    """
    t0 = time.monotonic()
    sink = sink or _noop
    fmts = resolve_formats(formats)
    if activation not in (None, "", "none", ACTIVATION_SAME):
        activation = registry.get(activation).name
    layer_list = _resolve_layers(model, layers)
    batches = list(batches or [])
    caps = capture_inputs(model, layer_list, batches, device, max_rows, cancel) if batches else {}
    t_capture = time.monotonic() - t0
    prog = ProgressTracker(sink, "analyze", len(layer_list), cancel)
    rows: List[LayerRow] = []
    for name, mod in layer_list:
        if cancel is not None:
            cancel.check()
        cap = caps.pop(name, None)
        w = mod.weight.detach()
        stats = weight_stats(w)
        y_ref = x = None
        if cap is not None and cap.count:  # else no data, or the layer never ran: weight metrics only
            x = cap.sample().to(w.dtype)
            stats = {**activation_stats(x, cap.amax, math.sqrt(cap.sumsq / cap.count)), **stats}
            y_ref = F.linear(x, w, mod.bias)
        row = LayerRow(name, mod.in_features, mod.out_features, w.numel(), stats)
        sink(LayerStats(name, None, {"source": "analysis", **row.stats}))
        y_sig = _sumsq(y_ref) if y_ref is not None else 0.0
        w_sig = _sumsq(w.float())
        for fmt in fmts:
            w_hat = fake_quant_once(fmt, w)
            m: Dict[str, float] = {"bits": fmt.effective_bits(mod.in_features), **weight_error(w, w_hat, w_sig)}
            if y_ref is not None:
                m.update(_output_error(x, w, w_hat, y_ref, y_sig, activation_format(activation, fmt), cap.amax))
            row.formats[fmt.name] = m
            sink(LayerStats(name, fmt.name, {"source": "analysis", **m}))
        rows.append(row)
        del x, y_ref
        prog.step(detail=name)
    tokens = sum(int(b.numel()) for b in batches)
    return LayerAnalysis([f.name for f in fmts], activation or None, rows, len(batches), tokens,
                         {"capture": round(t_capture, 3), "total": round(time.monotonic() - t0, 3)})


def _output_error(x, w, w_hat, y_ref, y_sig: float, afmt: Optional[Format], amax: float) -> Dict[str, float]:
    """SQNR of the layer output with quantized weights (and inputs) against the original output."""
    if afmt is None:
        err = _sumsq(F.linear(x, w_hat - w))  # the bias cancels; one matmul, no cancellation error
    else:
        static = torch.tensor(amax, device=x.device) if takes_static_scale(afmt) else None
        err = _sumsq(F.linear(fake_quant_once(afmt, x, static), w_hat) - y_ref)
    return {"output_sqnr_db": _db(y_sig, err), "output_rel_mse": err / y_sig if y_sig > 0 else math.nan}
