"""GPT-2 model: shapes, causality, parameter count, KV cache, the embedding seam, bad input."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minitune.errors import ConfigError
from minitune.model import GPT, GPTConfig, PRESETS, count_parameters


def nano(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.from_preset("nano", **kw)).eval()


def test_shapes_and_gpt2_names():
    model = nano()
    idx = torch.randint(0, 2048, (3, 17))
    logits, loss = model(idx)
    assert logits.shape == (3, 17, 2048) and loss is None
    names = set(dict(model.named_parameters()))
    for n in ["transformer.wte.weight", "transformer.wpe.weight", "transformer.h.1.ln_1.weight",
              "transformer.h.1.attn.c_attn.weight", "transformer.h.1.attn.c_proj.bias",
              "transformer.h.0.ln_2.bias", "transformer.h.0.mlp.c_fc.weight", "transformer.h.0.mlp.c_proj.weight",
              "transformer.ln_f.weight"]:
        assert n in names
    assert model.lm_head.weight is model.transformer.wte.weight  # tied
    assert isinstance(model.transformer.h[0].attn.c_attn, torch.nn.Linear)
    assert model.transformer.h[0].attn.c_attn.weight.shape == (3 * 32, 32)


@pytest.mark.parametrize("T,cut", [(20, 12), (2, 1)])  # T = 2: the shortest input that needs the mask
def test_future_tokens_never_change_earlier_logits(T, cut):
    model = nano()
    idx = torch.randint(0, 2048, (2, T))
    logits, _ = model(idx)
    changed = idx.clone()
    changed[:, cut:] = (idx[:, cut:] + 1 + torch.randint(0, 2046, (2, T - cut))) % 2048
    logits2, _ = model(changed)
    assert torch.equal(logits[:, :cut], logits2[:, :cut])
    assert not torch.allclose(logits[:, cut:], logits2[:, cut:])


def test_attention_dropout_acts_in_training_only():
    """Catches attention dropout dropped from training or left on in eval (the other dropouts are set to 0,
    so only attention's can make two passes differ)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.5))
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    idx = torch.randint(0, 64, (2, 10))
    model.train()
    assert not torch.equal(model(idx)[0], model(idx)[0])
    model.eval()
    assert torch.equal(model(idx)[0], model(idx)[0])


@settings(max_examples=25, deadline=None)
@given(layers=st.integers(1, 3), heads=st.integers(1, 4), head_size=st.integers(1, 8),
       vocab=st.integers(1, 300), block=st.integers(1, 64), bias=st.booleans())
def test_parameter_count_matches_closed_form(layers, heads, head_size, vocab, block, bias):
    config = GPTConfig(vocab_size=vocab, block_size=block, n_layer=layers, n_head=heads,
                       n_embd=heads * head_size, bias=bias)
    assert GPT(config).num_parameters() == count_parameters(config)


def test_tiny_preset_is_about_a_million_parameters():
    assert 0.8e6 < count_parameters(GPTConfig.from_preset("tiny")) < 1.5e6


def test_residual_projections_scaled_at_init():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=512, block_size=16, n_layer=8, n_head=4, n_embd=256))
    std_proj = model.transformer.h[0].mlp.c_proj.weight.std().item()
    std_fc = model.transformer.h[0].mlp.c_fc.weight.std().item()
    assert std_fc == pytest.approx(0.02, rel=0.05)
    assert std_proj == pytest.approx(0.02 / 4, rel=0.05)  # 1/sqrt(2 * 8)


def test_loss_ignores_masked_targets():
    model = nano()
    idx = torch.randint(0, 2048, (2, 10))
    targets = torch.randint(0, 2048, (2, 10))
    masked = targets.clone()
    masked[:, :6] = -100
    logits, loss = model(idx, masked)
    expected = torch.nn.functional.cross_entropy(logits[:, 6:].reshape(-1, 2048), targets[:, 6:].reshape(-1))
    assert torch.allclose(loss, expected, atol=1e-6)


def test_forward_embeddings_is_the_same_model():
    model = nano()
    idx = torch.randint(0, 2048, (2, 9))
    assert torch.equal(model(idx)[0], model.forward_embeddings(model.transformer.wte(idx))[0])


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), prompt_len=st.integers(1, 20), temperature=st.sampled_from([0.0, 0.8]))
def test_kv_cache_generation_equals_uncached(seed, prompt_len, temperature):
    model = nano()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 2048, (2, prompt_len), generator=g)
    outs = []
    for use_cache in (True, False):
        gen = torch.Generator().manual_seed(seed)
        outs.append(model.generate(idx, 30, temperature=temperature, top_k=50, use_cache=use_cache, generator=gen))
    assert outs[0].shape == (2, prompt_len + 30)
    assert torch.equal(outs[0], outs[1])


