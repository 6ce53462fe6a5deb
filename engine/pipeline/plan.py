"""The memory plan of a recipe: what each stage holds on its device, before anything is loaded.

Everything comes from the config and the safetensors headers (engine.io.inspect) and
the recipe: parameter counts and Linear shapes of the model built on the meta device,
the dtypes, the batch and sequence sizes. Per stage, the plan lists its items (weights
of student and teacher, gradients, fp32 master weights and AdamW moments, activations
with or without gradient checkpointing, logits and loss buffers, calibration statistics,
export buffers) and the stage's peak on each device; ``total_peak_bytes`` is the largest
stage peak, since the stages run one after another and free their working memory.

Knobs: the plan is recomputed with each memory-saving change of the recipe (teacher on
the CPU, bf16 weights, gradient checkpointing, half the micro-batch with twice the
accumulation) and says how much each one saves at the peak, so a run that cannot fit is
refused with the change that makes it fit (:func:`check_fits`).

The figures are estimates: activations follow the shapes of a transformer block
(attention through SDPA, a gated MLP), and the CPU process itself (Python, torch,
transformers) is counted as a fixed runtime item; tests compare the plan with the
measured peak of each stage of a real run (within 25%).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from ..calib.blocks import find_blocks
from ..devices import resolve_device
from ..errors import LowbitError
from ..io.inspect import ModelInfo, inspect_model
from ..memory import available_ram, fmt_bytes, total_ram
from ..formats import fused_kernels
from ..quant import schemes
from ..quant.select import plan_layers
from ..train.vocab_loss import auto_chunk_tokens

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}
CPU_RUNTIME_BYTES = 450 << 20  # a process with torch, transformers and tokenizers imported
HEADROOM = 0.95  # a stage may plan up to this share of a device's memory


@dataclass
class Item:
    name: str
    bytes: int
    device: str
    note: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "bytes": int(self.bytes), "device": self.device, "note": self.note}


@dataclass
class StagePlan:
    name: str
    device: str
    items: List[Item] = field(default_factory=list)

    def add(self, name: str, nbytes: float, device: Optional[str] = None, note: str = "") -> None:
        if nbytes > 0:
            self.items.append(Item(name, int(nbytes), device or self.device, note))

    def per_device(self) -> Dict[str, int]:
        out: Dict[str, int] = {}
        for it in self.items:
            out[it.device] = out.get(it.device, 0) + it.bytes
        return out

    @property
    def peak_bytes(self) -> int:
        """The peak on the stage's own device (where the student is)."""
        return self.per_device().get(self.device, 0)

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "device": self.device, "peak_bytes": self.peak_bytes,
                "per_device": self.per_device(), "items": [i.to_dict() for i in self.items]}


@dataclass
class Knob:
    name: str
    change: Dict[str, Any]  # recipe keys -> values
    saves_bytes: int
    new_peak_bytes: int

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "change": self.change, "saves_bytes": int(self.saves_bytes),
                "new_peak_bytes": int(self.new_peak_bytes)}


