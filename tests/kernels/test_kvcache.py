"""flash_attention_with_kvcache (decoding, forward only) judged by the project's rule against the
float64 oracle ``attention_with_kvcache``, with plain torch attention in the kernel's dtype over
the gathered cache (one sequence at a time) as the baseline. The in-place append is checked
element by element, and every cache element outside the appended rows is poisoned (NaN) and
must come back unchanged (and must not leak into the output).

A covering set, not a product: page sizes 16 / 64 / 256 and contiguous caches, shuffled page
tables, cache_seqlens 0 / 1 / odd / full, MHA / GQA / MQA, num_splits 1 / 3 / auto, every dtype.
The larger sweep is ``-m slow``."""

import math

import numpy as np
import pytest
import torch

from flashref import gate
from flashref.kernels import INTERPRETED, flash_attention_with_kvcache
from flashref.kernels.flash_attention_kvcache import num_splits_heuristic
from flashref.reference import append_to_kvcache, attention_with_kvcache
from varlen_cases import BASE_SEED, describe, errors, rule, torch_attention

pytestmark = pytest.mark.skipif(not INTERPRETED and not torch.cuda.is_available(),
                                reason="needs a CUDA GPU or TRITON_INTERPRET=1")
DEVICE = "cpu" if INTERPRETED else "cuda"

# (name, dtype, page_size (0 = contiguous), heads_q, heads_kv, head_dim, seqlen_q, new_len,
#  num_splits, keywords)
CASES = [
    ("f16-page16-gqa-split3", "float16", 16, 4, 2, 16, 1, 1, 3, dict()),
    ("bf16-contiguous-mqa-auto-alibi-softcap", "bfloat16", 0, 4, 1, 32, 2, 2, 0, dict(alibi=True, softcap=6.0)),
    ("f32-page64-mha-split1-window-sinks", "float32", 64, 2, 2, 16, 3, 3, 1, dict(window_size=(9, -1), sinks=True)),
    ("f16-page256-gqa-split3-noappend-noncausal", "float16", 256, 2, 1, 16, 1, 0, 3, dict(causal=False)),
]


