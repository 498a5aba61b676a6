"""The checker itself: it passes right gradients and must fail wrong ones."""

import numpy as np
import pytest

from flashref.autograd import REGISTRY, GradcheckError, Primitive, Tensor, apply, gradcheck
import flashref.autograd.functional as F


class SquareWithWrongBackward(Primitive):
    """``out = x^2`` with the derivative off by 1%: ``dx = g * 2.02 x``."""

    name = "square_wrong"

    @staticmethod
    def forward(ctx, x):
        ctx.x = x
        return x * x

    @staticmethod
    def backward(ctx, grad):
        return (grad * 2.02 * ctx.x,)


class SoftmaxWithoutCorrection(Primitive):
    """Softmax whose backward forgets the ``- sum(g * y)`` term: ``dx = y * g``."""

    name = "softmax_wrong"

    @staticmethod
    def forward(ctx, x):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        ctx.y = e / e.sum(axis=-1, keepdims=True)
        return ctx.y

    @staticmethod
    def backward(ctx, grad):
        return (ctx.y * grad,)


class SoftmaxWrongByAConstant(Primitive):
    """Softmax backward plus an error ``0.1 * (g - mean(g))``: exactly zero for a constant
    cotangent, so a check of ``softmax(x).sum()`` (cotangent 1) cannot see it."""

    name = "softmax_blind_spot"

    @staticmethod
    def forward(ctx, x):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        ctx.y = e / e.sum(axis=-1, keepdims=True)
        return ctx.y

    @staticmethod
    def backward(ctx, grad):
        y = ctx.y
        right = y * (grad - np.sum(grad * y, axis=-1, keepdims=True))
        return (right + 0.1 * (grad - grad.mean(axis=-1, keepdims=True)),)


@pytest.fixture
def wrong_primitives(monkeypatch):
    for cls in (SquareWithWrongBackward, SoftmaxWithoutCorrection, SoftmaxWrongByAConstant):
        monkeypatch.setitem(REGISTRY, cls.name, cls)


def test_a_correct_backward_passes_and_reports_where(rng, seed):
    x = rng.standard_normal((3, 4))
    report = gradcheck(lambda t: (t * t).tanh(), [x], seed=seed)
    assert report.passed and report.worst_rel_error < 1e-7
    assert report.input_index == 0 and len(report.element_index) == 2
    assert report.seed == seed and "passed" in str(report)


@pytest.mark.parametrize("name", ["square_wrong", "softmax_wrong"])
def test_a_wrong_backward_fails(wrong_primitives, name, rng, seed):
    x = rng.standard_normal((2, 5))
    with pytest.raises(GradcheckError) as info:
        gradcheck(lambda t: apply(name, t), [x], seed=seed)
    report = info.value.report
    assert not report.passed and report.worst_rel_error > 1e-3
    assert "FAILED" in str(info.value)


def test_the_random_cotangent_catches_what_a_sum_would_hide(wrong_primitives, rng, seed):
    x = rng.standard_normal((3, 5))
    # With a constant cotangent (what checking ``.sum()`` amounts to) the bug is invisible:
    t = Tensor(x, requires_grad=True)
    apply("softmax_blind_spot", t).backward(np.ones((3, 5)))
    np.testing.assert_allclose(t.grad, 0.0, atol=1e-15)
    # ... while the random cotangent exposes it.
    report = gradcheck(lambda t: apply("softmax_blind_spot", t), [x], seed=seed, raise_on_failure=False)
    assert not report.passed and report.worst_rel_error > 1e-2


def test_only_inputs_that_require_grad_are_checked(rng, seed):
    a = Tensor(rng.standard_normal(3), requires_grad=True)
    b = Tensor(rng.standard_normal(3))
    report = gradcheck(lambda x, y: x * y, [a, b], seed=seed)
    assert set(report.per_input) == {0}


def test_the_callers_tensors_are_left_untouched(rng, seed):
    a = Tensor(rng.standard_normal(4), requires_grad=True)
    before = a.data.copy()
    gradcheck(lambda x: F.softmax(x), [a], seed=seed)
    assert a.grad is None
    np.testing.assert_array_equal(a.data, before)


def test_the_same_seed_replays_the_same_report(rng):
    x = rng.standard_normal((2, 3))
    first = gradcheck(lambda t: t.exp(), [x], seed=42)
    second = gradcheck(lambda t: t.exp(), [x], seed=42)
    assert first == second


@pytest.mark.parametrize(
    "inputs, fn, error, pattern",
    [
        ([np.ones(3, dtype=np.float32)], lambda t: t, TypeError, "float64"),
        ([Tensor(np.ones(3))], lambda t: t, ValueError, "no input requires grad"),
        ([np.ones(3)], lambda t: t.data, TypeError, "float64 Tensor"),
    ],
)
def test_gradcheck_rejects_what_it_cannot_check(inputs, fn, error, pattern):
    with pytest.raises(error, match=pattern):
        gradcheck(fn, inputs, seed=0)
