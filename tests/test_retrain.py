"""retrain for the record-reading kinds: a NER tagger, a QA reader and a LoRA causal LM, each
continued on new rows in a format its reader takes, split by the task's rules, scored old/new
with its own metric; the deployed run is never touched. (Single-label: tests/test_ship.py;
every kind runs once more in tests/test_conformance.py.)"""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from tests.makers import DATA_FILE, NER_FILLER, NER_NAMES, ner_lines, qa_records, tiny_task_config, write_examples
from tunesmith import api
from tunesmith.cli import app
from tunesmith.errors import TunesmithError
from tunesmith.ship.retrain import retrain

MODEL = {"token_classification": "tiny_model_dir", "question_answering": "tiny_model_dir",
         "causal_lm": "tiny_llama_dir"}  # fmt: skip
METRIC = {"token_classification": ("f1", "max"), "question_answering": ("f1", "max"), "causal_lm": ("loss", "min")}


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, request):
    """A finished run of each kind (the causal LM with LoRA), trained on first use."""
    root = tmp_path_factory.mktemp("retrain")

    class Lazy(dict):
        def __missing__(self, kind):
            folder = root / kind
            train_file = write_examples(kind, folder / DATA_FILE[kind], 24)
            config = tiny_task_config(kind, request.getfixturevalue(MODEL[kind]), train_file, folder / "run")
            if kind == "causal_lm":
                config["model"].update(strategy="lora", lora={"rank": 4})
            self[kind] = api.train(config).run_dir
            return self[kind]

    return Lazy()


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def _conll_documents(path: Path, documents: int, per_document: int = 3) -> Path:
    """CoNLL sentences (the tags of the deployed run) in ``-DOCSTART-`` documents."""
    sentences = ner_lines(documents * per_document, seed=3).split("\n\n")
    blocks = ["-DOCSTART- O\n\n" + "\n\n".join(sentences[i : i + per_document])
              for i in range(0, len(sentences), per_document)]  # fmt: skip
    path.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return path


def _squad(path: Path, paragraphs: int) -> Path:
    """A SQuAD JSON file of new paragraphs (three questions each), unlike any trained on."""
    data, records = [], qa_records(paragraphs, seed=4)
    for i in range(0, paragraphs * 3, 3):
        questions = records[i : i + 3]
        context = "new " + questions[0]["context"]
        qas = [{"id": f"new-{q['id']}", "question": q["question"],
                "answers": [{"text": q["answers"]["text"][0], "answer_start": q["answers"]["answer_start"][0] + 4}]}
               for q in questions]  # fmt: skip
        data.append({"title": f"article {i}", "paragraphs": [{"context": context, "qas": qas}]})
    path.write_text(json.dumps({"version": "v2.0", "data": data}), encoding="utf-8")
    return path


def _prompt_completions(path: Path, count: int) -> Path:
    """prompt/completion records (the run was trained on Alpaca records)."""
    colours = ["red", "green", "blue", "amber", "violet"]
    rows = [{"prompt": f"Item {100 + i}: repeat the word {colours[i % 5]}.", "completion": f"{colours[i % 5]} " * 2}
            for i in range(count)]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


NEW_DATA = {"token_classification": lambda folder: _conll_documents(folder / "new.txt", 6),
            "question_answering": lambda folder: _squad(folder / "new.json", 6),
            "causal_lm": lambda folder: _prompt_completions(folder / "new.jsonl", 16)}  # fmt: skip


def _split_apart(data_dir: Path, column: str) -> None:
    """No value of ``column`` (a document, a context) is in two splits of a run's data."""
    found = {s: set(pd.read_parquet(data_dir / f"{s}.parquet")[column].dropna().astype(str)) for s in
             ("train", "validation", "test")}  # fmt: skip
    assert found["validation"] and found["test"]
    assert not (found["train"] & found["validation"]) and not (found["train"] & found["test"])
    assert not found["validation"] & found["test"]


