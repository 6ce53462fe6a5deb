"""GPTQ: exact against a brute-force sequential least-squares solution, below round-to-nearest on
every layer of a real tiny Llama, fake-quant of the stored weight equal to the GPTQ result for
every weight format, progress and cancel per block, exports that verify by reload."""

from __future__ import annotations

import copy

import pytest
import torch

from engine import calib, formats
from engine.calib.gptq import gptq, gptq_quantize, scale_search_for
from engine.errors import LowbitError
from engine.events import CancelToken, Cancelled
from engine.quant import schemes
from engine.quant.select import apply_plan, plan_layers, quant_layers, quantization_disabled


@pytest.fixture(autouse=True)
def _eager_fake_quant(monkeypatch):
    monkeypatch.setenv("LOWBIT_COMPILE", "0")  # compile time per shape would dominate these small cases


# ------------------------------------------------------------------ one layer, brute force

def _searched_amax(fmt, values, hdiag, grid=20, min_ratio=0.5):
    """By definition: per row, the clipped max r * max (r from 1 down) of least Hessian-weighted error."""
    a0 = values.abs().amax(-1, keepdim=True)
    out = a0.clone()
    for i in range(values.shape[0]):
        best = None
        for r in torch.linspace(1.0, min_ratio, grid).tolist():
            a = a0[i:i + 1] * r
            q = fmt.fake_quant(values[i:i + 1], a)
            e = float((((q - values[i:i + 1]) ** 2) * hdiag).sum())
            if best is None or e < best:
                best, out[i] = e, a
    return out


def _sequential_least_squares(W0, X, fmt, damp, search=False):
    """GPTQ by definition: round column j with its group's scale, then set every column after j
    to the least-squares optimum of the damped output error given the columns already rounded."""
    W0 = W0.double()
    n, cols = X.shape
    H = 2.0 / n * X.double().T @ X.double()
    H = H + damp * H.diagonal().mean() * torch.eye(cols, dtype=torch.float64)
    A = torch.linalg.cholesky(H).T  # ||A d||^2 = d^T H d
    G = fmt.block if fmt.granularity == "block" else cols
    cur, Q = W0.clone(), torch.zeros_like(W0)
    params = None
    for j in range(cols):
        if j % G == 0:
            vals = cur[:, j:j + G].float()
            amax = _searched_amax(fmt, vals, (2.0 / n * X.T @ X).diagonal()[j:j + G].float()) if search else None
            params = fmt.group_params(vals, amax)
        Q[:, j] = fmt.quantize_fixed(cur[:, j:j + 1].float(), params).squeeze(1).double()
        if j + 1 < cols:
            fixed = (Q[:, :j + 1] - W0[:, :j + 1]) @ A[:, :j + 1].T  # [rows, cols] residual of the fixed part
            z = torch.linalg.lstsq(A[:, j + 1:].unsqueeze(0).expand(W0.shape[0], -1, -1),
                                   -fixed.unsqueeze(-1)).solution.squeeze(-1)
            cur[:, j + 1:] = W0[:, j + 1:] + z
    return Q


@pytest.mark.parametrize("fmt_name,block_size", [("int4", 4), ("int3_g4", 8), ("int4_g8", 3), ("int2", 16)])
def test_single_layer_equals_sequential_least_squares(fmt_name, block_size):
    g = torch.Generator().manual_seed(3)
    rows, cols, n = 5, 16, 40
    # correlated inputs, as real activations are, so error compensation matters
    X = torch.randn(n, cols, generator=g) @ (torch.eye(cols) + 0.6 * torch.randn(cols, cols, generator=g))
    W = torch.randn(rows, cols, generator=g)
    fmt = formats.get(fmt_name)
    damp = 0.05
    H = 2.0 / n * X.T @ X
    Q, _ = gptq_quantize(W, H, fmt, damp=damp, block_size=block_size)
    ref = _sequential_least_squares(W, X, fmt, damp)
    assert torch.allclose(Q.double(), ref, rtol=0, atol=1e-5), (Q - ref).abs().max()
    # and it beats round-to-nearest on the objective it minimises
    rtn = fmt.fake_quant(W)
    err = lambda q: float(((X @ (q.float() - W).T) ** 2).sum())  # noqa: E731
    assert err(Q) < 0.9 * err(rtn)


