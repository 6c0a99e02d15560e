"""The task conformance test (in the spirit of scikit-learn's ``parametrize_with_checks``): every
task kind, on its tiny model and learnable data, trains (loss falls, the right parameters move),
round-trips through its run directory, scores a labelled file, predicts from raw input, runs
every stage it declares (``tasks.stages_of``) and refuses, in the one ``require_stage`` line,
a stage it does not.

Each kind trains once (module-scoped, on first use); the stage checks reuse that run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

import tunesmith
from tests.conftest import sentiment_rows
from tests.makers import DATA_FILE, stripes, tiny_task_config, write_examples, write_table
from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.errors import TunesmithError
from tunesmith.tasks import require_stage
from tunesmith.tasks.build import STAGES, TASK_KINDS, stages_of

TINY_MODEL = {"seq2seq": "tiny_t5_dir", "causal_lm": "tiny_llama_dir", "image_classification": "tiny_cnn_dir"}
RAW_INPUT = {
    "token_classification": ["Alice went to Paris today"],
    "question_answering": [{"question": "what colour ?", "context": "animal : cat . colour : red . city : oslo ."}],
    "seq2seq": ["Note 3: the colour of the day is blue, as agreed."],
    "causal_lm": ["Item 3: repeat the word blue."],
    "pair_classification": [["table river paper", "good great lovely window"], ["stone seven", "bad grim dull"]],
    "tabular": [
        {"review": "good great lovely table", "stars": 5, "channel": "web"},
        {"review": "bad awful grim paper", "stars": None, "channel": "phone"},
    ],
}
TEXT_INPUT = ["good great lovely table river", "bad awful grim paper stone"]
# Every (kind, declared stage) pair for test_a_declared_stage_runs; evaluate and predict have tests of their own.
STAGE_CHECKS = [(k, s) for k in TASK_KINDS for s in STAGES if s in stages_of(k) and s not in ("evaluate", "predict")]
# Base parameters a task's model class leaves out: the BERT pooler feeds only the sequence
# classifier's head, so the token and span heads drop it.
DROPPED = {"token_classification": "pooler.", "question_answering": "pooler."}
# Base parameters a task's model holds but never reads, so training cannot move them: a table's
# model reads the encoder's masked mean (models/pooled.py), not BERT's pooler.
UNREAD = {"tabular": "pooler."}


@pytest.fixture(scope="module")
def model_dirs(request):
    """The tiny model of each task kind, built on first use."""

    class Lazy(dict):
        def __missing__(self, kind):
            self[kind] = request.getfixturevalue(TINY_MODEL.get(kind, "tiny_model_dir"))
            return self[kind]

    return Lazy()


def _train(kind: str, model_dir: Path, root: Path, **model) -> dict:
    """One short run of ``kind`` under ``root``: its config, run directory and metrics."""
    root.mkdir(parents=True)
    train_file = write_examples(kind, root / DATA_FILE.get(kind, "train.csv"), 40)
    config = tiny_task_config(kind, model_dir, train_file, root / "run")
    config["train"].update(num_epochs=3)
    config["model"].update(model)
    if "forgetting" in stages_of(kind):  # the forgetting stage runs inside training
        retain = root / ("retain.txt" if kind == "causal_lm" else "retain.csv")
        if kind == "causal_lm":
            retain.write_text("The river runs past the old mill.\nShe reads by the window.\n", encoding="utf-8")
        else:
            write_table(retain, sentiment_rows(24, seed=5))
        config["forgetting"] = {"retain": str(retain)}
    result = api.train(config)
    return {"config": config, "run": result.run_dir, "metrics": result.metrics, "root": root}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, model_dirs):
    """A finished run of each task kind (full fine-tuning), trained on first use."""
    root = tmp_path_factory.mktemp("conformance")

    class Lazy(dict):
        def __missing__(self, kind):
            self[kind] = _train(kind, model_dirs[kind], root / kind)
            return self[kind]

    return Lazy()


def _raw_input(kind: str, root: Path) -> list:
    if kind == "image_classification":
        path = root / "one-image.png"
        stripes(True, seed=77).save(path)
        return [str(path)]
    return RAW_INPUT.get(kind, TEXT_INPUT)


def _changed(kind: str, base_dir: Path, model_dir: Path) -> tuple[set[str], set[str]]:
    """The base model's parameters that training changed and those it left as they were (names
    as in the base model, whose class may lack the task head's prefix, e.g. ``bert.``)."""
    base, tuned = load_file(base_dir / "model.safetensors"), load_file(model_dir / "model.safetensors")
    changed, same = set(), set()
    for name, value in base.items():
        found = [t for t in tuned if t == name or t.endswith("." + name)]
        if (not found and kind in DROPPED and name.startswith(DROPPED[kind])) or name.startswith(
            UNREAD.get(kind, "\0")
        ):
            continue
        assert len(found) == 1, f"{name}: {found or 'not in the trained model'}"
        (same if tuned[found[0]].shape == value.shape and (tuned[found[0]] == value).all() else changed).add(name)
    return changed, same


