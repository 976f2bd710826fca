"""The same work on Hugging Face's GPT-2 (and PEFT's LoRA), for `minitune bench --reference hf`.

A GPT2LMHeadModel of the bench's largest shape, randomly initialised, runs the same training step (its
own loss over the batch, bf16 autocast on a GPU, make_optimizer's AdamW) and the same greedy generation
(batch 1, the 6-token prompt, a fixed number of new tokens, the cache on). Its cases join minitune's
groups, so they are timed interleaved with minitune's and compared as ratios. Needs `transformers` (and
`peft` for the LoRA case): the dev extras.
"""

from __future__ import annotations

from typing import Callable

import torch

from minitune.bench.cases import PROMPT_TOKENS, random_batch
from minitune.bench.timing import Case
from minitune.errors import ConfigError
from minitune.model import GPTConfig
from minitune.train import TrainConfig, autocast_for, make_optimizer

# the minitune training case each reference case is compared with
COUNTERPARTS = {"hf full": "full", "hf+peft lora": "lora"}


def hf_model(cfg: GPTConfig, seed: int = 0):
    """A randomly initialised transformers GPT2LMHeadModel of cfg's shape."""
    try:
        import transformers
    except ImportError as e:
        raise ConfigError("--reference hf needs transformers (and peft): pip install -e '.[dev]'") from e
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
                                     n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
                                     attn_pdrop=0.0, bos_token_id=cfg.vocab_size - 1, eos_token_id=cfg.vocab_size - 1)
    return transformers.GPT2LMHeadModel(config)


def _hf_step(model, batch_size: int, device: torch.device, cfg: GPTConfig) -> Callable[[], None]:
    model.to(device).train()
    optimizer = make_optimizer(model, TrainConfig(lr=1e-4, warmup_steps=0), device)
    x, _ = random_batch(cfg, batch_size, cfg.block_size, device, seed=1)

    def step() -> None:
        with autocast_for(device):
            loss = model(input_ids=x, labels=x).loss  # shifts the labels itself
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def hf_training_cases(size: str, cfg: GPTConfig, batch_size: int, device: torch.device) -> list[Case]:
    """Hugging Face's full fine-tuning step and PEFT's LoRA step (r=8, alpha=16, on c_attn), as training cases."""
    import peft

    full = hf_model(cfg)
    lora = peft.get_peft_model(hf_model(cfg), peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                              target_modules=["c_attn"], fan_in_fan_out=True))
    return [Case("training", size, "hf full", _hf_step(full, batch_size, device, cfg)),
            Case("training", size, "hf+peft lora", _hf_step(lora, batch_size, device, cfg))]


def hf_generation_case(size: str, cfg: GPTConfig, device: torch.device, new_tokens: int) -> Case:
    """Hugging Face's greedy generation of exactly `new_tokens` tokens (no early stop), batch 1, with its cache."""
    model = hf_model(cfg).to(device).eval()
    prompt, _ = random_batch(cfg, 1, PROMPT_TOKENS, device, seed=3)

    def run(n: int) -> Callable[[], None]:
        def go() -> None:
            with torch.no_grad(), autocast_for(device):
                model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True,
                               pad_token_id=cfg.vocab_size - 1, attention_mask=torch.ones_like(prompt))
        return go

    return Case("generation", size, "hf generation", run(new_tokens),
                warmup=run(min(8, new_tokens)), every=2)
