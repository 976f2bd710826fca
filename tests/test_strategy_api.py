"""The strategy API every strategy goes through (apply_strategy, counting, saving and loading the trainable
part, swapping task files, merging, the errors), as properties over random bases and every strategy's configs.

Each property names, in its docstring, a broken implementation it catches. Each strategy's own math is in
its file: test_full.py, test_lora.py, test_adapter.py, test_prompt.py, test_dora.py, test_ia3.py,
test_prefix.py, test_qlora.py (and test_nf4.py).
"""

import copy
import json
import re
import tempfile

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minitune.errors import CheckpointError, ConfigError
from minitune.model import GPT, GPTConfig, count_parameters
from minitune.strategies import (
    AdapterConfig, DoRAConfig, FullConfig, IA3Config, LoRAConfig, PrefixTuningConfig, PromptTuningConfig,
    QLoRAConfig, apply_strategy, base_unchanged, load_trainable, merge, save_trainable, trainable_parameters,
    trainable_report, trainable_state, unmerge,
)
from minitune.strategies.lora import lora_layers
from minitune.train import TrainConfig, make_optimizer
from strategy_cases import (
    base, base_weights_close, closed_form, ids, large_base, perturb_trainable, random_bases, random_configs,
    random_ids,
)


ALL = [FullConfig(), LoRAConfig(r=4, targets=("c_attn", "mlp.c_proj")), AdapterConfig(bottleneck=8),
       PromptTuningConfig(n_tokens=5)]


# --- every strategy ------------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_strategy_but_prompt_starts_bitwise_as_the_base(data):
    """Catches a LoRA B or an adapter up-projection initialised non-zero, or a wrongly placed identity; a DoRA
    magnitude not initialised to the weight's norms; an (IA)3 vector not initialised to ones. (Prompt and
    prefix tuning change the attention from the start; QLoRA starts as its 4-bit base, tested with it.)"""
    plain = data.draw(random_bases())
    config = data.draw(random_configs(plain.config, ("full", "lora", "adapter", "dora", "ia3")))
    x = random_ids(plain, 0)
    assert torch.equal(apply_strategy(copy.deepcopy(plain), config)(x)[0], plain(x)[0])


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_trainable_count_is_the_closed_form(data):
    """Catches a strategy that trains too much (a frozen tensor left trainable) or adds the wrong shapes."""
    plain = data.draw(random_bases())
    config = data.draw(random_configs(plain.config))
    added, trained_base = closed_form(plain.config, config)
    model = apply_strategy(copy.deepcopy(plain), config)
    assert trainable_parameters(model) == (added + trained_base, count_parameters(plain.config) + added)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_training_steps_move_only_trainable_tensors_and_all_of_them(data):
    """Catches a frozen tensor that still gets a gradient or moves, and a trainable one cut off from the loss.

    LoRA's A and an adapter's down-projection get no gradient while B / up are zero, so two steps run.
    Buffers count as frozen: QLoRA's 4-bit codes must come out bitwise as they went in. A ReLU adapter
    is left out: a narrow one can have every unit dead on a batch, and a dead unit rightly gets no gradient.
    """
    plain = data.draw(random_bases())
    config = data.draw(random_configs(plain.config))
    assume(getattr(config, "activation", None) != "relu")
    model = apply_strategy(plain.train(), config)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = make_optimizer(model, TrainConfig(lr=1e-2, weight_decay=0.0), torch.device("cpu"))
    for step in range(2):
        x = random_ids(model, step, B=3)
        _, loss = model(x, torch.roll(x, -1, dims=1))
        loss.backward()
        for n, p in model.named_parameters():
            assert (p.grad is not None) == p.requires_grad, n
        optimizer.step()
        optimizer.zero_grad()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"frozen {n} changed"
        else:
            assert not torch.equal(p, start[n]), f"trainable {n} did not move"
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_save_then_load_onto_a_fresh_base_gives_the_same_logits(data):
    """Catches a tensor left out of the file, a config field not restored, or values copied to the wrong name."""
    plain = data.draw(random_bases())
    config = data.draw(random_configs(plain.config))
    model = apply_strategy(copy.deepcopy(plain), config)
    perturb_trainable(model)
    with tempfile.TemporaryDirectory() as folder:
        save_trainable(model, folder)
        restored = load_trainable(copy.deepcopy(plain), folder)
    x = random_ids(model, 3)
    assert torch.equal(restored(x)[0], model(x)[0])
    assert restored.strategy == config


