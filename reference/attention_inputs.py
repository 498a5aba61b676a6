"""The arguments of attention: their checking, and the mask and dropout they define.

Every attention oracle in `flashref.reference` (closed form, blocked, autograd-composed,
explain) accepts the same keyword arguments and means the same thing by them. This module
is the single place that checks them and turns them into arrays:

    q: (B, Hq, Lq, D)     k: (B, Hkv, Lk, D)     v: (B, Hkv, Lk, Dv)     Hq % Hkv == 0

    scores S = softmax_scale * Q K^T + attn_bias                       (B, Hq, Lq, Lk)
    visible(b, i, j) = causal rule(i, j)  and  j < kv_lens[b]          (B, 1, Lq, Lk)

Causal alignments, for query row i and key column j (0-based):
    "top_left"      j <= i                   torch SDPA's ``is_causal``
    "bottom_right"  j <= i + Lk - Lq         FlashAttention >= 2.1, KV-cache decoding
They differ only when Lq != Lk. With "bottom_right" and Lq > Lk the first Lq - Lk query
rows see no key at all; with "top_left" and Lq > Lk the rows i >= Lk see every key.

GQA/MQA: query head h reads kv head ``h // (Hq // Hkv)``.

kv_lens: (B,) integers in [0, Lk]; keys j >= kv_lens[b] are padding. A length larger than
Lk is rejected rather than clamped (as FlashAttention's varlen checks do): it almost always
means the lengths of another batch were passed.

Dropout (on the attention weights, after the softmax, before multiplying by V):
    keep ~ Bernoulli(1 - p) drawn as ``rng.random((B, Hq, Lq, Lk)) >= p``,
    P_dropped = P * keep / (1 - p).
Instead of a generator, an explicit boolean ``dropout_mask`` (True = keep) may be given so
that a forward and its backward, or an oracle and a kernel, use the same mask.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

CAUSAL_ALIGNMENTS = ("top_left", "bottom_right")


@dataclass(frozen=True)
class AttentionInputs:
    """Checked attention arguments, shapes resolved. Arrays are float64 / bool / int64."""

    batch: int
    q_heads: int
    kv_heads: int
    q_len: int
    kv_len: int
    head_dim: int
    v_head_dim: int
    softmax_scale: float
    causal: bool
    causal_alignment: str
    kv_lens: np.ndarray | None  # (B,) int64
    attn_bias: np.ndarray | None  # broadcastable to (B, Hq, Lq, Lk), float64
    dropout_p: float
    dropout_keep: np.ndarray | None  # (B, Hq, Lq, Lk) bool, None when dropout_p == 0

    @property
    def group(self) -> int:
        """Query heads per kv head (1 = plain multi-head, Hq = multi-query)."""
        return self.q_heads // self.kv_heads

    def mask(self, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        """Visible keys, bool (B, 1, len(rows), len(cols)); True = the query sees the key.

        ``rows``/``cols`` select a tile of query and key positions (default: all), so a
        blocked algorithm never materialises the whole (Lq, Lk) mask.
        """
        return _visible(
            np.arange(self.q_len)[rows],
            np.arange(self.kv_len)[cols],
            q_len=self.q_len,
            kv_len=self.kv_len,
            causal=self.causal,
            causal_alignment=self.causal_alignment,
            kv_lens=self.kv_lens,
            batch=self.batch,
        )

    def bias(self, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray | None:
        """The tile ``[..., rows, cols]`` of attn_bias, still broadcastable; None if no bias."""
        if self.attn_bias is None:
            return None
        bias = self.attn_bias.reshape((1,) * (4 - self.attn_bias.ndim) + self.attn_bias.shape)
        # A broadcast (size-1) axis stays size 1: it applies to every row/column of the tile.
        return bias[
            :,
            :,
            rows if bias.shape[2] != 1 else slice(None),
            cols if bias.shape[3] != 1 else slice(None),
        ]

    def dropout_scale(self) -> np.ndarray | None:
        """keep / (1 - p) as float64 (B, Hq, Lq, Lk), or None without dropout."""
        if self.dropout_keep is None:
            return None
        return self.dropout_keep / (1.0 - self.dropout_p)


def attention_mask(
    q_len: int,
    kv_len: int,
    *,
    causal: bool = False,
    causal_alignment: str = "top_left",
    kv_lens=None,
    batch: int | None = None,
) -> np.ndarray:
    """Which keys each query may see: bool (B, 1, Lq, Lk), True = visible.

    B is ``len(kv_lens)`` when kv_lens is given, else ``batch`` (default 1). The head axis
    has size 1 because no mask rule depends on the head. The convention matches the
    boolean ``attn_mask`` of torch SDPA (True = takes part in attention).
    """
    q_len = _check_length("q_len", q_len)
    kv_len = _check_length("kv_len", kv_len)
    _check_causal(causal, causal_alignment)
    lens = _check_kv_lens(kv_lens, batch, kv_len)
    if batch is None:
        batch = 1 if lens is None else lens.shape[0]
    elif not isinstance(batch, numbers.Integral) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch: expected a positive integer, got {batch!r}")
    return _visible(
        np.arange(q_len),
        np.arange(kv_len),
        q_len=q_len,
        kv_len=kv_len,
        causal=causal,
        causal_alignment=causal_alignment,
        kv_lens=lens,
        batch=batch,
    )


def _visible(rows, cols, *, q_len, kv_len, causal, causal_alignment, kv_lens, batch):
    """Mask tile for query positions ``rows`` and key positions ``cols``: (B, 1, r, c)."""
    rows = rows[:, None]  # (r, 1)
    cols = cols[None, :]  # (1, c)
    visible = np.ones((rows.shape[0], cols.shape[1]), dtype=bool)
    if causal:
        # bottom_right shifts the diagonal so the last query row lines up with the last key.
        offset = 0 if causal_alignment == "top_left" else kv_len - q_len
        visible = cols <= rows + offset
    mask = np.broadcast_to(visible, (batch, 1) + visible.shape)
    if kv_lens is not None:
        mask = mask & (cols[None, None] < kv_lens[:, None, None, None])
    return np.array(mask, dtype=bool)


def check_attention_inputs(
    q_shape: tuple,
    k_shape: tuple,
    v_shape: tuple,
    *,
    causal=False,
    causal_alignment="top_left",
    softmax_scale=None,
    kv_lens=None,
    attn_bias=None,
    dropout_p=0.0,
    rng=None,
    dropout_mask=None,
) -> AttentionInputs:
    """Check every attention argument; return them resolved.

    Takes shapes (not arrays) for q, k, v so that ndarrays and autograd Tensors share it.
    ``attn_bias`` is returned as a float64 ndarray (the caller keeps its own object if it
    must stay differentiable). When ``dropout_p > 0`` and no ``dropout_mask`` is given, the
    keep mask is drawn here from ``rng``. Raises ValueError/TypeError naming the argument.
    """
    for name, shape in (("q", q_shape), ("k", k_shape), ("v", v_shape)):
        if len(shape) != 4:
            dims = "(B, Hq, Lq, D)" if name == "q" else f"(B, Hkv, Lk, {'Dv' if name == 'v' else 'D'})"
            raise ValueError(f"{name}: expected 4 dimensions {dims}, got shape {tuple(shape)}")
        if any(n == 0 for n in shape):
            raise ValueError(f"{name}: every dimension must be non-empty, got shape {tuple(shape)}")
    batch, q_heads, q_len, head_dim = q_shape
    if k_shape[0] != batch or v_shape[0] != batch:
        raise ValueError(
            f"q, k, v: batch sizes differ: q {q_shape[0]}, k {k_shape[0]}, v {v_shape[0]}"
        )
    if k_shape[1] != v_shape[1]:
        raise ValueError(f"k, v: head counts differ: k {k_shape[1]}, v {v_shape[1]}")
    kv_heads = k_shape[1]
    if q_heads % kv_heads != 0:
        raise ValueError(
            f"q, k: query heads ({q_heads}) must be a multiple of kv heads ({kv_heads}) for GQA"
        )
    if k_shape[2] != v_shape[2]:
        raise ValueError(f"k, v: sequence lengths differ: k {k_shape[2]}, v {v_shape[2]}")
    kv_len = k_shape[2]
    if k_shape[3] != head_dim:
        raise ValueError(f"k: head_dim must equal q's ({head_dim}), got {k_shape[3]}")
    v_head_dim = v_shape[3]

    _check_causal(causal, causal_alignment)
    scale = _check_scale(softmax_scale, head_dim)
    lens = _check_kv_lens(kv_lens, batch, kv_len)
    bias = _check_bias(attn_bias, (batch, q_heads, q_len, kv_len))
    full = (batch, q_heads, q_len, kv_len)
    p, keep = _check_dropout(dropout_p, rng, dropout_mask, full)
    return AttentionInputs(
        batch=int(batch),
        q_heads=int(q_heads),
        kv_heads=int(kv_heads),
        q_len=int(q_len),
        kv_len=int(kv_len),
        head_dim=int(head_dim),
        v_head_dim=int(v_head_dim),
        softmax_scale=scale,
        causal=bool(causal),
        causal_alignment=causal_alignment,
        kv_lens=lens,
        attn_bias=bias,
        dropout_p=p,
        dropout_keep=keep,
    )


def as_float64(name: str, x) -> np.ndarray:
    """Any real numeric array-like as a float64 ndarray; TypeError for bool/complex/object."""
    arr = np.asarray(x)
    if arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise TypeError(f"{name}: expected a real floating-point array, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def draw_dropout_keep(rng: np.random.Generator, dropout_p: float, shape: tuple) -> np.ndarray:
    """keep mask, bool ``shape``: ``rng.random(shape) >= dropout_p`` (P(keep) = 1 - p)."""
    return rng.random(shape) >= dropout_p


def _check_length(name: str, n) -> int:
    if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{name}: expected a positive integer, got {n!r}")
    return int(n)


def _check_causal(causal, causal_alignment) -> None:
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal: expected a bool, got {type(causal).__name__}")
    if causal_alignment not in CAUSAL_ALIGNMENTS:
        raise ValueError(
            f"causal_alignment: expected one of {CAUSAL_ALIGNMENTS}, got {causal_alignment!r}"
        )


def _check_scale(softmax_scale, head_dim: int) -> float:
    if softmax_scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, numbers.Real):
        raise TypeError(
            f"softmax_scale: expected a real number or None, got {type(softmax_scale).__name__}"
        )
    if not math.isfinite(softmax_scale):
        raise ValueError(f"softmax_scale: expected a finite number, got {softmax_scale!r}")
    return float(softmax_scale)


def _check_kv_lens(kv_lens, batch: int | None, kv_len: int) -> np.ndarray | None:
    if kv_lens is None:
        return None
    lens = np.asarray(kv_lens)
    if lens.dtype == bool or not np.issubdtype(lens.dtype, np.integer):
        raise TypeError(f"kv_lens: expected integers, got dtype {lens.dtype}")
    if lens.ndim != 1 or (batch is not None and lens.shape[0] != batch):
        expected = f"({batch},)" if batch is not None else "(B,)"
        raise ValueError(f"kv_lens: expected shape {expected}, got {lens.shape}")
    if lens.size and (lens.min() < 0 or lens.max() > kv_len):
        raise ValueError(f"kv_lens: every length must lie in [0, Lk={kv_len}], got {lens.tolist()}")
    return lens.astype(np.int64)


def _check_bias(attn_bias, full_shape: tuple) -> np.ndarray | None:
    if attn_bias is None:
        return None
    if not isinstance(attn_bias, np.ndarray) and isinstance(getattr(attn_bias, "data", None), np.ndarray):
        attn_bias = attn_bias.data  # an autograd Tensor: check the ndarray it carries
    bias = np.asarray(attn_bias)
    if bias.dtype == bool:
        raise TypeError(
            "attn_bias: expected an additive float bias, got a bool array "
            "(a boolean mask is expressed with causal=/kv_lens=, or as 0/-inf floats)"
        )
    bias = as_float64("attn_bias", bias)
    try:
        broadcast_ok = np.broadcast_shapes(bias.shape, full_shape) == full_shape
    except ValueError:
        broadcast_ok = False
    if not broadcast_ok:
        raise ValueError(
            f"attn_bias: shape {bias.shape} does not broadcast to (B, Hq, Lq, Lk) = {full_shape}"
        )
    if np.isnan(bias).any() or np.isposinf(bias).any():
        raise ValueError("attn_bias: must not contain NaN or +inf (-inf masks a key)")
    return bias


def _check_dropout(dropout_p, rng, dropout_mask, full_shape: tuple):
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, numbers.Real):
        raise TypeError(f"dropout_p: expected a float in [0, 1), got {type(dropout_p).__name__}")
    p = float(dropout_p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout_p: expected a value in [0, 1), got {dropout_p!r}")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
    if dropout_mask is not None:
        if p == 0.0:
            raise ValueError("dropout_mask: given with dropout_p=0; set the p it was drawn with")
        if rng is not None:
            raise ValueError("rng, dropout_mask: give one source of the dropout mask, not both")
        keep = np.asarray(dropout_mask)
        if keep.dtype != bool:
            raise TypeError(f"dropout_mask: expected a bool array (True = keep), got {keep.dtype}")
        try:
            keep = np.broadcast_to(keep, full_shape)
        except ValueError:
            raise ValueError(
                f"dropout_mask: shape {keep.shape} does not broadcast to (B, Hq, Lq, Lk) = {full_shape}"
            ) from None
        return p, np.array(keep)
    if p == 0.0:
        return p, None
    if rng is None:
        raise ValueError(
            "rng: dropout_p > 0 needs a numpy.random.Generator (or an explicit dropout_mask)"
        )
    return p, draw_dropout_keep(rng, p, full_shape)
