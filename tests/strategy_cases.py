"""What the strategy test files share: small bases and inputs, random bases and strategy configs for
hypothesis, the closed-form parameter counts, and the Hugging Face / PEFT side of the parity tests.

Imported by test_<strategy>.py, test_strategy_api.py and test_interop.py (pytest puts tests/ on sys.path).

The parity tests build a small random GPT2LMHeadModel, save it, read it into minitune with load_hf_gpt2,
apply the same method in both, give both the same trainable values (copied across by name: PEFT's tensors
sit under `base_model.model.` with an adapter name, `default`), and compare the logits. Every trainable
value is moved off its initialisation first, so the comparison sees the update, not just the base.
"""

import torch
import torch.nn as nn
from hypothesis import strategies as st

from minitune.interop import load_hf_gpt2
from minitune.model import GPT, GPTConfig, count_parameters
from minitune.strategies import (
    AdapterConfig, DoRAConfig, FullConfig, IA3Config, LoRAConfig, PrefixTuningConfig, PromptTuningConfig,
    QLoRAConfig, apply_strategy,
)
from minitune.strategies.lora import lora_layers


# --- small bases and inputs ----------------------------------------------------------------------------

def base(seed=0, **kw) -> GPT:
    """A small GPT (vocab 64, context 32, 2 layers, 2 heads, width 16) at its initialisation, in eval mode."""
    torch.manual_seed(seed)
    cfg = dict(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=16)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).eval()


