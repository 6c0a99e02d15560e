"""The Python API; the CLI is a thin layer over these functions.

result = tunesmith.train("examples/bbc_news.yaml", overrides=["train.num_epochs=1"])
tunesmith.predict(result.run_dir, ["Shares rose sharply after the results"])

Each function reads top to bottom in stage order and talks to the task only through the task
contract (tasks/contract.py), so none of them knows which task kind it runs.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tunesmith.config import (
    DEMO_CONFIG,
    Config,
    apply_overrides,
    config_from_dict,
    config_tree,
    dump_config,
    load_config,
)
from tunesmith.data.hf_datasets import relocate, write_tables
from tunesmith.data.label_errors import label_error_finder
from tunesmith.data.prepare import PreparedData
from tunesmith.data.summary import data_lines
from tunesmith.errors import TunesmithError
from tunesmith.evaluate.final import finish_run, score_file
from tunesmith.models.load import check_max_length, resolve_model
from tunesmith.runs import RunDir, claim_output, is_main_process, settled_on_failure, unused_path
from tunesmith.ship.hub import push as push_run
from tunesmith.study.cv import fold_classifier
from tunesmith.tasks import build_task, require_stage
from tunesmith.tasks.contract import Task
from tunesmith.tasks.run import load_run, load_task
from tunesmith.train.fit import check_validation_needs, fit, setup_runtime
from tunesmith.train.trackers import check_trackers, tracking

SPLITS = ("train", "validation", "test")


@dataclass
class TrainResult:
    """What a finished run produced."""

    run_dir: Path
    metrics: dict[str, Any]


def _console(console):
    if console is None:
        from rich.console import Console  # rich loads only when something prints

        console = Console(stderr=True, soft_wrap=True)
    return console


def _log(console) -> Callable[[str], None]:
    """Prints messages as they are on rank 0 (paths and labels may hold [brackets] that are not
    markup); other ranks stay quiet."""
    if not is_main_process():
        return lambda message: None
    return lambda message: console.print(message, markup=False, highlight=False)


def _as_config(config: Config | str | Path | dict | None, overrides: list[str] | None) -> Config:
    if isinstance(config, dict):
        config = config_from_dict(config)
    if not isinstance(config, Config):
        return load_config(config, overrides)
    if overrides:
        return config_from_dict(apply_overrides(config.model_dump(mode="json"), overrides))
    return config


def train(
    config: Config | str | Path | dict | None = None,
    *,
    overrides: list[str] | None = None,
    data=None,
    console=None,
    callbacks: list | None = None,
) -> TrainResult:
    """Runs the whole pipeline: data, model, training, evaluation, model card.

    Args:
        config: a Config, a YAML path, a nested dict, or None for the embedded BBC demo.
        overrides: ``key.sub=value`` strings applied on top.
        data: tables in place of the config's data.train/validation/test sources:
            ``{"train": ..., "validation": ..., "test": ...}`` (train required) of pandas
            DataFrames, ``datasets`` Datasets or DatasetDicts (a role takes its split: validation
            from "validation", "valid" or "dev"), or one DatasetDict for every role it has. Each is
            written to ``RUN_DIR/inputs/ROLE.parquet`` and read from there like any file (same
            cleaning and columns; its SHA-256 in data_manifest.json), and config.yaml names that
            file, so the run can be repeated from its directory. The objects are not changed.
        console: a rich Console for messages and progress (stderr by default).
        callbacks: extra training-loop callbacks (see tunesmith.train.callbacks).
    """
    if data is None:
        return _train(_as_config(config, overrides), console, callbacks)
    with tempfile.TemporaryDirectory(prefix="tunesmith-inputs-") as staging:  # until the run dir keeps them
        config = _as_config(config, overrides)
        paths = write_tables(data, Path(staging))
        config = config.model_copy(update={"data": config.data.model_copy(update=paths)})  # a copy: not the caller's
        return _train(config, console, callbacks, staging=Path(staging))


def _keep_tables(run: RunDir, staging: Path, config: Config, data: PreparedData) -> Config:
    """Copies train()'s staged tables into ``RUN_DIR/inputs/`` and names them there: in the data
    manifest and changelog (``data``, updated) and in the config returned (for config.yaml)."""
    inputs = (run.path / "inputs").resolve()
    inputs.mkdir()
    for file in sorted(staging.iterdir()):
        shutil.copyfile(file, inputs / file.name)
    old, new = str(staging), str(inputs)
    data.manifest, data.changes = relocate(data.manifest, old, new), relocate(data.changes, old, new)
    paths = {role: relocate(getattr(config.data, role), old, new) for role in SPLITS}
    return config.model_copy(update={"data": config.data.model_copy(update=paths)})


def _write_inputs(run: RunDir, config: Config, task: Task, data: PreparedData, staging: Path | None,
                  log: Callable[[str], None]) -> Config:  # fmt: skip
    """Writes what a new run starts from: config.yaml, task.json, the splits, the data manifest
    and changelog (train()'s staged tables kept in the run first); returns the config as saved."""
    log(f"Run directory: {run.path}")
    if staging is not None:
        config = _keep_tables(run, staging, config, data)
    run.write_text("config.yaml", dump_config(config))
    run.write_json("task.json", task.to_dict())
    run.data_dir.mkdir()
    for name, frame in data.splits.items():
        frame.to_parquet(run.data_dir / f"{name}.parquet", index=False)
    run.write_json("data_manifest.json", data.manifest)
    run.write_text("data_changelog.jsonl", "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in data.changes))
    return config


def _prepare(config: Config, console, *, check: Callable[[Config, Task], None] | None = None,
             ) -> tuple[Task, PreparedData, Callable[[str], None]]:  # fmt: skip
    """What a new run (train or federate) does before its run directory: claims
    runtime.output_dir (rank 0), builds the task, refuses what it can before the data work
    (trackers, the model's max length, ``check``), prepares the data (data.clean included),
    sets up the runtime, logs what the data stage did and checks the settings that need a
    validation split. Returns the task, the data and the run's log."""
    out = config.runtime.output_dir
    if is_main_process() and out is not None:  # a run inside another would break that run's hashes and resume
        claim_output(out, kind="dir", what="runtime.output_dir", run=True)
    task = build_task(config)
    if check is not None:
        check(config, task)
    check_trackers(config.runtime.report_to)  # a missing tracker package, before any work
    # The model's name and model.max_length are checked before the data work and the run directory.
    check_max_length(resolve_model(config.model.name), None, config.model.max_length)
    finder = label_error_finder(config, fit_fold=fold_classifier(config, train=train))
    data = task.prepare(config, find_label_errors=finder)
    setup_runtime(config)
    log = _log(_console(console))
    for line in data_lines(data, suggest_balance=config.task.supports_balance):
        log(line)
    check_validation_needs(config, task, data.splits)
    return task, data, log


def _train(config: Config, console, callbacks: list | None, staging: Path | None = None) -> TrainResult:
    """train() once its config is resolved; ``staging``: where train()'s ``data`` tables wait."""
    console = _console(console)
    out, main = config.runtime.output_dir, is_main_process()
    if not main and out is None:
        raise TunesmithError("a distributed run needs runtime.output_dir (tunesmith train --nproc sets it)")
    task, data, log = _prepare(config, console)
    if not main:  # only rank 0 writes; the others train on the same data in memory
        fit(RunDir(out), config, task, data, console=console, callbacks=[], log=log, resume=False)
        return TrainResult(Path(out), {})
    run = RunDir.create(out)
    with settled_on_failure(run, fresh=True):
        config = _write_inputs(run, config, task, data, staging, log)
        # The lock refuses a resume started while this run trains; tracking: runtime.report_to.
        with run.lock(), tracking(run, config) as trackers:
            fitted = fit(run, config, task, data, console=console, callbacks=[*trackers, *(callbacks or [])],
                         log=log, resume=False)  # fmt: skip
            return TrainResult(run.path, finish_run(run, config, task, data, fitted, log))


def resume(run_dir: str | Path, *, console=None, callbacks: list | None = None) -> TrainResult:
    """Continues an interrupted run from its newest intact checkpoint, exactly where it stopped.

    Raises:
        TunesmithError: the run finished, another process is training it (``RUN_DIR/.lock``), or
            none of its checkpoints is intact.
    """
    run, console = RunDir.open(run_dir), _console(console)
    log = _log(console)
    # Rank 0 holds the run's lock throughout, so the "finished" check sees a run nobody is changing.
    with run.lock() if is_main_process() else contextlib.nullcontext():
        config = load_config(run.path / "config.yaml")
        if run.finished:
            raise TunesmithError(f"{run.path} already finished; there is nothing to resume")
        if run.federated:
            raise TunesmithError(
                f"{run.path} is a federated run: continue it with tunesmith federate --resume {run.path}"
            )
        setup_runtime(config)
        task = build_task(config, run.read_json("task.json"))
        data = _saved_data(run)
        # The checkpoints stay, half-written files go; tracking continues runtime.report_to's runs.
        with settled_on_failure(run, fresh=False), tracking(run, config, resume=True) as trackers:
            fitted = fit(run, config, task, data, console=console, callbacks=[*trackers, *(callbacks or [])],
                         log=log, resume=True)  # fmt: skip
            if not is_main_process():
                return TrainResult(run.path, {})
            return TrainResult(run.path, finish_run(run, config, task, data, fitted, log))


def federate(
    config: Config | str | Path | dict | None = None,
    *,
    overrides: list[str] | None = None,
    console=None,
    callbacks: list | None = None,
    client_mods: list | None = None,
    grid=None,
) -> TrainResult:
    """Fine-tunes across clients that keep their rows (the ``federated`` config section), on
    Flower's simulation runtime, and writes an ordinary run directory from the best round's
    global model (with ``federation.json`` and ``federation_curves.png``). model.strategy is
    LoRA unless the config file or dict, or the overrides, name another (a Config object is
    taken as it is), so only adapters and the head travel.

    Args:
        callbacks: called with each round's record once it is saved.
        client_mods: Flower mods wrapped around every client.
        grid: a deployed federation's Flower Grid (``tunesmith.flower``'s ServerApp passes its
            own): the clients are the SuperNodes that reach it, each reading its own file.
    """
    from tunesmith.study import federated  # Flower and Ray load only for this command

    if not isinstance(config, Config):
        _as_config(config, overrides)  # a bad file or value is reported as train reports it
        given = _names_strategy(config, overrides or [])
        overrides = (overrides or []) + ([] if given else ["model.strategy=lora"])
    config = _as_config(config, overrides)
    console = _console(console)

    def check(config: Config, task: Task) -> None:
        federated.check_federation(config, task, deployed=grid is not None)

    task, data, log = _prepare(config, console, check=check)
    run = RunDir.create(config.runtime.output_dir)
    with settled_on_failure(run, fresh=True):
        config = _write_inputs(run, config, task, data, None, log)
        with run.lock(), tracking(run, config) as trackers:
            fitted = federated.run_federation(run, config, task, data, log=log,
                                              callbacks=[*map(federated.RoundTracker, trackers), *(callbacks or [])],
                                              client_mods=client_mods or [], grid=grid)  # fmt: skip
            return TrainResult(run.path, finish_run(run, config, task, data, fitted, log))


def _names_strategy(config: str | Path | dict | None, overrides: list[str]) -> bool:
    """Whether a config (file, dict, or None for the demo) or its overrides set model.strategy."""
    if any(o.partition("=")[0].strip() == "model.strategy" for o in overrides):
        return True
    if not isinstance(config, dict):
        path = Path(config) if config is not None else DEMO_CONFIG
        config = config_tree(path.read_text(encoding="utf-8"), str(path))
    return "strategy" in (config.get("model") or {})


def federate_resume(run_dir: str | Path, *, console=None, callbacks: list | None = None,
                    client_mods: list | None = None) -> TrainResult:  # fmt: skip
    """Continues an interrupted federated run after its last completed round."""
    from tunesmith.study import federated  # Flower and Ray load only for this command

    run, console = RunDir.open(run_dir), _console(console)
    log = _log(console)
    with run.lock():
        if not run.federated:
            raise TunesmithError(
                f"{run.path} is not a federated run: resume it with tunesmith train --resume {run.path}"
            )
        if run.finished:
            raise TunesmithError(f"{run.path} already finished; there is nothing to resume")
        if federated.read_plan(run).get("deployed"):
            raise TunesmithError(f"{run.path} was a deployed federation: --resume continues simulated ones only; "
                                 "start the deployed run again with flwr run (a new runtime.output_dir)")  # fmt: skip
        config, data = load_config(run.path / "config.yaml"), _saved_data(run)
        setup_runtime(config)
        task = build_task(config, run.read_json("task.json"))
        with settled_on_failure(run, fresh=False), tracking(run, config, resume=True) as trackers:
            fitted = federated.run_federation(run, config, task, data, log=log,
                                              callbacks=[*map(federated.RoundTracker, trackers), *(callbacks or [])],
                                              client_mods=client_mods or [], resume=True)  # fmt: skip
            return TrainResult(run.path, finish_run(run, config, task, data, fitted, log))


def _saved_data(run: RunDir) -> PreparedData:
    """A run's prepared splits and manifest, as its data stage saved them."""
    splits = {name: pd.read_parquet(run.data_dir / f"{name}.parquet") for name in SPLITS
              if (run.data_dir / f"{name}.parquet").exists()}  # fmt: skip
    return PreparedData(splits, run.read_json("data_manifest.json"))


def predict(run_dir: str | Path, inputs: list, *, input_file: str | Path | None = None) -> list[dict[str, Any]]:
    """Predictions for raw inputs with a trained run, as its task reads them: texts for a
    classifier (label(s) or value and the scores behind them) or a tagger (entity spans);
    ``{"question", "context"}`` dicts for question answering (answers with character offsets
    and score); image paths or folders for an image classifier; prompts for a generative run
    (the generated text; a causal LM reads each prompt as a single user turn).

    Args:
        input_file: a file of more inputs, read as the task reads them (``Task.read_inputs``):
            texts (.txt lines or a table's text column), question/context records, images.
    """
    if input_file is not None:  # read and checked before the model loads
        inputs = list(inputs) + load_task(run_dir)[2].read_inputs(Path(input_file))
        if not inputs:
            raise TunesmithError(f"nothing to predict: {input_file} holds no inputs")
    run, config, task, model, processor = load_run(run_dir)
    return task.predict(model, processor, list(inputs), temperature=run.temperature())


def evaluate(run_dir: str | Path, data: str | Path, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Scores a trained run on a labelled file (same columns as training) and saves the result
    under ``RUN_DIR/evaluations/`` as ``NAME.json`` (NAME: the data file's name without suffix).

    An earlier evaluation is kept: when ``NAME.json`` exists, this one is saved as ``NAME-2.json``
    (``-3``, ...), with its plots named alike, and ``log`` says so.
    """
    out = Path(run_dir) / "evaluations"
    wanted = Path(str(data)).stem
    stem = unused_path(out / f"{wanted}.json").stem  # chosen before the model loads
    if stem != wanted:
        log(f"{out / wanted}.json exists (an earlier evaluation, kept); this one is saved as {out / stem}.json")
    run, config, task, model, processor = load_run(run_dir)
    require_stage(task, "evaluate", what=str(run.path))
    return score_file(run, config, task, model, processor, data, out=out, stem=stem)


def chat(run_dir: str | Path, *, read=input, write=print) -> None:
    """A small interactive loop with a trained causal LM: the whole conversation is the prompt.

    ``/reset`` starts over; an empty line, ``/exit`` or end of input stops.
    """
    run, config, task, model, processor = load_run(run_dir)
    require_stage(task, "chat", what=str(run.path))
    messages: list[dict[str, str]] = []
    write("Chatting with " + str(run.model_dir) + " (/reset starts over, an empty line or /exit stops)")
    while True:
        try:
            line = read("you> ")
        except (EOFError, KeyboardInterrupt):  # Ctrl-D or Ctrl-C ends the conversation
            write("")
            return
        if not line.strip() or line.strip() == "/exit":
            return
        if line.strip() == "/reset":
            messages = []
            continue
        messages.append({"role": "user", "content": line})
        reply = task.reply(model, processor, messages)
        messages.append({"role": "assistant", "content": reply})
        write(f"model> {reply}")


def push(run_dir: str | Path, repo: str, *, private: bool = False, token: str | None = None,
         log: Callable[[str], None] = print) -> str:  # fmt: skip
    """Uploads a finished run's ``model/`` (weights, processor, model card with its Hub metadata)
    and a LoRA run's ``adapter/`` to the Hub model repository ``repo`` (owner/name); returns its URL.
    A token comes from ``token``, HF_TOKEN or a stored login; see ship/hub.py."""
    return push_run(run_dir, repo, private=private, token=token, log=log)
