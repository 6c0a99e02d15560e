"""Data checks that need no model: junk text, duplicates, near-duplicates, conflicting labels,
leakage between splits, and the class distribution.

Near-duplicates are found with MinHash/LSH (datasketch) over the word sets of normalised text
(NFKC, case-folded, punctuation removed), then confirmed with a word-level similarity:
``difflib``'s ratio over the two word sequences, 2 * matching words / total words. One changed
word in a ten-word sentence scores 0.9; in a five-word sentence 0.8.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tunesmith.data.load import CONTROL_CHARACTERS

C1 = re.compile(r"[\x80-\x9f]")  # Windows-1252 punctuation decoded as Latin-1 lands here
URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
NOT_WORD = re.compile(r"[^\w\s]|_")


def junk_reason(text: str) -> str | None:
    """Why a text carries nothing to learn from, or None when it looks like real text."""
    if not text.strip():
        return "empty"
    if CONTROL_CHARACTERS.search(text):
        return "control characters"
    if C1.search(text):
        return "mojibake (C1 control characters: Windows-1252 text read as Latin-1?)"
    import ftfy.badness

    if ftfy.badness.is_bad(text):
        return "mojibake"
    if not any(ch.isalnum() for ch in text):
        return "only punctuation or symbols"
    without_urls = URL.sub(" ", text)
    if not any(ch.isalnum() for ch in without_urls):
        return "only URLs"
    if not any(ch.isalpha() for ch in without_urls):
        return "only digits"
    return None


def normalise(text: str) -> str:
    """NFKC, case-folded, punctuation dropped, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(NOT_WORD.sub(" ", text).split())


def similarity(a: str, b: str) -> float:
    """Word-level similarity of two normalised texts in [0, 1]."""
    if a == b:
        return 1.0
    x, y = a.split(), b.split()
    if not x or not y:
        return 0.0
    return difflib.SequenceMatcher(None, x, y, autojunk=False).ratio()


@dataclass
class NearDuplicateIndex:
    """MinHash/LSH over the word sets of normalised texts; candidates are confirmed by
    :func:`similarity` >= threshold."""

    threshold: float = 0.8
    num_perm: int = 128

    def __post_init__(self) -> None:
        from datasketch import MinHashLSH

        # The LSH threshold is on the Jaccard of word sets, looser than the confirming similarity:
        # one word changed among five is a Jaccard of 4/6.
        self._lsh = MinHashLSH(threshold=max(0.3, self.threshold - 0.3), num_perm=self.num_perm)
        self._texts: dict[int, str] = {}

    def signatures(self, texts: list[str]):
        from datasketch import MinHash

        return MinHash.bulk(
            [[w.encode("utf-8") for w in set(t.split())] or [b""] for t in texts], num_perm=self.num_perm
        )

    def add(self, keys: Iterable[int], texts: list[str]) -> None:
        with self._lsh.insertion_session() as session:
            for key, text, signature in zip(keys, texts, self.signatures(texts)):
                self._texts[key] = text
                session.insert(key, signature, check_duplication=False)

    def query(self, texts: list[str]) -> list[list[tuple[int, float]]]:
        """For each text, the indexed keys similar enough, with their similarity (best first)."""
        found = []
        for text, signature in zip(texts, self.signatures(texts)):
            scored = [(key, similarity(text, self._texts[key])) for key in self._lsh.query(signature)]
            found.append(sorted(((k, s) for k, s in scored if s >= self.threshold), key=lambda p: -p[1]))
        return found