def large_base(seed=0, **kw) -> GPT:
    """base() with every weight drawn from N(0, 0.3): large enough that every path changes the logits."""
    model = base(seed, **kw)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def ids(seed=1, B=2, T=10, V=64) -> torch.Tensor:
    """A (B, T) batch of token ids below V, the same for the same seed."""
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def random_ids(model: GPT, seed: int, B: int = 2, T: int | None = None) -> torch.Tensor:
    """A (B, T) batch of ids that fits model (T: half the tokens it can read, by default)."""
    T = T or max(1, model.max_input_tokens // 2)
    return torch.randint(0, model.config.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


def perturb_trainable(model: nn.Module, std: float = 0.3) -> None:
    """Stand-in for training: give every trainable tensor non-trivial values (B and up no longer zero)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * std)


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to the rounding of the less precise of the two (float32 or float64), relative to b's size."""
    tol = 1e-9 if a.dtype == b.dtype == torch.float64 else 1e-4
    return torch.allclose(a.double(), b.double(), rtol=tol, atol=tol * (1 + b.abs().max().item()))


def base_weights_close(model: nn.Module, plain: nn.Module, tol: float) -> bool:
    mine = dict(model.named_parameters())
    return all(torch.allclose(mine[n], p, rtol=tol, atol=tol) for n, p in plain.named_parameters())


# --- random bases, strategies and weights (hypothesis) -------------------------------------------------

# (in, out) of each adaptable linear layer, in units of n_embd: GPT-2's shapes, written out independently
LINEAR_SHAPES = {"attn.c_attn": (1, 3), "attn.c_proj": (1, 1), "mlp.c_fc": (1, 4), "mlp.c_proj": (4, 1)}


# where each adapter placement puts its adapters, by module name
ADAPTER_SITES = {"houlsby": ("attn.c_proj", "mlp.c_proj"), "pfeiffer": ("mlp.c_proj",)}


@st.composite
def random_bases(draw, dtypes=(torch.float32, torch.float64)) -> GPT:
    """A small GPT of random shape and dtype, with weights large enough that every path changes the logits."""
    n_head = draw(st.integers(1, 3))
    cfg = GPTConfig(vocab_size=draw(st.integers(8, 40)), block_size=draw(st.integers(8, 20)),
                    n_layer=draw(st.integers(1, 3)), n_head=n_head, n_embd=n_head * draw(st.integers(2, 5)),
                    bias=draw(st.booleans()))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    model = GPT(cfg).to(draw(st.sampled_from(dtypes))).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


EVERY_KIND = ("full", "lora", "adapter", "prompt", "dora", "ia3", "prefix", "qlora")


def random_configs(cfg: GPTConfig, kinds=EVERY_KIND):
    """Any strategy config that fits a base of shape cfg."""
    d = cfg.n_embd
    low_rank = dict(r=st.integers(1, d), alpha=st.floats(0.5, 32), rslora=st.booleans(),
                    targets=st.lists(st.sampled_from(sorted(LINEAR_SHAPES)), min_size=1, unique=True).map(tuple),
                    init=st.sampled_from(["kaiming", "gaussian"]))
    options = {
        "full": st.just(FullConfig()),
        "lora": st.builds(LoRAConfig, **low_rank),
        "adapter": st.builds(AdapterConfig, bottleneck=st.integers(1, 2 * d),
                             placement=st.sampled_from(sorted(ADAPTER_SITES)),
                             activation=st.sampled_from(["gelu", "relu"]), train_layernorm=st.booleans()),
        "prompt": st.builds(PromptTuningConfig, n_tokens=st.integers(1, cfg.block_size - 2),
                            init=st.sampled_from(["random", "vocab"])),
        "dora": st.builds(DoRAConfig, **low_rank),
        "ia3": st.just(IA3Config()),
        "prefix": st.builds(PrefixTuningConfig, n_tokens=st.integers(1, cfg.block_size - 2), hidden=st.integers(0, 8)),
        # small blocks too, so that padding and several absmax blocks per scale block are exercised
        "qlora": st.builds(QLoRAConfig, **low_rank, quant_block=st.sampled_from([2, 8, 64]),
                           scale_block=st.integers(1, 8), double_quant=st.booleans()),
    }
    return st.one_of(*(options[k] for k in kinds))


def closed_form(cfg: GPTConfig, config) -> tuple[int, int]:
    """(added, trained base) parameter counts each strategy's docstring states, from the shapes alone."""
    d, L = cfg.n_embd, cfg.n_layer
    if isinstance(config, FullConfig):
        return 0, count_parameters(cfg)
    if isinstance(config, (LoRAConfig, QLoRAConfig)):  # QLoRA's 4-bit weights count as the parameters they hold
        return L * sum(config.r * (LINEAR_SHAPES[t][0] + LINEAR_SHAPES[t][1]) * d for t in config.targets), 0
    if isinstance(config, DoRAConfig):  # LoRA's factors plus one magnitude per output feature
        return L * sum((config.r * (LINEAR_SHAPES[t][0] + LINEAR_SHAPES[t][1]) + LINEAR_SHAPES[t][1]) * d
                       for t in config.targets), 0
    if isinstance(config, IA3Config):  # keys and values (d each), the MLP's inner activation (4 d)
        return L * (2 * d + 4 * d), 0
    if isinstance(config, PrefixTuningConfig):
        n, h, table = config.n_tokens, config.hidden, 2 * L * d
        return (n * table if h == 0 else n * d + (d * h + h) + (h * table + table)), 0
    if isinstance(config, AdapterConfig):
        m, per_block = config.bottleneck, len(ADAPTER_SITES[config.placement])
        layernorms = (2 * L + 1) * (d + d * cfg.bias) if config.train_layernorm else 0
        return L * per_block * (2 * d * m + d + m), layernorms
    return config.n_tokens * d, 0


@st.composite
def random_weights(draw) -> torch.Tensor:
    """Weights of any (out, in) shape: normal, heavy-tailed, with all-zero stretches, at any scale."""
    out, fan_in = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    w = torch.randn(out, fan_in, generator=g) * draw(st.sampled_from([1e-3, 0.02, 1.0, 50.0]))
    if draw(st.booleans()):
        w = w ** 3  # heavy tails: a few outliers set each block's absmax
    if draw(st.booleans()):
        w.view(-1)[: draw(st.integers(0, w.numel()))] = 0  # whole blocks of zeros
    return w


# --- Hugging Face GPT-2 and PEFT (parity tests) --------------------------------------------------------

V, T, L, H, D = 64, 16, 2, 2, 16  # vocab, context, layers, heads, width
TOLERANCE = 1e-4


def random_hf_gpt2(vocab: int, context: int, layers: int, heads: int, width: int, seed: int = 0):
    """A transformers GPT2LMHeadModel of the given shape with N(0, 0.2) weights, in eval mode (for parity tests)."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=vocab, n_positions=context, n_embd=width, n_layer=layers,
                                     n_head=heads, bos_token_id=vocab - 1, eos_token_id=vocab - 1,
                                     layer_norm_epsilon=1e-3)  # not the default: a dropped epsilon shows
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


def hf_model(seed=0):
    """random_hf_gpt2 of the parity tests' shape (V, T, L, H, D)."""
    return random_hf_gpt2(V, T, L, H, D, seed)


def hf_logits(model, x=None) -> torch.Tensor:
    """A Hugging Face model's logits on x (default: ids of the whole context T), without a graph."""
    with torch.no_grad():
        return model(ids(T=T) if x is None else x).logits


def logits(model, x=None) -> torch.Tensor:
    """A minitune model's logits on x (default: ids of the whole context T), without a graph."""
    with torch.no_grad():
        return model(ids(T=T) if x is None else x)[0]


def random_gpt(seed=0) -> GPT:
    """A minitune GPT with every tensor random (biases and LayerNorms too, so none hides a mistake)."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=H, n_embd=D))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


def lora_model(seed=0, **kw) -> GPT:
    """random_gpt with LoRA on c_attn and mlp.c_fc, B made nonzero so the update shows."""
    config = LoRAConfig(**{"r": 4, "alpha": 8, "targets": ("c_attn", "mlp.c_fc"), **kw})
    model = apply_strategy(random_gpt(seed), config)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.normal_(0, 0.2)
    return model.eval()


def report_diff(name, a, b) -> float:
    """Max |a - b|, printed under name."""
    diff = (a - b).abs().max().item()
    print(f"{name}: max abs logit difference {diff:.3g}")
    return diff


def hf_gpt2(tmp_path):
    """(a random HF GPT-2 in eval mode, the same model read into minitune, the base's logits on ids())."""
    hf = hf_model()
    hf.save_pretrained(tmp_path / "hf")
    with torch.no_grad():
        base_logits = hf.eval()(ids()).logits
    return hf, load_hf_gpt2(tmp_path / "hf"), base_logits


def peft_tensors(peft_model) -> dict[str, torch.nn.Parameter]:
    """PEFT's trainable tensors under minitune-style names: base_model.model.X.lora_A.default.weight -> X.lora_A."""
    out = {}
    for name, p in peft_model.named_parameters():
        if p.requires_grad:
            name = name.removeprefix("base_model.model.").replace(".default", "").removesuffix(".weight")
            out[name] = p
    return out


def share_perturbed(theirs: dict[str, torch.Tensor], mine: dict[str, torch.Tensor]) -> None:
    """Move every trainable tensor of PEFT's off its start, then give ours the same values, name by name."""
    assert set(theirs) == set(mine)
    with torch.no_grad():
        for name, p in theirs.items():
            p.add_(torch.randn_like(p) * 0.3)
            mine[name].copy_(p)


def report(method: str, ours: torch.Tensor, theirs: torch.Tensor, base: torch.Tensor) -> float:
    """Max |logit difference| to PEFT, printed; the update must have moved PEFT's logits off the base's."""
    diff = (ours - theirs).abs().max().item()
    print(f"{method} vs PEFT: max |logit difference| {diff:.3g} (the update moved the logits by "
          f"{(theirs - base).abs().max().item():.3g})")
    assert (theirs - base).abs().max() > 1e-2
    return diff
