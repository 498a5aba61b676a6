"""Training and evaluation of a Seq2SeqModel on the built-in reversal task.

One training step: teacher-forced cross-entropy over non-PAD labels, backward through the
autograd, clip the global gradient norm, set the scheduled learning rate, optimizer step.
Every `eval_every` steps the model greedily decodes part of the validation split; training
stops early once that token accuracy reaches `target_accuracy`.

Evaluation decodes greedily (no teacher forcing) and reports
    token_accuracy    = correct target positions / target positions (reversed digits + EOS;
                        a missing or extra position counts as wrong)
    sequence_accuracy = sequences decoded exactly (through EOS) / sequences
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from flashref.reference import optim
from .data import ReverseTask, Split, target_ids
from .decoding import greedy_decode, inference
from flashref.reference.seq2seq import Seq2SeqModel

SCHEDULES = ("inverse_sqrt", "cosine", "constant")
OPTIMIZERS = ("adam", "adamw")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1500  # upper bound; early stopping usually ends sooner
    batch_size: int = 64
    lr: float = 2e-3  # peak learning rate
    warmup_steps: int = 100
    schedule: str = "cosine"  # decays to 0 at `steps`: steadier final accuracy than inverse_sqrt
    optimizer: str = "adam"
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    label_smoothing: float = 0.0
    eval_every: int = 250
    val_samples: int = 500
    target_accuracy: float | None = 0.995  # validation token accuracy that stops training
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "warmup_steps", "eval_every", "val_samples"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule: expected one of {SCHEDULES}, got {self.schedule!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer: expected one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not self.lr > 0:
            raise ValueError(f"lr: expected a positive learning rate, got {self.lr}")
        if self.target_accuracy is not None and not 0.0 < self.target_accuracy <= 1.0:
            raise ValueError(f"target_accuracy: expected a fraction in (0, 1] or None, got {self.target_accuracy}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class History:
    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    val_step: list[int] = field(default_factory=list)
    val_token_accuracy: list[float] = field(default_factory=list)
    val_sequence_accuracy: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def record_evaluation(self, step: int, metrics: dict, config: "TrainConfig", log=None) -> bool:
        """Append one evaluation's metrics (``evaluate``'s dict) at ``step``, log it, and say
        whether training should stop (the config's target token accuracy reached)."""
        self.val_step.append(step)
        self.val_token_accuracy.append(metrics["token_accuracy"])
        self.val_sequence_accuracy.append(metrics["sequence_accuracy"])
        self.val_loss.append(metrics["loss"])
        if log is not None:
            log(f"step {step}: loss {self.loss[-1]:.4f}, val token acc {metrics['token_accuracy']:.4f}, "
                f"val seq acc {metrics['sequence_accuracy']:.4f}")
        return config.target_accuracy is not None and metrics["token_accuracy"] >= config.target_accuracy


@dataclass
class TrainResult:
    history: History
    optimizer: optim.Optimizer
    steps: int
    seconds: float
    tokens_per_second: float
    stopped_early: bool


def make_optimizer(model: Seq2SeqModel, config: TrainConfig) -> optim.Optimizer:
    cls = optim.AdamW if config.optimizer == "adamw" else optim.Adam
    # betas (0.9, 0.98) as in "Attention Is All You Need"
    return cls(model.parameters(), lr=config.lr, betas=(0.9, 0.98), eps=1e-9, weight_decay=config.weight_decay)


def make_schedule(config: TrainConfig):
    if config.schedule == "inverse_sqrt":
        return optim.WarmupInverseSqrt(config.lr, config.warmup_steps)
    if config.schedule == "cosine":
        return optim.WarmupCosine(config.lr, config.warmup_steps, max(config.steps, config.warmup_steps + 1))
    return lambda step: config.lr


def evaluate(model: Seq2SeqModel, split: Split, *, batch_size: int = 250, max_samples: int | None = None,
             use_cache: bool = True) -> dict:
    """Greedy-decode `split` (or its first max_samples) -> token/sequence accuracy and
    teacher-forced loss. use_cache: decode with the KV cache (False: the full-prefix reference)."""
    n = len(split) if max_samples is None else min(max_samples, len(split))
    correct_tokens = total_tokens = correct_sequences = 0
    loss_sum = 0.0
    for start in range(0, n, batch_size):
        indices = np.arange(start, min(start + batch_size, n))
        batch = split.batch(indices)
        decoded = greedy_decode(model, batch.src, max_new_tokens=batch.tgt_out.shape[1] + 2,
                                use_cache=use_cache)
        for idx, got in zip(indices, decoded):
            want = target_ids(split.sequences[idx])[1:]  # reversed digits + EOS
            hits = sum(1 for a, b in zip(got, want) if a == b)
            correct_tokens += hits
            total_tokens += len(want)
            correct_sequences += got == want
        with inference(model):
            loss, _ = model.loss(batch.src, batch.tgt_in, batch.tgt_out)
        loss_sum += loss.item() * batch.num_target_tokens
    return {
        "token_accuracy": correct_tokens / total_tokens,
        "sequence_accuracy": correct_sequences / n,
        "loss": loss_sum / total_tokens,
        "num_sequences": n,
        "num_tokens": total_tokens,
    }


def progress_bar(enabled: bool, total: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[tps]:,.0f} tok/s"),
        TextColumn("val acc {task.fields[val]}"), TimeElapsedColumn(),
        disable=not enabled, transient=False,
    )


