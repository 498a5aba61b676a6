"""The torch log-sum-exp merge is the oracle's merge_attention, fully masked rows included."""

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from flashref.distributed import merge_attention
from flashref.reference import merge_attention as oracle_merge


@given(seed=st.integers(0, 2**31 - 1), rows=st.integers(1, 9), dim=st.integers(1, 5))
def test_merge_matches_the_oracle_with_empty_rows_and_never_nans(seed, rows, dim):
    gen = torch.Generator().manual_seed(seed)
    out_a, out_b = torch.randn(2, rows, dim, generator=gen, dtype=torch.float64).unbind(0)
    lse_a, lse_b = (10 * torch.randn(2, rows, generator=gen, dtype=torch.float64)).unbind(0)
    # Some rows saw no key on one side, some on both (out is 0 there, as the kernels write it).
    empty_a = torch.rand(rows, generator=gen) < 0.4
    empty_b = torch.rand(rows, generator=gen) < 0.4
    lse_a[empty_a], lse_b[empty_b] = float("-inf"), float("-inf")
    out_a[empty_a], out_b[empty_b] = 0.0, 0.0
    out, lse = merge_attention(out_a, lse_a, out_b, lse_b)
    ref_out, ref_lse = oracle_merge(out_a.numpy(), lse_a.numpy(), out_b.numpy(), lse_b.numpy())
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    np.testing.assert_allclose(out.numpy(), ref_out, rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(np.isneginf(lse.numpy()), np.isneginf(ref_lse))
    finite = np.isfinite(ref_lse)
    np.testing.assert_allclose(lse.numpy()[finite], ref_lse[finite], rtol=1e-13, atol=1e-13)
    both_empty = (empty_a & empty_b).numpy()
    assert (out.numpy()[both_empty] == 0).all()


def test_float32_accumulation_of_half_precision_partials():
    out_a, out_b = torch.randn(2, 3, 4, 8).to(torch.bfloat16).unbind(0)
    lse_a, lse_b = torch.randn(2, 3, 4).unbind(0)
    out, lse = merge_attention(out_a, lse_a, out_b, lse_b)
    assert out.dtype == torch.float32 and lse.dtype == torch.float32
