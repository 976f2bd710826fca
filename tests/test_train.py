"""The training loop: loss falls, runs reproduce, settings are validated, only trainable parameters move."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minitune.checkpoint import load_model, save_model
from minitune.data.batches import TokenStream
from minitune.errors import ConfigError, DataError
from minitune.model import GPT, GPTConfig
from minitune.train import (TrainConfig, accumulate_gradients, evaluate_loss, lr_at, make_optimizer, seed_everything,
                            train)


def tiny_stream(seed=0) -> TokenStream:
    # a repeating pattern a model can learn within a few steps
    pattern = np.array([5, 9, 2, 7, 7, 1, 3, 8] * 200, dtype=np.uint16)
    return TokenStream(pattern, block_size=16, batch_size=8, seed=seed, max_eval_batches=4)


def nano_model(seed=0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=16, block_size=16, n_layer=1, n_head=2, n_embd=16))


def test_a_few_steps_reduce_loss(tmp_path):
    model = nano_model()
    data = tiny_stream()
    cfg = TrainConfig(max_steps=40, lr=1e-2, warmup_steps=5, eval_every=20, log_every=10, device="cpu", quiet=True)
    result = train(model, data, data, cfg, out_dir=tmp_path, save=save_model)
    assert result.history[0]["val_loss"] < np.log(16)  # better than uniform after 20 steps
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [20, 40]
    reloaded, _ = load_model(tmp_path / "last")
    assert torch.equal(reloaded.transformer.wte.weight, model.transformer.wte.weight)
    assert (tmp_path / "best" / "model.safetensors").is_file()


def test_same_seed_same_weights():
    cfg = TrainConfig(max_steps=5, lr=1e-2, warmup_steps=1, device="cpu", quiet=True)
    a, b = nano_model(), nano_model()
    train(a, tiny_stream(), None, cfg)
    train(b, tiny_stream(), None, cfg)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_gradient_accumulation_matches_a_bigger_batch():
    """Two micro-batches of 4 give the same update as one batch of 8 holding the same windows."""
    class Fixed:
        def __init__(self, xs, ys):
            self.xs, self.ys = xs, ys

        def batch(self, i):
            return self.xs[i], self.ys[i]

    x, y = tiny_stream().batch(0)
    big = Fixed([x], [y])
    small = Fixed([x[:4], x[4:]], [y[:4], y[4:]])
    a, b = nano_model(), nano_model()
    train(a, big, None, TrainConfig(max_steps=1, warmup_steps=0, device="cpu", quiet=True))
    train(b, small, None, TrainConfig(max_steps=1, warmup_steps=0, grad_accum=2, device="cpu", quiet=True))
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)


def masked(y: torch.Tensor, seed: int) -> torch.Tensor:
    """Mask a random-length prefix of every row, as fine-tuning masks prompts (some rows entirely)."""
    lengths = torch.randint(0, y.size(1) + 1, (y.size(0),), generator=torch.Generator().manual_seed(seed))
    return y.masked_fill(torch.arange(y.size(1)) < lengths[:, None], -100)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), cuts=st.lists(st.integers(1, 7), min_size=1, max_size=3, unique=True))
def test_masked_micro_batches_give_the_gradient_of_one_big_batch(seed, cuts):
    """Catches averaging each micro-batch's own mean: micro-batches holding different numbers of real targets
    would weigh their tokens differently, and the accumulated step would not be the big batch's."""
    x, y = tiny_stream(seed).batch(seed)
    y = masked(y, seed)
    bounds = [0, *sorted(cuts), len(x)]
    parts = [(x[a:b], y[a:b]) for a, b in zip(bounds, bounds[1:])]
    big, small = nano_model(), nano_model()
    accumulate_gradients(big, [(x, y)], torch.device("cpu"))
    loss = accumulate_gradients(small, parts, torch.device("cpu"))
    reference = torch.nn.functional.cross_entropy(nano_model()(x)[0].flatten(0, 1), y.flatten(), ignore_index=-100)
    assert loss == pytest.approx(reference.item(), rel=1e-5)
    for (name, a), b in zip(big.named_parameters(), small.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-7), name


def test_a_batch_without_targets_adds_nothing():
    """Catches the NaN a mean over zero targets gives (it would poison the step or the validation loss)."""
    x, y = tiny_stream().batch(0)
    model = nano_model()
    loss = accumulate_gradients(model, [(x, torch.full_like(y, -100)), (x, y)], torch.device("cpu"))
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert evaluate_loss(model, [(x, torch.full_like(y, -100)), (x, y)]) == pytest.approx(evaluate_loss(model, [(x, y)]))
    assert loss == pytest.approx(evaluate_loss(model, [(x, y)]), rel=1e-5)


