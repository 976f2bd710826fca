"""`minitune bench`: every field present, finite and positive; the JSON says what the run returned.

No assertion on speed: timings depend on the machine and on whatever else it runs.
"""

import argparse
import json
import math

import pytest

from minitune.bench import SIZES, add_parser, flop_counts, flops_per_token, parse_sizes
from minitune.errors import ConfigError
from minitune.model import GPT, GPTConfig, count_parameters
from minitune.strategies import FullConfig, LoRAConfig, PromptTuningConfig, apply_strategy

FIELDS = {
    "training": ["ms_per_step", "tokens_per_s", "flops_per_token", "flops_per_s", "mfu", "trainable_params",
                 "flop_params", "rounds_ms"],
    "inference": ["ms", "vs_base", "seq_len", "batch", "rounds_ms"],
    "generation": ["seconds", "tokens_per_s", "new_tokens", "prompt_tokens", "runs", "rounds_s"],
    "memory": ["trainable_params", "params", "measured", "formula"],
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minitune")
    add_parser(p.add_subparsers(dest="command", required=True))
    return p


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One quick run through the CLI handler: (what run_bench returned, the JSON file it wrote)."""
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    args = _parser().parse_args(["bench", "--quick", "--json", str(path), "--device", "cpu"])
    return args.handler(args), path


def _positive_numbers(value, where: str) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _positive_numbers(v, f"{where}.{k}")
    elif isinstance(value, list):
        assert value, f"{where} is empty"
        for i, v in enumerate(value):
            _positive_numbers(v, f"{where}[{i}]")
    else:
        assert isinstance(value, (int, float)) and not isinstance(value, bool), where
        assert math.isfinite(value) and value > 0, f"{where} = {value}"


def _check(result: dict) -> None:
    for section, fields in FIELDS.items():
        rows = result[section]
        assert rows, section
        for row in rows:
            for f in fields:
                _positive_numbers(row[f], f"{section}.{f}")
    assert {r["strategy"] for r in result["training"]} == {"full", "lora", "adapter", "prompt"}
    assert {r["strategy"] for r in result["memory"]} == {"full", "lora", "adapter", "prompt"}
    assert {r["case"] for r in result["inference"]} == {"base", "lora unmerged", "lora merged"}
    assert {r["case"] for r in result["generation"]} == {"with KV cache", "without cache"}
    _positive_numbers(result["matmul"]["peak_flops_per_s"], "matmul.peak")
    assert len(result["targets"]) == 7
    for t in result["targets"]:
        _positive_numbers(t["value"], t["name"])
        assert isinstance(t["met"], bool) and t["op"] in ("<=", ">=")
    for r in result["memory"]:  # the formula accounts for every byte
        assert r["measured"] == r["formula"]


def test_quick_run_returns_every_field(quick):
    result, _ = quick
    assert result["settings"]["sizes"] == ["nano"]
    _check(result)


def test_json_written_by_the_handler_has_the_same_fields(quick):
    result, path = quick
    saved = json.loads(path.read_text())
    _check(saved)
    assert saved.keys() == result.keys()
    for section in FIELDS:
        assert [sorted(r) for r in saved[section]] == [sorted(r) for r in result[section]]
    assert saved["training"][0]["ms_per_step"] == pytest.approx(result["training"][0]["ms_per_step"])


def test_flops_full_is_palms_6n_and_peft_counts_weight_gradients_only_for_trainable():
    cfg = SIZES["nano"]
    T, attention = cfg.block_size, 12 * cfg.n_layer * cfg.n_embd * cfg.block_size
    N = count_parameters(cfg) - cfg.block_size * cfg.n_embd  # everything but wpe; tied wte once
    full = apply_strategy(GPT(cfg), FullConfig())
    assert flop_counts(full) == (N, N)
    assert flops_per_token(full, T)[0] == 6 * N + attention
    lora = apply_strategy(GPT(cfg), LoRAConfig(r=8))
    n_lora = cfg.n_layer * 8 * (cfg.n_embd + 3 * cfg.n_embd)
    assert flop_counts(lora) == (N + n_lora, n_lora)
    assert flops_per_token(lora, T)[0] == 4 * (N + n_lora) + 2 * n_lora + attention
    prompt = apply_strategy(GPT(cfg), PromptTuningConfig(n_tokens=4))
    assert flop_counts(prompt) == (N, 0)  # the soft prompt is concatenated, not multiplied


def test_sizes_are_parsed_and_checked():
    assert parse_sizes("tiny, large") == ["tiny", "large"]
    assert SIZES["large"] == GPTConfig(vocab_size=2048, block_size=256, n_layer=6, n_head=6, n_embd=384)
    with pytest.raises(ConfigError):
        parse_sizes("tiny,huge")


def test_cli_flags_and_defaults():
    args = _parser().parse_args(["bench"])
    assert (args.sizes, args.rounds, args.batch_size, args.json, args.quick) == ("tiny,large", 5, 8, None, False)
    assert callable(args.handler)
