"""A user's attention function for tests/cli/test_bench.py: softmax(q k^T / sqrt(D)) v in
float32, q, k, v (B, H, L, D), causal from the top left (bench --impl module:attribute)."""

import math

import torch


def attention(q, k, v, *, causal=False):
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, H, Lq, Lk)
    if causal:
        hidden = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(hidden, float("-inf"))
    return (torch.softmax(scores, dim=-1) @ v.float()).to(q.dtype)