def test_generation_with_prefix_embeddings_matches_cached_and_uncached():
    model = nano()
    prefix = torch.randn(5, 32) * 0.1
    idx = torch.randint(0, 2048, (1, 4))
    a = model.generate(idx, 12, prefix_embeddings=prefix)
    b = model.generate(idx, 12, prefix_embeddings=prefix, use_cache=False)
    assert torch.equal(a, b) and a.shape == (1, 16)


def test_generation_stops_at_stop_token_and_at_full_context():
    model = nano()
    idx = torch.randint(0, 2048, (1, 5))
    free = model.generate(idx, 10)
    stop = int(free[0, 7])  # the third generated token
    stopped = model.generate(idx, 10, stop_tokens=[stop])
    assert stopped.size(1) <= 8 and int(stopped[0, -1]) == stop
    full = model.generate(idx, 1000)
    assert full.size(1) == model.config.block_size


def test_bad_config_and_inputs_raise_clear_errors():
    with pytest.raises(ConfigError, match="n_embd.*divisible by n_head"):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="unknown preset"):
        GPTConfig.from_preset("huge")
    with pytest.raises(ConfigError, match="n_layer"):
        GPTConfig(n_layer=0)
    model = nano()
    with pytest.raises(ConfigError, match=f"sequence of {PRESETS['nano']['block_size'] + 1} tokens is longer"):
        model(torch.zeros(1, PRESETS["nano"]["block_size"] + 1, dtype=torch.long))
    with pytest.raises(ConfigError, match=r"token id 2048 is outside the vocabulary.*\[0, 2047\]"):
        model(torch.tensor([[0, 1, 2048]]))  # names the bad id, not the valid 0 before it
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        model(torch.tensor([[-1]]))
    with pytest.raises(ConfigError, match="prompt of"):
        model.generate(torch.zeros(1, 65, dtype=torch.long), 1)


def test_sampling_follows_softmax_of_logits_over_temperature():
    """Catches logits multiplied by the temperature instead of divided, or a softmax over the wrong axis."""
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    g = torch.Generator().manual_seed(0)
    for temperature in (0.5, 2.0):
        draws = torch.stack([GPT._pick(logits, temperature, None, g) for _ in range(4000)]).flatten()
        freq = torch.bincount(draws, minlength=4).float() / len(draws)
        expected = torch.softmax(logits[0] / temperature, dim=0)
        assert torch.allclose(freq, expected, atol=0.03), (temperature, freq, expected)


def test_top_k_keeps_exactly_the_k_best_tokens():
    """Catches the k-th best token cut too (`<=` for `<`), top-k ignored, or k read off the wrong axis."""
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.9, -1.0], [5.0, 0.0, 4.9, 1.0, 2.0]])
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([GPT._pick(logits, 1.0, 2, g) for _ in range(500)])  # (draws, B)
    assert set(draws[:, 0].tolist()) == {1, 3} and set(draws[:, 1].tolist()) == {0, 2}
    assert torch.equal(GPT._pick(logits, 1.0, 1, g), logits.argmax(dim=-1))
    assert set(torch.stack([GPT._pick(logits, 1.0, 50, g) for _ in range(500)])[:, 0].tolist()) == {0, 1, 2, 3, 4}


