"""Data checks that need no model: junk text, duplicates, near-duplicates, conflicting labels,
leakage between splits, the class distribution, and completions that look cut off; and what
``tunesmith inspect`` asks of a task that reads its own records (:class:`InspectedTask`).

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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from tunesmith.data.load import CONTROL_CHARACTERS

if TYPE_CHECKING:
    from tunesmith.config import DataConfig

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
    join their text's group. Only groups holding more than one distinct text are returned.

    With a ``group`` column (records on one shared passage: QA questions on one context), texts
    of one group are not near-duplicates of each other: they share most of their words by design."""
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
    grouped = _form_groups(frame, [by_form[f] for f in forms])
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
            leaders = [other for other, _ in matches
                       if other < key and leader_of[other] == other and not grouped[other] & grouped[key]]  # fmt: skip
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


def _form_groups(frame: pd.DataFrame, positions: list[list[int]]) -> list[set]:
    """The ``group`` values of each list of row positions (empty sets without a group column)."""
    if "group" not in frame.columns:
        return [set() for _ in positions]
    groups = frame["group"].tolist()
    return [{groups[p] for p in rows} for rows in positions]


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
        least ``threshold`` similar) among the rest; with ``group`` columns, a near copy is only
        sought in other groups (see :func:`shared_groups` for the same group in both).
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
    forms: dict[str, list[int]] = {}
    for position, text in enumerate(train["text"].tolist()):
        forms.setdefault(normalise(text), []).append(position)
    keys = [rows[0] for rows in forms.values()]
    groups = dict(zip(keys, _form_groups(train, list(forms.values()))))
    index = NearDuplicateIndex(threshold=threshold)
    index.add(keys, list(forms))
    queries = [normalise(held_out["text"].iat[p]) for p in rest]
    own = _form_groups(held_out, [[p] for p in rest])
    near = []
    for p, mine, matches in zip(rest, own, index.query(queries)):
        matches = [(q, s) for q, s in matches if not groups[q] & mine]
        if matches:
            near.append((p, matches[0][0], matches[0][1]))
    return exact, near


def shared_groups(train: pd.DataFrame, held_out: pd.DataFrame) -> list[tuple[int, int]]:
    """(held-out position, first train position) for each held-out row whose ``group`` (a QA
    context, say) is also in train; nothing without ``group`` columns."""
    if "group" not in train.columns or "group" not in held_out.columns:
        return []
    first: dict[Any, int] = {}
    for position, group in enumerate(train["group"].tolist()):
        first.setdefault(group, position)
    return [(p, first[g]) for p, g in enumerate(held_out["group"].tolist()) if g in first]


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


# -- a completion cut off --------------------------------------------------------------------------
SENTENCE_END = frozenset(".!?…。！？;\"'»”’)]}>*`|")
"""Characters a finished text may end with (sentence punctuation, a closing quote or bracket,
Markdown emphasis or code, a table row)."""
MID_CLAUSE = frozenset(",:([{-–—/&+=")
"""Characters a finished text does not end with."""
LIST_NUMBER = re.compile(r"\d+[.)]\s")


def looks_cut(text: str, *, min_words: int = 8) -> bool:
    """Whether a completion seems to stop mid-sentence: it ends in the middle of a clause (a
    comma, colon, opening bracket, dash), or it is prose (a full stop, ? or ! before its end,
    at least ``min_words`` words) whose last sentence has no end. Short answers ("Paris", "42")
    and lists or code without sentence punctuation are not flagged."""
    stripped = text.rstrip()
    if not stripped or stripped[-1] in SENTENCE_END:
        return False
    if stripped[-1] in MID_CLAUSE:
        return True
    last_line = stripped.rsplit("\n", 1)[-1].lstrip()
    if last_line[:1] in ("-", "*", "#", "|") or LIST_NUMBER.match(last_line):
        return False  # a list item, heading or table row: such lines need no full stop
    body = stripped[:-1]
    return len(stripped.split()) >= min_words and any(mark in body for mark in ".!?")


