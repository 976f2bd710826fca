"""Evaluation: label scoring against a direct computation, generation cut at stops, code judged safely,
and `minitune finetune / evaluate / generate` end to end on the nano base for every strategy and task."""

import json

import pytest
import torch
import torch.nn.functional as F

from minitune.cli import main
from minitune.data.tasks import TASKS, load_task
from minitune.evaluate import code_passes, evaluate_task, generate_text, label_logprobs, stop_token_ids
from minitune.finetune import open_run
from minitune.tokenizer import get_tokenizer

ENC = get_tokenizer("minitune")


def test_label_scores_are_summed_log_probabilities(nano_base):
    prompts = ["Review: The soup was cold.\nSentiment:", "News: It rained all day.\nTopic:"]
    labels = ("positive", "negative")
    scores = label_logprobs(nano_base, ENC, prompts, labels)
    for i, prompt in enumerate(prompts):
        for j, label in enumerate(labels):
            p, lab = ENC.encode_ordinary(prompt), ENC.encode_ordinary(" " + label)
            ids = torch.tensor([p + lab])
            logp = F.log_softmax(nano_base(ids)[0][0], dim=-1)
            direct = sum(logp[len(p) - 1 + k, t] for k, t in enumerate(lab))
            assert scores[i, j].item() == pytest.approx(direct.item(), abs=1e-4)


def test_generation_is_cut_at_the_stop_string(nano_base):
    assert ENC.eot_token in stop_token_ids(ENC, "\n")
    assert all("\n" in ENC.decode([t]) for t in stop_token_ids(ENC, "\n") if t != ENC.eot_token)
    free = generate_text(nano_base, ENC, "The market", 30, stop="<|endoftext|>")
    cut = generate_text(nano_base, ENC, "The market", 30, stop="\n")
    assert "\n" not in cut and free.startswith(cut)
    assert generate_text(nano_base, ENC, "The market", 30, stop="\n") == cut  # greedy: repeatable


def test_code_is_judged_by_running_it_safely():
    meta = {"fn_name": "f", "inputs": [(1,), (2,), (-3,)], "outputs": [3, 5, -5]}
    assert code_passes("def f(x):\n    return 2 * x + 1", meta) == (True, "")
    ok, why = code_passes("def f(x):\n    return x + 1", meta)
    assert not ok and "expected 3" in why
    ok, why = code_passes("def f(x):\n    import os\n    return 1", meta)
    assert not ok and "refused" in why
    ok, why = code_passes("def f(x):\n    return x // 0", meta)
    assert not ok and "failed" in why


@pytest.mark.parametrize("name", TASKS)
def test_evaluate_every_task_zero_and_few_shot(name, nano_base):
    task = load_task(name, sizes={"train": 40, "validation": 10, "test": 10} if name != "qa" else None)
    for shots in (0, 2):
        result = evaluate_task(nano_base, ENC, task, shots=shots, limit=4)
        assert result["n"] == 4 and result["shots"] == shots
        metrics = {k: v for k, v in result.items() if isinstance(v, float)}
        assert metrics and all(0.0 <= v <= 1.0 for v in metrics.values()), metrics


@pytest.mark.parametrize("strategy", ["full", "lora", "adapter", "prompt"])
def test_finetune_cli_runs_every_task_end_to_end(strategy, nano_run, tmp_path, capsys):
    for name in TASKS:
        out = tmp_path / f"{name}-{strategy}"
        code = main(["finetune", "--base", str(nano_run), "--task", name, "--strategy", strategy,
                     "--out", str(out), "--max-steps", "4", "--batch-size", "4", "--n-tokens", "4",
                     "--eval", "--limit", "2", "--device", "cpu"])
        assert code == 0
        run = json.loads((out / "run.json").read_text())
        assert run["strategy"] == strategy and run["task"] == name and run["best_val_loss"] > 0
        assert (out / "best" / "trainable.safetensors").is_file()
    capsys.readouterr()
    model, enc, meta = open_run(tmp_path / f"qa-{strategy}")
    assert meta["strategy"] == strategy and model.strategy.name == strategy
    assert main(["evaluate", "--run", str(tmp_path / f"sentiment-{strategy}"), "--task", "sentiment",
                 "--limit", "3", "--shots", "1"]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{"):])["n"] == 3
    assert main(["generate", "--run", str(tmp_path / f"qa-{strategy}"), "--prompt", "Question: Who founded it?\nAnswer:",
                 "--max-new-tokens", "5"]) == 0


def test_finetune_on_your_own_jsonl(nano_run, tmp_path):
    data = tmp_path / "reviews.jsonl"
    rows = [{"text": f"the {w} was {'lovely' if i % 2 else 'awful'}", "label": "good" if i % 2 else "bad"}
            for i, w in enumerate(["soup", "bread", "kettle", "lamp", "coat", "hat"] * 5)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert main(["finetune", "--base", str(nano_run), "--data", str(data), "--kind", "classification",
                 "--strategy", "lora", "--out", str(tmp_path / "mine"), "--max-steps", "3", "--device", "cpu"]) == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine", "label": "good"}\n{"text": 3, "label": "bad"}\n')
    assert main(["finetune", "--base", str(nano_run), "--data", str(bad), "--kind", "classification",
                 "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()
