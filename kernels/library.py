"""The kernels as torch operators: ``torch.ops.flashref.attention_forward`` / ``attention_backward``.

``flash_attention`` (kernels/flash_attention.py) checks its arguments in Python and then calls
``torch.ops.flashref.attention_forward``; the backward is ``torch.ops.flashref.attention_backward``,
wired in with ``torch.library.register_autograd``. Registering the launches as custom ops
(``torch.library.custom_op``) is what lets ``torch.compile`` keep a model that calls
``flash_attention`` in one graph: Dynamo does not trace into an op, it records it; each op's
fake (meta) implementation tells the compiler the outputs' shapes, dtypes and strides without
running a kernel, so shapes may be symbolic (``mark_dynamic`` on a sequence axis compiles
once for every length). ``custom_op`` rather than ``triton_op``: under Triton's interpreter
(the CPU path) there is no compiled kernel for Inductor to inline, and one op per launch
sequence is all a graph needs.

Schemas (q: (B, Hq, Lq, D), k, v: (B, Hkv, Lk, D), kv_lens: (B,) int32 or None)::

    attention_forward(q, k, v, causal: bool, shift: SymInt, scale: float, kv_lens: Tensor?)
        -> (out: (B, Hq, Lq, D) in q's dtype and layout, lse: (B, Hq, Lq) float32)
    attention_backward(q, k, v, out, lse, dout, causal, shift, scale, kv_lens)
        -> (dq, dk, dv) in the dtypes and layouts of q, k, v

``shift`` is the causal alignment's offset (0 top-left, ``Lk - Lq`` bottom-right) and
``scale`` the softmax scale, both already resolved by ``flash_attention``; the ops take no
Python defaults so that their schema is the launch's exact contract. ``lse`` is an output
but not differentiable (its cotangent is ignored, as in ``flash_attention``). The backward op
has no autograd formula of its own: a double backward raises.
"""

from __future__ import annotations

from typing import Optional

import torch

NAMESPACE = "flashref"


def _check_kv_lens_values(kv_lens: Optional[torch.Tensor], seqlen_k: int) -> None:
    """The one input check that reads tensor values. ``flash_attention`` does it in eager mode;
    under ``torch.compile`` it cannot (a data-dependent branch breaks the graph), so the op
    repeats it here, where it runs eagerly in either case, still before any launch."""
    if kv_lens is not None and kv_lens.numel() and (int(kv_lens.min()) < 0 or int(kv_lens.max()) > seqlen_k):
        raise ValueError(f"kv_lens must lie in [0, {seqlen_k}] (k's seqlen), got {kv_lens.tolist()}")


@torch.library.custom_op(f"{NAMESPACE}::attention_forward", mutates_args=())
def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, shift: int, scale: float,
                      kv_lens: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the fused forward: returns (out, lse). See the module docstring for the schema."""
    from .flash_attention import _forward  # flash_attention imports this module

    _check_kv_lens_values(kv_lens, k.shape[2])
    return _forward(q, k, v, causal, shift, scale, kv_lens)


@attention_forward.register_fake
def _attention_forward_fake(q, k, v, causal, shift, scale, kv_lens):
    # out keeps q's layout (the kernels write through q's strides' order), lse is contiguous.
    out = torch.empty_like(q)
    lse = q.new_empty((q.shape[0], q.shape[1], q.shape[2]), dtype=torch.float32)
    return out, lse


@torch.library.custom_op(f"{NAMESPACE}::attention_backward", mutates_args=())
def attention_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                       dout: torch.Tensor, causal: bool, shift: int, scale: float,
                       kv_lens: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch delta, dK/dV and dQ: returns (dq, dk, dv)."""
    from .flash_attention import _backward

    return _backward(q, k, v, out, lse, dout, causal, shift, scale, kv_lens)


@attention_backward.register_fake
def _attention_backward_fake(q, k, v, out, lse, dout, causal, shift, scale, kv_lens):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, causal, shift, scale, kv_lens = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, kv_lens)
    ctx.causal, ctx.shift, ctx.scale = causal, shift, scale
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse, kv_lens = ctx.saved_tensors
    dq, dk, dv = attention_backward(q, k, v, out, lse, dout, ctx.causal, ctx.shift, ctx.scale, kv_lens)
    return dq, dk, dv, None, None, None, None


attention_forward.register_autograd(_backward, setup_context=_setup_context)

__all__ = ["attention_forward", "attention_backward", "NAMESPACE"]
