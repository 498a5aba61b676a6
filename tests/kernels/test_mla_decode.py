"""``flash_attention_with_kvcache`` with a value head dim of its own (issue 23, DeepSeek's MLA):
a value cache (..., Dv) with Dv != D, and the absorbed decode (``v_cache=None,
v_head_dim=Dv``: one latent cache whose first Dv columns are also the values).

The numbers are judged through the gate (``gate.check_case`` on ``KvcacheCase``: float64 oracle
with ``v_cache = k_cache[..., :Dv]`` for the absorbed form, the derived slack, the append checked
element by element, the cache's dead rows NaN-poisoned). A covering design over (plain Dv != D,
absorbed with rope, absorbed without rope) x (contiguous, paged) x dtype x (MHA, GQA, MQA) x
splits, small shapes; DeepSeek's (576, 512) itself runs in the gate's quick sweep and in the
``slow`` case here. Then the API's errors and the fake (meta) shapes.
"""

import pytest
import torch

from flashref import gate
from flashref.gate import KvcacheCase
from flashref.gate.packed import kvcache_features
from flashref.kernels import INTERPRETED, flash_attention_with_kvcache

DEVICE = "cpu" if INTERPRETED else "cuda"
pytestmark = pytest.mark.skipif(not INTERPRETED and not torch.cuda.is_available(),
                                reason="needs a CUDA GPU or TRITON_INTERPRET=1")

# (hq, hkv, lq, new, capacity, page, splits, D, dtype), extra
COVERING = [
    ((4, 1, 2, 1, 48, 16, 2, 48, "bfloat16"), dict(head_dim_v=32, absorbed=True)),          # rope 16, paged, MQA
    ((2, 2, 1, 2, 37, 0, 1, 40, "float32"), dict(head_dim_v=40, absorbed=True)),           # no rope: v = k
    ((4, 2, 3, 0, 33, 0, 3, 24, "float16"), dict(head_dim_v=40)),                          # Dv > D, no append
    ((6, 3, 1, 1, 64, 32, 0, 64, "float32"), dict(head_dim_v=24, window=(7, -1), sinks=True)),  # Dv < D, paged
]


@pytest.mark.parametrize("row, extra", COVERING, ids=[KvcacheCase(*r, **e).name for r, e in COVERING])
def test_mla_decode_meets_the_rule(row, extra, seed):
    result = gate.check_case(KvcacheCase(*row, seed=seed, **extra), DEVICE)
    assert result.passed, result.summary()


@pytest.mark.slow
def test_deepseek_absorbed_decode_meets_the_rule(seed):
    """(576, 512), 16 heads on one kv head, two new tokens, contiguous, float16 (the quick sweep has bf16 paged)."""
    case = KvcacheCase(16, 1, 2, 2, 130, 0, 3, 576, "float16", seed=seed, head_dim_v=512, absorbed=True)
    result = gate.check_case(case, DEVICE)
    assert result.passed, result.summary()


def test_names_replay():
    for row, extra in COVERING:
        case = KvcacheCase(*row, seed=5, **extra)
        assert gate.case_from_name(case.name, seed=5) == case
    assert KvcacheCase(4, 1, 1, 1, 32, 16, 1, 576, "bfloat16", head_dim_v=512, absorbed=True).name.endswith(
        "-d576-bfloat16-dv512-absorbed")
    assert KvcacheCase(4, 1, 1, 1, 32, 16, 1, 64, "bfloat16", head_dim_v=64).head_dim_v is None  # Dv = D: default
    with pytest.raises(ValueError, match="absorbed case needs head_dim_v"):
        KvcacheCase(4, 1, 1, 1, 32, 16, 1, 64, "bfloat16", absorbed=True)
    needs = kvcache_features(KvcacheCase(4, 1, 1, 1, 32, 16, 1, 64, "bfloat16", head_dim_v=48, absorbed=True))
    assert "absorbed_decode" in needs and "value_head_dim" not in needs


def zeros(*shape):
    return torch.zeros(*shape, device=DEVICE)


def _inputs(d=48, dv=32, paged=False):
    q = zeros(2, 4, 1, d)
    shape = (3, 16, 1) if paged else (2, 16, 1)
    lens = torch.tensor([3, 4], dtype=torch.int32, device=DEVICE)
    return q, zeros(*shape, d), zeros(*shape, dv), lens


