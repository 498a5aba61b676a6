"""Host-side checks shared by every entry point (``flash_attention``, ``_varlen``,
``_with_kvcache``, the custom ops, SDPA routing, ring attention): a clear ``TypeError`` /
``ValueError`` naming the bad argument, before any launch.
"""

import math
import numbers
from typing import Optional

import torch

from .tile_tables import MAX_HEAD_DIM, SUPPORTED_DTYPES
from .launch import INTERPRETED, kvcache_capacity

CAUSAL_ALIGNMENTS = ("top_left", "bottom_right")
#: The FP8 forward's input dtype (FA3's): e4m3, 3 mantissa bits. e5m2 is refused.
FP8_DTYPES = (torch.float8_e4m3fn,)
#: The oldest compute capability with FP8 tensor cores (Ada, sm_89; Hopper sm_90 has wgmma).
FP8_MIN_CAPABILITY = (8, 9)
CU_SEQLENS_DTYPES = (torch.int32, torch.int64)
DROPOUT_SEED_LIMIT = 2**63


def is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_attention_tensors(named: dict, layout: str = "(batch, heads, seqlen, head_dim)", fp8: bool = False) -> None:
    """The checks every entry point makes on its attention tensors (``named``: argument name ->
    value, q first): torch tensors, 4-D (``layout`` names the axes in the message), float16 /
    bfloat16 / float32 (also float8_e4m3fn with ``fp8``: ``flash_attention``'s FP8 forward),
    and q's dtype and device. TypeError / ValueError naming the argument."""
    (q_name, q), *others = named.items()
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D {layout}, got shape {tuple(t.shape)}")
        if t.dtype not in SUPPORTED_DTYPES and not (fp8 and t.dtype in FP8_DTYPES):
            also = " (or float8_e4m3fn for flash_attention's FP8 forward)" if t.dtype in (
                torch.float8_e4m3fn, torch.float8_e5m2) else ""
            raise TypeError(f"{name} must be float16, bfloat16 or float32{also}, got {t.dtype}")
    for name, t in others:
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have {q_name}'s dtype {q.dtype}, got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} must be on {q_name}'s device {q.device}, got {t.device}")


def check_qkv(q, k, v, causal, causal_alignment, softmax_scale, kv_lens, fp8: bool = False):
    """q (B, Hq, Lq, D), k (B, Hkv, Lk, D) and v (B, Hkv, Lk, Dv) (Dv may differ from D: MLA;
    each in [1, MAX_HEAD_DIM]), the masking keywords, the scale and kv_lens of an attention
    call; also that the kernels can run on q's device. ``fp8``: float8_e4m3fn inputs are
    allowed (``check_fp8`` checks the rest)."""
    check_attention_tensors({"q": q, "k": k, "v": v}, fp8=fp8)
    batch, heads_q, _, head_dim = q.shape
    if k.shape[0] != batch or v.shape[0] != batch:
        raise ValueError(f"batch sizes differ: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if v.shape[1:3] != k.shape[1:3]:
        raise ValueError(f"v must have k's heads and seqlen {tuple(k.shape[1:3])}, got shape {tuple(v.shape)}")
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be between 1 and {MAX_HEAD_DIM}, got q with head_dim {head_dim}")
    if k.shape[3] != head_dim:
        raise ValueError(f"k must have q's head_dim {head_dim}, got {k.shape[3]}")
    if not 1 <= v.shape[3] <= MAX_HEAD_DIM:
        raise ValueError(f"v's head_dim Dv must be between 1 and {MAX_HEAD_DIM} (it may differ from q's "
                         f"{head_dim}), got {v.shape[3]}")
    heads_kv = k.shape[1]
    if heads_kv == 0 and heads_q != 0 or heads_kv and heads_q % heads_kv != 0:
        raise ValueError(f"q's heads ({heads_q}) must be a multiple of k's and v's heads ({heads_kv}) (GQA/MQA)")
    check_causal_and_scale(causal, softmax_scale)
    if causal_alignment not in CAUSAL_ALIGNMENTS:
        raise ValueError(f"causal_alignment must be one of {CAUSAL_ALIGNMENTS}, got {causal_alignment!r}")
    if kv_lens is not None:
        check_kv_lens(kv_lens, batch, k.shape[2], q.device)
    if q.device.type == "cpu" and not INTERPRETED:
        raise ValueError(
            "q is a CPU tensor but the Triton kernels were compiled for a GPU. To run them on the CPU "
            "with Triton's interpreter, set TRITON_INTERPRET=1 in the environment before triton and "
            "flashref.kernels are imported (e.g. `TRITON_INTERPRET=1 python ...`).")


def check_causal_and_scale(causal, softmax_scale) -> None:
    """``causal`` a bool; ``softmax_scale`` None or a positive finite number."""
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if softmax_scale is not None:
        if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float)):
            raise TypeError(f"softmax_scale must be a float or None, got {type(softmax_scale).__name__}")
        if not (math.isfinite(softmax_scale) and softmax_scale > 0):
            raise ValueError(f"softmax_scale must be positive and finite, got {softmax_scale}")


