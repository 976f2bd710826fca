"""Arbitrary bytes and malformed records into every reader: each works or raises the project's own error."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minitune.checkpoint import load_model, load_tensors, safe_torch_load
from minitune.data import load_text_corpus
from minitune.data.jsonl import load_jsonl_task
from minitune.errors import MinituneError
from minitune.tokenizer import get_tokenizer, read_ranks

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def survives(call) -> None:
    """call() returns, or raises a MinituneError: nothing else."""
    try:
        call()
    except MinituneError:
        pass


@FUZZ
@given(st.binary(max_size=400))
def test_checkpoint_readers_on_arbitrary_bytes(tmp_path, data):
    (tmp_path / "f.safetensors").write_bytes(data)
    (tmp_path / "f.pt").write_bytes(data)
    survives(lambda: load_tensors(tmp_path / "f.safetensors"))
    survives(lambda: safe_torch_load(tmp_path / "f.pt"))
    (tmp_path / "config.json").write_bytes(data)
    (tmp_path / "model.safetensors").write_bytes(data)
    survives(lambda: load_model(tmp_path))


@FUZZ
@given(st.lists(st.one_of(st.none(), st.integers(), st.text(max_size=5), st.dictionaries(st.text(max_size=8),
                                                                                      st.integers())), max_size=4))
def test_run_config_with_malformed_fields(tmp_path, junk):
    (tmp_path / "config.json").write_text(json.dumps({"model": junk[0] if junk else {}, "sha256": None}))
    (tmp_path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    survives(lambda: load_model(tmp_path))


@FUZZ
@given(st.binary(max_size=400), st.sampled_from(["classification", "summarization", "qa", "code"]))
def test_jsonl_loaders_on_arbitrary_bytes(tmp_path, data, kind):
    (tmp_path / "d.jsonl").write_bytes(data)
    survives(lambda: load_jsonl_task(tmp_path / "d.jsonl", kind))
    survives(lambda: load_text_corpus(tmp_path / "d.jsonl"))


@FUZZ
@given(st.lists(st.one_of(st.dictionaries(st.sampled_from(["text", "label", "document", "summary", "question",
                                                            "answer", "instruction", "input", "output"]),
                                          st.one_of(st.text(max_size=12), st.integers(), st.none())),
                          st.integers(), st.text(max_size=6)), min_size=1, max_size=12),
       st.sampled_from(["classification", "summarization", "qa", "code"]))
def test_jsonl_loaders_on_malformed_records(tmp_path, records, kind):
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    survives(lambda: load_jsonl_task(tmp_path / "d.jsonl", kind))


@FUZZ
@given(st.binary(max_size=300))
def test_tokenizer_ranks_file_and_decoding(tmp_path, data):
    (tmp_path / "r.tiktoken").write_bytes(data)
    survives(lambda: read_ranks(tmp_path / "r.tiktoken"))
    enc = get_tokenizer("minitune")
    ids = list(data[: len(data) // 2 * 2])
    ids = [(a << 8 | b) % enc.n_vocab for a, b in zip(ids[::2], ids[1::2])]
    assert isinstance(enc.decode(ids), str)  # any ids in range decode (invalid UTF-8 is replaced)
    text = data.decode("utf-8", errors="replace")
    assert enc.decode(enc.encode_ordinary(text)) == text
