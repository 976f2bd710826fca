"""News reports (who did what, where, when, plus filler) with their facts and a one-sentence summary.

The four facts are spread over the report in varied order and wording (the date may read "14 May",
"the 14th of May" or "May 14"), surrounded by sentences that a summary should leave out; the summary is
always the canonical "{who} {what} in {where} on {when}.".
"""

from __future__ import annotations

import random

from minitune.data import lexicon as lx
from minitune.data.text import a_an, cap, count, date_text, fill, pick
from minitune.data.world import World
from minitune.errors import ConfigError

# kind -> (what phrases, detail sentences); {x} in a "what" phrase is filled per report
KINDS: dict[str, tuple[list[str], list[str]]] = {
    "race": (["won the boat race", "won the foot race", "won the swimming race", "won the horse race"],
             ["{He} finished {n} lengths ahead of {other}.", "It was {his} first win in {n} years.",
              "{other} came second, only a few seconds behind."]),
    "animal": (["found a lost {animal}", "rescued {a_animal} from the river", "caught a runaway {animal}"],
               ["The {animal} was hiding {where_loc}.", "Nobody knows where the {animal} came from.",
                "It has since gone to live on a farm near {town2}."]),
    "shop": (["opened a new {shop_kind}", "opened {a_shop_kind} on the main street"],
             ["The shop sells {goods}.", "{He} had saved for {n} years to open it.",
              "On the first morning, the line went all the way to the {place}."]),
    "repair": (["repaired the old bridge", "mended the roof of the town hall", "rebuilt the harbour wall",
                "cleaned out the old well"],
               ["The work took {n} weeks.", "{He} did most of the work alone.",
                "The town paid {coins} coins for the materials."]),
    "prize": (["won first prize for the best {food}", "won a prize for the biggest {veg}"],
              ["The judges tasted {n} entries before they chose.",
               "{He} used a recipe from {his} grandmother.",
               "{other} came second and did not look pleased."]),
    "council": (["was chosen to lead the town council", "became the new keeper of the town bell"],
                ["{He} won {n} more votes than {other}.", "{He} promised to fix the roads before winter.",
                 "{He} will start the job next month."]),
    "gift": (["gave {coins} coins to the school", "gave {coins} coins to the town library"],
             ["{He} said it was the least {he} could do.", "The money will be spent on books and paper.",
              "Nobody had asked {him} for anything."]),
    "storm": (["helped clear the roads after the storm", "kept the lamps lit through the gale"],
              ["The wind blew down {n} trees.", "Many roofs lost their tiles.",
               "The river came up to the doors of the {place}."]),
}
LEADS = [
    ["On {when_t}, {who}, {a_job} from {home}, {what} in {where}."],
    ["{where} had a busy day on {when_t}: {who} {what}."],
    ["It was {who} who {what} in {where} this week.", "It happened on {when_t}."],
    ["{Job} {who} {what} on {when_t}.", "It happened in {where}."],
    ["News from {where}.", "{who} {what} on {when_t}."],
    ["{who} {what} on {when_t}, and the whole of {where} is talking about it."],
    ["Something unusual happened in {where} on {when_t}.", "{who} {what}."],
    ["In {where}, {who} {what}.", "The date was {when_t}."],
]
FILLER = [
    "The day was {weather}.", "About {crowd} people came to watch.", "{who} is {age} and works as {a_job}.",
    '"{quote}," {he} said afterwards.', "It is the first time this has happened in {where}.",
    "Many people stopped to watch.", "The bakery by the {place} stayed open late.",
    "Children from the school made a banner.",
]
QUOTES = ["I still cannot believe it", "It was nothing, really", "I had a lot of help",
          "I am very tired but happy", "Anyone would have done the same", "I hope to do it again next year"]
HEADLINES = ["{who} {what}", "{where}: {who} {what}", "News from {where}"]


def make_report(rng: random.Random, world: World) -> tuple[str, dict[str, str], str]:
    """A news report, its facts {"who", "what", "where", "when", "kind"} and a one-sentence summary."""
    kind = rng.choice(sorted(KINDS))
    whats, details = KINDS[kind]
    hero, other = rng.sample(world.people, 2)
    where = rng.choice(world.towns).name
    day, month = rng.randint(1, 28), rng.choice(lx.MONTHS)
    animal = rng.choice(world.animals).species
    shop_kind = rng.choice(sorted(lx.SHOP_KINDS))
    s = {"animal": animal, "a_animal": a_an(animal), "shop_kind": shop_kind, "a_shop_kind": a_an(shop_kind),
         "goods": ", ".join(lx.SHOP_KINDS[shop_kind][:2]) + " and more", "food": rng.choice(lx.FOODS[:7]),
         "veg": rng.choice(["carrot", "onion", "potato", "pumpkin"]),
         "coins": str(rng.randrange(50, 900, 10)),
         "n": count(rng, rng.randint(2, 12)), "other": other.name, "town2": rng.choice(world.towns).name,
         "place": rng.choice(lx.PLACES),
         "where_loc": rng.choice(lx.LOCATIONS).format(p=rng.choice(lx.PLACES)),
         "he": "she" if hero.pronoun == "she" else "he", "his": "her" if hero.pronoun == "she" else "his",
         "him": "her" if hero.pronoun == "she" else "him"}
    s.update(He=cap(s["he"]), His=cap(s["his"]))
    what = fill(rng.choice(whats), s)
    facts = {"who": hero.name, "what": what, "where": where, "when": f"{day} {month}", "kind": kind}
    s.update(who=hero.name, what=what, where=where, when_t=date_text(rng, day, month), a_job=a_an(hero.job),
             Job=cap(hero.job), home=hero.town, age=str(hero.age), What=cap(what), quote=rng.choice(QUOTES),
             weather=rng.choice(["cold and grey", "warm and bright", "wet", "windy", "clear"]),
             crowd=str(rng.randrange(20, 600, 10)))
    lead = [fill(t, s) for t in rng.choice(LEADS)]
    extra = rng.sample(details, rng.randint(1, 2)) + rng.sample(FILLER, rng.randint(2, 3))
    extra = [fill(t, s) for t in extra]
    rng.shuffle(extra)
    body = " ".join(cap(x) for x in lead + extra)
    if rng.random() < 0.4:
        body = pick(rng, HEADLINES, s) + "\n" + body
    summary = f"{hero.name} {what} in {where} on {day} {month}."
    return body, facts, summary