@pytest.mark.parametrize("kind", list(METRIC))
def test_retrain_scores_both_models_on_old_and_new_test_data(kind, deployed, tmp_path):
    run = deployed[kind]
    before = _hashes(run)
    new, out = NEW_DATA[kind](tmp_path), tmp_path / "run-v2"
    if kind == "token_classification":  # through the command line, with the run's own settings
        result = CliRunner().invoke(app, ["retrain", str(run), "--data", str(new), "--mix", "old=0.25",
                                          "--out", str(out)])  # fmt: skip
        assert result.exit_code == 0, result.output
        report = json.loads((out / "retrain.json").read_text())
        assert report["summary"] in result.output
    else:
        report = retrain(run, new, train=api.train, old_share=0.25, out=out, overrides=["train.num_epochs=1"])
        assert json.loads((out / "retrain.json").read_text()) == report
    metric, direction = METRIC[kind]
    assert (report["metric"], report["direction"]) == (metric, direction)
    scores = report["scores"]
    assert all(math.isfinite(scores[m][s][metric]) for m in ("deployed", "retrained") for s in ("old_test", "new_test"))
    # The old test split round-trips: the deployed model scores on it what its own run recorded.
    recorded = json.loads((run / "metrics.json").read_text())["test"][metric]
    assert scores["deployed"]["old_test"][metric] == pytest.approx(recorded, rel=1e-5)
    sign = 1 if direction == "max" else -1
    gain = sign * (scores["retrained"]["new_test"][metric] - scores["deployed"]["new_test"][metric])
    assert report["gain_on_new_test"] == pytest.approx(gain) and report["better_on_new_test"] == (gain > 0)
    assert report["change_on_old_test"] == pytest.approx(
        sign * (scores["retrained"]["old_test"][metric] - scores["deployed"]["old_test"][metric])
    )
    assert {"deployed_old_test.json", "retrained_new_test.json"} <= {p.name for p in (out / "retrain").iterdir()}
    assert _hashes(run) == before  # nothing of the deployed run was written
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"]["name"] == str((run / "model").resolve())  # it continued from the deployed model
    train = pd.read_parquet(out / "data" / "train.parquet")
    assert len(train) == report["rows"]["new_train"] + report["rows"]["old_train_mixed_in"]
    assert report["rows"]["old_train_mixed_in"] == round(report["rows"]["new_train"] / 3)  # old=0.25
    if kind == "token_classification":
        _split_apart(out / "data", "document")  # a document's sentences stay in one split
    if kind == "question_answering":
        _split_apart(out / "data", "context")  # a paragraph's questions stay in one split
    if kind == "causal_lm":  # LoRA again, on the merged deployed model
        assert config["model"]["strategy"] == "lora" and (out / "adapter").is_dir()


def test_retrain_keeps_the_label_space_and_writes_nothing_when_it_refuses(deployed, tmp_path):
    run = deployed["token_classification"]
    before = _hashes(run)
    unknown = tmp_path / "unknown.txt"
    unknown.write_text(ner_lines(12, seed=8).replace("B-LOC", "B-ORG"), encoding="utf-8")
    with pytest.raises(TunesmithError, match=r"unknown.txt: \['B-ORG'\] are not labels of the deployed model"):
        retrain(run, unknown, train=api.train, out=tmp_path / "a")
    rng = random.Random(0)
    no_places = tmp_path / "no-places.txt"  # people only: a mix of new rows alone never shows B-LOC
    no_places.write_text("\n\n".join(f"{rng.choice(NER_NAMES)} B-PER\n{rng.choice(NER_FILLER)} O" for _ in range(12)),
                         encoding="utf-8")  # fmt: skip
    with pytest.raises(TunesmithError, match=r"the retraining mix has no rows of \['B-LOC'\]"):
        retrain(run, no_places, train=api.train, old_share=0.0, out=tmp_path / "b")
    good = tmp_path / "good.txt"
    good.write_text(ner_lines(12, seed=9), encoding="utf-8")
    with pytest.raises(TunesmithError, match="train.learning_rat"):  # after the data files were written
        retrain(run, good, train=api.train, out=tmp_path / "c", overrides=["train.learning_rat=0.1"])
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(("a", "b", "c"))]
    assert _hashes(run) == before
