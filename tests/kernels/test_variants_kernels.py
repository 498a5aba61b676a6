"""The attention variants in the kernels (issues 10 and 14), judged against the float64 oracle.

Each case runs ``flash_attention`` forward and backward (NaN-poisoned outputs), the oracle
(``flashref.reference.attention_forward/backward`` with the same keywords; dropout replayed
from the same Philox seed), and a plain torch baseline in the kernel's dtype (the variant
written out, on the oracle's keep mask), and applies the project's rule to out, dq, dk, dv
and dsinks (``flashref.equivalence.judge``). Inputs are fresh every run: the base seed is
printed and ``FLASHREF_SEED=<n>`` replays it; each failure names its case's seed.

Interpreter cases are small (the interpreter runs programs one by one); the larger sweep is
in tests/kernels/test_variants_sweep.py (``-m slow``).
"""

import math
import os
import secrets
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from flashref.equivalence import GRAD_FACTOR, OUT_FACTOR, judge, max_abs_error
from flashref.kernels import INTERPRETED, flash_attention, last_dropout_seed, poisoned_outputs
from flashref.reference import attention_backward, attention_forward
from flashref.reference.philox import dropout_keep

DEVICE = "cpu" if INTERPRETED else "cuda"
pytestmark = pytest.mark.skipif(not INTERPRETED and not torch.cuda.is_available(),
                                reason="needs a CUDA GPU or TRITON_INTERPRET=1")

BASE_SEED = int(os.environ.get("FLASHREF_SEED", secrets.randbits(31)))
print(f"tests/kernels/test_variants_*.py: base seed {BASE_SEED} (replay: FLASHREF_SEED={BASE_SEED})")


# ---------------------------------------------------------------------------- the case model
@dataclass(frozen=True)
class VariantCase:
    """One variant configuration: shapes, dtype, the keywords of ``flash_attention``.

    ``kv_lens``: a tuple of lengths (one per batch) or None; ``alibi``: None, "h" ((Hq,)
    slopes) or "bh" ((B, Hq)); ``sinks``: (Hq,) logits that require grad; ``magnitude``
    multiplies q and k (large logits)."""

    label: str
    batch: int
    heads_q: int
    heads_kv: int
    seqlen_q: int
    seqlen_k: int
    head_dim: int
    dtype: str
    causal: bool = False
    causal_alignment: str = "top_left"
    kv_lens: tuple | None = None
    window_size: tuple = (-1, -1)
    softcap: float = 0.0
    alibi: str | None = None
    sinks: bool = False
    dropout_p: float = 0.0
    magnitude: float = 1.0
    marks: tuple = field(default=(), compare=False)

    @property
    def id(self) -> str:
        return f"{self.label}-b{self.batch}-hq{self.heads_q}-hkv{self.heads_kv}-lq{self.seqlen_q}-lk{self.seqlen_k}" \
               f"-d{self.head_dim}-{self.dtype}"


@dataclass
class Drawn:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    dout: torch.Tensor
    kw: dict  # flash_attention keywords (torch tensors)
    sinks: torch.Tensor | None


def draw(case: VariantCase, seed: int) -> Drawn:
    """Seeded inputs in the case's dtype (drawn in float32 on the CPU, then rounded)."""
    gen = torch.Generator().manual_seed(seed)
    dtype = getattr(torch, case.dtype)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype=dtype, device=DEVICE)

    b, hq, hkv, lq, lk, d = case.batch, case.heads_q, case.heads_kv, case.seqlen_q, case.seqlen_k, case.head_dim
    q, k = randn(b, hq, lq, d, scale=case.magnitude), randn(b, hkv, lk, d, scale=case.magnitude)
    v, dout = randn(b, hkv, lk, d), randn(b, hq, lq, d)
    kw = dict(causal=case.causal, causal_alignment=case.causal_alignment, window_size=case.window_size,
              softcap=case.softcap, dropout_p=case.dropout_p)
    if case.kv_lens is not None:
        kw["kv_lens"] = torch.tensor(case.kv_lens, device=DEVICE)
    if case.alibi is not None:
        shape = (hq,) if case.alibi == "h" else (b, hq)
        # ALiBi's geometric slopes 2^(-8h/H) lie in (0, 1); a random draw in that range.
        kw["alibi_slopes"] = (torch.rand(*shape, generator=gen) * 0.5).to(DEVICE)
    if case.dropout_p > 0:
        kw["dropout_seed"] = int(torch.randint(0, 2**62, (1,), generator=gen))
    sinks = (torch.randn(hq, generator=gen) + 1.0).to(DEVICE) if case.sinks else None
    return Drawn(q, k, v, dout, kw, sinks)