def check_kv_lens(kv_lens, batch: int, seqlen_k: int, device, what: str = "k's seqlen") -> None:
    """``kv_lens``: an integer tensor (batch,) on ``device`` with values in [0, seqlen_k]; else
    TypeError / ValueError naming it (``what`` says where seqlen_k comes from)."""
    if not isinstance(kv_lens, torch.Tensor):
        raise TypeError(f"kv_lens must be an integer torch.Tensor of shape ({batch},), got {type(kv_lens).__name__}")
    if kv_lens.dtype not in (torch.int32, torch.int64, torch.int16, torch.uint8, torch.int8):
        raise TypeError(f"kv_lens must have an integer dtype, got {kv_lens.dtype}")
    if tuple(kv_lens.shape) != (batch,):
        raise ValueError(f"kv_lens must have shape ({batch},) (one length per batch), got {tuple(kv_lens.shape)}")
    if kv_lens.device != device:
        raise ValueError(f"kv_lens must be on q's device {device}, got {kv_lens.device}")
    # Under torch.compile a value check would break the graph; the op repeats it (library.py).
    if batch and not torch.compiler.is_compiling() and (int(kv_lens.min()) < 0 or int(kv_lens.max()) > seqlen_k):
        raise ValueError(f"kv_lens must lie in [0, {seqlen_k}] ({what}), got {kv_lens.tolist()}")


def check_float32_vector(name, t, q, shapes, what):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a float32 torch.Tensor of shape {what}, got {type(t).__name__}")
    if t.dtype != torch.float32:
        raise TypeError(f"{name} must be float32, got {t.dtype}")
    if tuple(t.shape) not in shapes:
        raise ValueError(f"{name} must have shape {what}, got {tuple(t.shape)}")
    if t.device != q.device:
        raise ValueError(f"{name} must be on q's device {q.device}, got {t.device}")


