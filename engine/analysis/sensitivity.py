"""Model-level sensitivity of each layer to quantization (AIMET-style), on one model.

For a chosen format and a few calibration batches:

- "only this on" (``only_on``): quantize this one layer, keep every other in high
  precision, and measure how far the model's output moves from the original;
- "only this off" (``only_off``): quantize every candidate layer except this one
  (and, once per format, all of them: ``all_on``, the uniform choice).

How far the output moves: for causal LMs the mean KL(original || quantized) of
the next-token distributions per token (``kl``, the same definition as
:class:`engine.analysis.metrics.LMStats`, computed in float64 because single-layer
changes are small), plus the change of the next-token loss (``loss_delta``) and
top-1 agreement; for encoders the relative MSE of the final hidden states
(``relative_mse``) and their cosine.

:class:`ModelProbe` does the measuring on one model, never a copy: a layer is
quantized by swapping its weight's storage for the fake-quantized weight (the
very tensor ``QuantLinear`` would compute) and restoring it afterwards; an input
format adds a forward pre-hook with an engine ``TensorQuantizer``, its per-tensor
scale calibrated (max) once per format on the calibration batches. The original
outputs are computed once. When the candidate layers sit in a list of blocks
(``model.layers``), the blocks before the first quantized layer are not re-run:
they return the outputs recorded in the reference pass (checked bit for bit at
start; a model where that does not hold is run in full).

Cost: ``layers x formats x batches`` forward passes for ``only_on`` (the default
uses 2 batches), about as many again for ``only_off``. Progress is emitted per
measurement (stage ``"sensitivity"``); the cancel token is checked before each
measurement and between batches, and ``Cancelled`` propagates.
"""

from __future__ import annotations

import functools
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import formats as registry
from ..events import CancelToken, LayerStats, ProgressTracker, Sink
from ..formats import Format
from ..quant.quantizer import TensorQuantizer
from ..quant.select import quantization_disabled
from .layers import (_noop, _resolve_layers, activation_format, fake_quant_once, model_device, model_forward,
                     resolve_formats, takes_static_scale)

MODES = ("only_on", "only_off")


class _InputHook:
    def __init__(self, quantizer: TensorQuantizer):
        self.quantizer = quantizer

    def __call__(self, module, args):
        return (self.quantizer(args[0]),) + tuple(args[1:])


def _find_blocks(model: nn.Module, names: Sequence[str]) -> Tuple[Optional[nn.ModuleList], Dict[str, int]]:
    """The ModuleList of blocks holding most of ``names``, and each name's block index."""
    best, best_map = None, {}
    for prefix, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) < 2:
            continue
        head = f"{prefix}." if prefix else ""
        where = {}
        for n in names:
            if n.startswith(head):
                idx = n[len(head):].split(".", 1)[0]
                if idx.isdigit() and int(idx) < len(mod):
                    where[n] = int(idx)
        if len(where) > len(best_map):
            best, best_map = mod, where
    return best, best_map


