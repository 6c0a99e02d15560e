"""Experiment trackers (``runtime.report_to``): TensorBoard, MLflow and Weights & Biases receive
what the run directory already records: every metrics.jsonl scalar at its step, the resolved config
as parameters, the final metrics of metrics.json, and report.html, the model card and metrics.json
as artifacts (TensorBoard, which keeps no files, gets their paths as a text summary).

Their files stay inside the run directory unless the user points them elsewhere, so nothing needs
the network and nothing is lost: ``RUN/tensorboard/``; ``RUN/mlflow.db`` (SQLite) with artifacts in
``RUN/mlruns/`` unless MLFLOW_TRACKING_URI is set; ``RUN/wandb/`` in offline mode unless WANDB_MODE
or WANDB_API_KEY is set (then wandb's own settings decide). Only rank 0 reports: the loop gives
callbacks to the main process only, and :func:`tracking` yields none elsewhere.

Why each library's own client and not ``accelerate.tracking``: accelerate's MLflowTracker works
through mlflow's process-global fluent API (one tracking URI and one active-run stack per
process), so pointing it at this run's SQLite file would redirect every other run in the process
(a study trains its trials in one process, each with its own store); ``MlflowClient`` takes the
store per client. accelerate's WandBTracker likewise writes through the global ``wandb.config``,
its TensorBoardTracker files the parameters under a separate timestamped sub-run, and none of them
logs artifacts for TensorBoard or W&B, so most calls would reach past the wrapper anyway. What is
left here is a few calls of each library's public API: torch's ``SummaryWriter``,
``MlflowClient`` and ``wandb.init(reinit="create_new")``'s run object.

A resumed run continues the same MLflow and W&B runs (their ids are kept in ``RUN/trackers.json``)
and TensorBoard purges what the stopped attempt logged after the checkpoint it resumes from.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunesmith.config import Config, flatten
from tunesmith.errors import TunesmithError
from tunesmith.runs import RunDir, is_main_process
from tunesmith.train.callbacks import Callback
from tunesmith.train.checkpoint import LoopState

PACKAGES = {"tensorboard": ("tensorboard", "tensorboard==2.21.0"), "mlflow": ("mlflow", "mlflow-skinny==3.17.2"),
            "wandb": ("wandb", "wandb==0.31.0")}  # fmt: skip
"""Each tracker's module and the pinned distribution that provides it (requirements.lock)."""

ARTIFACTS = ("report.html", "README.md", "metrics.json")
"""Files of a finished run handed to the trackers: the report, the model card, the final metrics."""

IDS_FILE = "trackers.json"


def check_trackers(names: list[str]) -> None:
    """Refuses, before any work, trackers whose package is not installed.

    Raises:
        TunesmithError: naming each missing tracker and the pip install that provides it.
    """
    missing = [name for name in names if importlib.util.find_spec(PACKAGES[name][0]) is None]
    if missing:
        installs = " ".join(PACKAGES[name][1] for name in missing)
        raise TunesmithError(
            f"runtime.report_to lists {', '.join(missing)}, which is not installed: run "
            f"pip install {installs} (or remove it from runtime.report_to)"
        )


def flat_parameters(tree: dict[str, Any], prefix: str = "") -> dict[str, str | int | float | bool]:
    """A nested config as ``section.key`` parameters (the ``--set`` spelling); a list or mapping
    value becomes its JSON text, and None ``null``, since trackers take only scalars."""
    return {name: value if isinstance(value, (str, int, float, bool)) else json.dumps(value, default=str)
            for name, value in flatten(tree, prefix).items()}  # fmt: skip


