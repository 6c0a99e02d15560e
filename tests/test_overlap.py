"""Exact overlap between training and held-out inputs: counted for every task, reported in the
log, the data manifest, the model card and the HTML report."""

from __future__ import annotations

import io
import json
import shutil

import pandas as pd
from rich.console import Console

import tunesmith
from tests.conftest import sentiment_rows, tiny_config
from tests.makers import alpaca_rows, image_folder, qa_records, write_table
from tunesmith.config import config_from_dict
from tunesmith.data.overlap import find_overlap, overlap_warnings
from tunesmith.data.prepare import prepare_data, prepare_records
from tunesmith.tasks.causal_lm import CausalLMTask
from tunesmith.tasks.classification import TextClassificationTask
from tunesmith.tasks.image_classification import ImageClassificationTask
from tunesmith.tasks.qa import QuestionAnsweringTask
from tunesmith.tasks.seq2seq import Seq2SeqTask
from tunesmith.tasks.token_classification import TokenClassificationTask


def _texts(frame: pd.DataFrame) -> list[str]:
    return frame["text"].tolist()


def test_counts_rows_and_distinct_inputs_after_collapsing_whitespace_only():
    train = pd.DataFrame({"text": ["a b", "c", "d", "a b"], "row": [1, 2, 3, 4]})
    test = pd.DataFrame({"text": ["a  b", " c\n", "C", "a b", "e"], "row": [1, 2, 3, 4, 5]})
    validation = pd.DataFrame({"text": ["x", "y"], "row": [1, 2]})
    found = find_overlap({"train": train, "validation": validation, "test": test}, _texts,
                         sources={"train": "train.csv", "test": "test.csv"})  # fmt: skip
    assert found["validation"] == {"rows": 0, "of": 2, "distinct_inputs": 0, "examples": []}
    assert found["test"]["rows"] == 3 and found["test"]["of"] == 5  # "C" differs in case: not the same input
    assert found["test"]["distinct_inputs"] == 2
    assert found["test"]["examples"] == [
        {"input": "a b", "row": "test.csv, data row 1", "train_row": "train.csv, data row 1"},
        {"input": "c", "row": "test.csv, data row 2", "train_row": "train.csv, data row 2"},
        {"input": "a b", "row": "test.csv, data row 4", "train_row": "train.csv, data row 1"},
    ]


def test_examples_are_capped_and_a_carved_split_names_the_training_file():
    train = pd.DataFrame({"text": list("abcdef"), "record": range(1, 7)})
    test = pd.DataFrame({"text": list("abcdef"), "record": range(7, 13)})
    found = find_overlap({"train": train, "test": test}, _texts, sources={"train": "all.jsonl"})
    assert found["test"]["rows"] == 6 and len(found["test"]["examples"]) == 3
    assert found["test"]["examples"][0]["row"] == "all.jsonl, record 7"


def _alpaca(path, rows):
    return write_table(path, rows)


def _shared_prompt_files(tmp_path):
    """40 training records; a 10-record test file whose records 2, 4, 6 and 8 ask a training
    prompt again (with another answer; record 6 with other spacing)."""
    train = alpaca_rows(40)
    test = [{"instruction": f"Test {i}: name a colour.", "input": "", "output": "blue"} for i in range(10)]
    for position, source in ((1, 3), (3, 10), (5, 11), (7, 3)):
        test[position] = {**train[source], "output": f"answer {position}"}
    test[5]["instruction"] = test[5]["instruction"].replace(" ", "  ")
    return _alpaca(tmp_path / "train.jsonl", train), _alpaca(tmp_path / "test.jsonl", test)


def test_causal_lm_explicit_test_file_sharing_prompts_is_counted(tmp_path):
    train, test = _shared_prompt_files(tmp_path)
    config = config_from_dict({"task": {"type": "causal_lm"}, "model": {"name": "x"},
                               "data": {"train": str(train), "test": str(test), "val_fraction": 0.0}})  # fmt: skip
    task = CausalLMTask()
    data = prepare_records(config.data, seed=0, load=task.read, inputs=task.overlap_inputs)
    entry = data.manifest["overlap"]["splits"]["test"]
    assert (entry["rows"], entry["of"], entry["distinct_inputs"]) == (4, 10, 3)
    assert entry["examples"][0] == {"input": "user: Item 3: repeat the word amber.",
                                    "row": f"{test}, record 2", "train_row": f"{train}, record 4"}  # fmt: skip
    assert entry["examples"][2]["row"] == f"{test}, record 6"  # found despite the doubled spaces
    warning, example = overlap_warnings(data.manifest["overlap"])
    assert warning.startswith("WARNING: test: 4 of 10 rows (40%) have an input that is also in train (3 distinct")
    assert "keep each input in one split only" in warning and f"{test}, record 2" in example


def test_prompt_side_of_a_conversation_is_every_turn_before_the_last_answer():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Colour?"},
                {"role": "assistant", "content": "red"}]  # fmt: skip
    frame = pd.DataFrame({"messages": [json.dumps(messages)]})
    assert CausalLMTask().overlap_inputs(frame) == ["system: Be brief.\nuser: Hi\nassistant: Hello\nuser: Colour?"]


