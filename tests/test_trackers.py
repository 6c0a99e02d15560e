"""runtime.report_to: TensorBoard, MLflow and W&B receive what the run directory records, each
read back with the library's own reader (W&B's offline records with its protobuf classes)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pandas as pd
import pytest

import tunesmith
from tests.conftest import sentiment_rows, tiny_config
from tunesmith.config import config_from_dict
from tunesmith.errors import TunesmithError
from tunesmith.runs import RunDir
from tunesmith.train import trackers
from tunesmith.train.callbacks import Callback


class Interrupted(RuntimeError):
    pass


class StopAt(Callback):
    """Stops the run after the trackers logged ``step``, as a crash would."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, state, logs):
        if state.step == self.step:
            raise Interrupted(f"stopped at step {state.step}")


def wandb_records(run_file: Path):
    """The records of an offline ``run-ID.wandb`` file: wandb writes them in the LevelDB log
    format (a 7-byte file header, 32 KiB blocks, records split into FULL/FIRST/MIDDLE/LAST
    chunks, each with a crc32, length and type), and the SDK ships no reader for it."""
    from wandb.proto import wandb_internal_pb2

    data, block = run_file.read_bytes(), 32 * 1024
    assert data[:4] == b":W&B"
    position, pending = 7, b""
    while position + 7 <= len(data):
        left = block - position % block
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if left < 7 or (length == 0 and kind == 0):  # block padding
            position += left
            continue
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def _logged(points: set[tuple[int, float]], step: int, value: float) -> bool:
    """``value`` was logged at ``step`` (a resumed run may have logged that step twice)."""
    return any(at == step and logged == pytest.approx(value) for at, logged in points)


def _records(run: Path, split: str) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if row["split"] == split]


