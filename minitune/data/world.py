"""The tiny world: people, towns, animals, shops, products, companies and events, built from one seed.

Every choice goes through one `random.Random(seed)`, never the global RNG and never `hash()` of a string
(which changes with PYTHONHASHSEED), so the same seed gives the same world in every process.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from minitune.data import lexicon as lx
from minitune.data.knowledge import Fact, build_reserved_facts

N_PEOPLE, N_SHOPS, N_PRODUCTS, N_COMPANIES, N_EVENTS = 72, 24, 40, 10, 24


@dataclass(frozen=True)
class Pet:
    """A person's pet: its name and species."""

    name: str
    species: str


@dataclass(frozen=True)
class Person:
    """A resident: pronoun is "she" or "he"; likes and dislikes come from `lexicon.LIKES`."""

    name: str
    first: str
    family: str
    pronoun: str
    age: int
    job: str
    town: str
    pet: Pet | None
    likes: tuple[str, ...]
    dislikes: tuple[str, ...]


@dataclass(frozen=True)
class Town:
    """A town, its region and the river, hill, sea, lake or forest beside it."""

    name: str
    region: str
    feature: str        # "river", "hill", "sea", "lake" or "forest"
    feature_name: str   # the river's or hill's name; "" for the others
    size: str
    known_for: str

    @property
    def setting(self) -> str:
        """Where the town lies, as a phrase: "on the banks of the river Ousel"."""
        return lx.FEATURES[self.feature].format(name=self.feature_name)


@dataclass(frozen=True)
class Animal:
    """A species and what the text may say about it."""

    species: str
    plural: str
    sound: str
    food: str
    home: str
    habit: str


@dataclass(frozen=True)
class Company:
    """A maker of products: founded in `town` by `founder` in `year`."""

    name: str
    town: str
    makes: tuple[str, ...]   # product categories
    founder: str
    year: int


@dataclass(frozen=True)
class Product:
    """A named product ("the Tarn kettle"), its category, price in coins, maker and colour."""

    name: str
    category: str
    price: int
    maker: str
    colour: str
    material: str
    use: str


@dataclass(frozen=True)
class Shop:
    """A shop in a town, run by `owner` (a person's name), selling `goods`."""

    name: str
    kind: str
    owner: str
    town: str
    goods: tuple[str, ...]
    opens: int
    closes: int


@dataclass(frozen=True)
class Event:
    """A festival, market or storm on a day of a month in a town."""

    name: str
    kind: str   # "festival", "market" or "storm"
    town: str
    day: int
    month: str


@dataclass(frozen=True)
class World:
    """Everything the text generators may talk about, plus the reserved facts they must not."""

    seed: int
    people: tuple[Person, ...]
    towns: tuple[Town, ...]
    animals: tuple[Animal, ...]
    shops: tuple[Shop, ...]
    products: tuple[Product, ...]
    companies: tuple[Company, ...]
    events: tuple[Event, ...]
    reserved: tuple[Fact, ...]


def _towns(rng: random.Random) -> list[Town]:
    """One town per name in the lexicon, each given a region and a feature."""
    out = []
    for name in lx.TOWN_NAMES:
        feature = rng.choice(sorted(lx.FEATURES))
        feature_name = {"river": rng.choice(lx.RIVERS), "hill": rng.choice(lx.HILLS)}.get(feature, "")
        out.append(Town(name, rng.choice(lx.REGIONS), feature, feature_name, rng.choice(lx.TOWN_SIZES),
                        rng.choice(lx.KNOWN_FOR)))
    return out


def _all_names(rng: random.Random) -> list[tuple[str, str, str]]:
    """Every (first, family, pronoun) combination, shuffled; callers take distinct ones from the front.

    The order spreads first names out (each first name once before any twice), so the residents taken
    from the front are not eight people called Davin.
    """
    combos = [(f, fam, "she") for f in lx.FEMALE_NAMES for fam in lx.FAMILY_NAMES]
    combos += [(f, fam, "he") for f in lx.MALE_NAMES for fam in lx.FAMILY_NAMES]
    rng.shuffle(combos)
    seen: dict[str, int] = {}
    rank = []
    for first, _, _ in combos:
        rank.append(seen.get(first, 0))
        seen[first] = rank[-1] + 1
    order = sorted(range(len(combos)), key=lambda i: rank[i])   # stable: shuffled order within a rank
    return [combos[i] for i in order]


