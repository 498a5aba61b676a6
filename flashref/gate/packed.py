"""The packed families: ``flash_attention_varlen`` (forward and backward) and
``flash_attention_with_kvcache`` (forward, in-place append).

Each case is judged by the gate's rule (``rule.py``): the kernel against the float64 oracle
twin (``attention_varlen_forward/_backward``, ``attention_with_kvcache``), the baseline plain
torch attention in the kernel's dtype, one sequence at a time. Per sequence the problem is a
dense one, so the baseline and the magnitudes behind the slack are the dense family's
(``dense.baseline_attention``, ``dense.magnitudes`` on a one-sequence ``Case``), and a packed
tensor's slack is taken over the largest of its sequences. Case names start with ``varlen-`` /
``kvcache-`` and replay with ``flashref verify --case NAME --seed N``.

The KV-cache family also checks the append: the cache comes back with exactly the new rows
written (element by element) and every other element unchanged (the rows outside the live
range are NaN-poisoned before the call, so a stray read shows up in ``out`` as well).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import numpy as np

from .boundaries import RESIDUES, SHIFT_PAIRING, tile_triples
from .cases import TILE_LAUNCHES, Case, ReplayableCase
from .dense import CaseInputs, baseline_attention, magnitudes
from .results import CaseResult, ImplementationError
from .rule import FACTORS, as_float64, baseline_ceiling, judge, max_abs_error, slack


def _lengths(gen, batch: int, max_len: int) -> list[int]:
    """Lengths in [0, max_len], with an empty, a single-token and an odd one among them."""
    import torch

    lens = torch.randint(0, max_len + 1, (batch,), generator=gen).tolist()
    fixed = [0, 1, 2 * int(torch.randint(1, max(2, max_len // 2), (1,), generator=gen)) + 1]
    lens[:min(3, batch)] = fixed[:batch]
    return [min(x, max_len) for x in (lens[i] for i in torch.randperm(batch, generator=gen).tolist())]


def _judge_packed(dtype: str, kern: dict, ref: dict, base: dict, mags: dict) -> dict:
    """The rule per tensor with the dense family's slack and ceiling on the largest magnitude."""
    out = {}
    for key in (t for t in ("out", "dq", "dk", "dv") if t in kern):
        magnitude = mags[key] if mags[key].size else np.zeros(1)
        out[key] = judge(max_abs_error(kern[key], ref[key]), max_abs_error(base[key], ref[key]), FACTORS[key],
                         slack(dtype, magnitude, ref[key]), baseline_ceiling(dtype, magnitude, ref[key]))
    return out


def _dense_side(dtype, hq, hkv, d, causal, alignment, q, k, v, dout, ref_out, ref_lse, *, window=(-1, -1),
                softcap=0.0, alibi_slopes=None, sinks=None):
    """Baseline and magnitudes of one sequence (q (1, Hq, Lq, D), ...), via the dense gate;
    the variants as the dense gate takes them (ALiBi slopes (Hq,) float32, sinks (Hq,))."""
    case = Case(1, hq, hkv, q.shape[2], k.shape[2], d, dtype, causal, alignment, False, window=window,
                   softcap=softcap, alibi="h" if alibi_slopes is not None else "", sinks=sinks is not None,
                   head_dim_v=v.shape[-1])
    inputs = CaseInputs(q, k, v, dout, None, alibi_slopes=alibi_slopes, sinks=sinks)
    base = baseline_attention(case, inputs)
    mags = magnitudes(case, inputs, dict(out=ref_out, lse=ref_lse))
    return base, mags


