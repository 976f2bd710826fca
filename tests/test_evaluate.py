"""Evaluation: label scoring against a direct computation, generation cut at stops, code judged safely,
and `minitune finetune / evaluate / generate` end to end on the nano base for every strategy and task."""

import ast
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import minitune.evaluate as evaluate
import minitune.sandbox as sandbox
from minitune.cli import main
from minitune.data.tasks import TASKS, Example, load_task
from minitune.evaluate import (code_passes, evaluate_task, generate_text, generate_texts, label_logprobs,
                               prompt_for, score_generation, stop_token_ids)
from minitune.finetune import open_run
from minitune.strategies import apply_strategy, config_from_dict
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


@pytest.mark.parametrize("strategy", ["full", "lora", "prompt", "prefix"])
def test_batched_generation_gives_the_tokens_of_one_by_one(nano_base, strategy):
    """generate_texts decodes prompts of one length together; every prompt's text must be the one it gets
    alone, in its own place, with the soft prompt or prefix of the strategies that add inputs."""
    torch.manual_seed(0)
    model = apply_strategy(nano_base, config_from_dict(strategy, {}))
    for p in model.parameters():  # a PEFT's trainables away from their identity init: its inputs change the text
        if p.requires_grad and strategy != "full":
            p.data.add_(0.02 * torch.randn_like(p))
    prompts = []
    for name in ("qa", "summarization", "code"):
        task = load_task(name, sizes=None if name == "qa" else {"train": 40, "validation": 4, "test": 24})
        prompts += [prompt_for(task, ex, shots, ENC, model.max_input_tokens - 24, seed=1)
                    for ex in task.test[:24] for shots in (0, 1)]
    lengths = [len(ENC.encode_ordinary(p)) for p in prompts]
    assert len(set(lengths)) < len(prompts) // 3  # many prompts share a length: batches of several rows
    batched = generate_texts(model, ENC, prompts, 20, stop="\n")
    alone = [generate_text(model, ENC, p, 20, stop="\n") for p in prompts]
    assert batched == alone
    decoded_together = {}
    for n, text in zip(lengths, alone):
        decoded_together.setdefault(n, set()).add(text)
    assert sum(len(texts) > 1 for texts in decoded_together.values()) >= 3  # rows mixed up in a batch would show


CODE_META = {"fn_name": "f", "inputs": [(1,), (2,), (-3,)], "outputs": [3, 5, -5]}
# sources that skip the check (see unchecked_seam), to reach the evaluator's timeout and crash for real
ENDLESS = "#unchecked\ndef f(x):\n    while True:\n        x = x + 1\n"
DIES = ("#unchecked\ndef f(x):\n    return [c for c in ().__class__.__base__.__subclasses__()\n"
        "            if c.__name__ == '_wrap_close'][0].__init__.__globals__['_exit'](3)\n")
JUDGED = {  # source -> how code_passes judges it against CODE_META
    "def f(x):\n    return 2 * x + 1": "passed",
    "def f(x):\n    return x + 1": "wrong_answer",
    "def f(x):\n    import os\n    return 1": "refused",
    "def g(x):\n    import os\n    return 1": "refused",  # unsafe and misnamed: unsafe comes first
    "def g(x):\n    return 2 * x + 1": "wrong_name",
    "def f(x):\n    return x // 0": "crashed",
    "def f(x):\n    return 10 // (x - 2) + x": "crashed",  # wrong at 1 as well, but a crash counts first
    ENDLESS: "timed_out",
    DIES: "crashed",
}


@pytest.fixture
def unchecked_seam(monkeypatch):
    """run_function, except that a source starting with '#unchecked' skips the check (0.3 s to run)."""
    checked = evaluate.run_function

    def run(source, fn_name, inputs, timeout_s=1.0):
        if source.startswith("#unchecked\n"):
            return sandbox._execute(ast.parse(source), fn_name, list(inputs), 0.3)
        return checked(source, fn_name, inputs, timeout_s)

    monkeypatch.setattr(evaluate, "run_function", run)


def test_code_is_judged_by_running_it_safely(unchecked_seam):
    # catches: a timeout or a crash of the evaluator's child counted as a refusal, a wrong name as unsafe
    assert code_passes("def f(x):\n    return 2 * x + 1", CODE_META) == ("passed", "")
    judged = {source: code_passes(source, CODE_META) for source in JUDGED}
    assert {source: outcome for source, (outcome, _) in judged.items()} == JUDGED
    assert all(why for outcome, why in judged.values() if outcome != "passed")  # every failure says why


def test_the_code_metric_counts_each_way_to_fail_apart(unchecked_seam):
    # catches: shares that overlap or miss a kind (they must add up to 1), a missing pass@1
    examples = [Example("", "", {**CODE_META, "executable": True}) for _ in JUDGED]
    scores = score_generation(SimpleNamespace(name="code"), examples, list(JUDGED))
    n = len(JUDGED)
    assert scores == pytest.approx({"pass@1": 1 / n, "refused": 2 / n, "wrong_name": 1 / n, "timed_out": 1 / n,
                                    "crashed": 3 / n, "wrong_answer": 1 / n})
    assert sum(scores.values()) == pytest.approx(1.0)


def test_the_code_tasks_reference_bodies_pass_after_their_prompts_signature():
    # catches: the generated body scored without the signature the prompt gave (every answer "refused")
    task = load_task("code", sizes={"train": 4, "validation": 4, "test": 12})
    examples = task.split("test")
    assert all(ex.prompt.rstrip().endswith(":") for ex in examples)  # the prompt ends at the signature
    assert score_generation(task, examples, [ex.target for ex in examples])["pass@1"] == 1.0


@pytest.mark.parametrize("name", TASKS)
def test_evaluate_every_task_zero_and_few_shot(name, nano_base):
    task = load_task(name, sizes={"train": 40, "validation": 10, "test": 10} if name != "qa" else None)
    for shots in (0, 2):
        result = evaluate_task(nano_base, ENC, task, shots=shots, limit=4)
        assert result["n"] == 4 and result["shots"] == shots
        assert 0 <= result["shots_kept"] <= shots
        metrics = {k: v for k, v in result.items() if isinstance(v, float) and k not in ("label_loss", "shots_kept")}
        assert metrics and all(0.0 <= v <= 1.0 for v in metrics.values()), metrics
        assert ("label_loss" in result) == (task.kind == "classification") and result.get("label_loss", 1.0) > 0


def test_evaluate_counts_the_shots_that_fitted_not_the_shots_asked_for(nano_base):
    # Catches: reporting `shots` as given, which hides a 2-shot prompt that is the 0-shot one (the nano
    # base's 64-token context holds no summarization document beside another).
    summarization = load_task("summarization", sizes={"train": 40, "validation": 10, "test": 10})
    assert evaluate_task(nano_base, ENC, summarization, shots=2, limit=4)["shots_kept"] == 0.0
    qa = load_task("qa")
    assert 0 < evaluate_task(nano_base, ENC, qa, shots=2, limit=10)["shots_kept"] < 2  # some questions, not all
    assert evaluate_task(nano_base, ENC, qa, shots=0, limit=10)["shots_kept"] == 0.0


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