@dataclass
class MemoryPlan:
    model: Dict[str, Any]
    stages: List[StagePlan]
    capacity: Dict[str, Optional[int]]
    knobs: List[Knob] = field(default_factory=list)

    def peak_per_device(self) -> Dict[str, int]:
        out: Dict[str, int] = {}
        for s in self.stages:
            for dev, n in s.per_device().items():
                out[dev] = max(out.get(dev, 0), n)
        return out

    @property
    def total_peak_bytes(self) -> int:
        """The largest stage peak, all devices together (on one device: the run's peak)."""
        return max((sum(s.per_device().values()) for s in self.stages), default=0)

    def over(self) -> List[tuple]:
        """(stage, device, planned, capacity) for every stage that does not fit its device."""
        bad = []
        for s in self.stages:
            for dev, n in s.per_device().items():
                cap = self.capacity.get(dev)
                if cap is not None and n > cap * HEADROOM:
                    bad.append((s.name, dev, n, cap))
        return bad

    @property
    def fits(self) -> bool:
        return not self.over()

    def stage(self, name: str) -> StagePlan:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    def to_dict(self) -> Dict[str, Any]:
        return {"model": self.model, "stages": [s.to_dict() for s in self.stages],
                "total_peak_bytes": self.total_peak_bytes, "peak_per_device": self.peak_per_device(),
                "capacity": self.capacity, "fits": self.fits, "knobs": [k.to_dict() for k in self.knobs]}

    def text(self) -> str:
        m = self.model
        size = f"{m['n_params'] / 1e9:.2f}B" if m["n_params"] >= 1e9 else f"{m['n_params'] / 1e6:.1f}M"
        lines = [f"memory plan: {m['name']} ({m['architecture']}, {size} parameters, "
                 f"{m['dtype']}), {m['mode'].upper()} on {m['device']}"]
        if m.get("sequential_calibration"):
            lines.append(f"  calibration one block at a time on {m['device']} (the weights in CPU memory); "
                         f"the stages after it run on {m['after_calibration']}")
        for s in self.stages:
            per = s.per_device()
            where = ", ".join(f"{d} {fmt_bytes(n)}" for d, n in per.items())
            lines.append(f"  {s.name:10s} peak {fmt_bytes(s.peak_bytes):>10s}   ({where})")
            for it in s.items:
                extra = f"  [{it.device}]" if it.device != s.device else ""
                note = f"  - {it.note}" if it.note else ""
                lines.append(f"      {it.name:48s} {fmt_bytes(it.bytes):>10s}{extra}{note}")
        caps = ", ".join(f"{d} {fmt_bytes(c)}" for d, c in self.capacity.items())
        lines.append(f"  total peak {fmt_bytes(self.total_peak_bytes)}; this machine has {caps}: "
                     f"{'fits' if self.fits else 'DOES NOT FIT'}")
        for k in self.knobs:
            change = ", ".join(f"{key}={v}" for key, v in k.change.items())
            lines.append(f"  knob {k.name:36s} saves {fmt_bytes(k.saves_bytes):>10s} at the peak ({change})")
        return "\n".join(lines)


# --------------------------------------------------------------------------- capacity


def device_capacity(device: str) -> Optional[int]:
    """Memory a run may use on ``device``: the GPU's total memory, or this machine's available RAM."""
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return None
        index = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
        return int(torch.cuda.get_device_properties(index).total_memory)
    avail = available_ram()
    return avail if avail is not None else total_ram()


# --------------------------------------------------------------------------- the estimate


def _dtype(recipe, info: ModelInfo) -> str:
    d = recipe.model.dtype
    return info.checkpoint_dtype if d == "auto" else d


def _block_activations(info: ModelInfo, tokens: int, act_bytes: int, training: bool) -> int:
    """Bytes one transformer block keeps for backward (training) or holds at once (inference)."""
    h, i = info.hidden_size, info.intermediate_size
    kv = h * info.n_kv_heads // max(1, info.n_heads)
    if training:
        # saved for backward: norm in/out, q, k, v, attention out (+ its log-sum-exp), o_proj in,
        # residual, post-norm; gate, up, act(gate), act(gate) * up (down_proj's input)
        per_token = 6 * h + 2 * kv + 4 * i
        return tokens * per_token * act_bytes
    # inference: the residual, one projection's output and the MLP's widest intermediates
    return tokens * (3 * h + 2 * kv + 3 * i) * act_bytes


def _linear_stats(recipe, info: ModelInfo):
    """(quantized weight params, static activation quantizers, largest quantized weight, plans)."""
    r = recipe
    scheme = schemes.get(r.quant.scheme, r.quant.weight, r.quant.activation)
    plans, _ = plan_layers(info.model, scheme, r.quant.include, r.quant.exclude, r.quant.default_exclusions,
                           [o if isinstance(o, dict) else o.__dict__ for o in r.quant.overrides])
    q_params = sum(p.in_features * p.out_features for p in plans if p.weight)
    largest = max((p.in_features * p.out_features for p in plans if p.weight), default=0)
    n_act = sum(1 for p in plans if p.activation)
    return q_params, n_act, largest, plans


def _block_params(info: ModelInfo) -> tuple:
    """(parameters of the largest transformer block, of all blocks together); (0, 0) without a block stack."""
    _, stack = find_blocks(info.model, nn.Linear)
    if stack is None:
        return 0, 0
    sizes = [sum(p.numel() for p in block.parameters()) for block in stack]
    return max(sizes), sum(sizes)


