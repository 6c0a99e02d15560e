"""The catastrophic-forgetting check: base against tuned model on a retain set."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.conftest import NEUTRAL, sentiment_rows, tiny_config
from tunesmith import api
from tunesmith.errors import TunesmithError
from tunesmith.evaluate.forgetting import probe_accuracy, verdict


def test_verdict_allows_drops_up_to_the_threshold():
    assert verdict(-0.04, 0.05, "warn", "accuracy")["passed"]
    assert verdict(0.10, 0.05, "warn", "accuracy")["passed"]
    failed = verdict(-0.06, 0.05, "fail", "accuracy")
    assert not failed["passed"] and "forgot more than allowed" in failed["message"]


def test_probe_scores_separable_features_and_refuses_single_class_sets():
    rng = np.random.default_rng(0)
    labels = ["a", "b"] * 50
    features = np.array([[0.0] if label == "a" else [3.0] for label in labels]) + rng.normal(0, 0.3, (100, 1))
    assert probe_accuracy(features, labels, seed=0) == 1.0
    with pytest.raises(TunesmithError, match="two or more labels"):
        probe_accuracy(features, ["a"] * 100, seed=0)


def topic_rows(count: int) -> list[dict]:
    """A second task on other words: is the text about a neutral object or not."""
    rows = sentiment_rows(count, seed=11, classes=3)
    return [{"text": r["text"], "label": "object" if r["label"] == "neutral" else "feeling"} for r in rows]


def test_previous_head_and_probe_measure_the_base_and_the_tuned_model(tmp_path, tiny_model_dir):
    first = tmp_path / "first.csv"
    pd.DataFrame(sentiment_rows(120, seed=1)).to_csv(first, index=False)
    api.train(tiny_config(tiny_model_dir, first, tmp_path / "first", train={"num_epochs": 3}))
    retain = tmp_path / "retain.csv"
    pd.DataFrame(sentiment_rows(60, seed=2)).to_csv(retain, index=False)
    second = tmp_path / "second.csv"
    pd.DataFrame(topic_rows(120)).to_csv(second, index=False)
    model = str(tmp_path / "first" / "model")  # the first task's classifier is the base
    head = api.train(tiny_config(tiny_model_dir, second, tmp_path / "head", model={"name": model},
                                 forgetting={"retain": str(retain), "method": "head", "threshold": 0.0}))  # fmt: skip
    found = head.metrics["forgetting"]
    # The base measure is the first run's own accuracy on the retain file.
    assert found["base"] == pytest.approx(api.evaluate(tmp_path / "first", retain)["accuracy"])
    assert found["rows"] == 60 and found["change"] == pytest.approx(found["tuned"] - found["base"])
    assert found["passed"] == (found["change"] >= 0)
    assert "Forgetting check" in (tmp_path / "head" / "README.md").read_text()
    probe = api.train(tiny_config(tiny_model_dir, second, tmp_path / "probe", model={"name": model},
                                  forgetting={"retain": str(retain), "method": "probe"}))  # fmt: skip
    assert 0 <= probe.metrics["forgetting"]["tuned"] <= 1 and probe.metrics["forgetting"]["method"] == "probe"


def test_a_head_that_does_not_know_the_retain_labels_is_a_clear_error(tmp_path, tiny_model_dir):
    second = tmp_path / "second.csv"
    pd.DataFrame(topic_rows(60)).to_csv(second, index=False)
    retain = tmp_path / "retain.csv"
    pd.DataFrame({"text": NEUTRAL * 2, "label": ["x", "y"] * 8}).to_csv(retain, index=False)
    config = tiny_config(tiny_model_dir, second, tmp_path / "run", forgetting={"retain": str(retain), "method": "head"})
    with pytest.raises(TunesmithError, match="are not labels of the base model's head"):
        api.train(config)


def test_rehearsal_mixes_earlier_rows_into_training_only(tmp_path, tiny_model_dir):
    second = tmp_path / "second.csv"
    pd.DataFrame(topic_rows(100)).to_csv(second, index=False)
    earlier = tmp_path / "earlier.csv"
    pd.DataFrame(sentiment_rows(50, seed=3)).to_csv(earlier, index=False)
    config = tiny_config(tiny_model_dir, second, tmp_path / "run", train={"num_epochs": 1},
                         forgetting={"rehearsal": str(earlier), "rehearsal_ratio": 0.25})  # fmt: skip
    api.train(config)
    manifest = json.loads((tmp_path / "run" / "data_manifest.json").read_text())
    train = pd.read_parquet(tmp_path / "run" / "data" / "train.parquet")
    test = pd.read_parquet(tmp_path / "run" / "data" / "test.parquet")
    assert manifest["rehearsal"]["rows"] == 15  # a quarter of the 60 training rows
    assert train["label"].isin(["positive", "negative"]).sum() == 15
    assert not test["label"].isin(["positive", "negative"]).any()  # held-out splits are the new task's
    labels = json.loads((tmp_path / "run" / "task.json").read_text())["label_names"]
    assert set(labels) == {"feeling", "object", "positive", "negative"}


def test_a_classifier_of_another_task_starts_with_a_new_head(tmp_path, tiny_model_dir):
    first = tmp_path / "first.csv"
    pd.DataFrame(sentiment_rows(40, seed=1)).to_csv(first, index=False)
    api.train(tiny_config(tiny_model_dir, first, tmp_path / "first", train={"num_epochs": 1}))
    three = tmp_path / "three.csv"
    pd.DataFrame(sentiment_rows(60, seed=2, classes=3)).to_csv(three, index=False)
    result = api.train(tiny_config(tiny_model_dir, three, tmp_path / "second", train={"num_epochs": 1},
                                   model={"name": str(tmp_path / "first" / "model")}))  # fmt: skip
    assert json.loads((result.run_dir / "task.json").read_text())["label_names"] == ["negative", "neutral", "positive"]
