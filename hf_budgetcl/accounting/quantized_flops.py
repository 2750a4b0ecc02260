"""FLOP formulas for bitsandbytes' quantised matmuls, so that ``FlopCounterMode`` counts QLoRA models exactly.

bitsandbytes (≥ 0.45) runs its quantised matmuls as torch custom ops (``torch.ops.bitsandbytes.*``). The
dispatch mode behind ``FlopCounterMode`` sees those ops but has no formula for them, so a 4-bit or 8-bit model's
base matmuls count as zero. Registering a formula per op closes the gap analytically, from the shapes only:

    FLOPs(op) = 2 · M · N · K     (M = rows of the input, K = in_features, N = out_features)

which is exactly what ``aten.mm`` is charged for the same fp32 ``nn.Linear``. The backward needs no formula:

* ``Linear4bit`` (``MatMul4Bit.backward``) computes the input gradient as ``grad_out @ dequantize(W)``, a plain
  ``aten.mm`` already counted (2·M·N·K); the quantised weight is frozen, so no weight gradient exists;
* ``Linear8bitLt`` in training mode on CPU/XPU (``MatMul8bitFp``) runs ``F.linear`` on the dequantised weight in
  the forward and ``aten.mm`` in the backward, both visible already; in eval mode it uses the int8 ops below.

Only the outermost custom op of a call is counted (the dispatch mode is inactive while an op runs), so nested bnb
ops (``int8_mixed_scaled_mm`` → ``int8_scaled_mm`` → ``int8_linear_matmul``) are never counted twice.
Dequantisation is element-wise and, like every element-wise op, not counted (FlopCounterMode's convention).
"""

from __future__ import annotations

import math
import sys
from typing import Any

import torch
from torch.utils.flop_counter import flop_registry, register_flop_formula

__all__ = ["register_quantized_flop_formulas", "quantized_linear_modules"]


def _rows(a: torch.Tensor) -> int:
    return math.prod(a.shape[:-1])


def _gemm_4bit(A, B, shapeB, *args: Any, out_val=None, **kwargs: Any) -> int:
    n_out, k_in = shapeB  # quant_state.shape: the original (out_features, in_features)
    return 2 * _rows(A) * int(n_out) * int(k_in)


def _int8_linear(A, B, *args: Any, out_val=None, **kwargs: Any) -> int:
    return 2 * _rows(A) * B.shape[0] * A.shape[-1]  # B: (out_features, in_features), int8


def _int8_mixed(A, CA, CB, *args: Any, out_val=None, **kwargs: Any) -> int:
    return 2 * _rows(CA) * CB.shape[0] * CA.shape[-1]


# op name -> formula on the raw arguments (get_raw=True: ints such as shapeB must not be turned into shapes)
_FORMULAS = {
    "gemm_4bit": _gemm_4bit,
    "gemv_4bit": _gemm_4bit,  # same schema prefix (A, B, shapeB, ...); the CPU "packed" inference path
    "int8_linear_matmul": _int8_linear,
    "int8_scaled_mm": _int8_linear,
    "int8_mixed_scaled_mm": _int8_mixed,
}


def register_quantized_flop_formulas() -> list[str]:
    """Register the formulas once, if bitsandbytes is loaded (idempotent; returns the ops now covered).

    Nothing is imported: a model can only hold bnb layers if bitsandbytes was imported to build it, and importing
    it eagerly would slow every unquantised run down.
    """
    if "bitsandbytes" not in sys.modules:
        return []
    covered = []
    for name, formula in _FORMULAS.items():
        try:
            packet = getattr(torch.ops.bitsandbytes, name)
        except (AttributeError, RuntimeError):  # an older/newer bnb without this op
            continue
        if packet not in flop_registry:
            register_flop_formula(packet, get_raw=True)(formula)
        covered.append(name)
    return covered


def quantized_linear_modules(model: torch.nn.Module) -> list[str]:
    """Names of the bitsandbytes linear layers in ``model`` (``Linear4bit``, ``Linear8bitLt``)."""
    if "bitsandbytes" not in sys.modules:
        return []
    import bitsandbytes as bnb

    kinds = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    return [name for name, m in model.named_modules() if isinstance(m, kinds)]
