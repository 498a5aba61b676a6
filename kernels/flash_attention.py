"""``flash_attention``: the torch entry point to the fused kernels (checks, dispatch, autograd).

The host side does everything that is not arithmetic: it checks the inputs (a clear
``ValueError``/``TypeError`` naming the argument, before any launch), allocates the outputs,
picks the configuration (autotuned on a GPU, one fixed config under the interpreter), launches
the kernels of ``attention_forward``/``attention_backward``, and wires them into
``torch.autograd``. The math lives in those two modules' docstrings and in docs/kernels.md.
"""

import contextlib
import contextvars
import math
import os

import torch
import triton
from triton.runtime.interpreter import InterpretedFunction

from .attention_backward import (
    LOG2E,
    attention_backward_delta_kernel,
    attention_backward_dkdv_kernel,
    attention_backward_dq_kernel,
)
from .attention_forward import attention_forward_kernel
from . import library  # noqa: F401 -- registers torch.ops.flashref.attention_forward / _backward
from .configs import (
    INTERPRETER_CONFIG,
    MAX_HEAD_DIM,
    SUPPORTED_DTYPES,
    KernelConfig,
    all_triton_configs,
    config_pruner,
    dkdv_passes,
    padded_head_dim,
)

CAUSAL_ALIGNMENTS = ("top_left", "bottom_right")
# float32 inputs: plain tf32 (10-bit mantissa) would be ~1000x worse than the float32
# baseline the rule compares against. "tf32x3" (three tensor-core products) spilled registers
# at every tile the compile gate tried for head dim 128, so float32 takes exact FMA dots on
# small tiles: a correctness path, not a performance one (docs/kernels.md).
FLOAT32_DOT_PRECISION = "ieee"

# Triton 3.9 warns when this is unset and 3.10 flips its default. The kernels are written for
# fused multiply-adds (the softmax's ``qk * qk_scale - m`` is one FMA), so say so explicitly;
# a value the user set wins.
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

#: True when these kernels were decorated while ``TRITON_INTERPRET=1`` (it is read when
#: ``@triton.jit`` runs, i.e. when this package is first imported): they then run on CPU
#: tensors, program after program, with NumPy.
INTERPRETED = isinstance(attention_forward_kernel, InterpretedFunction)

_poison_outputs = contextvars.ContextVar("flashref_poison_outputs", default=False)


@contextlib.contextmanager
def poisoned_outputs():
    """Within this block every buffer the kernels write (out, lse, delta, dq, dk, dv) is filled
    with NaN before the launch, so an element a kernel forgets to write shows up as NaN.
    A testing hook: the equivalence checker uses it; it costs one fill per buffer."""
    token = _poison_outputs.set(True)
    try:
        yield
    finally:
        _poison_outputs.reset(token)


def _new_buffer(like: torch.Tensor, *, shape=None, dtype=None) -> torch.Tensor:
    """An output buffer: q's layout when ``shape`` is None (so a transposed view's output is a
    transposed view too), else contiguous; NaN-filled inside ``poisoned_outputs()``."""
    if shape is None:
        buf = torch.empty_like(like, dtype=dtype)
    else:
        buf = torch.empty(shape, dtype=dtype or like.dtype, device=like.device)
    if _poison_outputs.get():
        buf.fill_(float("nan"))
    return buf


def _autotuned(kernel, name, extra_key=()):
    return triton.autotune(
        configs=all_triton_configs(name),
        key=["seqlen_q", "seqlen_k", "HEAD_DIM", "CAUSAL", "HAS_KV_LENS", *extra_key],
        prune_configs_by={"early_config_prune": config_pruner(name)},
    )(kernel)


# Autotuning cannot run under the interpreter ("0 active drivers"), so the tuned wrappers are
# only made when compiling for a GPU.
if not INTERPRETED:
    _FORWARD = _autotuned(attention_forward_kernel, "forward")
    # Each dK/dV pass (GRADS) is tuned on its own: a dV pass costs less than a dK pass.
    _DKDV = _autotuned(attention_backward_dkdv_kernel, "backward_dkdv", extra_key=("GRADS",))
    _DQ = _autotuned(attention_backward_dq_kernel, "backward_dq")