def check_variants(q, window_size, softcap, alibi_slopes, sinks, dropout_p, dropout_seed):
    """The variant arguments of an attention call on q (B, Hq, ..., D): TypeError / ValueError
    naming the bad one."""
    batch, heads_q = q.shape[:2]
    if not isinstance(window_size, (tuple, list)) or len(window_size) != 2:
        raise TypeError(f"window_size must be a (left, right) pair of ints, got {window_size!r}")
    for side, w in zip(("left", "right"), window_size):
        if not is_int(w):
            raise TypeError(f"window_size's {side} entry must be an int (-1 = unbounded), got {w!r}")
        if w < -1:
            raise ValueError(f"window_size's {side} entry must be -1 (unbounded) or >= 0, got {w}")
    if not is_real(softcap):
        raise TypeError(f"softcap must be a float (0 = off), got {type(softcap).__name__}")
    if not (math.isfinite(softcap) and softcap >= 0):
        raise ValueError(f"softcap must be finite and >= 0 (0 = off), got {softcap}")
    if alibi_slopes is not None:
        check_float32_vector("alibi_slopes", alibi_slopes, q, ((heads_q,), (batch, heads_q)),
                              f"({heads_q},) or ({batch}, {heads_q})")
        if not torch.compiler.is_compiling() and not bool(torch.isfinite(alibi_slopes).all()):  # the op repeats it
            raise ValueError("alibi_slopes must be finite")
    if sinks is not None:
        check_float32_vector("sinks", sinks, q, ((heads_q,),), f"({heads_q},)")
        if not torch.compiler.is_compiling() and not bool(torch.isfinite(sinks).all()):  # the op repeats it
            raise ValueError("sinks must be finite")
    if not is_real(dropout_p):
        raise TypeError(f"dropout_p must be a float in [0, 1), got {type(dropout_p).__name__}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must lie in [0, 1), got {dropout_p}")
    if dropout_seed is not None:
        if not is_int(dropout_seed):
            raise TypeError(f"dropout_seed must be an int in [0, 2**63) or None, got {type(dropout_seed).__name__}")
        if not 0 <= dropout_seed < DROPOUT_SEED_LIMIT:
            raise ValueError(f"dropout_seed must lie in [0, 2**63), got {dropout_seed}")


def variant_arguments(alibi_slopes, sinks, window_size):
    """Checked variants as the custom ops take them: ``(alibi_slopes, sinks, left, right)``, the
    slopes detached and contiguous (no gradient), the sinks contiguous (differentiable: the
    gradient flows back to the caller's tensor), the window's sides as ints."""
    if alibi_slopes is not None:
        alibi_slopes = alibi_slopes.detach().contiguous()
    if sinks is not None:
        sinks = sinks.contiguous()
    left, right = (int(w) for w in window_size)
    return alibi_slopes, sinks, left, right


def check_values(kv_lens: Optional[torch.Tensor], alibi: Optional[torch.Tensor], sinks: Optional[torch.Tensor],
                  seqlen_k: int) -> None:
    """The input checks that read tensor values. ``flash_attention`` does them in eager mode;
    under ``torch.compile`` it cannot (a data-dependent branch breaks the graph), so the op
    repeats them here, where they run eagerly in either case, still before any launch."""
    if kv_lens is not None and kv_lens.numel() and (int(kv_lens.min()) < 0 or int(kv_lens.max()) > seqlen_k):
        raise ValueError(f"kv_lens must lie in [0, {seqlen_k}] (k's seqlen), got {kv_lens.tolist()}")
    for name, t in (("alibi_slopes", alibi), ("sinks", sinks)):
        if t is not None and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} must be finite")


# ---------------------------------------------------------------------------------------------
# Packed sequences (flash_attention_varlen)

def check_cu_seqlens_tensor(name, cu, total, max_seqlen, q, batch=None, values=True) -> None:
    """cu_seqlens (B + 1,) int32 (or int64) on q's device with ``batch + 1`` entries when
    ``batch`` is given, ``max_seqlen`` an int >= 0, ``total`` (the packed length) within int32;
    with ``values`` also what needs the tensor's values (``check_cu_seqlens_values``)."""
    if not isinstance(cu, torch.Tensor):
        raise TypeError(f"{name} must be an int32 torch.Tensor (B + 1,), got {type(cu).__name__}")
    if cu.dtype not in CU_SEQLENS_DTYPES:
        raise TypeError(f"{name} must be int32 (or int64, converted), got {cu.dtype}")
    if cu.dim() != 1 or cu.shape[0] < 1:
        raise ValueError(f"{name} must have shape (B + 1,) with B >= 0, got {tuple(cu.shape)}")
    if batch is not None and cu.shape[0] != batch + 1:
        raise ValueError(f"{name} must have {batch + 1} entries, like cu_seqlens_q, got {cu.shape[0]}")
    if cu.device != q.device:
        raise ValueError(f"{name} must be on q's device {q.device}, got {cu.device}")
    if not is_int(max_seqlen) or max_seqlen < 0:
        raise TypeError(f"max_seqlen for {name} must be an int >= 0, got {max_seqlen!r}")
    if total >= 2**31:
        raise ValueError(f"{name}: packed length {total} does not fit int32")
    if values:
        check_cu_seqlens_values(name, cu, total, max_seqlen)


