"""Per-slice metrics and the gaps between slices."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.conftest import sentiment_rows, tiny_config
from tunesmith import api
from tunesmith.errors import TunesmithError
from tunesmith.tasks.fairness import slice_metrics


def test_gaps_match_a_hand_computed_case():
    # Labels: 0 = negative, 1 = positive. Slice a: 4 rows, 3 right; positives 2, both found.
    # Slice b: 4 rows, 2 right; positives 2, one found.
    targets = np.array([1, 1, 0, 0, 1, 1, 0, 0])
    predicted = np.array([1, 1, 0, 1, 1, 0, 0, 1])
    slices = ["a"] * 4 + ["b"] * 4
    report = slice_metrics(predicted, targets, slices, ["negative", "positive"], column="group")
    assert report["slices"]["a"]["accuracy"] == 0.75 and report["slices"]["b"]["accuracy"] == 0.5
    assert report["slices"]["a"]["true_positive_rate"] == 1.0 and report["slices"]["b"]["true_positive_rate"] == 0.5
    assert report["accuracy_gap"] == pytest.approx(0.25)
    assert report["equal_opportunity_difference"] == pytest.approx(0.5)
    # Negative as the positive label: true-negative rates 0.5 (a) and 0.5 (b).
    other = slice_metrics(predicted, targets, slices, ["negative", "positive"], column="group", positive="negative")
    assert other["equal_opportunity_difference"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="'neutral' is not one of the labels"):
        slice_metrics(predicted, targets, slices, ["negative", "positive"], column="group", positive="neutral")
    small = slice_metrics(predicted, targets, slices, ["negative", "positive"], column="group", min_rows=5)
    assert "accuracy_gap" not in small  # no two slices big enough to compare


def test_a_run_reports_slices_in_metrics_and_model_card(tmp_path, tiny_model_dir):
    data = tmp_path / "data.csv"
    rows = sentiment_rows(120, seed=4)
    pd.DataFrame(rows).assign(source=["web" if i % 3 else "mail" for i in range(120)]).to_csv(data, index=False)
    result = api.train(tiny_config(tiny_model_dir, data, tmp_path / "run", data={"train": str(data),
                       "val_fraction": 0.2, "test_fraction": 0.25, "slice_column": "source"}))  # fmt: skip
    slices = result.metrics["test"]["slices"]
    assert slices["column"] == "source" and set(slices["slices"]) == {"mail", "web"}
    assert sum(s["count"] for s in slices["slices"].values()) == result.metrics["test"]["count"]
    accuracies = [s["accuracy"] for s in slices["slices"].values()]
    assert slices["accuracy_gap"] == pytest.approx(max(accuracies) - min(accuracies))
    assert "per source slice" in (tmp_path / "run" / "README.md").read_text()
    evaluated = api.evaluate(tmp_path / "run", data)
    assert sum(s["count"] for s in evaluated["slices"]["slices"].values()) == evaluated["count"]


def test_an_unknown_slice_column_names_the_file(tmp_path, tiny_model_dir):
    data = tmp_path / "data.csv"
    pd.DataFrame(sentiment_rows(40)).to_csv(data, index=False)
    config = tiny_config(tiny_model_dir, data, tmp_path / "run", data={"train": str(data), "slice_column": "region"})
    with pytest.raises(TunesmithError, match="data.slice_column='region' is not a column of .*data.csv"):
        api.train(config)