def duplicate_groups(
    frame: pd.DataFrame, *, threshold: float, progress: Callable[[int], None] | None = None
) -> tuple[list[list[int]], list[list[int]]]:
    """Groups of row positions: exact duplicates (identical text) and near-duplicate groups.

    A near-duplicate group is a leader (the first row of its normalised text) with every later
    text at least ``threshold`` similar to it, so every member is a near copy of the group's first
    row (groups do not chain through intermediate texts); identical and case/punctuation variants
    join their text's group. Only groups holding more than one distinct text are returned."""
    texts = frame["text"].tolist()
    exact = defaultdict(list)
    for position, text in enumerate(texts):
        exact[text].append(position)
    exact_groups = [g for g in exact.values() if len(g) > 1]

    normalised = [normalise(t) for t in texts]
    by_form = defaultdict(list)
    for position, form in enumerate(normalised):
        by_form[form].append(position)
    forms = list(by_form)
    index = NearDuplicateIndex(threshold=threshold)
    leader_of = list(range(len(forms)))  # each text's group: the earliest similar leader, else itself
    step = 2000
    for start in range(0, len(forms), step):  # index everything, then look every text up
        chunk = forms[start : start + step]
        index.add(range(start, start + len(chunk)), chunk)
        if progress is not None:
            progress(len(chunk))
    for start in range(0, len(forms), step):
        chunk = forms[start : start + step]
        for key, matches in zip(range(start, start + len(chunk)), index.query(chunk)):
            # keys are in row order, and earlier keys already know whether they lead a group
            leaders = [other for other, _ in matches if other < key and leader_of[other] == other]
            if leaders:
                leader_of[key] = min(leaders)
        if progress is not None:
            progress(len(chunk))
    members = defaultdict(list)
    for key, form in enumerate(forms):
        members[leader_of[key]].extend(by_form[form])
    # A cluster is a near-duplicate group when its rows are not all the same text.
    near_groups = [sorted(rows) for rows in members.values() if len({texts[p] for p in rows}) > 1]
    return exact_groups, near_groups


def conflicting_labels(frame: pd.DataFrame, groups: list[list[int]]) -> list[list[int]]:
    """The groups whose rows carry more than one label."""
    labels = frame["label"].map(str).tolist()
    return [g for g in groups if len({labels[p] for p in g}) > 1]


def leakage(
    train: pd.DataFrame, held_out: pd.DataFrame, *, threshold: float
) -> tuple[list[tuple[int, int]], list[tuple[int, int, float]]]:
    """Rows of ``held_out`` that also appear in ``train``.

    Returns:
        (held-out position, train position) pairs for exact copies (identical text), and
        (held-out position, train position, similarity) for near copies (normalised texts at
        least ``threshold`` similar) among the rest.
    """
    first_train = {}
    for position, text in enumerate(train["text"].tolist()):
        first_train.setdefault(text, position)
    exact, rest = [], []
    for position, text in enumerate(held_out["text"].tolist()):
        if text in first_train:
            exact.append((position, first_train[text]))
        else:
            rest.append(position)
    forms = {}
    for position, text in enumerate(train["text"].tolist()):
        forms.setdefault(normalise(text), position)
    keys = list(forms.values())
    index = NearDuplicateIndex(threshold=threshold)
    index.add(keys, list(forms))
    queries = [normalise(held_out["text"].iat[p]) for p in rest]
    near = [(p, m[0][0], m[0][1]) for p, m in zip(rest, index.query(queries)) if m]
    return exact, near


def class_distribution(labels: pd.Series, *, min_rows: int) -> dict:
    """Counts per class, the imbalance ratio (largest / smallest) and classes under ``min_rows``."""
    counts = labels.map(str).value_counts()
    return {
        "counts": {k: int(v) for k, v in counts.sort_index().items()},
        "imbalance_ratio": float(counts.max() / counts.min()) if len(counts) else float("nan"),
        "rare_classes": sorted(k for k, v in counts.items() if v < min_rows),
    }


def length_summary(lengths: np.ndarray, max_length: int) -> dict:
    """Token-length percentiles and how many rows the configured max length cuts."""
    if len(lengths) == 0:
        return {"rows": 0}
    return {
        "rows": int(len(lengths)),
        "mean": float(lengths.mean()),
        "p50": float(np.percentile(lengths, 50)),
        "p95": float(np.percentile(lengths, 95)),
        "max": int(lengths.max()),
        "max_length": max_length,
        "truncated": int((lengths > max_length).sum()),
    }
