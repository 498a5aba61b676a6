"""The launch layer: everything between a checked call and the Triton kernels.

Resolved parameters as one object built once (``LaunchParams``, ``resolve_launch``), the
configuration (autotuned over the tables on a GPU, ``config_dispatch.interpreter_config`` under the
interpreter), output buffers and their NaN poisoning (``poisoned_outputs``), the Hopper path's
tensor descriptors (``tensor_descriptors``, ``tma_ok``), the dropout seed
(``dropout_seed_for``, ``last_dropout_seed``), and the launches themselves
(``launch_forward``, ``launch_backward``; ``launch_decode`` for a KV cache). It calls only the
kernels and the config tables; the custom ops (kernels/library.py) and ring attention call it. The
math lives in attention_forward.py / attention_backward.py and docs/kernels.md.
"""

import contextlib
import contextvars
import os
from dataclasses import dataclass

import torch
import triton
from triton.runtime.interpreter import InterpretedFunction

from .attention_backward import (
    attention_backward_delta_kernel,
    attention_backward_dkdv_kernel,
    attention_backward_dq_kernel,
)
from .attention_blocks import LOG2E
from .attention_decode import decode_combine_kernel, decode_split_kernel, decode_tile
from .attention_forward import attention_forward_kernel
from .config_dispatch import all_triton_configs, config_pruner, interpreter_config
from .tile_tables import DKDV_LAUNCHES, KernelConfig, dkdv_passes, padded_head_dim
from .tile_loads import HAS_TENSOR_DESCRIPTORS

# float32 inputs: plain tf32 (10-bit mantissa) would be ~1000x worse than the float32
# baseline the rule compares against. "tf32x3" (three tensor-core products) spilled registers
# at every tile the compile gate tried for head dim 128, so float32 takes exact FMA dots on
# small tiles: a correctness path, not a performance one (docs/kernels.md).
FLOAT32_DOT_PRECISION = "ieee"

# The delta kernel's launch (one row block of dO . O per program; the compile gate compiles
# exactly this): 8 warps. With 4, ptxas on sm_100 put 8 B of a float16 row on the stack at
# head dims 40 and 64 (48 registers; 8 warps: 32, clean).
DELTA_BLOCK_M = 64
DELTA_WARPS = 8

# Triton 3.9 warns when this is unset and 3.10 flips its default. The kernels are written for
# fused multiply-adds (the softmax's ``qk * qk_scale - m`` is one FMA), so say so explicitly;
# a value the user set wins.
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

#: True when these kernels were decorated while ``TRITON_INTERPRET=1`` (it is read when
#: ``@triton.jit`` runs, i.e. when this package is first imported): they then run on CPU
#: tensors, program after program, with NumPy.
INTERPRETED = isinstance(attention_forward_kernel, InterpretedFunction)

#: The Hopper path (kernels/tile_loads.py): "auto" takes it where ``tma_ok`` allows (compiled
#: kernels on a capability 9.x or 10.x device: Hopper, Blackwell datacenter), "on" also under the interpreter (tests check its numerics
#: there), "off" never. The environment variable FLASHREF_TMA sets the process default.
_tma_mode = contextvars.ContextVar("flashref_tma_mode", default=os.environ.get("FLASHREF_TMA", "auto"))