# ---------------------------------------------------------------------------- varlen
@dataclass(frozen=True)
class VarlenCase(ReplayableCase):
    """Packed sequences: ``batch`` sequences, lengths drawn from the seed in [0, max_seqlen_q]
    and [0, max_seqlen_k] (an empty, a single-token and an odd one always among them), or the
    given ``lengths`` ((Lq_b, Lk_b) per sequence, each within the maxima); ``tiles`` forces the
    launch tiles under the interpreter as a dense ``Case``'s do; ``head_dim_v``: V's head dim
    where it differs from ``head_dim`` (MLA; named ``-dv<Dv>``, last)."""

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
    lengths: tuple = ()
    tiles: tuple = ()
    head_dim_v: int | None = None

    _NAME = re.compile(r"varlen-b(\d+)-hq(\d+)-hkv(\d+)-maxq(\d+)-maxk(\d+)-d(\d+)-(float16|bfloat16|float32)"
                       r"-(noncausal|causal_top_left|causal_bottom_right)(?:-lens(\d+x\d+(?:_\d+x\d+)*))?"
                       r"(?:-tiles(\d+x\d+(?:_\d+x\d+)*))?(?:-dv(\d+))?")

    def __post_init__(self):
        pairs = lambda t: tuple(tuple(int(n) for n in pair) for pair in t)  # noqa: E731
        object.__setattr__(self, "lengths", pairs(self.lengths))
        object.__setattr__(self, "tiles", pairs(self.tiles))
        if self.head_dim_v is not None:  # Dv equal to D is the default, spelled None
            object.__setattr__(self, "head_dim_v", None if int(self.head_dim_v) == self.head_dim else int(self.head_dim_v))
        if self.lengths and (len(self.lengths) != self.batch or any(
                not (0 <= lq <= self.max_seqlen_q and 0 <= lk <= self.max_seqlen_k) for lq, lk in self.lengths)):
            raise ValueError(f"lengths must be one (Lq, Lk) per sequence within the maxima, got {self.lengths!r}")
        if self.tiles and len(self.tiles) != len(TILE_LAUNCHES):
            raise ValueError(f"tiles must be {len(TILE_LAUNCHES)} (BLOCK_M, BLOCK_N) pairs, got {self.tiles!r}")

    @property
    def name(self) -> str:
        mask = f"causal_{self.causal_alignment}" if self.causal else "noncausal"
        name = (f"varlen-b{self.batch}-hq{self.heads_q}-hkv{self.heads_kv}-maxq{self.max_seqlen_q}"
                f"-maxk{self.max_seqlen_k}-d{self.head_dim}-{self.dtype}-{mask}")
        if self.lengths:
            name += "-lens" + "_".join(f"{lq}x{lk}" for lq, lk in self.lengths)
        if self.tiles:
            name += "-tiles" + "_".join(f"{m}x{n}" for m, n in self.tiles)
        if self.head_dim_v is not None:
            name += f"-dv{self.head_dim_v}"
        return name

    @classmethod
    def from_name(cls, name: str, seed: int = 0) -> "VarlenCase":
        m = cls._NAME.fullmatch(name.strip())
        if m is None:
            raise ValueError(f"varlen case name must look like 'varlen-b4-hq4-hkv2-maxq13-maxk17-d32-float16-"
                             f"causal_bottom_right', got {name!r}")
        mask = m.group(8)
        pairs = lambda text: tuple(tuple(int(n) for n in p.split("x")) for p in text.split("_")) if text else ()  # noqa: E731
        return cls(*(int(g) for g in m.groups()[:6]), m.group(7), mask != "noncausal",
                   "bottom_right" if mask == "causal_bottom_right" else "top_left", seed, pairs(m.group(9)),
                   pairs(m.group(10)), int(m.group(11)) if m.group(11) else None)



def varlen_features(case: VarlenCase) -> set[str]:
    """The features (``cases.FEATURES``) an implementation must declare to run a varlen case."""
    needs = {"varlen"} | ({f"causal_{case.causal_alignment}"} if case.causal else set())
    needs |= {"value_head_dim"} if case.head_dim_v is not None else set()
    return needs | ({"gqa"} if case.heads_q != case.heads_kv else set())


