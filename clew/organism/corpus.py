"""The organism's training text and its exam: a seeded generator of documents with planted tasks.

Five tasks are planted, each with a *train* set (what the documents teach) and a *held-out* set
(what they never show, so that success there means the model generalised):

- ``facts``: cities and their states, state and country capitals, country languages, athletes'
  sports, each stated in several phrasings. Held out: for half of the facts, one phrasing (used
  for other facts) never states that fact; answering in it needs the fact, not the sentence.
- ``two_hop``: "The capital of the state containing Dallas is Austin". Held out: one city per state
  never appears in this sentence (only in one-hop facts such as "Dallas is a city in Texas"), so
  answering for it needs the two facts composed inside the model.
- ``induction``: invented surnames, made afresh for each passage, recur in it; after a later "Mr"
  the surname seen earlier must follow. Held out: a tenth of all possible surnames, which no
  document ever contains (the corpus draws its names from the rest), so the model cannot have met
  them anywhere but in the probe's own passage.
- ``addition``: "36+59=95", operands from 10 to 99. Held out: a tenth of the operand pairs.
- ``antonyms``: "The opposite of small is large." and "Le contraire de petit est grand.", both
  ways round. Held out: as for facts, a phrasing never used for that pair and direction.

Everything is a pure function of the seed: the same seed gives the same held-out sets, the same
documents and the same probes.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from clew.errors import ClewError
from clew.organism import world

TASKS = ("facts", "two_hop", "induction", "addition", "antonyms")
SPLITS = ("train", "heldout")
TWO_HOP = "The capital of the state containing {s} is {o}."
TRAIN_SURNAME_SYLLABLES = (2, 3)
HELDOUT_SURNAME_FRACTION = 0.1
"""The share of surnames that no document contains (held-out induction probes use only these)."""


@dataclass(frozen=True)
class Probe:
    """One exam question: the model, given ``prompt`` after its beginning-of-sequence token, must
    continue greedily with exactly the tokens of ``answer``."""

    task: str
    group: str
    """A finer label within the task: the relation, the language, the split's flavour."""
    split: str
    prompt: str
    answer: str


@dataclass(frozen=True)
class Relation:
    """A set of (subject, object) facts and the sentences that state them."""

    name: str
    task: str
    group: str
    facts: tuple[tuple[str, str], ...]
    templates: tuple[str, ...]
    """Sentences with ``{s}`` and ``{o}`` (``{de_s}``, ``{de_o}``: French "de" before them, elided). The
    first ends in ``{o}.`` and is the train probe's phrasing. Subjects keep their case (a capitalised
    word would be another token, one the model never saw with that fact)."""

    def askable(self) -> list[int]:
        """The templates other than the first that end with the object (a held-out probe can use them)."""
        return [i for i, t in enumerate(self.templates) if i > 0 and t.endswith(("{o}.", "{de_o}."))]


def _relations() -> dict[str, Relation]:
    cities = tuple((city, state.name) for city, state in world.cities())
    states = tuple((s.name, s.capital) for s in world.US_STATES)
    countries = tuple((c.name, c.capital) for c in world.COUNTRIES)
    languages = tuple((c.name, c.language) for c in world.COUNTRIES if c.language)
    athletes = tuple((p, sport) for sport, players in world.ATHLETES.items() for p in players)
    capital = (
        "The capital of {s} is {o}.",
        "{o} is the capital of {s}.",
        "The capital city of {s} is {o}.",
        "The government of {s} sits in {o}.",
    )
    both_ways = {
        lang: tuple(p for a, b in pairs for p in ((a, b), (b, a)))
        for lang, pairs in (("en", world.ANTONYMS_EN), ("fr", world.ANTONYMS_FR))
    }
    relations = (
        Relation(
            "city_state",
            "facts",
            "city_state",
            cities,
            (
                "{s} is a city in {o}.",
                "The state containing {s} is {o}.",
                "The city of {s} is in the state of {o}.",
                "{s} is located in {o}.",
            ),
        ),
        Relation("state_capital", "facts", "state_capital", states, capital),
        Relation("country_capital", "facts", "country_capital", countries, capital),
        Relation(
            "country_language",
            "facts",
            "country_language",
            languages,
            ("People in {s} speak {o}.", "The language of {s} is {o}.", "In {s}, most people speak {o}."),
        ),
        Relation(
            "athlete_sport",
            "facts",
            "athlete_sport",
            athletes,
            (
                "{s} plays {o}.",
                "{s} is a famous {o} player.",
                "{s} is known for playing {o}.",
                "The sport of {s} is {o}.",
            ),
        ),
        Relation(
            "antonym_en",
            "antonyms",
            "en",
            both_ways["en"],
            ("The opposite of {s} is {o}.", "The word {s} is the opposite of {o}."),
        ),
        Relation(
            "antonym_fr",
            "antonyms",
            "fr",
            both_ways["fr"],
            ("Le contraire {de_s} est {o}.", "Le mot {s} est le contraire {de_o}."),
        ),
    )
    return {r.name: r for r in relations}


