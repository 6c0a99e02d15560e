"""Exact overlap between the training split and the held-out splits.

A validation or test row whose input (what the model reads before it predicts: the text, the
prompt, the question with its context, the sentence, the image) also appears in training
measures what the model remembers, not how it generalises. Users who bring their own test file
rarely know that it shares rows with their training file, so the data stage counts such rows
for every task and the run reports them (log, data manifest, model card).

Inputs are compared exactly after collapsing whitespace: a case or punctuation difference
changes what the model reads. Near copies are data.clean.drop_leaked's and `tunesmith
inspect`'s business. Written by hand because it is a set lookup: one pass over each split,
milliseconds for tens of thousands of rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

EXAMPLES = 3
"""Held-out rows, with the training row they repeat, kept per split for the manifest."""


def normalise_input(text: str) -> str:
    """``text`` with every run of whitespace collapsed to one space and the ends stripped."""
    return " ".join(str(text).split())


def where_row(frame: pd.DataFrame, position: int, source: str) -> str:
    """Where the row at ``position`` of a split table came from, as messages name rows: the
    table's own ``where`` text, else its 1-based ``record`` or data ``row`` in ``source``."""
    if "where" in frame.columns:
        return str(frame["where"].iat[position])
    for column, noun in (("record", "record"), ("row", "data row")):
        if column in frame.columns:
            number = frame[column].iat[position]
            return f"{source}, {noun} {int(number)}" if pd.notna(number) else f"{source} (a row added to train)"
    return f"{source}, position {position + 1} of the split"


def find_overlap(
    splits: dict[str, pd.DataFrame],
    inputs: Callable[[pd.DataFrame], Sequence[str]],
    *,
    sources: dict[str, str],
    examples: int = EXAMPLES,
) -> dict[str, dict[str, Any]]:
    """Counts the held-out rows whose input is also a training input.

    Args:
        splits: the split tables by name; ``train`` is the reference, every other split is checked.
        inputs: the input side of each row of a table, one string per row (the task's
            ``overlap_inputs``).
        sources: the file each split was read from, to name rows in the examples.
        examples: how many overlapping rows to keep per split.

    Returns:
        Per held-out split: ``rows`` (rows whose input is in train), ``of`` (the split's rows),
        ``distinct_inputs`` (different inputs among those rows) and ``examples``: up to
        ``examples`` of {input (first 120 characters), row, train_row}.
    """
    train = splits["train"]
    first: dict[str, int] = {}  # normalised input -> first training position (a hash lookup)
    for position, text in enumerate(inputs(train)):
        first.setdefault(normalise_input(text), position)
    found = {}
    for name, frame in splits.items():
        if name == "train":
            continue
        hits = [(p, key) for p, key in enumerate(map(normalise_input, inputs(frame))) if key in first]
        source = sources.get(name, sources["train"])  # a carved split comes from the training file
        found[name] = {"rows": len(hits), "of": len(frame), "distinct_inputs": len({key for _, key in hits}),
                       "examples": [{"input": key[:120], "row": where_row(frame, p, source),
                                     "train_row": where_row(train, first[key], sources["train"])}
                                    for p, key in hits[:examples]]}  # fmt: skip
    return found


def describe(name: str, entry: dict[str, Any]) -> str:
    """One held-out split's overlap in words, from a manifest's ``overlap.splits`` entry."""
    share = entry["rows"] / max(entry["of"], 1)
    return (f"{name}: {entry['rows']} of {entry['of']} rows ({share:.0%}) have an input that is also in train "
            f"({entry['distinct_inputs']} distinct inputs)")  # fmt: skip


def overlap_warnings(overlap: dict[str, Any]) -> list[str]:
    """One warning per held-out split that shares inputs with train (and its first example),
    from a manifest's ``overlap`` entry."""
    lines = []
    for name, entry in overlap.get("splits", {}).items():
        if not entry["rows"]:
            continue
        lines.append(f"WARNING: {describe(name, entry)}; scores on them measure memory, not generalisation; "
                     f"{overlap['remedy']}")  # fmt: skip
        example = entry["examples"][0]
        lines.append(f"  e.g. {example['row']} repeats {example['train_row']}: {example['input'][:60]!r}")
    return lines
