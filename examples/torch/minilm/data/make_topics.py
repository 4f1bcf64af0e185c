"""Writes topics.csv.gz: short English sentences in four topics (finance, sport, cooking, law).

Every sentence is put together from parts (an opening, a subject, what the subject did, how or
when), drawn with a fixed seed, so the file is the same byte for byte on every run. The parts are
written so that no single word gives the topic away: what the subject did turns on a word that
two or three topics share ("stock", "season", "court", "charge", "serve", "record", "appeal",
"balance", "cut", "draw", "bar", "notes", ...), most subjects and many endings fit any topic, and
the words that belong to one topic are spread over many parts, each in few sentences.

A quarter of each topic's actions and endings appear only in the test set, so a model must carry
what it knows of words it never saw in training (a pretrained encoder does; word counts do not).

    python make_topics.py                  # writes topics.csv.gz beside this script
    python make_topics.py --check          # exits 1 unless the file on disk is what it would write
    python make_topics.py --baselines      # accuracy of word-count baselines on the test set

Columns: split (train or test), label (0 finance, 1 sport, 2 cooking, 3 law), text. Training rows
come first, in a shuffled order; sample ids are their indices.
"""

from __future__ import annotations

import argparse
import collections
import csv
import gzip
import io
import math
import random
import re
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Set, Tuple

TOPICS = ("finance", "sport", "cooking", "law")
SEED = 20240613
TRAIN_PER_TOPIC = 320
TEST_PER_TOPIC = 80
#: Every fourth action and ending of a topic (in the lists' order, from the first) is kept for the test set.
HELD_OUT_EVERY = 4
PATH = Path(__file__).resolve().parent / "topics.csv.gz"

# MARK: - The parts

# Subjects that fit every topic.
SHARED_SUBJECTS = [
    "the committee",
    "my neighbour",
    "the new manager",
    "our group",
    "she",
    "he",
    "the old hands",
    "a spokesperson",
    "my cousin",
    "the younger team",
    "nobody in the room",
    "the whole family",
    "the two of them",
    "a friend of mine",
]

# Subjects that lean towards one topic (a third of the sentences use one).
SUBJECTS: Dict[str, List[str]] = {
    "finance": ["the fund", "the lender", "the treasurer", "the investors", "the accountant", "the broker"],
    "sport": ["the captain", "the coach", "the visitors", "the striker", "the umpire", "the goalkeeper"],
    "cooking": ["the chef", "the baker", "my grandmother", "the kitchen staff", "the caterer", "the pastry cook"],
    "law": ["the judge", "the defence", "the prosecutor", "the jury", "the solicitor", "the clerk"],
}

# What the subject did, in the past tense; most turn on a word that other topics use as well.
ACTIONS: Dict[str, List[str]] = {
    "finance": [
        "raised the charge on late payments",
        "sold the stock",
        "checked the balance of the account",
        "expected a better return",
        "announced a cut in the rate",
        "kept a record of every payment",
        "listened to a pitch from a young company",
        "watched the share price slide",
        "changed the mix of the portfolio",
        "paid the interest early",
        "agreed a draw on the credit line",
        "moved the savings into bonds",
        "wrote notes on the quarterly figures",
        "set aside a reserve for bad debts",
        "asked for a better spread",
        "closed the position",
    ],
    "sport": [
        "won on the court in five sets",
        "broke the record by a second",
        "made an appeal for a penalty",
        "hit the bar in the last minute",
        "scored from the return of serve",
        "started the season with three wins",
        "settled for a draw away from home",
        "sent a cross into the box",
        "stayed on the bench",
        "walked off the pitch",
        "led the charge down the wing",
        "kept a clean sheet",
        "changed the formation at half time",
        "saved the spot kick",
        "ran the last lap alone",
        "took the title on goal difference",
    ],
    "cooking": [
        "made a stock from the bones",
        "forgot to season the sauce",
        "tried to balance the sweet and the sour",
        "cut the onions into thin rings",
        "served the soup with warm bread",
        "left the mix to rest overnight",
        "melted a bar of chocolate into the batter",
        "wrote notes on the new recipe",
        "set the plate down beside the oven",
        "let everyone share the dish",
        "browned the meat in batches",
        "folded the cream into the eggs",
        "kept the dough in the fridge",
        "charred the peppers over the flame",
        "reduced the wine by half",
        "rolled the pastry thin",
    ],
    "law": [
        "took the case to a higher court",
        "filed an appeal against the ruling",
        "read the charge to the accused",
        "went through the record of the earlier trial",
        "asked the bench for more time",
        "served a short sentence",
        "paid the fine",
        "began the cross-examination of the witness",
        "wrote notes on the hearing",
        "spoke to the panel about the evidence",
        "called the bar to order",
        "drew up the contract again",
        "settled the claim out of court",
        "asked for the verdict to be set aside",
        "lodged the statement with the registry",
        "granted bail",
    ],
}

