"""Each strategy trains exactly the parameters it should, and loss falls on learnable data."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from tests.conftest import sentiment_rows, tiny_config
from tunesmith.api import train
from tunesmith.config import config_from_dict
from tunesmith.models.adapt import apply_strategy, count_parameters, layer_groups
from tunesmith.models.load import load_sequence_classifier, load_tokenizer, resolve_model
from tunesmith.runs import RunDir
from tunesmith.tasks.classification import TextClassificationTask, encode_features
from tunesmith.train.loop import run_training


def _train_steps(tiny_model_dir, tmp_path, model_section: dict, steps: int, **train):
    """Builds the tiny classifier with a strategy, snapshots it, trains `steps` steps."""
    config = config_from_dict(
        tiny_config(tiny_model_dir, "unused.csv", tmp_path / "run", model=model_section,
                    train={"max_steps": steps, "num_epochs": 100, **train})
    )  # fmt: skip
    torch.manual_seed(0)
    task = TextClassificationTask("single_label", ["negative", "positive"])
    resolved = resolve_model(str(tiny_model_dir))
    tokenizer = load_tokenizer(resolved)
    model, new = load_sequence_classifier(
        resolved, num_labels=2, problem_type=task.problem_type, label_names=task.label_names, dropout=0.0
    )
    model, unfreezer = apply_strategy(model, config.model, new)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rows = sentiment_rows(64)
    features, _ = encode_features(
        tokenizer, [r["text"] for r in rows], task.encode_labels(pd.Series([r["label"] for r in rows]), "rows"), 32
    )
    run = RunDir.create(tmp_path / "run")
    result = run_training(
        model=model, task=task, train_features=features, val_features=[], config=config, run=run,
        pad_token_id=tokenizer.pad_token_id, unfreezer=unfreezer, log=lambda message: None,
    )  # fmt: skip
    after = dict(result.model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    return result.model, changed, set(before), unfreezer


def _group_names(model) -> dict[str, set[str]]:
    groups = layer_groups(model)
    named = {"embeddings": set(groups[0]), "head": set(groups[-1])}
    for i, names in enumerate(groups[1:-1]):
        named[f"layer{i}"] = set(names)
    return named


def test_layer_groups_cover_every_parameter_once(tiny_model_dir):
    resolved = resolve_model(str(tiny_model_dir))
    model, new = load_sequence_classifier(resolved, num_labels=3, problem_type="single_label_classification",
                                          label_names=["a", "b", "c"], dropout=None)  # fmt: skip
    groups = layer_groups(model)
    flat = [n for g in groups for n in g]
    assert len(groups) == 4  # embeddings, 2 layers, head
    assert sorted(flat) == sorted(n for n, _ in model.named_parameters())
    assert set(new) <= set(groups[-1])
    assert all("embeddings" in n for n in groups[0])
    assert all(".layer.1." in n for n in groups[2])


def test_full_trains_everything(tiny_model_dir, tmp_path):
    model, changed, names, _ = _train_steps(tiny_model_dir, tmp_path, {"strategy": "full"}, steps=3)
    assert changed == names
    trainable, total = count_parameters(model)
    assert trainable == total


def test_freeze_trains_head_and_top_layers_only(tiny_model_dir, tmp_path):
    model, changed, _, _ = _train_steps(
        tiny_model_dir, tmp_path, {"strategy": "freeze", "freeze": {"trainable_layers": 1}}, steps=3
    )
    groups = _group_names(model)
    assert changed == groups["head"] | groups["layer1"]
    assert not changed & (groups["embeddings"] | groups["layer0"])


def test_freeze_zero_layers_trains_head_alone(tiny_model_dir, tmp_path):
    model, changed, _, _ = _train_steps(
        tiny_model_dir, tmp_path, {"strategy": "freeze", "freeze": {"trainable_layers": 0}}, steps=2
    )
    assert changed == _group_names(model)["head"]


@pytest.mark.parametrize(("steps", "open_groups"), [(2, ["head"]), (4, ["head", "layer1"]),
                                                      (6, ["head", "layer1", "layer0"])])  # fmt: skip
def test_gradual_unfreeze_opens_one_group_per_stage(tiny_model_dir, tmp_path, steps, open_groups):
    model, changed, _, unfreezer = _train_steps(
        tiny_model_dir, tmp_path, {"strategy": "gradual_unfreeze", "gradual_unfreeze": {"every_steps": 2}},
        steps=steps,
    )  # fmt: skip
    groups = _group_names(model)
    expected = set().union(*(groups[g] for g in open_groups))
    assert changed == expected
    assert unfreezer.stage == len(open_groups) - 1


def test_gradual_unfreeze_per_epoch(tiny_model_dir, tmp_path):
    # 64 rows / batch 8 = 8 steps an epoch: 10 steps reach the second stage (head + top layer).
    model, changed, _, unfreezer = _train_steps(tiny_model_dir, tmp_path, {"strategy": "gradual_unfreeze"}, steps=10)
    groups = _group_names(model)
    assert unfreezer.stage == 1
    assert changed == groups["head"] | groups["layer1"]


def test_lora_trains_adapters_and_head_only(tiny_model_dir, tmp_path):
    model, changed, names, _ = _train_steps(
        tiny_model_dir, tmp_path, {"strategy": "lora", "lora": {"rank": 4, "target_modules": ["query", "value"]}},
        steps=3,
    )  # fmt: skip
    lora_b = {n for n in names if "lora_B" in n}
    head = {n for n in names if "classifier" in n and "modules_to_save" in n}
    assert lora_b and head
    assert lora_b | head <= changed
    frozen_base = {n for n in names if "lora_" not in n and "modules_to_save" not in n}
    assert not changed & frozen_base
    trainable, total = count_parameters(model)
    assert trainable < total / 10


def test_layerwise_lr_decay_scales_groups(tiny_model_dir, tmp_path):
    from tunesmith.train.optim import build_optimizer

    config = config_from_dict(tiny_config(tiny_model_dir, "x.csv", tmp_path / "r",
                                          train={"learning_rate": 1.0, "layerwise_lr_decay": 0.5}))  # fmt: skip
    resolved = resolve_model(str(tiny_model_dir))
    model, _ = load_sequence_classifier(resolved, num_labels=2, problem_type="single_label_classification",
                                        label_names=["a", "b"], dropout=None)  # fmt: skip
    optimizer = build_optimizer(model, config.train)
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    named = dict(model.named_parameters())
    assert lr_of[id(named["classifier.weight"])] == 1.0
    assert lr_of[id(named["bert.encoder.layer.1.attention.self.query.weight"])] == 0.5
    assert lr_of[id(named["bert.encoder.layer.0.attention.self.query.weight"])] == 0.25
    assert lr_of[id(named["bert.embeddings.word_embeddings.weight"])] == 0.125
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert decay_of[id(named["bert.encoder.layer.0.attention.self.query.bias"])] == 0.0


def test_training_run_learns_and_writes_run_dir(tiny_model_dir, tmp_path, sentiment_csv):
    config = tiny_config(tiny_model_dir, sentiment_csv, tmp_path / "run", train={"num_epochs": 6})
    result = train(config)
    run = result.run_dir
    for name in ("config.yaml", "data_manifest.json", "environment.json", "metrics.jsonl", "metrics.json",
                 "task.json", "README.md", "confusion_matrix_test.png", "training_curves.png", "model/config.json",
                 "model/model.safetensors", "model/tokenizer.json", "data/train.parquet"):  # fmt: skip
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["split"] == "train"]
    assert all(loss == loss and loss < float("inf") for loss in losses)
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3
    assert result.metrics["test"]["accuracy"] >= 0.9
    manifest = json.loads((run / "data_manifest.json").read_text())
    assert (
        manifest["splits"]["train"]["rows"]
        + manifest["splits"]["test"]["rows"]
        + manifest["splits"]["validation"]["rows"]
        == 120
    )
    from transformers import AutoModelForSequenceClassification

    loaded = AutoModelForSequenceClassification.from_pretrained(run / "model")
    assert loaded.config.id2label == {0: "negative", 1: "positive"}


def test_lora_run_saves_adapter_and_merged_model(tiny_model_dir, tmp_path, sentiment_csv):
    config = tiny_config(tiny_model_dir, sentiment_csv, tmp_path / "run", train={"num_epochs": 1},
                         model={"strategy": "lora"})  # fmt: skip
    run = train(config).run_dir
    assert (run / "adapter" / "adapter_config.json").is_file()
    from transformers import AutoModelForSequenceClassification

    merged = AutoModelForSequenceClassification.from_pretrained(run / "model")
    assert not any("lora" in n for n, _ in merged.named_parameters())


def test_class_weights_and_oversampling(tiny_model_dir, tmp_path, capfd):
    rows = sentiment_rows(90)
    rows = [r for i, r in enumerate(rows) if r["label"] == "positive" or i % 6 == 1]  # 45 pos vs 8 neg
    path = tmp_path / "imbalanced.jsonl"
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    weighted = train(tiny_config(tiny_model_dir, path, tmp_path / "w", train={"num_epochs": 1},
                                 data={"balance": {"method": "class_weights"}}))  # fmt: skip
    assert weighted.metrics["test"]["count"] > 0
    over = train(tiny_config(tiny_model_dir, path, tmp_path / "o", train={"num_epochs": 1},
                             data={"balance": {"method": "oversample"}}))  # fmt: skip
    manifest = json.loads((over.run_dir / "data_manifest.json").read_text())
    assert manifest["balance"]["rows_after"] > manifest["balance"]["rows_before"]
    train_rows = pd.read_parquet(over.run_dir / "data" / "train.parquet")
    counts = train_rows["label"].value_counts()
    assert counts["negative"] == counts["positive"]
    assert manifest["balance"]["labels_after"] == {"negative": counts["negative"], "positive": counts["positive"]}
    assert "Balanced train by oversample" in capfd.readouterr().err
    unbalanced = train(tiny_config(tiny_model_dir, path, tmp_path / "n", train={"num_epochs": 1}))
    assert unbalanced.metrics["test"]["count"] > 0
    assert "Class imbalance 3.0:1 in train" in capfd.readouterr().err  # and the advice that goes with it
