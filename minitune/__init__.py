"""minitune: LLM fine-tuning, built by hand to be read."""

from minitune.errors import CheckpointError, ConfigError, DataError, MinituneError, TokenizerError
from minitune.model import GPT, GPTConfig
from minitune.pretrain import load_base, load_run, pretrain
from minitune.tokenizer import get_tokenizer

__version__ = "0.1.0"
__all__ = [
    "GPT", "GPTConfig", "get_tokenizer", "load_base", "load_run", "pretrain",
    "MinituneError", "ConfigError", "DataError", "CheckpointError", "TokenizerError",
]
