r"""Ring attention (context parallelism) over torch.distributed, forward and backward.

Each of the ``W`` ranks of a process group holds a shard of one sequence (``layout.py``):
its queries ``q: (B, Hq, n, D)`` and the keys and values of the same positions
``k, v: (B, Hkv, n, D)``, ``n = L / W``. Attention over the whole sequence is computed
without any rank holding it:

**Forward.** At step ``s = 0 .. W-1`` rank ``r`` holds the K/V block of rank
``src = (r - s) mod W``. It posts the exchange of that block (send to ``r + 1``, receive the
next one from ``r - 1``, ``torch.distributed.batch_isend_irecv``), runs the fused kernel of
its queries against the block it holds *while the transfer is in flight*, merges the
partial ``(out_s, lse_s)`` into float32 accumulators by log-sum-exp (``merge.py``: the
formula of ``flashref.reference.merge_attention``), then waits for the transfer. Since the
key sets of the W blocks are disjoint and cover the sequence, the merged result is exactly
attention over the whole sequence; ``lse`` is the global log-sum-exp.

**Backward.** FlashAttention-2's backward recomputes ``P = exp(S - lse)`` from the lse it is
given, and its ``delta = rowsum(dO * O)`` from the O it is given. Given the *global* O and
lse, the kernel's backward on one K/V block returns exactly that block's share:
``dQ = sum_blocks dQ_s``, and ``dK_s, dV_s`` are the complete gradients of block ``s`` from
this rank's queries. So the backward runs the same ring: K/V travel as in the forward, dQ
accumulates locally, and a float32 ``(dK, dV)`` accumulator travels with each K/V block,
each rank adding its share; after ``W`` steps one more hop delivers each block's summed
gradient back to the rank that owns it. Messages per step: K/V onward (steps 0..W-2), the
accumulated dK/dV of the previous step onward (steps 1..W-1), then the final hop.

**Causal masking.** Both layouts keep a rank's positions increasing, so the block of rank
``src`` seen from rank ``r`` (``block_plan``) is one of: the diagonal block ``src == r``
(same positions on both sides: top-left causal attention, the kernel's causal flag with no
shift), a fully visible block (no mask), an invisible block (skipped), or, in the zigzag
layout, half a block: for ``src < r`` all queries see the first chunk of ``src`` and none
sees its second; for ``src > r`` only the second chunk of queries sees anything, and sees all
of the block. Every non-diagonal zigzag step is therefore half a block of work on every rank.

**Variants.** Each kernel call is a *piece*: rows of this rank's queries against columns of
the block it holds, with the global offset ``a - b`` between the position of its first query
row and of its first key column.

- Sliding windows and ALiBi depend on global distances ``(a + i) - (b + j)``, so their pieces
  are chunk pairs (``chunk_pieces``: each chunk is one run of consecutive positions) and the
  kernel's shifts get the offset added (its bottom-right alignment is the same mechanism with
  offset ``Lk - Lq``). A chunk pair no query of which sees any key is skipped. Without a window
  or ALiBi, ``block_plan``'s coarser pieces (offset 0) are enough: causal masking only needs
  the order of positions, which the local order keeps.
- Key padding: ``kv_lens[b]`` (keys at global positions ``>= kv_lens[b]`` are padding) becomes
  one length per piece. A piece's key positions increase, so its valid keys are a prefix of
  it, as long as the count of its positions below ``kv_lens[b]`` (``block_kv_lens``): the
  kernel's own ``kv_lens``. A piece with no valid key in any batch row is skipped; a row with
  no valid key anywhere keeps out = 0 and lse = -inf (the merge's empty row).
- softcap is elementwise on the scores: every piece applies it.
- Sinks: a sink is one more logit per row with a zero value, so it enters the merge once, as
  the accumulator's starting lse (``lse = sinks[h]``, ``out = 0``), never in a piece. The
  backward's pieces then see the global lse that includes it, and ``dsinks[h] = -sum_{b,i}
  exp(sinks[h] - lse) rowsum(dO o O)`` is summed over this rank's rows: like every parameter
  replicated across a context-parallel group, its gradient on a rank is that rank's share, and
  the all-reduce that sums the weights' gradients over the group sums it too.
- Not offered: dropout (Philox's counter would need global positions) and bottom-right
  alignment (with ``kv_lens`` its shift is per sequence and global).

Nothing here knows the backend: gloo on CPU tensors (the kernels under Triton's
interpreter), nccl on CUDA tensors. The kernels are called through one adapter,
``_attention_block``.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from .layout import LAYOUTS, rank_chunks, shard_positions
from .merge import merge_attention_

ALL_ROWS = slice(None)


@dataclass(frozen=True)
class _Options:
    """What every rank agreed on besides q, k, v: ``kv_lens`` as host ints (one per batch row,
    global positions) or None; ``alibi`` the slopes tensor or None (sinks travel as an input of
    the autograd function, for their gradient)."""

    causal: bool
    scale: float
    layout: str
    softcap: float = 0.0
    kv_lens: tuple | None = None
    window: tuple = (-1, -1)
    alibi: torch.Tensor | None = None

    @property
    def positional(self) -> bool:
        """Whether masks or biases depend on global distances (so pieces are chunk pairs)."""
        return self.window != (-1, -1) or self.alibi is not None


@dataclass(frozen=True)
class _Piece:
    """One kernel call: ``rows`` of this rank's queries against ``cols`` of the block held;
    ``offset`` = global position of the first row - that of the first column; ``kv_lens``
    (B,) int32 on the device, the valid-key prefix of ``cols`` per batch row, or None."""

    rows: slice
    cols: slice
    causal: bool
    offset: int
    kv_lens: torch.Tensor | None = None


def _attention_block(q, k, v, piece: _Piece, opts: _Options, grad=None):
    """THE adapter to flashref.kernels (the only place this module calls them).

    Forward (``grad`` None): attention of q (B, Hq, m, D) over k, v (B, Hkv, n, D) for one
    piece: causal, window and ALiBi on global positions (the kernel's shifts plus the piece's
    offset), keys ``j >= piece.kv_lens[b]`` hidden, ``opts.softcap``; returns ``out`` (q's
    dtype) and ``lse`` (B, Hq, m) float32.
    Backward (``grad = (out, lse, dout)``, out/lse the GLOBAL merged ones for these query
    rows): returns ``(dq, dk, dv)`` of this block, in q's / k's / v's dtypes.
    """
    from flashref.kernels.launch import launch_backward, launch_forward, resolve_launch

    # Top-left shifts are offsets from the local query index: moved by the piece's global offset.
    params = resolve_launch(q, k, piece.causal, "top_left", opts.scale, piece.kv_lens, opts.window, opts.softcap, 0.0, 0)
    params = replace(params, causal_shift=params.causal_shift + piece.offset,
                     window_shift=params.window_shift + piece.offset, alibi_shift=params.alibi_shift + piece.offset)
    if grad is None:
        return launch_forward(q, k, v, params, piece.kv_lens, opts.alibi, None)
    out, lse, dout = grad
    # The kernels index lse as a dense (B, Hq, m) array: a row slice of the global lse is a
    # strided view, so it is made contiguous here.
    dq, dk, dv, _dsinks = launch_backward(q, k, v, out, lse.contiguous(), dout, params, piece.kv_lens, opts.alibi, None)
    return dq, dk, dv


def block_kv_lens(kv_lens, positions) -> list[int]:
    """The valid-key prefix of a block whose keys sit at the increasing global ``positions``:
    for each batch row, how many of them lie below ``kv_lens[b]``."""
    return [bisect_left(positions, n) for n in kv_lens]


def block_plan(layout: str, causal: bool, rank: int, src: int, seqlen_local: int):
    """Which part of (rank's queries) x (rank src's keys) is visible, as ``(q_rows, kv_rows,
    causal)``: row slices of the local query and key blocks and whether the kernel applies
    top-left causal masking on that sub-block; ``None`` if no query sees any key (skip).

    Everything outside ``q_rows x kv_rows`` is invisible; inside it everything is visible
    (``causal`` False) or exactly the lower triangle (``causal`` True, only on the diagonal).
    """
    if not causal:
        return ALL_ROWS, ALL_ROWS, False
    if src == rank:
        return ALL_ROWS, ALL_ROWS, True
    if layout == "contiguous":
        return (ALL_ROWS, ALL_ROWS, False) if src < rank else None
    half = seqlen_local // 2
    if src < rank:  # chunk src < chunk r < chunk 2W-1-r < chunk 2W-1-src
        return ALL_ROWS, slice(0, half), False
    # chunk r < chunk src < chunk 2W-1-src < chunk 2W-1-r
    return slice(half, None), ALL_ROWS, False


def chunk_pieces(layout: str, world: int, rank: int, src: int, seqlen_local: int, causal: bool,
                 window=(-1, -1)) -> list[tuple[slice, slice, int]]:
    """The chunk pairs of (rank's queries) x (rank src's keys) in which some query sees some
    key, as ``(q_rows, kv_rows, offset)``: local row slices, each one chunk of consecutive
    positions, and the global offset ``a - b`` between their first positions. Query ``a + i``
    sees key ``b + j`` iff ``(a + i) - (b + j) <= left`` (a left bound) and ``>= -right`` (a
    right bound; causal is right = 0), i.e. iff ``offset - left <= j - i <= offset + right``;
    within a pair of chunks of length c, ``j - i`` takes every value of ``[-(c-1), c-1]``, so
    the pair is visible iff the two ranges meet."""
    q_chunks, k_chunks = rank_chunks(layout, world, rank), rank_chunks(layout, world, src)
    c = seqlen_local // len(q_chunks)
    left, right = (int(w) for w in window)
    if causal:
        right = 0 if right < 0 else min(right, 0)
    pieces = []
    for iq, cq in enumerate(q_chunks):
        for ik, ck in enumerate(k_chunks):
            offset = (cq - ck) * c
            lo, hi = -(c - 1), c - 1
            if right >= 0:
                hi = min(hi, offset + right)
            if left >= 0:
                lo = max(lo, offset - left)
            if lo <= hi:
                pieces.append((slice(iq * c, (iq + 1) * c), slice(ik * c, (ik + 1) * c), offset))
    return pieces


def _step_pieces(ring: "_Ring", opts: _Options, src: int, seqlen_local: int, device) -> list[_Piece]:
    """This rank's kernel calls against rank ``src``'s block (module docstring, "Variants")."""
    if opts.positional:
        raw = [(rows, cols, opts.causal, offset) for rows, cols, offset
               in chunk_pieces(opts.layout, ring.world, ring.rank, src, seqlen_local, opts.causal, opts.window)]
    else:
        plan = block_plan(opts.layout, opts.causal, ring.rank, src, seqlen_local)
        raw = [] if plan is None else [(*plan, 0)]
    if opts.kv_lens is None:
        return [_Piece(*p) for p in raw]
    positions = shard_positions(seqlen_local * ring.world, ring.world, src, layout=opts.layout)
    pieces = []
    for rows, cols, causal, offset in raw:
        lens = block_kv_lens(opts.kv_lens, positions[cols].tolist())
        if any(lens):  # else every key of the piece is padding
            pieces.append(_Piece(rows, cols, causal, offset, torch.tensor(lens, dtype=torch.int32, device=device)))
    return pieces


@dataclass(frozen=True)
class _Ring:
    """One process group seen as a ring: this rank, the world size, the global ranks of the
    previous and next members (P2POp peers are global ranks)."""

    group: object
    rank: int
    world: int
    prev_peer: int
    next_peer: int

    @classmethod
    def of(cls, group) -> "_Ring":
        rank, world = dist.get_rank(group), dist.get_world_size(group)

        def global_rank(r):
            return r if group is None else dist.get_global_rank(group, r)

        return cls(group, rank, world, global_rank((rank - 1) % world), global_rank((rank + 1) % world))

    def exchange(self, sends, recvs):
        """Post: each tensor of ``sends`` to the next rank, each of ``recvs`` from the previous
        one, as one batch (every rank posts the same list in the same order, so the k-th send
        of a rank meets the k-th receive of its successor). Returns the requests to wait on."""
        if self.world == 1 or not (sends or recvs):
            return []
        ops = [dist.P2POp(dist.isend, t, self.next_peer, self.group) for t in sends]
        ops += [dist.P2POp(dist.irecv, t, self.prev_peer, self.group) for t in recvs]
        return dist.batch_isend_irecv(ops)


def _wait(requests) -> None:
    for req in requests:
        req.wait()


def _ring_forward(ring: _Ring, q, k, v, sinks, opts: _Options, plan):
    """out (B, Hq, n, D) in q's dtype and the global lse (B, Hq, n) float32; ``plan[src]``: the
    pieces to run against rank src's block."""
    batch, heads_q, seqlen, head_dim = q.shape
    out_acc = torch.zeros(batch, heads_q, seqlen, head_dim, dtype=torch.float32, device=q.device)
    lse_acc = torch.full((batch, heads_q, seqlen), float("-inf"), dtype=torch.float32, device=q.device)
    if sinks is not None:  # the sink's logit with a zero value, once per row (module docstring)
        lse_acc.copy_(sinks.detach().float()[None, :, None].expand_as(lse_acc))
    kv = (k.contiguous(), v.contiguous())
    for step in range(ring.world):
        src = (ring.rank - step) % ring.world
        last = step == ring.world - 1
        kv_next = () if last else tuple(torch.empty_like(t) for t in kv)
        requests = ring.exchange(sends=() if last else kv, recvs=kv_next)  # overlaps the kernel below
        for piece in plan[src]:
            rows, cols = piece.rows, piece.cols
            out_s, lse_s = _attention_block(q[:, :, rows], kv[0][:, :, cols], kv[1][:, :, cols], piece, opts)
            merge_attention_(out_acc[:, :, rows], lse_acc[:, :, rows], out_s, lse_s)
        _wait(requests)
        kv = kv_next
    return out_acc.to(q.dtype), lse_acc


