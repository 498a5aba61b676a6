"""Rounding float32 tiles to the input dtype, identically on a GPU and under the interpreter.

A GPU rounds float32 -> bfloat16 to nearest-even (``cvt.rn.bf16.f32``). Triton's interpreter
(seen with 3.6 and 3.9) truncates instead: ``0.99999994`` becomes ``0.99609375`` rather than
``1.0``, an error of one bfloat16 ulp in a direction that never averages out (a softmax
weight of 1 comes out 0.4% low, every time). Under the interpreter the kernels therefore round
bfloat16 by hand, on the float32 bit pattern, and keep the (exactly representable) result in
float32 for the following ``tl.dot`` (whose bfloat16 operands the interpreter gets wrong
anyway, see ``UPCAST`` in attention_forward.py). float16 conversion is right in both.
float32 -> float8 e4m3 is wrong there too (ties away from zero, subnormals flushed to 0, where
a GPU's ``cvt.rn.satfinite.e4m3x2.f32`` rounds to nearest-even with subnormals): rounded by
hand as well.
"""

import triton
import triton.language as tl


@triton.jit
def round_to_bfloat16_nearest_even(x):
    """float32 x -> the nearest bfloat16 value (ties to even), still stored as float32."""
    bits = x.to(tl.uint32, bitcast=True)
    # Add half an ulp of bfloat16 (0x7FFF, plus 1 when the kept part is odd) then drop the low
    # 16 bits; inf stays inf, an overflow past the largest bfloat16 becomes inf as on a GPU.
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def round_to_e4m3_nearest_even(x):
    """float32 x -> the nearest float8 e4m3fn value (ties to even, subnormals kept, |x| past
    448 saturated to 448 as ``satfinite``), still stored as float32."""
    ax = tl.minimum(tl.abs(x), 448.0)
    bits = ax.to(tl.uint32, bitcast=True)
    # Normal range (|x| >= 2^-6): keep 3 mantissa bits of float32's 23, half-ulp trick as above.
    normal = (((bits + 0x7FFFF + ((bits >> 20) & 1)) >> 20) << 20).to(tl.float32, bitcast=True)
    # Subnormals are multiples of 2^-9: adding 2^14 (whose float32 ulp is 2^-9) rounds to one.
    sub = (ax + 16384.0) - 16384.0
    r = tl.where(ax < 0.015625, sub, normal)
    return tl.where(x < 0.0, -r, r)


@triton.jit
def to_dot_operand(x, DTYPE: tl.constexpr, UPCAST: tl.constexpr):
    """A float32 tile rounded to the input dtype for a tensor-core ``tl.dot``; under the
    interpreter (UPCAST) the rounded values are handed over as float32."""
    if UPCAST:
        if DTYPE == tl.bfloat16:
            return round_to_bfloat16_nearest_even(x)
        elif DTYPE == tl.float8e4nv:
            return round_to_e4m3_nearest_even(x)
        else:
            return x.to(DTYPE).to(tl.float32)
    else:
        return x.to(DTYPE)


@triton.jit
def to_output(x, DTYPE: tl.constexpr, UPCAST: tl.constexpr):
    """A float32 result converted to the dtype it is stored in, rounded to nearest-even."""
    if UPCAST:
        if DTYPE == tl.bfloat16:
            return round_to_bfloat16_nearest_even(x).to(DTYPE)
        else:
            return x.to(DTYPE)
    else:
        return x.to(DTYPE)
