r"""Packed variable-length attention: the oracle twin of ``flash_attention_varlen``.

A batch of B sequences of different lengths is packed end to end, without padding
(FlashAttention's varlen layout):

    q: (total_q, Hq, D)    k: (total_k, Hkv, D)    v: (total_k, Hkv, Dv)
    cu_seqlens_q: (B + 1,) ints, cu_seqlens_q[0] = 0, non-decreasing, cu_seqlens_q[B] = total_q
    cu_seqlens_k: (B + 1,) the same for the keys

Sequence b holds the query rows ``cu_seqlens_q[b] : cu_seqlens_q[b + 1]`` (its length
``Lq_b``) and the key rows ``cu_seqlens_k[b] : cu_seqlens_k[b + 1]`` (``Lk_b``); empty
sequences are allowed. Each sequence is one dense attention ``(1, H, Lq_b, D)`` x
``(1, H, Lk_b, D)`` with every keyword of `attention_forward`, query i and key j numbered
from the sequence's start: ``"bottom_right"`` aligns each sequence to its own lengths
(``shift_b = Lk_b - Lq_b``), exactly as the dense attention does with ``kv_lens``.

lse is ``(Hq, total_q)`` (FlashAttention's varlen layout). ``alibi_slopes`` may be (Hq,) or
(B, Hq): row b is sequence b's.

Dropout (``dropout_seed``): element (sequence b, query head h, local row i, local key j) is
kept as the dense kernel keeps element (b, h, i, j) of a batch padded to
``(B, Hq, max_seqlen_q, max_seqlen_k)``: counters ``(i * max_seqlen_k + j, b * Hq + h, 0, 0)``
(`flashref.reference.philox.dropout_keep`).

This oracle loops over the sequences; the kernel does not.
"""

from __future__ import annotations

import numbers

import numpy as np

from .attention import attention_backward, attention_forward
from .attention_inputs import as_float64
from .philox import check_seed, dropout_keep as philox_dropout_keep


def check_cu_seqlens(name: str, cu_seqlens, total: int, max_seqlen, batch: int | None = None) -> np.ndarray:
    """Check one ``cu_seqlens`` array against the packed length ``total`` and ``max_seqlen``;
    return it as int64 (B + 1,)."""
    cu = np.asarray(cu_seqlens)
    if cu.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array (B + 1,), got dtype {cu.dtype}")
    if cu.ndim != 1 or cu.shape[0] < 1:
        raise ValueError(f"{name} must have shape (B + 1,) with B >= 0, got {cu.shape}")
    if batch is not None and cu.shape[0] != batch + 1:
        raise ValueError(f"{name} must have {batch + 1} entries (like cu_seqlens_q), got {cu.shape[0]}")
    cu = cu.astype(np.int64)
    if cu[0] != 0:
        raise ValueError(f"{name} must start at 0, got {cu[0]}")
    lengths = np.diff(cu)
    if (lengths < 0).any():
        raise ValueError(f"{name} must be non-decreasing, got {cu.tolist()}")
    if cu[-1] != total:
        raise ValueError(f"{name}'s last entry must be the packed length {total}, got {cu[-1]}")
    if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, numbers.Integral) or max_seqlen < 0:
        raise TypeError(f"max_seqlen for {name} must be an int >= 0, got {max_seqlen!r}")
    if lengths.size and lengths.max() > max_seqlen:
        raise ValueError(f"{name}: a sequence of length {lengths.max()} exceeds max_seqlen={max_seqlen}")
    return cu


def _check_packed(q, k, v):
    q, k, v = as_float64("q", q), as_float64("k", k), as_float64("v", v)
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 3:
            raise ValueError(f"{name} must be packed (total, H, D), got shape {x.shape}")
    if k.shape[:2] != v.shape[:2]:
        raise ValueError(f"k and v must agree on (total_k, Hkv), got {k.shape} and {v.shape}")
    return q, k, v


def _per_sequence(b, cu_q, cu_k, alibi_slopes, kwargs):
    """Keyword arguments of sequence b's dense call (alibi row b when (B, Hq))."""
    kw = dict(kwargs)
    if alibi_slopes is not None:
        slopes = np.asarray(alibi_slopes, dtype=np.float64)
        kw["alibi_slopes"] = slopes[b] if slopes.ndim == 2 else slopes
    return kw


def _dense(x):
    """(L, H, D) -> (1, H, L, D)."""
    return x.transpose(1, 0, 2)[None]


def _packed(x):
    """(1, H, L, D) -> (L, H, D)."""
    return x[0].transpose(1, 0, 2)


def _dropout_masks(kwargs, batch, heads_q, max_seqlen_q, max_seqlen_k):
    """The kernel's keep masks of the padded batch (B, Hq, max_q, max_k), or None."""
    p = kwargs.get("dropout_p", 0.0)
    seed = kwargs.pop("dropout_seed", None)
    if not p:
        return None
    if seed is None:
        raise ValueError("varlen dropout needs dropout_seed (the kernels' Philox draw)")
    seed = check_seed("dropout_seed", seed)
    return philox_dropout_keep(seed, p, (batch, heads_q, max_seqlen_q, max_seqlen_k))


