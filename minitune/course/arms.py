"""What a sweep runs: a strategy by its name ("lora": its default config), or a recipe of it, the name with
the settings that replace its defaults: "lora(r=4, targets=c_attn+mlp.c_fc)". On the command line arms are
separated by commas outside parentheses (`minitune sweep --strategies "full,lora(r=32)"`).
"""

from __future__ import annotations

import re

from minitune.errors import ConfigError
from minitune.strategies import STRATEGIES

FAMILIES = {"classification": "sentiment", "generation": "qa"}  # the task that stands for each family's default

def split_arms(text: str) -> tuple[str, ...]:
    """A comma-separated list of arms; commas inside an arm's parentheses stay in it."""
    arms, depth, part = [], 0, ""
    for ch in text:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            arms.append(part)
            part = ""
        else:
            part += ch
    return tuple(a.strip() for a in arms + [part] if a.strip())


def arm(spec: str) -> tuple[str, dict]:
    """A swept arm: a strategy's name, alone ("lora", its default config) or with settings that replace the
    defaults, "lora(r=4, targets=c_attn+mlp.c_fc)": numbers and true/false are read as such, '+' joins targets."""
    m = re.fullmatch(r"\s*([a-z0-9]+)\s*(?:\((.*)\))?\s*", spec)
    if not m or m[1] not in STRATEGIES:
        raise ConfigError(f"{spec!r} is not a strategy among {sorted(STRATEGIES)}, alone or as name(key=value, ...)")
    fields = {}
    for part in filter(None, (p.strip() for p in (m[2] or "").split(","))):
        key, eq, value = (t.strip() for t in part.partition("="))
        if not eq or not key.isidentifier() or not value:
            raise ConfigError(f"in {spec!r}: {part!r} is not key=value")
        fields[key] = tuple(value.split("+")) if key == "targets" else _number(value)
    try:
        STRATEGIES[m[1]][0](**fields)
    except TypeError as e:
        raise ConfigError(f"in {spec!r}: {e}") from None
    return m[1], fields


def arm_config(spec: str):
    """The config an arm runs: its strategy's defaults with the arm's settings in place."""
    name, fields = arm(spec)
    return STRATEGIES[name][0](**fields)


def arm_label(spec: str) -> str:
    """How a lesson names an arm: "full FT", or a low-rank strategy with its recipe ("LoRA r 8 on c_attn")."""
    config = arm_config(spec)
    if config.name == "full":
        return "full FT"
    recipe = getattr(config, "recipe", None)
    return f"{LABELS.get(config.name, config.name)} {recipe}" if recipe else spec


LABELS = {"lora": "LoRA", "dora": "DoRA", "qlora": "QLoRA"}


def _number(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)