def _people(rng: random.Random, names: list[tuple[str, str, str]], towns: list[Town]) -> list[Person]:
    """People with jobs, homes, maybe a pet, two likes and one or two dislikes."""
    out = []
    for first, family, pronoun in names:
        pet = None
        if rng.random() < 0.6:
            pet = Pet(rng.choice(lx.PET_NAMES), rng.choice(lx.PET_SPECIES))
        tastes = rng.sample(lx.LIKES, 4)
        age, job, town = rng.randint(18, 84), rng.choice(lx.JOBS), rng.choice(towns).name
        dislikes = tuple(tastes[2:2 + rng.randint(1, 2)])
        out.append(Person(f"{first} {family}", first, family, pronoun, age, job, town, pet, tuple(tastes[:2]),
                          dislikes))
    return out


def _companies(rng: random.Random, people: list[Person], towns: list[Town]) -> list[Company]:
    """Companies with distinct names, each making two to four product categories."""
    stems = rng.sample(lx.COMPANY_STEMS, N_COMPANIES)
    cats = sorted(lx.CATEGORIES)
    out = []
    for stem in stems:
        name, town = f"{stem} {rng.choice(lx.COMPANY_SUFFIXES)}", rng.choice(towns).name
        makes = tuple(rng.sample(cats, rng.randint(2, 4)))
        out.append(Company(name, town, makes, rng.choice(people).name, rng.randint(1850, 2015)))
    return out


def _products(rng: random.Random, companies: list[Company]) -> list[Product]:
    """Products named "<Brand> <category>", unique, each made by a company that makes that category."""
    out, seen = [], set()
    while len(out) < N_PRODUCTS:
        maker = rng.choice(companies)
        category, brand = rng.choice(maker.makes), rng.choice(lx.BRANDS)
        name = f"{brand} {category}"
        if name in seen:
            continue
        seen.add(name)
        out.append(Product(name, category, rng.randint(2, 120), maker.name, rng.choice(lx.COLOURS),
                           rng.choice(lx.MATERIALS), lx.CATEGORIES[category]))
    return out


def _shops(rng: random.Random, people: list[Person]) -> list[Shop]:
    """Shops run by residents in their own towns; named after the owner or with a painted sign."""
    out, seen = [], set()
    while len(out) < N_SHOPS:
        owner, kind = rng.choice(people), rng.choice(sorted(lx.SHOP_KINDS))
        if rng.random() < 0.5:
            name = f"{owner.first}'s {kind.title()}"
        else:
            name = f"the {rng.choice(lx.SHOP_NAME_ADJ)} {rng.choice(lx.SHOP_NAME_NOUN)}"
        if name in seen:
            continue
        seen.add(name)
        out.append(Shop(name, kind, owner.name, owner.town, tuple(lx.SHOP_KINDS[kind]),
                        rng.randint(7, 10), rng.randint(4, 7)))
    return out


def _events(rng: random.Random, towns: list[Town]) -> list[Event]:
    """Festivals, markets and storms spread over the towns and the year."""
    out = []
    for _ in range(N_EVENTS):
        kind = rng.choice(["festival", "festival", "market", "storm"])
        name = rng.choice({"festival": lx.FESTIVALS, "market": lx.MARKETS, "storm": lx.STORMS}[kind])
        out.append(Event(name, kind, rng.choice(towns).name, rng.randint(1, 28), rng.choice(lx.MONTHS)))
    return out


def build_world(seed: int = 0) -> World:
    """Build the whole tiny world deterministically from `seed`."""
    rng = random.Random(seed)
    towns = _towns(rng)
    names = _all_names(rng)
    people = _people(rng, names[:N_PEOPLE], towns)
    companies = _companies(rng, people, towns)
    products = _products(rng, companies)
    shops = _shops(rng, people)
    events = _events(rng, towns)
    animals = [Animal(s, *fields) for s, fields in lx.ANIMALS.items()]
    # the reserved company's staff get names no resident has, so no pretraining sentence is about them
    unused = [f"{first} {family}" for first, family, _ in names[N_PEOPLE:]]
    office_towns = [t.name for t in rng.sample(towns, 3)]
    reserved = build_reserved_facts(rng, office_towns, unused)
    return World(seed, tuple(people), tuple(towns), tuple(animals), tuple(shops), tuple(products),
                 tuple(companies), tuple(events), tuple(reserved))


def reserved_facts(world: World) -> list[Fact]:
    """The reserved company's facts (never in the pretraining corpus), in a fixed order."""
    return list(world.reserved)
