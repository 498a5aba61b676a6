"""`flashref eval CHECKPOINT`: greedy-decode a split of the task the checkpoint was trained on
and print its token accuracy and exact-sequence accuracy."""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="evaluate a trained checkpoint on the reversal task",
                                   description=__doc__)
    parser.add_argument("checkpoint", help="a model.safetensors written by `flashref train`")
    parser.add_argument("--split", choices=("train", "val", "test"), default="test")
    parser.add_argument("--max-samples", type=int, default=None, help="evaluate only the first N sequences")
    parser.set_defaults(func=run)


def run(args) -> int:
    from flashref.commands.train import single_threaded_blas

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
    metrics = evaluate(checkpoint.model, split, max_samples=args.max_samples)
    print(f"{args.split} split: {metrics['num_sequences']} sequences, {metrics['num_tokens']} target tokens")
    print(f"{args.split} token accuracy: {metrics['token_accuracy']:.4f}")
    print(f"{args.split} sequence accuracy: {metrics['sequence_accuracy']:.4f}")
    print(f"{args.split} loss (teacher forced): {metrics['loss']:.4f}")
    return 0
