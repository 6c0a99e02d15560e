"""Loading rejects or reports bad data: records that are not objects, NUL and other control
characters, non-finite numbers, labels of the wrong kind, duplicated YAML keys, IOB2 entities
that start with I-, and empty texts at predict time."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pandas as pd
import pytest

from tunesmith.config import DataConfig, load_config, load_yaml
from tunesmith.data.load import control_character_cells, jsonl_records, read_table
from tunesmith.data.prepare import prepare_data
from tunesmith.errors import TunesmithError
from tunesmith.tasks.classification import TextClassificationTask, text_warning
from tunesmith.tasks.token_classification import fix_inside_starts, load_sentences


def _error(call, *args, **kwargs) -> str:
    with pytest.raises(TunesmithError) as caught:
        call(*args, **kwargs)
    return str(caught.value)


# -- records that are not objects ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("a.jsonl", '{"text": "x", "label": "y"}\n\n42\n', "a.jsonl, line 3 holds 42 (a number), not a record"),
        ("b.jsonl", '["x", "y"]\n', 'b.jsonl, line 1 holds ["x", "y"] (a list), not a record'),
        ("c.json", "[1, 2, 3]", "c.json, record 1 holds 1 (a number), not a record"),
        ("d.json", '{"data": [{"text": "x", "label": "y"}, "z"]}', 'd.json, record 2 holds "z" (a string)'),
        ("e.jsonl", '{"text": "x", "label": true}\nnull\n', "e.jsonl, line 2 holds null (null)"),
    ],
)
def test_a_record_that_is_not_an_object_is_named(tmp_path, name, content, expected):
    (tmp_path / name).write_text(content, encoding="utf-8")
    assert expected in _error(read_table, str(tmp_path / name))


def test_json_nan_and_infinity_are_refused_with_the_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": Infinity}\n', encoding="utf-8")
    assert "t.jsonl, line 2: Infinity is not a number JSON allows" in _error(read_table, str(path))
    assert "line 2: Infinity" in _error(lambda: list(jsonl_records(path)))


def test_a_jsonl_string_may_hold_a_line_separator(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "one\u2028two", "label": "a"}\n', encoding="utf-8")
    assert read_table(str(path)).frame["text"].tolist() == ["one\u2028two"]


def test_ner_tokens_file_with_a_scalar_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('7\n{"tokens": ["a"], "tags": ["O"]}\n', encoding="utf-8")
    config = SimpleNamespace(format="auto")
    assert "t.jsonl, line 1 holds 7 (a number), not a record" in _error(load_sentences, str(path), config, "iob2")


# -- NUL and other control characters ------------------------------------------------------------
def test_nul_in_a_csv_is_refused_with_its_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b'text,label\nfine day,pos\n"grim\x00 and cold",neg\nwarm\x00,pos\n')
    message = _error(read_table, str(path))
    assert "t.csv, line 3: holds a NUL byte" in message and "2 NUL bytes in all" in message and "tr -d" in message
    assert "UTF-16" not in message


def test_a_utf16_file_gets_a_hint(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes("text,label\nfine,pos\n".encode("utf-16-le"))
    assert "probably UTF-16" in _error(read_table, str(path))


def test_inspect_mode_keeps_the_whole_text_of_a_nul_row(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b'text,label\n"grim\x00 and cold",neg\nfine,pos\n')
    table = read_table(str(path), control_characters="keep")
    assert table.frame["text"].tolist() == ["grim\x00 and cold", "fine"]  # the C parser would keep only "grim"
    assert control_character_cells(table.frame) == [(0, "text", Counter({"\x00": 1}))]


def test_other_control_characters_become_spaces_and_are_counted(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\nfine,pos\nbell\x07 and\x1b[0m escape,neg\nok\x0c,pos\n", encoding="utf-8")
    table = read_table(str(path))
    assert table.frame["text"].tolist() == ["fine", "bell  and [0m escape", "ok "]
    assert table.control_characters == 3
    assert table.notes == [
        f"{path}: 3 control characters (\\x07, \\x0c, \\x1b) in data rows 2, 3 were replaced by spaces"
    ]
    assert table.manifest_fields() == {"replaced_characters": 0, "control_characters": 3, "notes": table.notes}


def test_control_characters_in_nested_json_and_escapes(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "hi\\u0001"}], "x": "a\x02"}\n', encoding="utf-8")
    table = read_table(str(path))
    assert table.frame["messages"].iat[0] == [{"role": "user", "content": "hi "}] and table.frame["x"].iat[0] == "a "
    assert table.control_characters == 2
    path.write_text('{"text": "ok", "label": "a"}\n{"text": "a\\u0000b", "label": "b"}\n', encoding="utf-8")
    assert "t.jsonl, row 2, column 'text': holds a NUL character" in _error(read_table, str(path))


def test_a_folder_text_file_with_nul_is_named(tmp_path):
    (tmp_path / "pos").mkdir()
    (tmp_path / "neg").mkdir()
    (tmp_path / "pos" / "a.txt").write_text("fine", encoding="utf-8")
    (tmp_path / "neg" / "b.txt").write_bytes(b"grim\nand\x00 cold")
    assert f"{tmp_path / 'neg' / 'b.txt'}, line 2: holds a NUL byte" in _error(read_table, str(tmp_path))


def test_jsonl_records_replaces_and_counts(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"q": "a\\u0001b", "c": ["x\x02"]}\n', encoding="utf-8")
    counts = Counter()
    assert list(jsonl_records(path, counts=counts)) == [(f"{path}, line 1", {"q": "a b", "c": ["x "]})]
    assert counts == Counter({"\x01": 1, "\x02": 1})


def test_the_manifest_and_log_carry_replaced_control_characters(tmp_path):
    path = tmp_path / "t.csv"
    rows = [{"text": f"fine day {i}" if i % 2 else f"grim\x1b day {i}", "label": "pos" if i % 2 else "neg"}
            for i in range(20)]  # fmt: skip
    pd.DataFrame(rows).to_csv(path, index=False)
    data = prepare_data(DataConfig(train=str(path)), TextClassificationTask(type="single_label"), seed=0)
    entry = data.manifest["sources"]["train"]
    assert entry["control_characters"] == 10 and "in data rows 1, 3, 5" in entry["notes"][0]


# -- non-finite numbers and label kinds ------------------------------------------------------------
def test_a_regression_target_is_named_by_its_row_in_the_file(tmp_path):
    path = tmp_path / "t.csv"
    rows = [{"text": f"text {i}", "label": str(i / 10)} for i in range(30)]
    rows[22]["label"] = "inf"
    pd.DataFrame(rows).to_csv(path, index=False)
    message = _error(prepare_data, DataConfig(train=str(path)), TextClassificationTask(type="regression"), seed=0)
    assert f"{path}, row 23: regression target 'inf' is not a finite number" in message
    rows[22]["label"] = "n/a"
    pd.DataFrame(rows).to_csv(path, index=False)
    message = _error(prepare_data, DataConfig(train=str(path)), TextClassificationTask(type="regression"), seed=0)
    assert f"{path}, row 23: regression target 'n/a' is not a number" in message


def test_encode_refuses_non_finite_targets_too():
    task = TextClassificationTask(type="regression")
    assert "position 2" in _error(task.encode_labels, pd.Series(["1.0", "-inf"]), "s") and "finite" in _error(
        task.encode_labels, pd.Series(["1.0", "-inf"]), "s"
    )


@pytest.mark.parametrize(
    ("kind", "labels", "expected"),
    [
        ("single_label", ["a", ["b", "c"]], "s, row 2: label ['b', 'c'] is a list"),
        ("single_label", ["a", {"b": 1}], "s, row 2: label {'b': 1} is a dict"),
        ("single_label", [True, False], "s, row 1: label True is a boolean"),
        ("single_label", ["a", "b", 3], "s, row 3: label 3 is a number, but row 1's label 'a' is text"),
        ("single_label", [1, "1"], "s, row 2: label '1' is text, but row 1's label 1 is a number"),
        ("single_label", [1.0, 0.37], "s, row 2: label 0.37 is a number with decimals"),
        ("single_label", [1.0, float("inf")], "label inf is not a finite number"),
        ("multi_label", [["a"], {"b": True}], "s, row 2: label {'b': True} is a dict"),
        ("multi_label", [["a", ["b"]]], "label ['b'] in ['a', ['b']] is a list"),
        ("multi_label", [["a"], [True]], "label True in [True] is a boolean"),
        ("multi_label", ["a|b", [1]], "s, row 2: label 1 is a number, but row 1's label 'a|b' is text"),
        ("regression", [1.0, [2.0]], "s, row 2: regression target [2.0] is a list, not a number"),
        ("regression", [1.0, float("nan")], "s, row 2: regression target nan is not a finite number"),
    ],
)
def test_labels_of_the_wrong_kind_are_named(kind, labels, expected):
    task = TextClassificationTask(type=kind)
    assert expected in _error(task.normalise_labels, pd.Series(labels, dtype=object), source="s")


def test_label_rows_come_from_the_caller():
    task = TextClassificationTask(type="single_label")
    message = _error(task.normalise_labels, pd.Series(["a", 0.5], dtype=object), source="s", rows=[4, 9])
    assert message.startswith("s, row 9: label 0.5") and "did you mean task.type: regression?" in message


def test_good_labels_still_normalise():
    task = TextClassificationTask(type="single_label")
    assert task.normalise_labels(pd.Series([1.0, 2, 3.0], dtype=object)).tolist() == ["1", "2", "3"]
    multi = TextClassificationTask(type="multi_label")
    assert multi.normalise_labels(pd.Series([["b", "a"], "a|c"], dtype=object)).tolist() == ["a|b", "a|c"]


def test_decimal_class_names_get_the_regression_hint_when_unknown():
    task = TextClassificationTask(type="single_label")
    task.fit_labels(pd.Series(["0.5", "1.5"]), "train")
    assert "did you mean task.type: regression?" in _error(task.encode_labels, pd.Series(["0.75"]), "test")
    words = TextClassificationTask(type="single_label")
    words.fit_labels(pd.Series(["a", "b"]), "train")
    assert "regression" not in _error(words.encode_labels, pd.Series(["c"]), "test")


# -- YAML ------------------------------------------------------------------------------------------
def test_duplicated_yaml_keys_are_refused_with_both_lines(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  num_epochs: 1\ndata:\n  train: x.csv\ntrain:\n  batch_size: 4\n", encoding="utf-8")
    message = _error(load_config, path)
    assert f"{path}, line 5: not valid YAML" in message and "key 'train' appears twice (lines 1 and 5)" in message
    path.write_text("train:\n  num_epochs: 1\n  num_epochs: 2\n", encoding="utf-8")
    assert "key 'num_epochs' appears twice (lines 2 and 3)" in _error(load_config, path)


def test_yaml_without_duplicates_and_merge_keys_still_load():
    assert load_yaml("a: {x: 1}\nb: {x: 1}\n") == {"a": {"x": 1}, "b": {"x": 1}}
    assert load_yaml("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  x: 3\n")["other"] == {"x": 3, "y": 2}


# -- IOB2 entities that start with I- ------------------------------------------------------------
def test_fix_inside_starts():
    tags = ["I-PER", "I-PER", "O", "I-LOC", "B-PER", "I-LOC", "I-LOC"]
    assert fix_inside_starts(tags) == (["B-PER", "I-PER", "O", "B-LOC", "B-PER", "B-LOC", "I-LOC"], [0, 3, 5])


def test_inside_starts_are_converted_with_a_count_and_lines(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("Alice B-PER\nwent O\n\nsaw O\nBruno I-PER\nSmith I-PER\n", encoding="utf-8")
    frame, entry = load_sentences(str(path), SimpleNamespace(format="auto"), "iob2")
    assert frame["tags"].tolist() == [["B-PER", "O"], ["O", "B-PER", "I-PER"]]
    assert entry["cleaning"]["inside_starts_converted"] == 1
    assert f"converted to B- ({path}, line 5)" in entry["notes"][0]


def test_inside_starts_are_refused_when_asked(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"tokens": ["a", "Bruno"], "tags": ["O", "I-PER"]}\n', encoding="utf-8")
    message = _error(load_sentences, str(path), SimpleNamespace(format="auto"), "iob2", "error")
    assert f"{path}, line 1 (word 2): tag 'I-PER' starts an entity" in message


def test_invalid_tags_is_a_task_option(tmp_path):
    from tunesmith.config import config_from_dict
    from tunesmith.tasks.token_classification import TokenClassificationTask

    config = config_from_dict({"task": {"type": "token_classification", "invalid_tags": "error"}})
    assert config.task.invalid_tags == "error"
    refused = _error(config_from_dict, {"task": {"type": "token_classification", "invalid_tags": "ignore"}})
    assert "task.invalid_tags" in refused and "ignore" in refused
    path = tmp_path / "t.txt"
    path.write_text("Bruno I-PER\n", encoding="utf-8")
    task = TokenClassificationTask(invalid_tags="error")
    assert "line 1: tag 'I-PER' starts an entity" in _error(task.read, str(path), config.data)


# -- empty texts at predict time -----------------------------------------------------------------
def test_empty_texts_get_a_warning():
    assert text_warning("   \n")["warning"].startswith("empty text")
    assert text_warning("fine") == {}


def test_question_answering_control_characters_keep_answer_offsets(tmp_path):
    from tunesmith.tasks.qa import load_questions

    path = tmp_path / "t.jsonl"
    path.write_text('{"question": "what?", "context": "a\\u0007b red .", "answers": {"text": ["red"], '
                    '"answer_start": [4]}}\n', encoding="utf-8")  # fmt: skip
    frame, entry = load_questions(str(path), None)
    assert frame["context"].iat[0] == "a b red ." and frame["context"].iat[0][4:7] == "red"
    assert entry["control_characters"] == 1
    assert entry["notes"] == [f"{path}: 1 control character (\\x07) in line 1 was replaced by spaces"]


# -- SQuAD files and one rule for control characters in every reader ------------------------------
def _squad_file(path, paragraphs) -> None:
    """Writes a SQuAD file; ``paragraphs`` holds (context, [(id, question, answer, start)])."""
    import json

    data = [{"context": c, "qas": [{"id": i, "question": q, "answers": [{"text": a, "answer_start": s}]}
                                   for i, q, a, s in qas]} for c, qas in paragraphs]  # fmt: skip
    path.write_text(json.dumps({"version": "v1.1", "data": [{"title": "T", "paragraphs": data}]}), encoding="utf-8")


def test_squad_nul_is_refused_with_its_article_paragraph_and_question(tmp_path):
    from tunesmith.tasks.qa import load_questions

    path = tmp_path / "s.json"
    _squad_file(path, [("colour : red .", [("q1", "what colour ?", "red", 9)]),
                       ("colour :\0 blue .", [("q2", "what colour ?", "blue", 10)])])  # fmt: skip
    message = _error(load_questions, str(path), None)
    assert f"{path}, article 1 paragraph 2, key 'context': holds a NUL character (\\x00)" in message
    assert "\\u0000 escapes" in message
    _squad_file(path, [("colour : red .", [("q7", "what\0 colour ?", "red", 9)])])
    message = _error(load_questions, str(path), None)
    assert f"{path}, article 1 paragraph 1 question q7, key 'question': holds a NUL" in message
    _squad_file(path, [("colour : red .", [("q7", "what colour ?", "r\0d", 9)])])
    assert "question q7, key 'answers': holds a NUL" in _error(load_questions, str(path), None)
    _squad_file(path, [("colour : red .", [("q\0", "what colour ?", "red", 9)])])
    assert "article 1 paragraph 1 question 1, key 'id': holds a NUL" in _error(load_questions, str(path), None)


def test_squad_control_characters_become_spaces_with_offsets_kept_and_a_note(tmp_path):
    from tunesmith.tasks.qa import load_questions

    path = tmp_path / "s.json"
    _squad_file(path, [("colour\x07: red .", [("q1", "what\x01 colour ?", "red", 9), ("q2", "which ?", "red", 9)]),
                       ("animal : cat .", [("q3", "what\x1b\x01 animal ?", "cat", 9)])])  # fmt: skip
    frame, entry = load_questions(str(path), None)
    assert frame["context"].tolist() == ["colour : red .", "colour : red .", "animal : cat ."]
    assert frame["question"].tolist() == ["what  colour ?", "which ?", "what   animal ?"]
    assert [c[s[0] : s[0] + 3] for c, s in zip(frame["context"], frame["starts"])] == ["red", "red", "cat"]
    assert entry["control_characters"] == 4
    assert entry["notes"] == [f"{path}: 4 control characters (\\x01 x2, \\x07, \\x1b) in article 1 paragraph 1, "
                              "question q1, question q3 were replaced by spaces"]  # fmt: skip


def test_squad_non_finite_numbers_and_bad_bytes_are_refused(tmp_path):
    from tunesmith.tasks.qa import load_questions

    path = tmp_path / "s.json"
    path.write_text('{"data": [{"paragraphs": [{"context": "colour : red .", "qas": [{"id": "q1", "question": '
                    '"what ?", "answers": [{"text": "red", "answer_start": Infinity}]}]}]}]}', encoding="utf-8")  # fmt: skip
    assert f"{path}: Infinity is not a number JSON allows" in _error(load_questions, str(path), None)
    path.write_text('{"data": [}', encoding="utf-8")
    assert f"{path}: not a SQuAD JSON file" in _error(load_questions, str(path), None)
    path.write_bytes('{"data": []}'.encode("utf-16-le"))
    assert "probably UTF-16" in _error(load_questions, str(path), None)
    path.write_bytes(b'{"data": ["\xff"]}')
    assert f"{path}: not UTF-8 text" in _error(load_questions, str(path), None)


def test_qa_jsonl_scalar_line_is_a_record_error(tmp_path):
    from tunesmith.tasks.qa import load_questions

    path = tmp_path / "t.jsonl"
    path.write_text('{"question": "what ?", "context": "red .", "answers": {"text": ["red"]}}\n42\n', encoding="utf-8")
    message = _error(load_questions, str(path), None)
    assert f"{path}, line 2 holds 42 (a number), not a record {{...}}" in message and '"question": "..."' in message


def test_qa_jsonl_note_names_characters_and_lines(tmp_path):
    from tunesmith.tasks.qa import load_questions

    path = tmp_path / "t.jsonl"
    line = '{{"question": "what{0} ?", "context": "red{0} .", "answers": {{"text": ["red"], "answer_start": [0]}}}}\n'
    path.write_text(line.format("") + line.format("\\u0001") + line.format("\\u001b"), encoding="utf-8")
    _, entry = load_questions(str(path), None)
    note = f"{path}: 4 control characters (\\x01 x2, \\x1b x2) in lines 2, 3 were replaced by spaces"
    assert entry["notes"] == [note]


def test_ner_jsonl_note_names_its_lines(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"tokens": ["a"], "tags": ["O"]}\n{"tokens": ["b\\u0007"], "tags": ["O"]}\n', encoding="utf-8")
    _, entry = load_sentences(str(path), SimpleNamespace(format="auto"), "iob2")
    assert entry["notes"] == [f"{path}: 1 control character (\\x07) in line 2 was replaced by spaces"]


def test_conll_refuses_every_control_character_in_the_shared_shape(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("Alice B-PER\nsaw\x1b O\n", encoding="utf-8")
    message = _error(load_sentences, str(path), SimpleNamespace(format="auto"), "iob2")
    assert message.startswith(f"{path}, line 2: holds the control character \\x1b. Remove it: CoNLL columns")
    path.write_text("Alice B-PER\nsaw\0 O\n", encoding="utf-8")
    message = _error(load_sentences, str(path), SimpleNamespace(format="auto"), "iob2")
    assert message.startswith(f"{path}, line 2: holds a NUL character (\\x00). NUL bytes are never text")


def test_one_helper_writes_every_control_character_note():
    from tunesmith.data.load import control_character_error, control_character_note

    assert control_character_note("f.csv", Counter(), []) == (0, [])
    count, notes = control_character_note("f.csv", Counter({"\x07": 11, "\x01": 1}), list(range(1, 13)))
    assert count == 12
    assert notes == ["f.csv: 12 control characters (\\x01, \\x07 x11) in data rows 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 "
                     "and 2 more were replaced by spaces"]  # fmt: skip
    assert control_character_note("f.jsonl", Counter({"\x02": 1}), [4], "lines")[1] == [
        "f.jsonl: 1 control character (\\x02) in line 4 was replaced by spaces"
    ]
    assert str(control_character_error("f.txt, line 3", "\x1b", "remove it")) == (
        "f.txt, line 3: holds the control character \\x1b. remove it."
    )
