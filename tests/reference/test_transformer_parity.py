"""The NumPy Transformer computes the same function as torch.nn.Transformer, in float64.

Same weights (our load_state_dict takes torch's state_dict), same inputs and masks, a
random cotangent: outputs, input gradients and EVERY parameter gradient agree to 1e-10
relative. torch runs in train mode with dropout 0: in eval mode its "fast path" (nested
tensors) may take a different route with padding masks, e.g. zeros at padded positions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flashref.autograd import Tensor
from flashref.reference.transformer import (
    MultiheadAttention,
    Transformer,
    TransformerDecoderLayer,
    TransformerEncoderLayer,
    set_attention_fn,
)

from transformer_cases import fresh_seed, grad_mismatches, rel_err

TOL = 1e-10
pytestmark = pytest.mark.filterwarnings(
    "ignore:enable_nested_tensor is True:UserWarning",  # torch notes it skips its fast path
    "ignore:Support for mismatched:UserWarning",  # bool padding masks beside float attn masks
)

# (norm_first, activation, batch_first, bias, mask style): every axis the issue names.
CASES = [
    (False, "relu", False, True, "bool"),
    (False, "gelu", True, True, "float"),
    (True, "relu", True, True, "bool"),
    (True, "gelu", False, True, "float"),
    (False, "relu", True, False, "bool"),
    (True, "gelu", True, False, "float"),
]


def padding_mask(rng, batch: int, length: int) -> np.ndarray:
    """(N, L) bool, True at right-padding; every row keeps at least one real position."""
    lengths = rng.integers(1, length + 1, size=batch)
    return np.arange(length)[None, :] >= lengths[:, None]


def causal(length: int, style: str):
    mask = np.triu(np.ones((length, length), dtype=bool), k=1)  # True = may not attend
    return mask if style == "bool" else np.where(mask, -np.inf, 0.0)


def random_config(rng) -> dict:
    """d_model >= 4: a LayerNorm over 2 features outputs +-1 whatever its input, so every
    gradient before it is zero in exact arithmetic and only rounding noise is compared."""
    nhead = int(rng.choice([1, 2, 3]))
    return dict(
        d_model=nhead * int(rng.integers(2 if nhead > 1 else 4, 6)),
        nhead=nhead,
        num_encoder_layers=int(rng.integers(1, 3)),
        num_decoder_layers=int(rng.integers(1, 3)),
        dim_feedforward=int(rng.integers(3, 17)),
        dropout=0.0,
        layer_norm_eps=float(rng.choice([1e-5, 1e-6])),
    )


def twins(config: dict, rng):
    torch.manual_seed(int(rng.integers(2**31)))
    theirs = torch.nn.Transformer(**config, dtype=torch.float64).train()
    ours = Transformer(**config, rng=np.random.default_rng(int(rng.integers(2**31))))
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def run_both(ours, theirs, inputs: dict, masks: dict, rng):
    """Forward both, backprop one random cotangent; return (ours, torch) outputs and grads."""
    ours_in = {k: Tensor(v, requires_grad=True) for k, v in inputs.items()}
    torch_in = {k: torch.tensor(v, requires_grad=True) for k, v in inputs.items()}
    out = ours(*ours_in.values(), **masks)
    torch_masks = {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in masks.items()}
    torch_out = theirs(*torch_in.values(), **torch_masks)
    cotangent = rng.standard_normal(out.shape)
    (out * Tensor(cotangent)).sum().backward()
    (torch_out * torch.tensor(cotangent)).sum().backward()
    ours_grads = {n: p.grad for n, p in ours.named_parameters()}
    ours_grads.update({f"input:{k}": t.grad for k, t in ours_in.items()})
    torch_grads = {n: p.grad.numpy() for n, p in theirs.named_parameters()}
    torch_grads.update({f"input:{k}": t.grad.numpy() for k, t in torch_in.items()})
    return out.data, torch_out.detach().numpy(), ours_grads, torch_grads


@pytest.mark.parametrize("norm_first, activation, batch_first, bias, mask_style", CASES)
def test_transformer_matches_torch(norm_first, activation, batch_first, bias, mask_style):
    rng = np.random.default_rng(fresh_seed("transformer parity"))
    config = random_config(rng) | dict(norm_first=norm_first, activation=activation,
                                       batch_first=batch_first, bias=bias)
    ours, theirs = twins(config, rng)
    n, s, t, e = int(rng.integers(1, 4)), int(rng.integers(1, 8)), int(rng.integers(1, 7)), config["d_model"]
    shape = (lambda length: (n, length, e)) if batch_first else (lambda length: (length, n, e))
    inputs = {"src": rng.standard_normal(shape(s)), "tgt": rng.standard_normal(shape(t))}
    src_padding = padding_mask(rng, n, s)
    masks = dict(
        tgt_mask=causal(t, mask_style),
        src_key_padding_mask=src_padding,
        memory_key_padding_mask=src_padding,
        tgt_key_padding_mask=padding_mask(rng, n, t) & (np.arange(t) > 0),  # position 0 stays visible
    )
    if mask_style == "float":  # an additive float src_mask too (finite: torch adds it as is)
        masks["src_mask"] = rng.standard_normal((s, s))
    out, torch_out, grads, torch_grads = run_both(ours, theirs, inputs, masks, rng)
    assert rel_err(out, torch_out) <= TOL
    assert grad_mismatches(grads, torch_grads, TOL) == []
    assert len(torch_grads) == len(list(theirs.parameters())) + 2  # every parameter was compared


def test_per_head_memory_mask_and_tgt_is_causal():
    """A (N * nhead, T, S) memory mask, and tgt_is_causal=True with no tgt_mask meaning causal."""
    rng = np.random.default_rng(fresh_seed("per-head mask"))
    config = dict(d_model=6, nhead=2, num_encoder_layers=1, num_decoder_layers=2, dim_feedforward=7, dropout=0.0)
    ours, theirs = twins(config, rng)
    n, s, t = 2, 5, 4
    inputs = {"src": rng.standard_normal((s, n, 6)), "tgt": rng.standard_normal((t, n, 6))}
    memory_mask = rng.random((n * 2, t, s)) < 0.4
    memory_mask[..., 0] = False  # every query keeps a key
    out, torch_out, grads, torch_grads = run_both(
        ours, theirs, inputs, dict(memory_mask=memory_mask, tgt_mask=causal(t, "bool")), rng)
    assert rel_err(out, torch_out) <= TOL
    assert grad_mismatches(grads, torch_grads, TOL) == []
    hinted = ours(Tensor(inputs["src"]), Tensor(inputs["tgt"]), memory_mask=memory_mask, tgt_is_causal=True)
    assert rel_err(hinted.data, torch_out) <= TOL


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("mask_shape", ["2d", "per_head"])
def test_multihead_attention_matches_torch(batch_first, mask_shape):
    rng = np.random.default_rng(fresh_seed("mha parity"))
    e, h, n, length, kv_len = 12, 3, 2, 5, 7
    torch.manual_seed(int(rng.integers(2**31)))
    theirs = torch.nn.MultiheadAttention(e, h, batch_first=batch_first, dtype=torch.float64)
    ours = MultiheadAttention(e, h, batch_first=batch_first)
    ours.load_state_dict(theirs.state_dict())
    shape = (lambda L: (n, L, e)) if batch_first else (lambda L: (L, n, e))
    q, k, v = rng.standard_normal(shape(length)), rng.standard_normal(shape(kv_len)), rng.standard_normal(shape(kv_len))
    attn_mask = rng.standard_normal((length, kv_len) if mask_shape == "2d" else (n * h, length, kv_len))
    kpm = padding_mask(rng, n, kv_len)
    tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
    torch_out, _ = theirs(tq, tk, tv, key_padding_mask=torch.tensor(kpm), attn_mask=torch.tensor(attn_mask),
                          need_weights=False)
    oq, ok, ov = (Tensor(x, requires_grad=True) for x in (q, k, v))
    out = ours(oq, ok, ov, key_padding_mask=kpm, attn_mask=attn_mask)
    cot = rng.standard_normal(out.shape)
    (out * Tensor(cot)).sum().backward()
    (torch_out * torch.tensor(cot)).sum().backward()
    assert rel_err(out.data, torch_out.detach().numpy()) <= TOL
    ours_grads = {n_: p.grad for n_, p in ours.named_parameters()} | {"q": oq.grad, "k": ok.grad, "v": ov.grad}
    torch_grads = {n_: p.grad.numpy() for n_, p in theirs.named_parameters()}
    torch_grads |= {"q": tq.grad.numpy(), "k": tk.grad.numpy(), "v": tv.grad.numpy()}
    assert grad_mismatches(ours_grads, torch_grads, TOL) == []


@settings(max_examples=15, deadline=None)
@given(batch=st.integers(1, 3), q_len=st.integers(1, 9), kv_len=st.integers(1, 9), heads=st.integers(1, 4),
       head_dim=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_multihead_attention_matches_torch_for_any_shape(batch, q_len, kv_len, heads, head_dim, seed):
    """Cross-attention (query from one sequence, key = value from another) with padding."""
    rng = np.random.default_rng(seed)
    e = heads * head_dim
    torch.manual_seed(seed % 2**31)
    theirs = torch.nn.MultiheadAttention(e, heads, batch_first=True, dtype=torch.float64)
    ours = MultiheadAttention(e, heads, batch_first=True)
    ours.load_state_dict(theirs.state_dict())
    q, mem = rng.standard_normal((batch, q_len, e)), rng.standard_normal((batch, kv_len, e))
    kpm = padding_mask(rng, batch, kv_len)
    tq, tm = torch.tensor(q, requires_grad=True), torch.tensor(mem, requires_grad=True)
    torch_out, _ = theirs(tq, tm, tm, key_padding_mask=torch.tensor(kpm), need_weights=False)
    oq, om = Tensor(q, requires_grad=True), Tensor(mem, requires_grad=True)
    out = ours(oq, om, om, key_padding_mask=kpm)
    cot = rng.standard_normal(out.shape)
    (out * Tensor(cot)).sum().backward()
    (torch_out * torch.tensor(cot)).sum().backward()
    assert rel_err(out.data, torch_out.detach().numpy()) <= TOL
    ours_grads = {n: p.grad for n, p in ours.named_parameters()} | {"q": oq.grad, "memory": om.grad}
    torch_grads = {n: p.grad.numpy() for n, p in theirs.named_parameters()}
    torch_grads |= {"q": tq.grad.numpy(), "memory": tm.grad.numpy()}
    assert grad_mismatches(ours_grads, torch_grads, TOL) == []


@pytest.mark.parametrize("layer", ["encoder", "decoder"])
def test_single_layers_match_torch(layer):
    rng = np.random.default_rng(fresh_seed(f"{layer} layer parity"))
    kwargs = dict(d_model=8, nhead=2, dim_feedforward=5, dropout=0.0, batch_first=True,
                  norm_first=bool(rng.integers(2)), activation=str(rng.choice(["relu", "gelu"])))
    torch.manual_seed(int(rng.integers(2**31)))
    if layer == "encoder":
        theirs = torch.nn.TransformerEncoderLayer(**kwargs, dtype=torch.float64)
        ours = TransformerEncoderLayer(**kwargs)
        arrays = [rng.standard_normal((2, 4, 8))]
    else:
        theirs = torch.nn.TransformerDecoderLayer(**kwargs, dtype=torch.float64)
        ours = TransformerDecoderLayer(**kwargs)
        arrays = [rng.standard_normal((2, 3, 8)), rng.standard_normal((2, 4, 8))]
    ours.load_state_dict(theirs.state_dict())
    ours_in = [Tensor(a, requires_grad=True) for a in arrays]
    torch_in = [torch.tensor(a, requires_grad=True) for a in arrays]
    out, torch_out = ours(*ours_in), theirs(*torch_in)
    cot = rng.standard_normal(out.shape)
    (out * Tensor(cot)).sum().backward()
    (torch_out * torch.tensor(cot)).sum().backward()
    assert rel_err(out.data, torch_out.detach().numpy()) <= TOL
    assert grad_mismatches({n: p.grad for n, p in ours.named_parameters()},
                           {n: p.grad.numpy() for n, p in theirs.named_parameters()}, TOL) == []
    for a, b in zip(ours_in, torch_in):
        assert rel_err(a.grad, b.grad.numpy()) <= TOL


def test_checker_catches_a_tiny_weight_change():
    """The comparison itself can fail: nudge one weight by 1e-7 and outputs and gradients disagree."""
    rng = np.random.default_rng(fresh_seed("checker can fail"))
    config = dict(d_model=4, nhead=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=5, dropout=0.0)
    ours, theirs = twins(config, rng)
    ours.decoder.norm.weight.data[0] += 1e-7  # the final LayerNorm: every output row feels it
    inputs = {"src": rng.standard_normal((3, 2, 4)), "tgt": rng.standard_normal((2, 2, 4))}
    out, torch_out, grads, torch_grads = run_both(ours, theirs, inputs, {}, rng)
    assert rel_err(out, torch_out) > TOL
    assert grad_mismatches(grads, torch_grads, TOL) != []


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("norm_first", [False, True])
def test_state_dict_keys_and_shapes_equal_torch(bias, norm_first):
    config = dict(d_model=8, nhead=2, num_encoder_layers=2, num_decoder_layers=3, dim_feedforward=6,
                  bias=bias, norm_first=norm_first)
    theirs = torch.nn.Transformer(**config).state_dict()
    ours = Transformer(**config, rng=np.random.default_rng(0)).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}


def test_load_state_dict_rejects_bad_input_and_changes_nothing():
    model = Transformer(d_model=4, nhead=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=3,
                        rng=np.random.default_rng(0))
    before = model.state_dict()
    good = torch.nn.Transformer(d_model=4, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                                dim_feedforward=3).state_dict()
    wrong_shape = dict(good) | {"decoder.norm.weight": torch.ones(5)}
    missing = {k: v for k, v in good.items() if k != "encoder.norm.bias"}
    with_nan = dict(good) | {"encoder.norm.bias": torch.full((4,), float("nan"))}
    for bad, message in ((wrong_shape, "expected shape"), (missing, "missing"), (with_nan, "NaN")):
        with pytest.raises(ValueError, match=message):
            model.load_state_dict(bad)
        after = model.state_dict()
        assert all(np.array_equal(before[k], after[k]) for k in before)


def test_attention_goes_through_one_swappable_function():
    """Every attention call goes through attention_fn; swapping it changes the model."""
    from flashref.reference.sdpa import scaled_dot_product_attention

    model = Transformer(d_model=4, nhead=2, num_encoder_layers=2, num_decoder_layers=1, dim_feedforward=3,
                        dropout=0.0, rng=np.random.default_rng(0))
    src, tgt = Tensor(np.ones((3, 1, 4))), Tensor(np.linspace(-1, 1, 8).reshape(2, 1, 4))
    calls = []

    def recording(q, k, v, **kwargs):
        calls.append(q.shape)
        return scaled_dot_product_attention(q, k, v, **kwargs)

    reference = model(src, tgt).data
    set_attention_fn(model, recording)
    assert np.array_equal(model(src, tgt).data, reference)
    assert len(calls) == 2 + 2 * 1  # encoder self x2, decoder self + cross
    set_attention_fn(model, lambda q, k, v, **kw: scaled_dot_product_attention(q, k, v, **kw) * 0.5)
    assert not np.allclose(model(src, tgt).data, reference)


@pytest.mark.parametrize("bad, error, message", [
    (dict(d_model=6, nhead=4), ValueError, "divisible"),
    (dict(activation="tanh"), ValueError, "activation"),
])
def test_bad_constructor_arguments(bad, error, message):
    config = dict(d_model=8, nhead=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=4) | bad
    with pytest.raises(error, match=message):
        Transformer(**config)


def test_bad_mask_shape_is_a_clear_error():
    model = Transformer(d_model=4, nhead=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=3)
    src, tgt = Tensor(np.ones((3, 2, 4))), Tensor(np.ones((2, 2, 4)))
    with pytest.raises(ValueError, match="key_padding_mask"):
        model(src, tgt, src_key_padding_mask=np.zeros((2, 4), dtype=bool))
    with pytest.raises(ValueError, match="attn_mask"):
        model(src, tgt, tgt_mask=np.zeros((3, 3)))
    with pytest.raises(TypeError, match="bool or float"):
        model(src, tgt, tgt_mask=np.zeros((2, 2), dtype=np.int64))