def _check_inputs(q, k, v, causal, causal_alignment, softmax_scale, kv_lens):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (batch, heads, seqlen, head_dim), got shape {tuple(t.shape)}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{name} must be float16, bfloat16 or float32, got {t.dtype}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have q's dtype {q.dtype}, got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} must be on q's device {q.device}, got {t.device}")
    batch, heads_q, _, head_dim = q.shape
    if k.shape[0] != batch or v.shape[0] != batch:
        raise ValueError(f"batch sizes differ: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if v.shape[1:3] != k.shape[1:3]:
        raise ValueError(f"v must have k's heads and seqlen {tuple(k.shape[1:3])}, got shape {tuple(v.shape)}")
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be between 1 and {MAX_HEAD_DIM}, got q with head_dim {head_dim}")
    if k.shape[3] != head_dim:
        raise ValueError(f"k must have q's head_dim {head_dim}, got {k.shape[3]}")
    if v.shape[3] != head_dim:
        raise ValueError(f"v's head_dim must equal q's ({head_dim}): Dv != D is not supported, got {v.shape[3]}")
    heads_kv = k.shape[1]
    if heads_kv == 0 and heads_q != 0 or heads_kv and heads_q % heads_kv != 0:
        raise ValueError(f"q's heads ({heads_q}) must be a multiple of k's and v's heads ({heads_kv}) (GQA/MQA)")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if causal_alignment not in CAUSAL_ALIGNMENTS:
        raise ValueError(f"causal_alignment must be one of {CAUSAL_ALIGNMENTS}, got {causal_alignment!r}")
    if softmax_scale is not None:
        if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float)):
            raise TypeError(f"softmax_scale must be a float or None, got {type(softmax_scale).__name__}")
        if not (math.isfinite(softmax_scale) and softmax_scale > 0):
            raise ValueError(f"softmax_scale must be positive and finite, got {softmax_scale}")
    if kv_lens is not None:
        if not isinstance(kv_lens, torch.Tensor):
            raise TypeError(f"kv_lens must be an integer torch.Tensor of shape ({batch},), got {type(kv_lens).__name__}")
        if kv_lens.dtype not in (torch.int32, torch.int64, torch.int16, torch.uint8, torch.int8):
            raise TypeError(f"kv_lens must have an integer dtype, got {kv_lens.dtype}")
        if tuple(kv_lens.shape) != (batch,):
            raise ValueError(f"kv_lens must have shape ({batch},) (one length per batch), got {tuple(kv_lens.shape)}")
        if kv_lens.device != q.device:
            raise ValueError(f"kv_lens must be on q's device {q.device}, got {kv_lens.device}")
        # Under torch.compile a value check would break the graph; the op repeats it (library.py).
        if batch and not torch.compiler.is_compiling() and (int(kv_lens.min()) < 0 or int(kv_lens.max()) > k.shape[2]):
            raise ValueError(f"kv_lens must lie in [0, {k.shape[2]}] (k's seqlen), got {kv_lens.tolist()}")
    if q.device.type == "cpu" and not INTERPRETED:
        raise ValueError(
            "q is a CPU tensor but the Triton kernels were compiled for a GPU. To run them on the CPU "
            "with Triton's interpreter, set TRITON_INTERPRET=1 in the environment before triton and "
            "flashref.kernels are imported (e.g. `TRITON_INTERPRET=1 python ...`).")


def _strides(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.stride())


def _meta(q, causal, kv_lens):
    head_dim = q.shape[3]
    return dict(
        HEAD_DIM=head_dim,
        BLOCK_D=padded_head_dim(head_dim),
        CAUSAL=causal,
        HAS_KV_LENS=kv_lens is not None,
        UPCAST=INTERPRETED,
        DOT_PRECISION=FLOAT32_DOT_PRECISION if q.dtype == torch.float32 else "tf32",
    )


def _fixed(config: KernelConfig) -> dict:
    return dict(BLOCK_M=config.block_m, BLOCK_N=config.block_n)