def test_a_step_of_one_target_weighs_it_fully():
    """Catches a floor above 1 on the target count (a lone target's gradient halved)."""
    x, y = tiny_stream().batch(0)
    y = torch.full_like(y, -100)
    y[0, 3] = 7
    model = nano_model()
    loss = accumulate_gradients(model, [(x, y)], torch.device("cpu"))
    reference = nano_model()
    expected = torch.nn.functional.cross_entropy(reference(x)[0][0, 3], y[0, 3])
    expected.backward()
    assert loss == pytest.approx(expected.item(), rel=1e-6)
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-7)


class Indexed:
    """Batch i of a source, refusing indices the loop should never ask for."""

    def __init__(self, source, n):
        self.source, self.n, self.asked = source, n, []

    def batch(self, i):
        assert 0 <= i < self.n, f"batch {i} asked"
        self.asked.append(i)
        return self.source.batch(i)


def test_the_loop_reads_each_batch_once_in_order_and_reports_what_it_did():
    """Catches micro-batch indices computed wrongly, a token count that is not a running sum, and a training
    loss that is not the mean of the last logging window's steps (lr is tiny, so each step's loss is the
    initial model's loss on that step's batch)."""
    source = tiny_stream()
    data = Indexed(source, 8)
    cfg = TrainConfig(max_steps=4, grad_accum=2, lr=1e-9, min_lr=0, warmup_steps=0, log_every=3, weight_decay=0.0,
                      device="cpu", quiet=True)
    reference = nano_model()
    result = train(nano_model(), data, None, cfg)
    assert data.asked == list(range(8))
    x, _ = source.batch(0)
    assert result.tokens == 8 * x.numel() and result.steps == 4
    step_losses = [evaluate_loss(reference, [source.batch(2 * s), source.batch(2 * s + 1)]) for s in range(4)]
    assert result.train_loss == pytest.approx(step_losses[3], rel=1e-4)  # the window after step 3 holds step 4
    result = train(nano_model(), Indexed(source, 8), None, TrainConfig(**{**cfg.__dict__, "log_every": 10}))
    assert result.train_loss == pytest.approx(sum(step_losses) / 4, rel=1e-4)


def test_optimizer_takes_the_settings_learning_rate_and_betas():
    """Catches AdamW built with its own defaults instead of the run's settings."""
    cfg = TrainConfig(lr=0.05, min_lr=0.0, betas=(0.8, 0.9), weight_decay=0.2)
    for group in make_optimizer(nano_model(), cfg, torch.device("cpu")).param_groups:
        assert group["lr"] == 0.05 and group["betas"] == (0.8, 0.9)


def test_seed_everything_seeds_python_numpy_and_torch():
    """Catches a generator left unseeded (data shuffles and init draw from all three)."""
    import random

    draws = []
    for _ in range(2):
        seed_everything(3)
        draws.append((random.random(), np.random.rand(), torch.rand(1).item()))
    assert draws[0] == draws[1]


def test_frozen_parameters_are_untouched_and_not_in_the_optimizer():
    model = nano_model()
    for name, p in model.named_parameters():
        p.requires_grad = "mlp" in name
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    optimizer = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    in_opt = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in model.parameters() if p.requires_grad}
    train(model, tiny_stream(), None, TrainConfig(max_steps=3, warmup_steps=0, device="cpu", quiet=True))
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


def test_no_weight_decay_on_biases_norms_and_embeddings():
    model = nano_model()
    decay, rest = make_optimizer(model, TrainConfig(), torch.device("cpu")).param_groups
    decayed = {id(p) for p in decay["params"]}
    for name, p in model.named_parameters():
        expect = name.endswith(".weight") and ("c_attn" in name or "c_proj" in name or "c_fc" in name)
        assert (id(p) in decayed) == expect, name
    assert rest["weight_decay"] == 0.0


def test_learning_rate_schedule():
    cfg = TrainConfig(max_steps=100, lr=1e-3, min_lr=1e-4, warmup_steps=10)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(55, cfg) == pytest.approx(5.5e-4)
    assert lr_at(100, cfg) == pytest.approx(1e-4)
    assert lr_at(150, cfg) == pytest.approx(1e-4)  # past the end it stays at min_lr (no second cosine)
    lrs = [lr_at(s, cfg) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


@pytest.mark.parametrize("field,value", [("lr", 0), ("lr", 5.0), ("max_steps", 0), ("grad_accum", 0),
                                         ("warmup_steps", -1), ("device", "tpu9")])
def test_bad_settings_are_refused(field, value):
    with pytest.raises(ConfigError, match=field if field != "device" else "device"):
        TrainConfig(**{field: value})


def test_a_corpus_too_short_for_one_window():
    with pytest.raises(DataError, match="too few"):
        TokenStream(np.arange(10, dtype=np.uint16), block_size=16, batch_size=2)
