"""Every command that writes refuses to overwrite what it did not create (runs.claim_output):
an existing file is never replaced, an existing directory is used only when empty, nothing is
written into the parts of a run its hashes and resume check, and a run is never nested in
another. Each refusal exits 2 before any slow work and leaves the bytes as they were."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import sentiment_rows, tiny_config
from tunesmith import api
from tunesmith.cli import app
from tunesmith.errors import TunesmithError
from tunesmith.runs import RunDir, claim_output, unused_path


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model_dir):
    """A finished tiny single-label run, its data file and its config (as a YAML file)."""
    root = tmp_path_factory.mktemp("no-overwrite")
    data = root / "data.csv"
    pd.DataFrame(sentiment_rows(60, seed=5)).to_csv(data, index=False)
    run = api.train(tiny_config(tiny_model_dir, data, root / "run", train={"num_epochs": 1})).run_dir
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tiny_model_dir, data, root / "new-run", train={"num_epochs": 1},
                                                 tune={"n_trials": 1, "sampler": "random", "space": {
                                                     "train.learning_rate": {"type": "float", "low": 1e-3,
                                                                             "high": 3e-3}}})))  # fmt: skip
    return run, data, config


def _digest(path) -> dict[str, str]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _cli(*args) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result.exit_code, " ".join(result.output.split())


def _refused(target, *args, expect: str) -> None:
    """Runs the command; it must exit 2 naming ``expect`` and leave ``target`` as it was."""
    before = _digest(target)
    code, output = _cli(*args)
    assert code == 2 and expect in output and output.count("error:") == 1, output
    assert _digest(target) == before


# ---- the rule itself ----


def test_claim_output_rule(tmp_path):
    (tmp_path / "file.txt").write_text("mine")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    (tmp_path / "empty").mkdir()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    assert claim_output(tmp_path / "new" / "deeper", kind="dir", what="--out") == tmp_path / "new" / "deeper"
    assert claim_output(tmp_path / "empty", kind="dir", what="--out") == tmp_path / "empty"
    assert claim_output(tmp_path / "new.html", kind="file", what="--out") == tmp_path / "new.html"
    with pytest.raises(TunesmithError, match="--out .*file.txt already exists; choose a new path"):
        claim_output(tmp_path / "file.txt", kind="file", what="--out")
    with pytest.raises(TunesmithError, match="--out .*file.txt already exists"):
        claim_output(tmp_path / "file.txt", kind="dir", what="--out")
    with pytest.raises(TunesmithError, match="full already exists and is not empty \\(why\\); choose a new or empty"):
        claim_output(tmp_path / "full", kind="dir", what="--out", note="why")
    with pytest.raises(TunesmithError, match="--output .*empty is a directory; give the path of a new file"):
        claim_output(tmp_path / "empty", kind="file", what="--output")
    with pytest.raises(TunesmithError, match="dangling already exists"):
        claim_output(tmp_path / "dangling", kind="file", what="--out")
    with pytest.raises(TunesmithError, match="already exists"):  # a new run must not exist, not even empty
        claim_output(tmp_path / "empty", kind="dir", what="runtime.output_dir", run=True)
    assert (tmp_path / "file.txt").read_text() == "mine" and (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_claim_output_inside_a_run(tmp_path):
    run = tmp_path / "runs" / "x"
    (run / "model").mkdir(parents=True)
    (run / "config.yaml").write_text("{}")
    (run / "task.json").write_text("{}")
    for part in ("model", "adapter", "checkpoints", "data"):
        with pytest.raises(TunesmithError, match=f"lies inside {part} of the run .*x"):
            claim_output(run / part / "sub" / "deeper", kind="dir", what="--out")
    assert claim_output(run / "monitor-1", kind="dir", what="--out") == run / "monitor-1"  # beside the model: fine
    with pytest.raises(TunesmithError, match="runtime.output_dir .* lies inside the run directory .*x; a run may not"):
        claim_output(run / "again", kind="dir", what="runtime.output_dir", run=True)
    with pytest.raises(TunesmithError, match="lies inside the run directory"):  # through a relative path
        claim_output(run / "model" / ".." / "again", kind="dir", what="runtime.output_dir", run=True)
    assert claim_output(tmp_path / "runs" / "y", kind="dir", what="runtime.output_dir", run=True)  # a sibling


def test_unused_path(tmp_path):
    assert unused_path(tmp_path / "a.json") == tmp_path / "a.json"
    (tmp_path / "a.json").write_text("1")
    (tmp_path / "a-2.json").write_text("2")
    assert unused_path(tmp_path / "a.json") == tmp_path / "a-3.json"
    (tmp_path / "monitor-1").mkdir()
    assert unused_path(tmp_path / "monitor-1") == tmp_path / "monitor-1-2"


# ---- each command ----


def test_train_output_dir_inside_a_run_is_refused_and_the_run_stays_valid(finished, tmp_path):
    run, _, config = finished
    for inside in (run / "model" / "sub", run / "again"):
        _refused(run, "train", config, "--set", f"runtime.output_dir={inside}", expect="lies inside the run directory")
        assert not inside.exists()
    RunDir.open(run).verify_hashes()


def test_monitor(finished, tmp_path):
    run, data, _ = finished
    report = tmp_path / "report"
    report.mkdir()
    (report / "monitor.html").write_text("<p>last week</p>")
    (report / "monitor.json").write_text("{}")
    _refused(report, "monitor", run, "--live", data, "--out", report, expect="already exists and is not empty")
    _refused(run, "monitor", run, "--live", data, "--out", run / "model" / "drift", expect="lies inside model")
    empty = tmp_path / "empty"
    empty.mkdir()
    code, output = _cli("monitor", run, "--live", data, "--out", empty)
    assert code in (0, 1), output
    assert (empty / "monitor.html").is_file() and json.loads((empty / "monitor.json").read_text())["checks"]


def test_compare(finished, tmp_path):
    run, _, _ = finished
    page = tmp_path / "compare.html"
    page.write_text("<p>mine</p>")
    _refused(page, "compare", run, "--out", page, expect="compare.html already exists")
    _refused(tmp_path, "compare", run, "--out", tmp_path, expect="is a directory; give the path of a new file")
    beside = tmp_path / "other.json"
    beside.write_text("{}")
    _refused(beside, "compare", run, "--out", tmp_path / "other.html", expect="the JSON report beside --out")
    assert not (tmp_path / "other.html").exists()
    code, output = _cli("compare", run, "--out", tmp_path / "new" / "c.html")
    assert code == 0, output
    assert (tmp_path / "new" / "c.html").is_file() and (tmp_path / "new" / "c.json").is_file()


def test_tune_resumes_only_a_study(finished, tmp_path):
    _, _, config = finished
    other = tmp_path / "notes"
    other.mkdir()
    (other / "best.yaml").write_text("# my own notes\n")
    _refused(other, "tune", config, "--out", other, expect="no tune_config.yaml")
    study = tmp_path / "study"
    study.mkdir()  # an empty folder is a new study
    code, output = _cli("tune", config, "--out", study)
    assert code == 0 and "1 complete" in output, output
    assert (study / "tune_config.yaml").is_file() and (study / "study.db").is_file()
    code, output = _cli("tune", config, "--out", study)  # resumed: the one trial is kept, none added
    assert code == 0 and "1 complete, 0 pruned, 0 failed" in output, output


def test_evaluate_keeps_an_earlier_evaluation(finished, tmp_path):
    run, data, _ = finished
    test = tmp_path / "test.csv"
    pd.DataFrame(sentiment_rows(20, seed=9)).to_csv(test, index=False)
    code, output = _cli("evaluate", run, "--data", test)
    assert code == 0, output
    first = run / "evaluations" / "test.json"
    kept = first.read_bytes()
    code, output = _cli("evaluate", run, "--data", test)
    assert code == 0 and "saved as" in output and "test-2.json" in output, output
    assert first.read_bytes() == kept and (run / "evaluations" / "test-2.json").is_file()


def test_export(finished, tmp_path):
    run, _, _ = finished
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "keep.txt").write_text("mine")
    _refused(bundle, "export", run, "--out", bundle, "--format", "hf", expect="already exists and is not empty")
    _refused(run, "export", run, "--out", run / "model" / "hf", "--format", "hf", expect="lies inside model")
    empty = tmp_path / "empty"
    empty.mkdir()
    code, output = _cli("export", run, "--out", empty, "--format", "hf")
    assert code == 0, output
    assert (empty / "tunesmith.json").is_file() and not list(tmp_path.glob(".empty*"))


def test_predict_output(finished, tmp_path):
    run, _, _ = finished
    output = tmp_path / "predictions.jsonl"
    output.write_text('{"kept": true}\n')
    _refused(output, "predict", run, "--text", "good", "--output", output, expect="predictions.jsonl already exists")
    _refused(tmp_path, "predict", run, "--text", "good", "--output", tmp_path, expect="is a directory")


def test_inspect_out_and_fix(finished, tmp_path):
    _, data, config = finished
    report = tmp_path / "report"
    report.mkdir()
    (report / "notes.txt").write_text("mine")
    _refused(report, "inspect", config, "--out", report, expect="--out")
    _refused(report, "inspect", config, "--fix", report, "--out", tmp_path / "r", expect="--fix")
    assert not (tmp_path / "r").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    code, output = _cli("inspect", config, "--out", empty, "--label-errors", "off")
    assert code == 0, output
    assert (empty / "report.json").is_file()


def test_cv_and_retrain(finished, tmp_path):
    run, data, config = finished
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    _refused(taken, "cv", config, "--out", taken, expect="--out")
    _refused(run, "cv", config, "--out", run / "checkpoints" / "cv", expect="lies inside checkpoints")
    _refused(taken, "retrain", run, "--data", data, "--out", taken, expect="already exists")
    _refused(run, "retrain", run, "--data", data, "--out", run / "v2", expect="lies inside the run directory")
    assert not (run / "v2").exists() and not (run / "v2-data").exists()
    data_folder = tmp_path / "new-data"
    data_folder.mkdir()
    (data_folder / "keep.txt").write_text("mine")
    _refused(data_folder, "retrain", run, "--data", data, "--out", tmp_path / "new",
             expect="retrain writes the new run's data files there")  # fmt: skip
