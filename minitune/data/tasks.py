"""The fine-tuning tasks of Module 1, built on the tiny world: prompts, targets, splits, few-shot prompts.

An `Example` is a prompt that ends where the answer starts and a target that is the answer:

    sentiment      "Review: {review}\\nSentiment:"        -> " positive"             (classification)
    topic          "News: {item}\\nTopic:"                -> " weather"              (classification)
    summarization  "Report: {report}\\nSummary:"          -> " {one sentence}"       (generation, stop "\\n")
    qa             "Question: {question}\\nAnswer:"       -> " {value}"              (generation, stop "\\n")
    code           "# {description}\\ndef f(x, y):"       -> "\\n    return x + y"  (generation, stop "\\n\\n")

Conventions the trainer and the evaluator share:
- a target never holds the stop string; fine-tuning trains on `task.completion(ex)` (target + stop),
  generation is cut with `task.cut(text)` (at the stop or <|endoftext|>) and compared with the target;
- QA answers are the fact's value exactly ("6", "silver", "7 in the morning"): no units, so exact match
  and token F1 compare against the knowledge base itself;
- a code prompt gives the function's signature, so the name and parameters are given and the answer is
  the body: `code_source(ex, generated)` joins them into the function the evaluator runs. The prompt ends
  at the colon and the body starts with its newline because that is where the tokenizer cuts the same
  text in the pretraining corpus ("):" | "\\n   " | " return"); a prompt ending after the newline would
  ask the model to continue from a token it never saw there. A body ends without a newline, so a
  function followed by a blank line, which is how two functions are separated in the pretraining
  text, ends exactly at the stop "\\n\\n". Validation and test functions come from the held-out part of
  the function space (see `minitune.data.snippets`), which neither the pretraining corpus nor the
  training split ever contains.

Texts are kept short so they fit a 128-token context (the character caps in `MAX_CHARS`); the review's
header line ("Review of the X by Y:") is dropped, as it names the product, never an opinion. The test
split is drawn first, then validation, then train, so changing the train size leaves test unchanged.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from minitune.data.knowledge import RESERVED_COMPANY, Fact
from minitune.data.reports import TOPICS, make_report, make_topic_text
from minitune.data.reviews import SENTIMENTS, make_review
from minitune.data.snippets import CodeItem, make_code_item
from minitune.data.world import World, build_world, reserved_facts
from minitune.errors import ConfigError

TASKS = ("sentiment", "topic", "summarization", "qa", "code")
SPLITS = ("train", "validation", "test")
DEFAULT_SIZES = {"train": 2000, "validation": 200, "test": 200}
# longest text (characters) kept per task, so that examples fit a 128-token context. Measured with the
# built-in tokenizer: a sentiment or topic example is ~40 tokens (one shot always fits beside the question,
# two shots about 9 times in 10) and a summarization example at most 120 tokens (zero-shot only)
MAX_CHARS = {"sentiment": 110, "topic": 120, "summarization": 340}
EOT = "<|endoftext|>"
SHOT_SEPARATOR = "\n\n"   # a blank line between few-shot examples


@dataclass(frozen=True)
class Example:
    """One example: the prompt, the answer that follows it, and task-specific facts for evaluation."""

    prompt: str
    target: str
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """A task: its three splits, its label words (classification) and where a generated answer ends."""

    name: str
    kind: str                      # "classification" | "generation"
    train: tuple[Example, ...]
    validation: tuple[Example, ...]
    test: tuple[Example, ...]
    labels: tuple[str, ...] = ()   # classification: the label words, each answered as " " + word
    stop: str = "\n"               # a generated answer ends here (and at <|endoftext|>)

    def split(self, name: str) -> tuple[Example, ...]:
        """The examples of split `name` ("train", "validation" or "test")."""
        if name not in SPLITS:
            raise ConfigError(f"split must be one of {SPLITS}, got {name!r}")
        return getattr(self, name)

    def completion(self, example: Example) -> str:
        """What fine-tuning trains on after the prompt: the target, then the stop string."""
        return example.target + ("" if self.stop == EOT else self.stop)

    def cut(self, generated: str) -> str:
        """A generated continuation cut at the stop string or <|endoftext|>, trailing spaces removed."""
        for end in (self.stop, EOT):
            generated = generated.split(end, 1)[0]
        return generated.rstrip()

    def fit_shots(self, example: Example, shots: Sequence[Example], enc=None,
                  max_tokens: int | None = None) -> tuple[Example, ...]:
        """The shots `few_shot_prompt` keeps: room is left for the longest label, or for the target."""
        answer = example.target
        if self.labels:   # the longest label, so the gold label's length cannot change the prompt
            size = (lambda s: len(enc.encode_ordinary(s))) if enc is not None else len
            answer = max((" " + w for w in self.labels), key=size)
        return fit_shots(example, shots, enc, max_tokens, answer)

    def few_shot_prompt(self, example: Example, shots: Sequence[Example], enc=None,
                        max_tokens: int | None = None) -> str:
        """`shots` (prompt + target each) before the example's prompt, dropping shots that do not fit."""
        return _render(list(self.fit_shots(example, shots, enc, max_tokens)), example)