@pytest.mark.parametrize("kind", TASK_KINDS)
def test_loss_is_finite_and_falls(kind, runs):
    lines = (runs[kind]["run"] / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    losses = [r["loss"] for r in map(json.loads, lines) if "loss" in r]
    assert len(losses) >= 6 and all(math.isfinite(v) for v in losses), losses
    third = len(losses) // 3  # single batches are noisy: compare the first epoch's mean with the last's
    assert sum(losses[-third:]) < sum(losses[:third]), losses


@pytest.mark.parametrize("kind", TASK_KINDS)
def test_full_fine_tuning_changes_every_parameter(kind, runs, model_dirs):
    changed, same = _changed(kind, model_dirs[kind], runs[kind]["run"] / "model")
    assert changed and not same, sorted(same)


# The base parameters a strategy trains (by a part of their names): freeze opens the last layer and
# the head (the pooler); LoRA, merged into the saved model, moves only the layers it targets.
STRATEGIES = {
    ("single_label", "freeze"): ({"freeze": {"trainable_layers": 1}}, ("encoder.layer.1.", "pooler.")),
    ("single_label", "lora"): ({"lora": {"rank": 4, "target_modules": ["query", "value"]}},
                               tuple(f"encoder.layer.{i}.attention.self.{m}.weight" for i in (0, 1)
                                     for m in ("query", "value"))),
    ("causal_lm", "lora"): ({"lora": {"rank": 4}},
                            tuple(f"layers.{i}.{m}.weight" for i in (0, 1) for m in
                                  ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                   "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"))),
}  # fmt: skip


@pytest.mark.parametrize(("kind", "strategy"), list(STRATEGIES), ids=[f"{k}-{s}" for k, s in STRATEGIES])
def test_a_strategy_moves_its_parameters_and_no_others(kind, strategy, model_dirs, tmp_path):
    options, trained = STRATEGIES[kind, strategy]
    run = _train(kind, model_dirs[kind], tmp_path / kind, strategy=strategy, **options)
    changed, same = _changed(kind, model_dirs[kind], run["run"] / "model")
    moves = {n for n in changed | same if any(part in n for part in trained)}
    assert changed == moves, sorted(changed ^ moves)
    assert same, "a strategy that trains everything is not the strategy asked for"


@pytest.mark.parametrize("kind", TASK_KINDS)
def test_the_run_directory_round_trips_and_predicts_from_raw_input(kind, runs):
    inputs = _raw_input(kind, runs[kind]["root"])
    first = tunesmith.predict(runs[kind]["run"], inputs)
    assert len(first) == len(inputs) and all(isinstance(row, dict) and row for row in first), first
    assert tunesmith.predict(runs[kind]["run"], inputs) == first  # a fresh load predicts the same


