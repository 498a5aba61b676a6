"""`flashref train`: train the NumPy Transformer on the built-in digit-reversal task.

`--engine torch` trains torch.nn.Transformer instead, its attention on the Triton kernels
(bfloat16 autocast on a GPU; float32 under Triton's interpreter on a CPU, switched on here),
from the same initial weights and on the same batches (flashref/workflow/torch_engine.py);
its checkpoint has the same format, so `eval` and `generate` read either engine's.

Writes to --out: model.safetensors (weights, config, optimizer state, task and training
settings), training.png (loss and validation accuracy) and history.json; ends by printing
the test split's greedy token accuracy and sequence accuracy.
"""

from __future__ import annotations

import argparse
import sys

from flashref.commands.device import choose_device, single_threaded_blas


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train the NumPy Transformer on the built-in reversal task",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="runs/reverse", help="output folder (default: %(default)s)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, default=None, help="maximum optimizer steps (default 1500)")
    length.add_argument("--epochs", type=float, default=None, help="maximum passes over the train split")
    parser.add_argument("--seed", type=int, default=0, help="seeds the data, the init and the shuffling")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--schedule", choices=("inverse_sqrt", "cosine", "constant"), default="cosine")
    parser.add_argument("--optimizer", choices=("adam", "adamw"), default="adam")
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--target-accuracy", type=float, default=0.995,
                        help="stop once greedy validation token accuracy reaches this (0 disables)")
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--nhead", type=int, default=4)
    parser.add_argument("--layers", type=int, default=2, help="encoder and decoder layers each")
    parser.add_argument("--dim-feedforward", type=int, default=128)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--norm-first", action="store_true")
    parser.add_argument("--max-digits", type=int, default=10, help="longest sequence of the task")
    parser.add_argument("--num-train", type=int, default=20000)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--engine", choices=("numpy", "torch"), default="numpy",
                        help="numpy: the NumPy Transformer (default); torch: torch.nn.Transformer with attention "
                             "on the Triton kernels (GPU, or the CPU under Triton's interpreter)")
    parser.set_defaults(func=run)


def run(args) -> int:
    single_threaded_blas()
    import json
    import math
    from pathlib import Path

    import numpy as np

    from flashref.workflow.checkpoint import save_checkpoint
    from flashref.workflow.data import ReverseTaskConfig, make_reverse_task
    from flashref.reference.seq2seq import Seq2SeqConfig, Seq2SeqModel
    from flashref.workflow.training import TrainConfig, evaluate, plot_history, train

    try:
        task_config = ReverseTaskConfig(max_len=args.max_digits, num_train=args.num_train, seed=args.seed)
        model_config = Seq2SeqConfig(d_model=args.d_model, nhead=args.nhead, num_encoder_layers=args.layers,
                                     num_decoder_layers=args.layers, dim_feedforward=args.dim_feedforward,
                                     dropout=args.dropout, norm_first=args.norm_first,
                                     max_len=max(64, args.max_digits + 4))
        if args.epochs is not None:
            if args.epochs <= 0:
                raise ValueError(f"--epochs: expected a positive number, got {args.epochs}")
            steps = max(1, math.ceil(args.epochs * args.num_train / args.batch_size))
        else:
            steps = 1500 if args.steps is None else args.steps
        train_config = TrainConfig(steps=steps, batch_size=args.batch_size, lr=args.lr,
                                   warmup_steps=args.warmup_steps, schedule=args.schedule,
                                   optimizer=args.optimizer, weight_decay=args.weight_decay,
                                   eval_every=args.eval_every, seed=args.seed,
                                   target_accuracy=args.target_accuracy or None)
    except ValueError as err:
        print(f"flashref train: error: {err}", file=sys.stderr)
        return 2

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    task = make_reverse_task(task_config)
    model = Seq2SeqModel(model_config, rng=np.random.default_rng(args.seed))
    print(f"model: {model.num_parameters():,} parameters; task: reverse 1-{args.max_digits} digits, "
          f"{len(task.train)} train / {len(task.val)} val / {len(task.test)} test")
    if args.engine == "torch":
        result = _train_torch(model_config, task, train_config, progress=not args.no_progress)
        model = result.numpy_model  # the trained weights, for the test split and the checkpoint
    else:
        result = train(model, task, train_config, progress=not args.no_progress, log=print)
    test = evaluate(model, task.test)
    summary = {"steps": result.steps, "seconds": round(result.seconds, 1),
               "tokens_per_second": round(result.tokens_per_second), "stopped_early": result.stopped_early,
               "engine": args.engine}
    checkpoint = save_checkpoint(out / "model.safetensors", model, result.optimizer, extra={
        "task": task_config.to_dict(), "train": train_config.to_dict(), "result": summary, "test": test,
    })
    plot_history(result.history, out / "training.png")
    (out / "history.json").write_text(json.dumps(result.history.to_dict()))
    print(f"trained {result.steps} steps in {result.seconds:.1f} s ({result.tokens_per_second:,.0f} target tokens/s)")
    print(f"wrote {checkpoint}, {out / 'training.png'}, {out / 'history.json'}")
    print(f"test token accuracy: {test['token_accuracy']:.4f}")
    print(f"test sequence accuracy: {test['sequence_accuracy']:.4f}")
    return 0


def _train_torch(model_config, task, train_config, *, progress: bool):
    """The torch engine; without CUDA the kernels run under Triton's interpreter, which must be
    switched on before triton and flashref.kernels are first imported (as `verify` does)."""
    device = choose_device("auto", "flashref train --engine torch")
    from flashref.workflow.torch_engine import train_torch

    where = "CUDA, bfloat16 autocast" if device == "cuda" else "CPU, float32, Triton interpreter"
    print(f"engine: torch.nn.Transformer, attention on the Triton kernels ({where})")
    result = train_torch(model_config, task, train_config, device=device, progress=progress, log=print)
    print(f"{result.routed_calls} attention calls ran on the kernels")
    return result
