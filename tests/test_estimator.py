"""The scikit-learn-like estimator: fit, predict, predict_proba, save, load."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import sentiment_rows
from tunesmith.errors import TunesmithError
from tunesmith.estimator import TextClassifier


def _classifier(tiny_model_dir, tmp_path, **kwargs):
    return TextClassifier(
        model=str(tiny_model_dir), num_epochs=5, batch_size=8, learning_rate=3e-3, max_length=32,
        output_dir=str(tmp_path / "run"), val_fraction=0.2,
        config={"model": {"dropout": 0.0}, "train": {"warmup_ratio": 0.0}, "runtime": {"device": "cpu"}},
        **kwargs,
    )  # fmt: skip


def test_fit_predict_save_load(tiny_model_dir, tmp_path):
    rows = sentiment_rows(120)
    texts, labels = [r["text"] for r in rows], [r["label"] for r in rows]
    held_out = sentiment_rows(40, seed=9)
    clf = _classifier(tiny_model_dir, tmp_path)
    with pytest.raises(TunesmithError, match="not fitted"):
        clf.predict(["good"])
    assert clf.fit(texts, labels) is clf
    assert list(clf.classes_) == ["negative", "positive"]
    predicted = clf.predict([r["text"] for r in held_out])
    accuracy = np.mean(predicted == np.asarray([r["label"] for r in held_out]))
    assert accuracy >= 0.9
    proba = clf.predict_proba([r["text"] for r in held_out])
    assert proba.shape == (40, 2)
    assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert (clf.classes_[proba.argmax(axis=1)] == predicted).all()

    saved = clf.save(tmp_path / "saved")
    with pytest.raises(TunesmithError, match="already exists"):
        clf.save(tmp_path / "saved")
    loaded = TextClassifier.load(saved)
    assert np.allclose(loaded.predict_proba([r["text"] for r in held_out]), proba, atol=1e-6)


def test_multi_label_and_regression(tiny_model_dir, tmp_path):
    rows = sentiment_rows(120, classes=3)
    texts = [r["text"] for r in rows]
    tags = [[r["label"]] + (["long"] if i % 2 else []) for i, r in enumerate(rows)]
    clf = _classifier(tiny_model_dir, tmp_path / "m", task="multi_label").fit(texts, tags)
    assert set(clf.classes_) == {"positive", "negative", "neutral", "long"}
    predicted = clf.predict(texts[:6])
    assert all(isinstance(p, list) for p in predicted)
    assert clf.metrics_["validation"]["micro_f1"] > 0.5

    scores = [1.0 if r["label"] == "positive" else -1.0 for r in sentiment_rows(120)]
    reg = _classifier(tiny_model_dir, tmp_path / "r", task="regression").fit(
        [r["text"] for r in sentiment_rows(120)], scores
    )
    values = reg.predict([r["text"] for r in sentiment_rows(20, seed=5)])
    assert values.dtype.kind == "f"
    assert reg.metrics_["validation"]["spearman"] > 0.5
    with pytest.raises(TunesmithError, match="regression"):
        reg.predict_proba(["x"])
