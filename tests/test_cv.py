"""Cross-validation: disjoint, stratified (or grouped) folds, each a full run, summarised."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import sentiment_rows, tiny_config
from tests.makers import alpaca_rows, ner_lines, qa_records, tiny_task_config, write_table
from tunesmith import api
from tunesmith.cli import app
from tunesmith.config import config_from_dict
from tunesmith.errors import TunesmithError
from tunesmith.study.cv import assign_folds, run_cv, summarize
from tunesmith.study.tune import run_tune


def test_folds_are_disjoint_cover_every_row_and_keep_label_proportions():
    labels = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(100)], "label": labels})
    labels = frame["label"].to_numpy()
    fold = assign_folds(100, 5, seed=0, labels=labels)
    assert sorted(set(fold.tolist())) == [0, 1, 2, 3, 4]  # every row has exactly one fold
    for k in range(5):
        held = frame[fold == k]
        assert len(held) == 20
        assert held["label"].value_counts().to_dict() == {"a": 12, "b": 6, "c": 2}
    assert assign_folds(100, 5, seed=0, labels=labels).tolist() == fold.tolist()  # seeded
    assert assign_folds(100, 5, seed=1, labels=labels).tolist() != fold.tolist()


def test_grouped_folds_never_split_a_group():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 12, size=90)
    fold = assign_folds(90, 4, seed=0, labels=np.array(["x", "y", "z"] * 30), groups=groups)
    for g in set(groups.tolist()):
        assert len(set(fold[groups == g].tolist())) == 1
    assert len(set(fold.tolist())) == 4


def test_too_few_rows_of_a_label_is_a_clear_error():
    with pytest.raises(TunesmithError, match=r"at least 5 rows of every label; too few: 'b' \(3\)"):
        assign_folds(12, 5, seed=0, labels=np.array(["a"] * 9 + ["b"] * 3))


def test_summary_gives_mean_and_sample_std_per_metric_and_class():
    folds = [{"accuracy": 0.8, "count": 10, "per_class": {"spam": {"f1": 0.5}}},
             {"accuracy": 0.9, "count": 10, "per_class": {"spam": {"f1": 0.7}}}]  # fmt: skip
    summary = summarize(folds)
    assert summary["accuracy"]["mean"] == pytest.approx(0.85)
    assert summary["accuracy"]["std"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert summary["spam/f1"]["folds"] == [0.5, 0.7]
    assert "count" not in summary


def test_cv_runs_every_fold_and_summarises_their_test_metrics(tmp_path, tiny_model_dir):
    data = tmp_path / "data.csv"
    rows = sentiment_rows(90, seed=2, classes=3)
    pd.DataFrame(rows).assign(group=[i // 3 for i in range(90)]).to_csv(data, index=False)
    tree = tiny_config(tiny_model_dir, data, tmp_path / "unused", cv={"group_column": "group"},
                       data={"train": str(data), "val_fraction": 0.2, "test_fraction": 0.1})  # fmt: skip
    report = run_cv(config_from_dict(tree), tmp_path / "cv", train=api.train, folds=3)
    assert report["folds"] == 3 and report["grouped_by"] == "group"
    folds = pd.read_parquet(tmp_path / "cv" / "folds.parquet")
    tested = []
    for k in range(3):
        run = tmp_path / "cv" / f"fold-{k}"
        metrics = json.loads((run / "metrics.json").read_text())
        assert (run / "model" / "config.json").exists() and (run / "README.md").exists()
        test = pd.read_parquet(run / "data" / "test.parquet")
        assert set(test["text"]) == set(folds.loc[folds.fold == k, "text"])  # the fold's own rows
        train = set(pd.read_parquet(run / "data" / "train.parquet")["text"])
        assert not train & set(test["text"])
        assert not set(folds.loc[folds.fold == k, "group"]) & set(folds.loc[folds.fold != k, "group"])
        tested += list(test["text"])
        assert report["summary"]["accuracy"]["folds"][k] == metrics["test"]["accuracy"]
    assert sorted(tested) == sorted(r["text"] for r in rows)  # every row tested exactly once
    values = report["summary"]["accuracy"]["folds"]
    assert report["summary"]["accuracy"]["mean"] == pytest.approx(np.mean(values))
    assert json.loads((tmp_path / "cv" / "cv.json").read_text())["summary"] == report["summary"]
    assert "| accuracy |" in (tmp_path / "cv" / "cv.md").read_text()


def _fold_tests(cv_dir, k: int, read) -> list:
    """What ``read`` finds in each fold's test file (as cv wrote it for the fold run)."""
    return [read(cv_dir / "data" / f"fold-{i}" / "test.jsonl") for i in range(k)]


def _jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _assert_summary(report: dict, cv_dir, metric: str) -> None:
    """The task's metric comes first, with the mean and sample std of the folds' test values."""
    assert report["metric"] == metric and next(iter(report["summary"])) == metric
    per_fold = [json.loads((cv_dir / f"fold-{i}" / "metrics.json").read_text())["test"][metric]
                for i in range(report["folds"])]  # fmt: skip
    found = report["summary"][metric]
    assert found["folds"] == per_fold
    assert found["mean"] == pytest.approx(np.mean(per_fold)) and found["std"] == pytest.approx(np.std(per_fold, ddof=1))
    assert f"| {metric} |" in (cv_dir / "cv.md").read_text()


