"""Decoding speed with and without the KV cache, on a trained checkpoint.

    OPENBLAS_NUM_THREADS=1 python bench/decode_speed.py runs/reverse/model.safetensors

Times the decoder only (the checkpoint is loaded and the task drawn beforehand) with
`time.process_time`: on a shared CPU wall time mostly measures the neighbours. Each case runs
cached, uncached, cached, uncached; the best of each pair is reported, and the script fails
unless both paths produced identical outputs. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from flashref.workflow.checkpoint import load_checkpoint  # noqa: E402
from flashref.workflow.data import EOS, ReverseTaskConfig, make_reverse_task, source_ids  # noqa: E402
from flashref.workflow.decoding import beam_search, greedy_decode  # noqa: E402


def cases(model, test):
    def greedy_split(cache):
        n = len(test)
        return [t for s in range(0, n, 250)
                for t in greedy_decode(model, test.batch(np.arange(s, min(s + 250, n))).src, use_cache=cache)]

    def forced(cache):
        return greedy_decode(model, test.batch(np.arange(8)).src, max_new_tokens=model.config.max_len - 1,
                             eos_id=-1, use_cache=cache)

    one = np.array([source_ids([3 + d for d in (3, 1, 4, 1, 5, 9, 2, 6, 5, 3)])])

    def single(cache):
        return [greedy_decode(model, one, use_cache=cache)[0] for _ in range(20)]

    def beams(cache):
        return [beam_search(model, test.sequences[i] + [EOS], beam_size=4, use_cache=cache)[0].tokens
                for i in range(100)]

    return [
        (f"greedy, the {len(test)}-sequence test split in batches of 250 (what `eval` does)", greedy_split),
        (f"greedy, 8 sequences forced to {model.config.max_len - 1} tokens (`eos_id=-1`)", forced),
        ("greedy, one 10-digit sequence, 20 times", single),
        ("beam 4, the first 100 test sequences one by one", beams),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    args = parser.parse_args()
    checkpoint = load_checkpoint(args.checkpoint)
    test = make_reverse_task(ReverseTaskConfig(**checkpoint.extra.get("task", {}))).test
    print("| decoding (decoder only, CPU seconds) | tokens | KV cache | no cache | speed-up |")
    print("|---|---|---|---|---|")
    for label, run in cases(checkpoint.model, test):
        best: dict[bool, tuple] = {}
        for cache in (True, False, True, False):
            start = time.process_time()
            out = run(cache)
            seconds = time.process_time() - start
            if cache not in best or seconds < best[cache][1]:
                best[cache] = (out, seconds)
        if best[True][0] != best[False][0]:
            raise SystemExit(f"{label}: the cached and uncached outputs differ")
        tokens = sum(len(t) for t in best[True][0])
        (_, cached), (_, full) = best[True], best[False]
        print(f"| {label} | {tokens:,} | {cached:.2f} s ({tokens / cached:,.0f} tok/s) | "
              f"{full:.2f} s ({tokens / full:,.0f} tok/s) | {full / cached:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
