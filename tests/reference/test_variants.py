"""The attention variants (issue 10) in the oracle: window, softcap, ALiBi, sinks, dropout.

Each variant, alone and combined, against an independent computation (torch float64 with the
variant written out plainly, mask built by loops), against central differences (q, k, v and
the sinks, so softcap's and ALiBi's paths through dq / dk are covered), and across the
oracle family (closed form, blocked, autograd-composed SDPA).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from attention_cases import fresh_rng, max_abs_diff, plain_visible, random_attention
from flashref.autograd import Tensor
from flashref.reference import (
    attention_backward,
    attention_forward,
    attention_mask,
    blocked_attention_backward,
    blocked_attention_forward,
    scaled_dot_product_attention,
)

TOL = 1e-12


def torch_variant_attention(q, k, v, dout, *, softmax_scale=None, causal=False,
                            causal_alignment="top_left", kv_lens=None, window_size=(-1, -1),
                            softcap=0.0, alibi_slopes=None, sinks=None, keep=None, dropout_p=0.0):  # fmt: skip
    """torch float64, every variant spelled out: (out, lse, dq, dk, dv, dsinks or None)."""
    import torch

    batch, q_heads, q_len, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    tq, tk, tv = (torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in (q, k, v))
    tk_full = tk.repeat_interleave(q_heads // kv_heads, dim=1)
    tv_full = tv.repeat_interleave(q_heads // kv_heads, dim=1)
    scale = head_dim**-0.5 if softmax_scale is None else softmax_scale
    s = tq @ tk_full.transpose(-1, -2) * scale  # (B, Hq, Lq, Lk)
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    if alibi_slopes is not None:
        slopes = np.broadcast_to(np.asarray(alibi_slopes, np.float64), (batch, q_heads))
        distance = np.zeros((batch, 1, q_len, kv_len))
        for b in range(batch):
            length = kv_len if kv_lens is None else int(kv_lens[b])
            shift = 0 if causal_alignment == "top_left" else length - q_len
            for i in range(q_len):
                for j in range(kv_len):
                    distance[b, 0, i, j] = abs(i + shift - j)
        s = s - torch.tensor(slopes[:, :, None, None] * distance)
    visible = torch.tensor(plain_visible(
        batch, q_len, kv_len, causal=causal, causal_alignment=causal_alignment,
        kv_lens=kv_lens, window_size=window_size))[:, None]  # fmt: skip
    s = s.masked_fill(~visible, -torch.inf)
    tsinks = None
    if sinks is not None:
        tsinks = torch.tensor(sinks, dtype=torch.float64, requires_grad=True)
        column = tsinks.reshape(1, q_heads, 1, 1).expand(batch, q_heads, q_len, 1)
        s = torch.cat([s, column], dim=-1)
    empty = torch.isinf(s).all(dim=-1, keepdim=True)  # (no sinks) rows that see no key
    s = torch.where(empty, torch.zeros_like(s), s)
    lse = torch.logsumexp(s, dim=-1)
    probs = torch.softmax(s, dim=-1) * (~empty)
    if sinks is not None:
        probs = probs[..., :kv_len]
    if keep is not None:
        probs = probs * torch.tensor(keep / (1.0 - dropout_p))
    out = probs @ tv_full
    out.backward(torch.tensor(dout))
    lse = torch.where(empty[..., 0], -torch.inf, lse)
    grads = [t.grad.numpy() for t in (tq, tk, tv)]
    return (out.detach().numpy(), lse.detach().numpy(), *grads,
            None if tsinks is None else tsinks.grad.numpy())  # fmt: skip


# (B, Hq, Hkv, Lq, Lk, D, Dv, kwargs). Entries "sinks"/"alibi": shapes drawn per test;
# "dropout_p" comes with a fresh dropout_seed.
CASES = {
    "window_left": (2, 2, 1, 9, 11, 4, 3, {"window_size": (3, -1)}),
    "window_right": (1, 2, 2, 7, 7, 5, 5, {"window_size": (-1, 2)}),
    "window_both_bottom_right": (2, 3, 1, 5, 12, 4, 4, {"window_size": (2, 1), "causal_alignment": "bottom_right"}),
    "window_causal_kv_lens_bottom_right": (
        3, 2, 1, 4, 9, 3, 3, {"window_size": (2, 3), "causal": True, "causal_alignment": "bottom_right", "kv_lens": [9, 5, 2]}),
    "window_hides_rows": (1, 2, 1, 8, 3, 4, 4, {"window_size": (0, 0)}),  # rows i >= 3 see nothing
    "softcap": (2, 2, 2, 7, 9, 4, 4, {"softcap": 0.8, "softmax_scale": 1.5}),
    "softcap_causal_gqa": (1, 4, 2, 9, 9, 5, 3, {"softcap": 2.5, "causal": True}),
    "alibi_per_head": (2, 3, 3, 6, 10, 4, 4, {"alibi": "heads", "causal": True, "causal_alignment": "bottom_right"}),
    "alibi_per_batch_kv_lens": (2, 2, 1, 5, 8, 3, 3, {"alibi": "batch", "kv_lens": [8, 3], "causal_alignment": "bottom_right"}),
    "sinks": (2, 3, 1, 6, 7, 4, 4, {"sinks": True}),
    "sinks_causal_empty_rows": (
        2, 2, 2, 5, 4, 3, 3, {"sinks": True, "causal": True, "causal_alignment": "bottom_right", "kv_lens": [4, 0]}),
    "dropout_seed": (2, 2, 1, 7, 9, 4, 4, {"dropout_p": 0.3, "causal": True}),
    "dropout_0.9": (1, 2, 2, 6, 13, 4, 4, {"dropout_p": 0.9}),
    "everything": (
        2, 4, 2, 5, 11, 4, 3, {"window_size": (3, 0), "softcap": 1.7, "alibi": "batch", "sinks": True,
                               "dropout_p": 0.25, "kv_lens": [11, 4], "causal_alignment": "bottom_right"}),
}  # fmt: skip


def _resolve(spec, rng, batch, q_heads):
    """The case's keyword arguments, with drawn slopes, sinks and seed."""
    kwargs = dict(spec)
    alibi = kwargs.pop("alibi", None)
    if alibi == "heads":
        kwargs["alibi_slopes"] = rng.uniform(0.05, 1.0, q_heads)
    elif alibi == "batch":
        kwargs["alibi_slopes"] = rng.uniform(0.05, 1.0, (batch, q_heads))
    if kwargs.pop("sinks", False):
        kwargs["sinks"] = rng.standard_normal(q_heads)
    if kwargs.get("dropout_p"):
        kwargs["dropout_seed"] = int(rng.integers(2**63))
    return kwargs