def _seqlens(gen, batch, capacity, new_len):
    """0, 1, an odd length and a full cache (capacity - new_len), shuffled."""
    full = capacity - new_len
    odd = min(full, 2 * int(torch.randint(1, max(2, full // 2), (1,), generator=gen)) + 1)
    lens = [0, min(1, full), odd, full][:batch]
    return torch.tensor([lens[i] for i in torch.randperm(batch, generator=gen).tolist()], dtype=torch.int32)


def run_case(case, seed):
    name, dtype_name, page, hq, hkv, d, lq, lnew, splits, kw = case
    gen = torch.Generator().manual_seed(seed)
    dtype = getattr(torch, dtype_name)
    batch = 4
    draw = lambda *s: torch.randn(*s, generator=gen).to(dtype)  # noqa: E731
    if page:
        pages_per_seq = max(1, math.ceil(40 / page))
        capacity = pages_per_seq * page
        num_pages = batch * pages_per_seq + 3  # spare pages that no sequence owns
        table = torch.randperm(num_pages, generator=gen)[:batch * pages_per_seq].view(batch, pages_per_seq)
        table = table.to(torch.int32).contiguous()
        shape = (num_pages, page, hkv, d)
    else:
        capacity, table, shape = 37, None, (batch, 37, hkv, d)
    seqlens = _seqlens(gen, batch, capacity, lnew)
    k_cache, v_cache = draw(*shape), draw(*shape)
    # Poison every row that is neither cached nor about to be appended.
    pos = torch.arange(capacity)
    live = pos[None, :] < (seqlens[:, None] + lnew)  # (B, capacity)
    owned = torch.zeros(shape[:2], dtype=torch.bool)
    for b in range(batch):
        for t in range(capacity):
            if live[b, t]:
                owned[(int(table[b, t // page]), t % page) if page else (b, t)] = True
    k_cache[~owned] = float("nan")
    v_cache[~owned] = float("nan")
    q = draw(batch, hq, lq, d)
    knew, vnew = (draw(batch, hkv, lnew, d), draw(batch, hkv, lnew, d)) if lnew else (None, None)
    alibi = torch.rand(hq, generator=gen) if kw.get("alibi") else None
    sinks = torch.randn(hq, generator=gen) if kw.get("sinks") else None
    causal, window, softcap = kw.get("causal", True), kw.get("window_size", (-1, -1)), kw.get("softcap", 0.0)
    common = dict(causal=causal, window_size=window, softcap=softcap)
    k0, v0 = k_cache.clone(), v_cache.clone()

    out, lse = flash_attention_with_kvcache(q, k_cache, v_cache, k=knew, v=vnew, cache_seqlens=seqlens,
                                            block_table=table, alibi_slopes=alibi, sinks=sinks,
                                            num_splits=splits, return_lse=True, **common)

    # The append, element by element; nothing else changed (NaN poison compares equal with equal_nan).
    f = lambda t: None if t is None else t.double().numpy()  # noqa: E731
    tab = None if table is None else table.numpy()
    if lnew:
        want_k, want_v = append_to_kvcache(f(k0), f(v0), f(knew), f(vnew), seqlens.numpy(), tab)
    else:
        want_k, want_v = f(k0), f(v0)
    assert np.array_equal(f(k_cache), want_k, equal_nan=True), f"{name} seed {seed}: k_cache"
    assert np.array_equal(f(v_cache), want_v, equal_nan=True), f"{name} seed {seed}: v_cache"

    okw = dict(common, alibi_slopes=f(alibi), sinks=f(sinks))
    live_k = np.nan_to_num(f(k0))  # the oracle gathers only live rows; NaNs are never read
    live_v = np.nan_to_num(f(v0))
    ref_out, ref_lse = attention_with_kvcache(f(q), live_k, live_v, k=f(knew), v=f(vnew), cache_seqlens=seqlens.numpy(),
                                              block_table=tab, return_lse=True, **okw)

    # Baseline: torch attention in the dtype over each sequence's gathered keys.
    base = torch.empty_like(q)
    slack = 0.0
    for b in range(batch):
        n = int(seqlens[b]) + lnew
        rows = [(int(table[b, t // page]), t % page) if page else (b, t) for t in range(n)]
        kb = torch.stack([k_cache[r] for r in rows]) if rows else k_cache.new_zeros(0, hkv, d)
        vb = torch.stack([v_cache[r] for r in rows]) if rows else v_cache.new_zeros(0, hkv, d)
        o, _ = torch_attention(q[b], kb.transpose(0, 1), vb.transpose(0, 1), shift=n - lq, causal=causal,
                               window_size=window, softcap=softcap, alibi=alibi,
                               sinks=None if sinks is None else sinks.to(dtype))
        base[b] = o
        if n:  # the gate's derived float32 slack for this sequence (the dense gate's magnitudes)
            seq_case = gate.Case(1, hq, hkv, lq, n, d, dtype_name, causal, "bottom_right", False, window=tuple(window),
                               softcap=softcap, alibi="h" if alibi is not None else "", sinks=sinks is not None)
            inputs = gate.CaseInputs(q[b][None], kb.transpose(0, 1)[None], vb.transpose(0, 1)[None],
                                   torch.zeros_like(q[b][None]), None,
                                   alibi_slopes=None if alibi is None else alibi.float(),
                                   sinks=None if sinks is None else sinks.float())
            ref_b = dict(out=ref_out[b:b + 1], lse=ref_lse[b:b + 1])
            mags = gate.magnitudes(seq_case, inputs, ref_b)
            slack = max(slack, gate.slack(seq_case.dtype, mags["out"], ref_b["out"]))
    verdict = rule(errors(dict(out=out), dict(out=ref_out)), errors(dict(out=base), dict(out=ref_out)),
                   dict(out=slack))
    assert all(e.passed for e in verdict.values()), f"{name} seed {seed}: {describe(verdict)}"
    assert np.array_equal(np.isneginf(lse.numpy()), np.isneginf(ref_lse)), f"{name} seed {seed}: lse -inf rows"
    finite = np.isfinite(ref_lse)
    assert np.abs(lse.numpy()[finite] - ref_lse[finite]).max(initial=0.0) <= 1e-4, f"{name} seed {seed}: lse"


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c[0] for c in CASES])
def test_kvcache_by_the_rule(index):
    run_case(CASES[index], BASE_SEED + 100 + index)


SLOW_CASES = [
    (f"{dt}-page{page}-{hq}x{hkv}-lq{lq}-new{lnew}-split{s}", dt, page, hq, hkv, d, lq, lnew, s, kw)
    for i, (dt, page, (hq, hkv), d, lq, lnew, s, kw) in enumerate([
        ("bfloat16", 16, (8, 2), 64, 1, 1, 3, dict()),
        ("float16", 64, (4, 1), 128, 4, 4, 0, dict(window_size=(17, -1))),
        ("float32", 256, (4, 4), 32, 1, 1, 3, dict(sinks=True, alibi=True)),
        ("bfloat16", 0, (6, 3), 96, 2, 0, 1, dict(softcap=10.0)),
        ("float16", 16, (3, 1), 40, 1, 1, 0, dict(causal=False)),
        ("float32", 64, (2, 1), 64, 2, 2, 1, dict()),
    ])]


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(SLOW_CASES)), ids=[c[0] for c in SLOW_CASES])
def test_kvcache_sweep_by_the_rule(index):
    run_case(SLOW_CASES[index], BASE_SEED + 200 + index)


def test_num_splits_heuristic():
    assert num_splits_heuristic(64, 8, 1, 4096, 64, 132) == 1  # 512 programs fill 132 SMs
    assert num_splits_heuristic(1, 8, 1, 131072, 64, 132) == 17  # 8 programs: split to fill the SMs
    assert num_splits_heuristic(1, 1, 1, 100, 64, 132) == 2  # never more splits than key blocks
    assert num_splits_heuristic(1, 1, 1, 10**6, 64, 132) == 64  # capped


def test_kvcache_bad_inputs():
    q = torch.zeros(2, 2, 1, 16)
    cache = torch.zeros(2, 8, 2, 16)
    lens = torch.tensor([3, 4], dtype=torch.int32)
    with pytest.raises(ValueError, match="capacity"):
        flash_attention_with_kvcache(q, cache, cache, k=torch.zeros(2, 2, 5, 16), v=torch.zeros(2, 2, 5, 16),
                                     cache_seqlens=lens)
    with pytest.raises(TypeError, match="cache_seqlens"):
        flash_attention_with_kvcache(q, cache, cache, cache_seqlens=lens.float())
    with pytest.raises(ValueError, match="multiple of 16"):
        paged = torch.zeros(4, 8, 2, 16)
        flash_attention_with_kvcache(q, paged, paged, cache_seqlens=lens, block_table=torch.zeros(2, 1, dtype=torch.int32))
    with pytest.raises(ValueError, match="page indices"):
        paged = torch.zeros(4, 16, 2, 16)
        flash_attention_with_kvcache(q, paged, paged, cache_seqlens=lens,
                                     block_table=torch.tensor([[0], [9]], dtype=torch.int32))
    with pytest.raises(TypeError, match="block_table"):
        flash_attention_with_kvcache(q, cache, cache, cache_seqlens=lens, block_table=torch.zeros(2, 1))
    with pytest.raises(ValueError, match="num_splits"):
        flash_attention_with_kvcache(q, cache, cache, cache_seqlens=lens, num_splits=-1)
    with pytest.raises(ValueError, match="both k and v"):
        flash_attention_with_kvcache(q, cache, cache, cache_seqlens=lens, k=torch.zeros(2, 2, 1, 16))
