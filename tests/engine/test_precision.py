"""A bf16 student trained with fp32 master weights moves as the fp32 run does; plain bf16 does not."""

from __future__ import annotations

import copy

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from engine.events import CancelToken
from engine.train.loop import Trainer, TrainSettings
from engine.train.precision import MasterWeights


def _model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


def _train(base, dtype, master: bool, blocks, steps=50):
    model = copy.deepcopy(base).to(dtype)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    start = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    s = TrainSettings(mode="qat", steps=steps, lr=1e-5, warmup_steps=0, schedule="constant", batch_size=2,
                      eval_every=0, checkpoint_every=0, grad_clip=0.0, master_weights=master)
    t = Trainer(model, None, "causal-lm", blocks, s, torch.device("cpu"), lambda e: None, CancelToken())
    for _ in range(steps):
        t.train_step()
    held = dict(zip(names, (m for _, m in t.master.pairs))) if t.master.active else dict(model.named_parameters())
    moved = {n: held[n].detach().double() - start[n] for n in names}
    return model, t, moved


def _relative(a, b) -> float:
    num = sum(float(((a[n] - b[n]) ** 2).sum()) for n in b) ** 0.5
    return num / sum(float((b[n] ** 2).sum()) for n in b) ** 0.5


def test_bf16_with_master_weights_moves_like_fp32_and_plain_bf16_does_not():
    base = _model()
    blocks = torch.randint(0, 384, (8, 24), generator=torch.Generator().manual_seed(1))
    _, _, ref = _train(base, torch.float32, True, blocks)
    model, trainer, master = _train(base, torch.bfloat16, True, blocks)
    _, plain_trainer, plain = _train(base, torch.bfloat16, False, blocks)
    assert not plain_trainer.master.active
    assert trainer.master.active and trainer.master.extra_bytes == 4 * sum(p.numel() for p in model.parameters())
    # optimizer state is fp32 (it is created like the masters)
    for st in trainer.optimizer.state.values():
        assert st["exp_avg"].dtype == torch.float32 and st["exp_avg_sq"].dtype == torch.float32
    r_master, r_plain = _relative(master, ref), _relative(plain, ref)
    print(f"relative difference to the fp32 run: master weights {r_master:.4f}, plain bf16 {r_plain:.4f}")
    assert r_master < 0.05
    assert r_plain > 0.5  # most bf16 updates of lr 1e-5 round away
    # the model's own bf16 tensors are the masters rounded to bf16
    for p, m in trainer.master.pairs:
        assert p.dtype == torch.bfloat16 and torch.equal(p, m.to(torch.bfloat16))


def test_fp32_parameters_are_optimized_as_they_are():
    params = [torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(3).bfloat16())]
    mw = MasterWeights(params)
    assert mw.optim_params[0] is params[0] and mw.optim_params[1].dtype == torch.float32
    params[1].grad = torch.ones(3, dtype=torch.bfloat16)
    mw.grads_to_master()
    assert params[1].grad is None and mw.optim_params[1].grad.dtype == torch.float32
    state = mw.state_dict()
    with torch.no_grad():
        mw.optim_params[1].add_(1.0)
    mw.load_state_dict(state)
    assert torch.equal(mw.optim_params[1], state["masters"][0])