@pytest.mark.parametrize("fmt_name", ["int3_g4", "int2"])
def test_scale_search_equals_least_squares_with_searched_scales(fmt_name):
    g = torch.Generator().manual_seed(4)
    rows, cols, n = 5, 16, 40
    X = torch.randn(n, cols, generator=g) @ (torch.eye(cols) + 0.6 * torch.randn(cols, cols, generator=g))
    W = torch.randn(rows, cols, generator=g)
    fmt = formats.get(fmt_name)
    H = 2.0 / n * X.T @ X
    Q, amax = gptq_quantize(W, H, fmt, damp=0.05, block_size=8, scale_search=True)
    ref = _sequential_least_squares(W, X, fmt, 0.05, search=True)
    assert torch.allclose(Q.double(), ref, rtol=0, atol=1e-5), (Q - ref).abs().max()
    assert torch.equal(fmt.fake_quant(Q, amax), Q)  # the stored amax reproduces the searched scales
    plain, _ = gptq_quantize(W, H, fmt, damp=0.05, block_size=8)
    assert not torch.equal(Q, plain)  # the search chose other scales than the groups' max somewhere



def _nvfp4_searched_scale(vals, hdiag, tensor_amax, grid=20, min_ratio=0.5):
    """NVFP4 by its definition: per row of a block of 16, the E4M3 block scale s_b of the clipped
    max r * max (r from 1 down, under the fp32 global scale s2 = amax / 2688), the block's largest
    element on the top code, of least Hessian-weighted error; returns s_b * s2 [rows, 1]."""
    from engine.formats.numerics import e4m3_round, round_minifloat

    s2 = tensor_amax / 2688.0
    bmax = vals.abs().amax(-1, keepdim=True)
    top = vals.abs().argmax(-1, keepdim=True)
    best_s = best_e = None
    for r in torch.linspace(1.0, min_ratio, grid).tolist():
        s = e4m3_round(((bmax * r / 6.0) / s2).clamp(2.0 ** -9, 448.0)) * s2
        q = round_minifloat(vals / s, 1, 0, 6.0) * s
        q = q.scatter(-1, top, torch.where(vals.gather(-1, top) < 0, -6.0, 6.0) * s)
        e = (((q - vals) ** 2) * hdiag).sum(-1, keepdim=True)
        if best_e is None:
            best_s, best_e = s, e
        else:
            better = e < best_e
            best_s, best_e = torch.where(better, s, best_s), torch.where(better, e, best_e)
    return best_s


def test_nvfp4_block_scale_search_equals_least_squares_and_is_stored_exactly():
    """NVFP4's scale search: each block's E4M3 scale is searched when GPTQ reaches the block (on the
    error-compensated weights), under the per-tensor global scale fixed before; the result is the
    sequential least-squares solution under those scales, and fake_quant with the global amax alone
    reproduces it (the block's largest element sits on the top code of the chosen scale)."""
    from engine.formats.numerics import round_minifloat

    g = torch.Generator().manual_seed(8)
    rows, cols, n = 6, 48, 96
    X = torch.randn(n, cols, generator=g) @ (torch.eye(cols) + 0.5 * torch.randn(cols, cols, generator=g))
    W = torch.randn(rows, cols, generator=g) * torch.rand(rows, 1, generator=g)
    W[1, 3] = 4.0  # sets the global scale
    fmt = formats.get("nvfp4")
    H = 2.0 / n * X.T @ X
    damp, amax = 0.05, W.abs().amax()
    Q, _ = gptq_quantize(W, H, fmt, amax, damp=damp, block_size=16, scale_search=True)

    Hd = H.double() + damp * H.diagonal().double().mean() * torch.eye(cols, dtype=torch.float64)
    A = torch.linalg.cholesky(Hd).T  # ||A d||^2 = d^T H d
    W0, cur, ref = W.double(), W.double().clone(), torch.zeros(rows, cols, dtype=torch.float64)
    for j in range(cols):
        if j % 16 == 0:
            block = cur[:, j:j + 16].float()
            s = _nvfp4_searched_scale(block, H.diagonal()[j:j + 16], amax)
            top = block.abs().argmax(-1) + j
        q = round_minifloat(cur[:, j:j + 1].float() / s, 1, 0, 6.0) * s
        pinned = top == j
        q[pinned] = torch.where(cur[pinned, j:j + 1] < 0, -6.0, 6.0).float() * s[pinned]
        ref[:, j] = q.squeeze(1).double()
        if j + 1 < cols:
            fixed = (ref[:, :j + 1] - W0[:, :j + 1]) @ A[:, :j + 1].T
            z = torch.linalg.lstsq(A[:, j + 1:].unsqueeze(0).expand(rows, -1, -1),
                                   -fixed.unsqueeze(-1)).solution.squeeze(-1)
            cur[:, j + 1:] = W0[:, j + 1:] + z
    assert torch.allclose(Q.double(), ref, rtol=0, atol=1e-5), (Q - ref).abs().max()
    assert torch.equal(fmt.fake_quant(Q, amax), Q)  # stored exactly: the global amax is all it needs
    plain, _ = gptq_quantize(W, H, fmt, amax, damp=damp, block_size=16)
    assert not torch.equal(Q, plain)  # the search clipped some block
    err = lambda q: float(((X @ (q - W).T) ** 2).sum())  # noqa: E731
    assert err(Q) < err(fmt.fake_quant(W, amax))