def _problem(case):
    batch, hq, hkv, lq, lk, d, dv, spec = CASES[case]
    rng = fresh_rng(case)
    q, k, v, dout = random_attention(rng, batch, hq, hkv, lq, lk, d, dv)
    return (q, k, v, dout), _resolve(spec, rng, batch, hq)


def _torch_kwargs(kwargs, keep):
    tk = {name: kwargs[name] for name in (
        "softmax_scale", "causal", "causal_alignment", "kv_lens", "window_size", "softcap",
        "alibi_slopes", "sinks", "dropout_p") if name in kwargs}  # fmt: skip
    return {**tk, "keep": keep}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_variant_matches_torch_float64(case):
    (q, k, v, dout), kwargs = _problem(case)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        out, lse, keep = attention_forward(q, k, v, return_dropout_mask=True, **kwargs)
        grads = attention_backward(q, k, v, out, lse, dout, **kwargs)
    expected = torch_variant_attention(q, k, v, dout, **_torch_kwargs(kwargs, keep))
    has_sinks = "sinks" in kwargs
    assert len(grads) == (4 if has_sinks else 3)
    names = ("out", "lse", "dq", "dk", "dv", "dsinks")
    for name, got, want in zip(names, (out, lse, *grads), expected):
        assert max_abs_diff(got, want) <= TOL, name
    if not has_sinks:
        assert expected[-1] is None


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_blocked_and_autograd_equal_the_closed_form(case):
    (q, k, v, dout), kwargs = _problem(case)
    out, lse = attention_forward(q, k, v, **kwargs)
    grads = attention_backward(q, k, v, out, lse, dout, **kwargs)
    with np.errstate(all="raise"):
        out_b, lse_b = blocked_attention_forward(q, k, v, block_m=2, block_n=3, **kwargs)
        grads_b = blocked_attention_backward(q, k, v, out, lse, dout, block_m=4, block_n=2, **kwargs)
    assert max_abs_diff(out_b, out) <= TOL and max_abs_diff(lse_b, lse) <= TOL
    assert len(grads_b) == len(grads)
    assert all(max_abs_diff(a, b) <= TOL for a, b in zip(grads_b, grads))

    tensors = [Tensor(x, requires_grad=True) for x in (q, k, v)]
    auto_kwargs = dict(kwargs)
    if "sinks" in kwargs:
        auto_kwargs["sinks"] = Tensor(kwargs["sinks"], requires_grad=True)
        tensors.append(auto_kwargs["sinks"])
    out_auto = scaled_dot_product_attention(*tensors[:3], **auto_kwargs)
    (out_auto * Tensor(dout)).sum().backward()
    assert max_abs_diff(out_auto.data, out) <= TOL
    assert all(max_abs_diff(t.grad, g) <= TOL for t, g in zip(tensors, grads))


