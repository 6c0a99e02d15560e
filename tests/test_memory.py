"""train.activation_checkpointing: when auto turns it on, that on changes no loss, and that a
model which cannot checkpoint is refused by name."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import BertConfig

from tests.conftest import tiny_config
from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.errors import TunesmithError
from tunesmith.train import memory


def test_the_estimate_follows_the_published_formula():
    config = BertConfig(num_hidden_layers=2, hidden_size=8, num_attention_heads=2)
    # per layer 16 * 4 * 8 * (34 + 5 * 2 * 16 / 8) = 27,648 values at 2 bytes; 2 layers; fp32 doubles it
    assert memory.activation_bytes(config, batch_size=4, max_length=16) == 2 * 27_648 * 2
    assert memory.activation_bytes(config, batch_size=4, max_length=16, value_bytes=2) == 2 * 27_648
    assert memory.activation_bytes(object(), batch_size=4, max_length=16) is None  # says nothing of its layers


def test_auto_turns_on_only_when_memory_is_short(monkeypatch):
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification(BertConfig(num_hidden_layers=2, hidden_size=8, num_attention_heads=2,
                                                     intermediate_size=16, vocab_size=50))  # fmt: skip
    need = memory.activation_bytes(model.config, batch_size=4, max_length=16)
    said = []
    common = {"batch_size": 4, "max_length": 16, "device": "cpu", "value_bytes": 4, "log": said.append}
    monkeypatch.setattr(memory, "available_bytes", lambda device: need * 4)
    assert not memory.apply_activation_checkpointing(model, "auto", **common)
    assert not model.is_activation_checkpointing and not said
    assert not memory.apply_activation_checkpointing(model, "off", **common)
    monkeypatch.setattr(memory, "available_bytes", lambda device: need)
    assert memory.apply_activation_checkpointing(model, "auto", **common)
    assert model.is_activation_checkpointing and "estimated at" in said[-1]

    class Plain(torch.nn.Module):  # no checkpointable layers
        config = model.config

    with pytest.raises(TunesmithError, match="activation_checkpointing=on: Plain cannot checkpoint"):
        memory.apply_activation_checkpointing(Plain(), "on", **common)
    assert not memory.apply_activation_checkpointing(Plain(), "auto", **common)
    assert "cannot checkpoint" in said[-1]


def _losses(run_dir) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


def test_checkpointing_changes_no_loss(tmp_path, tiny_model_dir, sentiment_csv, capsys, monkeypatch):
    from tunesmith.train import fit

    runs, said, models = {}, {}, {}

    def recorded(model, setting, **kwargs):
        models[setting] = memory._checkpointable(model)
        return memory.apply_activation_checkpointing(model, setting, **kwargs)

    monkeypatch.setattr(fit, "apply_activation_checkpointing", recorded)
    for setting in ("off", "on"):
        train = {"num_epochs": 1, "activation_checkpointing": setting}
        tree = tiny_config(tiny_model_dir, sentiment_csv, tmp_path / setting, train=train, model={"dropout": 0.1})
        runs[setting] = api.train(config_from_dict(tree)).run_dir
        said[setting] = capsys.readouterr().err  # the console writes to stderr
    assert len(_losses(runs["on"])) >= 3
    assert _losses(runs["on"]) == pytest.approx(_losses(runs["off"]), rel=1e-5)  # dropout replayed alike
    assert "Activation checkpointing on" in said["on"] and "Activation checkpointing" not in said["off"]
    assert models["on"].is_activation_checkpointing and not models["off"].is_activation_checkpointing


def test_the_pooled_classifier_checkpoints_its_encoder(tiny_model_dir):
    from tunesmith.models.load import load_mean_pooled_classifier, resolve_model

    pooled, _ = load_mean_pooled_classifier(
        resolve_model(str(tiny_model_dir)),
        problem_type="single_label_classification",
        label_names=["a", "b"],
        dropout=None,
    )
    common = {"batch_size": 4, "max_length": 16, "device": "cpu", "value_bytes": 4, "log": lambda m: None}
    assert memory.apply_activation_checkpointing(pooled, "on", **common)
    assert memory._checkpointable(pooled).is_activation_checkpointing
