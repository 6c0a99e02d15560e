"""Likely label errors: out-of-fold predicted probabilities from K folds, ranked by cleanlab.

Where the probabilities come from (``inspect.label_errors``):
- ``embedding`` (default, fast): for each encoder of ``inspect.encoders`` (the run's model when
  empty), its frozen mean-pooled embeddings feed two classifiers whose probabilities are
  averaged: a logistic regression trained on K-1 folds and applied to the K-th (refitted once
  without the rows the first pass flags), and the label votes of each row's nearest neighbours
  (the row itself left out). Averaging classifiers that err differently is what lifted
  precision on the sentence-level sets of benchmarks/RESULTS.md;
- ``finetune``: the encoder fine-tuned on K-1 folds (a full tunesmith run per fold, trained by a
  ``FitFold`` the caller passes in: training is a higher layer than data);
- ``ensemble``: the ``embedding`` probabilities averaged with the ``finetune`` ones.
Every row is scored by a model that never saw it, which is what cleanlab needs. The rows flagged
are cleanlab's estimate of how many labels are wrong (``num_label_issues``), taken in the order
of its label-quality score: the combination cleanlab's documentation advises for a ranking.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable

import numpy as np
import pandas as pd

from tunesmith.config import Config
from tunesmith.errors import TunesmithError

FitFold = Callable[[list[str], list[int], list[str], str], tuple[list, np.ndarray]]
"""The finetune method's training of one fold: (training texts, their label ids, held-out texts,
a scratch run directory) -> (the label ids the model learned, in its class order; its
probabilities for the held-out texts, one column per learned id)."""


def embed(texts: list[str], model_name: str, *, max_length: int, batch_size: int = 64,
          progress: Callable[[int], None] | None = None) -> np.ndarray:  # fmt: skip
    """Mean-pooled last hidden states of the encoder (no gradient), one row per text, cut at
    ``max_length`` tokens or the encoder's own limit when that is lower (a second encoder of
    ``inspect.encoders`` may take fewer tokens than the run's model)."""
    from transformers import AutoModel

    from tunesmith.models.embed import mean_pooled
    from tunesmith.models.load import load_tokenizer, position_limit, resolve_model

    resolved = resolve_model(model_name)
    tokenizer = load_tokenizer(resolved)
    limit = position_limit(resolved, tokenizer)
    model = AutoModel.from_pretrained(resolved.location)
    return mean_pooled(model, tokenizer, texts, max_length=min(max_length, limit[0]) if limit else max_length,
                       batch_size=batch_size, progress=progress)  # fmt: skip


def _folds(labels: np.ndarray, folds: int, seed: int):
    from sklearn.model_selection import StratifiedKFold

    smallest = np.bincount(labels).min()
    if smallest < folds:
        raise TunesmithError(
            f"label-error detection with {folds} folds needs at least {folds} rows of every class; "
            f"the smallest class has {smallest} (lower --folds or add rows)"
        )
    return StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels)


def out_of_fold_probabilities_embedding(embeddings: np.ndarray, labels: np.ndarray, *, folds: int, seed: int,
                                        refit_rounds: int = 1) -> np.ndarray:  # fmt: skip
    """Logistic regression on standardised frozen embeddings, out of fold.

    Args:
        refit_rounds: after each pass, the rows cleanlab flags are left out of the *training*
            folds and every row is scored again, so suspect labels do not teach the classifier
            that scores them. Every row is still scored by a classifier that never saw it. One
            round raised precision from 0.35 to 0.42 at the same recall on SST-2 with 10% of the
            labels flipped (benchmarks/RESULTS.md).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classes = int(labels.max()) + 1
    keep = np.ones(len(labels), dtype=bool)
    splits = list(_folds(labels, folds, seed))
    for round_ in range(refit_rounds + 1):
        probabilities = np.zeros((len(labels), classes))
        for train_rows, held_rows in splits:
            trusted = train_rows[keep[train_rows]]
            if len(np.unique(labels[trusted])) < 2:  # flags took a class away: train on the fold as given
                trusted = train_rows
            classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.01))
            classifier.fit(embeddings[trusted], labels[trusted])
            probabilities[np.ix_(held_rows, classifier.classes_)] = classifier.predict_proba(embeddings[held_rows])
        if round_ < refit_rounds:
            keep = np.ones(len(labels), dtype=bool)
            keep[rank_label_issues(labels, probabilities)] = False
    return probabilities


def neighbour_probabilities(embeddings: np.ndarray, labels: np.ndarray, *, neighbours: int = 10) -> np.ndarray:
    """Each row's share of its ``neighbours`` nearest rows (cosine) carrying each label, the row
    itself left out, smoothed with half a vote per class so that no probability is 0."""
    from sklearn.neighbors import NearestNeighbors

    classes = int(labels.max()) + 1
    count = min(neighbours, len(labels) - 1)
    index = NearestNeighbors(n_neighbors=count + 1, metric="cosine", algorithm="brute").fit(embeddings)
    found = index.kneighbors(embeddings, return_distance=False)
    votes = np.zeros((len(labels), classes))
    for row, near in enumerate(found):
        others = near[near != row][:count]  # a duplicate of the row can come before the row itself
        np.add.at(votes[row], labels[others], 1.0)
    return (votes + 0.5) / (count + 0.5 * classes)


def embedding_probabilities(encodings: list[np.ndarray], labels: np.ndarray, *, folds: int,
                            seed: int) -> np.ndarray:  # fmt: skip
    """The ``embedding`` method: the mean of the out-of-fold logistic regression and the
    neighbour votes, over every encoder's embeddings."""
    found = []
    for embeddings in encodings:
        found.append(out_of_fold_probabilities_embedding(embeddings, labels, folds=folds, seed=seed))
        found.append(neighbour_probabilities(embeddings, labels))
    return np.mean(found, axis=0)


