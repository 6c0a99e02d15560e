"""tunesmith tune: search space, samplers, pruning, resumable SQLite studies, best config."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import optuna
import pandas as pd
import pytest
import yaml

from tests.conftest import sentiment_rows, tiny_config
from tunesmith import api
from tunesmith.config import config_from_dict, load_config
from tunesmith.errors import TunesmithError
from tunesmith.study import tune
from tunesmith.train.checkpoint import LoopState

SPACE = {
    "train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "train.batch_size": {"type": "categorical", "choices": [8, 16]},
}


def study_config(tmp_path, tiny_model_dir, **tune_section) -> dict:
    data = tmp_path / "data.csv"
    if not data.exists():
        pd.DataFrame(sentiment_rows(80, seed=3)).to_csv(data, index=False)
    return tiny_config(tiny_model_dir, data, tmp_path / "unused", train={"num_epochs": 2, "eval_every_steps": 2},
                       tune={"space": SPACE, "n_trials": 3, "sampler": "random", **tune_section})  # fmt: skip


def test_grid_values_and_space_errors(tmp_path, tiny_model_dir):
    config = config_from_dict(study_config(tmp_path, tiny_model_dir, space={
        "train.num_epochs": {"type": "int", "low": 1, "high": 3, "step": 1},
        "train.learning_rate": {"type": "float", "low": 0.001, "high": 0.003, "step": 0.001},
        "model.strategy": {"type": "categorical", "choices": ["full", "lora"]}}))  # fmt: skip
    values = tune.grid(config.tune.space)
    assert values["train.num_epochs"] == [1, 2, 3]
    assert values["train.learning_rate"] == pytest.approx([0.001, 0.002, 0.003])
    assert values["model.strategy"] == ["full", "lora"]
    with pytest.raises(TunesmithError, match="'train.lerning_rate' is not a config key"):
        tune.check(config_from_dict(study_config(tmp_path, tiny_model_dir, space={
            "train.lerning_rate": {"type": "float", "low": 0.1, "high": 1.0}})))  # fmt: skip
    with pytest.raises(TunesmithError, match="grid sampler needs 'step'"):
        tune.check(config_from_dict(study_config(tmp_path, tiny_model_dir, sampler="grid")))
    with pytest.raises(TunesmithError, match="tune.space is empty"):
        tune.check(config_from_dict(study_config(tmp_path, tiny_model_dir, space={})))
    with pytest.raises(TunesmithError, match="a log-scale parameter needs low > 0"):
        config_from_dict(study_config(tmp_path, tiny_model_dir, space={
            "train.learning_rate": {"type": "float", "low": 0, "high": 1, "log": True}}))  # fmt: skip
    tree = study_config(tmp_path, tiny_model_dir)
    tree["data"]["val_fraction"] = 0.0
    with pytest.raises(TunesmithError, match="needs a validation split"):
        tune.check(config_from_dict(tree))


def test_pruning_reporter_stops_a_trial_behind_the_median():
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    good = study.ask()
    for step, value in ((1, 0.8), (2, 0.9)):
        good.report(value, step)
    study.tell(good, 0.9)
    bad = study.ask()
    reporter = tune.PruningReporter(bad, "accuracy")
    with pytest.raises(optuna.TrialPruned):
        reporter.on_eval_end(LoopState(step=1), {"accuracy": 0.3})
    assert bad.user_attrs["pruned_at_step"] == 1
    fine = study.ask()
    tune.PruningReporter(fine, "accuracy").on_eval_end(LoopState(step=1), {"accuracy": 0.95})  # no exception


def test_study_runs_trials_and_writes_best_config_report_and_plots(tmp_path, tiny_model_dir):
    config = config_from_dict(study_config(tmp_path, tiny_model_dir, n_trials=3))
    report = tune.run_tune(config, tmp_path / "study", train=api.train)
    assert report["complete"] + report["pruned"] == 3 and report["failed"] == 0
    complete = [t for t in report["trials"] if t["state"] == "complete"]
    best = max(complete, key=lambda t: t["value"])
    assert report["best"]["number"] == best["number"]
    metrics = json.loads((tmp_path / "study" / "trials" / f"trial-{best['number']:03d}" / "metrics.json").read_text())
    assert report["metric"] == "macro_f1"  # the task's default metric
    assert metrics["validation"]["macro_f1"] == best["value"]  # the objective is the run's validation score
    ready = load_config(tmp_path / "study" / "best.yaml")
    assert ready.train.learning_rate == pytest.approx(best["params"]["train.learning_rate"])
    assert ready.train.batch_size == best["params"]["train.batch_size"]
    assert ready.runtime.output_dir is None and ready.tune.space == {}
    assert (tmp_path / "study" / "history.png").stat().st_size > 0
    assert "| trial | state |" in (tmp_path / "study" / "study.md").read_text()
    assert "data:image/png;base64," in (tmp_path / "study" / "study.html").read_text()
    # Running it again resumes the finished study: nothing new is trained.
    again = tune.run_tune(config, tmp_path / "study", train=api.train)
    assert [t["value"] for t in again["trials"]] == [t["value"] for t in report["trials"]]
    changed = config_from_dict(study_config(tmp_path, tiny_model_dir, n_trials=3, sampler="tpe"))
    with pytest.raises(TunesmithError, match="holds a study with a different config"):
        tune.run_tune(changed, tmp_path / "study", train=api.train)


def test_interrupted_study_resumes_with_its_earlier_trials_intact(tmp_path, tiny_model_dir, monkeypatch):
    tree = study_config(tmp_path, tiny_model_dir, n_trials=3, pruner="none")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(tree))
    directory = tmp_path / "study"
    process = subprocess.Popen([sys.executable, "-m", "tunesmith.cli", "tune", str(path), "--out", str(directory)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 180
    while not (directory / "trials" / "trial-001" / "metrics.jsonl").exists():  # trial 1 is training
        assert process.poll() is None, "the study ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    config = config_from_dict(tree)
    before = tune.open_study(config, directory).get_trials()
    assert before[0].state.name == "COMPLETE" and before[1].state.name == "RUNNING"

    monkeypatch.setattr(tune, "GRACE_SECONDS", 1)  # the killed trial's heartbeat is already stale
    # SQLite's CURRENT_TIMESTAMP, which optuna compares heartbeats by, has whole seconds: "more
    # than 1 s" between two truncated times needs up to 3 s of real time.
    time.sleep(3.2)
    report = tune.run_tune(config, directory, train=api.train)
    after = {t["number"]: t for t in report["trials"]}
    assert after[0]["value"] == before[0].value and after[0]["params"] == before[0].params  # kept as it was
    assert after[1]["state"] == "fail"  # killed midway ...
    retried = [t for t in report["trials"] if t["number"] > 1 and t["params"] == before[1].params]
    assert retried and retried[0]["state"] == "complete"  # ... and run again with the same values
    assert report["complete"] == 3


def test_a_cv_objective_scores_trials_by_their_mean_over_folds(tmp_path, tiny_model_dir):
    tree = study_config(tmp_path, tiny_model_dir, n_trials=2, objective="cv", metric="accuracy", pruner="none")
    tree["cv"] = {"folds": 2}
    tree["train"].pop("eval_every_steps")
    report = tune.run_tune(config_from_dict(tree), tmp_path / "study", train=api.train)
    assert report["complete"] == 2
    for trial in report["trials"]:
        cv = json.loads((tmp_path / "study" / "trials" / f"trial-{trial['number']:03d}" / "cv.json").read_text())
        assert trial["value"] == pytest.approx(cv["summary"]["accuracy"]["mean"])
        assert len(cv["summary"]["accuracy"]["folds"]) == 2


def test_a_loss_objective_is_read_from_the_loop(tmp_path, tiny_model_dir):
    tree = study_config(tmp_path, tiny_model_dir, n_trials=1, metric="loss", pruner="none")
    report = tune.run_tune(config_from_dict(tree), tmp_path / "study", train=api.train)
    assert report["direction"] == "minimize" and report["complete"] == 1
    metrics = json.loads((tmp_path / "study" / "trials" / "trial-000" / "metrics.json").read_text())
    assert report["trials"][0]["value"] == pytest.approx(metrics["training"]["best_metric"])