FD_CASES = ["window_both_bottom_right", "softcap_causal_gqa", "alibi_per_batch_kv_lens",
            "sinks_causal_empty_rows", "dropout_0.9", "everything"]  # fmt: skip


@pytest.mark.parametrize("case", FD_CASES)
def test_gradients_match_central_differences(case):
    """d/dt L(x + t u) at t = 0 for random directions u, L = sum(out * dout): the closed-form
    gradient contracted with u against a central difference (step 1e-6, error O(1e-12))."""
    (q, k, v, dout), kwargs = _problem(case)
    rng = fresh_rng(case + " directions")
    inputs = {"q": q, "k": k, "v": v}
    if "sinks" in kwargs:
        inputs["sinks"] = kwargs["sinks"]

    def loss(values):
        kw = {**kwargs, **({"sinks": values["sinks"]} if "sinks" in values else {})}
        out, _ = attention_forward(values["q"], values["k"], values["v"], **kw)
        return float((out * dout).sum())

    out, lse = attention_forward(q, k, v, **kwargs)
    grads = dict(zip(inputs, attention_backward(q, k, v, out, lse, dout, **kwargs)))
    eps = 1e-6
    for name, x in inputs.items():
        for _ in range(2):
            u = rng.standard_normal(x.shape)
            plus = loss({**inputs, name: x + eps * u})
            minus = loss({**inputs, name: x - eps * u})
            numeric = (plus - minus) / (2 * eps)
            analytic = float((grads[name] * u).sum())
            assert abs(numeric - analytic) <= 1e-7 * (1 + abs(analytic)), (name, numeric, analytic)


# --- the edge cases the issue lists -----------------------------------------------------


def test_window_narrower_than_a_block():
    rng = fresh_rng()
    q, k, v, dout = random_attention(rng, 1, 2, 1, 40, 37, 4)
    kwargs = {"window_size": (2, 1), "causal_alignment": "bottom_right"}
    out, lse = attention_forward(q, k, v, **kwargs)
    grads = attention_backward(q, k, v, out, lse, dout, **kwargs)
    out_b, lse_b = blocked_attention_forward(q, k, v, block_m=16, block_n=16, **kwargs)
    grads_b = blocked_attention_backward(q, k, v, out, lse, dout, block_m=16, block_n=16, **kwargs)
    assert max_abs_diff(out_b, out) <= TOL and max_abs_diff(lse_b, lse) <= TOL
    assert all(max_abs_diff(a, b) <= TOL for a, b in zip(grads_b, grads))
    # Each query sees at most left + right + 1 = 4 keys: count them.
    visible = attention_mask(40, 37, batch=1, **kwargs)
    assert visible.sum(axis=-1).max() == 4
    expected = torch_variant_attention(q, k, v, dout, **kwargs)
    assert max_abs_diff(out, expected[0]) <= TOL and max_abs_diff(grads[0], expected[2]) <= TOL


def test_window_that_hides_whole_rows():
    rng = fresh_rng()
    q, k, v, dout = random_attention(rng, 1, 2, 1, 6, 8, 3)
    # bottom_right with kv_lens 3: query i sits at key position i - 3, and the window (0, 0)
    # shows it that one key only: queries 0..2 sit before the first key and see nothing.
    kwargs = {"window_size": (0, 0), "causal_alignment": "bottom_right", "kv_lens": [3]}
    with np.errstate(all="raise"):
        out, lse = attention_forward(q, k, v, **kwargs)
        dq, dk, dv = attention_backward(q, k, v, out, lse, dout, **kwargs)
    visible = plain_visible(1, 6, 8, **kwargs)[0]
    empty = ~visible.any(axis=-1)
    assert np.array_equal(empty, [True, True, True, False, False, False])
    assert np.all(lse[0][:, empty] == -np.inf) and not out[0][:, empty].any()
    assert not dq[0][:, empty].any() and np.isfinite(lse[0][:, ~empty]).all()


