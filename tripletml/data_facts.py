"""The counts data-dependent params are checked against: prepare's ``summary.json`` where it
describes the split asked for, else the official Omniglot counts (NumPy only, no TensorFlow)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tripletml.params import DataParams

# The official Omniglot counts: what data-dependent values are checked against until
# `prepare` has written the prepared set's own summary.json (or when it describes another
# split). Characters per background alphabet, so that a count of held-out alphabets drawn
# from data.seed gives the exact training and validation characters prepare will make.
OMNIGLOT_BACKGROUND = {  # 30 alphabets, 964 characters
    "Alphabet_of_the_Magi": 20, "Anglo-Saxon_Futhorc": 29, "Arcadian": 26, "Armenian": 41, "Asomtavruli_(Georgian)": 40, "Balinese": 24,
    "Bengali": 46, "Blackfoot_(Canadian_Aboriginal_Syllabics)": 14, "Braille": 26, "Burmese_(Myanmar)": 34, "Cyrillic": 33,
    "Early_Aramaic": 22, "Futurama": 26, "Grantha": 43, "Greek": 24, "Gujarati": 48, "Hebrew": 22, "Inuktitut_(Canadian_Aboriginal_Syllabics)": 16,
    "Japanese_(hiragana)": 52, "Japanese_(katakana)": 47, "Korean": 40, "Latin": 26, "Malay_(Jawi_-_Arabic)": 40, "Mkhedruli_(Georgian)": 41,
    "N_Ko": 33, "Ojibwe_(Canadian_Aboriginal_Syllabics)": 14, "Sanskrit": 42, "Syriac_(Estrangelo)": 23, "Tagalog": 17, "Tifinagh": 55,
}  # fmt: skip
OMNIGLOT_EVALUATION_CHARACTERS = 659  # 20 alphabets
OMNIGLOT_SMALLEST_EVALUATION_ALPHABET = ("Angelic", 20)
OMNIGLOT_DRAWINGS = 20  # per character, in every set


@dataclass(frozen=True)
class DataFacts:
    """The counts data-dependent params are checked against; ``*_source`` says whose they are."""

    background_alphabets: int
    train_characters: int | None  # None: unknown (held-out alphabets the official set lacks)
    val_characters: int | None
    split_source: str
    test_characters: int | None
    smallest_test_alphabet: tuple[str, int]
    test_source: str


_OFFICIAL = "the official Omniglot counts"


def _official_split(d: DataParams) -> tuple[int, int | None, int | None]:
    """(background alphabets, train characters, validation characters) of the official set, split as prepare splits it."""
    names, spec = sorted(OMNIGLOT_BACKGROUND), d.validation_alphabets
    if isinstance(spec, list) and set(spec) <= OMNIGLOT_BACKGROUND.keys():
        held_out = set(spec)
    elif isinstance(spec, int) and 0 <= spec < len(names):
        from tripletml.data import validation_alphabets  # the very draw prepare makes (numpy; no TensorFlow)

        held_out = set(validation_alphabets(names, spec, d.seed))
    else:  # another data set's alphabet names (prepare checks them), or out of range (_check_data says so)
        return len(names), None, None
    val = sum(OMNIGLOT_BACKGROUND[a] for a in held_out)
    return len(names), sum(OMNIGLOT_BACKGROUND.values()) - val, val


def data_facts(d: DataParams, use_prepared: bool = True) -> DataFacts:
    """The data's counts: prepare's summary.json (its split only where it was made with this
    ``data.validation_alphabets``), else the official Omniglot counts."""
    where = str(Path(d.prepared_dir) / "summary.json")
    summary: Any = {}
    if use_prepared:
        try:
            summary = json.loads(Path(where).read_text(encoding="utf-8"))
        except (OSError, ValueError):  # not prepared yet, or unreadable: prepare rewrites it
            pass
    try:
        train, val, spec = summary["train"], summary["val"], d.validation_alphabets
        if (sorted(set(spec)) != sorted(val["names"])) if isinstance(spec, list) else (len(val["names"]) != spec):
            raise ValueError("made with another data.validation_alphabets")
        split = (int(train["alphabets"]) + int(val["alphabets"]), int(train["characters"]), int(val["characters"]), where)
    except (KeyError, TypeError, ValueError):  # no summary, an older one, or another split's
        split = (*_official_split(d), _OFFICIAL)
    try:
        test = summary["test"]
        characters = None if test.get("characters") is None else int(test["characters"])
        test_facts = (characters, (str(test["smallest_alphabet"]["name"]), int(test["smallest_alphabet"]["characters"])), where)
    except (KeyError, TypeError, ValueError, AttributeError):
        test_facts = (OMNIGLOT_EVALUATION_CHARACTERS, OMNIGLOT_SMALLEST_EVALUATION_ALPHABET, _OFFICIAL)
    return DataFacts(*split, *test_facts)
