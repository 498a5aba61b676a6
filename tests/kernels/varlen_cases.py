"""Shared pieces of the varlen and KV-cache kernel tests: fresh seeds, the plain torch baseline in
the kernel's dtype (one sequence at a time), and the rule (``flashref.equivalence.judge``)."""

import math
import os
import secrets

import numpy as np
import torch

from flashref.equivalence import judge, max_abs_error

BASE_SEED = int(os.environ.get("FLASHREF_SEED", secrets.randbits(31)))
print(f"tests/kernels varlen/kvcache: base seed {BASE_SEED} (replay: FLASHREF_SEED={BASE_SEED})")

FACTORS = {"out": 2.0, "lse": 2.0, "dq": 3.0, "dk": 3.0, "dv": 3.0, "dsinks": 3.0}


def torch_attention(q, k, v, *, shift, causal=False, window_size=(-1, -1), softcap=0.0, alibi=None, sinks=None,
                    kv_len=None, keep=None, dropout_p=0.0, scale=None):
    """Plain unfused attention of one sequence in q's dtype (differentiable): q (Hq, Lq, D),
    k, v (Hkv, Lk, D); query i sits at ``i + shift``. alibi: (Hq,) slopes; sinks: (Hq,);
    keep: bool (Hq, Lq, Lk) dropout mask. Returns (out, lse) with out (Hq, Lq, D)."""
    hq, lq, d = q.shape
    group = hq // k.shape[0]
    k, v = k.repeat_interleave(group, 0), v.repeat_interleave(group, 0)
    scale = scale if scale is not None else 1.0 / math.sqrt(d)
    s = (q @ k.transpose(-1, -2)) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    i = torch.arange(lq)[:, None] + shift
    j = torch.arange(k.shape[1])[None, :]
    if alibi is not None:
        s = s - alibi.to(s.dtype)[:, None, None] * (i - j).abs().to(s.dtype)
    vis = torch.ones(lq, k.shape[1], dtype=torch.bool)
    if kv_len is not None:
        vis &= j < kv_len
    if causal:
        vis &= j <= i
    if window_size[0] >= 0:
        vis &= j >= i - window_size[0]
    if window_size[1] >= 0:
        vis &= j <= i + window_size[1]
    s = s.masked_fill(~vis, float("-inf"))
    if sinks is not None:
        s = torch.cat([sinks.to(s.dtype)[:, None, None].expand(hq, lq, 1), s], dim=-1)
    empty = torch.isinf(s).all(-1, keepdim=True)
    s = s.masked_fill(empty, 0.0)
    lse = torch.logsumexp(s.float(), -1).masked_fill(empty[..., 0], float("-inf"))
    p = torch.softmax(s, -1).masked_fill(empty, 0.0)
    if sinks is not None:
        p = p[..., 1:]
    if keep is not None:
        p = p * torch.as_tensor(keep) / (1 - dropout_p)
    return p @ v, lse


def rule(errors_kernel: dict, errors_base: dict) -> dict:
    """The project's rule per tensor: ``{name: TensorError-like}``, passes iff all ``.passed``."""
    return {name: judge(errors_kernel[name], errors_base[name], FACTORS[name]) for name in errors_kernel}


def errors(values: dict, ref: dict) -> dict:
    return {name: max_abs_error(values[name], np.asarray(ref[name])) for name in values}


def describe(verdict: dict) -> str:
    return " ".join(f"{k}: {e.kernel:.2e} (bound {e.bound:.2e})" for k, e in verdict.items())
