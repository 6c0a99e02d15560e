"""NER: tag schemes, subword alignment, readers with clear errors, training and predict."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from tests.conftest import tiny_config
from tests.makers import ner_lines
from tunesmith import api
from tunesmith.errors import TunesmithError
from tunesmith.tasks.token_classification import (
    IGNORE,
    align,
    bioes_to_iob2,
    check_tags,
    entities_in_text,
    entity_metrics,
    iob2_to_bioes,
    read_conll,
    words_with_offsets,
)


def test_iob2_and_bioes_convert_both_ways():
    iob2 = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "I-LOC", "O", "I-ORG"]
    bioes = ["B-PER", "E-PER", "O", "S-LOC", "B-LOC", "I-LOC", "E-LOC", "O", "S-ORG"]
    assert iob2_to_bioes(iob2) == bioes
    assert bioes_to_iob2(bioes) == [t if t != "I-ORG" else "B-ORG" for t in iob2]  # a stray I- starts an entity
    assert iob2_to_bioes(bioes_to_iob2(bioes)) == bioes


def test_tags_outside_the_scheme_name_the_place():
    check_tags(["B-PER", "I-PER", "O"], "iob2", "f")
    with pytest.raises(TunesmithError, match=r"train.txt, line 7: tag 'E-PER' \(word 2\) is not a IOB2 tag"):
        check_tags(["B-PER", "E-PER"], "iob2", "train.txt, line 7")
    with pytest.raises(TunesmithError, match="tag 'PER' "):
        check_tags(["PER"], "bioes", "x")


def test_alignment_first_subword_and_all_subwords():
    names = ["O", "B-PER", "I-PER"]
    # words: [Blackburn (3 subwords), said (1)]; special tokens around
    word_ids = [None, 0, 0, 0, 1, None]
    assert align(word_ids, [1, 0], names, all_subwords=False) == [IGNORE, 1, IGNORE, IGNORE, 0, IGNORE]
    assert align(word_ids, [1, 0], names, all_subwords=True) == [IGNORE, 1, 2, 2, 0, IGNORE]


def test_conll_reader_names_a_malformed_line(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("-DOCSTART- O\n\nEU B-ORG\nrejects O\n\nPeter B-PER\nBlackburn\n")
    with pytest.raises(TunesmithError, match=r"train.txt, line 7: expected 'token TAG'"):
        read_conll(path)
    path.write_text("EU B-ORG\nrejects O\n\nPeter B-PER\nBlackburn I-PER\n")
    sentences = read_conll(path)
    assert [s["tokens"] for s in sentences] == [["EU", "rejects"], ["Peter", "Blackburn"]]
    assert sentences[1]["where"].endswith("line 4")


def test_entities_get_character_offsets_and_metrics_are_entity_level():
    text = "Peter Blackburn visited Paris."
    words = words_with_offsets(text)
    entities = entities_in_text(text, ["B-PER", "I-PER", "O", "B-LOC", "O"], [0.9, 0.7, 0.99, 0.8, 0.99], words, "iob2")
    assert entities == [{"text": "Peter Blackburn", "label": "PER", "start": 0, "end": 15, "score": 0.8},
                        {"text": "Paris", "label": "LOC", "start": 24, "end": 29, "score": 0.8}]  # fmt: skip
    gold = [["B-PER", "I-PER", "O", "B-LOC", "O"]]
    half = [["B-PER", "O", "O", "B-LOC", "O"]]  # the person is cut short: wrong entity
    scores = entity_metrics(gold, half, "iob2")
    assert scores["precision"] == pytest.approx(0.5) and scores["recall"] == pytest.approx(0.5)
    assert scores["per_type"]["LOC"]["f1"] == 1.0 and scores["per_type"]["PER"]["f1"] == 0.0


def ner_file(path, count: int, seed: int) -> None:
    path.write_text(ner_lines(count, seed))


def test_a_tiny_tagger_trains_evaluates_and_predicts_spans(tmp_path, tiny_model_dir):
    data = tmp_path / "train.txt"
    ner_file(data, 160, seed=1)
    config = tiny_config(tiny_model_dir, data, tmp_path / "run", task={"type": "token_classification"},
                         train={"num_epochs": 6, "learning_rate": 5e-3})  # fmt: skip
    result = api.train(config)
    test = result.metrics["test"]
    assert test["f1"] > 0.6 and set(test["per_type"]) == {"LOC", "PER"}
    assert json.loads((result.run_dir / "task.json").read_text())["label_names"] == ["O", "B-LOC", "B-PER"]
    [row] = api.predict(result.run_dir, ["Alice went to Oslo today"])
    found = {(e["text"], e["label"]) for e in row["entities"]}
    assert ("Alice", "PER") in found or ("Oslo", "LOC") in found
    for e in row["entities"]:
        assert row["text"][e["start"] : e["end"]] == e["text"] and 0 < e["score"] <= 1
    other = tmp_path / "other.txt"
    ner_file(other, 20, seed=2)
    assert api.evaluate(result.run_dir, other)["count"] == 20


def test_lora_tagger_keeps_a_full_classifier_head_and_learns(tmp_path, tiny_model_dir):
    data = tmp_path / "train.txt"
    ner_file(data, 160, seed=1)
    config = tiny_config(tiny_model_dir, data, tmp_path / "run", task={"type": "token_classification"},
                         model={"name": str(tiny_model_dir), "max_length": 32, "strategy": "lora",
                                "lora": {"target_modules": ["query", "value"], "rank": 8}},
                         train={"num_epochs": 6, "learning_rate": 1e-2})  # fmt: skip
    result = api.train(config)
    saved = json.loads((result.run_dir / "adapter" / "adapter_config.json").read_text())
    assert saved["task_type"] == "TOKEN_CLS" and "classifier" in saved["modules_to_save"]
    assert result.metrics["test"]["f1"] > 0.5, result.metrics["test"]


def test_jsonl_spans_become_iob2_tags_and_bad_spans_name_the_line(tmp_path, tiny_model_dir):
    from tunesmith.config import DataConfig
    from tunesmith.tasks.token_classification import load_sentences

    path = tmp_path / "spans.jsonl"
    path.write_text(json.dumps({"text": "Dana flew to New York.", "entities": [{"start": 13, "end": 21, "label": "LOC"},
                                                                          {"start": 0, "end": 4, "label": "PER"}]}) + "\n")  # fmt: skip
    frame, entry = load_sentences(str(path), DataConfig(train=str(path)), "bioes")
    assert entry["format"] == "spans"
    assert list(frame["tokens"][0]) == ["Dana", "flew", "to", "New", "York", "."]
    assert list(frame["tags"][0]) == ["S-PER", "O", "O", "B-LOC", "E-LOC", "O"]  # converted to the training scheme
    path.write_text(json.dumps({"text": "Dana", "entities": [{"start": 0, "end": 9, "label": "PER"}]}) + "\n")
    with pytest.raises(
        TunesmithError, match=r"spans.jsonl, line 1: entity .* needs integer start < end within the text"
    ):
        load_sentences(str(path), DataConfig(train=str(path)), "iob2")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tokenizer.is_fast


def test_the_tagger_speaks_the_task_contract(tmp_path, tiny_model_dir):
    """prepare -> load_processor -> encode -> load_model -> a few steps -> evaluate, score (with
    sentence-bootstrap intervals), predict and card, with no api in between."""
    import torch

    from tunesmith.config import config_from_dict
    from tunesmith.models.load import pad_token_id, resolve_model
    from tunesmith.tasks.contract import ScoreContext
    from tunesmith.tasks.token_classification import TokenClassificationTask

    data_file = tmp_path / "train.txt"
    ner_file(data_file, 60, seed=1)
    config = config_from_dict(tiny_config(tiny_model_dir, data_file, tmp_path / "run",
                                          task={"type": "token_classification"}))  # fmt: skip
    task = TokenClassificationTask.from_config(config)
    assert task.max_length == 32 and not task.label_names and task.auto_class == "AutoModelForTokenClassification"
    data = task.prepare(config)
    assert task.label_names == ["O", "B-LOC", "B-PER"] and set(data.splits) == {"train", "validation", "test"}
    resolved = resolve_model(config.model.name)
    tokenizer = task.load_processor(resolved)
    encoded = task.encode(tokenizer, data.splits)
    assert encoded.notes == ["Labels: O, B-LOC, B-PER"] and encoded.truncated == {
        "train": 0,
        "validation": 0,
        "test": 0,
    }
    model, new = task.load_model(resolved, 0.0)
    assert any(name.startswith("classifier") for name in new)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for start in range(0, len(encoded.features["train"]), 8):
        batch = task.collate(encoded.features["train"][start : start + 8], pad_token_id(tokenizer))
        (task.batch_loss(model, batch, "cpu") / task.count(encoded.features["train"][start : start + 8])).backward()
        optimizer.step()
        optimizer.zero_grad()
    loop = task.evaluate(model, encoded.features["validation"], batch_size=8, pad_token_id=pad_token_id(tokenizer),
                         device="cpu")  # fmt: skip
    assert set(loop) >= set(task.metric_names)
    context = ScoreContext(artifact=lambda name, suffix: tmp_path / f"{name}{suffix}", name="test", evaluation=config.evaluation,
                           seed=0, batch_size=8)  # fmt: skip
    assert task.calibrate(model, tokenizer, encoded.features["validation"], batch_size=8, device="cpu") is None
    scored = task.score(model, tokenizer, data.splits["test"], encoded.features["test"], context)
    assert scored["count"] == len(data.splits["test"]) and scored["confidence_level"] == 0.95
    for name in ("f1", "precision", "recall"):
        interval = scored["confidence_intervals"][name]
        assert (
            interval["estimate"] == pytest.approx(scored[name]) and interval["low"] <= scored[name] <= interval["high"]
        )
    [row] = task.predict(model, tokenizer, ["Alice went to Oslo today"])
    assert row["text"] == "Alice went to Oslo today" and isinstance(row["entities"], list)
    with pytest.raises(TunesmithError, match=r"input 2: a token_classification run takes texts, not a dict"):
        task.predict(model, tokenizer, ["Alice", {"question": "who?", "context": "Alice"}])
    card = task.card(data.manifest, 32, 0)
    assert card.title == "Named-entity tagger" and card.usage == '`tunesmith predict RUN_DIR --text "..."`.'
    assert card.data.startswith("Format: conll; {'sentences': ")
    again = TokenClassificationTask.from_config(config, task.to_dict())
    assert again.label_names == task.label_names and again.to_dict() == task.to_dict()
    frame, entry = again.read(str(data_file), config.data)
    assert len(frame) == 60 and entry["format"] == "conll"


def test_datasets_sources_read_tokens_and_classlabel_tags_and_name_row_and_column(tmp_path):
    """A save_to_disk folder in the Hub's CoNLL-2003 layout: ClassLabel ids read as their names
    (training and inspect); ids without names and missing columns are refused, naming them."""
    import datasets

    from tunesmith.config import config_from_dict
    from tunesmith.tasks.token_classification import TokenClassificationTask, load_sentences

    names = ["O", "B-PER", "I-PER", "B-LOC"]
    rows = {"tokens": [["Ana", "Silva", "left", "Porto"], ["Rain", "again"]], "ner_tags": [[1, 2, 0, 3], [2, 0]]}
    tags = datasets.Sequence(datasets.ClassLabel(names=names))
    datasets.Dataset.from_dict(rows, features=datasets.Features(
        {"tokens": datasets.Sequence(datasets.Value("string")), "ner_tags": tags})).save_to_disk(tmp_path / "named")  # fmt: skip
    data = config_from_dict({"task": {"type": "token_classification"}, "data": {"train": "x.txt"}}).data
    frame, entry = load_sentences(str(tmp_path / "named"), data, "iob2")
    assert frame["tags"].tolist() == [["B-PER", "I-PER", "O", "B-LOC"], ["B-PER", "O"]]  # I- start converted
    assert entry["columns"] == {"tokens": "tokens", "tags": "ner_tags"} and entry["cleaning"]["words"] == 6
    assert entry["dataset"]["class_label_names"]["ner_tags"] == names
    with pytest.raises(TunesmithError, match=r"named, row 2, column 'ner_tags' \(word 1\): tag 'I-PER' starts"):
        load_sentences(str(tmp_path / "named"), data, "iob2", invalid_tags="error")
    records = TokenClassificationTask(scheme="iob2").inspection_records(str(tmp_path / "named"), data)
    assert records.targets == ["B-PER I-PER O B-LOC", "I-PER O"] and len(records.findings) == 1
    datasets.Dataset.from_dict(rows).save_to_disk(tmp_path / "ids")  # plain ints: no names to read
    with pytest.raises(TunesmithError, match=r"ids, row 1, column 'ner_tags': tag 1 is not a tag name"):
        load_sentences(str(tmp_path / "ids"), data, "iob2")
    datasets.Dataset.from_dict({"words": rows["tokens"], "labels": rows["ner_tags"]}).save_to_disk(tmp_path / "other")
    with pytest.raises(TunesmithError, match=r"other: token_classification reads a tokens column \('tokens'.*"
                                             r"the columns are \['words', 'labels'\]"):  # fmt: skip
        load_sentences(str(tmp_path / "other"), data, "iob2")
