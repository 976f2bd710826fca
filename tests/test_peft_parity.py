"""DoRA, (IA)3 and prefix tuning against PEFT on a Hugging Face GPT-2, at the logits (test dependencies:
transformers and peft; these never skip).

Each test builds a small random GPT2LMHeadModel, saves it, reads it into minitune with load_hf_gpt2, applies
the same method in both, gives both the same trainable values (copied across by name: PEFT's tensors sit
under `base_model.model.` with an adapter name, `default`), and compares the logits. Every trainable value
is moved off its initialisation first, so the comparison sees the update, not just the base.
"""

import peft
import torch
from conftest import random_hf_gpt2

from minitune.interop import load_hf_gpt2
from minitune.strategies import DoRAConfig, IA3Config, PrefixTuningConfig, apply_strategy, merge, trainable_state
from minitune.strategies.prefix import fold

V, T, L, H, D = 64, 16, 2, 2, 16  # vocab, context, layers, heads, width
TOLERANCE = 1e-4


def hf_gpt2(tmp_path):
    """(a random HF GPT-2 in eval mode, the same model read into minitune, the base's logits on ids())."""
    hf = random_hf_gpt2(V, T, L, H, D)
    hf.save_pretrained(tmp_path / "hf")
    with torch.no_grad():
        base_logits = hf.eval()(ids()).logits
    return hf, load_hf_gpt2(tmp_path / "hf"), base_logits


def ids(B=2, T_in=10) -> torch.Tensor:
    return torch.randint(0, V, (B, T_in), generator=torch.Generator().manual_seed(1))


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


def test_dora_matches_peft_use_dora(tmp_path):
    """Catches a magnitude normed over the inputs (PEFT's initial magnitude is compared too), the norm without
    the scale, and an update applied to the bias."""
    hf, base, base_logits = hf_gpt2(tmp_path)
    targets = ["c_attn", "mlp.c_fc"]
    theirs = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, use_dora=True,
                                                     fan_in_fan_out=True, init_lora_weights=True)).eval()
    ours = apply_strategy(base, DoRAConfig(r=4, alpha=8, targets=tuple(targets))).eval()
    mine, peft_side = trainable_state(ours), peft_tensors(theirs)
    renamed = {n.replace("lora_magnitude_vector", "lora_magnitude"): p for n, p in peft_side.items()}
    assert set(renamed) == set(mine)
    for name in mine:  # PEFT computed its magnitude from its Conv1D weights; ours from nn.Linear's
        if name.endswith("lora_magnitude"):
            assert torch.allclose(mine[name], renamed[name], atol=1e-6), name
    share_perturbed(renamed, mine)
    x = ids()
    with torch.no_grad():
        theirs_logits = theirs(x).logits
        assert report("DoRA", ours(x)[0], theirs_logits, base_logits) < TOLERANCE
        assert report("DoRA merged", merge(ours)(x)[0], theirs_logits, base_logits) < TOLERANCE


def test_ia3_matches_peft_with_its_query_entries_at_one(tmp_path):
    """PEFT's IA3 on GPT-2 scales c_attn's whole output (queries too, 3 d per block) and mlp.c_proj's input;
    the method scales keys and values only (2 d). With PEFT's query entries at 1 the two must agree: catches
    the key/value vector placed over the queries, or the feed-forward vector on c_proj's output."""
    hf, base, base_logits = hf_gpt2(tmp_path)
    config = peft.IA3Config(target_modules=["c_attn", "mlp.c_proj"], feedforward_modules=["mlp.c_proj"],
                            fan_in_fan_out=True, task_type="CAUSAL_LM")
    theirs = peft.get_peft_model(hf, config).eval()
    ours = apply_strategy(base, IA3Config()).eval()
    mine = trainable_state(ours)
    with torch.no_grad():
        for p in mine.values():
            p.add_(torch.randn_like(p) * 0.3)
        for name, p in peft_tensors(theirs).items():  # X.ia3_l -> X.ia3_scale
            scale = mine[name.replace("ia3_l", "ia3_scale")].detach()
            if name.endswith("attn.c_attn.ia3_l"):
                scale = torch.cat([torch.ones(D), scale])  # PEFT's query entries stay 1
            p.copy_(scale.view_as(p))
    assert sum(p.numel() for p in mine.values()) == L * (2 * D + 4 * D)
    assert sum(p.numel() for p in peft_tensors(theirs).values()) == L * (3 * D + 4 * D)
    x = ids()
    with torch.no_grad():
        theirs_logits = theirs(x).logits
        assert report("(IA)3", ours(x)[0], theirs_logits, base_logits) < TOLERANCE
        assert report("(IA)3 merged", merge(ours)(x)[0], theirs_logits, base_logits) < TOLERANCE


def _prefix_parity(tmp_path, hidden: int):
    hf, base, base_logits = hf_gpt2(tmp_path)
    n = 4
    config = peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n, prefix_projection=hidden > 0,
                                     encoder_hidden_size=hidden or D)
    theirs = peft.get_peft_model(hf, config).eval()
    ours = apply_strategy(base, PrefixTuningConfig(n_tokens=n, hidden=hidden)).eval()
    mine = trainable_state(ours)
    renamed = {n.replace("prompt_encoder", "prefix").replace("transform", "mlp"): p
               for n, p in peft_tensors(theirs).items()}
    renamed = {k if k.endswith("bias") or k.endswith("weight") else k + ".weight": v for k, v in renamed.items()}
    share_perturbed(renamed, mine)
    x = ids()
    with torch.no_grad():
        return ours, theirs, theirs(x).logits, x, base_logits


def test_prefix_tuning_with_the_mlp_matches_peft_and_so_does_its_fold(tmp_path):
    """Catches the table's layout read differently from PEFT's (keys and values, heads, layers), positions
    that do not start after the prefix (as HF GPT-2 counts them after past keys and values), and a fold that
    changes the outputs."""
    ours, _, theirs_logits, x, base_logits = _prefix_parity(tmp_path, hidden=8)
    with torch.no_grad():
        assert report("prefix tuning (MLP)", ours(x)[0], theirs_logits, base_logits) < TOLERANCE
        assert report("prefix tuning (MLP, folded)", fold(ours)(x)[0], theirs_logits, base_logits) < TOLERANCE


def test_prefix_tuning_without_the_mlp_matches_peft(tmp_path):
    ours, _, theirs_logits, x, base_logits = _prefix_parity(tmp_path, hidden=0)
    with torch.no_grad():
        assert report("prefix tuning (plain)", ours(x)[0], theirs_logits, base_logits) < TOLERANCE


def test_prefix_generation_matches_greedy_decoding_through_peft(tmp_path):
    """Ours with and without the cache against greedy decoding that re-runs PEFT's forward pass for each token
    (not PEFT's generate: with transformers 5 it gives other tokens than its own forward pass does here).
    Catches a generation cache that loses the prefix after the first token."""
    ours, theirs, _, _, _ = _prefix_parity(tmp_path, hidden=8)
    x = ids(B=1, T_in=4)
    out = x
    with torch.no_grad():
        for _ in range(8):
            out = torch.cat([out, theirs(input_ids=out).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(ours.generate(x, 8), out)
    assert torch.equal(ours.generate(x, 8, use_cache=False), out)
