"""Dialogues: two residents talk in quoted speech, one line per turn, with varied speech tags.

A scenario is a plan (see `text.walk`): turns of interchangeable lines, with branches where an answer
decides what can follow; the speakers alternate. The tag ("asked Mira", "Tom said,", ...) is chosen apart
from the line, so each line appears in many forms.
"""

from __future__ import annotations

import random

from minitune.data.text import (Plan, animal_slots, common_slots, count, fill, person_slots, pick,
                                product_slots, walk)
from minitune.data.world import World

LEADS = [
    "{A_name} met {B_name} near the {place}.",
    "{when}, {A_first} ran into {B_first} at the {place}.",
    "At the {place} in {A_town}, {A_first} stopped to talk to {B_first}.",
    "{A_first} and {B_first} were walking home together.",
]
SHOP_LEADS = [
    "{A_first} stopped at {B_first}'s stall at the market.",
    "{when}, {A_name} went to the market in {B_town}, where {B_name} had a stall.",
]
SCENARIOS: dict[str, Plan] = {
    "directions": [
        ["Where is the {place}?", "Can you tell me the way to the {place}?", "Excuse me, is the {place} far?",
         "I am looking for the {place}. Do you know where it is?"],
        ([["It is {where}.", "Go past the {place2}, and you will see it {where}.",
           "It is {where}. You cannot miss it."],
          ([["Is it far?", "How long does it take to walk there?"],
            ["No, only {minutes} minutes on foot.", "Not far. You will be there before the bells ring."]],
           [["Is it open today?"],
            ["It is open until {n}, I think.", "Yes, but it closes early on {weekday}s."]],
           [["Thank you!", "Thank you. I would never have found it."], ["You are welcome."]])],
         [["I am sorry, I do not know. I am not from around here."],
          ["Never mind. I will ask someone else.", "That is all right. Thank you anyway."]]),
    ],
    "shop": [
        ["How much is the {p_name}?", "What does the {p_name} cost?"],
        ["It is {p_price} coins.", "That one costs {p_price} coins, but it is worth it."],
        ([["That is too much for me."],
          ["I could let you have it for a little less.", "I am sorry, but that is the price."]],
         [["That seems fair. I will take it."],
          ["Thank you. Come again!", "Good choice. It will last for years."]],
         [["Do you have one in {colour}?"],
          ["Only in {p_colour}, I am afraid.", "Not today. Try again next week."]],
         [["Is it made of {p_material}?"],
          ["Yes, all of it.", "It is. That is why it costs {p_price} coins."]]),
    ],
    "weather": [
        ["Will it rain today?", "Do you think it will rain later?", "Is it going to rain, do you think?"],
        ([["I think so. The clouds are dark over the hill.", "I am sure of it. My knees always know."],
          ["Then I will take my umbrella.", "Then I will stay at home and read."]],
         [["I do not think so. The wind has changed.", "No. The sky is clear all the way to the sea."],
          ["Good. I want to hang out the washing.", "Good. I have a long walk ahead of me."]],
         [["Nobody knows. Last week it rained for {n} days."],
          ["I hope it stays dry. I have to walk to the {place2}."]]),
    ],
    "pet": [
        ["Is that your {B_pet_species}?", "What a fine {B_pet_species}! What is its name?"],
        ["Yes, this is {B_pet}. It is {n} years old.", "Its name is {B_pet}. It does not like strangers.",
         "That is {B_pet}. It likes {a_food} more than anything."],
        ([["May I pat it?"],
          ["Of course. It will not bite.", "Better not. It bit the post carrier last week."]],
         [["It looks very happy."], ["Thank you. I think so too."]],
         [["My neighbour has {a_an_animal}, but it is not as friendly."],
          ["Maybe it just needs more attention.", "Some animals are like that."]]),
    ],
    "work": [
        ["What do you do for work?", "What is your job these days?", "How is work?"],
        ["I am {B_a_job} in {B_town}.", "I have worked as {B_a_job} for {n} years.",
         "Busy! Being {B_a_job} is never quiet."],
        ([["Do you like it?"],
          ["Most days I do. I do not like {B_dislike}, though.", "I do. I would not change it."]],
         [["That sounds hard."], ["It is, but somebody has to do it.", "Not as hard as it sounds."]]),
    ],
    "event": [
        ["Are you going to {e_name}?", "Will you come with me to {e_name} in {e_town}?"],
        ([["Yes! It is on {e_date}, is it not?", "Of course. I go every year."],
          ["I will bring some {food}.", "We should leave early, before the roads fill up."]],
         [["I cannot. I have to work that day.", "Not this year. I have been ill."],
          ["That is a pity. Maybe next year.", "Then I will tell you all about it."]]),
    ],
    "lost": [
        ["Have you seen my {object}?", "I lost my {object}. Did you see it anywhere?"],
        ([["I saw it {where} this morning."], ["Thank you, I will look there."]],
         [["No, I have not. When did you last have it?"], ["I had it at the {place}, I think."]],
         [["Is it the {colour} one? I think a child picked it up."],
          ["Oh no. I will go and ask at the school.", "Then I hope the child gives it back."]]),
    ],
    "likes": [
        ["Do you like {B_like}?", "What do you think of {B_like}?"],
        ["Yes, very much. I could talk about {B_like} all day.", "I do. It is one of my favourite things.",
         "Of course! Who does not?"],
        ["So do I.", "Really? I do not, but I am glad you do.", "Then we should go to the {place} together."],
    ],
    "dislikes": [
        ["Do you like {B_dislike}?", "Are you fond of {B_dislike}?"],
        ["No, not at all.", "Not really. I much prefer {B_like}.", "I do not. I never have."],
        ["Neither do I.", "Really? I love it.", "Fair enough. Not everyone does."],
    ],
}
CLOSINGS = [
    "Then {A_first} went on {A_his} way.", "They said goodbye at the corner.",
    "{B_first} waved and walked off towards the {place2}.", "After that, neither of them said much.",
    "{A_first} thought about it all the way home.",
]
QUESTION_TAGS = ["asked", "asked", "wondered", "wanted to know"]
STATEMENT_TAGS = ["said", "said", "replied", "answered", "added", "whispered"]
EXCLAIM_TAGS = ["cried", "laughed", "said"]


