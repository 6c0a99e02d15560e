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


def test_the_task_contract_on_a_tiny_t5(tiny_t5_dir, tmp_path):
    """from_config, prepare, encode, score, predict and card, called as the stages call them."""
    from tunesmith.config import EvaluationConfig, config_from_dict
    from tunesmith.models.load import resolve_model
    from tunesmith.tasks.contract import ScoreContext
    from tunesmith.tasks.seq2seq import Seq2SeqTask

    config = config_from_dict({
        "task": {"type": "seq2seq", "source_prefix": "summarize: "},
        "data": {"train": str(_pairs_file(tmp_path)), "val_fraction": 0.1, "test_fraction": 0.1},
        "model": {"name": str(tiny_t5_dir), "max_length": 12, "max_target_length": 8},
        "generation": {"max_new_tokens": 4, "max_examples": 3},
    })  # fmt: skip
    task = Seq2SeqTask.from_config(config)
    assert (task.prefix, task.max_length, task.max_target_length) == ("summarize: ", 12, 8)
    assert (task.auto_class, task.forgetting_probe, task.peft_task_type) == ("AutoModelForSeq2SeqLM", "embedding",
                                                                              "SEQ_2_SEQ_LM")  # fmt: skip
    data = task.prepare(config)
    resolved = resolve_model(str(tiny_t5_dir))
    tokenizer = task.load_processor(resolved)
    encoded = task.encode(tokenizer, data.splits)
    assert encoded.truncated["train"] == len(data.splits["train"])  # every source is longer than 12 tokens
    assert encoded.notes[0] == f"train: {len(data.splits['train'])} of {len(data.splits['train'])} pairs truncated " \
        "(source 12, target 8 tokens)"  # fmt: skip
    model, _ = task.load_model(resolved, None)
    logged: list[str] = []
    context = ScoreContext(artifact=lambda name, suffix: tmp_path / f"held_{name}{suffix}", name="held",
                           evaluation=EvaluationConfig(bootstrap_samples=0), seed=0, batch_size=4,
                           log=logged.append)  # fmt: skip
    metrics = task.score(model, tokenizer, data.splits["test"], encoded.features["test"], context)
    assert metrics["generated"] == 3 and "confidence_intervals" not in metrics and metrics["perplexity"] > 1
    assert logged == ["generating for 3 records"]
    assert json.loads((tmp_path / "held_generations.jsonl").read_text().splitlines()[0])["prompt"].startswith("Note")
    rows = task.predict(model, tokenizer, ["Note 1: blue."])
    assert rows[0]["source"] == "Note 1: blue." and isinstance(rows[0]["generated"], str)
    with pytest.raises(TunesmithError, match="input 1: a seq2seq run takes texts, not a int"):
        task.predict(model, tokenizer, [3])
    card = task.card(data.manifest, 12, 5)
    assert card.title == "Sequence-to-sequence model" and "chat" not in card.usage
    assert "Columns: {'source': 'document', 'target': 'summary'}" in card.data and "(5 in training)" in card.limitation