def _ring_backward(ring: _Ring, q, k, v, out, lse, dout, opts: _Options, plan):
    """dq, dk, dv (q's, k's, v's shapes and dtypes; float32 accumulation across the ring)."""
    dq_acc = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    kv = (k.contiguous(), v.contiguous())
    dkv_acc = ()  # float32 (dK, dV) of the block held at the previous step, all ranks' shares so far
    for step in range(ring.world):
        src = (ring.rank - step) % ring.world
        last = step == ring.world - 1
        kv_next = () if last else tuple(torch.empty_like(t) for t in kv)
        dkv_in = tuple(torch.empty(t.shape, dtype=torch.float32, device=t.device) for t in kv) if step else ()
        # The accumulator finished at step s-1 goes to the next rank, which holds that block now.
        requests = ring.exchange(sends=(*dkv_acc, *(() if last else kv)), recvs=(*dkv_in, *kv_next))
        shares = []
        for piece in plan[src]:
            rows, cols = piece.rows, piece.cols
            dq_s, dk_s, dv_s = _attention_block(
                q[:, :, rows], kv[0][:, :, cols], kv[1][:, :, cols], piece, opts,
                grad=(out[:, :, rows], lse[:, :, rows], dout[:, :, rows]))
            dq_acc[:, :, rows] += dq_s
            shares.append((cols, dk_s, dv_s))
        _wait(requests)
        # dkv_in is ours once received; the buffer just sent is left alone.
        dkv_acc = dkv_in if step else tuple(torch.zeros(t.shape, dtype=torch.float32, device=t.device) for t in kv)
        for cols, dk_s, dv_s in shares:
            dkv_acc[0][:, :, cols] += dk_s
            dkv_acc[1][:, :, cols] += dv_s
        kv = kv_next
    if ring.world > 1:  # the last hop: rank r - 1 holds the finished gradient of rank r's block
        finished = tuple(torch.empty_like(t) for t in dkv_acc)
        _wait(ring.exchange(sends=dkv_acc, recvs=finished))
        dkv_acc = finished
    return dq_acc.to(q.dtype), dkv_acc[0].to(k.dtype), dkv_acc[1].to(v.dtype)


