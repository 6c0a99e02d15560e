"""model.strategy=zero_shot: a classifier with no training. Each label's description (task.labels)
is embedded by the encoder like a text (the L2-normalised mean of its token states,
models/pooled.py); those embeddings, times ``SCALE``, are the linear head, so a text's logit for
a label is the scaled cosine between the two. The run is then an ordinary classifier: scored on
the validation and test splits, evaluated, predicted, exported and served like any other.

Why by hand: it is one matrix written into a linear layer; the cosine and the mean pooling are
the same code the trained strategies use.
"""

from __future__ import annotations

import torch

from tunesmith.data.batching import pad_batch

SCALE = 20.0
"""Cosines lie in [-1, 1] and differ by tenths between labels: scaled by 20 (the similarity scale
of sentence-transformers' ranking loss), the softmax reads them as confident but not certain.
evaluation.temperature_scaling refits the scale on a validation split."""


@torch.no_grad()
def fit_label_head(model, tokenizer, descriptions: list[str], *, max_length: int) -> None:
    """Writes SCALE x the normalised embedding of each description (in label order) into the
    model's linear layer, with zero bias."""
    encoded = tokenizer(descriptions, truncation=True, max_length=max_length)
    features = [{key: encoded[key][i] for key in encoded} for i in range(len(descriptions))]
    batch = pad_batch(features, tokenizer.pad_token_id or 0)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    embeddings = model.embed(**inputs)
    model.train(was_training)
    model.classifier.weight.copy_(SCALE * embeddings.to(model.classifier.weight.dtype))
    model.classifier.bias.zero_()