# layers that read an attention's output, not the normed input their siblings share
_OUTPUT_PROJECTIONS = ("o_proj", "out_proj", "wo", "c_proj", "dense")


def _input_groups(info: ModelInfo, names: set) -> List[Dict[tuple, List[nn.Linear]]]:
    """Per transformer block, the Linears named in ``names`` grouped by the input they read: layers of
    one parent with one input width read the same tensor (q / k / v, gate / up), an output projection
    its own. Keys are (parent, in_features, tag)."""
    prefix, stack = find_blocks(info.model, nn.Linear)
    out = []
    for i, block in enumerate(stack or []):
        name = f"{prefix}.{i}" if prefix else str(i)
        groups: Dict[tuple, List[nn.Linear]] = {}
        for sub, m in block.named_modules():
            if not isinstance(m, nn.Linear) or f"{name}.{sub}" not in names:
                continue
            parent, _, leaf = sub.rpartition(".")
            groups.setdefault((parent, m.in_features, leaf if leaf in _OUTPUT_PROJECTIONS else ""), []).append(m)
        out.append(groups)
    return out


def _gptq_block_bytes(info: ModelInfo, plans) -> tuple:
    """GPTQ's working memory for its largest block, in fp32: (Hessians of the block, the temporaries of
    its largest layer group). Layers reading one input share a Hessian and are rounded as one stacked
    matrix."""
    hessians = temporaries = 0
    for groups in _input_groups(info, {p.name for p in plans if p.weight}):
        h = sum(4 * k[1] * k[1] for k in groups)
        # one group at a time: the stacked weight (fp32 copies, the working copy, the result, a
        # round-to-nearest reference) and the damped Hessian, its Cholesky factor and inverse
        t = max((4 * (4 * sum(m.out_features for m in ms) * k[1] + 4 * k[1] * k[1]) for k, ms in groups.items()),
                default=0)
        hessians, temporaries = max(hessians, h), max(temporaries, t)
    return hessians, temporaries


def _quantized_inputs(info: ModelInfo, plans) -> tuple:
    """Elements per token of the activations that are fake-quantized: (largest block's, all blocks'
    together, the widest single input). Layers reading one tensor share one fake quant."""
    groups = _input_groups(info, {p.name for p in plans if p.activation})
    per_block = [sum(k[1] for k in g) for g in groups]
    widest = max((p.in_features for p in plans if p.activation), default=0)
    return max(per_block, default=0), sum(per_block), widest


