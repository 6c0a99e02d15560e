"""Plain per-token tags (``task.tag_scheme=none``: part of speech, chunks): scores and prediction rows.

Every tag is a label of its own, so a tagger is scored like a classifier of words: token
accuracy, macro and weighted precision/recall/F1 and per-tag scores, with scikit-learn
(tasks.metrics.classification_metrics). The bootstrap intervals resample sentences, not words
(the words of one sentence are not independent draws), with tasks.confidence.bootstrap_sums
over per-sentence counts; the statistic is written here because a word cut off by truncation is
wrong without being predicted as any tag, which confusion matrices cannot hold.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tunesmith.tasks.confidence import bootstrap_sums
from tunesmith.tasks.metrics import classification_metrics

INTERVAL_METRICS = ("accuracy", "macro_f1", "weighted_f1", "macro_precision", "macro_recall")
"""The scalar scores that get bootstrap intervals."""


def scored_tags(gold: list[list[str]], predicted: list[list[str | None]], tag_names: list[str]) -> list[str]:
    """The tags scores average over: the trained tags (``tag_names`` order) that occur in ``gold``
    or ``predicted``, then gold tags the model never saw (sorted). Tags in neither do not count
    (as scikit-learn's default): a split without a rare tag is not marked down for it."""
    present = {t for sentence in gold for t in sentence} | {t for s in predicted for t in s if t is not None}
    return [t for t in tag_names if t in present] + sorted(present - set(tag_names))


def tag_metrics(gold: list[list[str]], predicted: list[list[str | None]], tag_names: list[str]) -> dict[str, Any]:
    """Token accuracy; macro and weighted precision, recall and F1; per-tag scores (``per_class``)
    and the confusion matrix (``confusion_labels`` names its rows), over every word of the
    sentences. A word predicted None (past model.max_length) counts as wrong.

    Args:
        gold: each sentence's true tags.
        predicted: each sentence's predicted tags, as long as its gold tags.
        tag_names: the model's tags.

    Returns:
        The scores, with ``count`` (sentences) and ``words``.
    """
    classes = scored_tags(gold, predicted, tag_names)
    index = {t: i for i, t in enumerate(classes)}
    outside = len(classes)  # a cut word's id: in no class, so never right
    targets = np.asarray([index[t] for sentence in gold for t in sentence], dtype=int)
    guesses = np.asarray([index.get(t, outside) if t is not None else outside for s in predicted for t in s], dtype=int)
    if not len(targets):
        return {**dict.fromkeys(INTERVAL_METRICS, 0.0), "count": len(gold), "words": 0, "per_class": {}}
    metrics = classification_metrics(guesses, targets, classes)
    metrics["words"], metrics["count"] = metrics["count"], len(gold)
    metrics["confusion_labels"] = classes
    return metrics


def tag_intervals(gold: list[list[str]], predicted: list[list[str | None]], tag_names: list[str], *, samples: int,
                  level: float, seed: int) -> dict[str, dict[str, float]]:  # fmt: skip
    """Percentile bootstrap intervals of the scores of :func:`tag_metrics` named in
    ``INTERVAL_METRICS``, resampling sentences.

    Returns:
        {metric: {"estimate", "low", "high"}}; the estimates equal tag_metrics' values.
    """
    classes = scored_tags(gold, predicted, tag_names)
    index, k = {t: i for i, t in enumerate(classes)}, len(classes)
    # Per sentence: right words, then per tag its right words, predictions and gold words.
    rows = np.zeros((len(gold), 1 + 3 * k))
    for row, (truth, guess) in zip(rows, zip(gold, predicted)):
        for t, p in zip(truth, guess):
            row[1 + 2 * k + index[t]] += 1
            if p is not None:
                row[1 + k + index[p]] += 1
            if p == t:
                row[0] += 1
                row[1 + index[t]] += 1

    def scores(sums: np.ndarray) -> dict[str, np.ndarray]:
        right, hits, guessed, support = sums[:, 0], sums[:, 1 : 1 + k], sums[:, 1 + k : 1 + 2 * k], sums[:, 1 + 2 * k :]
        total = support.sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.where(guessed > 0, hits / guessed, 0.0)
            recall = np.where(support > 0, hits / support, 0.0)
            f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
            weights = support / np.maximum(total, 1)[:, None]
            return {"accuracy": right / np.maximum(total, 1), "macro_f1": f1.mean(1),
                    "weighted_f1": (f1 * weights).sum(1), "macro_precision": precision.mean(1),
                    "macro_recall": recall.mean(1)}  # fmt: skip

    return bootstrap_sums(rows, scores, samples=samples, level=level, seed=seed) if k else {}


def token_rows(text: str, words: list[tuple[str, int, int]], tags: list[str | None], scores: list[float]) -> list[dict]:
    """One row per word of ``text``: the word, its character offsets (end exclusive), its tag and
    the tag's probability; a word past model.max_length has tag None and score 0."""
    return [{"word": word, "start": start, "end": end, "tag": tag, "score": round(float(score), 6)}
            for (word, start, end), tag, score in zip(words, tags, scores)]  # fmt: skip
