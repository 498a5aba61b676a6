"""The larger variant sweep (``-m slow``): every variant alone and in combinations, over the
three dtypes, head dims up to 256, GQA/MQA and lengths that miss every block size (1, 17,
113, 239 ...), each judged by the rule against the oracle as in tests/kernels/test_variants_kernels.py
(same fresh-seed replay: ``FLASHREF_SEED=<n>``).

Run: ``OPENBLAS_NUM_THREADS=1 python -m pytest -m slow tests/kernels/test_variants_sweep.py``.
"""

from itertools import cycle

import pytest

from test_variants_kernels import BASE_SEED, VariantCase, case_params, check

DTYPES = ("float16", "bfloat16", "float32")
# (Lq, Lk, kv_lens) — the lengths of the equivalence sweep's CI shapes, kv_lens below Lq too.
LENGTHS = ((1, 239, (239, 100)), (17, 17, None), (113, 203, (203, 57)), (128, 217, None),
           (239, 113, (80, 113)), (97, 97, (3, 97)), (200, 200, None))
HEAD_DIMS = (32, 64, 96, 128, 256)
LAYOUTS = ((2, 2, 2), (2, 4, 2), (2, 3, 1))  # (batch, Hq, Hkv): MHA, GQA, MQA
# Each variant family as flash_attention keywords (kv_lens come from LENGTHS when it has them).
FAMILIES = (
    ("window", dict(window_size=(31, 0))),
    ("window_both_sides", dict(window_size=(7, 40))),
    ("window_narrow_causal_br", dict(causal=True, causal_alignment="bottom_right", window_size=(2, -1))),
    ("softcap", dict(softcap=5.0)),
    ("softcap_causal", dict(causal=True, softcap=20.0, magnitude=8.0)),
    ("alibi_h", dict(alibi="h")),
    ("alibi_bh_causal_br", dict(alibi="bh", causal=True, causal_alignment="bottom_right")),
    ("sinks", dict(sinks=True)),
    ("sinks_causal", dict(sinks=True, causal=True)),
    ("dropout", dict(dropout_p=0.1)),
    ("dropout_causal", dict(dropout_p=0.5, causal=True)),
    ("window_softcap_alibi_br", dict(causal=True, causal_alignment="bottom_right", window_size=(50, -1),
                                     softcap=10.0, alibi="h")),
    ("everything", dict(causal=True, causal_alignment="bottom_right", window_size=(64, -1), softcap=10.0,
                        alibi="bh", sinks=True, dropout_p=0.2)),
)


def sweep_cases() -> list[VariantCase]:
    """Each family three times, the other axes cycled so every value appears several times."""
    cases = []
    axes = zip(cycle(DTYPES), cycle(LENGTHS), cycle(HEAD_DIMS), cycle(LAYOUTS))
    for label, kw in FAMILIES:
        for _ in range(3):
            dtype, (lq, lk, kv_lens), d, (b, hq, hkv) = next(axes)
            cases.append(VariantCase(label, b, hq, hkv, lq, lk, d, dtype,
                                     kv_lens=kv_lens if kv_lens is None else tuple(kv_lens[:b]), **kw))
    return cases


@pytest.mark.slow
@pytest.mark.parametrize("case, index", case_params(sweep_cases()))
def test_variant_sweep_meets_the_rule(case, index):
    check(case, BASE_SEED + 1000 + index)
