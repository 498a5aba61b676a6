"""The dense family: one ``Case``'s inputs, its three judges and the magnitudes behind its slack.

For one ``Case`` (shapes, dtype, masking, seed) ``check_case`` draws fresh seeded inputs, runs

- ``ref``: the float64 NumPy oracle (``flashref.reference.attention_forward``/``_backward``),
- ``base``: plain unfused attention computed by torch in the case's own dtype, its mask
  taken from the oracle's ``attention_mask`` and its float32 matmuls without TF32,
- ``algo``: the FlashAttention algorithm in float32 with the dtype's roundings where a fused
  kernel rounds (the RMS criterion's and lse's baseline), and
- ``kernel``: ``flashref.kernels.flash_attention`` with every output buffer NaN-poisoned
  (another implementation takes its place through ``flashref.gate.check``),

all on the same inputs (drawn once, rounded to the dtype, then widened for the oracle), and
judges each tensor by the rule of ``rule.py`` (docs/design.md) with the slack derived from
``magnitudes``: the unit roundoff ``u32 = 2^-24`` times the sum of the magnitudes of the terms
the kernel adds up (computed by the oracle on absolute values), plus the rounding of the
result to the output dtype.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from .cases import TILE_LAUNCHES, Case
from .results import CaseResult
from .rule import (DS_ROUNDING, FACTORS, LAMBDA, LSE_ROUNDING, TANH_ROUNDING, TENSORS, U32, TensorError,
                   as_float64, baseline_ceiling, finite_error, half_ulp, judge, max_abs_error, max_or_zero, rms_check,
                   rms_error, slack)

# ---------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class CaseInputs:
    """One case's inputs in the case's dtype (on ``device``) and its kv_lens (or None)."""

    q: Any
    k: Any
    v: Any
    dout: Any
    kv_lens: Any
    alibi_slopes: Any = None  # float32 (Hq,) or (B, Hq)
    sinks: Any = None  # float32 (Hq,)
    dropout_seed: int | None = None


def make_inputs(case: Case, device: str = "cpu") -> CaseInputs:
    """Seeded standard-normal q, k, v, dout (never zeros; q's standard deviation is the case's
    ``logit_scale``), drawn in float32 on the CPU so a seed gives the same numbers on every
    device, then rounded to the case's dtype. kv_lens, when on,
    are uniform in [0, seqlen_k] per batch (0 makes whole rows fully masked), the first batch
    at least half of seqlen_k."""
    import torch

    gen = torch.Generator().manual_seed(case.seed)
    dtype = getattr(torch, case.dtype)

    def draw(*shape):
        return torch.randn(*shape, generator=gen).to(dtype=dtype, device=device)

    q = draw(case.batch, case.heads_q, case.seqlen_q, case.head_dim) if case.logit_scale == 1.0 else \
        (torch.randn(case.batch, case.heads_q, case.seqlen_q, case.head_dim, generator=gen)
         * case.logit_scale).to(dtype=dtype, device=device)
    k = draw(case.batch, case.heads_kv, case.seqlen_k, case.head_dim)
    v = draw(case.batch, case.heads_kv, case.seqlen_k, case.value_head_dim)  # Dv: V, out, dout, dv
    dout = draw(case.batch, case.heads_q, case.seqlen_q, case.value_head_dim)
    kv_lens = None
    if case.kv_len_values:
        kv_lens = torch.tensor(case.kv_len_values).to(device)
    elif case.kv_lens:
        kv_lens = torch.randint(0, case.seqlen_k + 1, (case.batch,), generator=gen)
        # The first sequence keeps at least half its keys, so a case never collapses into
        # all-padding (every output 0) and passes without testing anything.
        kv_lens[:1] = kv_lens[:1].clamp(min=(case.seqlen_k + 1) // 2)
        kv_lens = kv_lens.to(device)
    # The variants' inputs are drawn after the plain ones, so a plain case's numbers do not move.
    alibi_slopes = sinks = dropout_seed = None
    if case.alibi:
        shape = (case.heads_q,) if case.alibi == "h" else (case.batch, case.heads_q)
        alibi_slopes = (torch.rand(*shape, generator=gen) * 0.5).to(device)  # ALiBi's slopes lie in (0, 1)
    if case.sinks:
        sinks = (torch.randn(case.heads_q, generator=gen) + 1.0).to(device)
    if case.dropout_p > 0:
        dropout_seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    return CaseInputs(q, k, v, dout, kv_lens, alibi_slopes, sinks, dropout_seed)


#: The keywords of ``attention_kwargs`` that decide which keys a query sees (what
#: ``flashref.reference.attention_mask`` takes); the others change the scores, not the mask.
MASK_KEYWORDS = ("causal", "causal_alignment", "kv_lens", "window_size")


def attention_kwargs(case: Case, inputs: CaseInputs) -> dict[str, Any]:
    """The attention keywords of this case, as the kernel takes them (torch tensors).

    The one place they are built: the oracle gets the same dict with tensors turned into
    NumPy arrays (``_for_oracle``) and the baseline reads its mask from the oracle with it."""
    kw = dict(causal=case.causal, causal_alignment=case.causal_alignment, kv_lens=inputs.kv_lens)
    # Variant keywords appear only when the variant is on (a plain case's call is unchanged).
    if case.window != (-1, -1):
        kw["window_size"] = case.window
    if case.softcap:
        kw["softcap"] = case.softcap
    if inputs.alibi_slopes is not None:
        kw["alibi_slopes"] = inputs.alibi_slopes
    if inputs.sinks is not None:
        kw["sinks"] = inputs.sinks
    if case.dropout_p > 0:
        kw.update(dropout_p=case.dropout_p, dropout_seed=inputs.dropout_seed)
    return kw


def _for_oracle(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    import torch

    return {k: (v.detach().cpu().double().numpy() if v.is_floating_point() else v.detach().cpu().numpy())
            if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


# ---------------------------------------------------------------------------- the three sides
def oracle_attention(case: Case, inputs: CaseInputs) -> dict[str, np.ndarray]:
    """The float64 oracle on the same (rounded) inputs: {"out", "dq", "dk", "dv"} as arrays, and
    the forward's "lse" (not judged: the slack's magnitudes need it)."""
    from flashref.reference import attention_backward, attention_forward

    q, k, v, dout = (as_float64(t) for t in (inputs.q, inputs.k, inputs.v, inputs.dout))
    kw = _for_oracle(attention_kwargs(case, inputs))
    out, lse = attention_forward(q, k, v, **kw)
    grads = attention_backward(q, k, v, out, lse, dout, **kw)  # dq, dk, dv(, dsinks)
    return dict(zip(("dq", "dk", "dv", "dsinks"), grads), out=out, lse=lse)


@contextlib.contextmanager
def float32_matmuls_in_ieee():
    """TF32 (and oneDNN's bf16 shortcut) off for float32 matmuls inside, whatever the process
    set; every setting is restored afterwards. Only torch's per-backend ``fp32_precision``
    API is used: mixing it with the legacy ``allow_tf32`` / ``set_float32_matmul_precision``
    makes torch refuse to read the precision back."""
    import torch

    backends = [torch.backends]
    for name in ("cuda.matmul", "cudnn", "cudnn.conv", "cudnn.rnn", "mkldnn", "mkldnn.matmul", "mkldnn.conv",
                 "mkldnn.rnn"):
        obj = torch.backends
        for part in name.split("."):
            obj = getattr(obj, part, None)
        backends.append(obj)
    saved = [(b, b.fp32_precision) for b in backends if b is not None and hasattr(b, "fp32_precision")]
    if not saved:  # torch before the per-backend API: the legacy switches
        legacy = (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32,
                  torch.backends.cudnn.allow_tf32)
        torch.set_float32_matmul_precision("highest")
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(legacy[0])
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = legacy[1:]
        return
    try:
        for b, _ in saved:
            b.fp32_precision = "ieee"
        yield
    finally:
        for b, value in saved:
            b.fp32_precision = value


def baseline_attention(case: Case, inputs: CaseInputs) -> dict:
    """Plain unfused attention in the case's dtype with torch autograd: {"out", "dq", "dk", "dv"}
    (and "dsinks" with sinks).

    S = scale * q k^T materialised (B, Hq, Lq, Lk); the softcap (``c tanh(S / c)``) and the
    ALiBi bias (the oracle's, rounded to the dtype) in the dtype; softmax (over one more
    column, the sink's logit, with sinks); the dropout keep mask (the oracle's Philox replay)
    times ``1 / (1 - p)``; P v. The mask is the oracle's ``attention_mask`` (a mask rule wrong
    in the kernels cannot be repeated here); fully masked rows get zero scores before the
    softmax and zero weights after it, so they output 0 (not NaN). float32 matmuls run without
    TF32 whatever the process's torch settings."""
    import torch

    from flashref.reference import attention_mask
    from flashref.reference.attention_inputs import check_attention_inputs

    kw = _for_oracle(attention_kwargs(case, inputs))
    mask_kw = {key: kw[key] for key in MASK_KEYWORDS if key in kw}
    visible = attention_mask(case.seqlen_q, case.seqlen_k, batch=max(case.batch, 1), **mask_kw)
    mask = torch.from_numpy(np.ascontiguousarray(visible)).to(inputs.q.device)  # (B, 1, Lq, Lk)
    spec = check_attention_inputs(inputs.q.shape, inputs.k.shape, inputs.v.shape, **kw)
    q, k, v = (t.detach().clone().requires_grad_() for t in (inputs.q, inputs.k, inputs.v))
    wrt = [q, k, v]
    group = case.heads_q // case.heads_kv
    with float32_matmuls_in_ieee():
        k_full, v_full = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        empty_rows = ~mask.any(dim=-1, keepdim=True)
        scores = (q @ k_full.transpose(-1, -2)) * (1.0 / math.sqrt(case.head_dim))
        if case.softcap:
            scores = case.softcap * torch.tanh(scores / case.softcap)
        alibi = spec.alibi()
        if alibi is not None:
            scores = scores + torch.from_numpy(alibi).to(scores)
        scores = scores.masked_fill(~mask, float("-inf"))
        if inputs.sinks is None:
            probs = torch.softmax(scores.masked_fill(empty_rows, 0.0), dim=-1).masked_fill(~mask, 0.0)
        else:  # the sink's column keeps every row's softmax finite
            sinks = inputs.sinks.detach().clone().to(q.dtype).requires_grad_()
            wrt.append(sinks)
            column = sinks[None, :, None, None].expand(*scores.shape[:3], 1)
            probs = torch.softmax(torch.cat([scores, column], dim=-1), dim=-1)[..., :-1]
        dropout = spec.dropout_scale()
        if dropout is not None:
            probs = probs * torch.from_numpy(dropout).to(probs)
        out = probs @ v_full
        grads = torch.autograd.grad(out, wrt, inputs.dout)
    return dict(zip(("dq", "dk", "dv", "dsinks"), grads), out=out.detach())


