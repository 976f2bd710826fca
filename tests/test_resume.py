"""Reliability: exact resume after SIGTERM and SIGKILL, atomic checkpoint writes under SIGKILL, refusing
corrupted / foreign / code-carrying files, and guarded training."""

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from minitune.checkpoint import load_model, load_resume, load_tensors, safe_torch_load, save_model
from minitune.data.batches import TokenStream
from minitune.errors import CheckpointError, TrainingError
from minitune.model import GPT, GPTConfig
from minitune.strategies import AdapterConfig, LoRAConfig, apply_strategy, load_trainable, save_trainable
from minitune.train import TrainConfig, train

PRETRAIN = [sys.executable, "-m", "minitune", "pretrain", "--preset", "nano", "--max-steps", "40",
            "--checkpoint-every", "1", "--device", "cpu"]


def wait_for_step(folder: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Poll the run's resume.json until it reports at least `step`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if json.loads((folder / "resume.json").read_text())["step"] >= step:
                return
        except (OSError, ValueError, KeyError):
            pass
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    raise AssertionError(f"no step {step} within {timeout}s")


def weights(folder: Path) -> dict:
    return load_tensors(folder / "model.safetensors")


def test_killed_and_resumed_runs_end_bitwise_equal_to_an_uninterrupted_one(tmp_path):
    straight = tmp_path / "straight"
    subprocess.run(PRETRAIN + ["--out", str(straight)], check=True, capture_output=True)

    broken = tmp_path / "broken"
    rng = random.Random(7)
    kill_points = sorted(rng.sample(range(2, 38), 2))  # two interruptions at seeded random steps
    # first a polite stop (SIGTERM: a clean checkpoint and a message), then a hard kill (SIGKILL)
    for sig, at in zip((signal.SIGTERM, signal.SIGKILL), kill_points):
        proc = subprocess.Popen(PRETRAIN + ["--out", str(broken), "--resume"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        wait_for_step(broken, at, proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        if sig == signal.SIGTERM:
            assert proc.returncode == 130 and "--resume" in err
        else:
            assert proc.returncode == -signal.SIGKILL
        assert not (broken / "model.safetensors").exists()  # the run never finished
    done = subprocess.run(PRETRAIN + ["--out", str(broken), "--resume"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resuming at step" in done.stdout
    a, b = weights(straight), weights(broken)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log = [json.loads(line) for line in (broken / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [r["step"] for r in map(json.loads, (straight / "log.jsonl").read_text().splitlines())]


WRITER = """
import sys, torch
from minitune.checkpoint import save_tensors
for i in range(1, 10_000):
    save_tensors(sys.argv[1], {"w": torch.full((500_000,), float(i))})
    print(i, flush=True)
"""


@pytest.mark.parametrize("delay", [0.35, 0.8, 1.3])
def test_a_kill_during_a_write_leaves_the_previous_complete_file(tmp_path, delay):
    target = tmp_path / "w.safetensors"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    first = proc.stdout.readline()  # one complete write exists
    assert first.strip() == "1"
    time.sleep(delay)
    proc.kill()
    printed = [int(x) for x in proc.communicate()[0].split()] + [1]
    w = load_tensors(target)["w"]
    assert torch.all(w == w[0])  # one whole version, never a mix
    assert max(printed) <= w[0].item() <= max(printed) + 1


def test_corrupted_weights_are_refused_by_checksum(tmp_path):
    save_model(GPT(GPTConfig.from_preset("nano")), tmp_path)
    data = bytearray((tmp_path / "model.safetensors").read_bytes())
    data[-100] ^= 0xFF  # one flipped byte inside a tensor: still a valid safetensors file
    (tmp_path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum.*corrupted"):
        load_model(tmp_path)


def test_trainable_file_of_another_strategy_or_model_is_refused(tmp_path):
    torch.manual_seed(0)
    base = GPT(GPTConfig.from_preset("nano"))
    save_trainable(apply_strategy(GPT(GPTConfig.from_preset("nano")), LoRAConfig(r=2)), tmp_path / "lora")
    adapted = apply_strategy(GPT(GPTConfig.from_preset("nano")), AdapterConfig(bottleneck=4))
    with pytest.raises(CheckpointError, match="carries"):
        load_trainable(adapted, tmp_path / "lora")
    # a file swapped in from elsewhere fails its checksum
    save_trainable(apply_strategy(GPT(GPTConfig.from_preset("nano")), AdapterConfig(bottleneck=4)), tmp_path / "ad")
    (tmp_path / "lora" / "trainable.safetensors").write_bytes((tmp_path / "ad" / "trainable.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="checksum"):
        load_trainable(base, tmp_path / "lora")
    assert getattr(base, "strategy", None) is None


class Payload:
    """Unpickling this would run code: create a marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_with_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"weights": torch.zeros(2), "evil": Payload(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="none of its code was run"):
        safe_torch_load(tmp_path / "evil.pt")
    assert not marker.exists()


def test_corrupted_resume_state_is_refused(tmp_path):
    model = GPT(GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=1, n_embd=8))
    data = TokenStream(torch.arange(200).remainder(16).numpy(), 8, 4)
    train(model, data, None, TrainConfig(max_steps=3, checkpoint_every=1, quiet=True, device="cpu"), out_dir=tmp_path)
    assert load_resume(tmp_path)[1]["step"] == 3
    blob = (tmp_path / "resume.pt").read_bytes()
    (tmp_path / "resume.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="resume.pt"):
        train(model, data, None, TrainConfig(max_steps=5, quiet=True, device="cpu"), out_dir=tmp_path, resume=True)
    with pytest.raises(CheckpointError, match="other settings"):
        (tmp_path / "resume.pt").write_bytes(blob)
        train(model, data, None, TrainConfig(max_steps=5, lr=5e-4, quiet=True, device="cpu"), out_dir=tmp_path,
              resume=True)


class Poisoned(nn.Module):
    """A model whose logits turn NaN on chosen calls (a stand-in for a diverging run)."""

    def __init__(self, bad_calls: set[int]):
        super().__init__()
        self.inner = GPT(GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=1, n_embd=8))
        self.bad_calls, self.calls = bad_calls, 0

    def forward(self, x, y=None):
        self.calls += 1
        logits, loss = self.inner(x, y)
        return (logits * float("nan"), loss) if self.calls in self.bad_calls else (logits, loss)


def test_non_finite_loss_stops_with_step_batch_and_checkpoint_named(tmp_path):
    data = TokenStream(torch.arange(200).remainder(16).numpy(), 8, 4)
    with pytest.raises(TrainingError, match=r"step 3 \(batch 2.*last good checkpoint: .*resume.pt"):
        train(Poisoned({3}), data, None, TrainConfig(max_steps=6, checkpoint_every=1, quiet=True, device="cpu"),
              out_dir=tmp_path)


def test_non_finite_steps_can_be_skipped_up_to_a_limit():
    data = TokenStream(torch.arange(200).remainder(16).numpy(), 8, 4)
    model = Poisoned({2, 4})
    result = train(model, data, None, TrainConfig(max_steps=6, max_bad_steps=2, quiet=True, device="cpu"))
    assert result.steps == 6 and all(torch.isfinite(p).all() for p in model.parameters())
    with pytest.raises(TrainingError, match="max_bad_steps"):
        train(Poisoned({2, 4}), data, None, TrainConfig(max_steps=6, max_bad_steps=1, quiet=True, device="cpu"))