class ModelProbe:
    """Measures the model's output change when chosen layers are quantized (see the module doc).

    ``measure({layer_name: format, ...})`` -> metrics against the original on
    ``batches``. Use as a context manager (or call :meth:`close`) to drop the
    recorded outputs; the model itself is left as it was after every measurement.
    """

    def __init__(self, model: nn.Module, layers, batches: Sequence[torch.Tensor], *,
                 device: Optional[torch.device] = None, activation: Optional[str] = None,
                 calib_batches: Optional[Sequence[torch.Tensor]] = None, cancel: Optional[CancelToken] = None,
                 skip_blocks: bool = True):
        if not batches:
            raise ValueError("the probe needs at least one batch")
        self.model = model
        self.layers: Dict[str, nn.Linear] = dict(_resolve_layers(model, layers))
        self.device = device or model_device(model)
        self.batches = [b.to(self.device) for b in batches]
        self.calib_batches = [b.to(self.device) for b in (calib_batches or batches)]
        self.activation = activation
        self.cancel = cancel
        self.tokens = 0
        self._orig = {n: m.weight.data for n, m in self.layers.items()}
        self._input_q: Dict[str, Dict[str, TensorQuantizer]] = {}
        self._was_training = model.training
        model.eval()
        blocks, block_of = _find_blocks(model, list(self.layers)) if skip_blocks else (None, {})
        self._blocks: Optional[nn.ModuleList] = blocks
        self._block_of = block_of
        self._block_out: List[List[Any]] = []  # per batch, the output of every block but the last
        self._skip_ok = False  # replaying recorded block outputs reproduces the original (checked)
        self._batch = 0
        self.metric = "kl"
        self._ref: List[Any] = []  # per batch: _LMRef (causal LMs) or the final hidden states
        self.baseline: Dict[str, float] = {}
        self._reference()

    # -- lifetime ------------------------------------------------------------------------
    def __enter__(self) -> "ModelProbe":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def close(self) -> None:
        self._ref, self._block_out, self._input_q = [], [], {}
        self.model.train(self._was_training)

    # -- the original --------------------------------------------------------------------
    @torch.no_grad()
    def _reference(self) -> None:
        record = self._blocks is not None
        handles = []
        if record:
            def keep(j, module, args, output):
                self._block_out[-1][j] = output

            handles = [b.register_forward_hook(functools.partial(keep, j)) for j, b in enumerate(self._blocks)]
        nll = 0.0
        try:
            with quantization_disabled(self.model):
                for ids in self.batches:
                    self._check()
                    if record:
                        self._block_out.append([None] * len(self._blocks))
                    out = model_forward(self.model, ids)
                    logits = getattr(out, "logits", None)
                    if logits is not None:
                        z = logits[:, :-1].float().reshape(-1, logits.shape[-1])
                        lse = torch.logsumexp(z.double(), -1)
                        targets = ids[:, 1:].reshape(-1)
                        self._ref.append(_LMRef(z, lse.float(), targets, z.argmax(-1)))
                        nll += (lse - z.gather(1, targets[:, None])[:, 0].double()).sum().item()
                        self.tokens += targets.numel()
                    else:
                        self.metric = "relative_mse"
                        self._ref.append(out.last_hidden_state.detach())
                        self.tokens += ids.numel()
        finally:
            for h in handles:
                h.remove()
        if self.metric == "kl":
            self._ref_nll = nll / max(1, self.tokens)
            self.baseline = {"perplexity": math.exp(self._ref_nll) if self._ref_nll < 700 else math.inf,
                             "loss": self._ref_nll}
        if record:
            self._block_out = [outs[:-1] for outs in self._block_out]  # the last block's is never replayed
            self._skip_ok = self._check_replay()

    def _check_replay(self) -> bool:
        """Whether replaying recorded block outputs reproduces the original exactly."""
        if not self._block_of or len(self._blocks) < 2 or any(o is None for o in self._block_out[0]):
            return False
        self._batch = 0
        with torch.no_grad(), quantization_disabled(self.model), self._skipped(len(self._blocks) - 1):
            out = model_forward(self.model, self.batches[0])
        if self.metric == "kl":
            return torch.equal(out.logits[:, :-1].float().reshape(self._ref[0].logits.shape), self._ref[0].logits)
        return torch.equal(out.last_hidden_state, self._ref[0])

    def _replay(self, j: int, *args, **kwargs):
        return self._block_out[self._batch][j]

    @contextmanager
    def _skipped(self, k: int):
        """Blocks [0, k) return their recorded outputs instead of computing them."""
        stubbed = []
        try:
            for j in range(k):
                blk = self._blocks[j]
                stubbed.append((blk, blk.__dict__.get("forward")))
                blk.forward = functools.partial(self._replay, j)
            yield
        finally:
            for blk, previous in stubbed:
                if previous is None:
                    del blk.forward
                else:
                    blk.forward = previous

    def _first_block(self, names: Iterable[str]) -> int:
        if self._blocks is None or not self._skip_ok:
            return 0
        idx = [self._block_of.get(n) for n in names]
        if not idx or any(i is None for i in idx):
            return 0
        return min(idx)

    # -- quantizing ----------------------------------------------------------------------
    def weight(self, name: str) -> torch.Tensor:
        """The original weight of ``name``."""
        return self._orig[name]

    def quantized_weights(self, fmt: str | Format, names: Optional[Iterable[str]] = None) -> Dict[tuple, torch.Tensor]:
        """Fake-quantized weights of ``names`` (default all) in ``fmt``, keyed (name, format name):
        a cache for :meth:`measure` (one extra copy of those weights)."""
        fmt = registry.get(fmt)
        return {(n, fmt.name): fake_quant_once(fmt, self._orig[n]) for n in (names or self.layers)}

    def _check(self) -> None:
        if self.cancel is not None:
            self.cancel.check()

    @torch.no_grad()
    def _input_quantizer(self, name: str, fmt: Format) -> TensorQuantizer:
        """The input quantizer of ``name`` in ``fmt``, calibrated (max) for all layers on first use."""
        per_layer = self._input_q.get(fmt.name)
        if per_layer is None:
            per_layer = {n: TensorQuantizer(fmt, "input").to(self.device) for n in self.layers}
            if takes_static_scale(fmt):
                for q in per_layer.values():
                    q.start_calibration("max")
                handles = [self.layers[n].register_forward_pre_hook(_InputHook(q)) for n, q in per_layer.items()]
                try:
                    with quantization_disabled(self.model):
                        for ids in self.calib_batches:
                            self._check()
                            model_forward(self.model, ids)
                finally:
                    for h in handles:
                        h.remove()
                    for q in per_layer.values():
                        q.finish_calibration()
            self._input_q[fmt.name] = per_layer
        return per_layer[name]

    @contextmanager
    def quantized(self, assignment: Mapping[str, str | Format], cache: Optional[Mapping[tuple, torch.Tensor]] = None):
        """Within the block, the layers of ``assignment`` run quantized in their formats."""
        plan = [(n, registry.get(f)) for n, f in assignment.items() if f not in (None, "none")]
        unknown = [n for n, _ in plan if n not in self.layers]
        if unknown:
            raise KeyError(f"not a probed layer: {', '.join(unknown)}")
        inputs = {}
        for n, f in plan:  # calibrate first: calibration must see the original model
            afmt = activation_format(self.activation, f)
            if afmt is not None:
                inputs[n] = self._input_quantizer(n, afmt)
        swapped, hooks = [], []
        try:
            for n, f in plan:
                layer = self.layers[n]
                w_hat = cache.get((n, f.name)) if cache is not None else None
                if w_hat is None:
                    w_hat = fake_quant_once(f, self._orig[n])
                swapped.append(n)
                layer.weight.data = w_hat
                if n in inputs:
                    hooks.append(layer.register_forward_pre_hook(_InputHook(inputs[n])))
            yield
        finally:
            for n in swapped:
                self.layers[n].weight.data = self._orig[n]
            for h in hooks:
                h.remove()

    # -- measuring -----------------------------------------------------------------------
    @torch.no_grad()
    def measure(self, assignment: Mapping[str, str | Format],
                cache: Optional[Mapping[tuple, torch.Tensor]] = None) -> Dict[str, float]:
        """Metrics of the model with ``assignment`` (layer -> format) quantized, against the original.

        ``cache``: precomputed quantized weights ((layer, format) -> tensor, from
        :meth:`quantized_weights`); layers not in it are quantized on the fly.
        """
        self._check()
        active = [n for n, f in assignment.items() if f not in (None, "none")]
        k = self._first_block(active) if active else 0
        kl = loss_delta = sq_err = sq_ref = cos = 0.0
        agree = 0
        with quantization_disabled(self.model), self.quantized(assignment, cache), self._skipped(k):
            for i, ids in enumerate(self.batches):
                self._check()
                self._batch = i
                out = model_forward(self.model, ids)
                if self.metric == "kl":
                    b_kl, b_loss, b_agree = _lm_divergence(self._ref[i], out.logits[:, :-1])
                    kl += b_kl
                    loss_delta += b_loss
                    agree += b_agree
                else:
                    h, r = out.last_hidden_state.float(), self._ref[i].float()
                    sq_err += torch.linalg.vector_norm(h - r).item() ** 2
                    sq_ref += torch.linalg.vector_norm(r).item() ** 2
                    cos += F.cosine_similarity(h, r, dim=-1).sum().item()
        n = max(1, self.tokens)
        if self.metric == "kl":
            loss = self._ref_nll + loss_delta / n
            return {"kl": max(0.0, kl / n), "loss_delta": loss_delta / n,
                    "perplexity": math.exp(loss) if loss < 700 else math.inf, "top1_agreement": agree / n}
        return {"relative_mse": sq_err / sq_ref if sq_ref > 0 else math.nan, "cosine": cos / n}


