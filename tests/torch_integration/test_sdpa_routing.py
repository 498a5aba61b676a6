"""sdpa_routing: F.scaled_dot_product_attention on the kernels, mask recognition, fallbacks,
nn.Transformer / nn.MultiheadAttention routed in training and eval mode."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.attention import SDPBackend, sdpa_kernel

from flashref.kernels import INTERPRETED, SDPARoutingError, flash_attention, last_dropout_seed, sdpa_routing
from flashref.kernels.sdpa_routing import Unsupported, recognise_mask

DEVICE = "cpu" if INTERPRETED else "cuda"


def visible_mask(batch, seqlen_q, seqlen_k, causal, alignment, lengths):
    """bool (B, 1, Lq, Lk), True = may attend (SDPA's convention)."""
    i = torch.arange(seqlen_q)[:, None]
    j = torch.arange(seqlen_k)[None, :]
    lengths = torch.tensor(lengths)[:, None, None]
    mask = (j[None] < lengths).expand(batch, seqlen_q, seqlen_k)
    if causal:  # bottom-right: the queries are the last Lq tokens of each sequence
        mask = mask & (j <= i + (lengths - seqlen_q if alignment == "bottom_right" else 0))
    return mask[:, None]


@settings(max_examples=60, deadline=None)
@given(data=st.data(), batch=st.integers(1, 3), heads=st.integers(1, 3), seqlen_q=st.integers(1, 9),
       seqlen_k=st.integers(1, 9), mode=st.sampled_from(["none", "top_left", "bottom_right"]),
       padded=st.booleans(), form=st.sampled_from(["bool", "float", "float_per_head"]))
def test_masks_that_are_causal_and_or_padding_are_recognised(data, batch, heads, seqlen_q, seqlen_k, mode,
                                                             padded, form):
    lengths = [data.draw(st.integers(0, seqlen_k)) if padded else seqlen_k for _ in range(batch)]
    alignment = "bottom_right" if mode == "bottom_right" else "top_left"
    visible = visible_mask(batch, seqlen_q, seqlen_k, mode != "none", alignment, lengths)
    mask = visible
    if form.startswith("float"):
        mask = torch.zeros(visible.shape).masked_fill(~visible, float("-inf"))
    if form == "float_per_head":
        mask = mask.expand(batch, heads, seqlen_q, seqlen_k)
    plan = recognise_mask(mask, batch, heads, seqlen_q, seqlen_k)
    # The plan must rebuild exactly the mask it was given (causal / alignment may differ
    # where they mean the same mask, e.g. Lq = Lk, or causal with every row seeing all keys).
    lens = [seqlen_k] * batch if plan.kv_lens is None else plan.kv_lens.tolist()
    rebuilt = visible_mask(batch, seqlen_q, seqlen_k, plan.causal, plan.causal_alignment, lens)
    assert torch.equal(rebuilt, visible)


@pytest.mark.parametrize("what, mask, reason", [
    ("a bias", torch.randn(1, 1, 4, 5), "values other than 0 and -inf"),
    ("left padding", torch.tensor([[False, True, True, True, True]]).expand(4, 5), "not a causal mask"),
    ("per-head masks", torch.stack([torch.ones(4, 5, dtype=torch.bool),
                                    torch.ones(4, 5, dtype=torch.bool).tril()])[None], "differs between heads"),
    ("a band", torch.ones(4, 5, dtype=torch.bool).tril().triu(-1), "not a causal mask"),
    ("an int mask", torch.ones(4, 5, dtype=torch.int64), "dtype"),
])
def test_other_masks_are_not_expressible(what, mask, reason):
    with pytest.raises(Unsupported, match=reason):
        recognise_mask(mask, 1, 2, 4, 5)


def test_routed_sdpa_matches_torch_with_gqa_scale_and_padding_mask(seed):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 4, 7, 16, generator=gen).to(DEVICE).requires_grad_()
    k, v = (torch.randn(2, 2, 9, 16, generator=gen).to(DEVICE).requires_grad_() for _ in range(2))
    lengths = [9, 1 + seed % 9]
    mask = visible_mask(2, 7, 9, True, "top_left", lengths).to(DEVICE)
    dout = torch.randn(2, 4, 7, 16, generator=gen).to(DEVICE)
    kw = dict(attn_mask=mask, scale=0.2, enable_gqa=True)
    with sdpa_routing(fallback="error") as routing:
        out = F.scaled_dot_product_attention(q, k, v, **kw)
        grads = torch.autograd.grad(out, (q, k, v), dout)
    assert routing.routed == 1 and not routing.fallbacks
    with sdpa_kernel(SDPBackend.MATH):
        want = F.scaled_dot_product_attention(q, k, v, **kw)
        want_grads = torch.autograd.grad(want, (q, k, v), dout)
    torch.testing.assert_close(out, want, atol=2e-5, rtol=1e-4)
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w, atol=2e-5, rtol=1e-4)


