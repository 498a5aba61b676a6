"""``flash_attention``: the torch entry point to the fused kernels.

The top of a one-way stack: it checks the call (kernels/checks.py), draws the dropout seed
(kernels/launch.py) and calls the custom op ``torch.ops.flashref.attention_forward``
(kernels/library.py), whose autograd formula is ``attention_backward``; the ops resolve the
launch parameters and launch (kernels/launch.py), which runs the Triton kernels of
attention_forward.py / attention_backward.py. The math lives in those two modules' docstrings
and in docs/kernels.md.
"""

import math

import torch

from . import library  # noqa: F401 -- registers torch.ops.flashref.attention_forward / _backward
from .checks import CAUSAL_ALIGNMENTS, FP8_DTYPES, check_fp8, check_qkv, check_variants, variant_arguments
from .launch import INTERPRETED, dropout_seed_for, last_dropout_seed, poisoned_outputs

__all__ = ["flash_attention", "CAUSAL_ALIGNMENTS", "INTERPRETED", "last_dropout_seed", "poisoned_outputs"]


def flash_attention(q, k, v, *, causal=False, causal_alignment="top_left", softmax_scale=None,
                    kv_lens=None, window_size=(-1, -1), softcap=0.0, alibi_slopes=None, sinks=None,
                    dropout_p=0.0, dropout_seed=None, return_lse=False, q_descale=None, k_descale=None,
                    v_descale=None, out_dtype=None):
    """Fused scaled-dot-product attention, differentiable in q, k, v (and ``sinks``).

    q: (B, Hq, Lq, D), k: (B, Hkv, Lk, D), v: (B, Hkv, Lk, Dv) with ``Hq % Hkv == 0`` (query
    head h reads kv head ``h // (Hq // Hkv)``), 1 <= D, Dv <= 256 (Dv may differ from D, as in
    DeepSeek's MLA: (192, 128); tiles are chosen by max(D, Dv)), dtype float16/bfloat16/float32
    (float32 accumulation), any strides. Returns ``out: (B, Hq, Lq, Dv)`` in q's dtype, and with
    ``return_lse`` also ``lse: (B, Hq, Lq)`` float32, natural log (not differentiable).

    With ``shift_b = 0`` for ``causal_alignment="top_left"`` and, for ``"bottom_right"`` (the
    queries are the last Lq tokens of each sequence), ``kv_lens[b] - Lq`` when ``kv_lens`` is
    given else ``Lk - Lq``, query i of batch b and key j, head h:

    - ``s = softmax_scale * q_i . k_j`` (``softmax_scale`` defaults to ``1/sqrt(D)``);
    - ``softcap > 0``: ``s <- softcap * tanh(s / softcap)``;
    - ``alibi_slopes`` ((Hq,) or (B, Hq) float32, not differentiated):
      ``s <- s - slope[b, h] * |i + shift_b - j|``;
    - visible iff ``j < kv_lens[b]`` (integer tensor (B,), values in [0, Lk]), and ``causal``:
      ``j <= i + shift_b``; ``window_size=(left, right)`` (-1 = unbounded):
      ``i + shift_b - left <= j <= i + shift_b + right``;
    - ``P = exp(s - lse)`` over visible keys, ``lse = log(exp(sinks[h]) + sum_j exp(s_ij))``
      (``sinks``: (Hq,) float32, one logit per query head with a zero value vector; may
      require grad: ``dsinks[h] = -sum_{b,i} exp(sinks[h] - lse) * rowsum(dO * O)``);
    - ``dropout_p`` in [0, 1): ``out = (P * keep / (1 - dropout_p)) v`` with the keep mask of
      Philox-4x32-10 keyed by ``dropout_seed`` (an int in [0, 2**63); None draws one from
      torch's default generator, readable afterwards with ``last_dropout_seed()``). The lse
      has no dropout. docs/kernels.md gives the exact counters.

    A row that sees no key gives ``out = 0``, ``lse = -inf`` (``sinks[h]`` with sinks) and zero
    gradients. Oracle twin: ``flashref.reference.attention_forward`` / ``attention_backward``.

    FP8 forward (FA3's convention): q, k, v ``torch.float8_e4m3fn`` and ``q_descale``,
    ``k_descale``, ``v_descale`` float32 ``(B, Hkv)`` (None: 1), the real inputs being
    ``q * q_descale[b, h // (Hq // Hkv)]`` (k, v alike). Returns out in ``out_dtype`` (default
    bfloat16). The scores ``s = softmax_scale * q_descale * k_descale * q_i . k_j`` are float32
    (exact fp8 products, float32 sums); P goes to the P V product rounded to e4m3 (nearest
    even) as ``q8(2^8 exp(s - m))``, m the running row max: FA3's ``Max_offset = 8``, P in
    [0, 256] instead of [0, 1] so that weights down to 2^-14 of the row's largest stay normal
    e4m3 numbers; the row sum divides by the unrounded float32 P's sum; O is multiplied by
    ``v_descale`` at the end. Supports causal (both alignments), ``kv_lens``, GQA,
    ``window_size`` and ``sinks`` (not differentiated); not softcap, ALiBi, dropout; forward
    only (``backward`` raises); the GPU needs FP8 tensor cores (sm_89 or newer).

    CUDA tensors run compiled kernels; CPU tensors need ``TRITON_INTERPRET=1`` set before
    triton is imported (Triton's interpreter). Works under ``torch.compile(fullgraph=True)``:
    the launches are the ops ``torch.ops.flashref.attention_forward`` / ``attention_backward``.
    """
    fp8 = isinstance(q, torch.Tensor) and q.dtype in FP8_DTYPES
    check_qkv(q, k, v, causal, causal_alignment, softmax_scale, kv_lens, fp8=fp8)
    check_variants(q, window_size, softcap, alibi_slopes, sinks, dropout_p, dropout_seed)
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(q.shape[3])
    if fp8:
        return _fp8_forward(q, k, v, causal, causal_alignment, scale, kv_lens, window_size, softcap, alibi_slopes,
                            sinks, dropout_p, return_lse, q_descale, k_descale, v_descale, out_dtype)
    if any(d is not None for d in (q_descale, k_descale, v_descale)) or out_dtype is not None:
        raise ValueError(f"q_descale, k_descale, v_descale and out_dtype are for float8_e4m3fn inputs, got q of {q.dtype}")
    seed = dropout_seed_for(dropout_p, dropout_seed)
    if kv_lens is not None:
        kv_lens = kv_lens.to(dtype=torch.int32).contiguous()
    alibi_slopes, sinks, left, right = variant_arguments(alibi_slopes, sinks, window_size)
    # torch.ops.flashref.attention_forward (kernels/library.py): a custom op with a fake
    # implementation and an autograd formula, so torch.compile records it without a graph break.
    out, lse = torch.ops.flashref.attention_forward(
        q, k, v, kv_lens, alibi_slopes, sinks, causal, causal_alignment, scale, left, right,
        float(softcap), float(dropout_p), seed)
    return (out, lse) if return_lse else out


def _fp8_forward(q, k, v, causal, causal_alignment, scale, kv_lens, window_size, softcap, alibi_slopes, sinks,
                 dropout_p, return_lse, q_descale, k_descale, v_descale, out_dtype):
    """``flash_attention`` with float8_e4m3fn q, k, v (its docstring): checks, then the
    forward-only op ``torch.ops.flashref.attention_fp8_forward``."""
    out_dtype = torch.bfloat16 if out_dtype is None else out_dtype
    descale = check_fp8(q, k, v, q_descale, k_descale, v_descale, out_dtype, float(softcap), alibi_slopes,
                        float(dropout_p))
    if kv_lens is not None:
        kv_lens = kv_lens.to(dtype=torch.int32).contiguous()
    if sinks is not None:
        sinks = sinks.detach().contiguous()
    left, right = (int(w) for w in window_size)
    out, lse = torch.ops.flashref.attention_fp8_forward(
        q, k, v, descale, kv_lens, sinks, causal, causal_alignment, scale, left, right,
        str(out_dtype).removeprefix("torch."))
    return (out, lse) if return_lse else out