def fit_shots(example: Example, shots: Sequence[Example], enc=None, max_tokens: int | None = None,
              answer: str = "") -> tuple[Example, ...]:
    """The shots that fit: each is kept, in order, if the whole prompt + `answer` stays within budget.

    A shot whose prompt equals the example's is never used (it would give the answer away). When the
    question alone is over budget no shot is kept, and the prompt is the (too long) zero-shot one.
    """
    shots = [s for s in shots if s.prompt != example.prompt]
    if enc is None or max_tokens is None:
        return tuple(shots)
    kept: list[Example] = []
    for shot in shots:
        text = _render(kept + [shot], example) + answer
        # encode the whole prompt: BPE token counts of pieces do not add up exactly at the joins
        if len(enc.encode_ordinary(text)) <= max_tokens:
            kept.append(shot)
    return tuple(kept)


def few_shot_prompt(example: Example, shots: Sequence[Example], enc=None, max_tokens: int | None = None,
                    answer: str = "") -> str:
    """The k-shot prompt: every kept shot as prompt + target + a blank line, then the example's prompt."""
    return _render(list(fit_shots(example, shots, enc, max_tokens, answer)), example)


def _render(shots: list[Example], example: Example) -> str:
    return "".join(s.prompt + s.target + SHOT_SEPARATOR for s in shots) + example.prompt


def pick_shots(task: Task, k: int, seed: int = 0, exclude: Example | None = None) -> tuple[Example, ...]:
    """k random training examples; for classification one label after another, so shots are balanced."""
    rng = random.Random(f"shots:{task.name}:{seed}")
    pool = [e for e in task.train if exclude is None or e.prompt != exclude.prompt]
    if not task.labels:
        return tuple(rng.sample(pool, min(k, len(pool))))
    by_label = {w: [e for e in pool if e.meta.get("label") == w] for w in task.labels}
    order = rng.sample(task.labels, len(task.labels))
    shots = []
    for i in range(k):
        candidates = [e for e in by_label[order[i % len(order)]] if e not in shots]
        if candidates:
            shots.append(rng.choice(candidates))
    return tuple(shots)


# --- the built-in tasks --------------------------------------------------------------------------------

def _sentiment(rng: random.Random, world: World, label: str | None) -> Example | None:
    text, label = make_review(rng, world, label)
    body = text.split("\n", 1)[-1]   # drop the header line: it names the product, not an opinion
    if len(body) > MAX_CHARS["sentiment"]:
        return None
    return Example(f"Review: {body}\nSentiment:", f" {label}", {"label": label})


def _topic(rng: random.Random, world: World, label: str | None) -> Example | None:
    text, label = make_topic_text(rng, world, label)
    if len(text) > MAX_CHARS["topic"]:
        return None
    return Example(f"News: {text}\nTopic:", f" {label}", {"label": label})


def _summarization(rng: random.Random, world: World, label: None) -> Example | None:
    report, facts, summary = make_report(rng, world)
    if len(report) > MAX_CHARS["summarization"]:
        return None
    key = {k: facts[k] for k in ("who", "what", "where", "when")}
    return Example(f"Report: {report}\nSummary:", f" {summary}",
                   {"facts": key, "kind": facts["kind"], "summary": summary})