def estimate(recipe, info: ModelInfo, capacity: Optional[Dict[str, Optional[int]]] = None,
             device: Optional[str] = None, sequential: Optional[str] = None) -> MemoryPlan:
    """The memory plan of ``recipe`` for the model described by ``info`` (no knobs).

    ``device`` plans for that device instead of the recipe's (resolved on this machine);
    ``capacity`` ({device: bytes}) instead of this machine's memory. ``sequential``: calibration
    goes one block on the device at a time (engine.calib.sequential), the model loaded into CPU
    memory, and the stages after it run on this device (the run's, or the CPU when the whole
    model does not fit there); None = whole-model calibration on the device."""
    r = recipe
    dev = device or str(resolve_device(r.device))
    run_dev = dev
    dev_type = dev.split(":")[0]
    dtype = _dtype(r, info)
    b = DTYPE_BYTES.get(dtype, 4)
    n_params = info.n_params
    weights = n_params * b
    v, h = max(1, info.vocab_size), info.hidden_size
    nb = max(1, info.n_blocks)
    seq = r.data.seq_len
    t_eval = r.data.batch_size * seq
    q_params, n_act, largest_q, plans = _linear_stats(r, info)
    act_block, act_all, act_widest = _quantized_inputs(info, plans)
    fused = fused_kernels()
    # on CUDA the forward runs under bf16 autocast; on the CPU in the model's dtype
    act_b = 2 if dev_type == "cuda" else b
    runtime = CPU_RUNTIME_BYTES if dev_type == "cpu" else 0
    stages: List[StagePlan] = []
    # GPTQ rewrites the student's weights: the run keeps the originals of the layers it rounds (in CPU
    # memory, from GPTQ to the end) to rebuild the original model as reference and teacher
    gptq = "gptq" in r.calibration.algorithm.split("+")
    kept = q_params * b if gptq else 0

    def base(name: str, where: Optional[str] = None, originals: bool = True) -> StagePlan:
        s = StagePlan(name, where or dev)
        if s.device == "cpu":
            s.add("runtime (Python, torch, transformers)", CPU_RUNTIME_BYTES, device="cpu")
        s.add(f"student weights ({dtype})", weights)
        if kept and originals:
            s.add(f"original weights of the GPTQ-rounded layers ({dtype})", kept, device="cpu",
                  note="the reference and teacher are rebuilt from them")
        return s

    # load: the weights in place, plus the checkpoint's pages mapped while they are copied in
    # (transformers builds the model on the meta device and copies each tensor from the memory-mapped
    # safetensors file into place, converting its dtype: the file's pages are not kept)
    s = base("load", "cpu" if sequential else dev, originals=False)
    stages.append(s)

    def fake_quant_work(s: StagePlan, tokens: int) -> None:
        """The fake quant of the widest quantized input of one forward: its output, and with the eager
        kernels (LOWBIT_COMPILE=0) about six float32 temporaries of the whole tensor."""
        if act_widest:
            s.add("activation fake quant (widest input)", tokens * act_widest * (act_b if fused else 6 * 4),
                  note="fused kernel: its output only" if fused else "eager kernels: float32 temporaries")

    def block_by_block(name: str, one_block_on_device: bool) -> StagePlan:
        """A stage that runs the blocks one after another on the calibration batches' hidden states
        (GPTQ; calibration under ``sequential``, which keeps the weights in CPU memory and moves one
        block at a time to the device)."""
        s = StagePlan(name, dev)
        s.add("runtime (Python, torch, transformers)", CPU_RUNTIME_BYTES, device="cpu")
        if one_block_on_device:
            s.add(f"student weights ({dtype}, in CPU memory)", weights, device="cpu")
            block, in_blocks = _block_params(info)
            if dev != "cpu":
                s.add("weights outside the blocks (embeddings, final norm, head)", (n_params - in_blocks) * b)
                s.add("one block's weights", block * b, note=f"{nb} blocks, one on the device at a time")
        else:
            s.add(f"student weights ({dtype})", weights)
        if kept:
            s.add(f"original weights of the GPTQ-rounded layers ({dtype})", kept, device="cpu")
        s.add("hidden states of the calibration batches", 2 * r.data.calib_batches * t_eval * h * act_b,
              note=f"{r.data.calib_batches} batches, a block's inputs and outputs")
        s.add("forward activations (one block)", _block_activations(info, t_eval, act_b, training=False))
        return s

    if gptq:
        # the block's Hessians while it runs, then one layer group's rounding at a time
        hess, temps = _gptq_block_bytes(info, plans)
        s = block_by_block("gptq", bool(sequential))
        s.add("Hessians of one block (fp32)", hess, note="layers reading one input share one")
        s.add("rounding one layer group (fp32 weights, Hessian inverse)", temps)
        stages.append(s)

    stats = n_act * (4 << 20 if r.calibration.method == "percentile" else 64)
    if sequential:
        s = block_by_block("calibrate", True)
        s.add("weight calibration temporaries (largest layer)", largest_q * 4 * 3, device="cpu",
              note=f"{r.calibration.method} on fp32 copies, where the weights are")
        s.add("calibration statistics", stats)
        fake_quant_work(s, t_eval)
        stages.append(s)
        dev = sequential  # the stages after calibration
        dev_type = dev.split(":")[0]
        act_b = 2 if dev_type == "cuda" else b
        runtime = CPU_RUNTIME_BYTES if dev_type == "cpu" else 0
    else:
        # calibrate: no-grad forwards of one batch; weight scales one layer at a time
        s = base("calibrate")
        s.add("forward activations (one block at a time)", _block_activations(info, t_eval, act_b, training=False))
        s.add("output logits of one batch", t_eval * v * act_b)
        s.add("weight calibration temporaries (largest layer)", largest_q * 4 * 3,
              note=f"{r.calibration.method} on fp32 copies")
        s.add("calibration statistics", stats)
        fake_quant_work(s, t_eval)
        stages.append(s)

    # evaluate: original and quantized logits of one batch and their fp32 log-softmaxes
    s = base("evaluate")
    if gptq:
        s.add(f"reference: the original model rebuilt ({dtype})", weights, note="GPTQ rewrote the student's weights")
    s.add("forward activations (one block at a time)", _block_activations(info, t_eval, act_b, training=False))
    s.add("logits: original + quantized, fp32 log-probs", t_eval * v * (2 * act_b + 5 * 4),
          note="whole-vocabulary metrics of one batch")
    fake_quant_work(s, t_eval)
    stages.append(s)

    if r.mode in ("qat", "qad"):
        t = r.train
        micro = (t.batch_size or r.data.batch_size) * seq
        s = base("train")
        trainable = n_params
        low = b < 4
        masters = trainable * 4 if (low and getattr(t, "master_weights", True)) else 0
        t_dev = dev if not t.teacher_device else (
            "cpu" if t.teacher_device == "cpu" else (t.teacher_device if device else str(resolve_device(t.teacher_device))))
        # the run keeps a frozen copy of the original: the QAD teacher, and the evaluation reference in both modes
        s.add(f"teacher / reference weights ({dtype}, frozen)", weights, device=t_dev)
        s.add("fp32 master weights", masters, note="bf16/fp16 student: AdamW updates fp32 copies")
        s.add("AdamW moments (fp32)", trainable * 8)
        # the step's peak: the masters' fp32 gradients; the backward's: low-precision gradients plus what
        # the forward saved. Both are counted as the larger of the two.
        largest = max((p.numel() for p in info.model.parameters()), default=0)
        # the step: the masters' fp32 gradients and AdamW's temporaries for the largest tensor
        grads_step = trainable * 4 + 2 * largest * 4
        saved_fq = q_params * b  # each QuantLinear saves its fake-quantized weight for backward
        if t.gradient_checkpointing:
            acts = nb * micro * h * act_b + _block_activations(info, micro, act_b, training=True)
            act_note = "gradient checkpointing: block inputs + one block recomputed"
        else:
            acts = nb * _block_activations(info, micro, act_b, training=True)
            act_note = "every block's saved tensors"
        # each fake-quantized input is saved for the matmul's backward (its producer keeps the original
        # where its own backward needs it) with its STE mask (one byte per element)
        saved_act = (act_block if t.gradient_checkpointing else act_all) * micro * (act_b + 1)
        chunk = auto_chunk_tokens(v)
        loss = micro * h * 4 + 5 * min(chunk, micro) * v * 4 + v * h * 4
        forward_peak = trainable * b + saved_fq + saved_act + acts + loss
        if grads_step >= forward_peak:
            s.add("gradients (fp32) + AdamW temporaries at the step", grads_step)
        else:
            s.add(f"gradients ({dtype}) in backward", trainable * b)
            s.add("fake-quantized weights saved for backward", saved_fq)
            s.add(f"activations (micro-batch of {micro} tokens)", acts, note=act_note)
            if saved_act:
                s.add("fake-quantized inputs and STE masks saved for backward", saved_act,
                      note="one per tensor the quantized layers read")
            fake_quant_work(s, micro)
            s.add("chunked vocabulary loss buffers", loss,
                  note=f"{min(chunk, micro)} tokens per chunk, never the whole logits")
        stages.append(s)
        # the final evaluation: the teacher is the reference; optimizer state and masters are freed
        s = base("evaluate final")
        s.add(f"reference weights ({dtype}, the frozen original)", weights, device=t_dev)
        s.add("forward activations (one block at a time)", _block_activations(info, t_eval, act_b, training=False))
        s.add("logits: original + quantized, fp32 log-probs", t_eval * v * (2 * act_b + 5 * 4))
        fake_quant_work(s, t_eval)
        stages.append(s)

    # save + export: the student written shard by shard (engine.statefile); an export packs and verifies layer by layer
    s = base("save")
    student_shard = min(weights, r.export.max_shard_mb * (1 << 20))
    if dev_type != "cpu":
        s.add("one shard of the student copied to the CPU", student_shard, device="cpu")
    s.add("serialisation buffer (one safetensors shard)", student_shard, device="cpu",
          note=f"student.safetensors written shard by shard (export.max_shard_mb {r.export.max_shard_mb})")
    stages.append(s)
    if r.export.format:
        s = base("export")
        packed = q_params * 0.6 + (n_params - q_params) * b
        shard = min(packed, r.export.max_shard_mb * (1 << 20))
        s.add("one export shard and its write buffer", 2 * shard, device="cpu",
              note=f"written shard by shard (export.max_shard_mb {r.export.max_shard_mb})")
        s.add("verification: reloaded export", weights)
        stages.append(s)

    cap = dict(capacity) if capacity is not None else {}
    for st in stages:
        for d in st.per_device():
            if d not in cap:
                cap[d] = device_capacity(d)
    model = {"name": info.name, "architecture": info.architecture, "n_params": n_params, "dtype": dtype,
             "vocab_size": v, "hidden_size": h, "blocks": nb, "quantized_params": q_params, "mode": r.mode,
             "device": run_dev, "layers_quantized": sum(1 for p in plans if p.quantized),
             "sequential_calibration": bool(sequential), "after_calibration": dev}
    return MemoryPlan(model, stages, cap)


