"""Tables (task.type tabular): columns declared or detected, cells read by kind (missing and
wrong-type cells counted), statistics from the training rows only, rows written as sentences,
the boosting baseline, and predict/serve on raw rows with their warnings and errors. The
conformance test (test_conformance.py) covers training, the round trip and every declared stage."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from tests.makers import table_rows, tiny_task_config, write_table
from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.data.table import TableColumns, TableStatistics, detect_columns, read_cells, serialise
from tunesmith.errors import TunesmithError
from tunesmith.models.boosting import boosted_outputs
from tunesmith.ship.export import export
from tunesmith.ship.serve import create_app
from tunesmith.tasks import build_task


def _task(**section):
    return build_task(config_from_dict({"task": {"type": "tabular", **section}}))


def test_columns_are_detected_by_their_cells_and_declared_ones_are_checked():
    frame = pd.DataFrame({
        "review": [f"words number {i} of a free text" for i in range(40)],
        "age": [str(20 + i) if i != 7 else "n/a" for i in range(40)],  # 1 of 40 not a number: still numeric
        "city": ["oslo", "rome", "lima", None] * 10,
        "constant": ["same"] * 40,
        "label": ["a", "b"] * 20,
    })  # fmt: skip
    columns, notes = detect_columns(frame, label_column="label", source="t.csv")
    assert columns == TableColumns(text=["review"], numeric=["age"], categorical=["city"])
    assert "text review; numeric age; categorical city" in notes[0]
    assert any("'constant' left out: it holds one value" in n for n in notes)
    declared, notes = detect_columns(frame, label_column="label", source="t.csv", numeric=["age"])
    assert declared == TableColumns(numeric=["age"]) and notes == []
    with pytest.raises(TunesmithError, match=r"t.csv: no feature column 'salary' \(task.numeric_columns\)"):
        detect_columns(frame, label_column="label", source="t.csv", numeric=["salary"])
    with pytest.raises(TunesmithError, match="may not be named 'row'"):
        detect_columns(frame.assign(row=[i % 3 for i in range(40)]), label_column="label", source="t.csv")
    with pytest.raises(TunesmithError, match="column 'age' is in both task.text_columns and task.numeric_columns"):
        config_from_dict({"task": {"type": "tabular", "text_columns": ["age"], "numeric_columns": ["age"]}})


def test_cells_are_read_by_kind_and_rows_written_as_sentences():
    frame = pd.DataFrame({"note": ["  two   words ", None], "age": ["39", "12 kg"], "city": ["oslo", " "],
                          "row": [1, 2]})  # fmt: skip
    columns = TableColumns(text=["note"], numeric=["age"], categorical=["city"])
    table, report = read_cells(frame, columns)
    assert report["age"] == {"missing": 0, "not_a_number": 1, "not_a_number_rows": [2],
                             "not_a_number_examples": ["12 kg"]}  # fmt: skip
    assert report["note"] == {"missing": 1} and report["city"] == {"missing": 1}
    assert serialise(table, columns) == ["note is two words. age is 39. city is oslo.",
                                         "note is unknown. age is unknown. city is unknown."]  # fmt: skip


def test_statistics_come_from_the_training_rows_only(tmp_path):
    rows = table_rows(60)
    for row in rows[40:]:  # rows the split may send to validation or test get numbers far off
        row["stars"] = 1000
    path = write_table(tmp_path / "train.csv", rows)
    config = config_from_dict({"task": {"type": "tabular"},
                               "data": {"train": str(path), "val_fraction": 0.2, "test_fraction": 0.2}})  # fmt: skip
    task = build_task(config)
    data = task.prepare(config)
    train = data.splits["train"]
    held_out = pd.concat([data.splits["validation"], data.splits["test"]])
    assert (held_out["stars"] == 1000).any() and (train["stars"] == 1000).any()  # both sides hold the far-off rows
    stars = train["stars"].dropna()
    assert task.statistics.rows == len(train)
    assert task.statistics.numeric["stars"]["mean"] == pytest.approx(stars.mean(), rel=1e-5)
    assert task.statistics.numeric["stars"]["max"] == stars.max()
    everything = pd.concat([train, held_out])["stars"].dropna()
    assert not math.isclose(task.statistics.numeric["stars"]["mean"], everything.mean(), rel_tol=1e-3)
    assert data.manifest["table"]["statistics"] == task.statistics.to_dict()
    assert data.manifest["table"]["statistics_from"] == f"the {len(train)} training rows only"


def test_reading_cleans_rows_and_names_what_is_missing(tmp_path):
    rows = table_rows(10)
    rows.append({"review": None, "stars": None, "channel": None, "label": "positive"})  # nothing filled
    rows.append({**rows[0], "label": None})
    rows.append(dict(rows[1]))  # an exact duplicate
    path = write_table(tmp_path / "t.csv", rows)
    task = _task()
    frame, entry = task.read(str(path), config_from_dict({}).data)
    assert entry["cleaning"] == {"rows_in": 13, "dropped_missing_label": 1, "dropped_empty_row": 1,
                                 "dropped_duplicates": 1, "rows_out": 10}  # fmt: skip
    assert entry["cells"]["stars"]["missing"] == 2  # rows 4 and 11 of the file; row 11 was dropped after reading
    write_table(tmp_path / "other.csv", [{"review": "x", "stars": 1, "label": "positive"}])
    with pytest.raises(TunesmithError, match=r"other.csv: no column 'channel'; the model reads"):
        task.read(str(tmp_path / "other.csv"), config_from_dict({}).data)
    with pytest.raises(TunesmithError, match=r"no label column 'target' \(data.label_column\)"):
        _task().read(str(path), config_from_dict({"data": {"label_column": "target"}}).data)


def test_the_boosting_baseline_learns_a_table_and_marks_unseen_classes():
    frame = pd.DataFrame(table_rows(120)).assign(row=range(1, 121))
    columns = TableColumns(text=["review"], numeric=["stars"], categorical=["channel"])
    table, _ = read_cells(frame, columns)
    targets = (frame["label"] == "positive").to_numpy().astype(int)
    options = {"text": columns.text, "numeric": columns.numeric, "categorical": columns.categorical, "seed": 0}
    [logits] = boosted_outputs(table.iloc[:80], targets[:80], [table.iloc[80:]], regression=False,
                               num_classes=3, **options)  # fmt: skip
    assert logits.shape == (40, 3) and (logits[:, 2] == -30).all()  # class 2 has no training row
    assert (logits.argmax(1) == targets[80:]).mean() >= 0.9
    [values] = boosted_outputs(table.iloc[:80], targets[:80].astype(float), [table.iloc[80:]], regression=True,
                               num_classes=1, **options)  # fmt: skip
    assert values.shape == (40, 1) and np.abs(values[:, 0] - targets[80:]).mean() < 0.2


@pytest.fixture(scope="module")
def table_run(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("tabular")
    train = write_table(root / "train.csv", table_rows(60))
    config = tiny_task_config("tabular", tiny_model_dir, train, root / "run")
    config["train"].update(num_epochs=2)
    return api.train(config)


def test_a_run_carries_the_boosting_baseline_and_its_columns(table_run):
    metrics = table_run.metrics
    baseline = json.loads((table_run.run_dir / "metrics.json").read_text())["baseline"]
    assert baseline["model"] == "lightgbm" and baseline["train_rows"] == 36
    assert 0.0 <= baseline["test"]["accuracy"] <= 1.0 and baseline["test"]["count"] == metrics["test"]["count"]
    interval = baseline["test"]["confidence_intervals"]["accuracy"]
    assert interval["low"] <= baseline["test"]["accuracy"] == interval["estimate"] <= interval["high"]
    saved = json.loads((table_run.run_dir / "task.json").read_text())
    assert saved["columns"] == {"text": ["review"], "numeric": ["stars"], "categorical": ["channel"]}
    assert saved["statistics"]["rows"] == 36
    report = (table_run.run_dir / "README.md").read_text(encoding="utf-8")
    assert "Baseline: what fine-tuning added" in report and "LightGBM" in report
    predictions = pd.read_parquet(table_run.run_dir / "predictions_test.parquet")
    assert predictions["input"].str.startswith("review is ").all()


def test_predict_takes_raw_rows_with_warnings_and_names_a_missing_column(table_run):
    rows = [{"review": "good great lovely", "stars": "five", "channel": "phone"},
            {"review": "bad grim", "stars": 1, "channel": "store"}]  # fmt: skip
    found = api.predict(table_run.run_dir, rows)
    assert found[0]["text"] == "review is good great lovely. stars is unknown. channel is phone."
    assert found[0]["warning"] == ("stars: 'five' is not a number; read as missing; "
                                   "channel: 'phone' was not seen in training")  # fmt: skip
    assert "warning" not in found[1] and found[1]["label"] in ("positive", "negative")
    with pytest.raises(TunesmithError, match=r"input 1: no column 'channel'"):
        api.predict(table_run.run_dir, [{"review": "x", "stars": 2}])
    with pytest.raises(TunesmithError, match="input 1: a tabular run takes rows as objects"):
        api.predict(table_run.run_dir, ["just a text"])


def test_serve_takes_json_rows_and_refuses_a_row_without_a_column(table_run):
    with TestClient(create_app(table_run.run_dir)) as client:
        good = client.post("/predict", json={"inputs": [{"review": "good", "stars": 5, "channel": "web"}]})
        assert good.status_code == 200, good.text
        assert good.json()["predictions"][0]["label"] in ("positive", "negative")
        bad = client.post("/predict", json={"inputs": [{"review": "good", "channel": "web"}]})
        assert bad.status_code == 422 and "no column 'stars'" in bad.text


def test_statistics_round_trip_through_task_json():
    stats = TableStatistics.fit(pd.DataFrame({"n": [1.0, np.nan, 3.0], "c": ["x", None, "x"]}),
                                TableColumns(numeric=["n"], categorical=["c"]))  # fmt: skip
    assert stats.numeric["n"]["median"] == 2.0 and stats.numeric["n"]["missing_share"] == pytest.approx(1 / 3, 1e-5)
    assert TableStatistics.from_dict(json.loads(json.dumps(stats.to_dict()))) == stats
    assert stats.unseen(pd.DataFrame({"n": [1.0], "c": ["y"]})) == [["c: 'y' was not seen in training"]]


def test_the_feature_vector_uses_training_statistics_only():
    train = pd.DataFrame({"n": [1.0, 3.0, np.nan, 5.0], "c": ["x", "y", "x", None]})
    columns = TableColumns(numeric=["n"], categorical=["c"])
    stats = TableStatistics.fit(train, columns)
    assert stats.feature_names() == ["n", "n (missing)", "c=x", "c=y", "c (other)", "c (missing)"]
    new = pd.DataFrame({"n": [3.0, np.nan, 1e9], "c": ["y", "z", None]})
    vector = stats.vector(new)
    std = np.std([1.0, 3.0, 5.0])
    assert vector[:, 0].tolist() == pytest.approx([0.0, 0.0, 10.0])  # the mean, missing as 0, clipped
    assert vector[:, 1].tolist() == [0.0, 1.0, 0.0]
    assert vector[:, 2:].tolist() == [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]  # y, unseen z, missing
    assert stats.vector(pd.DataFrame({"n": [3.0 + std], "c": ["x"]}))[0, 0] == pytest.approx(1.0, rel=1e-5)


def _fusion_steps(tiny_model_dir, tmp_path, strategy: dict, steps: int = 4):
    """The tiny fusion model with a strategy applied, trained ``steps`` steps on table rows: the
    model, the parameters training changed, and every parameter name."""
    import torch

    from tests.conftest import tiny_config
    from tunesmith.models.adapt import apply_strategy
    from tunesmith.models.load import load_tokenizer, resolve_model
    from tunesmith.runs import RunDir
    from tunesmith.train.loop import run_training

    train_file = write_table(tmp_path / "t.csv", table_rows(64))
    config = config_from_dict(tiny_config(tiny_model_dir, train_file, tmp_path / "run", model=strategy,
                                          task={"type": "tabular", "route": "fusion"},
                                          train={"max_steps": steps, "num_epochs": 100}))  # fmt: skip
    torch.manual_seed(0)
    task = build_task(config)
    data = task.prepare(config)
    resolved = resolve_model(str(tiny_model_dir))
    tokenizer = load_tokenizer(resolved)
    encoded = task.encode(tokenizer, {"train": data.splits["train"]})
    model, new = task.load_model(resolved, 0.0)
    model, unfreezer = apply_strategy(model, config.model, new)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = run_training(model=model, task=task, train_features=encoded.features["train"], val_features=[],
                          config=config, run=RunDir.create(tmp_path / "run"), pad_token_id=tokenizer.pad_token_id,
                          unfreezer=unfreezer, log=lambda message: None)  # fmt: skip
    after = dict(result.model.named_parameters())
    return {n for n in before if not torch.equal(before[n], after[n].detach())}, set(before)


def test_fusion_trains_its_feature_layer_with_the_encoder(tiny_model_dir, tmp_path):
    changed, names = _fusion_steps(tiny_model_dir, tmp_path, {"strategy": "full"})
    pooler = {n for n in names if ".pooler." in n}  # the masked mean is read, not BERT's pooler
    assert changed == names - pooler and any(n.startswith("table.") for n in changed)


def test_fusion_with_lora_trains_adapters_head_and_feature_layer_only(tiny_model_dir, tmp_path):
    # No target_modules: PEFT's defaults for the wrapped encoder (BERT: query and value).
    changed, names = _fusion_steps(tiny_model_dir, tmp_path, {"strategy": "lora", "lora": {"rank": 4}})
    assert any(".query.lora_A" in n for n in names) and any(".value.lora_A" in n for n in names)
    saved = {n for n in names if "modules_to_save" in n}
    assert any(".table." in n for n in saved) and any("classifier" in n for n in saved)
    assert {n for n in names if "lora_B" in n} | saved <= changed
    assert not changed & {n for n in names if "lora_" not in n and "modules_to_save" not in n}


def test_a_fusion_run_exports_to_onnx_and_serves_rows(tmp_path, tiny_model_dir):
    train = write_table(tmp_path / "train.csv", table_rows(60))
    config = tiny_task_config("tabular", tiny_model_dir, train, tmp_path / "run")
    config["task"]["route"] = "fusion"
    config["train"].update(num_epochs=2)
    result = api.train(config)
    assert json.loads((result.run_dir / "task.json").read_text())["route"] == "fusion"
    losses = [r["loss"] for r in map(json.loads, (result.run_dir / "metrics.jsonl").read_text().splitlines())
              if "loss" in r]  # fmt: skip
    assert losses and all(math.isfinite(v) for v in losses)
    report = export(result.run_dir, tmp_path / "onnx", fmt="onnx", log=lambda m: None)
    assert report["models"]["model.onnx"]["label_agreement"] == 1.0, report["models"]
    rows = [{"review": "good great lovely", "stars": 5, "channel": "web"},
            {"review": "bad grim", "stars": None, "channel": "phone"}]  # fmt: skip
    with TestClient(create_app(tmp_path / "onnx", threads=1)) as client:
        served = client.post("/predict", json={"inputs": rows})
    assert served.status_code == 200, served.text
    direct = api.predict(result.run_dir, rows)
    assert [p["label"] for p in served.json()["predictions"]] == [p["label"] for p in direct]
    assert served.json()["predictions"][1]["warning"] == "channel: 'phone' was not seen in training"


def test_a_regression_table_trains_unstratified_with_a_boosting_baseline(tmp_path, tiny_model_dir):
    rows = [{**row, "label": float(row["stars"] or 3) + (0.5 if row["label"] == "positive" else 0.0)}
            for row in table_rows(50)]  # fmt: skip
    train = write_table(tmp_path / "train.csv", rows)
    config = tiny_task_config("tabular", tiny_model_dir, train, tmp_path / "run")
    config["task"].update(target="regression", route="fusion")
    result = api.train(config)
    assert {"mse", "r2"} <= result.metrics["test"].keys()
    assert {"mean", "std", "min", "max"} == json.loads((result.run_dir / "data_manifest.json").read_text())[
        "splits"]["train"]["labels"].keys()  # fmt: skip
    baseline = json.loads((result.run_dir / "metrics.json").read_text())["baseline"]["test"]
    assert baseline["mse"] >= 0 and "mse" in baseline["confidence_intervals"]
    targets = pd.read_parquet(result.run_dir / "data" / "train.parquet")["label"].astype(float)
    saved = json.loads((result.run_dir / "model" / "config.json").read_text())  # the head outputs at the targets' scale
    assert saved["output_shift"] == pytest.approx(targets.mean()) and saved["output_scale"] == pytest.approx(
        targets.std(ddof=0)
    )
    [row] = api.predict(result.run_dir, [{"review": "good", "stars": 4, "channel": "web"}])
    assert isinstance(row["value"], float)


def test_monitor_checks_each_column_and_flags_the_one_that_moved(table_run, tmp_path):
    from tunesmith.ship.monitor import monitor

    same = write_table(tmp_path / "same.csv", table_rows(40, seed=3))
    quiet = monitor(table_run.run_dir, same, tmp_path / "quiet", log=lambda m: None)
    assert {"column stars", "column channel"} <= quiet["checks"].keys()
    assert not quiet["checks"]["column channel"]["drift"]
    moved = [{**row, "stars": 1000 + i, "channel": "phone"} for i, row in enumerate(table_rows(40, seed=3))]
    loud = monitor(table_run.run_dir, write_table(tmp_path / "moved.csv", moved), tmp_path / "loud",
                   log=lambda m: None)  # fmt: skip
    assert {"column stars", "column channel"} <= set(loud["drifted"])
    assert loud["checks"]["column stars"]["value"] == 1.0  # every live number above every reference one
    assert "Column stars" in (tmp_path / "loud" / "monitor.html").read_text(encoding="utf-8")


def test_the_board_playground_shows_a_row_form_that_predicts(table_run):
    from tunesmith.board.try_pages import input_form
    from tunesmith.ship.serve import Predictor

    predictor = Predictor(table_run.run_dir)
    form = input_form(predictor, table_run.run_dir)
    assert form.shape == "row" and [name for name, _ in form.fields] == ["review", "stars", "channel"]
    [row] = predictor.predict([form.item({"review": "good great", "stars": "", "channel": "web"})])
    assert row["label"] in ("positive", "negative") and "warning" not in row


def test_cells_read_the_same_however_the_file_typed_them():
    from tunesmith.data.table import cell_text, format_number, is_blank

    assert [cell_text(v) for v in (7, 7.0, np.int64(7), "7", " two  words ")] == ["7", "7", "7", "7", "two words"]
    assert all(is_blank(v) for v in (None, np.nan, pd.NA, pd.NaT, "  ")) and not is_blank(0)
    assert [format_number(v) for v in (39.0, 1234572.0, 0.000123456789, 2.5)] == ["39", "1234572", "0.000123457", "2.5"]
    frame = pd.DataFrame({"c": [1, None], "row": [1, 2]})  # pandas reads this column as 1.0, NaN
    table, _ = read_cells(frame, TableColumns(categorical=["c"]))
    assert table["c"].tolist() == ["1", None]
    flags = pd.DataFrame({"vip": ["yes", None] * 20, "label": ["a", "b"] * 20})  # one value and gaps: a flag
    assert detect_columns(flags, label_column="label", source="f.csv")[0] == TableColumns(categorical=["vip"])
    with pytest.raises(TunesmithError, match="'label' is the label"):
        detect_columns(flags, label_column="label", source="f.csv", numeric=["label"])


def test_monitor_flags_a_number_column_that_went_missing(table_run, tmp_path):
    from tunesmith.ship.monitor import monitor

    gone = [{**row, "stars": None} for row in table_rows(40, seed=3)]
    report = monitor(table_run.run_dir, write_table(tmp_path / "gone.csv", gone), tmp_path / "gone", log=lambda m: None)
    assert "column stars missing" in report["drifted"] and "column stars" not in report["checks"]
    assert report["checks"]["column stars missing"]["live_missing_share"] == 1.0
