"""Plain per-token tags (task.tag_scheme=none): reading any tag set, per-token metrics with
sentence-bootstrap intervals, a run that trains, evaluates and predicts a tag per word, and entity
scores kept for IOB schemes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sklearn.metrics import accuracy_score, f1_score

from tests.conftest import tiny_config
from tunesmith import api
from tunesmith.config import DataConfig, config_from_dict
from tunesmith.errors import TunesmithError
from tunesmith.tasks.tagging import tag_intervals, tag_metrics
from tunesmith.tasks.token_classification import TokenClassificationTask, align, load_sentences

POS_FILE = Path(__file__).parent / "fixtures" / "pos_tagged.conll"
"""Thirty short English sentences tagged by hand with Universal Dependencies part-of-speech tags."""


def test_per_token_scores_count_cut_and_unseen_words_as_wrong():
    gold = [["DET", "NOUN", "VERB"], ["PRON", "VERB", "X"], ["DET", "NOUN"]]
    predicted = [["DET", "NOUN", "NOUN"], ["PRON", "VERB", None], ["DET", "ADJ"]]  # None: cut by truncation
    metrics = tag_metrics(gold, predicted, ["ADJ", "DET", "NOUN", "PRON", "VERB", "PUNCT"])
    assert metrics["count"] == 3 and metrics["words"] == 8
    assert metrics["accuracy"] == pytest.approx(5 / 8)
    # X was never trained and PUNCT is neither gold nor predicted: X counts (recall 0), PUNCT does not.
    assert set(metrics["per_class"]) == {"ADJ", "DET", "NOUN", "PRON", "VERB", "X"}
    assert metrics["per_class"]["X"]["recall"] == 0.0 and metrics["per_class"]["DET"]["f1"] == 1.0
    flat_gold = [t for s in gold for t in s]
    flat_predicted = [t or "(cut)" for s in predicted for t in s]
    labels = ["ADJ", "DET", "NOUN", "PRON", "VERB", "X"]
    assert metrics["macro_f1"] == pytest.approx(f1_score(flat_gold, flat_predicted, labels=labels, average="macro",
                                                         zero_division=0))  # fmt: skip
    assert metrics["accuracy"] == pytest.approx(accuracy_score(flat_gold, flat_predicted))
    intervals = tag_intervals(gold, predicted, ["ADJ", "DET", "NOUN", "PRON", "VERB"], samples=200, level=0.9, seed=0)
    for name in ("accuracy", "macro_f1", "weighted_f1", "macro_precision", "macro_recall"):
        assert intervals[name]["estimate"] == pytest.approx(metrics[name])
        assert 0 <= intervals[name]["low"] <= metrics[name] <= intervals[name]["high"] <= 1
    assert intervals["accuracy"]["low"] < intervals["accuracy"]["high"]  # three different sentences


def test_any_tag_set_is_read_with_tag_scheme_none_and_iob_schemes_point_to_it(tmp_path):
    frame, entry = load_sentences(str(POS_FILE), DataConfig(train=str(POS_FILE)), "none")
    assert entry["format"] == "conll" and entry["cleaning"]["sentences"] == 30
    assert list(frame["tags"][0]) == ["DET", "NOUN", "VERB", "ADP", "DET", "ADJ", "NOUN", "PUNCT"]
    with pytest.raises(TunesmithError, match=r"pos_tagged.conll, line 1: tag 'DET' .* set task.tag_scheme=none"):
        load_sentences(str(POS_FILE), DataConfig(train=str(POS_FILE)), "iob2")
    spans = tmp_path / "spans.jsonl"
    spans.write_text(json.dumps({"text": "Dana flew.", "entities": [{"start": 0, "end": 4, "label": "PER"}]}) + "\n")
    with pytest.raises(
        TunesmithError, match=r"spans.jsonl: a spans file .* task.tag_scheme=none reads conll or tokens"
    ):
        load_sentences(str(spans), DataConfig(train=str(spans)), "none")
    with pytest.raises(TunesmithError, match="data.format=spans gives entity tags"):
        config_from_dict({"data": {"train": str(spans), "format": "spans"},
                          "task": {"type": "token_classification", "tag_scheme": "none"}})  # fmt: skip
    # Every subword of a word carries the word's own tag (no B-/I- rewriting of a chunk tag).
    chunks, word_ids = ["B-NP", "I-NP", "B-VP"], [None, 0, 0, 1, None]
    assert align(word_ids, [0, 2], chunks, all_subwords=True, plain=True) == [-100, 0, 0, 2, -100]
    assert align(word_ids, [0, 2], chunks, all_subwords=True) == [-100, 0, 1, 2, -100]  # iob2: I- inside


def test_a_tiny_pos_tagger_trains_scores_per_token_and_predicts_a_tag_per_word(tmp_path, tiny_model_dir):
    config = tiny_config(tiny_model_dir, POS_FILE, tmp_path / "run",
                         task={"type": "token_classification", "tag_scheme": "none"},
                         train={"num_epochs": 1, "batch_size": 8, "learning_rate": 5e-3},
                         evaluation={"bootstrap_samples": 200})  # fmt: skip
    result = api.train(config)
    test = result.metrics["test"]
    for name in ("accuracy", "macro_f1", "weighted_f1", "macro_precision", "macro_recall"):
        assert 0.0 <= test[name] <= 1.0, (name, test[name])
        interval = test["confidence_intervals"][name]
        assert interval["low"] <= test[name] <= interval["high"] and interval["estimate"] == pytest.approx(test[name])
    assert test["count"] == 6 and test["words"] > 30 and "f1" not in test and "per_type" not in test
    assert set(test["per_class"]) <= {"ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "NOUN", "NUM", "PART", "PRON",
                                      "PROPN", "PUNCT", "VERB"}  # fmt: skip
    assert (result.run_dir / "confusion_matrix_test.png").is_file()
    saved = json.loads((result.run_dir / "task.json").read_text())
    assert saved["tag_scheme"] == "none" and "O" not in saved["label_names"] and "PUNCT" in saved["label_names"]
    card = (result.run_dir / "README.md").read_text()
    assert "Per-token tagger" in card and "one tag per word" in card
    [row] = api.predict(result.run_dir, ["Maria reads a book."])
    assert [t["word"] for t in row["tokens"]] == ["Maria", "reads", "a", "book", "."] and "entities" not in row
    for token in row["tokens"]:
        assert token["tag"] in saved["label_names"] and 0 < token["score"] <= 1
        assert row["text"][token["start"] : token["end"]] == token["word"]


def test_iob_schemes_keep_entity_metrics_and_spans():
    """The same task class, built for iob2, still names entity metrics and predicts spans."""
    import numpy as np

    config = config_from_dict({"task": {"type": "token_classification"}})
    task = TokenClassificationTask.from_config(config)
    assert task.default_metric == ("f1", "max") and task.metric_names[:3] == ["f1", "precision", "recall"]
    task.tag_names = ["O", "B-PER", "I-PER"]
    scored = task._scores([np.eye(3)[[0, 1, 2, 0, 0]]], [{"word_ids": [-1, 0, 1, 2, -1], "words": 3,
                                                          "labels": [-100, 1, 2, 0, -100]}],
                          [["B-PER", "I-PER", "O"]])  # fmt: skip
    assert scored["f1"] == 1.0 and scored["per_type"]["PER"]["support"] == 1
    row = task.text_row("Ada Lovelace wrote", np.eye(3)[[0, 1, 2, 0, 0]], {"word_ids": [-1, 0, 1, 2, -1], "words": 3})
    assert row["entities"] == [{"text": "Ada Lovelace", "label": "PER", "start": 0, "end": 12, "score": 1.0}]
    plain = TokenClassificationTask.from_config(config_from_dict(
        {"task": {"type": "token_classification", "tag_scheme": "none"}}))  # fmt: skip
    assert plain.default_metric == ("accuracy", "max") and "macro_f1" in plain.metric_names
