"""FP8 attention's error against the float64 oracle: flashref's FP8 forward beside the obvious
FP8 attention, on Gaussian inputs and on inputs with outliers, and what FA3's two accuracy
devices (incoherent processing, per-block descales) would buy (bench/RESULTS.md, "FP8
accuracy").

Errors are RMS (and max) of ``out - oracle`` over every element, the oracle being float64
attention on the *original* float32 inputs (quantization of q, k, v included: that is the
error incoherent processing and block quantization reduce; the gate's oracle, on the
dequantized inputs, judges the kernel's own arithmetic instead). Rows:

- ``bf16 flashref``: flash_attention on the inputs rounded to bfloat16 (the 16-bit reference);
- ``baseline FP8, per-tensor``: the obvious FP8 attention (softmax in float32, the normalised
  P rounded to e4m3, P V in float32) with one descale per tensor (FA3's paper's baseline);
- ``baseline FP8``: the same with FA3's per-(batch, kv head) descales;
- ``flashref FP8``: ``flash_attention`` on float8_e4m3fn inputs, per-(batch, kv head) descales;
- ``flashref FP8 + Hadamard``: q and k multiplied by one random orthogonal Hadamard matrix
  ``R = diag(+-1) H_D / sqrt(D)`` before quantization (``(qR)(kR)^T = qk^T`` exactly), then
  the same kernel;
- ``FA3 algorithm (torch)``: its arithmetic emulated in torch, with per-(batch, head) descales
  (matches the kernel), without FA3's 2^8 offset of P (P in [0, 1] rounded: small weights
  subnormal);
- ``FA3 algorithm, per-block q/k descales`` (torch emulation: one descale per 64 rows of q and
  of k per head; the kernel has none), with and without the Hadamard rotation; the emulation of
  per-(batch, kv head) descales is printed too, to show it matches the kernel.

Run: ``OPENBLAS_NUM_THREADS=1 TRITON_INTERPRET=1 python bench/fp8_accuracy.py [--seqlen 512] [--seeds 2]``.
"""

from __future__ import annotations

import argparse
import math
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from flashref.gate.fp8 import E4M3_MAX, P_OFFSET_SCALE, quantize  # noqa: E402
from flashref.kernels import flash_attention  # noqa: E402
from flashref.reference import attention_forward  # noqa: E402

BLOCK = 64  # rows per descale in the per-block emulation (a forward tile's BLOCK_M / BLOCK_N)


def draw(shape, gen, outliers: int) -> torch.Tensor:
    """Standard normal entries; with ``outliers``, that many entries of every row (random
    columns) are drawn with standard deviation 10 instead (FA3's paper: N(0, 10^2) outliers)."""
    x = torch.randn(*shape, generator=gen)
    if outliers:
        cols = torch.rand(*shape, generator=gen).argsort(dim=-1)[..., :outliers]
        x.scatter_(-1, cols, torch.randn(*shape[:-1], outliers, generator=gen) * 10.0)
    return x


def hadamard(d: int, gen) -> torch.Tensor:
    """A random orthogonal Hadamard matrix ``diag(s) H_d / sqrt(d)``, s random signs (d a power of two)."""
    h = torch.ones(1, 1)
    while h.shape[0] < d:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    signs = torch.where(torch.rand(d, generator=gen) < 0.5, -1.0, 1.0)
    return signs[:, None] * h / math.sqrt(d)


def per_tensor(x):
    """(x8, descale (B, H)) with one descale for the whole tensor."""
    amax = x.abs().amax()
    d = (amax / E4M3_MAX).float()
    return (x / d).to(torch.float8_e4m3fn), d.expand(x.shape[0], x.shape[1]).contiguous()


def per_block(x):
    """x dequantized after e4m3 quantization with one descale per BLOCK rows of each head (float32)."""
    b, h, n, d = x.shape
    pad = (-n) % BLOCK
    xp = torch.cat([x, torch.zeros(b, h, pad, d)], 2).reshape(b, h, -1, BLOCK, d)
    scale = (xp.abs().amax(dim=(-1, -2), keepdim=True) / E4M3_MAX).clamp_min(1e-30)
    deq = (xp / scale).to(torch.float8_e4m3fn).float() * scale
    return deq.reshape(b, h, -1, d)[:, :, :n]


def baseline_fp8(q8, k8, v8, qd, kd, vd, causal):
    """The obvious FP8 attention (fp8.fp8_baseline_attention's arithmetic), MHA, out float32."""
    scale = 1.0 / math.sqrt(q8.shape[-1])
    s = (q8.float() @ k8.float().transpose(-1, -2)) * (qd * kd * scale)[..., None, None]
    if causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))
    p = torch.softmax(s, dim=-1)
    return (p.to(torch.float8_e4m3fn).float() @ v8.float()) * vd[..., None, None]