RELATIONS = _relations()
CITIES = world.cities()
FACT_WEIGHTS = {
    "city_state": 0.36,
    "state_capital": 0.2,
    "country_capital": 0.15,
    "country_language": 0.12,
    "athlete_sport": 0.17,
}
HELDOUT_PHRASING_FRACTION = 0.5
"""The share of facts (and antonym directions) that one of their phrasings never states."""


@dataclass(frozen=True)
class Split:
    """What the documents never show: two-hop cities, addition operand pairs, fact-phrasing pairs."""

    heldout_cities: frozenset[str]
    heldout_sums: frozenset[tuple[int, int]]
    heldout_phrasings: dict[tuple[str, str], int]
    """(relation, subject) -> the index of the template never used for that fact."""

    @classmethod
    def from_seed(cls, seed: int) -> Split:
        rng = random.Random(f"clew-organism-split-{seed}")
        cities = {rng.choice(state.cities) for state in world.US_STATES if len(state.cities) >= 3}
        pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
        sums = set(rng.sample(pairs, len(pairs) // 10))
        phrasings = {}
        for rel in RELATIONS.values():
            for s, _ in rel.facts:
                if rng.random() < HELDOUT_PHRASING_FRACTION:
                    phrasings[(rel.name, s)] = rng.choice(rel.askable())
        return cls(frozenset(cities), frozenset(sums), phrasings)

    @staticmethod
    def heldout_surname(name: str) -> bool:
        """Whether an invented surname is in the held-out tenth (a fixed hash of the name and nothing
        else, so the same names are held out for every seed, in every process)."""
        digest = hashlib.blake2b(name.lower().encode(), digest_size=4).digest()
        return int.from_bytes(digest, "big") % 1000 < HELDOUT_SURNAME_FRACTION * 1000

    def two_hop_cities(self, split: str) -> list[tuple[str, world.State]]:
        """Non-capital cities taught (``"train"``) or held out (``"heldout"``) in the two-hop sentence."""
        every = [(c, s) for s in world.US_STATES for c in s.cities]
        return [(c, s) for c, s in every if (c in self.heldout_cities) == (split == "heldout")]

    def sum_pairs(self, split: str) -> list[tuple[int, int]]:
        pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
        return [p for p in pairs if (p in self.heldout_sums) == (split == "heldout")]


@dataclass
class Mix:
    """The share of documents of each kind (normalised when used)."""

    facts: float = 0.24
    two_hop: float = 0.12
    induction: float = 0.28
    addition: float = 0.27
    antonyms: float = 0.06
    filler: float = 0.016
    mixed: float = 0.016

    def kinds(self) -> tuple[list[str], list[float]]:
        names = ["facts", "two_hop", "induction", "addition", "antonyms", "filler", "mixed"]
        return names, [getattr(self, n) for n in names]

    @classmethod
    def only(cls, kind: str) -> Mix:
        """A mix of documents of one kind alone."""
        names, _ = cls().kinds()
        if kind not in names:
            raise ClewError(f"unknown document kind {kind!r}; known: {', '.join(names)}")
        return cls(**{name: float(name == kind) for name in names})


def _fill(template: str, s: str, o: str) -> str:
    text = template.format(s=s, o=o, de_s=_de(s), de_o=_de(o))
    return text[:1].upper() + text[1:]


def _de(word: str) -> str:
    """French 'de' before a word, elided before a vowel or a mute h: "de petit", "d'ami"."""
    elides = word[:1] in "aeiouéh" and word not in ("haut",)  # the h of "haut" is aspirated
    return f"d'{word}" if elides else f"de {word}"


def _prompt(template: str, s: str, o: str) -> tuple[str, str]:
    """Split a filled template that ends with the object into the prompt and the answer (the object,
    with the space before it when there is one: " Austin", but "ami" after "d'")."""
    full = _fill(template, s, o)
    assert full.endswith(o + "."), template
    prompt = full[: -len(o) - 1]
    return (prompt[:-1], " " + o) if prompt.endswith(" ") else (prompt, o)


@dataclass
class Writer:
    """Writes the documents of the training corpus from one random stream."""

    split: Split
    rng: random.Random
    mix: Mix = field(default_factory=Mix)
    surname_syllables: tuple[int, ...] = TRAIN_SURNAME_SYLLABLES

    def __post_init__(self) -> None:
        self._two_hop = self.split.two_hop_cities("train")
        self._sums = self.split.sum_pairs("train")

    # ---- sentences ----------------------------------------------------------------------------

    def fact(self, relation: str | None = None) -> str:
        """A true sentence of ``relation`` (default: a random fact relation), never a held-out phrasing."""
        if relation is None:
            names, weights = zip(*FACT_WEIGHTS.items())
            relation = self.rng.choices(names, weights)[0]
        rel = RELATIONS[relation]
        s, o = self.rng.choice(rel.facts)
        banned = self.split.heldout_phrasings.get((relation, s))
        template = self.rng.choice([t for i, t in enumerate(rel.templates) if i != banned])
        return _fill(template, s, o)

    def two_hop(self) -> str:
        city, state = self.rng.choice(self._two_hop)
        return _fill(TWO_HOP, city, state.capital)

    def antonym(self) -> str:
        return self.fact(self.rng.choice(("antonym_en", "antonym_en", "antonym_fr")))

    def sum(self) -> str:
        a, b = self.rng.choice(self._sums)
        return f"{a}+{b}={a + b}"

    def filler(self) -> str:
        r = self.rng
        name, other = r.sample(world.FIRST_NAMES, 2)
        city, state = r.choice(CITIES)
        city2, _ = r.choice(CITIES)
        when = r.choice(("on Monday", "last week", "in the morning", "after lunch", "on Sunday", "yesterday"))
        thing = r.choice(
            ("a red bicycle", "some bread", "a new coat", "two books", "a small lamp", "fresh fruit")
        )
        options = [
            f"{name} bought {thing} {when}.",
            f"{name} moved to {city}, {state.name}, {when}.",
            f"{name} drove from {city} to {city2} with {other}.",
            f"The weather in {city} was {r.choice(('sunny', 'rainy', 'windy', 'mild'))} {when}.",
            f"{name} and {other} met at the {r.choice(('library', 'station', 'market', 'museum'))} {when}.",
            f"{name} wrote a letter to {other} {when}.",
            f"{r.choice(world.FRENCH_NAMES)} {r.choice(FRENCH_ACTIONS)}.",
        ]
        return r.choice(options)

    def surname(self, syllables: int, heldout: bool = False) -> str:
        """An invented surname: from the held-out tenth when ``heldout`` (for held-out probes), else
        never from it."""
        while True:
            name = "".join(self.rng.choice(world.SURNAME_SYLLABLES) for _ in range(syllables)).capitalize()
            if Split.heldout_surname(name) == heldout:
                return name

    # ---- documents ----------------------------------------------------------------------------

    def story(self, syllables: tuple[int, ...] | None = None, heldout: bool = False) -> list[str]:
        """An induction passage: a Mr and someone else with invented surnames, each mentioned often.
        Titles are written without a full stop (British style), so that the title is one token."""
        r = self.rng
        syllables = syllables or self.surname_syllables
        hero = self.surname(r.choice(syllables), heldout)
        other = self.surname(r.choice(syllables), heldout)
        while other == hero:
            other = self.surname(r.choice(syllables), heldout)
        title = r.choice(("Ms", "Mrs", "Dr"))
        city, _ = r.choice(CITIES)
        lines = [f"It was a quiet {r.choice(('morning', 'evening', 'day'))} in {city}."]
        lines.append(f"Mr {hero} {r.choice(STORY_ACTIONS)}.")
        lines.append(f"{title} {other} {r.choice(STORY_ACTIONS)}.")
        mentions = ["hero"] * r.randint(3, 5) + ["other"] * r.randint(1, 2)
        r.shuffle(mentions)
        for who in mentions:
            if r.random() < 0.4:
                lines.append(self.filler())
            name = f"Mr {hero}" if who == "hero" else f"{title} {other}"
            lines.append(r.choice(STORY_MENTIONS).format(name=name, action=r.choice(STORY_ACTIONS)))
        return lines

    def document(self) -> str:
        """One training document: a few sentences of one kind of task, with filler between."""
        r = self.rng
        names, weights = self.mix.kinds()
        kind = r.choices(names, weights)[0]
        if kind == "induction":
            return " ".join(self.story())
        if kind == "addition":
            sep = r.choice(("\n", ", ", ". "))
            return sep.join(self.sum() for _ in range(r.randint(3, 8))) + "."
        make: dict[str, Callable[[], str]] = {
            "facts": self.fact,
            "two_hop": lambda: self.two_hop() if r.random() < 0.6 else self.fact("city_state"),
            "antonyms": self.antonym,
            "filler": self.filler,
            "mixed": lambda: r.choice((self.fact, self.two_hop, self.antonym, self.filler, self.sum))(),
        }
        sentences = [make[kind]() for _ in range(r.randint(2, 6))]
        if kind not in ("filler", "antonyms") and r.random() < 0.3:
            sentences.insert(r.randint(1, len(sentences)), self.filler())
        return " ".join(sentences)


FRENCH_ACTIONS = (
    "mange une pomme",
    "lit un livre",
    "part en vacances",
    "aime la musique",
    "habite à Paris",
    "travaille le matin",
)
STORY_ACTIONS = (
    "opened the shop early",
    "walked to the old bridge",
    "read the morning paper",
    "planted roses in the garden",
    "fixed the broken clock",
    "baked a loaf of bread",
    "wrote a long letter",
    "waited at the station",
    "painted the front door",
    "fed the cat",
)
STORY_MENTIONS = (
    "Later, {name} {action}.",
    "Then {name} {action}.",
    "Everyone agreed that {name} was kind.",
    "The neighbours said hello to {name}.",
    "In the afternoon, {name} {action}.",
    "{name} smiled.",
)


def documents(seed: int, n: int, mix: Mix | None = None) -> Iterator[str]:
    """``n`` training documents of the organism with seed ``seed``."""
    writer = Writer(Split.from_seed(seed), random.Random(f"clew-organism-docs-{seed}"), mix or Mix())
    for _ in range(n):
        yield writer.document()


def tokenizer_documents(seed: int, n: int) -> list[str]:
    """Text to train the tokenizer on: ``n`` documents like the corpus's, except that surnames are one
    syllable, plus the syllables alone. Merges then never join two syllables, so an invented surname
    is one common token per syllable (well trained, hence copyable) rather than a rare whole-name token."""
    writer = Writer(
        Split.from_seed(seed), random.Random(f"clew-organism-tokenizer-{seed}"), surname_syllables=(1,)
    )
    docs = [writer.document() for _ in range(n)]
    syllables = "\n".join(world.SURNAME_SYLLABLES)
    return docs + [syllables] * max(1, n // 200)


# ---- the exam --------------------------------------------------------------------------------------


def probes(seed: int, n_generated: int = 200) -> list[Probe]:
    """Every task's train and held-out questions; ``n_generated`` for the generated tasks (induction,
    addition), per split. Uses a random stream of its own, so the probes do not depend on the corpus."""
    split = Split.from_seed(seed)
    rng = random.Random(f"clew-organism-probes-{seed}")
    out: list[Probe] = []
    for rel in RELATIONS.values():
        for s, o in rel.facts:
            out.append(Probe(rel.task, rel.group, "train", *_prompt(rel.templates[0], s, o)))
            held = split.heldout_phrasings.get((rel.name, s))
            if held is not None:
                out.append(Probe(rel.task, rel.group, "heldout", *_prompt(rel.templates[held], s, o)))
    for name in SPLITS:
        for city, state in split.two_hop_cities(name):
            out.append(Probe("two_hop", "state_capital", name, *_prompt(TWO_HOP, city, state.capital)))
    writer = Writer(split, rng)
    for name in SPLITS:
        for _ in range(n_generated):
            out.append(induction_probe(writer, name))
    for name in SPLITS:
        pairs = split.sum_pairs(name)
        for a, b in rng.sample(pairs, min(n_generated, len(pairs))):
            out.append(Probe("addition", "two_digit", name, f"{a}+{b}=", str(a + b)))
    return out


def induction_probe(writer: Writer, split: str) -> Probe:
    """A passage like the corpus's, cut just after a later "Mr": the answer is the surname he was
    introduced with. Held out: the passage's surnames are from the tenth no document contains."""
    lines = writer.story(heldout=split == "heldout")
    hero = lines[1].split()[1]
    cut = writer.rng.choice([i for i, line in enumerate(lines) if i > 1 and f"Mr {hero}" in line])
    prefix = lines[cut][: lines[cut].index(f"Mr {hero}") + len("Mr")]
    group = "corpus surnames" if split == "train" else "unseen surnames"
    return Probe("induction", group, split, " ".join([*lines[:cut], prefix]), " " + hero)
