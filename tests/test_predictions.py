"""Per-row predictions (``predictions_SPLIT.parquet``), the report's mistakes and calibration
words, and ``compare``'s data check and paired differences, on three tiny single-label runs:
two on the same data (other learning rates) and one whose test split differs (another seed).
Every task kind's predictions file is checked against its metrics in test_conformance.py."""

from __future__ import annotations

import html
import json

import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import sentiment_rows, tiny_config
from tunesmith import api
from tunesmith.cli import app
from tunesmith.evaluate.html import run_report
from tunesmith.evaluate.predictions import calibration_sentence, data_warnings, read_predictions, write_predictions
from tunesmith.tasks.contract import PREDICTION_COLUMNS, Predictions


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("predictions")
    data = root / "data.csv"
    pd.DataFrame(sentiment_rows(80, seed=5)).to_csv(data, index=False)
    runs = {}
    for name, rate, seed in (("slow", 1e-3, 0), ("fast", 3e-3, 0), ("other", 3e-3, 1)):
        config = tiny_config(tiny_model_dir, data, root / name, train={"learning_rate": rate, "num_epochs": 1})
        config["runtime"]["seed"] = seed
        runs[name] = api.train(config, console=None).run_dir
    return root, runs


def test_a_run_saves_every_row_of_each_split_with_what_the_model_said(trained):
    root, runs = trained
    run = runs["fast"]
    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("validation", "test"):
        found = read_predictions(run / f"predictions_{split}.parquet")
        rows, data = found.rows, pd.read_parquet(run / "data" / f"{split}.parquet")
        assert tuple(rows.columns) == PREDICTION_COLUMNS and len(rows) == len(data) == metrics[split]["count"]
        assert rows["input"].tolist() == data["text"].tolist() and rows["gold"].tolist() == data["label"].tolist()
        assert (rows["gold"] == rows["predicted"]).mean() == pytest.approx(metrics[split]["accuracy"])
        probabilities = rows["scores"].map(list).tolist()
        assert all(len(p) == 2 and sum(p) == pytest.approx(1.0) for p in probabilities)
        assert rows["confidence"].tolist() == pytest.approx([max(p) for p in probabilities])
        assert (found.metric, found.mean_of, found.by_class) == ("correct", "accuracy", True)
    held_out = root / "held-out.csv"
    pd.DataFrame(sentiment_rows(12, seed=9)).to_csv(held_out, index=False)
    scored = api.evaluate(run, held_out, log=lambda message: None)
    rows = read_predictions(run / "evaluations" / "held-out_predictions.parquet").rows
    assert len(rows) == 12 and (rows["gold"] == rows["predicted"]).mean() == pytest.approx(scored["accuracy"])


def test_the_report_lists_the_most_confident_mistakes_of_each_class_and_words_its_calibration(trained):
    run = trained[1]["fast"]
    page = (run / "report.html").read_text()
    rows = read_predictions(run / "predictions_test.parquet").rows
    wrong = rows[rows["gold"] != rows["predicted"]].sort_values("confidence", ascending=False, kind="stable")
    assert len(wrong), "the tiny model should get some test rows wrong"
    section = page[page.index("<h2>Mistakes (test") : page.index("<h2>Calibration")]
    for _, group in wrong.groupby("gold"):
        for text in group["input"].head(3):
            assert html.escape(text) in section, text
        for text in group["input"].iloc[3:]:
            assert html.escape(text) not in section, text
    bins = json.loads((run / "metrics.json").read_text())["test"]["calibration_bins"]
    assert html.escape(calibration_sentence(bins, "test")) in page