TOPICS = ("sport", "food", "weather", "trade", "animals")
TOPIC_LINES: dict[str, list[list[str]]] = {
    "sport": [
        ["The team from {town} beat {town2} by {n} points.", "{name} ran the long race in under an hour.",
         "{town} has won the tug of war {n} years in a row.",
         "The rowing club of {town} lost again on {day}."],
        ["The crowd cheered until the last minute.", "{name} scored twice before the break.",
         "Nobody had trained harder than {first}.", "The players were soaked by the end."],
        ["The next match is in {month}.", "The coach was not happy with the second half.",
         "{first} says {he} will race again next year."],
    ],
    "food": [
        ["{name} made a pot of {food} for the whole street.", "The best {food} in {town} is made by {name}.",
         "Everyone in {town} has an opinion about {food}.", "{name} baked {n} loaves before sunrise."],
        ["The secret, {he} says, is a pinch of salt and a lot of time.", "It goes well with {food2}.",
         "Some people eat it hot, and some eat it cold.", "The smell filled the whole kitchen."],
        ["There was not a crumb left by evening.", "{first} will not share the recipe.",
         "Next time {he} wants to try it with {food3}."],
    ],
    "weather": [
        ["Heavy rain fell on {town} all night.", "A thick fog came in from the sea over {town}.",
         "It has not rained in {town} for {n} weeks.", "Snow closed the road to {town} on {day}."],
        ["The river rose above the old stone mark.", "Farmers are worried about their crops.",
         "The wind was strong enough to lift roof tiles.", "Children built a snow giant in the square."],
        ["More of the same is expected tomorrow.", "By noon the sky had cleared.",
         "Older people say they have never seen anything like it."],
    ],
    "trade": [
        ["The price of wool in {town} rose to {coins} coins a sack.",
         "A ship came into {town} with a load of {goods}.", "{name} sold {n} carts of {goods} at the market.",
         "Traders from {town2} now sell their {goods} in {town}."],
        ["Buyers came from as far as {town2}.", "Some shop keepers say prices are too low.",
         "{name} says business has never been better.", "The market stayed open an hour late."],
        ["Prices are expected to fall again in {month}.", "The next market day is {day}.",
         "Not everyone is pleased with the new prices."],
    ],
    "animals": [
        ["A family of {animals} has moved in under the bridge in {town}.",
         "{name} saw {a_animal} near the {place} on {day}.", "Twin lambs were born on a farm near {town}.",
         "The {animals} of {town} have been very noisy this spring."],
        ["Nobody knows where they came from.", "They eat {afood} and sleep {ahome}.",
         "Children leave food out for them every evening.", "Some people think it is a good sign."],
        ["Please do not feed them bread.", "The farmer says they are doing well.",
         "They will probably move on before winter."],
    ],
}


def make_topic_text(rng: random.Random, world: World, topic: str | None = None) -> tuple[str, str]:
    """A short news item of two or three sentences and its topic (one of `TOPICS`; random if None)."""
    if topic is None:
        topic = rng.choice(TOPICS)
    elif topic not in TOPICS:
        raise ConfigError(f"topic must be one of {TOPICS}, got {topic!r}")
    person, animal = rng.choice(world.people), rng.choice(world.animals)
    town, town2 = rng.sample([t.name for t in world.towns], 2)
    s = {"town": town, "town2": town2, "name": person.name, "first": person.first,
         "he": "she" if person.pronoun == "she" else "he", "n": count(rng, rng.randint(2, 9)),
         "day": rng.choice(lx.WEEKDAYS), "month": rng.choice(lx.MONTHS), "food": rng.choice(lx.FOODS),
         "food2": rng.choice(lx.FOODS), "food3": rng.choice(lx.FOODS), "coins": str(rng.randint(3, 40)),
         "animals": animal.plural,
         "a_animal": a_an(animal.species), "afood": animal.food, "ahome": animal.home,
         "place": rng.choice(lx.PLACES), "goods": rng.choice(["cheese", "wool", "salt", "apples", "timber",
                                                              "fish", "cloth", "grain"])}
    steps = TOPIC_LINES[topic]
    steps = steps if rng.random() < 0.8 else steps[:2]
    return " ".join(pick(rng, step, s) for step in steps), topic
