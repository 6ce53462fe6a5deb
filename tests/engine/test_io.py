"""engine.io.model, engine.io.tokenizer and engine.io.corpus on real files and tiny real models."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from engine.errors import LowbitError, ModelLoadError
from engine.io.corpus import python_docs_corpus
from engine.io.model import LoadedModel, describe_model, detect_kind, linear_layers, load_model, load_tokenizer
from engine.io.tokenizer import train_tokenizer

LLAMA_LINEAR_PER_LAYER = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# --------------------------------------------------------------------------- helpers


def copy_model(src: Path, tmp_path: Path, name: str = "model") -> Path:
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def edit_config(folder: Path, **changes) -> dict:
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    config_file.write_text(json.dumps(config))
    return config


def load_quietly(path: Path, **kwargs) -> LoadedModel:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(path, **kwargs)


def rewrite_weights(folder: Path, change) -> None:
    weights = load_file(folder / "model.safetensors")
    change(weights)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


def shape(layer: dict) -> tuple[int, int]:
    return layer["in_features"], layer["out_features"]


def load_error(path: Path, **kwargs) -> str:
    with pytest.raises(ModelLoadError) as info:
        load_quietly(path, **kwargs)
    assert isinstance(info.value, LowbitError)
    return str(info.value)


# --------------------------------------------------------------------------- loading good models


def test_load_tiny_llama(tiny_llama_dir: Path) -> None:
    loaded = load_model(tiny_llama_dir)
    assert loaded.kind == "causal-lm"
    assert loaded.architecture == "LlamaForCausalLM"
    assert loaded.name == "tiny-llama"
    assert loaded.path == tiny_llama_dir.resolve()
    assert loaded.dtype == "float32"
    assert not loaded.model.training
    assert loaded.warnings == []
    # Every parameter comes from the file, unchanged (no tied weights in this model).
    saved = load_file(tiny_llama_dir / "model.safetensors")
    assert loaded.n_params == sum(t.numel() for t in saved.values())
    state = loaded.model.state_dict()
    assert set(saved) <= set(state)
    assert all(torch.equal(state[k], v) for k, v in saved.items())
    # The tokenizer matches the model and can pad.
    tok = loaded.tokenizer
    assert tok is not None and len(tok) == loaded.config.vocab_size
    assert tok.pad_token == "<pad>" and tok.eos_token == "</s>"
    batch = tok(["def f(x):", "return"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = loaded.model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape and logits.shape[-1] == len(tok)


def test_llama_linear_layers_in_model_order(tiny_llama_dir: Path) -> None:
    loaded = load_model(tiny_llama_dir)
    names = [name for name, _ in linear_layers(loaded.model)]
    expected = [
        f"model.layers.{i}.{'self_attn' if p.endswith(('q_proj', 'k_proj', 'v_proj', 'o_proj')) else 'mlp'}.{p}"
        for i in range(2)
        for p in LLAMA_LINEAR_PER_LAYER
    ] + ["lm_head"]
    assert names == expected

    info = describe_model(loaded)
    assert {k: info[k] for k in ("name", "architecture", "kind", "n_params", "dtype")} == {
        "name": "tiny-llama",
        "architecture": "LlamaForCausalLM",
        "kind": "causal-lm",
        "n_params": loaded.n_params,
        "dtype": "float32",
    }
    layers = {layer["name"]: layer for layer in info["layers"]}
    assert info["n_linear"] == len(layers) == 15
    # 4 heads of 16 dims; 2 kv heads -> k/v project 64 -> 32.
    assert layers["model.layers.0.self_attn.q_proj"] == {
        "name": "model.layers.0.self_attn.q_proj",
        "type": "Linear",
        "in_features": 64,
        "out_features": 64,
        "params": 64 * 64,
    }
    assert shape(layers["model.layers.1.self_attn.k_proj"]) == (64, 32)
    assert shape(layers["model.layers.0.mlp.down_proj"]) == (128, 64)
    assert layers["lm_head"]["out_features"] == loaded.config.vocab_size
    assert info["linear_params"] == sum(layer["params"] for layer in info["layers"])
    json.dumps(info)  # the GUI and report.json need plain JSON


def test_load_tiny_bert(tiny_bert_dir: Path) -> None:
    loaded = load_model(tiny_bert_dir)
    assert loaded.kind == "encoder"
    assert loaded.architecture == "BertModel"
    assert type(loaded.model).__name__ == "BertModel"
    assert loaded.n_params == sum(p.numel() for p in loaded.model.parameters())
    names = [name for name, _ in linear_layers(loaded.model)]
    assert len(names) == 2 * 6 + 1  # q, k, v, attention out, intermediate, output per layer; pooler
    assert names[0] == "encoder.layer.0.attention.self.query"
    assert names[-1] == "pooler.dense"
    layers = {layer["name"]: layer for layer in describe_model(loaded)["layers"]}
    assert shape(layers["encoder.layer.1.intermediate.dense"]) == (64, 128)
    tok = loaded.tokenizer
    assert tok.pad_token == "[PAD]"
    ids = tok("Hello world")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    with torch.no_grad():
        out = loaded.model(**tok(["a b c", "d"], padding=True, return_tensors="pt"))
    assert out.last_hidden_state.shape[-1] == 64


def test_kind_can_be_forced(tiny_llama_dir: Path) -> None:
    loaded = load_quietly(tiny_llama_dir, kind="encoder")
    assert loaded.kind == "encoder"
    assert type(loaded.model).__name__ == "LlamaModel"


def test_dtype_choice(tiny_llama_dir: Path) -> None:
    assert load_model(tiny_llama_dir, dtype="bfloat16").dtype == "bfloat16"
    assert load_model(tiny_llama_dir, dtype="auto").dtype == "float32"
    with pytest.raises(ModelLoadError, match="Unknown dtype 'int3'.*float32"):
        load_model(tiny_llama_dir, dtype="int3")
    with pytest.raises(ModelLoadError, match="Unknown model kind"):
        load_model(tiny_llama_dir, kind="seq2seq")


def test_detect_kind_rules() -> None:
    from transformers import BertConfig, GPT2Config, LlamaConfig

    assert detect_kind(LlamaConfig(architectures=["LlamaForCausalLM"])) == "causal-lm"
    assert detect_kind(GPT2Config(architectures=["GPT2LMHeadModel"])) == "causal-lm"
    assert detect_kind(BertConfig(architectures=["BertForSequenceClassification"])) == "encoder"
    assert detect_kind(BertConfig(architectures=["BertModel"])) == "encoder"
    # No architectures recorded: decided by whether the model type has a causal-LM class.
    assert detect_kind(LlamaConfig()) == "causal-lm"
    from transformers import ViTConfig

    assert detect_kind(ViTConfig()) == "encoder"


def test_auto_kind_without_architectures(tiny_llama_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_llama_dir, tmp_path)
    edit_config(folder, architectures=None)
    loaded = load_model(folder)
    assert loaded.kind == "causal-lm"
    assert loaded.architecture == "llama"


def test_gpt2_conv1d_counts_as_linear(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=1, n_head=2)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2", safe_serialization=True)

    loaded = load_model(tmp_path / "gpt2")  # no tokenizer saved: loads, with a note
    assert loaded.kind == "causal-lm"
    assert loaded.tokenizer is None
    assert any("tokenizer" in note for note in loaded.warnings)
    layers = linear_layers(loaded.model)
    assert [name for name, _ in layers] == [
        "transformer.h.0.attn.c_attn",
        "transformer.h.0.attn.c_proj",
        "transformer.h.0.mlp.c_fc",
        "transformer.h.0.mlp.c_proj",
        "lm_head",
    ]
    assert isinstance(layers[0][1], Conv1D) and isinstance(layers[-1][1], nn.Linear)
    described = {layer["name"]: layer for layer in describe_model(loaded)["layers"]}
    c_attn = described["transformer.h.0.attn.c_attn"]
    assert (c_attn["type"], c_attn["in_features"], c_attn["out_features"]) == ("Conv1D", 32, 96)
    assert c_attn["params"] == 32 * 96 + 96


def test_model_without_linear_layers(tmp_path: Path) -> None:
    from transformers import ResNetConfig, ResNetModel

    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1], layer_type="basic")
    ResNetModel(config).save_pretrained(tmp_path / "resnet", safe_serialization=True)
    message = load_error(tmp_path / "resnet")
    assert "no linear layers" in message and "ResNetModel" in message
    # And it has no causal-LM class at all.
    message = load_error(tmp_path / "resnet", kind="causal-lm")
    assert "cannot be loaded as a causal LM" in message and "'auto'" in message


# --------------------------------------------------------------------------- broken folders


def test_missing_path(tmp_path: Path) -> None:
    message = load_error(tmp_path / "nope")
    assert "not found" in message and "nope" in message


def test_path_is_a_file(tiny_llama_dir: Path) -> None:
    message = load_error(tiny_llama_dir / "config.json")
    assert "is a file, not a folder" in message


def test_missing_config(tiny_llama_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_llama_dir, tmp_path)
    (folder / "config.json").unlink()
    message = load_error(folder)
    assert "No config.json" in message and "save_pretrained" in message


def test_garbage_config(tiny_llama_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_llama_dir, tmp_path)
    (folder / "config.json").write_text('{\n  "model_type": "llama",\n  "hidden_size": 64,,\n}')
    message = load_error(folder)
    assert "not valid JSON" in message and "line 3" in message

    (folder / "config.json").write_text("[1, 2, 3]")
    assert "must hold a JSON object" in load_error(folder)

    (folder / "config.json").write_bytes(b"\xff\xfe\x00garbage")
    assert "not UTF-8" in load_error(folder)


def test_config_without_model_type(tiny_llama_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_llama_dir, tmp_path)
    edit_config(folder, model_type=None)
    assert "has no 'model_type'" in load_error(folder)


def test_unknown_model_type(tiny_llama_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_llama_dir, tmp_path)
    edit_config(folder, model_type="quantum_llama")
    message = load_error(folder)
    assert "Unknown model type 'quantum_llama'" in message and "Upgrade transformers" in message


def test_no_weight_files(tiny_llama_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_llama_dir, tmp_path)
    (folder / "model.safetensors").unlink()
    message = load_error(folder)
    assert "No weight files" in message and "model.safetensors" in message

    (folder / "tf_model.h5").write_bytes(b"HDF")
    assert "tf_model.h5" in load_error(folder)


def test_adapter_only_folder(tmp_path: Path) -> None:
    folder = tmp_path / "lora"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    save_file({"lora_A": torch.zeros(2, 2)}, folder / "adapter_model.safetensors")
    message = load_error(folder)
    assert "PEFT/LoRA adapter" in message and "merge" in message.lower()


def test_truncated_safetensors(tiny_llama_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_llama_dir, tmp_path)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    message = load_error(folder)
    assert "model.safetensors is truncated" in message and "re-save" in message

    weights.write_bytes(data[:5])
    assert "truncated or corrupt" in load_error(folder)


def test_corrupt_safetensors_header(tiny_llama_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_llama_dir, tmp_path)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:40] = b"#" * 32  # scribble over the JSON header
    weights.write_bytes(bytes(data))
    message = load_error(folder)
    assert "model.safetensors is corrupt" in message


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_weights(tiny_llama_dir: Path, tmp_path: Path, bad_value: float) -> None:
    folder = copy_model(tiny_llama_dir, tmp_path)

    def poison(weights: dict[str, torch.Tensor]) -> None:
        weights["model.layers.1.mlp.up_proj.weight"][3, 5] = bad_value
        weights["model.norm.weight"][0] = bad_value

    rewrite_weights(folder, poison)
    message = load_error(folder)
    assert "NaN or infinite" in message and "2 tensor(s)" in message
    assert "model.layers.1.mlp.up_proj.weight" in message and "model.norm.weight" in message
    assert "model.layers.0" not in message


def test_weights_do_not_match_config(tiny_llama_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_llama_dir, tmp_path)
    edit_config(folder, intermediate_size=96)
    message = load_error(folder)
    assert "do not match its config.json" in message


def test_missing_weight_is_reported(tiny_llama_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_llama_dir, tmp_path)
    rewrite_weights(folder, lambda w: w.pop("model.layers.0.mlp.up_proj.weight"))
    with pytest.warns(UserWarning, match="random initial values"):
        loaded = load_model(folder)
    assert any("model.layers.0.mlp.up_proj.weight" in note for note in loaded.warnings)


def test_auto_map_needs_explicit_trust(tiny_llama_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_llama_dir, tmp_path)
    (folder / "modeling_custom.py").write_text(
        "raise RuntimeError('remote code must not run')\n"
    )
    edit_config(
        folder,
        model_type="custom_llama",
        auto_map={"AutoConfig": "modeling_custom.CustomConfig", "AutoModelForCausalLM": "modeling_custom.CustomLM"},
    )
    message = load_error(folder)
    assert 'enable "trust remote code"' in message and "auto_map" in message
    # Allowing it really runs the folder's code (which here refuses), and that failure is wrapped too.
    assert "remote code must not run" in load_error(folder, trust_remote_code=True)


def test_auto_map_on_builtin_type_uses_builtin_code(tiny_llama_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_llama_dir, tmp_path)
    (folder / "modeling_custom.py").write_text("raise RuntimeError('remote code must not run')\n")
    edit_config(folder, auto_map={"AutoModelForCausalLM": "modeling_custom.CustomLM"})
    with pytest.warns(UserWarning, match="was NOT run"):
        loaded = load_model(folder)
    assert type(loaded.model).__name__ == "LlamaForCausalLM"
    assert any("was NOT run" in note for note in loaded.warnings)


def test_pickle_only_checkpoint_loads_with_weights_only(tiny_llama_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_llama_dir, tmp_path)
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    with pytest.warns(UserWarning, match="weights_only=True"):
        loaded = load_model(folder)
    state = loaded.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.items())
    assert any("pickle checkpoint" in note for note in loaded.warnings)


class _Payload:
    """Unpickling this object writes a marker file; a safe loader must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_pickle_is_refused(tiny_llama_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_llama_dir, tmp_path)
    weights: dict = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "code-was-executed"
    weights["payload"] = _Payload(marker)
    torch.save(weights, folder / "pytorch_model.bin")
    message = load_error(folder)
    assert "Refused to load the pickle checkpoint" in message and "safetensors" in message
    assert not marker.exists()