def test_unexpressible_calls_fall_back_once_warned_or_raise():
    q = torch.randn(1, 2, 4, 8, device=DEVICE)
    bias = torch.randn(4, 4, device=DEVICE)
    with sdpa_routing() as routing, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            out = F.scaled_dot_product_attention(q, q, q, attn_mask=bias)
        F.scaled_dot_product_attention(q[None], q[None], q[None])  # rank 5
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, q, q, attn_mask=bias))
    assert routing.routed == 0 and sum(routing.fallbacks.values()) == 4
    assert len([w for w in caught if "sdpa_routing" in str(w.message)]) == 2  # once per reason
    assert "3 x additive attn_mask" in routing.summary()
    with pytest.raises(SDPARoutingError, match="attn_mask together with is_causal"):
        with sdpa_routing(fallback="error"):
            F.scaled_dot_product_attention(q, q, q, attn_mask=bias, is_causal=True)
    with pytest.raises(ValueError, match="fallback"):
        sdpa_routing(fallback="silently")


def test_dropout_routes_to_the_kernels_philox_mask(seed):
    torch.manual_seed(seed)  # the kernels' dropout seed comes from torch's default generator
    q, k, v = (torch.randn(1, 2, 5, 8, device=DEVICE) for _ in range(3))
    with sdpa_routing(fallback="error") as routing:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.3, is_causal=True)
    assert routing.routed == 1
    want = flash_attention(q, k, v, causal=True, dropout_p=0.3, dropout_seed=last_dropout_seed())
    assert torch.equal(out, want)


def tiny_transformer(seed):
    torch.manual_seed(seed)
    return torch.nn.Transformer(d_model=16, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                                dim_feedforward=32, dropout=0.0, batch_first=True).to(DEVICE)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")  # the unrouted eval reference
def test_nn_transformer_in_training_and_eval_mode_runs_on_the_kernels(seed):
    model = tiny_transformer(seed)
    gen = torch.Generator().manual_seed(seed)
    src, tgt = torch.randn(2, 6, 16, generator=gen).to(DEVICE), torch.randn(2, 5, 16, generator=gen).to(DEVICE)
    src_pad = torch.tensor([[False] * 6, [False] * (1 + seed % 5) + [True] * (5 - seed % 5)], device=DEVICE)
    kw = dict(tgt_mask=torch.nn.Transformer.generate_square_subsequent_mask(5, device=DEVICE), tgt_is_causal=True,
              src_key_padding_mask=src_pad, memory_key_padding_mask=src_pad)

    routing = sdpa_routing(fallback="error")

    @routing
    def step():
        out = model(src, tgt, **kw)
        out.square().sum().backward()
        return out

    out = step()
    assert routing.routed == 3  # encoder self-attention, decoder self- and cross-attention
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with sdpa_kernel(SDPBackend.MATH):
        want = model(src, tgt, **kw)
        want.square().sum().backward()
    torch.testing.assert_close(out, want, atol=1e-4, rtol=1e-4)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad, atol=1e-4, rtol=1e-4)

    # Eval mode under no_grad: the encoder's fused fast path would skip SDPA; routing turns it off.
    model.eval()
    with torch.no_grad(), sdpa_routing(fallback="error") as routing:
        got = model(src, tgt, **kw)
    assert routing.routed == 3  # encoder self-attention, decoder self- and cross-attention
    assert torch.backends.mha.get_fastpath_enabled()  # restored
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        torch.testing.assert_close(got, model(src, tgt, **kw), atol=1e-4, rtol=1e-4)


def test_multihead_attention_routes_only_without_weights():
    mha = torch.nn.MultiheadAttention(16, 2, batch_first=True).to(DEVICE)
    x = torch.randn(1, 3, 16, device=DEVICE)
    with sdpa_routing() as routing:
        mha(x, x, x)  # need_weights=True (default): torch computes softmax(QK^T) itself
        mha(x, x, x, need_weights=False)
    assert routing.routed == 1