# How or when, that fit every topic.
SHARED_ENDINGS = [
    "on Tuesday",
    "last week",
    "for the second time",
    "without much fuss",
    "as everyone expected",
    "to everyone's surprise",
    "late in the evening",
    "before anyone noticed",
    "in the end",
    "after a long wait",
    "once again",
    "early that morning",
]

# How or when, that lean towards one topic (half of the sentences have one).
ENDINGS: Dict[str, List[str]] = {
    "finance": [
        "before the markets opened",
        "after the audit",
        "during the bond sale",
        "despite the weak pound",
        "as the dividend fell",
        "with the mortgage due",
        "while inflation rose",
        "after the merger",
        "ahead of the earnings call",
        "as the currency slipped",
        "before the tax deadline",
        "during the budget review",
    ],
    "sport": [
        "in front of a full stadium",
        "after the referee's whistle",
        "in the semi-final",
        "before the transfer window closed",
        "in extra time",
        "on a wet afternoon at the ground",
        "during the derby",
        "in the opening round",
        "as the crowd sang",
        "in the away leg",
        "at the national championships",
        "before the league resumed",
    ],
    "cooking": [
        "while the oven warmed up",
        "for the dinner party",
        "with a pinch of salt",
        "before the guests arrived",
        "in a cast-iron pan",
        "over a low heat",
        "for the Sunday lunch",
        "with fresh herbs from the garden",
        "while the kettle boiled",
        "for the harvest supper",
        "in the new kitchen",
        "on the wooden board",
    ],
    "law": [
        "before the hearing resumed",
        "in front of the magistrates",
        "after the witness stepped down",
        "under the new statute",
        "as the tribunal adjourned",
        "during the inquest",
        "before the sentencing",
        "with the barrister present",
        "after the deposition",
        "at the crown court",
        "before the jury retired",
        "under oath",
    ],
}

# The sentence's frame; {s} subject, {a} action, {e} ending.
TEMPLATES = [
    "{S} {a} {e}.",
    "{S} {a}.",
    "{E}, {s} {a}.",
    "I heard that {s} {a} {e}.",
    "It was {s} who {a} {e}.",
    "Apparently {s} {a}, {e}.",
    "Nobody was sure why {s} {a} {e}.",
    "{S} {a} {e}, or so they said.",
    "Yesterday {s} {a}.",
    "According to my sister, {s} {a} {e}.",
]


# MARK: - Sentences


def held_out(items: Sequence[str]) -> Tuple[List[str], List[str]]:
    """The items a training sentence may use, and those kept for the test set."""
    train = [item for index, item in enumerate(items) if index % HELD_OUT_EVERY != 0]
    test = [item for index, item in enumerate(items) if index % HELD_OUT_EVERY == 0]
    return train, test


def sentence(rng: random.Random, topic: str, test: bool) -> str:
    """One sentence of ``topic``; a test sentence may use the held-out parts too."""
    actions, held_actions = held_out(ACTIONS[topic])
    endings, held_endings = held_out(ENDINGS[topic])
    if test:
        actions, endings = actions + held_actions, endings + held_endings
    subject = rng.choice(SUBJECTS[topic]) if rng.random() < 1 / 3 else rng.choice(SHARED_SUBJECTS)
    ending = rng.choice(endings) if rng.random() < 0.5 else rng.choice(SHARED_ENDINGS)
    template = rng.choice(TEMPLATES)
    action = rng.choice(actions)
    text = template.format(
        s=subject, S=subject[0].upper() + subject[1:], a=action, e=ending, E=ending[0].upper() + ending[1:]
    )
    return text