def test_calibration_words_come_from_the_bins():
    over = [{"low": 0.8, "high": 0.933, "count": 50, "accuracy": 0.78, "confidence": 0.9},
            {"low": 0.6, "high": 0.667, "count": 10, "accuracy": 0.6, "confidence": 0.62}]  # fmt: skip
    said = calibration_sentence(over, "test")
    assert said.startswith("On the test split the model is over-confident: when it says 90% it is right 78%")
    under = [{"low": 0.5, "high": 0.6, "count": 200, "accuracy": 0.85, "confidence": 0.55}]
    assert "under-confident: when it says 55% it is right 85%" in calibration_sentence(under, "validation")
    even = [{"low": 0.8, "high": 0.9, "count": 200, "accuracy": 0.85, "confidence": 0.855}]
    assert "matches how often it is right" in calibration_sentence(even, "test")


def test_data_warnings_name_the_split_the_rows_or_what_cannot_be_checked():
    base = {"split": "test", "rows": 10, "sha256": "a"}
    others = [{**base, "split": "validation"}, {**base, "rows": 8}, {**base, "sha256": "b", "from": "manifest"},
              {**base, "sha256": "b"}, dict(base)]  # fmt: skip
    found = data_warnings(["first", "v", "r", "old", "other", "same"], [base, *others])
    assert len(found) == 4 and all(w.endswith("their scores are not comparable") for w in found)
    assert "validation split" in found[0] and "8 test rows and first on 10" in found[1]
    assert "cannot tell" in found[2] and "not the same inputs and answers" in found[3]


def test_mistakes_on_images_show_a_thumbnail_or_the_file_name(tmp_path):
    picture = tmp_path / "cat.png"
    Image.new("RGB", (40, 30), "red").save(picture)
    rows = pd.DataFrame({"row": [0, 1, 2], "input": [str(picture), str(tmp_path / "gone.png"), str(picture)],
                         "gold": ["cat", "dog", "dog"], "predicted": ["dog", "cat", "dog"],
                         "scores": [[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], "confidence": [0.9, 0.8, 0.7],
                         "row_metric": [0.0, 0.0, 1.0]})  # fmt: skip
    write_predictions(tmp_path / "predictions_test.parquet", Predictions(rows, "correct", True, "accuracy", True))
    (tmp_path / "metrics.json").write_text(json.dumps({"test": {"accuracy": 1 / 3, "count": 3}}))
    page = run_report(tmp_path).read_text()
    section = page[page.index("<h2>Mistakes (test") :]
    assert "<img alt='cat.png'" in section and "data:image/png;base64," in section  # readable: a thumbnail
    assert ">gone.png</td>" in section  # unreadable: its name


def test_compare_stores_numbers_and_a_paired_interval_on_the_same_test_rows(trained, tmp_path):
    runs = trained[1]
    out = tmp_path / "same.html"
    result = CliRunner().invoke(app, ["compare", str(runs["slow"]), str(runs["fast"]), "--out", str(out), "--strict"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.with_suffix(".json").read_text())
    assert not report["warnings"] and report["data"][0]["sha256"] == report["data"][1]["sha256"]
    first, second = report["scores"]
    assert all(isinstance(row[key], float) for row in (first, second) for key in ("accuracy", "accuracy_low", "ece"))
    (paired,) = report["paired_differences"]
    assert paired["difference"] == pytest.approx(second["accuracy"] - first["accuracy"])
    assert paired["low"] <= paired["difference"] <= paired["high"] and paired["rows"] == 16
    assert "paired interval" in result.output


def test_compare_warns_about_other_test_data_and_strict_refuses(trained, tmp_path):
    runs = trained[1]
    command = ["compare", str(runs["fast"]), str(runs["other"])]
    warned = CliRunner().invoke(app, [*command, "--out", str(tmp_path / "warned.html")])
    assert warned.exit_code == 0, warned.output
    report = json.loads((tmp_path / "warned.json").read_text())
    (warning,) = report["warnings"]
    assert "not the same inputs" in warning and f"warning: {warning}" in warned.output
    assert report["paired_differences"] == []  # no pairs across different rows
    refused = CliRunner().invoke(app, [*command, "--out", str(tmp_path / "refused.html"), "--strict"])
    assert refused.exit_code == 2 and "--strict" in refused.output and warning in refused.output
    assert not (tmp_path / "refused.html").exists() and not (tmp_path / "refused.json").exists()
