"""Corpora: the pretraining mix, the clinic-notes domain corpus, a train/val split, and user text files.

A corpus is a list of documents (strings); the tokenizer puts `<|endoftext|>` between them. Generation
is deterministic: one `random.Random` per corpus, seeded from a string (Python seeds those through
SHA-512, so PYTHONHASHSEED does not matter), documents drawn one after another, so a shorter corpus is a
prefix of a longer one with the same seed.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from minitune.data.clinic import make_clinic_note
from minitune.data.descriptions import make_description
from minitune.data.dialogues import make_dialogue
from minitune.data.reports import make_report, make_topic_text
from minitune.data.reviews import make_review
from minitune.data.snippets import make_code_document
from minitune.data.stories import make_animal_story, make_story
from minitune.data.world import World, build_world
from minitune.errors import ConfigError, DataError

DEFAULT_PRETRAIN_BYTES = 4_000_000
DEFAULT_DOMAIN_BYTES = 400_000
# kind -> (share of the pretraining mix, generator); the reserved company appears in none of them
DOC_KINDS: dict[str, tuple[float, Callable[[random.Random, World], str]]] = {
    "story": (0.20, make_story),
    "animal_story": (0.06, make_animal_story),
    "description": (0.14, make_description),
    "dialogue": (0.14, make_dialogue),
    "review": (0.13, lambda rng, world: make_review(rng, world)[0]),
    "report": (0.12, lambda rng, world: make_report(rng, world)[0]),
    "topic": (0.09, lambda rng, world: make_topic_text(rng, world)[0]),
    "code": (0.12, lambda rng, world: make_code_document(rng)),
}
WORD_RE = re.compile(r"[A-Za-z]+")


def make_document(rng: random.Random, world: World, kind: str | None = None) -> str:
    """One pretraining document of `kind` (a key of `DOC_KINDS`), or of a kind drawn by the mix weights."""
    if kind is None:
        kind = rng.choices(list(DOC_KINDS), weights=[w for w, _ in DOC_KINDS.values()])[0]
    elif kind not in DOC_KINDS:
        raise ConfigError(f"kind must be one of {sorted(DOC_KINDS)}, got {kind!r}")
    return DOC_KINDS[kind][1](rng, world)


def _generate(make: Callable[[random.Random, World], str], rng: random.Random, world: World,
              n_docs: int | None, target_bytes: int | None, default_bytes: int) -> list[str]:
    """Draw documents until `n_docs` or `target_bytes` (UTF-8 bytes of the texts) is reached."""
    for name, value in (("n_docs", n_docs), ("target_bytes", target_bytes)):
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ConfigError(f"{name} must be a positive int, got {value!r}")
    if n_docs is None and target_bytes is None:
        target_bytes = default_bytes
    docs: list[str] = []
    size = 0
    while (n_docs is None or len(docs) < n_docs) and (target_bytes is None or size < target_bytes):
        doc = make(rng, world)
        docs.append(doc)
        size += len(doc.encode("utf-8"))
    return docs


def pretraining_corpus(n_docs: int | None = None, target_bytes: int | None = None, seed: int = 0,
                       world: World | None = None) -> list[str]:
    """The general pretraining mix: stops at `n_docs` or `target_bytes`, whichever comes first."""
    world = world if world is not None else build_world(seed)
    return _generate(make_document, random.Random(f"pretrain:{seed}"), world, n_docs, target_bytes,
                     DEFAULT_PRETRAIN_BYTES)


def domain_corpus(n_docs: int | None = None, target_bytes: int | None = None, seed: int = 0,
                  world: World | None = None) -> list[str]:
    """Veterinary clinic notes about the same world: the domain-adaptation corpus."""
    world = world if world is not None else build_world(seed)
    return _generate(make_clinic_note, random.Random(f"domain:{seed}"), world, n_docs, target_bytes,
                     DEFAULT_DOMAIN_BYTES)


def split(docs: list[str], val_fraction: float = 0.1, seed: int = 0) -> tuple[list[str], list[str]]:
    """Deduplicate, then send a seeded random `val_fraction` of the documents to validation."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction!r}")
    # dedupe first: an identical document on both sides would make validation loss a memory test
    unique = list(dict.fromkeys(docs))
    if len(unique) < 2:
        raise DataError(f"need at least 2 distinct documents to split, got {len(unique)}")
    n_val = min(len(unique) - 1, max(1, round(len(unique) * val_fraction)))
    order = list(range(len(unique)))
    random.Random(f"split:{seed}").shuffle(order)
    val_idx = set(order[:n_val])
    train = [d for i, d in enumerate(unique) if i not in val_idx]
    val = [d for i, d in enumerate(unique) if i in val_idx]
    return train, val


def word_counts(docs: Iterable[str]) -> Counter[str]:
    """How often each lower-cased word (a run of ASCII letters) occurs: the corpus's vocabulary."""
    counts: Counter[str] = Counter()
    for doc in docs:
        counts.update(w.lower() for w in WORD_RE.findall(doc))
    return counts


def _read_utf8(path: Path) -> str:
    """The file's text, or a DataError that names the file and what went wrong."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: not valid UTF-8 (byte {e.start})") from None
    return text.replace("\r\n", "\n").removeprefix("\ufeff")


def _parse_jsonl(path: Path, text: str) -> list[str]:
    """One {"text": "..."} object per non-blank line."""
    docs = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise DataError(f'{path}: line {lineno}: expected an object with a string "text" field')
        if not obj["text"].strip():
            raise DataError(f'{path}: line {lineno}: "text" is empty')
        docs.append(obj["text"])
    return docs


def load_text_corpus(path: str | Path) -> list[str]:
    """Documents from a .jsonl file ({"text": ...} per line) or a plain-text file (blank-line separated)."""
    path = Path(path)
    text = _read_utf8(path)
    if path.suffix.lower() == ".jsonl":
        docs = _parse_jsonl(path, text)
    else:
        # one or more blank (or whitespace-only) lines end a document
        docs = [d.strip() for d in re.split(r"\n[ \t]*\n", text) if d.strip()]
    if not docs:
        raise DataError(f"{path}: no documents found (the file is empty)")
    return docs
