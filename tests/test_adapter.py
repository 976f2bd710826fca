"""Bottleneck adapters: the adapted model against a reference built from the formula, and the base's dtype.

The properties every strategy shares (counts, training steps, saving and loading) are in
test_strategy_api.py.
"""

import copy

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from minitune.strategies import AdapterConfig, apply_strategy
from strategy_cases import ADAPTER_SITES, base, ids, perturb_trainable, random_bases, random_configs, random_ids


def reference_adapter(h: torch.Tensor, prefix: str, tensors: dict, activation: str) -> torch.Tensor:
    """h + W_up f(W_down h + b_down) + b_up, from the raw tensors (the formula in adapter.py's docstring)."""
    f = nn.functional.gelu if activation == "gelu" else nn.functional.relu
    down = h @ tensors[f"{prefix}.adapter.down.weight"].T + tensors[f"{prefix}.adapter.down.bias"]
    return h + f(down) @ tensors[f"{prefix}.adapter.up.weight"].T + tensors[f"{prefix}.adapter.up.bias"]


class ReferenceAdapted(nn.Module):
    """A frozen projection followed by reference_adapter: the test's own version of an adapted sublayer."""

    def __init__(self, linear: nn.Linear, prefix: str, tensors: dict, activation: str):
        super().__init__()
        self.linear, self.prefix, self.tensors, self.activation = linear, prefix, tensors, activation

    def forward(self, x):
        return reference_adapter(self.linear(x), self.prefix, self.tensors, self.activation)


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_adapted_model_equals_a_reference_built_from_the_formula(data):
    """With a non-zero up-projection: catches an adapter in the wrong sublayer (or before the projection), an
    activation that is ignored or swapped, and an output scaled or added wrongly."""
    plain = data.draw(random_bases(dtypes=(torch.float64,)))
    config = data.draw(random_configs(plain.config, ("adapter",)))
    model = apply_strategy(copy.deepcopy(plain), config)
    perturb_trainable(model)
    tensors = {n: p.detach() for n, p in model.named_parameters()}
    sites = [f"transformer.h.{i}.{site}" for i in range(plain.config.n_layer) for site in ADAPTER_SITES[config.placement]]
    assert {n for n, m in model.named_modules() if n.endswith(".adapter")} == {f"{s}.adapter" for s in sites}
    reference = copy.deepcopy(plain)
    with torch.no_grad():  # the adapted model's base tensors, trained LayerNorms included
        for n, p in reference.named_parameters():
            p.copy_(tensors[n])
    for site in sites:
        parent, _, child = site.rpartition(".")
        linear = reference.get_submodule(site)
        setattr(reference.get_submodule(parent), child, ReferenceAdapted(linear, site, tensors, config.activation))
    x = random_ids(model, 2)
    assert torch.allclose(model(x)[0], reference(x)[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_adapters_follow_the_base_dtype(dtype):
    """Catches adapters built in float32 beside a float64 or bf16 base (the forward pass fails on the mix)."""
    model = apply_strategy(base().to(dtype), AdapterConfig(bottleneck=4))
    assert {p.dtype for p in model.parameters()} == {dtype}
    assert model(ids())[0].dtype == dtype