@dataclass
class _LMRef:
    """The original next-token logits of one batch ([tokens, vocab], float32) and what derives from them."""

    logits: torch.Tensor
    lse: torch.Tensor  # logsumexp per token
    targets: torch.Tensor
    top1: torch.Tensor


@torch.no_grad()
def _lm_divergence(ref: _LMRef, q_logits: torch.Tensor) -> Tuple[float, float, int]:
    """Summed KL(ref || q), summed next-token loss change, and top-1 matches over a batch.

    With ``d = z_q - z_ref`` and ``p = softmax(z_ref)``, per token
    ``KL = log E_p[exp(d - E_p d)]`` evaluated as ``log1p(E_p[expm1(r)])``, ``r = d - E_p d``,
    and ``loss_q - loss_ref = E_p d - d[target] + KL``. Both stay accurate in float32
    for the tiny changes a single layer makes, where differencing two log-softmaxes
    would drown them in rounding.
    """
    z = ref.logits
    d = q_logits.float().reshape(z.shape) - z
    p = torch.exp(z - ref.lse[:, None])
    d_mean = (p * d).sum(-1)
    kl_tok = torch.log1p((p * torch.expm1(d - d_mean[:, None])).sum(-1))
    loss_tok = d_mean - d.gather(1, ref.targets[:, None])[:, 0] + kl_tok
    agree = (q_logits.reshape(z.shape).argmax(-1) == ref.top1).sum().item()
    return kl_tok.double().sum().item(), loss_tok.double().sum().item(), agree