def out_of_fold_probabilities_finetune(texts: list[str], labels: np.ndarray, *, folds: int, seed: int,
                                       fit_fold: FitFold) -> np.ndarray:  # fmt: skip
    """One fine-tuning run per fold (``fit_fold``), out of fold."""
    classes = int(labels.max()) + 1
    probabilities = np.zeros((len(labels), classes))
    texts_array = np.asarray(texts, dtype=object)
    for fold, (train_rows, held_rows) in enumerate(_folds(labels, folds, seed)):
        # No validation split: one run per fold trains on all of its rows; its run directory
        # is scratch, removed with the fold.
        with tempfile.TemporaryDirectory(prefix="tunesmith-fold-") as scratch:
            learned, held = fit_fold(list(texts_array[train_rows]), [int(v) for v in labels[train_rows]],
                                     list(texts_array[held_rows]), f"{scratch}/fold-{fold}")  # fmt: skip
            probabilities[np.ix_(held_rows, [int(c) for c in learned])] = held
    return probabilities


def rank_label_issues(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Row positions likely mislabelled, most likely first: as many as cleanlab estimates are
    wrong (the off-diagonal of its confident joint), lowest label-quality score
    (self-confidence) first."""
    from cleanlab.count import num_label_issues
    from cleanlab.rank import get_label_quality_scores

    count = num_label_issues(labels, probabilities)
    return np.argsort(get_label_quality_scores(labels, probabilities), kind="stable")[:count]


def label_issue_table(frame: pd.DataFrame, label_names: list[str], labels: np.ndarray,
                      probabilities: np.ndarray, ranked: np.ndarray) -> pd.DataFrame:  # fmt: skip
    """The suspects: position, text, given label, suggested label, and the model's confidence
    in each."""
    suggested = probabilities.argmax(1)
    return pd.DataFrame({
        "position": ranked,
        "text": frame["text"].to_numpy()[ranked],
        "given_label": [label_names[labels[i]] for i in ranked],
        "suggested_label": [label_names[suggested[i]] for i in ranked],
        "given_label_probability": probabilities[ranked, labels[ranked]],
        "suggested_label_probability": probabilities[ranked, suggested[ranked]],
    })  # fmt: skip


def find_suspects(texts: list[str], labels: list[str], *, method: str, folds: int, seed: int,
                  encoders: list[str], max_length: int, fit_fold: FitFold | None = None,
                  progress: Callable[[int], None] | None = None) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Out-of-fold probabilities for (texts, labels) by ``method`` and cleanlab's ranking.

    Args:
        encoders: the models whose frozen embeddings the ``embedding`` and ``ensemble`` methods use.
        fit_fold: trains one fold for the ``finetune`` and ``ensemble`` methods.
        progress: told of every text embedded (``len(texts)`` per encoder).

    Returns:
        (label names, label ids, probabilities, flagged positions most likely first).
    """
    names = sorted(set(labels))
    ids = pd.Series(labels).map({n: i for i, n in enumerate(names)}).to_numpy()
    found = []
    if method in ("embedding", "ensemble"):
        encodings = [embed(texts, name, max_length=max_length, progress=progress) for name in encoders]
        found.append(embedding_probabilities(encodings, ids, folds=folds, seed=seed))
    if method != "embedding":
        if fit_fold is None:
            raise ValueError(f"the {method} method needs fit_fold, the training of one fold")
        found.append(out_of_fold_probabilities_finetune(texts, ids, folds=folds, seed=seed, fit_fold=fit_fold))
    probabilities = np.mean(found, axis=0)
    return names, ids, probabilities, rank_label_issues(ids, probabilities)


def label_error_encoders(config: Config) -> list[str]:
    """The encoders of the ``embedding`` method: ``inspect.encoders`` (each once), or the run's
    model."""
    return list(dict.fromkeys(config.inspect.encoders)) or [config.model.name]


def label_error_training(config: Config) -> dict:
    """The training settings of the per-fold runs of the finetune method: the config's own."""
    return {"train": config.train.model_dump(include={"num_epochs", "batch_size", "learning_rate"}),
            "model": {"max_length": config.model.max_length}}  # fmt: skip


def label_error_finder(
    config: Config, *, fit_fold: FitFold | None
) -> Callable[[pd.DataFrame], list[tuple[int, str, float]]]:
    """For data.clean.label_errors: finds the suspects of a training table as ``inspect`` finds
    them (``inspect.label_errors``; ``embedding`` when that is ``off``).

    Args:
        fit_fold: trains one fold for the ``finetune`` method.

    Returns:
        A function from a (text, label) table to its suspects: (position, suggested label,
        probability of the given label), most likely first.
    """

    def find(frame: pd.DataFrame) -> list[tuple[int, str, float]]:
        if frame["label"].map(str).nunique() < 2:  # one class: nothing to compare a label against
            return []
        method = config.inspect.label_errors if config.inspect.label_errors != "off" else "embedding"
        names, ids, probabilities, ranked = find_suspects(
            frame["text"].tolist(), frame["label"].map(str).tolist(), method=method, folds=config.inspect.folds,
            seed=config.runtime.seed, encoders=label_error_encoders(config), max_length=config.model.max_length,
            fit_fold=fit_fold,
        )  # fmt: skip
        return [(int(p), names[int(probabilities[p].argmax())], float(probabilities[p, ids[p]])) for p in ranked]

    return find
