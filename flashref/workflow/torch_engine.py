"""The torch engine: the built-in task trained with ``torch.nn.Transformer``, its attention on the kernels.

``TorchSeq2Seq`` is ``flashref.reference.Seq2SeqModel`` rebuilt from torch modules with the same
parameter names (``src_embed.weight``, ``transformer.encoder.layers.0.self_attn.in_proj_weight``,
``generator.weight`` ...) and the same function:

    memory = Encoder(PE(E_src[src] * sqrt(d_model)))                      (N, S, E)
    hidden = Decoder(PE(E_tgt[tgt_in] * sqrt(d_model)), memory, causal)   (N, T, E)
    logits = hidden W_out^T + b_out                                       (N, T, V)

so weights move both ways through ``state_dict``. ``train_torch`` is the NumPy engine's loop
(``flashref.workflow.training.train``) step for step: the same initial weights (a NumPy model
built from the seed), the same shuffled batches, learning-rate schedule, global-norm clipping
and Adam (torch.optim.Adam with the NumPy optimizer's hyperparameters); only the arithmetic
runs in torch. ``attention="kernels"`` runs every attention call on the Triton kernels through
``flashref.kernels.sdpa_routing(fallback="error")`` (nothing silently stays on torch);
``attention="math"`` uses torch's math SDPA (the baseline of the loss-curve test). On a GPU the
forward runs under bfloat16 autocast (so the kernels see bfloat16); on the CPU, under Triton's
interpreter, everything is float32.

Validation decodes with the NumPy model (weights copied over), and the checkpoint is the NumPy
engine's format (weights as float64, Adam's state converted), so ``flashref eval`` and
``flashref generate`` read either engine's checkpoints, and ``load_torch_model`` loads either
into torch.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from flashref.reference.layers import sinusoidal_table
from flashref.reference.seq2seq import Seq2SeqConfig, Seq2SeqModel

from .data import ReverseTask
from .training import History, TrainConfig, progress_bar, evaluate, make_optimizer, make_schedule

ATTENTIONS = ("kernels", "math")
LOSS_FACTOR = 3.0  # the rule's gradient factor: the loss at step t carries t - 1 steps of gradients


def compare_loss_curves(reference, kernel, baseline):
    """The project's rule on whole loss curves: ``max_t |kernel - reference|`` against
    ``LOSS_FACTOR * max_t |baseline - reference| + u32 * max_t |reference|``, with reference the
    NumPy engine (float64), kernel the torch engine on the kernels and baseline the same torch
    engine on torch's math SDPA, in the same dtype. Returns the ``TensorError``."""
    from flashref.gate import U32, judge

    reference, kernel, baseline = (np.asarray(x, dtype=np.float64) for x in (reference, kernel, baseline))
    return judge(float(np.max(np.abs(kernel - reference))), float(np.max(np.abs(baseline - reference))),
                 LOSS_FACTOR, U32 * float(np.max(np.abs(reference))))



class TorchSeq2Seq(torch.nn.Module):
    """``Seq2SeqModel`` in torch (batch-first; PAD keys masked by key padding masks)."""

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.config = config
        e, v = config.d_model, config.vocab_size
        self.src_embed = torch.nn.Embedding(v, e)
        self.tgt_embed = torch.nn.Embedding(v, e)
        self.positional_dropout = torch.nn.Dropout(config.dropout)
        with warnings.catch_warnings():  # norm_first: torch notes that it skips its nested-tensor path
            warnings.filterwarnings("ignore", "enable_nested_tensor is True")
            self.transformer = torch.nn.Transformer(
                d_model=e, nhead=config.nhead, num_encoder_layers=config.num_encoder_layers,
                num_decoder_layers=config.num_decoder_layers, dim_feedforward=config.dim_feedforward,
                dropout=config.dropout, activation=config.activation, layer_norm_eps=config.layer_norm_eps,
                batch_first=True, norm_first=config.norm_first, bias=config.bias)
        if config.tie_embeddings:
            self.generator_bias = torch.nn.Parameter(torch.zeros(v))
        else:
            self.generator = torch.nn.Linear(e, v)
        self.register_buffer("pe", torch.tensor(sinusoidal_table(config.max_len, e), dtype=torch.float32),
                             persistent=False)  # (max_len, E), not a parameter (as in the NumPy model)

    def embed(self, embedding: torch.nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        x = embedding(ids) * math.sqrt(self.config.d_model)  # (N, L, E)
        return self.positional_dropout(x + self.pe[: ids.shape[1]])

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """src (N, S), tgt_in (N, T) int64 ids -> logits (N, T, V), teacher forcing."""
        pad = self.config.pad_id
        src_padding = src == pad  # (N, S), True = ignore
        memory = self.transformer.encoder(self.embed(self.src_embed, src), src_key_padding_mask=src_padding)
        length = tgt_in.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=src.device).triu(1)  # (T, T)
        hidden = self.transformer.decoder(self.embed(self.tgt_embed, tgt_in), memory, tgt_mask=causal,
                                          tgt_key_padding_mask=tgt_in == pad, memory_key_padding_mask=src_padding,
                                          tgt_is_causal=True)  # (N, T, E)
        if self.config.tie_embeddings:
            return F.linear(hidden, self.tgt_embed.weight, self.generator_bias)
        return self.generator(hidden)

    def loss(self, src, tgt_in, tgt_out, label_smoothing: float = 0.0) -> torch.Tensor:
        """Mean cross-entropy over non-PAD labels (float32 even under autocast)."""
        logits = self(src, tgt_in)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tgt_out.reshape(-1),
                               ignore_index=self.config.pad_id, label_smoothing=label_smoothing)

    def load_numpy_state(self, model: Seq2SeqModel) -> None:
        self.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in model.state_dict().items()})

    def to_numpy_model(self, model: Seq2SeqModel | None = None) -> Seq2SeqModel:
        """These weights in a (new, or the given) NumPy model of the same config."""
        model = model or Seq2SeqModel(self.config, rng=np.random.default_rng(0))
        model.load_state_dict({k: v.detach().cpu().double().numpy() for k, v in self.state_dict().items()})
        return model


