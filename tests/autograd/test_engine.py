"""The graph and reverse mode: accumulation, reuse, repeat backward, depth, modes, errors."""

import numpy as np
import pytest

from flashref.autograd import Tensor, is_grad_enabled, no_grad, tensor
import flashref.autograd.functional as F


def leaf(array) -> Tensor:
    return Tensor(np.asarray(array, dtype=np.float64), requires_grad=True)


def test_gradient_of_a_reused_node_sums_every_use():
    x = leaf([1.0, 2.0, 3.0])
    y = x * x + x  # x used three times; y' = 2x + 1
    z = (y * y).sum()  # y used twice
    z.backward()
    np.testing.assert_allclose(x.grad, 2 * (x.data**2 + x.data) * (2 * x.data + 1))


def test_diamond_graph_counts_each_path_once():
    x = leaf([0.5, -1.0])
    a = x.exp()
    b = a * 2.0
    c = a * 3.0
    (b + c).sum().backward()
    np.testing.assert_allclose(x.grad, 5.0 * np.exp(x.data))


def test_backward_twice_on_a_fresh_graph_accumulates_exactly_twice():
    x = leaf([1.0, -2.0, 0.5])
    w = leaf([[0.3], [0.2], [-0.1]])
    loss = F.softmax((x[None, :] @ w).tanh() * x, axis=-1).sum() + (x * x * x).sum()
    loss.backward()
    once_x, once_w = x.grad.copy(), w.grad.copy()
    loss.backward()
    np.testing.assert_allclose(x.grad, 2 * once_x, rtol=1e-15)
    np.testing.assert_allclose(w.grad, 2 * once_w, rtol=1e-15)


def test_gradients_accumulate_across_graphs_until_zero_grad():
    x = leaf([1.0, 2.0])
    (x * 3.0).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad, 3.0 + 2 * x.data)
    x.zero_grad()
    assert x.grad is None
    (x * 3.0).sum().backward()
    np.testing.assert_allclose(x.grad, [3.0, 3.0])


def test_intermediates_keep_no_grad_unless_retained():
    x = leaf([1.0, 2.0])
    hidden = x * x
    kept = hidden * 2.0
    kept.retain_grad()
    kept.sum().backward()
    assert hidden.grad is None
    np.testing.assert_allclose(kept.grad, [1.0, 1.0])
    np.testing.assert_allclose(x.grad, 4 * x.data)
    assert x.is_leaf and not hidden.is_leaf


def test_leaf_grad_never_aliases_the_seed_or_another_leaf():
    a, b = leaf([1.0, 2.0]), leaf([3.0, 4.0])
    seed = np.array([1.0, 1.0])
    (a + b).backward(seed)
    a.grad += 10.0
    np.testing.assert_allclose(b.grad, [1.0, 1.0])
    np.testing.assert_allclose(seed, [1.0, 1.0])


def test_a_graph_one_hundred_thousand_deep_needs_no_recursion():
    x = leaf(1.5)
    y = x
    for _ in range(100_000):
        y = y + x  # 10^5 levels deep, and x reused at every level
    y.backward()
    assert x.grad == 100_001.0
    del y  # freeing the chain must not overflow the C stack either


def test_no_grad_records_nothing_and_restores_the_mode():
    x = leaf([1.0, 2.0])
    with no_grad():
        assert not is_grad_enabled()
        y = x * 2.0
    assert is_grad_enabled()
    assert not y.requires_grad and y.is_leaf
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()


def test_no_grad_restores_the_mode_after_an_exception():
    with pytest.raises(ZeroDivisionError):
        with no_grad():
            1 / 0
    assert is_grad_enabled()


def test_detach_shares_data_and_cuts_the_graph():
    x = leaf([1.0, 2.0])
    d = (x * 2.0).detach()
    assert not d.requires_grad
    y = (d * x).sum()
    y.backward()
    np.testing.assert_allclose(x.grad, d.data)


def test_constants_do_not_collect_gradients():
    x = leaf([1.0, 2.0])
    c = Tensor([3.0, 4.0])
    (x * c).sum().backward()
    assert c.grad is None


@pytest.mark.parametrize(
    "expression, expected",
    [
        (lambda x: 2.0 + x, [3.0, 4.0]),
        (lambda x: 2.0 - x, [1.0, 0.0]),
        (lambda x: 2.0 * x, [2.0, 4.0]),
        (lambda x: 2.0 / x, [2.0, 1.0]),
        (lambda x: np.array([1.0, 3.0]) + x, [2.0, 5.0]),
        (lambda x: np.array([1.0, 3.0]) * x, [1.0, 6.0]),
        (lambda x: np.array([[1.0, 3.0]]) @ x, [7.0]),
        (lambda x: x ** 2, [1.0, 4.0]),
        (lambda x: -x, [-1.0, -2.0]),
        (lambda x: x + np.array([1, 2]), [2.0, 4.0]),  # integer arrays take the tensor's dtype
    ],
)
def test_reflected_operators_with_scalars_and_arrays(expression, expected):
    out = expression(Tensor([1.0, 2.0]))
    assert isinstance(out, Tensor)
    np.testing.assert_allclose(out.data, expected)


