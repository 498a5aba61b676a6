"""Block boundaries by construction: cases whose lengths, shifts and window edges sit on the
residues 0, 1, 2, B - 2, B - 1 of every block size B the kernels' launch tables hold.

A kernel's bugs live at block edges (the last partial key block, the diagonal block of a
causal mask, a window's first block), and lengths drawn at random land there by chance. Here
they land there by design: ``boundary_cases`` builds them over forced launch tiles
(``tile_triples``) and ``residue_gaps`` proves nothing is left uncovered (docs/design.md,
"Block boundaries").
"""

from __future__ import annotations

from typing import Mapping

from .cases import TILE_LAUNCHES, Case
from .rule import DTYPES

# The residues a boundary quantity must take modulo every block size B a launch can run with:
# the first elements of a block (0, 1, 2) and its last two (B - 2, B - 1). The block sizes are
# powers of two, so a quantity = c * Bmax + r with r in RESIDUES (r < 0: Bmax + r) takes the
# five residues modulo every B <= Bmax at once.
RESIDUES = (-2, -1, 0, 1, 2)
# (Lq residue, shift residue) pairs in which the shift and the sum (Lk's residue) run through
# RESIDUES too: five cases put Lq, Lk and Lk - Lq on every residue. The second pairing does
# the same for (Lq, kv_len - Lq) with kv_len's residue, so the two shifts do not move together.
SHIFT_PAIRING = (2, 0, -2, 1, -1)
KV_LEN_PAIRING = (1, -2, 0, 2, -1)
# The boundary quantities a case puts on residues, and what each is (see ``boundary_quantities``).
BOUNDARY_QUANTITIES = ("Lq", "Lk", "Lk - Lq", "kv_len", "kv_len - Lq", "right edge", "window left edge")
# Quick's tile triple: one table tile per launch, BLOCK_M != BLOCK_N in each.
QUICK_TILES = ((64, 32), (32, 64), (64, 32))