def run_kernel(d: Drawn):
    """flash_attention forward + backward, NaN-poisoned: out, lse, [dq, dk, dv(, dsinks)]."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (d.q, d.k, d.v))
    sinks = None if d.sinks is None else d.sinks.detach().clone().requires_grad_()
    with poisoned_outputs():
        out, lse = flash_attention(q, k, v, sinks=sinks, return_lse=True, **d.kw)
        wrt = (q, k, v) + (() if sinks is None else (sinks,))
        grads = torch.autograd.grad(out, wrt, d.dout)
    return out.detach(), lse, list(grads)


def _numpy_kw(d: Drawn) -> dict:
    kw = {}
    for key, val in d.kw.items():
        kw[key] = val.cpu().numpy() if isinstance(val, torch.Tensor) else val
    if "alibi_slopes" in kw:
        kw["alibi_slopes"] = kw["alibi_slopes"].astype(np.float64)
    if d.sinks is not None:
        kw["sinks"] = d.sinks.cpu().double().numpy()
    if kw.get("dropout_p", 0.0) == 0.0:
        kw.pop("dropout_seed", None)
    return kw


def run_oracle(d: Drawn):
    """The float64 oracle on the same (rounded) inputs: out, lse, [dq, dk, dv(, dsinks)]."""
    q, k, v, dout = (t.detach().cpu().double().numpy() for t in (d.q, d.k, d.v, d.dout))
    kw = _numpy_kw(d)
    out, lse = attention_forward(q, k, v, **kw)
    return out, lse, list(attention_backward(q, k, v, out, lse, dout, **kw))


def keep_mask(d: Drawn) -> torch.Tensor | None:
    """The kernel's keep mask, replayed by the oracle's NumPy Philox (bool (B, Hq, Lq, Lk))."""
    if d.kw["dropout_p"] == 0:
        return None
    b, hq, lq, _ = d.q.shape
    keep = dropout_keep(d.kw["dropout_seed"], d.kw["dropout_p"], (b, hq, lq, d.k.shape[2]))
    return torch.from_numpy(keep).to(DEVICE)


def torch_attention(q, k, v, *, causal=False, causal_alignment="top_left", softmax_scale=None, kv_lens=None,
                    window_size=(-1, -1), softcap=0.0, alibi_slopes=None, sinks=None, keep=None, dropout_p=0.0,
                    dropout_seed=None):
    """Plain unfused attention with every variant written out, in q's dtype (torch autograd):
    the rule's baseline. Returns (out, lse)."""
    b, hq, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    k_full, v_full = k.repeat_interleave(hq // hkv, 1), v.repeat_interleave(hq // hkv, 1)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d)
    s = (q @ k_full.transpose(-1, -2)) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    i = torch.arange(lq, device=q.device)[:, None]
    j = torch.arange(lk, device=q.device)[None, :]
    if causal_alignment == "bottom_right":
        lens = kv_lens.long() if kv_lens is not None else torch.full((b,), lk, device=q.device)
        shift = (lens - lq).view(b, 1, 1, 1)
    else:
        shift = torch.zeros(b, 1, 1, 1, dtype=torch.long, device=q.device)
    pos = i + shift  # (B, 1, Lq, 1): the query's position among the keys
    if alibi_slopes is not None:
        slopes = alibi_slopes.expand(b, hq) if alibi_slopes.dim() == 1 else alibi_slopes
        s = s - slopes.to(s.dtype)[:, :, None, None] * (pos - j).abs().to(s.dtype)
    visible = torch.ones(b, 1, lq, lk, dtype=torch.bool, device=q.device)
    if kv_lens is not None:
        visible = visible & (j < kv_lens.view(b, 1, 1, 1))
    left, right = window_size
    if causal:
        visible = visible & (j <= pos)
    if left >= 0:
        visible = visible & (j >= pos - left)
    if right >= 0:
        visible = visible & (j <= pos + right)
    s = s.masked_fill(~visible, float("-inf"))
    if sinks is not None:
        s = torch.cat([s, sinks.to(s.dtype)[None, :, None, None].expand(b, hq, lq, 1)], -1)
    m = s.amax(-1, keepdim=True).detach()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(s - m)
    total = e.sum(-1, keepdim=True)
    safe = torch.where(total > 0, total, torch.ones_like(total))
    p = (e / safe)[..., :lk]
    lse = torch.where(total > 0, torch.log(safe) + m, torch.full_like(m, float("-inf")))[..., 0]
    if keep is not None:
        p = p * keep.to(p.dtype) / (1.0 - dropout_p)
    return p @ v_full, lse


def run_baseline(d: Drawn):
    """The torch baseline in the kernel's dtype: out, [dq, dk, dv(, dsinks)]."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (d.q, d.k, d.v))
    sinks = None if d.sinks is None else d.sinks.detach().clone().to(q.dtype).requires_grad_()
    out, _ = torch_attention(q, k, v, sinks=sinks, keep=keep_mask(d), **d.kw)
    wrt = (q, k, v) + (() if sinks is None else (sinks,))
    return out.detach(), list(torch.autograd.grad(out, wrt, d.dout))


GRAD_KEYS = ("dq", "dk", "dv", "dsinks")


def check(case: VariantCase, seed: int):
    """Judge one case by the rule; returns the kernel's (out, lse, grads) for extra checks."""
    d = draw(case, seed)
    out, lse, grads = run_kernel(d)
    ref_out, ref_lse, ref_grads = run_oracle(d)
    base_out, base_grads = run_baseline(d)
    where = f"{case.id} seed={seed} (replay: FLASHREF_SEED={BASE_SEED})"
    for t in (out, lse, *grads):
        assert not torch.isnan(t).any(), f"NaN in a kernel output: {where}"
    failures = []
    errors = {"out": judge(max_abs_error(out, ref_out), max_abs_error(base_out, ref_out), OUT_FACTOR)}
    for key, g, r, b in zip(GRAD_KEYS, grads, ref_grads, base_grads):
        errors[key] = judge(max_abs_error(g, r), max_abs_error(b, r), GRAD_FACTOR)
    for key, e in errors.items():
        if not e.passed:
            failures.append(f"{key} {e.kernel:.2e} > bound {e.bound:.2e}")
    print(where, " ".join(f"{k} {e.kernel:.1e}/{e.bound:.1e}" for k, e in errors.items()))
    assert not failures, f"{where}: " + "; ".join(failures)
    # lse: the same empty rows (-inf) and float32-accurate values elsewhere.
    lse_np = lse.cpu().double().numpy()
    finite = np.isfinite(ref_lse)
    assert np.array_equal(np.isfinite(lse_np), finite), f"lse's empty rows differ: {where}"
    np.testing.assert_allclose(lse_np[finite], ref_lse[finite], rtol=2e-6, atol=2e-5, err_msg=where)
    return d, out, lse, grads


def case_params(cases):
    return [pytest.param(c, index, id=c.id, marks=(pytest.mark.interp, *c.marks)) for index, c in enumerate(cases)]


V = VariantCase
smoke = (pytest.mark.smoke,)
# Small shapes: a 32 x 32 block is the interpreter's tile, lengths miss it.
CASES = [
    # issue 14: bottom_right + kv_lens aligns each sequence to its own length; kv_lens < Lq
    # leaves the first rows empty (the padded-length rule would show them every key).
    V("br_kvlens_causal", 3, 2, 1, 7, 40, 32, "bfloat16", causal=True, causal_alignment="bottom_right",
      kv_lens=(12, 3, 40), marks=smoke),
    V("br_kvlens_causal", 2, 2, 2, 37, 45, 16, "float32", causal=True, causal_alignment="bottom_right",
      kv_lens=(44, 20)),
    V("br_kvlens_alibi_noncausal", 2, 2, 1, 19, 33, 16, "float16", causal_alignment="bottom_right",
      kv_lens=(33, 11), alibi="bh"),
    # each variant alone
    V("window", 1, 2, 2, 41, 45, 32, "float16", window_size=(9, 4)),
    V("window_narrower_than_block", 1, 2, 1, 40, 70, 16, "bfloat16", causal=True, window_size=(1, -1)),
    V("window_right_only", 1, 2, 2, 37, 40, 16, "float32", window_size=(-1, 5)),
    V("softcap", 1, 2, 2, 23, 39, 32, "float16", softcap=0.8, magnitude=2.0),
    V("alibi", 1, 2, 2, 33, 29, 16, "float32", alibi="h", causal=True),
    V("sinks", 1, 4, 2, 21, 35, 16, "bfloat16", sinks=True),
    V("dropout", 1, 2, 1, 25, 41, 16, "float16", dropout_p=0.3),
    # combinations
    V("window_softcap_gqa_kvlens_br", 2, 4, 2, 29, 50, 16, "bfloat16", causal=True, causal_alignment="bottom_right",
      kv_lens=(50, 23), window_size=(7, -1), softcap=1.5, marks=smoke),
    V("sinks_causal", 2, 2, 1, 33, 33, 16, "float32", causal=True, sinks=True, marks=smoke),
    V("dropout_causal", 1, 2, 2, 37, 37, 32, "bfloat16", causal=True, dropout_p=0.2, marks=smoke),
    V("everything", 2, 2, 1, 19, 40, 16, "float32", causal=True, causal_alignment="bottom_right", kv_lens=(40, 25),
      window_size=(11, -1), softcap=2.0, alibi="h", sinks=True, dropout_p=0.25),
    # edges
    V("sink_every_key_masked", 2, 2, 2, 17, 20, 16, "float16", kv_lens=(0, 9), sinks=True),
    V("softcap_logits_1e4", 1, 2, 2, 20, 24, 32, "float32", softcap=30.0, magnitude=60.0),
    V("dropout_0.9", 1, 2, 2, 31, 33, 16, "float32", dropout_p=0.9),
]


@pytest.mark.parametrize("case, index", case_params(CASES))
def test_variant_meets_the_rule(case, index):
    check(case, BASE_SEED + index)


# ---------------------------------------------------------------------------- targeted edges
@pytest.mark.interp
def test_bottom_right_kv_lens_shorter_than_lq_leaves_first_rows_empty():
    case = V("br_short", 2, 2, 1, 9, 24, 16, "float32", causal=True, causal_alignment="bottom_right",
             kv_lens=(4, 24))
    d, out, lse, grads = check(case, BASE_SEED + 100)
    # Batch 0: kv_len 4 < Lq 9: rows i < 5 see no key (i + 4 - 9 < 0); row 8 sees keys 0..3.
    assert torch.all(out[0, :, :5] == 0) and torch.all(lse[0, :, :5] == float("-inf"))
    assert torch.all(grads[0][0, :, :5] == 0)
    assert torch.all(torch.isfinite(lse[0, :, 5:])) and torch.all(torch.isfinite(lse[1]))
    # The per-sequence rule and the padded-length rule (shift Lk - Lq = 15) differ here: row 5
    # sees key 0 only, not keys 0..3 (kv_len) as the old rule had it.
    ref_out, _ = attention_forward(*(t.double().numpy() for t in (d.q[:1, :, 5:6], d.k[:1, :, :1], d.v[:1, :, :1])))
    np.testing.assert_allclose(out[:1, :, 5:6].double().numpy(), ref_out, atol=1e-6, rtol=0)


@pytest.mark.interp
def test_window_hiding_whole_rows_gives_zeros_and_minus_inf():
    # Lq > Lk, causal top_left with a left window of 3: rows i >= Lk + 3 see no key.
    case = V("window_hides_rows", 1, 2, 1, 45, 20, 16, "bfloat16", causal=True, window_size=(3, -1))
    d, out, lse, grads = check(case, BASE_SEED + 101)
    assert torch.all(out[:, :, 23:] == 0) and torch.all(lse[:, :, 23:] == float("-inf"))
    assert torch.all(grads[0][:, :, 23:] == 0)
    assert torch.all(torch.isfinite(lse[:, :, :23]))


@pytest.mark.interp
def test_sink_with_every_key_masked_outputs_zeros_and_lse_sink():
    case = V("sink_masked_rows", 2, 2, 1, 5, 12, 16, "float32", kv_lens=(0, 12), sinks=True)
    d, out, lse, grads = check(case, BASE_SEED + 102)
    assert torch.all(out[0] == 0)
    assert torch.equal(lse[0], d.sinks[:, None].expand(2, 5))  # lse = sinks[h] exactly
    assert torch.all(grads[0][0] == 0) and torch.all(grads[1][0] == 0) and torch.all(grads[2][0] == 0)


@pytest.mark.interp
@pytest.mark.smoke
def test_dropout_keep_mask_is_the_oracles_bit_for_bit():
    # v = identity (Lk <= D): out[b, h, i, j] = P_ij * keep_ij / (1 - p), and every P_ij > 0
    # (no mask, moderate scores), so the kernel's mask is exactly out != 0.
    seed = BASE_SEED + 103
    gen = torch.Generator().manual_seed(seed)
    b, hq, lq, lk, d, p = 2, 3, 37, 29, 32, 0.4
    q, k = torch.randn(b, hq, lq, d, generator=gen), torch.randn(b, 1, lk, d, generator=gen)
    v = torch.eye(lk, d)[None, None].expand(b, 1, lk, d).contiguous()
    dropout_seed = int(torch.randint(0, 2**62, (1,), generator=gen)) + 2**62 * (seed % 2)  # both key halves used
    out = flash_attention(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), dropout_p=p, dropout_seed=dropout_seed)
    kernel_keep = (out[..., :lk] != 0).cpu().numpy()
    oracle_keep = dropout_keep(dropout_seed, p, (b, hq, lq, lk))
    assert np.array_equal(kernel_keep, oracle_keep), f"seed={seed}: {np.sum(kernel_keep != oracle_keep)} differ"
    assert 0.45 < oracle_keep.mean() < 0.75  # the mask is not degenerate


