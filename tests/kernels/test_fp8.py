"""Specification of ``flash_attention``'s FP8 forward beyond the gate's sweep (whose FP8 cases,
dtype "float8_e4m3fn", run in tests/kernels/test_equivalence.py): the API's errors, the
forward-only contract, the kernel's e4m3 rounding under the interpreter, and a gate that fails
an FP8 kernel that rounds P coarser than FA3 does.
"""

import dataclasses

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from flashref.gate import Case
from flashref.gate.fp8 import (check_fp8_case, dequantized_inputs, fp8_algorithm_attention, fp8_baseline_attention,
                               judge_fp8, make_fp8_inputs)
from flashref.gate.rule import FP8
from flashref.kernels import INTERPRETED, flash_attention, hadamard_rotation, quantize_fp8
from flashref.kernels.rounding import round_to_e4m3_nearest_even
from flashref.reference import attention_forward

DEVICE = "cpu" if INTERPRETED else "cuda"
pytestmark = pytest.mark.skipif(not INTERPRETED and not torch.cuda.is_available(),
                                reason="needs a CUDA GPU or TRITON_INTERPRET=1")
TRITON_MAJOR_MINOR = tuple(int(p) for p in triton.__version__.split(".")[:2])


def fp8_inputs(seed, b=1, hq=2, hkv=1, lq=9, lk=13, d=16):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=gen).to(torch.float8_e4m3fn).to(DEVICE)
               for h, n in ((hq, lq), (hkv, lk), (hkv, lk)))
    scales = [(torch.rand(b, hkv, generator=gen) + 0.5).to(DEVICE) for _ in range(3)]
    return q, k, v, scales


@pytest.mark.interp
def test_fp8_output_is_bfloat16_by_default_or_out_dtype_and_matches_the_dequantized_oracle(seed):
    q, k, v, (qd, kd, vd) = fp8_inputs(seed)
    out = flash_attention(q, k, v, causal=True, q_descale=qd, k_descale=kd, v_descale=vd)
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    out32, lse = flash_attention(q, k, v, causal=True, q_descale=qd, k_descale=kd, v_descale=vd,
                                 out_dtype=torch.float32, return_lse=True)
    assert out32.dtype == torch.float32 and lse.dtype == torch.float32
    # The descales change the answer as the dequantized inputs do: compare with the gate's judge.
    case = Case(1, 2, 1, 9, 13, 16, FP8, True, "top_left", False, seed=seed)
    assert check_fp8_case(case).passed


@pytest.mark.interp
def test_fp8_backward_raises_a_clear_error(seed):
    q, k, v, (qd, kd, vd) = fp8_inputs(seed)
    q.requires_grad_()
    out = flash_attention(q, k, v, q_descale=qd, k_descale=kd, v_descale=vd)
    with pytest.raises(NotImplementedError, match="FP8 backward is not supported"):
        out.float().sum().backward()


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(q_descale=torch.ones(1, 2)), ValueError, r"q_descale must have shape \(batch, heads_kv\) = \(1, 1\)"),
    (dict(k_descale=torch.ones(1, 1, dtype=torch.float64)), TypeError, "k_descale must be float32"),
    (dict(v_descale=1.0), TypeError, "v_descale must be a torch.Tensor"),
    (dict(softcap=5.0), ValueError, "softcap is not supported with FP8"),
    (dict(alibi_slopes=torch.ones(2)), ValueError, "alibi_slopes is not supported with FP8"),
    (dict(dropout_p=0.1), ValueError, "dropout_p is not supported with FP8"),
    (dict(out_dtype=torch.float8_e4m3fn), TypeError, "out_dtype must be"),
])
def test_fp8_refuses_what_it_does_not_support(kwargs, error, match):
    q, k, v, _ = fp8_inputs(0)
    with pytest.raises(error, match=match):
        flash_attention(q, k, v, **kwargs)


def test_descales_on_16bit_inputs_and_e5m2_inputs_are_refused():
    q = torch.randn(1, 2, 4, 16)
    with pytest.raises(ValueError, match="are for float8_e4m3fn inputs"):
        flash_attention(q, q[:, :1], q[:, :1], q_descale=torch.ones(1, 1))
    q5 = q.to(torch.float8_e5m2)
    with pytest.raises(TypeError, match="float8_e4m3fn for flash_attention's FP8 forward"):
        flash_attention(q5, q5, q5)


@triton.jit
def _round_kernel(X, Y, N: tl.constexpr):
    offs = tl.arange(0, N)
    tl.store(Y + offs, round_to_e4m3_nearest_even(tl.load(X + offs)))


