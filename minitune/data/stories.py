"""Short stories about residents and animals: an opening, a small plot of two to four steps, an ending.

Each step is a list of interchangeable templates, so one plot yields many different stories; the plots
bring in pronouns, negation, relative clauses, numbers and a second character.
"""

from __future__ import annotations

import random

from minitune.data import lexicon as lx
from minitune.data.text import (Plan, a_an, animal_slots, cap, common_slots, fill, person_slots, pick,
                                product_slots, shop_slots, walk)
from minitune.data.world import World

OPENINGS = [
    "{name} was {a_job} who lived in {town}.",
    "In {town}, there lived {a_job} called {name}.",
    "{name} is {age} years old and works as {a_job} in {town}.",
    "{name}, who worked as {a_job}, had lived in {town} all {his} life.",
    "Once there was {a_job} named {first} who lived near the {place} in {town}.",
    "Everyone in {town} knew {name}, the {job} with the loud laugh.",
    "{first} {was_not} a rich {job}, but {he} was a happy one.",
    "Not far from the {place} in {town} lived {a_job} called {name}.",
    "{name} had been {a_job} in {town} for {n} years.",
    "This is a story about {name}, {a_job} from {town}.",
    "Every morning, {name} walked to the {place} before work.",
    "{name} was {age} when {he} first came to {town} to work as {a_job}.",
]
TASTES = [
    "{He} loved {like}, but {he} did not like {dislike} at all.",
    "{His} favourite things were {like} and {like2}.",
    "{He} liked {like} more than anything.",
    "{He} did not care for {dislike}.",
    "More than anything, {first} disliked {dislike}.",
    "{He} was fond of {like}, and {he} never said no to {like2}.",
]
PET_LINES = [
    "{He} had {a_pet} named {pet}.",
    "{His} {pet_species}, {pet}, went everywhere with {him}.",
    "{He} shared {his} small house with {a_pet} called {pet}.",
]
ENDINGS = [
    "That night {he} slept very well.",
    "It had been a long day, but a good one.",
    "{He} did not forget that day for a long time.",
    "The next morning, everything was back to normal.",
    "{first} smiled all the way home.",
    "{He} told the story to everyone {he} met.",
    "It was not the day {he} had planned, but {he} did not mind.",
    "Later, {he} wrote it all down in a little book.",
]
# each plot: (needs a pet?, plan); see `text.walk` for plans
PLOTS: list[tuple[bool, Plan]] = [
    (True, [
        ["{when}, {pet} the {pet_species} was nowhere to be found.",
         "{when}, {first} could not find {his} {pet_species}, {pet}.",
         "{when}, {pet} slipped out of the gate and did not come back."],
        ["{He} looked {where}, but {pet} was not there.",
         "{He} asked {o_name} for help, and together they searched the {place}.",
         "{He} called the name {pet} again and again, but heard nothing.",
         "{He} searched the {place} and then the {place2}, but found only mud."],
        ["At last {he} found {pet} asleep {where2}.",
         "In the end, {o_name} found {pet} {where2}, eating {food}.",
         "Just before dark, {pet} walked in through the door as if nothing had happened.",
         "A child who lived {where2} had kept {pet} safe and warm."],
    ]),
    (False, [
        ["{when}, {first} went to {s_name} to buy some {s_good}.",
         "{first} needed some {s_good}, so {he} walked to {s_name} in {s_town}.",
         "{when}, {first} went shopping at {s_name}, which {s_owner} runs."],
        ([["There was a long line, so {he} waited for {minutes} minutes.",
           "{s_owner} said that the {s_good} had only just come in."],
          ["{He} paid {n} coins and walked home.",
           "On the way home, {he} met {o_name}, who was carrying a basket of {food}."]],
         [["The shop did not have any {s_good} left, which was a shame."],
          ["{He} decided to try again the next day.", "{He} walked home with an empty basket."]],
         [["On a shelf {he} saw {p_a_colour} {p_name} that cost {p_price} coins."],
          ["{He} bought the {p_name}, even though {he} did not need it.",
           "It was too dear, so {he} did not buy it."]]),
    ]),
    (False, [
        ["{when}, {first} and {o_first} went to {e_name} in {e_town}.",
         "{first} had waited all year for {e_name} in {e_town}.",
         "On {e_date}, {first} took the cart to {e_town} for {e_name}."],
        ["There were more people than {he} had ever seen, and the air smelled of {food}.",
         "{o_first} won a prize for the best {food}, which nobody had expected.",
         "It rained for an hour, but nobody went home.",
         "{He} danced until {his} feet hurt.",
         "A band played by the {place}, and children ran between the stalls."],
        ["When the sun went down, they lit lamps along the {place}.",
         "{He} ate too much {food2} and felt a little ill.",
         "They did not get home until after midnight."],
    ]),
    (False, [
        ["{when}, a storm came in over {town}.",
         "{when}, it began to rain so hard that the road to the {place} turned into a stream.",
         "{when}, a cold wind blew snow across {town}."],
        ["{first} closed the shutters and lit the fire.",
         "{He} went out to help {o_name}, whose roof had started to leak.",
         "{He} could not go to work, so {he} read a book about {like}.",
         "The river rose higher than anyone could remember."],
        ["By morning, the sky was clear and blue.",
         "When it was over, the whole street came out to clear the mess.",
         "{first} and {o_first} drank hot tea and waited for the storm to pass."],
    ]),
    (False, [
        ["{when}, {first} saw {a_an_animal} {where}.",
         "{when}, {a_an_animal} walked right into {first}'s garden.",
         "On the way to the {place}, {first} met {a_an_animal} that would not move."],
        ["It {a_sound} at {him} and did not run away.",
         "{He} gave it some {a_food}, and it ate every bit.",
         "{He} had never been so close to one before.",
         "It looked tired, so {he} did not go near it."],
        ["After a while, the {a_animal} went back to its home {a_home}.",
         "{He} told {o_name} about it, but {o_first} did not believe a word.",
         "The next day it came back, and the day after that."],
    ]),
    (False, [
        ["{when}, {o_name}, who was {o_a_job}, asked {first} for help.",
         "{o_first} knocked on {first}'s door early one morning.",
         "{o_name} had a problem that {o_he} could not solve alone."],
        ["{o_His} cart had lost a wheel on the road to {town}.",
         "{o_He} needed {n} baskets of {food} carried to the {place} before noon.",
         "{o_He} had lost {o_his} {object} somewhere near the {place}.",
         "{o_His} roof leaked, and rain was coming."],
        ["{first} did not say no, even though {he} was busy.",
         "It took them all day, but in the end the job was done.",
         "{first} worked until dark, and {o_first} thanked {him} with a pie.",
         "Together they sorted it out in less than an hour."],
    ]),
    (False, [
        ["{when}, {first} set off to visit {o_name} in {o_town}.",
         "{first} had not seen {o_first} for {n} years, so {he} went to {o_town}.",
         "{when}, {first} took the long road to {o_town}."],
        ["The journey took {n} hours, and {he} walked most of the way.",
         "On the way, {he} stopped by the {place} to eat some {food}.",
         "{He} got lost twice, because {he} did not have a map."],
        ["{o_first} was so pleased to see {him} that {o_he} cooked a whole pot of {dish}.",
         "They talked about {like} until the candles burned down.",
         "{o_first} was not at home, so {first} left a note and went back."],
    ]),
]
ANIMAL_OPENINGS = [
    "{A_an_animal} lived {a_home} near {town}.",
    "There was once {a_colour_animal} who lived {a_home}.",
    "Near the {place} in {town}, {a_an_animal} made its home {a_home}.",
    "Every day, the {a_animal} that lived {a_home} went out to look for {a_food}.",
    "In {town}, everyone knew the old {a_animal} that lived {a_home}.",
]
ANIMAL_STEPS: Plan = [
    ["It liked {a_food} best, and it did not like rain.",
     "All day long it {a_habit}.",
     "It was {n} years old and very clever for {a_an_animal}."],
    ["It was not a big {a_animal}, but it was brave.", "Most of the time it kept away from people.",
     "{name}, who lived nearby, often saw it {where}.",
     "It had no friends, because the other {a_animals} had left."],
    ([["{when}, it met {b_an_animal} by the {place}."],
      ["The {b_animal} {b_sound} and ran away.",
       "The two of them shared some {a_food}, and after that they were friends.",
       "It was not afraid, because it had seen {b_animals} before."]],
     [["{when}, the {a_animal} heard a strange noise {where2}."],
      ["The {a_animal} {a_sound} loudly, and the noise stopped.",
       "It hid {a_home} until the noise went away."]],
     [["{when}, a child from {town} left a bowl of {a_food} out for it."],
      ["It ate every bit and came back the next night.", "It sniffed the bowl, but it did not eat."]]),
    ["When winter came, it moved closer to the houses.", "{first} left out some {a_food} for it every night.",
     "By spring it had grown fat and happy.", "Some days it did not come out at all."],
]


