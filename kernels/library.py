"""The kernels as torch operators, one per launch sequence, each with a fake implementation:

- ``torch.ops.flashref.attention_forward`` / ``attention_backward`` (``flash_attention``),
- ``torch.ops.flashref.attention_varlen_forward`` / ``attention_varlen_backward``
  (``flash_attention_varlen``),
- ``torch.ops.flashref.attention_with_kvcache`` (``flash_attention_with_kvcache``, forward only),
- ``torch.ops.flashref.attention_fp8_forward`` (``flash_attention`` with float8_e4m3fn inputs,
  forward only: its autograd formula raises).

Each API function checks its arguments in Python (kernels/checks.py) and then calls its
forward op; a backward op is wired in with ``torch.library.register_autograd``. Registering the
launches as custom ops (``torch.library.custom_op``) is what lets ``torch.compile`` keep a model
that calls the kernels in one graph: Dynamo does not trace into an op, it records it; each op's
fake (meta) implementation tells the compiler the outputs' shapes, dtypes and strides without
running a kernel, so shapes may be symbolic (``mark_dynamic`` on a sequence axis compiles
once for every length). ``custom_op`` rather than ``triton_op``: under Triton's interpreter
(the CPU path) there is no compiled kernel for Inductor to inline, and one op per launch
sequence is all a graph needs.

Schemas (q: (B, Hq, Lq, D), k, v: (B, Hkv, Lk, D), kv_lens: (B,) int32, alibi: (Hq,) or (B, Hq)
float32, sinks: (Hq,) float32, each optional)::

    attention_forward(q, k, v, kv_lens, alibi, sinks, causal: bool, causal_alignment: str,
                      scale: float, window_left: int, window_right: int, softcap: float,
                      dropout_p: float, dropout_seed: int)
        -> (out: (B, Hq, Lq, D) in q's dtype and layout, lse: (B, Hq, Lq) float32)
    attention_backward(q, k, v, out, lse, dout, <the same optional tensors and scalars>)
        -> (dq, dk, dv in the dtypes and layouts of q, k, v;  dsinks: (Hq,) float32, or an
            empty tensor without sinks)

    # packed: q (total_q, Hq, D), k, v (total_k, Hkv, D), cu_seqlens_q/_k (B + 1,) int32
    attention_varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q: int,
                             max_seqlen_k: int, alibi, sinks, causal, causal_alignment, scale,
                             window_left, window_right, softcap, dropout_p, dropout_seed,
                             check_values: bool)
        -> (out: (total_q, Hq, D) in q's dtype and layout, lse: (Hq, total_q) float32)
    attention_varlen_backward(q, k, v, out, lse, dout, <the same from cu_seqlens_q on>)
        -> (dq, dk, dv, dsinks) as attention_backward's

    # the caches already hold the new tokens: sequence b has cache_seqlens[b] + new_len keys;
    # v_head_dim = Dv (v_cache's last dim); v_cache None: MLA's absorbed decode, the values are
    # k_cache[..., :v_head_dim]
    attention_with_kvcache(q, k_cache, v_cache, cache_seqlens, new_len: int, block_table, alibi,
                           sinks, causal: bool, scale: float, window_left: int, window_right: int,
                           softcap: float, num_splits: int, check_values: bool, v_head_dim: int)
        -> (out: (B, Hq, Lq, Dv) in q's dtype (q's layout when Dv == D), lse: (B, Hq, Lq) float32)

    # FP8: q, k, v float8_e4m3fn, descale (B, Hkv, 3) float32 (q, k, v factors), no ALiBi,
    # softcap or dropout; out_dtype a dtype name ("bfloat16", ...)
    attention_fp8_forward(q, k, v, descale, kv_lens, sinks, causal, causal_alignment, scale,
                          window_left, window_right, out_dtype: str)
        -> (out: (B, Hq, Lq, D) in out_dtype, lse: (B, Hq, Lq) float32)

The scalars are the API's keywords, already checked and resolved (the softmax scale, the
dropout seed drawn); the ops take no Python defaults so that their schema is the launch's
exact contract, and they resolve the launch parameters themselves (``launch.resolve_launch``,
``resolve_varlen_launch``, ``resolve_decode_launch``), from the shapes. Layers: the API
modules call these ops, they call kernels/checks.py and kernels/launch.py, never back up.
``out`` and ``sinks`` are differentiable (``lse`` is an output but its cotangent is ignored).
The backward ops have no autograd formula of their own: a double backward raises.
``dropout_p > 0`` with ``dropout_seed=None`` draws the seed with a data-dependent ``.item()``
in the API function, a graph break under ``torch.compile``; pass ``dropout_seed`` there.

Checks that read tensor values: the dense forward op repeats its own (``checks.check_values``)
before launching. The packed and KV-cache ops take ``check_values``: their API functions make
those checks in eager mode and pass ``check_values=True`` only while ``torch.compile`` traces
them (then the API cannot read values, and the op makes them when the graph runs), so an eager
call pays its device-to-host copy once.
"""