def test_each_task_names_its_input_side(tmp_path):
    qa = pd.DataFrame({"question": ["what colour ?", "what colour ?"], "context": ["red .", "blue ."]})
    assert QuestionAnsweringTask().overlap_inputs(qa) == ["what colour ?\nred .", "what colour ?\nblue ."]
    ner = pd.DataFrame({"tokens": [["Alice", "went", "home"]]})
    assert TokenClassificationTask().overlap_inputs(ner) == ["Alice went home"]
    assert Seq2SeqTask().overlap_inputs(pd.DataFrame({"source": ["a text"], "target": ["t"]})) == ["a text"]
    folder = image_folder(tmp_path / "images", 2)
    shutil.copy(folder / "horizontal" / "0.png", tmp_path / "renamed.png")  # the same picture under another name
    images = pd.DataFrame({"path": [str(folder / "horizontal" / "0.png"), str(tmp_path / "renamed.png"),
                                    str(folder / "horizontal" / "1.png")]})  # fmt: skip
    hashes = ImageClassificationTask(type="single_label").overlap_inputs(images)
    assert hashes[0] == hashes[1] != hashes[2]


def test_own_data_tasks_name_overlapping_rows_by_their_file_line(tmp_path):
    train = write_table(tmp_path / "train.jsonl", qa_records(10))  # 10 paragraphs, 3 questions each
    test = write_table(tmp_path / "test.jsonl", qa_records(2) + qa_records(1, seed=5))  # 2 paragraphs repeated
    config = config_from_dict({"task": {"type": "question_answering"}, "model": {"name": "x"},
                               "data": {"train": str(train), "test": str(test), "val_fraction": 0.0}})  # fmt: skip
    task = QuestionAnsweringTask()
    data = prepare_records(config.data, seed=0, load=task.read, inputs=task.overlap_inputs)
    entry = data.manifest["overlap"]["splits"]["test"]
    assert (entry["rows"], entry["of"], entry["distinct_inputs"]) == (6, 9, 6)
    assert entry["examples"][0]["row"] == f"{test}, line 1" and entry["examples"][0]["train_row"] == f"{train}, line 1"


def _classification_files(tmp_path):
    """60 training rows; a 20-row validation file whose first 6 rows copy training texts."""
    rows = sentiment_rows(80)
    validation = rows[60:]
    for k in range(6):
        validation[k] = {**rows[k * 7]}
    return write_table(tmp_path / "train.csv", rows[:60]), write_table(tmp_path / "validation.csv", validation)


def test_classification_explicit_validation_file_overlap_and_drop_leaked(tmp_path):
    train, validation = _classification_files(tmp_path)
    data = {"train": str(train), "validation": str(validation), "test_fraction": 0.0}
    config = config_from_dict({"model": {"name": "x"}, "data": data})
    prepared = prepare_data(config.data, TextClassificationTask(type="single_label"), seed=0)
    entry = prepared.manifest["overlap"]["splits"]["validation"]
    assert (entry["rows"], entry["of"], entry["distinct_inputs"]) == (6, 20, 6)
    assert entry["examples"][1]["row"] == f"{validation}, data row 2"
    assert entry["examples"][1]["train_row"] == f"{train}, data row 8"
    assert "drop_leaked=true" in prepared.manifest["overlap"]["remedy"]

    config = config_from_dict({"model": {"name": "x"}, "data": {**data, "clean": {"drop_leaked": True}}})
    prepared = prepare_data(config.data, TextClassificationTask(type="single_label"), seed=0)
    assert prepared.manifest["overlap"]["splits"]["validation"]["rows"] == 0


def _train_logged(config: dict):
    out = io.StringIO()
    result = tunesmith.train(config, console=Console(file=out, width=400, soft_wrap=True))
    return result, out.getvalue()


def test_classification_run_reports_overlap_in_log_manifest_card_and_report(tiny_model_dir, tmp_path):
    train, validation = _classification_files(tmp_path)
    config = tiny_config(tiny_model_dir, train, tmp_path / "run", train={"num_epochs": 1})
    config["data"] |= {"validation": str(validation), "test_fraction": 0.0}
    result, log = _train_logged(config)
    assert "WARNING: validation: 6 of 20 rows (30%) have an input that is also in train (6 distinct inputs)" in log
    manifest = json.loads((result.run_dir / "data_manifest.json").read_text())
    assert manifest["overlap"]["splits"]["validation"]["rows"] == 6
    card = (result.run_dir / "README.md").read_text()
    assert "**Overlap with training:** validation: 6 of 20 rows (30%)" in card
    assert "Overlap with training" in (result.run_dir / "report.html").read_text()


def test_causal_lm_run_warns_about_a_test_file_sharing_prompts(tiny_llama_dir, tmp_path):
    train, test = _shared_prompt_files(tmp_path)
    config = {
        "task": {"type": "causal_lm"},
        "data": {"train": str(train), "test": str(test), "val_fraction": 0.1},
        "model": {"name": str(tiny_llama_dir), "max_length": 64, "strategy": "full"},
        "train": {"num_epochs": 1, "batch_size": 8, "learning_rate": 1e-2, "warmup_ratio": 0.0},
        "generation": {"max_new_tokens": 2, "max_examples": 2},
        "runtime": {"output_dir": str(tmp_path / "run"), "progress": False, "device": "cpu"},
    }
    result, log = _train_logged(config)
    assert "WARNING: test: 4 of 10 rows (40%) have an input that is also in train" in log
    assert "**Overlap with training:** test: 4 of 10 rows (40%)" in (result.run_dir / "README.md").read_text()


def test_no_overlap_means_no_warning_and_no_card_line(tiny_model_dir, sentiment_csv, tmp_path):
    config = tiny_config(tiny_model_dir, sentiment_csv, tmp_path / "run", train={"num_epochs": 1})
    result, log = _train_logged(config)
    manifest = json.loads((result.run_dir / "data_manifest.json").read_text())
    assert {e["rows"] for e in manifest["overlap"]["splits"].values()} == {0}
    assert "WARNING: validation" not in log and "WARNING: test" not in log
    assert "Overlap with training" not in (result.run_dir / "README.md").read_text()