def _slots(rng: random.Random, world: World) -> dict[str, str]:
    """Every field a story template may use, for one random cast."""
    hero = rng.choice(world.people)
    # a second person with a different first name, or "Davin had not seen Davin" can happen
    other = rng.choice([p for p in world.people if p.first != hero.first])
    a, b = rng.sample(world.animals, 2)
    shop, product = rng.choice(world.shops), rng.choice(world.products)
    event = rng.choice([e for e in world.events if e.kind != "storm"])
    s = {**common_slots(rng), **person_slots(hero), **person_slots(other, "o_"), **animal_slots(a),
         **animal_slots(b, "b_"), **shop_slots(shop), **product_slots(product)}
    s["where2"] = rng.choice(lx.LOCATIONS).format(p=rng.choice(lx.PLACES))
    s["dish"] = rng.choice(["soup", "stew", "porridge", "beans", "potatoes", "fish soup"])
    s.update(e_name=event.name, e_town=event.town, e_date=f"{event.day} {event.month}",
             was_not="was not" if rng.random() < 0.5 else "was never",
             A_an_animal=s["a_an_animal"][0].upper() + s["a_an_animal"][1:],
             a_colour_animal=a_an(f"{s['colour']} {a.species}"))
    return s


def make_story(rng: random.Random, world: World) -> str:
    """A story about a resident: opening, maybe tastes or a pet, a two-to-three step plot, an ending."""
    s = _slots(rng, world)
    has_pet = "pet" in s
    parts = [pick(rng, OPENINGS, s)]
    if rng.random() < 0.6:
        parts.append(pick(rng, TASTES, s))
    plots = [p for p in PLOTS if has_pet or not p[0]]
    plot = rng.choice(plots)
    needs_pet, steps = plot
    if has_pet and (needs_pet or rng.random() < 0.3):
        parts.append(pick(rng, PET_LINES, s))
    # sometimes skip a plain middle step: shorter stories, and the plot still reads
    if len(steps) == 3 and rng.random() < 0.2:
        steps = [steps[0], steps[-1]]
    parts += [fill(t, s) for t in walk(rng, steps)]
    if rng.random() < 0.35 and sum(map(len, parts)) < 300:
        # a second, shorter episode (only if the story is still short: a document should fit in ~128
        # tokens); its first step opens with a time phrase, so it reads as "later"
        _, more = rng.choice([p for p in plots if p is not plot and not p[0]])
        s["when"] = rng.choice(["The next day", "A week later", "Later that month", "Some time after"])
        parts += [fill(t, s) for t in walk(rng, [more[0], more[-1]])]
    if rng.random() < 0.6:
        parts.append(pick(rng, ENDINGS, s))
    return " ".join(cap(p) for p in parts)


def make_animal_story(rng: random.Random, world: World) -> str:
    """A story whose hero is an animal."""
    s = _slots(rng, world)
    steps = ANIMAL_STEPS if rng.random() < 0.6 else [ANIMAL_STEPS[i] for i in (0, 2, 3)]
    parts = [pick(rng, ANIMAL_OPENINGS, s)] + [fill(t, s) for t in walk(rng, steps)]
    if rng.random() < 0.5:
        parts.append(rng.choice(["In the end, it went home to sleep.", "And that was the end of that.",
                                 "It never went back to that place again."]))
    return " ".join(cap(p) for p in parts)