def check_cu_seqlens_values(name, cu, total, max_seqlen) -> None:
    """Starts at 0, non-decreasing, ends at ``total``, no length above ``max_seqlen``: one
    device-to-host copy of four reductions (on a GPU, one sync), never one per sequence."""
    lengths = cu[1:] - cu[:-1]
    first, last, min_len, max_len = torch.stack([
        cu[0].to(torch.int64), cu[-1].to(torch.int64),
        lengths.min().to(torch.int64) if lengths.numel() else cu.new_zeros((), dtype=torch.int64),
        lengths.max().to(torch.int64) if lengths.numel() else cu.new_zeros((), dtype=torch.int64),
    ]).tolist()
    if first != 0:
        raise ValueError(f"{name} must start at 0, got {first}")
    if min_len < 0:
        raise ValueError(f"{name} must be non-decreasing, got {cu.tolist()}")
    if last != total:
        raise ValueError(f"{name}'s last entry must be the packed length {total}, got {last}")
    if max_len > max_seqlen:
        raise ValueError(f"{name}: a sequence of length {max_len} exceeds max_seqlen={max_seqlen}")


# ---------------------------------------------------------------------------------------------
# Decoding against a KV cache (flash_attention_with_kvcache)

#: MLA's absorbed decode (``v_cache=None, v_head_dim=Dv``): the latent (value) columns Dv and
#: the rope columns D - Dv each fit one power-of-two tile of the decode kernel (DeepSeek: 512 + 64).
MAX_LATENT_DIM = 512
MAX_ROPE_DIM = MAX_HEAD_DIM


