"""Sentence-pair classification (task.type pair_classification): reading and cleaning pairs,
the pair encoding, prediction inputs, and a run through the CLI. The conformance test
(test_conformance.py) covers training, the round trip and every declared stage."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests.makers import sentence_pairs, tiny_task_config, write_table
from tunesmith import api
from tunesmith.cli import app
from tunesmith.config import config_from_dict
from tunesmith.errors import TunesmithError
from tunesmith.models.load import ResolvedModel
from tunesmith.tasks import build_task

COLUMNS = {"first_column": "premise", "second_column": "hypothesis"}


def _task(saved=None):
    return build_task(config_from_dict({"task": {"type": "pair_classification", **COLUMNS}}), saved)


def test_pair_options_belong_to_the_pair_task():
    config = config_from_dict({"task": {"type": "pair_classification"}})
    assert (config.task.first_column, config.task.second_column) == ("sentence1", "sentence2")
    with pytest.raises(TunesmithError, match="task.first_column does not apply to task.type=single_label"):
        config_from_dict({"task": {"first_column": "premise"}})


def test_read_cleans_pairs_and_names_a_missing_column(tmp_path):
    rows = sentence_pairs(6) + [
        {"premise": "  table   river ", "hypothesis": "", "label": "entailment"},  # empty second text
        {"premise": "stone", "hypothesis": "good", "label": None},  # missing label
    ]
    rows.append(dict(rows[0]))  # an exact duplicate
    path = write_table(tmp_path / "pairs.csv", rows)
    task = _task()
    frame, entry = task.read(str(path), config_from_dict({}).data)
    assert entry["cleaning"] == {"rows_in": 9, "dropped_empty_text": 1, "dropped_missing_label": 1,
                                 "dropped_duplicates": 1, "rows_out": 6}  # fmt: skip
    assert list(frame.columns[:3]) == ["text", "text_pair", "label"]
    assert frame["row"].tolist() == [1, 2, 3, 4, 5, 6]
    write_table(tmp_path / "other.csv", [{"premise": "a", "claim": "b", "label": "x"}])
    with pytest.raises(TunesmithError, match=r"no column 'hypothesis' \(task.second_column\); columns: "):
        task.read(str(tmp_path / "other.csv"), config_from_dict({}).data)


def test_options_that_read_one_text_column_are_refused(tmp_path):
    path = write_table(tmp_path / "pairs.csv", sentence_pairs(8))
    for override in ({"clean": {"label_errors": "drop"}}, {"slice_column": "premise"}):
        config = config_from_dict({"task": {"type": "pair_classification", **COLUMNS},
                                   "data": {"train": str(path), **override}})  # fmt: skip
        with pytest.raises(TunesmithError, match="reads one text column; pair_classification runs do not"):
            build_task(config).prepare(config)


def test_a_trained_label_space_refuses_an_unknown_label_at_evaluate(tmp_path):
    task = _task({"label_names": ["contradiction", "entailment"]})
    path = write_table(tmp_path / "held.csv", [{"premise": "a b", "hypothesis": "c d", "label": "neutral"}])
    with pytest.raises(TunesmithError, match="neutral"):
        task.read(str(path), config_from_dict({}).data)


def test_the_two_texts_are_encoded_as_one_pair(tiny_model_dir):
    task = _task({"label_names": ["contradiction", "entailment"]})
    tokenizer = task.load_processor(ResolvedModel(str(tiny_model_dir), "tiny"), trained=True)
    features, truncated = task.encode_pairs(tokenizer, ["table river"], ["good great"], [1])
    feature = features[0]
    assert feature["input_ids"] == tokenizer("table river", "good great")["input_ids"]
    assert feature["token_type_ids"].count(1) == len(tokenizer("good great", add_special_tokens=False)["input_ids"]) + 1
    assert feature["labels"] == 1 and truncated == 0
    task.max_length = 6
    _, truncated = task.encode_pairs(tokenizer, ["table river paper window"], ["good great lovely"], [1])
    assert truncated == 1


def test_prediction_inputs_are_pairs_and_anything_else_is_named():
    task = _task()
    assert task.pairs_of([["a  b", "c"], {"text": "d", "text_pair": "e"}, {"premise": "f", "hypothesis": "g"}]) == [
        ("a b", "c"), ("d", "e"), ("f", "g")]  # fmt: skip
    with pytest.raises(TunesmithError, match=r"input 2: a pair_classification run takes pairs of texts"):
        task.pairs_of([["a", "b"], "just one text"])


def test_train_and_predict_a_pair_file_from_the_cli(tmp_path, tiny_model_dir):
    train = write_table(tmp_path / "train.csv", sentence_pairs(40))
    config = tiny_task_config("pair_classification", tiny_model_dir, train, tmp_path / "run")
    result = api.train(config)
    assert {"accuracy", "macro_f1", "confidence_intervals"} <= result.metrics["test"].keys()
    assert json.loads((result.run_dir / "task.json").read_text())["type"] == "pair_classification"
    inputs = write_table(tmp_path / "new.csv", sentence_pairs(4, seed=9))
    outcome = CliRunner().invoke(app, ["predict", str(result.run_dir), "--input", str(inputs)])
    assert outcome.exit_code == 0, outcome.output
    rows = [json.loads(line) for line in outcome.stdout.splitlines()]
    assert len(rows) == 4 and {"text", "text_pair", "label", "scores"} <= rows[0].keys()
    assert rows == api.predict(result.run_dir, [[r["text"], r["text_pair"]] for r in rows])
