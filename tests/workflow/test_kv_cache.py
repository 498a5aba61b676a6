"""The KV cache decodes exactly what the cache-free (full-prefix) decoder decodes.

`use_cache=False` reruns the whole decoder on the growing prefix: the reference. The cache
must give the same logits at every step (to rounding, 1e-12 relative in float64) and hence
the same tokens, for greedy and beam search, on random models of varied shapes and on a
model trained a little on the built-in task.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flashref.autograd import Tensor
from flashref.cli import main
from flashref.reference.seq2seq import Seq2SeqConfig, Seq2SeqModel
from flashref.workflow.checkpoint import save_checkpoint
from flashref.workflow.data import BOS, EOS, PAD, ReverseTaskConfig, make_reverse_task
from flashref.workflow.decoding import DecoderCache, beam_search, greedy_decode, inference
from flashref.workflow.training import TrainConfig, evaluate, train

from transformer_cases import fresh_seed, rel_err, sequence_log_prob

LOGIT_TOL = 1e-12  # relative, float64


def random_model(rng: np.random.Generator, *, d_head: int, nhead: int, layers: int, norm_first: bool,
                 bias: bool, tie: bool, activation: str, vocab: int = 13, dtype: str = "float64") -> Seq2SeqModel:
    config = Seq2SeqConfig(vocab_size=vocab, d_model=d_head * nhead, nhead=nhead, num_encoder_layers=layers,
                           num_decoder_layers=layers, dim_feedforward=int(rng.integers(4, 24)),
                           activation=activation, norm_first=norm_first, bias=bias, tie_embeddings=tie,
                           max_len=24, dtype=dtype)
    model = Seq2SeqModel(config, rng=rng)
    for p in model.parameters():  # sharper than the init, so argmax and beam paths differ between models
        p.data *= 3.0
    return model


def random_sources(rng: np.random.Generator, batch: int, max_src: int, vocab: int) -> np.ndarray:
    """(batch, S) ids: digits-like tokens, EOS, right PAD (at least one row unpadded)."""
    lengths = rng.integers(1, max_src + 1, size=batch)
    width = int(lengths.max()) + 1
    src = np.full((batch, width), PAD, dtype=np.int64)
    for row, n in enumerate(lengths):
        src[row, :n] = rng.integers(3, vocab, size=n)
        src[row, n] = EOS
    return src


def assert_same_greedy(model, src, cached: list[list[int]], full: list[list[int]]) -> None:
    """Greedy continuations with and without the cache are the same, except after a tie.

    The cache changes the logits by rounding only, so the argmax can differ only where two
    tokens tie to within LOGIT_TOL. Random models do tie exactly (a tiny width, relu and
    no bias can make the logits ignore the prefix, so every step offers the same choice).
    A cached row that differs must still be a greedy path of the uncached model: at every
    step its token's logit is the maximum to within LOGIT_TOL (one teacher-forced pass).
    """
    assert len(cached) == len(full)
    for row, (a, b) in enumerate(zip(cached, full)):
        if a == b:
            continue
        logits = model(src[row : row + 1], np.array([[BOS] + a[:-1]])).data[0]  # (T, V) without the cache
        best = logits.max(axis=-1)  # (T,)
        chosen = logits[np.arange(len(a)), a]  # (T,)
        gap = best - chosen
        t = int(np.argmax(gap))
        assert np.all(gap <= LOGIT_TOL * np.maximum(1.0, np.abs(logits).max(axis=-1))), \
            f"row {row}: cached {a} vs uncached {b}: token {a[t]} at step {t} is {gap[t]:.3e} below the argmax"


def assert_same_beams(model, src, cached: list, full: list, length_penalty: float) -> None:
    """Beam search with and without the cache gives the same hypotheses, except for ties.

    Rank by rank the scores agree to LOGIT_TOL; where the tokens agree so must the
    log-probabilities and the finished flags. Where a tie (see assert_same_greedy) let the
    two searches keep different but equally scored hypotheses, each must be scored as the
    uncached model scores its tokens: a cache row that followed the wrong beam cannot pass.
    """
    assert len(cached) == len(full)
    for rank, (a, b) in enumerate(zip(cached, full)):
        tol = LOGIT_TOL * max(1.0, abs(b.log_prob))
        assert abs(a.score(length_penalty) - b.score(length_penalty)) <= tol, f"rank {rank}: {a} vs {b}"
        if a.tokens == b.tokens:
            assert a.finished == b.finished and abs(a.log_prob - b.log_prob) <= tol, f"rank {rank}: {a} vs {b}"
            continue
        for h in (a, b):
            assert h.finished == (h.tokens[-1] == EOS), f"rank {rank}: {h}"
            assert abs(h.log_prob - sequence_log_prob(model, src, h.tokens)) <= tol, f"rank {rank}: {h}"


model_shapes = st.fixed_dictionaries({
    "d_head": st.integers(1, 6), "nhead": st.integers(1, 3), "layers": st.integers(1, 3),
    "norm_first": st.booleans(), "bias": st.booleans(), "tie": st.booleans(),
    "activation": st.sampled_from(["relu", "gelu"]),
})


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=model_shapes, batch=st.integers(1, 4), max_src=st.integers(1, 9), steps=st.integers(1, 12),
       seed=st.integers(0, 2**32 - 1))
def test_cached_step_logits_equal_the_full_prefix_pass(shape, batch, max_src, steps, seed):
    """Feed random prefixes (PAD included, as finished greedy rows do) one token at a time:
    every step's logits equal the last row of model.decode on the whole prefix."""
    rng = np.random.default_rng(seed)
    model = random_model(rng, **shape)
    src = random_sources(rng, batch, max_src, model.config.vocab_size)
    with inference(model):
        memory = model.encode(src)
        padding = src == PAD
        cache = DecoderCache(model, memory, padding, capacity=steps)
        prefix = np.full((batch, 1), BOS, dtype=np.int64)
        for t in range(steps):
            cached = cache.step(prefix[:, -1])  # (N, V)
            full = model.decode(prefix, memory, padding).data[:, -1]  # (N, V)
            assert rel_err(cached, full) <= LOGIT_TOL, f"step {t}"
            prefix = np.concatenate([prefix, rng.integers(0, model.config.vocab_size, size=(batch, 1))], axis=1)
        assert cache.length == steps


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=model_shapes, batch=st.integers(1, 5), max_src=st.integers(1, 9), seed=st.integers(0, 2**32 - 1))
def test_greedy_tokens_equal_with_and_without_cache(shape, batch, max_src, seed):
    rng = np.random.default_rng(seed)
    model = random_model(rng, **shape)
    src = random_sources(rng, batch, max_src, model.config.vocab_size)
    steps = int(rng.integers(1, 16))
    cached = greedy_decode(model, src, max_new_tokens=steps)
    full = greedy_decode(model, src, max_new_tokens=steps, use_cache=False)
    assert_same_greedy(model, src, cached, full)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=model_shapes, max_src=st.integers(1, 9), beam=st.integers(1, 5),
       length_penalty=st.sampled_from([0.0, 0.6]), seed=st.integers(0, 2**32 - 1))