@contextlib.contextmanager
def tensor_descriptors(mode: str):
    """Within this block the forward's Hopper path is ``mode``: "auto", "on" or "off"."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"mode must be 'auto', 'on' or 'off', got {mode!r}")
    token = _tma_mode.set(mode)
    try:
        yield
    finally:
        _tma_mode.reset(token)


def tma_ok(*tensors: torch.Tensor) -> bool:
    """Whether the forward loads its tiles through tensor descriptors (TMA): the triton has
    them, inputs are 16-bit, and each tensor's last stride is 1 and its base and other strides
    are 16-byte aligned (the copy engine's rules); on a GPU, one of compute capability 9.x or
    10.x (the compile gate's ``TMA_ARCHS``: sm_90, sm_100; its rows there show TMA bulk copies)."""
    mode = _tma_mode.get()
    if mode == "off" or not HAS_TENSOR_DESCRIPTORS or tensors[0].dtype == torch.float32:
        return False
    size = tensors[0].element_size()
    for t in tensors:
        if t.stride(-1) != 1 or t.data_ptr() % 16 or any(st * size % 16 for st in t.stride()[:-1]):
            return False
    if INTERPRETED:
        return mode == "on"
    if tensors[0].device.type != "cuda" or torch.cuda.get_device_capability(tensors[0].device)[0] not in (9, 10):
        return False
    _install_descriptor_allocator()
    return True


def _install_descriptor_allocator() -> None:
    """Descriptors made inside a kernel live in a global-memory scratch buffer that triton
    asks the host for (``triton.set_allocator``); torch's caching allocator provides it."""
    global _ALLOCATOR_SET
    if not _ALLOCATOR_SET:
        triton.set_allocator(lambda size, alignment, stream: torch.empty(size, device="cuda", dtype=torch.int8))
        _ALLOCATOR_SET = True


_ALLOCATOR_SET = False

_poison_outputs = contextvars.ContextVar("flashref_poison_outputs", default=False)
_last_dropout_seed = contextvars.ContextVar("flashref_last_dropout_seed", default=None)


def dropout_seed_for(dropout_p: float, dropout_seed: int | None) -> int:
    """The Philox seed a launch uses: 0 without dropout, else ``dropout_seed`` or, when it is
    None, one drawn from torch's default generator (``torch.randint(0, 2**62, (1,))``); the
    seed of a call with dropout is remembered for ``last_dropout_seed()``."""
    if dropout_p <= 0:
        return 0
    seed = int(torch.randint(0, 2**62, (1,)).item()) if dropout_seed is None else int(dropout_seed)
    _last_dropout_seed.set(seed)
    return seed


def last_dropout_seed() -> int | None:
    """The Philox seed of the latest ``flash_attention`` call with ``dropout_p > 0`` in this
    thread / context (the one drawn when ``dropout_seed=None``, else the one given); None
    before any. Pass it back as ``dropout_seed`` (or to the oracle) to replay that call's keep
    mask bit for bit. A drawn seed also follows ``torch.manual_seed``: it is
    ``torch.randint(0, 2**62, (1,)).item()`` on torch's default CPU generator."""
    return _last_dropout_seed.get()


@contextlib.contextmanager
def poisoned_outputs():
    """Within this block every buffer the kernels write (out, lse, delta, dq, dk, dv) is filled
    with NaN before the launch, so an element a kernel forgets to write shows up as NaN.
    A testing hook: the equivalence checker uses it; it costs one fill per buffer."""
    token = _poison_outputs.set(True)
    try:
        yield
    finally:
        _poison_outputs.reset(token)


def new_buffer(like: torch.Tensor, *, shape=None, dtype=None) -> torch.Tensor:
    """An output buffer: q's layout when ``shape`` is None (so a transposed view's output is a
    transposed view too), else contiguous; NaN-filled inside ``poisoned_outputs()``."""
    if shape is None:
        buf = torch.empty_like(like, dtype=dtype)
    else:
        buf = torch.empty(shape, dtype=dtype or like.dtype, device=like.device)
    if _poison_outputs.get():
        buf.fill_(float("nan"))
    return buf


def output_buffer(q: torch.Tensor, head_dim_v: int, *, dtype=None) -> torch.Tensor:
    """out's buffer for q (..., D) and a value head dim Dv: ``new_buffer(q)``'s layout when Dv
    is D, else contiguous (..., Dv) (MLA)."""
    if head_dim_v == q.shape[-1]:
        return new_buffer(q, dtype=dtype)
    return new_buffer(q, shape=(*q.shape[:-1], head_dim_v), dtype=dtype)


def _autotuned(kernel, name, extra_key=()):
    return triton.autotune(
        configs=all_triton_configs(name),
        key=["seqlen_q", "seqlen_k", "HEAD_DIM", "HEAD_DIM_V", "RIGHT_BOUND", "HAS_KV_LENS",
             "SHIFT_KV_LEN", "LEFT_BOUND", "SOFTCAP", "ALIBI", "DROPOUT", "VARLEN", *extra_key],
        prune_configs_by={"early_config_prune": config_pruner(name)},
    )(kernel)


# Autotuning cannot run under the interpreter ("0 active drivers"), so the tuned wrappers are
# only made when compiling for a GPU.
if not INTERPRETED:
    _FORWARD = _autotuned(attention_forward_kernel, "forward", extra_key=("SINKS", "IS_FP8"))
    # Each dK/dV pass (GRADS) is tuned on its own: a dV pass costs less than a dK pass.
    _DKDV = _autotuned(attention_backward_dkdv_kernel, "backward_dkdv", extra_key=("GRADS",))
    _DQ = _autotuned(attention_backward_dq_kernel, "backward_dq")


@dataclass(frozen=True)
class LaunchParams:
    """Everything but the tensors that the kernels take, resolved once on the host.

    The three shifts are offsets from the query index (``kv_len[b]`` is added inside the
    kernels when ``shift_kv_len``): key j is visible iff ``j <= i + causal_shift`` (when
    ``right_bound``: causal and/or a right window) and ``j >= i + window_shift`` (when
    ``left_bound``); ALiBi's distance is ``|i + alibi_shift - j|``."""

    right_bound: bool
    left_bound: bool
    shift_kv_len: bool
    causal_shift: int
    window_shift: int
    alibi_shift: int
    scale: float  # softmax_scale
    qk_scale: float  # scale * log2(e), or softcap * log2(e) with a softcap
    softcap_in: float  # scale / softcap (0 without a softcap)
    dropout_p: float
    dropout_scale: float  # 1 / (1 - p)
    seed: int

    @property
    def softcap(self) -> bool:
        return self.softcap_in != 0.0

    @property
    def dropout(self) -> bool:
        return self.dropout_p > 0.0


def resolve_launch(q, k, causal, causal_alignment, scale, kv_lens, window_size, softcap, dropout_p,
                   seed) -> LaunchParams:
    """The launch parameters of a checked dense call, resolved once: q (B, Hq, Lq, D),
    k (B, Hkv, Lk, D)."""
    seqlen_q, seqlen_k = q.shape[2], k.shape[2]
    shift_kv_len = causal_alignment == "bottom_right" and kv_lens is not None
    if causal_alignment == "top_left":
        base = 0
    else:  # the queries are the last Lq tokens: of each sequence with kv_lens (+ kv_len[b] in-kernel)
        base = -seqlen_q if shift_kv_len else seqlen_k - seqlen_q
    return _resolve_shifts(base, shift_kv_len, causal, scale, window_size, softcap, dropout_p, seed)


def resolve_varlen_launch(causal, causal_alignment, scale, window_size, softcap, dropout_p, seed) -> LaunchParams:
    """The launch parameters of a checked packed call: 0-based shifts (top_left); with
    "bottom_right" the kernels add each sequence's ``Lk_b - Lq_b`` (``shift_kv_len``)."""
    return _resolve_shifts(0, causal_alignment == "bottom_right", causal, scale, window_size, softcap, dropout_p,
                           seed)


def resolve_decode_launch(causal, scale, window_size, softcap) -> LaunchParams:
    """The decode kernel's parameters: 0-based shifts (the kernel places query i of sequence b
    at ``L_b - Lq + i`` itself), no dropout."""
    return _resolve_shifts(0, False, causal, scale, window_size, softcap, 0.0, 0)


def _resolve_shifts(base, shift_kv_len, causal, scale, window_size, softcap, dropout_p, seed) -> LaunchParams:
    left, right = (int(w) for w in window_size)
    if causal:  # causal is a right window of 0; with a right window too, the tighter wins
        right = 0 if right < 0 else min(right, 0)
    softcap = float(softcap)
    return LaunchParams(
        right_bound=right >= 0, left_bound=left >= 0, shift_kv_len=shift_kv_len,
        causal_shift=base + right if right >= 0 else 0,
        window_shift=base - left if left >= 0 else 0,
        alibi_shift=base, scale=scale,
        qk_scale=(softcap if softcap > 0 else scale) * LOG2E,
        softcap_in=scale / softcap if softcap > 0 else 0.0,
        dropout_p=float(dropout_p), dropout_scale=1.0 / (1.0 - float(dropout_p)), seed=seed)


@dataclass(frozen=True)
class Varlen:
    """Packed sequences (``flash_attention_varlen``): q (total_q, Hq, D), k and v
    (total_k, Hkv, D); sequence b is rows ``cu_q[b]:cu_q[b + 1]`` of q and ``cu_k[b]:cu_k[b + 1]``
    of k and v. cu_q, cu_k: (B + 1,) int32 on q's device, already checked."""

    cu_q: torch.Tensor
    cu_k: torch.Tensor
    max_q: int
    max_k: int

    @property
    def batch(self) -> int:
        return self.cu_q.shape[0] - 1


def _strides(t: torch.Tensor, varlen: Varlen | None = None) -> tuple[int, ...]:
    """The kernels' (batch, head, row, dim) strides; a packed (total, H, D) tensor has no batch
    axis (stride 0: the kernels add ``cu_seqlens[b] * row stride`` instead)."""
    if varlen is None:
        return tuple(t.stride())
    return (0, t.stride(1), t.stride(0), t.stride(2))


def _meta(q, v, params: LaunchParams, kv_lens, alibi, varlen: Varlen | None = None):
    """The constexprs of a launch: q's head dim D (``HEAD_DIM``) and v's Dv (``HEAD_DIM_V``,
    which may differ: MLA), each with its power-of-two padding, and the switches."""
    head_dim, head_dim_v = q.shape[-1], v.shape[-1]
    return dict(
        VARLEN=varlen is not None,
        HEAD_DIM=head_dim,
        BLOCK_D=padded_head_dim(head_dim),
        HEAD_DIM_V=head_dim_v,
        BLOCK_DV=padded_head_dim(head_dim_v),
        RIGHT_BOUND=params.right_bound,
        HAS_KV_LENS=kv_lens is not None,
        UPCAST=INTERPRETED,
        DOT_PRECISION=FLOAT32_DOT_PRECISION if q.dtype == torch.float32 else "tf32",
        SHIFT_KV_LEN=params.shift_kv_len,
        LEFT_BOUND=params.left_bound,
        SOFTCAP=params.softcap,
        ALIBI=alibi is not None,
        DROPOUT=params.dropout,
    )


def _variant_scalars(params: LaunchParams):
    return (params.window_shift, params.alibi_shift, params.softcap_in, params.dropout_p,
            params.dropout_scale, params.seed)


def _fixed(config: KernelConfig) -> dict:
    return dict(BLOCK_M=config.block_m, BLOCK_N=config.block_n)


def _dims(q, k, varlen: Varlen | None):
    """(batch, heads_q, heads_kv, seqlen_q, seqlen_k, grid_q, grid_k, lse shape): the seqlens
    are the kernels' ``seqlen_q``/``seqlen_k`` arguments (with ``varlen``: total_q, and
    max_seqlen_k, the dropout counters' row stride), grid_q/grid_k the rows the grids cover."""
    if varlen is None:
        batch, heads_q, seqlen_q, _ = q.shape
        seqlen_k = k.shape[2]
        return batch, heads_q, k.shape[1], seqlen_q, seqlen_k, seqlen_q, seqlen_k, (batch, heads_q, seqlen_q)
    total_q, heads_q = q.shape[:2]
    return (varlen.batch, heads_q, k.shape[1], total_q, varlen.max_k, varlen.max_q, varlen.max_k,
            (heads_q, total_q))


def launch_forward(q, k, v, params: LaunchParams, kv_lens, alibi, sinks, varlen: Varlen | None = None,
                   descale=None, out_dtype=None):
    """Launch the forward. Returns out (q's dtype, or ``out_dtype``; q's layout when v's head dim
    Dv is q's, else contiguous (..., Dv)) and lse float32: (B, Hq, Lq), or (Hq, total_q) with
    ``varlen``. FP8 (float8_e4m3fn q, k, v): ``descale`` (B, Hkv, 3) float32
    (``checks.check_fp8``)."""
    batch, heads_q, heads_kv, seqlen_q, seqlen_k, grid_q, _, lse_shape = _dims(q, k, varlen)
    out = output_buffer(q, v.shape[-1], dtype=out_dtype)
    lse = new_buffer(q, shape=lse_shape, dtype=torch.float32)
    if out.numel() == 0:
        return out, lse
    if seqlen_k == 0 or k.shape[0] == 0:  # every row sees no key (but the sink, if any)
        if sinks is None:
            lse.fill_(float("-inf"))
        else:  # lse (Hq, total_q) with varlen, else (B, Hq, Lq)
            lse.copy_((sinks[:, None] if varlen is not None else sinks[None, :, None]).expand_as(lse))
        return out.zero_(), lse
    cu_q, cu_k = (None, None) if varlen is None else (varlen.cu_q, varlen.cu_k)
    args = (q, k, v, out, lse, kv_lens, alibi, sinks, cu_q, cu_k, descale,
            *_strides(q, varlen), *_strides(k, varlen), *_strides(v, varlen), *_strides(out, varlen),
            _alibi_batch_stride(alibi),
            heads_q, heads_q // heads_kv, seqlen_q, seqlen_k, params.causal_shift, params.qk_scale,
            *_variant_scalars(params))
    meta = dict(_meta(q, v, params, kv_lens, alibi, varlen), SINKS=sinks is not None,
                TMA=varlen is None and descale is None and tma_ok(q, k, v), IS_FP8=descale is not None)
    if INTERPRETED:
        c = interpreter_config("forward")
        attention_forward_kernel[(triton.cdiv(grid_q, c.block_m), batch * heads_q)](*args, **meta, **_fixed(c))
    else:
        _FORWARD[lambda m: (triton.cdiv(grid_q, m["BLOCK_M"]), batch * heads_q)](*args, **meta)
    return out, lse


def _alibi_batch_stride(alibi) -> int:
    """Slopes (Hq,) are read at ``h`` for every batch (stride 0), (B, Hq) at ``b * Hq + h``."""
    return 0 if alibi is None or alibi.dim() == 1 else alibi.stride(0)


def launch_backward(q, k, v, out, lse, dout, params: LaunchParams, kv_lens, alibi, sinks, varlen: Varlen | None = None):
    """Launch delta, dK/dV and dQ. Returns dq, dk, dv in the layouts and dtypes of q, k, v, and
    dsinks (Hq,) float32 when ``sinks`` is given (else None)."""
    batch, heads_q, heads_kv, seqlen_q, seqlen_k, grid_q, grid_k, lse_shape = _dims(q, k, varlen)
    head_dim, head_dim_v = q.shape[-1], v.shape[-1]
    dq, dk, dv = new_buffer(q), new_buffer(k), new_buffer(v)
    dsinks = None if sinks is None else torch.zeros_like(sinks)
    if q.numel() == 0 or k.numel() == 0 or grid_k == 0:  # nothing to sum over: every gradient is 0
        return dq.zero_(), dk.zero_(), dv.zero_(), dsinks
    delta = new_buffer(q, shape=lse_shape, dtype=torch.float32)
    delta_block_m = 16 if INTERPRETED else DELTA_BLOCK_M
    delta_grid = (triton.cdiv(grid_q, delta_block_m), batch * heads_q)
    partial = None
    if sinks is not None:
        partial = new_buffer(q, shape=(batch * heads_q, delta_grid[0]), dtype=torch.float32)
    attention_backward_delta_kernel[delta_grid](
        out, dout, delta, lse, sinks, partial, None if varlen is None else varlen.cu_q,
        *_strides(out, varlen), *_strides(dout, varlen), heads_q, seqlen_q,
        HEAD_DIM=head_dim_v, BLOCK_D=padded_head_dim(head_dim_v),  # O and dO live in Dv
        BLOCK_M=delta_block_m, SINKS=sinks is not None, VARLEN=varlen is not None,
        num_warps=DELTA_WARPS, num_stages=1)
    if sinks is not None:
        # dsinks[h] = -sum_{b, i} exp(sinks[h] - lse) * delta: a fixed-order sum (deterministic).
        dsinks = -partial.view(batch, heads_q, -1).sum(dim=(0, 2))

    meta = dict(_meta(q, v, params, kv_lens, alibi, varlen), TMA=varlen is None and tma_ok(q, k, v, dout))
    cu = (None, None) if varlen is None else (varlen.cu_q, varlen.cu_k)
    qkv_strides = (*_strides(q, varlen), *_strides(k, varlen), *_strides(v, varlen), *_strides(dout, varlen))
    tail = (*_variant_scalars(params),)
    dkdv_args = (q, k, v, dout, lse, delta, dk, dv, kv_lens, alibi, *cu, *qkv_strides, *_strides(dk, varlen),
                 *_strides(dv, varlen),
                 _alibi_batch_stride(alibi),
                 heads_q, heads_kv, seqlen_q, seqlen_k, params.causal_shift, params.qk_scale, params.scale, *tail)
    dq_args = (q, k, v, dout, lse, delta, dq, kv_lens, alibi, *cu, *qkv_strides, *_strides(dq, varlen),
               _alibi_batch_stride(alibi),
               heads_q, heads_q // heads_kv, seqlen_q, seqlen_k, params.causal_shift, params.qk_scale,
               params.scale, *tail)
    # One dK/dV launch, or at head dims above 128 (the larger of D, Dv) one per gradient
    # (tile_tables.dkdv_passes).
    if INTERPRETED:
        launch_names = {grads: name for name, grads in DKDV_LAUNCHES.items()}
        for grads in dkdv_passes(max(head_dim, head_dim_v)):
            c = interpreter_config(launch_names[grads])
            attention_backward_dkdv_kernel[(triton.cdiv(grid_k, c.block_n), batch * heads_kv)](
                *dkdv_args, **meta, **_fixed(c), GRADS=grads)
        c = interpreter_config("backward_dq")
        attention_backward_dq_kernel[(triton.cdiv(grid_q, c.block_m), batch * heads_q)](
            *dq_args, **meta, **_fixed(c))
    else:
        for grads in dkdv_passes(max(head_dim, head_dim_v)):
            _DKDV[lambda m: (triton.cdiv(grid_k, m["BLOCK_N"]), batch * heads_kv)](
                *dkdv_args, **meta, GRADS=grads)
        _DQ[lambda m: (triton.cdiv(grid_q, m["BLOCK_M"]), batch * heads_q)](*dq_args, **meta)
    return dq, dk, dv, dsinks


# ---------------------------------------------------------------------------------------------
# Decoding against a (paged) KV cache: split-KV launch, then the combine (attention_decode.py).
MAX_SPLITS = 64


def num_splits_heuristic(batch: int, heads_kv: int, m_blocks: int, capacity: int, block_n: int, sm_count: int) -> int:
    """Splits of the key range (FlashAttention's rule of thumb): none when the (batch, kv head,
    query tile) programs already fill 80% of the SMs; otherwise enough to fill them, at most one
    per key block of the capacity (a split needs work), and at most ``MAX_SPLITS``."""
    programs = batch * heads_kv * m_blocks
    if programs == 0 or programs >= 0.8 * sm_count:
        return 1
    key_blocks = max(1, triton.cdiv(capacity, block_n))
    return max(1, min(triton.cdiv(sm_count, programs), key_blocks, MAX_SPLITS))


def _sm_count(device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1  # the interpreter runs one program at a time: splitting only adds work


def kvcache_capacity(k_cache: torch.Tensor, block_table: torch.Tensor | None) -> int:
    """Keys a sequence can hold: Lmax of a contiguous cache (B, Lmax, Hkv, D), else
    ``max_pages * page_size`` of a paged one (num_pages, page_size, Hkv, D) with its block table."""
    return k_cache.shape[1] if block_table is None else block_table.shape[1] * k_cache.shape[1]


def launch_decode(q, k_cache, v_cache, seqlens, block_table, alibi, sinks, params: LaunchParams, num_splits: int,
                  v_head_dim: int = 0):
    """Launch the split kernel then the combine. q (B, Hq, Lq, D); the caches already hold the
    new tokens (v_cache's rows Dv wide); seqlens (B,) int32: keys per sequence. ``v_cache``
    None: MLA's absorbed decode, the values are the first ``v_head_dim`` columns of k_cache
    (attention_decode.py's ``ABSORBED``). ``num_splits`` 0: the heuristic's.
    Returns out (B, Hq, Lq, Dv) (q's layout and dtype when Dv == D) and lse (B, Hq, Lq) float32."""
    batch, heads_q, seqlen_q, head_dim = q.shape
    absorbed = v_cache is None
    head_dim_v = v_head_dim if absorbed else v_cache.shape[3]
    heads_kv = k_cache.shape[2]
    group = heads_q // heads_kv
    out = output_buffer(q, head_dim_v)
    lse = new_buffer(q, shape=(batch, heads_q, seqlen_q), dtype=torch.float32)
    if out.numel() == 0:
        return out, lse
    capacity = kvcache_capacity(k_cache, block_table)
    # Absorbed: BLOCK_D pads the rope columns D - Dv only (attention_decode.py); V is k_cache's.
    block_d = padded_head_dim(head_dim - head_dim_v if absorbed else head_dim)
    block_dv = padded_head_dim(head_dim_v)
    if absorbed:
        v_cache = k_cache
    rows = seqlen_q * group
    if INTERPRETED:
        tile = interpreter_config("decode")
        block_m, block_n, warps = tile.block_m, tile.block_n, 1
    else:  # the compile gate's rows (compile_gate.decode_specs)
        hopper = torch.cuda.get_device_capability(q.device)[0] >= 9
        block_m, block_n, warps = decode_tile(head_dim, str(q.dtype).removeprefix("torch."), hopper,
                                              head_dim_v, absorbed)
    m_blocks = triton.cdiv(rows, block_m)
    splits = num_splits or num_splits_heuristic(batch, heads_kv, m_blocks, capacity, block_n, _sm_count(q.device))
    splits = max(1, min(splits, triton.cdiv(max(capacity, 1), block_n)))
    chunk = triton.cdiv(triton.cdiv(max(capacity, 1), splits), block_n) * block_n
    out_p = torch.empty((splits, batch, heads_q, seqlen_q, head_dim_v), dtype=torch.float32, device=q.device)
    lse_p = torch.empty((splits, batch, heads_q, seqlen_q), dtype=torch.float32, device=q.device)

    paged = block_table is not None
    decode_split_kernel[(m_blocks, batch * heads_kv, splits)](
        q, k_cache, v_cache, block_table, seqlens, alibi, out_p, lse_p,
        *q.stride(), *k_cache.stride(), *v_cache.stride(),
        block_table.stride(0) if paged else 0, _alibi_batch_stride(alibi),
        heads_q, heads_kv, seqlen_q, chunk, params.causal_shift, params.window_shift,
        params.qk_scale, params.softcap_in,
        HEAD_DIM=head_dim, BLOCK_D=block_d, HEAD_DIM_V=head_dim_v, BLOCK_DV=block_dv,
        BLOCK_M=block_m, BLOCK_N=block_n, GROUP=group,
        PAGE_SIZE=k_cache.shape[1] if paged else 1, PAGED=paged,
        RIGHT_BOUND=params.right_bound, LEFT_BOUND=params.left_bound, SOFTCAP=params.softcap, ALIBI=alibi is not None,
        UPCAST=INTERPRETED, DOT_PRECISION=FLOAT32_DOT_PRECISION if q.dtype == torch.float32 else "tf32",
        ABSORBED=absorbed, num_warps=warps)
    decode_combine_kernel[(batch * heads_q * seqlen_q,)](
        out_p, lse_p, sinks, out, lse,
        *out.stride(), heads_q, seqlen_q, splits, batch * heads_q * seqlen_q,
        HEAD_DIM=head_dim_v, BLOCK_D=block_dv, BLOCK_S=triton.next_power_of_2(splits), SINKS=sinks is not None,
        UPCAST=INTERPRETED, num_warps=1 if INTERPRETED else 4)
    return out, lse
