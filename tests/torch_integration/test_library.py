"""torch.ops.flashref.*: opcheck, torch.compile(fullgraph=True) without graph breaks, dynamic shapes.

On a CPU the op runs the kernels under Triton's interpreter; ``torch.compile`` uses the
``aot_eager`` backend there: it runs Dynamo and AOTAutograd (fake tensors, functionalization,
the joint forward/backward graph and its partition), which is everything that depends on the
op's registration. Inductor only changes how the surrounding torch ops are generated, and
compiling them with gcc took ~100 s on the 2-core CI machine, so the Inductor run is marked
slow (and runs on a GPU, where it is the real target).
"""

import pytest
import torch

import flashref.kernels.library  # noqa: F401 -- registers the ops
from flashref.kernels import INTERPRETED, flash_attention

DEVICE = "cpu" if INTERPRETED else "cuda"


def draw(seed, *shape, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(dtype=dtype, device=DEVICE)


def test_opcheck_forward_and_backward(seed):
    """GQA (2 query heads per kv head), q a transposed view, kv_lens with the per-sequence
    bottom-right shift, a left window, softcap, ALiBi, sinks (differentiable) and dropout."""
    q = draw(seed, 2, 5, 2, 16).transpose(1, 2).requires_grad_()  # (B, Hq, Lq, D) with BLHD strides
    k, v = (draw(seed + i, 2, 1, 7, 16).requires_grad_() for i in (1, 2))
    kv_lens = torch.tensor([7, 1 + seed % 6], dtype=torch.int32, device=DEVICE)
    alibi, sinks = draw(seed + 3, 2).abs(), draw(seed + 4, 2).requires_grad_()
    scalars = (True, "bottom_right", 0.3, 4, -1, 2.0, 0.25, seed)  # causal, alignment, scale, window, softcap, dropout
    args = (q, k, v, kv_lens, alibi, sinks, *scalars)
    results = torch.library.opcheck(torch.ops.flashref.attention_forward.default, args)
    assert set(results.values()) == {"SUCCESS"}, results

    detached = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    out, lse = torch.ops.flashref.attention_forward(*detached)
    dout = draw(seed + 5, 2, 2, 5, 16)
    bargs = (*detached[:3], out, lse, dout, *detached[3:])
    results = torch.library.opcheck(torch.ops.flashref.attention_backward.default, bargs)
    assert set(results.values()) == {"SUCCESS"}, results


def test_op_checks_kv_lens_values_itself():
    """Under torch.compile flash_attention cannot read kv_lens; the op checks before launching."""
    q = torch.zeros(1, 1, 3, 16, device=DEVICE)
    scalars = (False, "top_left", 0.25, -1, -1, 0.0, 0.0, 0)
    with pytest.raises(ValueError, match=r"kv_lens must lie in \[0, 3\]"):
        torch.ops.flashref.attention_forward(q, q, q, torch.tensor([4], dtype=torch.int32), None, None, *scalars)
    with pytest.raises(ValueError, match="sinks must be finite"):
        torch.ops.flashref.attention_forward(q, q, q, None, None, torch.tensor([float("nan")]), *scalars)


class TinyAttention(torch.nn.Module):
    """x (B, L, 16) -> causal self-attention on the kernels with 2 query heads and 1 kv head."""

    def __init__(self):
        super().__init__()
        self.qkv = torch.nn.Linear(16, 32)  # q: 2 heads x 8, k and v: 1 head x 8 each
        self.proj = torch.nn.Linear(16, 16)

    def forward(self, x, kv_lens):
        b, length, _ = x.shape
        q, k, v = self.qkv(x).split((16, 8, 8), dim=-1)
        q = q.view(b, length, 2, 8).transpose(1, 2)  # (B, 2, L, 8)
        k, v = (t.view(b, length, 1, 8).transpose(1, 2) for t in (k, v))  # (B, 1, L, 8)
        out = flash_attention(q, k, v, causal=True, kv_lens=kv_lens)
        return self.proj(out.transpose(1, 2).reshape(b, length, 16))


def _grads(model):
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return grads


def test_compile_fullgraph_matches_eager_and_does_not_recompile_per_length(seed):
    torch.manual_seed(seed)
    model = TinyAttention().to(DEVICE)
    x, kv_lens = draw(seed, 2, 9, 16), torch.tensor([9, 1 + seed % 9], device=DEVICE)

    explanation = torch._dynamo.explain(model)(x, kv_lens)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1

    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    for length in (9, 5, 13):  # one compile for every length: the sequence axis is dynamic
        x = draw(seed + length, 2, length, 16)
        torch._dynamo.mark_dynamic(x, 1)
        kv_lens = torch.tensor([length, 1 + seed % length], device=DEVICE)
        out = compiled(x, kv_lens)
        out.square().sum().backward()
        got = _grads(model)
        want_out = model(x, kv_lens)
        want_out.square().sum().backward()
        want = _grads(model)
        # The same ops on the same inputs: compiled and eager agree to float32 rounding.
        torch.testing.assert_close(out, want_out, rtol=1e-5, atol=1e-6)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    assert counter.frame_count == 1, f"recompiled: {counter.frame_count} compiles for 3 lengths"


@pytest.mark.slow
def test_compile_inductor(seed):
    """The default backend (Inductor): ~100 s of gcc on a 2-core CPU, seconds on a GPU machine."""
    torch.manual_seed(seed)
    model = TinyAttention().to(DEVICE)
    x, kv_lens = draw(seed, 2, 11, 16), torch.tensor([11, 1 + seed % 11], device=DEVICE)
    out = torch.compile(model, fullgraph=True)(x, kv_lens)
    out.square().sum().backward()
    got = _grads(model)
    want_out = model(x, kv_lens)
    want_out.square().sum().backward()
    torch.testing.assert_close(out, want_out, rtol=1e-4, atol=1e-5)
    for g, w in zip(got, _grads(model)):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------- packed sequences, KV cache

def packed(seed):
    """Three sequences (one empty) of q lengths 3, 0, 5 and k lengths 4, 2, 6, GQA 2:1, D 16."""
    cu_q = torch.tensor([0, 3, 3, 8], dtype=torch.int32, device=DEVICE)
    cu_k = torch.tensor([0, 4, 6, 12], dtype=torch.int32, device=DEVICE)
    q = draw(seed, 2, 8, 16).transpose(0, 1).requires_grad_()  # (total_q, Hq, D), head-major strides
    k, v = (draw(seed + i, 12, 1, 16).requires_grad_() for i in (1, 2))
    return q, k, v, cu_q, cu_k


def test_opcheck_varlen_forward_and_backward(seed):
    """The packed ops: GQA, q a transposed view, bottom-right causal, a left window, softcap,
    per-sequence ALiBi, sinks (differentiable) and dropout, the value checks on."""
    q, k, v, cu_q, cu_k = packed(seed)
    alibi, sinks = draw(seed + 3, 3, 2).abs(), draw(seed + 4, 2).requires_grad_()
    scalars = (True, "bottom_right", 0.3, 3, -1, 2.0, 0.25, seed, True)
    args = (q, k, v, cu_q, cu_k, 5, 6, alibi, sinks, *scalars)
    results = torch.library.opcheck(torch.ops.flashref.attention_varlen_forward.default, args)
    assert set(results.values()) == {"SUCCESS"}, results

    detached = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    out, lse = torch.ops.flashref.attention_varlen_forward(*detached)
    assert out.shape == q.shape and out.dtype == q.dtype and lse.shape == (2, 8) and lse.dtype == torch.float32
    bargs = (*detached[:3], out, lse, draw(seed + 5, 8, 2, 16), *detached[3:])
    results = torch.library.opcheck(torch.ops.flashref.attention_varlen_backward.default, bargs)
    assert set(results.values()) == {"SUCCESS"}, results


@pytest.mark.parametrize("layout", ["plain", "value_head_dim", "absorbed"])
def test_opcheck_kvcache(layout):
    """The decode op on a paged cache (pages 16 rows, shuffled block table), GQA, two splits,
    a left window, softcap, ALiBi and sinks; float16 (the op is forward only). value_head_dim:
    v_cache 32 wide against D 16; absorbed (MLA): no v_cache, the values are the first 32 of
    k_cache's 48 columns; the fake's out is Dv wide in both."""
    gen = torch.Generator().manual_seed(0)
    head_dim, head_dim_v = dict(plain=(16, 16), value_head_dim=(16, 32), absorbed=(48, 32))[layout]
    cache = lambda d: torch.randn(5, 16, 1, d, generator=gen).to(device=DEVICE, dtype=torch.float16)  # noqa: E731
    k_cache = cache(head_dim)
    v_cache = None if layout == "absorbed" else cache(head_dim_v)
    block_table = torch.tensor([[3, 0], [1, 4]], dtype=torch.int32, device=DEVICE)
    cache_seqlens = torch.tensor([17, 5], dtype=torch.int32, device=DEVICE)
    q = torch.randn(2, 2, 2, head_dim, generator=gen).to(device=DEVICE, dtype=torch.float16)
    alibi = torch.rand(2, generator=gen).to(DEVICE)
    sinks = torch.randn(2, generator=gen).to(DEVICE)
    args = (q, k_cache, v_cache, cache_seqlens, 2, block_table, alibi, sinks, True, 0.25, 7, -1, 5.0, 2, True,
            head_dim_v)
    results = torch.library.opcheck(torch.ops.flashref.attention_with_kvcache.default, args)
    assert set(results.values()) == {"SUCCESS"}, results
    out, lse = torch.ops.flashref.attention_with_kvcache(*args)
    assert out.shape == (2, 2, 2, head_dim_v) and out.dtype == q.dtype
    assert lse.shape == (2, 2, 2) and lse.dtype == torch.float32


def test_compile_fullgraph_varlen_matches_eager(seed):
    """flash_attention_varlen under torch.compile(fullgraph=True): one graph, no break (the
    cu_seqlens value checks move into the op), the same out, lse and gradients as eager."""
    from flashref.kernels import flash_attention_varlen

    def attend(q, k, v, cu_q, cu_k, sinks):
        return flash_attention_varlen(q, k, v, cu_q, cu_k, 5, 6, causal=True, causal_alignment="bottom_right",
                                      softcap=3.0, sinks=sinks, return_lse=True)

    q, k, v, cu_q, cu_k = packed(seed)
    sinks = draw(seed + 4, 2).requires_grad_()
    explanation = torch._dynamo.explain(attend)(q, k, v, cu_q, cu_k, sinks)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    results = []
    for fn in (torch.compile(attend, backend="aot_eager", fullgraph=True), attend):
        out, lse = fn(q, k, v, cu_q, cu_k, sinks)
        out.square().sum().backward()
        results.append([out, lse] + [t.grad.clone() for t in (q, k, v, sinks)])
        for t in (q, k, v, sinks):
            t.grad = None
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="must be non-decreasing"):  # checked by the op when compiled
        bad = torch.tensor([0, 4, 3, 8], dtype=torch.int32, device=DEVICE)
        torch.compile(attend, backend="aot_eager", fullgraph=True)(q, k, v, bad, cu_k, sinks)