def _with(recipe, **changes):
    r = copy.deepcopy(recipe)
    for key, value in changes.items():
        section, _, name = key.partition(".")
        obj = getattr(r, section)
        object.__setattr__(obj, name, value)
    return r


def sequential_placement(recipe, info: ModelInfo, whole: MemoryPlan) -> Optional[str]:
    """Where the stages after calibration run when calibration goes one block at a time
    (``calibration.sequential``); None = whole-model calibration.

    true: on the run's device when the whole model fits there by ``whole`` (the whole-model
    plan), else on the CPU; auto: only for PTQ on an accelerator the whole model does not fit
    while the sequential plan (the rest of the run on the CPU) fits; never for QAT / QAD, whose
    training would then run on the CPU; false: never."""
    setting = recipe.calibration.sequential
    if setting is False:
        return None
    dev = whole.model["device"]
    fits_device = not any(d == dev for _, d, _, _ in whole.over())
    if setting is True:
        return dev if fits_device else "cpu"
    if recipe.mode != "ptq" or dev == "cpu" or fits_device or _block_params(info)[0] == 0:
        return None
    seq = estimate(recipe, info, capacity=whole.capacity, device=dev, sequential="cpu")
    return "cpu" if seq.fits else None


def _placed(recipe, info: ModelInfo, capacity, device) -> MemoryPlan:
    """The plan with calibration whole or sequential, as ``calibration.sequential`` resolves."""
    whole = estimate(recipe, info, capacity=capacity, device=device)
    after = sequential_placement(recipe, info, whole)
    return whole if after is None else estimate(recipe, info, capacity=whole.capacity, device=device, sequential=after)