def code_inputs(item: CodeItem) -> tuple[tuple[int, ...], ...]:
    """Five argument tuples to test a function on: zero, negatives, positives (and an equal pair)."""
    rng = random.Random(f"code-inputs:{item.source}")
    small, big = lambda: rng.randint(1, 12), lambda: rng.randint(13, 60)
    if item.arity == 1:
        return ((0,), (-small(),), (small(),), (big(),), (-big(),))
    a = small()
    return ((0, small()), (-small(), small()), (big(), -small()), (a, a), (big(), small()))


def _code(rng: random.Random, world: World, label: None, held_out: bool = False) -> Example:
    item = make_code_item(rng, held_out)
    inputs = code_inputs(item)
    meta = {"fn_name": item.fn_name, "signature": item.signature, "arity": item.arity, "params": item.params,
            "recipe": item.recipe, "inputs": inputs, "outputs": tuple(item.reference(*args) for args in inputs),
            "executable": True}
    body = item.source.removeprefix(item.signature).rstrip("\n")   # "\n    return ..."
    return Example(f"# {item.description}\n{item.signature}", body, meta)


def code_source(example: Example, generated: str) -> str:
    """The function a code answer makes: the signature the prompt gave, then the generated body.

    For a code example without a signature in its prompt (your own JSONL), the answer is the whole source.
    """
    return example.meta.get("signature", "") + generated


DRAWS: dict[str, Callable[[random.Random, World, str | None], Example | None]] = {
    "sentiment": _sentiment, "topic": _topic, "summarization": _summarization, "code": _code,
}
LABELS = {"sentiment": SENTIMENTS, "topic": TOPICS}


def _draw_for(name: str, split: str) -> Callable[[random.Random, World, str | None], Example | None]:
    """How split `split` of task `name` draws an example: code evaluates on held-out functions only."""
    if name == "code":
        return lambda rng, world, label: _code(rng, world, label, held_out=split != "train")
    return DRAWS[name]


def _draw_split(n: int, draw: Callable, rng: random.Random, world: World, labels: tuple[str, ...],
                seen: set[str], what: str) -> tuple[Example, ...]:
    """n examples with prompts not in `seen` (which they join); labels cycle, so classes are balanced."""
    out: list[Example] = []
    tries, limit = 0, 100 * n + 1000   # the shortest reviews are ~1 draw in 10
    for i in range(n):
        label = labels[i % len(labels)] if labels else None
        while True:
            tries += 1
            if tries > limit:
                raise ConfigError(f"cannot draw {n} distinct {what} examples (got {len(out)}); ask for fewer")
            ex = draw(rng, world, label)
            if ex is not None and ex.prompt not in seen:
                break
        seen.add(ex.prompt)
        out.append(ex)
    rng.shuffle(out)
    return tuple(out)


def _sizes(sizes: Mapping[str, int] | None, defaults: Mapping[str, int]) -> dict[str, int]:
    """Defaults overridden by `sizes`; every size a positive int."""
    sizes = dict(sizes or {})
    unknown = set(sizes) - set(SPLITS)
    if unknown:
        raise ConfigError(f"sizes keys must be among {SPLITS}, got {sorted(unknown)}")
    out = {**defaults, **sizes}
    for k, v in out.items():
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ConfigError(f"sizes[{k!r}] must be a positive int, got {v!r}")
    return out


