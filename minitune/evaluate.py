"""Measuring a model on a task: zero-shot, few-shot (k solved examples in the context), or fine-tuned.

    classification   score every label word by the model's log-probability of it after the prompt
                     (summed over its tokens); the best-scoring label is the prediction. Accuracy, macro-F1.
    summarization    greedy generation, cut at the stop string; ROUGE-L F1 and key-fact recall.
    qa               greedy generation; exact match and token F1 against the knowledge base's value.
    code             greedy generation, run in the restricted evaluator (minitune.sandbox) on the task's
                     test inputs; pass@1 = share of functions right on every input. Refused code fails.
    your JSONL tasks the same for classification; generation tasks get exact match, token F1, ROUGE-L.

Every input is built on the device the model's weights are on (or the `device` a caller names).
Generation is greedy, so a result depends only on the model, the prompts and the seed that picks the
few-shot examples; nothing else is random.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from minitune.data.batches import TokenStream, encode_documents
from minitune.data.tasks import Example, Task, code_source, few_shot_prompt, pick_shots
from minitune.metrics import accuracy, exact_match, key_fact_recall, macro_f1, rouge_l, token_f1
from minitune.errors import UnsafeCodeError
from minitune.sandbox import CallFailed, CodeCrashed, CodeTimedOut, WrongFunctionName, run_function
from minitune.train import device_of, evaluate_loss

EVAL_BATCH = 64  # rows per forward pass when scoring labels
GENERATE_BATCH = 32  # prompts of one length decoded together
# The one number each built-in task is judged by (evaluate_task reports more).
HEADLINE_METRIC = {"sentiment": "accuracy", "topic": "accuracy", "summarization": "rougeL_f1", "qa": "exact_match",
                   "code": "pass@1"}


def kept_shots(task: Task, example: Example, shots: int, enc, room: int, seed: int = 0) -> tuple[Example, ...]:
    """Which of `shots` solved training examples fit before the example's prompt in `room` tokens."""
    if shots == 0:
        return ()
    return task.fit_shots(example, pick_shots(task, shots, seed=seed, exclude=example), enc, room)


def prompt_for(task: Task, example: Example, shots: int, enc, room: int, seed: int = 0) -> str:
    """The example's prompt, after `shots` solved training examples if they fit in `room` tokens."""
    return few_shot_prompt(example, kept_shots(task, example, shots, enc, room, seed))


def _fit(ids: list[int], room: int) -> list[int]:
    """Keep the last `room` tokens: a prompt too long for the context loses its beginning."""
    return ids[max(0, len(ids) - room):]


@torch.no_grad()
def label_logprobs(model, enc, prompts: list[str], labels: tuple[str, ...], device=None) -> torch.Tensor:
    """(N, L): log p(" " + label | prompt), summed over the label's tokens, for every prompt and label."""
    model.eval()
    device = device or device_of(model)
    label_ids = [enc.encode_ordinary(" " + w) for w in labels]
    room = model.max_input_tokens
    rows = []  # (ids, first label position, label ids)
    for prompt in prompts:
        p = enc.encode_ordinary(prompt)
        for lab in label_ids:
            ids = _fit(p + lab, room + 1)  # the last token is only a target
            rows.append((ids, len(ids) - len(lab), lab))
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))  # rows of like length together: little padding
    scores = [torch.zeros(())] * len(rows)
    for start in range(0, len(rows), EVAL_BATCH):
        chunk = order[start : start + EVAL_BATCH]
        T = max(len(rows[i][0]) for i in chunk) - 1
        x = torch.full((len(chunk), T), enc.eot_token, dtype=torch.long)
        for b, i in enumerate(chunk):
            x[b, : len(rows[i][0]) - 1] = torch.tensor(rows[i][0][:-1])
        logp = F.log_softmax(model(x.to(device))[0].float(), dim=-1).cpu()  # (B, T, V)
        for b, i in enumerate(chunk):
            _, first, lab = rows[i]
            positions = torch.arange(first - 1, first - 1 + len(lab))  # logits at i predict token i + 1
            scores[i] = logp[b, positions, torch.tensor(lab)].sum()
    return torch.stack(scores).view(len(prompts), len(labels))