def test_value_head_dim_shapes_and_no_duplicate_cache():
    q, k_cache, v_cache, lens = _inputs()
    out = flash_attention_with_kvcache(q, k_cache, v_cache, cache_seqlens=lens)
    assert out.shape == (2, 4, 1, 32)
    k_new = torch.ones(2, 1, 1, 48, device=DEVICE)
    out, lse = flash_attention_with_kvcache(q, k_cache, None, k=k_new, cache_seqlens=lens, v_head_dim=40,
                                            return_lse=True)
    assert out.shape == (2, 4, 1, 40) and lse.shape == (2, 4, 1)
    # The append wrote k alone, at positions 3 and 4 (cache_seqlens), nothing else.
    assert bool(k_cache[0, 3].eq(1).all() and k_cache[1, 4].eq(1).all()) and int(k_cache.sum()) == 2 * 48


@pytest.mark.parametrize("call, error, match", [
    (lambda q, kc, vc, lens: flash_attention_with_kvcache(q, kc, None, cache_seqlens=lens), ValueError,
     "needs v_head_dim"),
    (lambda q, kc, vc, lens: flash_attention_with_kvcache(q, kc, vc, cache_seqlens=lens, v_head_dim=32), ValueError,
     "only for v_cache=None"),
    (lambda q, kc, vc, lens: flash_attention_with_kvcache(q, kc, None, cache_seqlens=lens, v_head_dim=49), ValueError,
     r"min\(D=48, 512\)"),
    (lambda q, kc, vc, lens: flash_attention_with_kvcache(q, kc, None, cache_seqlens=lens, v_head_dim=0), ValueError,
     "v_head_dim"),
    (lambda q, kc, vc, lens: flash_attention_with_kvcache(q, kc, None, cache_seqlens=lens, v_head_dim=32.0),
     ValueError, "must be an int"),
    (lambda q, kc, vc, lens: flash_attention_with_kvcache(
        q, kc, None, k=zeros(2, 1, 1, 48), v=zeros(2, 1, 1, 32), cache_seqlens=lens, v_head_dim=32),
     ValueError, "v must be None"),
    (lambda q, kc, vc, lens: flash_attention_with_kvcache(q, kc, vc[:, :8], cache_seqlens=lens), ValueError,
     "agree but for the head dim"),
    (lambda q, kc, vc, lens: flash_attention_with_kvcache(
        q, kc, vc, k=zeros(2, 1, 1, 48), v=zeros(2, 1, 1, 48), cache_seqlens=lens), ValueError,
     r"v must have shape \(2, 1, Lnew, 32\)"),
    (lambda q, kc, vc, lens: flash_attention_with_kvcache(
        q, kc, vc, k=zeros(2, 1, 1, 48), v=zeros(2, 1, 2, 32), cache_seqlens=lens), ValueError,
     "one Lnew"),
    (lambda q, kc, vc, lens: flash_attention_with_kvcache(
        zeros(2, 4, 1, 576), zeros(2, 16, 1, 576), zeros(2, 16, 1, 512), cache_seqlens=lens),
     ValueError, r"\[1, 256\].*absorbed"),
    (lambda q, kc, vc, lens: flash_attention_with_kvcache(
        zeros(2, 4, 1, 800), zeros(2, 16, 1, 800), None, cache_seqlens=lens, v_head_dim=512),
     ValueError, "rope columns D - v_head_dim must be at most 256"),
    (lambda q, kc, vc, lens: flash_attention_with_kvcache(
        zeros(2, 4, 1, 1088), zeros(2, 16, 1, 1088), None, cache_seqlens=lens, v_head_dim=1024),
     ValueError, r"min\(D=1088, 512\)"),
    (lambda q, kc, vc, lens: flash_attention_with_kvcache(q, kc, zeros(2, 16, 1, 300), cache_seqlens=lens),
     ValueError, r"Dv must lie in \[1, 256\]"),
    (lambda q, kc, vc, lens: flash_attention_with_kvcache(q, kc[..., :40], vc, cache_seqlens=lens), ValueError,
     "k_cache's head dim must be q's 48"),
])
def test_bad_inputs(call, error, match):
    q, k_cache, v_cache, lens = _inputs()
    with pytest.raises(error, match=match):
        call(q, k_cache, v_cache, lens)


def test_the_fake_implementation_gives_dv_wide_outputs():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q, k_cache = torch.empty(2, 16, 1, 576), torch.empty(2, 64, 1, 576)
        lens = torch.empty(2, dtype=torch.int32)
        out, lse = torch.ops.flashref.attention_with_kvcache(q, k_cache, None, lens, 0, None, None, None, True, 0.1,
                                                             -1, -1, 0.0, 0, False, 512)
        assert out.shape == (2, 16, 1, 512) and lse.shape == (2, 16, 1)
        out, _ = torch.ops.flashref.attention_with_kvcache(q[..., :192], k_cache[..., :192],
                                                           torch.empty(2, 64, 1, 128), lens, 0, None, None, None,
                                                           True, 0.1, -1, -1, 0.0, 0, False, 128)
        assert out.shape == (2, 16, 1, 128)
