r"""Merging partial attentions by their log-sum-exp, in torch: the twin of
``flashref.reference.merge_attention`` (reference/merge_attention.py has the derivation).

For one query row that attended to key set A (``out_a``, ``lse_a``) and, separately, to a
disjoint key set B, the attention over A u B is

    lse = log(exp(lse_a) + exp(lse_b))                 (torch.logaddexp, overflow-free)
    out = exp(lse_a - lse) * out_a + exp(lse_b - lse) * out_b

A side that saw no key has ``lse = -inf`` and weight ``exp(-inf) = 0``; when both are
``-inf`` the merged row is empty (``out = 0``, ``lse = -inf``): ``lse`` is replaced by 0 in
the exponents of such rows so that no ``-inf - (-inf)`` NaN is ever formed.
"""

from __future__ import annotations

import torch


def merge_attention_(out_acc: torch.Tensor, lse_acc: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor) -> None:
    """Merge ``(out_b, lse_b)`` into the float32 accumulators ``(out_acc, lse_acc)`` in place.

    out_acc: (..., L, D) float32, lse_acc: (..., L) float32 (views are fine: the ring merges
    into slices of its accumulators); out_b: (..., L, D) any float dtype; lse_b: (..., L).
    """
    lse = torch.logaddexp(lse_acc, lse_b.to(lse_acc.dtype))
    safe = torch.where(lse == float("-inf"), torch.zeros_like(lse), lse)
    weight_acc = torch.exp(lse_acc - safe).unsqueeze(-1)
    weight_b = torch.exp(lse_b - safe).unsqueeze(-1)
    out_acc.mul_(weight_acc).add_(weight_b * out_b.to(out_acc.dtype))
    lse_acc.copy_(lse)


def merge_attention(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor):
    """Combine two partial attentions over disjoint key sets: ``(out, lse)`` in float32 (float64
    if either input is float64). out_a, out_b: (..., L, D); lse_a, lse_b: (..., L), -inf for a
    row that saw no key. Same contract as ``flashref.reference.merge_attention``."""
    if out_a.shape != out_b.shape:
        raise ValueError(f"out_a, out_b: shapes differ: {tuple(out_a.shape)} vs {tuple(out_b.shape)}")
    if lse_a.shape != lse_b.shape or lse_a.shape != out_a.shape[:-1]:
        raise ValueError(f"lse_a, lse_b: expected shape {tuple(out_a.shape[:-1])} (out without its last axis), "
                         f"got {tuple(lse_a.shape)} and {tuple(lse_b.shape)}")
    dtype = torch.float64 if torch.float64 in (out_a.dtype, out_b.dtype, lse_a.dtype, lse_b.dtype) else torch.float32
    out, lse = out_a.to(dtype).clone(), lse_a.to(dtype).clone()
    merge_attention_(out, lse, out_b, lse_b)
    return out, lse
