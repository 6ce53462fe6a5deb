"""Reliability: bad inputs, faults and interruptions give a clean message and never lose work.

One test (or a small group) per bullet of the reliability issue. Each failing case
asserts that the message names the problem, and that every file which existed
before (model folder, data, recipe, run folder, previous export or checkpoint) is
byte-for-byte unchanged afterwards (sha256 before/after).

Already covered elsewhere, referenced rather than duplicated:

- every bad-checkpoint message in detail: tests/engine/test_io.py (test_missing_config,
  test_truncated_safetensors, test_corrupt_safetensors_header, test_pickle_only_checkpoint_loads_with_weights_only,
  test_malicious_pickle_is_refused, test_unknown_model_type, test_auto_map_needs_explicit_trust,
  test_non_finite_weights, test_model_without_linear_layers); here the same faults go through
  ``engine.pipeline.run`` (the path the CLI and the GUI take) and the folders are hashed.
- data messages in detail: tests/engine/test_data.py (test_empty_file, test_text_shorter_than_one_block,
  test_binary_file, test_non_utf8_file, test_jsonl_missing_field_reports_line_and_fields).
- recipe parsing (unknown keys, wrong types, out-of-range values) and its hypothesis fuzzing:
  tests/engine/test_recipe.py (test_unknown_key_*, the @given tests at the end of the file).
- the process killed mid-run (SIGKILL after a checkpoint) resumes to bit-identical weights:
  tests/e2e/test_resume.py::test_killed_run_resumes_to_identical_weights.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import json
import os
import struct
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from engine.errors import DataError, ExportError, LowbitError, ModelLoadError, RecipeError
from engine.events import Log, RunFailed
from engine.recipe import Recipe
from engine.pipeline import run


@pytest.fixture(autouse=True)
def _eager(monkeypatch):
    monkeypatch.setenv("LOWBIT_COMPILE", "0")  # torch.compile costs seconds per shape


# --------------------------------------------------------------------------- helpers


def hashes(*paths: Path) -> dict:
    """sha256 of every file under ``paths`` (files or folders), keyed by path."""
    out = {}
    for root in paths:
        root = Path(root)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def recipe(model_dir, data, **updates) -> Recipe:
    r = Recipe.from_dict({
        "model": {"path": str(model_dir)},
        "data": {"path": str(data), "seq_len": 32, "batch_size": 2, "calib_batches": 1, "eval_batches": 1},
        "quant": {"scheme": "W4A16-INT4"},
        "analysis": {"benchmark": False},
        "device": "cpu",
    }, require_version=False)
    return r.with_updates(updates) if updates else r


def run_fails(r: Recipe, run_dir: Path, error=LowbitError) -> str:
    """Run ``r``; it must fail with ``error``, leave report.json saying so, and emit RunFailed."""
    events = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(error) as info:
            run(r, sink=events.append, run_dir=run_dir)
    message = str(info.value)
    report = json.loads((run_dir / "report.json").read_text())
    assert report["status"] == "failed" and report["error"] == message
    failed = [e for e in events if isinstance(e, RunFailed)]
    assert len(failed) == 1 and failed[0].error == message
    assert "Traceback" not in message
    return message


def copy_model(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


# --------------------------------------------------------------------------- bad checkpoints


def _no_config(folder: Path) -> None:
    (folder / "config.json").unlink()


def _truncated(folder: Path) -> None:
    w = folder / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])


def _corrupt_header(folder: Path) -> None:
    w = folder / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[8:40] = b"#" * 32
    w.write_bytes(bytes(data))


class _Payload:
    def __reduce__(self):  # unpickling would run code: must be refused
        return (os.system, ("touch /tmp/lowbit-pickle-payload-ran",))


def _evil_pickle(folder: Path) -> None:
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    weights["payload"] = _Payload()
    torch.save(weights, folder / "pytorch_model.bin")


def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def _unknown_arch(folder: Path) -> None:
    _edit_config(folder, model_type="wobblenet", architectures=["WobbleNetForCausalLM"])


def _remote_code(folder: Path) -> None:
    (folder / "modeling_custom.py").write_text("raise RuntimeError('remote code must not run')\n")
    _edit_config(folder, model_type="custom_llama",
                 auto_map={"AutoConfig": "modeling_custom.Cfg", "AutoModelForCausalLM": "modeling_custom.LM"})


def _nan_weights(folder: Path) -> None:
    weights = load_file(folder / "model.safetensors")
    weights["model.layers.1.mlp.up_proj.weight"][3, 5] = float("nan")
    weights["model.layers.0.self_attn.q_proj.weight"][0, 0] = float("inf")
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


BAD_CHECKPOINTS = {
    "missing config.json": (_no_config, ["No config.json", "save_pretrained"]),
    "truncated safetensors": (_truncated, ["model.safetensors is truncated"]),
    "corrupted safetensors": (_corrupt_header, ["model.safetensors is corrupt", "header"]),
    "malicious pickle-only checkpoint": (_evil_pickle, ["Refused to load the pickle checkpoint", "safetensors"]),
    "unknown architecture": (_unknown_arch, ["Unknown model type 'wobblenet'", "transformers"]),
    "needs remote code": (_remote_code, ["trust remote code", "auto_map"]),
    "NaN and inf weights": (_nan_weights, ["NaN or infinite", "2 tensor(s)", "model.layers.1.mlp.up_proj.weight",
                                           "model.layers.0.self_attn.q_proj.weight"]),
}


@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
def test_bad_checkpoint_fails_cleanly_and_changes_nothing(case, tiny_llama_dir, text_file, tmp_path):
    damage, words = BAD_CHECKPOINTS[case]
    folder = copy_model(tiny_llama_dir, tmp_path / "model")
    damage(folder)
    before = hashes(folder, text_file)
    message = run_fails(recipe(folder, text_file), tmp_path / "run", ModelLoadError)
    for word in words:
        assert word in message, (case, message)
    assert hashes(folder, text_file) == before
    assert not Path("/tmp/lowbit-pickle-payload-ran").exists()
    assert not (tmp_path / "run" / "student.safetensors").exists()


def test_remote_code_loads_only_when_allowed_explicitly(tiny_llama_dir, tmp_path):
    """Allowing remote code really runs the folder's code (here it refuses); never without the flag."""
    from engine.io.model import load_model

    folder = copy_model(tiny_llama_dir, tmp_path / "model")
    _remote_code(folder)
    before = hashes(folder)
    with pytest.raises(ModelLoadError, match="trust remote code"):
        load_model(folder)
    with pytest.raises(ModelLoadError, match="remote code must not run"):
        load_model(folder, trust_remote_code=True)
    assert hashes(folder) == before