def classify_scores(model, enc, examples, labels: tuple[str, ...], prompts: list[str] | None = None,
                    device=None) -> tuple[list[str], dict]:
    """Predicted labels, plus accuracy and label loss: -log p(gold label), p normalised over the label words.

    One scoring pass; `prompts` (e.g. few-shot ones) default to the examples' own.
    """
    scores = label_logprobs(model, enc, prompts or [ex.prompt for ex in examples], labels, device)  # (N, labels)
    gold = torch.tensor([labels.index(ex.target.strip()) for ex in examples])
    picked = scores.argmax(dim=1)
    return [labels[i] for i in picked.tolist()], {
        "accuracy": float((picked == gold).float().mean()),
        "label loss": float(-scores.log_softmax(dim=1)[torch.arange(len(examples)), gold].mean())}


@lru_cache(maxsize=16)
def stop_token_ids(enc, stop: str) -> frozenset[int]:
    """<|endoftext|> and every token whose text contains the stop string."""
    stop_b = stop.encode("utf-8")
    ids = {enc.eot_token}
    for t in range(enc.n_vocab):
        try:
            if stop_b in enc.decode_single_token_bytes(t):
                ids.add(t)
        except KeyError:  # ids between the ordinary and the special tokens
            pass
    return frozenset(ids)


@torch.no_grad()
def generate_text(model, enc, prompt: str, max_new_tokens: int, stop: str = "\n", temperature: float = 0.0,
                  top_k: int | None = None, generator: torch.Generator | None = None, device=None) -> str:
    """The model's continuation of prompt (greedy at temperature 0), cut where `stop` first appears."""
    model.eval()
    device = device or device_of(model)
    ids = _fit(enc.encode_ordinary(prompt), max(1, model.max_input_tokens - max_new_tokens))
    x = torch.tensor([ids], dtype=torch.long, device=device)
    out = model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k,
                         stop_tokens=stop_token_ids(enc, stop), generator=generator)
    return _cut(enc.decode(out[0, len(ids):].tolist()), stop)


@torch.no_grad()
def generate_texts(model, enc, prompts: list[str], max_new_tokens: int, stop: str = "\n", device=None) -> list[str]:
    """Greedy continuations of many prompts, each cut where `stop` first appears: generate_text for every
    prompt, decoded GENERATE_BATCH at a time.

    Prompts of the same token length go together, so no row is padded: each row sees exactly its own
    tokens and positions, and gets the tokens it gets decoded alone (a row that stops early repeats its
    stop token until the batch is done; the cut removes them).
    """
    model.eval()
    device = device or device_of(model)
    ids = [_fit(enc.encode_ordinary(p), max(1, model.max_input_tokens - max_new_tokens)) for p in prompts]
    by_length: dict[int, list[int]] = {}
    for i, row in enumerate(ids):
        by_length.setdefault(len(row), []).append(i)
    texts = [""] * len(prompts)
    for length, members in sorted(by_length.items()):
        for start in range(0, len(members), GENERATE_BATCH):
            chunk = members[start : start + GENERATE_BATCH]
            x = torch.tensor([ids[i] for i in chunk], dtype=torch.long, device=device)
            out = model.generate(x, max_new_tokens, stop_tokens=stop_token_ids(enc, stop))
            for i, row in zip(chunk, out[:, length:].tolist()):
                texts[i] = _cut(enc.decode(row), stop)
    return texts


def _cut(text: str, stop: str) -> str:
    """A generated text up to the stop string (or <|endoftext|>), without trailing blanks."""
    return text.split(stop, 1)[0].split("<|endoftext|>", 1)[0].rstrip()


def answer_budget(task: Task, enc) -> int:
    """New tokens to allow: the longest training target, plus a few for the stop string."""
    return max(len(enc.encode_ordinary(task.completion(ex))) for ex in task.train[:500]) + 4