def test_methods_and_properties():
    x = Tensor(np.arange(6.0).reshape(2, 3) + 1.0)
    assert x.shape == (2, 3) and x.ndim == 2 and x.dtype == np.float64 and x.size == 6
    np.testing.assert_allclose(x.T.data, x.data.T)
    np.testing.assert_allclose(x.transpose(1, 0).data, x.data.T)
    np.testing.assert_allclose(x.permute((1, 0)).data, x.data.T)
    np.testing.assert_allclose(x.swapaxes(0, 1).data, x.data.T)
    np.testing.assert_allclose(x.reshape(3, 2).data, x.data.reshape(3, 2))
    np.testing.assert_allclose(x.reshape((6,)).data, x.data.reshape(6))
    np.testing.assert_allclose(x.sqrt().log().exp().data, np.sqrt(x.data))
    assert Tensor([[2.5]]).item() == 2.5
    assert x.numpy() is x.data
    assert len(x) == 2
    assert "requires_grad=True" in repr(leaf([1.0]))


def test_float32_stays_float32_through_ops_and_backward():
    x = Tensor(np.ones((2, 3), dtype=np.float32), requires_grad=True)
    y = F.layer_norm(x * 2.0 + 1.0, 3)
    assert y.dtype == np.float32
    y.backward(np.ones((2, 3), dtype=np.float32))
    assert x.grad.dtype == np.float32


def test_cast_is_explicit_and_differentiable():
    x = leaf([1.0, 2.0])
    y = x.astype(np.float32)
    assert y.dtype == np.float32
    (y * 3.0).sum().backward()
    assert x.grad.dtype == np.float64
    np.testing.assert_allclose(x.grad, [3.0, 3.0])


def test_tensor_helper_defaults_to_float64():
    assert tensor([1, 2]).dtype == np.float64
    assert tensor(np.ones(2, dtype=np.float32)).dtype == np.float32
    assert tensor([1, 2], dtype=np.float32).dtype == np.float32
    assert tensor([1.0], requires_grad=True).requires_grad


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "expression, error, pattern",
    [
        (lambda: Tensor(np.ones(3)) + Tensor(np.ones(4)), ValueError, r"\(3,\).*\(4,\)"),
        (lambda: Tensor(np.ones((2, 3))) * Tensor(np.ones((4, 2))), ValueError, r"\(2, 3\).*\(4, 2\)"),
        (lambda: Tensor(np.ones((2, 3))) @ Tensor(np.ones((4, 2))), ValueError, r"a.shape=\(2, 3\) and b.shape=\(4, 2\).*3 != 4"),
        (lambda: Tensor(np.ones((2, 2, 3))) @ Tensor(np.ones((3, 3, 4))), ValueError, r"batch dimensions"),
        (lambda: Tensor(np.ones(6)).reshape(4, 2), ValueError, r"\(6,\).*\(4, 2\)"),
        (lambda: Tensor(np.ones(3)) + Tensor(np.ones(3, dtype=np.float32)), TypeError, r"mix dtypes.*float32.*float64"),
        (lambda: Tensor(np.ones(3)) + np.ones(3, dtype=np.float32), TypeError, r"float32.*float64"),
        (lambda: Tensor(np.ones(3, dtype=np.float16)), TypeError, r"float16"),
        (lambda: Tensor(np.ones(3)) ** Tensor(np.ones(3)), TypeError, r"exponent"),
        (lambda: Tensor(np.ones((2, 3))).sum(axis=2), ValueError, r"axis 2 is out of range"),
        (lambda: Tensor(np.ones((2, 3))).transpose(0, 0), ValueError, r"permutation"),
        (lambda: Tensor(np.ones(3)).item(), ValueError, r"one element"),
    ],
)
def test_bad_input_gets_a_clear_error(expression, error, pattern):
    with pytest.raises(error, match=pattern):
        expression()


def test_backward_on_a_non_scalar_without_grad_says_so():
    x = leaf([1.0, 2.0])
    with pytest.raises(RuntimeError, match=r"scalar.*shape \(2,\).*grad="):
        (x * 2.0).backward()


def test_backward_with_a_grad_of_the_wrong_shape_names_both_shapes():
    x = leaf([1.0, 2.0])
    with pytest.raises(ValueError, match=r"\(3,\).*\(2,\)"):
        (x * 2.0).backward(np.ones(3))


# Every primitive with several inputs, with sample inputs: (name, arrays, params).
MULTI_INPUT_PRIMITIVES = [
    ("add", [(3, 4), (4,)], {}),
    ("sub", [(3, 4), (4,)], {}),
    ("mul", [(3, 4), (4,)], {}),
    ("div", [(3, 4), (4,)], {}),
    ("matmul", [(2, 3, 4), (4, 5)], {}),
    ("where", [(3, 4), (4,)], {"cond": np.array([True, False, True, False])}),
    ("concatenate", [(2, 3), (4, 3), (1, 3)], {"axis": 0}),
    ("stack", [(2, 3), (2, 3), (2, 3)], {"axis": 1}),
    ("layer_norm", [(3, 4), (4,), (4,)], {"normalized_ndim": 1, "eps": 1e-5, "has_weight": True, "has_bias": True}),
]


@pytest.mark.parametrize("name, shapes, params", MULTI_INPUT_PRIMITIVES, ids=[c[0] for c in MULTI_INPUT_PRIMITIVES])
def test_every_primitive_returns_gradients_only_for_the_inputs_that_need_them(name, shapes, params, rng):
    from flashref.autograd.primitives import REGISTRY, Context

    primitive = REGISTRY[name]
    arrays = [rng.standard_normal(shape) + 3.0 for shape in shapes]  # + 3: no division by ~0
    for wanted in range(len(arrays)):
        needs = tuple(i == wanted for i in range(len(arrays)))
        ctx = Context(needs)
        out = primitive.forward(ctx, *arrays, **params)
        grads = primitive.backward(ctx, rng.standard_normal(out.shape))
        assert [g is not None for g in grads] == list(needs), f"{name}: needs {needs}"
        assert grads[wanted].shape == arrays[wanted].shape
