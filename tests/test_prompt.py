"""Prompt tuning: the soft prompt against the base reading real tokens, the loss, generation and the
three initialisations.

The properties every strategy shares (counts, training steps, saving and loading) are in
test_strategy_api.py.
"""

import copy

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from minitune.errors import ConfigError
from minitune.model import GPT, GPTConfig
from minitune.strategies import PromptTuningConfig, apply_strategy
from minitune.strategies.prompt import PromptTunedGPT
from strategy_cases import base, ids, random_bases, random_ids


@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_soft_prompt_of_real_token_embeddings_equals_the_base_on_those_tokens(data):
    """Catches a soft prompt placed after the input, positions that do not count the prompt, or logits of
    the prompt positions returned as the input's."""
    plain = data.draw(random_bases())
    n = data.draw(st.integers(1, plain.config.block_size - 2))
    model = apply_strategy(copy.deepcopy(plain), PromptTuningConfig(n_tokens=n, init="random"))
    prompt_ids, x = random_ids(model, 4, B=1, T=n), random_ids(model, 5, T=model.max_input_tokens)
    with torch.no_grad():
        model.soft_prompt.weight.copy_(plain.transformer.wte.weight[prompt_ids[0]])
    with_prompt = plain(torch.cat([prompt_ids.expand(2, -1), x], dim=1))[0][:, n:]
    tol = 1e-4 if with_prompt.dtype == torch.float32 else 1e-10
    assert torch.allclose(model(x)[0], with_prompt, rtol=tol, atol=tol)


def test_prompt_positions_never_count_in_the_loss_and_base_gets_no_gradient():
    plain = base()
    model = apply_strategy(plain, PromptTuningConfig(n_tokens=4))
    x = ids()
    logits, loss = model(x, x)
    expected = nn.functional.cross_entropy(logits.reshape(-1, 64), x.reshape(-1))
    assert torch.allclose(loss, expected)
    loss.backward()
    assert model.soft_prompt.weight.grad is not None
    assert all(p.grad is None for n, p in model.named_parameters() if n != "soft_prompt.weight")


def test_prompt_tuning_generation_and_shorter_context():
    model = apply_strategy(base(), PromptTuningConfig(n_tokens=6))
    x = ids(B=1, T=5)
    out = model.generate(x, 100)
    assert out.shape == (1, 32 - 6)  # the context is full with the prompt in place
    assert torch.equal(out, model.generate(x, 100, use_cache=False))
    assert torch.equal(model.generate(x, 100, stop_tokens={int(out[0, 5])}), out[:, :6])  # settings reach generate
    with pytest.raises(ConfigError, match="usable context is 26"):
        model(ids(T=27))


def test_prompt_tuned_generate_takes_a_prefix_of_its_own_after_the_soft_prompt():
    """Catches the duplicate prefix_embeddings keyword (a TypeError) and a caller's prefix put before the prompt."""
    plain = base()
    model = apply_strategy(copy.deepcopy(plain), PromptTuningConfig(n_tokens=3))
    extra = torch.randn(2, 16) * 0.5
    x = ids(B=1, T=4)
    got = model.generate(x, 6, prefix_embeddings=extra)
    expected = plain.generate(x, 6, prefix_embeddings=torch.cat([model.soft_prompt.weight.detach(), extra]))
    assert torch.equal(got, expected)
    assert not torch.equal(got, model.generate(x, 6))
    rows = torch.stack([extra, -extra])  # (B, P, C): a prefix of each row's own
    got = model.generate(ids(B=2, T=4), 6, prefix_embeddings=rows)
    for b in range(2):
        expected = plain.generate(ids(B=2, T=4)[b:b + 1], 6, prefix_embeddings=torch.cat([model.soft_prompt.weight.detach(), rows[b]]))
        assert torch.equal(got[b:b + 1], expected)


def test_prompt_inits():
    from minitune.tokenizer import get_tokenizer

    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("nano"))
    wte = model.transformer.wte.weight
    tokens = get_tokenizer("minitune").encode_ordinary("The market")
    text = apply_strategy(copy.deepcopy(model), PromptTuningConfig(n_tokens=5, init="text", init_text="The market"))
    assert isinstance(text, PromptTunedGPT)
    assert torch.equal(text.soft_prompt.weight, wte[[tokens[i % len(tokens)] for i in range(5)]])  # repeated to fill
    vocab = apply_strategy(copy.deepcopy(model), PromptTuningConfig(n_tokens=3, init="vocab"))
    assert all((wte == row).all(dim=1).any() for row in vocab.soft_prompt.weight)
    random = apply_strategy(copy.deepcopy(model), PromptTuningConfig(n_tokens=60, init="random"))
    assert random.soft_prompt.weight.std().item() == pytest.approx(wte.std().item(), rel=0.2)
