"""Few-shot training by contrast (model.strategy=contrastive), SetFit's recipe on the one loop:
pairs of labelled rows teach a mean-pooled encoder (models/pooled.py) that same-label texts are
alike (cosine 1) and different-label texts are not (cosine 0); a logistic regression on the
embeddings then becomes the linear head.

Why on our loop rather than sentence-transformers' trainer: the encoder trains under the same
checkpoints, exact resume, early stopping, progress, trackers and run directory as every other
strategy, and the result is an ordinary classifier that evaluate, predict, export and serve
take as they are. What is written here is small: the pair sampler and the cosine loss (a mean
squared error between the pair's cosine and its 0/1 target, sentence-transformers'
CosineSimilarityLoss). The head is scikit-learn's LogisticRegression, as SetFit's default, fitted
again at every evaluation so the validation score (and the best checkpoint) is that of a
finished classifier.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tunesmith.config import ContrastiveConfig
from tunesmith.data.batching import eval_batches
from tunesmith.tasks.classification import MODEL_INPUTS


def sample_pairs(labels: np.ndarray, iterations: int, seed: int) -> list[tuple[int, int, float]]:
    """Pairs ``(row, other, target)``: every iteration pairs each row with one other row of its
    label (target 1.0) and one row of another label (target 0.0), so the pairs are balanced
    between alike and unlike whatever the class sizes. A label with a single row pairs it with
    itself; with a single label there are no unlike pairs.

    Args:
        labels: one label id per row.
        seed: the draws are a function of it (and of the labels) only.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    members = {label: np.flatnonzero(labels == label) for label in np.unique(labels)}
    others = {label: np.flatnonzero(labels != label) for label in members}
    pairs = []
    for _ in range(iterations):
        for row, label in enumerate(labels):
            same = members[label][members[label] != row]
            pairs.append((row, int(rng.choice(same)) if len(same) else row, 1.0))
            if len(others[label]):
                pairs.append((row, int(rng.choice(others[label])), 0.0))
    return pairs


def _unwrapped(model):
    return getattr(model, "module", model)  # a DDP or accelerate wrapper holds the model


class ContrastiveObjective:
    """What the training loop asks of a task (``default_metric``, ``collate``, ``count``,
    ``batch_loss``, ``evaluate``), for pair features over the task's encoded train rows; the
    scores come from the task itself once the head is fitted."""

    def __init__(self, task, rows: list[dict], options: ContrastiveConfig, *, seed: int, pad_token_id: int):
        self.task, self.rows, self.options, self.pad_token_id = task, rows, options, pad_token_id
        self.labels = np.asarray([row["labels"] for row in rows])
        self.pairs = [{"left": a, "right": b, "target": t} for a, b, t in sample_pairs(self.labels, options.iterations,
                                                                                      seed)]  # fmt: skip

    @property
    def default_metric(self) -> tuple[str, str]:
        return self.task.default_metric

    def collate(self, features: list[dict], pad_token_id: int) -> dict:
        left = self.task.collate([self.rows[f["left"]] for f in features], pad_token_id)
        right = self.task.collate([self.rows[f["right"]] for f in features], pad_token_id)
        return {"left": left, "right": right, "target": torch.tensor([f["target"] for f in features]),
                "num_examples": len(features), "num_tokens": left["num_tokens"] + right["num_tokens"]}  # fmt: skip

    def count(self, features: list[dict]) -> int:
        return len(features)

    def batch_loss(self, model, batch: dict, device) -> torch.Tensor:
        """Summed squared error between each pair's cosine similarity and its target."""
        encoder = _unwrapped(model)
        left, right = (encoder.embed(**_inputs(batch[side], device)) for side in ("left", "right"))
        similarity = F.cosine_similarity(left.float(), right.float(), dim=-1)
        return F.mse_loss(similarity, batch["target"].to(device, similarity.dtype), reduction="sum")

    def evaluate(self, model, features: list[dict], *, batch_size: int, pad_token_id: int, device) -> dict[str, Any]:
        self.fit_head(model, batch_size=batch_size, device=device)
        return self.task.evaluate(model, features, batch_size=batch_size, pad_token_id=pad_token_id, device=device)

    @torch.no_grad()
    def fit_head(self, model, *, batch_size: int, device) -> None:
        """Fits the logistic-regression head on the train rows' embeddings and writes it into
        the model's linear layer (the same probabilities as the regression's predict_proba)."""
        from sklearn.linear_model import LogisticRegression

        encoder = _unwrapped(model)
        was_training = encoder.training
        encoder.eval()
        embeddings = np.empty((len(self.rows), encoder.config.hidden_size), dtype=np.float64)
        for indices in eval_batches([len(r["input_ids"]) for r in self.rows], batch_size=batch_size):
            batch = self.task.collate([self.rows[i] for i in indices], self.pad_token_id)
            embeddings[indices] = encoder.embed(**_inputs(batch, device)).double().cpu().numpy()
        encoder.train(was_training)
        classes = np.unique(self.labels)
        layer = encoder.classifier
        weight = torch.zeros_like(layer.weight, dtype=torch.float64)
        bias = torch.zeros_like(layer.bias, dtype=torch.float64)
        if len(classes) > 1:
            head = LogisticRegression(C=self.options.head_c, max_iter=2000).fit(embeddings, self.labels)
            coef, intercept = torch.from_numpy(head.coef_), torch.from_numpy(head.intercept_)
            if len(classes) == 2:  # one logit difference: split it symmetrically over the two classes
                coef, intercept = torch.cat([-coef / 2, coef / 2]), torch.cat([-intercept / 2, intercept / 2])
            index = torch.as_tensor(classes)
            weight[index], bias[index] = coef, intercept
            bias[[i for i in range(len(bias)) if i not in set(classes.tolist())]] = -1e4  # labels no row has
        else:
            bias[:] = -1e4
            bias[int(classes[0])] = 0.0
        layer.weight.copy_(weight.to(layer.weight.dtype))
        layer.bias.copy_(bias.to(layer.bias.dtype))


def _inputs(batch: dict, device) -> dict[str, torch.Tensor]:
    return {k: batch[k].to(device) for k in MODEL_INPUTS if k in batch}
