"""Descriptions of towns, shops, products, people and companies: facts stated in varied order and words.

A description picks a few facts about one thing, states each with one of several templates, and shuffles
all but the first, so the same facts appear in many arrangements.
"""

from __future__ import annotations

import random
import re

from minitune.data import lexicon as lx
from minitune.data.text import (a_an, cap, count, fill, join_and, person_slots, plural,
                                product_slots, shop_slots, town_slots)
from minitune.data.world import World

_FIELD = re.compile(r"\{(\w+)\}")
# fields that name the subject; sharing them with the lead is expected, not a repeat
NAME_FIELDS = {"t_name", "s_name", "S_name", "p_name", "p_cat", "c_name", "name", "first", "he", "He", "his",
               "His", "him", "s_town", "s_a_kind"}
TOWN_LEAD = [
    "{t_name} is {t_a_size} town in {t_region}.",
    "The town of {t_name} lies {t_setting}, in {t_region}.",
    "{t_name}, {t_a_size} town in {t_region}, is known for {t_known}.",
    "If you travel through {t_region}, you will come to {t_name}.",
]
TOWN_FACTS = [
    ["It sits {t_setting}.", "The town was built {t_setting}.", "Its houses stand {t_setting}."],
    ["It is known for {t_known}.", "People come from far away for {t_known}.",
     "Ask anyone what {t_name} is famous for, and they will say {t_known}."],
    ["About {pop} people live there.", "It has about {pop} people and {n} streets.",
     "Fewer than {pop} people live in {t_name}, but it never feels empty."],
    ["The biggest shop is {s_name}, {s_a_kind} that sells {s_goods}.",
     "On the main street there is {s_a_kind} called {s_name}.",
     "{S_name}, which {s_owner} runs, is the oldest shop in town."],
    ["{e_name} is held there every year in {e_month}.", "In {e_month}, the town holds {e_name}.",
     "Nobody in {t_name} misses {e_name}, which comes every {e_month}."],
    ["The winters are {winter}, and the summers are {summer}.", "It rains there more than in {town2}.",
     "It is not as big as {town2}, but it is older."],
    ["{name}, {a_job}, is one of the people who live there.", "{name} has lived there for {n} years."],
]
SHOP_LEAD = [
    "{S_name} is {s_a_kind} in {s_town}.",
    "In {s_town} there is {s_a_kind} called {s_name}.",
    "{S_name} is {s_a_kind} on the main street of {s_town}.",
]
SHOP_FACTS = [
    ["It is run by {s_owner}.", "{s_owner} has run it for {n} years.", "The owner is {s_owner}."],
    ["It sells {s_goods}.", "You can buy {s_goods} there.", "Its shelves are full of {s_goods}."],
    ["It opens at {s_opens} in the morning and closes at {s_closes} in the evening.",
     "The doors open at {s_opens} and close at {s_closes} in the evening.",
     "It is open every day except {weekday}."],
    ["The {s_good} there is the best in {s_town}, or so people say.",
     "It is not a big shop, but it is always busy.", "It has a {colour} door and a small window."],
    ["{s_owner} knows every customer by name.", "On market days there is a line outside.",
     "It has been in the same family for {n} years.", "Some say the prices are high, but few complain."],
    ["It does not sell {missing}, so do not ask.", "If you want {missing}, you must go somewhere else.",
     "It stopped selling {missing} last year."],
]
PRODUCT_LEAD = [
    "The {p_name} is {p_a_colour} {p_cat} made by {p_maker}.",
    "{p_maker} makes the {p_name}, {p_a_cat} of {p_material}.",
    "The {p_name} is a {p_cat} for {p_use}.",
    "Meet the {p_name}: {p_a_colour} {p_cat} from {p_maker}.",
]
PRODUCT_FACTS = [
    ["It costs {p_price} coins.", "Its price is {p_price} coins.", "You can buy one for {p_price} coins."],
    ["It is made of {p_material}.", "It is made of good {p_material}.", "All of it is {p_material}."],
    ["Some people say it is too plain, but it sells well.", "It was first sold in {p_year}.",
     "It comes with a note that tells you how to look after it."],
    ["It is good for {p_use}.", "Most people use it for {p_use}.", "It was made for {p_use}."],
    ["It comes in {p_colour}, and only in {p_colour}.", "It is {p_colour}, like {colour_thing}."],
    ["{p_maker} is based in {c_town}.", "{p_maker} has made things in {c_town} since {c_year}."],
    ["It weighs about as much as {n} apples.", "It is not heavy, and it is not fragile.",
     "It is smaller than it looks in the shop window."],
]
PERSON_LEAD = [
    "{name} is {a_job} from {town}.",
    "{name} is {age} years old and lives in {town}.",
    "{name} works as {a_job} in {town}.",
]
PERSON_FACTS = [
    ["{He} is {age} years old.", "{He} was born {age} years ago."],
    ["{He} likes {like} and {like2}.", "{He} loves {like}.", "{He} enjoys {like}, but not {dislike}."],
    ["{He} does not like {dislike}.", "{He} cannot stand {dislike}.", "{He} has never liked {dislike}."],
    ["{He} works as {a_job}.", "{His} job is {job}, and {he} is good at it."],
    ["Most days {he} can be found near the {place}.", "{He} walks to the {place} every {weekday}.",
     "On {weekday}s {he} does not work."],
    ["{He} is not married.", "{He} has {n} brothers and a sister.", "{He} grew up in {town2}."],
]
PET_FACTS = ["{He} has {a_pet} called {pet}.", "{His} {pet_species} is named {pet}.",
             "{He} lives with {a_pet}, {pet}."]