def test_ner_folds_keep_the_sentences_of_a_document_together(tmp_path, tiny_model_dir):
    documents = [f"-DOCSTART- -X- O O\n\n{ner_lines(3, seed=d)}" for d in range(6)]
    data = tmp_path / "train.txt"
    data.write_text("\n\n".join(documents) + "\n", encoding="utf-8")
    tree = tiny_task_config("token_classification", tiny_model_dir, data, tmp_path / "unused")
    tree["train"].update(num_epochs=1)
    report = run_cv(config_from_dict(tree), tmp_path / "cv", train=api.train, folds=2)
    assert report["rows"] == 18 and report["groups"] == 6
    tested = _fold_tests(tmp_path / "cv", 2, _jsonl)
    documents_tested = [{r["document"] for r in records} for records in tested]
    assert not documents_tested[0] & documents_tested[1]  # no document in both folds' test sets
    assert documents_tested[0] | documents_tested[1] == set(range(1, 7))
    assert sum(len(records) for records in tested) == 18  # every sentence tested once
    _assert_summary(report, tmp_path / "cv", "f1")
    assert {"precision", "recall", "PER/f1"} <= set(report["summary"])


def test_tune_cv_objective_keeps_the_questions_on_one_qa_context_together(tmp_path, tiny_model_dir):
    data = write_table(tmp_path / "train.jsonl", qa_records(8))  # 8 contexts, 3 questions each
    tree = tiny_task_config("question_answering", tiny_model_dir, data, tmp_path / "unused")
    tree["train"].update(num_epochs=1)
    tree["cv"] = {"folds": 2}
    tree["tune"] = {"objective": "cv", "n_trials": 1, "sampler": "random", "pruner": "none",
                    "space": {"train.learning_rate": {"type": "float", "low": 1e-3, "high": 3e-3}}}  # fmt: skip
    study = run_tune(config_from_dict(tree), tmp_path / "study", train=api.train)
    assert study["metric"] == "f1" and study["complete"] == 1, study
    cv_dir = tmp_path / "study" / "trials" / "trial-000"
    report = json.loads((cv_dir / "cv.json").read_text())
    assert report["rows"] == 24 and report["groups"] == 8
    tested = _fold_tests(cv_dir, 2, _jsonl)
    contexts = [{r["context"] for r in records} for records in tested]
    assert not contexts[0] & contexts[1] and len(contexts[0] | contexts[1]) == 8  # no context in both test folds
    assert sorted(r["id"] for records in tested for r in records) == sorted(r["id"] for r in qa_records(8))
    _assert_summary(report, cv_dir, "f1")
    assert "exact_match" in report["summary"]
    assert study["trials"][0]["value"] == pytest.approx(report["summary"]["f1"]["mean"])  # the trial's score


def test_causal_lm_folds_follow_the_group_column(tmp_path, tiny_llama_dir):
    rows = [{**row, "topic": i % 4} for i, row in enumerate(alpaca_rows(16))]
    data = write_table(tmp_path / "train.jsonl", rows)
    tree = tiny_task_config("causal_lm", tiny_llama_dir, data, tmp_path / "unused")
    tree["train"].update(num_epochs=1)
    tree["generation"].update(max_examples=1)
    tree["cv"] = {"group_column": "topic"}
    report = run_cv(config_from_dict(tree), tmp_path / "cv", train=api.train, folds=2)
    assert report["grouped_by"] == "topic" and report["groups"] == 4
    tested = _fold_tests(tmp_path / "cv", 2, _jsonl)
    topics = [{rows[int(r["messages"][0]["content"].split(":")[0].split()[1])]["topic"] for r in records}
              for records in tested]  # fmt: skip
    assert not topics[0] & topics[1] and topics[0] | topics[1] == {0, 1, 2, 3}
    _assert_summary(report, tmp_path / "cv", "loss")


def test_group_column_is_refused_where_the_task_reads_records(tmp_path, tiny_model_dir):
    data = write_table(tmp_path / "train.jsonl", qa_records(4))
    tree = tiny_task_config("question_answering", tiny_model_dir, data, tmp_path / "unused")
    tree["cv"] = {"group_column": "context"}
    with pytest.raises(TunesmithError, match=r"cv.group_column='context': .* is read as question_answering records"):
        run_cv(config_from_dict(tree), tmp_path / "cv", train=api.train, folds=2)
    assert not (tmp_path / "cv").exists()


def test_cv_command_reports_errors_clearly(tmp_path, tiny_model_dir):
    data = tmp_path / "data.csv"
    pd.DataFrame(sentiment_rows(30)).to_csv(data, index=False)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tiny_model_dir, data, tmp_path / "r", cv={"group_column": "nope"})))
    result = CliRunner().invoke(app, ["cv", str(config), "--out", str(tmp_path / "cv"), "--folds", "3"])
    assert result.exit_code == 2
    assert "cv.group_column='nope' is not a column of" in result.output
    assert not (tmp_path / "cv").exists()


def test_seeds_repeat_training_and_report_the_spread(tmp_path, tiny_model_dir):
    data = tmp_path / "data.csv"
    pd.DataFrame(sentiment_rows(60, seed=8)).to_csv(data, index=False)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tiny_model_dir, data, tmp_path / "seeds", train={"num_epochs": 1})))
    result = CliRunner().invoke(app, ["train", str(config), "--seeds", "2"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "seeds" / "seeds.json").read_text())
    assert report["seeds"] == [42, 43] and report["split"] == "test"
    per_seed = [json.loads((tmp_path / "seeds" / f"seed-{s}" / "metrics.json").read_text())["test"]["accuracy"]
                for s in (42, 43)]  # fmt: skip
    assert report["summary"]["accuracy"]["folds"] == per_seed
    assert report["summary"]["accuracy"]["std"] == pytest.approx(np.std(per_seed, ddof=1))
    assert "accuracy:" in result.output
