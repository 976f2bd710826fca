"""GPT-2's tokenizer files (vocab.json + merges.txt) written for tests, spelled here independently of
minitune.tokenizer so that its reader is checked against a second account of the format."""

import json

from minitune.tokenizer import EOT


def gpt2_byte_chars() -> dict[int, str]:
    """GPT-2's files write each byte as a printable stand-in: printable non-space bytes as themselves,
    the other 68 as chr(256), chr(257), ... in byte order (a space becomes 'Ġ')."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def write_gpt2_files(folder, merges: list[tuple[str, str]]) -> dict[str, int]:
    """vocab.json + merges.txt in GPT-2's layout: the 256 bytes in GPT-2's order, one token per merge (in
    merge order), then <|endoftext|>. Returns the vocabulary."""
    chars = gpt2_byte_chars()
    order = sorted(range(256), key=lambda b: ord(chars[b]))
    vocab = {chars[b]: i for i, b in enumerate(order)}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab[EOT] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return vocab