NO_PET_FACTS = ["{He} does not have a pet.", "{He} has no pets, but {he} would like {a_animal}."]
COMPANY_LEAD = [
    "{c_name} was founded in {c_year} by {c_founder}.",
    "{c_name} is a company in {c_town} that makes {c_makes}.",
    "In {c_year}, {c_founder} started {c_name} in {c_town}.",
]
COMPANY_FACTS = [
    ["It makes {c_makes}.", "Its workshops turn out {c_makes}.", "It is best known for its {c_cats}."],
    ["It is based in {c_town}.", "Its only workshop is in {c_town}."],
    ["It was founded by {c_founder}.", "{c_founder} founded it in {c_year}."],
    ["One of its products is the {p_name}, which costs {p_price} coins.",
     "Its {p_name} sells for {p_price} coins."],
    ["It has about {n} workers.", "It is not a big company, but it is an old one."],
    ["Its goods are sold in shops all over {region}.", "It does not sell to shops outside {region}.",
     "Its workers start at {hour} every morning."],
]


def _compose(rng: random.Random, leads: list[str], facts: list[list[str]], s: dict[str, str], k: int) -> str:
    """A lead sentence, then up to `k` fact groups in random order, one template each.

    A group that states something the lead already said (shares a field with it, names aside) is left
    out, so a description does not say twice that a town is known for cheese.
    """
    lead = rng.choice(leads)
    said = set(_FIELD.findall(lead)) - NAME_FIELDS
    fresh = [g for g in facts if not said & {f for t in g for f in _FIELD.findall(t)}]
    chosen = rng.sample(fresh, min(k, len(fresh)))
    return " ".join(cap(fill(t, s)) for t in [lead] + [rng.choice(g) for g in chosen])


def describe_town(rng: random.Random, world: World) -> str:
    """A description of one town."""
    town = rng.choice(world.towns)
    shops = [s for s in world.shops if s.town == town.name] or list(world.shops)
    festive = [e for e in world.events if e.kind != "storm"]
    events = [e for e in festive if e.town == town.name] or festive
    people = [p for p in world.people if p.town == town.name] or list(world.people)
    event = rng.choice(events)
    s = {**town_slots(town), **shop_slots(rng.choice(shops)), **person_slots(rng.choice(people))}
    s.update(e_name=event.name, e_month=event.month, pop=str(rng.randrange(200, 9000, 50)),
             n=count(rng, rng.randint(3, 20)), town2=rng.choice([t.name for t in world.towns if t != town]),
             winter=rng.choice(["cold", "wet", "long", "mild"]), summer=rng.choice(["warm", "short", "dry"]))
    return _compose(rng, TOWN_LEAD, TOWN_FACTS, s, rng.randint(3, 5))


def describe_shop(rng: random.Random, world: World) -> str:
    """A description of one shop."""
    s = shop_slots(rng.choice(world.shops))
    s.update(missing=rng.choice(["fish", "rope", "boots", "paint", "wine", "nails"]))
    s.update(n=count(rng, rng.randint(2, 30)), weekday=rng.choice(["Sunday", "Monday", "Wednesday"]),
             colour=rng.choice(["red", "blue", "green", "yellow"]))
    return _compose(rng, SHOP_LEAD, SHOP_FACTS, s, rng.randint(3, 5))


def describe_product(rng: random.Random, world: World) -> str:
    """A description of one product."""
    p = rng.choice(world.products)
    c = next(c for c in world.companies if c.name == p.maker)
    s = product_slots(p)
    s.update(c_town=c.town, c_year=str(c.year), p_year=str(rng.randint(max(c.year, 1950), 2020)),
             n=count(rng, rng.randint(2, 9)),
             colour_thing={"red": "a cherry", "green": "grass", "blue": "the sky", "yellow": "butter",
                           "white": "snow", "black": "coal", "grey": "a cloud"}.get(p.colour, "a sunset"))
    return _compose(rng, PRODUCT_LEAD, PRODUCT_FACTS, s, rng.randint(3, 5))


def describe_person(rng: random.Random, world: World) -> str:
    """A description of one resident."""
    p = rng.choice(world.people)
    s = person_slots(p)
    s.update(a_animal=a_an(rng.choice(world.animals).species), place=rng.choice(lx.PLACES),
             weekday=rng.choice(lx.WEEKDAYS), n=count(rng, rng.randint(2, 5)),
             town2=rng.choice([t.name for t in world.towns if t.name != p.town]))
    facts = PERSON_FACTS + [PET_FACTS if p.pet else NO_PET_FACTS]
    return _compose(rng, PERSON_LEAD, facts, s, rng.randint(3, 5))


def describe_company(rng: random.Random, world: World) -> str:
    """A description of one company."""
    c = rng.choice(world.companies)
    own = [p for p in world.products if p.maker == c.name] or list(world.products)
    s = {"c_name": c.name, "c_year": str(c.year), "c_founder": c.founder, "c_town": c.town,
         "c_makes": join_and([plural(m) for m in c.makes]), "c_cats": plural(c.makes[0]),
         "n": count(rng, rng.randint(5, 90)),
         "region": next(t.region for t in world.towns if t.name == c.town),
         "hour": str(rng.randint(6, 9)), **product_slots(rng.choice(own))}
    return cap(_compose(rng, COMPANY_LEAD, COMPANY_FACTS, s, rng.randint(3, 4)))


DESCRIBERS = [describe_town, describe_shop, describe_product, describe_person, describe_company]


def make_description(rng: random.Random, world: World) -> str:
    """A description of a random town, shop, product, person or company."""
    return rng.choice(DESCRIBERS)(rng, world)
