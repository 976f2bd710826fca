"""Small English helpers the generators share: articles, numbers, lists, dates, pronouns, templates."""

from __future__ import annotations

import random
import re

from minitune.data import lexicon as lx
from minitune.data.world import Animal, Person, Product, Shop, Town

NUMBER_WORDS = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty",
]
PRONOUNS = {
    "she": {"he": "she", "him": "her", "his": "her", "hers": "hers"},
    "he": {"he": "he", "him": "him", "his": "his", "hers": "his"},
}
_FIELD = re.compile(r"\{(\w+)\}")


def number_word(n: int) -> str:
    """Spell 0..20 as a word ("three"); larger numbers stay digits."""
    return NUMBER_WORDS[n] if 0 <= n <= 20 else str(n)


def count(rng: random.Random, n: int) -> str:
    """A number written as a word or as digits, at random, so the model sees both forms."""
    return number_word(n) if rng.random() < 0.6 else str(n)


def a_an(phrase: str) -> str:
    """Prefix "a" or "an" by the sound of the first word (close enough for this vocabulary)."""
    first = phrase.split()[0].lower()
    vowel = first[0] in "aeiou" and not first.startswith(("uni", "use", "one"))
    return ("an " if vowel or first.startswith("hour") else "a ") + phrase


def cap(s: str) -> str:
    """Upper-case only the first character (str.capitalize would lower-case names)."""
    return s[:1].upper() + s[1:]


def join_and(items: list[str] | tuple[str, ...]) -> str:
    """ "a", "a and b", "a, b and c"."""
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def plural(noun: str) -> str:
    """The plural of a lexicon noun ("brush" -> "brushes", "knife" -> "knives")."""
    if noun.endswith("fe"):
        return noun[:-2] + "ves"
    return noun + ("es" if noun.endswith(("sh", "ch", "s", "x")) else "s")


def ordinal(n: int) -> str:
    """1 -> "1st", 12 -> "12th", 22 -> "22nd"."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def date_text(rng: random.Random, day: int, month: str) -> str:
    """The same date written one of three ways: "14 May", "the 14th of May", "May 14"."""
    return rng.choice([f"{day} {month}", f"the {ordinal(day)} of {month}", f"{month} {day}"])


def person_slots(p: Person, key: str = "") -> dict[str, str]:
    """Template fields for a person; `key` prefixes them so two people can share a template ("o_name")."""
    pr = PRONOUNS[p.pronoun]
    s = {"name": p.name, "first": p.first, "job": p.job, "a_job": a_an(p.job), "town": p.town,
         "age": str(p.age), "like": p.likes[0], "like2": p.likes[1], "dislike": p.dislikes[0],
         "he": pr["he"], "him": pr["him"], "his": pr["his"],
         "He": cap(pr["he"]), "His": cap(pr["his"])}
    if p.pet is not None:
        s.update(pet=p.pet.name, pet_species=p.pet.species, a_pet=a_an(p.pet.species))
    return {key + k: v for k, v in s.items()}


def fill(template: str, slots: dict[str, str]) -> str:
    """Fill {fields} from `slots`; a missing field is a bug in a template, so it raises KeyError."""
    return _FIELD.sub(lambda m: slots[m.group(1)], template)


def pick(rng: random.Random, templates: list[str], slots: dict[str, str]) -> str:
    """Choose one template and fill it."""
    return fill(rng.choice(templates), slots)


def common_slots(rng: random.Random) -> dict[str, str]:
    """Fields any template may use: a time phrase, a place, a weekday, a colour, an object, a food."""
    place = rng.choice(lx.PLACES)
    return {
        "when": rng.choice(["One morning", "One day", "Early one day", "That evening", "The next day",
                            "After lunch", f"On {rng.choice(lx.WEEKDAYS)}", f"In {rng.choice(lx.MONTHS)}",
                            "Later that week", "Just before dark"]),
        "place": place, "place2": rng.choice([p for p in lx.PLACES if p != place]),
        "where": rng.choice(lx.LOCATIONS).format(p=rng.choice(lx.PLACES)),
        "weekday": rng.choice(lx.WEEKDAYS), "month": rng.choice(lx.MONTHS),
        "colour": rng.choice(lx.COLOURS), "object": rng.choice(lx.OBJECTS), "food": rng.choice(lx.FOODS),
        "food2": rng.choice(lx.FOODS), "n": count(rng, rng.randint(2, 12)),
        "minutes": count(rng, rng.choice([5, 10, 15, 20, 30])),
    }


def animal_slots(a: Animal, key: str = "a_") -> dict[str, str]:
    """Template fields for a species: a_animal, a_animals, a_an_animal, a_sound, a_food, a_home, a_habit."""
    s = {"animal": a.species, "animals": a.plural, "an_animal": a_an(a.species), "sound": a.sound,
         "food": a.food, "home": a.home, "habit": a.habit}
    return {key + k: v for k, v in s.items()}


def town_slots(t: Town) -> dict[str, str]:
    """Template fields for a town: t_name, t_region, t_setting, t_size, t_known."""
    return {"t_name": t.name, "t_region": t.region, "t_setting": t.setting, "t_size": t.size,
            "t_a_size": a_an(t.size), "t_known": t.known_for}


def shop_slots(s: Shop) -> dict[str, str]:
    """Template fields for a shop: s_name (capitalised as a sentence start needs), s_kind, s_owner, ..."""
    return {"s_name": s.name, "S_name": cap(s.name), "s_kind": s.kind, "s_a_kind": a_an(s.kind),
            "s_owner": s.owner, "s_town": s.town, "s_goods": join_and(s.goods[:3]), "s_good": s.goods[0],
            "s_opens": str(s.opens), "s_closes": str(s.closes)}


def product_slots(p: Product, key: str = "p_") -> dict[str, str]:
    """Template fields for a product: p_name ("Tarn kettle"), p_cat, p_price, p_maker, p_colour, p_use."""
    s = {"name": p.name, "cat": p.category, "a_cat": a_an(p.category), "price": str(p.price),
         "maker": p.maker, "colour": p.colour, "a_colour": a_an(p.colour), "material": p.material,
         "use": p.use}
    return {key + k: v for k, v in s.items()}


# A plan is a list of steps in order. A step is a list of interchangeable templates (pick one), or a
# tuple of alternative sub-plans (follow one): branches keep an answer and its follow-up consistent.
Plan = list


def walk(rng: random.Random, plan: Plan) -> list[str]:
    """The templates along one random path through a plan."""
    out: list[str] = []
    for step in plan:
        if isinstance(step, tuple):
            out += walk(rng, rng.choice(step))
        else:
            out.append(rng.choice(step))
    return out
