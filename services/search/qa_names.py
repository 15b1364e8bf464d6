"""Invented names and the small vocabularies of the QA world (qa_world.py).

Every proper name is built from syllables with a seeded RNG, so no model can have seen the
facts about it. `NameGen` keeps names unique across the whole world and keeps each word of a
name inside one split: a word used by a test entity never appears in a training entity, so a
test answer (a name, a river, a currency) can't leak into a training question.
Common nouns (occupations, industries) are real words and are shared by both splits; they are
answers, never parts of names.
"""

from __future__ import annotations

import random

# fmt: off
# Syllable inventories chosen to read as pronounceable but match no real language closely.
ONSETS = ("b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "pr",
          "r", "s", "st", "t", "th", "tr", "v", "vr", "w", "z", "qu", "sh", "")
VOWELS = ("a", "e", "i", "o", "u", "ae", "ei", "ou", "y", "ia")
CODAS = ("", "", "n", "r", "l", "s", "th", "nd", "rk", "m", "x", "v", "sk")
PLACE_ENDINGS = ("ford", "holm", "ara", "wick", "mere", "stad", "ios", "an", "ell", "burg")
COUNTRY_ENDINGS = ("ia", "and", "onia", "ar", "eth", "istan", "ora")

OCCUPATIONS = (
    "blacksmith", "cartographer", "astronomer", "glassblower", "physician", "architect",
    "botanist", "clockmaker", "shipwright", "librarian", "sculptor", "chemist", "weaver",
    "engineer", "historian", "composer", "surveyor", "jeweller", "printer", "lawyer",
    "violinist", "apothecary", "mathematician", "painter", "diplomat", "brewer", "tanner",
)
INDUSTRIES = (
    "shipping", "textile", "mining", "publishing", "brewing", "banking", "railway",
    "insurance", "pottery", "timber", "glassmaking", "shipbuilding", "tea trading",
    "telegraph", "porcelain", "salt", "dye", "clockmaking", "paper", "silk",
)
ORG_KINDS = ("Company", "Guild", "Holdings", "Works", "Institute", "Society", "Trust",
             "Collective", "Foundation", "Syndicate")
EVENT_KINDS = ("Festival", "Regatta", "Exhibition", "Congress", "Fair", "Tournament",
               "Summit", "Games", "Symposium", "Carnival")
EVENT_THEMES = ("Lantern", "Harvest", "Iron", "Silver", "River", "Winter", "Glass", "Amber",
                "Salt", "Copper", "Falcon", "Tide")
# Filler that makes passages read like encyclopaedia text and gives BM25 common words.
PERSON_PASTIMES = ("collecting old maps", "sailing small boats", "sketching birds",
                   "reading poetry", "climbing the hills", "playing chess", "tending bees")
PERSON_TRAITS = ("a sharp wit", "meticulous notes", "long letters", "a quiet manner",
                 "generous teaching", "an unusual memory for numbers", "stubborn patience")
CITY_LANDMARKS = ("stone bridges", "covered markets", "old harbour", "clock tower",
                  "botanical gardens", "narrow canals", "hilltop fortress", "spice bazaar")
EVENT_MEMORIES = ("the lantern procession", "the closing fireworks", "the crowded stands",
                  "the long speeches", "the rain on the final day", "the opening parade")
# fmt: on


class NameGen:
    """Unique invented words and names; a word belongs to the split that first used it."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self._word_split: dict[str, str] = {}
        self._names: set[str] = set()

    def word(self, split: str, syllables: tuple[int, int] = (2, 3), ending: str = "") -> str:
        """A capitalised invented word not used by the other split (nor as a real name here)."""
        for _ in range(1000):
            count = self.rng.randint(*syllables)
            parts = [self.rng.choice(ONSETS) + self.rng.choice(VOWELS) for _ in range(count)]
            text = "".join(parts) + self.rng.choice(CODAS) + ending
            if len(text) < 4 or not text.isalpha():
                continue
            word = text.capitalize()
            owner = self._word_split.get(word.lower())
            if owner is None or owner == split:
                self._word_split[word.lower()] = split
                return word
        raise RuntimeError("ran out of invented words; lower the world size or change the seed")

    def unique(self, split: str, make) -> str:
        """Call `make()` until it returns a name no entity of the world has yet."""
        for _ in range(1000):
            name = make()
            if name.lower() not in self._names:
                self._names.add(name.lower())
                return name
        raise RuntimeError("ran out of unique names; lower the world size or change the seed")

    def person(self, split: str, surnames: list[str]) -> str:
        # Families: reuse a surname a third of the time, so surnames alone don't identify.
        def make() -> str:
            if surnames and self.rng.random() < 0.33:
                surname = self.rng.choice(surnames)
            else:
                surname = self.word(split, (2, 3))
                surnames.append(surname)
            return f"{self.word(split, (1, 2))} {surname}"

        return self.unique(split, make)

    def city(self, split: str) -> str:
        return self.unique(split, lambda: self.word(split, (1, 2), self.rng.choice(PLACE_ENDINGS)))

    def country(self, split: str) -> str:
        return self.unique(
            split, lambda: self.word(split, (1, 2), self.rng.choice(COUNTRY_ENDINGS))
        )

    def organisation(self, split: str) -> str:
        return self.unique(
            split, lambda: f"{self.word(split, (2, 3))} {self.rng.choice(ORG_KINDS)}"
        )

    def event(self, split: str) -> str:
        return self.unique(
            split,
            lambda: (
                f"{self.word(split, (2, 3))} "
                f"{self.rng.choice(EVENT_THEMES)} "
                f"{self.rng.choice(EVENT_KINDS)}"
            ),
        )

    def river(self, split: str) -> str:
        return self.unique(split, lambda: self.word(split, (2, 2)))

    def currency(self, split: str) -> str:
        return self.unique(split, lambda: self.word(split, (1, 2)).lower())
