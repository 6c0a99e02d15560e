"""Small learnable datasets for every task kind, written in the format a user would bring.

Shared by the task tests and the bad-input corpus, so each generator lives in one place.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from tests.conftest import sentiment_rows, tiny_config

COLOURS = ["red", "green", "blue", "amber", "violet"]
QA_FIELDS = {"colour": ["red", "blue", "green", "pink"], "animal": ["cat", "dog", "owl", "fox"],
             "city": ["paris", "rome", "oslo", "lima"]}  # fmt: skip
NER_NAMES = ["Alice", "Bruno", "Chen", "Dana"]
NER_PLACES = ["Paris", "Lima", "Oslo", "Kyoto"]
NER_FILLER = ["went", "to", "see", "the", "river", "today", "and", "then"]


def write_table(path: Path, rows: list[dict]) -> Path:
    """Writes records as CSV, JSONL or Parquet, by the path's suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif path.suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path, index=False)
    else:
        pd.DataFrame(rows).to_csv(path, index=False)
    return path


def multi_label_rows(count: int, seed: int = 0) -> list[dict]:
    """Texts whose label set ("positive|neutral", ...) is given away by their words."""
    rows = []
    for row in sentiment_rows(count, seed=seed, classes=3):
        extra = "neutral" if row["label"] != "neutral" and len(row["text"]) % 2 else None
        rows.append({"text": row["text"], "label": "|".join(filter(None, [row["label"], extra]))})
    return rows


def regression_rows(count: int, seed: int = 0) -> list[dict]:
    """Texts whose target is the share of positive words in them."""
    return [{"text": r["text"], "label": 1.0 if r["label"] == "positive" else 0.0} for r in sentiment_rows(count, seed)]


def table_rows(count: int, seed: int = 0) -> list[dict]:
    """Table rows mixing a text, a number and a category, each of which gives the label away
    (learnable in a few steps); every seventh row lacks its number, every ninth its category."""
    rng = random.Random(seed + 11)
    rows = []
    for i, row in enumerate(sentiment_rows(count, seed)):
        positive = row["label"] == "positive"
        stars = rng.choice([4, 5]) if positive else rng.choice([1, 2])
        rows.append({"review": row["text"], "stars": None if i % 7 == 3 else stars,
                     "channel": None if i % 9 == 4 else ("web" if positive else "store"), "label": row["label"]})  # fmt: skip
    return rows


