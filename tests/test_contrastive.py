"""model.strategy=contrastive: the pair sampler, the cosine training, the fitted head, and a run
that the later stages take like any classifier."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression

from tests.conftest import sentiment_rows, tiny_config
from tunesmith import api
from tunesmith.config import ContrastiveConfig, config_from_dict
from tunesmith.errors import TunesmithError
from tunesmith.models.pooled import PooledTextClassifier, pooled_classifier
from tunesmith.ship.export import export
from tunesmith.train.contrastive import ContrastiveObjective, sample_pairs


def test_pairs_are_balanced_labelled_right_and_seeded():
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2])  # uneven classes
    pairs = sample_pairs(labels, iterations=5, seed=3)
    assert pairs == sample_pairs(labels, iterations=5, seed=3)
    assert pairs != sample_pairs(labels, iterations=5, seed=4)
    alike = [(a, b) for a, b, target in pairs if target == 1.0]
    unlike = [(a, b) for a, b, target in pairs if target == 0.0]
    assert len(alike) == len(unlike) == 5 * len(labels)  # one of each per row and iteration
    assert all(labels[a] == labels[b] for a, b in alike) and all(labels[a] != labels[b] for a, b in unlike)
    assert all(a != b for a, b in alike if labels[a] != 2)  # a row is paired with itself only when alone
    assert [(a, b) for a, b in alike if labels[a] == 2] == [(8, 8)] * 5
    assert {a for a, _, _ in pairs} == set(range(len(labels)))


def test_one_label_gives_only_alike_pairs():
    pairs = sample_pairs(np.array([1, 1, 1]), iterations=2, seed=0)
    assert len(pairs) == 6 and {t for *_, t in pairs} == {1.0}


def _features(tokenizer, texts: list[str], labels: list[int]) -> list[dict]:
    encoded = tokenizer(texts, truncation=True, max_length=32)
    return [{"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": label}
            for ids, mask, types, label in zip(encoded["input_ids"], encoded["attention_mask"],
                                               encoded["token_type_ids"], labels)]  # fmt: skip


def _pooled(tiny_model_dir, label_names):
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(0)
    encoder = AutoModel.from_pretrained(tiny_model_dir)
    return pooled_classifier(encoder, label_names=label_names), AutoTokenizer.from_pretrained(tiny_model_dir)


def _cosine_gap(model, batch, labels: np.ndarray) -> float:
    """Mean cosine of same-label pairs minus that of different-label pairs."""
    model.eval()
    with torch.no_grad():
        vectors = F.normalize(model.embed(**{k: batch[k] for k in ("input_ids", "attention_mask")}), dim=-1)
    cosine = (vectors @ vectors.T).numpy()
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~np.eye(len(labels), dtype=bool)
    return float(cosine[same & off_diagonal].mean() - cosine[~same].mean())


def test_contrastive_steps_pull_same_label_texts_together(tiny_model_dir):
    from tunesmith.tasks.classification import TextClassificationTask

    rows = sentiment_rows(24, seed=1)
    label_names = ["negative", "positive"]
    labels = np.array([label_names.index(r["label"]) for r in rows])
    model, tokenizer = _pooled(tiny_model_dir, label_names)
    features = _features(tokenizer, [r["text"] for r in rows], labels.tolist())
    task = TextClassificationTask(type="single_label", label_names=label_names)
    objective = ContrastiveObjective(task, features, ContrastiveConfig(iterations=4), seed=0,
                                     pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    everything = task.collate(features, tokenizer.pad_token_id)
    before = _cosine_gap(model, everything, labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    generator = np.random.default_rng(0)
    for _ in range(3 * len(objective.pairs) // 16):  # three passes' worth of random batches of 16 pairs
        picked = [objective.pairs[i] for i in generator.permutation(len(objective.pairs))[:16]]
        loss = objective.batch_loss(model, objective.collate(picked, tokenizer.pad_token_id), "cpu")
        optimizer.zero_grad()
        (loss / len(picked)).backward()
        optimizer.step()
    after = _cosine_gap(model, everything, labels)
    assert before < 0.05  # a random encoder barely tells the labels apart
    assert after > before + 0.3, (before, after)


@pytest.mark.parametrize("classes", [2, 3])
def test_the_fitted_head_gives_the_logistic_regressions_probabilities(tiny_model_dir, classes):
    from tunesmith.tasks.classification import TextClassificationTask

    rows = sentiment_rows(18, seed=2, classes=classes)
    label_names = sorted({r["label"] for r in rows})
    labels = np.array([label_names.index(r["label"]) for r in rows])
    model, tokenizer = _pooled(tiny_model_dir, label_names)
    features = _features(tokenizer, [r["text"] for r in rows], labels.tolist())
    task = TextClassificationTask(type="single_label", label_names=label_names)
    objective = ContrastiveObjective(task, features, ContrastiveConfig(), seed=0, pad_token_id=tokenizer.pad_token_id)
    objective.fit_head(model, batch_size=4, device="cpu")
    batch = task.collate(features, tokenizer.pad_token_id)
    model.eval()
    with torch.no_grad():
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        embeddings, logits = model.embed(**inputs).double().numpy(), model(**inputs).logits
    reference = LogisticRegression(max_iter=2000).fit(embeddings, labels).predict_proba(embeddings)
    np.testing.assert_allclose(torch.softmax(logits.double(), -1).numpy(), reference, atol=1e-4)


def test_contrastive_is_for_single_label_and_sets_setfits_defaults(tmp_path):
    base = {"data": {"train": "x.csv"}, "runtime": {"output_dir": str(tmp_path / "r")}}
    config = config_from_dict({**base, "model": {"strategy": "contrastive"}})
    assert (config.train.num_epochs, config.train.learning_rate) == (1.0, 2e-5)
    kept = config_from_dict({**base, "model": {"strategy": "contrastive"},
                             "train": {"num_epochs": 4, "learning_rate": 1e-3}})  # fmt: skip
    assert (kept.train.num_epochs, kept.train.learning_rate) == (4, 1e-3)
    with pytest.raises(TunesmithError, match=r"model.strategy=contrastive needs task.type=single_label"):
        config_from_dict({**base, "model": {"strategy": "contrastive"}, "task": {"type": "multi_label"}})


def test_a_contrastive_run_is_an_ordinary_classifier_afterwards(tmp_path, tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    data = tmp_path / "data.csv"
    pd.DataFrame(sentiment_rows(60, seed=4)).to_csv(data, index=False)
    tree = tiny_config(tiny_model_dir, data, tmp_path / "run",
                       model={"strategy": "contrastive", "contrastive": {"iterations": 3}},
                       train={"learning_rate": 1e-3})  # fmt: skip
    result = api.train(config_from_dict(tree))
    run = result.run_dir
    assert result.metrics["test"]["accuracy"] >= 0.75  # the words give the label away
    saved = json.loads((run / "model" / "config.json").read_text())
    assert saved["model_type"] == "tunesmith_pooled" and str(tmp_path) not in json.dumps(saved)
    loaded = AutoModelForSequenceClassification.from_pretrained(run / "model")
    assert isinstance(loaded, PooledTextClassifier)
    predictions = api.predict(run, ["good great excellent", "bad awful terrible"])
    assert [p["label"] for p in predictions] == ["positive", "negative"]
    report = export(run, tmp_path / "onnx", fmt="onnx", log=lambda m: None)
    onnx = report["models"]["model.onnx"]
    assert onnx["label_agreement"] == 1.0 and onnx["max_logit_difference"] < 1e-4
    hf = export(run, tmp_path / "hf", fmt="hf", log=lambda m: None)
    assert hf["models"]["model.safetensors"]["max_logit_difference"] == 0.0
