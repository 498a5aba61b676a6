"""The FP8 forward's cases: a dense ``Case`` with dtype "float8_e4m3fn", judged forward only.

For one such case ``check_fp8_case`` draws the dense family's seeded float32 inputs, quantizes
q, k, v to float8 e4m3 per (batch, kv head) (``descale = amax / 448``, FA3's convention: the
real value is ``fp8 * descale``), and runs

- ``ref``: the float64 oracle on the *dequantized* inputs (``fp8 * descale``, exact in
  float64), so the quantization of the inputs is the problem, not an error;
- ``base``: the obvious FP8 attention (``fp8_baseline_attention``): S from the FP8 inputs
  upcast to float32, scaled by the descales and the softmax scale, softmax in float32, the
  normalised P rounded to e4m3, P V with float32 accumulation, times v's descale, out
  bfloat16;
- ``algo``: FA3's algorithm in torch (``fp8_algorithm_attention``): P = exp(S - rowmax) 2^8
  rounded to e4m3, divided by the float32 sum of the unrounded P (the RMS criterion's and lse's
  baseline);
- ``kernel``: ``flash_attention`` on the FP8 tensors (NaN-poisoned buffers).

out is judged by the rule (rule.py) with the slack ``fp8_magnitudes`` derives from e4m3's unit
roundoff ``u8 = 2^-4``: the rounding of P that no FP8 P V product can avoid, plus the float32
and bfloat16 terms of the 16-bit rule; lse as the dense family judges it (float32 only: S has
exact products of FP8 values). docs/design.md, "FP8", says what this promises and what it
cannot see.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import numpy as np

from . import dense
from .cases import TILE_LAUNCHES, Case
from .results import CaseResult
from .rule import (FACTORS, FP8, LAMBDA, U32, U_E4M3, as_float64, half_ulp, judge, max_abs_error, max_or_zero,
                   rms_check)

# e4m3's largest finite value: the quantizer maps each (batch, kv head)'s amax onto it.
E4M3_MAX = 448.0
# FA3's Max_offset: the kernel's P is exp2(s - m + 8), in [0, 2^8] (kernels/attention_forward.py).
P_OFFSET_SCALE = 256.0
# The smallest normal e4m3 number is 2^-6 and the subnormal spacing 2^-9: a P of the kernel
# (2^8 exp(s - m), m the running max) below 2^-6 errs by at most 2^-10 absolute, i.e. 2^-18 in
# units of the row's largest weight (exp(s - m) <= 1 after the 2^8 is removed).
SUBNORMAL_FLOOR = 2.0**-18
# The obvious baseline's error is at most sum_j half_ulp_e4m3(P_ij) |v_j| (plus float32 and the
# bfloat16 output): a baseline above BASELINE_CEILING_FP8 times that is broken, not FP8.
BASELINE_CEILING_FP8 = 2.0


@dataclasses.dataclass(frozen=True)
class Fp8Inputs:
    """One FP8 case's inputs: q (B, Hq, Lq, D), k, v (B, Hkv, Lk, D) float8_e4m3fn; descales
    (B, Hkv) float32 each; kv_lens, sinks as the dense family's."""

    q: Any
    k: Any
    v: Any
    q_descale: Any
    k_descale: Any
    v_descale: Any
    kv_lens: Any = None
    sinks: Any = None

    def dequantized(self, group: int) -> tuple:
        """(q, k, v) as float64 torch tensors: ``fp8 * descale`` (exact), q's descale per kv head
        repeated over its ``group`` query heads."""
        qd = self.q_descale.double().repeat_interleave(group, dim=1)[..., None, None]
        return (self.q.double() * qd, self.k.double() * self.k_descale.double()[..., None, None],
                self.v.double() * self.v_descale.double()[..., None, None])


def quantize(x, group: int = 1):
    """x (B, H, L, D) float32 -> (x8 float8_e4m3fn, descale (B, H // group) float32): one descale
    per (batch, kv head) over the ``group`` heads that share it, ``amax / 448`` (1 for an all-zero
    slice), so that ``x8 * descale`` is x rounded to e4m3 relative to its largest entry."""
    import torch

    b, h = x.shape[:2]
    amax = x.reshape(b, h // group, -1).abs().amax(dim=-1) if x.numel() else torch.zeros(b, h // group)
    descale = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax)).float()
    scaled = x / descale.repeat_interleave(group, dim=1)[..., None, None]
    return scaled.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), descale


