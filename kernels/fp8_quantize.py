"""``quantize_fp8``: q, k, v -> the FP8 forward's inputs (float8_e4m3fn tensors and FA3's
per-(batch, kv head) descales), optionally after incoherent processing.

Incoherent processing (FA3's): q and k are multiplied by one random orthogonal Hadamard
matrix ``R = diag(s) H_D / sqrt(D)`` (``s`` random signs, ``H_D`` Sylvester's Hadamard
matrix) before quantizing. ``(q R)(k R)^T = q k^T`` exactly, so attention is unchanged in
exact arithmetic, while a row's few large entries are spread over all D coordinates and its
amax (hence the e4m3 step of every entry) shrinks. bench/RESULTS.md ("FP8 accuracy"): on
inputs with 3 outliers of standard deviation 10 per row it cuts the RMS error against the
float64 oracle about 3x; on Gaussian inputs it changes nothing. v is not rotated (its
rotation would have to be undone on the output).
"""

import math

import torch

from .checks import FP8_DTYPES

E4M3_MAX = 448.0


def hadamard_rotation(head_dim: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """A random orthogonal (head_dim, head_dim) float32 matrix ``diag(s) H / sqrt(head_dim)``
    (``head_dim`` a power of two)."""
    if head_dim < 1 or head_dim & (head_dim - 1):
        raise ValueError(f"a Hadamard rotation needs a power-of-two head_dim, got {head_dim}")
    h = torch.ones(1, 1)
    while h.shape[0] < head_dim:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    signs = torch.where(torch.rand(head_dim, generator=generator) < 0.5, -1.0, 1.0)
    return (signs[:, None] * h / math.sqrt(head_dim)).to(device)


def _per_kv_head(x: torch.Tensor, heads_kv: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, H, L, D) -> (x8, descale (B, heads_kv) float32): amax / 448 over each kv head's
    group of heads (1 where all zero)."""
    b, h = x.shape[:2]
    group = h // heads_kv
    amax = x.detach().float().reshape(b, heads_kv, -1).abs().amax(dim=-1) if x.numel() else \
        torch.zeros(b, heads_kv, device=x.device)
    descale = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    scaled = x.float() / descale.repeat_interleave(group, dim=1)[..., None, None]
    return scaled.clamp(-E4M3_MAX, E4M3_MAX).to(FP8_DTYPES[0]), descale.contiguous()


def quantize_fp8(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, hadamard: bool = False,
                 generator: torch.Generator | None = None):
    """q (B, Hq, L, D), k and v (B, Hkv, Lk, D), any float dtype -> ``(q8, k8, v8, q_descale,
    k_descale, v_descale)`` for ``flash_attention``'s FP8 forward: e4m3 tensors and float32
    (B, Hkv) descales, ``amax / 448`` per (batch, kv head) (q's over the query heads that share
    the kv head). ``hadamard``: q and k rotated first (module docstring; D a power of two;
    ``generator`` draws the signs)."""
    if hadamard:
        rotation = hadamard_rotation(q.shape[-1], generator, q.device)
        q, k = q.float() @ rotation, k.float() @ rotation
    (q8, qd), (k8, kd), (v8, vd) = (_per_kv_head(t, k.shape[1]) for t in (q, k, v))
    return q8, k8, v8, qd, kd, vd


__all__ = ["hadamard_rotation", "quantize_fp8"]