def make_rows() -> List[Tuple[str, int, str]]:
    """Every row: (split, label, text), training rows first."""
    rng = random.Random(SEED)
    seen: Set[str] = set()
    splits: Dict[str, List[Tuple[str, int, str]]] = {"train": [], "test": []}
    for split, count in (("train", TRAIN_PER_TOPIC), ("test", TEST_PER_TOPIC)):
        for label, topic in enumerate(TOPICS):
            made = 0
            while made < count:
                text = sentence(rng, topic, test=split == "test")
                if text in seen:
                    continue
                seen.add(text)
                splits[split].append((split, label, text))
                made += 1
        rng.shuffle(splits[split])
    return splits["train"] + splits["test"]


def encode(rows: Sequence[Tuple[str, int, str]]) -> bytes:
    """The rows as gzip-compressed CSV with a header, with no time stamp (the same bytes every run)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["split", "label", "text"])
    writer.writerows(rows)
    return gzip.compress(text.getvalue().encode("utf-8"), compresslevel=9, mtime=0)


# MARK: - Baselines


def words(text: str) -> List[str]:
    return re.findall(r"[a-z']+", text.lower())


def baselines(rows: Sequence[Tuple[str, int, str]]) -> Dict[str, float]:
    """Test accuracy of two word-count classifiers trained on the training rows.

    ``best single word``: for each word, the topic it occurs in most in training; a test sentence
    gets the topic of its one most telling word (the word whose training sentences are most often
    of one topic, ties to the more frequent word), else the most frequent topic. ``naive Bayes``:
    multinomial naive Bayes over the words, add-one smoothing.
    """
    train = [(label, words(text)) for split, label, text in rows if split == "train"]
    test = [(label, words(text)) for split, label, text in rows if split == "test"]
    by_word: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    totals: collections.Counter = collections.Counter()
    for label, tokens in train:
        totals.update([label])
        for word in set(tokens):
            by_word[word][label] += 1
    fallback = totals.most_common(1)[0][0]

    def single_word(tokens: List[str]) -> int:
        best: Tuple[float, int, int] = (-1.0, 0, fallback)
        for word in set(tokens):
            counts = by_word.get(word)
            if not counts:
                continue
            label, top = counts.most_common(1)[0]
            best = max(best, (top / sum(counts.values()), sum(counts.values()), label))
        return best[2]

    word_counts: List[collections.Counter] = [collections.Counter() for _ in TOPICS]
    for label, tokens in train:
        word_counts[label].update(tokens)
    vocabulary = set(by_word)

    def naive_bayes(tokens: List[str]) -> int:
        scores = []
        for label, counts in enumerate(word_counts):
            total = sum(counts.values()) + len(vocabulary)
            score = math.log(totals[label] / len(train))
            score += sum(math.log((counts[word] + 1) / total) for word in tokens if word in vocabulary)
            scores.append((score, -label))
        return -max(scores)[1]

    return {
        "best single word": sum(single_word(tokens) == label for label, tokens in test) / len(test),
        "naive Bayes": sum(naive_bayes(tokens) == label for label, tokens in test) / len(test),
    }


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="check the file on disk instead of writing it")
    parser.add_argument("--baselines", action="store_true", help="print word-count baselines' test accuracy")
    parser.add_argument("--output", type=Path, default=PATH, help="where to write (default: %(default)s)")
    args = parser.parse_args(argv)
    rows = make_rows()
    data = encode(rows)
    if args.baselines:
        for name, accuracy in baselines(rows).items():
            print(f"{name}: test accuracy {accuracy:.2%}")
        return 0
    if args.check:
        if not args.output.exists() or args.output.read_bytes() != data:
            print(f"{args.output} is not what make_topics.py writes; run it again", file=sys.stderr)
            return 1
        print(f"{args.output}: as written by make_topics.py ({len(rows)} rows)")
        return 0
    args.output.write_bytes(data)
    print(f"wrote {args.output}: {len(rows)} rows, {len(data)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
