"""Bootstrap intervals, expected calibration error and temperature scaling."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from tests.conftest import sentiment_rows, tiny_config
from tunesmith import api
from tunesmith.tasks.classification import text_logits
from tunesmith.tasks.confidence import bootstrap_intervals, calibration_bins, fit_temperature, softmax
from tunesmith.tasks.run import load_run


def test_bootstrap_interval_covers_the_true_accuracy_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    truth, covered, repeats = 0.8, 0, 200
    for seed in range(repeats):
        targets = rng.integers(0, 2, size=300)
        right = rng.random(300) < truth  # each prediction is right with probability 0.8
        predicted = np.where(right, targets, 1 - targets)
        ci = bootstrap_intervals(predicted, targets, kind="single_label", num_classes=2, samples=500, seed=seed)
        covered += ci["accuracy"]["low"] <= truth <= ci["accuracy"]["high"]
    assert 0.90 <= covered / repeats <= 0.99


def test_bootstrap_estimates_match_sklearn_and_intervals_contain_them():
    rng = np.random.default_rng(1)
    targets = rng.integers(0, 3, size=200)
    predicted = np.where(rng.random(200) < 0.7, targets, rng.integers(0, 3, size=200))
    ci = bootstrap_intervals(predicted, targets, kind="single_label", num_classes=3, samples=300)
    assert ci["macro_f1"]["estimate"] == pytest.approx(f1_score(targets, predicted, average="macro"))
    assert ci["weighted_f1"]["estimate"] == pytest.approx(f1_score(targets, predicted, average="weighted"))
    for values in ci.values():
        assert values["low"] <= values["estimate"] <= values["high"]
    values = rng.normal(size=100)
    regression = bootstrap_intervals(values + rng.normal(0, 0.1, 100), values, kind="regression", samples=200)
    assert regression["mse"]["low"] < 0.01 < regression["mse"]["high"]


def test_ece_matches_a_hand_computed_case():
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    targets = np.array([0, 1, 1, 1])
    # Confidences 0.9, 0.8, 0.7, 0.6 fall in four bins of ten; right, wrong, right, right:
    # (|1 - 0.9| + |0 - 0.8| + |1 - 0.7| + |1 - 0.6|) / 4 = 0.4
    ece, table = calibration_bins(probabilities, targets, bins=10)
    assert ece == pytest.approx(0.4)
    assert [b["count"] for b in table] == [1, 1, 1, 1]
    # Two bins: 0.6 and 0.7 share (0.5, 1.0] with 0.8 and 0.9: |3/4 - 0.75| = 0
    assert calibration_bins(probabilities, targets, bins=2)[0] == pytest.approx(0.0)


def test_temperature_scaling_softens_overconfident_logits_without_changing_predictions():
    rng = np.random.default_rng(2)
    targets = rng.integers(0, 2, size=2000)
    # Calibrated logits at temperature 1, then made three times too sharp.
    margin = rng.normal(1.0, 1.0, size=2000)
    calibrated = np.stack([np.zeros(2000), margin], 1)
    p_true = softmax(calibrated)[:, 1]
    targets = (rng.random(2000) < p_true).astype(int)
    sharp = calibrated * 3
    temperature = fit_temperature(sharp, targets)
    assert temperature == pytest.approx(3.0, rel=0.15)
    assert (softmax(sharp, temperature).argmax(1) == sharp.argmax(1)).all()
    assert calibration_bins(softmax(sharp, temperature), targets)[0] < calibration_bins(softmax(sharp), targets)[0]


def test_a_run_reports_intervals_calibration_and_applies_its_temperature(tmp_path, tiny_model_dir):
    data = tmp_path / "data.csv"
    pd.DataFrame(sentiment_rows(100, seed=6)).to_csv(data, index=False)
    config = tiny_config(tiny_model_dir, data, tmp_path / "run", evaluation={"temperature_scaling": True,
                                                                           "bootstrap_samples": 200})  # fmt: skip
    result = api.train(config)
    test = result.metrics["test"]
    assert (
        test["confidence_intervals"]["accuracy"]["low"]
        <= test["accuracy"]
        <= test["confidence_intervals"]["accuracy"]["high"]
    )
    assert 0 <= test["ece"] <= 1 and test["confidence_level"] == 0.95
    temperature = json.loads((tmp_path / "run" / "calibration.json").read_text())["temperature"]
    assert test["temperature"] == temperature
    assert (tmp_path / "run" / "reliability_test.png").stat().st_size > 0
    card = (tmp_path / "run" / "README.md").read_text()
    assert "95% bootstrap interval" in card and "expected calibration error" in card
    text = sentiment_rows(1, seed=9)[0]["text"]
    scores = api.predict(tmp_path / "run", [text])[0]["scores"]
    loaded = load_run(tmp_path / "run")
    logits = text_logits(loaded.model, loaded.tokenizer, [text], max_length=loaded.config.model.max_length)
    expected = softmax(logits, temperature)[0]
    assert list(scores.values()) == pytest.approx(expected.tolist(), abs=1e-5)
    evaluated = api.evaluate(tmp_path / "run", data)
    assert "confidence_intervals" in evaluated and "ece_temperature_scaled" in evaluated