def check_kvcache_call(q, k_cache, v_cache, k, v, cache_seqlens, block_table, causal, softmax_scale, window_size,
                       softcap, alibi_slopes, sinks, num_splits, v_head_dim=None) -> tuple[int, int]:
    """Every check of a KV-cache call that reads no tensor value. Returns (Lnew, Dv): the new
    tokens appended per sequence and the value head dim (v_cache's last dim, or ``v_head_dim``
    with ``v_cache=None``: MLA's absorbed decode, values = ``k_cache[..., :Dv]``)."""
    absorbed = v_cache is None
    named = {"q": q, "k_cache": k_cache} if absorbed else {"q": q, "k_cache": k_cache, "v_cache": v_cache}
    check_attention_tensors(named, "(q: (B, Hq, Lq, D); a cache: (B, Lmax, Hkv, D) or (pages, page_size, Hkv, D))")
    batch, heads_q, seqlen_q, head_dim = q.shape
    heads_kv = k_cache.shape[2]
    if k_cache.shape[3] != head_dim:
        raise ValueError(f"k_cache's head dim must be q's {head_dim}, got {k_cache.shape[3]}")
    if absorbed:
        if v_head_dim is None:
            raise ValueError("v_cache=None needs v_head_dim (MLA's absorbed decode: the values are the first "
                             "v_head_dim columns of k_cache); otherwise pass v_cache")
        if not is_int(v_head_dim) or not 1 <= v_head_dim <= min(head_dim, MAX_LATENT_DIM):
            raise ValueError(f"v_head_dim (the latent columns of k_cache that are also the values) must be an int "
                             f"in [1, min(D={head_dim}, {MAX_LATENT_DIM})], got {v_head_dim!r}")
        if head_dim - v_head_dim > MAX_ROPE_DIM:
            raise ValueError(f"with v_cache=None the rope columns D - v_head_dim must be at most {MAX_ROPE_DIM}, "
                             f"got D={head_dim}, v_head_dim={v_head_dim}")
        head_dim_v = int(v_head_dim)
    else:
        if v_head_dim is not None:
            raise ValueError("v_head_dim is only for v_cache=None (MLA's absorbed decode, values = the first "
                             "v_head_dim columns of k_cache); with a v_cache the value head dim is v_cache.shape[3]")
        if k_cache.shape[:3] != v_cache.shape[:3]:
            raise ValueError(f"k_cache and v_cache must agree but for the head dim ((B, Lmax, Hkv) or (pages, "
                             f"page_size, Hkv)), got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
        head_dim_v = v_cache.shape[3]
        if not 1 <= head_dim <= MAX_HEAD_DIM:
            raise ValueError(f"head_dim must lie in [1, {MAX_HEAD_DIM}] (above it only as MLA's absorbed decode, "
                             f"v_cache=None with v_head_dim), got q with head_dim {head_dim}")
        if not 1 <= head_dim_v <= MAX_HEAD_DIM:
            raise ValueError(f"v_cache's head dim Dv must lie in [1, {MAX_HEAD_DIM}] (it may differ from q's: MLA), "
                             f"got {head_dim_v}")
    if heads_kv == 0 or heads_q % heads_kv:
        raise ValueError(f"q's heads ({heads_q}) must be a multiple of the cache's heads ({heads_kv})")
    if not isinstance(cache_seqlens, torch.Tensor) or cache_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"cache_seqlens must be an int32 torch.Tensor ({batch},), got "
                        f"{getattr(cache_seqlens, 'dtype', type(cache_seqlens).__name__)}")
    if tuple(cache_seqlens.shape) != (batch,) or cache_seqlens.device != q.device:
        raise ValueError(f"cache_seqlens must have shape ({batch},) on {q.device}, got {tuple(cache_seqlens.shape)} "
                         f"on {cache_seqlens.device}")
    if absorbed and v is not None:
        raise ValueError("with v_cache=None (absorbed decode) give only k: its first v_head_dim columns are the "
                         "new values; v must be None")
    if not absorbed and (k is None) != (v is None):
        raise ValueError("give both k and v (the new tokens) or neither")
    new_len = 0
    if k is not None:
        news = (("k", k, head_dim),) if absorbed else (("k", k, head_dim), ("v", v, head_dim_v))
        for name, t, width in news:
            if not isinstance(t, torch.Tensor) or t.dtype != q.dtype or t.device != q.device:
                raise TypeError(f"{name} must be a torch.Tensor with q's dtype and device")
            if tuple(t.shape[:2]) != (batch, heads_kv) or t.dim() != 4 or t.shape[3] != width:
                raise ValueError(f"{name} must have shape ({batch}, {heads_kv}, Lnew, {width}), got {tuple(t.shape)}")
        if not absorbed and k.shape[2] != v.shape[2]:
            raise ValueError(f"k and v must have one Lnew, got {tuple(k.shape)} and {tuple(v.shape)}")
        new_len = k.shape[2]
    if block_table is None:
        if k_cache.shape[0] != batch:
            raise ValueError(f"a contiguous k_cache must be (B={batch}, Lmax, Hkv, D), got {tuple(k_cache.shape)}")
    else:
        if not isinstance(block_table, torch.Tensor) or block_table.dtype != torch.int32:
            raise TypeError(f"block_table must be an int32 torch.Tensor (B, max_pages), got "
                            f"{getattr(block_table, 'dtype', type(block_table).__name__)}")
        if block_table.dim() != 2 or block_table.shape[0] != batch or block_table.device != q.device:
            raise ValueError(f"block_table must have shape ({batch}, max_pages) on {q.device}, got "
                             f"{tuple(block_table.shape)}")
        page_size = k_cache.shape[1]
        if page_size == 0 or page_size % 16:
            raise ValueError(f"page_size (k_cache.shape[1]) must be a positive multiple of 16, got {page_size}")
    if not is_int(num_splits) or num_splits < 0:
        raise ValueError(f"num_splits must be an int >= 0 (0 = heuristic), got {num_splits!r}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if softmax_scale is not None and (isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float))
                                      or not (math.isfinite(softmax_scale) and softmax_scale > 0)):
        raise ValueError(f"softmax_scale must be a positive finite float or None, got {softmax_scale!r}")
    check_variants(q, window_size, softcap, alibi_slopes, sinks, 0.0, None)
    return new_len, head_dim_v