from __future__ import annotations

from typing import Optional

import torch

from .checks import check_cu_seqlens_values, check_kvcache_values, check_values
from .launch import (
    Varlen,
    launch_backward,
    launch_decode,
    launch_forward,
    resolve_decode_launch,
    resolve_launch,
    resolve_varlen_launch,
)

NAMESPACE = "flashref"


@torch.library.custom_op(f"{NAMESPACE}::attention_forward", mutates_args=())
def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_lens: Optional[torch.Tensor],
                      alibi: Optional[torch.Tensor], sinks: Optional[torch.Tensor], causal: bool,
                      causal_alignment: str, scale: float, window_left: int, window_right: int, softcap: float,
                      dropout_p: float, dropout_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the fused forward: returns (out, lse). See the module docstring for the schema."""
    check_values(kv_lens, alibi, sinks, k.shape[2])
    params = resolve_launch(q, k, causal, causal_alignment, scale, kv_lens, (window_left, window_right), softcap,
                            dropout_p, dropout_seed)
    return launch_forward(q, k, v, params, kv_lens, alibi, sinks)


@attention_forward.register_fake
def _attention_forward_fake(q, k, v, kv_lens, alibi, sinks, *scalars):
    # out keeps q's layout (the kernels write through q's strides' order) when Dv == D, else it
    # is contiguous (B, Hq, Lq, Dv) (launch.launch_forward); lse is contiguous.
    out = torch.empty_like(q) if v.shape[-1] == q.shape[-1] else q.new_empty((*q.shape[:-1], v.shape[-1]))
    lse = q.new_empty((q.shape[0], q.shape[1], q.shape[2]), dtype=torch.float32)
    return out, lse


@torch.library.custom_op(f"{NAMESPACE}::attention_backward", mutates_args=())
def attention_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                       dout: torch.Tensor, kv_lens: Optional[torch.Tensor], alibi: Optional[torch.Tensor],
                       sinks: Optional[torch.Tensor], causal: bool, causal_alignment: str, scale: float,
                       window_left: int, window_right: int, softcap: float, dropout_p: float,
                       dropout_seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch delta, dK/dV and dQ: returns (dq, dk, dv, dsinks) (dsinks empty without sinks)."""
    params = resolve_launch(q, k, causal, causal_alignment, scale, kv_lens, (window_left, window_right), softcap,
                            dropout_p, dropout_seed)
    dq, dk, dv, dsinks = launch_backward(q, k, v, out, lse, dout, params, kv_lens, alibi, sinks)
    return dq, dk, dv, q.new_empty((0,), dtype=torch.float32) if dsinks is None else dsinks


@attention_backward.register_fake
def _attention_backward_fake(q, k, v, out, lse, dout, kv_lens, alibi, sinks, *scalars):
    dsinks = q.new_empty((0,), dtype=torch.float32) if sinks is None else torch.empty_like(sinks)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dsinks