def _call(name: str, fn, *args, **kwargs):
    """An implementation's packed entry point called; anything it raises is its ERROR."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        raise ImplementationError(f"{name} raised {type(exc).__name__}: {exc}") from exc


def _check_output(name: str, out, like, ref_out) -> None:
    """``out`` must be a tensor shaped, typed and placed like ``like``, finite where the oracle is."""
    import torch

    if not isinstance(out, torch.Tensor):
        raise ImplementationError(f"{name} returned {type(out).__name__}, not a torch.Tensor")
    if tuple(out.shape) != tuple(like.shape) or out.dtype != like.dtype or out.device != like.device:
        raise ImplementationError(f"{name} returned out {tuple(out.shape)} {out.dtype} on {out.device}, expected "
                                  f"{tuple(like.shape)} {like.dtype} on {like.device}")
    finite = torch.from_numpy(np.isfinite(ref_out)).to(out.device)
    if not bool(out.detach().isfinite()[finite].all()):
        raise ImplementationError(f"{name} returned NaN or Inf where the oracle is finite")


def check_varlen(case: VarlenCase, device: str = "cpu", varlen=None, name: str = "flashref") -> CaseResult:
    """The varlen entry point against its float64 oracle twin, forward and backward (module
    docstring): flashref's ``flash_attention_varlen``, or ``varlen`` (an implementation's, same
    signature: ``varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *,
    causal, causal_alignment)`` with q (total_q, Hq, D), k (total_k, Hkv, D) and v (total_k, Hkv,
    Dv), returning out (total_q, Hq, Dv); its gradients from torch autograd)."""
    import torch

    from flashref.kernels import INTERPRETED, flash_attention_varlen, poisoned_outputs
    from flashref.kernels.config_dispatch import forced_configs
    from flashref.kernels.tile_tables import KernelConfig
    from flashref.reference import attention_varlen_backward, attention_varlen_forward

    start = time.perf_counter()
    gen = torch.Generator().manual_seed(case.seed)
    dtype = getattr(torch, case.dtype)
    lens_q, lens_k = _lengths(gen, case.batch, case.max_seqlen_q), _lengths(gen, case.batch, case.max_seqlen_k)
    if case.lengths:
        lens_q, lens_k = [lq for lq, _ in case.lengths], [lk for _, lk in case.lengths]
    cu_q, cu_k = np.r_[0, np.cumsum(lens_q)].astype(np.int32), np.r_[0, np.cumsum(lens_k)].astype(np.int32)
    draw = lambda *s: torch.randn(*s, generator=gen).to(dtype=dtype, device=device)  # noqa: E731
    dv_dim = case.head_dim_v or case.head_dim  # V's, out's and dout's head dim
    q, k, v = draw(cu_q[-1], case.heads_q, case.head_dim), draw(cu_k[-1], case.heads_kv, case.head_dim), \
        draw(cu_k[-1], case.heads_kv, dv_dim)
    dout = draw(cu_q[-1], case.heads_q, dv_dim)
    kw = dict(causal=case.causal, causal_alignment=case.causal_alignment)
    max_q, max_k = max(lens_q), max(lens_k)

    qk, kk, vk = (t.detach().clone().requires_grad_() for t in (q, k, v))
    forced = {}
    if case.tiles and INTERPRETED:
        forced = {name: KernelConfig(m, n, 1, 1) for name, (m, n) in zip(TILE_LAUNCHES, case.tiles)}
    f64 = as_float64
    ref_out, ref_lse = attention_varlen_forward(f64(q), f64(k), f64(v), cu_q, cu_k, max_q, max_k, **kw)
    cu_args = (torch.from_numpy(cu_q).to(device), torch.from_numpy(cu_k).to(device), max_q, max_k)
    if varlen is None:
        with poisoned_outputs(), forced_configs(forced):
            out = flash_attention_varlen(qk, kk, vk, *cu_args, **kw)
            dq, dk, dv = torch.autograd.grad(out, (qk, kk, vk), dout)
    else:
        if not kw["causal"]:
            kw = {}  # only the keywords the case uses (an implementation may take no other)
        elif kw["causal_alignment"] == "top_left":
            kw = dict(causal=True)
        out = _call(name, varlen, qk, kk, vk, *cu_args, **kw)
        _check_output(name, out, dout, ref_out)
        dq, dk, dv = _call(f"{name}'s backward", torch.autograd.grad, out, (qk, kk, vk), dout)
    kern = dict(out=out, dq=dq, dk=dk, dv=dv)

    rdq, rdk, rdv = attention_varlen_backward(f64(q), f64(k), f64(v), ref_out, ref_lse, f64(dout), cu_q, cu_k,
                                              max_q, max_k, **kw)
    ref = dict(out=ref_out, dq=rdq, dk=rdk, dv=rdv)

    base = {key: torch.zeros_like(t) for key, t in dict(out=dout, dq=q, dk=k, dv=v).items()}
    mags = {key: np.zeros(x.shape) for key, x in ref.items()}
    dense = lambda t: t.transpose(0, 1)[None]  # noqa: E731  (L, H, D) -> (1, H, L, D)
    for b in range(case.batch):
        qs, ks = slice(int(cu_q[b]), int(cu_q[b + 1])), slice(int(cu_k[b]), int(cu_k[b + 1]))
        if qs.start == qs.stop or ks.start == ks.stop:
            continue  # nothing attends or nothing to attend: every baseline output is 0, as the oracle's
        b_side, b_mags = _dense_side(
            case.dtype, case.heads_q, case.heads_kv, case.head_dim, case.causal, case.causal_alignment,
            dense(q[qs]), dense(k[ks]), dense(v[ks]), dense(dout[qs]),
            ref_out[qs].transpose(1, 0, 2)[None], ref_lse[None, :, qs])
        for key, sl in (("out", qs), ("dq", qs), ("dk", ks), ("dv", ks)):
            base[key][sl] = b_side[key][0].transpose(0, 1)
            mags[key][sl] = b_mags[key][0].transpose(1, 0, 2)
    errors = _judge_packed(case.dtype, kern, ref, base, mags)
    return CaseResult(case, errors, time.perf_counter() - start)


# ---------------------------------------------------------------------------- kvcache
@dataclass(frozen=True)
class KvcacheCase(ReplayableCase):
    """Decoding: ``seqlen_q`` new queries and ``new_len`` appended tokens per sequence against a
    cache of ``capacity`` tokens, contiguous (``page_size`` 0) or paged with a shuffled table;
    four sequences with cache_seqlens 0, 1, odd and full (capacity - new_len), or the given
    ``cache_lens``. The variants as in the dense gate: ``window`` (left, right), ``softcap``,
    ``alibi`` (slopes (Hq,)) and ``sinks`` (Hq,), drawn after everything else.
    ``head_dim_v``: the value cache's head dim Dv where it differs from ``head_dim`` (MLA;
    named ``-dv<Dv>``); with ``absorbed`` (MLA's absorbed decode, named ``-dv<Dv>-absorbed``)
    there is no value cache: the values are the first Dv columns of the key cache
    (``v_cache=None, v_head_dim=Dv``), only k is appended, and the oracle runs with
    ``v_cache = k_cache[..., :Dv]``."""

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
    cache_lens: tuple = ()
    window: tuple = (-1, -1)
    softcap: float = 0.0
    alibi: bool = False
    sinks: bool = False
    tile: tuple = ()  # the decode kernel's (BLOCK_M, BLOCK_N), forced under the interpreter
    head_dim_v: int | None = None
    absorbed: bool = False

    _NAME = re.compile(r"kvcache-hq(\d+)-hkv(\d+)-lq(\d+)-new(\d+)-cap(\d+)-page(\d+)-splits(\d+)-d(\d+)"
                       r"-(float16|bfloat16|float32)(?:-lens(\d+)_(\d+)_(\d+)_(\d+))?(?:-win(\d+|inf)_(\d+|inf))?"
                       r"(?:-softcap([0-9.]+))?(-alibi)?(-sinks)?(?:-tile(\d+)x(\d+))?(?:-dv(\d+))?(-absorbed)?")

    def __post_init__(self):
        if self.absorbed:  # the latent width is always named: it says which columns are the values
            if self.head_dim_v is None or not 1 <= int(self.head_dim_v) <= self.head_dim:
                raise ValueError(f"an absorbed case needs head_dim_v in [1, head_dim], got {self.head_dim_v!r}")
            object.__setattr__(self, "head_dim_v", int(self.head_dim_v))
        elif self.head_dim_v is not None:  # Dv equal to D is the default, spelled None
            object.__setattr__(self, "head_dim_v", None if int(self.head_dim_v) == self.head_dim else int(self.head_dim_v))
        object.__setattr__(self, "cache_lens", tuple(int(n) for n in self.cache_lens))
        object.__setattr__(self, "window", tuple(int(w) for w in self.window))
        object.__setattr__(self, "tile", tuple(int(b) for b in self.tile))
        if self.cache_lens and (len(self.cache_lens) != 4
                                or not all(0 <= n <= self.capacity - self.new_len for n in self.cache_lens)):
            raise ValueError(f"cache_lens must be 4 lengths in [0, capacity - new_len], got {self.cache_lens!r}")

    @property
    def name(self) -> str:
        name = (f"kvcache-hq{self.heads_q}-hkv{self.heads_kv}-lq{self.seqlen_q}-new{self.new_len}"
                f"-cap{self.capacity}-page{self.page_size}-splits{self.num_splits}-d{self.head_dim}-{self.dtype}")
        if self.cache_lens:
            name += "-lens" + "_".join(map(str, self.cache_lens))
        if self.window != (-1, -1):
            name += "-win" + "_".join("inf" if w < 0 else str(w) for w in self.window)
        if self.softcap:
            name += f"-softcap{self.softcap:g}"
        name += ("-alibi" if self.alibi else "") + ("-sinks" if self.sinks else "")
        name += f"-tile{self.tile[0]}x{self.tile[1]}" if self.tile else ""
        name += f"-dv{self.head_dim_v}" if self.head_dim_v is not None else ""
        return name + ("-absorbed" if self.absorbed else "")

    @classmethod
    def from_name(cls, name: str, seed: int = 0) -> "KvcacheCase":
        m = cls._NAME.fullmatch(name.strip())
        if m is None:
            raise ValueError(f"kvcache case name must look like 'kvcache-hq4-hkv1-lq1-new1-cap64-page16-splits3-d64-"
                             f"bfloat16' (page 0: contiguous, splits 0: heuristic; then optionally -lens0_1_5_9, "
                             f"-win8_inf, -softcap30, -alibi, -sinks, -tile16x32, -dv32, -dv512-absorbed), got {name!r}")
        g = m.groups()
        lens = tuple(int(x) for x in g[9:13]) if g[9] is not None else ()
        window = tuple(-1 if w == "inf" else int(w) for w in g[13:15]) if g[13] is not None else (-1, -1)
        tile = (int(g[18]), int(g[19])) if g[18] is not None else ()
        return cls(*(int(x) for x in g[:8]), g[8], seed, lens, window, float(g[15]) if g[15] else 0.0,
                   g[16] is not None, g[17] is not None, tile, int(g[20]) if g[20] else None, g[21] is not None)


def kvcache_features(case: KvcacheCase) -> set[str]:
    """The features (``cases.FEATURES``) an implementation must declare to run a KV-cache case
    (decoding: the new queries are the last of each sequence, causal bottom-right)."""
    needs = {"kvcache", "causal_bottom_right"} | ({"paged"} if case.page_size else set())
    for feature, used in (("value_head_dim", case.head_dim_v is not None and not case.absorbed),
                          ("absorbed_decode", case.absorbed),
                          ("gqa", case.heads_q != case.heads_kv), ("window", case.window != (-1, -1)),
                          ("softcap", case.softcap > 0), ("alibi", case.alibi), ("sinks", case.sinks)):
        if used:
            needs.add(feature)
    return needs


def check_kvcache(case: KvcacheCase, device: str = "cpu", kvcache=None, name: str = "flashref") -> CaseResult:
    """The KV-cache entry point against its float64 oracle twin, and its append (module
    docstring): flashref's ``flash_attention_with_kvcache``, or ``kvcache`` (an
    implementation's, same signature: ``kvcache(q, k_cache, v_cache, k=None, v=None, *,
    cache_seqlens, block_table=None, ...)``, the variants' keywords only when the case uses
    them; it appends k, v into the caches in place and returns out (B, Hq, Lq, Dv)). An
    absorbed case calls it with ``v_cache=None``, ``v=None`` and ``v_head_dim=Dv``."""
    import torch

    from flashref.kernels import INTERPRETED, flash_attention_with_kvcache, poisoned_outputs
    from flashref.kernels.config_dispatch import forced_configs
    from flashref.kernels.tile_tables import KernelConfig
    from flashref.reference import append_to_kvcache, attention_with_kvcache

    start = time.perf_counter()
    gen = torch.Generator().manual_seed(case.seed)
    dtype = getattr(torch, case.dtype)
    batch, hq, hkv, d, page, lnew = 4, case.heads_q, case.heads_kv, case.head_dim, case.page_size, case.new_len
    dv, absorbed = case.head_dim_v or d, case.absorbed
    draw = lambda *s: torch.randn(*s, generator=gen).to(dtype)  # noqa: E731
    full = case.capacity - lnew
    odd = min(full, 2 * int(torch.randint(0, max(1, full // 2), (1,), generator=gen)) + 1)
    seqlens = [[0, min(1, full), odd, full][i] for i in torch.randperm(batch, generator=gen).tolist()]
    if case.cache_lens:
        seqlens = list(case.cache_lens)
    if page:
        per_seq = case.capacity // page
        num_pages = batch * per_seq + 2
        table = torch.randperm(num_pages, generator=gen)[:batch * per_seq].view(batch, per_seq).to(torch.int32)
        shape = (num_pages, page, hkv)
    else:
        table, shape = None, (batch, case.capacity, hkv)
    k_cache = draw(*shape, d)
    v_cache = k_cache[..., :dv] if absorbed else draw(*shape, dv)  # absorbed: a view, for the oracle only
    where = lambda b, t: (int(table[b, t // page]), t % page) if page else (b, t)  # noqa: E731
    live = torch.zeros(shape[:2], dtype=torch.bool)
    for b in range(batch):
        for t in range(seqlens[b] + lnew):
            live[where(b, t)] = True
    k_cache[~live], v_cache[~live] = float("nan"), float("nan")  # poison: must be neither read nor written
    q = draw(batch, hq, case.seqlen_q, d)
    knew, vnew = (None, None)
    if lnew:
        knew = draw(batch, hkv, lnew, d)
        vnew = knew[..., :dv] if absorbed else draw(batch, hkv, lnew, dv)
    k0, v0 = k_cache.clone(), v_cache.clone()
    lens_t = torch.tensor(seqlens, dtype=torch.int32)
    # The variants' inputs come last, so a plain case's numbers do not move.
    slopes = (torch.rand(hq, generator=gen) * 0.5) if case.alibi else None
    sinks = (torch.randn(hq, generator=gen) + 1.0) if case.sinks else None
    variants = dict(window_size=case.window, softcap=case.softcap)

    dev = lambda t: None if t is None else t.to(device)  # noqa: E731
    kc = dev(k_cache)
    vc = None if absorbed else dev(v_cache)
    v_in, v_kw = (None, dict(v_head_dim=dv)) if absorbed else (dev(vnew), {})
    forced = {"decode": KernelConfig(*case.tile, 1, 1)} if case.tile and INTERPRETED else {}
    if kvcache is None:
        with poisoned_outputs(), forced_configs(forced):
            out = flash_attention_with_kvcache(dev(q), kc, vc, k=dev(knew), v=v_in, cache_seqlens=dev(lens_t),
                                               block_table=dev(table), num_splits=case.num_splits,
                                               alibi_slopes=dev(slopes), sinks=dev(sinks), **variants, **v_kw)
    else:
        used = {key: value for key, value in dict(variants, alibi_slopes=dev(slopes), sinks=dev(sinks)).items()
                if value is not None and value != (-1, -1) and value != 0.0}
        if table is not None:
            used["block_table"] = dev(table)
        out = _call(name, kvcache, dev(q), kc, vc, k=dev(knew), v=v_in, cache_seqlens=dev(lens_t), **used, **v_kw)

    f64 = lambda t: None if t is None else as_float64(t)  # noqa: E731
    tab = None if table is None else table.numpy()
    want = (append_to_kvcache(f64(k0), f64(v0), f64(knew), f64(vnew), seqlens, tab) if lnew
            else (f64(k0), f64(v0)))
    for label, got, expected in (("k_cache", kc, want[0]),) + (() if absorbed else (("v_cache", vc, want[1]),)):
        if not np.array_equal(f64(got), expected, equal_nan=True):
            bad = int((~((f64(got) == expected) | (np.isnan(f64(got)) & np.isnan(expected)))).sum())
            raise ImplementationError(f"{name}: {label}: {bad} elements differ from the append's expectation "
                                      f"(the new rows written, every other element unchanged)")
    oracle_variants = dict(variants, alibi_slopes=f64(slopes), sinks=f64(sinks))
    ref_out = attention_with_kvcache(f64(q), np.nan_to_num(f64(k0)), np.nan_to_num(f64(v0)), k=f64(knew),
                                     v=f64(vnew), cache_seqlens=np.array(seqlens), block_table=tab,
                                     **oracle_variants)
    base = q.new_zeros(ref_out.shape)
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
                                              cache_seqlens=np.array([n]), return_lse=True, **oracle_variants)
        b_side, b_mags = _dense_side(case.dtype, hq, hkv, d, True, "bottom_right", q[b:b + 1], kb, vb,
                                     q.new_zeros(1, hq, case.seqlen_q, dv), ref_b, lse_b, window=case.window,
                                     softcap=case.softcap, alibi_slopes=slopes, sinks=sinks)
        base[b] = b_side["out"][0]
        mags[b] = b_mags["out"][0]
    if kvcache is not None:
        _check_output(name, out, base.to(device), ref_out)
    errors = _judge_packed(case.dtype, dict(out=out), dict(out=ref_out), dict(out=base), dict(out=mags))
    return CaseResult(case, errors, time.perf_counter() - start)


# ---------------------------------------------------------------------------- sweeps
_VARLEN = {  # (batch, hq, hkv, max_q, max_k, head dim, dtype, causal, alignment)
    "quick": [(4, 4, 2, 13, 17, 32, "float16", True, "bottom_right"),
              (3, 2, 1, 19, 11, 40, "float32", False, "top_left")],
    "ci": [(4, 4, 2, 13, 17, 32, "float16", True, "bottom_right"),
           (3, 2, 1, 9, 11, 64, "bfloat16", False, "top_left"),
           (5, 3, 1, 17, 7, 40, "float32", True, "top_left"),
           (4, 2, 2, 21, 29, 128, "bfloat16", True, "bottom_right")],
}
# Value head dim != query/key head dim (issue 23, MLA): (row, Dv), appended to each preset.
_VARLEN_MLA = {
    "quick": [((3, 2, 1, 13, 17, 192, "bfloat16", True, "bottom_right"), 128)],
    "ci": [((3, 2, 1, 13, 17, 192, "bfloat16", True, "bottom_right"), 128),
           ((4, 4, 2, 9, 11, 64, "float32", False, "top_left"), 128)],
}
_KVCACHE = {  # (hq, hkv, lq, new, capacity, page, splits, head dim, dtype)
    "quick": [(4, 2, 1, 1, 32, 16, 3, 64, "bfloat16"),
              (2, 1, 3, 2, 41, 0, 1, 32, "float32")],
    "ci": [(4, 2, 1, 1, 32, 16, 3, 64, "bfloat16"),
           (4, 1, 2, 2, 37, 0, 0, 32, "float16"),
           (2, 2, 1, 1, 128, 64, 1, 64, "float32"),
           (6, 3, 3, 3, 256, 256, 3, 128, "float16"),
           (4, 1, 1, 0, 48, 16, 0, 40, "bfloat16"),
           (2, 1, 4, 4, 64, 0, 3, 96, "float32")],
}


# Value head dim != key head dim (issue 23, MLA): (row, extra), appended to each preset. A
# covering design over (plain Dv != D, absorbed) x (contiguous, paged) x dtype x (MHA, GQA,
# MQA) x (one split, several, heuristic): quick has one of each kind, the absorbed one
# DeepSeek's (576, 512) with 16 heads on one kv head, paged, its lengths (after the append)
# 1, 114, 160, 192 on and off the decode blocks' and the pages' edges; ci adds the small
# absorbed shapes (rope 16, no rope at all), the other dtypes, Dv < D and Dv > D, and the
# variants on both kinds.
_MLA_LENS = (0, 113, 159, 191)  # + new 1: 1, 114, 160, 192 keys
_KVCACHE_MLA = {
    "quick": [((16, 1, 1, 1, 192, 32, 2, 576, "bfloat16"), dict(head_dim_v=512, absorbed=True, cache_lens=_MLA_LENS)),
              ((4, 2, 2, 1, 41, 0, 3, 32, "float16"), dict(head_dim_v=64))],
    "ci": [((16, 1, 1, 1, 192, 32, 2, 576, "bfloat16"), dict(head_dim_v=512, absorbed=True, cache_lens=_MLA_LENS)),
           ((4, 2, 2, 1, 41, 0, 3, 32, "float16"), dict(head_dim_v=64)),
           ((8, 1, 2, 2, 100, 0, 0, 576, "float16"), dict(head_dim_v=512, absorbed=True)),
           ((4, 2, 2, 1, 64, 16, 3, 80, "float32"), dict(head_dim_v=64, absorbed=True)),
           ((4, 1, 1, 0, 48, 16, 1, 64, "bfloat16"), dict(head_dim_v=64, absorbed=True, window=(9, -1), sinks=True)),
           ((4, 4, 1, 1, 64, 16, 0, 192, "bfloat16"), dict(head_dim_v=128)),
           ((2, 1, 3, 2, 37, 0, 1, 64, "float32"), dict(head_dim_v=128, softcap=10.0, alibi=True))],
}


def _keep(case, dtypes, head_dims) -> bool:
    return (dtypes is None or case.dtype in dtypes) and (head_dims is None or case.head_dim in head_dims)


def varlen_sweep(preset: str, *, dtypes=None, head_dims=None, causal=None, seed: int = 0) -> list[VarlenCase]:
    """The varlen cases of a preset ("full" runs the "ci" ones), filtered like the dense sweep;
    seeds ``seed, seed + 1, ...``."""
    key = "quick" if preset == "quick" else "ci"
    cases = []
    for row, extra in ([(row, {}) for row in _VARLEN[key]] + varlen_boundary_rows(key)
                       + [(row, dict(head_dim_v=dv)) for row, dv in _VARLEN_MLA[key]]):
        c = VarlenCase(*row, seed=seed + len(cases), **extra)
        if _keep(c, dtypes, head_dims) and (causal is None or c.causal == causal):
            cases.append(c)
    return cases


def kvcache_sweep(preset: str, *, dtypes=None, head_dims=None, causal=None, seed: int = 0) -> list[KvcacheCase]:
    """The KV-cache cases of a preset, filtered like the dense sweep (decoding is causal: none
    with ``causal=False``); seeds continue the varlen family's (``seed + len(varlen_sweep)``)."""
    key = "quick" if preset == "quick" else "ci"
    first = seed + len(varlen_sweep(preset, dtypes=dtypes, head_dims=head_dims, causal=causal))
    cases = []
    for row, extra in ([(row, {}) for row in _KVCACHE[key]] + _KVCACHE_VARIANTS[key] + kvcache_boundary_rows(key)
                       + _KVCACHE_MLA[key]):
        c = KvcacheCase(*row, seed=first + len(cases), **extra)
        if _keep(c, dtypes, head_dims) and causal is not False:
            cases.append(c)
    return cases