def tag_line(rng: random.Random, speaker: str, line: str) -> str:
    """Put a line in quotes with a speech tag before or after it: '"Hi," said Tom.' or 'Tom said, "Hi."'."""
    end = line[-1]
    verbs = QUESTION_TAGS if end == "?" else EXCLAIM_TAGS if end == "!" else STATEMENT_TAGS
    verb = rng.choice(verbs)
    if rng.random() < 0.3 and verb in ("said", "asked", "replied"):
        return f'{speaker} {verb}, "{line}"'
    quoted = line[:-1] + "," if end == "." else line
    if verb == "wanted to know" or rng.random() < 0.3:
        return f'"{quoted}" {speaker} {verb}.'
    return f'"{quoted}" {verb} {speaker}.'


def make_dialogue(rng: random.Random, world: World) -> str:
    """A short conversation between two residents, sometimes introduced by a narrative line."""
    a = rng.choice(world.people)
    b = rng.choice([p for p in world.people if p.first != a.first])
    kinds = [k for k in SCENARIOS if k != "pet" or b.pet is not None]
    kind = rng.choice(kinds)
    event = rng.choice([e for e in world.events if e.kind != "storm"])
    s = {**common_slots(rng), **person_slots(a, "A_"), **person_slots(b, "B_"),
         **product_slots(rng.choice(world.products)), **animal_slots(rng.choice(world.animals)),
         "e_name": event.name, "e_town": event.town, "e_date": f"{event.day} {event.month}"}
    s["n"] = count(rng, rng.randint(2, 9))
    leads = SHOP_LEADS if kind == "shop" else LEADS
    lines = [pick(rng, leads, s)] if rng.random() < 0.7 else []
    for i, template in enumerate(walk(rng, SCENARIOS[kind])):
        speaker = a.first if i % 2 == 0 else b.first
        lines.append(tag_line(rng, speaker, fill(template, s)))
    if rng.random() < 0.4:
        lines.append(pick(rng, CLOSINGS, s))
    return "\n".join(lines)
