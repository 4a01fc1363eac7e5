"""Faster decode-step matmuls on CPU: ``W @ x.T`` instead of ``x @ W.T`` for a few rows.

With MKL, `F.linear(x, W)` on a skinny input (the 2B rows of a decode step)
repacks the whole weight matrix every call; computing ``(W @ x.T).T`` streams
the weights once. Measured on this 2-core machine for SmolLM2's shapes:
M = 2 rows, 1536x576: 560 us -> 259 us; the 49152x576 LM head at M = 8:
56 ms -> 13 ms (same maths, fp32 summation order aside). Prefill (many rows)
and training (grad enabled) keep `F.linear`.

`skinny_cpu_linear(model)` patches the forward of every `nn.Linear` of a CPU
model for the duration of a `with` block and restores it afterwards.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

#: Largest number of input rows routed through ``W @ x.T`` (beyond it, GEMM packing pays off).
MAX_SKINNY_ROWS = 32


def _skinny_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if 0 < rows <= MAX_SKINNY_ROWS and not torch.is_grad_enabled() and x.dtype == self.weight.dtype:
        y = torch.matmul(self.weight, x.reshape(rows, x.shape[-1]).t()).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.weight.shape[0])
    return F.linear(x, self.weight, self.bias)


@contextlib.contextmanager
def skinny_cpu_linear(model: nn.Module) -> Iterator[None]:
    """Within the block, plain `nn.Linear` layers of a CPU model use the skinny matmul."""
    first = next(model.parameters(), None)
    if first is None or first.device.type != "cpu":
        yield
        return
    patched = [m for m in model.modules() if type(m) is nn.Linear and "forward" not in m.__dict__]
    for m in patched:
        m.forward = types.MethodType(_skinny_forward, m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward
