"""Seq2seq on a tiny T5 built from a config: pairs load with clear errors, targets end with EOS,
the model trains, generates and is scored with ROUGE/BLEU."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import tunesmith
from tunesmith.errors import TunesmithError
from tunesmith.tasks.seq2seq import detect_pair, encode_pairs, pairs_frame

WORDS = ["red", "green", "blue", "amber", "violet"]


def _pairs_file(tmp_path, count=60) -> Path:
    rows = [{"document": f"Note {i}: the colour of the day is {WORDS[i % 5]}, as agreed.", "summary": WORDS[i % 5]}
            for i in range(count)]  # fmt: skip
    path = tmp_path / "pairs.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_pairs_are_detected_and_bad_rows_name_the_record():
    assert detect_pair(["id", "document", "summary"], None, None, "f.csv") == ("document", "summary")
    with pytest.raises(TunesmithError, match="data.text_column"):
        detect_pair(["a", "b"], None, None, "f.csv")
    with pytest.raises(TunesmithError, match="no column 'body'"):
        detect_pair(["a", "b"], "body", "b", "f.csv")
    frame = pd.DataFrame({"source": ["one", "two"], "target": ["1", None]})
    with pytest.raises(TunesmithError, match="f.csv, record 2: the target is missing"):
        pairs_frame(frame, "source", "target", "f.csv")


def test_targets_end_with_eos_and_the_prefix_is_added(tiny_t5_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_t5_dir)
    features, truncated = encode_pairs(tokenizer, ["a long source " * 20, "short"], ["done", "word " * 50],
                                       prefix="summarize: ", max_length=16, max_target_length=8)  # fmt: skip
    assert truncated == 2
    assert all(f["labels"][-1] == tokenizer.eos_token_id for f in features)
    assert len(features[0]["input_ids"]) == 16 and len(features[1]["labels"]) == 8
    assert tokenizer.decode(features[1]["input_ids"]) == "summarize: short"


def test_tiny_t5_trains_generates_and_is_scored(tiny_t5_dir, tmp_path):
    config = {
        "task": {"type": "seq2seq"},
        "data": {"train": str(_pairs_file(tmp_path)), "val_fraction": 0.1, "test_fraction": 0.1},
        "model": {"name": str(tiny_t5_dir), "max_length": 32, "max_target_length": 8},
        "train": {"num_epochs": 6, "batch_size": 8, "learning_rate": 1e-2, "warmup_ratio": 0.0},
        "generation": {"max_new_tokens": 4, "max_examples": 6},
        "runtime": {"output_dir": str(tmp_path / "run"), "progress": False, "log_every_steps": 1, "device": "cpu"},
    }
    result = tunesmith.train(config)
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["split"] == "train"]
    assert losses[-1] < losses[0] * 0.5
    test = result.metrics["test"]
    assert {"rouge1", "rouge2", "rougeL", "bleu", "chrf", "exact_match", "perplexity"} <= test.keys()
    assert test["generated"] == 6
    generations = [json.loads(line) for line in (result.run_dir / "generations_test.jsonl").read_text().splitlines()]
    assert all(g["generated"] for g in generations)  # the trained model produces text
    assert "Sequence-to-sequence model" in (result.run_dir / "README.md").read_text()
    out = tunesmith.predict(result.run_dir, ["Note 99: the colour of the day is blue, as agreed."])
    assert out[0]["source"].startswith("Note 99") and isinstance(out[0]["generated"], str)