class RingAttentionFunction(torch.autograd.Function):
    """torch.autograd wiring: forward plans the pieces of every step once and saves (q, k, v,
    out, lse, sinks); backward runs the dK/dV ring on the same plan."""

    @staticmethod
    def forward(ctx, q, k, v, sinks, ring, opts):
        plan = [_step_pieces(ring, opts, src, q.shape[2], q.device) for src in range(ring.world)]
        out, lse = _ring_forward(ring, q, k, v, sinks, opts, plan)
        ctx.save_for_backward(q, k, v, out, lse, sinks)
        ctx.ring, ctx.opts, ctx.plan = ring, opts, plan
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    @once_differentiable
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse, sinks = ctx.saved_tensors
        dq, dk, dv = _ring_backward(ctx.ring, q, k, v, out, lse, dout, ctx.opts, ctx.plan)
        dsinks = None
        if sinks is not None and ctx.needs_input_grad[3]:
            # This rank's rows' share (module docstring): D from the stored O, as the kernels form it.
            delta = (dout.float() * out.float()).sum(-1)
            dsinks = -(torch.exp(sinks.float()[None, :, None] - lse) * delta).sum((0, 2)).to(sinks.dtype)
        return dq, dk, dv, dsinks, None, None


# --------------------------------------------------------------------------- input checks


