"""Seq2SeqModel: the whole model (embeddings, PE, Transformer, projection, masked loss) and
one full Adam training step agree with a torch twin built from the same weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flashref.workflow.data import ReverseTaskConfig, make_reverse_task
from flashref.reference.optim import Adam
from flashref.reference.seq2seq import Seq2SeqConfig, Seq2SeqModel

from transformer_cases import adam_drift_bound, fresh_seed, grad_mismatches, rel_err, torch_seq2seq_twin

pytestmark = pytest.mark.filterwarnings("ignore:enable_nested_tensor is True:UserWarning")
TOL = 1e-10


def batch(seed: int, size: int = 5):
    task = make_reverse_task(ReverseTaskConfig(max_len=6, num_train=50, num_val=5, num_test=5, seed=seed % 1000))
    return task.train.batch(range(size))


@pytest.mark.parametrize("overrides", [
    {},
    {"tie_embeddings": True, "norm_first": True},
    {"activation": "gelu", "bias": False, "nhead": 1},
])
def test_loss_and_every_gradient_match_torch(overrides):
    seed = fresh_seed("seq2seq parity")
    config = Seq2SeqConfig(**dict(d_model=8, nhead=2, num_encoder_layers=2, num_decoder_layers=1,
                                  dim_feedforward=10, max_len=16) | overrides)
    model = Seq2SeqModel(config, rng=np.random.default_rng(seed))
    twin = torch_seq2seq_twin(model)
    b = batch(seed)
    loss, _ = model.loss(b.src, b.tgt_in, b.tgt_out)
    torch_loss = twin.loss(b.src, b.tgt_in, b.tgt_out)
    loss.backward()
    torch_loss.backward()
    assert rel_err(loss.data, torch_loss.detach().numpy()) <= TOL
    ours = {n: p.grad for n, p in model.named_parameters()}
    theirs = {n: p.grad.numpy() for n, p in twin.named_parameters()}
    assert grad_mismatches(ours, theirs, TOL) == []


def test_one_training_step_matches_torch():
    """Forward, backward, Adam: gradients agree at every step, and the parameters after
    three steps agree with torch's within Adam's own amplification of the gradients'
    rounding (transformer_cases.adam_drift_bound) plus float64 rounding of the update."""
    seed = fresh_seed("training step parity")
    config = Seq2SeqConfig(d_model=8, nhead=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=10,
                           max_len=16)
    model = Seq2SeqModel(config, rng=np.random.default_rng(seed))
    twin = torch_seq2seq_twin(model)
    lr, betas, eps = 1e-2, (0.9, 0.999), 1e-8
    opt = Adam(model.parameters(), lr=lr, betas=betas, eps=eps)
    params = dict(model.named_parameters())
    names = list(params)
    twin_params = dict(twin.named_parameters())
    topt = torch.optim.Adam([twin_params[n] for n in names], lr=lr, betas=betas, eps=eps)
    history: dict[str, list[dict]] = {n: [] for n in names}
    for step in range(3):
        b = batch(seed + step)
        loss, _ = model.loss(b.src, b.tgt_in, b.tgt_out)
        opt.zero_grad()
        loss.backward()
        topt.zero_grad()
        twin.loss(b.src, b.tgt_in, b.tgt_out).backward()
        ours = {n: params[n].grad for n in names}
        theirs = {n: twin_params[n].grad.numpy().copy() for n in names}
        assert grad_mismatches(ours, theirs, TOL) == [], f"step {step}"
        opt.step()
        topt.step()
        for n in names:
            v = topt.state[twin_params[n]]["exp_avg_sq"].numpy().copy()
            history[n].append({"grad_gap": np.abs(ours[n] - theirs[n]), "v": v})
    state = model.state_dict()
    bad = []
    for n in names:
        theirs = twin_params[n].detach().numpy()
        rounding = 64 * np.finfo(np.float64).eps * (np.abs(theirs) + lr * len(history[n]))
        allowed = adam_drift_bound(lr, betas, eps, history[n]) + rounding
        gap = np.abs(state[n] - theirs)
        if not np.all(gap <= allowed):
            k = int(np.argmax(gap - allowed))
            bad.append(f"{n}[{k}]: |diff| {gap.flat[k]:.3e} > allowed {allowed.flat[k]:.3e}")
    assert bad == []


def test_padding_does_not_change_a_sequence_logits():
    """A sequence's logits are the same alone and padded inside a batch (masks work)."""
    seed = fresh_seed("padding invariance")
    model = Seq2SeqModel(Seq2SeqConfig(d_model=8, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                                       dim_feedforward=10, max_len=16), rng=np.random.default_rng(seed))
    b = batch(seed, size=6)
    together = model(b.src, b.tgt_in).data
    for row in range(len(b)):
        s, t = int((b.src[row] != 0).sum()), int((b.tgt_out[row] != 0).sum())
        alone = model(b.src[row : row + 1, :s], b.tgt_in[row : row + 1, :t]).data
        assert rel_err(together[row, :t], alone[0]) <= 1e-12


