"""What the text tasks share for ``tunesmith monitor`` (tasks.contract.Monitored): embeddings of
raw inputs as the model reads them, and the prediction-drift checks several kinds declare."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from tunesmith.models.embed import mean_pooled
from tunesmith.tasks.contract import Watch

LABEL_SHARES = Watch("prediction_psi", "psi", "psi", "predicted label")
CONFIDENCE = Watch("confidence_drop", "decrease", "confidence_drop", "confidence (highest class probability)")
VALUES = Watch("value_ks", "ks", "prediction_ks", "predicted value")
OUTPUT_LENGTH = Watch("output_length_ks", "ks", "prediction_ks", "words per generated output")
EMPTY_OUTPUTS = Watch("empty_output_rate_increase", "increase", "empty_output_rate_increase",
                      "empty (refusal-like) outputs")  # fmt: skip


def generated_values(text: str) -> dict[str, Any]:
    """A generated output's watched values: its length in words and whether it is empty."""
    return {OUTPUT_LENGTH.name: len(text.split()), EMPTY_OUTPUTS.name: float(not text.strip())}


def pooled(encoder, tokenizer, firsts: list[str], seconds: list[str] | None = None, *, max_length: int,
           add_special_tokens: bool = True) -> np.ndarray:  # fmt: skip
    """Mean-pooled last hidden states of ``encoder`` (models.embed.mean_pooled) over texts, or
    over text pairs in the tokenizer's pair encoding (what a pair classifier or a QA model reads).

    A decoder's tokenizer may have no pad token: a copy pads with its end-of-sequence token (the
    attention mask keeps padding out of the mean), and the run's tokenizer stays as it is.
    """
    if tokenizer.pad_token is None:
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.pad_token = tokenizer.eos_token

    def encode(items: list, **options):
        options = {**options, "add_special_tokens": add_special_tokens}
        if seconds is None:
            return tokenizer(items, **options)
        return tokenizer([a for a, _ in items], [b for _, b in items], **options)

    # mean_pooled calls encode(batch, padding=..., truncation=..., max_length=..., return_tensors=...)
    # on items of the list it is given: texts, or (first, second) tuples for pairs.
    items = firsts if seconds is None else list(zip(firsts, seconds))
    return mean_pooled(encoder, encode, items, max_length=max_length)