def flat_scalars(tree: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a nested metrics dict as ``a/b/c`` scalars; lists (confusion matrices,
    calibration bins) and text are left out."""
    flat: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flat_scalars(value, f"{name}/")
        elif isinstance(value, (int, float)):  # bool included: stopped_early, passed
            flat[name] = float(value)
    return flat


def _metric_name(name: str) -> str:
    """``name`` as MLflow accepts it: each ``/`` part of word characters, ``.``, ``-`` or spaces
    (a label such as "R&D" or "a/b" would otherwise be refused), at most 250 characters."""
    parts = [re.sub(r"[^\w.\- ]", "_", part) for part in name.split("/")]
    return "/".join("_" if part in ("", ".", "..") else part for part in parts)[:250]


class _TensorBoard:
    """torch's SummaryWriter on ``RUN/tensorboard``."""

    def __init__(self, run: RunDir, *, run_id: str | None, start_step: int | None, parameters: dict):
        from torch.utils.tensorboard import SummaryWriter

        # A resumed run logs again from the step after its checkpoint: purge_step hides what the
        # stopped attempt logged from there on (what it logged up to the checkpoint stays).
        purge = None if start_step is None else start_step + 1
        self.writer = SummaryWriter(str(run.path / "tensorboard"), purge_step=purge)
        self.parameters, self.id = parameters, None
        if start_step is None:
            table = "\n".join(f"| {key} | {value} |" for key, value in parameters.items())
            self.writer.add_text("config", "| key | value |\n|---|---|\n" + table)

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def final(self, values: dict[str, float], step: int) -> None:
        from torch.utils.tensorboard.summary import hparams

        self.log(values, step)
        # The HPARAMS tab: this run's parameters beside its final metrics (tags logged just above).
        for summary in hparams(self.parameters, dict.fromkeys(values, 0.0)):
            self.writer.file_writer.add_summary(summary, global_step=step)

    def artifacts(self, paths: list[Path], step: int) -> None:
        lines = [f"- {path.name}: {path.resolve()}" for path in paths]
        self.writer.add_text("artifacts", "\n".join(lines), global_step=step)

    def finish(self, *, failed: bool) -> None:
        self.writer.close()


class _MLflow:
    """An MlflowClient run in ``RUN/mlflow.db`` (or the MLFLOW_TRACKING_URI store)."""

    def __init__(self, run: RunDir, *, run_id: str | None, start_step: int | None, parameters: dict):
        from mlflow import MlflowClient
        from mlflow.entities import Param

        configured = os.environ.get("MLFLOW_TRACKING_URI")
        self.client = MlflowClient(tracking_uri=configured or f"sqlite:///{(run.path / 'mlflow.db').resolve()}")
        if run_id is not None:  # a resumed run: the same MLflow run, running again
            self.client.update_run(run_id, status="RUNNING")
            self.id = run_id
            return
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "tunesmith")
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:  # our own store keeps its artifacts beside it; a configured server uses its default
            location = None if configured else (run.path / "mlruns").resolve().as_uri()
            experiment_id = self.client.create_experiment(name, artifact_location=location)
        tags = {"tunesmith.run_dir": str(run.path.resolve())}
        self.id = self.client.create_run(experiment_id, run_name=run.path.name, tags=tags).info.run_id
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        params = [Param(_metric_name(key), str(value)[:MAX_PARAM_VAL_LENGTH]) for key, value in parameters.items()]
        for start in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.id, params=params[start : start + MAX_PARAMS_TAGS_PER_BATCH])

    def log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        stamp = int(time.time() * 1000)
        metrics = [Metric(_metric_name(key), value, stamp, step) for key, value in values.items()]
        for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.id, metrics=metrics[start : start + MAX_METRICS_PER_BATCH])

    final = log

    def artifacts(self, paths: list[Path], step: int) -> None:
        for path in paths:
            self.client.log_artifact(self.id, str(path))

    def finish(self, *, failed: bool) -> None:
        self.client.set_terminated(self.id, status="FAILED" if failed else "FINISHED")


