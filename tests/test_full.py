"""Full fine-tuning: every tensor of the model trains, whatever was frozen before.

Its counts, training steps, saving and loading are among the properties every strategy shares, in
test_strategy_api.py.
"""

from minitune.strategies import FullConfig, apply_strategy, trainable_parameters
from strategy_cases import base


def test_full_makes_everything_trainable_even_after_freezing():
    model = base()
    for p in model.parameters():
        p.requires_grad = False
    model = apply_strategy(model, FullConfig())
    trainable, total = trainable_parameters(model)
    assert trainable == total == model.num_parameters()
