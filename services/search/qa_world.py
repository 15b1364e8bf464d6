"""A fictional world for search-agent training: entities, their facts, and passages stating them.

Kinds of entity: person, organisation, city, country, event. Each has literal attributes (a
year, an occupation, a river, ...) and relations to other entities (a person's birthplace is a
city, an organisation's founder is a person, ...). Every relation is a function (exactly one
object per subject), so a chain of relations names exactly one entity: that is what makes
multi-hop questions (qa_questions.py) have one checkable answer.

Each fact is stated in exactly one passage, of its subject: `Entity.fact_passage` records which,
and those are the supporting passages of the questions. An entity's passages share its name as
title and its id as `doc_id` (so `Access` by entity id returns its whole page).

With `numbered=True` every entity also carries a catalogue number (`Entity.number`, unique,
fixed width, like a Wikidata id) written in the title of each of its passages ("Mara Quell
(no. 48213)"), so a question can name an entity by it: the search quickstart does, because a
tiny model copies a fixed-width number into a query but not a name it has never seen
(search_task.py). The numbers come from their own random stream: a world is the same with and
without them, but for the titles.

The world is two disjoint sub-worlds, `train` and `test`: relations never cross them and no
word of a name is shared between them (qa_names.py), so a test entity, and therefore a test
answer, never appears in a training question. Both sub-worlds are in the one corpus.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from agentrl.search import qa_names as vocab
from agentrl.search.corpus import Passage
from agentrl.search.qa_names import NameGen


@dataclass(frozen=True)
class Fact:
    """One kind of fact: its subject kind, object (entity kind or None for a literal), wording."""

    subject: str
    name: str
    target: str | None
    passage: int  # which of the subject's passages states it
    sentence: str  # "{s}" subject mention, "{o}" object
    question: str  # asks for the object of "{s}"
    phrase: str = ""  # relations only: a noun phrase for the object ("the founder of {s}")


# fmt: off
FACTS: tuple[Fact, ...] = (
    Fact("person", "birth_year", None, 0, "{s} was born in the year {o}.",
         "In what year was {s} born?"),
    Fact("person", "birthplace", "city", 0, "{s} was born in the city of {o}.",
         "In which city was {s} born?", "the birthplace of {s}"),
    Fact("person", "occupation", None, 1, "By profession, {s} was a {o}.",
         "What was the profession of {s}?"),
    Fact("person", "employer", "organisation", 1, "{s} worked for {o} for most of their career.",
         "Which organisation did {s} work for?", "the employer of {s}"),
    Fact("person", "mentor", "person", 1, "{s} was mentored by {o}.",
         "Who mentored {s}?", "the mentor of {s}"),
    Fact("organisation", "founded_year", None, 0, "{s} was founded in {o}.",
         "In what year was {s} founded?"),
    Fact("organisation", "founder", "person", 0, "The founder of {s} was {o}.",
         "Who founded {s}?", "the founder of {s}"),
    Fact("organisation", "headquarters", "city", 1, "{s} has its headquarters in {o}.",
         "In which city does {s} have its headquarters?", "the headquarters city of {s}"),
    Fact("organisation", "industry", None, 1, "{s} is active in the {o} industry.",
         "In which industry is {s} active?"),
    Fact("city", "country", "country", 0, "{s} is a city in {o}.",
         "In which country is {s}?", "the country of {s}"),
    Fact("city", "established_year", None, 0, "{s} was established in {o}.",
         "In what year was {s} established?"),
    Fact("city", "river", None, 0, "{s} lies on the banks of the {o} River.",
         "On which river does {s} lie?"),
    Fact("city", "mayor", "person", 1, "The current mayor of {s} is {o}.",
         "Who is the mayor of {s}?", "the mayor of {s}"),
    Fact("city", "population", None, 1, "{s} has a population of about {o}.",
         "What is the population of {s}?"),
    Fact("country", "capital", "city", 0, "The capital of {s} is {o}.",
         "What is the capital of {s}?", "the capital of {s}"),
    Fact("country", "currency", None, 0, "The currency of {s} is the {o}.",
         "What is the currency of {s}?"),
    Fact("event", "year", None, 0, "{s} took place in {o}.",
         "In what year did {s} take place?"),
    Fact("event", "location", "city", 0, "{s} was held in {o}.",
         "In which city was {s} held?", "the host city of {s}"),
    Fact("event", "organiser", "organisation", 1, "{s} was organised by {o}.",
         "Which organisation organised {s}?", "the organiser of {s}"),
    Fact("event", "winner", "person", 1, "The winner of {s} was {o}.",
         "Who won {s}?", "the winner of {s}"),
)
# fmt: on
FACTS_BY_KIND: dict[str, list[Fact]] = {}
for _fact in FACTS:
    FACTS_BY_KIND.setdefault(_fact.subject, []).append(_fact)
PASSAGES_PER_KIND = {
    kind: 1 + max(f.passage for f in facts) for kind, facts in FACTS_BY_KIND.items()
}
# Share of entities of each kind: people dominate, as in an encyclopaedia.
KIND_SHARES = {"person": 0.50, "organisation": 0.15, "city": 0.15, "country": 0.02, "event": 0.18}
SPLITS = ("train", "test")
# Width of a catalogue number: at least 10x more numbers than entities, so numbers look random.
NUMBER_MIN_DIGITS = 5


@dataclass
class Entity:
    id: str
    kind: str
    name: str
    split: str
    values: dict[str, str] = field(default_factory=dict)  # literal facts
    links: dict[str, str] = field(default_factory=dict)  # relation -> entity id
    fact_passage: dict[str, str] = field(default_factory=dict)  # fact -> passage id
    number: str = ""  # catalogue number, only in a numbered world

    @property
    def title(self) -> str:
        """The title of its passages: the name, and the number in a numbered world."""
        return f"{self.name} (no. {self.number})" if self.number else self.name

    @property
    def mention(self) -> str:
        """How text refers to it: events take the article ("the X Festival")."""
        return f"the {self.name}" if self.kind == "event" else self.name


@dataclass
class World:
    entities: dict[str, Entity]
    passages: list[Passage]

    def by_split(self, split: str) -> list[Entity]:
        return [e for e in self.entities.values() if e.split == split]


def generate_world(
    seed: int, num_passages: int, test_fraction: float, numbered: bool = False
) -> World:
    """A world of about `num_passages` passages; the test sub-world gets `test_fraction` of it.
    `numbered` gives every entity a catalogue number (module docstring)."""
    if num_passages < 200:
        raise ValueError(
            f"num_passages must be at least 200 (got {num_passages}): smaller worlds "
            "have too few cities and countries for multi-hop questions"
        )
    if not 0.05 <= test_fraction <= 0.5:
        raise ValueError(f"test_fraction must be within [0.05, 0.5], got {test_fraction}")
    rng = random.Random(seed)
    names = NameGen(rng)
    per_entity = sum(KIND_SHARES[k] * PASSAGES_PER_KIND[k] for k in KIND_SHARES)
    entities: dict[str, Entity] = {}
    for split in SPLITS:
        share = test_fraction if split == "test" else 1 - test_fraction
        total = num_passages * share / per_entity
        counts = {k: max(3, round(total * s)) for k, s in KIND_SHARES.items()}
        _populate(rng, names, split, counts, entities)
    if numbered:
        _number(random.Random(f"qa-world-numbers:{seed}"), entities)
    return World(entities=entities, passages=_write_passages(rng, entities))


def _populate(
    rng: random.Random,
    names: NameGen,
    split: str,
    counts: dict[str, int],
    entities: dict[str, Entity],
) -> None:
    surnames: list[str] = []
    made = {kind: [] for kind in counts}
    makers = {
        "person": lambda: names.person(split, surnames),
        "city": lambda: names.city(split),
        "country": lambda: names.country(split),
        "event": lambda: names.event(split),
        "organisation": lambda: names.organisation(split),
    }
    for kind, count in counts.items():
        for _ in range(count):
            entity = Entity(
                id=f"{kind}-{len(entities):06d}", kind=kind, name=makers[kind](), split=split
            )
            entities[entity.id] = entity
            made[kind].append(entity)
    people, orgs, cities = made["person"], made["organisation"], made["city"]
    for i, city in enumerate(cities):
        # Round-robin first, so every country has at least one city to be its capital.
        country = made["country"][i] if i < len(made["country"]) else rng.choice(made["country"])
        city.links["country"] = country.id
        city.links["mayor"] = rng.choice(people).id
        city.values.update(
            established_year=str(rng.randint(800, 1850)),
            river=names.river(split),
            population=f"{rng.randint(2, 900) * 1000:,}",
        )
    cities_of: dict[str, list[Entity]] = {}
    for city in cities:
        cities_of.setdefault(city.links["country"], []).append(city)
    for country in made["country"]:
        country.links["capital"] = rng.choice(cities_of[country.id]).id
        country.values["currency"] = names.currency(split)
    for person in people:
        person.values.update(
            birth_year=str(rng.randint(1750, 1980)), occupation=rng.choice(vocab.OCCUPATIONS)
        )
        person.links.update(
            birthplace=rng.choice(cities).id,
            employer=rng.choice(orgs).id,
            mentor=rng.choice([p for p in rng.sample(people, 2) if p is not person]).id,
        )
    for org in orgs:
        org.values.update(
            founded_year=str(rng.randint(1600, 1990)), industry=rng.choice(vocab.INDUSTRIES)
        )
        org.links.update(founder=rng.choice(people).id, headquarters=rng.choice(cities).id)
    for event in made["event"]:
        event.values["year"] = str(rng.randint(1800, 2020))
        event.links.update(
            location=rng.choice(cities).id,
            organiser=rng.choice(orgs).id,
            winner=rng.choice(people).id,
        )


def _number(rng: random.Random, entities: dict[str, Entity]) -> None:
    """Distinct random catalogue numbers, all of one width (5 digits, more for a huge world)."""
    width = max(NUMBER_MIN_DIGITS, len(str(10 * len(entities))))
    low = 10 ** (width - 1)
    for entity, number in zip(
        entities.values(), rng.sample(range(low, 10 * low), len(entities)), strict=True
    ):
        entity.number = str(number)


def object_text(world_entities: dict[str, Entity], entity: Entity, fact: Fact) -> str:
    """The object of `fact` for `entity` as it is written in text."""
    if fact.target is None:
        return entity.values[fact.name]
    return world_entities[entity.links[fact.name]].mention


def _write_passages(rng: random.Random, entities: dict[str, Entity]) -> list[Passage]:
    passages: list[Passage] = []
    for entity in entities.values():
        facts = FACTS_BY_KIND[entity.kind]
        for part in range(PASSAGES_PER_KIND[entity.kind]):
            pid = f"p{len(passages):07d}"
            sentences = []
            for fact in facts:
                if fact.passage != part:
                    continue
                text = fact.sentence.format(s=entity.mention, o=object_text(entities, entity, fact))
                sentences.append(text[0].upper() + text[1:])
                entity.fact_passage[fact.name] = pid
            rng.shuffle(sentences)
            sentences.append(_filler(rng, entity, part))
            passages.append(
                Passage(id=pid, title=entity.title, text=" ".join(sentences), doc_id=entity.id)
            )
    return passages


def _filler(rng: random.Random, entity: Entity, part: int) -> str:
    """One sentence of colour per passage: common words, no facts a question asks about."""
    first = entity.name.split()[0]
    kind = entity.kind
    if kind == "person":
        if part == 0:
            return f"As a child, {first} spent long summers {rng.choice(vocab.PERSON_PASTIMES)}."
        return f"Colleagues remembered {first} for {rng.choice(vocab.PERSON_TRAITS)}."
    if kind == "organisation":
        if part == 0:
            return "Its early records survive in a private archive."
        return f"At its peak it employed around {rng.randint(2, 90) * 50} people."
    if kind == "city":
        landmark = rng.choice(vocab.CITY_LANDMARKS)
        if part == 0:
            return f"Travellers know it for its {landmark}."
        return f"Its {landmark} draw visitors every spring."
    if kind == "country":
        return f"Its flag shows a {rng.choice(vocab.EVENT_THEMES).lower()} emblem."
    memory = rng.choice(vocab.EVENT_MEMORIES)
    return (
        f"Visitors often recall {memory}."
        if part == 0
        else f"Newspapers wrote mostly about {memory}."
    )
