"""The attention variants in the kernels (issues 10 and 14), judged against the float64 oracle.

Each case runs ``flash_attention`` forward and backward (NaN-poisoned outputs), and judges
out, dq, dk, dv and dsinks by the project's rule (``flashref.gate.judge_all``): against
the float64 oracle with the same keywords (dropout replayed from the same Philox seed, bit
for bit), with the same-dtype torch baseline (each variant written out, on the oracle's mask
and keep mask) and the derived slack. Inputs are fresh every run: the base seed is
printed and ``FLASHREF_SEED=<n>`` replays it; each failure names its case's seed.

Interpreter cases are small (the interpreter runs programs one by one); the larger sweep is
in tests/kernels/test_variants_sweep.py (``-m slow``).
"""

import os
import secrets
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from flashref import gate
from flashref.kernels import INTERPRETED, flash_attention, last_dropout_seed, poisoned_outputs
from flashref.reference import attention_forward
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


def as_gate_case(case: VariantCase, d: Drawn, seed: int):
    """The same case and inputs in flashref.gate's terms (its oracle, baseline, rule)."""
    gate_case = gate.Case(case.batch, case.heads_q, case.heads_kv, case.seqlen_q, case.seqlen_k, case.head_dim,
                        case.dtype, case.causal, case.causal_alignment, case.kv_lens is not None, seed,
                        window=case.window_size, softcap=case.softcap, alibi=case.alibi or "", sinks=case.sinks,
                        dropout_p=case.dropout_p)
    inputs = gate.CaseInputs(d.q, d.k, d.v, d.dout, d.kw.get("kv_lens"), d.kw.get("alibi_slopes"), d.sinks,
                           d.kw.get("dropout_seed"))
    return gate_case, inputs


def check(case: VariantCase, seed: int):
    """Judge one case by the project's rule (``flashref.gate.judge_all``: the oracle, the
    same-dtype baseline, the derived slack; dsinks like the other gradients) and check the
    lse; returns the drawn inputs and the kernel's (out, lse, grads) for extra checks."""
    d = draw(case, seed)
    out, lse, grads = run_kernel(d)
    gate_case, inputs = as_gate_case(case, d, seed)
    ref = gate.oracle_attention(gate_case, inputs)
    base = gate.baseline_attention(gate_case, inputs)
    kern = dict(zip(("dq", "dk", "dv", "dsinks"), grads), out=out)
    where = f"{case.id} seed={seed} (replay: FLASHREF_SEED={BASE_SEED})"
    for t in (out, lse, *grads):
        assert not torch.isnan(t).any(), f"NaN in a kernel output: {where}"
    errors = gate.judge_all(gate_case, inputs, ref, base, kern)
    assert set(errors) == {"out", "dq", "dk", "dv"} | ({"dsinks"} if case.sinks else set())
    print(where, " ".join(f"{k} {e.kernel:.1e}/{e.bound:.1e}" for k, e in errors.items()))
    failures = [e.describe(key) for key, e in errors.items() if not e.passed]
    assert not failures, f"{where}: " + "; ".join(failures)
    # lse: the same empty rows (-inf) and float32-accurate values elsewhere.
    lse_np, ref_lse = lse.cpu().double().numpy(), ref["lse"]
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
    # each variant alone: in flashref.gate's sweeps (tests/kernels/test_equivalence.py)
    V("window_narrower_than_block", 1, 2, 1, 40, 70, 16, "bfloat16", causal=True, window_size=(1, -1)),
    # combinations
    V("window_softcap_gqa_kvlens_br", 2, 4, 2, 29, 50, 16, "bfloat16", causal=True, causal_alignment="bottom_right",
      kv_lens=(50, 23), window_size=(7, -1), softcap=1.5, marks=smoke),
    V("sinks_causal", 2, 2, 1, 33, 33, 16, "float32", causal=True, sinks=True, marks=smoke),
    V("dropout_causal", 1, 2, 2, 37, 37, 32, "bfloat16", causal=True, dropout_p=0.2, marks=smoke),
    V("everything", 2, 2, 1, 19, 40, 16, "float32", causal=True, causal_alignment="bottom_right", kv_lens=(40, 25),
      window_size=(11, -1), softcap=2.0, alibi="h", sinks=True, dropout_p=0.25),
    # edges
    V("sink_every_key_masked", 2, 2, 2, 17, 20, 16, "float16", kv_lens=(0, 9), sinks=True),
    # Raw logits ~1e4 (scale * q.k with q, k ~ 60 N(0, 1)): tanh saturates to +-1, no overflow.
    # The raw q.k cancels catastrophically where tanh has not saturated: the slack carries the
    # kernel's own float32 error of it through 1 - t^2 (flashref/gate/, magnitudes).
    V("softcap_logits_1e4", 1, 2, 2, 20, 24, 32, "bfloat16", softcap=30.0, magnitude=60.0),
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
    # lse = sinks[h], up to the kernel's base-2 round trip (sinks * log2(e) * ln(2)): an ulp or two.
    torch.testing.assert_close(lse[0], d.sinks[:, None].expand(2, 5), rtol=3e-7, atol=0)
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