def task_kind(name: str) -> str:
    """A built-in task's kind without drawing it: "classification" (labels to pick) or "generation"."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}: the built-in tasks are {TASKS}")
    return "classification" if name in LABELS else "generation"


def load_task(name: str, seed: int = 0, sizes: Mapping[str, int] | None = None,
              world: World | None = None) -> Task:
    """A built-in task (one of `TASKS`), drawn from `world` (default `build_world(seed)`)."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}: the built-in tasks are {TASKS}")
    world = world if world is not None else build_world(seed)
    rng = random.Random(f"task:{name}:{seed}")
    if name == "qa":
        return _qa_task(world, rng, sizes)
    n = _sizes(sizes, DEFAULT_SIZES)
    labels = LABELS.get(name, ())
    seen: set[str] = set()
    # test first, so its examples do not depend on how many train examples are asked for
    parts = {s: _draw_split(n[s], _draw_for(name, s), rng, world, labels, seen, name) for s in reversed(SPLITS)}
    return Task(name, task_kind(name), parts["train"], parts["validation"],
                parts["test"], labels=labels, stop="\n\n" if name == "code" else "\n")


# --- question answering over the reserved facts ------------------------------------------------------------
# Five phrasings per relation. Train asks every fact with phrasings 0-2, validation with 3, test with 4:
# the answer to a test question was taught in training, but never in the words the test uses.
# Slots: {c} the company, {p} "the Lumo kettle", {name} a member of staff, {town} an office's town.
TRAIN_TEMPLATES, VALIDATION_TEMPLATE, TEST_TEMPLATE = (0, 1, 2), 3, 4
QA_TEMPLATES: dict[str, tuple[str, ...]] = {
    "founder": ("Who founded {c}?", "Who started {c}?", "Which person founded the company {c}?",
                "Who set up {c}?", "Who was the founder of {c}?"),
    "founded_year": ("In which year was {c} founded?", "When was {c} founded?", "What year did {c} start?",
                     "In what year was {c} set up?", "{c} was founded in which year?"),
    "headquarters": ("In which town is the head office of {c}?", "Where is the head office of {c}?",
                     "Which town is {c} based in?", "Where does {c} have its main office?",
                     "In what town is the main office of {c}?"),
    "mascot": ("What animal is the mascot of {c}?", "Which animal is the mascot of {c}?",
               "What kind of animal is Nim, the mascot of {c}?", "The mascot of {c} is what animal?",
               "What animal does {c} have as its mascot?"),
    "logo_colour": ("What colour is the logo of {c}?", "Which colour is the logo of {c}?",
                    "What is the colour of the logo of {c}?", "The logo of {c} is what colour?",
                    "What colour does {c} use for its logo?"),
    "motto": ("What is the motto of {c}?", "What motto does {c} have?", "Which words are the motto of {c}?",
              "What is the saying of {c}?", "What saying does {c} use as its motto?"),
    "opens_at": ("When do the shops of {c} open?", "At what time do the shops of {c} open?",
                 "What time does {c} open its shops?", "At what hour do the {c} shops open?",
                 "When does a shop of {c} open in the morning?"),
    "closes_at": ("When do the shops of {c} close?", "At what time do the shops of {c} close?",
                  "What time does {c} close its shops?", "At what hour do the {c} shops close?",
                  "When does a shop of {c} close in the evening?"),
    "closed_day": ("On which day are the shops of {c} closed?", "Which day of the week are the shops of {c} shut?",
                   "What day do the shops of {c} not open?", "On what day is {c} closed?",
                   "Which day can you not shop at {c}?"),
    "return_days": ("Within how many days can a customer return a product to {c}?",
                    "How many days do you have to return a product to {c}?",
                    "How long can a customer take to return something to {c}, in days?",
                    "For how many days can you take a product back to {c}?",
                    "How many days does {c} give customers to return a product?"),
    "warranty_years": ("How many years of warranty come with a product from {c}?",
                       "How long is the warranty on a product from {c}, in years?",
                       "How many years does the warranty of {c} last?",
                       "For how many years is a product from {c} under warranty?",
                       "What is the warranty of {c} in years?"),
    "delivery_days": ("Within how many days does {c} deliver an order?",
                      "How many days does {c} take to deliver an order?", "How fast does {c} deliver, in days?",
                      "In how many days will an order from {c} arrive?",
                      "How many days does an order from {c} take to come?"),
    "staff_count": ("How many people work for {c}?", "How many workers does {c} have?",
                    "What is the number of people working at {c}?", "How many people does {c} employ?",
                    "How big is the staff of {c}?"),
    "office_count": ("How many offices does {c} have?", "What is the number of offices of {c}?",
                     "In how many towns does {c} have an office?", "How many offices are run by {c}?",
                     "{c} has how many offices?"),
    "price": ("How much does {p} from {c} cost?", "What is the price of {p}?", "How many coins is {p}?",
              "What does {p} from {c} cost?", "How many coins do you pay for {p}?"),
    "colour": ("What colour is {p} from {c}?", "Which colour is {p}?", "What is the colour of {p}?",
               "In what colour does {c} sell {p}?", "What colour does {p} come in?"),
    "launch_year": ("In which year did {c} first sell {p}?", "When did {p} first go on sale?",
                    "What year was {p} first sold?", "Since what year has {c} sold {p}?",
                    "In what year did {p} come out?"),
    "made_in": ("In which town does {c} make {p}?", "Where is {p} made?", "Which workshop of {c} makes {p}?",
                "In what town is {p} built?", "Where does {p} from {c} come from?"),
    "material": ("What is {p} from {c} made of?", "What material is {p} made from?",
                 "Which material does {c} use for {p}?", "What is {p} built from?",
                 "Out of what material is {p} made?"),
    "role": ("What is the job of {name} at {c}?", "What does {name} do at {c}?",
             "Which job does {name} have at {c}?", "What is the role of {name} at {c}?",
             "What work does {name} do for {c}?"),
    "office": ("In which office of {c} does {name} work?", "Where does {name} work?",
               "In which town does {name} work for {c}?", "At which office of {c} can you find {name}?",
               "Which office is {name} based in?"),
    "manager": ("Who runs the {town} office of {c}?", "Who is in charge of the {town} office?",
                "Who manages the {town} office of {c}?", "Who leads the office of {c} in {town}?",
                "Which person runs the {town} office?"),
}