def _setup_context(ctx, inputs, output):
    q, k, v, kv_lens, alibi, sinks, *scalars = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, kv_lens, alibi, sinks)
    ctx.scalars = scalars
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse, kv_lens, alibi, sinks = ctx.saved_tensors
    dq, dk, dv, dsinks = attention_backward(q, k, v, out, lse, dout, kv_lens, alibi, sinks, *ctx.scalars)
    return (dq, dk, dv, None, None, dsinks if sinks is not None else None) + (None,) * len(ctx.scalars)


attention_forward.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------
# FP8 forward (forward only)

FP8_BACKWARD_ERROR = ("FP8 backward is not supported: flash_attention's FP8 path (float8_e4m3fn q, k, v) is "
                      "forward only. Train in bfloat16 (or float16/float32) and quantize for inference.")


@torch.library.custom_op(f"{NAMESPACE}::attention_fp8_forward", mutates_args=())
def attention_fp8_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, descale: torch.Tensor,
                          kv_lens: Optional[torch.Tensor], sinks: Optional[torch.Tensor], causal: bool,
                          causal_alignment: str, scale: float, window_left: int, window_right: int,
                          out_dtype: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the FP8 forward: returns (out, lse). See the module docstring for the schema."""
    check_values(kv_lens, None, sinks, k.shape[2])
    params = resolve_launch(q, k, causal, causal_alignment, scale, kv_lens, (window_left, window_right), 0.0,
                            0.0, 0)
    return launch_forward(q, k, v, params, kv_lens, None, sinks, descale=descale,
                          out_dtype=getattr(torch, out_dtype))


@attention_fp8_forward.register_fake
def _attention_fp8_forward_fake(q, k, v, descale, kv_lens, sinks, causal, causal_alignment, scale, window_left,
                                window_right, out_dtype):
    out = torch.empty_like(q, dtype=getattr(torch, out_dtype))
    lse = q.new_empty((q.shape[0], q.shape[1], q.shape[2]), dtype=torch.float32)
    return out, lse


def _fp8_setup_context(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1])


def _fp8_backward(ctx, dout, _dlse):
    raise NotImplementedError(FP8_BACKWARD_ERROR)


attention_fp8_forward.register_autograd(_fp8_backward, setup_context=_fp8_setup_context)


# ---------------------------------------------------------------------------------------------
# Packed sequences

@torch.library.custom_op(f"{NAMESPACE}::attention_varlen_forward", mutates_args=())
def attention_varlen_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                             cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int,
                             alibi: Optional[torch.Tensor], sinks: Optional[torch.Tensor], causal: bool,
                             causal_alignment: str, scale: float, window_left: int, window_right: int,
                             softcap: float, dropout_p: float, dropout_seed: int,
                             check_values: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the fused forward over packed sequences: returns (out, lse). Schema: module docstring."""
    if check_values:
        check_cu_seqlens_values("cu_seqlens_q", cu_seqlens_q, q.shape[0], max_seqlen_q)
        check_cu_seqlens_values("cu_seqlens_k", cu_seqlens_k, k.shape[0], max_seqlen_k)
    params = resolve_varlen_launch(causal, causal_alignment, scale, (window_left, window_right), softcap,
                                   dropout_p, dropout_seed)
    varlen = Varlen(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    return launch_forward(q, k, v, params, None, alibi, sinks, varlen)


@attention_varlen_forward.register_fake
def _attention_varlen_forward_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, *scalars_and_optionals):
    # q's layout, as the kernels write it (contiguous (total_q, Hq, Dv) when Dv != D)
    out = torch.empty_like(q) if v.shape[-1] == q.shape[-1] else q.new_empty((*q.shape[:-1], v.shape[-1]))
    lse = q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)  # (Hq, total_q)
    return out, lse