def fa3_algorithm(q, k, v8, vd, causal, offset=P_OFFSET_SCALE):
    """FA3's FP8 algorithm (fp8.fp8_algorithm_attention's arithmetic) on float32 q, k (already
    dequantized, any descale granularity), fp8 v with descale (B, H): out float32. ``offset``:
    P's scale before rounding (FA3's 2^8; 1 rounds exp(s - m) in [0, 1])."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    s = (q @ k.transpose(-1, -2)) * scale
    if causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))
    p = torch.exp(s - s.amax(dim=-1, keepdim=True)) * offset
    return (p.to(torch.float8_e4m3fn).float() @ v8.float()) * vd[..., None, None] / p.sum(-1, keepdim=True)


def errors(out, ref):
    diff = out.double().numpy() - ref
    return float(np.sqrt(np.mean(diff**2))), float(np.max(np.abs(diff)))


def run(seqlen: int, head_dim: int, outliers: int, causal: bool, seed: int) -> dict[str, tuple[float, float]]:
    gen = torch.Generator().manual_seed(seed)
    shape = (1, 4, seqlen, head_dim)
    q, k, v = (draw(shape, gen, outliers) for _ in range(3))
    ref, _ = attention_forward(q.double().numpy(), k.double().numpy(), v.double().numpy(), causal=causal)
    rotation = hadamard(head_dim, gen)
    rows = {}
    rows["bf16 flashref"] = errors(flash_attention(*(t.bfloat16() for t in (q, k, v)), causal=causal), ref)
    t8 = [per_tensor(t) for t in (q, k, v)]
    rows["baseline FP8, per-tensor descale"] = errors(
        baseline_fp8(t8[0][0], t8[1][0], t8[2][0], t8[0][1], t8[1][1], t8[2][1], causal), ref)
    (q8, qd), (k8, kd), (v8, vd) = (quantize(t) for t in (q, k, v))
    rows["baseline FP8"] = errors(baseline_fp8(q8, k8, v8, qd, kd, vd, causal), ref)
    rows["flashref FP8"] = errors(flash_attention(q8, k8, v8, causal=causal, q_descale=qd, k_descale=kd,
                                                  v_descale=vd, out_dtype=torch.float32), ref)
    rows["FA3 algorithm (torch), per-head descales"] = errors(fa3_algorithm(
        q8.float() * qd[..., None, None], k8.float() * kd[..., None, None], v8, vd, causal), ref)
    rows["FA3 algorithm (torch), per-head descales, no 2^8 offset"] = errors(fa3_algorithm(
        q8.float() * qd[..., None, None], k8.float() * kd[..., None, None], v8, vd, causal, offset=1.0), ref)
    (qh8, qhd), (kh8, khd) = quantize(q @ rotation), quantize(k @ rotation)
    rows["flashref FP8 + Hadamard"] = errors(flash_attention(qh8, kh8, v8, causal=causal, q_descale=qhd,
                                                             k_descale=khd, v_descale=vd, out_dtype=torch.float32), ref)
    rows["FA3 algorithm (torch), per-block q/k descales"] = errors(
        fa3_algorithm(per_block(q), per_block(k), v8, vd, causal), ref)
    rows["FA3 algorithm (torch), per-block + Hadamard"] = errors(
        fa3_algorithm(per_block(q @ rotation), per_block(k @ rotation), v8, vd, causal), ref)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    settings = [("Gaussian", 0, False), ("Gaussian, causal", 0, True), ("3 outliers per row (std 10)", 3, False)]
    table: dict[str, dict[str, list]] = {}
    for label, outliers, causal in settings:
        for seed in range(args.seeds):
            for row, err in run(args.seqlen, args.head_dim, outliers, causal, seed).items():
                table.setdefault(row, {}).setdefault(label, []).append(err)
    labels = [s[0] for s in settings]
    print(f"B=1, H=4, L={args.seqlen}, D={args.head_dim}, {args.seeds} seeds: RMS error (max error), mean over seeds\n")
    print("| implementation | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    for row, by_label in table.items():
        cells = []
        for label in labels:
            rms, mx = np.mean(by_label[label], axis=0)
            cells.append(f"{rms:.2e} ({mx:.2e})")
        print(f"| {row} | " + " | ".join(cells) + " |")
    base = {label: np.mean(table["baseline FP8, per-tensor descale"][label], axis=0)[0] for label in labels}
    print("\nRMS error of the per-tensor baseline / each row's:")
    for row, by_label in table.items():
        print(f"  {row}: " + ", ".join(f"{label} {base[label] / np.mean(by_label[label], axis=0)[0]:.2f}x"
                                        for label in labels))


if __name__ == "__main__":
    main()