def test_compile_fullgraph_kvcache_matches_eager(seed):
    """flash_attention_with_kvcache under torch.compile(fullgraph=True): the in-place append and
    the op in one graph; the caches and the output as eager's."""
    from flashref.kernels import flash_attention_with_kvcache

    def decode(q, k_cache, v_cache, k, v, cache_seqlens):
        return flash_attention_with_kvcache(q, k_cache, v_cache, k=k, v=v, cache_seqlens=cache_seqlens,
                                            window_size=(6, -1), return_lse=True)

    caches = (draw(seed, 2, 20, 1, 16), draw(seed + 1, 2, 20, 1, 16))  # contiguous (B, Lmax, Hkv, D)
    q, k, v = draw(seed + 2, 2, 2, 1, 16), draw(seed + 3, 2, 1, 1, 16), draw(seed + 4, 2, 1, 1, 16)
    cache_seqlens = torch.tensor([0, 11], dtype=torch.int32, device=DEVICE)
    explanation = torch._dynamo.explain(decode)(q, *(c.clone() for c in caches), k, v, cache_seqlens)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    results = []
    for fn in (torch.compile(decode, backend="aot_eager", fullgraph=True), decode):
        k_cache, v_cache = (c.clone() for c in caches)
        results.append([*fn(q, k_cache, v_cache, k, v, cache_seqlens), k_cache, v_cache])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
