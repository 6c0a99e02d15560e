"""Export beyond the text classifiers: ONNX for the tagger and the question answerer (parity by
decoded entities and answers; serve from the export answers as the run does), and the merged
transformers directory of a generative run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from safetensors.torch import load_file

from tests.makers import DATA_FILE, tiny_task_config, write_examples
from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.errors import TunesmithError
from tunesmith.ship.export import export
from tunesmith.ship.serve import Predictor, create_app
from tunesmith.tasks import build_task
from tunesmith.tasks.build import TASK_KINDS
from tunesmith.tasks.contract import Exportable, OnnxExportable

LONG_CONTEXT = " ".join(f"item {i} : stone ." for i in range(30)) + " colour : red . city : lima ."
INPUTS = {
    "token_classification": ["Alice went to Paris today", "", "then Bruno and Chen see Kyoto and Lima"],
    "question_answering": [{"question": "what colour ?", "context": "animal : cat . colour : red . city : oslo ."},
                           {"question": "what city ?", "context": LONG_CONTEXT}],  # several windows
}  # fmt: skip
TRAIN = {"token_classification": {"num_epochs": 4, "learning_rate": 1e-2},
         "question_answering": {"num_epochs": 3, "learning_rate": 5e-3}}  # fmt: skip


def _train(kind: str, model_dir, root, count: int, **sections) -> object:
    train_file = write_examples(kind, root / DATA_FILE.get(kind, "train.csv"), count)
    config = tiny_task_config(kind, model_dir, train_file, root / "run")
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    return api.train(config).run_dir


@pytest.mark.parametrize("kind", ["token_classification", "question_answering"])
def test_onnx_export_decodes_as_the_run_and_serves_its_rows(kind, tmp_path, tiny_model_dir):
    run = _train(kind, tiny_model_dir, tmp_path, 60, train=TRAIN[kind])
    tagger = kind == "token_classification"
    report = export(run, tmp_path / "onnx", fmt="onnx", quantize="int8" if tagger else None, log=lambda m: None)
    fp32 = report["models"]["model.onnx"]
    agreement = "entity_agreement" if tagger else "answer_agreement"
    assert fp32["rows"] == 12 and fp32["max_logit_difference"] < 1e-4  # sentences; questions
    assert fp32["label_agreement"] == fp32[agreement] == 1.0
    if tagger:
        int8 = report["models"]["model_int8.onnx"]
        assert 0 <= int8["token_agreement"] <= 1 and int8["max_logit_difference"] > fp32["max_logit_difference"]
    meta = json.loads((tmp_path / "onnx" / "tunesmith.json").read_text())
    assert meta["format"] == "onnx" and meta["task"]["type"] == kind
    card = (tmp_path / "onnx" / "README.md").read_text()
    assert "## This export" in card and "model.onnx" in card
    served_from = Predictor(tmp_path / "onnx", onnx_file="model.onnx")
    with TestClient(create_app(tmp_path / "onnx", predictor=served_from)) as client:
        response = client.post("/predict", json={"inputs": INPUTS[kind]})
    assert response.status_code == 200, response.text
    served, direct = response.json()["predictions"], api.predict(run, INPUTS[kind])
    assert _without_scores(served) == _without_scores(direct)
    assert _scores(served) == pytest.approx(_scores(direct), abs=1e-4)
    if tagger:
        assert any(row["entities"] for row in direct), direct  # spans to compare, not only empty lists
    else:
        windows = served_from.scorer.export_features(served_from.tokenizer, INPUTS[kind][1:])
        assert len(windows) > 1 and all(not row["no_answer"] for row in direct)


def _without_scores(rows: list[dict]) -> list[dict]:
    """The rows without their scores (and their entities' scores), which float noise may move."""
    return [{key: [{k: v for k, v in e.items() if k != "score"} for e in value] if key == "entities" else value
             for key, value in row.items() if key != "score"} for row in rows]  # fmt: skip


def _scores(rows: list[dict]) -> list[float]:
    found = []
    for row in rows:
        found += [e["score"] for e in row.get("entities", [])] + ([row["score"]] if "score" in row else [])
    return found


@pytest.mark.parametrize("kind", TASK_KINDS)
def test_every_kind_exports_hf_and_the_onnx_kinds_speak_the_onnx_contract(kind):
    task = build_task(config_from_dict({"task": {"type": kind}}))
    assert "export" in task.stages and isinstance(task, Exportable) and "hf" in task.export_formats
    assert ("onnx" in task.export_formats) == isinstance(task, OnnxExportable)
    assert set(task.export_description()) >= {"inputs", "text_normalisation"}


def test_tagger_parity_counts_sentences_whose_entities_differ():
    task = build_task(config_from_dict({"task": {"type": "token_classification"}}), {"label_names": ["O", "B-PER",
                                                                                                    "I-PER"]})  # fmt: skip
    features = [{"word_ids": [-1, 0, 1, 2, -1], "words": 3}] * 2
    logits = np.full((5, 3), -5.0, dtype=np.float32)
    logits[:, 0] = 5.0  # every word O
    person = logits.copy()
    person[1] = [-5.0, 5.0, -5.0]  # word 0 starts a person
    moved = person.copy()
    moved[2] = [-5.0, -5.0, 5.0]  # ... which now runs on to word 1: another span
    figures = task.export_parity([person, logits], [moved, logits + 1e-3], features)
    assert figures["entity_agreement"] == figures["label_agreement"] == 0.5
    assert figures["token_agreement"] == pytest.approx(5 / 6) and figures["max_logit_difference"] == 10.0
    assert task.export_parity([person], [person.copy()], features[:1])["label_agreement"] == 1.0


def test_answer_parity_counts_questions_whose_best_span_differs():
    task = build_task(config_from_dict({"task": {"type": "question_answering"}}))
    context = "colour : red ."
    offsets = [None, None, [0, 6], [7, 8], [9, 12], [13, 14], None]
    features = [{"example": 0, "offsets": offsets, "context": context, "answers": []},
                {"example": 1, "offsets": offsets, "context": context, "answers": []}]  # fmt: skip
    red = np.zeros((7, 2), dtype=np.float32)
    red[4] = 6.0  # "red" starts and ends at token 4
    colour = red.copy()
    colour[2, 0] = 9.0  # the best start moves to "colour": the span becomes "colour : red"
    figures = task.export_parity([red, red], [colour, red], features)
    assert figures["answer_agreement"] == figures["label_agreement"] == 0.5 and figures["rows"] == 2
    assert task.rows_from_logits([{"question": "what colour ?"}], features[:1], [red])[0]["answer"] == "red"


def test_hf_export_of_a_lora_language_model_is_merged_and_reloads_identically(tmp_path, tiny_llama_dir):
    run = _train("causal_lm", tiny_llama_dir, tmp_path, 10, model={"strategy": "lora", "lora": {"rank": 4}},
                 train={"num_epochs": 1})  # fmt: skip
    report = export(run, tmp_path / "hf", fmt="hf", rows=2, log=lambda m: None)
    figures = report["models"]["model.safetensors"]
    assert figures["max_parameter_difference"] == 0.0 and figures["encoding_identical"] is True
    assert set(figures["metrics"]) >= {"loss", "perplexity"} and figures["max_metric_difference"] == 0.0
    out = tmp_path / "hf"
    assert not (out / "adapter_config.json").exists()  # merged: a plain model, no adapter
    weights = load_file(out / "model.safetensors")
    assert not any("lora" in name for name in weights)
    assert weights.keys() == load_file(run / "model" / "model.safetensors").keys()
    assert (out / "tokenizer_config.json").is_file() and json.loads((out / "tunesmith.json").read_text())[
        "model"
    ] == "."
    card = (out / "README.md").read_text()
    assert card.startswith((run / "README.md").read_text().rstrip("\n")) and "## This export" in card
    assert Predictor(out).predict(["Item 3: repeat the word blue."]) == api.predict(
        run, ["Item 3: repeat the word blue."]
    )
    with pytest.raises(TunesmithError, match="--format onnx does not cover causal_lm runs; choose "):
        export(run, tmp_path / "onnx", fmt="onnx", log=lambda m: None)
    assert not (tmp_path / "onnx").exists()
