"""The reserved knowledge base: facts about one company that the pretraining corpus never mentions.

A lesson fine-tunes on these facts and then asks questions about them; because neither the company's
name nor its product names occur in the pretraining text, anything the model answers correctly was put
there by fine-tuning (knowledge infusion), not remembered from pretraining.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from minitune.data import lexicon as lx

RESERVED_COMPANY = "Quillon Works"
# brand -> category; the brands are invented words that no list in lexicon.py contains
RESERVED_PRODUCTS = {
    "Lumo": "kettle", "Vessa": "lamp", "Tindra": "chair", "Orbel": "clock", "Kavi": "blanket",
    "Zephra": "kite", "Pendro": "stove", "Miskel": "basket", "Yoru": "cart", "Selvo": "raincoat",
}
# every word that must stay out of the pretraining corpus
RESERVED_WORDS = ("Quillon", *RESERVED_PRODUCTS)
STAFF_ROLES = [
    "head of sales", "chief engineer", "lead designer", "office manager", "delivery lead", "accountant",
    "head of support", "workshop foreman",
]
MOTTOS = ["made to last", "light and strong", "good work at a fair price", "small things done well"]
MASCOT_NAME = "Nim"


@dataclass(frozen=True)
class Fact:
    """One reserved fact: (subject, relation, value), a canonical sentence and a question it answers."""

    subject: str
    relation: str
    value: str
    sentence: str
    question: str


def _company_facts(rng: random.Random, founder: str, towns: list[str]) -> list[Fact]:
    """Facts about the company as a whole (founder, year, hours, policies, mascot)."""
    c = RESERVED_COMPANY
    year = rng.randint(1890, 1960)
    opens, closes = rng.randint(7, 9), rng.randint(5, 7)
    weekday, colour = rng.choice(lx.WEEKDAYS), rng.choice(lx.COLOURS)
    species = rng.choice(["heron", "otter", "badger", "hedgehog", "owl", "goat"])
    facts = [
        (c, "founder", founder, f"{c} was founded by {founder}.", f"Who founded {c}?"),
        (c, "founded_year", str(year), f"{c} was founded in {year}.", f"In which year was {c} founded?"),
        (c, "headquarters", towns[0], f"The head office of {c} is in {towns[0]}.",
         f"In which town is the head office of {c}?"),
        (c, "mascot", species, f"The mascot of {c} is a {species} called {MASCOT_NAME}.",
         f"What animal is the mascot of {c}?"),
        (c, "logo_colour", colour, f"The logo of {c} is {colour}.", f"What colour is the logo of {c}?"),
        (c, "motto", rng.choice(MOTTOS), "", f"What is the motto of {c}?"),
        (c, "opens_at", f"{opens} in the morning", f"The shops of {c} open at {opens} in the morning.",
         f"When do the shops of {c} open?"),
        (c, "closes_at", f"{closes} in the evening", f"The shops of {c} close at {closes} in the evening.",
         f"When do the shops of {c} close?"),
        (c, "closed_day", weekday, f"The shops of {c} are closed every {weekday}.",
         f"On which day are the shops of {c} closed?"),
        (c, "return_days", str(rng.choice([14, 21, 28, 30, 45, 60])), "",
         f"Within how many days can a customer return a product to {c}?"),
        (c, "warranty_years", str(rng.randint(2, 6)), "",
         f"How many years of warranty come with a product from {c}?"),
        (c, "delivery_days", str(rng.randint(2, 9)), "", f"Within how many days does {c} deliver an order?"),
        (c, "staff_count", str(rng.randint(40, 400)), "", f"How many people work for {c}?"),
        (c, "office_count", str(len(towns)), "", f"How many offices does {c} have?"),
    ]
    # sentences that read better written from the value, filled in here
    fill = {
        "motto": lambda v: f'The motto of {c} is "{v}".',
        "return_days": lambda v: f"Customers can return a product to {c} within {v} days.",
        "warranty_years": lambda v: f"Every product from {c} comes with a warranty of {v} years.",
        "delivery_days": lambda v: f"{c} delivers every order within {v} days.",
        "staff_count": lambda v: f"{v} people work for {c}.",
        "office_count": lambda v: f"{c} has {v} offices, in {', '.join(towns[:-1])} and {towns[-1]}.",
    }
    return [Fact(s, r, v, sent or fill[r](v), q) for s, r, v, sent, q in facts]


def _product_facts(rng: random.Random, towns: list[str]) -> list[Fact]:
    """Five facts per reserved product: price, colour, launch year, workshop town, material."""
    c, out = RESERVED_COMPANY, []
    for brand, category in RESERVED_PRODUCTS.items():
        p = f"the {brand} {category}"
        P = p[0].upper() + p[1:]
        price, colour = rng.randint(5, 150), rng.choice(lx.COLOURS)
        year, town, material = rng.randint(1965, 2020), rng.choice(towns), rng.choice(lx.MATERIALS)
        out += [
            Fact(p, "price", str(price), f"{P} from {c} costs {price} coins.",
                 f"How much does {p} from {c} cost?"),
            Fact(p, "colour", colour, f"{P} from {c} is {colour}.", f"What colour is {p} from {c}?"),
            Fact(p, "launch_year", str(year), f"{c} first sold {p} in {year}.",
                 f"In which year did {c} first sell {p}?"),
            Fact(p, "made_in", town, f"{P} is made in the {town} workshop of {c}.",
                 f"In which town does {c} make {p}?"),
            Fact(p, "material", material, f"{P} from {c} is made of {material}.",
                 f"What is {p} from {c} made of?"),
        ]
    return out


def _staff_facts(rng: random.Random, names: list[str], towns: list[str]) -> list[Fact]:
    """Two facts per staff member (role, office) and one per office (its manager)."""
    c, out = RESERVED_COMPANY, []
    for name, role in zip(names, STAFF_ROLES):
        town = rng.choice(towns)
        out += [
            Fact(name, "role", role, f"{name} is the {role} at {c}.", f"What is the job of {name} at {c}?"),
            Fact(name, "office", town, f"{name} works in the {town} office of {c}.",
                 f"In which office of {c} does {name} work?"),
        ]
    for town, name in zip(towns, names[len(STAFF_ROLES):]):
        out.append(Fact(f"the {town} office of {c}", "manager", name,
                        f"The {town} office of {c} is run by {name}.", f"Who runs the {town} office of {c}?"))
    return out


def build_reserved_facts(rng: random.Random, towns: list[str], names: list[str]) -> list[Fact]:
    """All reserved facts: `towns` are the office towns (head office first), `names` unused people names."""
    need = 1 + len(STAFF_ROLES) + len(towns)
    if len(names) < need:
        raise ValueError(f"need {need} unused names for the reserved company, got {len(names)}")
    founder, staff = names[0], names[1:need]
    return _company_facts(rng, founder, towns) + _product_facts(rng, towns) + _staff_facts(rng, staff, towns)