def test_act_order_equals_least_squares_in_its_column_order():
    g = torch.Generator().manual_seed(5)
    rows, cols, n = 4, 12, 48
    X = torch.randn(n, cols, generator=g) * torch.linspace(0.2, 3.0, cols)
    W = torch.randn(rows, cols, generator=g)
    fmt = formats.get("int4")  # per channel: the scale does not depend on the column order
    H = 2.0 / n * X.T @ X
    Q, _ = gptq_quantize(W, H, fmt, damp=0.01, block_size=5, act_order=True)
    perm = torch.argsort(torch.diag(H), descending=True)
    ref = _sequential_least_squares(W[:, perm], X[:, perm], fmt, 0.01)
    assert torch.allclose(Q[:, perm].double(), ref, atol=1e-5)


ALL_WEIGHT_FORMATS = ["int8", "int4_g32", "int3_g32", "int2_g32", "int4_tensor", "int4_asym_g128",
                      "fp8_e4m3", "fp8_e4m3_channel", "nvfp4", "mxfp4", "mxfp8", "mxfp6_e3m2"]


@pytest.mark.parametrize("search", [False, True])
@pytest.mark.parametrize("fmt_name", ALL_WEIGHT_FORMATS)
def test_fake_quant_of_the_result_is_the_result(fmt_name, search):
    """Stored with the returned amax, the GPTQ matrix passes fake_quant unchanged: what runs,
    what trains and what exports is the GPTQ solution."""
    g = torch.Generator().manual_seed(7)
    rows, cols, n = 24, 160, 256  # 160 columns: a partial last group for the g128 format
    X = torch.randn(n, cols, generator=g) @ (torch.eye(cols) + 0.3 * torch.randn(cols, cols, generator=g))
    W = torch.randn(rows, cols, generator=g) * torch.rand(rows, 1, generator=g)
    W[0, 5] = 8.0  # an outlier that sets a tensor scale
    fmt = formats.get(fmt_name)
    H = 2.0 / n * X.T @ X
    Q, amax = gptq_quantize(W, H, fmt, damp=0.01, block_size=64, scale_search=search)
    if fmt.fixed_scale_store == "group":
        assert amax is not None
        stored = amax
    elif fmt.fixed_scale_store == "tensor":
        stored = W.abs().amax()
    else:
        stored = None
    again = fmt.fake_quant(Q, stored)
    tol = 1e-6 * float(Q.abs().max()) if fmt_name.startswith("int4_asym") else 0.0  # zero point: float rounding
    assert (again - Q).abs().max() <= tol
    err = lambda q: float(((X @ (q - W).T) ** 2).sum())  # noqa: E731
    assert err(Q) < err(fmt.fake_quant(W, fmt.amax_of(W) if fmt.calibratable else None))


def test_scale_search_auto_is_on_at_two_bits_only():
    """auto (the default): the search where it measured better (2-bit weights), not at 3 and 4 bits."""
    assert [scale_search_for("auto", formats.get(n)) for n in ("int2_g32", "int3_g32", "int4_g32", "nvfp4")] == [
        True, False, False, False]
    assert scale_search_for(True, formats.get("int4_g32")) and not scale_search_for(False, formats.get("int2_g32"))
    with pytest.raises(LowbitError, match="'auto'"):
        scale_search_for("on", formats.get("int4_g32"))
    g = torch.Generator().manual_seed(3)
    X = torch.randn(128, 64, generator=g)
    W, H = torch.randn(8, 64, generator=g), 2.0 / 128 * X.T @ X
    for name, same_as in (("int2_g32", True), ("int4_g32", False)):
        fmt = formats.get(name)
        auto, _ = gptq_quantize(W, H, fmt, scale_search="auto")
        assert torch.equal(auto, gptq_quantize(W, H, fmt, scale_search=same_as)[0]), name


