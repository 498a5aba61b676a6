"""Equivalence case families for the packed entry points (issue 11): ``flash_attention_varlen``
(forward and backward) and ``flash_attention_with_kvcache`` (forward, in-place append).

Each case is judged by the project's rule (``flashref.equivalence``): the kernel against the
float64 oracle twin (``attention_varlen_forward/_backward``, ``attention_with_kvcache``), the
baseline plain torch attention in the kernel's dtype, one sequence at a time. Per sequence the
problem is a dense one, so the baseline, the magnitudes behind the slack and the baseline's
ceiling are the dense gate's (``baseline_attention``, ``magnitudes``, ``slack``,
``baseline_ceiling`` on a one-sequence ``Case``), and a packed tensor's slack is taken over
the largest of its sequences. Case names start with ``varlen-`` / ``kvcache-`` and replay with
``flashref verify --case NAME --seed N``.

The KV-cache family also checks the append: the cache comes back with exactly the new rows
written (element by element) and every other element unchanged (the rows outside the live
range are NaN-poisoned before the call, so a stray read shows up in ``out`` as well).
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass

import numpy as np

from flashref import equivalence as eq


def _lengths(gen, batch: int, max_len: int) -> list[int]:
    """Lengths in [0, max_len], with an empty, a single-token and an odd one among them."""
    import torch

    lens = torch.randint(0, max_len + 1, (batch,), generator=gen).tolist()
    fixed = [0, 1, 2 * int(torch.randint(1, max(2, max_len // 2), (1,), generator=gen)) + 1]
    lens[:min(3, batch)] = fixed[:batch]
    return [min(x, max_len) for x in (lens[i] for i in torch.randperm(batch, generator=gen).tolist())]


def _judge_packed(dtype: str, kern: dict, ref: dict, base: dict, mags: dict) -> dict:
    """The rule per tensor with the dense gate's slack and ceiling on the largest magnitude."""
    dense = eq.Case(1, 1, 1, 1, 1, 1, dtype, False, "top_left", False)  # slack/ceiling read its dtype only
    out = {}
    for key in (t for t in ("out", "dq", "dk", "dv") if t in kern):
        magnitude = mags[key] if mags[key].size else np.zeros(1)
        out[key] = eq.judge(eq.max_abs_error(kern[key], ref[key]), eq.max_abs_error(base[key], ref[key]),
                            eq.FACTORS[key], eq.slack(dense, magnitude, ref[key]),
                            eq.baseline_ceiling(dense, magnitude, ref[key]))
    return out


def _dense_side(dtype, hq, hkv, d, causal, alignment, q, k, v, dout, ref_out, ref_lse):
    """Baseline and magnitudes of one sequence (q (1, Hq, Lq, D), ...), via the dense gate."""
    case = eq.Case(1, hq, hkv, q.shape[2], k.shape[2], d, dtype, causal, alignment, False)
    inputs = eq.CaseInputs(q, k, v, dout, None)
    base = eq.baseline_attention(case, inputs)
    mags = eq.magnitudes(case, inputs, dict(out=ref_out, lse=ref_lse))
    return base, mags