def train(model: Seq2SeqModel, task: ReverseTask, config: TrainConfig | None = None, *,
          optimizer: optim.Optimizer | None = None, progress: bool = True, log=None) -> TrainResult:
    """Train `model` in place on task.train; returns the history and the optimizer.

    log: optional callable(str) for one line per validation (the CLI prints them).
    """
    config = config or TrainConfig()
    optimizer = optimizer or make_optimizer(model, config)
    schedule = make_schedule(config)
    rng = np.random.default_rng(config.seed)
    history = History()
    tokens = 0
    stopped_early = False
    start = time.perf_counter()
    step = optimizer.step_count
    epoch_batches = iter(())
    model.train()
    with progress_bar(progress, config.steps) as bar:
        task_id = bar.add_task("train", total=config.steps, completed=step, loss=float("nan"), tps=0.0, val="-")
        while step < config.steps:
            batch = next(epoch_batches, None)
            if batch is None:  # a new epoch, freshly shuffled
                epoch_batches = task.train.batches(config.batch_size, shuffle=True, rng=rng)
                continue
            step += 1
            loss, _ = model.loss(batch.src, batch.tgt_in, batch.tgt_out, label_smoothing=config.label_smoothing)
            optimizer.zero_grad()
            loss.backward()
            optim.clip_grad_norm(optimizer.params, config.clip_norm)
            optimizer.lr = schedule(step)
            optimizer.step()
            tokens += batch.num_target_tokens
            history.step.append(step)
            history.loss.append(loss.item())
            history.lr.append(optimizer.lr)
            elapsed = time.perf_counter() - start
            bar.update(task_id, completed=step, loss=history.loss[-1], tps=tokens / max(elapsed, 1e-9))
            if step % config.eval_every == 0 or step == config.steps:
                metrics = evaluate(model, task.val, max_samples=config.val_samples)
                model.train()
                bar.update(task_id, val=f"{metrics['token_accuracy']:.4f}")
                if history.record_evaluation(step, metrics, config, log):
                    stopped_early = step < config.steps
                    break
    seconds = time.perf_counter() - start
    return TrainResult(history=history, optimizer=optimizer, steps=step, seconds=seconds,
                       tokens_per_second=tokens / max(seconds, 1e-9), stopped_early=stopped_early)


def plot_history(history: History, path) -> None:
    """Training loss (log scale) and validation accuracies against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(history.step, history.loss, lw=0.8, label="train loss")
    if history.val_step:
        ax_loss.plot(history.val_step, history.val_loss, "o-", label="val loss (teacher forced)")
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("cross-entropy (nats/token)")
    ax_loss.legend()
    ax_acc.plot(history.val_step, history.val_token_accuracy, "o-", label="val token accuracy (greedy)")
    ax_acc.plot(history.val_step, history.val_sequence_accuracy, "s-", label="val sequence accuracy (greedy)")
    ax_acc.set_ylim(0, 1.02)
    ax_acc.set_xlabel("step")
    ax_acc.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

