"""The bad-input corpus (tests/bad_inputs/*.yaml, format in its README): every case is a
careless or hostile input to one command or to the server, with the exit code (or HTTP status)
and the message it must get. Each case runs in a fresh directory, and the test checks that no
traceback reaches the terminal and that nothing in that directory changed except the command's
own new output.
"""

from __future__ import annotations

import fnmatch
import hashlib
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from tests.makers import DATA_FILE, tiny_task_config, write_examples
from tunesmith.config import merge_trees
from tunesmith.tasks.build import TASK_KINDS

CORPUS = Path(__file__).parent / "bad_inputs"
TASKS = TASK_KINDS  # the corpus must hold a case of every kind
TINY_MODEL = {"seq2seq": "tiny_t5_dir", "causal_lm": "tiny_llama_dir", "image_classification": "tiny_cnn_dir"}
CASE_KEYS = {"id", "why", "task", "files", "config", "run", "edit", "command", "exit", "message", "creates",
             "not_created", "env", "request", "serve", "status"}  # fmt: skip


def _cases() -> list[dict]:
    cases = []
    for path in sorted(CORPUS.glob("*.yaml")):
        for case in yaml.safe_load(path.read_text(encoding="utf-8")) or []:
            case["_file"] = path.name
            cases.append(case)
    return cases


CASES = _cases()


def test_the_corpus_is_well_formed():
    ids = [case["id"] for case in CASES]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    for case in CASES:
        assert set(case) - {"_file"} <= CASE_KEYS, (case["id"], set(case) - CASE_KEYS - {"_file"})
        assert case.get("why") and case.get("message"), f"{case['id']}: say why and what the message must hold"
        assert ("command" in case) != ("request" in case), f"{case['id']}: give a command or a request"
        assert case.get("task", "single_label") in TASKS and case.get("run", "single_label") in TASKS, case["id"]
    commands = {case["command"][0] for case in CASES if "command" in case}
    kinds = {case.get("task", "single_label") for case in CASES} | {case["run"] for case in CASES if "run" in case}
    assert len(CASES) >= 60 and len(commands) >= 10 and kinds == set(TASKS), (len(CASES), commands, kinds)


def _base_config(task: str, model_dir: Path) -> dict:
    return tiny_task_config(task, model_dir, Path(DATA_FILE.get(task, "train.csv")), Path("new-run"))


@pytest.fixture(scope="session")
def model_dirs(request):
    """The tiny model of each task kind, built on first use."""

    class Lazy(dict):
        def __missing__(self, task):
            self[task] = request.getfixturevalue(TINY_MODEL.get(task, "tiny_model_dir"))
            return self[task]

    return Lazy()


@pytest.fixture(scope="session")
def finished_runs(tmp_path_factory, model_dirs):
    """A finished tiny run of each task kind, trained on first use (about a second each)."""
    from tunesmith import api

    root = tmp_path_factory.mktemp("finished-runs")

    class Lazy(dict):
        def __missing__(self, task):
            where = root / task
            where.mkdir()
            config = _base_config(task, model_dirs[task])
            config["data"]["train"] = str(write_examples(task, where / config["data"]["train"], 40))
            config["runtime"]["output_dir"] = str(where / "run")
            config["train"]["num_epochs"] = 1
            self[task] = api.train(config).run_dir
            return self[task]

    return Lazy()


class _Payload:
    """A pickle that creates ./PWNED when it is unpickled: what a hostile checkpoint would do."""

    def __reduce__(self):
        return (open, ("PWNED", "w"))


def _matches(root: Path, pattern: str) -> list[Path]:
    found = sorted(root.glob(pattern))
    assert found, f"edit pattern {pattern!r} matched nothing in the case directory"
    return found


def _apply_edit(root: Path, edit: dict) -> None:
    (action, pattern), options = next(iter(edit.items())), dict(list(edit.items())[1:])
    if action == "create":  # a new file, e.g. inside the copied run
        path = root / pattern
        assert not path.exists(), f"create {pattern}: it exists already"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(options["text"], encoding="utf-8")
        return
    for path in _matches(root, pattern):
        if action == "truncate":
            data = path.read_bytes()
            path.write_bytes(data[: options.get("keep_bytes", len(data) // 2)])
        elif action == "write":
            path.write_bytes(bytes.fromhex(options["hex"]) if "hex" in options else options["text"].encode())
        elif action == "delete":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        elif action == "pickle_payload":
            torch.save({"state": _Payload()}, path)
        else:
            raise AssertionError(f"unknown edit action {action!r}")


def _write_files(root: Path, files: dict, task: str) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        elif "hex" in content:
            path.write_bytes(bytes.fromhex(content["hex"]))
        else:
            write_examples(content.get("task", task), path, content["rows"], content.get("seed", 0))


def _snapshot(root: Path) -> dict[str, str | None]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
        for p in sorted(root.rglob("*"))
        if not p.is_symlink()
    }


def _allowed(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(name, p.rstrip("/") + "/*") for p in patterns)


def _flat(text: str) -> str:
    return "".join(text.split())


def _prepare(case: dict, root: Path, model_dirs, finished_runs) -> None:
    task = case.get("task", "single_label")
    files = dict(case.get("files", {}))
    config = merge_trees(_base_config(task, model_dirs[task]), case.get("config", {}))
    default_data = DATA_FILE.get(task, "train.csv")
    if config["data"].get("train") == default_data and default_data not in files:
        files[default_data] = {"rows": 40}
    _write_files(root, files, task)
    (root / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    if "run" in case:
        shutil.copytree(finished_runs[case["run"]], root / "run")
    for edit in case.get("edit", []):
        _apply_edit(root, edit)


def _run_request(case: dict, root: Path) -> tuple[int, str]:
    from fastapi.testclient import TestClient

    from tunesmith.ship.serve import create_app

    request = dict(case["request"])
    method, path = request.pop("method", "POST"), request.pop("path")
    with TestClient(create_app(root / "run", **case.get("serve", {}))) as client:
        response = client.request(method, path, **request)
    return response.status_code, response.text


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_bad_input(case, tmp_path, monkeypatch, model_dirs, finished_runs):
    from tunesmith.cli import app

    root = tmp_path / "case"
    root.mkdir()
    _prepare(case, root, model_dirs, finished_runs)
    monkeypatch.chdir(root)
    before = _snapshot(root)
    if "request" in case:
        status, output = _run_request(case, root)
        assert status == case["status"], output
    else:
        result = CliRunner().invoke(app, [str(a) for a in case["command"]], env=case.get("env"))
        output = result.output
        assert result.exit_code == case.get("exit", 2), output
        assert isinstance(result.exception, (SystemExit, type(None))), repr(result.exception)
        assert "Traceback" not in output, output
        assert output.count("error:") <= 1, output
    for fragment in case["message"]:
        assert _flat(fragment) in _flat(output), f"{fragment!r} not in:\n{output}"
    after = _snapshot(root)
    changed = sorted(n for n in before if after.get(n, "gone") != before[n])
    assert not changed, f"changed or removed: {changed[:10]}"
    creates = case.get("creates", [])
    assert not [n for n in before if _allowed(n, creates)], "a `creates` path existed before the command"
    new = sorted(n for n in after if n not in before and not _allowed(n, creates))
    assert not new, f"written outside `creates`: {new[:10]}"
    for name in case.get("not_created", []) + ["PWNED"]:
        assert not (root / name).exists(), f"{name} exists after the command"
