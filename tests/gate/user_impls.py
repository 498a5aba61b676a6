"""Implementations a user might bring, for tests/gate: a plain torch attention, and the same
with realistic bugs (each must FAIL the gate) or bad behaviour (each must be an ERROR)."""

from __future__ import annotations

import math

import torch

from flashref.gate import Implementation, visibility


def plain_attention(q, k, v, *, causal=False, key_limit=None, scale_factor=1.0, diagonal=0):
    """softmax(q k^T / sqrt(D)) v in float32, q (B, Hq, Lq, D), k and v (B, Hkv, Lk, D): causal
    top-left, GQA. ``key_limit``, ``scale_factor``, ``diagonal``: the planted bugs."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    scores = (q.float() @ k.float().transpose(-1, -2)) * (scale_factor / math.sqrt(q.shape[-1]))
    lq, lk = q.shape[2], k.shape[2]
    hidden = torch.zeros(lq, lk, dtype=torch.bool, device=q.device)
    if causal:
        hidden = torch.ones(lq, lk, dtype=torch.bool, device=q.device).triu(1 + diagonal)
    if key_limit is not None:
        hidden[:, key_limit(lk):] = True
    probs = torch.softmax(scores.masked_fill(hidden, float("-inf")), dim=-1).nan_to_num(0.0)
    return (probs @ v.float()).to(q.dtype)


def plain_blhd(q, k, v, **kw):
    """The same in FlashAttention's (B, L, H, D) layout."""
    return plain_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), **kw).transpose(1, 2)


def off_by_one_causal(q, k, v, causal=False):
    return plain_attention(q, k, v, causal=causal, diagonal=1 if causal else 0)


def truncated_scale(q, k, v, causal=False):
    return plain_attention(q, k, v, causal=causal, scale_factor=0.9999)


def drops_last_partial_block(q, k, v, causal=False):
    return plain_attention(q, k, v, causal=causal, key_limit=lambda n: n // 16 * 16 if n > 16 else n)


def raises(q, k, v, **kw):
    raise RuntimeError("kernel launch failed")


def wrong_shape(q, k, v, **kw):
    return plain_attention(q, k, v, **kw)[..., :-1]


def returns_nan(q, k, v, **kw):
    out = plain_attention(q, k, v, **kw)
    return out + float("nan") * (torch.arange(out.shape[-1], device=out.device) == 0)


def writes_into_q(q, k, v, **kw):
    with torch.no_grad():
        q.mul_(1.0)
        q[..., 0] = 0.0
    return plain_attention(q, k, v, **kw)


PLAIN = Implementation("plain", plain_attention, features={"causal_top_left", "gqa"})
UNAVAILABLE = Implementation("unavailable", plain_attention,
                             available=lambda device: "needs an accelerator this machine does not have")



def plain_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal=False,
                 causal_alignment="top_left", overread=0):
    """Packed sequences one at a time through ``plain_attention``: q (total_q, Hq, D), k and v
    (total_k, Hkv, D). ``overread``: the planted bug, each sequence reads that many keys of the
    next one."""
    outs = []
    for b in range(len(cu_seqlens_q) - 1):
        q0, q1 = int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1])
        k0, k1 = int(cu_seqlens_k[b]), min(int(cu_seqlens_k[b + 1]) + overread, k.shape[0])
        as_dense = lambda t: t.transpose(0, 1)[None]  # noqa: E731  (L, H, D) -> (1, H, L, D)
        shift = (k1 - k0) - (q1 - q0) if causal_alignment == "bottom_right" else 0
        out = plain_attention(as_dense(q[q0:q1]), as_dense(k[k0:k1]), as_dense(v[k0:k1]), causal=causal,
                              diagonal=shift)
        outs.append(out[0].transpose(0, 1))
    return torch.cat(outs)


def varlen_overreads(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **kw):
    return plain_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, overread=1, **kw)


