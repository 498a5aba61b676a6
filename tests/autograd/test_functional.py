"""Composites: fused backwards agree with their composed twins; masked rows; torch's conventions."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import flashref.autograd.functional as F
from flashref.autograd import Tensor

from autograd_composed import (
    cross_entropy_composed,
    layer_norm_composed,
    log_softmax_composed,
    logsumexp_composed,
    softmax_composed,
)

SETTINGS = settings(max_examples=15, deadline=None)


def value_and_grads(fn, arrays, cotangent):
    tensors = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    out = fn(*tensors)
    out.backward(cotangent)
    return out.data, [t.grad for t in tensors]


FUSED_AND_COMPOSED = [
    ("softmax", lambda x: F.softmax(x, axis=1), lambda x: softmax_composed(x, axis=1)),
    ("log_softmax", lambda x: F.log_softmax(x, axis=-1), lambda x: log_softmax_composed(x, axis=-1)),
    ("logsumexp", lambda x: F.logsumexp(x, axis=(0, 2)), lambda x: logsumexp_composed(x, axis=(0, 2))),
    ("layer_norm", lambda x: F.layer_norm(x, 4), lambda x: layer_norm_composed(x, 4)),
]


@SETTINGS
@given(
    case=st.sampled_from(FUSED_AND_COMPOSED),
    shape=st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(4, 4)),
    scale=st.sampled_from([1.0, 30.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_fused_backward_matches_the_composed_graph(case, shape, scale, seed):
    name, fused, composed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * scale
    cotangent = rng.standard_normal(fused(Tensor(x)).shape)
    value_f, (grad_f,) = value_and_grads(fused, [x], cotangent)
    value_c, (grad_c,) = value_and_grads(composed, [x], cotangent)
    np.testing.assert_allclose(value_f, value_c, rtol=1e-12, atol=1e-12 * np.abs(value_c).max())
    # Softmax-type gradients are y * (g - <g, y>): the cancellation inside is relative to |g|.
    np.testing.assert_allclose(grad_f, grad_c, rtol=1e-10, atol=1e-13 * np.abs(cotangent).max())


@SETTINGS
@given(
    rows=st.integers(1, 6), classes=st.integers(2, 6),
    smoothing=st.sampled_from([0.0, 0.1, 0.7]),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_fused_cross_entropy_matches_the_composed_graph(rows, classes, smoothing, reduction, seed):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, classes, rows)
    target[rng.random(rows) < 0.25] = -100
    logits = rng.standard_normal((rows, classes)) * 3.0
    kwargs = dict(label_smoothing=smoothing, reduction=reduction)
    cotangent = rng.standard_normal(() if reduction != "none" else (rows,))
    value_f, (grad_f,) = value_and_grads(lambda z: F.cross_entropy(z, target, **kwargs), [logits], cotangent)
    value_c, (grad_c,) = value_and_grads(lambda z: cross_entropy_composed(z, target, **kwargs), [logits], cotangent)
    np.testing.assert_allclose(value_f, value_c, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grad_f, grad_c, rtol=1e-10, atol=1e-14)


def test_fused_layer_norm_with_affine_matches_the_composed_graph(rng):
    x, w, b = rng.standard_normal((3, 2, 5)), rng.standard_normal(5), rng.standard_normal(5)
    cotangent = rng.standard_normal((3, 2, 5))
    value_f, grads_f = value_and_grads(lambda *t: F.layer_norm(t[0], 5, t[1], t[2]), [x, w, b], cotangent)
    value_c, grads_c = value_and_grads(lambda *t: layer_norm_composed(t[0], 5, t[1], t[2]), [x, w, b], cotangent)
    np.testing.assert_allclose(value_f, value_c, rtol=1e-12, atol=1e-13)
    for gf, gc in zip(grads_f, grads_c):
        np.testing.assert_allclose(gf, gc, rtol=1e-10, atol=1e-13)


# ------------------------------------------------------------------ masked rows


ROWS_WITH_MASKS = np.array([
    [-np.inf, -np.inf, -np.inf, -np.inf],  # fully masked
    [0.3, -np.inf, 1.2, -np.inf],  # partly masked
    [0.5, -0.1, 2.0, 1.0],
])


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
def test_a_fully_masked_row_gives_zeros_and_zero_gradients_never_nan(name, rng):
    x = Tensor(ROWS_WITH_MASKS.copy(), requires_grad=True)
    out = getattr(F, name)(x, axis=-1)
    out.backward(rng.standard_normal(out.shape))
    assert not np.isnan(out.data).any() and not np.isnan(x.grad).any()
    expected_first = -np.inf if name == "logsumexp" else 0.0
    assert np.all(out.data[0] == expected_first)
    np.testing.assert_array_equal(x.grad[0], 0.0)


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
def test_partly_masked_rows_match_torch(name, rng):
    x = Tensor(ROWS_WITH_MASKS[1:].copy(), requires_grad=True)
    t = torch.tensor(ROWS_WITH_MASKS[1:], requires_grad=True)
    ours = getattr(F, name)(x, axis=-1)
    theirs = {"softmax": torch.softmax, "log_softmax": torch.log_softmax, "logsumexp": torch.logsumexp}[name](t, -1)
    np.testing.assert_allclose(ours.data, theirs.detach().numpy(), rtol=1e-14)
    cotangent = rng.standard_normal(ours.shape)
    ours.backward(cotangent)
    theirs.backward(torch.tensor(cotangent))
    np.testing.assert_allclose(x.grad, t.grad.numpy(), rtol=1e-13, atol=1e-15)


def test_softmax_of_huge_logits_does_not_overflow():
    y = F.softmax(Tensor(np.array([[1000.0, 1001.0], [-1000.0, -1001.0]])))
    np.testing.assert_allclose(y.data.sum(axis=-1), 1.0)
    assert np.isfinite(y.data).all()


def test_max_splits_the_gradient_evenly_between_ties():
    x = Tensor(np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0]]), requires_grad=True)
    x.max(axis=1).backward(np.array([1.0, 2.0]))
    np.testing.assert_allclose(x.grad, [[0.0, 0.5, 0.5, 0.0], [0.5, 0.5, 0.5, 0.5]])


# ------------------------------------------------------------------ cross_entropy


def test_cross_entropy_with_every_target_ignored_is_zero_with_zero_gradients():
    logits = Tensor(np.ones((3, 4)), requires_grad=True)
    loss = F.cross_entropy(logits, np.full(3, -100), label_smoothing=0.1)
    loss.backward()
    assert loss.item() == 0.0
    np.testing.assert_array_equal(logits.grad, 0.0)


def test_cross_entropy_mean_divides_by_the_non_ignored_count():
    logits = Tensor(np.zeros((4, 2)))
    loss = F.cross_entropy(logits, np.array([0, -100, 1, -100]))
    np.testing.assert_allclose(loss.item(), np.log(2.0))  # not log(2)/2


def test_cross_entropy_of_a_single_row_with_a_scalar_target_matches_torch(rng):
    z = rng.standard_normal(5)
    ours = F.cross_entropy(Tensor(z), np.array(3), label_smoothing=0.2)
    theirs = torch.nn.functional.cross_entropy(torch.tensor(z), torch.tensor(3), label_smoothing=0.2)
    np.testing.assert_allclose(ours.item(), theirs.item(), rtol=1e-14)


@pytest.mark.parametrize(
    "logits_shape, target, kwargs, error, pattern",
    [
        ((4, 3), np.zeros(5, dtype=int), {}, ValueError, r"target.shape=\(4,\)"),
        ((4, 3), np.array([0, 1, 3, 0]), {}, IndexError, r"\[0, 3\)"),
        ((4, 3), np.array([0, 1, -1, 0]), {}, IndexError, r"ignore_index=-100"),
        ((4, 3), np.zeros(4), {"reduction": "avg"}, ValueError, r"reduction"),
        ((4, 3), np.zeros(4), {"label_smoothing": 1.5}, ValueError, r"label_smoothing"),
        ((4, 3), np.array([0.5, 1, 2, 0]), {}, TypeError, r"integers"),
    ],
)
def test_cross_entropy_rejects_bad_input(logits_shape, target, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        F.cross_entropy(Tensor(np.zeros(logits_shape)), target, **kwargs)


# ------------------------------------------------------------------ layer_norm, gelu, linear, embedding


@pytest.mark.parametrize(
    "x_shape, normalized_shape, weight_shape, pattern",
    [
        ((2, 3), 4, None, r"normalized_shape=\(4,\).*x.shape=\(2, 3\)"),
        ((2, 3), (2, 3, 1), None, r"normalized_shape"),
        ((2, 3), 3, (4,), r"weight.shape=\(4,\).*normalized_shape=\(3,\)"),
    ],
)
def test_layer_norm_rejects_mismatched_shapes(x_shape, normalized_shape, weight_shape, pattern):
    weight = Tensor(np.ones(weight_shape)) if weight_shape else None
    with pytest.raises(ValueError, match=pattern):
        F.layer_norm(Tensor(np.ones(x_shape)), normalized_shape, weight)


def test_layer_norm_uses_biased_variance_and_eps_inside_the_root():
    x = np.array([[1.0, 2.0, 4.0]])
    y = F.layer_norm(Tensor(x), 3, eps=0.5).data
    expected = (x - x.mean()) / np.sqrt(x.var() + 0.5)  # np.var is the biased one
    np.testing.assert_allclose(y, expected, rtol=1e-15)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_far_into_both_tails_matches_torch(approximate):
    x = np.concatenate([np.linspace(-40, -5, 50), np.linspace(5, 40, 50)])
    ours = F.gelu(Tensor(x), approximate=approximate).data
    theirs = torch.nn.functional.gelu(torch.tensor(x), approximate=approximate).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-15)


def test_gelu_rejects_an_unknown_approximation():
    with pytest.raises(ValueError, match="approximate"):
        F.gelu(Tensor(np.ones(2)), approximate="sigmoid")


def test_linear_rejects_a_weight_of_the_wrong_layout():
    with pytest.raises(ValueError, match=r"x.shape=\(2, 3\).*\(3, 4\)"):
        F.linear(Tensor(np.ones((2, 3))), Tensor(np.ones((3, 4))))


def test_embedding_gradient_accumulates_repeated_indices():
    w = Tensor(np.zeros((4, 2)), requires_grad=True)
    F.embedding(np.array([[1, 1, 3], [1, 0, 3]]), w).sum().backward()
    np.testing.assert_array_equal(w.grad, [[1, 1], [3, 3], [0, 0], [2, 2]])


def test_embedding_rejects_out_of_range_indices():
    with pytest.raises(IndexError, match=r"\[0, 4\)"):
        F.embedding(np.array([0, 4]), Tensor(np.zeros((4, 2))))


# ------------------------------------------------------------------ dropout


def test_dropout_mask_is_reproducible_from_the_generator_state(rng, seed):
    x = Tensor(rng.standard_normal((50, 40)))
    first = F.dropout(x, 0.25, rng=np.random.default_rng(seed)).data
    second = F.dropout(x, 0.25, rng=np.random.default_rng(seed)).data
    np.testing.assert_array_equal(first, second)
    other = F.dropout(x, 0.25, rng=np.random.default_rng(seed + 1)).data
    assert not np.array_equal(first, other)


def test_dropout_keeps_with_probability_1_minus_p_and_scales_by_its_inverse(seed):
    x = Tensor(np.ones(200_000), requires_grad=True)
    y = F.dropout(x, 0.3, rng=np.random.default_rng(seed))
    kept = y.data != 0
    np.testing.assert_allclose(y.data[kept], 1.0 / 0.7)
    assert abs(kept.mean() - 0.7) < 0.005  # ~5 standard deviations
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, y.data)  # the gradient passes through the same mask


@pytest.mark.parametrize("p, training", [(0.5, False), (0.0, True)])
def test_dropout_is_the_identity_when_off(p, training):
    x = Tensor(np.ones(10))
    assert F.dropout(x, p, training=training, rng=np.random.default_rng(0)) is x


def test_dropout_with_p_one_zeroes_everything():
    y = F.dropout(Tensor(np.ones(10)), 1.0, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(y.data, 0.0)


@pytest.mark.parametrize("p, rng, error", [(1.5, np.random.default_rng(0), ValueError), (0.5, 42, TypeError)])
def test_dropout_rejects_bad_arguments(p, rng, error):
    with pytest.raises(error):
        F.dropout(Tensor(np.ones(3)), p, rng=rng)


# ------------------------------------------------------------------ float32


FLOAT32_CASES = [
    ("softmax", lambda x: F.softmax(x)),
    ("log_softmax", lambda x: F.log_softmax(x)),
    ("logsumexp", lambda x: F.logsumexp(x)),
    ("layer_norm", lambda x: F.layer_norm(x, 6)),
    ("gelu", lambda x: F.gelu(x)),
    ("gelu[tanh]", lambda x: F.gelu(x, approximate="tanh")),
    ("cross_entropy", lambda x: F.cross_entropy(x, np.array([0, 5, -100, 2]), label_smoothing=0.1)),
    ("dropout", lambda x: F.dropout(x, 0.5, rng=np.random.default_rng(0))),
    ("linear", lambda x: F.linear(x, x[:3] * 1.0)),
]


@pytest.mark.parametrize("name, fn", FLOAT32_CASES, ids=[c[0] for c in FLOAT32_CASES])
def test_float32_inputs_stay_float32_and_track_float64(name, fn, rng):
    x64 = rng.standard_normal((4, 6))
    cotangent = rng.standard_normal(fn(Tensor(x64)).shape)
    value64, (grad64,) = value_and_grads(fn, [x64], cotangent)
    value32, (grad32,) = value_and_grads(fn, [x64.astype(np.float32)], cotangent.astype(np.float32))
    assert value32.dtype == np.float32 and grad32.dtype == np.float32
    np.testing.assert_allclose(value32, value64, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad32, grad64, rtol=1e-4, atol=1e-5)