def test_file_sizes_peft_small_full_whole(tmp_path):
    sizes = {}
    for config in ALL:
        save_trainable(apply_strategy(base(n_embd=64, n_head=4), config), tmp_path / config.name)
        sizes[config.name] = (tmp_path / config.name / "trainable.safetensors").stat().st_size
    full_params = trainable_parameters(base(n_embd=64, n_head=4))[1]
    assert sizes["full"] >= 4 * full_params
    for name in ("lora", "adapter", "prompt"):
        assert sizes[name] < 0.2 * sizes["full"], name


def test_optimizer_state_is_exactly_the_trainable_tensors():
    for config in ALL:
        model = apply_strategy(base(), config)
        optimizer = make_optimizer(model, TrainConfig(), torch.device("cpu"))
        x = ids()
        model(x, x)[1].backward()
        optimizer.step()
        trainable = [p for p in model.parameters() if p.requires_grad]
        assert set(map(id, optimizer.state)) == set(map(id, trainable))
        for p in trainable:  # AdamW keeps two moments shaped like the parameter (plus a step count)
            state = optimizer.state[p]
            assert state["exp_avg"].shape == p.shape and state["exp_avg_sq"].shape == p.shape


def test_report_counts_are_the_models_counts():
    """Catches a report that counts tied or frozen tensors wrongly, or computes the percentage the wrong way up."""
    config = LoRAConfig(r=2, targets=("attn.c_attn",))
    model = apply_strategy(base(), config)
    numbers = re.findall(r"[\d,.]+", trainable_report(model).replace(" || ", " "))
    trainable, total, percent = (float(n.replace(",", "")) for n in numbers)
    added, _ = closed_form(model.config, config)
    assert (trainable, total) == (added, count_parameters(model.config) + added)
    assert percent == pytest.approx(100 * added / (count_parameters(model.config) + added), abs=0.005)


# --- merging and swapping task files -------------------------------------------------------------------

def test_loading_a_task_file_onto_a_merged_model_serves_the_new_update_and_keeps_the_base(tmp_path):
    """Catches tensors swapped under a merged weight: the model kept answering with the old update, and a
    later unmerge subtracted the new one from a weight holding the old, corrupting the frozen base."""
    plain = base()
    a, b = (apply_strategy(copy.deepcopy(plain), LoRAConfig(r=2)) for _ in range(2))
    perturb_trainable(a)
    perturb_trainable(b)
    save_trainable(b, tmp_path / "b")
    served = merge(copy.deepcopy(a))
    served = load_trainable(served, tmp_path / "b")
    x = ids()
    assert all(layer.merged for layer in lora_layers(served).values())
    assert torch.allclose(served(x)[0], b(x)[0], atol=1e-5)
    unmerge(served)
    assert base_weights_close(served, plain, 1e-5)


def test_switching_task_adapters_on_one_frozen_base(tmp_path):
    a = apply_strategy(base(), LoRAConfig(r=2))
    b = apply_strategy(base(), LoRAConfig(r=2))
    with torch.no_grad():
        for layer in lora_layers(a).values():
            layer.lora_B.fill_(0.1)
        for layer in lora_layers(b).values():
            layer.lora_B.fill_(-0.2)
    save_trainable(a, tmp_path / "a")
    save_trainable(b, tmp_path / "b")
    served = load_trainable(base(), tmp_path / "a")
    x = ids()
    assert torch.equal(served(x)[0], a(x)[0])
    served = load_trainable(served, tmp_path / "b")
    assert torch.equal(served(x)[0], b(x)[0])
    with pytest.raises(CheckpointError, match="carries"):
        save_trainable(apply_strategy(base(), LoRAConfig(r=4)), tmp_path / "c")
        load_trainable(served, tmp_path / "c")


