"""Where the helpers build their inputs: on the model's device, whatever it is (a GPU in real use).

No GPU is needed to check it. `OnMeta` stands for a model whose weights live on another device (`meta`):
the first tensor a helper hands it must already be there. It then stops the helper, since a meta
tensor holds no values to go on with. A helper that builds its input on the CPU fails the check.
"""

import pytest
import torch
import torch.nn as nn

from minitune.data.tasks import load_task
from minitune.evaluate import evaluate_task, generate_text, label_logprobs
from minitune.evaluate import perplexity
from minitune.model import GPTConfig
from minitune.tokenizer import get_tokenizer
from minitune.train import evaluate_loss

ENC = get_tokenizer("minitune")


class Reached(Exception):
    """The helper handed its first input over, on the right device."""


class OnMeta(nn.Module):
    def __init__(self):
        super().__init__()
        self.config = GPTConfig.from_preset("nano")
        self.anchor = nn.Parameter(torch.empty(1, device="meta"))

    @property
    def max_input_tokens(self) -> int:
        return self.config.block_size

    def _check(self, *tensors):
        for t in tensors:
            if t is not None:
                assert t.device.type == "meta", f"input built on {t.device}, the model is on meta"
        raise Reached

    def forward(self, idx, targets=None):
        self._check(idx, targets)

    def generate(self, idx, max_new_tokens, **kwargs):
        self._check(idx, kwargs.get("prefix_embeddings"))


@pytest.mark.parametrize("call", [
    lambda m: generate_text(m, ENC, "Mira Tolan lives in", 5),
    lambda m: label_logprobs(m, ENC, ["Review: good.\nSentiment:"], ("positive", "negative")),
    lambda m: evaluate_task(m, ENC, load_task("sentiment", sizes={"train": 8, "validation": 4, "test": 4}), limit=2),
    lambda m: evaluate_task(m, ENC, load_task("qa"), limit=2),
    lambda m: evaluate_loss(m, [(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))]),
    lambda m: perplexity(m, ENC, ["Mira Tolan lives in Bramwick. " * 20]),
], ids=["generate_text", "label_logprobs", "evaluate_task-classification", "evaluate_task-generation",
        "evaluate_loss", "perplexity"])
def test_helpers_build_inputs_on_the_models_device(call):
    with pytest.raises(Reached):
        call(OnMeta())
