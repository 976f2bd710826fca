"""`minitune bench`: every field present, finite and positive; the files say what the run returned; the
plan for each device, the FLOP and MFU arithmetic and the targets checked against hand counts.

No assertion on speed: timings depend on the machine and on whatever else it runs. A GPU's plan is
checked without one: bench_sizes takes the device's name and its free memory.
"""

import argparse
import json
import math

import pytest

import torch

from minitune.bench import (SIZES, add_parser, bench_sizes, check_targets, flop_counts, flops_per_token, mfu,
                            parse_sizes)
from minitune.bench.profile import kind_of
from minitune.bench.sizes import fit_batch, training_bytes
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
    """One quick run through the CLI handler: (what it returned, the JSON file it wrote, its --out folder)."""
    folder = tmp_path_factory.mktemp("bench")
    path = folder / "bench.json"
    args = _parser().parse_args(["bench", "--quick", "--json", str(path), "--device", "cpu", "--profile",
                                 "--out", str(folder / "out")])
    return args.handler(args), path, folder / "out"


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
    result, _, _ = quick
    assert result["settings"]["sizes"] == ["nano"]
    _check(result)


def test_json_written_by_the_handler_has_the_same_fields(quick):
    result, path, _ = quick
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
    assert (args.sizes, args.rounds, args.batch_size, args.json, args.out, args.quick) == \
        ("auto", 5, None, None, None, False)
    assert callable(args.handler)


# ------------------------------------------------------------------------------------ sizes per device
def test_a_gpu_gets_gpt2_small_at_8_x_1024_a_bf16_reference_and_the_bf16_lora_case():
    """Catches the GPU given the CPU's sizes (a card left idle), a device index breaking the choice, or a
    matmul reference too small (or in float32) to reach the card's peak."""
    for name in ("cuda", "cuda:1"):
        plan = bench_sizes(torch.device(name), free_bytes=80 * 10**9)
        assert plan.sizes == ("gpt2",) and plan.batch_size == 8
        assert plan.matmul_sizes[-1] == 8192 and plan.matmul_dtype == torch.bfloat16
        assert plan.strategies == ("full", "lora", "adapter", "prompt", "lora-bf16")
    assert SIZES["gpt2"] == GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
    assert count_parameters(SIZES["gpt2"]) == 124_439_808  # GPT-2 small, as published


def test_the_cpu_keeps_its_sizes_and_quick_mode_the_nano_model():
    """Catches the CPU (or MPS) handed the GPU's 124M plan, or quick mode running anything bigger."""
    for name in ("cpu", "mps"):
        plan = bench_sizes(torch.device(name))
        assert (plan.sizes, plan.batch_size, plan.matmul_sizes, plan.matmul_dtype) == \
            (("tiny", "large"), 8, (1024, 2048), torch.float32)
        assert "lora-bf16" not in plan.strategies
    assert bench_sizes("cpu", quick=True).sizes == bench_sizes("cuda", quick=True, free_bytes=10**10).sizes == ("nano",)


@pytest.mark.parametrize("free_gb", [1, 6, 12, 16, 24, 80])
def test_a_smaller_card_gets_the_largest_halving_of_8_that_fits(free_gb):
    """Catches a batch that does not fit the estimate, or one halved further than needed."""
    free = free_gb * 10**9
    batch = bench_sizes("cuda", free_bytes=free).batch_size
    assert batch in (1, 2, 4, 8)
    assert batch == 1 or training_bytes(SIZES["gpt2"], batch) <= 0.8 * free
    assert batch == 8 or training_bytes(SIZES["gpt2"], 2 * batch) > 0.8 * free
    assert fit_batch(SIZES["gpt2"], free, 8) == batch


# ------------------------------------------------------------------------------------- FLOPs and MFU
def test_gpt2_small_flops_and_mfu_by_hand():
    """6N + 12 L d T for GPT-2 small, counted by hand; MFU of a 48 ms step of 8 x 1024 tokens at 800 TFLOP/s.

    Catches wpe counted in N, the tied lm_head counted twice, the attention term's T or factor wrong, or
    MFU computed per sequence instead of per token."""
    with torch.device("meta"):  # the shape without 500 MB of weights
        model = apply_strategy(GPT(SIZES["gpt2"]), FullConfig())
    N = 124_439_808 - 1024 * 768  # all parameters but wpe
    assert flop_counts(model) == (N, N) == (123_653_376, 123_653_376)
    assert flops_per_token(model, 1024) == (741_920_256 + 113_246_208, "6N+12LdT")  # 6N + 12*12*768*1024
    # 855,166,464 FLOP/token x 8,192 tokens = 7.0055e12 FLOP; / 0.048 s = 145.95 TFLOP/s; / 800 = 18.24%
    assert mfu(855_166_464, 8 * 1024, 0.048, 800e12) == pytest.approx(0.18244, abs=1e-5)


