"""The built-in "tiny world": a seeded fictional world, text about it, and loaders for your own text.

Files, in reading order:
  lexicon.py       every name and noun the world may use (the closed vocabulary)
  world.py         build_world(seed): people, towns, animals, shops, products, companies, events
  knowledge.py     the reserved company's facts, which the pretraining corpus never mentions
  text.py          English helpers shared by the generators (articles, numbers, pronouns, templates)
  stories.py       short stories about residents and animals
  descriptions.py  descriptions of towns, shops, products, people, companies
  dialogues.py     two residents talking
  reviews.py       product reviews with a sentiment label
  reports.py       news reports (facts + summary) and short topic-labelled news items
  snippets.py      tiny Python functions with descriptions and a reference evaluator
  clinic.py        veterinary clinic notes: the domain corpus
  corpus.py        pretraining_corpus, domain_corpus, split, load_text_corpus
  batches.py       token streams and (x, y) batches for the training loop (imported on its own)
  tasks.py         the fine-tuning tasks (sentiment, topic, summarization, qa, code) and few-shot prompts
  jsonl.py         load_jsonl_task: your own task from a JSONL file
"""

from minitune.data.clinic import DOMAIN_JARGON, make_clinic_note
from minitune.data.corpus import (DOC_KINDS, domain_corpus, load_text_corpus, make_document,
                                  pretraining_corpus, split, word_counts)
from minitune.data.descriptions import make_description
from minitune.data.dialogues import make_dialogue
from minitune.data.knowledge import RESERVED_COMPANY, RESERVED_PRODUCTS, RESERVED_WORDS, Fact
from minitune.data.reports import TOPICS, make_report, make_topic_text
from minitune.data.reviews import SENTIMENTS, make_review
from minitune.data.snippets import CodeItem, make_code, make_code_document, make_code_item
from minitune.data.stories import make_animal_story, make_story
from minitune.data.world import World, build_world, reserved_facts
from minitune.data.tasks import (TASKS, Example, Task, code_source, few_shot_prompt, fit_shots, load_task,
                                 pick_shots, qa_fact_documents)
from minitune.data.jsonl import JSONL_KINDS, load_jsonl_task

__all__ = [
    "DOC_KINDS", "DOMAIN_JARGON", "RESERVED_COMPANY", "RESERVED_PRODUCTS", "RESERVED_WORDS", "SENTIMENTS",
    "TOPICS", "CodeItem", "Fact", "World", "build_world", "domain_corpus", "load_text_corpus",
    "make_animal_story", "make_clinic_note", "make_code", "make_code_document", "make_code_item",
    "make_description", "make_dialogue", "make_document", "make_report", "make_review", "make_story",
    "make_topic_text", "pretraining_corpus", "reserved_facts", "split", "word_counts",
    "JSONL_KINDS", "TASKS", "Example", "Task", "code_source", "few_shot_prompt", "fit_shots", "load_jsonl_task", "load_task",
    "pick_shots", "qa_fact_documents",
]
