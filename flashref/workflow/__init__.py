"""flashref.workflow: the seed article's workflow on top of the oracle's NumPy Transformer.

The built-in task's data (reverse a digit sequence), the training loop (Adam, warmup,
validation, early stop), decoding (greedy, beam search) and safetensors checkpoints. It
builds on `flashref.reference` (the model, its layers and optimizers); the oracle never
imports this package.
"""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .data import ReverseTask, ReverseTaskConfig, make_reverse_task
from .decoding import DecoderCache, beam_search, greedy_decode
from .training import TrainConfig, evaluate, train

__all__ = [
    "ReverseTask", "ReverseTaskConfig", "make_reverse_task",
    "TrainConfig", "evaluate", "train",
    "DecoderCache", "beam_search", "greedy_decode",
    "CheckpointError", "load_checkpoint", "save_checkpoint",
]
