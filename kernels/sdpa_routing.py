"""``sdpa_routing``: run ``torch.nn.functional.scaled_dot_product_attention`` on flashref's kernels.

    with flashref.kernels.sdpa_routing(fallback="torch") as routing:
        loss = model(src, tgt).sum()          # any model that calls F.scaled_dot_product_attention
        loss.backward()
    print(routing.summary())                   # "3 SDPA calls on the kernels, 0 fell back to torch"

    @flashref.kernels.sdpa_routing(fallback="error")
    def train_step(...): ...

A ``torch.overrides.TorchFunctionMode``: while it is active every SDPA call is inspected, and
one that the kernels can express is answered by ``flash_attention`` (forward and backward):

==========================  =================================================================
SDPA argument               kernels
==========================  =================================================================
q (..., Hq, L, D), k, v     (B, H, L, D) or (B, L, D); same dtype (float16/bfloat16/float32);
                            ``v``'s head dim equal to ``q``'s; D <= 256
``is_causal=True``          ``causal=True`` (top-left, as SDPA)
``scale``                   ``softmax_scale``
``enable_gqa=True``         GQA/MQA: Hq a multiple of Hkv (without it, Hq must equal Hkv)
``attn_mask`` bool / float  recognised when it is a causal mask (top-left or bottom-right)
                            and/or right key padding, the same for every head: becomes
                            ``causal`` / ``causal_alignment`` / ``kv_lens`` (bottom-right
                            aligned to each sequence's own length, as the kernels define it). A float mask must
                            hold only 0 and -inf. Anything else (a bias, ALiBi, left padding,
                            a block-sparse pattern) is not expressible.
``dropout_p``               ``dropout_p``: the kernels' own Philox keep mask (not torch's), its
                            seed drawn from torch's default generator (``last_dropout_seed()``)
==========================  =================================================================

What is not expressible follows ``fallback``: ``"torch"`` lets torch compute the call (counted
in ``routing.fallbacks`` by reason, and warned about once per reason), ``"error"`` raises
``SDPARoutingError`` naming what is unsupported. Recognising a mask reads it (a few
comparisons over (B, Lq, Lk) booleans and one device sync per call).

Where torch bypasses SDPA (nothing to route):

- ``nn.MultiheadAttention`` with ``need_weights=True`` (the default when you call it
  yourself) computes ``softmax(QK^T)`` with ``bmm`` to return the weights; call it with
  ``need_weights=False``. ``nn.Transformer*`` layers already do.
- Eval-mode "fast paths": ``nn.TransformerEncoderLayer`` / ``nn.TransformerEncoder`` (fused
  ``torch._transformer_encoder_layer_fwd``, nested tensors) and ``nn.MultiheadAttention``
  (``torch._native_multi_head_attention``) when not training or under ``no_grad``. The routing
  switches them off while it is active (``torch.backends.mha.set_fastpath_enabled(False)``,
  restored on exit; ``mha_fastpath=True`` keeps them), so eval and training both reach SDPA.
- Code that calls ``torch.ops.aten._scaled_dot_product_*`` or a backend's op directly, and
  SDPA calls made inside another overridable Python function (a torch-function mode only sees
  a function's entry); ``F.multi_head_attention_forward`` is handled (see ``_mha_body``).
"""

from __future__ import annotations

import contextlib
import math
import types
import warnings
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .tile_tables import MAX_HEAD_DIM, SUPPORTED_DTYPES
from .flash_attention import flash_attention
from .launch import INTERPRETED

FALLBACKS = ("torch", "error")


def _mha_body():
    """``F.multi_head_attention_forward`` without its torch-function entry check.

    Torch-function modes are shallow: a Python-level overridable function (``F.*``) dispatches
    to the mode once, at its entry, and the mode's handler runs the function's body with the
    mode popped, so calls inside it are invisible. nn.MultiheadAttention (and with it every
    nn.Transformer layer) reaches SDPA only from inside ``F.multi_head_attention_forward``;
    this copy of that function (same code, globals and defaults, but ``has_torch_function``
    answering False at the entry) lets the handler run the body with the mode still active.
    """
    f = F.multi_head_attention_forward
    scope = dict(f.__globals__, has_torch_function=lambda tensors: False)
    body = types.FunctionType(f.__code__, scope, f.__name__, f.__defaults__, f.__closure__)
    body.__kwdefaults__ = f.__kwdefaults__
    return body


_MHA_BODY = _mha_body()


class SDPARoutingError(ValueError):
    """An SDPA call the kernels cannot express, under ``sdpa_routing(fallback="error")``."""


class Unsupported(Exception):
    """Internal: why one SDPA call cannot go to the kernels (the message is the reason)."""


@dataclass(frozen=True)
class MaskPlan:
    """What an attention mask means to the kernels."""

    causal: bool
    causal_alignment: str
    kv_lens: torch.Tensor | None  # (B,) int32, None when no key is padding


def _sdpa_arguments(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                    enable_gqa=False):
    return query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa


def recognise_mask(mask: torch.Tensor, batch: int, heads: int, seqlen_q: int, seqlen_k: int) -> MaskPlan:
    """An SDPA ``attn_mask`` -> (causal, alignment, kv_lens), or ``Unsupported``.

    mask: broadcastable to (B, H, Lq, Lk); bool (True = may attend, SDPA's convention) or
    float (added to the scores; only 0 and -inf are expressible). Key j is visible to query i
    of batch b iff ``j < kv_lens[b]`` and, if causal, ``j <= i + shift`` (shift 0 top-left,
    ``kv_lens[b] - Lq`` bottom-right). ``kv_lens[b]`` is read off the mask as one past its last
    visible key; the mask is expressible iff it equals the mask rebuilt from that.
    """
    if mask.dim() > 4:
        raise Unsupported(f"attn_mask of rank {mask.dim()} (expected at most 4)")
    shape = (1,) * (4 - mask.dim()) + tuple(mask.shape)
    target = (batch, heads, seqlen_q, seqlen_k)
    if any(m not in (1, t) for m, t in zip(shape, target)):
        raise Unsupported(f"attn_mask of shape {tuple(mask.shape)} does not broadcast to {target}")
    mask = mask.reshape(shape)
    if mask.dtype == torch.bool:
        visible = mask
    elif mask.is_floating_point():
        if mask.requires_grad:
            raise Unsupported("attn_mask requires grad (a learned bias)")
        visible = mask == 0
        if not bool(torch.all(visible | (mask == float("-inf")))):
            raise Unsupported("additive attn_mask with values other than 0 and -inf (a bias)")
    else:
        raise Unsupported(f"attn_mask of dtype {mask.dtype} (expected bool or floating point)")
    if shape[1] != 1:  # kv_lens and causal are the same for every head
        if not bool(torch.all(visible == visible[:, :1])):
            raise Unsupported("attn_mask differs between heads")
        visible = visible[:, :1]
    visible = visible[:, 0].expand(batch, seqlen_q, seqlen_k)  # (B, Lq, Lk)

    j = torch.arange(seqlen_k, device=mask.device)
    i = torch.arange(seqlen_q, device=mask.device)[:, None]
    # One past the last key any query of batch b sees (0 when none does).
    lengths = torch.where(visible.any(dim=1), j + 1, 0).amax(dim=1) if seqlen_k else \
        torch.zeros(batch, dtype=torch.int64, device=mask.device)  # (B,)
    padding = j[None, None, :] < lengths[:, None, None]  # (B, 1, Lk)
    kv_lens = None if bool(torch.all(lengths == seqlen_k)) else lengths.to(torch.int32)
    if bool(torch.equal(visible, padding.expand_as(visible))):
        return MaskPlan(False, "top_left", kv_lens)
    if bool(torch.equal(visible, padding & (j <= i))):
        return MaskPlan(True, "top_left", kv_lens)
    # Bottom-right: the queries are the last Lq tokens of each sequence, shift kv_lens[b] - Lq
    # (Lk - Lq without padding), as the kernels define it.
    if bool(torch.equal(visible, padding & (j <= i + lengths[:, None, None] - seqlen_q))):
        return MaskPlan(True, "bottom_right", kv_lens)
    raise Unsupported("attn_mask is not a causal mask and/or right key padding")