def test_beam_hypotheses_equal_with_and_without_cache(shape, max_src, beam, length_penalty, seed):
    """Same hypotheses in the same order, same log-probabilities: the cache rows follow
    their beams through every reorder."""
    rng = np.random.default_rng(seed)
    model = random_model(rng, vocab=6, **shape)  # few tokens: EOS is likely, beams finish and drop out
    src = random_sources(rng, 1, max_src, 6)[0]
    src = src[src != PAD]
    kwargs = dict(beam_size=beam, max_new_tokens=int(rng.integers(1, 12)), length_penalty=length_penalty)
    cached, full = beam_search(model, src, **kwargs), beam_search(model, src, use_cache=False, **kwargs)
    assert_same_beams(model, src, cached, full, length_penalty)


def test_reorder_follows_rows():
    """After reorder(rows), step t equals the full pass on the prefixes taken in that order."""
    seed = fresh_seed("kv reorder")
    rng = np.random.default_rng(seed)
    model = random_model(rng, d_head=4, nhead=2, layers=2, norm_first=False, bias=True, tie=False,
                         activation="relu")
    src = random_sources(rng, 3, 6, 13)
    with inference(model):
        memory, padding = model.encode(src), src == PAD
        cache = DecoderCache(model, memory, padding, capacity=8)
        prefix = np.full((3, 1), BOS, dtype=np.int64)
        for _ in range(3):
            cache.step(prefix[:, -1])
            prefix = np.concatenate([prefix, rng.integers(3, 13, size=(3, 1))], axis=1)
        rows = np.array([2, 0, 2, 1])  # a permutation with a repeat and a change of batch size
        cache.reorder(rows)
        full = model.decode(prefix[rows], Tensor(memory.data[rows]), padding[rows]).data[:, -1]
        assert rel_err(cache.step(prefix[rows, -1]), full) <= LOGIT_TOL


