"""GPU benchmarks of the packed entry points (issue 11): ``flashref bench --sweep varlen|decode``.

varlen: a realistic length mix (lengths drawn log-uniformly in [64, 4096], packed to 16k total
tokens, H * D = 2048), forward and forward+backward of ``flash_attention_varlen`` beside

- torch SDPA on the batch padded to the longest sequence (a key-padding mask; causal adds the
  causal part), and
- the dense kernel ``flash_attention`` on the padded batch with ``kv_lens`` (the padded query
  rows still run).

Reported: milliseconds and TFLOP/s of *useful* work (FlashAttention's count summed over the
sequences, so padding earns nothing).

decode: one new token per sequence (plus its append) against caches of 1k .. 128k tokens, batch
1 / 16 / 64, Hq = 32, Hkv = 8, D = 128, bfloat16, contiguous and paged (page size 256), beside
torch SDPA on the contiguous cache and a plain gather (index the pages) + SDPA. Decoding is
memory bound, so each point reports GB/s: the K and V bytes the call must read
(``2 * sum_b L_b * Hkv * D * 2`` bytes) over its time, printed next to the device's measured
copy bandwidth (a device-to-device ``copy_`` of 2 GiB).

Timing: ``triton.testing.do_bench`` (median after warm-up). Nothing here asserts on time.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

from flashref.bench.dense import attention_flops

VARLEN_TOTAL_TOKENS = 16384
VARLEN_MODEL_DIM = 2048
DECODE_BATCHES = (1, 16, 64)
DECODE_CONTEXTS = (1024, 4096, 16384, 65536, 131072)
DECODE_HEADS = (32, 8)  # (Hq, Hkv)
DECODE_HEAD_DIM = 128
DECODE_PAGE_SIZE = 256
DECODE_BYTES_LIMIT = 40 * 2**30  # skip points whose caches alone would exceed this


def varlen_lengths(total: int = VARLEN_TOTAL_TOKENS, seed: int = 0, lo: int = 64, hi: int = 4096) -> list[int]:
    """Log-uniform lengths in [lo, hi] until ``total`` tokens (the last one trimmed to fit)."""
    import random

    rng = random.Random(seed)
    lengths, used = [], 0
    while used < total:
        n = min(int(math.exp(rng.uniform(math.log(lo), math.log(hi)))), total - used)
        lengths.append(n)
        used += n
    return lengths


def useful_flops(lengths_q, lengths_k, heads: int, head_dim: int, causal: bool, direction: str) -> float:
    """FlashAttention's FLOP count summed over the sequences (padding earns nothing)."""
    return sum(attention_flops(1, heads, lq, lk, head_dim, causal=causal, direction=direction)
               for lq, lk in zip(lengths_q, lengths_k))


def decode_bytes(context_lengths, heads_kv: int, head_dim: int, itemsize: int = 2) -> int:
    """K and V bytes one decoding call must read."""
    return 2 * sum(context_lengths) * heads_kv * head_dim * itemsize


@dataclasses.dataclass(frozen=True)
class Point:
    sweep: str
    config: dict
    implementation: str
    ms: float | None
    value: float | None  # TFLOP/s (varlen) or GB/s (decode)
    unit: str
    status: str = "ok"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _timed(fn: Callable[[], Any]) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=100))


def _attempt(sweep, config, implementation, unit, fn, amount) -> Point:
    import torch

    try:
        ms = _timed(fn)
        return Point(sweep, config, implementation, ms, amount / (ms * 1e-3), unit)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return Point(sweep, config, implementation, None, None, unit, "out of memory")
    except Exception as exc:  # a backend that cannot run a point is recorded, not a crash
        return Point(sweep, config, implementation, None, None, unit, f"error: {type(exc).__name__}: {exc}"[:200])


def copy_bandwidth_gbs(nbytes: int = 2 * 2**30) -> float:
    """Device-to-device copy bandwidth (read + write bytes over time), GB/s."""
    import torch

    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    ms = _timed(lambda: dst.copy_(src))
    return 2 * nbytes / (ms * 1e-3) / 1e9


