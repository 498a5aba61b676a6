"""Shared pieces of the varlen and KV-cache kernel tests: fresh seeds, the plain torch baseline in
the kernel's dtype (one sequence at a time), and the rule (``flashref.gate.judge``)."""

import math
import os
import secrets

import numpy as np
import torch

from flashref import gate
from flashref.gate import judge, max_abs_error

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


def rule(errors_kernel: dict, errors_base: dict, slacks: dict | None = None) -> dict:
    """The project's rule per tensor: ``{name: TensorError-like}``, passes iff all ``.passed``;
    ``slacks`` (``varlen_slack``): the derived slack per tensor (0 where not given)."""
    slacks = slacks or {}
    return {name: judge(errors_kernel[name], errors_base[name], FACTORS[name], slacks.get(name, 0.0))
            for name in errors_kernel}


def varlen_slack(dtype: str, q, k, v, dout, ref: dict, ref_lse, cu_q, cu_k, *, causal, causal_alignment,
                 window_size=(-1, -1), softcap=0.0, alibi=None, sinks=None, dropout_p=0.0) -> dict:
    """The dense gate's derived slack (``flashref.gate.magnitudes``/``slack``) of packed
    attention, sequence by sequence: q, dout (total_q, Hq, D), k, v (total_k, Hkv, D) in the
    dtype; ref: the oracle's tensors (packed; dsinks (Hq,)), ref_lse (Hq, total_q); alibi (B, Hq).
    A tensor's magnitude is the largest over the sequences (dsinks: their sum, as dsinks sums
    over them). With dropout the magnitudes are taken without it and divided by ``1 - p``: the
    kept P is ``keep / (1 - p) P <= P / (1 - p)``, an upper bound that needs no mask."""
    hq, hkv, d = q.shape[1], k.shape[1], q.shape[2]
    largest = {"out": 0.0, "dq": 0.0, "dk": 0.0, "dv": 0.0}
    dsinks = np.zeros(hq)
    for b in range(len(cu_q) - 1):
        qs, ks = slice(int(cu_q[b]), int(cu_q[b + 1])), slice(int(cu_k[b]), int(cu_k[b + 1]))
        lq, lk = qs.stop - qs.start, ks.stop - ks.start
        if lq == 0 or lk == 0:  # no term is summed (out = 0, delta = 0)
            continue
        case = gate.Case(batch=1, heads_q=hq, heads_kv=hkv, seqlen_q=lq, seqlen_k=lk, head_dim=d, dtype=dtype,
                       causal=causal, causal_alignment=causal_alignment, kv_lens=False, window=tuple(window_size),
                       softcap=softcap, alibi="h" if alibi is not None else "", sinks=sinks is not None)
        seq = lambda t, s: t[s].transpose(0, 1)[None]  # noqa: E731  (1, H, L, D)
        inputs = gate.CaseInputs(seq(q, qs), seq(k, ks), seq(v, ks), seq(dout, qs), None,
                               alibi_slopes=None if alibi is None else alibi[b].float(),
                               sinks=None if sinks is None else sinks.float())
        mags = gate.magnitudes(case, inputs, dict(out=np.asarray(ref["out"])[qs].transpose(1, 0, 2)[None],
                                                lse=np.asarray(ref_lse)[:, qs][None]))
        for key in largest:
            largest[key] = max(largest[key], float(np.max(mags[key])))
        if sinks is not None:
            dsinks += mags["dsinks"]
    if sinks is not None:
        largest["dsinks"] = float(np.max(dsinks))
    return {key: gate.U32 * m / (1.0 - dropout_p) + float(np.max(gate.half_ulp(np.asarray(ref[key]), dtype),
                                                                initial=0.0))
            for key, m in largest.items()}


def errors(values: dict, ref: dict) -> dict:
    return {name: max_abs_error(values[name], np.asarray(ref[name])) for name in values}


def describe(verdict: dict) -> str:
    return " ".join(f"{k}: {e.kernel:.2e} (bound {e.bound:.2e})" for k, e in verdict.items())
