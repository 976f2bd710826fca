"""Product reviews with a sentiment label: positive, negative or neutral.

The label is chosen first and the sentences are drawn to fit it, but the wording works against keyword
matching on purpose: praise through negation ("not bad at all", "I have no complaints"), complaints that
use good words ("it is not good for ...", "do not trust the good reviews"), and mixed reviews with a
"but". A classifier has to read the sentence, not count words.
"""

from __future__ import annotations

import random

from minitune.data.text import a_an, count, person_slots, pick, product_slots
from minitune.data.world import World
from minitune.errors import ConfigError

SENTIMENTS = ("positive", "negative", "neutral")
GOOD_ADJ = ["sturdy", "well made", "strong", "handy", "lovely", "solid", "useful", "good"]
BAD_ADJ = ["flimsy", "badly made", "weak", "awkward", "ugly", "cheap", "useless", "bad"]

OPENINGS = [
    "I bought the {p_name} {n} weeks ago.",
    "My {relative} gave me the {p_name} for my birthday.",
    "I got this {p_cat} from {p_maker} last {month}.",
    "I needed {p_a_cat} for {p_use}, so I tried the {p_name}.",
    "We have used the {p_name} at home since {month}.",
    "I paid {p_price} coins for the {p_name} at a shop in {town}.",
]
POSITIVE = [
    "It does exactly what it should.", "The {p_cat} is {good}.", "It is not {bad} at all.",
    "Not bad at all for {p_price} coins.", "I have no complaints.", "It works well for {p_use}.",
    "The {p_colour} looks even nicer than it did in the shop.", "It is worth every coin.",
    "I could not be happier with it.", "It has never let me down.",
    "I was afraid it would be {bad}, but it is not.", "My {relative} loves it too.",
    "It still works like new after {n} months.", "Nothing about it feels cheap.",
    "I did not expect much, but it is really {good}.", "There is nothing wrong with it.",
    "It is far better than my old one.", "You will not find a better {p_cat} in {town}.",
]
NEGATIVE = [
    "It is not good for {p_use}.", "It stopped working after {n} days.", "The {p_cat} is {bad}.",
    "It is not {good} at all.", "I would not call it good.", "The price is far too high for what you get.",
    "It looked good in the shop, but at home it fell apart.", "Do not trust the good reviews.",
    "It is not worth {p_price} coins.", "It is no use for {p_use}.", "I expected much more from {p_maker}.",
    "The {p_colour} paint came off in a week.", "Nothing about it works the way it should.",
    "It broke the first time I used it.", "My old one was better, and it was half the price.",
    "I have had nothing but trouble with it.", "It is hard to see what is good about it.",
]
MILD_POSITIVE = [
    "The colour is nice.", "To be fair, the shop was helpful.", "It does look good on the shelf.",
    "At least it was not expensive.", "It is not all bad: the {p_colour} is pretty.",
]
MILD_NEGATIVE = [
    "The only problem is the price.", "It is a little heavy, though.", "It gets dirty very quickly.",
    "It took {n} days to arrive, which was not great.", "I do wish it came in another colour.",
]
NEUTRAL = [
    "It is fine, I suppose.", "It does the job, nothing more.", "It is neither good nor bad.",
    "It is about what you would expect for {p_price} coins.", "It is {p_a_cat}. It works.",
    "Not great, not terrible.", "Some things about it are good, and some are not.",
    "I have not used it much yet, so it is hard to say.", "It is much the same as my old one.",
    "It is not the best {p_cat} I have owned, and not the worst.",
]
# the bad half of a neutral review's "good point, but bad point"
BUT_NEGATIVE = [
    "But the price is a bit high.", "But it is a little heavy.", "But it gets dirty quickly.",
    "But it took {n} days to arrive.", "But I do wish it came in another colour.",
]
VERDICTS = {
    "positive": ["I would buy it again.", "I would tell any friend to get one.", "Well done, {p_maker}.",
                 "Buy it. You will not be sorry.", "I am very glad I bought it."],
    "negative": ["I would not buy it again.", "Save your coins.", "I am taking it back to the shop.",
                 "Never again.", "I am sorry I bought it.", "I would not give it to my worst enemy."],
    "neutral": ["I might buy it again, or I might not.", "If you need one, it will do.",
                "Buy it if the price drops.", "It is fine if you are not fussy."],
}
HEADERS = [
    "Review of the {p_name} by {name}:", "{name} from {town} wrote about the {p_name}:",
    "Review: the {p_name} from {p_maker}", "",
]


def _body(rng: random.Random, sentiment: str) -> list[str]:
    """The opinion sentences (templates) that carry the label."""
    if sentiment == "positive":
        out = rng.sample(POSITIVE, rng.randint(2, 4))
        if rng.random() < 0.4:   # a small complaint does not change the verdict
            out.insert(rng.randint(1, len(out)), rng.choice(MILD_NEGATIVE))
    elif sentiment == "negative":
        out = rng.sample(NEGATIVE, rng.randint(2, 4))
        if rng.random() < 0.4:
            out.insert(rng.randint(1, len(out)), rng.choice(MILD_POSITIVE))
    elif rng.random() < 0.5:      # neutral: flat statements ...
        out = rng.sample(NEUTRAL, rng.randint(2, 3))
    else:                         # ... or one good point balanced by one bad point
        out = [rng.choice(NEUTRAL), rng.choice(MILD_POSITIVE), rng.choice(BUT_NEGATIVE)]
    if rng.random() < 0.7:
        out.append(rng.choice(VERDICTS[sentiment]))
    return out


def make_review(rng: random.Random, world: World, sentiment: str | None = None) -> tuple[str, str]:
    """A product review and its sentiment ("positive", "negative" or "neutral"; random if None)."""
    if sentiment is None:
        sentiment = rng.choice(SENTIMENTS)
    elif sentiment not in SENTIMENTS:
        raise ConfigError(f"sentiment must be one of {SENTIMENTS}, got {sentiment!r}")
    product, reviewer = rng.choice(world.products), rng.choice(world.people)
    s = {**product_slots(product), **person_slots(reviewer)}
    s.update(n=count(rng, rng.randint(2, 11)), month=rng.choice(["spring", "summer", "autumn", "winter"]),
             relative=rng.choice(["sister", "brother", "mother", "father", "aunt", "uncle", "friend"]),
             good=rng.choice(GOOD_ADJ), bad=rng.choice(BAD_ADJ))
    s["p_a_cat"] = a_an(product.category)
    sentences = [rng.choice(OPENINGS)] if rng.random() < 0.85 else []
    sentences += _body(rng, sentiment)
    text = " ".join(pick(rng, [t], s) for t in sentences)
    header = pick(rng, HEADERS, s)
    return (f"{header}\n{text}" if header else text), sentiment
