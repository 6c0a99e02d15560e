"""`tunesmith inspect` on the records of the tasks that read their own (data.quality.InspectedTask):
CoNLL sentences, SQuAD-style questions, instruction records, source/target and text pairs, each
a few constructed rows with known problems, inspected with a tiny tokenizer. The findings must
name the rows."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tunesmith.config import load_config
from tunesmith.data import quality
from tunesmith.data.inspection import inspect_data, summary_lines, write_fixed
from tunesmith.errors import TunesmithError
from tunesmith.tasks import build_task

CONLL_TRAIN = """\
John B-PER
lives O
in O
Paris B-LOC
. O

The O
cat O
sat O
. O

He O
met O
Smith I-PER
today O
. O

John B-PER
lives O
in O
Paris B-LOC
. O

Mary B-PER
Jane I-PER
went O
to O
the O
big O
old O
market O
in O
Berlin B-LOC
yesterday O
. O
"""

CONLL_TEST = """\
The O
cat O
sat O
. O

Anna B-PER
visited O
Rome B-LOC
. O
"""


def _inspect(tmp_path, overrides: list[str], files: list[str]) -> dict:
    config = load_config(None, overrides)
    return inspect_data(config, files, tmp_path / "report", task=build_task(config), progress=False,
                        log=lambda m: None)  # fmt: skip


def _checks(report: dict, split: str = "train") -> list[tuple[str, int]]:
    return [(f["check"], f["row"]) for f in report["findings"][split]["rows"]]


def test_ner_inspection_names_the_bad_tag_the_duplicate_and_the_leaked_sentence(tmp_path, tiny_model_dir):
    train, test = tmp_path / "train.conll", tmp_path / "test.conll"
    train.write_text(CONLL_TRAIN, encoding="utf-8")
    test.write_text(CONLL_TEST, encoding="utf-8")
    report = _inspect(tmp_path, ["task.type=token_classification", f"model.name={tiny_model_dir}",
                                 "model.max_length=12"], [str(train), str(test)])  # fmt: skip

    assert _checks(report) == [("I- without B-", 3)]
    finding = report["findings"]["train"]["rows"][0]
    assert finding["where"] == f"{train}, line 14" and finding["severity"] == "warning"  # "Smith", its own line
    assert "'I-PER' after 'O'" in finding["detail"]
    assert report["duplicates"]["train"]["exact"][0]["rows"] == [1, 4]
    leaked = {"row": 1, "train_row": 2, "where": f"{test}, line 1", "train_where": f"{train}, line 7",
              "text": "The cat sat ."}  # fmt: skip
    assert report["leakage"]["test"]["exact"] == [leaked]
    assert report["classes"]["train"]["counts"]["B-PER"] == 3 and report["label_kind"] == "tags"
    sentence = report["lengths"]["train"]["sentence"]
    assert [o["row"] for o in sentence["over"]] == [5] and sentence["max_length"] == 12  # 14 words: over 12
    lines = summary_lines(report)
    assert lines[0].startswith("train: 5 records, 1 × I- without B-, 1 exact duplicates")
    assert any("1 × I- without B- (first: " in line and "line 14" in line for line in lines)
    assert "tags in test that train never shows" not in " ".join(lines)  # test has B-PER, B-LOC, O only
    page = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert "I- without B-" in page and "line 14" in page
    written = json.loads((tmp_path / "report" / "report.json").read_text(encoding="utf-8"))
    assert written["findings"]["train"]["counts"] == {"I- without B-": 1}
    assert "_lengths" not in written["lengths"]["train"]["sentence"]


def test_ner_inspection_with_invalid_tags_error_and_a_tag_outside_the_scheme(tmp_path, tiny_model_dir):
    train = tmp_path / "train.jsonl"
    rows = [{"tokens": ["Ann", "ran"], "tags": ["I-PER", "O"]}, {"tokens": ["Bo", "sat"], "tags": ["NNP", "O"]}]
    train.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    report = _inspect(tmp_path, ["task.type=token_classification", f"model.name={tiny_model_dir}",
                                 "task.invalid_tags=error"], [str(train)])  # fmt: skip
    found = {f["check"]: f for f in report["findings"]["train"]["rows"]}
    assert found["I- without B-"]["severity"] == "error" and found["I- without B-"]["row"] == 1
    assert found["I- without B-"]["where"] == f"{train}, line 1 (word 1)"
    assert found["tag outside the scheme"]["row"] == 2 and "'NNP'" in found["tag outside the scheme"]["detail"]
    assert list(report["findings"]["train"]["counts"]) == ["I- without B-", "tag outside the scheme"]


def _squad(path, paragraphs: list[tuple[str, list[dict]]]) -> None:
    data = [{"title": "t", "paragraphs": [{"context": c, "qas": q} for c, q in paragraphs]}]
    path.write_text(json.dumps({"version": "v2.0", "data": data}), encoding="utf-8")


PARIS = "Paris is the capital of France. It lies on the Seine river in the north of the country."
ROME = "Rome is the capital of Italy and was founded, the story goes, by Romulus."


def test_qa_inspection_names_the_answer_not_in_its_context(tmp_path, tiny_model_dir):
    train, test = tmp_path / "train.json", tmp_path / "test.json"
    _squad(train, [
        (PARIS, [{"id": "q1", "question": "What is the capital of France?",
                  "answers": [{"text": "Paris", "answer_start": 0}]},
                 {"id": "q2", "question": "Which river?", "answers": [{"text": "Seine", "answer_start": 3}]},
                 {"id": "q3", "question": "What is its population?", "answers": [], "is_impossible": True}]),
        (ROME, [{"id": "q4", "question": "Who founded Rome?", "answers": [{"text": "Romulus", "answer_start": 65}]}]),
    ])  # fmt: skip
    _squad(test, [(PARIS, [{"id": "t1", "question": "Where does it lie?",
                            "answers": [{"text": "on the Seine river", "answer_start": 40}]}])])  # fmt: skip
    report = _inspect(tmp_path, ["task.type=question_answering", f"model.name={tiny_model_dir}",
                                 "model.max_length=24", "task.doc_stride=4"], [str(train), str(test)])  # fmt: skip

    assert _checks(report) == [("answer not in context", 2)]
    finding = report["findings"]["train"]["rows"][0]
    assert finding["where"] == f"{train}, article 1 paragraph 1 question q2" and finding["severity"] == "error"
    assert "answer_start=3" in finding["detail"] and "'is is'" in finding["detail"]
    assert report["classes"]["train"]["counts"] == {"answer": 3, "no answer": 1}
    assert report["classes"]["train"]["shares"] == {"answer": 0.75, "no answer": 0.25}
    assert report["findings"]["test"]["rows"] == []
    # the test question is about a paragraph train has: reported as a shared context, not a near copy
    shared = report["leakage"]["test"]["shared_groups"]
    assert [(s["row"], s["train_row"]) for s in shared] == [(1, 1)] and report["group_kind"] == "context"
    assert report["leakage"]["test"]["near"] == []
    # questions on one paragraph share most of their text, and are not near-duplicates of each other
    assert report["duplicates"]["train"]["near_groups"] == 0
    windows = report["lengths"]["train"]["question + context"]
    assert windows["max_length"] == 24 and [o["row"] for o in windows["over"]] == [1, 2, 3, 4]
    assert "windows" in windows["beyond"]
    text = " ".join(summary_lines(report))
    assert "1 × answer not in context" in text and "share their context with train" in text
    assert "answers in train: answer 75.0%, no answer 25.0%" in text


def test_causal_lm_inspection_names_empty_cut_and_overlong_records(tmp_path, smollm_dir):
    train = tmp_path / "train.jsonl"
    records = [
        {"instruction": "Name a colour.", "output": "Blue."},
        {"instruction": "Describe the sea.", "output": ""},
        {"instruction": "Tell a story.", "output": "Once upon a time. A fox lived in the woods and every day he"},
        {"instruction": "Name a colour.", "output": "Red."},
        {"instruction": "List three fruits:", "output": "1. apple\n2. pear\n3. plum"},
        {"instruction": "Give the steps.", "output": "Here is what you do first,"},
        {"instruction": " ".join(["word"] * 80), "output": "Yes."},  # no room left for the completion
    ]
    train.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    overrides = ["task.type=causal_lm", f"model.name={smollm_dir}", "model.max_length=64"]
    report = _inspect(tmp_path, overrides, [str(train)])

    assert _checks(report) == [("empty record", 2), ("completion looks cut", 3), ("completion looks cut", 6)]
    empty = report["findings"]["train"]["rows"][0]
    assert empty["where"] == f"{train}, record 2" and empty["severity"] == "warning"  # data.clean.drop_empty
    assert "output is missing or empty" in empty["detail"]
    assert report["sources"]["train"]["rows"] == 6
    # the same prompt with another completion: a conflict, named by record
    assert report["conflicting_labels"]["train"]["exact"][0]["rows"] == [1, 4]
    record, prompt = report["lengths"]["train"]["record"], report["lengths"]["train"]["prompt"]
    assert record["max_length"] == 64 and record["rows"] == 6 and [o["row"] for o in record["over"]] == [7]
    assert prompt["severity"] == "error" and [o["row"] for o in prompt["over"]] == [7]
    assert any(a.startswith("train: 1 of 6 records have a prompt longer than 63 tokens")
               and "training refuses the file" in a for a in report["recommendations"])  # fmt: skip
    assert "classes" not in report  # no label space

    strict = load_config(None, [*overrides, "data.clean.drop_empty=false"])
    found = build_task(strict).inspection_records(str(train), strict.data).findings
    assert (found[0].check, found[0].severity) == ("empty record", "error")
    with pytest.raises(TunesmithError, match="--fix rewrites text classification tables; causal_lm"):
        write_fixed(strict, [str(train)], tmp_path / "fixed", task=build_task(strict), log=lambda m: None)
    assert not (tmp_path / "fixed").exists()


def test_seq2seq_and_pair_inspection(tmp_path, tiny_model_dir, smollm_dir):
    pairs = tmp_path / "pairs.csv"
    rivers = "a long document about rivers"
    pd.DataFrame({"source": [rivers, "", "a note on cats and dogs", rivers],
                  "target": ["rivers.", "empty source", "Cats and dogs are pets. Many people keep them at home and",
                             "rivers."]}).to_csv(pairs, index=False)  # fmt: skip
    report = _inspect(tmp_path / "s2s", ["task.type=seq2seq", f"model.name={smollm_dir}"], [str(pairs)])
    assert _checks(report) == [("empty source", 2), ("target looks cut", 3)]
    assert report["duplicates"]["train"]["exact"][0]["rows"] == [1, 4]
    assert set(report["lengths"]["train"]) == {"source", "target"}

    table = tmp_path / "pairs_labelled.csv"
    pd.DataFrame({"sentence1": ["a cat", "a dog", "", "a bird"], "sentence2": ["a pet", "a pet", "x", "a pet"],
                  "label": ["yes", "yes", "no", None]}).to_csv(table, index=False)  # fmt: skip
    report = _inspect(tmp_path / "pair", ["task.type=pair_classification", f"model.name={tiny_model_dir}"],
                      [str(table)])  # fmt: skip
    assert _checks(report) == [("empty text", 3), ("missing label", 4)]
    assert report["classes"]["train"]["counts"] == {"yes": 2}


@pytest.mark.parametrize(
    ("text", "cut"),
    [
        ("Paris", False),
        ("The answer is 42.", False),
        ("1. apple\n2. pear", False),
        ("- one\n- two", False),
        ("Here are the steps:", True),
        ("It rained, and then", False),  # short, no sentence before: could be a fragment on purpose
        ("It rained all day. Then the sun came out and we went for a long", True),
        ("We walked along the river (", True),
        ('He said "stop."', False),
    ],
)
def test_looks_cut(text, cut):
    assert quality.looks_cut(text) is cut
