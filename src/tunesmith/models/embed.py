"""Sentence embeddings from an encoder: mean-pooled last hidden states, no gradient."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


@torch.no_grad()
def mean_pooled(encoder, tokenizer, texts: list[str], *, max_length: int, batch_size: int = 64,
                progress: Callable[[int], None] | None = None) -> np.ndarray:  # fmt: skip
    """One row per text, in the texts' order. Texts are batched by length (little padding);
    padding positions do not count in the mean."""
    was_training = encoder.training
    encoder.eval()
    order = np.argsort([len(t) for t in texts], kind="stable")
    out: np.ndarray | None = None
    for start in range(0, len(texts), batch_size):
        rows = order[start : start + batch_size]
        batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt")  # fmt: skip
        hidden = encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().numpy()
        if out is None:
            out = np.zeros((len(texts), pooled.shape[1]), dtype=np.float32)
        out[rows] = pooled
        if progress is not None:
            progress(len(rows))
    encoder.train(was_training)
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)
