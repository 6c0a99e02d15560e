"""The row-gradient embedding path trains exactly like the stock embedding backward."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from tunesmith.train.embedding_grad import install_row_gradients


def _model() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=300, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0,
    )  # fmt: skip
    return BertForSequenceClassification(config)


def _batches(seed: int, count: int) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        ids = torch.randint(1, 60, (4, 7), generator=generator)  # a small vocabulary slice: rows repeat
        ids[:2, 5:] = 0  # padding: the padding row must get no gradient
        batches.append({"input_ids": ids, "attention_mask": (ids != 0).long(),
                        "labels": torch.randint(0, 2, (4,), generator=generator)})  # fmt: skip
    return batches


def _train(model, batches, accumulation: int = 2) -> list[torch.Tensor]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    grads = []
    for start in range(0, len(batches), accumulation):
        for batch in batches[start : start + accumulation]:
            model(**batch).loss.backward()
        grads.append(model.get_input_embeddings().weight.grad.clone())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return grads


def test_row_gradients_match_the_stock_backward_and_adamw_steps():
    stock, fast = _model(), _model()
    handle = install_row_gradients(fast)
    assert handle is not None
    batches = _batches(seed=1, count=6)
    stock_grads, fast_grads = _train(stock, batches), _train(fast, batches)
    for a, b in zip(stock_grads, fast_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert fast_grads[0][0].abs().sum() == 0  # padding row
    assert fast_grads[1][100:].abs().sum() == 0  # rows never used stay zero after re-zeroing
    for (name, p), q in zip(stock.named_parameters(), fast.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_removed_path_leaves_a_plain_module_and_eval_skips_it():
    model = _model()
    reference = copy.deepcopy(model)
    handle = install_row_gradients(model)
    ids = torch.randint(1, 60, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, reference(input_ids=ids).logits)
    handle.remove()
    assert "forward" not in vars(model.get_input_embeddings())
    assert set(model.state_dict()) == set(reference.state_dict())


def test_frozen_embedding_gets_no_gradient_and_tied_weights_are_left_alone():
    model = _model()
    install_row_gradients(model)
    model.get_input_embeddings().weight.requires_grad_(False)
    model(**_batches(seed=2, count=1)[0]).loss.backward()
    assert model.get_input_embeddings().weight.grad is None

    tied = _model()
    head = torch.nn.Linear(16, 300, bias=False)
    head.weight = tied.get_input_embeddings().weight
    tied.get_output_embeddings = lambda: head
    assert install_row_gradients(tied) is None


@pytest.mark.parametrize("padding_idx", [None, 3])
def test_padding_index_follows_the_module(padding_idx):
    embedding = torch.nn.Embedding(10, 4, padding_idx=padding_idx)
    holder = torch.nn.Module()
    holder.embedding = embedding
    holder.get_input_embeddings = lambda: embedding
    reference = copy.deepcopy(embedding)
    install_row_gradients(holder)
    ids = torch.tensor([[3, 3, 5, 1]])
    embedding(ids).pow(2).sum().backward()
    reference(ids).pow(2).sum().backward()
    torch.testing.assert_close(embedding.weight.grad, reference.weight.grad)