def _check_local(q, k, v, causal, softmax_scale, layout, kv_lens, variants: dict, world: int) -> None:
    """This rank's own inputs: TypeError / ValueError naming the argument."""
    from flashref.kernels.tile_tables import MAX_HEAD_DIM
    from flashref.kernels.checks import check_attention_tensors, check_causal_and_scale, check_kv_lens, check_variants

    check_attention_tensors({"q": q, "k": k, "v": v}, "(batch, heads, seqlen_local, head_dim)")
    if k.shape != v.shape:
        raise ValueError(f"v must have k's shape {tuple(k.shape)}, got {tuple(v.shape)}")
    batch, heads_q, seqlen, head_dim = q.shape
    if k.shape[0] != batch or k.shape[2] != seqlen or k.shape[3] != head_dim:
        raise ValueError(f"k and v must hold the same positions as q: shape ({batch}, Hkv, {seqlen}, {head_dim}), "
                         f"got {tuple(k.shape)}")
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be between 1 and {MAX_HEAD_DIM}, got {head_dim}")
    heads_kv = k.shape[1]
    if heads_kv == 0 or heads_q % heads_kv:
        raise ValueError(f"q's heads ({heads_q}) must be a multiple of k's and v's heads ({heads_kv}) (GQA/MQA)")
    check_causal_and_scale(causal, softmax_scale)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    check_variants(q, variants["window_size"], variants["softcap"], variants["alibi_slopes"], variants["sinks"], 0.0,
                   None)
    if kv_lens is not None:
        check_kv_lens(kv_lens, batch, seqlen * world, q.device, f"the whole sequence: {seqlen} x {world} ranks")
    if layout == "zigzag" and seqlen % 2:
        raise ValueError(f"q's local sequence length {seqlen} cannot be split by the 'zigzag' layout: each rank "
                         f"holds two equal chunks, so it must be even (shard_sequence needs a multiple of 2 x world)")
    if q.device.type == "cpu":
        from flashref.kernels import INTERPRETED

        if not INTERPRETED:
            raise ValueError("q is a CPU tensor but the Triton kernels were compiled for a GPU; set TRITON_INTERPRET=1 "
                             "in each process's environment before flashref.kernels is imported")