def check_kvcache_values(k_cache, cache_seqlens, block_table, new_len) -> None:
    """``cache_seqlens + Lnew`` within the capacity, the block table's pages in use in range:
    one device-to-host copy of a few reductions."""
    if cache_seqlens.numel() == 0:
        return
    capacity = kvcache_capacity(k_cache, block_table)
    vals = [cache_seqlens.min().to(torch.int64), cache_seqlens.max().to(torch.int64)]
    if block_table is not None:
        page_size = k_cache.shape[1]
        used = torch.arange(block_table.shape[1], device=block_table.device)[None, :] * page_size < (
            cache_seqlens[:, None] + new_len)
        bad = used & ((block_table < 0) | (block_table >= k_cache.shape[0]))
        vals.append(bad.any().to(torch.int64))
    got = torch.stack(vals).tolist()
    if got[0] < 0 or got[1] + new_len > capacity:
        raise ValueError(f"cache_seqlens + Lnew ({new_len}) must lie in [0, {capacity}] (the cache's capacity), "
                         f"got cache_seqlens {cache_seqlens.tolist()}")
    if block_table is not None and got[2]:
        raise ValueError(f"block_table must hold page indices in [0, {k_cache.shape[0]}) for every page in use")


def check_fp8(q, k, v, q_descale, k_descale, v_descale, out_dtype, softcap, alibi_slopes, dropout_p) -> torch.Tensor:
    """The FP8 forward's own checks (q, k, v float8_e4m3fn, already through ``check_qkv``):
    each descale None (1) or a float32 (B, Hkv) tensor on q's device (FA3's per-(batch, kv
    head) convention: the real value is ``fp8 * descale``), ``out_dtype`` bfloat16 / float16 /
    float32, no softcap, ALiBi or dropout (not supported with FP8), and a device with FP8
    tensor cores. Returns the descales as one (B, Hkv, 3) float32 contiguous tensor (q, k, v),
    the kernel's ``Descale``."""
    batch, heads_kv = k.shape[0], k.shape[1]
    columns = []
    for name, d in (("q_descale", q_descale), ("k_descale", k_descale), ("v_descale", v_descale)):
        if d is None:
            columns.append(torch.ones((batch, heads_kv), dtype=torch.float32, device=q.device))
            continue
        if not isinstance(d, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor (float32, (batch, heads_kv)) or None, got {type(d).__name__}")
        if d.dtype != torch.float32:
            raise TypeError(f"{name} must be float32, got {d.dtype}")
        if tuple(d.shape) != (batch, heads_kv):
            raise ValueError(f"{name} must have shape (batch, heads_kv) = {(batch, heads_kv)} (one factor per "
                             f"batch entry and kv head, FA3's convention), got {tuple(d.shape)}")
        if d.device != q.device:
            raise ValueError(f"{name} must be on q's device {q.device}, got {d.device}")
        columns.append(d.detach())
    if out_dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise TypeError(f"out_dtype must be torch.bfloat16, torch.float16 or torch.float32 with FP8 inputs, got {out_dtype}")
    for feature, used in (("softcap", softcap > 0), ("alibi_slopes", alibi_slopes is not None),
                          ("dropout_p", dropout_p > 0)):
        if used:
            raise ValueError(f"{feature} is not supported with FP8 inputs (the FP8 forward supports causal, "
                             f"kv_lens, GQA, window_size and sinks)")
    if q.device.type == "cuda" and tuple(torch.cuda.get_device_capability(q.device)) < FP8_MIN_CAPABILITY:
        major, minor = torch.cuda.get_device_capability(q.device)
        raise ValueError(f"FP8 attention needs FP8 tensor cores (sm_89 or newer); this GPU is sm_{major}{minor}. "
                         f"Dequantize to bfloat16 and call flash_attention on that instead.")
    return torch.stack(columns, dim=-1).contiguous()