# ------------------------------------------------------------------------------------------- targets
def _result(device_type: str, accelerator: str, ms: dict, size: str = "gpt2", batch: int = 8) -> dict:
    """A result with the numbers check_targets reads, for a device the test need not have."""
    mem = {"optimizer": 100, "gradients": 50}
    small = {"optimizer": 1, "gradients": 1}
    return {
        "settings": {"target_size": size, "device_type": device_type, "batch_size": batch},
        "machine": {"accelerator": accelerator} if accelerator else {},
        "training": [{"size": size, "strategy": k, "ms_per_step": v, "mfu": 0.3 if k == "full" else 0.2}
                     for k, v in ms.items()],
        "memory": [{"size": size, "strategy": "full", "measured": mem},
                   {"size": size, "strategy": "lora", "measured": small}],
        "inference": [{"size": size, "case": "lora merged", "vs_base": 1.0},
                      {"size": size, "case": "lora unmerged", "vs_base": 1.1}],
        "generation": [{"case": "with KV cache", "tokens_per_s": 600.0}, {"case": "without cache", "tokens_per_s": 100.0}],
    }


def test_gpu_targets_hold_lora_to_070_mfu_to_25_percent_and_an_h100_step_to_42_ms():
    """Catches the CPU's limits applied on a GPU, the bf16 LoRA case left unchecked, or the H100 step
    target applied to another card or batch."""
    targets = {t["name"]: t for t in check_targets(_result("cuda", "NVIDIA H100 80GB HBM3",
                                                           {"full": 40.0, "lora": 29.0, "lora-bf16": 27.6}))}
    assert targets["LoRA step time / full step time"]["limit"] == 0.70
    assert targets["LoRA step time / full step time"]["value"] == pytest.approx(0.725)
    assert not targets["LoRA step time / full step time"]["met"]
    assert targets["LoRA (bf16 base) step time / full step time"]["met"]  # 27.6 / 40 = 0.69
    assert targets["full fine-tuning MFU"]["limit"] == 0.25 and targets["full fine-tuning MFU"]["met"]
    assert targets["full step ms (H100, 8 x 1024)"]["value"] == 40.0 and targets["full step ms (H100, 8 x 1024)"]["met"]
    assert targets["generation tok/s, cache / no cache"]["value"] == pytest.approx(6.0)
    for accelerator, batch in (("NVIDIA A100-SXM4-40GB", 8), ("NVIDIA H100 80GB HBM3", 4)):
        names = {t["name"] for t in check_targets(_result("cuda", accelerator, {"full": 40.0, "lora": 28.0},
                                                          batch=batch))}
        assert "full step ms (H100, 8 x 1024)" not in names


def test_cpu_targets_are_the_seven_of_the_course():
    """Catches the GPU's limits leaking onto the CPU."""
    targets = check_targets(_result("cpu", "", {"full": 1000.0, "lora": 715.0}, size="large"))
    assert len(targets) == 7
    by = {t["name"]: t for t in targets}
    assert by["LoRA step time / full step time"]["limit"] == 0.72 and by["LoRA step time / full step time"]["met"]
    assert by["full fine-tuning MFU"]["limit"] == 0.75 and not by["full fine-tuning MFU"]["met"]


# ------------------------------------------------------------------------------------ files, profile
def test_out_folder_holds_the_json_and_a_markdown_table_with_the_same_numbers(quick):
    """Catches files missing from --out, or Markdown rows that are not the run's numbers."""
    result, _, out = quick
    assert json.loads((out / "bench.json").read_text())["training"] == json.loads(json.dumps(result["training"]))
    md = (out / "bench.md").read_text().split("## Training step")[1].split("## ")[0]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in md.splitlines() if line.startswith("| nano")]
    assert {cells[1]: float(cells[3]) for cells in rows} == {r["strategy"]: round(r["ms_per_step"], 1) for r in result["training"]}
    assert (out / "profile.txt").stat().st_size > 0


