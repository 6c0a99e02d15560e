"""Cross-validation: disjoint, stratified (or grouped) folds, each a full run, summarised."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import sentiment_rows, tiny_config
from tunesmith import api
from tunesmith.cli import app
from tunesmith.config import config_from_dict
from tunesmith.errors import TunesmithError
from tunesmith.study.cv import assign_folds, run_cv, summarize


def test_folds_are_disjoint_cover_every_row_and_keep_label_proportions():
    labels = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(100)], "label": labels})
    fold = assign_folds(frame, 5, seed=0, stratify=True)
    assert sorted(set(fold.tolist())) == [0, 1, 2, 3, 4]  # every row has exactly one fold
    for k in range(5):
        held = frame[fold == k]
        assert len(held) == 20
        assert held["label"].value_counts().to_dict() == {"a": 12, "b": 6, "c": 2}
    assert assign_folds(frame, 5, seed=0, stratify=True).tolist() == fold.tolist()  # seeded
    assert assign_folds(frame, 5, seed=1, stratify=True).tolist() != fold.tolist()


def test_grouped_folds_never_split_a_group():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 12, size=90)
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(90)], "label": ["x", "y", "z"] * 30, "group": groups})
    fold = assign_folds(frame, 4, seed=0, stratify=True)
    for g in set(groups.tolist()):
        assert len(set(fold[groups == g].tolist())) == 1
    assert len(set(fold.tolist())) == 4


def test_too_few_rows_of_a_label_is_a_clear_error():
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(12)], "label": ["a"] * 9 + ["b"] * 3})
    with pytest.raises(TunesmithError, match=r"at least 5 rows of every label; too few: 'b' \(3\)"):
        assign_folds(frame, 5, seed=0, stratify=True)


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


def test_cv_refuses_tasks_it_does_not_cover(tmp_path, tiny_model_dir):
    tree = tiny_config(tiny_model_dir, tmp_path / "train.txt", tmp_path / "r", task={"type": "token_classification"})
    with pytest.raises(TunesmithError, match="cv does not cover token_classification runs yet"):
        run_cv(config_from_dict(tree), tmp_path / "cv", train=api.train, folds=2)


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