@pytest.mark.interp
@pytest.mark.smoke
def test_e4m3_rounding_is_a_gpus_nearest_even_cast(rng):
    """Under the interpreter P is rounded to e4m3 by hand (Triton's own cast there rounds ties
    away and flushes subnormals); it must be torch's (= a GPU's) round-to-nearest-even with
    subnormals, ties included."""
    exact = torch.arange(0, 0x7F, dtype=torch.uint8).view(torch.float8_e4m3fn).float()  # 0 .. 448 (0x7F: NaN)
    ties = (exact[:-1] + exact[1:]) / 2  # halfway between neighbours: ties to even
    draws = torch.from_numpy(rng.uniform(-460, 460, 512).astype(np.float32))
    small = torch.from_numpy(rng.uniform(-2**-5, 2**-5, 512).astype(np.float32))
    x = torch.cat([exact, -exact, ties, -ties, draws, small]).contiguous()
    n = triton.next_power_of_2(x.numel())
    xs = torch.cat([x, torch.zeros(n - x.numel())])
    y = torch.empty_like(xs)
    _round_kernel[(1,)](xs.to(DEVICE), y.to(DEVICE) if DEVICE == "cpu" else y.cuda(), N=n)
    expected = xs.clamp(-448, 448).to(torch.float8_e4m3fn).float()
    torch.testing.assert_close(y.cpu(), expected, rtol=0, atol=0)


def test_the_gate_fails_an_fp8_kernel_that_rounds_p_to_e5m2(seed):
    """The checker can fail: FA3's algorithm with P rounded to e5m2 (2 mantissa bits, u = 2^-3)
    instead of e4m3 stands in for the kernel. Its max-norm error stays inside the slack (P's
    rounding is what the slack allows), the RMS criterion against the e4m3 algorithm fails it."""
    case = Case(2, 2, 1, 64, 90, 64, FP8, False, "top_left", False, seed=seed)
    inputs = make_fp8_inputs(case)
    deq = dequantized_inputs(case, inputs)
    out, lse = attention_forward(*(t.numpy() for t in (deq.q, deq.k, deq.v)))
    ref = dict(out=out, lse=lse)
    algo = fp8_algorithm_attention(case, inputs)
    base = fp8_baseline_attention(case, inputs)
    good = judge_fp8(case, deq, ref, base, algo, algo)
    assert all(e.passed for e in good.values())
    coarse = fp8_algorithm_attention(case, inputs, p_dtype=torch.float8_e5m2)
    bad = judge_fp8(case, deq, ref, base, coarse, algo)
    assert not bad["out"].passed and bad["out"].rms.ratio > 1, bad["out"].describe("out")


def test_fp8_case_names_round_trip_and_refuse_unsupported_variants():
    case = Case(2, 3, 1, 97, 97, 32, FP8, True, "bottom_right", True, window=(19, 0), sinks=True)
    assert case.name == "b2-hq3-hkv1-lq97-lk97-d32-float8_e4m3fn-causal_bottom_right-kvlens-win19_0-sinks"
    assert Case.from_name(case.name) == case
    with pytest.raises(ValueError, match="FP8 case cannot have softcap"):
        dataclasses.replace(case, softcap=5.0)


def test_hadamard_rotation_is_orthogonal_and_leaves_scores_unchanged(seed):
    gen = torch.Generator().manual_seed(seed)
    r = hadamard_rotation(64, gen).double()
    torch.testing.assert_close(r @ r.T, torch.eye(64, dtype=torch.float64), rtol=0, atol=1e-12)
    q, k = torch.randn(2, 5, 64, generator=gen).double(), torch.randn(2, 7, 64, generator=gen).double()
    torch.testing.assert_close((q @ r) @ (k @ r).transpose(-1, -2), q @ k.transpose(-1, -2), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="power-of-two head_dim"):
        hadamard_rotation(40)


@pytest.mark.interp
def test_quantize_fp8_with_hadamard_cuts_the_error_of_inputs_with_outliers(seed):
    """bench/RESULTS.md's finding, at a test's size: a few large entries per row of q, k, v;
    end to end (quantization included) against the float64 oracle on the original inputs."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 4, 256, 64, generator=gen) for _ in range(3))  # long rows: bench: ~3x at 512
    for x in (q, k, v):
        cols = torch.rand(*x.shape, generator=gen).argsort(-1)[..., :3]
        x.scatter_(-1, cols, torch.randn(*x.shape[:-1], 3, generator=gen) * 10.0)
    ref, _ = attention_forward(q.double().numpy(), k.double().numpy(), v.double().numpy())

    def rms(hadamard):
        q8, k8, v8, qd, kd, vd = quantize_fp8(q, k, v, hadamard=hadamard, generator=gen)
        assert q8.dtype == torch.float8_e4m3fn and qd.shape == (1, 4) and qd.dtype == torch.float32
        out = flash_attention(q8, k8, v8, q_descale=qd, k_descale=kd, v_descale=vd, out_dtype=torch.float32)
        return float(np.sqrt(np.mean((out.double().numpy() - ref) ** 2)))

    assert rms(True) < rms(False) / 1.5