def code_passes(source: str, meta: dict) -> tuple[str, str]:
    """(outcome, why): "passed", or how the generated function failed on the reference test inputs.

    Outcomes: "refused" (unsafe code, never run), "wrong_name" (safe, but not the function asked for),
    "timed_out", "crashed" (a call raised, or the process running it died) and "wrong_answer"; a function
    that both crashes on one input and is wrong on another counts as crashed.
    """
    name = meta["fn_name"]
    try:
        outputs = run_function(source, name, [tuple(a) for a in meta["inputs"]])
    except WrongFunctionName as e:  # the subclasses first: each is also an UnsafeCodeError
        return "wrong_name", str(e)
    except CodeTimedOut as e:
        return "timed_out", str(e)
    except CodeCrashed as e:
        return "crashed", str(e)
    except UnsafeCodeError as e:
        return "refused", str(e)
    calls = list(zip(meta["inputs"], outputs, meta["outputs"]))
    for args, got, _ in calls:
        if isinstance(got, CallFailed):
            return "crashed", f"{name}{tuple(args)} failed: {got.reason}"
    for args, got, want in calls:
        if got != want or type(got) is not type(want):
            return "wrong_answer", f"{name}{tuple(args)} = {got!r}, expected {want!r}"
    return "passed", ""


def mean(values) -> float:
    """The average as a float (bools count 0 or 1)."""
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else float("nan")


def score_generation(task: Task, examples, predictions: list[str]) -> dict:
    """The task's generation metrics, averaged over examples."""
    targets = [ex.target.strip() for ex in examples]
    if task.name == "code" and examples and examples[0].meta.get("executable"):
        outcomes = [code_passes(code_source(ex, p), ex.meta)[0] for ex, p in zip(examples, predictions)]
        # pass@1 and the share of each way to fail; together they add up to 1
        return {"pass@1": mean(o == "passed" for o in outcomes),
                **{kind: mean(o == kind for o in outcomes)
                   for kind in ("refused", "wrong_name", "timed_out", "crashed", "wrong_answer")}}
    if task.name == "summarization":
        return {"rougeL_f1": mean(rouge_l(p, t)["f1"] for p, t in zip(predictions, targets)),
                "key_fact_recall": mean(key_fact_recall(p, ex.meta["facts"].values())
                                        for p, ex in zip(predictions, examples))}
    scores = {"exact_match": mean(exact_match(p, t) for p, t in zip(predictions, targets)),
              "token_f1": mean(token_f1(p, t) for p, t in zip(predictions, targets))}
    if task.name != "qa":
        scores["rougeL_f1"] = mean(rouge_l(p, t)["f1"] for p, t in zip(predictions, targets))
    return scores


def evaluate_task(model, enc, task: Task, split: str = "test", shots: int = 0, limit: int | None = None,
                  seed: int = 0, device=None) -> dict:
    """Metrics of model on one split of task, with `shots` examples asked for in each prompt (`shots_kept`:
    how many fitted the context, on average); plus a few samples."""
    examples = task.split(split)[:limit]
    room = model.max_input_tokens
    if task.kind == "classification":
        room -= max(len(enc.encode_ordinary(" " + w)) for w in task.labels)
    else:
        budget = answer_budget(task, enc)
        room -= budget
    kept = [kept_shots(task, ex, shots, enc, room, seed) for ex in examples]
    prompts = [few_shot_prompt(ex, k) for ex, k in zip(examples, kept)]
    if task.kind == "classification":
        predictions, scores = classify_scores(model, enc, examples, task.labels, prompts, device)
        golds = [ex.target.strip() for ex in examples]
        metrics = {"accuracy": accuracy(predictions, golds), "macro_f1": macro_f1(predictions, golds, task.labels),
                   "label_loss": scores["label loss"]}
    else:
        predictions = generate_texts(model, enc, prompts, budget, task.stop, device=device)
        metrics = score_generation(task, examples, predictions)
    samples = [{"prompt": ex.prompt, "prediction": p, "target": ex.target.strip()}
               for ex, p in zip(examples[:3], predictions)]
    return {"task": task.name, "split": split, "shots": shots, "shots_kept": mean(len(k) for k in kept) if kept else 0.0,
            "n": len(examples), **metrics, "samples": samples}


def perplexity(model, enc, docs: list[str], device=None, max_batches: int = 20) -> float:
    """exp(mean cross-entropy per token) of the model on documents (joined by <|endoftext|>)."""
    stream = TokenStream(encode_documents(enc, docs), model.max_input_tokens, batch_size=16,
                         max_eval_batches=max_batches)
    return math.exp(evaluate_loss(model, stream.eval_batches(), device))
