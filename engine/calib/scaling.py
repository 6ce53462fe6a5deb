"""Per-input-channel rescaling shared by AWQ and SmoothQuant: which layers share an input, what
produced it, and an exact fold of a scale vector into the producer.

Scaling the input channels of a linear layer by 1/s and its weight columns by s changes
nothing in full precision, but changes what quantization loses. The 1/s must go somewhere:
into the module that produced the input (a norm's per-channel weight and bias, or the output
rows of a linear layer whose outputs reach the consumers channel by channel, as v -> o through
attention and up -> down through the gated MLP).

The mappings come from the module graph as it runs, not from layer names:
- consumers are the Linear layers that receive the very same input tensor;
- its producer is the module that returned that tensor (preferring one with a per-channel
  weight: a norm); where no module returned it (attention output, the gated MLP product),
  the candidates are the Linear layers of the same block with as many outputs as the
  consumers have inputs;
- a candidate is kept only if folding a random positive scale into it and its consumers
  leaves the model's output unchanged (relative 1e-4) on a calibration batch. A norm whose
  output also feeds a residual (BERT's post-LN blocks) fails this and is left unscaled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..quant.linear import QuantLinear
from ..quant.select import quantization_disabled
from . import blocks as _blocks

EXACT_RTOL = 1e-4  # a fold this close to the original output is exact up to float32 rounding


@dataclass
class ScaleGroup:
    consumers: List[str]  # Linear layers reading the same input (all are scaled)
    producer: Optional[str] = None  # module the 1/s folds into; None: no exact fold was found
    producer_kind: str = ""  # "norm" | "linear"
    reason: str = ""  # why there is no fold
    absmean: Optional[torch.Tensor] = None  # per input channel, over all calibration tokens
    absmax: Optional[torch.Tensor] = None
    samples: Optional[torch.Tensor] = None  # [tokens, channels] for the loss of a search
    tokens: int = 0

    @property
    def foldable(self) -> bool:
        return self.producer is not None

    def describe(self) -> Dict:
        return {"producer": self.producer, "producer_kind": self.producer_kind, "consumers": list(self.consumers),
                "reason": self.reason}


def _channel_weight(mod: nn.Module, channels: int) -> bool:
    w = getattr(mod, "weight", None)
    return isinstance(w, torch.Tensor) and w.dim() == 1 and w.numel() == channels and not isinstance(mod, nn.Linear)


def _all_tensors(out) -> List[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _all_tensors(v)]
    return []


class _Replay:
    """The model's first call of the calibration loop, to run again for exactness checks."""

    def __init__(self, model: nn.Module, args: tuple, kwargs: dict):
        self.model, self.args, self.kwargs = model, args, kwargs

    @torch.no_grad()
    def output(self, watch: Optional[List[nn.Module]] = None):
        """Every floating-point output tensor (full precision); with ``watch``, also those modules' inputs."""
        seen: List[torch.Tensor] = []
        handles = [m.register_forward_pre_hook(lambda _m, a: seen.append(a[0].detach().float().clone()))
                   for m in (watch or [])]
        try:
            with quantization_disabled(self.model):
                outs = [t.detach().float().clone() for t in _all_tensors(self.model(*self.args, **self.kwargs))
                        if t.is_floating_point()]
        finally:
            for h in handles:
                h.remove()
        return (outs, seen) if watch is not None else outs