def load_torch_model(path, device: str = "cpu") -> tuple[TorchSeq2Seq, dict]:
    """A checkpoint of either engine -> (TorchSeq2Seq on ``device``, the checkpoint's extra)."""
    from .checkpoint import load_checkpoint

    checkpoint = load_checkpoint(path)
    model = TorchSeq2Seq(checkpoint.config)
    model.load_numpy_state(checkpoint.model)
    return model.to(device), checkpoint.extra


def _torch_optimizer(model: TorchSeq2Seq, config: TrainConfig) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=config.lr, betas=(0.9, 0.98), eps=1e-9, weight_decay=config.weight_decay)


def numpy_optimizer_state(model: TorchSeq2Seq, optimizer: torch.optim.Optimizer, numpy_model: Seq2SeqModel,
                          config: TrainConfig, steps: int):
    """torch Adam's state -> the NumPy optimizer over ``numpy_model`` (for the checkpoint)."""
    numpy_optimizer = make_optimizer(numpy_model, config)
    by_name = {name: optimizer.state.get(p, {}) for name, p in model.named_parameters()}
    per_param = []
    for name, _ in numpy_model.named_parameters():
        state = by_name[name]
        per_param.append({k: v.detach().cpu().double().numpy().reshape(() if k == "step" else v.shape)
                          for k, v in state.items() if k in ("exp_avg", "exp_avg_sq", "step")})
    numpy_optimizer.load_state_dict({"type": type(numpy_optimizer).__name__,
                                     "hyperparameters": numpy_optimizer.hyperparameters(), "step_count": steps,
                                     "state": per_param})
    numpy_optimizer.lr = optimizer.param_groups[0]["lr"]
    return numpy_optimizer


class TorchTrainResult:
    """As ``training.TrainResult``; ``optimizer`` is the NumPy twin of torch's Adam (checkpointable),
    ``model`` the trained TorchSeq2Seq, ``numpy_model`` its weights in the NumPy model."""

    def __init__(self, history, model, numpy_model, optimizer, steps, seconds, tokens_per_second, stopped_early,
                 routed_calls):
        self.history, self.model, self.numpy_model, self.optimizer = history, model, numpy_model, optimizer
        self.steps, self.seconds, self.tokens_per_second = steps, seconds, tokens_per_second
        self.stopped_early, self.routed_calls = stopped_early, routed_calls


def train_torch(model_config: Seq2SeqConfig, task: ReverseTask, config: TrainConfig | None = None, *,
                device: str | None = None, attention: str = "kernels", progress: bool = False,
                log=None) -> TorchTrainResult:
    """Train a TorchSeq2Seq from the NumPy engine's initial weights for ``config.seed`` (module
    docstring). device: "cuda" or "cpu" (default: cuda if available)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    config = config or TrainConfig()
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    numpy_model = Seq2SeqModel(model_config, rng=np.random.default_rng(config.seed))  # the NumPy engine's init
    model = TorchSeq2Seq(model_config)
    model.load_numpy_state(numpy_model)
    model = model.to(device).train()
    optimizer = _torch_optimizer(model, config)
    schedule = make_schedule(config)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda"
                else contextlib.nullcontext())  # float32 under the interpreter
    if attention == "kernels":
        from flashref.kernels import sdpa_routing

        routing = sdpa_routing(fallback="error")
    else:
        routing = None
    rng = np.random.default_rng(config.seed)  # the NumPy engine's shuffling
    history = History()
    tokens, step, stopped_early = 0, 0, False
    epoch_batches = iter(())
    start = time.perf_counter()
    with progress_bar(progress, config.steps) as bar:
        task_id = bar.add_task("train", total=config.steps, completed=0, loss=float("nan"), tps=0.0, val="-")
        while step < config.steps:
            batch = next(epoch_batches, None)
            if batch is None:
                epoch_batches = task.train.batches(config.batch_size, shuffle=True, rng=rng)
                continue
            step += 1
            src, tgt_in, tgt_out = (torch.from_numpy(a).to(device) for a in (batch.src, batch.tgt_in, batch.tgt_out))
            with routing if routing is not None else sdpa_kernel(SDPBackend.MATH):
                with autocast:
                    loss = model.loss(src, tgt_in, tgt_out, label_smoothing=config.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
            lr = schedule(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.step()
            tokens += batch.num_target_tokens
            history.step.append(step)
            history.loss.append(loss.item())
            history.lr.append(lr)
            bar.update(task_id, completed=step, loss=history.loss[-1],
                       tps=tokens / max(time.perf_counter() - start, 1e-9))
            if step % config.eval_every == 0 or step == config.steps:
                metrics = evaluate(model.to_numpy_model(numpy_model), task.val, max_samples=config.val_samples)
                bar.update(task_id, val=f"{metrics['token_accuracy']:.4f}")
                if history.record_evaluation(step, metrics, config, log):
                    stopped_early = step < config.steps
                    break
    seconds = time.perf_counter() - start
    model.to_numpy_model(numpy_model)
    numpy_optimizer = numpy_optimizer_state(model, optimizer, numpy_model, config, step)
    return TorchTrainResult(history, model, numpy_model, numpy_optimizer, step, seconds, tokens / max(seconds, 1e-9),
                            stopped_early, routing.routed if routing is not None else 0)