@dataclass
class SensitivityResult:
    """Sensitivity matrices: ``only_on[layer][format]`` (and ``only_off``) -> metrics dict."""

    layers: List[str]
    formats: List[str]
    metric: str  # the headline metric: "kl" (causal LMs) or "relative_mse" (encoders)
    params: Dict[str, int] = field(default_factory=dict)
    only_on: Dict[str, Dict[str, Dict[str, float]]] = field(default_factory=dict)
    only_off: Dict[str, Dict[str, Dict[str, float]]] = field(default_factory=dict)
    all_on: Dict[str, Dict[str, float]] = field(default_factory=dict)
    baseline: Dict[str, float] = field(default_factory=dict)
    activation: Optional[str] = None
    batches: int = 0
    tokens: int = 0
    seconds: float = 0.0

    def value(self, layer: str, fmt: str, mode: str = "only_on") -> float:
        return getattr(self, mode)[layer][fmt][self.metric]

    def matrix(self, mode: str = "only_on") -> List[List[Optional[float]]]:
        table = getattr(self, mode)
        return [[table.get(n, {}).get(f, {}).get(self.metric) for f in self.formats] for n in self.layers]

    def ranking(self, fmt: str, mode: str = "only_on") -> List[str]:
        """Layers from most to least sensitive under ``fmt`` (for ``only_off``: largest gain from keeping it)."""
        if mode == "only_off":
            return sorted(self.layers, key=lambda n: self.value(n, fmt, mode))
        return sorted(self.layers, key=lambda n: -self.value(n, fmt, mode))

    def to_dict(self, matrix: bool = True) -> Dict[str, Any]:
        d = {"metric": self.metric, "formats": list(self.formats), "layers": list(self.layers),
             "activation": self.activation, "batches": self.batches, "tokens": self.tokens,
             "seconds": round(self.seconds, 3), "baseline": dict(self.baseline), "all_on": dict(self.all_on)}
        if matrix:
            d["only_on"] = self.only_on
            if self.only_off:
                d["only_off"] = self.only_off
        return d


def sensitivity(model: nn.Module, batches: Sequence[torch.Tensor], formats: Iterable[str | Format], *,
                layers=None, modes: Sequence[str] = ("only_on",), activation: Optional[str] = None,
                device: Optional[torch.device] = None, sink: Optional[Sink] = None,
                cancel: Optional[CancelToken] = None, probe: Optional[ModelProbe] = None) -> SensitivityResult:
    """Measure "only this on" (and optionally "only this off") for every (layer, format).

    Emits ``Progress`` (stage ``"sensitivity"``, one step per measurement) and one
    ``LayerStats(layer, format, {"source": "sensitivity", "mode": ..., metrics})``
    per measurement. Raises ``Cancelled`` when ``cancel`` is set.
    """
    t0 = time.monotonic()
    sink = sink or _noop
    fmts = resolve_formats(formats)
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"unknown sensitivity mode(s) {bad}; choose from {', '.join(MODES)}")
    own = probe is None
    if own:
        probe = ModelProbe(model, layers, batches, device=device, activation=activation, cancel=cancel)
    names = list(probe.layers) if layers is None or own else [n for n, _ in _resolve_layers(model, layers)]
    total = len(names) * len(fmts) * len(modes) + (len(fmts) if "only_off" in modes else 0)
    prog = ProgressTracker(sink, "sensitivity", total, cancel)
    result = SensitivityResult(names, [f.name for f in fmts], probe.metric,
                               {n: probe.layers[n].weight.numel() for n in names}, baseline=dict(probe.baseline),
                               activation=activation, batches=len(probe.batches), tokens=probe.tokens)

    def record(table, name, fmt, mode, m):
        table.setdefault(name, {})[fmt.name] = m
        sink(LayerStats(name, fmt.name, {"source": "sensitivity", "mode": mode, **m}))
        prog.step(detail=f"{mode} {name} {fmt.name}")

    try:
        if "only_on" in modes:
            for name in names:
                for fmt in fmts:
                    record(result.only_on, name, fmt, "only_on", probe.measure({name: fmt}))
        if "only_off" in modes:
            for fmt in fmts:
                cache = probe.quantized_weights(fmt)
                result.all_on[fmt.name] = probe.measure({n: fmt for n in names}, cache)
                prog.step(detail=f"all on {fmt.name}")
                for name in names:
                    m = probe.measure({n: fmt for n in names if n != name}, cache)
                    record(result.only_off, name, fmt, "only_off", m)
                del cache
    finally:
        if own:
            probe.close()
    result.seconds = time.monotonic() - t0
    return result