def _agree(ring: _Ring, local_error: BaseException | None, meta: dict | None) -> None:
    """All-gather every rank's verdict on its own inputs and their metadata; raise the same
    way on every rank if any rank's inputs are bad or the ranks disagree. One collective: no
    rank launches a transfer that another rank would never match (which would hang)."""
    mine = (None if local_error is None else (type(local_error).__name__, str(local_error)), meta)
    everyone = [None] * ring.world
    dist.all_gather_object(everyone, mine, group=ring.group)
    bad = [(r, err) for r, (err, _) in enumerate(everyone) if err is not None]
    if bad:
        if local_error is not None:
            others = [f"rank {r}: {kind}: {msg}" for r, (kind, msg) in bad if msg != str(local_error)]
            same = [str(r) for r, (_, msg) in bad if msg == str(local_error)]
            raise type(local_error)(
                f"{local_error} [ring_attention: raised on rank(s) {', '.join(same)} of {ring.world}"
                + (f"; also {'; '.join(others)}" if others else "") + "]") from None
        listing = "; ".join(f"rank {r}: {kind}: {msg}" for r, (kind, msg) in bad)
        raise ValueError(f"ring_attention: another rank of the group rejected its inputs ({listing}); "
                         f"this rank ({ring.rank}) stops too")
    for key in meta:
        values = [m[key] for _, m in everyone]
        if any(value != values[0] for value in values):
            listing = ", ".join(f"rank {r}: {value}" for r, value in enumerate(values))
            raise ValueError(f"ring_attention: {key} must be the same on every rank of the group, got {listing}")


