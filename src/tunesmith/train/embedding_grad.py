"""Input-embedding gradients written into one persistent buffer, touching only the rows used.

The stock embedding backward allocates a fresh dense gradient the size of the vocabulary
matrix on every backward pass and zero-fills it, although a batch touches only a few hundred
rows. For MiniLM that is a 47 MB allocation per step; on CPU, glibc hands allocations that
large out as fresh pages, so every step pays for page faults and a full memset.

While installed, the input embedding's backward adds the batch's rows into a buffer that
lives as long as the training run. The buffer is handed to the optimizer as the weight's
``.grad``; when the loop sets the gradient to None, the next backward re-zeroes only the rows
that were touched since. The optimizer still sees the full dense gradient, so AdamW
(including its decay of untouched rows) computes exactly what it computes with the stock
embedding.

Used for single-process CPU training. Not with DDP: DDP all-reduces gradients from autograd
hooks that this path bypasses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _RowGradEmbedding(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids: torch.Tensor, weight: torch.Tensor, owner: RowGradients) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.owner = owner
        return F.embedding(ids, weight, owner.padding_idx)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (ids,) = ctx.saved_tensors
        ctx.owner.accumulate(ids, grad_output)
        return None, None, None


class RowGradients:
    """Installs the row-gradient path on ``embedding``; ``remove()`` restores the module."""

    def __init__(self, embedding: nn.Embedding):
        self.embedding = embedding
        self.padding_idx = embedding.padding_idx
        self.buffer: torch.Tensor | None = None
        self.touched: list[torch.Tensor] = []

        def forward(ids: torch.Tensor) -> torch.Tensor:
            weight = embedding.weight
            if not (torch.is_grad_enabled() and weight.requires_grad):
                return F.embedding(ids, weight, self.padding_idx)
            return _RowGradEmbedding.apply(ids, weight, self)

        embedding.forward = forward

    def accumulate(self, ids: torch.Tensor, grad_output: torch.Tensor) -> None:
        weight = self.embedding.weight
        ids = ids.reshape(-1)
        rows = grad_output.reshape(-1, grad_output.shape[-1]).to(weight.dtype)
        if self.padding_idx is not None:  # the padding row gets no gradient, as in nn.Embedding
            keep = ids != self.padding_idx
            ids, rows = ids[keep], rows[keep]
        if weight.grad is None:
            if self.buffer is None:
                self.buffer = torch.zeros_like(weight)
            elif self.touched:
                self.buffer.index_fill_(0, torch.cat(self.touched).unique(), 0.0)
            self.touched = []
            weight.grad = self.buffer
        if weight.grad is self.buffer:
            self.touched.append(ids)
        weight.grad.index_add_(0, ids, rows)

    def remove(self) -> None:
        self.embedding.__dict__.pop("forward", None)
        self.buffer, self.touched = None, []


def install_row_gradients(model: nn.Module) -> RowGradients | None:
    """Installs the row-gradient path on the model's input embedding when it applies:
    a plain ``nn.Embedding`` whose weight is not tied to an output layer. A frozen embedding
    keeps the stock path until it is unfrozen."""
    get_input = getattr(model, "get_input_embeddings", None)
    try:
        embedding = get_input() if get_input is not None else None
    except NotImplementedError:  # models without token embeddings (image classifiers)
        return None
    if type(embedding) is not nn.Embedding:
        return None
    if embedding.sparse or embedding.max_norm is not None or embedding.scale_grad_by_freq:
        return None
    get_output = getattr(model, "get_output_embeddings", None)
    output = get_output() if get_output is not None else None
    if output is not None and getattr(output, "weight", None) is embedding.weight:
        return None
    return RowGradients(embedding)
