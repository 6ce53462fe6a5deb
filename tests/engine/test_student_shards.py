"""student.safetensors written shard by shard (engine.statefile): round trip, old layout, resume, memory."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import engine.statefile as statefile
from engine.events import CancelToken, Progress
from engine.pipeline import load_student, run
from engine.recipe import Recipe
from engine.statefile import load_state, save_state_sharded, state_exists


def _state(n=6, size=64 * 1024):
    g = torch.Generator().manual_seed(0)
    state = {f"layer{i}.weight": torch.randn(size, generator=g) for i in range(n)}  # 256 KiB each
    state["half"] = torch.randn(1000, generator=g).to(torch.bfloat16)
    state["embed"] = torch.randn(10, 4, generator=g)
    state["head"] = state["embed"]  # tied: shares storage, which safetensors refuses within one file
    return state


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_sharded_round_trip_is_bit_exact_and_writes_one_shard_at_a_time(tmp_path, monkeypatch):
    state = _state()
    written = []
    real = statefile.save_file

    def recording_save(tensors, filename, *args, **kwargs):
        written.append(sum(t.numel() * t.element_size() for t in tensors.values()))
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(statefile, "save_file", recording_save)
    path = tmp_path / "student.safetensors"
    names = save_state_sharded(state.items(), path, max_shard_mb=0.5)  # two 256 KiB tensors per shard
    assert len(names) == 4 and names[0] == "student-00001-of-00004.safetensors"
    assert max(written) <= 512 * 1024  # each write held one shard, never the whole state
    index = json.loads((tmp_path / "student.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(state) and set(index["weight_map"].values()) == set(names)
    assert not path.exists() and state_exists(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names + ["student.safetensors.index.json"])
    _same(load_state(path), state)


def test_layouts_replace_each_other_and_the_old_single_file_still_loads(tmp_path):
    state, path = _state(), tmp_path / "student.safetensors"
    save_file({k: v.clone() for k, v in state.items()}, str(path))  # a run folder written before shards
    _same(load_state(path), state)
    save_state_sharded(state.items(), path, max_shard_mb=0.5)  # sharded over the single file
    assert not path.exists()
    _same(load_state(path), state)
    assert save_state_sharded(state.items(), path) == ["student.safetensors"]  # and back: shards and index go
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.safetensors"]
    _same(load_state(path), state)
    with pytest.raises(FileNotFoundError, match="holds no other.safetensors"):
        load_state(tmp_path / "other.safetensors")


def test_a_failed_write_leaves_no_temporary_shard(tmp_path, monkeypatch):
    calls = []
    real = statefile.save_file

    def fails_second(tensors, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(statefile, "save_file", fails_second)
    with pytest.raises(OSError):
        save_state_sharded(_state().items(), tmp_path / "student.safetensors", max_shard_mb=0.5)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def wide_llama_dir(tmp_path_factory, bpe_tokenizer, make_llama):
    """A Llama of about 6 MB in float32: several 1 MB shards."""
    return make_llama(tmp_path_factory.mktemp("models") / "wide-llama", bpe_tokenizer, hidden_size=256,
                      intermediate_size=512, max_position_embeddings=64)


def _recipe(model_dir, data, steps=6):
    return Recipe.from_dict({
        "model": {"path": str(model_dir)},
        "data": {"path": str(data), "seq_len": 16, "batch_size": 2, "calib_batches": 1, "eval_batches": 1},
        "quant": {"scheme": "W4A16-INT4"}, "mode": "qat",
        "train": {"steps": steps, "lr": 1e-3, "warmup_steps": 1, "eval_every": 0, "checkpoint_every": 2},
        "export": {"max_shard_mb": 1}, "device": "cpu",
    }, require_version=False)


def test_a_run_writes_a_sharded_student_that_loads_and_resumes(wide_llama_dir, text_file, tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_COMPILE", "0")
    torch.set_num_threads(1)
    whole = run(_recipe(wide_llama_dir, text_file), run_dir=tmp_path / "whole")
    student = tmp_path / "whole" / "student.safetensors"
    index = json.loads((tmp_path / "whole" / "student.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and not student.exists()
    ckpt = tmp_path / "whole" / "checkpoints" / "step-000006"
    assert (ckpt / "student.safetensors.index.json").exists()  # checkpoints too
    loaded, _, report = load_student(tmp_path / "whole")
    saved = load_state(student)
    model_state = loaded.model.state_dict()
    for k, v in saved.items():
        assert torch.equal(model_state[k], v), k
    assert report["status"] == whole.report["status"] == "completed"

    # interrupted after a sharded checkpoint, then resumed: the same student, bit for bit
    cancel = CancelToken()

    def stop_at_3(event):
        if isinstance(event, Progress) and event.stage == "train" and event.done == 3:
            cancel.cancel()

    with pytest.raises(Exception):
        run(_recipe(wide_llama_dir, text_file), sink=stop_at_3, cancel=cancel, run_dir=tmp_path / "cut")
    assert (tmp_path / "cut" / "checkpoints" / "step-000002" / "student.safetensors.index.json").exists()
    resumed = run(_recipe(wide_llama_dir, text_file), run_dir=tmp_path / "cut", resume=True)
    assert resumed.report["status"] == "completed" and resumed.report["train"]["steps"] == 6
    _same(load_state(tmp_path / "cut" / "student.safetensors"), saved)
