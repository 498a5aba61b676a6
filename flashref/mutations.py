"""The gate's power, measured: realistic one-line kernel bugs, planted one at a time in a scratch
copy of the package, each run against the ``flashref verify`` presets.

A ``Mutation`` replaces one text (``old``, which must occur exactly once in its file) by
another (``new``). ``scratch_tree`` lays out a runnable copy of the package with it
(``flashref/`` with ``kernels/``, ``reference/`` and ``autograd/`` inside, as pyproject maps
them); ``run_preset`` runs a preset's cases there in a fresh interpreter, in order, and stops at
the first failing case (``flashref mutate --worker``): the mutation is *caught* by the preset, or
it *escaped* (every case passed), or the run *broke* (it timed out, or failed outside any
case: a catalogue entry that no longer applies, say). A process killed by a signal inside a case
(an out-of-bounds read under the interpreter) counts as caught by that case. ``CATALOGUE`` is the project's list; each entry names a
``witness``, a case that fails under it, so that an entry is known to be a real bug and not an
equivalent rewrite. ``flashref mutate`` prints the score per preset (docs/design.md, "The
mutation score").
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

#: The package's source folders and where each goes in a runnable tree (pyproject's package-dir).
LAYOUT = {"flashref": "flashref", "kernels": "flashref/kernels", "reference": "flashref/reference",
          "autograd": "flashref/autograd"}
OUTCOMES = ("caught", "escaped", "broken")


@dataclass(frozen=True)
class Mutation:
    """One planted bug: in ``file`` (a repository path such as ``kernels/attention_forward.py``)
    the text ``old`` (exactly once) becomes ``new``. ``kind``: its class (boundary, loop,
    rescale, constant, rounding, index, stride, dropout, packed, variant, tma); ``why``: the real
    bug it stands for; ``witness``: a ``flashref verify --case`` name that fails under it."""

    name: str
    kind: str
    file: str
    old: str
    new: str
    why: str
    witness: str


@dataclass(frozen=True)
class PresetRun:
    """One mutation against one preset: ``outcome`` in OUTCOMES, the first failing case (caught),
    the cases run, the seconds, and the tail of the output (broken)."""

    mutation: str
    preset: str
    outcome: str
    failing_case: str = ""
    cases_run: int = 0
    seconds: float = 0.0
    detail: str = ""


def repository_root() -> Path:
    """The checkout this module lives in (its kernels/ beside flashref/), or an error saying the
    mutation runner needs a source checkout, not an installed wheel."""
    here = Path(__file__).resolve().parent
    for root in (here.parent, here.parent.parent):
        if all((root / source).is_dir() for source in LAYOUT):
            return root
    raise FileNotFoundError("flashref mutate needs a source checkout (flashref/, kernels/, reference/, autograd/ "
                            f"side by side); none found above {here}")


def apply(mutation: Mutation, text: str) -> str:
    """``text`` with the mutation applied; ValueError unless ``old`` occurs exactly once."""
    count = text.count(mutation.old)
    if count != 1:
        raise ValueError(f"mutation {mutation.name}: {mutation.file} holds its old text {count} times, not once "
                         f"(the catalogue is stale: update flashref/mutations.py): {mutation.old!r}")
    return text.replace(mutation.old, mutation.new)


def scratch_tree(mutation: Mutation | None, dest: Path, root: Path | None = None) -> Path:
    """A runnable copy of the package under ``dest`` (``dest/flashref``, its kernels, reference
    and autograd inside) with ``mutation`` applied (None: unchanged). Returns ``dest``."""
    root = root or repository_root()
    dest = Path(dest)
    for source, target in LAYOUT.items():
        shutil.copytree(root / source, dest / target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                        dirs_exist_ok=True)
    if mutation is not None:
        path = dest / LAYOUT[mutation.file.split("/")[0]] / mutation.file.split("/", 1)[1]
        path.write_text(apply(mutation, path.read_text()))
    return dest


def run_preset(mutation: Mutation | None, preset: str, seed: int, *, timeout: float = 1800.0,
               cases: list[str] | None = None) -> PresetRun:
    """Run ``preset``'s cases (or the named ``cases``) with ``mutation`` planted, in a fresh
    interpreter whose working folder is the scratch tree (so ``import flashref`` finds the
    copy, not the installed package), stopping at the first failure."""
    name = mutation.name if mutation is not None else "none"
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="flashref-mutate-") as tmp:
        tree = scratch_tree(mutation, Path(tmp))
        command = [sys.executable, "-m", "flashref", "mutate", "--worker", preset, "--seed", str(seed)]
        for case in cases or ():
            command += ["--case", case]
        env = {**os.environ, "PYTHONPATH": str(tree), "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1")}
        try:
            proc = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return PresetRun(name, preset, "broken", seconds=time.perf_counter() - start,
                             detail=f"timed out after {timeout:.0f} s")
    seconds = time.perf_counter() - start
    lines = proc.stdout.splitlines()
    ran = sum(1 for line in lines if line.startswith(("PASS ", "FAIL ")))
    failing = next((line.split()[1] for line in lines if line.startswith("FAIL ")), "")
    if proc.returncode == 1 and failing:
        return PresetRun(name, preset, "caught", failing, ran, seconds)
    started = [line.split()[1] for line in lines if line.startswith("CASE ")]
    if proc.returncode < 0 and started:
        # Killed by a signal inside a case (an out-of-bounds read under the interpreter): the
        # gate's run fails loudly there, as a GPU's illegal-address error would.
        return PresetRun(name, preset, "caught", started[-1], ran + 1, seconds,
                         detail=f"the process died of signal {-proc.returncode} in this case")
    if proc.returncode == 0:
        return PresetRun(name, preset, "escaped", "", ran, seconds)
    return PresetRun(name, preset, "broken", failing, ran, seconds,
                     detail=(proc.stdout + proc.stderr).strip()[-2000:])


# ---------------------------------------------------------------------------- the catalogue
F = "kernels/attention_forward.py"
B = "kernels/attention_backward.py"
D = "kernels/attention_decode.py"
K = "kernels/attention_blocks.py"  # the blocks the forward, backward and decode kernels share
CATALOGUE: tuple[Mutation, ...] = (
    # Block-skipping bounds: each fails only when a boundary quantity sits on one residue.
    Mutation("forward-unmasked-end+1", "boundary", K,
             "end = tl.minimum(end, tl.maximum(start_m + causal_shift + 1, 0))",
             "end = tl.minimum(end, tl.maximum(start_m + causal_shift + 2, 0))",
             "the unmasked key range one key too long: wrong when start_m + shift = BLOCK_N - 2 mod BLOCK_N",
             "b2-hq2-hkv1-lq64-lk126-d16-float32-causal_bottom_right-kvlens-kvl126_64-tiles64x32_32x64_64x32"),
    Mutation("forward-visible-end-1", "boundary", K,
             "hi = tl.minimum(hi, tl.maximum(start_m + BLOCK_M + causal_shift, 0))",
             "hi = tl.minimum(hi, tl.maximum(start_m + BLOCK_M - 1 + causal_shift, 0))",
             "the last visible key of a query block's last row dropped",
             "b2-hq2-hkv1-lq65-lk130-d40-float16-causal_bottom_right-kvlens-kvl130_66-tiles64x32_32x64_64x32"),
    Mutation("forward-window-full-from-1", "boundary", K,
             "full_from = tl.cdiv(tl.maximum(start_m + BLOCK_M - 1 + window_shift, 0), BLOCK_N) * BLOCK_N",
             "full_from = tl.cdiv(tl.maximum(start_m + BLOCK_M - 2 + window_shift, 0), BLOCK_N) * BLOCK_N",
             "a window's first fully visible block one block early: wrong when its left edge is 2 mod BLOCK_N",
             "b2-hq2-hkv1-lq64-lk126-d40-bfloat16-noncausal_bottom_right-kvlens-win60_inf-kvl126_64-tiles64x32_32x64_64x32"),
    Mutation("forward-window-lo+1", "boundary", K,
             "lo = (tl.maximum(start_m + window_shift, 0) // BLOCK_N) * BLOCK_N",
             "lo = (tl.maximum(start_m + window_shift + 1, 0) // BLOCK_N) * BLOCK_N",
             "the first key block of a window skipped when its left edge is BLOCK_N - 1 mod BLOCK_N",
             "b2-hq2-hkv1-lq66-lk129-d40-float16-noncausal_bottom_right-kvlens-win0_inf-kvl129_63-tiles64x32_32x64_64x32"),
    Mutation("dkdv-causal-lo+1", "boundary", B,
             "lo = tl.minimum(tl.maximum(start_n - causal_shift, 0), seqlen_q)",
             "lo = tl.minimum(tl.maximum(start_n - causal_shift + 1, 0), seqlen_q)",
             "dK/dV skip the first query block that sees a key block when it starts one row early",
             "b2-hq2-hkv1-lq65-lk130-d40-float16-causal_bottom_right-kvlens-kvl130_66-tiles64x32_32x64_64x32"),
    Mutation("dkdv-causal-full-from-1", "boundary", B,
             "full_from = tl.minimum(tl.maximum(start_n + BLOCK_N - 1 - causal_shift, 0), seqlen_q)",
             "full_from = tl.minimum(tl.maximum(start_n + BLOCK_N - 2 - causal_shift, 0), seqlen_q)",
             "dK/dV treat a diagonal query block as unmasked one row early",
             "b2-hq2-hkv1-lq64-lk126-d16-float32-causal_bottom_right-kvlens-kvl126_64-tiles64x32_32x64_64x32"),
    Mutation("dkdv-window-hi-1", "boundary", B,
             "hi = tl.minimum(hi, tl.maximum(start_n + BLOCK_N - window_shift, 0))",
             "hi = tl.minimum(hi, tl.maximum(start_n + BLOCK_N - 1 - window_shift, 0))",
             "dK/dV drop the last query row whose window reaches a key block",
             "b2-hq2-hkv1-lq66-lk129-d40-float16-noncausal_bottom_right-kvlens-win0_inf-kvl129_63-tiles64x32_32x64_64x32"),
    Mutation("dkdv-window-full-to+1", "boundary", B,
             "full_to = tl.minimum(tl.maximum(start_n - window_shift + 1, 0), seqlen_q)",
             "full_to = tl.minimum(tl.maximum(start_n - window_shift + 2, 0), seqlen_q)",
             "dK/dV take one more query row as seeing a key block whole on the window's left",
             "b2-hq2-hkv1-lq64-lk126-d40-bfloat16-noncausal_bottom_right-kvlens-win60_inf-kvl126_64-tiles64x32_32x64_64x32"),
    # Loop bounds.
    Mutation("forward-partial-block-dropped", "loop", K,
             "    hi = seqlen_k_visible\n    if RIGHT_BOUND:\n        hi = tl.minimum(hi, tl.maximum(start_m + BLOCK_M + causal_shift, 0))",
             "    hi = (seqlen_k_visible // BLOCK_N) * BLOCK_N\n    if RIGHT_BOUND:\n"
             "        hi = tl.minimum(hi, tl.maximum(start_m + BLOCK_M + causal_shift, 0))",
             "the last, partial key block never visited",
             "b2-hq2-hkv2-lq1-lk239-d40-bfloat16-noncausal-dense"),
    Mutation("decode-split-end-1", "packed", D,
             "hi = tl.minimum(lo + chunk, seqlen_k)",
             "hi = tl.minimum(lo + chunk - 1, seqlen_k)",
             "each KV-cache split stops one key short of the next",
             "kvcache-hq4-hkv2-lq1-new1-cap32-page16-splits3-d64-bfloat16"),
    # The online softmax.
    Mutation("forward-missing-rescale", "rescale", K,
             "    acc = acc * alpha[:, None]\n    return p, m_new, l_i, acc",
             "    acc = acc\n    return p, m_new, l_i, acc",
             "the accumulator not rescaled when the running max grows",
             "b2-hq2-hkv2-lq1-lk239-d40-bfloat16-noncausal-dense"),
    # Constants.
    Mutation("log2e-truncated", "constant", K, "LOG2E = 1.4426950408889634", "LOG2E = 1.4427",
             "log2(e) typed to five digits", "b2-hq2-hkv2-lq1-lk239-d40-bfloat16-noncausal-dense"),
    Mutation("forward-ln2-truncated", "constant", K,
             "    LN2: tl.constexpr = 0.6931471805599453",
             "    LN2: tl.constexpr = 0.6931",
             "ln 2 typed to four digits in the lse of the forward (and of decode's splits: one block)", "b2-hq2-hkv2-lq1-lk239-d40-bfloat16-noncausal-dense"),
    Mutation("decode-combine-unnormalised", "rescale", D,
             "weights = tl.exp(lse_s - lse_sub)",
             "weights = tl.exp(lse_s - m_sub)",
             "the combine weighs the splits relative to the largest split lse, not the merged one (unnormalised)",
             "kvcache-hq4-hkv2-lq2-new2-cap192-page16-splits3-d32-float32-lens64_188_0_189-tile16x32"),
    # Roundings.
    Mutation("bfloat16-truncates", "rounding", "kernels/rounding.py",
             "bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16", "bits = (bits >> 16) << 16",
             "bfloat16 conversions truncate instead of rounding to nearest even",
             "b2-hq2-hkv2-lq1-lk239-d40-bfloat16-noncausal-dense"),
    Mutation("float16-p-as-bfloat16", "rounding", "kernels/rounding.py",
             "            return x.to(DTYPE).to(tl.float32)\n    else:\n        return x.to(DTYPE)\n\n\n@triton.jit\ndef to_output",
             "            return round_to_bfloat16_nearest_even(x)\n    else:\n        return x.to(DTYPE)\n\n\n@triton.jit\n"
             "def to_output",
             "P and dS rounded to bfloat16 (a coarser dtype) before a float16 dot",
             "b2-hq3-hkv1-lq1-lk239-d64-float16-causal_bottom_right-kvlens"),
    # Indices and strides.
    Mutation("forward-gqa-interleaved", "index", K, "    h_kv = h // group_size\n",
             "    h_kv = h % (heads_q // group_size)\n",
             "query heads mapped to kv heads interleaved instead of in contiguous groups (the forward and dQ)",
             "b1-hq4-hkv2-lq1-lk239-d128-float32-causal_top_left-dense"),
    Mutation("dkdv-gqa-interleaved", "index", B, "        h = h_kv * group_size + g\n",
             "        h = h_kv + g * heads_kv\n",
             "the dK/dV kernel sums the query heads of a kv head interleaved instead of its contiguous group",
             "b1-hq4-hkv2-lq1-lk239-d128-float32-causal_top_left-dense"),
    Mutation("forward-out-strides-swapped", "stride", F,
             "o_base = blocks.head_rows(Out, b, h, stride_ob, stride_oh, q_start, stride_om, VARLEN)",
             "o_base = blocks.head_rows(Out, b, h, stride_oh, stride_ob, q_start, stride_om, VARLEN)",
             "the output's batch and head strides swapped",
             "b2-hq2-hkv2-lq1-lk239-d40-bfloat16-noncausal-dense"),
    Mutation("varlen-k-length-1", "packed", K,
             "return q_start, k_start, tl.load(CuSeqQ + b + 1) - q_start, tl.load(CuSeqK + b + 1) - k_start",
             "return q_start, k_start, tl.load(CuSeqQ + b + 1) - q_start, tl.load(CuSeqK + b + 1) - k_start - 1",
             "a packed sequence's key count one short (the cu_seqlens difference off by one)",
             "varlen-b4-hq4-hkv2-maxq13-maxk17-d32-float16-causal_bottom_right"),
    Mutation("decode-page-index", "packed", D,
             "page = tl.load(BlockTable + b * stride_bt_b + keys // PAGE_SIZE, mask=key_ok, other=0)",
             "page = tl.load(BlockTable + b * stride_bt_b + (keys + 1) // PAGE_SIZE, mask=key_ok, other=0)",
             "a paged cache's last row of each page read from the next page",
             "kvcache-hq4-hkv2-lq1-new1-cap32-page16-splits3-d64-bfloat16"),
    # Dropout.
    Mutation("dropout-stream-per-head", "dropout", F,
             "dropout = (seed, pid_bh, seqlen_k, dropout_p)  # the keep mask's stream: this (batch, head)",
             "dropout = (seed, pid_bh % 2, seqlen_k, dropout_p)  # the keep mask's stream: this (batch, head)",
             "the forward's dropout stream keyed by too little of (batch, head): rows of the batch share masks",
             "b1-hq4-hkv2-lq64-lk90-d40-bfloat16-noncausal-dense-dropout0.2-tma"),
    Mutation("dq-dropout-counter", "dropout", B,
             "keep = blocks.dropout_keep(dropout, offs_m[:, None], keys[None, :])",
             "keep = blocks.dropout_keep(dropout, offs_m[:, None], keys[None, :] + 1)",
             "the dQ kernel replays the keep mask one key off",
             "b1-hq4-hkv2-lq64-lk90-d40-bfloat16-noncausal-dense-dropout0.2-tma"),
    # Variants.
    Mutation("sinks-in-natural-units", "variant", F,
             "m_i = tl.zeros([BLOCK_M], dtype=tl.float32) + tl.load(Sinks + h) * blocks.LOG2E_K",
             "m_i = tl.zeros([BLOCK_M], dtype=tl.float32) + tl.load(Sinks + h)",
             "the sink's logit left in natural-log units where the running max is in log2 units",
             "b2-hq3-hkv1-lq17-lk17-d64-bfloat16-noncausal-dense-sinks-tma"),
    Mutation("alibi-without-shift", "variant", K,
             "s = capped - alibi_slope * tl.abs(q_pos + alibi_shift - k_pos).to(tl.float32)",
             "s = capped - alibi_slope * tl.abs(q_pos - k_pos).to(tl.float32)",
             "ALiBi's distance measured without the bottom-right shift",
             "b1-hq4-hkv2-lq1-lk97-d64-float16-causal_bottom_right-kvlens-alibi_bh"),
    Mutation("softcap-tanh-constant", "constant", K,
             "e = tl.math.exp2(ax * -2.8853900817779268)  # exp(-2|x|)",
             "e = tl.math.exp2(ax * -2.885)  # exp(-2|x|)",
             "softcap's tanh with 2 log2(e) typed to four digits",
             "b2-hq3-hkv1-lq17-lk17-d40-float32-noncausal-dense-softcap5"),
    # The descriptor (TMA) path alone.
    Mutation("tma-row-offset", "tma", "kernels/tile_loads.py", "return desc.load([start_row, 0])",
             "return desc.load([start_row + 1, 0])",
             "the descriptor path loads every tile one row down (the pointer path is right)",
             "b1-hq4-hkv2-lq113-lk203-d128-bfloat16-causal_bottom_right-dense-tma"),
)


def by_name(names) -> list[Mutation]:
    """The catalogue entries named (ValueError naming the unknown ones)."""
    known = {m.name: m for m in CATALOGUE}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown mutations {unknown}; known: {sorted(known)}")
    return [known[n] for n in names]
