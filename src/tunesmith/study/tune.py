"""Hyperparameter search with Optuna (``tunesmith tune``).

A trial is one ordinary run (or one cross-validation) with sampled values put into the config.
The training loop reports its validation metric at every evaluation; the pruner stops trials
that fall behind. The study lives in SQLite inside the study directory by default, so a killed
study resumes where it stopped (finished and pruned trials are kept, a trial killed midway is
marked failed and run again) and several worker processes can share it.

Study directory::

    tune_config.yaml    the study's config; `--out` resumes only a folder that holds one
    study.db            Optuna storage (unless tune.storage names another)
    trials/trial-NNN/   the run (or CV) directory of each trial
    best.yaml           the best trial's config, ready for `tunesmith train`
    study.json, study.md, history.png, importances.png
"""

from __future__ import annotations

import json
import math
import subprocess
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tunesmith.config import Config, SearchParameter, config_from_dict, dump_config
from tunesmith.errors import TunesmithError
from tunesmith.runs import claim_output
from tunesmith.tasks import build_task
from tunesmith.train.callbacks import Callback, Deadline

HEARTBEAT_SECONDS = 5
GRACE_SECONDS = 20
"""A RUNNING trial whose process has not beaten for this long was killed: it is failed and, by
the retry callback, queued again with the same parameters."""
LOSS_LIKE = ("loss", "perplexity", "mse", "mae", "hamming_loss")


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def objective_metric(config: Config) -> tuple[str, str]:
    """(metric name, "maximize" or "minimize") that trials are scored by."""
    task = build_task(config)
    name = config.tune.metric or config.train.metric or task.default_metric[0]
    if name not in task.metric_names:
        key = "tune.metric" if config.tune.metric else "train.metric"  # the key the name came from
        raise TunesmithError(f"{key}={name!r} is not a metric of this task; choose one of {task.metric_names}")
    return name, "minimize" if name in LOSS_LIKE else "maximize"


def grid(space: dict[str, SearchParameter]) -> dict[str, list]:
    """The grid sampler's values: categorical choices, or low..high in steps of ``step``."""
    values = {}
    for key, parameter in space.items():
        if parameter.type == "categorical":
            values[key] = list(parameter.choices)
        elif parameter.step is not None:
            count = math.floor((parameter.high - parameter.low) / parameter.step + 1e-9) + 1
            points = [parameter.low + i * parameter.step for i in range(count)]
            values[key] = [int(round(p)) for p in points] if parameter.type == "int" else [float(p) for p in points]
        else:
            raise TunesmithError(f"tune.space.{key}: the grid sampler needs 'step' (or a categorical 'choices' list)")
    return values