# --- one strategy per model, one base per file ---------------------------------------------------------

def test_a_base_that_was_prompt_tuned_refuses_a_second_strategy():
    """Catches the guard bypassed through prompt tuning: the wrapper shares the base's modules, so LoRA on
    the base would also change the prompt-tuned model, which would then train and save LoRA tensors."""
    plain = base()
    prompted = apply_strategy(plain, PromptTuningConfig(n_tokens=3))
    with pytest.raises(ConfigError, match="already has the 'prompt' strategy"):
        apply_strategy(plain, LoRAConfig())
    assert set(trainable_state(prompted)) == {"soft_prompt.weight"}
    with pytest.raises(ConfigError, match="already has the 'lora' strategy"):
        apply_strategy(apply_strategy(base(), LoRAConfig()), PromptTuningConfig())


def test_a_file_is_refused_on_a_base_with_other_weights_unless_asked(tmp_path):
    """Catches load_trainable checking only the base's config: same shapes, other weights, silently wrong."""
    model = apply_strategy(base(seed=0), LoRAConfig(r=2))
    perturb_trainable(model)
    save_trainable(model, tmp_path)
    with pytest.raises(CheckpointError, match="other weights"):
        load_trainable(base(seed=1), tmp_path)
    with pytest.raises(CheckpointError, match="other weights"):  # swapping onto a model of another base too
        load_trainable(apply_strategy(base(seed=1), LoRAConfig(r=2)), tmp_path)
    forced = load_trainable(base(seed=1), tmp_path, check_base=False)
    assert torch.equal(forced.transformer.h[0].attn.c_attn.lora_B, model.transformer.h[0].attn.c_attn.lora_B)
    assert load_trainable(base(seed=0), tmp_path).strategy == model.strategy


def test_base_unchanged_sees_one_changed_value_and_a_missing_tensor():
    """Catches a check that passes when a tensor differs, or when the model lacks one of the base's tensors."""
    plain = base()
    assert base_unchanged(apply_strategy(copy.deepcopy(plain), LoRAConfig(r=2)), plain)
    changed = copy.deepcopy(plain)
    with torch.no_grad():
        changed.transformer.h[1].mlp.c_fc.weight[0, 0] += 1e-3
    assert not base_unchanged(changed, plain)
    assert not base_unchanged(apply_strategy(copy.deepcopy(plain), PromptTuningConfig(n_tokens=2)), base(n_layer=3))


def test_strategies_apply_to_a_model_on_the_meta_device():
    """Counting memory for big shapes builds the model on the meta device: no weights, only shapes."""
    from minitune.strategies import LoRAConfig, apply_strategy, trainable_parameters

    with torch.device("meta"):
        model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32))
    lora = apply_strategy(model, LoRAConfig(r=2))
    assert trainable_parameters(lora)[0] == 2 * 2 * (32 + 96)