def varlen_boundary_rows(preset: str) -> list:
    """Packed cases whose sequences sit on block boundaries: per tile triple of
    ``boundaries.tile_triples`` (quick one, ci three of them), five sequences with
    ``Lq_b = Bmax + r`` and ``Lk_b - Lq_b = Bmax + s`` (r, s through ``RESIDUES`` with
    ``SHIFT_PAIRING``), so each sequence's lengths, its bottom-right shift and the packed
    offsets between sequences land on block edges; bottom-right causal, then top-left."""
    triples = tile_triples(preset)
    if preset != "quick":
        triples = triples[::3]
    rows = []
    for t, tiles in enumerate(triples):
        bmax = max(max(tile) for tile in tiles)
        lengths = tuple((bmax + r, 2 * bmax + r + s) for r, s in zip(RESIDUES, SHIFT_PAIRING))
        alignment = ("bottom_right", "top_left")[t % 2]
        dtype = ("bfloat16", "float32", "float16")[t % 3]
        rows.append(((5, 2, 1, bmax + 2, 2 * bmax + 4, 32 if t % 2 else 40, dtype, True, alignment),
                     dict(lengths=lengths, tiles=tiles)))
    return rows


# The variants on the decode kernel: each alone and together, 16-bit and float32, one split
# and several, paged and contiguous.
_KVCACHE_VARIANTS = {
    "quick": [((4, 2, 2, 1, 48, 16, 3, 32, "float16"),
               dict(window=(9, -1), softcap=20.0, alibi=True, sinks=True))],
    "ci": [((4, 2, 2, 1, 48, 16, 3, 32, "float16"), dict(window=(9, -1), softcap=20.0, alibi=True, sinks=True)),
           ((2, 1, 1, 1, 33, 0, 1, 64, "float32"), dict(window=(5, -1))),
           ((4, 2, 3, 2, 64, 16, 0, 40, "bfloat16"), dict(softcap=5.0)),
           ((2, 2, 1, 1, 48, 16, 2, 32, "float32"), dict(alibi=True)),
           ((4, 1, 2, 1, 37, 0, 3, 64, "bfloat16"), dict(sinks=True)),
           ((2, 1, 2, 2, 50, 0, 1, 32, "float32"), dict(window=(17, -1), softcap=10.0, alibi=True, sinks=True))],
}
# Decode tiles: every (BLOCK_M, BLOCK_N) of ``kernels.attention_decode.decode_tile`` on any architecture.
DECODE_TILES = ((16, 16), (16, 32), (16, 64), (64, 16), (64, 32), (64, 64))