@torch.no_grad()
def trace_groups(model: nn.Module, forward_loop: Callable[[nn.Module], None],
                 max_samples: int = 2048) -> Tuple[List[ScaleGroup], _Replay]:
    """Run the calibration data once (full precision) and return the input-sharing groups of
    the quantized layers, with their input statistics and exact producers."""
    names = {m: n for n, m in model.named_modules()}
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    state = {"batch": -1}
    produced: Dict[int, Tuple[List[str], torch.Tensor]] = {}  # id(output) -> modules returning it (batch 0)
    first_input: Dict[str, torch.Tensor] = {}
    stats: Dict[str, Dict] = {}
    replay: Dict = {}

    def on_model(_m, args, kwargs):
        state["batch"] += 1
        if not replay:
            replay["call"] = (args, kwargs)

    def on_output(mod, _args, out):
        if state["batch"] == 0 and isinstance(out, torch.Tensor):
            entry = produced.setdefault(id(out), ([], out))
            entry[0].append(names[mod])

    def on_input(name):
        def hook(_mod, args):
            x = args[0]
            if state["batch"] == 0 and name not in first_input:
                first_input[name] = x
            flat = x.detach().reshape(-1, x.shape[-1]).float()
            st = stats.setdefault(name, {"sum": torch.zeros(flat.shape[-1], device=flat.device),
                                         "max": torch.zeros(flat.shape[-1], device=flat.device),
                                         "n": 0, "samples": []})
            st["sum"] += flat.abs().sum(0)
            st["max"] = torch.maximum(st["max"], flat.abs().amax(0))
            st["n"] += flat.shape[0]
            kept = sum(s.shape[0] for s in st["samples"])
            if kept < max_samples:
                step = max(1, flat.shape[0] // max(1, max_samples // 4))  # spread over the batch
                st["samples"].append(flat[::step][: max_samples - kept].clone())
        return hook

    handles = [model.register_forward_pre_hook(on_model, with_kwargs=True)]
    handles += [m.register_forward_hook(on_output) for m in model.modules() if m is not model]
    handles += [m.register_forward_pre_hook(on_input(n)) for n, m in linears]
    try:
        with quantization_disabled(model):
            forward_loop(model)
    finally:
        for h in handles:
            h.remove()
    if not replay:
        from ..errors import LowbitError

        raise LowbitError("calibration ran no batch through the model: give calibration data "
                          "(data.calib_batches of at least 1)")
    rep = _Replay(model, *replay["call"])

    # consumers: Linear layers that received the same tensor
    by_input: Dict[int, List[str]] = {}
    for n, _ in linears:
        if n in first_input:
            by_input.setdefault(id(first_input[n]), []).append(n)
    modules = dict(model.named_modules())
    groups: List[ScaleGroup] = []
    for key, consumers in by_input.items():
        if not any(isinstance(modules[c], QuantLinear) for c in consumers):
            continue
        st = stats[consumers[0]]
        groups.append(ScaleGroup(consumers=consumers, absmean=st["sum"] / max(1, st["n"]), absmax=st["max"],
                                 samples=torch.cat(st["samples"]), tokens=st["n"]))
        groups[-1]._candidates = produced.get(key, ([], None))[0]  # type: ignore[attr-defined]
    del first_input, produced
    _find_producers(model, groups, rep)
    return groups, rep


def _block_of(name: str, prefix: str, n_blocks: int) -> Optional[str]:
    if not prefix:
        return None
    for i in range(n_blocks):
        head = f"{prefix}.{i}."
        if name.startswith(head):
            return head
    return None


@torch.no_grad()
def _find_producers(model: nn.Module, groups: List[ScaleGroup], rep: _Replay) -> None:
    modules = dict(model.named_modules())
    prefix, stack = _blocks.find_blocks(model)
    n_blocks = len(stack) if stack is not None else 0
    ref = rep.output()
    g = torch.Generator().manual_seed(0)
    for grp in groups:
        channels = modules[grp.consumers[0]].in_features
        cands: List[Tuple[str, str]] = []
        for name in getattr(grp, "_candidates", []):
            if _channel_weight(modules[name], channels):
                cands.append((name, "norm"))
        if not cands:  # reached channel by channel through attention or a gated product?
            home = _block_of(grp.consumers[0], prefix, n_blocks)
            for name, mod in modules.items():
                if (isinstance(mod, nn.Linear) and mod.out_features == channels and name not in grp.consumers
                        and home is not None and name.startswith(home)):
                    cands.append((name, "linear"))
        if hasattr(grp, "_candidates"):
            del grp._candidates
        watch = [modules[grp.consumers[0]]]
        _, base_in = rep.output(watch)
        probe = 0.5 + 1.5 * torch.rand(channels, generator=g)
        probe = probe.to(modules[grp.consumers[0]].weight.device)
        local_ok = False
        for name, kind in cands:
            saved = _snapshot(modules, name, grp.consumers)
            try:
                # 1. the producer alone scaled by 1/d: the consumers' input must be exactly x / d
                fold(modules, name, kind, [], probe)
                _, got_in = rep.output(watch)
                if not all(_close(a * probe, b) for a, b in zip(got_in, base_in)):
                    continue
                local_ok = True
                # 2. the whole fold: nothing the model returns may change (no residual takes x / d)
                fold(modules, name, "none", grp.consumers, probe)
                outs = rep.output()
            finally:
                _restore(saved)
            if len(outs) == len(ref) and all(_close(a, b) for a, b in zip(outs, ref)):
                grp.producer, grp.producer_kind = name, kind
                break
        if grp.producer is None:
            grp.reason = ("no exact fold: the producer's output also feeds another path (a residual)" if local_ok
                          else "no exact fold: no module's output reaches these layers channel by channel")


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool((a - b).abs().max() <= EXACT_RTOL * max(1e-12, float(b.abs().max())))


def _snapshot(modules, producer: str, consumers: List[str]):
    params = []
    for name in [producer] + list(consumers):
        for pname in ("weight", "bias"):
            t = getattr(modules[name], pname, None)
            if isinstance(t, torch.Tensor):
                params.append((t, t.detach().clone()))
    return params


def _restore(saved) -> None:
    for t, value in saved:
        t.data.copy_(value)


@torch.no_grad()
def fold(modules: Dict[str, nn.Module], producer: str, kind: str, consumers: List[str], s: torch.Tensor) -> None:
    """Divide the producer's output channels by ``s`` and multiply the consumers' input columns by ``s``."""
    p = modules[producer]
    if kind == "none":  # consumers only
        pass
    elif kind == "norm":
        p.weight.data.div_(s.to(p.weight.dtype))
    else:
        p.weight.data.div_(s.to(p.weight.dtype).unsqueeze(1))
    if kind != "none" and getattr(p, "bias", None) is not None:
        p.bias.data.div_(s.to(p.bias.dtype))
    for c in consumers:
        w = modules[c].weight
        w.data.mul_(s.to(w.dtype).unsqueeze(0))


@torch.no_grad()
def refresh_weight_amax(modules: Dict[str, nn.Module], names: List[str]) -> None:
    """Weights changed under a calibrated (static) amax: measure it again."""
    for n in names:
        m = modules[n]
        if isinstance(m, QuantLinear):
            q = m.weight_quantizer
            if q.amax is not None and q.fmt is not None and q.fmt.calibratable:
                q.set_amax(q.fmt.amax_of(m.weight.detach()))


def weight_fake_quant(layer: QuantLinear, w: torch.Tensor) -> torch.Tensor:
    """``w`` through the layer's weight format with scales from ``w`` itself (max calibration)."""
    q = layer.weight_quantizer
    if not q.enabled or q.fmt is None:
        return w
    return q.fmt.fake_quant(w)


def input_fake_quant(layer: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    """``x`` through the layer's activation format, a static scale measured on ``x`` where it takes one."""
    q = layer.input_quantizer
    if not q.enabled or q.fmt is None:
        return x
    amax = q.fmt.amax_of(x) if (q.fmt.calibratable and q.fmt.has_tensor_scale) else None
    return q.fmt.fake_quant(x, amax)


@dataclass
class ScalingResult:
    algorithm: str
    groups: List[Dict] = field(default_factory=list)
    layers: List[Dict] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> Dict:
        return {"algorithm": self.algorithm, "seconds": round(self.seconds, 3), "groups": self.groups,
                "layers": self.layers}

    def timed(self, t0: float) -> "ScalingResult":
        """This result, with the seconds since ``t0`` (time.perf_counter) recorded."""
        self.seconds = time.perf_counter() - t0
        return self


@torch.no_grad()
def apply_explicit(modules: Dict[str, nn.Module], consumers: List[str], s: torch.Tensor) -> None:
    """Scale the consumers' weight columns by ``s`` and keep 1 / s as each one's own input multiplier
    (``QuantLinear.pre_quant_scale``, composed with one already there): the fallback where no
    module's output can absorb 1 / s."""
    for c in consumers:
        m = modules[c]
        m.weight.data.mul_(s.to(m.weight.dtype).unsqueeze(0))
        old = m.pre_quant_scale
        inv = 1.0 / s.float().to(m.weight.device)
        m.set_pre_quant_scale(inv if old is None else old.float() * inv)


def finish_group(result, entry: dict, modules, grp, layers, refs, x, best_s, loss, error_key: str, extra: dict,
                 summary: dict, explicit: bool = False) -> None:
    """Record one scaling group in ``result``: per-layer errors before and after its best scale
    (relative to the output energy) and the group's ``entry``; then fold the scale into the
    producer (``explicit``: into the consumers' own input multipliers, see :func:`apply_explicit`)
    and refresh the consumers' weight scales."""
    for layer, ref in zip(layers, refs):
        name = next(n for n in grp.consumers if modules[n] is layer)
        energy = float((ref ** 2).mean()) or 1.0
        before = loss([layer], x, [ref], None)
        after = loss([layer], x, [ref], best_s) if best_s is not None else before
        result.layers.append({"name": name, "rtn_error": before / energy, error_key: after / energy, **extra})
    if best_s is not None:
        if explicit:
            apply_explicit(modules, grp.consumers, best_s)
        else:
            fold(modules, grp.producer, grp.producer_kind, grp.consumers, best_s)
        refresh_weight_amax(modules, grp.consumers)
    entry.update(folded=best_s is not None and not explicit, explicit=best_s is not None and explicit, **summary)
    result.groups.append(entry)


def each_group(model: nn.Module, forward_loop, max_samples: int, cancel=None):
    """(index, number of groups, group, modules by name) for every input-sharing group the
    calibration forwards reveal; the cancel token is checked before each group."""
    groups, _ = trace_groups(model, forward_loop, max_samples)
    modules = dict(model.named_modules())
    for gi, grp in enumerate(groups):
        if cancel is not None:
            cancel.check()
        yield gi, len(groups), grp, modules