def plain_kvcache(q, k_cache, v_cache, k=None, v=None, *, cache_seqlens, block_table=None, skip_append=False):
    """Decoding through ``plain_attention``: the new keys k, v (B, Hkv, Lnew, D) appended into
    the cache (B, Lmax, Hkv, D) or its pages (P, page, Hkv, D) through ``block_table``, then the
    queries (B, Hq, Lq, D) against each sequence's cache_seqlens + Lnew keys, bottom-right
    causal. ``skip_append``: the planted bug."""
    batch, lnew = q.shape[0], 0 if k is None else k.shape[2]
    page = k_cache.shape[1] if block_table is not None else None

    def where(b, t):
        return (int(block_table[b, t // page]), t % page) if page else (b, t)

    outs = []
    for b in range(batch):
        n_old = int(cache_seqlens[b])
        if not skip_append:
            for t in range(lnew):
                k_cache[where(b, n_old + t)] = k[b, :, t]
                v_cache[where(b, n_old + t)] = v[b, :, t]
        keys = [k_cache[where(b, t)] if (t < n_old or not skip_append) else k[b, :, t - n_old]
                for t in range(n_old + lnew)]
        values = [v_cache[where(b, t)] if (t < n_old or not skip_append) else v[b, :, t - n_old]
                  for t in range(n_old + lnew)]
        if not keys:
            outs.append(torch.zeros_like(q[b]))
            continue
        kb, vb = torch.stack(keys).transpose(0, 1)[None], torch.stack(values).transpose(0, 1)[None]
        outs.append(plain_attention(q[b:b + 1], kb, vb, causal=True, diagonal=len(keys) - q.shape[2])[0])
    return torch.stack(outs)


def kvcache_without_append(q, k_cache, v_cache, k=None, v=None, **kw):
    return plain_kvcache(q, k_cache, v_cache, k, v, skip_append=True, **kw)


PACKED_FEATURES = {"causal_top_left", "causal_bottom_right", "gqa", "varlen", "kvcache", "paged"}
PLAIN_PACKED = Implementation("plain-packed", plain_attention, features=PACKED_FEATURES, varlen=plain_varlen,
                              kvcache=plain_kvcache)



MASK_FEATURES = {"causal_top_left", "causal_bottom_right", "kv_lens", "gqa", "window"}


def masked_attention(q, k, v, *, causal=False, causal_alignment="top_left", kv_lens=None, window_size=(-1, -1),
                     bug=None):
    """A user's attention over flashref's masks (``gate.visibility``), softmax through exp2 as a
    hand-written kernel computes it. ``bug``: the planted one, "causal_off_by_one" (the causal
    edge one key too far right), "drops_last_partial_block" (the keys past the last multiple of
    16 ignored) or "truncated_log2e" (log2(e) as 1.4427, a 3.4e-5 relative error on each score)."""
    batch, _, seqlen_q, _ = q.shape
    seqlen_k = k.shape[2]
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    visible = visibility(batch, seqlen_q, seqlen_k, causal=causal, causal_alignment=causal_alignment,
                         kv_lens=kv_lens, window_size=window_size, device=q.device)
    if bug == "causal_off_by_one" and causal:
        # The diagonal one key further right: the union of the mask and itself shifted by a key.
        visible = visible | torch.nn.functional.pad(visible[..., :-1], (1, 0))
    if bug == "drops_last_partial_block" and seqlen_k > 16:
        visible = visible & (torch.arange(seqlen_k, device=q.device) < seqlen_k // 16 * 16)
    log2e = 1.4427 if bug == "truncated_log2e" else 1.4426950408889634
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1]) * log2e
    scores = scores.masked_fill(~visible, float("-inf"))
    top = scores.amax(dim=-1, keepdim=True)
    weights = torch.exp2(scores - torch.where(torch.isinf(top), torch.zeros_like(top), top))
    total = weights.sum(dim=-1, keepdim=True)
    return ((weights / torch.where(total > 0, total, torch.ones_like(total))) @ v.float()).to(q.dtype)


def masked_with(bug):
    def attention(q, k, v, **kw):
        return masked_attention(q, k, v, bug=bug, **kw)

    attention.__name__ = bug or "masked_attention"
    return attention
