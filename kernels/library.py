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

Schemas (q: (B, Hq, Lq, D), k, v: (B, Hkv, Lk, D), kv_lens: (B,) int32, alibi: (Hq,) or (B, Hq)
float32, sinks: (Hq,) float32, each optional)::

    attention_forward(q, k, v, kv_lens, alibi, sinks, causal: bool, causal_alignment: str,
                      scale: float, window_left: int, window_right: int, softcap: float,
                      dropout_p: float, dropout_seed: int)
        -> (out: (B, Hq, Lq, D) in q's dtype and layout, lse: (B, Hq, Lq) float32)
    attention_backward(q, k, v, out, lse, dout, <the same optional tensors and scalars>)
        -> (dq, dk, dv in the dtypes and layouts of q, k, v;  dsinks: (Hq,) float32, or an
            empty tensor without sinks)

The scalars are ``flash_attention``'s keywords, already checked and resolved (the softmax
scale, the dropout seed drawn); the ops take no Python defaults so that their schema is the
launch's exact contract, and they resolve the launch parameters themselves
(``launch.resolve_launch``), from the shapes. Layers: flash_attention.py calls these ops, they
call kernels/launch.py, never back up. ``out`` and ``sinks`` are differentiable
(``lse`` is an output but its cotangent is ignored, as in ``flash_attention``). The backward
op has no autograd formula of its own: a double backward raises. ``dropout_p > 0`` with
``dropout_seed=None`` draws the seed with a data-dependent ``.item()`` in ``flash_attention``,
a graph break under ``torch.compile``; pass ``dropout_seed`` there.
"""

from __future__ import annotations

from typing import Optional

import torch

from .checks import check_values
from .launch import launch_backward, launch_forward, resolve_launch

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
    # out keeps q's layout (the kernels write through q's strides' order), lse is contiguous.
    out = torch.empty_like(q)
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

__all__ = ["attention_forward", "attention_backward", "NAMESPACE"]