def test_bad_settings_are_clear_errors():
    W, H = torch.randn(2, 8), torch.eye(8)
    with pytest.raises(LowbitError, match="damp"):
        gptq_quantize(W, H, formats.get("int4"), damp=0.0)
    with pytest.raises(LowbitError, match="block_size"):
        gptq_quantize(W, H, formats.get("int4"), block_size=0)


# ------------------------------------------------------------------ a real tiny Llama, block by block

def _llama(n_layers=2):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=n_layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=False)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def _text_batches(tokenizer_texts, n=4, seq=32):
    g = torch.Generator().manual_seed(11)
    return [torch.randint(0, 256, (2, seq), generator=g) for _ in range(n)]


def _quantized(model, weight_fmt, batches):
    plans, _ = plan_layers(model, schemes.get("custom", weight_fmt, "none"))
    apply_plan(model, plans)
    calib.calibrate_weights(model)
    return model


def _layer_inputs(model, batches):
    """Each QuantLinear's inputs on the calibration batches, in the full-precision model."""
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: seen.setdefault(n, []).append(a[0].reshape(-1, a[0].shape[-1])))
             for n, m in quant_layers(model)]
    with quantization_disabled(model), torch.no_grad():
        for b in batches:
            model(input_ids=b)
    for h in hooks:
        h.remove()
    return {n: torch.cat(v) for n, v in seen.items()}


@pytest.mark.parametrize("weight_fmt", ["int4_g128", "int3_g32", "nvfp4"])
def test_gptq_output_error_below_rtn_on_every_layer(weight_fmt):
    batches = _text_batches(None)
    model = _quantized(_llama(), weight_fmt, batches)
    original = {n: m.weight.detach().clone() for n, m in quant_layers(model)}
    rtn = {n: m.quantized_weight().detach().clone() for n, m in quant_layers(model)}
    inputs = _layer_inputs(model, batches)
    done = []
    res = gptq(model, lambda m: [m(input_ids=b) for b in batches],
               progress=lambda i, total, info: done.append((i, total, info["block"])))
    assert done == [(1, 2, "model.layers.0"), (2, 2, "model.layers.1")]
    assert len(res.layers) == 14 and all(r["seconds"] >= 0 for r in res.layers)
    assert [b["index"] for b in res.blocks] == [0, 1] and all(b["seconds"] > 0 for b in res.blocks)
    for name, layer in quant_layers(model):
        x, w = inputs[name], original[name]
        e_rtn = float(((x @ (rtn[name] - w).T) ** 2).sum())
        e_gptq = float(((x @ (layer.quantized_weight().detach() - w).T) ** 2).sum())
        assert e_gptq < e_rtn, (name, e_gptq, e_rtn)
        # the forward pass uses exactly the GPTQ matrix
        assert torch.equal(layer.quantized_weight(), layer.weight)
    rows = {r["name"]: r for r in res.layers}
    assert all(r["gptq_error"] < r["rtn_error"] for r in rows.values())


def test_act_order_and_small_blocks_run_on_a_model():
    batches = _text_batches(None, n=2)
    model = _quantized(_llama(1), "int4_g32", batches)
    res = gptq(model, lambda m: [m(input_ids=b) for b in batches], damp=0.1, block_size=16, act_order=True)
    assert all(r["gptq_error"] < r["rtn_error"] for r in res.layers)


def test_cancel_stops_between_blocks():
    batches = _text_batches(None, n=2)
    model = _quantized(_llama(), "int4_g32", batches)
    before = model.model.layers[1].mlp.down_proj.weight.detach().clone()
    token = CancelToken()
    with pytest.raises(Cancelled):
        gptq(model, lambda m: [m(input_ids=b) for b in batches], cancel=token,
             progress=lambda i, total, info: token.cancel())
    assert torch.equal(model.model.layers[1].mlp.down_proj.weight, before)  # the second block was not touched