# -- what inspect asks of a task that reads its own records -------------------------------------------
@dataclass
class Finding:
    """One record that training would refuse, drop or change, or that looks wrong."""

    check: str
    """A short name, the same for every finding of its kind ("I- without B-", "answer not in context")."""
    row: int
    """The record's 1-based number in its file (sentence, question, record)."""
    where: str
    """Where the user finds it, as the reader names it ("train.conll, line 12")."""
    detail: str
    """What is wrong with this record."""
    severity: Literal["error", "warning"] = "warning"
    """"error": training refuses the file for it; "warning": training reads it (perhaps changed)."""
    advice: str = ""
    """What training does about it, or what to do (one clause)."""


@dataclass
class TokenLengths:
    """Per-record token counts of one part of the records, in the run's tokenizer, against the
    limit training applies to it."""

    name: str
    """What is measured ("sentence", "question + context", "record", "prompt", "target")."""
    tokens: list[int]
    """One count per record, in the order of :attr:`InspectionRecords.rows`."""
    limit: int
    """The most tokens training keeps (model.max_length, model.max_target_length, ...)."""
    beyond: str
    """What training does with a record over the limit ("cut: ...", "read in windows")."""
    severity: Literal["error", "warning"] = "warning"


@dataclass
class InspectionRecords:
    """One data file as ``tunesmith inspect`` reads it for a task with records of its own, from
    :meth:`InspectedTask.inspection_records`: read as training reads it, except that a record
    training would refuse or drop is a :class:`Finding` instead of an error (a file that cannot
    be read at all is still an error). The lists hold one entry per readable record."""

    source: str
    rows: list[int]
    """Each record's 1-based number in its file."""
    where: list[str]
    """Where each record is, as the reader names it."""
    texts: list[str]
    """What the model reads of each record (the task's ``overlap_inputs``): compared for exact
    and near-duplicates within a file and for leakage between files."""
    targets: list[str]
    """What each record teaches (its tags, answers, completion or label): records with the same
    text and different targets are reported as conflicts."""
    labels: list[list[str]] | None = None
    """The labels each record adds to the distribution (its tags, "answer"/"no answer", its
    class); None where the task has no label space."""
    label_kind: str = "labels"
    """What :attr:`labels` counts ("tags", "answers"), for the report."""
    groups: list[str] | None = None
    """Each record's group (a QA context): records of one group are not near-duplicates of each
    other, and held-out records whose group is in train are reported."""
    group_kind: str = "group"
    """What a group is ("context"), for the report."""
    findings: list[Finding] = field(default_factory=list)
    """Task-specific problems, by record (skipped records included)."""
    frame: Any = None
    """The task's own table of the readable records, for :meth:`InspectedTask.inspection_lengths`."""


@runtime_checkable
class InspectedTask(Protocol):
    """What ``tunesmith inspect`` (data/inspection.py) asks of a task that reads its own records
    (token classification, QA, causal LM, seq2seq, pair classification): every kind with
    "inspect" in ``stages`` implements this or ``data.prepare.LabelledTask`` (one text column
    and a label: tests/test_stages.py). inspect runs the generic checks (duplicates,
    near-duplicates, leakage, lengths, the label distribution) on what these methods return and
    reports the task's findings beside them. The task is passed in: data/ does not import tasks/."""

    def inspection_records(self, spec: str, data: DataConfig) -> InspectionRecords:
        """One data file's records, with the findings training would refuse, drop or change.

        Raises:
            TunesmithError: a file that cannot be read at all (missing, not UTF-8, an unknown
                format), naming it.
        """
        ...

    def inspection_lengths(self, processor: Any, records: InspectionRecords) -> list[TokenLengths]:
        """Token counts of the records (those of :meth:`inspection_records`) in ``processor``
        (the run's tokenizer, from ``load_processor``), one entry per limit training applies."""
        ...

    def load_processor(self, resolved: Any, *, trained: bool = False) -> Any:
        """The run's tokenizer (tasks.contract.Task.load_processor)."""
        ...