def test_pickle_only_checkpoint_loads_with_weights_only_and_says_so(tiny_llama_dir, text_file, tmp_path):
    from engine.io.model import load_model

    folder = copy_model(tiny_llama_dir, tmp_path / "model")
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    before = hashes(folder)
    with pytest.warns(UserWarning, match="weights_only=True"):
        loaded = load_model(folder)
    assert any("weights_only=True" in note for note in loaded.warnings)
    assert hashes(folder) == before


def test_model_without_linear_layers_is_refused(tmp_path, text_file):
    from transformers import ResNetConfig, ResNetModel

    folder = tmp_path / "resnet"
    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1], layer_type="basic")) \
        .save_pretrained(folder, safe_serialization=True)
    before = hashes(folder, text_file)
    message = run_fails(recipe(folder, text_file, **{"model.kind": "encoder"}), tmp_path / "run", ModelLoadError)
    assert "no linear layers" in message and "ResNetModel" in message
    assert hashes(folder, text_file) == before


# --------------------------------------------------------------------------- bad data


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


BAD_DATA = {
    "empty file": ("empty.txt", b"", ["empty.txt is empty"]),
    "whitespace only": ("blank.txt", b"  \n\n\t\n", ["blank.txt is empty"]),
    "shorter than one block": ("short.txt", b"hello world", ["fewer than one block", "seq_len=32"]),
    "binary junk": ("junk.txt", bytes(range(256)) * 8, ["looks binary"]),
    "wrong encoding": ("latin1.txt", "caf\u00e9 na\u00efve r\u00e9sum\u00e9\n".encode("latin-1") * 40,
                       ["latin1.txt is not UTF-8", "line 1", "iconv"]),
    "utf-16": ("utf16.txt", "hello there\n".encode("utf-16") * 40, ["UTF-16", "UTF-8"]),
    "jsonl line without the text field": (
        "records.jsonl",
        b'{"text": "one fine record about python"}\n\n{"body": "no text here", "id": 3}\n',
        ["Line 3 of records.jsonl", "no 'text' field", "body, id"]),
    "jsonl line that is not JSON": ("broken.jsonl", b'{"text": "ok"}\n{"text": oops}\n', ["Line 2 of broken.jsonl"]),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_fails_cleanly_and_changes_nothing(case, tiny_llama_dir, tmp_path):
    name, content, words = BAD_DATA[case]
    data = _write(tmp_path / name, content)
    before = hashes(data, tiny_llama_dir)
    message = run_fails(recipe(tiny_llama_dir, data), tmp_path / "run", DataError)
    for word in words:
        assert word in message, (case, message)
    assert hashes(data, tiny_llama_dir) == before


# --------------------------------------------------------------------------- bad recipes


@pytest.mark.parametrize("text, words", [
    ("version: 1\nmodel: {path: m}\ndata: {seq_lenn: 64}\n", ["data.seq_lenn", "seq_len"]),  # unknown key
    ("version: 1\nmodel: {path: m}\ndata: {batch_size: lots}\n", ["data.batch_size", "lots"]),  # wrong type
    ("version: 1\nmodel: {path: m}\ndata: {seq_len: 2}\n", ["data.seq_len", "2"]),  # out of range
    ("version: 1\nmodel: {path: m}\nquant: {weight: int3_g7x}\n", ["quant.weight", "int3_g7x"]),  # bad format
])
def test_bad_recipe_file_names_the_key_and_is_left_alone(text, words, tmp_path):
    # The parser itself is fuzzed in tests/engine/test_recipe.py; this checks the file is never rewritten.
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    before = hashes(path)
    with pytest.raises(RecipeError) as info:
        Recipe.load(path)
    for word in words:
        assert word in str(info.value), str(info.value)
    assert hashes(path) == before


def test_layer_pattern_matching_nothing_warns_with_closest_names(tiny_llama_dir, text_file, tmp_path):
    events = []
    r = recipe(tiny_llama_dir, text_file, **{"quant.exclude": ["self_attn.q_prj"]})
    before = hashes(tiny_llama_dir, text_file)
    result = run(r, sink=events.append, run_dir=tmp_path / "run")
    assert result.report["status"] == "completed"
    warned = [e.message for e in events if isinstance(e, Log) and e.level == "warning"]
    hit = [w for w in warned if "'self_attn.q_prj' matches no Linear layer" in w]
    assert hit, warned
    assert "closest layer names" in hit[0] and "q_proj" in hit[0]
    assert hashes(tiny_llama_dir, text_file) == before


@pytest.mark.parametrize("weight, layer, block", [
    ("int4_g48", "model.layers.0.self_attn.q_proj", 48),  # 64 input features, groups of 48
    ("int4_g128", "model.layers.0.self_attn.q_proj", 128),  # a group larger than the layer
])
def test_block_size_that_does_not_fit_a_layer(weight, layer, block, tiny_llama_dir, text_file, tmp_path):
    """Fake quantization pads a partial last group (so PTQ alone works); an export layout needs the
    group to divide in_features, which the run checks before calibrating, naming the layer and the fix."""
    out = tmp_path / "export"
    before = hashes(tiny_llama_dir, text_file)
    r = recipe(tiny_llama_dir, text_file, **{"quant.weight": weight, "export.format": "compressed-tensors",
                                             "export.path": str(out)})
    message = run_fails(r, tmp_path / "run", ExportError)
    assert f"layer {layer}: 64 input features are not a multiple of the {weight} block of {block}" in message
    assert "dense" in message  # the way out: another export target (or another group size)
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert not any(e.get("stage", "").startswith("calibrate") for e in events if e.get("type") == "StageStarted")
    assert not out.exists()
    assert hashes(tiny_llama_dir, text_file) == before


# --------------------------------------------------------------------------- resource faults: out of memory


def test_cuda_out_of_memory_during_calibration_suggests_smaller_settings(tiny_llama_dir, text_file, tmp_path,
                                                                         monkeypatch):
    from transformers import LlamaForCausalLM

    def oom(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(LlamaForCausalLM, "forward", oom)
    before = hashes(tiny_llama_dir, text_file)
    message = run_fails(recipe(tiny_llama_dir, text_file), tmp_path / "run")
    assert "out of GPU memory in stage 'calibrate'" in message
    for fix in ("data.batch_size (now 2)", "data.seq_len (now 32)", "train.teacher_device: cpu"):
        assert fix in message, message
    assert hashes(tiny_llama_dir, text_file) == before


def test_cuda_out_of_memory_in_a_training_step(tiny_llama_dir, text_file, tmp_path, monkeypatch):
    from engine.train.loop import Trainer

    def oom(self, ids):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")

    monkeypatch.setattr(Trainer, "loss", oom)
    before = hashes(tiny_llama_dir, text_file)
    r = recipe(tiny_llama_dir, text_file, mode="qad", **{"train.steps": 3, "train.checkpoint_every": 0,
                                                         "train.eval_every": 0, "train.warmup_steps": 1})
    message = run_fails(r, tmp_path / "run")
    assert "out of GPU memory at training step 1 (QAD, a micro-batch of 2 x 32 tokens)" in message
    assert "data.batch_size" in message and "train.teacher_device: cpu" in message
    assert hashes(tiny_llama_dir, text_file) == before


# --------------------------------------------------------------------------- resource faults: disk full / read-only


@pytest.fixture(scope="module")
def finished_run(tiny_llama_dir, text_file, tmp_path_factory):
    os.environ["LOWBIT_COMPILE"] = "0"
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    run(recipe(tiny_llama_dir, text_file), run_dir=run_dir)
    return run_dir


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _leftovers(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir() if "lowbit-tmp" in p.name or p.name.startswith(".tmp"))


def test_disk_full_during_export_to_a_new_folder(finished_run, tmp_path, monkeypatch):
    import safetensors.torch

    from engine.pipeline.stages.export import export_run

    out = tmp_path / "exports" / "dense"
    before = hashes(finished_run)
    monkeypatch.setattr(safetensors.torch, "save_file", _enospc)
    with pytest.raises(ExportError) as info:
        export_run(finished_run, "dense", out, verify=False)
    message = str(info.value)
    assert "could not write the export" in message and "No space left on device" in message
    assert not out.exists()  # no final-named folder, half-written or not
    assert _leftovers(out.parent) == []
    assert hashes(finished_run) == before  # report.json not touched


def test_disk_full_during_re_export_keeps_the_previous_export(finished_run, tmp_path, monkeypatch):
    import safetensors.torch

    from engine.export import read_export
    from engine.pipeline.stages.export import export_run

    out = tmp_path / "export"
    export_run(finished_run, "dense", out, verify=False)
    before = hashes(out, finished_run)
    real_open = open

    def open_fails_for_temp_json(path, *args, **kwargs):  # the weights fit, the config file does not
        if "config.json" in str(path) and "lowbit-tmp" in str(path):
            _enospc()
        return real_open(path, *args, **kwargs)

    import engine.export.common as common

    monkeypatch.setattr(common, "open", open_fails_for_temp_json, raising=False)
    with pytest.raises(ExportError, match="No space left on device"):
        export_run(finished_run, "dense", out, verify=False)
    monkeypatch.undo()
    assert hashes(out, finished_run) == before
    assert _leftovers(out) == []
    read_export(out)  # still a valid export

    monkeypatch.setattr(safetensors.torch, "save_file", _enospc)
    with pytest.raises(ExportError, match="No space left on device"):
        export_run(finished_run, "dense", out, verify=False)
    assert hashes(out, finished_run) == before and _leftovers(out) == []


def test_read_only_destination_during_export(finished_run, tmp_path, monkeypatch):
    from engine.pipeline.stages.export import export_run

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    out = tmp_path / "ro" / "export"
    before = hashes(finished_run)
    monkeypatch.setattr(Path, "mkdir", read_only)  # running as root, chmod would not stop the writes
    with pytest.raises(ExportError) as info:
        export_run(finished_run, "dense", out, verify=False)
    monkeypatch.undo()
    assert "Read-only file system" in str(info.value) and str(out) in str(info.value)
    assert not out.exists()
    assert hashes(finished_run) == before


def _train_recipe(model_dir, data, steps=6):
    return recipe(model_dir, data, mode="qat", **{"train.steps": steps, "train.checkpoint_every": 2,
                                                  "train.eval_every": 0, "train.warmup_steps": 1})


@pytest.mark.parametrize("fault", ["disk full", "read-only"])
def test_disk_full_during_a_checkpoint_keeps_the_previous_one_and_resumes(fault, tiny_llama_dir, text_file,
                                                                          tmp_path, monkeypatch):
    import engine.statefile as statefile  # checkpoints and the student file are written through it

    run_dir = tmp_path / "run"
    ckpts = run_dir / "checkpoints"
    real_save = statefile.save_file
    calls, snapshot = [], {}

    def save_fails_the_second_time(tensors, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) == 2:
            snapshot.update(hashes(ckpts))  # the checkpoint that must survive, as it was
            code = errno.ENOSPC if fault == "disk full" else errno.EROFS
            raise OSError(code, os.strerror(code), filename)
        return real_save(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(statefile, "save_file", save_fails_the_second_time)
    message = run_fails(_train_recipe(tiny_llama_dir, text_file), run_dir)
    monkeypatch.undo()
    reason = "No space left on device" if fault == "disk full" else "Read-only file system"
    assert f"could not write checkpoint step-000004 in {ckpts}: {reason}" in message, message
    assert "previous checkpoint step-000002 is intact" in message and "resume" in message
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step-000002"]  # no half-written step-4
    assert (ckpts / "latest").read_text().strip() == "step-000002"
    assert hashes(ckpts) == snapshot
    load_file(str(ckpts / "step-000002" / "student.safetensors"))
    torch.load(ckpts / "step-000002" / "trainer.pt", weights_only=True)

    # space is back: the run resumes from the surviving checkpoint and finishes
    result = run(_train_recipe(tiny_llama_dir, text_file), run_dir=run_dir, resume=True)
    assert result.report["status"] == "completed" and result.report["train"]["steps"] == 6
    assert [h["step"] for h in result.report["loss_history"]] == list(range(1, 7))


class _Killed(BaseException):
    """Stands in for SIGKILL inside the process: nothing catches it, no cleanup code runs after it."""


def test_killed_while_writing_a_checkpoint_resumes_from_the_previous_one(tiny_llama_dir, text_file, tmp_path,
                                                                         monkeypatch):
    # A real SIGKILL between checkpoints is tests/e2e/test_resume.py::test_killed_run_resumes_to_identical_weights;
    # this one dies in the middle of writing a checkpoint (student written, trainer state not yet).
    import engine.train.loop as loop

    run_dir = tmp_path / "run"
    ckpts = run_dir / "checkpoints"
    before = hashes(tiny_llama_dir, text_file)
    real_torch_save = torch.save
    calls, snapshot = [], {}

    def die_in_the_second_checkpoint(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == 2:
            snapshot.update({k: v for k, v in hashes(ckpts).items() if ".tmp-step" not in k})
            raise _Killed()
        return real_torch_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(loop.torch, "save", die_in_the_second_checkpoint)
    with pytest.raises(_Killed):
        run(_train_recipe(tiny_llama_dir, text_file), run_dir=run_dir)
    monkeypatch.undo()
    monkeypatch.setenv("LOWBIT_COMPILE", "0")
    stale = [p.name for p in ckpts.iterdir() if p.name.startswith(".tmp-step-000004")]
    assert stale, "the simulated kill should leave the half-written temporary folder, as a real one does"
    assert not (ckpts / "step-000004").exists() and (ckpts / "latest").read_text().strip() == "step-000002"
    assert {k: v for k, v in hashes(ckpts).items() if ".tmp-step" not in k} == snapshot

    result = run(_train_recipe(tiny_llama_dir, text_file), run_dir=run_dir, resume=True)
    assert result.report["status"] == "completed" and result.report["train"]["steps"] == 6
    assert not any(p.name.startswith(".tmp") for p in ckpts.iterdir())  # the leftover is cleaned up
    assert hashes(tiny_llama_dir, text_file) == before


# --------------------------------------------------------------------------- fuzzing


_FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])


@_FUZZ
@given(content=st.binary(max_size=400) | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
       suffix=st.sampled_from([".txt", ".jsonl", ".json", ".md"]))
def test_fuzz_data_loader_gives_texts_or_a_clean_error(content, suffix, tmp_path):
    from engine.io.data import load_texts

    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(content)
    try:
        texts = load_texts(path)
    except DataError as exc:
        assert path.name in str(exc) or str(path) in str(exc)
    else:
        assert texts and all(isinstance(t, str) and t.strip() for t in texts)
    assert path.read_bytes() == content


@pytest.fixture(scope="module")
def fuzz_model(tiny_llama_dir, tmp_path_factory):
    folder = copy_model(tiny_llama_dir, tmp_path_factory.mktemp("fuzz") / "model")
    return folder, (folder / "model.safetensors").read_bytes()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_safetensors_corruption_gives_a_clean_error(fuzz_model, data):
    """Random byte flips (mostly in the header), truncation and header-length lies: the load either works
    (damage only in tensor values) or raises ModelLoadError; never another exception, a crash or a hang."""
    from engine.io.model import load_model

    folder, original = fuzz_model
    blob = bytearray(original)
    (header_len,) = struct.unpack("<Q", original[:8])
    kind = data.draw(st.sampled_from(["flip header", "flip anywhere", "truncate", "header length"]))
    if kind == "flip header":
        for _ in range(data.draw(st.integers(1, 8))):
            blob[data.draw(st.integers(8, 8 + header_len - 1))] = data.draw(st.integers(0, 255))
    elif kind == "flip anywhere":
        for _ in range(data.draw(st.integers(1, 8))):
            blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    elif kind == "truncate":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    else:
        blob[:8] = struct.pack("<Q", data.draw(st.integers(0, 2**64 - 1)))
    target = folder / "model.safetensors"
    target.write_bytes(bytes(blob))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_model(folder)
    except ModelLoadError as exc:
        assert "model.safetensors" in str(exc) or "weights" in str(exc) or "config" in str(exc), str(exc)
    finally:
        target.write_bytes(original)
    gc.collect()


# The soak test (50 back-to-back PTQ runs, RSS growth) is in tests/e2e/test_reliability_soak.py,
# so that each file stays well under 90 s.
