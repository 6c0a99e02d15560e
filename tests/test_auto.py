"""tunesmith auto: detection, the plan and its reasons, the budget, the leaderboard."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import sentiment_rows, tiny_config
from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.errors import TunesmithError
from tunesmith.study.auto import detect, fit_length, parse_budget, plan, run_auto, training_speed
from tunesmith.train.callbacks import Deadline


def test_budgets_read_as_durations():
    assert [parse_budget(t) for t in ("90s", "15m", "1.5h", "42", " 2M ")] == [90, 900, 5400, 42, 120]
    for bad in ("soon", "-5m", "0", "m", "nanm"):
        with pytest.raises(TunesmithError, match="--time-budget"):
            parse_budget(bad)


def _table(tmp_path, name: str, frame: pd.DataFrame):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def test_detects_each_kind_and_its_columns(tmp_path):
    rows = sentiment_rows(40, seed=1)
    texts = [r["text"] for r in rows]
    single = detect(str(_table(tmp_path, "a.csv", pd.DataFrame({"id": range(40), "body": texts,
                                                                    "label": [r["label"] for r in rows]}))))  # fmt: skip
    assert (single.kind, single.text_column, single.label_column) == ("single_label", "body", "label")
    assert single.labels == {"positive": 20, "negative": 20}
    numbers = detect(str(_table(tmp_path, "b.csv", pd.DataFrame({"words": texts, "price": [i * 1.5 for i in range(40)]}))),
                     target="price")  # fmt: skip
    assert numbers.kind == "regression" and numbers.text_column == "words"
    tags = detect(str(_table(tmp_path, "c.csv", pd.DataFrame({"text": texts, "topics": ["a|b", "b"] * 20}))),
                  target="topics")  # fmt: skip
    assert tags.kind == "multi_label"
    few_numbers = detect(str(_table(tmp_path, "d.csv", pd.DataFrame({"text": texts, "stars": [1, 2, 3, 4, 5] * 8}))),
                         target="stars")  # fmt: skip
    assert few_numbers.kind == "single_label"  # five distinct numbers are classes
    ids = detect(str(_table(tmp_path, "e.csv", pd.DataFrame({"text": texts, "topic": list(range(20)) * 2}))),
                 target="topic")  # fmt: skip
    assert ids.kind == "single_label"  # 20 whole numbers: class ids, not a quantity
    with pytest.raises(TunesmithError, match=r"no column 'nope' \(--target\)"):
        detect(str(tmp_path / "a.csv"), target="nope")


def test_the_plan_follows_the_data_and_says_why(tmp_path, tiny_model_dir):
    rows = sentiment_rows(80, seed=2)
    few = _table(tmp_path, "few.csv", pd.DataFrame(rows))
    found = plan(detect(str(few)), str(few), model=str(tiny_model_dir))
    assert [c.name for c in found.candidates] == ["zero_shot", "contrastive", "full"]
    assert all(c.reason for c in found.candidates)
    assert found.base["data"]["val_fraction"] == 0.2 and "balance" not in found.base["data"]
    tokens = found.base["model"]["max_length"]
    assert tokens % 8 == 0 and 8 <= tokens <= 32 and any("model.max_length" in c for c in found.choices)

    many = [{"text": r["text"], "label": "1" if r["label"] == "positive" else "0"} for r in sentiment_rows(800, seed=3)]
    many = [r for r in many if r["label"] == "1"] + [r for r in many if r["label"] == "0"][:50]  # 400 against 50
    path = _table(tmp_path, "many.csv", pd.DataFrame(many))
    found = plan(detect(str(path)), str(path), model=str(tiny_model_dir))
    # numbered labels: no zero-shot; 360 training rows: contrastive, and too few for LoRA
    assert [c.name for c in found.candidates] == ["contrastive", "full"]
    assert found.base["data"]["balance"] == {"method": "class_weights"}
    assert any("class weights" in c for c in found.choices)
    with pytest.raises(TunesmithError, match="--strategies"):
        plan(detect(str(path)), str(path), model=str(tiny_model_dir), strategies=["magic"])


def test_the_max_length_shrinks_to_what_the_budget_can_train(tmp_path, tiny_model_dir):
    lengths = np.array([100, 300, 600, 600])  # mean 356 tokens cut at 512, 292 at 384, 217 at 256
    steady = lambda length: 1000.0  # noqa: E731
    assert fit_length(lengths, 512, train_rows=100, speed=steady, seconds=45) == (512, pytest.approx(35.6))
    assert fit_length(lengths, 512, train_rows=100, speed=steady, seconds=25)[0] == 256
    assert fit_length(lengths, 512, train_rows=100, speed=steady, seconds=1)[0] == 64  # the shortest step
    assert fit_length(lengths, 200, train_rows=100, speed=steady, seconds=17)[0] == 192  # 17.5 s at 200
    faster_when_shorter = lambda length: 1000.0 * 512 / length  # noqa: E731
    assert fit_length(lengths, 512, train_rows=100, speed=faster_when_shorter, seconds=25)[0] == 384
    speed = training_speed(str(tiny_model_dir), ["a long text " * 40] * 4)
    assert speed(128) > 0 and speed(64) > 0

    rows = [{"text": " ".join([r["text"]] * 40), "label": r["label"]} for r in sentiment_rows(60, seed=5)]
    path = _table(tmp_path, "long.csv", pd.DataFrame(rows))
    unlimited = plan(detect(str(path)), str(path), model=str(tiny_model_dir))
    assert unlimited.base["model"]["max_length"] == 128  # the texts need more, the tiny model takes no more
    assert any("the model takes at most 128" in c for c in unlimited.choices)
    hurried = plan(detect(str(path)), str(path), model=str(tiny_model_dir), budget=0.01)
    assert hurried.base["model"]["max_length"] == 64
    assert any("not " + str(unlimited.base["model"]["max_length"]) in c and "budget" in c for c in hurried.choices)
    relaxed = plan(detect(str(path)), str(path), model=str(tiny_model_dir), budget=1e6)
    assert relaxed.base["model"]["max_length"] == unlimited.base["model"]["max_length"]


def test_a_deadline_ends_training_like_early_stopping(tmp_path, tiny_model_dir):
    data = _table(tmp_path, "d.csv", pd.DataFrame(sentiment_rows(60, seed=6)))
    stop = Deadline(time.monotonic())  # already past: the first step is the last
    tree = tiny_config(tiny_model_dir, data, tmp_path / "run", train={"num_epochs": 3})
    result = api.train(config_from_dict(tree), callbacks=[stop])
    assert stop.stopped_at == 1
    training = json.loads((result.run_dir / "metrics.json").read_text())["training"]
    assert training["steps"] == 1 and "test" in result.metrics  # finished and scored, not lost


def test_auto_stops_on_its_budget(tmp_path, tiny_model_dir):
    data = _table(tmp_path, "d.csv", pd.DataFrame(sentiment_rows(80, seed=4)))
    started = time.monotonic()
    report = run_auto(str(data), tmp_path / "auto", train=api.train, budget=1.0, strategies=["contrastive", "full"],
                      overrides=[f"model.name={tiny_model_dir}", "runtime.progress=false"], log=lambda m: None)  # fmt: skip
    elapsed = time.monotonic() - started
    statuses = [row["status"] for row in report["leaderboard"]]
    assert statuses[-1] == "skipped (budget spent)"  # nothing starts after the budget
    assert all(s == "skipped (budget spent)" or "the budget stopped it" in s for s in statuses), statuses
    assert elapsed < 90 and (tmp_path / "auto" / "auto.md").exists()
    if report["best"] is None:
        assert "time budget" in report["problem"]


def test_auto_runs_the_recipes_searches_and_reports_the_best(tmp_path, tiny_model_dir):
    data = _table(tmp_path, "d.csv", pd.DataFrame(sentiment_rows(80, seed=5)))
    out = tmp_path / "auto"
    report = run_auto(str(data), out, train=api.train, budget=600, strategies=["zero_shot", "full"], search_trials=1,
                      overrides=[f"model.name={tiny_model_dir}", "runtime.progress=false", "train.learning_rate=3e-3"],
                      log=lambda m: None)  # fmt: skip
    board = report["leaderboard"]
    assert [row["name"] for row in board][:3] != [] and {"zero_shot", "full"} <= {row["name"] for row in board}
    assert any(row["name"].startswith("full search trial") for row in board)
    values = [row["validation"] for row in board if row["status"] == "complete"]
    assert values == sorted(values, reverse=True) and report["best"]["validation"] == values[0]
    saved = json.loads((out / "auto.json").read_text())
    assert saved["best"]["run"] == report["best"]["run"] and "Leaderboard" in (out / "auto.md").read_text()
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert config_from_dict(best).model.strategy == report["best"]["strategy"]
    # --set wins over the plan: every run used the overridden learning rate (the search varies it)
    full = next(row for row in board if row["name"] == "full")
    assert full["learning_rate"] == 3e-3


def test_the_cli_refuses_bad_input_clearly(tmp_path):
    for args, message in ((["missing.csv"], "missing.csv"), (["x.csv", "--time-budget", "soon"], "--time-budget")):
        done = subprocess.run([sys.executable, "-m", "tunesmith.cli", "auto", *args, "--out", str(tmp_path / "o")],
                              capture_output=True, text=True, cwd=tmp_path, timeout=120)  # fmt: skip
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert not (tmp_path / "o").exists()


def test_the_cli_exits_2_when_no_run_finished(tmp_path, tiny_model_dir):
    data = _table(tmp_path, "d.csv", pd.DataFrame(sentiment_rows(40, seed=7)))
    done = subprocess.run([sys.executable, "-m", "tunesmith.cli", "auto", str(data), "--time-budget", "0.001s",
                           "--strategies", "full", "--out", str(tmp_path / "o"), "--set", f"model.name={tiny_model_dir}"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "no run finished within the time budget" in done.stderr and "auto.md" in done.stderr
    assert (tmp_path / "o" / "auto.md").exists()


def test_auto_reads_the_table_with_the_runs_settings(tmp_path, tiny_model_dir):
    frame = pd.DataFrame(sentiment_rows(40, seed=8))
    raw = frame.to_csv(index=False).encode().replace(b"\n", b"\n\xa3", 1)  # a stray Latin-1 byte in the first text
    (tmp_path / "latin.csv").write_bytes(raw)
    common = {"train": api.train, "budget": 0.001, "log": lambda m: None}
    with pytest.raises(TunesmithError, match="encoding_errors=replace"):
        run_auto(str(tmp_path / "latin.csv"), tmp_path / "strict", overrides=[f"model.name={tiny_model_dir}"], **common)
    report = run_auto(str(tmp_path / "latin.csv"), tmp_path / "replaced", **common,
                      overrides=[f"model.name={tiny_model_dir}", "data.encoding_errors=replace"])  # fmt: skip
    assert report["detected"]["kind"] == "single_label"


def test_a_table_with_numbers_and_categories_is_planned_as_tabular(tmp_path, tiny_model_dir):
    from tests.makers import table_rows

    frame = pd.DataFrame(table_rows(80)).assign(id=range(80))  # a row number is not a feature
    path = _table(tmp_path, "t.csv", frame)
    found = detect(str(path))
    assert found.table == {"text": ["review"], "numeric": ["stars"], "categorical": ["channel"]}
    assert found.kind == "single_label" and found.text_column is None
    assert any("task.type tabular" in n for n in found.notes) and any("'id' left out" in n for n in found.notes)
    planned = plan(found, str(path), model=str(tiny_model_dir))
    assert [c.name for c in planned.candidates] == ["full", "fusion"]  # no zero-shot or contrastive for tables
    assert planned.base["task"] == {"type": "tabular", "target": "classification", "text_columns": ["review"],
                                    "numeric_columns": ["stars"], "categorical_columns": ["channel"]}  # fmt: skip
    assert "text_column" not in planned.base["data"]
    numbers_only = _table(tmp_path, "n.csv", frame.drop(columns=["review"]).rename(columns={"label": "outcome"}))
    assert detect(str(numbers_only), target="outcome").table == {"text": [], "numeric": ["stars"],
                                                                 "categorical": ["channel"]}  # fmt: skip


def test_auto_on_a_table_trains_both_routes_within_its_budget(tmp_path, tiny_model_dir):
    from tests.makers import table_rows

    data = _table(tmp_path, "t.csv", pd.DataFrame(table_rows(60)))
    report = run_auto(str(data), tmp_path / "auto", train=api.train, budget=600, search_trials=0,
                      overrides=[f"model.name={tiny_model_dir}", "runtime.progress=false", "train.num_epochs=2"],
                      log=lambda m: None)  # fmt: skip
    names = {row["name"]: row for row in report["leaderboard"]}
    assert {"full", "fusion"} <= names.keys() and all(names[n]["status"] == "complete" for n in ("full", "fusion"))
    first = json.loads((tmp_path / "auto" / "candidates" / "00-full" / "metrics.json").read_text())
    assert first["baseline"]["model"] == "lightgbm"
