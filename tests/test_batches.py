"""Feeding fine-tuning: masks, padding, truncation, shuffling; and every strategy learning through the one loop."""

from dataclasses import dataclass

import pytest
import torch

from minitune.data.batches import SupervisedBatches
from minitune.errors import DataError
from minitune.strategies import AdapterConfig, FullConfig, LoRAConfig, PromptTuningConfig, apply_strategy
from minitune.tokenizer import get_tokenizer
from minitune.train import TrainConfig, evaluate_loss, train

ENC = get_tokenizer("minitune")


@dataclass(frozen=True)
class Ex:
    prompt: str
    target: str


def test_only_target_tokens_are_trained_and_padding_is_ignored():
    examples = [Ex("Review: good soup\nSentiment:", " positive"), Ex("Review: a very long and dull day out\nSentiment:", " negative")]
    batches = SupervisedBatches(examples, ENC, block_size=64, batch_size=2)
    x, y = next(batches.eval_batches())
    for b, ex in enumerate(examples):
        p, t = ENC.encode_ordinary(ex.prompt), ENC.encode_ordinary(ex.target) + [ENC.eot_token]
        ids = p + t
        assert x[b, : len(ids) - 1].tolist() == ids[:-1]
        kept = y[b][y[b] != -100].tolist()
        assert kept == t  # the target and the closing eot, nothing of the prompt, no padding


def test_long_prompts_lose_their_start_not_their_target():
    ex = Ex("word " * 200, " answer here")
    x, y = SupervisedBatches([ex], ENC, block_size=32, batch_size=1).batch(0)
    assert x.shape == (1, 32)
    assert y[0][y[0] != -100].tolist() == ENC.encode_ordinary(" answer here") + [ENC.eot_token]
    with pytest.raises(DataError, match="does not fit block_size"):
        SupervisedBatches([Ex("a", " b" * 40)], ENC, block_size=16, batch_size=1)
    with pytest.raises(DataError, match="no examples"):
        SupervisedBatches([], ENC, block_size=16, batch_size=1)


def test_each_epoch_visits_every_example_once_in_a_seeded_order():
    examples = [Ex(f"Q{i}:", f" {i}") for i in range(10)]
    batches = SupervisedBatches(examples, ENC, block_size=16, batch_size=5, seed=3)
    seen = [tuple(batches.batch(i)[0][b].tolist()) for i in range(2) for b in range(5)]
    assert len(set(seen)) == 10
    again = SupervisedBatches(examples, ENC, block_size=16, batch_size=5, seed=3)
    assert torch.equal(again.batch(3)[0], batches.batch(3)[0])


@pytest.mark.parametrize("config,lr", [(FullConfig(), 1e-2), (LoRAConfig(r=4, targets=("c_attn", "c_fc")), 1e-2),
                                       (AdapterConfig(bottleneck=16), 1e-2), (PromptTuningConfig(n_tokens=16), 0.3)],
                         ids=lambda c: getattr(c, "name", ""))
def test_every_strategy_learns_through_the_one_training_loop(config, lr, nano_base):
    """Each strategy cuts the loss on a small copy task by 10% or more in 60 steps (a soft prompt,
    with a few thousand parameters, wants a much larger learning rate, as Lester et al. found; through
    the frozen nano base it levels off near a 16% cut, whatever its learning rate)."""
    # a copy task: the answer repeats a word from the prompt
    words = ["apple", "river", "stone", "bread", "candle", "market", "garden", "winter"]
    examples = [Ex(f"Say {w}:", f" {w}") for w in words]
    data = SupervisedBatches(examples, ENC, block_size=16, batch_size=8)
    torch.manual_seed(0)
    model = apply_strategy(nano_base, config)
    before = evaluate_loss(model, data.eval_batches())
    train(model, data, None, TrainConfig(max_steps=60, lr=lr, warmup_steps=5, device="cpu", quiet=True))
    after = evaluate_loss(model, data.eval_batches())
    assert after < 0.9 * before, (before, after)