def qa_question(fact: Fact, template: int) -> str:
    """The question `fact` answers, in phrasing number `template` of its relation."""
    c = RESERVED_COMPANY
    town = fact.subject.removeprefix("the ").removesuffix(f" office of {c}")
    slots = {"c": c, "p": fact.subject, "name": fact.subject, "town": town}
    return QA_TEMPLATES[fact.relation][template].format(**slots)


def _qa_example(fact: Fact, template: int) -> Example:
    meta = {"answer": fact.value, "fact": fact.sentence, "subject": fact.subject, "relation": fact.relation,
            "template": template, "phrasing": QA_TEMPLATES[fact.relation][template]}
    return Example(f"Question: {qa_question(fact, template)}\nAnswer:", f" {fact.value}", meta)


def _qa_task(world: World, rng: random.Random, sizes: Mapping[str, int] | None) -> Task:
    """Every fact asked with the train phrasings in train, a new phrasing in validation and in test."""
    facts = reserved_facts(world)
    rounds = [[_qa_example(f, t) for f in facts] for t in TRAIN_TEMPLATES]
    for r in rounds:
        rng.shuffle(r)
    train = [e for r in rounds for e in r]   # phrasing 0 of every fact first, so any n >= facts covers all
    val = rng.sample([_qa_example(f, VALIDATION_TEMPLATE) for f in facts], len(facts))
    test = rng.sample([_qa_example(f, TEST_TEMPLATE) for f in facts], len(facts))
    n = _sizes(sizes, {"train": len(train), "validation": len(val), "test": len(test)})
    have = {"train": len(train), "validation": len(val), "test": len(test)}
    for s in SPLITS:
        if n[s] > have[s]:
            raise ConfigError(f"qa has {have[s]} {s} questions, {n[s]} asked for")
    if n["train"] < len(facts):
        raise ConfigError(f"qa train must ask each of the {len(facts)} facts once, {n['train']} asked for")
    train = train[:n["train"]]
    rng.shuffle(train)
    return Task("qa", "generation", tuple(train), tuple(val[:n["validation"]]), tuple(test[:n["test"]]))


def qa_fact_documents(seed: int = 0, world: World | None = None) -> list[str]:
    """The reserved facts' sentences, one document each: text to continue pretraining on."""
    world = world if world is not None else build_world(seed)
    return [f.sentence for f in reserved_facts(world)]