def ring_attention(q, k, v, *, group=None, causal=False, softmax_scale=None, layout="zigzag", kv_lens=None,
                   window_size=(-1, -1), softcap=0.0, alibi_slopes=None, sinks=None, return_lse=False):
    """Attention over a sequence sharded across the ranks of ``group`` (ring / context parallel).

    Every rank of ``group`` (a torch.distributed process group; the default one when None)
    calls this with its shard: ``q: (B, Hq, n, D)``, ``k, v: (B, Hkv, n, D)`` holding the
    positions ``shard_positions(L, W, rank, layout=layout)`` of a sequence of ``L = n * W``
    tokens (``shard_sequence`` cuts them). ``Hq % Hkv == 0`` (GQA/MQA), float16 / bfloat16 /
    float32, ``1 <= D <= 256``. Dropout and bottom-right alignment are not offered (module
    docstring). Returns this rank's rows of

        out = softmax(softmax_scale * q k_all^T, masked) v_all       (B, Hq, n, D), q's dtype

    (``softmax_scale`` defaults to ``1/sqrt(D)``; with ``causal`` a query sees the keys at
    global positions up to its own). The variants mean what they mean for ``flash_attention``
    (top-left alignment), on global positions, and must be the same on every rank:

    - ``kv_lens: (B,)`` integer on q's device: keys at positions ``>= kv_lens[b]`` are padding
      (values in [0, L]);
    - ``window_size=(left, right)``: key j visible only if ``i - left <= j <= i + right``;
    - ``softcap > 0``: ``s <- softcap * tanh(s / softcap)``;
    - ``alibi_slopes: (Hq,)`` or ``(B, Hq)`` float32: ``s <- s - slope |i - j|``;
    - ``sinks: (Hq,)`` float32, differentiable: one more logit per row with a zero value; its
      gradient on each rank is that rank's rows' share (sum it over the group as for the
      weights);

    and,  with ``return_lse``, the global log-sum-exp
    ``lse: (B, Hq, n)`` float32 (not differentiable). Differentiable in q, k and v; the
    gradients of k and v come back to the rank that holds them.

    ``layout``: ``"zigzag"`` (rank r holds chunks r and 2W-1-r of 2W: balanced causal work; n
    must be even) or ``"contiguous"`` (chunk r of W). Shapes, dtype, device type, causal,
    scale, layout, the variants and whether a gradient is recorded must agree on every rank: they are all-gathered and checked first, and
    bad input on any rank raises on every rank (no rank is left waiting on a transfer).

    Raises RuntimeError when torch.distributed has no initialised process group.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("ring_attention needs an initialised torch.distributed process group: call "
                           "torch.distributed.init_process_group(...) first (torchrun sets up its environment)")
    if group is not None and dist.get_rank(group) < 0:
        raise ValueError("group: this process is not a member of the given process group")
    ring = _Ring.of(group)
    local_error, meta = None, None
    try:
        variants = dict(window_size=window_size, softcap=softcap, alibi_slopes=alibi_slopes, sinks=sinks)
        _check_local(q, k, v, causal, softmax_scale, layout, kv_lens, variants, ring.world)
        meta = {"q shape": tuple(q.shape), "k shape": tuple(k.shape), "dtype": str(q.dtype).removeprefix("torch."),
                "device type": q.device.type, "causal": causal, "layout": layout, "softmax_scale": softmax_scale,
                "kv_lens": None if kv_lens is None else tuple(kv_lens.tolist()),
                "window_size": tuple(int(w) for w in window_size), "softcap": float(softcap),
                "alibi_slopes": None if alibi_slopes is None else alibi_slopes.tolist(),
                "sinks": None if sinks is None else sinks.tolist(),
                # A rank that records no graph would skip the backward ring the others wait in.
                "requires grad": torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                                                 for t in (q, k, v, sinks))}
    except (TypeError, ValueError) as err:
        local_error = err
    _agree(ring, local_error, meta)
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(q.shape[3])
    opts = _Options(causal, scale, layout, float(softcap), meta["kv_lens"], meta["window_size"], alibi_slopes)
    out, lse = RingAttentionFunction.apply(q, k, v, sinks, ring, opts)
    return (out, lse) if return_lse else out