def kvcache_boundary_rows(preset: str) -> list:
    """KV-cache cases whose sequence lengths (cache_seqlens + new) sit on the residues 0, 1, 2,
    B - 2, B - 1 modulo every decode block size, the page sizes 16 / 32 / 64 and the split
    chunk (capacity 192 in 3 splits: chunks of 64 keys): two cases per tile, four sequences
    each, lengths 64 c + r. quick: the tile (16, 32); ci: every ``DECODE_TILES`` tile."""
    tiles = [(16, 32)] if preset == "quick" else list(DECODE_TILES)
    rows = []
    for i, tile in enumerate(tiles):
        page = (16, 32, 64)[i % 3]
        for lengths in ((62, 127, 128, 65), (66, 190, 2, 191)):
            dtype = ("bfloat16", "float32", "float16")[len(rows) % 3]
            new = 1 + len(rows) % 2
            rows.append(((4, 2, 1 + len(rows) % 2, new, 192, page, 3, 32, dtype),
                         dict(cache_lens=tuple(n - new for n in lengths), tile=tile)))
    return rows


__all__ = ["DECODE_TILES", "KvcacheCase", "VarlenCase", "check_kvcache", "check_varlen", "kvcache_features",
           "varlen_features", "kvcache_boundary_rows",
           "kvcache_sweep", "varlen_boundary_rows", "varlen_sweep"]