def test_dropout_is_random_in_training_and_off_in_eval():
    config = Seq2SeqConfig(d_model=8, nhead=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=10,
                           max_len=16, dropout=0.3)
    model = Seq2SeqModel(config, rng=np.random.default_rng(fresh_seed("dropout")))
    plain = Seq2SeqModel(Seq2SeqConfig(**(config.to_dict() | {"dropout": 0.0})))
    plain.load_state_dict(model.state_dict())
    b = batch(0)
    first, second = model(b.src, b.tgt_in).data, model(b.src, b.tgt_in).data
    assert not np.allclose(first, second)
    model.eval()
    np.testing.assert_array_equal(model(b.src, b.tgt_in).data, plain(b.src, b.tgt_in).data)


def test_float32_model_tracks_float64():
    """dtype='float32' keeps parameters, activations and gradients in float32 (attention
    itself runs in float64 inside the oracle) and stays within float32 rounding of float64."""
    base = dict(d_model=8, nhead=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=10, max_len=16)
    wide = Seq2SeqModel(Seq2SeqConfig(**base), rng=np.random.default_rng(fresh_seed("float32")))
    narrow = Seq2SeqModel(Seq2SeqConfig(**base, dtype="float32"))
    narrow.load_state_dict(wide.state_dict())
    b = batch(1)
    loss64, _ = wide.loss(b.src, b.tgt_in, b.tgt_out)
    loss32, logits32 = narrow.loss(b.src, b.tgt_in, b.tgt_out)
    loss32.backward()
    assert logits32.dtype == np.float32 and {p.grad.dtype for p in narrow.parameters()} == {np.dtype(np.float32)}
    assert abs(loss32.item() - loss64.item()) <= 1e-5 * abs(loss64.item())


def test_tied_embeddings_share_one_matrix():
    model = Seq2SeqModel(Seq2SeqConfig(tie_embeddings=True, d_model=8, nhead=2, dim_feedforward=8))
    names = dict(model.named_parameters())
    assert "generator.weight" not in names and "generator_bias" in names
    loss, _ = model.loss(np.array([[4, 2]]), np.array([[1, 4]]), np.array([[4, 2]]))
    loss.backward()
    assert np.abs(names["tgt_embed.weight"].grad[[0, 2, 3, 5]]).sum() > 0  # projection rows get gradient too


@pytest.mark.parametrize("kwargs, message", [
    (dict(d_model=10, nhead=4), "divisible"),
    (dict(activation="swish"), "activation"),
    (dict(pad_id=20), "pad_id"),
    (dict(dtype="float16"), "dtype"),
    (dict(num_encoder_layers=0), "num_encoder_layers"),
])
def test_bad_configs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Seq2SeqConfig(**kwargs)