def ner_lines(count: int, seed: int = 0) -> str:
    """CoNLL text: five words a sentence, one person and one place (IOB2)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        words = [(rng.choice(NER_NAMES), "B-PER"), (rng.choice(NER_FILLER), "O"), (rng.choice(NER_FILLER), "O"),
                 (rng.choice(NER_PLACES), "B-LOC"), (rng.choice(NER_FILLER), "O")]  # fmt: skip
        rng.shuffle(words)
        lines += [f"{w} {t}" for w, t in words] + [""]
    return "\n".join(lines)


def qa_records(count: int, seed: int = 0) -> list[dict]:
    """Paragraphs "colour : red . animal : cat . city : oslo ." in a shuffled field order, three
    questions each (one per field)."""
    rng = random.Random(seed)
    records = []
    for i in range(count):
        order = rng.sample(list(QA_FIELDS), 3)
        values = {k: rng.choice(v) for k, v in QA_FIELDS.items()}
        context = " ".join(f"{k} : {values[k]} ." for k in order) + f" item {i} ."
        for field in QA_FIELDS:
            start = context.index(f"{field} : ") + len(field) + 3
            records.append({"id": f"{i}-{field}", "question": f"what {field} ?", "context": context,
                            "answers": {"text": [values[field]], "answer_start": [start]}})  # fmt: skip
    return records


def pair_rows(count: int) -> list[dict]:
    return [{"document": f"Note {i}: the colour of the day is {COLOURS[i % 5]}, as agreed.", "summary": COLOURS[i % 5]}
            for i in range(count)]  # fmt: skip


def sentence_pairs(count: int, seed: int = 0) -> list[dict]:
    """Premise/hypothesis pairs whose label the hypothesis's words give away (learnable in a few
    steps); the premise is the same kind of sentence for both labels."""
    from tests.conftest import NEGATIVE, NEUTRAL, POSITIVE

    rng = random.Random(seed)
    rows = []
    for i in range(count):
        agree = i % 2 == 0
        premise = " ".join(rng.sample(NEUTRAL, 3)) + f" {i}"
        hypothesis = " ".join(rng.sample(POSITIVE if agree else NEGATIVE, 3) + rng.sample(NEUTRAL, 1))
        rows.append({"premise": premise, "hypothesis": hypothesis, "label": "entailment" if agree else "contradiction"})
    return rows


def alpaca_rows(count: int) -> list[dict]:
    return [{"instruction": f"Item {i}: repeat the word {COLOURS[i % 5]}.", "input": "",
             "output": f"{COLOURS[i % 5]} {COLOURS[i % 5]}"} for i in range(count)]  # fmt: skip


def stripes(horizontal: bool, seed: int, size: int = 24, grey: bool = False) -> Image.Image:
    """A noisy image of horizontal or vertical stripes."""
    rng = np.random.default_rng(seed)
    period = int(rng.integers(3, 6))
    line = (np.arange(size) // period % 2 * 200 + 20).astype(np.uint8)
    array = np.tile(line[:, None] if horizontal else line[None, :], (1, size) if horizontal else (size, 1))
    array = np.clip(array + rng.integers(-20, 20, array.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(array, "L")
    return image if grey else image.convert("RGB")


def image_folder(root: Path, per_class: int, *, corrupt: int = 0) -> Path:
    """root/horizontal and root/vertical stripes; every third image grayscale; ``corrupt``
    files that are not images at all."""
    for label in ("horizontal", "vertical"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            image = stripes(label == "horizontal", seed=i + (1000 if label == "vertical" else 0), grey=i % 3 == 0)
            image.save(root / label / f"{i}.png")
    for i in range(corrupt):
        (root / "vertical" / f"broken{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return root


def write_examples(task: str, path: Path, count: int, seed: int = 0) -> Path:
    """``count`` learnable examples of a task kind at ``path`` (its suffix picks the format; an
    image task writes a folder of class folders)."""
    if task == "image_classification":
        return image_folder(path, count // 2 or 1)
    if task == "token_classification":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(ner_lines(count, seed), encoding="utf-8")
        return path
    rows = {
        "single_label": lambda: sentiment_rows(count, seed),
        "multi_label": lambda: multi_label_rows(count, seed),
        "regression": lambda: regression_rows(count, seed),
        "question_answering": lambda: qa_records(max(count // 3, 1), seed),
        "seq2seq": lambda: pair_rows(count),
        "causal_lm": lambda: alpaca_rows(count),
        "pair_classification": lambda: sentence_pairs(count, seed),
        "tabular": lambda: table_rows(count, seed),
    }[task]()
    return write_table(path, rows)


DATA_FILE = {"token_classification": "train.txt", "question_answering": "train.jsonl", "causal_lm": "train.jsonl",
             "image_classification": "images"}  # fmt: skip
"""The training file's name per task kind (its suffix picks the format ``write_examples`` writes)."""
TASK_SECTIONS = {
    "question_answering": {"task": {"doc_stride": 16}, "model": {"max_length": 64}},
    "seq2seq": {"model": {"max_length": 48, "max_target_length": 8}, "generation": {"max_new_tokens": 4}},
    "causal_lm": {"model": {"max_length": 96, "strategy": "full"},
                  "generation": {"max_new_tokens": 4, "max_examples": 4}},
    "pair_classification": {"task": {"first_column": "premise", "second_column": "hypothesis"}},
}  # fmt: skip


def tiny_task_config(task: str, model_dir: Path, train_file: Path, output_dir: Path) -> dict:
    """A nested config dict for a fast run of ``task`` on its tiny model (tests/conftest.py)."""
    config = tiny_config(model_dir, train_file, output_dir, task={"type": task})
    for section, values in TASK_SECTIONS.get(task, {}).items():
        config.setdefault(section, {}).update(values)
    if task == "image_classification":  # a CNN has no token length or dropout setting
        config["model"] = {"name": str(model_dir)}
    return config
