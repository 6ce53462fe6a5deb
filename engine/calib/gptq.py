"""GPTQ: second-order, error-compensating rounding of the weights, layer by layer.

For a linear layer with calibration inputs X, GPTQ minimises the output error
||X W^T - X Q^T||^2 over quantized weights Q. It rounds one input column at a
time and moves the rounding error onto the columns not yet rounded, weighted by
the inverse Hessian H^-1 (H = 2 X^T X / n, damped by ``damp`` times its mean
diagonal). ``block_size`` columns are updated eagerly, the rest lazily in one
matrix product per block. ``act_order`` rounds the columns with the largest
Hessian diagonal first.

Scales follow the format's own rule, fixed per group when the group is reached
(or, with ``act_order``, from the original weight up front) and then held while
its columns are rounded; see ``Format.group_params``. The layer's weight is then
replaced by the rounded matrix and its quantizer's calibrated amax by the group
amaxes used, so ``fake_quant`` of the stored weight is exactly the GPTQ result
(and exports carry it like any other weight). Where a format re-derives its
scales from each block (NVFP4's block scales, MX, asymmetric integers), the
group's largest (and smallest) element is pinned to the top (bottom) code so the
rule finds the same scale again.

Layers run one transformer block at a time on that block's own inputs (the
outputs of the blocks already quantized), so the peak memory is the model plus
one block's Hessians. Layers that read the same input (q / k / v, gate / up)
share one Hessian and are rounded as one stacked matrix. A layer with an explicit
input multiplier (``QuantLinear.pre_quant_scale``, AWQ's fallback where no fold
exists) gets the Hessian of the input its matmul sees, x * pre_quant_scale.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from ..errors import LowbitError
from ..events import CancelToken
from ..formats import Format
from ..formats.numerics import finite_abs
from ..quant.linear import QuantLinear
from ..quant.select import quant_layers
from . import blocks as _blocks
from .clip import best_clip

DEFAULTS = {"damp": 0.01, "block_size": 128, "act_order": False, "scale_search": "auto"}
# scale_search "auto": on for weight formats of at most this many bits. Measured on 512 blocks of the demo
# Llama's training pool outside the calibration set (perplexity ratio to the original, search on / off):
# W2A16-INT2 1.087 / 1.133, W3A16-INT3 1.0112 / 1.0069, W4A16-INT4 1.0027 / 1.0016, W4A16-NVFP4 1.0029 /
# 1.0016, with the same KL at 3 and 4 bits: the search pays only where rounding is coarsest.
AUTO_SEARCH_MAX_BITS = 2
# the clipping ratios of a group's max that the scale search tries (``scale_search``)
SEARCH_GRID, SEARCH_MIN_RATIO = 20, 0.5


@dataclass
class GPTQResult:
    """Per-layer figures: ``rtn_error`` / ``gptq_error`` are the output errors of round-to-nearest
    and of GPTQ on the layer's calibration inputs, relative to the output's energy
    (tr(D H D^T) / tr(W H W^T) with D the weight error)."""

    layers: List[Dict] = field(default_factory=list)
    blocks: List[Dict] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> Dict:
        return {"algorithm": "gptq", "seconds": round(self.seconds, 3), "blocks": self.blocks, "layers": self.layers}


def _supported(layer: QuantLinear) -> bool:
    q = layer.weight_quantizer
    return q.enabled and q.fmt is not None and type(q.fmt).group_params is not Format.group_params


def _group_len(fmt: Format, cols: int) -> int:
    return fmt.block if fmt.granularity == "block" else cols


def _block_len(block_size: int, group: int) -> int:
    """A lazy-update block holding whole groups, or dividing a group, so each group starts where its values are current."""
    if group <= block_size:
        return max(group, (block_size // group) * group)
    return block_size if group % block_size == 0 else group


def relative_output_error(weight: torch.Tensor, q: torch.Tensor, H: torch.Tensor) -> float:
    d = (q.float() - weight.float())
    den = float(((weight.float() @ H) * weight.float()).sum())
    return float(((d @ H) * d).sum()) / den if den > 0 else 0.0


def _row_error(q: torch.Tensor, values: torch.Tensor, weight: Optional[torch.Tensor]) -> torch.Tensor:
    """Per row of ``values`` [rows, n], the squared rounding error of ``q``, each column weighted by
    ``weight`` [n] (the Hessian diagonal) when given: [rows, 1]."""
    d = q - values
    d = d * d
    return (d * weight.reshape(1, -1) if weight is not None else d).sum(-1, keepdim=True)


def searched_group_params(fmt: Format, values: torch.Tensor, weight: Optional[torch.Tensor] = None,
                          grid: int = SEARCH_GRID, min_ratio: float = SEARCH_MIN_RATIO) -> dict:
    """Scales of each row of ``values`` [rows, group] chosen by an error search.

    For a format whose per-group amax is stored (``fixed_scale_store == "group"``), each
    row's amax is tried at ``grid`` ratios from ``min_ratio`` to 1 of its max, and the one
    whose rounding ``quantize_fixed`` leaves the least squared error (each column weighted
    by ``weight``, e.g. the Hessian diagonal) is kept; ties keep the larger amax. Returns
    ``fmt.group_params(values, amax)`` of the chosen amax, so the scales are the format's
    own rule applied to a stored amax and fake_quant reproduces them.
    """
    def error_of(cand: torch.Tensor) -> torch.Tensor:
        return _row_error(fmt.quantize_fixed(values, fmt.group_params(values, cand)), values, weight)

    best = best_clip(finite_abs(values).amax(-1, keepdim=True), torch.linspace(1.0, min_ratio, grid).tolist(),
                     error_of)
    return fmt.group_params(values, best)


def searched_block_params(fmt: Format, values: torch.Tensor, tensor_amax: Optional[torch.Tensor],
                          weight: Optional[torch.Tensor] = None, grid: int = SEARCH_GRID,
                          min_ratio: float = SEARCH_MIN_RATIO) -> dict:
    """Block scales of each row of ``values`` [rows, block] chosen by an error search, for a
    format that re-derives them from each block's max under a stored per-tensor amax
    (``fixed_scale_store == "tensor"``: NVFP4's E4M3 block scales under its fp32 global scale).

    Each block's max is tried at ``grid`` ratios from 1 down to ``min_ratio`` (the format's
    rule applied to the block scaled by the ratio, so the candidates are the format's own
    block scales, e.g. E4M3-rounded), and the one of least squared rounding error (weighted
    by ``weight``) is kept; ties keep the larger. The block's largest element is then pinned
    to the top code (``pin_positions``), so the stored block max is 6 x the chosen scale and
    fake_quant finds that scale again from the rounded block.
    """
    bmax = finite_abs(values).amax(-1, keepdim=True)
    safe = torch.where(bmax > 0, bmax, torch.ones_like(bmax))

    def params_of(cand: torch.Tensor) -> dict:
        return fmt.group_params(values * (cand / safe), tensor_amax)

    def error_of(cand: torch.Tensor) -> torch.Tensor:
        p = params_of(cand)
        return _row_error(fmt.quantize_fixed(values, p, fmt.pin_positions(values, p)), values, weight)

    return params_of(best_clip(bmax, torch.linspace(1.0, min_ratio, grid).tolist(), error_of))


def scale_search_for(setting: Union[bool, str], fmt: Format) -> bool:
    """Whether the scale search runs for a layer of weight format ``fmt``: true / false as given,
    ``"auto"`` for formats of at most AUTO_SEARCH_MAX_BITS bits."""
    if setting == "auto":
        return fmt.bits <= AUTO_SEARCH_MAX_BITS
    if isinstance(setting, bool):
        return setting
    raise LowbitError(f"gptq scale_search must be true, false or 'auto', not {setting!r}")


@torch.no_grad()
def gptq_quantize(weight: torch.Tensor, H: torch.Tensor, fmt: Format, tensor_amax: Optional[torch.Tensor] = None,
                  damp: float = 0.01, block_size: int = 128, act_order: bool = False,
                  scale_search: Union[bool, str] = False, search_grid: int = SEARCH_GRID,
                  search_min_ratio: float = SEARCH_MIN_RATIO) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """GPTQ-round ``weight`` [rows, cols] under Hessian ``H`` [cols, cols] in format ``fmt``.

    ``tensor_amax`` (scalar, or [rows, 1]) is the per-tensor amax of formats that take one
    (NVFP4's global scale, integer / FP8 per-tensor scales); None measures it on the weight.
    ``scale_search`` picks each group's amax by :func:`searched_group_params` (weighted by the
    Hessian diagonal) instead of the group's max, for formats that store a per-group or
    per-channel amax; others keep their rule. ``"auto"``: only for formats of at most
    AUTO_SEARCH_MAX_BITS bits (:func:`scale_search_for`). Returns (Q, amax): the fake-quantized result
    (float32) and, for formats whose scales a calibrated amax reproduces, the amax per group
    to store (else None).
    """
    if damp <= 0:
        raise LowbitError(f"gptq damp must be positive (a fraction of the mean Hessian diagonal), not {damp}")
    if block_size < 1:
        raise LowbitError(f"gptq block_size must be at least 1, not {block_size}")
    W = weight.detach().float().clone()
    rows, cols = W.shape
    H = H.detach().float().clone().to(W.device)
    hdiag = torch.diag(H).clone()  # original column order, before damping
    dead = hdiag == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    perm = invperm = None
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        invperm = torch.argsort(perm)
        W, H = W[:, perm], H[perm][:, perm]
    H += damp * torch.mean(torch.diag(H)) * torch.eye(cols, device=W.device)
    try:
        L = torch.linalg.cholesky(H)
        Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    except torch.linalg.LinAlgError:
        raise LowbitError(f"gptq: the Hessian of a {rows}x{cols} layer is not positive definite; "
                          "raise calibration.gptq.damp (e.g. 0.1) or give more calibration batches") from None

    per_tensor = fmt.granularity == "tensor"
    G = _group_len(fmt, cols)
    n_groups = math.ceil(cols / G)
    B = _block_len(block_size, G)
    if tensor_amax is None and (per_tensor or fmt.fixed_scale_store == "tensor"):
        tensor_amax = finite_abs(weight.float()).amax()
    params: List[Optional[dict]] = [None] * n_groups
    pins: List[Optional[torch.Tensor]] = [None] * n_groups
    orig = W[:, invperm] if act_order else W  # original column order

    scale_search = scale_search_for(scale_search, fmt)
    search = scale_search and fmt.fixed_scale_store == "group"
    search_blocks = scale_search and fmt.fixed_scale_store == "tensor" and fmt.granularity == "block"

    def set_group(g: int, values: torch.Tensor) -> None:
        amax = tensor_amax if fmt.fixed_scale_store == "tensor" else None
        hd = hdiag[g * G:g * G + values.shape[1]]
        if search:
            params[g] = searched_group_params(fmt, values, hd, search_grid, search_min_ratio)
        elif search_blocks:
            params[g] = searched_block_params(fmt, values, amax, hd, search_grid, search_min_ratio)
        else:
            params[g] = fmt.group_params(values, amax)
        pins[g] = fmt.pin_positions(values, params[g])

    if per_tensor:  # one scale for the whole matrix, from the whole matrix
        flat = orig.reshape(1, -1)
        p = fmt.group_params(flat, tensor_amax.reshape(1, 1) if fmt.fixed_scale_store != "none" else None)
        pin = fmt.pin_positions(flat, p)
        params[0], pins[0] = p, (pin.reshape(rows, cols) if pin is not None else None)
    elif act_order:  # static groups: scales from the original weight, whatever order the columns go in
        for g in range(n_groups):
            set_group(g, orig[:, g * G:(g + 1) * G])

    Q = torch.zeros_like(W)
    for i1 in range(0, cols, B):
        i2 = min(i1 + B, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            c = int(perm[i1 + i]) if act_order else i1 + i
            g = c // G
            if not per_tensor and not act_order and c % G == 0:
                end = min(c + G, cols)
                set_group(g, W[:, c:end] if i == 0 else W1[:, i:i + (end - c)])
            pin = pins[g]
            pin_col = pin[:, c - (0 if per_tensor else g * G)].unsqueeze(1) if pin is not None else None
            w = W1[:, i]
            q = fmt.quantize_fixed(w.unsqueeze(1), params[g], pin_col).squeeze(1)
            Q[:, i1 + i] = q
            err = (w - q) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) * Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    if act_order:
        Q = Q[:, invperm]
    amax = None
    if fmt.fixed_scale_store == "group":
        if per_tensor:
            amax = params[0]["amax"].reshape(())
        elif fmt.granularity == "channel":
            amax = params[0]["amax"].reshape(rows, 1)
        else:
            amax = torch.cat([p["amax"].reshape(rows, 1) for p in params], dim=1)
    return Q, amax


class _Hessians:
    """Forward pre-hooks accumulating H = 2 X^T X / n per distinct input of a set of layers."""

    def __init__(self, layers: List[Tuple[str, QuantLinear]]):
        self.layers = layers
        self.leader: Dict[str, str] = {}  # layer -> the layer whose Hessian it shares
        self.H: Dict[str, torch.Tensor] = {}
        self.n: Dict[str, int] = {}
        self._seen: Dict[int, tuple] = {}
        self._handles = []
        self._first_batch = True

    def __enter__(self):
        for name, layer in self.layers:
            self._handles.append(layer.register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        return False

    def next_batch(self) -> None:
        if self._seen:
            self._first_batch = False
        self._seen = {}

    def _hook(self, name: str):
        def hook(mod, args):
            x = args[0]
            pre = getattr(mod, "pre_quant_scale", None)  # an explicit input multiplier (AWQ without a fold): the matmul sees x * pre
            if name not in self.leader:
                first = self._seen.get(id(x), (name, None, None))
                same = (first[2] is None and pre is None) or (
                    first[2] is not None and pre is not None and torch.equal(first[2], pre))
                self.leader[name] = first[0] if same else name
            # holding the tensor keeps its id from being reused by another one within the batch
            self._seen.setdefault(id(x), (name, x, pre))
            if self.leader[name] != name:
                return None
            x = x.detach().reshape(-1, x.shape[-1]).float()
            if pre is not None:
                x = x * pre.float()
            n_new = x.shape[0]
            n_old = self.n.get(name, 0)
            H = self.H.get(name)
            if H is None:
                H = torch.zeros(x.shape[-1], x.shape[-1], device=x.device)
            H *= n_old / (n_old + n_new)
            x = x * math.sqrt(2.0 / (n_old + n_new))
            H += x.T @ x
            self.H[name], self.n[name] = H, n_old + n_new
            return None
        return hook


def _tensor_amax(layer: QuantLinear) -> Optional[torch.Tensor]:
    q = layer.weight_quantizer
    if q.fmt.fixed_scale_store == "tensor" or q.fmt.granularity == "tensor":
        a = q.amax if q.amax is not None else finite_abs(layer.weight.detach().float()).amax()
        return a.detach().float().reshape(-1)[:1].reshape(())
    return None


@torch.no_grad()
def _quantize_layers(named: List[Tuple[str, QuantLinear]], hess: _Hessians, settings: dict,
                     result: GPTQResult, block_index: Optional[int], cancel: Optional[CancelToken]) -> None:
    """GPTQ each layer (stacking the layers that share a Hessian and a format) and store the result."""
    groups: Dict[Tuple[str, str], List[Tuple[str, QuantLinear]]] = {}
    for name, layer in named:
        if name not in hess.leader:
            continue  # the layer saw no input (an unused branch): left to round-to-nearest
        key = (hess.leader[name], layer.weight_quantizer.fmt.name)
        fmt = layer.weight_quantizer.fmt
        if fmt.granularity == "tensor":  # one scale per layer: never stacked
            key = key + (name,)
        groups.setdefault(key, []).append((name, layer))
    for key, members in groups.items():
        if cancel is not None:
            cancel.check()
        t0 = time.perf_counter()
        H = hess.H[key[0]]
        fmt = members[0][1].weight_quantizer.fmt
        Ws = [layer.weight.detach().float() for _, layer in members]
        W = torch.cat(Ws, dim=0)
        tensor_amax = None
        if fmt.fixed_scale_store == "tensor" or fmt.granularity == "tensor":
            amaxes = [_tensor_amax(layer) for _, layer in members]
            tensor_amax = amaxes[0] if len(members) == 1 else torch.cat(
                [a.reshape(1, 1).expand(w.shape[0], 1) for a, w in zip(amaxes, Ws)])
        Q, amax = gptq_quantize(W, H, fmt, tensor_amax, settings["damp"], settings["block_size"],
                                settings["act_order"], settings["scale_search"], settings["search_grid"],
                                settings["search_min_ratio"])
        seconds = time.perf_counter() - t0
        row0 = 0
        for (name, layer), w in zip(members, Ws):
            rows = w.shape[0]
            q = Q[row0:row0 + rows]
            wq = layer.weight_quantizer
            rtn = fmt.fake_quant(w, wq.amax) if fmt.calibratable else fmt.fake_quant(w)
            layer_amax = None
            if amax is not None:
                layer_amax = amax if amax.dim() == 0 else amax[row0:row0 + rows]
            elif fmt.fixed_scale_store == "tensor":
                layer_amax = _tensor_amax(layer)
            row0 += rows
            result.layers.append({
                "name": name, "block": block_index, "format": fmt.name,
                "rtn_error": relative_output_error(w, rtn, H),
                "gptq_error": relative_output_error(w, q, H),
                "scale_search": scale_search_for(settings["scale_search"], fmt),
                "seconds": round(seconds * rows / W.shape[0], 4),
            })
            layer.weight.data.copy_(q.to(layer.weight.dtype))
            if layer_amax is not None:
                wq.set_amax(layer_amax)


def _layers_of(module: nn.Module, prefix: str) -> List[Tuple[str, QuantLinear]]:
    return [(f"{prefix}.{n}" if prefix else n, m) for n, m in module.named_modules()
            if isinstance(m, QuantLinear) and _supported(m)]


class _only_weights_in:
    """Inside a block: every quantizer off (Hessians of the full-precision block), or only the weights on."""

    def __init__(self, layers: List[Tuple[str, QuantLinear]], weights: bool):
        self.layers, self.weights = layers, weights

    def __enter__(self):
        self.saved = [(l.weight_quantizer.enabled, l.input_quantizer.enabled) for _, l in self.layers]
        for _, l in self.layers:
            l.weight_quantizer.enabled = self.weights and l.weight_quantizer.fmt is not None
            l.input_quantizer.enabled = False

    def __exit__(self, *exc):
        for (_, l), (w, a) in zip(self.layers, self.saved):
            l.weight_quantizer.enabled, l.input_quantizer.enabled = w, a
        return False


def _gptq_blocks(model: nn.Module, prefix: str, stack: nn.ModuleList, forward_loop, settings: dict,
                 result: GPTQResult, in_blocks: set, progress, cancel, device) -> None:
    """GPTQ the blocks in order, each on the previous (already quantized) blocks' outputs; with
    ``device``, each block on that device while it is done (see :func:`gptq`)."""
    home = next(model.parameters()).device
    dev = torch.device(device) if device is not None else home
    moving = dev != home
    outside = _blocks.outside_of(model, stack) if moving else []
    n_blocks = len(stack)
    all_mods = [(n, m) for n, m in quant_layers(model)]
    _blocks.move_own(outside, dev)
    try:
        with _only_weights_in(all_mods, weights=False):  # the first block sees the original model's input
            inputs = _blocks.capture_block_inputs(model, stack[0], forward_loop)
        if moving:
            inputs = _blocks.to_device(inputs, dev)
        for i, block in enumerate(stack):
            if cancel is not None:
                cancel.check()
            t0 = time.perf_counter()
            name = f"{prefix}.{i}" if prefix else str(i)
            layers = _layers_of(block, name)
            in_blocks.update(n for n, _ in layers)
            block_mods = [(n, m) for n, m in block.named_modules() if isinstance(m, QuantLinear)]
            if moving:
                block.to(dev)
            try:
                if layers:
                    with _only_weights_in(block_mods, weights=False), _Hessians(layers) as hess:
                        for args, kwargs in inputs:
                            hess.next_batch()
                            block(*args, **kwargs)
                    _quantize_layers(layers, hess, settings, result, i, cancel)
                    del hess
                if i + 1 < n_blocks:
                    with _only_weights_in(block_mods, weights=True):
                        inputs = _blocks.run_block(block, inputs)
            finally:
                if moving:
                    block.to(home)
            seconds = time.perf_counter() - t0
            result.blocks.append({"index": i, "name": name, "layers": len(layers), "seconds": round(seconds, 4),
                                  "device": str(dev)})
            if progress is not None:
                progress(i + 1, n_blocks, {"block": name, "seconds": seconds})
        del inputs
    finally:
        _blocks.move_own(outside, home)


@torch.no_grad()
def gptq(model: nn.Module, forward_loop: Callable[[nn.Module], None], damp: float = 0.01, block_size: int = 128,
         act_order: bool = False, scale_search: Union[bool, str] = "auto", search_grid: int = SEARCH_GRID,
         search_min_ratio: float = SEARCH_MIN_RATIO, progress: Optional[Callable[[int, int, Dict], None]] = None,
         cancel: Optional[CancelToken] = None, device: Optional[Union[str, torch.device]] = None) -> GPTQResult:
    """GPTQ every supported QuantLinear of ``model`` on the calibration data of ``forward_loop``.

    Transformer blocks run one at a time on their own inputs; ``progress(done, total, info)``
    is called after each block (info: the block's name and seconds); ``cancel`` is checked
    between layers. Layers outside the blocks (a quantized head) are done last on a full pass.
    The activation quantizers stay off while the Hessians are collected; calibrate the
    activations afterwards. ``scale_search``: see :func:`gptq_quantize`.

    ``device``: the blocks go there one at a time (with their Hessians and the hidden states of
    the calibration batches) and back to where the weights live, so a model larger than the
    device is quantized on it; the parts around the blocks move there for the capture.
    ``forward_loop`` must put the inputs where the model's input embeddings are
    (:func:`engine.calib.blocks.input_device`). Layers outside the blocks are then done where
    the weights live. None: everything where the weights are.
    """
    if search_grid < 2 or not 0 < search_min_ratio < 1:
        raise LowbitError(f"gptq scale search needs a grid of at least 2 ratios in (0, 1], "
                          f"not {search_grid} from {search_min_ratio}")
    settings = {"damp": float(damp), "block_size": int(block_size), "act_order": bool(act_order),
                "scale_search": scale_search if scale_search == "auto" else bool(scale_search),
                "search_grid": int(search_grid),
                "search_min_ratio": float(search_min_ratio)}
    result = GPTQResult()
    t_start = time.perf_counter()
    prefix, stack = _blocks.find_blocks(model)
    all_layers = [(n, m) for n, m in quant_layers(model) if _supported(m)]
    if not all_layers:
        return result
    in_blocks = set()
    was_training = model.training
    model.eval()
    try:
        if stack is not None:
            _gptq_blocks(model, prefix, stack, forward_loop, settings, result, in_blocks, progress, cancel, device)
        rest = [(n, m) for n, m in all_layers if n not in in_blocks]
        if rest:  # outside the blocks: one pass of the whole model (its blocks already quantized)
            mods = [(n, m) for n, m in quant_layers(model)]
            saved = [m.input_quantizer.enabled for _, m in mods]
            for _, m in mods:
                m.input_quantizer.enabled = False
            try:
                for _, m in rest:
                    m.weight_quantizer.enabled = False
                with _Hessians(rest) as hess:
                    def loop_hook(_mod, _args):
                        hess.next_batch()
                    h = model.register_forward_pre_hook(loop_hook)
                    try:
                        forward_loop(model)
                    finally:
                        h.remove()
                for _, m in rest:
                    m.weight_quantizer.enabled = True
                _quantize_layers(rest, hess, settings, result, None, cancel)
            finally:
                for (_, m), s in zip(mods, saved):
                    m.input_quantizer.enabled = s
    finally:
        model.train(was_training)
    result.seconds = time.perf_counter() - t_start
    return result
