"""(IA)3: keys, values and the MLP's inner activation rescaled, against hooks on the plain model, and
parity with PEFT's IA3.

The parity tests against PEFT follow the method strategy_cases.py describes (transformers and peft are test
dependencies: these never skip).

Each test names, in its docstring, a broken implementation it catches. Merging is tested with DoRA's, in
test_dora.py; the properties every strategy shares (counts, training steps, saving and loading) are in
test_strategy_api.py.
"""

import copy

import peft
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minitune.strategies import IA3Config, apply_strategy, merge, trainable_state
from strategy_cases import (
    D, L, TOLERANCE, hf_gpt2, ids, peft_tensors, perturb_trainable, random_bases, random_ids, report,
)


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_ia3_rescales_keys_values_and_the_inner_activation(data):
    """Against hooks on the plain model that scale k, v (c_attn's output after the queries) and gelu(c_fc(x))
    (c_proj's input): catches the queries scaled instead of the keys, keys and values swapped, the MLP vector
    applied before the GELU, and a vector that multiplies the bias of the wrong layer."""
    plain = data.draw(random_bases(dtypes=(torch.float64,)))
    model = apply_strategy(copy.deepcopy(plain), IA3Config())
    perturb_trainable(model)
    d = plain.config.n_embd
    reference = copy.deepcopy(plain)
    for i, block in enumerate(reference.transformer.h):
        kv = model.transformer.h[i].attn.c_attn.ia3_scale.detach()  # [l_k | l_v]
        ff = model.transformer.h[i].mlp.c_proj.ia3_scale.detach()
        block.attn.c_attn.register_forward_hook(
            lambda m, inp, out, kv=kv: torch.cat([out[..., :d], out[..., d:] * kv], -1))
        block.mlp.c_proj.register_forward_pre_hook(lambda m, inp, ff=ff: (inp[0] * ff,))
    x = random_ids(model, 2)
    assert torch.allclose(model(x)[0], reference(x)[0], rtol=1e-10, atol=1e-10)
    assert all(layer.ia3_scale.numel() == 2 * d for layer in (b.attn.c_attn for b in model.transformer.h))


# --- parity with PEFT ----------------------------------------------------------------------------------

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