def test_profile_sorts_ops_into_kinds_and_full_fine_tuning_spends_more_on_adamw(quick):
    """Catches an op sorted into the wrong kind, or a breakdown that is not per step (wall far below it)."""
    assert [kind_of(op) for op in ("aten::mm", "aten::addmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
                                   "aten::_log_softmax_backward_data", "aten::_fused_adamw_", "aten::lerp_",
                                   "aten::_to_copy", "aten::gelu_backward", "aten::native_layer_norm",
                                   "aten::fill_", "aten::mul", "autograd::engine::evaluate_function: MmBackward0")] == \
        ["matmul", "matmul", "attention (SDPA)", "cross-entropy", "AdamW", "AdamW", "casts and copies", "GELU",
         "LayerNorm", "zero fills", "other aten ops", "framework"]
    profile = quick[0]["profile"]
    assert set(profile) == {"full", "lora"}
    for p in profile.values():
        total = sum(p["by_kind_ms"].values())
        assert 0 < total <= 1.05 * p["wall_ms"] and p["by_kind_ms"]["matmul"] > 0
    assert profile["full"]["by_kind_ms"]["AdamW"] > profile["lora"]["by_kind_ms"].get("AdamW", 0.0)


def test_the_gpu_plan_runs_end_to_end_on_the_cpu_at_nano_size(monkeypatch):
    """The GPU's extra cases (LoRA over a bf16 base, a fixed-length generation, a bf16 matmul reference)
    taken through timing, collection, targets and the report on the CPU. Catches a case the GPU would
    be first to hit: a row missing, bytes of a bf16 base miscounted, a target or report line that breaks."""
    from minitune.bench import run as bench_run
    from minitune.bench.report import format_markdown, format_report
    from minitune.bench.sizes import BenchPlan

    plan = BenchPlan(("nano",), 2, ("full", "lora", "adapter", "prompt", "lora-bf16"), (256,), torch.bfloat16,
                     "2 (a GPU's plan at nano size)", generation_tokens=8)
    monkeypatch.setattr(bench_run, "bench_sizes", lambda device, quick=False: plan)
    result = bench_run.run_bench(rounds=1, device="cpu", progress=False)
    assert [r["strategy"] for r in result["training"]] == list(plan.strategies)
    memory = {r["strategy"]: r for r in result["memory"]}
    bf16, lora = memory["lora-bf16"], memory["lora"]
    assert bf16["measured"] == bf16["formula"] and lora["measured"] == lora["formula"]
    trainable = bf16["trainable_params"]
    # the same parameters, the frozen ones at 2 bytes instead of 4
    assert lora["measured"]["weights"] - bf16["measured"]["weights"] == 2 * (bf16["params"] - trainable)
    assert [(g["case"], g["new_tokens"]) for g in result["generation"]] == \
        [("with KV cache", 58), ("without cache", 58), ("with KV cache, 8 new", 8)]
    assert result["settings"]["matmul_dtype"] == "bfloat16"
    assert "LoRA (bf16 base) step time / full step time" in {t["name"] for t in result["targets"]}
    assert format_report(result) and format_markdown(result)


def test_the_hugging_face_reference_is_the_same_shape_and_is_compared_with_the_same_work():
    """Catches a reference model of another shape (a context or width off), or a speedup taken against
    the wrong minitune case (LoRA's step against full fine-tuning's, a generation of another length)."""
    from minitune.bench.reference import hf_model
    from minitune.bench.run import run_bench

    for name in ("nano", "gpt2"):
        with torch.device("meta"):
            assert sum(p.numel() for p in hf_model(SIZES[name]).parameters()) == count_parameters(SIZES[name])
    result = run_bench(quick=True, device="cpu", progress=False, reference="hf")
    ref = {r["case"]: r for r in result["reference"]}
    train = {r["strategy"]: r["ms_per_step"] / 1000 for r in result["training"]}
    gen = {r["case"]: r["seconds"] for r in result["generation"]}
    assert {k: r["minitune_seconds"] for k, r in ref.items()} == \
        {"hf full": train["full"], "hf+peft lora": train["lora"], "hf generation": gen["with KV cache"]}
    for r in ref.values():
        assert r["speedup"] == pytest.approx(r["seconds"] / r["minitune_seconds"])
    names = {t["name"]: t for t in result["targets"]}
    assert names["generation tok/s / Hugging Face's"]["value"] == pytest.approx(ref["hf generation"]["speedup"])
    assert names["full step time / Hugging Face's"]["value"] == pytest.approx(1 / ref["hf full"]["speedup"])
