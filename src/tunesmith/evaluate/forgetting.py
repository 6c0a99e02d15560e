"""Catastrophic-forgetting check: how well the tuned model still does what its base model did.

Measured on a *retain set* before (base model) and after (tuned model):
- encoders (classifiers, taggers, QA readers, the encoder of an encoder-decoder), ``method:
  probe`` — a logistic-regression probe on the frozen encoder's mean-pooled features, trained on one half of the retain rows and scored on the other; the
  same probe recipe on the base and on the tuned encoder;
- classifiers, ``method: head`` — the base model's own classification head (the base model
  must be a classifier of the retain labels, such as an earlier tunesmith run's ``model/``)
  put on top of the tuned encoder;
- causal LMs — perplexity on general text (one text per row or line).

The change (tuned minus base; for perplexity, the relative increase) is compared with
``forgetting.threshold``: past it, the run warns or, with ``action: fail``, exits with an
error once everything else is saved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunesmith.errors import TunesmithError
from tunesmith.models.embed import mean_pooled


def read_retain(spec: str, settings, *, max_rows: int, seed: int, labelled: bool) -> tuple[list[str], list[str] | None]:
    """The retain texts (and labels), at most ``max_rows`` of them, a seeded sample."""
    from tunesmith.data.load import detect_columns, read_table

    path = Path(spec)
    if path.suffix.lower() == ".txt":
        if not path.is_file():
            raise TunesmithError(f"forgetting.retain: file not found: {path}")
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        labels = None
        if labelled:
            raise TunesmithError(
                f"forgetting.retain={spec}: a classifier's retain set needs labels (a table, not .txt)"
            )
    else:
        table = read_table(spec)
        if labelled:
            text_column, label_column = detect_columns(table.frame, settings.text_column, settings.label_column,
                                                       table.source)  # fmt: skip
            frame = table.frame[[text_column, label_column]].dropna()
            texts, labels = frame[text_column].astype(str).tolist(), frame[label_column].astype(str).tolist()
        else:
            columns = list(table.frame.columns)
            text_column = settings.text_column or (columns[0] if len(columns) == 1 else None)
            if text_column is None:
                text_column = detect_columns(table.frame, None, None, table.source)[0]
            if text_column not in table.frame.columns:
                raise TunesmithError(f"forgetting.text_column={text_column!r} is not a column of {table.source}")
            texts, labels = table.frame[text_column].dropna().astype(str).tolist(), None
    if not texts:
        raise TunesmithError(f"forgetting.retain={spec}: no rows")
    if len(texts) > max_rows:
        keep = np.sort(np.random.default_rng(seed).choice(len(texts), size=max_rows, replace=False))
        texts = [texts[i] for i in keep]
        labels = None if labels is None else [labels[i] for i in keep]
    return texts, labels


def probe_accuracy(features: np.ndarray, labels: list[str], seed: int) -> float:
    """Accuracy of a logistic-regression probe trained on a stratified half of the rows and
    scored on the other half."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    counts = {label: labels.count(label) for label in set(labels)}
    if len(counts) < 2 or min(counts.values()) < 2:
        raise TunesmithError(f"forgetting: the retain set needs two or more labels with 2+ rows each; has {counts}")
    x_train, x_test, y_train, y_test = train_test_split(features, labels, test_size=0.5, random_state=seed,
                                                        stratify=labels)  # fmt: skip
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(x_train, y_train)
    return float(probe.score(x_test, y_test))


