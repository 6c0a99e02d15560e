"""The CLI's conventions: --version, -h beside --help, readable option help, shell completion,
``tunesmith init`` starter configs, and a clear line for a missing optional part. Nothing trains."""

from __future__ import annotations

import sys
from importlib.metadata import version

import pytest
import typer
from typer.testing import CliRunner

import tunesmith
from tunesmith.cli import STARTERS, app
from tunesmith.config import TASK_TYPES, load_config
from tunesmith.tasks import build_task

runner = CliRunner()
COMMANDS = sorted(typer.main.get_command(app).commands)


def test_version_is_the_installed_package_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"tunesmith {version('tunesmith')}\n"
    assert version("tunesmith") == tunesmith.__version__  # pyproject reads tunesmith.__version__


def test_h_and_help_print_the_same():
    short, long = runner.invoke(app, ["-h"]), runner.invoke(app, ["--help"])
    assert short.exit_code == long.exit_code == 0
    assert short.stdout == long.stdout and "Usage: " in short.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_h_and_shows_no_python_types(command):
    result = runner.invoke(app, [command, "-h"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.stdout and "--help" in result.stdout
    assert "<list[" not in result.stdout  # a repeatable option or argument shows its metavar


def test_set_shows_key_value_and_says_repeatable():
    for name in ("train", "inspect", "cv", "tune"):
        # A wide terminal, so the help stays on one line (typer 0.20's rich help reads COLUMNS).
        text = runner.invoke(app, [name, "--help"], terminal_width=200, env={"COLUMNS": "200"}).stdout
        line = next(line for line in text.splitlines() if "--set" in line)
        assert "KEY=VALUE" in line and "repeatable" in line, line


def test_shell_completion_is_offered_and_completes_commands_and_task_types():
    text = runner.invoke(app, ["--help"]).stdout
    assert "--install-completion" in text and "--show-completion" in text

    def complete(words: str) -> list[str]:
        env = {"_TUNESMITH_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(words.count(" "))}
        return runner.invoke(app, [], env=env, prog_name="tunesmith").stdout.split()

    assert complete("tunesmith in") == ["init", "inspect"]
    assert complete("tunesmith init token") == ["token_classification"]


def test_every_task_type_has_a_starter():
    assert sorted(path.stem for path in STARTERS.glob("*.yaml")) == sorted(TASK_TYPES)


@pytest.mark.parametrize("kind", TASK_TYPES)
def test_init_writes_a_starter_config_that_validates(kind, tmp_path):
    out = tmp_path / "new" / f"{kind}.yaml"
    result = runner.invoke(app, ["init", kind, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    text = out.read_text()
    assert text.startswith("# tunesmith starter config") and f"type: {kind}\n" in text
    config = load_config(out)  # the project's own loader: every key known and valid
    assert config.task.type == kind
    task = build_task(config)
    assert config.train.metric is None or config.train.metric in task.metric_names


def test_init_never_overwrites(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text("mine\n")
    result = runner.invoke(app, ["init", "regression"])  # --out defaults to config.yaml
    assert result.exit_code == 2
    assert "--out config.yaml already exists" in result.stderr
    assert (tmp_path / "config.yaml").read_text() == "mine\n"


def test_init_refuses_an_unknown_task_type(tmp_path):
    result = runner.invoke(app, ["init", "sentiment", "--out", str(tmp_path / "c.yaml")])
    assert result.exit_code == 2
    assert "unknown task type 'sentiment': choose causal_lm" in result.stderr
    assert not (tmp_path / "c.yaml").exists()


def test_a_missing_optional_part_names_its_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # importing it now raises ModuleNotFoundError
    monkeypatch.delitem(sys.modules, "tunesmith.ship.serve", raising=False)
    result = runner.invoke(app, ["serve", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "tunesmith serve needs the fastapi package" in result.stderr
    assert "pip install 'tunesmith[serve]'" in result.stderr