def _forward(q, k, v, causal, shift, scale, kv_lens):
    """Launch the forward. Returns out (q's layout and dtype) and lse (B, Hq, Lq) float32."""
    batch, heads_q, seqlen_q, _ = q.shape
    heads_kv, seqlen_k = k.shape[1], k.shape[2]
    out = _new_buffer(q)
    lse = _new_buffer(q, shape=(batch, heads_q, seqlen_q), dtype=torch.float32)
    if out.numel() == 0:
        return out, lse
    if seqlen_k == 0:  # every row sees no key
        return out.zero_(), lse.fill_(float("-inf"))
    args = (q, k, v, out, lse, kv_lens,
            *_strides(q), *_strides(k), *_strides(v), *_strides(out),
            heads_q, heads_q // heads_kv, seqlen_q, seqlen_k, shift, scale * LOG2E)
    meta = _meta(q, causal, kv_lens)
    if INTERPRETED:
        grid = (triton.cdiv(seqlen_q, INTERPRETER_CONFIG.block_m), batch * heads_q)
        attention_forward_kernel[grid](*args, **meta, **_fixed(INTERPRETER_CONFIG))
    else:
        _FORWARD[lambda m: (triton.cdiv(seqlen_q, m["BLOCK_M"]), batch * heads_q)](*args, **meta)
    return out, lse


def _backward(q, k, v, out, lse, dout, causal, shift, scale, kv_lens):
    """Launch delta, dK/dV and dQ. Returns dq, dk, dv in the layouts and dtypes of q, k, v."""
    batch, heads_q, seqlen_q, head_dim = q.shape
    heads_kv, seqlen_k = k.shape[1], k.shape[2]
    dq, dk, dv = _new_buffer(q), _new_buffer(k), _new_buffer(v)
    if q.numel() == 0 or k.numel() == 0:  # nothing to sum over: every gradient is 0
        return dq.zero_(), dk.zero_(), dv.zero_()
    delta = _new_buffer(q, shape=(batch, heads_q, seqlen_q), dtype=torch.float32)
    block_d = padded_head_dim(head_dim)
    delta_block_m = 16 if INTERPRETED else 64
    attention_backward_delta_kernel[(triton.cdiv(seqlen_q, delta_block_m), batch * heads_q)](
        out, dout, delta, *_strides(out), *_strides(dout), heads_q, seqlen_q,
        HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=delta_block_m)

    meta = _meta(q, causal, kv_lens)
    qkv_strides = (*_strides(q), *_strides(k), *_strides(v), *_strides(dout))
    dkdv_args = (q, k, v, dout, lse, delta, dk, dv, kv_lens, *qkv_strides, *_strides(dk), *_strides(dv),
                 heads_q, heads_kv, seqlen_q, seqlen_k, shift, scale * LOG2E, scale)
    dq_args = (q, k, v, dout, lse, delta, dq, kv_lens, *qkv_strides, *_strides(dq),
               heads_q, heads_q // heads_kv, seqlen_q, seqlen_k, shift, scale * LOG2E, scale)
    # One dK/dV launch, or at head dims above 128 one per gradient (configs.dkdv_passes).
    if INTERPRETED:
        c = INTERPRETER_CONFIG
        for grads in dkdv_passes(head_dim):
            attention_backward_dkdv_kernel[(triton.cdiv(seqlen_k, c.block_n), batch * heads_kv)](
                *dkdv_args, **meta, **_fixed(c), GRADS=grads)
        attention_backward_dq_kernel[(triton.cdiv(seqlen_q, c.block_m), batch * heads_q)](
            *dq_args, **meta, **_fixed(c))
    else:
        for grads in dkdv_passes(head_dim):
            _DKDV[lambda m: (triton.cdiv(seqlen_k, m["BLOCK_N"]), batch * heads_kv)](
                *dkdv_args, **meta, GRADS=grads)
        _DQ[lambda m: (triton.cdiv(seqlen_q, m["BLOCK_M"]), batch * heads_q)](*dq_args, **meta)
    return dq, dk, dv


def flash_attention(q, k, v, *, causal=False, causal_alignment="top_left", softmax_scale=None,
                    kv_lens=None, return_lse=False):
    """Fused scaled-dot-product attention, differentiable in q, k and v.

    q: (B, Hq, Lq, D), k and v: (B, Hkv, Lk, D) with ``Hq % Hkv == 0`` (query head h reads kv
    head ``h // (Hq // Hkv)``), 1 <= D <= 256, dtype float16/bfloat16/float32 (float32
    accumulation), any strides. Returns ``out: (B, Hq, Lq, D)`` in q's dtype, and with
    ``return_lse`` also ``lse: (B, Hq, Lq)`` float32, natural log (not differentiable).

    ``out_i = softmax(softmax_scale * q_i k^T, masked) v`` with ``softmax_scale`` defaulting to
    ``1/sqrt(D)``. Key j is visible to query i of batch b iff ``j < kv_lens[b]`` (when given:
    an integer tensor (B,) with values in [0, Lk]) and, when ``causal``, ``j <= i`` for
    ``causal_alignment="top_left"`` (torch SDPA's ``is_causal``) or ``j <= i + Lk - Lq`` for
    ``"bottom_right"`` (FlashAttention 2.1+, KV-cache decoding). A row that sees no key gives
    ``out = 0``, ``lse = -inf`` and zero gradients. Oracle twin:
    ``flashref.reference.attention_forward`` / ``attention_backward``.

    CUDA tensors run compiled kernels; CPU tensors need ``TRITON_INTERPRET=1`` set before
    triton is imported (Triton's interpreter). Works under ``torch.compile(fullgraph=True)``:
    the launches are the ops ``torch.ops.flashref.attention_forward`` / ``attention_backward``.
    """
    _check_inputs(q, k, v, causal, causal_alignment, softmax_scale, kv_lens)
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(q.shape[3])
    shift = k.shape[2] - q.shape[2] if causal and causal_alignment == "bottom_right" else 0
    if kv_lens is not None:
        kv_lens = kv_lens.to(dtype=torch.int32).contiguous()
    # torch.ops.flashref.attention_forward (kernels/library.py): a custom op with a fake
    # implementation and an autograd formula, so torch.compile records it without a graph break.
    out, lse = torch.ops.flashref.attention_forward(q, k, v, causal, shift, scale, kv_lens)
    return (out, lse) if return_lse else out
