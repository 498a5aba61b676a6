r"""The arguments of attention: their checking, and the mask, biases and dropout they define.

Every attention oracle in `flashref.reference` (closed form, blocked, autograd-composed,
explain) accepts the same keyword arguments and means the same thing by them. This module
is the single place that checks them and turns them into arrays:

    q: (B, Hq, Lq, D)     k: (B, Hkv, Lk, D)     v: (B, Hkv, Lk, Dv)     Hq % Hkv == 0

Alignment shift, per batch row b (``causal_alignment`` names how the query positions line
up with the key positions; causal masking, the window and ALiBi all use it):

    "top_left"      shift_b = 0                                torch SDPA's ``is_causal``
    "bottom_right"  shift_b = kv_lens[b] - Lq  (kv_lens given)  the queries are the last Lq
                    shift_b = Lk - Lq          (otherwise)      tokens of each sequence

Scores, for query i, key j, batch b, query head h (docs/attention.md has the table):

    s  = softmax_scale * q_i . k_j
    s <- softcap * tanh(s / softcap)                  softcap > 0 (0 = off)
    s <- s + attn_bias[b, h, i, j]                    attn_bias given
    s <- s - alibi_slopes[b, h] * |i + shift_b - j|   alibi_slopes given, (Hq,) or (B, Hq)
    s  = -inf unless visible(b, i, j):
         j < kv_lens[b]                               kv_lens given
         j <= i + shift_b                             causal
         i + shift_b - left <= j                      window_size = (left, right), left >= 0
         j <= i + shift_b + right                     right >= 0; -1 = unbounded

``causal=True`` is the window's ``right = 0``; both may be given (all conditions hold). With
"bottom_right" a row whose ``i + shift_b < 0`` sees no key under causal (for example the first
``Lq - kv_lens[b]`` rows when ``kv_lens[b] < Lq``): such a row is empty, as any fully masked row.

sinks: (Hq,) one extra logit per query head in every row's softmax denominator, with a zero
value vector: ``lse_i = log(exp(sinks[h]) + sum_j exp(s_ij))``.

GQA/MQA: query head h reads kv head ``h // (Hq // Hkv)``.

kv_lens: (B,) integers in [0, Lk]; keys j >= kv_lens[b] are padding. A length larger than
Lk is rejected rather than clamped (as FlashAttention's varlen checks do): it almost always
means the lengths of another batch were passed.

Dropout (on the attention weights, after the softmax, before multiplying by V):
    P_dropped = P * keep / (1 - p), keep: bool (B, Hq, Lq, Lk), from exactly one source:
    - ``dropout_seed`` (an int in [0, 2**63)): the kernels' counter-based Philox draw,
      replayed bit for bit (`flashref.reference.philox.dropout_keep`);
    - ``rng`` (a numpy Generator): ``rng.random((B, Hq, Lq, Lk)) >= p``;
    - ``dropout_mask``: an explicit bool array (True = keep), so that a forward and its
      backward, or an oracle and a kernel, use the same mask.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import functools
import inspect

import numpy as np

from .philox import check_seed, dropout_keep as philox_dropout_keep

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
    drawn_keep: np.ndarray | None  # (B, Hq, Lq, Lk) bool from rng / dropout_mask, else None
    window_size: tuple = (-1, -1)  # (left, right), -1 = unbounded
    softcap: float = 0.0  # 0 = off
    alibi_slopes: np.ndarray | None = None  # (B, Hq) float64
    sinks: np.ndarray | None = None  # (Hq,) float64
    dropout_seed: int | None = None  # set only when dropout_p > 0

    @property
    def group(self) -> int:
        """Query heads per kv head (1 = plain multi-head, Hq = multi-query)."""
        return self.q_heads // self.kv_heads

    @property
    def has_dropout(self) -> bool:
        return self.dropout_p > 0.0

    def shifts(self) -> np.ndarray:
        """The alignment shift of each batch row, int64 (B,); see the module docstring."""
        return alignment_shifts(
            self.q_len, self.kv_len, self.causal_alignment, self.kv_lens, self.batch
        )

    def mask(self, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        """Visible keys, bool (B, 1, len(rows), len(cols)); True = the query sees the key.

        ``rows``/``cols`` select a tile of query and key positions (default: all), so a
        blocked algorithm never materialises the whole (Lq, Lk) mask.
        """
        return _visible(
            np.arange(self.q_len)[rows],
            np.arange(self.kv_len)[cols],
            shifts=self.shifts(),
            causal=self.causal,
            window_size=self.window_size,
            kv_lens=self.kv_lens,
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

    def alibi(self, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray | None:
        """ALiBi's bias tile ``-slope[b, h] * |i + shift_b - j|``: (B, Hq, r, c), or None."""
        if self.alibi_slopes is None:
            return None
        i = np.arange(self.q_len)[rows][None, :, None] + self.shifts()[:, None, None]  # (B, r, 1)
        j = np.arange(self.kv_len)[cols][None, None, :]  # (1, 1, c)
        distance = np.abs(i - j).astype(np.float64)  # (B, r, c)
        return 0.0 - self.alibi_slopes[:, :, None, None] * distance[:, None]  # 0.0 - 0 = +0

    def dropout_keep(self, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray | None:
        """The keep mask's tile, bool (B, Hq, r, c); None without dropout.

        From ``dropout_seed`` it is drawn for the tile alone (Philox is counter-based), the
        same bits as the whole-matrix draw; from rng / dropout_mask it is a slice.
        """
        if not self.has_dropout:
            return None
        if self.dropout_seed is not None:
            shape = (self.batch, self.q_heads, self.q_len, self.kv_len)
            return philox_dropout_keep(self.dropout_seed, self.dropout_p, shape, rows, cols)
        return self.drawn_keep[:, :, rows, cols]

    def dropout_scale(self, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray | None:
        """keep / (1 - p) as float64 (B, Hq, r, c), or None without dropout."""
        keep = self.dropout_keep(rows, cols)
        if keep is None:
            return None
        return keep / (1.0 - self.dropout_p)


def alignment_shifts(q_len: int, kv_len: int, causal_alignment: str, kv_lens, batch: int) -> np.ndarray:
    """shift_b per batch row, int64 (B,): 0 (top_left), kv_lens[b] - Lq or Lk - Lq (bottom_right)."""
    if causal_alignment == "top_left":
        return np.zeros(batch, dtype=np.int64)
    if kv_lens is None:
        return np.full(batch, kv_len - q_len, dtype=np.int64)
    return np.asarray(kv_lens, dtype=np.int64) - q_len


def attention_mask(
    q_len: int,
    kv_len: int,
    *,
    causal: bool = False,
    causal_alignment: str = "top_left",
    kv_lens=None,
    batch: int | None = None,
    window_size=(-1, -1),
) -> np.ndarray:
    """Which keys each query may see: bool (B, 1, Lq, Lk), True = visible.

    B is ``len(kv_lens)`` when kv_lens is given, else ``batch`` (default 1). The head axis
    has size 1 because no mask rule depends on the head. The convention matches the
    boolean ``attn_mask`` of torch SDPA (True = takes part in attention). With
    ``causal_alignment="bottom_right"`` and kv_lens, row b is aligned to its own length:
    query i sits at position ``i + kv_lens[b] - Lq``.
    """
    q_len = _check_length("q_len", q_len)
    kv_len = _check_length("kv_len", kv_len)
    _check_causal(causal, causal_alignment)
    window = _check_window(window_size)
    lens = _check_kv_lens(kv_lens, batch, kv_len)
    if batch is None:
        batch = 1 if lens is None else lens.shape[0]
    elif not isinstance(batch, numbers.Integral) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch: expected a positive integer, got {batch!r}")
    return _visible(
        np.arange(q_len),
        np.arange(kv_len),
        shifts=alignment_shifts(q_len, kv_len, causal_alignment, lens, int(batch)),
        causal=causal,
        window_size=window,
        kv_lens=lens,
    )


def _visible(rows, cols, *, shifts, causal, window_size, kv_lens):
    """Mask tile for query positions ``rows`` and key positions ``cols``: (B, 1, r, c)."""
    pos = rows[None, :, None] + shifts[:, None, None]  # (B, r, 1): the query's key position
    cols = cols[None, None, :]  # (1, 1, c)
    visible = np.ones((shifts.shape[0], rows.shape[0], cols.shape[2]), dtype=bool)
    left, right = window_size
    if causal:
        visible &= cols <= pos
    if left >= 0:
        visible &= cols >= pos - left
    if right >= 0:
        visible &= cols <= pos + right
    if kv_lens is not None:
        visible &= cols < kv_lens[:, None, None]
    return visible[:, None]


def check_attention_inputs(
    q_shape: tuple,
    k_shape: tuple,
    v_shape: tuple,
    *,
    causal=False,
    causal_alignment="top_left",
    softmax_scale=None,
    kv_lens=None,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    sinks=None,
    attn_bias=None,
    dropout_p=0.0,
    dropout_seed=None,
    rng=None,
    dropout_mask=None,
) -> AttentionInputs:
    """Check every attention argument; return them resolved.

    Takes shapes (not arrays) for q, k, v so that ndarrays and autograd Tensors share it.
    ``attn_bias`` and ``sinks`` are returned as float64 ndarrays (the caller keeps its own
    object if it must stay differentiable). When ``dropout_p > 0`` and the source is
    ``rng``, the keep mask is drawn here. Raises ValueError/TypeError naming the argument.
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
    window = _check_window(window_size)
    cap = _check_softcap(softcap)
    slopes = _check_alibi(alibi_slopes, batch, q_heads)
    sink_logits = _check_sinks(sinks, q_heads)
    bias = _check_bias(attn_bias, (batch, q_heads, q_len, kv_len))
    full = (batch, q_heads, q_len, kv_len)
    p, seed, keep = _check_dropout(dropout_p, dropout_seed, rng, dropout_mask, full)
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
        drawn_keep=keep,
        window_size=window,
        softcap=cap,
        alibi_slopes=slopes,
        sinks=sink_logits,
        dropout_seed=seed,
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
    bias = np.asarray(_data(attn_bias))  # an autograd Tensor: check the ndarray it carries
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


def _check_window(window_size) -> tuple:
    if isinstance(window_size, (str, bytes)) or not hasattr(window_size, "__len__") or len(window_size) != 2:
        raise ValueError(f"window_size: expected a pair (left, right), got {window_size!r}")
    for side in window_size:
        if isinstance(side, (bool, np.bool_)) or not isinstance(side, numbers.Integral):
            raise TypeError(f"window_size: expected two ints (-1 = unbounded), got {window_size!r}")
        if side < -1:
            raise ValueError(f"window_size: entries must be >= -1 (-1 = unbounded), got {tuple(window_size)}")
    return int(window_size[0]), int(window_size[1])


def _check_softcap(softcap) -> float:
    if isinstance(softcap, bool) or not isinstance(softcap, numbers.Real):
        raise TypeError(f"softcap: expected a real number >= 0 (0 = off), got {type(softcap).__name__}")
    if not math.isfinite(softcap) or softcap < 0:
        raise ValueError(f"softcap: expected a finite number >= 0 (0 = off), got {softcap!r}")
    return float(softcap)


def _data(x):
    """The ndarray an autograd Tensor carries; anything else unchanged."""
    if not isinstance(x, np.ndarray) and isinstance(getattr(x, "data", None), np.ndarray):
        return x.data
    return x


def _check_alibi(alibi_slopes, batch: int, q_heads: int) -> np.ndarray | None:
    if alibi_slopes is None:
        return None
    slopes = as_float64("alibi_slopes", _data(alibi_slopes))
    if slopes.shape not in ((q_heads,), (batch, q_heads)):
        raise ValueError(
            f"alibi_slopes: expected shape (Hq,) = ({q_heads},) or (B, Hq) = ({batch}, {q_heads}), "
            f"got {slopes.shape}"
        )
    if not np.isfinite(slopes).all():
        raise ValueError("alibi_slopes: must be finite")
    return np.array(np.broadcast_to(slopes, (batch, q_heads)))


def _check_sinks(sinks, q_heads: int) -> np.ndarray | None:
    if sinks is None:
        return None
    logits = as_float64("sinks", _data(sinks))
    if logits.shape != (q_heads,):
        raise ValueError(f"sinks: expected shape (Hq,) = ({q_heads},), one logit per query head, got {logits.shape}")
    if not np.isfinite(logits).all():
        raise ValueError("sinks: must be finite (leave sinks=None for no sink)")
    return logits


def _check_dropout(dropout_p, dropout_seed, rng, dropout_mask, full_shape: tuple):
    """(p, seed, drawn keep): at most one of dropout_seed, rng, dropout_mask is the source."""
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, numbers.Real):
        raise TypeError(f"dropout_p: expected a float in [0, 1), got {type(dropout_p).__name__}")
    p = float(dropout_p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout_p: expected a value in [0, 1), got {dropout_p!r}")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
    if dropout_seed is not None:
        seed = check_seed("dropout_seed", dropout_seed)
        if rng is not None or dropout_mask is not None:
            other = "rng" if rng is not None else "dropout_mask"
            raise ValueError(f"dropout_seed, {other}: give one source of the dropout mask, not both")
        # With p = 0 the seed is accepted and unused, as by the kernels: nothing is drawn.
        return p, (seed if p > 0.0 else None), None
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
        return p, None, np.array(keep)
    if p == 0.0:
        return p, None, None
    if rng is None:
        raise ValueError(
            "rng: dropout_p > 0 needs a source of the mask: dropout_seed (the kernels' Philox), "
            "a numpy.random.Generator as rng, or an explicit dropout_mask"
        )
    return p, None, draw_dropout_keep(rng, p, full_shape)


#: The attention keywords and their defaults, defined once: ``check_attention_inputs``'s keyword
#: parameters (docs/design.md, "Shared semantics"). Every oracle attention function takes them.
ATTENTION_KEYWORDS = {name: p.default for name, p in inspect.signature(check_attention_inputs).parameters.items()
                      if p.kind is inspect.Parameter.KEYWORD_ONLY}


def attention_keywords(before: str | None = None):
    """Decorator for an oracle function ``fn(q, k, v, ..., *, <own keywords>, **attention)``.

    Its public signature (``inspect.signature``, ``help()``) lists the ``ATTENTION_KEYWORDS``
    with their defaults, placed before its own keyword ``before`` (else after its own), and
    a call hands them to ``fn`` as ``attention``, every one present, defaults filled: ``fn``
    passes them on once, ``check_attention_inputs(q.shape, k.shape, v.shape, **attention)``.
    An unknown or missing argument raises TypeError as for any function."""

    def decorate(fn):
        signature = inspect.signature(fn)
        own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
                  for name, default in ATTENTION_KEYWORDS.items()]
        at = next((i for i, p in enumerate(own) if p.name == before), len(own))
        public = signature.replace(parameters=own[:at] + shared + own[at:])

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            bound = public.bind(*args, **kwargs)
            bound.apply_defaults()
            values = bound.arguments
            return fn(**{p.name: values[p.name] for p in own}, **{name: values[name] for name in ATTENTION_KEYWORDS})

        wrapper.__signature__ = public
        return wrapper

    return decorate