@pytest.mark.parametrize("kind", TASK_KINDS)
def test_evaluate_scores_a_labelled_file(kind, runs):
    held_out = write_examples(kind, runs[kind]["root"] / "held-out" / DATA_FILE.get(kind, "test.csv"), 12, seed=1)
    metrics = tunesmith.evaluate(runs[kind]["run"], held_out)
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert numbers and all(math.isfinite(v) for v in numbers.values()), metrics


def _recomputed(kind: str, rows) -> tuple[str, float]:
    """The split's headline metric recomputed from the gold and predicted columns alone."""
    gold, predicted = ([v.tolist() if hasattr(v, "tolist") else v for v in rows[c]] for c in ("gold", "predicted"))
    match kind:
        case "regression":
            return "mse", sum((g - p) ** 2 for g, p in zip(gold, predicted)) / len(gold)
        case "multi_label":
            return "subset_accuracy", sum(set(g) == set(p) for g, p in zip(gold, predicted)) / len(gold)
        case "token_classification":
            from tunesmith.tasks.token_classification import entity_metrics

            return "f1", entity_metrics(gold, predicted, "iob2")["f1"]
        case "question_answering":
            from tunesmith.tasks.qa import question_scores

            return "f1", float(question_scores(predicted, gold)[1].mean())
        case "seq2seq" | "causal_lm":
            from tunesmith.tasks.causal_lm import example_scores

            made = [i for i, p in enumerate(predicted) if p is not None]
            return "rougeL", float(
                example_scores([predicted[i] for i in made], [gold[i] for i in made])["rougeL"].mean()
            )
        case _:
            return "accuracy", sum(g == p for g, p in zip(gold, predicted)) / len(gold)


@pytest.mark.parametrize("kind", TASK_KINDS)
def test_the_run_directory_holds_per_row_predictions_that_agree_with_its_metrics(kind, runs):
    import pandas as pd

    from tunesmith.evaluate.predictions import read_predictions
    from tunesmith.tasks.contract import PREDICTION_COLUMNS

    run, metrics = runs[kind]["run"], runs[kind]["metrics"]
    assert "<h2>Mistakes (test" in (run / "report.html").read_text()  # the report lists them for every kind
    for split in ("validation", "test"):
        found = read_predictions(run / f"predictions_{split}.parquet")
        rows = found.rows
        assert tuple(rows.columns) == PREDICTION_COLUMNS
        assert rows["row"].tolist() == list(range(len(pd.read_parquet(run / "data" / f"{split}.parquet"))))
        if rows["predicted"].isna().all():  # a generative run generates on one split only
            assert "rougeL" not in metrics[split]
            continue
        name, value = _recomputed(kind, rows)
        assert value == pytest.approx(metrics[split][name], abs=1e-6), (split, name)
        if found.mean_of is not None:
            assert rows["row_metric"].dropna().mean() == pytest.approx(metrics[split][found.mean_of], abs=1e-6)


