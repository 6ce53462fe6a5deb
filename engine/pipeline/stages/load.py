"""Stage: load the checkpoint and the text."""

from __future__ import annotations

from ...errors import LowbitError
from ...io.samples import sample_mode, splits_for
from ...io.demo import resolve_data_paths
from ...io.model import describe_model, load_model
from ..context import RunContext


def load_stage(ctx: RunContext) -> None:
    """Load the model and tokenize the data: ``ctx.loaded``, ``ctx.splits``, report["model"] and ["data"]."""
    r = ctx.recipe
    with ctx.stage("load", detail=str(r.model.path)):
        # sequential calibration: the weights stay in CPU memory, one block goes to the device at a time
        home = "cpu" if ctx.sequential is not None else str(ctx.device)
        ctx.loaded = load_model(r.model.path, kind=r.model.kind, dtype=r.model.dtype, device=home,
                                trust_remote_code=r.model.trust_remote_code)
        info = describe_model(ctx.loaded)
        ctx.report["model"] = {k: info[k] for k in ("name", "architecture", "kind", "n_params", "dtype")}
        ctx.log(f"model {info['name']}: {info['architecture']}, {info['n_params']:,} parameters, "
                f"{len(info['layers'])} linear layers")
        data_path, eval_path = resolve_data_paths(r)
        if data_path is None:
            raise LowbitError("the recipe has no data.path: choose a text file, a folder of .txt files or a .jsonl file")
        samples = sample_mode(r.data.samples, ctx.loaded.kind)
        ctx.splits = splits_for(ctx.loaded.tokenizer, ctx.loaded.kind, data_path, r.data.seq_len, samples,
                                eval_path=eval_path, text_field=r.data.text_field,
                                eval_fraction=r.data.eval_fraction, seed=r.seed)
        ctx.report["data"] = {"path": str(data_path), "eval_path": eval_path, "seq_len": r.data.seq_len,
                              "samples": samples,
                              "calib_blocks": int(ctx.splits.calib.shape[0]),
                              "eval_blocks": int(ctx.splits.eval.shape[0])}
        unit = ("sentences (one per line, padded per batch, at most " if samples == "lines" else "blocks (")
        ctx.log(f"data: {ctx.splits.calib.shape[0]} {unit.split(' ')[0]} for calibration/training, "
                f"{ctx.splits.eval.shape[0]} for evaluation; {unit}{r.data.seq_len} tokens each)")
