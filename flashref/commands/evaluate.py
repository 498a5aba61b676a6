"""`flashref eval CHECKPOINT`: greedy-decode a split of the task the checkpoint was trained on
and print its token accuracy, exact-sequence accuracy and wall time. Decodes with the KV
cache; --no-cache reruns the decoder on the whole prefix every step (same tokens, slower)."""

from __future__ import annotations

import sys
import time


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="evaluate a trained checkpoint on the reversal task",
                                   description=__doc__)
    parser.add_argument("checkpoint", help="a model.safetensors written by `flashref train`")
    parser.add_argument("--split", choices=("train", "val", "test"), default="test")
    parser.add_argument("--max-samples", type=int, default=None, help="evaluate only the first N sequences")
    parser.add_argument("--no-cache", action="store_true",
                        help="decode without the KV cache (the reference path; same tokens, slower)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from flashref.commands.device import single_threaded_blas

    single_threaded_blas()
    from flashref.workflow.checkpoint import CheckpointError, load_checkpoint
    from flashref.workflow.data import ReverseTaskConfig, make_reverse_task
    from flashref.workflow.training import evaluate

    try:
        checkpoint = load_checkpoint(args.checkpoint)
        task_config = ReverseTaskConfig(**checkpoint.extra.get("task", {}))
        if args.max_samples is not None and args.max_samples < 1:
            raise ValueError(f"--max-samples: expected a positive integer, got {args.max_samples}")
    except (CheckpointError, ValueError, TypeError) as err:
        print(f"flashref eval: error: {err}", file=sys.stderr)
        return 2
    split = make_reverse_task(task_config).split(args.split)
    start = time.perf_counter()
    metrics = evaluate(checkpoint.model, split, max_samples=args.max_samples, use_cache=not args.no_cache)
    seconds = time.perf_counter() - start
    print(f"{args.split} split: {metrics['num_sequences']} sequences, {metrics['num_tokens']} target tokens")
    print(f"{args.split} token accuracy: {metrics['token_accuracy']:.4f}")
    print(f"{args.split} sequence accuracy: {metrics['sequence_accuracy']:.4f}")
    print(f"{args.split} loss (teacher forced): {metrics['loss']:.4f}")
    mode = "no cache: the decoder reruns on every prefix" if args.no_cache else "KV cache"
    print(f"{args.split} evaluation wall time: {seconds:.2f} s ({mode})")
    return 0