def knobs(recipe, info: ModelInfo, base: MemoryPlan) -> List[Knob]:
    """Each memory-saving change of the recipe and what it saves at the run's peak on the student's device."""
    r = recipe
    dev = base.model["device"]
    peak = base.peak_per_device().get(dev, 0)
    options = []
    if r.mode in ("qat", "qad"):
        if r.mode == "qad" and not (r.train.teacher_device or "").startswith("cpu") and dev.startswith("cuda"):
            options.append(("teacher on the CPU", {"train.teacher_device": "cpu"}))
        if not r.train.gradient_checkpointing:
            options.append(("gradient checkpointing", {"train.gradient_checkpointing": True}))
        bs = r.train.batch_size or r.data.batch_size
        if bs > 1:
            options.append((f"micro-batch {bs // 2} x {r.train.grad_accum * 2} accumulation",
                            {"train.batch_size": bs // 2, "train.grad_accum": r.train.grad_accum * 2}))
    if _dtype(r, info) == "float32":
        options.append(("weights in bf16 (fp32 masters kept)", {"model.dtype": "bfloat16"}))
    if r.data.batch_size > 1:
        options.append((f"calibration / evaluation batch {r.data.batch_size // 2}",
                        {"data.batch_size": r.data.batch_size // 2}))
    if r.calibration.sequential is False and dev != "cpu" and r.mode == "ptq":
        options.append(("sequential calibration (one block on the device)", {"calibration.sequential": True}))
    out = []
    for name, change in options:
        p = _placed(_with(r, **change), info, base.capacity, dev)
        new = p.peak_per_device().get(dev, 0)
        if new < peak and ("calibration.sequential" not in change or p.fits):
            out.append(Knob(name, change, peak - new, new))
    out.sort(key=lambda k: -k.saves_bytes)
    return out


def plan_recipe(recipe, info: Optional[ModelInfo] = None, device: Optional[str] = None,
                capacity: Optional[Dict[str, Optional[int]]] = None) -> MemoryPlan:
    """The memory plan of a recipe with its knobs; reads the model's config and headers only."""
    if info is None:
        info = inspect_model(recipe.model.path, kind=recipe.model.kind, trust_remote_code=recipe.model.trust_remote_code)
    p = _placed(recipe, info, capacity, device)
    p.knobs = knobs(recipe, info, p)
    return p


def check_fits(plan: MemoryPlan) -> None:
    """Refuse a run that cannot fit, naming the stage, the shortfall and the changes that make it fit."""
    bad = plan.over()
    if not bad:
        return
    stage, dev, need, cap = max(bad, key=lambda b: b[2] - b[3])
    fixes = []
    for k in plan.knobs:
        if k.new_peak_bytes <= cap * HEADROOM:
            fixes.append(", ".join(f"{key}: {v}" for key, v in k.change.items()))
    combo = ""
    if not fixes and plan.knobs:
        combo = "; even every knob together may not be enough: " + "; ".join(
            ", ".join(f"{key}: {v}" for key, v in k.change.items()) for k in plan.knobs)
    hint = f"set {' or '.join(fixes[:3])}" if fixes else ("use a machine with more memory" + combo)
    raise LowbitError(f"this run does not fit: stage '{stage}' needs about {fmt_bytes(need)} on {dev}, which has "
                      f"{fmt_bytes(cap)}; {hint} (see `lowbit plan RECIPE`)")


# --------------------------------------------------------------------------- in a run

# which planned stage each of a run's measured stages belongs to
RUN_STAGES = {"load": "load", "gptq": "gptq", "calibrate weights": "calibrate", "calibrate": "calibrate",
              "evaluate ptq": "evaluate", "evaluate final": "evaluate final", "train": "train", "export": "export"}


def plan_stage(ctx) -> None:
    """Plan the run's memory before anything is loaded: report["memory"]["plan"], a log line per
    stage, and (with the recipe's memory_check) a refusal when a stage cannot fit its device."""
    r = ctx.recipe
    if ctx.dist.active and r.calibration.sequential is True:
        raise LowbitError("calibration.sequential runs in one process (each rank would hold the whole model in "
                          "CPU memory): run it without torchrun, or set calibration.sequential: auto")
    try:
        plan = plan_recipe(r, device=str(ctx.device))
    except LowbitError:
        raise
    except Exception as exc:  # an architecture the meta device cannot build: the run goes on unplanned
        ctx.log(f"no memory plan for this model ({type(exc).__name__}: {exc}); the run is not checked "
                "against the device's memory", "warning")
        ctx.sequential = ctx.device if r.calibration.sequential is True else None
        return
    if plan.model["sequential_calibration"] and not ctx.dist.active:
        ctx.sequential = torch.device(plan.model["after_calibration"])
        ctx.log(f"calibration one block at a time on {ctx.device}, the weights in CPU memory "
                f"(calibration.sequential {r.calibration.sequential}); the stages after it run on {ctx.sequential}")
    ctx.report.setdefault("memory", {})["plan"] = plan.to_dict()
    ctx.log("memory plan: " + ", ".join(f"{s.name} {fmt_bytes(s.peak_bytes)}" for s in plan.stages)
            + f"; device has {fmt_bytes(plan.capacity.get(plan.model['device']))}")
    if getattr(r, "memory_check", True) and ctx.dist.world_size == 1:
        check_fits(plan)
