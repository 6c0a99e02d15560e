"""The finetune label-error method trains its folds with ``study.cv.fold_classifier`` (data/ may
not import the estimator): it must be the same run, with the same probabilities, as the
TextClassifier the method used before."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tests.conftest import sentiment_rows
from tunesmith import api
from tunesmith.config import load_config
from tunesmith.data.label_errors import (
    find_suspects,
    label_error_training,
    out_of_fold_probabilities_finetune,
    rank_label_issues,
)
from tunesmith.estimator import TextClassifier
from tunesmith.study.cv import fold_classifier


def test_fold_classifier_predicts_what_the_estimator_predicts(tmp_path, tiny_model_dir):
    config = load_config(None, [f"model.name={tiny_model_dir}", "model.max_length=32", "train.num_epochs=1",
                                "train.batch_size=8", "train.learning_rate=3e-3"])  # fmt: skip
    texts = [row["text"] for row in sentiment_rows(24)]
    labels = [i % 2 for i in range(24)]
    held = ["a new text to score", "  spaced   out  text "]
    learned, probabilities = fold_classifier(config, train=api.train)(texts, labels, held, str(tmp_path / "fold"))
    estimator = TextClassifier(model=str(tiny_model_dir), seed=config.runtime.seed, val_fraction=0.0, progress=False,
                               config=label_error_training(config), output_dir=str(tmp_path / "estimator"))  # fmt: skip
    estimator.fit(texts, labels)
    assert [int(c) for c in learned] == [int(c) for c in estimator.classes_] == [0, 1]
    assert probabilities.shape == (2, 2)
    np.testing.assert_allclose(probabilities, estimator.predict_proba(held), atol=1e-6)


def test_finetune_scores_every_row_out_of_fold():
    seen = []

    def fit_fold(texts, labels, held, output_dir):  # a stand-in model: certain of label 1
        seen.append((set(texts), set(held)))
        return [0, 1], np.tile([0.25, 0.75], (len(held), 1))

    texts = [f"text {i}" for i in range(9)]
    probabilities = out_of_fold_probabilities_finetune(texts, np.array([0, 1, 1] * 3), folds=3, seed=0,
                                                       fit_fold=fit_fold)  # fmt: skip
    assert probabilities.tolist() == [[0.25, 0.75]] * 9
    assert all(not trained & held for trained, held in seen) and set().union(*(h for _, h in seen)) == set(texts)


def test_ensemble_averages_the_embedding_and_fold_probabilities(tiny_model_dir):
    rows = sentiment_rows(30, seed=3)
    texts, labels = [r["text"] for r in rows], [r["label"] for r in rows]

    def fit_fold(fold_texts, fold_labels, held, output_dir):  # a stand-in model: sure of the first label
        return [0, 1], np.tile([1.0, 0.0], (len(held), 1))

    common = {"folds": 3, "seed": 0, "max_length": 32, "fit_fold": fit_fold}
    names, ids, embedded, _ = find_suspects(texts, labels, method="embedding", encoders=[str(tiny_model_dir)], **common)
    _, _, twice, _ = find_suspects(texts, labels, method="embedding", encoders=[str(tiny_model_dir)] * 2, **common)
    _, _, folded, _ = find_suspects(texts, labels, method="finetune", encoders=[], **common)
    _, _, both, ranked = find_suspects(texts, labels, method="ensemble", encoders=[str(tiny_model_dir)], **common)
    assert names == sorted(set(labels)) and folded.tolist() == [[1.0, 0.0]] * len(texts)
    np.testing.assert_allclose(twice, embedded)  # the same encoder twice averages to itself
    np.testing.assert_allclose(both, (embedded + folded) / 2)
    assert ranked.tolist() == rank_label_issues(ids, both).tolist()


def test_an_encoder_with_fewer_positions_embeds_within_its_limit(tiny_model_dir):
    from tunesmith.data.label_errors import embed

    long = ["word " * 300, "short text"]  # the tiny model takes 128 positions
    assert embed(long, str(tiny_model_dir), max_length=512).shape[0] == 2


def test_one_class_has_no_label_errors_to_find(tiny_model_dir):
    from tunesmith.data.label_errors import label_error_finder

    config = load_config(None, [f"model.name={tiny_model_dir}"])
    frame = pd.DataFrame({"text": [f"text {i}" for i in range(12)], "label": ["a"] * 12})
    assert label_error_finder(config, fit_fold=None)(frame) == []