@pytest.fixture
def tracker_env(monkeypatch, tmp_path):
    """No tracker server and no W&B account: every tracker keeps to the run directory."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_MODE", "WANDB_API_KEY", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # nothing written to ~
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))


def test_trackers_receive_the_logged_scalars_parameters_final_metrics_and_report(tmp_path, tiny_model_dir,
                                                                                  tracker_env):  # fmt: skip
    data = tmp_path / "data.csv"
    pd.DataFrame(sentiment_rows(40)).to_csv(data, index=False)
    run = tmp_path / "run"
    config = tiny_config(
        tiny_model_dir, data, run, train={"num_epochs": 1, "max_steps": 3, "eval_every_steps": 2},
        evaluation={"bootstrap_samples": 0},
        runtime={"report_to": ["tensorboard", "mlflow", "wandb"], "checkpoint_every_steps": 1},
    )  # fmt: skip
    # Stopped after step 3 was logged but before its checkpoint, then resumed from step 2:
    # every tracker must continue its run, with step 3 logged again.
    with pytest.raises(Interrupted):
        tunesmith.train(config, callbacks=[StopAt(3)])
    tunesmith.resume(run)

    train, validation = _records(run, "train"), _records(run, "validation")
    assert [r["step"] for r in train] == [1, 2, 3] and [r["step"] for r in validation] == [2, 3]
    final = json.loads((run / "metrics.json").read_text())
    ids = json.loads((run / "trackers.json").read_text())

    # TensorBoard: its own reader sees each step once (the stopped attempt's step 3 is purged).
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0}).Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [
        (r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in train]  # fmt: skip
    assert [e.value for e in events.Scalars("validation/macro_f1")] == pytest.approx(
        [r["macro_f1"] for r in validation]
    )
    assert events.Scalars("final/test/accuracy")[-1].value == pytest.approx(final["test"]["accuracy"])
    text = events.Tensors("artifacts/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert str((run / "report.html").resolve()) in text

    # MLflow: one run in RUN/mlflow.db, continued by the resume, with the run's artifacts in RUN/mlruns.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    found = client.get_run(ids["mlflow"])
    assert found.info.status == "FINISHED"
    assert len(client.search_runs([found.info.experiment_id])) == 1
    assert found.data.params["train.learning_rate"] == "0.003" and found.data.params["runtime.report_to"].startswith(
        "["
    )
    history = {(m.step, m.value) for m in client.get_metric_history(ids["mlflow"], "train/loss")}
    assert {step for step, _ in history} == {1, 2, 3}
    assert all(_logged(history, r["step"], r["loss"]) for r in train)
    assert found.data.metrics["final/test/accuracy"] == pytest.approx(final["test"]["accuracy"])
    assert found.data.metrics["final/training/best_step"] == final["training"]["best_step"]
    assert {a.path for a in client.list_artifacts(ids["mlflow"])} >= {"report.html", "README.md", "metrics.json"}
    assert (run / "mlruns" / ids["mlflow"] / "artifacts" / "report.html").read_bytes() == (
        run / "report.html").read_bytes()  # fmt: skip

    # W&B: offline runs under RUN/wandb, the resumed one with the same id, the summary and the files.
    attempts = sorted((run / "wandb").glob(f"offline-run-*-{ids['wandb']}"))
    assert len(attempts) == 2
    records = [r for attempt in attempts for r in wandb_records(attempt / f"run-{ids['wandb']}.wandb")]
    logged = {(r.history.step.num, json.loads(item.value_json)) for r in records if r.HasField("history")
              for item in r.history.item if _key(item) == "train/loss"}  # fmt: skip
    assert all(_logged(logged, r["step"], r["loss"]) for r in train)
    summary = {_key(item): json.loads(item.value_json) for r in records if r.HasField("summary")
               for item in r.summary.update}  # fmt: skip
    assert summary["final/test/accuracy"] == pytest.approx(final["test"]["accuracy"])
    config_items = {_key(item): json.loads(item.value_json) for r in records if r.HasField("run")
                    for item in r.run.config.update}  # fmt: skip
    assert config_items["train.learning_rate"] == 0.003
    assert (attempts[-1] / "files" / "report.html").read_bytes() == (run / "report.html").read_bytes()
    assert [r.exit.exit_code for r in records if r.HasField("exit")] == [1, 0]


def test_an_unknown_tracker_is_refused_with_the_allowed_names():
    with pytest.raises(TunesmithError) as error:
        config_from_dict({"runtime": {"report_to": ["tensorboard", "neptune"]}})
    assert "runtime.report_to" in str(error.value) and "'tensorboard', 'mlflow' or 'wandb'" in str(error.value)
    assert config_from_dict({"runtime": {"report_to": "none"}}).runtime.report_to == []
    assert config_from_dict({"runtime": {"report_to": "mlflow,tensorboard"}}).runtime.report_to == [
        "mlflow", "tensorboard"]  # fmt: skip


def test_a_missing_tracker_package_is_named_before_any_work(tmp_path, tiny_model_dir, sentiment_csv, monkeypatch):
    monkeypatch.setitem(trackers.PACKAGES, "wandb", ("tunesmith_no_such_module", "wandb==0.31.0"))
    config = tiny_config(tiny_model_dir, sentiment_csv, tmp_path / "run", runtime={"report_to": ["wandb"]})
    with pytest.raises(TunesmithError, match=r"pip install wandb==0\.31\.0"):
        tunesmith.train(config)
    assert not (tmp_path / "run").exists()


def test_only_rank_zero_reports(monkeypatch, tmp_path):
    config = config_from_dict({"runtime": {"report_to": ["tensorboard"]}})
    monkeypatch.setenv("RANK", "1")
    with trackers.tracking(RunDir(tmp_path), config) as callbacks:
        assert callbacks == []
    monkeypatch.setenv("RANK", "0")
    with trackers.tracking(RunDir(tmp_path), config) as callbacks:
        assert [type(c) for c in callbacks] == [trackers.TrackerCallback]
    assert not (tmp_path / "tensorboard").exists()  # the trackers start with the training, not before
