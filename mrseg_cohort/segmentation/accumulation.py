"""nnU-Net's float16 sliding-window sums, bit for bit, at float32 speed on a CPU.

nnU-Net's predictor accumulates each fold's Gaussian-weighted tile logits in float16 buffers
(``prediction *= gaussian; predicted_logits[sl] += prediction; n_predictions[sl] += gaussian``,
``gaussian`` float16, the prediction float32 on a CPU and float16 under CUDA autocast), divides by
the summed weights (``torch.div``, float16) and checks for infinities. Torch evaluates an in-place
add into a float16 tensor in float32 and rounds the float32 result once to float16 (round to
nearest, ties to even): ``acc <- half(float(acc) + float(addend))``, for a float16 or a float32
addend alike. On a CPU without float16 arithmetic that add is a mixed-dtype, strided element loop,
about 4x the cost of the same add in float32 (benchmarks/README.md §1).

:func:`add_rounded` evaluates the same expression with contiguous float32 arrays: ``float(acc)`` is
exact (every float16 value is a float32 value), the float32 addition is the same operation (IEEE
addition is commutative, so the operand order does not matter), and the copy back into the float16
window is the same rounding. The result is therefore identical bit for bit by construction, and
``tests/test_engine.py`` checks it against torch's own in-place add on values that exercise ties,
subnormals and overflow.

Two facts make the float16 path device-independent as well. The float32 sum of two float16 values,
rounded to float16, is their correctly rounded float16 sum: float32 carries 24 >= 2 * 11 + 2
significant bits, so rounding twice equals rounding once (Figueroa, "When is double rounding
innocuous?", SIGNUM 1995), and a GPU adding float16 natively gets the same value. And the product of
two float16 values is exact in float32 (11 + 11 = 22 <= 24 significant bits; exponents from 2^-48 to
2^32 are float32 normals), so ``p.mul_(gaussian)`` in float16 is that float32 product rounded once,
on any device.
"""

from __future__ import annotations

import torch

__all__ = ["add_rounded", "all_finite"]


def add_rounded(window: torch.Tensor, addend: torch.Tensor, scratch: torch.Tensor | None = None) -> None:
    """``window += addend`` exactly as torch computes it, faster for a float16 ``window`` on a CPU.

    Args:
        window: the accumulator's slice (any strides), float16 on the CPU for the fast path;
            anything else is added natively.
        addend: same shape; float32 (a CPU tile's weighted logits: overwritten with the sum) or
            float16 (a GPU tile moved to the host: left alone).
        scratch: float32, ``window``'s shape, contiguous: reused for the float32 copy of ``window``.
    """
    if window.dtype != torch.float16 or window.device.type != "cpu":
        window += addend
        return
    total = addend if addend.dtype == torch.float32 else addend.float()
    if scratch is None:
        scratch = torch.empty(window.shape, dtype=torch.float32)
    scratch.copy_(window)  # exact
    total.add_(scratch)  # the float32 add torch's float16 kernel performs
    window.copy_(total)  # its one rounding to float16


_FINITE_CHUNK = 1 << 22
"""Values per float32 sum in :func:`all_finite`: 2^22 * 65504 (float16's largest) < 2^39, far below
float32's largest value, so a sum of finite float16 values cannot overflow."""


def all_finite(values: torch.Tensor) -> bool:
    """No NaN and no infinity in ``values``.

    For float16 on the CPU (where ``torch.isfinite`` is an element loop): the float32 sum of each
    chunk of :data:`_FINITE_CHUNK` values is finite exactly when all its values are (finite ones
    cannot overflow it; NaN and infinities propagate, +inf + -inf being NaN)."""
    if values.dtype != torch.float16 or values.device.type != "cpu":
        return bool(torch.isfinite(values).all())
    return all(bool(torch.isfinite(part.float().sum())) for part in values.reshape(-1).split(_FINITE_CHUNK))
