"""The dense family's sweeps: FlashAttention's test shapes in a covering design, the variant
families, and the block-boundary cases.

``dense_sweep(preset)`` lists a preset's dense cases: "quick" (about a minute on a 2-core CPU
under the interpreter), "ci" (the CPU test sweep: every value of every axis appears in several
combinations), "full" (every (lengths, masking, head dim, dtype)). ``families.sweep`` adds the
other families' cases.
"""

from __future__ import annotations

import dataclasses
from itertools import product

from .boundaries import boundary_cases
from .cases import CAUSAL_MODES, Case
from .rule import CASE_DTYPES, DTYPES, FP8

# FlashAttention's test shapes: lengths that miss every block size, Lq != Lk both ways.
CI_SEQLENS = ((1, 239), (3, 799), (113, 203), (127, 512), (128, 217), (239, 1), (256, 512), (512, 256),
              (17, 17), (97, 97), (200, 200))
CI_HEAD_DIMS = (32, 40, 64, 96, 128, 256)
# (batch, heads_q, heads_kv): MHA, GQA (2 query heads per kv head), MQA.
HEAD_LAYOUTS = ((2, 2, 2), (1, 4, 2), (2, 3, 1))


def _covering(seqlens, head_dims, dtypes, masks, layouts, kv_lens_options, seed):
    """One case per (seqlens, mask) pair; the other axes advance with different strides so that
    every value of every axis meets many values of the others (a covering design, not the full
    cross product)."""
    cases = []
    for index, ((lq, lk), (causal, alignment)) in enumerate(product(seqlens, masks)):
        b, hq, hkv = layouts[(index + 2 * (index // 3)) % len(layouts)]
        if lq * lk >= LARGE_CASE:
            b = 1  # the interpreter's cost grows with B * H * Lq * Lk; one sequence is enough
        cases.append(Case(
            batch=b, heads_q=hq, heads_kv=hkv, seqlen_q=lq, seqlen_k=lk,
            head_dim=head_dims[(index * 5 + index // len(head_dims)) % len(head_dims)],
            dtype=dtypes[(index + index // 3 + 1) % len(dtypes)],
            causal=causal, causal_alignment=alignment,
            kv_lens=kv_lens_options[(index // 2) % len(kv_lens_options)],
            seed=seed + index))
    # 16-bit cases alternate the pointer and the descriptor (TMA) path, which under the
    # interpreter runs only when asked for (on a GPU: compute capability 9.x decides).
    return [dataclasses.replace(c, descriptors=c.dtype != "float32" and i % 2 == 1) for i, c in enumerate(cases)]


# The attention variants (issues 10, 14): each alone, then the combinations models use, as
# ``Case`` fields over a plain case; ``_variant_cases`` gives each family its own shapes.
VARIANT_FAMILIES = (
    dict(window=(19, 0)),  # sliding window (its right edge is causal's)
    dict(window=(5, 9), causal=False),  # a two-sided window narrower than a block
    dict(softcap=5.0),
    dict(alibi="h", causal=True),
    dict(alibi="bh", causal=True, causal_alignment="bottom_right", kv_lens=True),
    dict(sinks=True),
    dict(sinks=True, causal=True),
    dict(dropout_p=0.2),
    dict(dropout_p=0.3, causal=True),
    # GQA over several batch rows: the dropout counters' (batch, head) stream and the sinks'
    # per-head reads must not mix up heads of a group or rows of the batch.
    dict(dropout_p=0.25, sinks=True, causal=True, layout=(2, 4, 2)),
    dict(window=(24, -1), softcap=10.0, causal=True, causal_alignment="bottom_right", kv_lens=True,
         layout=(2, 4, 2)),
)
# Small shapes: the variants change the score pipeline, not the tiling the plain sweep covers.
VARIANT_SEQLENS = ((17, 17), (33, 47), (113, 57), (1, 97), (64, 90))
VARIANT_HEAD_DIMS = (32, 64, 128)


def _variant_cases(seqlens, head_dims, dtypes, layouts, repeats, seed) -> list[Case]:
    """``repeats`` cases per family of VARIANT_FAMILIES, the shape axes advancing with different
    strides (every value meets several families); a family's ``layout`` fixes its (B, Hq, Hkv).
    A family's first case is 16-bit and its second float32 (when the dtypes allow), so every
    variant is judged in both regimes even in quick; 16-bit cases alternate the pointer and the
    descriptor (TMA) path."""
    cases = []
    index = 0
    sixteen = [d for d in dtypes if d != "float32"] or list(dtypes)
    for family_index, family in enumerate(VARIANT_FAMILIES):
        family = dict(family)
        layout = family.pop("layout", None)
        for repeat in range(repeats):
            lq, lk = seqlens[index % len(seqlens)]
            b, hq, hkv = layout or layouts[(index // 2) % len(layouts)]
            if repeat == 1 and "float32" in dtypes:
                dtype = "float32"
            elif repeat == 0:
                dtype = sixteen[family_index % len(sixteen)]
            else:
                dtype = dtypes[(index + 2 * (index // 3)) % len(dtypes)]
            fields = {**dict(causal=False, causal_alignment="top_left", kv_lens=False), **family}
            cases.append(Case(batch=min(b, 2), heads_q=hq, heads_kv=hkv, seqlen_q=lq, seqlen_k=lk,
                              head_dim=head_dims[(index + index // 3) % len(head_dims)], dtype=dtype,
                              descriptors=dtype != "float32" and family_index % 2 == 1,
                              seed=seed + 10_000 + index, **fields))
            index += 1
    return cases


# Value head dim != query/key head dim (issue 23, DeepSeek's MLA): the (D, Dv) pairs models use,
# on small shapes (the tiling is the plain sweep's; what is new is the second head dim).
VALUE_HEAD_DIM_PAIRS = ((192, 128), (128, 64), (64, 128))


def _value_head_dim_cases(pairs, seqlens, dtypes, masks, layouts, repeats, seed) -> list[Case]:
    """``repeats`` cases per (D, Dv) pair of ``pairs``, the other axes advancing with different
    strides (a covering design): lengths, masking (kv_lens every other case), layout, dtype;
    16-bit cases alternate the pointer and the descriptor (TMA) path. Seeds ``seed + 50000, ...``
    (the packed families start at 20000, the boundary cases at 30000)."""
    cases = []
    for index, ((d, dv), _) in enumerate(product(pairs, range(repeats))):
        lq, lk = seqlens[(index * 2 + index // len(pairs)) % len(seqlens)]
        causal, alignment = masks[(index + index // 3) % len(masks)]
        b, hq, hkv = layouts[(index + 1) % len(layouts)]
        dtype = dtypes[(index + index // len(pairs)) % len(dtypes)]
        cases.append(Case(batch=min(b, 2), heads_q=hq, heads_kv=hkv, seqlen_q=lq, seqlen_k=lk, head_dim=d,
                          dtype=dtype, causal=causal, causal_alignment=alignment, kv_lens=index % 2 == 1,
                          descriptors=dtype != "float32" and index % 2 == 0, head_dim_v=dv,
                          seed=seed + 50_000 + index))
    return cases


# The FP8 forward (fp8.py): a few small cases covering its axes (masks, kv_lens, GQA/MQA, head
# dims, Lq = 1 and Lk = 1, a window, sinks, large logits); quick takes the first QUICK_FP8 of them.
FP8_CASES = (
    dict(batch=2, heads_q=2, heads_kv=2, seqlen_q=113, seqlen_k=203, head_dim=64, causal=True),
    dict(batch=1, heads_q=4, heads_kv=2, seqlen_q=1, seqlen_k=239, head_dim=128, kv_lens=True),
    dict(batch=2, heads_q=3, heads_kv=1, seqlen_q=97, seqlen_k=97, head_dim=32, causal=True,
         causal_alignment="bottom_right", kv_lens=True, window=(19, 0), sinks=True),
    dict(batch=2, heads_q=3, heads_kv=1, seqlen_q=128, seqlen_k=217, head_dim=40, causal=True,
         causal_alignment="bottom_right", kv_lens=True),
    dict(batch=1, heads_q=2, heads_kv=2, seqlen_q=239, seqlen_k=1, head_dim=96),
    dict(batch=1, heads_q=4, heads_kv=2, seqlen_q=33, seqlen_k=47, head_dim=256, sinks=True),
    dict(batch=2, heads_q=2, heads_kv=1, seqlen_q=64, seqlen_k=90, head_dim=64, window=(5, 9)),
    # Larger logits (q's std 2) over long rows: the bulk of a row's weight is far below its
    # largest, where FA3's 2^8 offset keeps them normal e4m3 numbers.
    dict(batch=1, heads_q=2, heads_kv=1, seqlen_q=32, seqlen_k=800, head_dim=64, logit_scale=2.0),
)
QUICK_FP8 = 3


def fp8_cases(preset: str, causal=None, seed: int = 0) -> list[Case]:
    """The preset's FP8 cases (``FP8_CASES``: quick the first ``QUICK_FP8``, ci and full all),
    seeds ``seed + 40000, ...``."""
    chosen = FP8_CASES[:QUICK_FP8] if preset == "quick" else FP8_CASES
    cases = [Case(dtype=FP8, **{**dict(causal=False, causal_alignment="top_left", kv_lens=False), **fields},
                  seed=seed + 40_000 + i) for i, fields in enumerate(chosen)]
    return [c for c in cases if causal is None or c.causal == causal]


LARGE_CASE = 100_000  # Lq * Lk above which the covering sweeps use batch 1
QUICK_SEQLENS = ((1, 239), (113, 203), (128, 217), (239, 1), (200, 200))
QUICK_HEAD_DIMS = (40, 64, 128)


def dense_sweep(preset: str, *, dtypes=None, head_dims=None, causal=None, seed: int = 0) -> list[Case]:
    """The cases of ``preset`` ("quick", "ci", "full"), optionally restricted to some dtypes
    (names), head dims, or to causal (True: both alignments) / non-causal (False) masking.
    Case seeds are ``seed, seed + 1, ...`` (the variant families': ``seed + 10000, ...``).
    Every preset then has the value-head-dim cases (``VALUE_HEAD_DIM_PAIRS``, Dv != D: once per
    pair in "quick", twice in "ci", three times in "full", those whose D is among ``head_dims``),
    the variant families (``VARIANT_FAMILIES``): twice each in "quick"
    (16-bit, then float32), three times in "ci", four times in "full"; then the block-boundary cases (``boundary_cases``:
    every boundary quantity on the residues 0, 1, 2, B - 2, B - 1 of every block size B of the
    forced tiles: quick one tile triple, ci and full every tile of the tables, seeds
    ``seed + 30000, ...``); last the FP8 forward's cases (``fp8_cases``) unless ``dtypes`` leaves
    "float8_e4m3fn" out."""
    if preset not in ("quick", "ci", "full"):
        raise ValueError(f"preset must be 'quick', 'ci' or 'full', got {preset!r}")
    requested_head_dims = head_dims  # the packed families have their own head dims unless filtered
    with_fp8 = dtypes is None or FP8 in dtypes
    dtypes = tuple(dtypes) if dtypes is not None else DTYPES
    for d in dtypes:
        if d not in CASE_DTYPES:
            raise ValueError(f"dtypes must be among {CASE_DTYPES}, got {d!r}")
    dtypes = tuple(d for d in dtypes if d != FP8)
    masks = tuple(m for m in CAUSAL_MODES if causal is None or m[0] == causal)
    if preset == "quick":
        seqlens, default_dims, layouts = QUICK_SEQLENS, QUICK_HEAD_DIMS, HEAD_LAYOUTS
    else:
        seqlens, default_dims, layouts = CI_SEQLENS, CI_HEAD_DIMS, HEAD_LAYOUTS
    head_dims = tuple(head_dims) if head_dims is not None else default_dims
    for d in head_dims:
        if not (isinstance(d, int) and 1 <= d <= 256):
            raise ValueError(f"head_dims must be integers in [1, 256], got {d!r}")
    fp8 = [c for c in fp8_cases(preset, causal, seed) if requested_head_dims is None or c.head_dim in head_dims] \
        if with_fp8 else []
    if not dtypes:  # FP8 only
        return fp8
    repeats = {"quick": 2, "ci": 3, "full": 4}[preset]
    variant_dims = tuple(head_dims) if head_dims is not None else VARIANT_HEAD_DIMS
    variants = [c for c in _variant_cases(VARIANT_SEQLENS, variant_dims, dtypes, layouts, repeats, seed)
                if causal is None or c.causal == causal]
    if preset == "full":
        # Every (seqlens, mask, head dim, dtype); layouts and kv_lens still cycle.
        cases = []
        for index, ((lq, lk), (c, a), d, dt) in enumerate(product(seqlens, masks, head_dims, dtypes)):
            b, hq, hkv = layouts[index % len(layouts)]
            cases.append(Case(b, hq, hkv, lq, lk, d, dt, c, a, bool(index // 3 % 2), seed + index))
    else:
        cases = _covering(seqlens, head_dims, dtypes, masks, layouts, (False, True), seed)
    boundary = boundary_cases(preset, dtypes=dtypes, head_dims=requested_head_dims, causal=causal, seed=seed)
    pairs = tuple(p for p in VALUE_HEAD_DIM_PAIRS if requested_head_dims is None or p[0] in requested_head_dims)
    mla = _value_head_dim_cases(pairs, VARIANT_SEQLENS, dtypes, masks, layouts,
                                {"quick": 1, "ci": 2, "full": 3}[preset], seed)
    return cases + mla + variants + boundary + fp8


__all__ = ["CI_HEAD_DIMS", "CI_SEQLENS", "FP8_CASES", "HEAD_LAYOUTS", "QUICK_FP8", "QUICK_HEAD_DIMS", "QUICK_SEQLENS",
           "VALUE_HEAD_DIM_PAIRS", "VARIANT_FAMILIES", "dense_sweep", "fp8_cases"]
