"""Loading a finished run for inference: ``load_run``, shared by predict, evaluate, chat, export,
serve and the estimator."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from tunesmith.config import Config, load_config
from tunesmith.errors import TunesmithError
from tunesmith.models.load import ResolvedModel, check_weights, quiet_transformers
from tunesmith.runs import RunDir
from tunesmith.tasks.build import build_task
from tunesmith.tasks.contract import Task


class LoadedRun(NamedTuple):
    """A finished run, ready to predict (it unpacks as ``run, config, task, model, tokenizer``)."""

    run: RunDir
    config: Config
    task: Task
    """The task rebuilt from the run's config and ``task.json``."""
    model: Any
    """The trained model, in eval mode."""
    tokenizer: Any
    """The run's tokenizer, or its image processor for an image classifier."""


def load_task(run_dir: str | Path) -> tuple[RunDir, Config, Task]:
    """A run's directory, config and task (with the label space it learned), without its model:
    enough to read and check inputs before the slow model load.

    Raises:
        TunesmithError: not a run directory, or its config does not load.
    """
    run = RunDir.open(run_dir)
    config = load_config(run.path / "config.yaml")
    return run, config, build_task(config, run.read_json("task.json"))


def load_run(run_dir: str | Path, *, verify_hashes: bool = False) -> LoadedRun:
    """Loads a finished run's config, task, model and tokenizer (or image processor).

    Args:
        run_dir: the run directory.
        verify_hashes: first check every file of the model against the run's ``hashes.json``
            (export and serve: never ship a model that changed after training).

    Raises:
        TunesmithError: not a run directory, the run has no trained model yet, its files do not
            match ``hashes.json`` (with ``verify_hashes``), or its weights are damaged.
    """
    quiet_transformers()
    run = RunDir.open(run_dir)
    if verify_hashes:
        run.verify_hashes()  # before anything of it is loaded
    if not (run.model_dir / "config.json").is_file():
        raise TunesmithError(
            f"{run.path} has no trained model yet (resume it with: tunesmith train --resume {run.path})"
        )
    config = load_config(run.path / "config.yaml")
    task = build_task(config, run.read_json("task.json"))
    processor = task.load_processor(ResolvedModel(str(run.model_dir), f"the trained model in {run.model_dir}"),
                                    trained=True)  # fmt: skip
    check_weights(run.model_dir, "restore the run from a backup or train it again")  # not a traceback
    model = task.load_trained(run.model_dir)
    return LoadedRun(run=run, config=config, task=task, model=model.eval(), tokenizer=processor)
