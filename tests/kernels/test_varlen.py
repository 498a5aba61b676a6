"""flash_attention_varlen (packed sequences, forward and backward) judged by the project's rule
against the float64 oracle ``attention_varlen_forward/_backward``, with plain torch attention in
the kernel's dtype (one sequence at a time) as the baseline; bad cu_seqlens rejected before any
launch. Fresh lengths every run (empty, single-token and odd sequences always among them)."""

import numpy as np
import pytest
import torch

from flashref.kernels import INTERPRETED, flash_attention_varlen, poisoned_outputs
from flashref.reference import attention_varlen_backward, attention_varlen_forward
from flashref.reference.philox import dropout_keep
from varlen_cases import BASE_SEED, describe, errors, rule, torch_attention, varlen_slack

DEVICE = "cpu" if INTERPRETED else "cuda"
pytestmark = pytest.mark.skipif(not INTERPRETED and not torch.cuda.is_available(),
                                reason="needs a CUDA GPU or TRITON_INTERPRET=1")

# (name, dtype, heads_q, heads_kv, head_dim, keywords): a covering set over dtypes, alignments,
# GQA/MQA and the variants, not their product.
CASES = [
    ("f16-causal-bottom_right-gqa", "float16", 4, 2, 16, dict(causal=True, causal_alignment="bottom_right")),
    ("bf16-noncausal-mqa-softcap-alibi", "bfloat16", 2, 1, 32, dict(softcap=4.0, alibi=True)),
    ("f32-causal-window-sinks-dropout", "float32", 2, 2, 16,
     dict(causal=True, window_size=(4, 2), sinks=True, dropout_p=0.25)),
    ("f16-strided-top_left-causal", "float16", 2, 1, 24, dict(causal=True, strided=True)),
]