def _plan(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa):
    """-> (q, k, v, keyword arguments of flash_attention, squeeze) or ``Unsupported``."""
    tensors = (("query", query), ("key", key), ("value", value))
    for name, t in tensors:
        if not isinstance(t, torch.Tensor):
            raise Unsupported(f"{name} is not a tensor")
        if t.dim() not in (3, 4):
            raise Unsupported(f"{name} of rank {t.dim()} (the kernels take (B, H, L, D) or (B, L, D))")
        if t.dtype not in SUPPORTED_DTYPES:
            raise Unsupported(f"{name} of dtype {t.dtype} (the kernels take float16, bfloat16, float32)")
    if not query.dim() == key.dim() == value.dim():
        raise Unsupported("query, key and value of different ranks")
    if not query.dtype == key.dtype == value.dtype:
        raise Unsupported("query, key and value of different dtypes")
    if not query.device == key.device == value.device:
        raise Unsupported("query, key and value on different devices")
    if query.device.type != "cuda" and not (query.device.type == "cpu" and INTERPRETED):
        raise Unsupported(f"tensors on {query.device} (the kernels run on CUDA, or on the CPU under "
                          "TRITON_INTERPRET=1)")
    squeeze = query.dim() == 3
    q, k, v = (t.unsqueeze(1) for t in (query, key, value)) if squeeze else (query, key, value)
    batch, heads_q, seqlen_q, head_dim = q.shape
    if not (k.shape[0] == v.shape[0] == batch):
        raise Unsupported(f"batch sizes differ (query {tuple(query.shape)}, key {tuple(key.shape)}); "
                          "the kernels do not broadcast")
    if k.shape[1:3] != v.shape[1:3] or k.shape[3] != head_dim:
        raise Unsupported(f"key {tuple(key.shape)} and value {tuple(value.shape)} do not match query's head dim")
    if not (1 <= head_dim <= MAX_HEAD_DIM and 1 <= v.shape[3] <= MAX_HEAD_DIM):
        raise Unsupported(f"head dims {head_dim}, value {v.shape[3]} (the kernels take 1..{MAX_HEAD_DIM}; "
                          f"the value's may differ from the query's)")
    heads_kv = k.shape[1]
    if heads_kv != heads_q and not (enable_gqa and heads_kv and heads_q % heads_kv == 0):
        raise Unsupported(f"{heads_q} query heads and {heads_kv} kv heads"
                          + ("" if enable_gqa else " without enable_gqa=True"))
    if not 0.0 <= dropout_p < 1.0:
        raise Unsupported(f"dropout_p={dropout_p} (the kernels take [0, 1))")
    if scale is not None and not (math.isfinite(scale) and scale > 0):
        raise Unsupported(f"scale={scale} (the kernels take a positive finite scale)")
    # dropout: the kernels' Philox keep mask, its seed drawn from torch's default generator
    # (flash_attention's dropout_seed=None; flashref.kernels.last_dropout_seed() replays it).
    kwargs = dict(softmax_scale=None if scale is None else float(scale), dropout_p=float(dropout_p))
    if attn_mask is not None:
        if is_causal:
            raise Unsupported("attn_mask together with is_causal=True (torch rejects it too)")
        plan = recognise_mask(attn_mask, batch, heads_q, seqlen_q, k.shape[2])
        kwargs.update(causal=plan.causal, causal_alignment=plan.causal_alignment, kv_lens=plan.kv_lens)
    else:
        kwargs.update(causal=bool(is_causal))
    return q, k, v, kwargs, squeeze


class SDPARouting(TorchFunctionMode, contextlib.ContextDecorator):
    """The mode ``sdpa_routing`` returns; counts what it routed and what fell back.

    Attributes: ``routed`` (calls answered by the kernels), ``fallbacks`` (a Counter: reason ->
    calls torch computed), ``fallback`` ("torch" or "error"). Reusable and usable as a decorator.
    """

    def __init__(self, fallback: str = "torch", *, mha_fastpath: bool = False):
        super().__init__()
        if fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
        self.fallback = fallback
        self.mha_fastpath = bool(mha_fastpath)
        self.routed = 0
        self.fallbacks: Counter[str] = Counter()
        self._fastpath_before: list[bool] = []

    def __enter__(self):
        self._fastpath_before.append(torch.backends.mha.get_fastpath_enabled())
        if not self.mha_fastpath:
            torch.backends.mha.set_fastpath_enabled(False)
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            torch.backends.mha.set_fastpath_enabled(self._fastpath_before.pop())

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.multi_head_attention_forward:  # see _mha_body: SDPA is called inside
            TorchFunctionMode.__enter__(self)
            try:
                return _MHA_BODY(*args, **kwargs)
            finally:
                TorchFunctionMode.__exit__(self, None, None, None)
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        try:
            q, k, v, kernel_kwargs, squeeze = _plan(*_sdpa_arguments(*args, **kwargs))
        except Unsupported as why:
            reason = str(why)
            if self.fallback == "error":
                raise SDPARoutingError(f"sdpa_routing(fallback='error'): this scaled_dot_product_attention "
                                       f"call cannot run on the kernels: {reason}") from None
            if reason not in self.fallbacks:
                warnings.warn(f"sdpa_routing: scaled_dot_product_attention computed by torch: {reason} "
                              "(warned once per reason; counts in .fallbacks)", stacklevel=2)
            self.fallbacks[reason] += 1
            return func(*args, **kwargs)
        self.routed += 1
        out = flash_attention(q, k, v, **kernel_kwargs)
        return out.squeeze(1) if squeeze else out

    def summary(self) -> str:
        fell = sum(self.fallbacks.values())
        lines = [f"{self.routed} SDPA call{'s' if self.routed != 1 else ''} on the kernels, "
                 f"{fell} fell back to torch"]
        lines += [f"  {n} x {reason}" for reason, n in self.fallbacks.most_common()]
        return "\n".join(lines)


def sdpa_routing(fallback: str = "torch", *, mha_fastpath: bool = False) -> SDPARouting:
    """Route ``F.scaled_dot_product_attention`` to the kernels within a ``with`` block or a
    decorated function; ``fallback`` is "torch" (torch computes what the kernels cannot
    express, counted and warned once per reason) or "error" (``SDPARoutingError``). See the
    module docstring for what is expressible and which torch paths bypass SDPA."""
    return SDPARouting(fallback, mha_fastpath=mha_fastpath)


__all__ = ["sdpa_routing", "SDPARouting", "SDPARoutingError", "MaskPlan", "recognise_mask"]