def test_sink_with_every_key_masked_gives_zero_out_and_lse_equal_to_the_sink():
    rng = fresh_rng()
    q, k, v, dout = random_attention(rng, 2, 3, 1, 4, 5, 4)
    sinks = rng.standard_normal(3)
    kwargs = {"sinks": sinks, "kv_lens": [0, 5], "causal": True, "causal_alignment": "bottom_right"}
    with np.errstate(all="raise"):
        out, lse = attention_forward(q, k, v, **kwargs)
        dq, dk, dv, dsinks = attention_backward(q, k, v, out, lse, dout, **kwargs)
    assert not out[0].any() and np.array_equal(lse[0], np.broadcast_to(sinks[:, None], (3, 4)))
    assert not dq[0].any() and not dk[0].any() and not dv[0].any()
    # Rows that see keys put weight on the sink: their lse exceeds it.
    assert np.all(lse[1] > sinks[:, None])
    # The empty batch row contributes nothing to dsinks: the same with it removed.
    _, _, _, dsinks_1 = attention_backward(
        q[1:], k[1:], v[1:], out[1:], lse[1:], dout[1:], **{**kwargs, "kv_lens": [5]})
    assert max_abs_diff(dsinks, dsinks_1) <= TOL


def test_softcap_with_logits_near_1e4():
    rng = fresh_rng()
    q, k, v, dout = random_attention(rng, 1, 2, 1, 6, 7, 4)
    q = q * 100.0 / np.linalg.norm(q, axis=-1, keepdims=True)
    k = k * 200.0 / np.linalg.norm(k, axis=-1, keepdims=True)  # |q . k| up to 2e4, scale 1/2
    kwargs = {"softcap": 30.0, "causal": True}
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        out, lse = attention_forward(q, k, v, **kwargs)
        grads = attention_backward(q, k, v, out, lse, dout, **kwargs)
    raw = 0.5 * q @ np.repeat(k, 2, axis=1).swapaxes(-1, -2)
    assert np.abs(raw).max() > 5e3
    assert np.all(np.abs(lse) <= 30.0 + np.log(7) + 1e-12)  # capped scores stay within +-30
    expected = torch_variant_attention(q, k, v, dout, **kwargs)
    for name, got, want in zip(("out", "lse", "dq", "dk", "dv"), (out, lse, *grads), expected):
        assert max_abs_diff(got, want) <= 1e-10 * max(1.0, np.abs(want).max()), name


def test_dropout_seed_replays_in_the_backward_and_differs_from_other_seeds():
    rng = fresh_rng()
    q, k, v, dout = random_attention(rng, 1, 2, 1, 6, 9, 4)
    seed = int(rng.integers(2**63))
    out, lse, keep = attention_forward(q, k, v, dropout_p=0.9, dropout_seed=seed, return_dropout_mask=True)
    by_seed = attention_backward(q, k, v, out, lse, dout, dropout_p=0.9, dropout_seed=seed)
    by_mask = attention_backward(q, k, v, out, lse, dout, dropout_p=0.9, dropout_mask=keep)
    assert all(np.array_equal(a, b) for a, b in zip(by_seed, by_mask))
    _, _, other = attention_forward(q, k, v, dropout_p=0.9, dropout_seed=seed ^ 1, return_dropout_mask=True)
    assert not np.array_equal(keep, other)
    # p = 0.9 keeps about a tenth; the dropped weights are 0, the kept ones scaled by 10.
    out_full, _ = attention_forward(q, k, v)
    assert keep.dtype == bool and keep.shape == (1, 2, 6, 9) and keep.any() and not keep.all()
    assert not np.allclose(out, out_full)