def table_tiles() -> dict[str, tuple[tuple[int, int], ...]]:
    """Per launch of ``TILE_LAUNCHES``, every (BLOCK_M, BLOCK_N) its tables hold on any
    architecture (defaults, variants, dropout, the tuning candidates: what the dispatcher or
    ``flashref tune`` can pick; kernels/config_dispatch.py)."""
    from flashref.kernels.config_dispatch import all_triton_configs

    return {launch: tuple(sorted({(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for c in all_triton_configs(launch)}))
            for launch in TILE_LAUNCHES}


def tile_triples(preset: str) -> list[tuple[tuple[int, int], ...]]:
    """The launch tiles the boundary cases force: quick one triple (``QUICK_TILES``); ci and
    full as many triples as the longest launch table, the i-th taking each launch's i-th tile
    (cycling), so every tile of every launch runs."""
    if preset == "quick":
        return [QUICK_TILES]
    tables = table_tiles()
    count = max(len(t) for t in tables.values())
    return [tuple(tables[launch][i % len(tables[launch])] for launch in TILE_LAUNCHES) for i in range(count)]


def boundary_cases(preset: str, *, dtypes=DTYPES, head_dims=None, causal=None, seed: int = 0) -> list[Case]:
    """Cases that put every boundary quantity on the residues 0, 1, 2, B - 2, B - 1 modulo every
    block size of their forced tiles (``tile_triples``), built rather than drawn.

    Per tile triple, with ``Bmax`` its largest block and r running through ``RESIDUES``:
    ``Lq = Bmax + r``; batch row 0 sees every key, so its bottom-right shift is
    ``Lk - Lq = Bmax + SHIFT_PAIRING[r]``; batch row 1 has ``kv_len = Bmax + KV_LEN_PAIRING[r]``.
    Five causal bottom-right cases (the right edge of the visible keys is the shift), then five
    non-causal left windows whose left edge ``shift - left`` runs through the residues too.
    GQA (2 query heads on 1), head dims and dtypes cycle; 16-bit cases alternate the pointer
    and the descriptor (TMA) path."""
    dims = tuple(head_dims) if head_dims is not None else (16, 40)
    cases = []
    for t, tiles in enumerate(tile_triples(preset)):
        bmax = max(max(tile) for tile in tiles)
        for family in ("causal", "window"):
            if causal is not None and causal != (family == "causal"):
                continue
            for i, r in enumerate(RESIDUES):
                index = len(cases)
                lq = bmax + r
                shift = bmax + SHIFT_PAIRING[i]
                lk = lq + shift
                kv_len = bmax + KV_LEN_PAIRING[(i + t) % len(RESIDUES)]
                dtype = dtypes[(index + t) % len(dtypes)]
                fields = dict(batch=2, heads_q=2, heads_kv=1, seqlen_q=lq, seqlen_k=lk,
                              head_dim=dims[index % len(dims)], dtype=dtype, causal_alignment="bottom_right",
                              kv_lens=True, kv_len_values=(lk, kv_len), tiles=tiles,
                              descriptors=dtype != "float32" and index % 2 == 0, seed=seed + 30_000 + index)
                if family == "causal":
                    cases.append(Case(causal=True, **fields))
                else:
                    # A left window alone (no right bound): key j visible to row i iff
                    # j >= i + shift - left, the left edge shift - left on RESIDUES[i + 2]
                    # (mod Bmax, in [0, Bmax)); the keys right of it up to kv_len stay
                    # visible, so every query block has an unmasked interior the edge bounds.
                    left = shift - (RESIDUES[(i + 2) % 5] % bmax)
                    cases.append(Case(causal=False, window=(left, -1), **fields))
    return cases


def boundary_quantities(case: Case) -> dict[str, list[int]]:
    """The boundary quantities of a case (``BOUNDARY_QUANTITIES``), each with its values over
    the batch rows: the shifts are bottom-right's (``kv_len - Lq``; row b's kv_len is Lk
    without kv_lens), the right edge ``shift + right`` (causal: right = 0; present with a
    right bound) and the window's left edge ``shift - left`` (present with a left bound)."""
    lens = list(case.kv_len_values) if case.kv_len_values else [case.seqlen_k] * case.batch
    shifts = [n - case.seqlen_q for n in lens] if case.causal_alignment == "bottom_right" else [0] * case.batch
    out = {"Lq": [case.seqlen_q], "Lk": [case.seqlen_k], "Lk - Lq": [case.seqlen_k - case.seqlen_q]}
    if case.kv_len_values:
        out["kv_len"] = lens
        out["kv_len - Lq"] = [n - case.seqlen_q for n in lens]
    left, right = case.window
    if left >= 0:
        out["window left edge"] = [sh - left for sh in shifts]
    if case.causal or right >= 0:
        right = max(right, 0) if not case.causal else (0 if right < 0 else min(right, 0))
        out["right edge"] = [sh + right for sh in shifts]
    return out


def residue_gaps(cases: list[Case], tables: Mapping[str, tuple] | None = None) -> list[str]:
    """What the cases' forced tiles leave uncovered: for every launch, every tile of ``tables``
    (default ``table_tiles()``: every tile the dispatcher can pick) and both its block sizes B,
    every quantity of ``BOUNDARY_QUANTITIES`` must take each residue 0, 1, 2, B - 2, B - 1 in
    some case run with that tile. Returns one line per missing (launch, tile, B, quantity,
    residue); [] when the coverage is complete."""
    gaps = []
    tables = table_tiles() if tables is None else tables
    for launch_index, launch in enumerate(TILE_LAUNCHES):
        tiles = tables[launch]
        for tile in tiles:
            running = [c for c in cases if c.tiles and c.tiles[launch_index] == tile]
            for block in sorted(set(tile)):
                wanted = {0, 1, 2, block - 2, block - 1}
                for quantity in BOUNDARY_QUANTITIES:
                    seen = {v % block for c in running for v in boundary_quantities(c).get(quantity, [])}
                    for residue in sorted(wanted - seen):
                        gaps.append(f"{launch} tile {tile[0]}x{tile[1]}: {quantity} never = {residue} mod {block}")
    return gaps


__all__ = ["BOUNDARY_QUANTITIES", "KV_LEN_PAIRING", "QUICK_TILES", "RESIDUES", "SHIFT_PAIRING", "boundary_cases",
           "boundary_quantities", "residue_gaps", "table_tiles", "tile_triples"]
