r"""Merging attention computed over two disjoint key sets (split-KV, ring attention).

If a query row attends over keys A and, separately, over keys B (disjoint), with

    lse_A = log sum_{j in A} exp(S_j),   O_A = sum_{j in A} exp(S_j - lse_A) V_j

and the same for B, then over A u B:

    lse = log(exp(lse_A) + exp(lse_B))                    (np.logaddexp, overflow-free)
    O   = exp(lse_A - lse) O_A + exp(lse_B - lse) O_B

because exp(S_j - lse) = exp(lse_A - lse) * exp(S_j - lse_A) for j in A. A side with
lse = -inf (it saw no key) gets weight 0; if both are -inf the merged row is empty too:
O = 0, lse = -inf. (Dropout commutes with this: it scales each P_j independently.)

Attention sinks: a sink is one more "key" per row, logit sinks[h] and a zero value
vector, so on its own it is the partial ``(O = 0, lse = sinks[h])``. Over a key split it
must be counted ONCE: give ``sinks=`` to exactly one of the partial attentions (or to
none, then merge the partial ``(0, sinks[h])`` at the end). Merging two partials that
both carry the sink counts exp(sinks[h]) twice in the denominator, which is wrong.
Likewise the sink's gradient ``dsinks = -sum exp(sinks - lse) D`` uses the merged lse
and D = rowsum(dO * O) of the merged O, once.
"""

from __future__ import annotations

import numpy as np

from .attention_inputs import as_float64


def merge_attention(out_a, lse_a, out_b, lse_b):
    """Combine two partial attentions over disjoint key sets: ``(out, lse)``, float64.

    out_a, out_b: (..., L, Dv); lse_a, lse_b: (..., L), natural-log log-sum-exp as returned
    by `attention_forward` (-inf for a row that saw no key). With sinks, at most one side
    may include the sink (see the module docstring).
    """
    out_a, out_b = as_float64("out_a", out_a), as_float64("out_b", out_b)
    lse_a, lse_b = as_float64("lse_a", lse_a), as_float64("lse_b", lse_b)
    if out_a.shape != out_b.shape:
        raise ValueError(f"out_a, out_b: shapes differ: {out_a.shape} vs {out_b.shape}")
    if lse_a.shape != lse_b.shape or lse_a.shape != out_a.shape[:-1]:
        raise ValueError(
            f"lse_a, lse_b: expected shape {out_a.shape[:-1]} (out without its last axis), "
            f"got {lse_a.shape} and {lse_b.shape}"
        )
    for name, lse in (("lse_a", lse_a), ("lse_b", lse_b)):
        if np.isnan(lse).any() or np.isposinf(lse).any():
            raise ValueError(f"{name}: must be finite or -inf, found NaN or +inf")
    lse = np.logaddexp(lse_a, lse_b)
    empty = lse == -np.inf
    safe_lse = np.where(empty, 0.0, lse)
    # exp(-inf - finite) = 0 exactly; empty rows are shifted by 0 and weigh exp(-inf) = 0.
    weight_a = np.exp(lse_a - safe_lse)[..., None]
    weight_b = np.exp(lse_b - safe_lse)[..., None]
    return weight_a * out_a + weight_b * out_b, lse
