"""The recipe: defaults, checks and their messages, round trips, atomic saves, properties."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import formats
from engine.errors import RecipeError
from engine.quant import schemes
from engine.recipe import (
    SCHEMA_VERSION,
    ModelSection,
    Override,
    QuantSection,
    Recipe,
    parse_assignment,
    schema,
)

DEMO = {"model": {"path": "demo"}}


def make(**sections) -> Recipe:
    return Recipe.from_dict({**DEMO, **sections})


def error_of(data, **kwargs) -> str:
    with pytest.raises(RecipeError) as info:
        Recipe.from_dict(data, **kwargs)
    return str(info.value)


# -- defaults and construction ------------------------------------------------------------


def test_defaults_follow_the_schema():
    r = make()
    assert r.version == SCHEMA_VERSION == 1
    assert (r.model.path, r.model.kind, r.model.dtype, r.model.trust_remote_code) == ("demo", "auto", "float32", False)
    assert r.data.path is None and r.data.eval_path is None and r.data.text_field == "text"
    assert (r.data.seq_len, r.data.batch_size, r.data.calib_batches, r.data.eval_batches) == (256, 4, 16, 8)
    assert r.data.eval_fraction == 0.1
    assert (r.quant.scheme, r.quant.weight, r.quant.activation) == ("W4A16-INT4", None, None)
    assert r.quant.include == ("*",) and r.quant.exclude == () and r.quant.overrides == ()
    assert r.quant.default_exclusions is True
    assert (r.calibration.method, r.calibration.percentile) == ("max", 99.99)
    assert (r.calibration.mse_grid, r.calibration.mse_min_ratio) == (20, 0.5)
    assert r.mode == "ptq"
    t = r.train
    assert (t.steps, t.lr, t.weight_decay, t.warmup_steps, t.schedule) == (200, 1e-4, 0.0, 10, "cosine")
    assert (t.batch_size, t.grad_accum, t.grad_clip, t.eval_every, t.checkpoint_every) == (None, 1, 1.0, 50, 100)
    assert (t.kd_temperature, t.kd_alpha, t.kd_hidden_weight) == (1.0, 1.0, 0.0)
    assert (t.learnable_scales, t.gradient_checkpointing) == (False, False)
    assert (t.early_stop_perplexity, t.teacher_device) == (None, None)
    assert (r.export.format, r.export.path, r.export.verify, r.export.max_shard_mb) == (None, None, True, 2000)
    assert (r.seed, r.device, r.memory_check, t.master_weights) == (0, "auto", True, True)


def test_to_dict_is_plain_json_with_every_key():
    d = make().to_dict()
    assert list(d) == ["version", "model", "data", "quant", "calibration", "mode", "train", "export", "analysis",
                       "distributed", "seed", "device", "memory_check"]
    assert json.loads(json.dumps(d)) == d
    assert d["quant"]["include"] == ["*"] and d["quant"]["overrides"] == []
    leaves = {f"{s}.{k}" for s, v in d.items() if isinstance(v, dict) for k in v}
    leaves |= {k for k, v in d.items() if not isinstance(v, dict)}
    assert leaves == {info.key for info in schema() if "[]" not in info.key}


def test_built_in_code_with_sections_as_instances_or_mappings():
    a = Recipe(model=ModelSection(path="demo"), quant=QuantSection(scheme="custom", weight="int8"))
    b = Recipe(model={"path": "demo"}, quant={"scheme": "custom", "weight": "int8"})
    assert a == b and hash(a) == hash(b)
    assert a.quant.resolve() == schemes.get("custom", "int8")
    with pytest.raises(RecipeError, match=r"recipe key 'model.path' is missing"):
        Recipe()
    with pytest.raises(RecipeError, match=r"model.path: expected a non-empty string, got '  ' \(str\)"):
        ModelSection(path="  ")


def test_recipes_are_immutable_and_replace_is_checked():
    r = make()
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.mode = "qat"
    with pytest.raises(RecipeError, match=r"train.steps: 0 is out of range; expected an integer >= 1"):
        dataclasses.replace(r.train, steps=0)
    assert dataclasses.replace(r, mode="qad").mode == "qad"


def test_empty_section_takes_its_defaults():
    r = Recipe.from_yaml("version: 1\nmodel:\n  path: demo\ntrain:\n")
    assert r.train == make().train


def test_names_are_normalised_to_the_registries_spelling():
    overrides = [{"pattern": "x", "activation": "FP8_E4M3"}]
    r = make(quant={"scheme": "w4a4-nvfp4", "weight": " NVFP4 ", "overrides": overrides})
    assert r.quant.scheme == "W4A4-NVFP4" and r.quant.weight == "nvfp4"
    assert r.quant.overrides[0].activation == "fp8_e4m3"
    assert make(quant={"scheme": "Custom", "activation": "None", "weight": "int4"}).quant.scheme == "custom"


def test_importing_the_module_does_not_import_torch():
    code = "import sys, engine.recipe; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# -- every class of error, with its message ---------------------------------------------


@pytest.mark.parametrize(
    "data, message",
    [
        ({**DEMO, "data": {"seqlen": 64}}, "recipe key 'data.seqlen' is unknown; did you mean 'data.seq_len'?"),
        ({**DEMO, "data": {"steps": 5}}, "recipe key 'data.steps' is unknown; did you mean 'train.steps'?"),
        ({**DEMO, "seq_len": 64}, "recipe key 'seq_len' is unknown; did you mean 'data.seq_len'?"),
        ({**DEMO, "calib": {}}, "recipe key 'calib' is unknown; did you mean 'calibration'?"),
        ({**DEMO, "export": {"batch_size": 2}},
         "recipe key 'export.batch_size' is unknown; did you mean 'data.batch_size' or 'train.batch_size'?"),
        ({**DEMO, "zzz": 1}, "recipe key 'zzz' is unknown; valid keys here: 'version', 'model'"),
        ({**DEMO, "quant": {"overrides": [{"pattern": "x", "wieght": "int8"}]}},
         "recipe key 'quant.overrides[0].wieght' is unknown; did you mean 'quant.overrides[0].weight'?"),
    ],
)
def test_unknown_keys_name_the_dotted_key_and_suggest_one(data, message):
    assert message in error_of(data)


@pytest.mark.parametrize(
    "section, values, message",
    [
        ("data", {"seq_len": "abc"}, "data.seq_len: expected an integer >= 8, got 'abc' (str)"),
        ("data", {"seq_len": True}, "data.seq_len: expected an integer >= 8, got True (bool)"),
        ("data", {"seq_len": 64.0}, "data.seq_len: expected an integer >= 8, got 64.0 (float)"),
        ("train", {"lr": "1e-4"}, "train.lr: expected a number > 0, got '1e-4' (str)"),
        ("train", {"lr": True}, "train.lr: expected a number > 0, got True (bool)"),
        ("train", {"lr": float("nan")}, "train.lr: expected a number > 0, got nan (float)"),
        ("train", {"grad_clip": float("inf")}, "train.grad_clip: expected a number >= 0, got inf (float)"),
        ("train", {"batch_size": "4"}, "train.batch_size: expected an integer >= 1 or null, got '4' (str)"),
        ("model", {"path": "x", "trust_remote_code": "yes"},
         "model.trust_remote_code: expected true or false, got 'yes' (str)"),
        ("model", {"path": ""}, "model.path: expected a non-empty string, got '' (str)"),
        ("model", {"path": "x", "kind": "causal_lm"},
         "model.kind: expected one of 'auto', 'causal-lm', 'encoder', got 'causal_lm' (str); "
         "did you mean 'causal-lm'?"),
        ("quant", {"include": "lm_head"}, "quant.include: expected a non-empty list of strings, got 'lm_head' (str)"),
        ("quant", {"exclude": ["lm_head", 3]}, "quant.exclude[1]: expected a non-empty string, got 3 (int)"),
        ("quant", {"overrides": ["x"]}, "quant.overrides[0]: expected a mapping of pattern, weight, activation"),
        ("data", 3, "data: expected a mapping of path, eval_path"),
        ("export", {"format": "gguf"},
         "export.format: expected one of 'compressed-tensors', 'modelopt', 'dense' or null"),
        ("train", {"teacher_device": "gpu"},
         "train.teacher_device: expected 'auto', 'cpu', 'cuda' or 'cuda:<n>' or null, got 'gpu' (str)"),
    ],
)
def test_wrong_types_name_the_key_the_expected_type_and_the_value(section, values, message):
    data = {**DEMO, section: values}
    assert message in error_of(data)


@pytest.mark.parametrize(
    "section, values, message",
    [
        ("data", {"seq_len": 4}, "data.seq_len: 4 is out of range; expected an integer >= 8"),
        ("data", {"eval_fraction": 0.7}, "data.eval_fraction: 0.7 is out of range; expected a number in (0, 0.5]"),
        ("data", {"eval_fraction": 0}, "data.eval_fraction: 0.0 is out of range; expected a number in (0, 0.5]"),
        ("calibration", {"percentile": 100.5},
         "calibration.percentile: 100.5 is out of range; expected a number in (0, 100]"),
        ("calibration", {"mse_min_ratio": 1},
         "calibration.mse_min_ratio: 1.0 is out of range; expected a number in (0, 1)"),
        ("calibration", {"mse_grid": 1}, "calibration.mse_grid: 1 is out of range; expected an integer >= 2"),
        ("train", {"kd_alpha": 1.5}, "train.kd_alpha: 1.5 is out of range; expected a number in [0, 1]"),
        ("train", {"weight_decay": -0.1}, "train.weight_decay: -0.1 is out of range; expected a number >= 0"),
        ("train", {"lr": 10**400}, "train.lr: expected a number > 0, got"),
        ("seed", -1, "seed: -1 is out of range; expected an integer in [0, 4294967295]"),
    ],
)
def test_out_of_range_values_name_the_range(section, values, message):
    assert message in error_of({**DEMO, section: values})


def test_ints_are_accepted_where_numbers_are_expected():
    r = make(train={"lr": 1, "grad_clip": 0}, calibration={"percentile": 100})
    assert r.train.lr == 1.0 and type(r.train.lr) is float
    assert type(r.train.grad_clip) is float and type(r.calibration.percentile) is float


def test_missing_required_keys_say_which():
    assert "recipe key 'model.path' is missing" in error_of({})
    assert "recipe key 'model.path' is missing" in error_of({"model": {"kind": "auto"}})
    assert "recipe key 'quant.overrides[0].pattern' is missing" in error_of(
        {**DEMO, "quant": {"overrides": [{"weight": "int8"}]}})


def test_versions():
    assert make().version == 1  # from_dict in code may leave it out
    assert "has no 'version' key; add 'version: 1'" in error_of(DEMO, require_version=True)
    newer = error_of({**DEMO, "version": 2, "new_section": {}})  # the version is judged before the keys
    assert "recipe version 2 is newer than this Lowbit Studio reads (version 1)" in newer
    assert "recipe version 0 is older than the oldest this Lowbit Studio reads (version 1)" in error_of(
        {**DEMO, "version": 0})
    assert "version: expected an integer, got '1' (str)" in error_of({**DEMO, "version": "1"})
    assert "version: expected an integer, got True (bool)" in error_of({**DEMO, "version": True})


def test_top_level_must_be_a_mapping():
    assert "a recipe must be a mapping of sections" in error_of([1, 2])


@pytest.mark.parametrize(
    "quant, calibration, message",
    [
        ({"scheme": "W4A16-INT5"}, {}, "quant.scheme: unknown scheme 'W4A16-INT5'; did you mean 'W4A16-INT4'?"),
        ({"scheme": "bogus"}, {}, "quant.scheme: unknown scheme 'bogus'. Known schemes: W8A8-INT8"),
        ({"scheme": "custom"}, {}, "quant.scheme is 'custom', so quant.weight or quant.activation must name a format"),
        ({"scheme": "custom", "weight": "none"}, {}, "quant.scheme is 'custom'"),
        ({"weight": "int9"}, {}, "quant.weight: format 'int9': integer formats take 2 to 8 bits"),
        ({"activation": "fp4"}, {}, "quant.activation: unknown format 'fp4'"),
        ({"overrides": [{"pattern": "*.q_proj", "weight": "nvfp5"}]}, {},
         "quant.overrides[0].weight: unknown format 'nvfp5'"),
        ({"weight": "none"}, {},
         "quant: scheme 'W4A16-INT4' with quant.weight: none and quant.activation: null keeps weights and activations"),
        ({"overrides": [{"pattern": "lm_head", "weight": "int8"}, {"pattern": "x"}]}, {},
         "quant.overrides[1] (pattern 'x') sets neither weight nor activation"),
        ({"scheme": "custom", "activation": "int8_tensor"}, {"method": "mse"},
         "calibration.method 'mse' searches the weights' scales, but the scheme quantizes no weights"),
    ],
)
def test_cross_field_checks(quant, calibration, message):
    assert message in error_of({**DEMO, "quant": quant, "calibration": calibration})


def test_cross_field_checks_accept_what_makes_sense():
    assert make(quant={"scheme": "custom", "activation": "fp8_e4m3"}).quant.resolve().weight is None
    assert make(quant={"scheme": "W4A4-NVFP4", "activation": "none"}).quant.resolve().activation is None
    assert make(quant={"overrides": [{"pattern": "lm_head", "weight": "none"}]}).quant.overrides[0].weight == "none"
    assert make(calibration={"method": "mse"}).calibration.method == "mse"


# -- with_updates ----------------------------------------------------------------------------


def test_with_updates_returns_a_checked_new_recipe():
    r = make()
    s = r.with_updates({"train.steps": 50, "quant.scheme": "W4A4-NVFP4", "mode": "qad", "train.lr": 3e-5})
    assert (s.train.steps, s.quant.scheme, s.mode, s.train.lr) == (50, "W4A4-NVFP4", "qad", 3e-5)
    assert r == make() and s != r
    with_override = r.with_updates({"quant.overrides": [Override(pattern="lm_head", weight="int8"),
                                                        {"pattern": "*.mlp.*", "activation": "none"}]})
    assert [o.pattern for o in with_override.quant.overrides] == ["lm_head", "*.mlp.*"]
    with pytest.raises(RecipeError, match=r"recipe key 'train.stpes' is unknown; did you mean 'train.steps'\?"):
        r.with_updates({"train.stpes": 1})
    with pytest.raises(RecipeError, match=r"data.seq_len: expected an integer >= 8, got 'x' \(str\)"):
        r.with_updates({"data.seq_len": "x"})
    with pytest.raises(RecipeError, match="quant.scheme is 'custom'"):
        r.with_updates({"quant.scheme": "custom"})
    with pytest.raises(RecipeError, match=r"updates must map dotted keys to values, got \['train.steps'\] \(list\)"):
        r.with_updates(["train.steps"])


def test_schema_lists_every_key_with_its_default():
    defaults = {info.key: info.default for info in schema() if "[]" not in info.key and not info.required}
    assert "model.path" not in defaults and defaults["train.lr"] == 1e-4 and defaults["quant.include"] == ["*"]
    assert {"quant.overrides[].pattern", "quant.overrides[].weight"} <= {info.key for info in schema()}
    changed = make(train={"steps": 7, "lr": 0.5}, quant={"exclude": ["lm_head"]}, mode="qat", seed=3)
    assert changed.with_updates(defaults) == make()


def test_parse_assignment_reads_values_as_yaml():
    assert parse_assignment("train.lr=1e-4") == ("train.lr", 1e-4)
    assert parse_assignment(" train.steps = 50") == ("train.steps", 50)
    assert parse_assignment("export.format=") == ("export.format", None)
    assert parse_assignment("quant.exclude=[lm_head, '*.gate']") == ("quant.exclude", ["lm_head", "*.gate"])
    with pytest.raises(RecipeError, match="expected KEY=VALUE"):
        parse_assignment("train.steps")
    with pytest.raises(RecipeError, match="quant.exclude: line 1"):
        parse_assignment("quant.exclude=[a")
    key, value = parse_assignment("train.steps=5")
    assert make().with_updates({key: value}).train.steps == 5


# -- files: round trips and errors ---------------------------------------------------------


def rich_recipe() -> Recipe:
    return make(
        model={"path": "models/tiny llama", "kind": "causal-lm", "dtype": "bfloat16"},
        data={"path": "data/train.jsonl", "seq_len": 128, "eval_fraction": 0.05},
        quant={"scheme": "custom", "weight": "int4_g64", "activation": "fp8_e4m3",
               "exclude": ["lm_head", "*.router"],
               "overrides": [{"pattern": "*.down_proj", "weight": "int8"}]},
        calibration={"method": "percentile", "percentile": 99.9},
        mode="qad",
        train={"lr": 1e-4, "weight_decay": 1e-10, "early_stop_perplexity": 12.5, "teacher_device": "cuda:1",
               "kd_temperature": 2, "batch_size": 2},
        export={"format": "compressed-tensors", "path": "out/export", "max_shard_mb": 500},
        seed=1234,
        device="cuda:0",
    )


@pytest.mark.parametrize("name", ["recipe.yaml", "recipe.yml", "recipe.json", "RECIPE.YAML"])
def test_files_round_trip_exactly(tmp_path, name):
    r = rich_recipe()
    path = r.save(tmp_path / name)
    assert path == tmp_path / name
    back = Recipe.load(path)
    assert back == r and back.train.lr == 1e-4 and back.train.weight_decay == 1e-10
    assert Recipe.load(path).to_dict() == r.to_dict()
    assert not list(tmp_path.glob("*.tmp"))


def test_saved_files_are_readable_text(tmp_path):
    r = rich_recipe()
    text = r.save(tmp_path / "r.yaml").read_text()
    assert text.startswith("version: 1\nmodel:\n") and "lr: 0.0001" in text
    assert yaml.safe_load(text) == r.to_dict()
    assert json.loads(r.save(tmp_path / "r.json").read_text()) == r.to_dict()


@pytest.mark.parametrize("tricky", ["1e5", "0E0", ".5e3", "1.0", "null", "yes", "0x1F", "a\x85b", "a\u2028", "- x",
                                    "#c", " lead", "trail ", "a: b", "'q'", '"', "\ufeffbom", "tab\there"])
def test_strings_that_look_like_other_things_round_trip_through_yaml(tricky):
    r = make(model={"path": tricky}, quant={"exclude": [tricky]})
    assert Recipe.from_yaml(r.to_yaml()) == r


def test_hand_written_yaml_reads_exponent_floats():
    text = "version: 1\nmodel: {path: demo}\ntrain:\n  lr: 1e-4\n  weight_decay: 2E-5\n  kd_temperature: 1_0e0\n"
    t = Recipe.from_yaml(text).train
    assert (t.lr, t.weight_decay, t.kd_temperature) == (1e-4, 2e-5, 10.0)


def test_json_files_read_exponents_and_a_bom(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('\ufeff{"version": 1, "model": {"path": "demo"}, "train": {"lr": 1e-4}}', encoding="utf-8")
    assert Recipe.load(path).train.lr == 1e-4


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("r.yaml", "version: 1\nmodel:\n  path: demo\n  kind: [auto\n",
         "r.yaml: line 5, column 1: not valid YAML"),
        ("r.yaml", "version: 1\nmodel:\n  path: a\n path: b\n", "r.yaml: line 4, column 2: not valid YAML"),
        ("r.yaml", "version: 1\nmodel: {path: demo}\ndata: {seq_len: 64}\ndata: {seq_len: 32}\n",
         "r.yaml: line 4, column 1: not valid YAML: key 'data' appears twice in one mapping"),
        ("r.yaml", "- model\n- data\n", "r.yaml: a recipe must be a mapping of sections"),
        ("r.yaml", "just text\n",
         "r.yaml: a recipe must be a mapping of sections (model, data, quant, ...), got 'just text' (str)"),
        ("r.yaml", "# nothing but a comment\n", "r.yaml: the recipe is empty"),
        ("r.yaml", "model: {path: demo}\n", "r.yaml: the recipe has no 'version' key; add 'version: 1' at the top"),
        ("r.yaml", "version: 3\nmodel: {path: demo}\n", "r.yaml: recipe version 3 is newer"),
        ("r.yaml", "version: 1\nmodel: {path: demo}\ndata: {seqlen: 3}\n",
         "r.yaml: recipe key 'data.seqlen' is unknown; did you mean 'data.seq_len'?"),
        ("r.yaml", "version: 1\nmodel: !!python/object:os.system {}\n", "r.yaml: line 2, column 8: not valid YAML"),
        ("r.json", '{"version": 1,\n "model": {"path": "demo",}}',
         "r.json: line 2, column 27: not valid JSON: Expecting property name"),
        ("r.json", '{"version": 1, "model": {"path": "a", "path": "b"}}',
         "r.json: not valid JSON: key 'path' appears twice in one object"),
        ("r.json", "[1]", "r.json: a recipe must be a mapping of sections"),
    ],
)
def test_file_errors_name_the_file_and_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RecipeError) as info:
        Recipe.load(path)
    assert str(info.value).startswith(str(tmp_path))
    assert message in str(info.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        Recipe.load(tmp_path / "missing.yaml")
    with pytest.raises(RecipeError, match=r"name it .yaml, .yml or .json \(got '.toml'\)"):
        Recipe.load(tmp_path / "r.toml")
    (tmp_path / "bad.yaml").write_bytes(b"version: 1\nmodel: {path: \xff}\n")
    with pytest.raises(RecipeError, match="cannot read recipe file"):
        Recipe.load(tmp_path / "bad.yaml")
    (tmp_path / "folder.yaml").mkdir()
    with pytest.raises(RecipeError, match="cannot read recipe file"):
        Recipe.load(tmp_path / "folder.yaml")


# -- atomic saves ----------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "recipe.yaml"
    make(seed=1).save(path)
    return path, path.read_bytes()


def test_a_failing_dump_leaves_the_old_file(saved, monkeypatch):
    path, before = saved

    def boom(*args, **kwargs):
        raise RuntimeError("dump failed")

    monkeypatch.setattr(yaml, "dump", boom)
    with pytest.raises(RuntimeError, match="dump failed"):
        make(seed=2).save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["recipe.yaml"]


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_a_failing_write_leaves_the_old_file_and_no_tmp(saved, monkeypatch, step):
    path, before = saved

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, step, boom)
    with pytest.raises(RecipeError, match=r"cannot write recipe file .*recipe.yaml: .*No space left"):
        make(seed=2).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["recipe.yaml"]
    assert Recipe.load(path).seed == 1


def test_save_errors(tmp_path):
    with pytest.raises(RecipeError, match="cannot write recipe file"):
        make().save(tmp_path / "no" / "such" / "folder.yaml")
    with pytest.raises(RecipeError, match="name it .yaml, .yml or .json"):
        make().save(tmp_path / "recipe.txt")
    assert not list(tmp_path.iterdir())


# -- properties --------------------------------------------------------------------------------

FORMATS = formats.names()
SCHEMES = schemes.names() + ["custom"]
text = st.text(min_size=1, max_size=20).filter(str.strip)
maybe_text = st.none() | text


def floats(**bounds):
    return st.floats(allow_nan=False, allow_infinity=False, **bounds)


devices = st.sampled_from(["auto", "cpu", "cuda"]) | st.integers(0, 64).map(lambda n: f"cuda:{n}")
fmt = st.none() | st.sampled_from(FORMATS + ["none"])


@st.composite
def valid_recipe_dicts(draw):
    """Plain recipes already in stored form, so to_dict must give them back unchanged."""
    scheme, weight, activation = draw(st.sampled_from(SCHEMES)), draw(fmt), draw(fmt)
    quantizes = lambda: schemes.get(scheme, weight, activation)  # noqa: E731
    if scheme == "custom" and weight in (None, "none") and activation in (None, "none"):
        weight = draw(st.sampled_from(FORMATS))
    elif scheme != "custom" and quantizes().weight is None and quantizes().activation is None:
        weight = draw(st.sampled_from(FORMATS))
    method = draw(st.sampled_from(["max", "percentile", "mse"]))
    if method == "mse" and quantizes().weight is None:
        method = "max"
    override = st.fixed_dictionaries({"pattern": text, "weight": fmt, "activation": fmt}).filter(
        lambda o: o["weight"] is not None or o["activation"] is not None)
    return {
        "version": 1,
        "model": {"path": draw(text), "kind": draw(st.sampled_from(["auto", "causal-lm", "encoder"])),
                  "dtype": draw(st.sampled_from(["auto", "float32", "bfloat16", "float16"])),
                  "trust_remote_code": draw(st.booleans())},
        "data": {"path": draw(maybe_text), "eval_path": draw(maybe_text), "text_field": draw(text),
                 "seq_len": draw(st.integers(8, 2**40)), "batch_size": draw(st.integers(1, 4096)),
                 "calib_batches": draw(st.integers(1, 10**6)), "eval_batches": draw(st.integers(1, 10**6)),
                 "eval_fraction": draw(floats(min_value=0, max_value=0.5, exclude_min=True))},
        "quant": {"scheme": scheme, "weight": weight, "activation": activation,
                  "include": draw(st.lists(text, min_size=1, max_size=3)),
                  "exclude": draw(st.lists(text, max_size=3)),
                  "default_exclusions": draw(st.booleans()),
                  "overrides": draw(st.lists(override, max_size=3))},
        "calibration": {"method": method, "percentile": draw(floats(min_value=0, max_value=100, exclude_min=True)),
                        "mse_grid": draw(st.integers(2, 1000)),
                        "mse_min_ratio": draw(floats(min_value=0, max_value=1, exclude_min=True, exclude_max=True)),
                        "algorithm": draw(st.sampled_from(["rtn", "gptq", "awq", "smoothquant", "awq+gptq",
                                                           "smoothquant+gptq"])),
                        "gptq_damp": draw(floats(min_value=0, max_value=1, exclude_min=True)),
                        "gptq_block_size": draw(st.integers(1, 4096)), "gptq_act_order": draw(st.booleans()),
                        "awq_grid": draw(st.integers(2, 100)),
                        "smoothquant_alpha": draw(st.just("auto") | floats(min_value=0, max_value=1))},
        "mode": draw(st.sampled_from(["ptq", "qat", "qad"])),
        "train": {"steps": draw(st.integers(1, 10**9)), "lr": draw(floats(min_value=0, exclude_min=True)),
                  "weight_decay": draw(floats(min_value=0)), "warmup_steps": draw(st.integers(0, 10**6)),
                  "schedule": draw(st.sampled_from(["cosine", "constant", "linear"])),
                  "batch_size": draw(st.none() | st.integers(1, 4096)), "grad_accum": draw(st.integers(1, 1024)),
                  "grad_clip": draw(floats(min_value=0)), "eval_every": draw(st.integers(0, 10**6)),
                  "checkpoint_every": draw(st.integers(0, 10**6)),
                  "kd_temperature": draw(floats(min_value=0, exclude_min=True)),
                  "kd_alpha": draw(floats(min_value=0, max_value=1)), "kd_hidden_weight": draw(floats(min_value=0)),
                  "learnable_scales": draw(st.booleans()), "gradient_checkpointing": draw(st.booleans()),
                  "early_stop_perplexity": draw(st.none() | floats(min_value=0, exclude_min=True)),
                  "teacher_device": draw(st.none() | devices)},
        "export": {"format": draw(st.sampled_from([None, "compressed-tensors", "modelopt", "dense"])),
                   "path": draw(maybe_text), "verify": draw(st.booleans()),
                   "max_shard_mb": draw(st.integers(1, 10**6))},
        "analysis": {"formats": draw(st.lists(st.sampled_from(FORMATS), max_size=3)),
                     "sensitivity": draw(st.booleans()), "benchmark": draw(st.booleans())},
        "distributed": {"strategy": draw(st.sampled_from(["fsdp2", "ddp"])),
                        "teacher": draw(st.sampled_from(["replicate", "shard"]))},
        "seed": draw(st.integers(0, 2**32 - 1)),
        "device": draw(devices),
    }


@settings(max_examples=100, deadline=None)
@given(valid_recipe_dicts())
def test_valid_recipes_round_trip(data):
    for info in schema():  # keys the strategy does not draw keep their defaults
        if "[]" not in info.key and not info.required:
            section, _, name = info.key.rpartition(".")
            (data[section] if section else data).setdefault(name, info.default)
    r = Recipe.from_dict(data, require_version=True)
    assert r.to_dict() == data
    assert Recipe.from_dict(r.to_dict()) == r
    assert Recipe.from_yaml(r.to_yaml()) == r
    assert Recipe.from_dict(json.loads(r.to_json()), require_version=True) == r


junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | st.binary(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=3),
    max_leaves=8,
)
SETTABLE = [info.key for info in schema() if "[]" not in info.key]
SECTIONS = ["model", "data", "quant", "calibration", "train", "export", "analysis", "distributed"]


def only_recipe_errors(build):
    try:
        return build()
    except RecipeError:
        return None


@settings(max_examples=200, deadline=None)
@given(junk)
def test_junk_raises_only_recipe_errors(value):
    only_recipe_errors(lambda: Recipe.from_dict(value))
    only_recipe_errors(lambda: Recipe.from_dict({**DEMO, "version": 1, "quant": value}, require_version=True))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_recipe_dicts(), st.sampled_from(SETTABLE + SECTIONS), junk, st.sampled_from(SECTIONS),
       st.text(max_size=10))
def test_junk_in_a_valid_recipe_raises_only_recipe_errors(data, key, value, section_name, stray):
    section, _, name = key.rpartition(".")
    (data[section] if section else data)[name] = value
    only_recipe_errors(lambda: Recipe.from_dict(data))
    data[section_name] = {stray: value}
    only_recipe_errors(lambda: Recipe.from_dict(data))
    only_recipe_errors(lambda: make().with_updates({key: value}))
    only_recipe_errors(lambda: make().with_updates({stray: value}))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60) | st.sampled_from(["version: 1\nmodel: {path: x}\n", "{]", "a: *b", "!!binary x"]))
def test_junk_text_raises_only_recipe_errors(source):
    only_recipe_errors(lambda: Recipe.from_yaml(source))
    only_recipe_errors(lambda: Recipe._from_text(source, "json", "<json>", True))
    only_recipe_errors(lambda: parse_assignment(source))
