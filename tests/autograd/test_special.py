"""erf/erfc (NumPy has neither) against the standard library's, elementwise."""

import math

import numpy as np
import pytest

from flashref.autograd.special import erf, erfc


def test_erf_matches_math_erf_on_a_dense_grid():
    x = np.linspace(-26.0, 26.0, 100_001)
    expected = np.array([math.erf(v) for v in x])
    nonzero = expected != 0
    relative = np.abs(erf(x) - expected)[nonzero] / np.abs(expected[nonzero])
    assert relative.max() < 5e-15
    assert erf(np.array(0.0)) == 0.0


def test_erf_is_accurate_near_zero_where_it_is_linear():
    x = np.geomspace(1e-300, 1e-3, 200)
    expected = np.array([math.erf(v) for v in x])
    assert np.max(np.abs(erf(x) - expected) / expected) < 5e-15


def test_erfc_keeps_relative_accuracy_in_the_tail():
    x = np.linspace(-6.0, 26.0, 50_001)
    expected = np.array([math.erfc(v) for v in x])
    positive = expected > 0
    relative = np.abs(erfc(x) - expected)[positive] / expected[positive]
    assert relative.max() < 1e-13


@pytest.mark.parametrize(
    "x, erf_value, erfc_value",
    [(np.inf, 1.0, 0.0), (-np.inf, -1.0, 2.0), (40.0, 1.0, 0.0), (-40.0, -1.0, 2.0)],
)
def test_infinite_and_huge_arguments_saturate(x, erf_value, erfc_value):
    assert erf(np.array([x]))[0] == erf_value
    assert erfc(np.array([x]))[0] == erfc_value


def test_nan_propagates():
    assert np.isnan(erf(np.array([np.nan]))).all()
    assert np.isnan(erfc(np.array([np.nan]))).all()


def test_float32_in_float32_out(rng):
    x = rng.standard_normal(100).astype(np.float32)
    out = erf(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [math.erf(v) for v in x.astype(np.float64)], rtol=1e-6, atol=1e-7)