def test_a_prefix_in_another_dtype_is_cast_to_the_models():
    """Catches the cast dropped: a float64 prefix would promote the whole pass to float64 and fail."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, block_size=16, n_layer=1, n_head=2, n_embd=8)).eval()
    x = torch.randint(0, 32, (1, 3))
    prefix = torch.randn(2, 8)
    assert torch.equal(model.generate(x, 4, prefix_embeddings=prefix.double()), model.generate(x, 4, prefix_embeddings=prefix))


def test_from_dict_names_unknown_fields():
    """Catches unknown keys reaching the dataclass (a TypeError that names nothing useful)."""
    with pytest.raises(ConfigError, match=r"unknown GPTConfig fields \['n_ctx'\]"):
        GPTConfig.from_dict({**GPTConfig().to_dict(), "n_ctx": 1024})
    assert GPTConfig.from_dict(GPTConfig(n_layer=3).to_dict()) == GPTConfig(n_layer=3)


def _generate_checking_every_token(model: GPT, idx: torch.Tensor, n: int, stops: list[int], seed: int) -> torch.Tensor:
    """The reference: sampling, the whole sequence re-run each step, the stop test read after every token."""
    g = torch.Generator().manual_seed(seed)
    out = idx
    done = torch.zeros(idx.size(0), dtype=torch.bool)
    for _ in range(min(n, model.config.block_size - idx.size(1))):
        next_id = GPT._pick(model(out)[0][:, -1].float(), 1.0, None, g)
        next_id = torch.where(done, out[:, -1], next_id)
        done |= torch.isin(next_id, torch.tensor(stops))
        out = torch.cat([out, next_id[:, None]], dim=1)
        if bool(done.all()):
            break
    return out


@pytest.mark.parametrize("finish_at", [3, 15, 16, 17, 40])
def test_stop_read_every_few_tokens_returns_what_a_per_token_check_returns(finish_at):
    """Catches the tokens generated between the last row's stop and the next read kept (a longer result),
    the cut one position off, or finished rows not repeating their stop token."""
    model = nano()
    idx = torch.randint(0, 2048, (3, 4), generator=torch.Generator().manual_seed(finish_at))
    free = model.generate(idx, 50, temperature=1.0, generator=torch.Generator().manual_seed(0))
    # row r stops at its token number finish[r] (or sooner, on another row's stop token)
    finish = [finish_at, max(1, finish_at // 2), 1]
    stops = [int(free[r, 4 + f - 1]) for r, f in enumerate(finish)]
    expected = _generate_checking_every_token(model, idx, 50, stops, seed=0)
    assert expected.size(1) == 4 + finish_at  # the last row stopped where planned: the cut is exercised
    assert torch.isin(expected[:, -1], torch.tensor(stops)).all()  # every row ends on a stop token
    for use_cache in (True, False):
        g = torch.Generator().manual_seed(0)
        got = model.generate(idx, 50, temperature=1.0, stop_tokens=stops, use_cache=use_cache, generator=g)
        assert torch.equal(got, expected)


class _HostReads:
    """Counts tensor -> Python conversions (int, bool, float, .item()): each one waits for a GPU."""

    def __init__(self, monkeypatch):
        self.n = 0
        for name in ("__int__", "__bool__", "__float__", "item"):
            original = getattr(torch.Tensor, name)

            def counted(t, *a, _original=original, **k):
                self.n += 1
                return _original(t, *a, **k)

            monkeypatch.setattr(torch.Tensor, name, counted)


@pytest.mark.parametrize("use_cache", [True, False])
def test_generation_reads_the_device_a_fixed_number_of_times_not_once_per_token(monkeypatch, use_cache):
    """Catches the vocabulary check run on every generated token, or the stop test read after each one:
    either makes host reads grow with the number of new tokens (a GPU sync per token)."""
    model = nano()
    idx = torch.randint(0, 2048, (2, 3))
    reads = _HostReads(monkeypatch)
    counts = {}
    for n in (16, 48):
        reads.n = 0
        out = model.generate(idx, n, stop_tokens=[2048 - 1], use_cache=use_cache)
        if out.size(1) < 3 + n:
            pytest.skip("a row produced the stop token; the count below assumes none does")
        counts[n] = reads.n
    # the prompt's check and the final stop test, plus one stop read per STOP_CHECK_EVERY (16) tokens
    assert counts[48] - counts[16] == 2


def test_generated_ids_skip_the_vocabulary_check(monkeypatch):
    """Catches embed() (which checks ids against the vocabulary) called on generated tokens: once per call."""
    model = nano()
    calls = []
    original = GPT.embed
    monkeypatch.setattr(GPT, "embed", lambda self, idx: calls.append(idx.shape) or original(self, idx))
    for use_cache in (True, False):
        calls.clear()
        model.generate(torch.randint(0, 2048, (1, 5)), 20, use_cache=use_cache)
        assert calls == [torch.Size([1, 5])]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_generation_on_a_gpu_synchronises_a_fixed_number_of_times():
    """What the host-read count stands in for, measured by CUDA itself: a sync inside an op (a hidden
    .item(), a data-dependent shape) would make the count grow with the number of new tokens."""
    import warnings

    model = nano().cuda()
    idx = torch.randint(0, 2048, (2, 3), device="cuda")
    counts = {}
    for n in (16, 48):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                out = model.generate(idx, n, stop_tokens=[2048 - 1])
            finally:
                torch.cuda.set_sync_debug_mode(0)
        if out.size(1) < 3 + n:
            pytest.skip("a row produced the stop token; the count below assumes none does")
        counts[n] = sum("synchroniz" in str(w.message) for w in caught)
    assert counts[48] - counts[16] == 2
