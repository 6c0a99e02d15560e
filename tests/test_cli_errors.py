"""User mistakes at the command line: exit code 2, one clear message, no traceback, nothing written.

Every case fails before any training starts; the configs use the tiny model so that a case
which wrongly got past validation would still finish fast (and then fail its assertions).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import sentiment_rows, tiny_config
from tunesmith.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    # A run directory that defaulted to runs/<timestamp> would land here and show in the snapshot.
    monkeypatch.chdir(tmp_path)


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under root, with the bytes of every file."""
    return {p.relative_to(root).as_posix(): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def _csv(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _config(tmp_path: Path, tiny_model_dir: Path, train_file: Path, name: str = "config.yaml", **sections) -> Path:
    path = tmp_path / name
    config = tiny_config(tiny_model_dir, train_file, tmp_path / "run", **sections)
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _fails_cleanly(tmp_path: Path, args: list, *words: str):
    """Runs the CLI and checks the failure is a user error that changed nothing on disk."""
    before = _snapshot(tmp_path)
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # nothing else escaped
    assert "Traceback" not in result.output
    assert result.stdout == ""  # the run directory is printed only on success
    assert result.output.count("error:") == 1, result.output
    # Compare without whitespace: the console wraps long lines.
    flat = "".join(result.output.split())
    for word in words:
        assert "".join(word.split()) in flat, f"{word!r} not in:\n{result.output}"
    assert _snapshot(tmp_path) == before, "the failed command wrote or changed files"
    return result


# -- data problems ---------------------------------------------------------------------------


def test_missing_data_file(tmp_path, tiny_model_dir):
    config = _config(tmp_path, tiny_model_dir, tmp_path / "missing.csv")
    _fails_cleanly(tmp_path, ["train", config], "Data file not found", "missing.csv")


def test_missing_config_file(tmp_path):
    _fails_cleanly(tmp_path, ["train", tmp_path / "nope.yaml"], "Config file not found", "nope.yaml")


def test_unknown_column(tmp_path, tiny_model_dir, sentiment_csv):
    config = _config(tmp_path, tiny_model_dir, sentiment_csv)
    _fails_cleanly(
        tmp_path,
        ["train", config, "--set", "data.text_column=nope"],
        "sentiment.csv", "no column 'nope'", "data.text_column", "['text', 'label']",
    )  # fmt: skip


def test_header_without_rows(tmp_path, tiny_model_dir):
    data = tmp_path / "empty.csv"
    data.write_text("text,label\n", encoding="utf-8")
    _fails_cleanly(tmp_path, ["train", _config(tmp_path, tiny_model_dir, data)], "empty.csv", "no rows")


def test_all_texts_empty(tmp_path, tiny_model_dir):
    data = tmp_path / "blank.csv"
    data.write_text('text,label\n,positive\n"   ",negative\n"\t",positive\n', encoding="utf-8")
    _fails_cleanly(
        tmp_path, ["train", _config(tmp_path, tiny_model_dir, data)], "blank.csv", "no usable rows", "'empty_text': 3"
    )


def test_single_class(tmp_path, tiny_model_dir):
    rows = [row for row in sentiment_rows(60) if row["label"] == "positive"]
    data = _csv(tmp_path / "one_class.csv", rows)
    _fails_cleanly(
        tmp_path, ["train", _config(tmp_path, tiny_model_dir, data)], "one_class.csv", "only one label (positive)"
    )


@pytest.mark.parametrize("split", ["validation", "test"])
def test_explicit_split_with_labels_train_lacks(tmp_path, tiny_model_dir, sentiment_csv, split):
    extra = _csv(tmp_path / f"{split}_extra.csv", sentiment_rows(30, seed=1, classes=3))  # adds "neutral"
    config = _config(tmp_path, tiny_model_dir, sentiment_csv, data={split: str(extra)})
    _fails_cleanly(
        tmp_path,
        ["train", config],
        f"{split}_extra.csv", f"({split} split)", "['neutral']", "do not occur in the training data",
    )  # fmt: skip


def test_data_file_not_utf8(tmp_path, tiny_model_dir):
    data = tmp_path / "latin1.csv"
    rows = "".join(f"{row['text']},{row['label']}\n" for row in sentiment_rows(40))
    data.write_bytes(b"text,label\n" + rows.encode() + b"caf\xe9 ferm\xe9,negative\n")
    _fails_cleanly(
        tmp_path,
        ["train", _config(tmp_path, tiny_model_dir, data)],
        "latin1.csv", "not UTF-8", "line 42", "data.encoding_errors=replace",
    )  # fmt: skip


# -- config problems -------------------------------------------------------------------------


def test_invalid_value_via_set(tmp_path, tiny_model_dir, sentiment_csv):
    config = _config(tmp_path, tiny_model_dir, sentiment_csv)
    _fails_cleanly(
        tmp_path,
        ["train", config, "--set", "train.learning_rate=-1", "--set", "train.learnig_rate=1e-4"],
        "config.yaml", "train.learning_rate", "greater than 0", "train.learnig_rate", "unknown key",
    )  # fmt: skip


def test_invalid_value_in_yaml_file(tmp_path, tiny_model_dir, sentiment_csv):
    config = _config(tmp_path, tiny_model_dir, sentiment_csv, name="bad.yaml", model={"strategy": "foo"})
    _fails_cleanly(
        tmp_path, ["train", config], "bad.yaml", "model.strategy", "'foo'", "'full'", "'gradual_unfreeze'", "'lora'"
    )


def test_malformed_set(tmp_path, tiny_model_dir, sentiment_csv):
    config = _config(tmp_path, tiny_model_dir, sentiment_csv)
    _fails_cleanly(tmp_path, ["train", config, "--set", "train.learning_rate"], "key=value", "'train.learning_rate'")


def test_existing_run_directory_is_left_untouched(tmp_path, tiny_model_dir, sentiment_csv):
    run = tmp_path / "run"
    run.mkdir()
    (run / "sentinel.txt").write_text("precious results", encoding="utf-8")
    config = _config(tmp_path, tiny_model_dir, sentiment_csv)
    result = _fails_cleanly(tmp_path, ["train", config], "Run directory", "already exists", "runtime.output_dir")
    assert "--resume" not in result.output  # nothing in it to resume from
    assert sorted(p.name for p in run.iterdir()) == ["sentinel.txt"]
    assert (run / "sentinel.txt").read_text(encoding="utf-8") == "precious results"


# -- predict and resume ----------------------------------------------------------------------


def test_predict_on_a_directory_that_is_not_a_run(tmp_path):
    (tmp_path / "somewhere").mkdir()
    _fails_cleanly(
        tmp_path, ["predict", tmp_path / "somewhere", "--text", "hello"], "somewhere", "not a tunesmith run directory"
    )


def test_predict_on_a_run_without_a_model(tmp_path, tiny_model_dir, sentiment_csv):
    run = tmp_path / "unfinished"
    run.mkdir()
    (run / "config.yaml").write_text(_config(tmp_path, tiny_model_dir, sentiment_csv).read_text(), encoding="utf-8")
    _fails_cleanly(tmp_path, ["predict", run, "--text", "hello"], "no trained model yet", "--resume")


def test_predict_never_overwrites_its_output(tmp_path):
    output = tmp_path / "predictions.jsonl"
    output.write_text('{"kept": true}\n', encoding="utf-8")
    _fails_cleanly(
        tmp_path, ["predict", tmp_path, "--text", "hello", "--output", output], "predictions.jsonl", "already exists"
    )


def test_predict_without_texts(tmp_path):
    _fails_cleanly(tmp_path, ["predict", tmp_path], "nothing to predict", "--text", "--input")


def test_resume_with_a_config_argument(tmp_path, tiny_model_dir, sentiment_csv):
    config = _config(tmp_path, tiny_model_dir, sentiment_csv)
    (tmp_path / "old_run").mkdir()
    _fails_cleanly(tmp_path, ["train", config, "--resume", tmp_path / "old_run"], "--resume", "run directory alone")
    _fails_cleanly(
        tmp_path, ["train", "--resume", tmp_path / "old_run", "--set", "train.num_epochs=5"], "run directory alone"
    )


def test_resume_a_directory_that_is_not_a_run(tmp_path):
    (tmp_path / "old_run").mkdir()
    _fails_cleanly(tmp_path, ["train", "--resume", tmp_path / "old_run"], "old_run", "not a tunesmith run directory")


# -- the installed command and the console ---------------------------------------------------


def test_installed_command_reports_a_user_error_without_traceback(tmp_path, tiny_model_dir, sentiment_csv):
    command = Path(sys.executable).with_name("tunesmith")
    assert command.is_file(), "the tunesmith console script is not installed in this environment"
    config = _config(tmp_path, tiny_model_dir, sentiment_csv)
    before = _snapshot(tmp_path)
    done = subprocess.run(
        [str(command), "train", str(config), "--set", "data.label_column=sentiment"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    flat = "".join(done.stderr.split())
    assert "nocolumn'sentiment'(data.label_column)" in flat, done.stderr
    assert _snapshot(tmp_path) == before


def test_message_with_brackets_is_printed_as_is(tmp_path, tiny_model_dir):
    config = _config(tmp_path, tiny_model_dir, tmp_path / "data[v2]" / "train.csv")
    _fails_cleanly(tmp_path, ["train", config], "data[v2]")


def test_long_path_stays_on_one_line(tmp_path, tiny_model_dir):
    missing = tmp_path / ("very_long_folder_name_" * 4) / "train.csv"
    config = _config(tmp_path, tiny_model_dir, missing)
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 2
    assert str(missing) in result.output