def _check_stage(kind: str, stage: str, run: dict, tmp_path: Path) -> None:
    """Runs ``stage`` on ``run`` in its cheapest form, through its public function."""
    run_dir, config = run["run"], run["config"]
    inputs = _raw_input(kind, run["root"])
    match stage:
        case "export":
            from tunesmith.ship.export import export

            report = export(run_dir, tmp_path / "hf", fmt="hf", rows=4, log=lambda m: None)
            assert report["models"] and (tmp_path / "hf").is_dir()
        case "serve":
            import base64

            from fastapi.testclient import TestClient

            from tunesmith.ship.serve import create_app

            # A server takes an image's bytes, never a path (its rows have no path).
            body = ({"images": [base64.b64encode(Path(p).read_bytes()).decode() for p in inputs]}
                    if kind == "image_classification" else {"inputs": inputs})  # fmt: skip
            with TestClient(create_app(run_dir)) as client:
                response = client.post("/predict", json=body)
            assert response.status_code == 200, response.text
            expected = [{k: v for k, v in row.items() if k != "path"} for row in tunesmith.predict(run_dir, inputs)]
            assert response.json()["predictions"] == expected  # what predict says
        case "monitor":
            from tunesmith.ship.monitor import monitor

            rows = tunesmith.predict(run_dir, inputs * 10)  # a serve --log of them, as serve writes it
            live = write_table(tmp_path / "live.jsonl", [{"time": "t", "text" if isinstance(x, str) else "input": x, **r}
                                                         for x, r in zip(inputs * 10, rows)])  # fmt: skip
            report = monitor(run_dir, live, tmp_path / "monitor", log=lambda m: None)
            assert report["live_predictions"] == "logged" and {"length_ks", "domain_auc"} <= set(report["checks"])
        case "retrain":
            from tunesmith.ship.retrain import retrain

            new = write_examples(kind, tmp_path / "new" / DATA_FILE.get(kind, "new.csv"), 30, seed=2)
            report = retrain(run_dir, new, train=api.train, old_share=0.25, out=tmp_path / "run-v2",
                             overrides=["train.num_epochs=1"])  # fmt: skip
            assert report["scores"] and (tmp_path / "run-v2" / "model").is_dir()
        case "cv":
            from tunesmith.study.cv import run_cv

            tree = {**config, "train": {**config["train"], "num_epochs": 1}}
            report = run_cv(config_from_dict(tree), tmp_path / "cv", train=api.train, folds=2)
            assert report["folds"] == 2 and report["summary"]
        case "tune":
            from tunesmith.study.tune import run_tune

            space = {"train.learning_rate": {"type": "float", "low": 1e-3, "high": 3e-3}}
            tree = {**config, "train": {**config["train"], "num_epochs": 1}, "forgetting": {},
                    "tune": {"space": space, "n_trials": 1, "sampler": "random", "pruner": "none"}}  # fmt: skip
            report = run_tune(config_from_dict(tree), tmp_path / "tune", train=api.train)
            assert report["complete"] == 1 and report["failed"] == 0, report
        case "inspect":
            from tunesmith.data.inspection import inspect_data
            from tunesmith.tasks import build_task

            tree = {**config, "inspect": {"label_errors": "off"}}
            resolved = config_from_dict(tree)
            report = inspect_data(resolved, [config["data"]["train"]], tmp_path / "inspect", task=build_task(resolved),
                                  progress=False, log=lambda m: None)  # fmt: skip
            assert report
        case "chat":
            lines, shown = iter(["Repeat the word red.", "/exit"]), []
            api.chat(run_dir, read=lambda prompt: next(lines), write=shown.append)
            assert len([s for s in shown if s.startswith("model> ")]) == 1, shown
        case "forgetting":  # ran inside training, on the retain set the fixture gave it
            found = run["metrics"]["forgetting"]
            assert math.isfinite(found["base"]) and math.isfinite(found["tuned"]), found
        case other:
            raise AssertionError(f"no conformance check for the stage {other!r}: add one here")


@pytest.mark.parametrize(("kind", "stage"), STAGE_CHECKS, ids=[f"{k}-{s}" for k, s in STAGE_CHECKS])
def test_a_declared_stage_runs(kind, stage, runs, tmp_path):
    _check_stage(kind, stage, runs[kind], tmp_path)


@pytest.mark.parametrize("kind", TASK_KINDS)
def test_an_undeclared_stage_is_refused_in_one_line(kind, runs, tmp_path):
    from tunesmith.cli import app

    stage = next((s for s in STAGES if s not in stages_of(kind)), None)
    if stage is None:
        pytest.skip(f"{kind} declares every stage")
    with pytest.raises(TunesmithError) as refused:
        require_stage(kind, stage)
    run_dir = str(runs[kind]["run"])
    command = [stage, run_dir] + (["--out", str(tmp_path / "x"), "--format", "hf"] if stage == "export" else [])
    result = CliRunner().invoke(app, command, input="")
    assert result.exit_code == 2, result.output
    assert result.output == f"error: {run_dir}: {refused.value}\n"  # the one line require_stage writes
    assert not (tmp_path / "x").exists()