def test_float32_model_stays_close():
    """A float32 model's cache keeps K/V in float32 and attends in float64, as forward does."""
    seed = fresh_seed("kv float32")
    rng = np.random.default_rng(seed)
    model = random_model(rng, d_head=4, nhead=2, layers=2, norm_first=True, bias=True, tie=False,
                         activation="gelu", dtype="float32")
    src = random_sources(rng, 3, 7, 13)
    with inference(model):
        memory, padding = model.encode(src), src == PAD
        cache = DecoderCache(model, memory, padding, capacity=10)
        prefix = np.full((3, 1), BOS, dtype=np.int64)
        for _ in range(10):
            cached = cache.step(prefix[:, -1])
            assert cached.dtype == np.float32
            assert rel_err(cached, model.decode(prefix, memory, padding).data[:, -1]) <= 1e-5
            prefix = np.concatenate([prefix, rng.integers(0, 13, size=(3, 1))], axis=1)


def test_trained_model_on_the_built_in_task_decodes_identically(tmp_path, capsys):
    """A model trained a little on the reversal task: greedy over a test split, beam search on
    a few sources, and the CLI's --no-cache paths all agree with the cached ones."""
    seed = fresh_seed("kv trained")
    task = make_reverse_task(ReverseTaskConfig(min_len=1, max_len=5, num_train=600, num_val=30, num_test=60,
                                               seed=seed % 1000))
    config = Seq2SeqConfig(d_model=16, nhead=2, num_encoder_layers=1, num_decoder_layers=2, dim_feedforward=32,
                           max_len=16)
    model = Seq2SeqModel(config, rng=np.random.default_rng(seed))
    train(model, task, TrainConfig(steps=60, batch_size=32, lr=5e-3, warmup_steps=5, eval_every=60,
                                   val_samples=10, target_accuracy=None, seed=seed), progress=False)
    split = task.test
    batch = split.batch(np.arange(len(split)))
    assert greedy_decode(model, batch.src) == greedy_decode(model, batch.src, use_cache=False)
    assert evaluate(model, split) == evaluate(model, split, use_cache=False)
    for digits in split.sequences[:4]:
        src = digits + [EOS]
        cached, full = beam_search(model, src, beam_size=3), beam_search(model, src, beam_size=3, use_cache=False)
        assert [(h.tokens, h.finished) for h in cached] == [(h.tokens, h.finished) for h in full]

    ckpt = str(save_checkpoint(tmp_path / "model.safetensors", model, extra={"task": task.config.to_dict()}))
    outputs = []
    for flags in ([], ["--no-cache"]):
        capsys.readouterr()
        assert main(["generate", ckpt, "3 1 4 1", "--beam", "3", "--verbose", *flags]) == 0
        assert main(["generate", ckpt, "2 7 1", *flags]) == 0
        assert main(["eval", ckpt, "--max-samples", "20", *flags]) == 0
        out = capsys.readouterr()
        lines = out.out.splitlines()
        assert "wall time" in lines[-1] and ("no cache" in lines[-1]) == bool(flags)
        outputs.append((lines[:-1], out.err))
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize("call, message", [
    (lambda m, mem, pad: DecoderCache(m, mem, pad, capacity=0), "capacity"),
    (lambda m, mem, pad: DecoderCache(m, mem, pad, capacity=m.config.max_len + 1), "capacity"),
    (lambda m, mem, pad: DecoderCache(m, mem, pad[:, :-1], capacity=4), "src_padding"),
    (lambda m, mem, pad: DecoderCache(m, mem, pad, capacity=4).step(np.array([BOS])), "tokens"),
    (lambda m, mem, pad: DecoderCache(m, mem, pad, capacity=4).step(np.array([1.0, 1.0])), "tokens"),
    (lambda m, mem, pad: DecoderCache(m, mem, pad, capacity=4).reorder([0, 2]), "rows"),
])
def test_bad_cache_arguments(call, message):
    model = random_model(np.random.default_rng(0), d_head=2, nhead=2, layers=1, norm_first=False, bias=True,
                         tie=False, activation="relu")
    src = np.array([[4, 5, EOS], [6, EOS, PAD]])
    with inference(model):
        memory = model.encode(src)
        with pytest.raises(ValueError, match=message):
            call(model, memory, src == PAD)


def test_a_cache_needs_eval_mode():
    model = random_model(np.random.default_rng(0), d_head=2, nhead=2, layers=1, norm_first=False, bias=True,
                         tie=False, activation="relu").train()
    src = np.array([[4, 5, EOS]])
    memory = model.encode(src)
    with pytest.raises(ValueError, match="eval mode"):
        DecoderCache(model, memory, src == PAD, capacity=2)


def test_a_full_cache_refuses_another_token():
    model = random_model(np.random.default_rng(0), d_head=2, nhead=2, layers=1, norm_first=False, bias=True,
                         tie=False, activation="relu")
    src = np.array([[4, 5, EOS]])
    with inference(model):
        cache = DecoderCache(model, model.encode(src), src == PAD, capacity=2)
        cache.step(np.array([BOS]))
        cache.step(np.array([4]))
        with pytest.raises(ValueError, match="full"):
            cache.step(np.array([5]))