def run_varlen(seed: int = 0, head_dims=(64, 128), causal_modes=(False, True), on_point=None) -> list[Point]:
    import torch
    import torch.nn.functional as F

    from flashref.kernels import flash_attention, flash_attention_varlen

    points = []
    lengths = varlen_lengths(seed=seed)
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32, device="cuda")
    batch, longest, total = len(lengths), max(lengths), sum(lengths)
    for d in head_dims:
        heads = VARLEN_MODEL_DIM // d
        for causal in causal_modes:
            q, k, v = (torch.randn(total, heads, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                       for _ in range(3))
            dout = torch.randn_like(q)
            padded = [torch.zeros(batch, heads, longest, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                      for _ in range(3)]
            kv_lens = torch.tensor(lengths, device="cuda", dtype=torch.int32)
            key_ok = torch.arange(longest, device="cuda")[None, :] < kv_lens[:, None]
            mask = key_ok[:, None, None, :]
            if causal:
                mask = mask & torch.ones(longest, longest, dtype=torch.bool, device="cuda").tril()[None, None]
            pdout = torch.randn_like(padded[0])
            config = dict(head_dim=d, heads=heads, causal=causal, sequences=batch, total=total, longest=longest)
            runs = {
                "flashref_varlen": (lambda: flash_attention_varlen(q, k, v, cu, cu, longest, longest, causal=causal),
                                    dout, (q, k, v)),
                "flashref_dense_kv_lens": (lambda: flash_attention(*padded, causal=causal, kv_lens=kv_lens),
                                           pdout, padded),
                "sdpa_padded": (lambda: F.scaled_dot_product_attention(*padded, attn_mask=mask), pdout, padded),
            }
            for direction in ("fwd", "fwd_bwd"):
                flops = useful_flops(lengths, lengths, heads, d, causal, direction)
                for name, (fwd, grad_out, leaves) in runs.items():
                    if direction == "fwd":
                        fn = lambda fwd=fwd: fwd()  # noqa: E731
                    else:
                        fn = lambda fwd=fwd, g=grad_out, leaves=leaves: torch.autograd.grad(fwd(), leaves, g)  # noqa: E731
                    point = _attempt("varlen", dict(config, direction=direction), name, "TFLOP/s", fn, flops / 1e12)
                    points.append(point)
                    if on_point:
                        on_point(point)
    return points


def run_decode(seed: int = 0, batches=DECODE_BATCHES, contexts=DECODE_CONTEXTS, on_point=None) -> list[Point]:
    import torch
    import torch.nn.functional as F

    from flashref.kernels import flash_attention_with_kvcache

    torch.manual_seed(seed)
    hq, hkv = DECODE_HEADS
    d, page = DECODE_HEAD_DIM, DECODE_PAGE_SIZE
    points = []
    for batch in batches:
        for context in contexts:
            cache_bytes = 2 * batch * context * hkv * d * 2
            config = dict(batch=batch, context=context, heads_q=hq, heads_kv=hkv, head_dim=d, page_size=page)
            if 3 * cache_bytes > DECODE_BYTES_LIMIT:  # contiguous + paged + the gather's copy
                points.append(Point("decode", config, "all", None, None, "GB/s", "skipped: caches exceed memory"))
                continue
            gbytes = decode_bytes([context] * batch, hkv, d) / 1e9
            seqlens = torch.full((batch,), context - 1, dtype=torch.int32, device="cuda")
            q = torch.randn(batch, hq, 1, d, device="cuda", dtype=torch.bfloat16)
            knew, vnew = (torch.randn(batch, hkv, 1, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
            k_c, v_c = (torch.randn(batch, context, hkv, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
            pages = batch * context // page
            k_p, v_p = (torch.randn(pages, page, hkv, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
            table = torch.randperm(pages, device="cuda").view(batch, context // page).to(torch.int32)
            k_sdpa, v_sdpa = k_c.transpose(1, 2), v_c.transpose(1, 2)  # (B, Hkv, L, D) views

            def gather_sdpa():
                kg = k_p[table.long()].view(batch, context, hkv, d).transpose(1, 2)
                vg = v_p[table.long()].view(batch, context, hkv, d).transpose(1, 2)
                return F.scaled_dot_product_attention(q, kg, vg, enable_gqa=True)

            runs = {
                "flashref_contiguous": lambda: flash_attention_with_kvcache(
                    q, k_c, v_c, k=knew, v=vnew, cache_seqlens=seqlens, check_values=False),
                "flashref_paged": lambda: flash_attention_with_kvcache(
                    q, k_p, v_p, k=knew, v=vnew, cache_seqlens=seqlens, block_table=table, check_values=False),
                "sdpa_contiguous": lambda: F.scaled_dot_product_attention(q, k_sdpa, v_sdpa, enable_gqa=True),
                "gather_sdpa_paged": gather_sdpa,
            }
            for name, fn in runs.items():
                point = _attempt("decode", config, name, "GB/s", fn, gbytes)
                points.append(point)
                if on_point:
                    on_point(point)
            del k_c, v_c, k_p, v_p
            torch.cuda.empty_cache()
    return points


def markdown(points: list[Point], copy_gbs: float | None = None) -> str:
    """One table per sweep: a row per configuration, a column per implementation."""
    lines = []
    if copy_gbs is not None:
        lines.append(f"Measured device copy bandwidth: {copy_gbs:.0f} GB/s\n")
    for sweep in ("varlen", "decode"):
        rows = [p for p in points if p.sweep == sweep]
        if not rows:
            continue
        impls = list(dict.fromkeys(p.implementation for p in rows if p.implementation != "all"))
        keys = list(dict.fromkeys(tuple(sorted(p.config.items())) for p in rows))
        unit = rows[0].unit
        lines.append(f"### {sweep} ({unit})\n")
        lines.append("| config | " + " | ".join(impls) + " |")
        lines.append("|---|" + "---|" * len(impls))
        for key in keys:
            cells = []
            for impl in impls:
                match = [p for p in rows if tuple(sorted(p.config.items())) == key and p.implementation in (impl, "all")]
                p = match[0] if match else None
                cells.append("" if p is None else (f"{p.value:.0f} ({p.ms:.3f} ms)" if p.status == "ok" else p.status))
            lines.append("| " + ", ".join(f"{k}={v}" for k, v in key) + " | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