def attention_varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                             *, alibi_slopes=None, **kwargs):
    """Packed attention, float64: ``(out, lse)`` with out (total_q, Hq, Dv), lse (Hq, total_q).

    Every keyword of `attention_forward` (causal, causal_alignment, softmax_scale,
    window_size, softcap, alibi_slopes (Hq,) or (B, Hq), sinks, dropout_p with dropout_seed)
    applies to each sequence; ``kv_lens`` and ``attn_bias`` are not accepted (the lengths are
    cu_seqlens_k's). See the module docstring.
    """
    q, k, v = _check_packed(q, k, v)
    for bad in ("kv_lens", "attn_bias", "rng", "dropout_mask", "return_dropout_mask"):
        if bad in kwargs:
            raise TypeError(f"attention_varlen_forward does not take {bad}")
    cu_q = check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.shape[0], max_seqlen_q)
    cu_k = check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, k.shape[0], max_seqlen_k, batch=cu_q.shape[0] - 1)
    batch, heads_q = cu_q.shape[0] - 1, q.shape[1]
    keep = _dropout_masks(kwargs, batch, heads_q, max_seqlen_q, max_seqlen_k)
    out = np.zeros(q.shape[:2] + v.shape[2:])
    lse = np.zeros((heads_q, q.shape[0]))
    for b in range(batch):
        qs, ks = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        if qs.stop == qs.start:
            continue
        if ks.stop == ks.start:  # no key at all: out = 0, lse = -inf (the sink's logit with sinks)
            sinks = kwargs.get("sinks")
            lse[:, qs] = -np.inf if sinks is None else np.asarray(sinks, np.float64)[:, None]
            continue
        kw = _per_sequence(b, cu_q, cu_k, alibi_slopes, kwargs)
        if keep is not None:
            kw["dropout_mask"] = keep[b:b + 1, :, :qs.stop - qs.start, :ks.stop - ks.start]
        o, l = attention_forward(_dense(q[qs]), _dense(k[ks]), _dense(v[ks]), **kw)
        out[qs] = _packed(o)
        lse[:, qs] = l[0]
    return out, lse


def attention_varlen_backward(q, k, v, out, lse, dout, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                              max_seqlen_k, *, alibi_slopes=None, **kwargs):
    """Gradients of `attention_varlen_forward`: ``(dq, dk, dv)`` packed like q, k, v, plus
    ``dsinks`` (Hq,) (summed over every sequence) when ``sinks`` is given; float64.

    out, dout: (total_q, Hq, Dv), lse: (Hq, total_q) as the forward returned them."""
    q, k, v = _check_packed(q, k, v)
    out, dout, lse = as_float64("out", out), as_float64("dout", dout), as_float64("lse", lse)
    expected = q.shape[:2] + v.shape[2:]
    if out.shape != expected or dout.shape != expected:
        raise ValueError(f"out and dout must have shape {expected}, got {out.shape} and {dout.shape}")
    if lse.shape != (q.shape[1], q.shape[0]):
        raise ValueError(f"lse must have shape (Hq, total_q) = {(q.shape[1], q.shape[0])}, got {lse.shape}")
    cu_q = check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.shape[0], max_seqlen_q)
    cu_k = check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, k.shape[0], max_seqlen_k, batch=cu_q.shape[0] - 1)
    batch, heads_q = cu_q.shape[0] - 1, q.shape[1]
    keep = _dropout_masks(kwargs, batch, heads_q, max_seqlen_q, max_seqlen_k)
    dq, dk, dv = np.zeros(q.shape), np.zeros(k.shape), np.zeros(v.shape)
    has_sinks = kwargs.get("sinks") is not None
    dsinks = np.zeros(heads_q)
    for b in range(batch):
        qs, ks = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        if qs.stop == qs.start or ks.stop == ks.start:
            continue  # nothing attends or nothing is attended: every gradient (and dsinks' share) is 0
        kw = _per_sequence(b, cu_q, cu_k, alibi_slopes, kwargs)
        if keep is not None:
            kw["dropout_mask"] = keep[b:b + 1, :, :qs.stop - qs.start, :ks.stop - ks.start]
        grads = attention_backward(_dense(q[qs]), _dense(k[ks]), _dense(v[ks]), _dense(out[qs]),
                                   lse[None, :, qs], _dense(dout[qs]), **kw)
        dq[qs], dk[ks], dv[ks] = _packed(grads[0]), _packed(grads[1]), _packed(grads[2])
        if has_sinks:
            dsinks += grads[3]
    return (dq, dk, dv, dsinks) if has_sinks else (dq, dk, dv)
