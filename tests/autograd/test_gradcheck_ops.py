"""Every primitive and composite against central differences (float64, random cotangent).

The op table is :data:`flashref.autograd.opcheck.OP_CASES`, the same one
``flashref audit gradcheck`` prints; here each case runs on fresh seeded inputs, and
property tests vary shapes and broadcasting.
"""

import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes

import flashref.autograd.functional as F
from flashref.autograd import REGISTRY, Tensor, gradcheck
from flashref.autograd.opcheck import OP_CASES, check_all_ops, check_case

# A cast to float32 cannot be finite-differenced in float64; tests/autograd/test_engine.py checks it.
NOT_FINITE_DIFFERENCED = {"cast"}


@pytest.mark.parametrize("case", OP_CASES, ids=[c.name for c in OP_CASES])
def test_op_matches_central_differences(case, seed):
    result = check_case(case, seed)
    assert result.passed, f"{case.name}: worst relative error {result.worst_rel_error:.3e} (seed {seed})"
    assert result.worst_rel_error < 1e-6


def test_every_registered_primitive_has_a_case():
    covered = {re.sub(r"^F\.|\[.*\]$", "", case.name) for case in OP_CASES}
    missing = set(REGISTRY) - covered - NOT_FINITE_DIFFERENCED
    assert not missing, f"primitives without a gradient check: {sorted(missing)}"


def test_check_all_ops_reports_one_passing_row_per_case():
    results = check_all_ops(seed=3)
    assert [r.op for r in results] == [c.name for c in OP_CASES]
    assert all(r.passed and r.worst_rel_error < 1e-6 for r in results)


small_seeds = st.integers(0, 2**32 - 1)
SETTINGS = settings(max_examples=15, deadline=None)


@SETTINGS
@given(
    shapes=mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3),
    op=st.sampled_from(["add", "sub", "mul", "div"]),
    seed=small_seeds,
)
def test_binary_ops_undo_broadcasting(shapes, op, seed):
    rng = np.random.default_rng(seed)
    a_shape, b_shape = shapes.input_shapes
    a = rng.standard_normal(a_shape)
    b = rng.choice([-1.0, 1.0], b_shape) * rng.uniform(0.5, 2.0, b_shape)
    fn = {
        "add": lambda x, y: x + y,
        "sub": lambda x, y: x - y,
        "mul": lambda x, y: x * y,
        "div": lambda x, y: x / y,
    }[op]
    out = fn(Tensor(a), Tensor(b))
    assert out.shape == shapes.result_shape
    gradcheck(fn, [a, b], seed=seed)


@SETTINGS
@given(
    batch=mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=2, max_side=3),
    m=st.integers(1, 3), k=st.integers(1, 4), n=st.integers(1, 3),
    vector=st.sampled_from([None, "a", "b"]),
    seed=small_seeds,
)
def test_matmul_batches_broadcast_and_vectors(batch, m, k, n, vector, seed):
    rng = np.random.default_rng(seed)
    a_shape = (k,) if vector == "a" else batch.input_shapes[0] + (m, k)
    b_shape = (k,) if vector == "b" else batch.input_shapes[1] + (k, n)
    a, b = rng.standard_normal(a_shape), rng.standard_normal(b_shape)
    np.testing.assert_allclose((Tensor(a) @ Tensor(b)).data, a @ b, rtol=1e-14, atol=1e-14)
    gradcheck(lambda x, y: x @ y, [a, b], seed=seed)


AXES = [None, 0, 1, 2, -1, (0, 2), (1, -1), (0, 1, 2)]


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", AXES, ids=str)
@pytest.mark.parametrize("op", ["sum", "mean", "max"])
def test_reductions_over_every_axis_and_keepdims(op, axis, keepdims, rng, seed):
    x = rng.permutation(24).reshape(2, 3, 4) * 0.1 + rng.uniform(-0.01, 0.01, (2, 3, 4))
    ours = getattr(Tensor(x), op)(axis=axis, keepdims=keepdims)
    np.testing.assert_allclose(ours.data, getattr(np, op)(x, axis=axis, keepdims=keepdims), rtol=1e-15)
    gradcheck(lambda t: getattr(t, op)(axis=axis, keepdims=keepdims), [x], seed=seed)


@pytest.mark.parametrize("axis", [None, 0, -1, (0, 1)], ids=str)
@pytest.mark.parametrize("keepdims", [False, True])
def test_logsumexp_over_every_axis_and_keepdims(axis, keepdims, rng, seed):
    x = rng.standard_normal((3, 4))
    gradcheck(lambda t: F.logsumexp(t, axis=axis, keepdims=keepdims), [x], seed=seed)


@SETTINGS
@given(
    lead=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    normalized=st.lists(st.integers(2, 4), min_size=1, max_size=2),
    affine=st.booleans(),
    seed=small_seeds,
)
def test_layer_norm_over_varied_shapes(lead, normalized, affine, seed):
    rng = np.random.default_rng(seed)
    shape = tuple(normalized)
    x = rng.standard_normal(tuple(lead) + shape) * 3.0 + 1.0
    params = [rng.standard_normal(shape), rng.standard_normal(shape)] if affine else []
    gradcheck(lambda x, *p: F.layer_norm(x, shape, *p), [x, *params], seed=seed)


@SETTINGS
@given(
    rows=st.integers(1, 4), classes=st.integers(2, 5),
    smoothing=st.sampled_from([0.0, 0.1, 0.5]),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    seed=small_seeds,
)
def test_cross_entropy_over_varied_shapes(rows, classes, smoothing, reduction, seed):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, classes, rows)
    target[rng.random(rows) < 0.3] = -100
    logits = rng.standard_normal((rows, classes)) * 2.0
    gradcheck(
        lambda z: F.cross_entropy(z, target, label_smoothing=smoothing, reduction=reduction),
        [logits], seed=seed,
    )


@SETTINGS
@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    data=st.data(),
    name=st.sampled_from(["softmax", "log_softmax", "logsumexp"]),
    seed=small_seeds,
)
def test_softmax_family_along_any_axis(shape, data, name, seed):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    x = np.random.default_rng(seed).standard_normal(shape) * 2.0
    gradcheck(lambda t: getattr(F, name)(t, axis=axis), [x], seed=seed)


@SETTINGS
@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    data=st.data(),
    seed=small_seeds,
)
def test_joining_and_splitting_along_any_axis(shape, data, seed):
    from flashref.autograd import concatenate, split, stack

    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal(shape), rng.standard_normal(shape)
    cut = data.draw(st.integers(0, shape[axis]), label="cut")

    def join_then_split(x, y):
        joined = concatenate([x, y * y], axis=axis) * stack([x, y], axis=axis).sum(axis=axis).exp().sum()
        first, second = split(joined, [cut], axis=axis)
        return concatenate([second, first * 3.0], axis=axis)

    gradcheck(join_then_split, [a, b], seed=seed)