# --- bad input -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("make,match", [
    (lambda: LoRAConfig(r=0), "r must be"),
    (lambda: LoRAConfig(r=True), "r must be"),
    (lambda: LoRAConfig(alpha=True), "alpha"),
    (lambda: LoRAConfig(alpha=float("nan")), "alpha"),
    (lambda: LoRAConfig(dropout=False), "dropout"),
    (lambda: LoRAConfig(rslora=1), "rslora"),
    (lambda: LoRAConfig(init="xavier"), "init"),
    (lambda: LoRAConfig(targets=()), "targets"),
    (lambda: AdapterConfig(bottleneck=True), "bottleneck"),
    (lambda: AdapterConfig(activation="tanh"), "activation"),
    (lambda: AdapterConfig(train_layernorm="yes"), "train_layernorm"),
    (lambda: PromptTuningConfig(n_tokens=True), "n_tokens"),
    (lambda: PromptTuningConfig(init="zeros"), "init"),
    (lambda: LoRAConfig(alpha=0), "alpha"),
    (lambda: AdapterConfig(bottleneck=0), "bottleneck"),
    (lambda: AdapterConfig(placement="middle"), "placement"),
    (lambda: PromptTuningConfig(n_tokens=0), "n_tokens"),
    (lambda: PromptTuningConfig(init="text"), "init_text"),
])
def test_bad_configs(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_lora_config_errors_still_name_lora_and_the_new_configs_name_themselves():
    """Catches the shared validation naming the wrong class (a DoRA user told about LoRAConfig)."""
    with pytest.raises(ConfigError, match=r"^LoRAConfig\.r"):
        LoRAConfig(r=0)
    with pytest.raises(ConfigError, match=r"^DoRAConfig\.alpha"):
        DoRAConfig(alpha=0)
    with pytest.raises(ConfigError, match=r"^QLoRAConfig\.quant_block"):
        QLoRAConfig(quant_block=63)
    with pytest.raises(ConfigError, match=r"^QLoRAConfig\.double_quant"):
        QLoRAConfig(double_quant=1)
    for hidden in (True, False, -1, 2.0):
        with pytest.raises(ConfigError, match=r"^PrefixTuningConfig\.hidden"):
            PrefixTuningConfig(hidden=hidden)
    with pytest.raises(ConfigError, match=r"^PrefixTuningConfig\.n_tokens"):
        PrefixTuningConfig(n_tokens=0)
    with pytest.raises(ConfigError, match="leaves no room"):
        apply_strategy(large_base(), PrefixTuningConfig(n_tokens=32))
    with pytest.raises(ConfigError, match=r"DoRAConfig\.r \(17\) must be at most"):
        apply_strategy(large_base(), DoRAConfig(r=17))
    with pytest.raises(ConfigError, match=r"QLoRAConfig\.targets entry 'q_proj'"):
        apply_strategy(large_base(), QLoRAConfig(targets=("q_proj",)))


def test_bad_applications():
    with pytest.raises(ConfigError, match=r"r \(17\) must be at most min\(in, out\) = 16"):
        apply_strategy(base(), LoRAConfig(r=17))
    with pytest.raises(ConfigError, match="'q_proj' matches no layer; layers are .*attn.c_attn"):
        apply_strategy(base(), LoRAConfig(targets=("q_proj",)))
    with pytest.raises(ConfigError, match="'proj' matches no layer"):  # a target names whole path components
        apply_strategy(base(), LoRAConfig(targets=("proj",)))
    with pytest.raises(ConfigError, match="leaves no room in block_size"):
        apply_strategy(base(), PromptTuningConfig(n_tokens=32))
    with pytest.raises(ConfigError, match="already has the 'lora' strategy"):
        apply_strategy(apply_strategy(base(), LoRAConfig()), AdapterConfig())


def test_an_unknown_strategy_name_lists_the_known_ones():
    from minitune.strategies import config_from_dict

    with pytest.raises(ConfigError, match=r"unknown strategy 'lorra'; known: \['adapter', 'dora'"):
        config_from_dict("lorra", {})


def test_a_config_file_holding_no_strategy_and_an_unknown_config_are_named(tmp_path):
    """Catches the error that says which file holds no valid strategy, or which config type is unknown, lost."""
    save_trainable(apply_strategy(base(), LoRAConfig(r=2)), tmp_path)
    meta = json.loads((tmp_path / "strategy.json").read_text())
    (tmp_path / "strategy.json").write_text(json.dumps({**meta, "config": {"rank": 2}}))
    with pytest.raises(CheckpointError, match=r"strategy.json holds no valid strategy"):
        load_trainable(base(), tmp_path)
    with pytest.raises(ConfigError, match="unknown strategy config object; use one of"):
        apply_strategy(base(), object())


def test_a_damaged_or_strategyless_save_is_refused(tmp_path):
    """Catches the checksum written or read under another key (a damaged file would load), and a model
    without a strategy failing with an AttributeError instead of saying what to do."""
    with pytest.raises(ConfigError, match="no strategy applied"):
        save_trainable(base(), tmp_path / "none")
    save_trainable(apply_strategy(base(), LoRAConfig(r=2)), tmp_path)
    weights = tmp_path / "trainable.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit pattern in the last tensor's bytes
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_trainable(base(), tmp_path)


@pytest.mark.parametrize("change", ["drop", "add"])
def test_a_file_missing_or_adding_a_tensor_is_refused_by_name(tmp_path, change):
    """Catches a fit check that needs every kind of mismatch at once, or that looks up a missing tensor."""
    from minitune.checkpoint import load_tensors, save_tensors, sha256_file

    save_trainable(apply_strategy(base(), LoRAConfig(r=2)), tmp_path)
    t = load_tensors(tmp_path / "trainable.safetensors")
    name = sorted(t)[0]
    if change == "drop":
        del t[name]
    else:
        name = "transformer.h.0.attn.c_attn.lora_C"
        t[name] = torch.zeros(2, 2)
    save_tensors(tmp_path / "trainable.safetensors", t)
    meta = json.loads((tmp_path / "strategy.json").read_text())
    meta["sha256"] = sha256_file(tmp_path / "trainable.safetensors")
    (tmp_path / "strategy.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=("missing" if change == "drop" else "unexpected") + fr" \['{name}'\]"):
        load_trainable(base(), tmp_path)


def test_load_onto_a_different_base_is_refused_and_leaves_the_model_unchanged(tmp_path):
    save_trainable(apply_strategy(base(), LoRAConfig(r=2)), tmp_path / "lora")
    other = base(n_embd=32)
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(CheckpointError, match=r"another base.*'n_embd': \(16, 32\)") as refused:
        load_trainable(other, tmp_path / "lora")
    assert "vocab_size" not in str(refused.value)  # only the fields that differ are listed
    # same config, tampered tensors: a shape mismatch names the tensor
    from minitune.checkpoint import load_tensors, save_tensors, sha256_file
    t = load_tensors(tmp_path / "lora" / "trainable.safetensors")
    name = sorted(t)[0]
    t[name] = torch.zeros(3, 3)
    save_tensors(tmp_path / "lora" / "trainable.safetensors", t)
    meta = json.loads((tmp_path / "lora" / "strategy.json").read_text())  # a consistent file, wrong shapes
    meta["sha256"] = sha256_file(tmp_path / "lora" / "trainable.safetensors")
    (tmp_path / "lora" / "strategy.json").write_text(json.dumps(meta))
    fresh = base()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(CheckpointError, match=f"trainable.safetensors does not fit.*wrong shapes.*{name}"):
        load_trainable(fresh, tmp_path / "lora")
    assert getattr(fresh, "strategy", None) is None
    assert not lora_layers(fresh)
    assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items())


# --- the command line ----------------------------------------------------------------------------------

@pytest.mark.parametrize("strategy", ["dora", "ia3", "prefix", "qlora"])
def test_finetune_cli_trains_saves_and_generates_with_each_newer_strategy(strategy, nano_run, tmp_path, capsys):
    """Catches a flag not wired to its config, and a strategy that cannot go through the one training loop,
    the run folder, open_run and generation."""
    from minitune.cli import main, parser, strategy_from_args
    from minitune.finetune import open_run

    flags = {"dora": ["--r", "2"], "ia3": [], "prefix": ["--n-tokens", "3", "--prefix-hidden", "4"],
             "qlora": ["--r", "2", "--quant-block", "32", "--no-double-quant"]}[strategy]
    expected = {"dora": DoRAConfig(r=2), "ia3": IA3Config(), "prefix": PrefixTuningConfig(n_tokens=3, hidden=4),
                "qlora": QLoRAConfig(r=2, quant_block=32, double_quant=False)}[strategy]
    assert strategy_from_args(parser().parse_args(["finetune", "--strategy", strategy, *flags])) == expected
    out = tmp_path / strategy
    assert main(["finetune", "--base", str(nano_run), "--task", "sentiment", "--strategy", strategy, *flags,
                 "--out", str(out), "--max-steps", "2", "--batch-size", "4", "--device", "cpu"]) == 0
    model, _, meta = open_run(out)
    assert meta["strategy"] == strategy and model.strategy == expected
    assert main(["generate", "--run", str(out), "--prompt", "Review: It broke.\nSentiment:",
                 "--max-new-tokens", "3"]) == 0
    capsys.readouterr()
