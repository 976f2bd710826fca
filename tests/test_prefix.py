"""Prefix tuning: a prefix made of the base's own keys and values, generation with and without the cache,
folding the training-time MLP, the cache's offset mask it relies on, and parity with PEFT's prefix tuning.

The parity tests against PEFT follow the method strategy_cases.py describes (transformers and peft are test
dependencies: these never skip).

Each test names, in its docstring, a broken implementation it catches. The properties every strategy
shares (counts, training steps, saving and loading) are in test_strategy_api.py.
"""

import copy
import json

import peft
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minitune.errors import ConfigError
from minitune.model import GPT, KVCache
from minitune.strategies import PrefixTuningConfig, apply_strategy, load_trainable, save_trainable, trainable_parameters
from minitune.strategies import trainable_state
from minitune.strategies.prefix import fold
from strategy_cases import (
    D, TOLERANCE, close, hf_gpt2, ids, large_base, peft_tensors, perturb_trainable, random_bases, random_ids, report,
    share_perturbed,
)


def base_cache(plain: GPT, tokens: torch.Tensor) -> KVCache:
    """The base's own keys and values after reading tokens (1, n)."""
    cache = KVCache(plain.config.n_layer, plain.config.block_size)
    plain.forward_embeddings(plain.embed(tokens), cache=cache)
    return cache


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_a_prefix_made_of_the_bases_own_cache_equals_the_base_reading_those_tokens(data):
    """Catches the table read in the wrong layout (keys and values swapped, heads or layers mixed up), the input
    placed at positions 0.. instead of after the prefix, and a causal mask that hides the prefix from the
    first input tokens."""
    plain = data.draw(random_bases())
    n = data.draw(st.integers(1, plain.config.block_size - 2))
    model = apply_strategy(copy.deepcopy(plain), PrefixTuningConfig(n_tokens=n, hidden=0))
    tokens, x = random_ids(plain, 4, B=1, T=n), random_ids(plain, 5, T=model.max_input_tokens)
    cache = base_cache(plain, tokens)
    c = plain.config
    # (L, 2, nh, n, hs) -> the table's (n, 2 L d) layout: per layer, keys then values, heads side by side
    kv = torch.stack([torch.stack([cache.k[i][0, :, :n], cache.v[i][0, :, :n]]) for i in range(c.n_layer)])
    with torch.no_grad():
        model.prefix.embedding.weight.copy_(kv.permute(3, 0, 1, 2, 4).reshape(n, -1))
    expected = plain(torch.cat([tokens.expand(2, -1), x], dim=1))[0][:, n:]
    assert close(model(x)[0], expected)


def test_prefix_generation_gives_the_same_tokens_with_and_without_the_cache():
    """Catches a generation cache that starts empty (the prefix forgotten after the first token, or never
    there), a context not shortened by the prefix, and rows of a batch that share one row's prefix copy."""
    plain = large_base()
    model = apply_strategy(copy.deepcopy(plain), PrefixTuningConfig(n_tokens=6, hidden=8)).eval()
    x = ids(B=3, T=5)
    with_cache = model.generate(x, 100)
    assert with_cache.shape == (3, 32 - 6)  # the context is full with the prefix in place
    assert torch.equal(with_cache, model.generate(x, 100, use_cache=False))
    for b in range(3):
        assert torch.equal(model.generate(x[b:b + 1], 100), with_cache[b:b + 1])
    assert not torch.equal(with_cache, plain.generate(x, 100)[:, :26])
    one = ids(B=1, T=1)  # a one-token prompt: the prefix must be there from the very first position
    assert not torch.equal(model(one)[0], plain(one)[0])
    assert torch.equal(model.generate(one, 8), model.generate(one, 8, use_cache=False))
    with pytest.raises(ConfigError, match="block_size"):
        model.generate(ids(T=27), 1)