def _encoder(model):
    """The part of a model that reads the text: the base model of an encoder with a head, the
    encoder of an encoder-decoder (its base model would need decoder inputs)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.get_encoder() if inner.config.is_encoder_decoder else inner.base_model


@torch.no_grad()
def head_accuracy(base_classifier, tuned_model, tokenizer, texts: list[str], labels: list[str], *, max_length: int,
                  source: str) -> float:  # fmt: skip
    """Accuracy of the base classifier's head on top of the tuned encoder (the base classifier
    is modified in place)."""
    label2id = {str(k): v for k, v in base_classifier.config.label2id.items()}
    unknown = sorted(set(labels) - set(label2id))
    if unknown:
        raise TunesmithError(
            f"forgetting.method=head: labels {unknown[:5]} of {source} are not labels of the base model's head "
            f"({sorted(label2id)}); use method: probe"
        )
    missing, unexpected = _encoder(base_classifier).load_state_dict(_encoder(tuned_model).state_dict(), strict=False)
    if missing or unexpected:
        raise TunesmithError(f"forgetting.method=head: the tuned encoder does not fit the base model ({missing[:3]})")
    base_classifier.eval()
    order = np.argsort([len(t) for t in texts], kind="stable")
    right = 0
    for start in range(0, len(texts), 64):
        rows = order[start : start + 64]
        batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt")  # fmt: skip
        predicted = base_classifier(**batch).logits.argmax(-1).tolist()
        right += sum(p == label2id[labels[i]] for p, i in zip(predicted, rows))
    return right / len(texts)


def verdict(change: float, threshold: float, action: str, measure: str) -> dict[str, Any]:
    """Whether ``change`` (a drop is negative) passes ``threshold`` (the largest drop allowed)."""
    forgot = change < -threshold
    return {"change": change, "threshold": threshold, "passed": not forgot, "action": action,
            "message": (f"{measure} changed by {change:+.4f} (allowed drop {threshold})"
                        + (": the tuned model forgot more than allowed" if forgot else ""))}  # fmt: skip


def classifier_check(settings, *, base_name: str, tuned_model, tokenizer, max_length: int,
                     seed: int) -> dict[str, Any]:  # fmt: skip
    """Base against tuned on the retain set (probe or previous head)."""
    from transformers import AutoModel

    from tunesmith.models.load import resolve_model

    texts, labels = read_retain(settings.retain, settings, max_rows=settings.max_rows, seed=seed, labelled=True)
    resolved = resolve_model(base_name)
    if settings.method == "head":
        from transformers import AutoModelForSequenceClassification

        base = AutoModelForSequenceClassification.from_pretrained(resolved.location)
        before = head_accuracy(base, base, tokenizer, texts, labels, max_length=max_length, source=settings.retain)
        after = head_accuracy(base, tuned_model, tokenizer, texts, labels, max_length=max_length,
                              source=settings.retain)  # fmt: skip
    else:
        base_encoder = _encoder(AutoModel.from_pretrained(resolved.location))
        before = probe_accuracy(mean_pooled(base_encoder, tokenizer, texts, max_length=max_length), labels, seed)
        tuned = mean_pooled(_encoder(tuned_model), tokenizer, texts, max_length=max_length)
        after = probe_accuracy(tuned, labels, seed)
    measure = f"retain accuracy ({settings.method})"
    return {"retain": settings.retain, "rows": len(texts), "method": settings.method, "base": before, "tuned": after,
            "retention": after / before if before else None,
            **verdict(after - before, settings.threshold, settings.action, measure)}  # fmt: skip


def causal_lm_check(settings, *, base_model, tuned_model, tokenizer, max_length: int, seed: int) -> dict[str, Any]:
    """Perplexity of general text under the base and the tuned model; the change is judged on
    the relative increase."""
    from tunesmith.models.load import pad_token_id
    from tunesmith.tasks.causal_lm import CausalLMTask

    texts, _ = read_retain(settings.retain, settings, max_rows=settings.max_rows, seed=seed, labelled=False)
    features = []
    for text in texts:
        ids = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
        if len(ids) > 1:
            features.append({"input_ids": ids, "labels": list(ids)})
    task, pad = CausalLMTask(), pad_token_id(tokenizer)  # evaluate needs no config: defaults do
    before = task.evaluate(base_model, features, batch_size=8, pad_token_id=pad, device="cpu")["perplexity"]
    after = task.evaluate(tuned_model, features, batch_size=8, pad_token_id=pad, device="cpu")["perplexity"]
    rise = after / before - 1
    result = verdict(-rise, settings.threshold, settings.action, "retain perplexity (relative)")
    return {"retain": settings.retain, "rows": len(features), "method": "perplexity", "base": before, "tuned": after,
            "relative_increase": rise, **result}  # fmt: skip