def test_bert_encoder_blocks():
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=64)
    torch.manual_seed(0)
    model = BertModel(cfg).eval()
    batches = [torch.randint(0, 128, (2, 24)) for _ in range(3)]
    mask = torch.ones(2, 24, dtype=torch.long)
    mask[1, 18:] = 0  # a padded sequence
    model = _quantized(model, "int4_g32", batches)
    res = gptq(model, lambda m: [m(input_ids=b, attention_mask=mask) for b in batches])
    blocks = [r["block"] for r in res.layers]
    # q, k, v, attention output, intermediate, output per block; the pooler after the blocks
    assert blocks == [0] * 6 + [1] * 6 + [None] and res.layers[-1]["name"] == "pooler.dense"
    assert all(r["gptq_error"] < r["rtn_error"] for r in res.layers)


@pytest.mark.parametrize("target,weight_fmt", [("compressed-tensors", "int4_g128"), ("modelopt", "nvfp4"),
                                               ("dense", "int3_g32")])
def test_gptq_model_exports_and_verifies(target, weight_fmt, tmp_path):
    from engine.export import export_model, read_export, verify_export

    batches = _text_batches(None, n=2)
    model = _quantized(_llama(1), weight_fmt, batches)
    gptq(model, lambda m: [m(input_ids=b) for b in batches])
    export_model(model, target, tmp_path / "out")
    ckpt = read_export(tmp_path / "out")
    for name, layer in quant_layers(model):
        got = ckpt.layers[name]
        w = got.weight(torch.float32)
        assert torch.equal(w.float(), layer.quantized_weight().float()), name
    v = verify_export(tmp_path / "out", model, batches[:1])
    assert v["passed"], v


def test_recipe_keys_validate_and_round_trip():
    from engine.recipe import Recipe, RecipeError

    r = Recipe.from_dict({"model": {"path": "demo"}, "calibration": {
        "algorithm": "awq+gptq", "gptq_damp": 0.05, "gptq_block_size": 64, "gptq_act_order": True,
        "gptq_scale_search": False,
        "awq_grid": 10, "smoothquant_alpha": 0.6}})
    again = Recipe.from_yaml(r.to_yaml())
    assert again.calibration == r.calibration and again.calibration.algorithm == "awq+gptq"
    with pytest.raises(RecipeError, match="calibration.algorithm.*did you mean 'gptq'"):
        Recipe.from_dict({"model": {"path": "demo"}, "calibration": {"algorithm": "gptqq"}})
    with pytest.raises(RecipeError, match="smoothquant_alpha"):
        Recipe.from_dict({"model": {"path": "demo"}, "calibration": {"smoothquant_alpha": 2}})
    assert again.calibration.gptq_scale_search is False
    assert Recipe.from_dict({"model": {"path": "demo"}}).calibration.gptq_scale_search == "auto"
    for value in (True, "auto"):
        r = Recipe.from_dict({"model": {"path": "demo"}, "calibration": {"gptq_scale_search": value}})
        assert Recipe.from_yaml(r.to_yaml()).calibration.gptq_scale_search == value
    with pytest.raises(RecipeError, match="gptq_scale_search.*'auto'"):
        Recipe.from_dict({"model": {"path": "demo"}, "calibration": {"gptq_scale_search": "yes please"}})
    with pytest.raises(RecipeError, match="gptq_damp"):
        Recipe.from_dict({"model": {"path": "demo"}, "calibration": {"gptq_damp": 0}})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_gptq_one_block_on_cuda_at_a_time_matches_gptq_of_the_model_on_cuda():
    """GPTQ with ``device``: the weights stay in CPU memory, each block goes to the GPU while it is
    rounded, and the result is what GPTQ of the whole model on the GPU gives."""
    from engine.calib.blocks import input_device

    batches = _text_batches(None)
    model = _quantized(_llama(3), "int4_g128", batches)
    on_gpu = copy.deepcopy(model).cuda()

    def loop(m):
        for b in batches:
            m(input_ids=b.to(input_device(m)))

    whole = gptq(on_gpu, loop)
    seq = gptq(model, loop, device="cuda")
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(b.device.type == "cpu" for b in model.buffers())
    assert {b["device"] for b in seq.blocks} == {"cuda:0"}
    gpu_layers = dict(quant_layers(on_gpu))
    for name, layer in quant_layers(model):
        a, b = layer.weight.detach(), gpu_layers[name].weight.detach().cpu()
        assert (a == b).float().mean() > 0.99, name  # float sums in another order on the same device: a few ties
    errors = {row["name"]: row["gptq_error"] for row in whole.layers}
    for row in seq.layers:
        assert row["gptq_error"] == pytest.approx(errors[row["name"]], rel=0.02), row["name"]