def test_safetensors_preferred_over_pickle(tiny_llama_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_llama_dir, tmp_path)
    (folder / "pytorch_model.bin").write_bytes(b"not a checkpoint at all")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no pickle warning either
        loaded = load_model(folder)
    assert loaded.warnings == []


# --------------------------------------------------------------------------- tokenizers


def test_load_tokenizer_sets_pad_from_eos(bpe_tokenizer, tmp_path: Path) -> None:
    bpe_tokenizer.save_pretrained(tmp_path)
    config_file = tmp_path / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.pop("pad_token")
    config_file.write_text(json.dumps(config))
    tok = load_tokenizer(tmp_path)
    assert tok.pad_token == "</s>" and tok.pad_token_id == tok.eos_token_id


def test_load_tokenizer_missing_or_broken(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="No tokenizer files"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "TokenizersBackend"}')
    with pytest.raises(ModelLoadError, match="No usable tokenizer"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize("kind", ["bpe", "wordpiece"])
def test_trained_tokenizer_roundtrip(kind: str, corpus_texts: list[str], tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = train_tokenizer(corpus_texts[:20], vocab_size=512, kind=kind)
    assert 300 < len(tok) <= 512
    text = "The assert statement: assert x > 0, 'positive'"
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert again.get_vocab() == tok.get_vocab()
    assert again(text)["input_ids"] == tok(text)["input_ids"]
    if kind == "bpe":
        assert (tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token) == ("<s>", "</s>", "<unk>", "<pad>")
        assert [tok.convert_ids_to_tokens(i) for i in range(4)] == ["<s>", "</s>", "<unk>", "<pad>"]
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text  # byte-level: lossless
        assert tok.unk_token_id not in tok("ünïcødé ✓ 数字")["input_ids"]
    else:
        assert [tok.convert_ids_to_tokens(i) for i in range(5)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
        assert tok.decode(ids, skip_special_tokens=True).startswith("the assert statement")


def test_train_tokenizer_rejects_bad_arguments(corpus_texts: list[str]) -> None:
    with pytest.raises(ValueError, match="Unknown tokenizer kind"):
        train_tokenizer(corpus_texts[:2], kind="unigram")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least"):
        train_tokenizer(corpus_texts[:2], vocab_size=100, kind="bpe")
    with pytest.raises(ValueError, match="non-empty"):
        train_tokenizer(["", ""])


_HASH_SCRIPT = """
import hashlib, sys
from engine.io.corpus import python_docs_corpus
from engine.io.tokenizer import train_tokenizer
texts = python_docs_corpus()
for kind in ("bpe", "wordpiece"):
    tok = train_tokenizer(texts, vocab_size=1024, kind=kind)
    print(kind, hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest())
"""


def _tokenizer_hashes(texts: list[str]) -> dict[str, str]:
    hashes = {}
    for kind in ("bpe", "wordpiece"):
        tok = train_tokenizer(texts, vocab_size=1024, kind=kind)
        hashes[kind] = hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest()
    return hashes


def test_tokenizer_training_is_deterministic(corpus_texts: list[str]) -> None:
    here = _tokenizer_hashes(corpus_texts)
    assert here == _tokenizer_hashes(corpus_texts)
    # Another process (different hash seeds, thread schedule) must give the same vocabularies and ids;
    # the raw WordPiece trainer does not, which is why train_tokenizer renumbers its vocabulary.
    env = {**os.environ, "PYTHONHASHSEED": "123", "RAYON_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _HASH_SCRIPT], capture_output=True, text=True, env=env, check=True, timeout=120
    ).stdout
    there = dict(line.split() for line in out.strip().splitlines())
    assert there == here


def test_tiny_llama_fixture_is_reproducible(tiny_llama_dir: Path) -> None:
    from transformers import LlamaForCausalLM

    config = LlamaForCausalLM.config_class.from_pretrained(tiny_llama_dir)
    torch.manual_seed(0)
    fresh = LlamaForCausalLM(config).state_dict()
    saved = load_file(tiny_llama_dir / "model.safetensors")
    assert all(torch.equal(fresh[k], v) for k, v in saved.items())


# --------------------------------------------------------------------------- corpus


def test_python_docs_corpus() -> None:
    from pydoc_data.topics import topics

    texts = python_docs_corpus()
    assert texts == [topics[key] for key in sorted(topics)]
    assert len(texts) > 50 and sum(map(len, texts)) > 200_000
    assert all(isinstance(t, str) and t.strip() for t in texts)
