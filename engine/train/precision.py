"""fp32 master weights for a student held in bf16 or fp16.

bf16 keeps 8 significant bits: a weight of 0.02 moves in steps of about 1.2e-4, so
an AdamW update of lr = 1e-5 applied to the bf16 tensor itself rounds back to the old
value and is lost. Here the optimizer updates an fp32 copy of each low-precision
trainable parameter (its moments are fp32 too, being created like the copy); after each
step the copy is rounded into the model's own tensor, which the forward pass keeps using.
The gradients the model computes in bf16 are moved into the copies' ``.grad`` (and the
bf16 ones freed) before clipping and the step. fp32 parameters are optimized as they are.

Cost: 4 bytes per low-precision trainable parameter (the copy) on the parameter's
device, which the memory plan counts (engine.plan).
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Tuple

import torch

LOW_PRECISION = (torch.bfloat16, torch.float16)


class MasterWeights:
    """Pairs of (model parameter, fp32 master) for the low-precision ones among ``params``."""

    def __init__(self, params: Iterable[torch.nn.Parameter], enabled: bool = True):
        self.pairs: List[Tuple[torch.nn.Parameter, torch.Tensor]] = []
        self.optim_params: List[torch.Tensor] = []
        for p in params:
            if enabled and p.dtype in LOW_PRECISION:
                master = p.detach().to(torch.float32, copy=True).requires_grad_(True)
                self.pairs.append((p, master))
                self.optim_params.append(master)
            else:
                self.optim_params.append(p)

    @property
    def active(self) -> bool:
        return bool(self.pairs)

    @property
    def extra_bytes(self) -> int:
        return sum(m.numel() * m.element_size() for _, m in self.pairs)

    def grads_to_master(self) -> None:
        """Move the model's low-precision gradients into the masters (as fp32)."""
        for p, m in self.pairs:
            m.grad = None if p.grad is None else p.grad.to(torch.float32)
            p.grad = None

    @torch.no_grad()
    def master_to_model(self) -> None:
        """Round the updated masters into the model's own parameters."""
        for p, m in self.pairs:
            p.copy_(m)

    def zero_grad(self) -> None:
        for p, m in self.pairs:
            p.grad = None
            m.grad = None

    def state_dict(self) -> Dict[str, List[torch.Tensor]]:
        return {"masters": [m.detach().cpu() for _, m in self.pairs]}

    @torch.no_grad()
    def load_state_dict(self, state: Dict[str, List[torch.Tensor]]) -> None:
        """Restore the masters saved with a checkpoint; without them (an older checkpoint) they
        start again from the model's restored parameters."""
        saved = list(state.get("masters", [])) if state else []
        if len(saved) != len(self.pairs):
            saved = [None] * len(self.pairs)
        for (p, m), s in zip(self.pairs, saved):
            m.copy_(p if s is None or s.shape != m.shape else s)
