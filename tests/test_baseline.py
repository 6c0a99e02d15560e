"""evaluation.baseline: a linear probe on the frozen pretrained model beside the run's scores."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tests.conftest import sentiment_rows, tiny_config
from tunesmith import api
from tunesmith.config import config_from_dict


def _embedded(model_dir, texts: list[str]) -> np.ndarray:
    from transformers import AutoModel, AutoTokenizer

    tokenizer, encoder = AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir)
    encoder.eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        states = encoder(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return ((states * mask).sum(1) / mask.sum(1)).numpy()


def test_every_classifier_run_carries_the_frozen_probe_beside_its_scores(tmp_path, tiny_model_dir):
    data = tmp_path / "data.csv"
    pd.DataFrame(sentiment_rows(60, seed=3)).to_csv(data, index=False)
    run = api.train(config_from_dict(tiny_config(tiny_model_dir, data, tmp_path / "run"))).run_dir
    metrics = json.loads((run / "metrics.json").read_text())
    baseline = metrics["baseline"]
    assert baseline["train_rows"] == 36 and set(baseline) >= {"validation", "test", "method"}
    assert baseline["test"]["count"] == metrics["test"]["count"] == 12

    # The same probe, computed here from the pretrained weights and the run's own splits.
    train, test = (pd.read_parquet(run / "data" / f"{s}.parquet") for s in ("train", "test"))
    names = sorted(set(train["label"]))
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=0))
    probe.fit(_embedded(tiny_model_dir, train["text"].tolist()), train["label"].map(names.index))
    expected = probe.predict(_embedded(tiny_model_dir, test["text"].tolist())) == test["label"].map(names.index)
    assert abs(baseline["test"]["accuracy"] - float(expected.mean())) < 1e-9

    card, report = (run / "README.md").read_text(), (run / "report.html").read_text()
    gain = metrics["test"]["macro_f1"] - baseline["test"]["macro_f1"]
    assert "Baseline: what fine-tuning added" in card and f"{gain:+.4f}" in card
    assert "Baseline: what fine-tuning added" in report


def test_the_baseline_can_be_turned_off_and_covers_regression(tmp_path, tiny_model_dir):
    data = tmp_path / "data.csv"
    pd.DataFrame(sentiment_rows(40, seed=4)).to_csv(data, index=False)
    off = tiny_config(tiny_model_dir, data, tmp_path / "off", evaluation={"baseline": False})
    assert "baseline" not in api.train(config_from_dict(off)).metrics

    numbers = tmp_path / "numbers.csv"
    rows = sentiment_rows(40, seed=5)
    pd.DataFrame({"text": [r["text"] for r in rows], "label": [float(r["label"] == "positive") for r in rows]}).to_csv(
        numbers, index=False
    )
    regression = tiny_config(tiny_model_dir, numbers, tmp_path / "reg", task={"type": "regression"},
                             evaluation={"baseline_rows": 10})  # fmt: skip
    baseline = api.train(config_from_dict(regression)).metrics["baseline"]
    assert baseline["train_rows"] == 10 and baseline["test"]["mse"] >= 0.0
