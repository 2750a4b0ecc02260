"""The model's output layer and its logits, found the same way by every part that reads them (SAR, aL, MIR)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def find_head(model: nn.Module, num_outputs: int) -> nn.Linear:
    """The Linear that maps penultimate features to ``num_outputs`` logits: the output embeddings if they match,
    else the last Linear with that many outputs (through DDP's ``module`` and PEFT's base model)."""
    base = getattr(model, "module", model)
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    out = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if isinstance(out, nn.Linear) and out.out_features == num_outputs:
        return out
    linears = [m for m in base.modules() if isinstance(m, nn.Linear) and m.out_features == num_outputs]
    if not linears:
        raise ValueError(f"no output layer with {num_outputs} outputs found")
    return linears[-1]


def logits_of(outputs: Any) -> torch.Tensor:
    """``outputs.logits`` of a ModelOutput, ``outputs["logits"]`` of a plain dict, or the output tensor itself."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    return outputs["logits"] if isinstance(outputs, dict) else outputs.logits