def _lengths(gen, batch, max_len):
    """Lengths with an empty, a single-token and an odd sequence among them."""
    lens = torch.randint(0, max_len + 1, (batch,), generator=gen).tolist()
    lens[:3] = [0, 1, 2 * int(torch.randint(1, max_len // 2, (1,), generator=gen)) + 1]
    return [lens[i] for i in torch.randperm(batch, generator=gen).tolist()]


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c[0] for c in CASES])
def test_varlen_by_the_rule(index):
    name, dtype_name, hq, hkv, d, kw = CASES[index]
    seed = BASE_SEED + index
    gen = torch.Generator().manual_seed(seed)
    dtype = getattr(torch, dtype_name)
    batch = 4
    lens_q, lens_k = _lengths(gen, batch, 11), _lengths(gen, batch, 13)
    tq, tk = sum(lens_q), sum(lens_k)
    cu_q = torch.tensor(np.r_[0, np.cumsum(lens_q)], dtype=torch.int32)
    cu_k = torch.tensor(np.r_[0, np.cumsum(lens_k)], dtype=torch.int32)
    draw = lambda *s: torch.randn(*s, generator=gen).to(dtype)  # noqa: E731
    if kw.get("strided"):  # heads-major storage: (total, H, D) views with non-unit row strides
        q, k, v = draw(hq, tq, d).transpose(0, 1), draw(hkv, tk, d).transpose(0, 1), draw(hkv, tk, d).transpose(0, 1)
    else:
        q, k, v = draw(tq, hq, d), draw(tk, hkv, d), draw(tk, hkv, d)
    dout = draw(tq, hq, d)
    causal, alignment = kw.get("causal", False), kw.get("causal_alignment", "top_left")
    window, softcap, p = kw.get("window_size", (-1, -1)), kw.get("softcap", 0.0), kw.get("dropout_p", 0.0)
    alibi = torch.rand(batch, hq, generator=gen) if kw.get("alibi") else None
    sinks = torch.randn(hq, generator=gen) if kw.get("sinks") else None
    dseed = int(torch.randint(0, 2**62, (1,), generator=gen)) if p else None
    common = dict(causal=causal, causal_alignment=alignment, window_size=window, softcap=softcap)

    # Kernel (outputs NaN-poisoned: an element it forgets to write fails).
    qk, kk, vk = (t.detach().clone().requires_grad_() for t in (q, k, v))
    sk = None if sinks is None else sinks.clone().requires_grad_()
    with poisoned_outputs():
        out, lse = flash_attention_varlen(qk, kk, vk, cu_q, cu_k, max(lens_q), max(lens_k), **common,
                                          alibi_slopes=alibi, sinks=sk, dropout_p=p, dropout_seed=dseed,
                                          return_lse=True)
        grads = torch.autograd.grad(out, (qk, kk, vk) + ((sk,) if sk is not None else ()), dout)
    kern = dict(out=out, dq=grads[0], dk=grads[1], dv=grads[2])
    if sinks is not None:
        kern["dsinks"] = grads[3]

    # Oracle, float64, on the same rounded inputs.
    f64 = lambda t: t.detach().double().numpy()  # noqa: E731
    okw = dict(common, alibi_slopes=None if alibi is None else alibi.numpy(),
               sinks=None if sinks is None else sinks.numpy(), dropout_p=p, dropout_seed=dseed)
    ref_out, ref_lse = attention_varlen_forward(f64(q), f64(k), f64(v), cu_q.numpy(), cu_k.numpy(),
                                                max(lens_q), max(lens_k), **okw)
    ref_grads = attention_varlen_backward(f64(q), f64(k), f64(v), ref_out, ref_lse, f64(dout), cu_q.numpy(),
                                          cu_k.numpy(), max(lens_q), max(lens_k), **okw)
    ref = dict(out=ref_out, dq=ref_grads[0], dk=ref_grads[1], dv=ref_grads[2])
    if sinks is not None:
        ref["dsinks"] = ref_grads[3]

    # Baseline: plain torch attention in the dtype, sequence by sequence.
    keep = dropout_keep(dseed, p, (batch, hq, max(lens_q), max(lens_k))) if p else None
    qb, kb, vb = (t.detach().clone().requires_grad_() for t in (q, k, v))
    sb = None if sinks is None else sinks.to(dtype).requires_grad_()
    outs = []
    for b in range(batch):
        qs, ks = slice(int(cu_q[b]), int(cu_q[b + 1])), slice(int(cu_k[b]), int(cu_k[b + 1]))
        shift = lens_k[b] - lens_q[b] if alignment == "bottom_right" else 0
        o, _ = torch_attention(qb[qs].transpose(0, 1), kb[ks].transpose(0, 1), vb[ks].transpose(0, 1),
                               shift=shift, causal=causal, window_size=window, softcap=softcap,
                               alibi=None if alibi is None else alibi[b], sinks=sb, dropout_p=p,
                               keep=None if keep is None else keep[b, :, :lens_q[b], :lens_k[b]])
        outs.append(o.transpose(0, 1))
    base_out = torch.cat(outs)
    bgrads = torch.autograd.grad(base_out, (qb, kb, vb) + ((sb,) if sb is not None else ()), dout,
                                 allow_unused=True)
    base = dict(out=base_out, dq=bgrads[0], dk=bgrads[1], dv=bgrads[2])
    if sinks is not None:
        base["dsinks"] = bgrads[3]

    slacks = varlen_slack(dtype_name, q, k, v, dout, ref, ref_lse, cu_q.tolist(), cu_k.tolist(), **common,
                          alibi=alibi, sinks=sinks, dropout_p=p)
    verdict = rule(errors(kern, ref), errors(base, ref), slacks)
    assert all(e.passed for e in verdict.values()), f"{name} seed {seed}: {describe(verdict)}"
    # lse: (Hq, total_q), -inf exactly where the oracle's is (rows with no key and no sink).
    ref_lse = np.asarray(ref_lse)
    assert lse.shape == (hq, tq) and lse.dtype == torch.float32
    assert np.array_equal(np.isneginf(lse.numpy()), np.isneginf(ref_lse)), f"seed {seed}"
    finite = np.isfinite(ref_lse)
    assert np.abs(lse.numpy()[finite] - ref_lse[finite]).max(initial=0.0) <= 1e-4, f"seed {seed}"


def _inputs(total_q=5, total_k=4):
    q = torch.zeros(total_q, 2, 16)
    k = torch.zeros(total_k, 2, 16)
    return q, k, k.clone()


@pytest.mark.parametrize("cu_q,max_q,error,message", [
    ([1, 3, 5], 4, ValueError, "must start at 0"),
    ([0, 4, 3, 5], 4, ValueError, "non-decreasing"),
    ([0, 2, 4], 4, ValueError, "last entry must be the packed length 5"),
    ([0, 5, 5], 4, ValueError, "exceeds max_seqlen=4"),
    ([0, 2, 5], -1, TypeError, "max_seqlen"),
])
def test_varlen_rejects_bad_cu_seqlens_q(cu_q, max_q, error, message):
    q, k, v = _inputs()
    cu_k = torch.tensor([0, 2, 4] if len(cu_q) == 3 else [0, 1, 2, 4], dtype=torch.int32)
    with pytest.raises(error, match=message):
        flash_attention_varlen(q, k, v, torch.tensor(cu_q, dtype=torch.int32), cu_k, max_q, 4)


def test_varlen_rejects_bad_cu_seqlens_k_and_layouts():
    q, k, v = _inputs()
    cu_q = torch.tensor([0, 2, 5], dtype=torch.int32)
    with pytest.raises(TypeError, match="cu_seqlens_k must be int32"):
        flash_attention_varlen(q, k, v, cu_q, torch.tensor([0.0, 2.0, 4.0]), 3, 4)
    with pytest.raises(ValueError, match="cu_seqlens_k must have 3 entries"):
        flash_attention_varlen(q, k, v, cu_q, torch.tensor([0, 4], dtype=torch.int32), 3, 4)
    with pytest.raises(ValueError, match="packed"):
        flash_attention_varlen(q[None], k, v, cu_q, torch.tensor([0, 2, 4], dtype=torch.int32), 3, 4)
    with pytest.raises(ValueError, match="alibi_slopes"):
        flash_attention_varlen(q, k, v, cu_q, torch.tensor([0, 2, 4], dtype=torch.int32), 3, 4,
                               alibi_slopes=torch.ones(3, 2))