def suggest(trial, space: dict[str, SearchParameter]) -> dict[str, Any]:
    """One sampled value per search-space key."""
    values = {}
    for key, p in space.items():
        if p.type == "float":
            values[key] = trial.suggest_float(key, p.low, p.high, log=p.log, step=p.step)
        elif p.type == "int":
            values[key] = trial.suggest_int(key, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            values[key] = trial.suggest_categorical(key, p.choices)
    return values


def trial_config(base: Config, values: dict[str, Any], output_dir: Path | None) -> Config:
    """``base`` with the sampled values set (dotted keys) and the trial's run directory."""
    tree = base.model_dump(mode="json")
    for key, value in values.items():
        node = tree
        *path, last = key.split(".")
        for part in path:
            if not isinstance(node.get(part), dict):
                raise TunesmithError(f"tune.space: {key!r} is not a config key ({part!r} is not a section)")
            node = node[part]
        if last not in node:
            raise TunesmithError(f"tune.space: {key!r} is not a config key")
        node[last] = value
    tree["runtime"]["output_dir"] = None if output_dir is None else str(output_dir)
    tree["tune"]["space"] = {}
    return config_from_dict(tree, f"tune.space values {values}")


def check(config: Config) -> None:
    """Fails early on a study that cannot run: no space, no validation split, bad keys."""
    space = config.tune.space
    if not space:
        raise TunesmithError("tune.space is empty: declare at least one parameter, e.g. train.learning_rate")
    if config.tune.objective == "validation" and config.data.validation is None and config.data.val_fraction <= 0:
        raise TunesmithError("tune.objective=validation needs a validation split: set data.val_fraction above 0")
    samples = {k: p.choices[0] if p.type == "categorical" else (int(p.low) if p.type == "int" else p.low)
               for k, p in space.items()}  # fmt: skip
    trial_config(config, samples, None)
    if config.tune.sampler == "grid":
        grid(space)
    objective_metric(config)


class PruningReporter(Callback):
    """Reports each validation metric to the trial; raises TrialPruned when the pruner says so."""

    def __init__(self, trial, metric: str):
        self.trial, self.metric = trial, metric

    def on_eval_end(self, state, metrics: dict[str, Any]) -> None:
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return
        self.trial.report(float(value), state.step)
        if self.trial.should_prune():
            self.trial.set_user_attr("pruned_at_step", state.step)
            raise _optuna().TrialPruned(f"{self.metric} {value:.4f} at step {state.step}")


def _storage(config: Config, directory: Path):
    optuna = _optuna()
    from sqlalchemy.exc import SQLAlchemyError

    url = config.tune.storage or f"sqlite:///{(directory / 'study.db').resolve()}"
    try:
        return optuna.storages.RDBStorage(
            url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
        )  # fmt: skip
    except (SQLAlchemyError, ImportError, ValueError) as error:  # no driver, unreachable, not a database
        key = f"tune.storage={config.tune.storage!r}" if config.tune.storage else f"the study database {url}"
        raise TunesmithError(
            f"{key} cannot be opened: {str(error).splitlines()[0]}. Give a reachable database URL "
            "(sqlite:///path/study.db, postgresql://user@host/db with its driver installed) or leave tune.storage "
            "unset for SQLite in the study directory"
        ) from None


def _sampler(config: Config, worker: int = 0):
    optuna = _optuna()
    # Each worker its own seed: the same seed would make every worker sample the same values.
    seed = (config.tune.seed if config.tune.seed is not None else config.runtime.seed) + worker
    if config.tune.sampler == "grid":
        return optuna.samplers.GridSampler(grid(config.tune.space), seed=seed)
    if config.tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _pruner(config: Config):
    optuna = _optuna()
    if config.tune.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    if config.tune.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def open_study(config: Config, directory: Path, worker: int = 0):
    optuna = _optuna()
    _, direction = objective_metric(config)
    return optuna.create_study(
        study_name="tunesmith", storage=_storage(config, directory), sampler=_sampler(config, worker),
        pruner=_pruner(config), direction=direction, load_if_exists=True,
    )  # fmt: skip


def _counted(study) -> int:
    """Trials that use up the budget: finished, pruned, running, or failed on their own
    (not killed; a killed trial is retried)."""
    states = _optuna().trial.TrialState
    return sum(
        1
        for t in study.get_trials(deepcopy=False)
        if t.state in (states.COMPLETE, states.PRUNED, states.RUNNING)
        or (t.state == states.FAIL and "error" in t.user_attrs)
    )


def work(config: Config, directory: Path, console=None, worker: int = 0, *, train: Callable,
         deadline: float | None = None) -> None:  # fmt: skip
    """One worker: runs trials until the study has ``tune.n_trials`` of them.

    Args:
        train: the function that runs one trial (``tunesmith.api.train``).
        deadline: a ``time.monotonic()`` value: no trial starts after it, and the one running
            ends at its next step (callbacks.Deadline) and is scored as it stands.
    """
    metric, _ = objective_metric(config)
    study = open_study(config, directory, worker)
    log = (lambda m: console.print(m, markup=False, highlight=False)) if console else print

    def objective(trial) -> float:
        values = suggest(trial, config.tune.space)
        out = directory / "trials" / f"trial-{trial.number:03d}"
        trial.set_user_attr("run", str(out))
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
        log(f"Trial {trial.number}: {shown}")
        try:
            trial_run = trial_config(config, values, out)
            if config.tune.objective == "cv":
                return _cv_objective(trial, trial_run, out, metric, console, train)
            if trial_run.train.metric is None:
                trial_run.train.metric = metric  # the best checkpoint is chosen by the same metric
            stops = [Deadline(deadline)] if deadline is not None else []
            result = train(trial_run, console=console, callbacks=[PruningReporter(trial, metric), *stops])
            value = result.metrics.get("validation", {}).get(metric)
            if value is None:  # e.g. loss: kept by the loop, not among the final split metrics
                value = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["training"]["best_metric"]
            if value is None or not math.isfinite(value):
                raise TunesmithError(f"the trial's {metric} is {value}: nothing to compare")
            return float(value)
        except TunesmithError as error:
            trial.set_user_attr("error", str(error))
            log(f"Trial {trial.number} failed: {error}")
            raise

    # With several workers the last few trials can start together: a study may end a trial or
    # two (workers - 1 at most) past n_trials.
    while _counted(study) < config.tune.n_trials:
        if deadline is not None and time.monotonic() >= deadline:
            log("The time budget is spent: no more trials")
            break
        study.optimize(objective, n_trials=1, catch=(TunesmithError,))
        last = study.trials[-1]
        if last.state.name in ("COMPLETE", "PRUNED"):
            value = (
                f"{last.value:.4f}" if last.value is not None else f"pruned ({last.user_attrs.get('pruned_at_step')})"
            )
            log(f"Trial {last.number}: {last.state.name.lower()} {value}")


def _cv_objective(trial, config: Config, out: Path, metric: str, console, train: Callable) -> float:
    from tunesmith.study.cv import run_cv

    scores: list[float] = []

    def train_fold(fold_config, console=None):
        result = train(fold_config, console=console)
        test = result.metrics.get("test", {})
        value = test.get(metric)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            named = sorted(k for k, v in test.items() if isinstance(v, (int, float)) and k != "count")
            raise TunesmithError(f"tune.objective=cv: the fold's test {metric} is {value}; set tune.metric to one "
                                 f"of the test metrics: {named}")  # fmt: skip
        scores.append(float(value))
        trial.report(float(np.mean(scores)), len(scores) - 1)  # the running CV mean after each fold
        if trial.should_prune():
            trial.set_user_attr("pruned_at_step", len(scores) - 1)
            raise _optuna().TrialPruned(f"CV mean {np.mean(scores):.4f} after {len(scores)} folds")
        return result

    report = run_cv(config, out, train=train_fold, console=console)
    return float(report["summary"][metric]["mean"])


def run_tune(config: Config, directory: Path, *, train: Callable, workers: int = 1, console=None,
             worker_command: list[str] | None = None, deadline: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Runs (or resumes) the study in ``directory`` with ``workers`` processes and writes the
    report, plots and best config.

    Args:
        train: the function that runs one trial (``tunesmith.api.train``).
        worker_command: the command that starts one more worker process (the CLI passes
            itself); needed when ``workers`` > 1.
        deadline: a ``time.monotonic()`` value after which no trial starts and the running one
            ends at its next step (``tunesmith auto``'s budget).
    """
    check(config)
    directory = Path(directory)
    saved = directory / "tune_config.yaml"
    if not saved.is_file():  # only a folder this command started (its tune_config.yaml) is resumed
        claim_output(directory, kind="dir", what="--out", note="no study to resume in it: no tune_config.yaml")
    directory.mkdir(parents=True, exist_ok=True)
    if saved.exists():
        if yaml.safe_load(saved.read_text(encoding="utf-8")) != yaml.safe_load(dump_config(config)):
            raise TunesmithError(
                f"{directory} holds a study with a different config ({saved}); resume it with the same config "
                "and --set values, or choose a new --out"
            )
    else:
        saved.write_text(dump_config(config), encoding="utf-8")
    study = open_study(config, directory)
    _optuna().storages.fail_stale_trials(study)  # trials of a killed attempt, if their grace has passed
    started = time.perf_counter()
    helpers = []
    if workers > 1:
        if worker_command is None:
            raise TunesmithError("several workers need a worker command")
        helpers = [subprocess.Popen([*worker_command, "--worker-index", str(i)]) for i in range(1, workers)]
    try:
        work(config, directory, console, train=train, deadline=deadline)
    finally:
        codes = [helper.wait() for helper in helpers]
    if any(codes):
        raise TunesmithError(f"{sum(1 for c in codes if c)} of {workers - 1} extra workers failed (exit codes {codes})")
    return write_report(config, directory, open_study(config, directory), seconds=time.perf_counter() - started)


def write_report(config: Config, directory: Path, study, *, seconds: float) -> dict[str, Any]:
    metric, direction = objective_metric(config)
    trials = []
    for t in study.get_trials(deepcopy=False):
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
        trials.append({
            "number": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params,
            "seconds": duration, "run": t.user_attrs.get("run"), "pruned_at_step": t.user_attrs.get("pruned_at_step"),
            "error": t.user_attrs.get("error"),
        })  # fmt: skip
    complete = [t for t in trials if t["state"] == "complete"]
    report: dict[str, Any] = {
        "metric": metric, "direction": direction, "objective": config.tune.objective,
        "sampler": config.tune.sampler, "pruner": config.tune.pruner, "n_trials": config.tune.n_trials,
        "complete": len(complete), "pruned": sum(t["state"] == "pruned" for t in trials),
        "failed": sum(t["state"] == "fail" for t in trials), "seconds_this_attempt": seconds,
        "trial_seconds_total": sum(t["seconds"] or 0 for t in trials), "trials": trials,
    }  # fmt: skip
    if complete:
        best = study.best_trial
        report["best"] = {"number": best.number, "value": best.value, "params": best.params,
                          "run": best.user_attrs.get("run")}  # fmt: skip
        best_config = trial_config(config, best.params, None)
        (directory / "best.yaml").write_text(
            f"# Best trial {best.number} of {directory}: {metric} {best.value:.4f}\n" + dump_config(best_config),
            encoding="utf-8",
        )
    report["plots"] = _plots(study, directory)
    (directory / "study.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (directory / "study.md").write_text(markdown(report), encoding="utf-8")
    from tunesmith.evaluate.html import study_report

    study_report(directory, report)
    return report


def _plots(study, directory: Path) -> dict[str, str]:
    """Optimisation history and parameter importances (matplotlib); a plot that cannot be drawn
    yet (too few finished trials) is left out with the reason."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    optuna = _optuna()
    plots = {}
    for name, draw in (("history", optuna.visualization.matplotlib.plot_optimization_history),
                       ("importances", optuna.visualization.matplotlib.plot_param_importances)):  # fmt: skip
        try:
            axes = draw(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as error:
            plots[name] = f"not drawn: {error}"
            continue
        figure = (axes[0] if isinstance(axes, np.ndarray) else axes).get_figure()
        figure.set_size_inches(7, 4)
        figure.tight_layout()
        figure.savefig(directory / f"{name}.png", dpi=110)
        plt.close(figure)
        plots[name] = f"{name}.png"
    return plots


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Hyperparameter study: {report['metric']} ({report['direction']})", "",
             f"{report['complete']} complete, {report['pruned']} pruned, {report['failed']} failed of "
             f"{report['n_trials']}; sampler {report['sampler']}, pruner {report['pruner']}, objective "
             f"{report['objective']}. Trial time in total: {report['trial_seconds_total']:.0f} s.", ""]  # fmt: skip
    if "best" in report:
        best = report["best"]
        lines += [f"Best: trial {best['number']}, {report['metric']} {best['value']:.4f}, {best['params']} "
                  "(config: best.yaml)", ""]  # fmt: skip
    lines += ["| trial | state | value | seconds | parameters |", "|---|---|---|---|---|"]
    for t in report["trials"]:
        value = "" if t["value"] is None else f"{t['value']:.4f}"
        seconds = "" if t["seconds"] is None else f"{t['seconds']:.0f}"
        lines.append(f"| {t['number']} | {t['state']} | {value} | {seconds} | {t['params']} |")
    for name, path in report["plots"].items():
        lines += ["", f"![{name}]({path})" if path.endswith(".png") else f"{name}: {path}"]
    return "\n".join(lines) + "\n"