def algorithm_attention(case: Case, inputs: CaseInputs, rounding: Callable | None = None) -> dict:
    """The FlashAttention algorithm computed plainly by torch in float32: the *algorithm
    baseline* of the RMS criterion (``RmsError``) and of lse. {"out", "lse", "dq", "dk", "dv"}
    (and "dsinks"), rounded to the case's dtype as the kernels store them (lse, dsinks float32).

    Inputs in the dtype, every product and sum in float32 (IEEE matmuls), and the dtype's
    rounding exactly where a fused kernel rounds: P (unnormalised, ``exp(S - rowmax)``) before
    the P V product, ``P = exp(S - lse)`` before dV = P^T dO, and dS before dQ = scale dS K and
    dK = scale dS^T Q; ``D = rowsum(dO o O)`` reads O as stored. In float32 nothing is rounded
    and this is plain float32 attention with the backward's own ``dS = P (dP - D)`` (which does
    not cancel where a row sees one key, exactly as in the kernels). The mask comes from the
    oracle, the variants as in ``baseline_attention``; torch only, no kernel code.

    ``rounding``: float32 tensor -> its value in the dtype, as float32 (default: torch's
    round-to-nearest-even cast). The gate's own tests pass a truncating or a coarser one to
    stand for a kernel that rounds worse than its algorithm."""
    import torch

    from flashref.reference import attention_mask
    from flashref.reference.attention_inputs import check_attention_inputs

    dtype = getattr(torch, case.dtype)
    kw = _for_oracle(attention_kwargs(case, inputs))
    visible = attention_mask(case.seqlen_q, case.seqlen_k, batch=max(case.batch, 1),
                             **{key: kw[key] for key in MASK_KEYWORDS if key in kw})
    device = inputs.q.device
    mask = torch.from_numpy(np.ascontiguousarray(visible)).to(device)  # (B, 1, Lq, Lk)
    spec = check_attention_inputs(inputs.q.shape, inputs.k.shape, inputs.v.shape, **kw)
    group = case.heads_q // case.heads_kv

    def rounded(x):  # float32 -> the dtype's nearest value, kept in float32
        return x.to(dtype).float() if rounding is None else rounding(x)

    def table(array):  # a float64 oracle table (ALiBi bias, dropout scale) as float32 on the device
        return None if array is None else torch.from_numpy(array).float().to(device)

    q, k, v, dout = (t.float() for t in (inputs.q, inputs.k, inputs.v, inputs.dout))
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # (B, Hq, Lk, D)
    with float32_matmuls_in_ieee():
        raw = (q @ k.transpose(-1, -2)) * spec.softmax_scale  # (B, Hq, Lq, Lk)
        dcap = None
        if case.softcap:
            t = torch.tanh(raw / case.softcap)
            scores, dcap = case.softcap * t, 1.0 - t * t
        else:
            scores = raw
        alibi = table(spec.alibi())
        if alibi is not None:
            scores = scores + alibi
        scores = scores.masked_fill(~mask, float("-inf"))
        m = scores.amax(dim=-1, keepdim=True)  # (B, Hq, Lq, 1)
        sink = None
        if inputs.sinks is not None:
            sink = inputs.sinks.float().to(device)[None, :, None, None]
            m = torch.maximum(m, sink.expand_as(m))
        m = torch.where(torch.isinf(m), torch.zeros_like(m), m)  # a row that sees nothing: p = 0
        p_tilde = torch.exp(scores - m)
        total = p_tilde.sum(dim=-1, keepdim=True) + (0.0 if sink is None else torch.exp(sink - m))
        keep = table(spec.dropout_scale())  # keep / (1 - p) or None
        kept = p_tilde if keep is None else p_tilde * keep
        seen = total > 0
        out = rounded((rounded(kept) @ v) / torch.where(seen, total, torch.ones_like(total)))
        lse = torch.where(seen, m + torch.log(torch.where(seen, total, torch.ones_like(total))),
                          torch.full_like(total, float("-inf")))
        probs = torch.exp(scores - torch.where(torch.isinf(lse), torch.zeros_like(lse), lse))
        dropped = probs if keep is None else probs * keep
        dv = rounded(dropped).transpose(-1, -2) @ dout
        dprobs = dout @ v.transpose(-1, -2)
        if keep is not None:
            dprobs = dprobs * keep
        delta = (dout * out).sum(dim=-1, keepdim=True)  # D from O as stored
        ds = probs * (dprobs - delta)
        if dcap is not None:
            ds = ds * dcap
        ds = rounded(ds)
        dq = spec.softmax_scale * (ds @ k)
        dk = spec.softmax_scale * (ds.transpose(-1, -2) @ q)

    def per_kv_head(x):  # (B, Hq, Lk, D) -> (B, Hkv, Lk, D), the group's float32 sum
        return x.reshape(x.shape[0], x.shape[1] // group, group, *x.shape[2:]).sum(dim=2)

    result = dict(out=out.to(dtype), lse=lse[..., 0], dq=rounded(dq).to(dtype), dk=rounded(per_kv_head(dk)).to(dtype),
                  dv=rounded(per_kv_head(dv)).to(dtype))
    if sink is not None:
        result["dsinks"] = -(torch.exp(sink - lse) * delta).sum(dim=(0, 2, 3))
    return result


def kernel_attention(case: Case, inputs: CaseInputs) -> dict:
    """flash_attention forward and backward with NaN-poisoned outputs: {"out", "lse", "dq", "dk",
    "dv"} (and "dsinks" with sinks), and "path": "tma" or "pointer", the tile loads that ran.

    ``case.tiles`` forces each launch's (BLOCK_M, BLOCK_N) under the interpreter;
    ``case.descriptors`` asks for the Hopper path (tensor descriptors), which runs where the
    inputs allow it: 16-bit, aligned, and on a GPU one of compute capability 9.x."""
    import torch

    from flashref.kernels import flash_attention, poisoned_outputs
    from flashref.kernels.config_dispatch import forced_configs
    from flashref.kernels.tile_tables import KernelConfig
    from flashref.kernels.launch import INTERPRETED, tensor_descriptors, tma_ok

    q, k, v = (t.detach().clone().requires_grad_() for t in (inputs.q, inputs.k, inputs.v))
    kw = attention_kwargs(case, inputs)
    wrt = [q, k, v]
    if inputs.sinks is not None:
        kw["sinks"] = inputs.sinks.detach().clone().requires_grad_()
        wrt.append(kw["sinks"])
    tiles = {}
    if case.tiles and INTERPRETED:
        tiles = {name: KernelConfig(m, n, 1, 1) for name, (m, n) in zip(TILE_LAUNCHES, case.tiles)}
    with poisoned_outputs(), forced_configs(tiles), tensor_descriptors("on" if case.descriptors else "auto"):
        path = "tma" if tma_ok(q, k, v, inputs.dout) else "pointer"
        out, lse = flash_attention(q, k, v, return_lse=True, **kw)
        grads = torch.autograd.grad(out, wrt, inputs.dout)
    return dict(zip(("dq", "dk", "dv", "dsinks"), grads), out=out.detach(), lse=lse.detach(), path=path)


# ---------------------------------------------------------------------------- the slack
def magnitudes(case: Case, inputs: CaseInputs, ref: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """For each tensor, the elementwise sum of the magnitudes of the terms the kernel adds up in
    float32 (float64, the tensor's shape): the kernel's unavoidable float32 error on an element
    is about ``u32`` times it. Computed by the oracle with the same products on absolute values
    (docs/design.md, "The slack"):

    - out = P V: ``P |V|``;  dv = P^T dO: ``P^T |dO|`` (summed over a GQA group), plus the
      error of the backward's recomputed P, ``u32 W`` relative with
      ``W = 1 + 2|S| + 3|lse| + scale |Q| |K|^T`` (the roundings of the exp2 argument
      ``S log2e - lse log2e`` and of the recomputed raw q.k) on rows that see a single key (where
      the baseline's P is exactly 1; elsewhere it errs alike), carried like the dS errors below:
      ``min((P o W)^T |dO|, LAMBDA sqrt(((P o W)^2)^T dO^2))``;
    - dS = P o (dP - D), dP = dO V^T, D = rowsum(dO o O): the kernel forms dP and D as two
      float32 sums of D products each and subtracts them, so dS carries an absolute error of
      about ``u32 E`` with ``E = DS_ROUNDING P o (|dO| |V|^T + rowsum|dO o O|)`` -- even where dS is exactly 0
      (a row that sees one key), which is where the baseline is exact by cancellation;
    - dq = scale dS K: ``scale |dS| |K|`` for its own sum, plus the dS errors carried through
      it. Those come from separate sums for every (i, j), so they are independent and add in
      quadrature: ``scale min(E |K|, LAMBDA sqrt(E^2 |K|^2))`` (squares elementwise). The first
      is the sure bound; the second holds but with probability below ``2 exp(-LAMBDA^2 / 2)``
      (Hoeffding: a sum of independent zero-mean terms bounded by ``c_i`` exceeds
      ``LAMBDA sqrt(sum c_i^2)``) and is the smaller one once a few terms add up;
    - dk = scale dS^T Q: ``scale |dS|^T |Q| + scale min(E^T |Q|, LAMBDA sqrt((E^2)^T |Q|^2))``.

    Variants: with dropout, ``P`` in out, dv and ``dP`` carry ``keep / (1 - p)`` and ``D`` the
    rounding of the stored ``O`` (``rowsum |dO| half_ulp(O) / u32``); with a softcap
    ``|dS|`` and ``E`` carry ``1 - tanh^2`` (<= 1); with sinks, ``dsinks[h] = -sum_{b,i}
    p_sink D``: ``sum p_sink (|D| + DS_ROUNDING rowsum|dO o O|)``.
    """
    from flashref.reference.attention import (expand_kv_heads, probabilities_from_lse, reduce_kv_heads,
                                              score_tile, sink_logits)
    from flashref.reference.attention_inputs import check_attention_inputs

    q, k, v, dout = (as_float64(t) for t in (inputs.q, inputs.k, inputs.v, inputs.dout))
    kw = _for_oracle(attention_kwargs(case, inputs))
    spec = check_attention_inputs(q.shape, k.shape, v.shape, **kw)
    scale, group = spec.softmax_scale, spec.group
    k_full, v_full = expand_kv_heads(k, group), expand_kv_heads(v, group)
    out, lse = ref["out"], ref["lse"]
    scores, dcap = score_tile(q, k_full, spec)
    probs = probabilities_from_lse(scores, lse)  # 0 where masked, on empty rows
    dropout = spec.dropout_scale()  # keep / (1 - p) or None
    dropped = probs if dropout is None else probs * dropout
    abs_k, abs_v = np.abs(k_full), np.abs(v_full)
    m_out = dropped @ abs_v
    m_dv = reduce_kv_heads(dropped.swapaxes(-1, -2) @ np.abs(dout), group)
    # The backward recomputes P = exp2(S log2e - lse log2e) from the stored lse (and S from a
    # dot in another order), so its P carries a relative error of about u32 * W, where plain
    # attention's P is exactly 1 (a row that sees one key). Separate per (i, j), so carried
    # into dv like the dS errors into dq: the sure sum or LAMBDA deviations.
    finite_lse = np.where(np.isfinite(lse), np.abs(lse), 0.0)[..., None]
    finite_scores = np.where(np.isfinite(scores), np.abs(scores), 0.0)
    # The recomputed raw q.k errs by u32 scale |q||k|^T (a float32 sum of D products). A
    # softcap passes that error on times 1 - t^2 (0 once tanh saturates: raw logits near 1e4
    # must not widen the bound by their size), and its own tanh (exp2, 1 -+ e, a division)
    # errs by about TANH_ROUNDING u32 |t|, i.e. TANH_ROUNDING u32 |S| on the capped score.
    abs_q = np.abs(q)
    abs_raw = scale * (abs_q @ abs_k.swapaxes(-1, -2))  # sum of |terms| of each raw q.k
    raw_error = abs_raw if dcap is None else abs_raw * dcap + TANH_ROUNDING * finite_scores  # in units of u32
    w = 1.0 + 2.0 * finite_scores + 3.0 * finite_lse + raw_error
    # Every row: plain attention's softmax rounds its P once or twice, the recomputation from a
    # float32 lse rounds by u32 W; where a key's dv sums few rows (Lq = 1, a narrow window) the
    # factor term cannot absorb the difference (a float32 row of 10 keys: dv 4x the baseline).
    error_p = dropped * w
    carried_dv = np.minimum(reduce_kv_heads(error_p.swapaxes(-1, -2) @ np.abs(dout), group),
                            LAMBDA * np.sqrt(reduce_kv_heads((error_p**2).swapaxes(-1, -2) @ dout**2, group)))
    m_dv = m_dv + carried_dv
    # The forward's p = exp2(S log2e - m) rounds its argument too, by u32 (1 + |S| + |lse|)
    # relative (m ~ lse); normalisation turns those errors e_ij into sum_j P_ij e_ij (v_j - o_i).
    error_fwd = dropped * (1.0 + finite_scores + finite_lse + (0.0 if dcap is None else raw_error))
    abs_out = np.abs(out)
    carried_out = np.minimum(
        error_fwd @ abs_v + error_fwd.sum(axis=-1, keepdims=True) * abs_out,
        LAMBDA * np.sqrt((error_fwd**2) @ v_full**2 + (error_fwd**2).sum(axis=-1, keepdims=True) * out**2))
    m_out = m_out + carried_out
    dprobs = dout @ v_full.swapaxes(-1, -2)
    m_dprobs = np.abs(dout) @ abs_v.swapaxes(-1, -2)
    if dropout is not None:
        dprobs, m_dprobs = dprobs * dropout, m_dprobs * dropout
    delta = np.sum(dout * out, axis=-1)[..., None]
    m_delta = np.sum(np.abs(dout * out), axis=-1)[..., None]
    error_ds = DS_ROUNDING * probs * (m_dprobs + m_delta)
    if dropout is not None or spec.sinks is not None:
        # D = rowsum(dO o O) reads O as stored, rounded to the dtype. Without dropout a row that
        # sees one key (where the baseline is exact) has O = v exactly; with dropout
        # O = v / (1 - p) is not representable, nor with a sink O = P v, P < 1, and D errs by up to rowsum(|dO| h), h = half_ulp(O)
        # (independent roundings: LAMBDA sqrt(rowsum(dO^2 h^2)) with the same odds as above).
        h = half_ulp(out, case.dtype)
        rounding = np.minimum(np.sum(np.abs(dout) * h, axis=-1), LAMBDA * np.sqrt(np.sum((dout * h) ** 2, axis=-1)))
        error_ds = error_ds + probs * rounding[..., None] / U32
    abs_ds = probs * np.abs(dprobs - delta)
    if dcap is not None:
        # dS = P (dP - D) (1 - t^2): P's recomputation error (u32 W relative) enters dS too,
        # and 1 - t^2 is formed from the rounded t, an absolute error of about
        # 2|t| dt + 1 with dt = TANH_ROUNDING |t| + (1 - t^2) (the raw q.k error / softcap).
        t = np.sqrt(np.clip(1.0 - dcap, 0.0, 1.0))
        error_dcap = 2.0 * t * (TANH_ROUNDING * t + dcap * abs_raw / case.softcap) + 1.0
        error_ds = (error_ds + abs_ds * w) * dcap + abs_ds * error_dcap
        abs_ds = abs_ds * dcap
    error_ds2 = error_ds**2
    carried_dq = np.minimum(error_ds @ abs_k, LAMBDA * np.sqrt(error_ds2 @ abs_k**2))
    m_dq = scale * (abs_ds @ abs_k + carried_dq)
    m_dk = scale * reduce_kv_heads(abs_ds.swapaxes(-1, -2) @ abs_q, group)
    # The heads of a GQA group are separate sums too: their variances add before the root.
    carried_dk = np.minimum(reduce_kv_heads(error_ds.swapaxes(-1, -2) @ abs_q, group),
                            LAMBDA * np.sqrt(reduce_kv_heads(error_ds2.swapaxes(-1, -2) @ abs_q**2, group)))
    m_dk = m_dk + scale * carried_dk
    # lse = log(sum_j exp(S_ij)) moves by sum_j P_ij dS_ij: the P-weighted score errors (W, as
    # for the backward's P), the final ln 2 product (|lse|), and the rounding of the float32
    # sum l over the row's n visible keys (independent roundings: LAMBDA sqrt(n)).
    visible_keys = np.sum(np.isfinite(scores), axis=-1)
    # The kernels' lse = ln2 (m + log2 l) itself rounds four times (S log2e, log2 l, the sum,
    # the ln 2 product): LSE_ROUNDING (|lse| + 1), which is all that is left on a row that sees
    # only its sink (no key, P = 0; the fuzzer's float32 case with kv_len 0 erred 1.25 u32 |lse|).
    m_lse = (np.sum(probs * w, axis=-1) + LSE_ROUNDING * (finite_lse[..., 0] + 1.0)
             + LAMBDA * np.sqrt(visible_keys))
    result = dict(out=m_out, lse=m_lse, dq=m_dq, dk=m_dk, dv=m_dv)
    # The part of out, dv (and dsinks) that the exponent's rounding makes, u32 W relative on P:
    # with large logits (|S|, |lse| in the hundreds) it outgrows every other float32 error and
    # the kernels' exp2(S log2e - lse log2e) rounds more of it than the algorithm baseline's
    # exp(S - lse): the RMS criterion's slack carries it (``rms_check``'s ``exponent``).
    result["exponent"] = dict(out=carried_out, dv=carried_dv)
    # A row that sees one or two keys: dS cancels (exactly, or nearly) and the kernel's float32
    # dP - D cancels in other orders than any baseline's (``rms_check``).
    result["few_keys"] = bool(np.any((visible_keys == 1) | (visible_keys == 2)))
    if dcap is not None:
        # The baseline rounds the raw scores R = scale q k^T to its dtype before the cap: an error
        # of u |R| that the cap passes on times 1 - tanh^2. With logits near 1e4 and a cap of the
        # same size that is many units of P's relative error, all the baseline's own: it widens
        # the baseline's ceiling (baseline_ceiling), never the slack.
        raw = spec.softmax_scale * np.abs(q @ k_full.swapaxes(-1, -2))
        result["score_error"] = float(np.max(np.where(np.isfinite(scores), raw * dcap, 0.0), initial=0.0))
    sink = sink_logits(spec)  # (1, Hq, 1) or None
    if sink is not None:
        p_sink = np.exp(sink - lse)  # lse >= sink: never above 1
        # D reads O as stored (rounded to the dtype: O = P v, P < 1 with a sink, is not
        # representable), so each term also errs by rowsum(|dO| half_ulp(O)), as in dS above.
        w_sink = 1.0 + 2.0 * np.abs(sink) + 3.0 * finite_lse[..., 0]  # p_sink = exp2(...) from the lse, as P
        result["dsinks"] = np.sum(p_sink * (np.abs(delta[..., 0]) * w_sink + DS_ROUNDING * m_delta[..., 0]
                                            + rounding / U32), axis=(0, 2))
        result["exponent"]["dsinks"] = np.sum(p_sink * np.abs(delta[..., 0]) * w_sink, axis=(0, 2))
    return result


# ---------------------------------------------------------------------------- the verdict
def check_case(case: Case, device: str = "cpu") -> CaseResult:
    """Run one case through kernel, baseline, algorithm baseline and oracle and apply the rule
    to each tensor."""
    start = time.perf_counter()
    inputs = make_inputs(case, device)
    ref = oracle_attention(case, inputs)
    base = baseline_attention(case, inputs)
    algo = algorithm_attention(case, inputs)
    kern = kernel_attention(case, inputs)
    return CaseResult(case, judge_all(case, inputs, ref, base, kern, algo), time.perf_counter() - start,
                      path=kern["path"])


def judge_all(case: Case, inputs: CaseInputs, ref: Mapping, base: Mapping, kern: Mapping,
              algo: Mapping | None = None, fused: bool = True) -> dict[str, TensorError]:
    """The rule on every tensor the oracle returned and the kernel gave, in ``TENSORS`` order.

    ``algo`` (``algorithm_attention``'s tensors) is the max-norm rule's second baseline (the
    bound scales the larger of the two baselines' errors: "Two baselines" in docs/design.md)
    and, for a ``fused`` implementation, adds the RMS criterion to every tensor and judges lse
    (whose max-norm baseline it is: plain attention in a 16-bit dtype has no lse worth the
    name); without it the max-norm rule against plain attention alone, on out and the
    gradients."""
    mags = magnitudes(case, inputs, ref)
    errors = {}
    for key in (t for t in TENSORS if t in ref and t in kern):
        if key == "lse":
            if algo is None or not fused:
                continue
            # lse is float32 in every dtype: judged at float32's precision.
            # lse has no dS to cancel; the kernels' lse = ln2 (m + log2 l), m from S log2(e), rounds
            # four times (S log2e, log2 l, the sum, the ln 2 product) where the algorithm
            # baseline's m + log l rounds twice: LSE_ROUNDING u32 (|lse| + 1) per row on RMS.
            finite = np.isfinite(ref[key])
            lse_slack = LSE_ROUNDING * U32 * rms_error(np.zeros(int(finite.sum())), np.abs(ref[key][finite]) + 1.0)
            lse_rms = rms_check("float32", kern[key], algo[key], ref[key], mags[key], slack=lse_slack)
            errors[key] = judge(finite_error(kern[key], ref[key]), finite_error(algo[key], ref[key]), FACTORS[key],
                                U32 * max_or_zero(mags[key]), baseline_ceiling("float32", mags[key], np.zeros(1)), lse_rms)
            continue
        rms = (rms_check(case.dtype, kern[key], algo[key], ref[key], mags[key], mags["few_keys"],
                         exponent=mags["exponent"].get(key)) if algo is not None and fused else None)
        errors[key] = judge(max_abs_error(kern[key], ref[key]), max_abs_error(base[key], ref[key]), FACTORS[key],
                            slack(case.dtype, mags[key], ref[key]),
                            baseline_ceiling(case.dtype, mags[key], ref[key], mags.get("score_error", 0.0)), rms,
                            None if algo is None else max_abs_error(algo[key], ref[key]))
    return errors


__all__ = ["MASK_KEYWORDS", "CaseInputs", "algorithm_attention", "attention_kwargs", "baseline_attention", "check_case",
           "float32_matmuls_in_ieee", "judge_all", "kernel_attention", "magnitudes", "make_inputs", "oracle_attention"]