VARIANT_ERRORS = {
    "softcap_negative": ({"softcap": -1.0}, ValueError, "softcap"),
    "softcap_nan": ({"softcap": float("nan")}, ValueError, "softcap"),
    "softcap_string": ({"softcap": "1"}, TypeError, "softcap"),
    "window_below_minus_one": ({"window_size": (-2, 3)}, ValueError, "window_size"),
    "window_three_entries": ({"window_size": (1, 2, 3)}, ValueError, "window_size"),
    "window_float": ({"window_size": (1.5, 2)}, TypeError, "window_size"),
    "window_scalar": ({"window_size": 4}, ValueError, "window_size"),
    "slopes_wrong_heads": ({"alibi_slopes": np.ones(3)}, ValueError, "alibi_slopes"),
    "slopes_wrong_batch": ({"alibi_slopes": np.ones((3, 2))}, ValueError, "alibi_slopes"),
    "slopes_complex": ({"alibi_slopes": np.ones(2, complex)}, TypeError, "alibi_slopes"),
    "slopes_inf": ({"alibi_slopes": np.array([1.0, np.inf])}, ValueError, "alibi_slopes"),
    "sinks_wrong_shape": ({"sinks": np.ones((2, 1))}, ValueError, "sinks"),
    "sinks_per_kv_head": ({"sinks": np.ones(1)}, ValueError, "sinks"),
    "sinks_nan": ({"sinks": np.array([0.0, np.nan])}, ValueError, "sinks"),
    "sinks_bool": ({"sinks": np.ones(2, bool)}, TypeError, "sinks"),
    "dropout_p_one": ({"dropout_p": 1.0, "dropout_seed": 1}, ValueError, "dropout_p"),
    "dropout_p_negative": ({"dropout_p": -0.5, "dropout_seed": 1}, ValueError, "dropout_p"),
    "seed_float": ({"dropout_p": 0.5, "dropout_seed": 1.0}, TypeError, "dropout_seed"),
    "seed_negative": ({"dropout_p": 0.5, "dropout_seed": -1}, ValueError, "dropout_seed"),
    "seed_too_big": ({"dropout_p": 0.5, "dropout_seed": 2**63}, ValueError, "dropout_seed"),
    "seed_bool": ({"dropout_p": 0.5, "dropout_seed": True}, TypeError, "dropout_seed"),
    "seed_and_rng": ({"dropout_p": 0.5, "dropout_seed": 3, "rng": np.random.default_rng(0)},
                     ValueError, "dropout_seed, rng"),
    "seed_and_mask": ({"dropout_p": 0.5, "dropout_seed": 3, "dropout_mask": np.ones((4, 5), bool)},
                      ValueError, "dropout_seed, dropout_mask"),
}  # fmt: skip


@pytest.mark.parametrize("case", VARIANT_ERRORS, ids=list(VARIANT_ERRORS))
def test_bad_variant_arguments_are_named(case):
    kwargs, error, text = VARIANT_ERRORS[case]
    q, k = np.ones((2, 2, 4, 3)), np.ones((2, 1, 5, 3))
    for fn in (attention_forward, blocked_attention_forward, scaled_dot_product_attention):
        with pytest.raises(error, match=text):
            fn(q, k, k, **kwargs)
    out = np.zeros((2, 2, 4, 3))
    with pytest.raises(error, match=text):
        attention_backward(q, k, k, out, np.zeros((2, 2, 4)), out, **kwargs)


def test_a_seed_without_dropout_draws_nothing():
    q = np.random.default_rng().standard_normal((1, 2, 3, 4))
    plain = attention_forward(q, q[:, :1], q[:, :1])
    seeded = attention_forward(q, q[:, :1], q[:, :1], dropout_seed=5, return_dropout_mask=True)
    assert seeded[2] is None and all(np.array_equal(a, b) for a, b in zip(plain, seeded))


def test_the_audit_gradcheck_attention_case_is_the_oracles_attention():
    """`flashref audit gradcheck` checks a variant attention composed in autograd ops; it must
    be the oracle's function, or the audit checks something else."""
    from flashref.autograd.opcheck import _attention_variants

    rng = fresh_rng()
    q, k, v = rng.standard_normal((1, 2, 3, 4)), rng.standard_normal((1, 2, 5, 4)), rng.standard_normal((1, 2, 5, 3))
    sinks = rng.standard_normal(2)
    audit = _attention_variants(Tensor(q), Tensor(k), Tensor(v), Tensor(sinks)).data
    out, _ = attention_forward(q, k, v, softmax_scale=0.5, softcap=1.5, alibi_slopes=np.array([0.5, 0.25]),
                               window_size=(1, 0), causal_alignment="bottom_right", sinks=sinks)  # fmt: skip
    assert max_abs_diff(audit, out) <= TOL
