"""`tunesmith inspect`: every check on small constructed tables, the report files, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tests.conftest import sentiment_rows
from tunesmith.config import load_config
from tunesmith.data import quality
from tunesmith.data.inspection import inspect_data
from tunesmith.data.label_errors import (
    embedding_probabilities,
    neighbour_probabilities,
    out_of_fold_probabilities_embedding,
    rank_label_issues,
)
from tunesmith.errors import TunesmithError
from tunesmith.tasks import build_task

CLI = [sys.executable, "-m", "tunesmith.cli"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("bell\x07 here", "control characters"),
        ("cafÃ© au lait", "mojibake"),
        ("that\x92s fine", "mojibake (C1 control characters: Windows-1252 text read as Latin-1?)"),
        ("?! ...", "only punctuation or symbols"),
        ("https://example.com/page", "only URLs"),
        ("www.example.org !", "only URLs"),
        ("10,000", "only digits"),
        ("https://example.com 42", "only digits"),
        ("a fine film", None),
        ("café au lait", None),
        ("visit https://example.com for more", None),
    ],
)
def test_junk_reasons(text, reason):
    assert quality.junk_reason(text) == reason


def test_normalise_and_similarity_by_hand():
    assert quality.normalise("  The FILM, was   GREAT!! ") == "the film was great"
    assert quality.similarity("a b c d e", "a b c d e") == 1.0
    # one word changed of five: 2 * 4 matching / 10 words
    assert quality.similarity("the film is great fun", "the film is good fun") == pytest.approx(0.8)
    # one word changed of ten: 2 * 9 / 20
    ten = "one two three four five six seven eight nine ten"
    assert quality.similarity(ten, ten.replace("six", "SIX")) == pytest.approx(0.9)
    assert quality.similarity("a b", "c d") == 0.0
    assert quality.similarity("", "a") == 0.0


def _table(texts, labels):
    return pd.DataFrame({"text": texts, "label": labels})


def test_exact_and_near_duplicates_and_conflicts():
    frame = _table(
        [
            "the acting was superb and the plot was gripping",  # 0
            "The acting was superb, and the plot was gripping!",  # 1 near 0 (case, punctuation)
            "the acting was superb and the plot was thrilling",  # 2 near 0 (one word of nine)
            "a completely different sentence about weather",  # 3
            "the acting was superb and the plot was gripping",  # 4 exact copy of 0
            "short one",  # 5
            "short one",  # 6 exact copy of 5, other label
            "nothing like the others at all here",  # 7
        ],
        ["pos", "pos", "neg", "neg", "pos", "pos", "neg", "pos"],
    )
    exact, near = quality.duplicate_groups(frame, threshold=0.8)
    assert sorted(exact) == [[0, 4], [5, 6]]
    assert near == [[0, 1, 2, 4]]
    conflicts = quality.conflicting_labels(frame, exact + near)
    assert [5, 6] in conflicts and [0, 1, 2, 4] in conflicts and [0, 4] not in conflicts


def test_near_duplicate_threshold_is_respected():
    frame = _table(["the film is great fun", "the film is good fun", "an entirely new text"], ["a", "a", "b"])
    assert quality.duplicate_groups(frame, threshold=0.8)[1] == [[0, 1]]
    assert quality.duplicate_groups(frame, threshold=0.85)[1] == []


def test_leakage_exact_and_edited_copies():
    rng = np.random.default_rng(0)
    vocabulary = [f"word{i}" for i in range(400)]
    train_texts = [" ".join(rng.choice(vocabulary, 12)) for _ in range(300)]
    held = [train_texts[3], train_texts[10]]  # verbatim
    edited = train_texts[20].split()
    edited[4] = "changed"
    held += [train_texts[15].upper() + " !", " ".join(edited)]  # case and punctuation; one word
    held += [" ".join(rng.choice(vocabulary, 12)) for _ in range(5)]  # new
    train = _table(train_texts, ["x"] * 300)
    exact, near = quality.leakage(train, _table(held, ["x"] * len(held)), threshold=0.8)
    assert exact == [(0, 3), (1, 10)]
    assert [(p, q) for p, q, _ in near] == [(2, 15), (3, 20)]
    assert near[1][2] == pytest.approx(2 * 11 / 24)


def test_class_distribution_imbalance_and_rare_classes():
    labels = pd.Series(["a"] * 40 + ["b"] * 10 + ["c"] * 3)
    found = quality.class_distribution(labels, min_rows=5)
    assert found["counts"] == {"a": 40, "b": 10, "c": 3}
    assert found["imbalance_ratio"] == pytest.approx(40 / 3)
    assert found["rare_classes"] == ["c"]


def test_length_summary_counts_truncation():
    summary = quality.length_summary(np.array([5, 10, 20, 40, 41]), max_length=40)
    assert summary["truncated"] == 1 and summary["max"] == 41 and summary["p50"] == 20


def test_label_errors_found_in_separable_data():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 100)
    centres = rng.normal(0, 4, size=(3, 8))
    embeddings = centres[labels] + rng.normal(0, 1, size=(300, 8))
    noisy = labels.copy()
    flipped = rng.choice(300, 15, replace=False)
    noisy[flipped] = (noisy[flipped] + 1) % 3
    probabilities = embedding_probabilities([embeddings], noisy, folds=5, seed=0)
    flagged = set(rank_label_issues(noisy, probabilities).tolist())
    # cleanlab's estimated count is cautious: here it flags 14, every one of them a flip.
    assert len(flagged & set(flipped.tolist())) >= 13
    assert len(flagged - set(flipped.tolist())) <= 1


def test_neighbour_votes_leave_the_row_out_and_see_through_a_flip():
    embeddings = np.array([[1.0, 0.0], [0.99, 0.1], [0.98, 0.2], [0.0, 1.0], [0.1, 0.99], [0.2, 0.98]])
    labels = np.array([0, 0, 1, 1, 1, 1])  # row 2 sits among class 0 but is labelled 1
    votes = neighbour_probabilities(embeddings, labels, neighbours=2)
    assert np.allclose(votes.sum(1), 1)
    assert votes[2].argmax() == 0  # its two neighbours are rows 0 and 1, not itself
    assert votes[0].tolist() == pytest.approx([1.5 / 3, 1.5 / 3])  # rows 1 (label 0) and 2 (label 1)
    flat = neighbour_probabilities(np.ones((4, 2)), np.array([0, 0, 1, 1]), neighbours=10)  # duplicates, k > rows
    assert flat.shape == (4, 2) and np.allclose(flat.sum(1), 1)


def test_refitting_without_flagged_rows_still_scores_every_row_out_of_fold():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 150)
    embeddings = np.array([[-1.0], [1.0]])[labels] + rng.normal(0, 0.8, size=(300, 1))
    noisy = labels.copy()
    flipped = rng.choice(300, 30, replace=False)
    noisy[flipped] = 1 - noisy[flipped]
    once = out_of_fold_probabilities_embedding(embeddings, noisy, folds=5, seed=0, refit_rounds=0)
    refit = out_of_fold_probabilities_embedding(embeddings, noisy, folds=5, seed=0, refit_rounds=1)
    assert refit.shape == once.shape and np.allclose(refit.sum(1), 1)
    assert not np.allclose(refit, once)  # the second pass trained on fewer rows
    # Trained without the suspects, the classifier is surer where the given label is wrong.
    assert refit[flipped, noisy[flipped]].mean() < once[flipped, noisy[flipped]].mean()


def test_label_errors_need_enough_rows_per_class():
    embeddings = np.zeros((7, 2))
    with pytest.raises(TunesmithError, match="at least 5 rows of every class"):
        out_of_fold_probabilities_embedding(embeddings, np.array([0, 0, 0, 0, 0, 1, 1]), folds=5, seed=0)


@pytest.fixture
def dirty_files(tmp_path):
    rows = sentiment_rows(120, seed=1)
    train = pd.DataFrame(rows)
    extra = pd.DataFrame(
        {
            "text": ["", "!!!", "12345", rows[0]["text"], rows[1]["text"].upper(), "x" * 5],
            "label": ["positive", "negative", "positive", rows[0]["label"], "positive", "negative"],
        }
    )
    train = pd.concat([train, extra], ignore_index=True)
    test = pd.DataFrame(
        {
            "text": [rows[2]["text"], rows[3]["text"] + " !", "fresh words never seen before today", "a new one"],
            "label": [rows[2]["label"], rows[3]["label"], "positive", "negative"],
        }
    )
    train_path, test_path = tmp_path / "train.csv", tmp_path / "test.csv"
    train.to_csv(train_path, index=False)
    test.to_csv(test_path, index=False)
    return train_path, test_path


def test_inspect_report_on_constructed_files(tmp_path, tiny_model_dir, dirty_files):
    train_path, test_path = dirty_files
    config = load_config(None, [f"model.name={tiny_model_dir}", "model.max_length=6", "inspect.folds=3"])
    out = tmp_path / "report"
    report = inspect_data(config, [str(train_path), str(test_path)], out, task=build_task(config), progress=False,
                          log=lambda m: None)  # fmt: skip
    written = json.loads((out / "report.json").read_text())
    assert written["sources"]["train"]["rows"] == 126 and written["sources"]["test"]["rows"] == 4
    assert written["sources"]["train"]["missing_values"]["text"] == 1  # the empty row reads as missing
    junk = {r["row"]: r["reason"] for r in written["junk"]["train"]["rows"]}
    assert junk == {121: "empty", 122: "only punctuation or symbols", 123: "only digits"}
    assert written["duplicates"]["train"]["exact_extra_rows"] == 1  # row 124 repeats row 1
    # row 125 is row 2 upper-cased with another label: a near conflict
    assert any(g["rows"] == [2, 125] for g in written["conflicting_labels"]["train"]["near"])
    assert written["leakage"]["test"]["exact"] == [
        {"row": 1, "train_row": 3, "text": report["leakage"]["test"]["exact"][0]["text"]}
    ]
    assert [(r["row"], r["train_row"]) for r in written["leakage"]["test"]["near"]] == [(2, 4)]
    assert written["lengths"]["train"]["max_length"] == 6 and written["lengths"]["train"]["truncated"] >= 120
    assert written["classes"]["train"]["counts"] == {"negative": 62, "positive": 64}
    assert written["label_errors"]["method"] == "embedding" and written["label_errors"]["rows_scored"] == 125
    assert "_given_probability" not in written["label_errors"]
    assert written["recommendations"]
    page = (out / "report.html").read_text()
    assert "Likely label errors" in page and page.count("data:image/png;base64,") == 3
    with pytest.raises(TunesmithError, match="already holds a report"):
        inspect_data(config, [str(train_path)], out, task=build_task(config), progress=False, log=lambda m: None)


def test_inspect_bad_input_is_named(tmp_path, tiny_model_dir):
    broken = tmp_path / "broken.csv"
    broken.write_text('text,label\n"unclosed quote,positive\n')
    config = load_config(None, [f"model.name={tiny_model_dir}"])
    with pytest.raises(TunesmithError, match="broken.csv"):
        inspect_data(config, [str(broken)], tmp_path / "r", task=build_task(config), progress=False)
    plain = tmp_path / "plain.csv"
    pd.DataFrame({"a": ["x"], "b": ["y"], "c": ["z"]}).to_csv(plain, index=False)
    with pytest.raises(TunesmithError, match="cannot tell which columns"):
        inspect_data(config, [str(plain)], tmp_path / "r", task=build_task(config), progress=False)
    assert not (tmp_path / "r").exists()
    # A task inspect does not cover is refused by the command (tasks.require_stage), before --out.
    done = subprocess.run([*CLI, "inspect", str(plain), "--out", str(tmp_path / "r"), "--set",
                           "task.type=image_classification"],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2 and "inspect does not cover image_classification runs yet" in done.stderr, done.stderr
    assert not (tmp_path / "r").exists()


def test_inspect_cli(tmp_path, tiny_model_dir, dirty_files):
    train_path, test_path = dirty_files
    out = tmp_path / "cli-report"
    done = subprocess.run([*CLI, "inspect", str(train_path), str(test_path), "--out", str(out), "--label-errors",
                           "off", "--set", f"model.name={tiny_model_dir}"], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    assert "test: 4 rows" in done.stderr and "leaked from train: 1 exact, 1 near" in done.stderr
    assert json.loads((out / "report.json").read_text())["label_errors"] == {"method": "off"}
    again = subprocess.run([*CLI, "inspect", str(train_path), "--out", str(out)], capture_output=True, text=True)
    assert again.returncode == 2 and "already holds a report" in again.stderr


# ---- fixing: data.clean and inspect --fix ----

from tunesmith.config import CleanConfig  # noqa: E402
from tunesmith.data.fix import drop_leaked, fix_frame, fix_label_errors  # noqa: E402


def _rows_table(texts, labels):
    return pd.DataFrame({"text": texts, "label": labels, "row": range(1, len(texts) + 1)})


CONFLICTED = _rows_table(
    [
        "the acting was superb and the plot was gripping",  # 1
        "The acting was superb, and the plot was gripping!",  # 2 near 1
        "the acting was superb and the plot was thrilling",  # 3 near 1, other label
        "!!!",  # 4 junk
        "short one",  # 5
        "short one",  # 6 other label: a tie
        "something else entirely different here",  # 7
    ],
    ["pos", "pos", "neg", "pos", "pos", "neg", "neg"],
)


def test_fix_frame_majority_relabels_and_ties_drop():
    changes = []
    clean = CleanConfig(drop_junk=True, conflicting_labels="majority")
    fixed = fix_frame(CONFLICTED, clean, similarity=0.8, source="f.csv", changes=changes)
    by_row = {c["row"]: c for c in changes}
    assert by_row[4]["action"] == "dropped" and by_row[4]["reason"].startswith("junk text")
    assert by_row[3]["action"] == "relabelled" and by_row[3]["new_label"] == "pos" and by_row[3]["label"] == "neg"
    assert by_row[5]["action"] == by_row[6]["action"] == "dropped" and "tie" in by_row[5]["reason"]
    assert sorted(by_row) == [3, 4, 5, 6]
    assert fixed["row"].tolist() == [1, 2, 3, 7] and fixed["label"].tolist() == ["pos", "pos", "pos", "neg"]


def test_fix_frame_drop_conflicts_and_near_duplicates():
    changes = []
    fixed = fix_frame(CONFLICTED, CleanConfig(conflicting_labels="drop"), similarity=0.8, source="f", changes=changes)
    assert fixed["row"].tolist() == [4, 7]
    assert sorted(c["row"] for c in changes) == [1, 2, 3, 5, 6]
    changes = []
    fixed = fix_frame(CONFLICTED, CleanConfig(drop_near_duplicates=True), similarity=0.8, source="f", changes=changes)
    # the first row of each (group, label) stays: 1 for pos, 3 for neg; exact text groups too
    assert [c["row"] for c in changes] == [2] and changes[0]["reason"] == "near duplicate of row 1"
    assert fixed["row"].tolist() == [1, 3, 4, 5, 6, 7]
    unchanged = fix_frame(CONFLICTED, CleanConfig(), similarity=0.8, source="f", changes=(changes := []))
    assert changes == [] and unchanged["row"].tolist() == list(range(1, 8))


def test_drop_leaked_rows_from_train():
    train = _rows_table(["a b c d e f", "the film was a delight from start to end", "unrelated words here"],
                        ["x", "y", "x"])  # fmt: skip
    test = _rows_table(["A B C D E F!", "the film was a joy from start to end", "brand new"], ["x", "y", "x"])
    changes = []
    kept = drop_leaked(train, {"test": test}, similarity=0.8, source="train.csv", changes=changes)
    assert kept["row"].tolist() == [3]
    assert [c["row"] for c in changes] == [1, 2] and "near copy" in changes[1]["reason"]


def test_fix_label_errors_relabel_and_drop():
    train = _rows_table(["a", "b", "c"], ["x", "y", "x"])

    def find(frame):
        return [(1, "x", 0.02)]

    changes = []
    relabelled = fix_label_errors(train, "relabel", find, source="t", changes=changes)
    assert relabelled["label"].tolist() == ["x", "x", "x"] and changes[0]["new_label"] == "x"
    dropped = fix_label_errors(train, "drop", find, source="t", changes=(changes := []))
    assert dropped["row"].tolist() == [1, 3] and changes[0]["action"] == "dropped"


def test_train_applies_data_clean_with_a_changelog(tmp_path, tiny_model_dir, dirty_files):
    from tests.conftest import tiny_config
    from tunesmith.api import train

    train_path, test_path = dirty_files
    config = tiny_config(tiny_model_dir, train_path, tmp_path / "run",
                         data={"test": str(test_path), "test_fraction": 0.0, "val_fraction": 0.0,
                               "clean": {"drop_junk": True, "conflicting_labels": "drop", "drop_leaked": True}},
                         train={"num_epochs": 1})  # fmt: skip
    result = train(config)
    changes = [json.loads(line) for line in (result.run_dir / "data_changelog.jsonl").read_text().splitlines()]
    manifest = json.loads((result.run_dir / "data_manifest.json").read_text())
    cleaning = manifest["sources"]["train"]["cleaning"]
    train_changes = [c for c in changes if c["source"].endswith("train.csv")]
    splits = manifest["splits"]
    assert len(train_changes) == cleaning["rows_in"] - splits["train"]["rows"]
    reasons = {c["row"]: c["reason"] for c in train_changes}
    assert reasons[121] == "empty text" and reasons[124].startswith("exact duplicate of row 1")
    assert reasons[122].startswith("junk text") and reasons[2].startswith("conflicting labels")
    assert reasons[3].startswith("exact copy of a test row")
    saved = pd.read_parquet(result.run_dir / "data" / "train.parquet")
    assert not set(saved["row"]) & set(reasons)


def test_inspect_fix_writes_clean_copies_and_leaves_the_originals(tmp_path, tiny_model_dir, dirty_files):
    import hashlib

    train_path, test_path = dirty_files
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (train_path, test_path)}
    out, fixed = tmp_path / "report", tmp_path / "fixed"
    done = subprocess.run([*CLI, "inspect", str(train_path), str(test_path), "--out", str(out), "--fix", str(fixed),
                           "--label-errors", "off", "--set", f"model.name={tiny_model_dir}",
                           "--set", "data.clean.drop_junk=true", "--set", "data.clean.drop_leaked=true"],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert before == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (train_path, test_path)}
    cleaned = pd.read_csv(fixed / "train.csv")
    changes = [json.loads(line) for line in (fixed / "changelog.jsonl").read_text().splitlines()]
    dropped = {c["row"] for c in changes if c["source"].endswith("train.csv") and c["action"] == "dropped"}
    assert len(cleaned) == 126 - len(dropped)
    assert {121, 122, 123, 124, 3, 4} <= dropped  # empty, junk, exact duplicate, leaked into test
    assert list(cleaned.columns) == ["text", "label"]
    assert len(pd.read_csv(fixed / "test.csv")) == 4
    again = subprocess.run([*CLI, "inspect", str(train_path), "--fix", str(fixed)], capture_output=True, text=True)
    assert again.returncode == 2 and "not empty" in again.stderr


def test_majority_counts_the_identical_rows_that_cleaning_merged():
    from tunesmith.data.clean import clean_frame

    frame = pd.DataFrame({"text": ["great movie"] * 6 + ["other thing"], "label": ["pos"] * 5 + ["neg", "neg"]})
    changes = []
    cleaned, _ = clean_frame(frame, normalize_whitespace=True, drop_empty=True, drop_missing_labels=True,
                             drop_duplicates=True, source="f", changes=changes)  # fmt: skip
    fixed = fix_frame(cleaned, CleanConfig(conflicting_labels="majority"), similarity=0.8, source="f", changes=changes)
    assert fixed["row"].tolist() == [1, 6, 7] and fixed["label"].tolist() == ["pos", "pos", "neg"]
    assert changes[-1]["row"] == 6 and changes[-1]["action"] == "relabelled"


def test_majority_keeps_numeric_labels_numeric():
    frame = _rows_table(["a b c d e", "a b c d e f", "a b c d e g"], [0.5, 0.5, 1.0])
    fixed = fix_frame(frame, CleanConfig(conflicting_labels="majority"), similarity=0.8, source="f", changes=[])
    assert fixed["label"].tolist() == [0.5, 0.5, 0.5] and fixed["label"].dtype == float


def test_near_duplicate_groups_do_not_chain():
    texts = [
        "one two three four five six",
        "one two three four five SEVEN",
        "one two three four EIGHT SEVEN",
        "one two three NINE EIGHT SEVEN",
    ]  # each a near copy of the one before, not of the first
    exact, near = quality.duplicate_groups(_table(texts, ["a"] * 4), threshold=0.8)
    assert near == [[0, 1], [2, 3]]
    changes = []
    fix_frame(_rows_table(texts, ["a"] * 4), CleanConfig(drop_near_duplicates=True), similarity=0.8, source="f",
              changes=changes)  # fmt: skip
    assert [(c["row"], c["reason"]) for c in changes] == [
        (2, "near duplicate of row 1"),
        (4, "near duplicate of row 3"),
    ]


def test_parquet_saved_with_its_index_is_numbered_by_position(tmp_path, tiny_model_dir):
    path = tmp_path / "indexed.parquet"
    pd.DataFrame({"text": ["fine text here", "!!!", "another good one"], "label": ["a", "b", "a"]},
                 index=[5, 8, 9]).to_parquet(path)  # fmt: skip
    config = load_config(None, [f"model.name={tiny_model_dir}", "inspect.label_errors=off"])
    report = inspect_data(config, [str(path)], tmp_path / "r", task=build_task(config), progress=False,
                          log=lambda m: None)  # fmt: skip
    assert report["junk"]["train"]["rows"] == [{"row": 2, "reason": "only punctuation or symbols", "text": "!!!"}]


def test_fix_writes_rows_as_read_with_integer_labels(tmp_path, tiny_model_dir):
    from tunesmith.data.inspection import write_fixed

    path = tmp_path / "ints.jsonl"
    rows = [{"text": "  spaced   text one ", "label": 0}, {"text": "text two", "label": 1}, {"text": "!!!", "label": 0},
            {"text": "text three", "label": 1}, {"text": "text three", "label": 1}]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = load_config(None, [f"model.name={tiny_model_dir}", "data.clean.drop_junk=true"])
    write_fixed(config, [str(path)], tmp_path / "out", task=build_task(config), log=lambda m: None)
    written = [json.loads(line) for line in (tmp_path / "out" / "ints.jsonl").read_text().splitlines()]
    assert written == [rows[0], rows[1], rows[3]]
    changes = [json.loads(line) for line in (tmp_path / "out" / "changelog.jsonl").read_text().splitlines()]
    assert [(c["row"], c["action"]) for c in changes] == [(5, "dropped"), (3, "dropped")]


def test_augmenting_with_a_tiny_ratio_adds_nothing():
    from tunesmith.data.augment import augment_frame

    frame = pd.DataFrame(sentiment_rows(10))
    out, counts = augment_frame(frame, ratio=0.01, operations=["swap"], word_share=0.1, char_share=0.05,
                                neighbours={}, seed=0)  # fmt: skip
    assert len(out) == 10 and counts["rows_added"] == 0