@pytest.mark.interp
def test_dropout_seed_none_is_drawn_from_torch_and_retrievable():
    q = torch.randn(1, 2, 13, 16).to(DEVICE)
    torch.manual_seed(BASE_SEED)
    first = flash_attention(q, q, q, dropout_p=0.5)
    drawn = last_dropout_seed()
    assert isinstance(drawn, int) and 0 <= drawn < 2**62
    assert torch.equal(flash_attention(q, q, q, dropout_p=0.5, dropout_seed=drawn), first)
    assert last_dropout_seed() == drawn
    torch.manual_seed(BASE_SEED)
    assert torch.equal(flash_attention(q, q, q, dropout_p=0.5), first)
    other = flash_attention(q, q, q, dropout_p=0.5, dropout_seed=drawn ^ 1)
    assert not torch.equal(other, first)
    # dropout_p = 0 draws nothing from torch's generator.
    state = torch.get_rng_state()
    flash_attention(q, q, q)
    assert torch.equal(torch.get_rng_state(), state)


# ---------------------------------------------------------------------------- bad input
def zeros(*s, dtype=torch.float32):
    return torch.zeros(*s, dtype=dtype, device=DEVICE)


GOOD = dict(q=zeros(2, 4, 8, 32), k=zeros(2, 2, 8, 32), v=zeros(2, 2, 8, 32))
BAD_VARIANTS = [
    ("window a tuple of 3", dict(window_size=(1, 2, 3)), TypeError, ["window_size"]),
    ("window an int", dict(window_size=4), TypeError, ["window_size"]),
    ("window -2", dict(window_size=(-2, 0)), ValueError, ["window_size", "left", "-1"]),
    ("window float", dict(window_size=(1.5, 0)), TypeError, ["window_size", "int"]),
    ("window bool", dict(window_size=(True, 0)), TypeError, ["window_size"]),
    ("softcap negative", dict(softcap=-1.0), ValueError, ["softcap"]),
    ("softcap inf", dict(softcap=float("inf")), ValueError, ["softcap"]),
    ("softcap a string", dict(softcap="30"), TypeError, ["softcap"]),
    ("alibi float64", dict(alibi_slopes=zeros(4, dtype=torch.float64)), TypeError, ["alibi_slopes", "float32"]),
    ("alibi shape", dict(alibi_slopes=zeros(2)), ValueError, ["alibi_slopes", "(4,)"]),
    ("alibi (Hq, B)", dict(alibi_slopes=zeros(4, 2)), ValueError, ["alibi_slopes", "(2, 4)"]),
    ("alibi a list", dict(alibi_slopes=[0.5] * 4), TypeError, ["alibi_slopes"]),
    ("alibi device", dict(alibi_slopes=torch.zeros(4, device="meta")), ValueError, ["alibi_slopes", "device"]),
    ("sinks float16", dict(sinks=zeros(4, dtype=torch.float16)), TypeError, ["sinks", "float32"]),
    ("sinks shape", dict(sinks=zeros(2, 4)), ValueError, ["sinks", "(4,)"]),
    ("sinks nan", dict(sinks=torch.full((4,), float("nan"), device=DEVICE)), ValueError, ["sinks", "finite"]),
    ("dropout 1", dict(dropout_p=1.0), ValueError, ["dropout_p", "[0, 1)"]),
    ("dropout negative", dict(dropout_p=-0.1), ValueError, ["dropout_p"]),
    ("dropout a string", dict(dropout_p="0.1"), TypeError, ["dropout_p"]),
    ("seed negative", dict(dropout_p=0.1, dropout_seed=-1), ValueError, ["dropout_seed"]),
    ("seed 2**63", dict(dropout_p=0.1, dropout_seed=2**63), ValueError, ["dropout_seed"]),
    ("seed float", dict(dropout_p=0.1, dropout_seed=1.0), TypeError, ["dropout_seed"]),
    ("seed bool", dict(dropout_p=0.1, dropout_seed=True), TypeError, ["dropout_seed"]),
]


@pytest.mark.interp
@pytest.mark.parametrize("what, overrides, error, words", BAD_VARIANTS, ids=[b[0] for b in BAD_VARIANTS])
def test_bad_variant_input_is_named_before_any_launch(what, overrides, error, words):
    args = {**GOOD, **overrides}
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    state = torch.get_rng_state()
    with poisoned_outputs(), pytest.raises(error) as info:
        flash_attention(q, k, v, **args)
    for word in words:
        assert word in str(info.value), f"{what}: {info.value}"
    assert torch.equal(torch.get_rng_state(), state)  # failed before drawing a seed