def test_folding_the_mlp_keeps_the_outputs_and_saves_only_the_prefix(tmp_path):
    """Catches a fold that recomputes or re-initialises the table, keeps the MLP's tensors trainable or saved,
    or leaves the strategy saying hidden > 0 (the file would then not load onto a fresh base)."""
    plain = large_base()
    config = PrefixTuningConfig(n_tokens=4, hidden=8)
    model = apply_strategy(copy.deepcopy(plain), config)
    perturb_trainable(model)
    x = ids()
    before = model(x)[0]
    fold(model)
    assert torch.equal(model(x)[0], before)
    assert model.strategy == PrefixTuningConfig(n_tokens=4, hidden=0)
    assert set(trainable_state(model)) == {"prefix.embedding.weight"}
    assert trainable_parameters(model)[0] == 4 * 2 * 2 * 16  # n * 2 L d
    save_trainable(model, tmp_path)
    assert json.loads((tmp_path / "strategy.json").read_text())["tensors"] == {"prefix.embedding.weight": [4, 64]}
    assert torch.equal(load_trainable(copy.deepcopy(plain), tmp_path)(x)[0], before)
    assert fold(model) is model  # a plain prefix folds to itself


def test_a_cached_pass_of_several_tokens_after_cached_ones_equals_one_pass():
    """The KV cache's offset mask: catches SDPA's top-left causal triangle used after cached positions (the
    new tokens would not see the cached ones' tail) and the old refusal of chunked prompts."""
    plain = large_base()
    x = ids(T=12)
    cache = KVCache(plain.config.n_layer, plain.config.block_size)
    first, _ = plain.forward_embeddings(plain.embed(x[:, :5]), cache=cache)
    second, _ = plain.forward_embeddings(plain.embed(x[:, 5:]), cache=cache)
    assert close(torch.cat([first, second], dim=1), plain(x)[0])


# --- parity with PEFT ----------------------------------------------------------------------------------

def _prefix_parity(tmp_path, hidden: int):
    hf, base, base_logits = hf_gpt2(tmp_path)
    n = 4
    config = peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n, prefix_projection=hidden > 0,
                                     encoder_hidden_size=hidden or D)
    theirs = peft.get_peft_model(hf, config).eval()
    ours = apply_strategy(base, PrefixTuningConfig(n_tokens=n, hidden=hidden)).eval()
    mine = trainable_state(ours)
    renamed = {n.replace("prompt_encoder", "prefix").replace("transform", "mlp"): p
               for n, p in peft_tensors(theirs).items()}
    renamed = {k if k.endswith("bias") or k.endswith("weight") else k + ".weight": v for k, v in renamed.items()}
    share_perturbed(renamed, mine)
    x = ids()
    with torch.no_grad():
        return ours, theirs, theirs(x).logits, x, base_logits


def test_prefix_tuning_with_the_mlp_matches_peft_and_so_does_its_fold(tmp_path):
    """Catches the table's layout read differently from PEFT's (keys and values, heads, layers), positions
    that do not start after the prefix (as HF GPT-2 counts them after past keys and values), and a fold that
    changes the outputs."""
    ours, _, theirs_logits, x, base_logits = _prefix_parity(tmp_path, hidden=8)
    with torch.no_grad():
        assert report("prefix tuning (MLP)", ours(x)[0], theirs_logits, base_logits) < TOLERANCE
        assert report("prefix tuning (MLP, folded)", fold(ours)(x)[0], theirs_logits, base_logits) < TOLERANCE


def test_prefix_tuning_without_the_mlp_matches_peft(tmp_path):
    ours, _, theirs_logits, x, base_logits = _prefix_parity(tmp_path, hidden=0)
    with torch.no_grad():
        assert report("prefix tuning (plain)", ours(x)[0], theirs_logits, base_logits) < TOLERANCE


def test_prefix_generation_matches_greedy_decoding_through_peft(tmp_path):
    """Ours with and without the cache against greedy decoding that re-runs PEFT's forward pass for each token
    (not PEFT's generate: with transformers 5 it gives other tokens than its own forward pass does here).
    Catches a generation cache that loses the prefix after the first token."""
    ours, theirs, _, _, _ = _prefix_parity(tmp_path, hidden=8)
    x = ids(B=1, T=4)
    out = x
    with torch.no_grad():
        for _ in range(8):
            out = torch.cat([out, theirs(input_ids=out).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(ours.generate(x, 8), out)
    assert torch.equal(ours.generate(x, 8, use_cache=False), out)
