"""``tunesmith monitor`` beyond text classification (tests/test_ship.py has the classifier's test):
a tagger, a QA reader and an instruction-tuned LM, each trained for one epoch on its tiny model,
are monitored against a ``serve --log`` of more of the same (quiet) and of foreign inputs with
drifted predictions (flagged), and every kind that declares the stage implements its contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tunesmith
from tests.makers import DATA_FILE, tiny_task_config, write_examples
from tunesmith import api
from tunesmith.config import MonitorConfig, config_from_dict
from tunesmith.errors import TunesmithError
from tunesmith.ship.monitor import monitor
from tunesmith.tasks import build_task
from tunesmith.tasks.build import TASK_KINDS, stages_of
from tunesmith.tasks.contract import Monitored
from tunesmith.tasks.run import load_task

FOREIGN = ("quarterly earnings of the semiconductor conglomerate rose sharply amid tariffs, currency swings and "
           "a dispute over export licences in overseas markets, analysts said on {} Tuesday")  # fmt: skip
MODEL = {
    "causal_lm": "tiny_llama_dir",
    "token_classification": "tiny_model_dir",
    "question_answering": "tiny_model_dir",
}


def _foreign(kind: str, number: int):
    text = FOREIGN.format(number)
    return {"question": f"which regulator reviewed licence {number} ?", "context": text} if kind == (
        "question_answering") else text  # fmt: skip


def _drifted(kind: str, row: dict) -> dict:
    """A prediction row as a drifted model would log it: only one entity type, no answers, empty completions."""
    return {
        "token_classification": lambda: {**row, "entities": [{"text": "x", "label": "MISC", "start": 0, "end": 1,
                                                              "score": 0.5}]},
        "question_answering": lambda: {**row, "answer": "", "no_answer": True},
        "causal_lm": lambda: {**row, "completion": ""},
    }[kind]()  # fmt: skip


def _log(path: Path, inputs: list, rows: list[dict]) -> Path:
    """A log as ``serve --log`` writes it: time, the input (``text`` when a string), the row."""
    path.write_text("".join(json.dumps({"time": "2025-01-01T00:00:00+00:00",
                                        "text" if isinstance(x, str) else "input": x, **r}) + "\n"
                            for x, r in zip(inputs, rows)), encoding="utf-8")  # fmt: skip
    return path


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    """A run of each kind, one epoch on 40 examples of its tiny model, trained on first use."""
    root = tmp_path_factory.mktemp("monitored")

    class Lazy(dict):
        def __missing__(self, kind):
            train = write_examples(kind, root / kind / DATA_FILE.get(kind, "train.csv"), 40)
            config = tiny_task_config(kind, request.getfixturevalue(MODEL[kind]), train, root / kind / "run")
            config["train"]["num_epochs"] = 1
            self[kind] = api.train(config).run_dir
            return self[kind]

    return Lazy()


@pytest.mark.parametrize(("kind", "watch"), [("token_classification", "entity_type_psi"),
                                             ("question_answering", "no_answer_rate_increase"),
                                             ("causal_lm", "empty_output_rate_increase")])  # fmt: skip
def test_a_drifted_log_is_flagged_and_more_of_the_same_is_not(kind, watch, runs, tmp_path):
    run_dir = runs[kind]
    _, run_config, task = load_task(run_dir)
    # More of the same: new rows from the same generator, read as training reads them. The
    # causal LM's prompts come in a prediction input file (the model predicts on them); the
    # others' in a log with the model's own predictions.
    frame, _ = task.read(str(write_examples(kind, tmp_path / "more" / DATA_FILE.get(kind, "more.csv"), 30, seed=7)),
                         run_config.data)  # fmt: skip
    same = task.monitor_inputs(frame)[:24]
    if kind == "causal_lm":
        (tmp_path / "prompts.txt").write_text("\n".join(same), encoding="utf-8")
        quiet = monitor(run_dir, tmp_path / "prompts.txt", tmp_path / "quiet", log=lambda m: None)
    else:
        quiet = monitor(run_dir, _log(tmp_path / "same.jsonl", same, tunesmith.predict(run_dir, same)),
                        tmp_path / "quiet", log=lambda m: None)  # fmt: skip
    assert (
        quiet["live_predictions"] == ("predicted" if kind == "causal_lm" else "logged") and quiet["rows"]["live"] == 24
    )
    assert watch in quiet["checks"] and not {"length_ks", "oov_rate_increase", watch} & set(quiet["drifted"]), quiet
    foreign = [_foreign(kind, i) for i in range(24)]
    rows = [_drifted(kind, row) for row in tunesmith.predict(run_dir, foreign)]
    loud = monitor(run_dir, _log(tmp_path / "foreign.jsonl", foreign, rows), tmp_path / "loud", log=lambda m: None)
    assert {"length_ks", "oov_rate_increase", "domain_auc", watch} <= set(loud["drifted"]), loud["checks"]
    assert loud["checks"]["domain_auc"]["value"] > quiet["checks"]["domain_auc"]["value"]
    page = (tmp_path / "loud" / "monitor.html").read_text(encoding="utf-8")
    assert "Drift:" in page and f"<h2>{watch}</h2>" in page
    assert json.loads((tmp_path / "loud" / "monitor.json").read_text())["checks"][watch]["drift"]


def test_a_log_without_the_predictions_monitor_compares_is_named_by_line(runs, tmp_path):
    run_dir = runs["question_answering"]
    inputs = [_foreign("question_answering", i) for i in range(4)]
    rows = [{"answer": "x", "no_answer": False}] * 3 + [{"answer": "x"}]
    with pytest.raises(TunesmithError, match=r"log\.jsonl, line 4: the logged prediction has no 'no_answer' field"):
        monitor(run_dir, _log(tmp_path / "log.jsonl", inputs, rows), tmp_path / "out", log=lambda m: None)
    texts = tmp_path / "texts.jsonl"  # records, but not question/context ones
    texts.write_text('{"text": "a plain text"}\n', encoding="utf-8")
    with pytest.raises(TunesmithError, match=r"texts\.jsonl: input 1: question answering needs 'question' and"):
        monitor(run_dir, texts, tmp_path / "out", log=lambda m: None)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", [k for k in TASK_KINDS if "monitor" in stages_of(k)])
def test_every_monitored_kind_implements_the_contract(kind):
    task = build_task(config_from_dict({"task": {"type": kind}}))
    assert isinstance(task, Monitored)
    for watch in task.watches:
        assert watch.test in ("psi", "ks", "increase", "decrease") and watch.threshold in MonitorConfig.model_fields
