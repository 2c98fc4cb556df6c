"""Numerical tolerances of the test suite, stated once.

Kernels that compute in a lower precision than the ground truth are held to FlashAttention's
idiom: their error against a float64 evaluation of the reference must be at most
``ERROR_FACTOR`` times the error of the same-precision PyTorch reference, plus ``ATOL[dtype]``.
That bound is tight where the reference is accurate and fair where rounding dominates.
Exact data movement (the cache update) is held to ``EXACT[dtype]``: EMA folds computed in
float32 and rounded once.
"""

from __future__ import annotations

import torch

ERROR_FACTOR = 2.0

ATOL = {
    torch.float32: 1e-5,
    torch.float16: 1e-3,
    torch.bfloat16: 1e-2,
}

# (rtol, atol) for results that differ from the reference only by float32 rounding order.
EXACT = {
    torch.float32: (1e-6, 1e-6),
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (8e-3, 1e-5),
}


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_fa_close(
    out: torch.Tensor, same_precision: torch.Tensor, truth: torch.Tensor, dtype: torch.dtype, what: str
) -> None:
    """``out`` is within ERROR_FACTOR x the same-precision reference's error (+ ATOL) of truth."""
    assert out.shape == truth.shape, f"{what}: shape {tuple(out.shape)} != {tuple(truth.shape)}"
    assert torch.isfinite(out).all(), f"{what}: non-finite values"
    err = max_err(out, truth)
    ref_err = max_err(same_precision, truth)
    bound = ERROR_FACTOR * ref_err + ATOL[dtype]
    assert err <= bound, f"{what} ({dtype}): max error {err:.3e} > bound {bound:.3e} (reference error {ref_err:.3e})"


def assert_exact_close(out: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    rtol, atol = EXACT[ref.dtype]
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")