@torch.library.custom_op(f"{NAMESPACE}::attention_varlen_backward", mutates_args=())
def attention_varlen_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                              lse: torch.Tensor, dout: torch.Tensor, cu_seqlens_q: torch.Tensor,
                              cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int,
                              alibi: Optional[torch.Tensor], sinks: Optional[torch.Tensor], causal: bool,
                              causal_alignment: str, scale: float, window_left: int, window_right: int,
                              softcap: float, dropout_p: float, dropout_seed: int,
                              check_values: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch delta, dK/dV and dQ over packed sequences: returns (dq, dk, dv, dsinks) (dsinks
    empty without sinks). ``check_values`` is ignored: the forward checked the same tensors."""
    params = resolve_varlen_launch(causal, causal_alignment, scale, (window_left, window_right), softcap,
                                   dropout_p, dropout_seed)
    varlen = Varlen(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    dq, dk, dv, dsinks = launch_backward(q, k, v, out, lse, dout, params, None, alibi, sinks, varlen)
    return dq, dk, dv, q.new_empty((0,), dtype=torch.float32) if dsinks is None else dsinks


@attention_varlen_backward.register_fake
def _attention_varlen_backward_fake(q, k, v, out, lse, dout, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                    max_seqlen_k, alibi, sinks, *scalars):
    dsinks = q.new_empty((0,), dtype=torch.float32) if sinks is None else torch.empty_like(sinks)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dsinks


def _setup_varlen_context(ctx, inputs, output):
    q, k, v, cu_q, cu_k, max_q, max_k, alibi, sinks, *scalars = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k, alibi, sinks)
    ctx.maxima = (max_q, max_k)
    ctx.scalars = scalars
    ctx.mark_non_differentiable(lse)


def _varlen_backward(ctx, dout, _dlse):
    q, k, v, out, lse, cu_q, cu_k, alibi, sinks = ctx.saved_tensors
    dq, dk, dv, dsinks = attention_varlen_backward(q, k, v, out, lse, dout, cu_q, cu_k, *ctx.maxima, alibi, sinks,
                                                   *ctx.scalars)
    return (dq, dk, dv, None, None, None, None, None, dsinks if sinks is not None else None) \
        + (None,) * len(ctx.scalars)


attention_varlen_forward.register_autograd(_varlen_backward, setup_context=_setup_varlen_context)


# ---------------------------------------------------------------------------------------------
# Decoding against a KV cache (forward only)

@torch.library.custom_op(f"{NAMESPACE}::attention_with_kvcache", mutates_args=())
def attention_with_kvcache(q: torch.Tensor, k_cache: torch.Tensor, v_cache: Optional[torch.Tensor],
                           cache_seqlens: torch.Tensor, new_len: int, block_table: Optional[torch.Tensor],
                           alibi: Optional[torch.Tensor], sinks: Optional[torch.Tensor], causal: bool, scale: float,
                           window_left: int, window_right: int, softcap: float, num_splits: int,
                           check_values: bool, v_head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the split-KV decode and its combine: returns (out, lse). Schema: module docstring."""
    if check_values:
        check_kvcache_values(k_cache, cache_seqlens, block_table, new_len)
    params = resolve_decode_launch(causal, scale, (window_left, window_right), softcap)
    seqlens = (cache_seqlens.to(torch.int32) + new_len).contiguous()
    return launch_decode(q, k_cache, v_cache, seqlens, block_table, alibi, sinks, params, num_splits, v_head_dim)


@attention_with_kvcache.register_fake
def _attention_with_kvcache_fake(q, k_cache, v_cache, *scalars_and_optionals):
    head_dim_v = scalars_and_optionals[-1]  # v_head_dim: Dv, resolved by the API (v_cache's or the given)
    out = torch.empty_like(q) if head_dim_v == q.shape[3] else q.new_empty((*q.shape[:3], head_dim_v))
    lse = q.new_empty((q.shape[0], q.shape[1], q.shape[2]), dtype=torch.float32)
    return out, lse


__all__ = ["FP8_BACKWARD_ERROR", "attention_fp8_forward", "attention_forward", "attention_backward", "attention_varlen_forward", "attention_varlen_backward",
           "attention_with_kvcache", "NAMESPACE"]