# ---------------------------------------------------------------------------- varlen
@dataclass(frozen=True)
class VarlenCase:
    """Packed sequences: ``batch`` sequences, lengths drawn from the seed in [0, max_seqlen_q]
    and [0, max_seqlen_k] (an empty, a single-token and an odd one always among them)."""

    batch: int
    heads_q: int
    heads_kv: int
    max_seqlen_q: int
    max_seqlen_k: int
    head_dim: int
    dtype: str
    causal: bool
    causal_alignment: str
    seed: int = 0

    _NAME = re.compile(r"varlen-b(\d+)-hq(\d+)-hkv(\d+)-maxq(\d+)-maxk(\d+)-d(\d+)-(float16|bfloat16|float32)"
                       r"-(noncausal|causal_top_left|causal_bottom_right)")

    @property
    def name(self) -> str:
        mask = f"causal_{self.causal_alignment}" if self.causal else "noncausal"
        return (f"varlen-b{self.batch}-hq{self.heads_q}-hkv{self.heads_kv}-maxq{self.max_seqlen_q}"
                f"-maxk{self.max_seqlen_k}-d{self.head_dim}-{self.dtype}-{mask}")

    @classmethod
    def from_name(cls, name: str, seed: int = 0) -> "VarlenCase":
        m = cls._NAME.fullmatch(name.strip())
        if m is None:
            raise ValueError(f"varlen case name must look like 'varlen-b4-hq4-hkv2-maxq13-maxk17-d32-float16-"
                             f"causal_bottom_right', got {name!r}")
        mask = m.group(8)
        return cls(*(int(g) for g in m.groups()[:6]), m.group(7), mask != "noncausal",
                   "bottom_right" if mask == "causal_bottom_right" else "top_left", seed)

    def replay_command(self) -> str:
        return f'flashref verify --case "{self.name}" --seed {self.seed}'

    @property
    def config(self) -> dict:
        return dataclasses.asdict(self)

    def check(self, device: str = "cpu") -> eq.CaseResult:
        import torch

        from flashref.kernels import flash_attention_varlen, poisoned_outputs
        from flashref.reference import attention_varlen_backward, attention_varlen_forward

        start = time.perf_counter()
        gen = torch.Generator().manual_seed(self.seed)
        dtype = getattr(torch, self.dtype)
        lens_q, lens_k = _lengths(gen, self.batch, self.max_seqlen_q), _lengths(gen, self.batch, self.max_seqlen_k)
        cu_q, cu_k = np.r_[0, np.cumsum(lens_q)].astype(np.int32), np.r_[0, np.cumsum(lens_k)].astype(np.int32)
        draw = lambda *s: torch.randn(*s, generator=gen).to(dtype=dtype, device=device)  # noqa: E731
        q, k, v = draw(cu_q[-1], self.heads_q, self.head_dim), draw(cu_k[-1], self.heads_kv, self.head_dim), \
            draw(cu_k[-1], self.heads_kv, self.head_dim)
        dout = draw(cu_q[-1], self.heads_q, self.head_dim)
        kw = dict(causal=self.causal, causal_alignment=self.causal_alignment)
        max_q, max_k = max(lens_q), max(lens_k)

        qk, kk, vk = (t.detach().clone().requires_grad_() for t in (q, k, v))
        with poisoned_outputs():
            out = flash_attention_varlen(qk, kk, vk, torch.from_numpy(cu_q).to(device),
                                         torch.from_numpy(cu_k).to(device), max_q, max_k, **kw)
            dq, dk, dv = torch.autograd.grad(out, (qk, kk, vk), dout)
        kern = dict(out=out, dq=dq, dk=dk, dv=dv)

        f64 = eq._float64
        ref_out, ref_lse = attention_varlen_forward(f64(q), f64(k), f64(v), cu_q, cu_k, max_q, max_k, **kw)
        rdq, rdk, rdv = attention_varlen_backward(f64(q), f64(k), f64(v), ref_out, ref_lse, f64(dout), cu_q, cu_k,
                                                  max_q, max_k, **kw)
        ref = dict(out=ref_out, dq=rdq, dk=rdk, dv=rdv)

        base = {key: torch.zeros_like(t) for key, t in dict(out=q, dq=q, dk=k, dv=v).items()}
        mags = {key: np.zeros(x.shape) for key, x in ref.items()}
        dense = lambda t: t.transpose(0, 1)[None]  # noqa: E731  (L, H, D) -> (1, H, L, D)
        for b in range(self.batch):
            qs, ks = slice(int(cu_q[b]), int(cu_q[b + 1])), slice(int(cu_k[b]), int(cu_k[b + 1]))
            if qs.start == qs.stop or ks.start == ks.stop:
                continue  # nothing attends or nothing to attend: every baseline output is 0, as the oracle's
            b_side, b_mags = _dense_side(
                self.dtype, self.heads_q, self.heads_kv, self.head_dim, self.causal, self.causal_alignment,
                dense(q[qs]), dense(k[ks]), dense(v[ks]), dense(dout[qs]),
                ref_out[qs].transpose(1, 0, 2)[None], ref_lse[None, :, qs])
            for key, sl in (("out", qs), ("dq", qs), ("dk", ks), ("dv", ks)):
                base[key][sl] = b_side[key][0].transpose(0, 1)
                mags[key][sl] = b_mags[key][0].transpose(1, 0, 2)
        errors = _judge_packed(self.dtype, kern, ref, base, mags)
        return eq.CaseResult(self, errors, time.perf_counter() - start)


