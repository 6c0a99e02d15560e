"""Batch order and padding for token sequences.

The batch order is a pure function of (seed, epoch), so a resumed run can skip
exactly the batches it already trained on. Length grouping is written here rather
than taken from transformers' LengthGroupedSampler because that sampler yields
indices, not batches, and its order cannot be recomputed per epoch from a seed alone.
"""

from __future__ import annotations

import numpy as np
import torch


def epoch_batches(
    lengths: list[int] | np.ndarray,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    group_by_length: bool = True,
    megabatch_factor: int = 50,
) -> list[list[int]]:
    """The training batches of one epoch, as lists of row indices.

    With group_by_length, rows are shuffled, cut into megabatches of
    ``batch_size * megabatch_factor``, sorted by length inside each, then cut into
    batches whose order is shuffled again: little padding, still random.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if group_by_length:
        lengths = np.asarray(lengths)
        size = batch_size * megabatch_factor
        chunks = [order[i : i + size] for i in range(0, len(order), size)]
        order = np.concatenate([c[np.argsort(-lengths[c], kind="stable")] for c in chunks])
    batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    if group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def eval_batches(lengths: list[int] | np.ndarray, *, batch_size: int) -> list[list[int]]:
    """Evaluation batches sorted by length (least padding); results are re-ordered by index."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]


def length_groups(
    lengths: list[int] | np.ndarray, *, most: int, spread: float = 1.5, least: int = 4
) -> list[list[int]]:
    """Row indices in model calls for inference: shortest first, a call closed at ``most`` rows,
    or once it holds ``least`` rows and the next row is over ``spread`` times its shortest (so
    short rows are not padded to a long one's length, while calls stay large enough to use the
    CPU well). Results are put back in order by index."""
    order = np.argsort(np.asarray(lengths), kind="stable").tolist()
    groups: list[list[int]] = []
    for index in order:
        current = groups[-1] if groups else None
        if (current is None or len(current) >= most
                or (len(current) >= least and lengths[index] > spread * max(lengths[current[0]], 1))):  # fmt: skip
            groups.append([index])
        else:
            current.append(index)
    return groups


def pad_batch(
    features: list[dict], pad_token_id: int, pad_to_multiple_of: int | None = None, fills: dict[str, int] | None = None
) -> dict:
    """Pads token sequences to the longest in the batch and stacks everything into tensors.

    ``fills`` names more per-token sequences and their padding value (e.g. token labels with
    -100). Keys other than the token sequences (labels, index) are stacked as they are.
    """
    longest = max(len(f["input_ids"]) for f in features)
    if pad_to_multiple_of:
        longest = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    batch: dict[str, torch.Tensor] = {}
    fills = {"input_ids": pad_token_id, "token_type_ids": 0, **(fills or {})}
    token_keys = [k for k in fills if k in features[0]]
    for key in token_keys:
        batch[key] = torch.tensor([list(f[key]) + [fills[key]] * (longest - len(f[key])) for f in features])
    batch["attention_mask"] = torch.tensor(
        [[1] * len(f["input_ids"]) + [0] * (longest - len(f["input_ids"])) for f in features]
    )
    for key in features[0]:
        if key not in token_keys and key != "attention_mask":
            batch[key] = torch.tensor([f[key] for f in features])
    return batch
