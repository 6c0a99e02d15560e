"""Which stages each task kind supports: declared by the task classes, refused in one place
(``tasks.require_stage``), and shown in the README's table, generated from the code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

from tunesmith.config import Config, load_config
from tunesmith.errors import TunesmithError
from tunesmith.tasks import Stage, build_task, require_stage, stage_table
from tunesmith.tasks.build import TASK_KINDS, stages_of

CLI = [sys.executable, "-m", "tunesmith.cli"]
README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_table_is_the_one_the_code_declares():
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- stages:begin -->\n(.*?)\n<!-- stages:end -->", text, re.S)
    assert found, "README.md lacks the <!-- stages:begin --> ... <!-- stages:end --> table"
    assert found.group(1).strip() == stage_table(), (
        "README's task x stage table is stale: paste the output of "
        '`python -c "from tunesmith.tasks import stage_table; print(stage_table())"`'
    )


@pytest.mark.parametrize("kind", TASK_KINDS)
def test_every_stage_is_declared_or_explained(kind):
    task = build_task(Config.model_validate({"task": {"type": kind}}))
    for stage in get_args(Stage):
        assert (stage in task.stages) != (stage in task.stage_notes), f"{kind}: {stage} needs ✓ or a note, not both"
    assert all(note.strip() for note in task.stage_notes.values())


@pytest.mark.parametrize("kind", TASK_KINDS)
def test_every_declared_stage_is_a_stage(kind):
    declared = stages_of(kind)
    assert declared <= set(get_args(Stage)), declared - set(get_args(Stage))
    assert {"evaluate", "predict"} <= declared  # every task kind trains, scores and predicts


def test_the_image_task_goes_by_its_kind_not_its_single_label_type():
    image = build_task(load_config(None, ["task.type=image_classification"]))
    assert image.type == "single_label" and image.kind == "image_classification"
    assert "export" in image.stages and "serve" in image.stages
    with pytest.raises(
        TunesmithError, match="^chat does not cover image_classification runs yet; it covers: causal_lm$"
    ):
        require_stage(image, "chat")
    require_stage(build_task(load_config(None, [])), "retrain")  # single_label text: supported, no error


def test_require_stage_takes_a_kind_and_names_what_it_refused():
    with pytest.raises(TunesmithError, match=r"^exported/: chat does not cover seq2seq runs yet; it covers: "):
        require_stage("seq2seq", "chat", what="exported/")
    require_stage("regression", "serve")


@pytest.mark.parametrize(
    ("command", "kind", "message"),
    [
        (["inspect"], "image_classification",
         "inspect does not cover image_classification runs yet; it covers: single_label, multi_label, regression, "
         "causal_lm, seq2seq, token_classification, question_answering, pair_classification"),
    ],
)  # fmt: skip
def test_the_cli_refuses_an_unsupported_stage_in_one_line(tmp_path, command, kind, message):
    config = tmp_path / "config.yaml"
    config.write_text(f"task:\n  type: {kind}\ndata:\n  train: {tmp_path / 'missing.txt'}\n", encoding="utf-8")
    done = subprocess.run([*CLI, *command, str(config), "--out", str(tmp_path / "out")], capture_output=True,
                          text=True, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == f"error: {message}", done.stderr
    assert not (tmp_path / "out").exists()


# -- the written contract ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", TASK_KINDS)
def test_every_kind_implements_the_contract_and_its_stages_protocols(kind):
    from tunesmith.config import config_from_dict
    from tunesmith.tasks.contract import Chat, Exportable, Task

    task = build_task(config_from_dict({"task": {"type": kind}}))
    assert isinstance(task, Task) and task.kind == kind and task.to_dict()["type"] == kind
    assert not ("export" in task.stages and not isinstance(task, Exportable))
    assert not ("chat" in task.stages and not isinstance(task, Chat))
    from tunesmith.data.prepare import LabelledTask
    from tunesmith.data.quality import InspectedTask

    assert not ("inspect" in task.stages and not isinstance(task, (LabelledTask, InspectedTask)))
    rebuilt = build_task(config_from_dict({"task": {"type": kind}}), task.to_dict())
    assert rebuilt.to_dict() == task.to_dict()  # task.json round-trips


SOURCE = Path(__file__).resolve().parents[1] / "src" / "tunesmith"
KIND_BRANCH = re.compile(r"task_?\.type\s*(==|!=|in\b)|\[.type.\]\s*(==|!=|in\b)|(hasattr|getattr)\(\s*(self\.)?task")


def test_stages_never_ask_which_kind_they_hold():
    """No ``task.type ==``, ``hasattr(task, ...)`` or ``getattr(task, ...)`` outside tasks/ and
    config.py: a stage asks the task (tasks/contract.py)."""
    found = [f"{path.relative_to(SOURCE)}:{number}: {line.strip()}"
             for path in SOURCE.rglob("*.py") if path.parent.name != "tasks" and path.name != "config.py"
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if KIND_BRANCH.search(line)]  # fmt: skip
    assert not found, "\n".join(found)


def test_no_module_imports_another_modules_private_names():
    private = re.compile(r"^\s*from tunesmith[\w.]* import (.*)$")
    found = []
    for path in SOURCE.rglob("*.py"):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            names = private.match(line)
            if names and any(n.strip().startswith("_") for n in names.group(1).strip("()").split(",")):
                found.append(f"{path.relative_to(SOURCE)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)