class _WandB:
    """A W&B run with its files in ``RUN/wandb/``, offline unless WANDB_MODE or WANDB_API_KEY is set."""

    def __init__(self, run: RunDir, *, run_id: str | None, start_step: int | None, parameters: dict):
        import wandb

        offline = "WANDB_MODE" not in os.environ and "WANDB_API_KEY" not in os.environ
        # create_new: a run object of its own, leaving wandb.run (and any other active run) alone.
        # console="off": the run's log is already in the terminal and the run directory.
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "tunesmith"), name=run.path.name, dir=str(run.path),
            id=run_id, resume="allow" if run_id else None, mode="offline" if offline else None,
            config=None if run_id else parameters, reinit="create_new", settings=wandb.Settings(console="off"),
        )  # fmt: skip
        self.id = self.run.id

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def final(self, values: dict[str, float], step: int) -> None:
        self.run.summary.update(values)

    def artifacts(self, paths: list[Path], step: int) -> None:
        # Copied into the run's own files folder: saving a path outside it leaves a symlink,
        # which would dangle once the run directory is moved.
        files = Path(self.run.dir)
        for path in paths:
            shutil.copyfile(path, files / path.name)
            self.run.save(str(files / path.name), base_path=str(files), policy="now")

    def finish(self, *, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


TRACKERS = {"tensorboard": _TensorBoard, "mlflow": _MLflow, "wandb": _WandB}


class TrackerCallback(Callback):
    """Sends the loop's logged scalars to the trackers of ``runtime.report_to`` (rank 0 only).

    The trackers start with the training (after a resume has restored its step), so a run that
    fails before training leaves no empty tracker run behind; :meth:`close` adds the final
    metrics and the artifacts once the run has written them.
    """

    def __init__(self, run: RunDir, config: Config, *, resume: bool = False):
        self.run, self.config, self.resume = run, config, resume
        self.trackers: list[Any] = []
        self.step = 0

    def on_train_start(self, state: LoopState, total_steps: int) -> None:
        self.start(state.step)

    def log_at(self, step: int, split: str, record: dict[str, Any]) -> None:
        """Sends ``record``'s scalars under ``split/`` at ``step``, starting the trackers first if
        need be (a run that reports without the loop: a federation logs each round as a step)."""
        self.start(step - 1)
        self.step = step
        self._log(split, record, step)

    def start(self, step: int) -> None:
        """Starts the trackers' runs (once) at ``step``, the checkpoint a resumed run continues from."""
        self.step = step
        if self.trackers:
            return
        ids_path = self.run.path / IDS_FILE
        ids = json.loads(ids_path.read_text(encoding="utf-8")) if self.resume and ids_path.is_file() else {}
        parameters = flat_parameters(self.config.model_dump(mode="json"))
        start = step if self.resume else None
        for name in self.config.runtime.report_to:
            tracker = TRACKERS[name](self.run, run_id=ids.get(name), start_step=start, parameters=parameters)
            self.trackers.append(tracker)
            if tracker.id is not None:  # saved as each starts: a resume continues the runs that exist
                ids[name] = tracker.id
                self.run.write_json(IDS_FILE, ids)

    def on_step_end(self, state: LoopState, logs: dict[str, Any] | None) -> None:
        self.step = state.step
        if logs:
            self._log("train", logs, state.step)

    def on_eval_end(self, state: LoopState, metrics: dict[str, Any]) -> None:
        self._log("validation", metrics, state.step)

    def _log(self, split: str, record: dict[str, Any], step: int) -> None:
        # The scalars of the metrics.jsonl record (the loop writes the same ones), under split/.
        values = {f"{split}/{key}": float(value) for key, value in record.items()
                  if isinstance(value, (int, float)) and key != "step"}  # fmt: skip
        for tracker in self.trackers:
            tracker.log(values, step)

    def close(self, *, failed: bool) -> None:
        """Adds the final metrics and artifacts the run wrote (a run that failed after finishing,
        such as a failed forgetting check, has them too) and ends every tracker's run."""
        finished = (self.run.path / "metrics.json").is_file()
        final = flat_scalars(self.run.read_json("metrics.json"), "final/") if finished else {}
        paths = [self.run.path / name for name in ARTIFACTS if (self.run.path / name).is_file()]
        for tracker in self.trackers:
            if final:
                tracker.final(final, self.step)
            if paths:
                tracker.artifacts(paths, self.step)
            tracker.finish(failed=failed)
        self.trackers = []


@contextlib.contextmanager
def tracking(run: RunDir, config: Config, *, resume: bool = False) -> Iterator[list[Callback]]:
    """The tracker callbacks for a training run inside this block: ``[TrackerCallback]`` on rank 0
    when ``runtime.report_to`` names any, else none. When the block ends (the run scored, its report
    written), the trackers get the final metrics and artifacts and their runs end, marked failed
    when the block raised.

    Raises:
        TunesmithError: a tracker's package is not installed (before the block runs).
    """
    if not config.runtime.report_to or not is_main_process():
        yield []
        return
    check_trackers(config.runtime.report_to)
    callback = TrackerCallback(run, config, resume=resume)
    try:
        yield [callback]
    except BaseException:
        with contextlib.suppress(Exception):  # the run's own error is the one to report
            callback.close(failed=True)
        raise
    callback.close(failed=False)