def make_fp8_inputs(case: Case, device: str = "cpu") -> Fp8Inputs:
    """The dense family's seeded float32 inputs of this case (``dense.make_inputs``), q, k, v
    quantized per (batch, kv head) (``quantize``)."""
    drawn = dense.make_inputs(dataclasses.replace(case, dtype="float32"), "cpu")
    group = case.heads_q // case.heads_kv
    (q8, qd), (k8, kd), (v8, vd) = quantize(drawn.q, group), quantize(drawn.k), quantize(drawn.v)
    return Fp8Inputs(*(t.to(device) for t in (q8, k8, v8, qd, kd, vd)),
                     kv_lens=drawn.kv_lens if drawn.kv_lens is None else drawn.kv_lens.to(device),
                     sinks=drawn.sinks if drawn.sinks is None else drawn.sinks.to(device))


def dequantized_inputs(case: Case, inputs: Fp8Inputs) -> dense.CaseInputs:
    """The dequantized problem as the dense family's inputs (float64; dout zeros: forward only)."""
    import torch

    q, k, v = inputs.dequantized(case.heads_q // case.heads_kv)
    return dense.CaseInputs(q, k, v, torch.zeros_like(q), inputs.kv_lens, sinks=inputs.sinks)


def _kwargs(case: Case, inputs: Fp8Inputs) -> dict:
    kw = dict(causal=case.causal, causal_alignment=case.causal_alignment, kv_lens=inputs.kv_lens)
    if case.window != (-1, -1):
        kw["window_size"] = case.window
    if inputs.sinks is not None:
        kw["sinks"] = inputs.sinks
    return kw


def _scores(case: Case, inputs: Fp8Inputs):
    """(S (B, Hq, Lq, Lk) float32 with -inf where invisible, v (B, Hq, Lk, D) float32 as fp8,
    v's descale (B, Hq, 1, 1), the sink logits (1, Hq, 1, 1) or None): S from the FP8 q, k
    upcast, times the descales and the softmax scale, float32 IEEE matmuls."""
    import torch

    from flashref.reference import attention_mask

    group = case.heads_q // case.heads_kv
    kw = _kwargs(case, inputs)
    mask_kw = {key: (v.cpu().numpy() if isinstance(v, torch.Tensor) else v) for key, v in kw.items()
               if key in dense.MASK_KEYWORDS}
    visible = attention_mask(case.seqlen_q, case.seqlen_k, batch=max(case.batch, 1), **mask_kw)
    mask = torch.from_numpy(np.ascontiguousarray(visible)).to(inputs.q.device)
    k = inputs.k.float().repeat_interleave(group, dim=1)
    v = inputs.v.float().repeat_interleave(group, dim=1)
    qk_descale = (inputs.q_descale.repeat_interleave(group, dim=1)
                  * inputs.k_descale.repeat_interleave(group, dim=1))[..., None, None]
    with dense.float32_matmuls_in_ieee():
        raw = inputs.q.float() @ k.transpose(-1, -2)
    scores = (raw * (qk_descale * (1.0 / math.sqrt(case.head_dim)))).masked_fill(~mask, float("-inf"))
    sink = None if inputs.sinks is None else inputs.sinks.float()[None, :, None, None]
    return scores, v, inputs.v_descale.repeat_interleave(group, dim=1)[..., None, None], sink


def fp8_baseline_attention(case: Case, inputs: Fp8Inputs) -> dict:
    """The obvious FP8 attention, torch in float32: {"out"} bfloat16. ``P = softmax(S)``
    (normalised, with the sink's column), rounded to e4m3 (torch's nearest-even cast), P V in
    float32 on the fp8 values of v, times v's descale. A row that sees nothing outputs 0."""
    import torch

    scores, v, v_descale, sink = _scores(case, inputs)
    if sink is not None:
        scores = torch.cat([scores, sink.expand(*scores.shape[:3], 1)], dim=-1)
    empty = torch.isinf(scores).all(dim=-1, keepdim=True)
    probs = torch.softmax(scores.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)
    if sink is not None:
        probs = probs[..., :-1]
    with dense.float32_matmuls_in_ieee():
        out = (probs.to(torch.float8_e4m3fn).float() @ v) * v_descale
    return dict(out=out.to(torch.bfloat16))


def fp8_algorithm_attention(case: Case, inputs: Fp8Inputs, p_dtype=None) -> dict:
    """FA3's FP8 algorithm, torch in float32 with the global row max: {"out" bfloat16, "lse"
    float32}. ``P~ = 2^8 exp(S - m)`` (m the row max, with the sink) rounded to ``p_dtype``
    (default e4m3; the gate's own tests pass a coarser one), ``out = v_descale (q8(P~) V) / l``
    with ``l`` the float32 sum of the unrounded P~ (and the sink's), ``lse = m + log(l / 2^8)``."""
    import torch

    p_dtype = torch.float8_e4m3fn if p_dtype is None else p_dtype
    scores, v, v_descale, sink = _scores(case, inputs)
    m = scores.amax(dim=-1, keepdim=True)
    if sink is not None:
        m = torch.maximum(m, sink.expand_as(m))
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    p = torch.exp(scores - m) * P_OFFSET_SCALE
    total = p.sum(dim=-1, keepdim=True) + (0.0 if sink is None else torch.exp(sink - m) * P_OFFSET_SCALE)
    seen = total > 0
    safe = torch.where(seen, total, torch.ones_like(total))
    with dense.float32_matmuls_in_ieee():
        out = (p.to(p_dtype).float() @ v) * v_descale / safe
    lse = torch.where(seen, m + torch.log(safe / P_OFFSET_SCALE), torch.full_like(total, float("-inf")))
    return dict(out=out.to(torch.bfloat16), lse=lse[..., 0])


def kernel_fp8_attention(case: Case, inputs: Fp8Inputs) -> dict:
    """``flashref.kernels.flash_attention`` on the FP8 inputs, NaN-poisoned buffers, the case's
    forced forward tile under the interpreter: {"out", "lse", "path"}."""
    from flashref.kernels import flash_attention, poisoned_outputs
    from flashref.kernels.config_dispatch import forced_configs
    from flashref.kernels.launch import INTERPRETED
    from flashref.kernels.tile_tables import KernelConfig

    tiles = {}
    if case.tiles and INTERPRETED:
        tiles = {name: KernelConfig(m, n, 1, 1) for name, (m, n) in zip(TILE_LAUNCHES, case.tiles)}
    with poisoned_outputs(), forced_configs(tiles):
        out, lse = flash_attention(inputs.q, inputs.k, inputs.v, return_lse=True, q_descale=inputs.q_descale,
                                   k_descale=inputs.k_descale, v_descale=inputs.v_descale, **_kwargs(case, inputs))
    return dict(out=out, lse=lse, path="pointer")


def fp8_magnitudes(case: Case, ref: dict, deq: dense.CaseInputs) -> dict[str, np.ndarray]:
    """out's error terms (float64, out's shape) beyond the 16-bit rule's, from the oracle:

    - ``"p_rounding"``: what rounding P to e4m3 adds, ``min(E |V|, LAMBDA sqrt(E^2 V^2))`` with
      ``E_ij = u8 P_ij + 2^-18`` on visible keys (a normal e4m3 rounding errs by at most ``u8``
      relative, a subnormal one by ``2^-18`` of the row's largest weight; P normalised, V
      dequantized), without the ``u8`` term at the row's largest score (the kernel's weight
      there is exactly 2^8: a row that sees one key has no P rounding at all). The kernel's l sums the unrounded P, so the roundings do not renormalise.
      Separate roundings for every (i, j): independent, so the root-sum-square bound (LAMBDA
      deviations, rule.LAMBDA's odds) is the smaller one once a few keys add up;
    - ``"baseline_p_rounding"``: the sure bound of the obvious baseline's own rounding of the
      normalised P, ``sum_j half_ulp_e4m3(P_ij) |v_j|`` (its subnormals, below 2^-6, are
      absolute errors up to 2^-10: long rows of small weights), the ceiling's scale."""
    from flashref.reference.attention import expand_kv_heads, probabilities_from_lse, score_tile
    from flashref.reference.attention_inputs import check_attention_inputs

    q, k, v = (as_float64(t) for t in (deq.q, deq.k, deq.v))
    kw = dense._for_oracle(dense.attention_kwargs(dataclasses.replace(case, dtype="float32"), deq))
    spec = check_attention_inputs(q.shape, k.shape, v.shape, **kw)
    v_full = expand_kv_heads(v, spec.group)
    scores, _ = score_tile(q, expand_kv_heads(k, spec.group), spec)
    probs = probabilities_from_lse(scores, ref["lse"])
    # The row's largest weight is 2^8 exp(0) = 2^8 in the kernel (its block sets the running max):
    # exact in e4m3, so it carries no u8 term.
    row_max = np.isfinite(scores) & (scores == np.max(scores, axis=-1, keepdims=True, initial=-np.inf))
    e = U_E4M3 * probs * ~row_max + SUBNORMAL_FLOOR * np.isfinite(scores)
    p_rounding = np.minimum(e @ np.abs(v_full), LAMBDA * np.sqrt((e**2) @ v_full**2))
    baseline = np.where(np.isfinite(scores), half_ulp(probs, FP8), 0.0) @ np.abs(v_full)
    return dict(p_rounding=p_rounding, baseline_p_rounding=baseline)


def check_fp8_case(case: Case, device: str = "cpu") -> CaseResult:
    """Run one FP8 case through kernel, baselines and oracle (module docstring) and judge out
    and lse."""
    from flashref.reference import attention_forward

    start = time.perf_counter()
    inputs = make_fp8_inputs(case, device)
    deq = dequantized_inputs(case, inputs)
    case16 = dataclasses.replace(case, dtype="bfloat16")  # out is stored in bfloat16
    kw = dense._for_oracle(dense.attention_kwargs(case16, deq))
    out, lse = attention_forward(*(as_float64(t) for t in (deq.q, deq.k, deq.v)), **kw)
    ref = dict(out=out, lse=lse)
    base = fp8_baseline_attention(case, inputs)
    algo = fp8_algorithm_attention(case, inputs)
    kern = kernel_fp8_attention(case, inputs)
    errors = judge_fp8(case, deq, ref, base, kern, algo)
    return CaseResult(case, errors, time.perf_counter() - start, path=kern["path"])


def judge_fp8(case: Case, deq: dense.CaseInputs, ref: dict, base: dict, kern: dict, algo: dict) -> dict:
    """out by the rule with the FP8 slack (``fp8_magnitudes``) and ceiling, plus the RMS
    criterion against FA3's algorithm; lse as the dense family judges it."""
    case16 = dataclasses.replace(case, dtype="bfloat16")
    mags16 = dense.magnitudes(case16, deq, ref)  # float32 terms of out, lse (dout is zero: forward only)
    fp8 = fp8_magnitudes(case, ref, deq)
    out_ref = ref["out"]
    rounding = max_or_zero(half_ulp(out_ref, "bfloat16"))
    slack = max_or_zero(fp8["p_rounding"]) + U32 * max_or_zero(mags16["out"]) + rounding
    ceiling = (BASELINE_CEILING_FP8 * max_or_zero(fp8["baseline_p_rounding"]) + U32 * max_or_zero(mags16["out"])
               + rounding)
    rms = rms_check(FP8, kern["out"], algo["out"], out_ref, fp8["p_rounding"] + U32 * mags16["out"])
    errors = dict(out=judge(max_abs_error(kern["out"], out_ref), max_abs_error(base["out"], out_ref), FACTORS["out"],
                            slack, ceiling, rms, max_abs_error(algo["out"], out_ref)))
    errors.update(dense.judge_all(case16, deq, ref, {}, {"lse": kern["lse"]}, {"lse": algo["lse"]}))
    return errors


__all__ = ["BASELINE_CEILING_FP8", "E4M3_MAX", "Fp8Inputs", "check_fp8_case", "dequantized_inputs", "fp8_algorithm_attention",
           "fp8_baseline_attention", "fp8_magnitudes", "judge_fp8", "kernel_fp8_attention", "make_fp8_inputs",
           "quantize"]
