"""What a recipe holds: its sections and keys, their defaults, limits and meanings.

Adding a key is adding one field here, with its kind (how it is checked) and its
doc (shown in help texts and the window's tooltips); reading, writing, overrides
and the key listing pick it up from the field.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Dict, Mapping, Optional, Tuple, Union

from ..errors import RecipeError
from . import text
from .kinds import (_BoolOrAuto, _FloatOrAuto, CUSTOM_SCHEME, NO_FORMAT, SCHEMA_VERSION, _Bool, _build, _Choice,
                    _Device, _dump, _Float, _FormatName, _Int, _List, _Nested, _opt, _required, _SchemeName, _section,
                    _Section, _settable_keys, _show, _Str, _unknown_key, _Version, register_root)


@dataclass(frozen=True, kw_only=True)
class ModelSection(_Section):
    _key: ClassVar[str] = "model"

    path: str = _required(_Str(), "the model: a folder, a Hugging Face hub id, or 'demo'")
    kind: str = _opt("auto", _Choice("auto", "causal-lm", "encoder"),
                     "the model's head; auto reads it from the model's config")
    dtype: str = _opt("float32", _Choice("auto", "float32", "bfloat16", "float16"),
                      "the high-precision dtype the model is loaded in")
    trust_remote_code: bool = _opt(False, _Bool(),
                                   "run Python code shipped with the model (only for models you trust)")


@dataclass(frozen=True, kw_only=True)
class DataSection(_Section):
    _key: ClassVar[str] = "data"

    path: Optional[str] = _opt(None, _Str(optional=True),
                               "text for calibration and training (file or folder); null only for the demo model")
    eval_path: Optional[str] = _opt(None, _Str(optional=True),
                                    "held-out text for evaluation; null = split eval_fraction off data.path")
    text_field: str = _opt("text", _Str(), "the field that holds the text in JSON lines data")
    seq_len: int = _opt(256, _Int(ge=8), "tokens per sample")
    batch_size: int = _opt(4, _Int(ge=1), "samples per batch")
    calib_batches: int = _opt(16, _Int(ge=1), "batches calibration sees")
    eval_batches: int = _opt(8, _Int(ge=1), "batches each evaluation sees")
    eval_fraction: float = _opt(0.1, _Float(gt=0, le=0.5),
                                "share of data.path held out for evaluation when eval_path is null")
    samples: str = _opt("auto", _Choice("auto", "packed", "lines"),
                        "how text becomes samples: 'lines' = one per non-blank line or JSON record, with the "
                        "tokenizer's special tokens, padded per batch with an attention mask (how encoders are "
                        "used); 'packed' = running text cut into seq_len blocks (BOS at document starts where "
                        "the tokenizer adds one); auto = lines for encoders, packed for causal LMs")


@dataclass(frozen=True, kw_only=True)
class Override(_Section):
    """Different formats for the layers whose names match ``pattern``."""

    _key: ClassVar[str] = "quant.overrides[]"

    pattern: str = _required(_Str(), "layer names this applies to (fnmatch wildcards)")
    weight: Optional[str] = _opt(None, _FormatName(optional=True),
                                 "weight format for these layers; null = the scheme's, 'none' = keep")
    activation: Optional[str] = _opt(None, _FormatName(optional=True),
                                     "input activation format for these layers; null = the scheme's, 'none' = keep")


@dataclass(frozen=True, kw_only=True)
class QuantSection(_Section):
    _key: ClassVar[str] = "quant"

    scheme: str = _opt("W4A16-INT4", _SchemeName(),
                       "a named scheme (see engine.quant.schemes) or 'custom'")
    weight: Optional[str] = _opt(None, _FormatName(optional=True),
                                 "weight format instead of the scheme's; 'none' = keep weights")
    activation: Optional[str] = _opt(None, _FormatName(optional=True),
                                     "input activation format instead of the scheme's; 'none' = keep activations")
    include: Tuple[str, ...] = _opt(("*",), _List(_Str(), "strings", min_len=1),
                                    "layer name patterns to quantize (fnmatch wildcards)")
    exclude: Tuple[str, ...] = _opt((), _List(_Str(), "strings"), "layer name patterns to leave alone")
    default_exclusions: bool = _opt(True, _Bool(),
                                    "also leave the usual sensitive layers alone (lm_head, routers, norms)")
    overrides: Tuple[Override, ...] = _opt((), _List(_Nested(Override), "overrides"),
                                           "formats for the layers matching a pattern, instead of the scheme's")

    def resolve(self):
        """The :class:`engine.quant.schemes.Scheme` this section selects."""
        from ..quant import schemes

        return schemes.get(self.scheme, self.weight, self.activation)


@dataclass(frozen=True, kw_only=True)
class CalibrationSection(_Section):
    _key: ClassVar[str] = "calibration"

    method: str = _opt("max", _Choice("max", "percentile", "mse"), "how static scales are chosen")
    percentile: float = _opt(99.99, _Float(gt=0, le=100), "the |x| percentile kept by method 'percentile'")
    mse_grid: int = _opt(20, _Int(ge=2), "candidate scales tried by method 'mse'")
    mse_min_ratio: float = _opt(0.5, _Float(gt=0, lt=1),
                                "the smallest candidate of method 'mse', as a fraction of the max")
    algorithm: str = _opt("rtn", _Choice("rtn", "gptq", "awq", "smoothquant", "awq+gptq", "smoothquant+gptq"),
                          "PTQ algorithm before the scales are set: rtn = round to nearest; gptq = second-order "
                          "error-compensating rounding, layer by layer; awq = activation-aware channel scales "
                          "folded into norms / linears; smoothquant = activation outliers moved into the weights "
                          "(W8A8 / W4A4); 'a+gptq' runs the scaling first")
    gptq_damp: float = _opt(0.01, _Float(gt=0, le=1), "GPTQ damping, a fraction of the mean Hessian diagonal")
    gptq_block_size: int = _opt(128, _Int(ge=1), "GPTQ columns updated eagerly before one lazy matrix update")
    gptq_act_order: bool = _opt(False, _Bool(), "GPTQ rounds the columns with the largest activations first")
    gptq_scale_search: Any = _opt("auto", _BoolOrAuto(),
                                  "GPTQ picks each group's scale by a search: calibration.mse_grid clipping ratios of "
                                  "the group's max from calibration.mse_min_ratio to 1, keeping the least squared "
                                  "rounding error weighted by the Hessian diagonal (formats with stored scales); auto "
                                  "= on for weight formats of 2 bits or fewer, off otherwise: on 512 held-out blocks "
                                  "of the demo Llama it lowered W2A16-INT2's perplexity (1.133x -> 1.087x of the "
                                  "original) but raised it at 3 and 4 bits (W4A16-INT4 1.0016x -> 1.0027x) for the "
                                  "same KL")
    awq_grid: int = _opt(20, _Int(ge=2), "AWQ scale exponents tried between 0 and 1")
    awq_unfoldable: str = _opt("auto", _Choice("auto", "explicit", "skip"),
                               "AWQ layer groups whose scale no norm or linear can absorb (BERT's FFN down "
                               "projection after GELU, post-LN blocks): explicit = searched and kept as the layers' "
                               "own input multiplier (dense exports fold it into weight-only layers' weights; modelopt "
                               "writes it as pre_quant_scale in W4A16_AWQ / NVFP4_AWQ; compressed-tensors refuses "
                               "it); skip = left unscaled; auto = explicit where the export can carry it on every "
                               "quantized layer, else skip")
    smoothquant_alpha: Any = _opt("auto", _FloatOrAuto(ge=0, le=1),
                                  "SmoothQuant migration strength in [0, 1]; 'auto' searches 0.3 .. 0.8 per layer group")
    sequential: Any = _opt("auto", _BoolOrAuto(),
                           "calibrate (and GPTQ) one transformer block on the device at a time, the weights kept in CPU memory "
                           "(for a model larger than the GPU); auto = in PTQ runs, when the memory plan says the whole "
                           "model does not fit the GPU but the run fits with the stages after calibration on the "
                           "CPU; on a CPU it changes nothing")


@dataclass(frozen=True, kw_only=True)
class TrainSection(_Section):
    _key: ClassVar[str] = "train"

    steps: int = _opt(200, _Int(ge=1), "optimizer steps")
    lr: Any = _opt(1e-4, _FloatOrAuto(gt=0),
                   "peak learning rate; 'auto' = probe train.lr_candidates for train.lr_probe_steps steps each on "
                   "a held-out slice of the training data and keep the best")
    lr_candidates: Tuple[float, ...] = _opt((1e-5, 3e-5, 1e-4, 3e-4, 1e-3), _List(_Float(gt=0), "numbers", min_len=1),
                                            "learning rates train.lr 'auto' tries")
    lr_probe_steps: int = _opt(20, _Int(ge=1), "steps per candidate of train.lr 'auto'")
    weight_decay: float = _opt(0.0, _Float(ge=0), "AdamW weight decay")
    warmup_steps: int = _opt(10, _Int(ge=0), "linear warm-up steps before the schedule")
    schedule: str = _opt("cosine", _Choice("cosine", "constant", "linear"), "learning-rate schedule after warm-up")
    batch_size: Optional[int] = _opt(None, _Int(ge=1, optional=True),
                                     "samples per step; null = the model kind's default: 32 sentences for "
                                     "encoders, data.batch_size blocks for causal LMs")
    grad_accum: int = _opt(1, _Int(ge=1), "micro-batches accumulated per step")
    grad_clip: float = _opt(1.0, _Float(ge=0), "gradient norm clip; 0 = off")
    eval_every: int = _opt(50, _Int(ge=0), "steps between evaluations; 0 = only at the end")
    checkpoint_every: int = _opt(100, _Int(ge=0), "steps between checkpoints; 0 = off")
    kd_temperature: float = _opt(1.0, _Float(gt=0), "softmax temperature of the distillation loss")
    kd_alpha: float = _opt(1.0, _Float(ge=0, le=1), "weight of distillation against the task loss (QAD)")
    kd_hidden_weight: float = _opt(0.0, _Float(ge=0), "weight of the hidden-state matching loss (QAD)")
    kd_alpha_final: Optional[float] = _opt(None, _Float(ge=0, le=1, optional=True),
                                           "anneal kd_alpha to this value over the run; null = constant kd_alpha")
    kd_anneal: str = _opt("linear", _Choice("linear", "cosine"), "how kd_alpha moves to kd_alpha_final")
    kd_hidden_layers: Tuple[int, ...] = _opt((), _List(_Int(), "integers"),
                                             "blocks the hidden-state loss aligns, from 1 (-1 = the last); "
                                             "empty = all")
    kd_embedding_weight: float = _opt(0.0, _Float(ge=0),
                                      "encoders: weight of 1 - cosine of the mean-pooled sentence embeddings "
                                      "(student vs original), next to the hidden-state MSE")
    scale_penalty: float = _opt(0.0, _Float(ge=0),
                                "weight of the penalty on learned scales growing above their calibrated value "
                                "(with learnable_scales)")
    dropout: str = _opt("auto", _Choice("auto", "on", "off"),
                        "the student's dropout and other train-only randomness; auto = off for QAD (the teacher "
                        "is deterministic, a noisy student chases the noise) and for QAT too (QAT starts from a "
                        "trained model; on the demo Llama, which has no dropout, on and off train alike, so "
                        "QAT's default follows QAD's until a model with dropout and a task head measures otherwise)")
    early_stop_patience: int = _opt(0, _Int(ge=0),
                                    "stop after this many evaluations in a row worse than PTQ (eval metric, or "
                                    "recent training loss above the first step's) and keep the best state; 0 = off")
    learnable_scales: bool = _opt(False, _Bool(), "train the calibrated scales too")
    gradient_checkpointing: bool = _opt(False, _Bool(), "recompute activations in backward to save memory")
    master_weights: bool = _opt(True, _Bool(),
                                "a bf16/fp16 student keeps fp32 master weights for AdamW (4 bytes per parameter), "
                                "so small updates are not rounded away")
    chunked_vocab_loss: bool = _opt(True, _Bool(), "one-process causal LMs: the LM head and loss a chunk of tokens "
                                    "at a time (same values, less memory); off = whole logits, as under torchrun")
    early_stop_perplexity: Optional[float] = _opt(None, _Float(gt=0, optional=True),
                                                  "stop once evaluation perplexity is at or below this")
    teacher_device: Optional[str] = _opt(None, _Device(optional=True), "device of the QAD teacher; null = the student's")


@dataclass(frozen=True, kw_only=True)
class ExportSection(_Section):
    _key: ClassVar[str] = "export"

    format: Optional[str] = _opt(None, _Choice("compressed-tensors", "modelopt", "dense", optional=True),
                                 "checkpoint format to write; null = no export")
    path: Optional[str] = _opt(None, _Str(optional=True), "export folder; null = <run dir>/export")
    verify: bool = _opt(True, _Bool(), "reload the export and compare it with the quantized model")
    max_shard_mb: int = _opt(2000, _Int(ge=1), "largest safetensors shard, in MB")


@dataclass(frozen=True, kw_only=True)
class AnalysisSection(_Section):
    _key: ClassVar[str] = "analysis"

    formats: Tuple[str, ...] = _opt((), _List(_FormatName(), "format names"),
                                    "formats to compare per layer after calibration; empty = skip")
    sensitivity: bool = _opt(False, _Bool(), "also measure each layer's model-level sensitivity (slow)")
    benchmark: bool = _opt(True, _Bool(), "time the model before and after (latency, tokens/s, memory)")


@dataclass(frozen=True, kw_only=True)
class DistributedSection(_Section):
    _key: ClassVar[str] = "distributed"

    strategy: str = _opt("fsdp2", _Choice("fsdp2", "ddp"), "how the student is spread over processes under torchrun")
    teacher: str = _opt("replicate", _Choice("replicate", "shard"), "the QAD teacher: a full copy per process, or sharded")


@register_root
@dataclass(frozen=True, kw_only=True)
class Recipe(_Section):
    """A whole run: model, data, quantization, calibration, mode, training, export.

    Build one with ``Recipe(model={"path": "demo"}, ...)`` (sections as instances
    or mappings), :meth:`from_dict` or :meth:`load`. It is checked on
    construction and immutable afterwards.
    """

    _key: ClassVar[str] = ""

    version: int = _opt(SCHEMA_VERSION, _Version(), "recipe schema version")
    model: ModelSection = _section(ModelSection, "the model to quantize (model.path is required)")
    data: DataSection = _section(DataSection, "calibration, training and evaluation text")
    quant: QuantSection = _section(QuantSection, "what gets quantized, and to which formats")
    calibration: CalibrationSection = _section(CalibrationSection, "how static scales are calibrated")
    mode: str = _opt("ptq", _Choice("ptq", "qat", "qad"),
                     "ptq: calibrate only; qat: then train on the task loss; qad: then distill from the original")
    train: TrainSection = _section(TrainSection, "training settings for qat and qad")
    export: ExportSection = _section(ExportSection, "the checkpoint written at the end")
    analysis: AnalysisSection = _section(AnalysisSection, "per-layer analysis and benchmarks of the run")
    distributed: DistributedSection = _section(DistributedSection, "settings used only under torchrun")
    seed: int = _opt(0, _Int(ge=0, le=2**32 - 1), "random seed (data order, sampling, initialisation)")
    device: str = _opt("auto", _Device(), "where the student runs; auto = cuda when present")
    memory_check: bool = _opt(True, _Bool(),
                              "refuse, before loading weights, a run whose memory plan does not fit the device "
                              "(see `lowbit plan`)")

    def __post_init__(self):
        super().__post_init__()
        self.validate()

    def validate(self) -> None:
        """Run the cross-field checks (see the module doc); raises RecipeError.

        Construction already calls this, after checking every field on its own;
        it is public so callers can state the intent where it matters.
        """
        q = self.quant
        if q.scheme == CUSTOM_SCHEME and q.weight in (None, NO_FORMAT) and q.activation in (None, NO_FORMAT):
            raise RecipeError(
                "quant.scheme is 'custom', so quant.weight or quant.activation must name a format"
            )
        try:
            scheme = q.resolve()
        except (KeyError, ValueError) as exc:  # both already checked field by field; kept as a guard
            raise RecipeError(f"quant: {exc.args[0] if exc.args else exc}") from None
        if scheme.weight is None and scheme.activation is None:
            raise RecipeError(
                f"quant: scheme {q.scheme!r} with quant.weight: {q.weight or 'null'} and quant.activation: "
                f"{q.activation or 'null'} keeps weights and activations in high precision; "
                "name a format for one of them"
            )
        for i, override in enumerate(q.overrides):
            if override.weight is None and override.activation is None:
                raise RecipeError(
                    f"quant.overrides[{i}] (pattern {override.pattern!r}) sets neither weight nor activation, "
                    "so it would change nothing; give it a format, or 'none' to keep that side"
                )
        if self.calibration.method == "mse" and scheme.weight is None:
            raise RecipeError(
                "calibration.method 'mse' searches the weights' scales, but the scheme quantizes no weights; "
                "use 'max' or 'percentile'"
            )

    # -- plain data ------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, require_version: bool = False) -> "Recipe":
        """Build a recipe from plain data (as read from YAML or JSON).

        ``require_version``: a missing ``version`` key is an error (files must
        say which schema they follow); otherwise it defaults to the current one.
        """
        if not isinstance(data, Mapping):
            raise RecipeError(f"a recipe must be a mapping of sections (model, data, quant, ...), got {_show(data)}")
        if "version" in data:
            _Version().parse(data["version"], "version")  # before unknown keys: a newer file may have new ones
        elif require_version:
            raise RecipeError(f"the recipe has no 'version' key; add 'version: {SCHEMA_VERSION}' at the top")
        return _build(cls, data, "")

    def to_dict(self) -> Dict[str, Any]:
        """Every field, version included, as plain JSON-able data."""
        return _dump(self)

    def with_updates(self, updates: Mapping[str, Any]) -> "Recipe":
        """A new, checked recipe with the dotted keys in ``updates`` changed.

        ``recipe.with_updates({"train.steps": 50, "quant.scheme": "W4A4-NVFP4"})``.
        Keys name single fields (``mode``, ``data.seq_len``, ``quant.overrides``);
        values are plain data as in a recipe file.
        """
        if not isinstance(updates, Mapping):
            raise RecipeError(f"updates must map dotted keys to values, got {_show(updates)}")
        tree = self.to_dict()
        keys = _settable_keys()
        for key, value in updates.items():
            if key not in keys:
                raise _unknown_key(str(key), keys)
            section, _, name = key.rpartition(".")
            (tree[section] if section else tree)[name] = value
        return Recipe.from_dict(tree)

    # -- text and files ----------------------------------------------------------------

    def to_yaml(self) -> str:
        return text.dump_yaml(self.to_dict())

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_yaml(cls, yaml_text: str, *, source: str = "<yaml>", require_version: bool = True) -> "Recipe":
        """Parse recipe text (YAML, which also reads JSON); errors start with ``source``."""
        return cls._from_text(yaml_text, "yaml", source, require_version)

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "Recipe":
        """Read a ``.yaml`` / ``.yml`` / ``.json`` recipe file; it must carry a ``version``."""
        body, syntax, source = text.read_file(path)
        return cls._from_text(body, syntax, source, True)

    @classmethod
    def _from_text(cls, body: str, syntax: str, source: str, require_version: bool) -> "Recipe":
        tree = text.read_text(body, syntax, source)
        try:
            return cls.from_dict(tree, require_version=require_version)
        except RecipeError as exc:
            raise RecipeError(f"{source}: {exc}") from None

    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Write the recipe as YAML or JSON (by suffix), atomically (see :func:`text.write_file`)."""
        body = self.to_json() if text.file_syntax(path) == "json" else self.to_yaml()
        return text.write_file(path, body)
