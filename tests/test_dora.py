"""DoRA: the layer against its formula written out in float64, the norm held constant in the backward pass,
merging (with (IA)3's, which folds a vector into the weights too), and parity with PEFT's use_dora.

The parity tests against PEFT follow the method strategy_cases.py describes (transformers and peft are test
dependencies: these never skip).

Each test names, in its docstring, a broken implementation it catches. The properties every strategy
shares (counts, training steps, saving and loading) are in test_strategy_api.py.
"""

import copy

import peft
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from minitune.errors import TrainingError
from minitune.strategies import (
    DoRAConfig, IA3Config, apply_strategy, load_trainable, merge, save_trainable, trainable_state, unmerge,
)
from minitune.strategies.dora import DoRALinear
from strategy_cases import (
    TOLERANCE, close, hf_gpt2, ids, large_base, peft_tensors, perturb_trainable, random_bases, random_configs,
    random_ids, report, share_perturbed,
)


@settings(max_examples=40, deadline=None)
@given(fan_in=st.integers(1, 24), fan_out=st.integers(1, 24), data=st.data(), alpha=st.floats(0.1, 64),
       rslora=st.booleans(), seed=st.integers(0, 2**16), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_dora_layer_is_the_formula_and_merges_exactly_once(fan_in, fan_out, data, alpha, rslora, seed, dtype):
    """Against m * (W + s B A) / ||W + s B A|| written out in float64: catches the norm taken over the inputs
    (dim 0) instead of per output feature, the scale s left out of the norm or the update, the bias scaled
    with the weight, and a merge that is not undone by unmerge (or that merges twice)."""
    r = data.draw(st.integers(1, min(fan_in, fan_out)))
    torch.manual_seed(seed)
    linear = nn.Linear(fan_in, fan_out).to(dtype)
    w0 = linear.weight.detach().clone()
    layer = DoRALinear(linear, r, DoRAConfig(r=r, alpha=alpha, rslora=rslora).scaling).eval()
    assert torch.equal(layer.lora_magnitude, torch.linalg.vector_norm(w0, dim=1))
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.lora_magnitude.mul_(1 + 0.5 * torch.rand_like(layer.lora_magnitude))
    x = torch.randn(3, fan_in, dtype=dtype)
    W, A, B, m = (t.detach().double() for t in (w0, layer.lora_A, layer.lora_B, layer.lora_magnitude))
    direction = W + layer.scaling * B @ A
    reference = x.double() @ (m[:, None] * direction / direction.norm(dim=1, keepdim=True)).T + linear.bias.double()
    unmerged = layer(x)
    assert close(unmerged, reference.to(dtype))
    layer.merge()
    once = layer.weight.detach().clone()
    layer.merge()
    assert torch.equal(layer.weight, once) and layer.merged
    assert close(layer(x), unmerged)
    layer.unmerge()
    assert close(layer.weight, w0) and not layer.merged
    layer.unmerge()
    assert close(layer.weight, w0)


def test_dora_norm_is_a_constant_in_the_backward_pass():
    """Catches the norm left in the autograd graph: the gradients of A and B then differ from the reference's,
    which detaches ||W + s B A|| (the paper's section 4.3), and are checked not to match the undetached one."""
    torch.manual_seed(0)
    linear = nn.Linear(6, 5).double()
    layer = DoRALinear(linear, r=2, scaling=1.5)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(4, 6, dtype=torch.float64)
    layer(x).square().sum().backward()

    def reference(detach: bool):
        A, B, m = (t.detach().clone().requires_grad_() for t in (layer.lora_A, layer.lora_B, layer.lora_magnitude))
        direction = linear.weight + 1.5 * B @ A
        norm = direction.norm(dim=1, keepdim=True)
        w = m[:, None] * direction / (norm.detach() if detach else norm)
        F.linear(x, w, linear.bias).square().sum().backward()
        return A.grad, B.grad, m.grad

    detached, attached = reference(True), reference(False)
    got = (layer.lora_A.grad, layer.lora_B.grad, layer.lora_magnitude.grad)
    assert all(torch.allclose(g, r, atol=1e-10) for g, r in zip(got, detached))
    assert not torch.allclose(got[0], attached[0], atol=1e-6)


# --- merging, DoRA and (IA)3 alike ---------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_merged_dora_and_ia3_equal_unmerged_and_load_strictly_into_a_plain_gpt(data):
    """Catches a merge that folds the wrong rows or columns (the (IA)3 feed-forward vector on W's rows, the
    key/value vector on the query rows), forgets the bias, or leaves trainable tensors in the merged weights."""
    plain = data.draw(random_bases())
    model = apply_strategy(copy.deepcopy(plain), data.draw(random_configs(plain.config, ("dora", "ia3"))))
    perturb_trainable(model)
    x = random_ids(model, 1)
    unmerged = model(x)[0]
    merge(model)
    assert close(model(x)[0], unmerged)
    trained = set(trainable_state(model))
    as_plain = copy.deepcopy(plain)
    as_plain.load_state_dict({k: v for k, v in model.state_dict().items() if k not in trained}, strict=True)
    assert close(as_plain(x)[0], unmerged)
    unmerge(model)
    mine = dict(model.named_parameters())
    assert all(close(mine[n], p) for n, p in plain.named_parameters())


@pytest.mark.parametrize("config", [DoRAConfig(r=2), IA3Config()], ids=["dora", "ia3"])
def test_a_merged_model_refuses_to_train_and_swaps_task_files_under_the_merge(config, tmp_path):
    """Catches training a merged layer (no gradient could reach its vectors) and task tensors swapped under a
    merged weight, which would keep serving the old update and corrupt the base on unmerge."""
    plain = large_base()
    a, b = (apply_strategy(copy.deepcopy(plain), config) for _ in range(2))
    perturb_trainable(a)
    perturb_trainable(b)
    save_trainable(b, tmp_path / "b")
    served = load_trainable(merge(copy.deepcopy(a)), tmp_path / "b")
    x = ids()
    assert close(served(x)[0], b(x)[0])
    with pytest.raises(TrainingError, match="unmerge"):
        served.train()(x)
    unmerge(served)
    mine = dict(served.named_parameters())
    assert all(close(mine[n], p) for n, p in plain.named_parameters())


# --- parity with PEFT ----------------------------------------------------------------------------------

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