# ---------------------------------------------------------------------------- kvcache
@dataclass(frozen=True)
class KvcacheCase:
    """Decoding: ``seqlen_q`` new queries and ``new_len`` appended tokens per sequence against a
    cache of ``capacity`` tokens, contiguous (``page_size`` 0) or paged with a shuffled table;
    four sequences with cache_seqlens 0, 1, odd and full (capacity - new_len)."""

    heads_q: int
    heads_kv: int
    seqlen_q: int
    new_len: int
    capacity: int
    page_size: int
    num_splits: int
    head_dim: int
    dtype: str
    seed: int = 0

    _NAME = re.compile(r"kvcache-hq(\d+)-hkv(\d+)-lq(\d+)-new(\d+)-cap(\d+)-page(\d+)-splits(\d+)-d(\d+)"
                       r"-(float16|bfloat16|float32)")

    @property
    def name(self) -> str:
        return (f"kvcache-hq{self.heads_q}-hkv{self.heads_kv}-lq{self.seqlen_q}-new{self.new_len}"
                f"-cap{self.capacity}-page{self.page_size}-splits{self.num_splits}-d{self.head_dim}-{self.dtype}")

    @classmethod
    def from_name(cls, name: str, seed: int = 0) -> "KvcacheCase":
        m = cls._NAME.fullmatch(name.strip())
        if m is None:
            raise ValueError(f"kvcache case name must look like 'kvcache-hq4-hkv1-lq1-new1-cap64-page16-splits3-d64-"
                             f"bfloat16' (page 0: contiguous, splits 0: heuristic), got {name!r}")
        return cls(*(int(g) for g in m.groups()[:8]), m.group(9), seed)

    def replay_command(self) -> str:
        return f'flashref verify --case "{self.name}" --seed {self.seed}'

    @property
    def config(self) -> dict:
        return dataclasses.asdict(self)

    def check(self, device: str = "cpu") -> eq.CaseResult:
        import torch

        from flashref.kernels import flash_attention_with_kvcache
        from flashref.reference import append_to_kvcache, attention_with_kvcache

        start = time.perf_counter()
        gen = torch.Generator().manual_seed(self.seed)
        dtype = getattr(torch, self.dtype)
        batch, hq, hkv, d, page, lnew = 4, self.heads_q, self.heads_kv, self.head_dim, self.page_size, self.new_len
        draw = lambda *s: torch.randn(*s, generator=gen).to(dtype)  # noqa: E731
        full = self.capacity - lnew
        odd = min(full, 2 * int(torch.randint(0, max(1, full // 2), (1,), generator=gen)) + 1)
        seqlens = [[0, min(1, full), odd, full][i] for i in torch.randperm(batch, generator=gen).tolist()]
        if page:
            per_seq = self.capacity // page
            num_pages = batch * per_seq + 2
            table = torch.randperm(num_pages, generator=gen)[:batch * per_seq].view(batch, per_seq).to(torch.int32)
            shape = (num_pages, page, hkv, d)
        else:
            table, shape = None, (batch, self.capacity, hkv, d)
        k_cache, v_cache = draw(*shape), draw(*shape)
        where = lambda b, t: (int(table[b, t // page]), t % page) if page else (b, t)  # noqa: E731
        live = torch.zeros(shape[:2], dtype=torch.bool)
        for b in range(batch):
            for t in range(seqlens[b] + lnew):
                live[where(b, t)] = True
        k_cache[~live], v_cache[~live] = float("nan"), float("nan")  # poison: must be neither read nor written
        q = draw(batch, hq, self.seqlen_q, d)
        knew, vnew = (draw(batch, hkv, lnew, d), draw(batch, hkv, lnew, d)) if lnew else (None, None)
        k0, v0 = k_cache.clone(), v_cache.clone()
        lens_t = torch.tensor(seqlens, dtype=torch.int32)

        dev = lambda t: None if t is None else t.to(device)  # noqa: E731
        kc, vc = dev(k_cache), dev(v_cache)
        out = flash_attention_with_kvcache(dev(q), kc, vc, k=dev(knew), v=dev(vnew), cache_seqlens=dev(lens_t),
                                           block_table=dev(table), num_splits=self.num_splits)

        f64 = lambda t: None if t is None else eq._float64(t)  # noqa: E731
        tab = None if table is None else table.numpy()
        want = (append_to_kvcache(f64(k0), f64(v0), f64(knew), f64(vnew), seqlens, tab) if lnew
                else (f64(k0), f64(v0)))
        for label, got, expected in (("k_cache", kc, want[0]), ("v_cache", vc, want[1])):
            if not np.array_equal(f64(got), expected, equal_nan=True):
                bad = int((~((f64(got) == expected) | (np.isnan(f64(got)) & np.isnan(expected)))).sum())
                raise AssertionError(f"{label}: {bad} elements differ from the append's expectation")
        ref_out = attention_with_kvcache(f64(q), np.nan_to_num(f64(k0)), np.nan_to_num(f64(v0)), k=f64(knew),
                                         v=f64(vnew), cache_seqlens=np.array(seqlens), block_table=tab)
        base = torch.zeros_like(q)
        mags = np.zeros(ref_out.shape)
        for b in range(batch):
            n = seqlens[b] + lnew
            if n == 0:
                continue  # no key: the oracle's and the baseline's rows are 0
            kb = torch.stack([k_cache[where(b, t)] if t < seqlens[b] else knew[b, :, t - seqlens[b]]
                              for t in range(n)]).transpose(0, 1)[None]
            vb = torch.stack([v_cache[where(b, t)] if t < seqlens[b] else vnew[b, :, t - seqlens[b]]
                              for t in range(n)]).transpose(0, 1)[None]
            ref_b, lse_b = attention_with_kvcache(f64(q[b:b + 1]), f64(kb.transpose(1, 2)), f64(vb.transpose(1, 2)),
                                                  cache_seqlens=np.array([n]), return_lse=True)
            b_side, b_mags = _dense_side(self.dtype, hq, hkv, d, True, "bottom_right", q[b:b + 1], kb, vb,
                                         torch.zeros_like(q[b:b + 1]), ref_b, lse_b)
            base[b] = b_side["out"][0]
            mags[b] = b_mags["out"][0]
        errors = _judge_packed(self.dtype, dict(out=out), dict(out=ref_out), dict(out=base), dict(out=mags))
        return eq.CaseResult(self, errors, time.perf_counter() - start)


# ---------------------------------------------------------------------------- sweeps
def from_name(name: str, seed: int = 0):
    """A packed case from its name, or None when the name is not a packed family's."""
    text = name.strip()
    if text.startswith("varlen-"):
        return VarlenCase.from_name(text, seed)
    if text.startswith("kvcache-"):
        return KvcacheCase.from_name(text, seed)
    return None


_VARLEN = {  # (batch, hq, hkv, max_q, max_k, head dim, dtype, causal, alignment)
    "quick": [(4, 4, 2, 13, 17, 32, "float16", True, "bottom_right")],
    "ci": [(4, 4, 2, 13, 17, 32, "float16", True, "bottom_right"),
           (3, 2, 1, 9, 11, 64, "bfloat16", False, "top_left"),
           (5, 3, 1, 17, 7, 40, "float32", True, "top_left"),
           (4, 2, 2, 21, 29, 128, "bfloat16", True, "bottom_right")],
}
_KVCACHE = {  # (hq, hkv, lq, new, capacity, page, splits, head dim, dtype)
    "quick": [(4, 2, 1, 1, 32, 16, 3, 64, "bfloat16")],
    "ci": [(4, 2, 1, 1, 32, 16, 3, 64, "bfloat16"),
           (4, 1, 2, 2, 37, 0, 0, 32, "float16"),
           (2, 2, 1, 1, 128, 64, 1, 64, "float32"),
           (6, 3, 3, 3, 256, 256, 3, 128, "float16"),
           (4, 1, 1, 0, 48, 16, 0, 40, "bfloat16"),
           (2, 1, 4, 4, 64, 0, 3, 96, "float32")],
}


def packed_sweep(preset: str, *, dtypes=None, head_dims=None, causal=None, seed: int = 0) -> list:
    """The packed families of a preset ("full" runs the "ci" ones), filtered like the dense sweep."""
    key = "quick" if preset == "quick" else "ci"
    cases = []
    for row in _VARLEN[key]:
        c = VarlenCase(*row, seed=seed + len(cases))
        if (dtypes is None or c.dtype in dtypes) and (head_dims is None or c.head_dim in head_dims) \
                and (causal is None or c.causal == causal):
            cases.append(c)
    for row in _KVCACHE[key]:
        c = KvcacheCase(*row, seed=seed + len(cases))
        if (dtypes is None or c.dtype in dtypes) and (head_dims is None or c.head_dim in head_dims) \
                and causal is not False:  # decoding is causal
            cases.append(c)
    return cases


__all__ = ["VarlenCase", "KvcacheCase", "packed_sweep", "from_name"]
