"""The ``tunesmith`` command: one thin command per stage. Heavy imports happen inside the
commands, so ``tunesmith --help`` answers fast."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import click  # typer's base: its usage errors are click's
import typer
from typer.core import TyperArgument, TyperGroup

from tunesmith.errors import TunesmithError, path_error, raised_at, write_traceback


class _Group(TyperGroup):
    """The ``tunesmith`` command group: an argument with a metavar shows only that in help.

    typer 0.29 prints an argument's Python type beside its name (``RUN_DIR <list[Path]>``) even
    when the argument names a metavar, where an option's metavar replaces its type; this makes
    arguments do as options do, for every command, once, when the group is built."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for command in self.commands.values():
            for param in command.params:
                if isinstance(param, TyperArgument) and param.metavar:
                    param.display_type_rich = lambda ctx: None


app = typer.Typer(
    cls=_Group,
    help="Fine-tune pretrained models on your labelled data: train, evaluate, predict.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)
STARTERS = Path(__file__).parent / "resources" / "starters"
"""The commented starter config of each task type that ``tunesmith init`` writes (TYPE.yaml)."""


def _set_option(example: str = "train.learning_rate=3e-5"):
    """The ``--set KEY=VALUE`` option that every command reading a config takes."""
    return typer.Option("--set", metavar="KEY=VALUE", help=f"Override a config value (repeatable): --set {example}")


EXIT_USER_ERROR = 2
"""A mistake the user can fix (TunesmithError, a full disk, a path that cannot be written)."""
EXIT_INTERNAL_ERROR = 3
"""A failure of tunesmith or a library it uses; the one line names the log with the traceback."""
OPTIONAL_MODULES = {
    "fastapi": "serve", "starlette": "serve", "uvicorn": "serve", "multipart": "serve", "python_multipart": "serve",
    "onnx": "export", "onnxruntime": "export", "onnxscript": "export", "gguf": "export",
    "tensorboard": "tracking", "mlflow": "tracking", "wandb": "tracking", "deepspeed": "deepspeed",
    "flwr": "federated", "ray": "federated",
}  # fmt: skip
"""The modules of each optional part of tunesmith (an extra of pyproject.toml): a command that
imports a missing one says which extra to install."""
_debug = False
"""--debug of the command running in this process."""


def _version() -> str:
    """The installed package's version (its metadata, as pip shows it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tunesmith")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return "(not installed: run from a source tree; pip install -e . gives it a version)"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"tunesmith {_version()}")
        raise typer.Exit()


@app.callback()
def _options(
    debug: Annotated[
        bool,
        typer.Option("--debug", envvar="TUNESMITH_DEBUG", help="On an error, print the full Python traceback."),
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version and exit."),
    ] = False,
) -> None:
    # Options of tunesmith itself, before the command: tunesmith --debug train config.yaml
    global _debug
    _debug = debug


def _fail(message: str, code: int = EXIT_USER_ERROR, error: BaseException | None = None) -> None:
    """Prints ``error: MESSAGE`` on stderr (after the traceback of ``error`` with --debug) and exits."""
    from rich.markup import escape

    if error is not None and _debug:
        import traceback

        traceback.print_exception(error, file=sys.stderr)
    _console().print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def _console():
    """The terminal that a command reports progress on: stderr, so that stdout holds only results."""
    from rich.console import Console  # rich loads only for a command that prints progress

    return Console(stderr=True, soft_wrap=True)


def _guarded(
    work, interrupted: str = "a run can continue from its last checkpoint with: tunesmith train --resume RUN_DIR"
):
    """Runs a command body: the one place where a failure becomes one line on stderr.

    A mistake the user can fix (TunesmithError, a full disk, a path that cannot be written)
    exits with code 2. Anything else is an internal error: one line with the command, the
    error, where it was raised and the log file that holds the full traceback; exit code 3.
    ``tunesmith --debug`` prints the traceback itself.

    Args:
        interrupted: what to tell the user after Ctrl-C (unless the failure added its own note).
    """
    try:
        return work()
    except (typer.Exit, typer.Abort, click.ClickException):
        raise  # the command's own way to end, or a usage error click reports (typer.Exit is a RuntimeError)
    except KeyboardInterrupt as error:
        _fail(f"interrupted; {_notes(error) or interrupted}")
    except SystemExit as error:  # a library gave up and called sys.exit
        if error.code in (None, 0):
            raise
        _internal(work, error, f"{raised_at(error)} stopped it with exit code {error.code} (its own message is above)")
    except Exception as error:
        problem = error if isinstance(error, TunesmithError) else path_error(error) or _missing_extra(work, error)
        if problem is not None:
            _fail("; ".join(filter(None, (str(problem), _notes(error)))), EXIT_USER_ERROR, error)
        _internal(work, error, f"{type(error).__name__}: {_first_line(error)} (at {raised_at(error)})")


def _internal(work, error: BaseException, what: str) -> None:
    command = "tunesmith " + work.__qualname__.split(".")[0]  # the command function whose body failed
    if _debug:
        trace = "the traceback is above"
    else:
        log = write_traceback(error)
        saved = f"full traceback in {log}" if log else "the traceback could not be saved (is the disk full?)"
        trace = f"{saved}; tunesmith --debug shows it here"
    message = f"{command} failed (internal error): {what}; {trace}"
    _fail("; ".join(filter(None, (message, _notes(error)))), EXIT_INTERNAL_ERROR, error)


def _missing_extra(work, error: BaseException) -> TunesmithError | None:
    """The user error for a module of an extra that is not installed (None: another error)."""
    module = (getattr(error, "name", None) or "").partition(".")[0] if isinstance(error, ModuleNotFoundError) else ""
    if module not in OPTIONAL_MODULES:
        return None
    command = "tunesmith " + work.__qualname__.split(".")[0]
    extra = OPTIONAL_MODULES[module]
    return TunesmithError(f"{command} needs the {module} package, part of tunesmith's {extra!r} extra, "
                          f"which is not installed: pip install 'tunesmith[{extra}]'")  # fmt: skip


def _notes(error: BaseException) -> str:
    """What the code the error passed through added to it (``add_note``), e.g. what became of a run."""
    return "; ".join(getattr(error, "__notes__", ()))


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else "(no message)"


def _starter_kinds() -> list[str]:
    """The task types ``tunesmith init`` has a starter config for (a file listing: the CLI starts fast)."""
    return sorted(path.stem for path in STARTERS.glob("*.yaml"))


@app.command()
def init(
    task: Annotated[
        str,
        typer.Argument(
            metavar="TASK", autocompletion=_starter_kinds, help=f"The task type: {', '.join(_starter_kinds())}."
        ),  # fmt: skip
    ] = "single_label",
    out: Annotated[Path, typer.Option("--out", help="The config file to write; never overwritten.")] = Path(
        "config.yaml"
    ),
) -> None:
    """Write a commented starter config for a task type; edit its data paths, then train it."""

    def work():
        from tunesmith.runs import claim_output

        kinds = _starter_kinds()
        if task not in kinds:
            raise TunesmithError(f"unknown task type {task!r}: choose {', '.join(kinds[:-1])} or {kinds[-1]}")
        claim_output(out, kind="file", what="--out")
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "x", encoding="utf-8") as handle:  # "x": a file that appeared since the check is kept
            handle.write((STARTERS / f"{task}.yaml").read_text(encoding="utf-8"))
        typer.echo(str(out))
        typer.echo(f"next: edit data.train in {out}, then: tunesmith train {out}", err=True)

    _guarded(work)


@app.command()
def train(
    config: Annotated[
        Path | None, typer.Argument(help="YAML config; omit it to run the embedded BBC News demo.")
    ] = None,
    set_: Annotated[list[str], _set_option()] = [],
    resume: Annotated[Path | None, typer.Option("--resume", help="Continue an interrupted run directory.")] = None,
    nproc: Annotated[
        int, typer.Option("--nproc", min=1, help="Data-parallel processes on this machine (torchrun).")
    ] = 1,
    seeds: Annotated[
        int, typer.Option("--seeds", min=1, help="Train N times (seed, seed+1, ...) and report the spread.")
    ] = 1,
) -> None:
    """Fine-tune a model as CONFIG says and write a run directory."""

    def work():
        if seeds > 1:
            if resume is not None or nproc > 1:
                raise TunesmithError("--seeds runs one process per seed: it takes neither --resume nor --nproc")
            from tunesmith import api
            from tunesmith.config import load_config
            from tunesmith.study.seeds import run_seeds

            resolved = load_config(config, list(set_))
            report = run_seeds(resolved, Path(resolved.runtime.output_dir or _stamp("seeds")), seeds,
                               train=api.train, console=_console())  # fmt: skip
            for name, values in report["summary"].items():
                typer.echo(f"{name}: {values['mean']:.4f} ± {values['std']:.4f}")
            return
        if nproc > 1 and "RANK" not in os.environ:
            raise typer.Exit(_launch(nproc, config, list(set_), resume))
        from tunesmith import api

        if resume is not None:
            if config is not None or set_:
                raise TunesmithError("--resume takes the run directory alone: its config.yaml is reused as it was")
            result = api.resume(resume)
        else:
            result = api.train(config, overrides=list(set_))
        typer.echo(str(result.run_dir))

    _guarded(work)


@app.command()
def federate(
    config: Annotated[
        Path | None, typer.Argument(help="YAML config; its federated section sets clients, rounds and shards.")
    ] = None,
    set_: Annotated[list[str], _set_option()] = [],
    clients: Annotated[int | None, typer.Option("--clients", min=2, help="federated.clients.")] = None,
    rounds: Annotated[int | None, typer.Option("--rounds", min=1, help="federated.rounds.")] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="Continue an interrupted federated run after its last round.")
    ] = None,
    flower_app: Annotated[
        Path | None,
        typer.Option("--flower-app", help="Write a Flower App folder that runs CONFIG on a deployed federation."),
    ] = None,
) -> None:
    """Fine-tune across clients that keep their rows (Flower): each round every client trains on
    its own shard, the server averages their weights (LoRA by default: only adapters travel)."""

    def work():
        from tunesmith import api

        extra = [f"federated.{k}={v}" for k, v in (("clients", clients), ("rounds", rounds)) if v is not None]
        if resume is not None:
            if config is not None or set_ or extra or flower_app:
                raise TunesmithError("--resume takes the run directory alone: its config.yaml is reused as it was")
            result = api.federate_resume(resume)
        elif flower_app is not None:
            if config is None:
                raise TunesmithError("--flower-app needs CONFIG: the server reads it from its path")
            from tunesmith.flower import write_app  # Flower loads only for this command

            typer.echo(str(write_app(flower_app, config, list(set_) + extra)))
            return
        else:
            result = api.federate(config, overrides=list(set_) + extra)
        typer.echo(str(result.run_dir))

    _guarded(work, interrupted="every finished round is kept: tunesmith federate --resume RUN_DIR continues")


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
    data: Annotated[Path, typer.Option("--data", help="Labelled file with the training columns.")],
) -> None:
    """Score a trained run on a labelled file; prints the metrics as JSON."""

    def work():
        from tunesmith import api

        metrics = api.evaluate(run_dir, data, log=lambda m: typer.echo(m, err=True))
        metrics.pop("data", None)
        typer.echo(json.dumps(metrics, indent=2))

    _guarded(work)


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory (or, with --input alone, an export).")],
    text: Annotated[list[str], typer.Option("--text", metavar="TEXT", help="Text to label (repeatable).")] = [],
    input_: Annotated[
        Path | None,
        typer.Option(
            "--input",
            help="File of texts: .txt (one per line) or any data file; for an "
            "image classifier, an image or a folder of images.",
        ),
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", help="Write predictions here as JSONL.")] = None,
    question: Annotated[
        list[str],
        typer.Option(
            "--question", metavar="QUESTION", help="Question answering: a question (repeatable, with --context)."
        ),
    ] = [],
    context: Annotated[
        list[str],
        typer.Option(
            "--context", metavar="CONTEXT", help="Question answering: the context of a question (one per --question)."
        ),
    ] = [],
    onnx_file: Annotated[
        str | None,
        typer.Option("--onnx-file", help="With an ONNX export and --input: the model file to run (model.onnx: fp32)."),
    ] = None,
    backend: Annotated[
        str,
        typer.Option(
            "--backend",
            help="With --input: auto (a run's PyTorch model, an export's own) or onnx (a run "
            "exported to ONNX first, int8 where parity allows).",
        ),
    ] = "auto",
) -> None:
    """Label new text with a trained run; one JSON object per text (per question for QA)."""

    def work():
        from tunesmith import api
        from tunesmith.runs import atomic_write, claim_output

        if output is not None:  # before the inputs are read and the model loads
            claim_output(output, kind="file", what="--output")
        if len(question) != len(context):
            raise TunesmithError(f"give one --context per --question ({len(question)} questions, "
                                 f"{len(context)} contexts)")  # fmt: skip
        inputs = list(text) + [{"question": q, "context": c} for q, c in zip(question, context)]
        if not inputs and input_ is None:
            raise TunesmithError("nothing to predict: give --text TEXT, --question Q --context C, or --input FILE")
        if not inputs:  # a file alone: read, predicted and written a chunk at a time (ship/bulk.py)
            from tunesmith.ship.bulk import predict_file

            count = predict_file(run_dir, input_, output, onnx_file=onnx_file, backend=backend)
            if output is not None:
                typer.echo(f"{count} predictions written to {output}", err=True)
            return
        if onnx_file is not None or backend != "auto":
            raise TunesmithError("--onnx-file and --backend choose the model for --input FILE alone; give the file")
        lines = [json.dumps(row, ensure_ascii=False) for row in api.predict(run_dir, inputs, input_file=input_)]
        if output is None:
            typer.echo("\n".join(lines))
        else:
            atomic_write(output, "\n".join(lines) + "\n")
            typer.echo(f"{len(lines)} predictions written to {output}", err=True)

    _guarded(work)


@app.command()
def chat(run_dir: Annotated[Path, typer.Argument(help="A finished causal_lm run directory.")]) -> None:
    """Talk to an instruction-tuned run; the conversation so far is the prompt."""

    def work():
        from tunesmith import api

        api.chat(run_dir)

    _guarded(work)


@app.command()
def inspect(
    sources: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="SOURCE", help="A YAML config, or data files (the first is train; the others are held out)."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Report directory (default reports/inspect-<time>).")
    ] = None,
    set_: Annotated[list[str], _set_option("inspect.folds=10")] = [],
    label_errors: Annotated[
        str | None, typer.Option("--label-errors", help="embedding (default), finetune, ensemble or off.")
    ] = None,
    fix: Annotated[
        Path | None,
        typer.Option(
            "--fix", help="Also write the data with data.clean applied, and a changelog, into this new directory."
        ),
    ] = None,
) -> None:
    """Check data before training: junk, lengths, duplicates, conflicts, leakage, classes, label errors."""

    def work():
        from datetime import datetime
        from typing import get_args

        from tunesmith import api
        from tunesmith.config import InspectConfig, load_config
        from tunesmith.data.inspection import inspect_data, summary_lines
        from tunesmith.runs import claim_output, unused_path
        from tunesmith.study.cv import fold_classifier
        from tunesmith.tasks import build_task, require_stage

        items = list(sources or [])
        if fix is not None:  # before the slow part (inspect_data checks --out itself)
            claim_output(fix, kind="dir", what="--fix")
        config_path = items.pop(0) if items and Path(items[0]).suffix.lower() in (".yaml", ".yml") else None
        methods = get_args(InspectConfig.model_fields["label_errors"].annotation)
        if label_errors is not None and label_errors not in methods:  # name the flag, not a config file
            raise TunesmithError(f"--label-errors {label_errors}: choose {', '.join(methods[:-1])} or {methods[-1]}")
        overrides = list(set_) + ([f"inspect.label_errors={label_errors}"] if label_errors else [])
        config = load_config(config_path, overrides)
        task = build_task(config)
        require_stage(task, "inspect")  # before --out is claimed (data/ does not know tasks)
        target = out or unused_path(Path("reports") / f"inspect-{datetime.now():%Y%m%d-%H%M%S}")
        console = _console()
        fit_fold = fold_classifier(config, train=api.train)
        report = inspect_data(config, items or None, target, task=task, fit_fold=fit_fold, console=console,
                              log=lambda m: console.print(m, markup=False, highlight=False))  # fmt: skip
        for line in summary_lines(report):
            console.print(line, markup=False, highlight=False)
        if fix is not None:
            from tunesmith.data.inspection import write_fixed

            write_fixed(config, items or None, fix, task=task, fit_fold=fit_fold,
                        log=lambda m: console.print(m, markup=False, highlight=False))  # fmt: skip
        typer.echo(str(target))

    _guarded(work)


def _stamp(prefix: str) -> Path:
    from datetime import datetime

    from tunesmith.runs import unused_path

    return unused_path(Path("runs") / f"{prefix}-{datetime.now():%Y%m%d-%H%M%S}")


@app.command()
def cv(
    config: Annotated[Path | None, typer.Argument(help="YAML config; omit it for the embedded demo.")] = None,
    folds: Annotated[int | None, typer.Option("--folds", min=2, help="Number of folds (default cv.folds).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="New CV directory (default runs/cv-TIME).")] = None,
    set_: Annotated[list[str], _set_option()] = [],
) -> None:
    """K-fold cross-validation: one full train-and-test run per fold, then mean and std per metric."""

    def work():
        from tunesmith import api
        from tunesmith.config import load_config
        from tunesmith.study.cv import run_cv

        report = run_cv(load_config(config, list(set_)), out or _stamp("cv"), train=api.train, folds=folds,
                        console=_console())  # fmt: skip
        for name, values in report["summary"].items():
            typer.echo(f"{name}: {values['mean']:.4f} ± {values['std']:.4f}")

    _guarded(work)


@app.command()
def tune(
    config: Annotated[Path | None, typer.Argument(help="YAML config with a tune: section.")] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="New study directory, or one of an earlier study to resume (default runs/tune-TIME)."
        ),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Worker processes sharing the study.")] = 1,
    set_: Annotated[list[str], _set_option()] = [],
    worker: Annotated[bool, typer.Option("--worker", hidden=True)] = False,
    worker_index: Annotated[int, typer.Option("--worker-index", hidden=True)] = 0,
) -> None:
    """Hyperparameter search with Optuna: trials, pruning, resumable SQLite study, best config."""

    def work():
        from tunesmith import api
        from tunesmith.config import load_config
        from tunesmith.study import tune as study

        resolved = load_config(config, list(set_))
        directory = out or _stamp("tune")
        if worker:
            study.work(resolved, directory, _console(), worker=worker_index, train=api.train)
            return
        command = [sys.executable, "-m", "tunesmith.cli", "tune", *([str(config)] if config else []),
                   "--out", str(directory), "--worker", *[a for o in set_ for a in ("--set", o)]]  # fmt: skip
        report = study.run_tune(resolved, directory, train=api.train, workers=workers, console=_console(),
                                worker_command=command)  # fmt: skip
        typer.echo(f"{report['complete']} complete, {report['pruned']} pruned, {report['failed']} failed: {directory}")
        if "best" in report:
            best = report["best"]
            typer.echo(f"best trial {best['number']}: {report['metric']} {best['value']:.4f} {best['params']}")
            typer.echo(f"ready config: {directory / 'best.yaml'}")

    _guarded(work, "the same command with the same --out resumes the study (finished and pruned trials are kept)")


@app.command()
def auto(
    data: Annotated[
        str, typer.Argument(help="A labelled table: CSV, TSV, JSONL, Parquet, a datasets folder or hf:ID:SPLIT.")
    ],
    target: Annotated[str | None, typer.Option("--target", help="The column to predict (default: detected).")] = None,
    text: Annotated[str | None, typer.Option("--text", help="The text column (default: detected).")] = None,
    time_budget: Annotated[str, typer.Option("--time-budget", help="90s, 15m, 1h or seconds.")] = "30m",
    metric: Annotated[
        str | None, typer.Option("--metric", help="The validation metric that picks the best run.")
    ] = None,
    strategies: Annotated[
        str | None,
        typer.Option("--strategies", help="Comma-separated recipes to consider (zero_shot,contrastive,full,lora)."),
    ] = None,
    search_trials: Annotated[
        int, typer.Option("--search-trials", min=0, help="Learning-rate trials after the recipes.")
    ] = 6,
    out: Annotated[
        Path | None, typer.Option("--out", help="New folder for the runs and the report (default runs/auto-TIME).")
    ] = None,
    set_: Annotated[list[str], _set_option()] = [],
) -> None:
    """Detects the task, picks recipes for the data, runs them within a time budget, keeps the best."""

    def work():
        from tunesmith import api
        from tunesmith.study.auto import parse_budget, run_auto

        console = _console()
        report = run_auto(data, out or _stamp("auto"), train=api.train, budget=parse_budget(time_budget),
                          target=target, text=text, metric=metric, overrides=list(set_),
                          strategies=strategies.split(",") if strategies else None, search_trials=search_trials,
                          log=lambda m: console.print(m, markup=False, highlight=False), console=console)  # fmt: skip
        if not report["best"]:
            raise TunesmithError(f"{report['problem']} (the report: {Path(report['out']) / 'auto.md'})")
        typer.echo(f"best: {report['best']['run']} (report: {Path(report['out']) / 'auto.md'})")

    _guarded(work, "runs cut off midway are kept: tunesmith train --resume RUN_DIR continues one")


@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(metavar="RUN_DIR", help="Finished run directories (one or more).")],
    out: Annotated[Path | None, typer.Option("--out", help="HTML file (default runs/compare-TIME.html).")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Refuse runs scored on different test data.")] = False,
) -> None:
    """Compare finished runs: scores with intervals, paired differences on the same test rows,
    config differences, validation curves; warns when runs were scored on different data."""

    def work():
        from tunesmith.evaluate.html import compare as compare_runs
        from tunesmith.runs import unused_path

        target = out or unused_path(_stamp("compare").with_suffix(".html"))
        report = compare_runs(runs, target, strict=strict)
        for warning in report["warnings"]:
            typer.echo(f"warning: {warning}", err=True)
        for row in report["scores"]:
            typer.echo("  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        for d in report["paired_differences"]:
            typer.echo(f"{d['run']} - {d['baseline']}: {d['metric']} {d['difference']:+.4f} "
                       f"({d['confidence_level']:.0%} paired interval {d['low']:+.4f} to {d['high']:+.4f}, {d['rows']} rows)")  # fmt: skip
        typer.echo(str(target))

    _guarded(work)


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")]) -> None:
    """(Re)write RUN_DIR/report.html from the run's files."""

    def work():
        from tunesmith.evaluate.html import run_report
        from tunesmith.runs import RunDir

        typer.echo(str(run_report(RunDir.open(run_dir).path)))

    _guarded(work)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
    out: Annotated[Path, typer.Option("--out", help="New export directory.")],
    format_: Annotated[str, typer.Option("--format", help="hf (transformers), onnx, or gguf (causal LMs).")] = "onnx",
    quantize: Annotated[str | None, typer.Option("--quantize", help="int8: also a quantized ONNX model.")] = None,
    rows: Annotated[int | None, typer.Option("--rows", min=1, help="Parity rows (default: the whole split).")] = None,
    min_agreement: Annotated[
        float,
        typer.Option(
            "--min-agreement",
            min=0,
            max=1,
            help="Smallest label agreement of an int8 model (gguf f16: top-1 agreement).",
        ),
    ] = 0.98,
    gguf_type: Annotated[str, typer.Option("--gguf-type", help="gguf tensors: f16 or f32.")] = "f16",
) -> None:
    """Export a run (hf, onnx optionally int8, or gguf), refused unless it matches the PyTorch model."""

    def work():
        from tunesmith.ship.export import export as run_export
        from tunesmith.ship.gguf import export_gguf

        if (format_ == "gguf" and quantize) or (format_ != "gguf" and gguf_type != "f16"):
            raise TunesmithError("--quantize applies to --format onnx, --gguf-type to --format gguf")
        if format_ == "gguf":
            report = export_gguf(run_dir, out, dtype=gguf_type, prompts=rows or 100, min_agreement=min_agreement,
                                 log=lambda m: typer.echo(m, err=True))  # fmt: skip
        else:
            report = run_export(run_dir, out, fmt=format_, quantize=quantize, rows=rows,
                                min_agreement=min_agreement, log=lambda m: typer.echo(m, err=True))  # fmt: skip
        typer.echo(json.dumps(report["models"], indent=2))
        typer.echo(str(out))

    _guarded(work)


@app.command()
def push(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
    repo: Annotated[str, typer.Option("--repo", metavar="OWNER/NAME", help="The Hub model repository (made if new).")],
    private: Annotated[bool, typer.Option("--private", help="Make a new repository private.")] = False,
    token: Annotated[
        str | None,
        typer.Option("--token", metavar="TOKEN", help="A Hub write token (default: HF_TOKEN or `hf auth login`)."),
    ] = None,
) -> None:
    """Upload a run's model/ (and a LoRA run's adapter/) to the Hugging Face Hub."""

    def work():
        from tunesmith import api

        typer.echo(api.push(run_dir, repo, private=private, token=token, log=lambda m: typer.echo(m, err=True)))

    _guarded(work)


@app.command()
def serve(
    source: Annotated[Path, typer.Argument(help="A run directory or an export directory.")],
    host: Annotated[str, typer.Option("--host", help="Interface (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8000,
    api_key: Annotated[
        str | None, typer.Option("--api-key", envvar="TUNESMITH_API_KEY", help="Require this key (X-API-Key).")
    ] = None,
    log: Annotated[Path | None, typer.Option("--log", help="Append every prediction to this JSONL file.")] = None,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="Texts per request and per model call.")] = 64,
    max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", min=1)] = 1_000_000,
    max_upload_bytes: Annotated[
        int, typer.Option("--max-upload-bytes", min=1, help="Largest uploaded image file (image runs).")
    ] = 10_000_000,
    max_pixels: Annotated[
        int, typer.Option("--max-pixels", min=1, help="Largest image (width x height) a request may send.")
    ] = 40_000_000,
    onnx_file: Annotated[
        str | None, typer.Option("--onnx-file", help="ONNX exports: the model file (default: int8 when present).")
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", min=1, help="Processes behind the port, each with its own model copy.")
    ] = 1,
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, help="CPU threads per model call (default: cores / workers).")
    ] = None,
    backend: Annotated[
        str,
        typer.Option(
            "--backend",
            help="auto: a run's PyTorch model, an export's own; onnx: export a run to ONNX "
            "(int8 where parity allows) on start and serve that.",
        ),
    ] = "auto",
) -> None:
    """Serve predictions over HTTP: POST /predict, GET /health, /metadata, /metrics."""

    def work():
        from tunesmith.ship.serve import serve as run_server

        run_server(source, host=host, port=port, api_key=api_key, log_path=log, max_batch=max_batch,
                   max_body_bytes=max_body_bytes, max_upload_bytes=max_upload_bytes, max_pixels=max_pixels,
                   onnx_file=onnx_file, workers=workers, threads=threads, backend=backend,
                   log=lambda m: typer.echo(m, err=True))  # fmt: skip

    _guarded(work, "the server stopped")


@app.command()
def board(
    runs: Annotated[Path, typer.Option("--runs", help="The folder of run directories (launched runs go here).")] = Path(
        "runs"
    ),
    data: Annotated[
        list[Path],
        typer.Option("--data", metavar="DIR", help="A folder the browser may read data or models from (repeatable)."),
    ] = [],
    host: Annotated[str, typer.Option("--host", help="Interface (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 7860,
    api_key: Annotated[
        str | None, typer.Option("--api-key", envvar="TUNESMITH_BOARD_KEY", help="Require this key on every request.")
    ] = None,
    max_upload_bytes: Annotated[
        int, typer.Option("--max-upload-bytes", min=1, help="Largest uploaded file (config, data, image).")
    ] = 10 * 1024 * 1024,
) -> None:
    """A local web app over run directories: browse, compare, launch and try runs."""

    def work():
        import ipaddress

        loopback = host == "localhost" or _is_loopback(ipaddress, host)
        if not loopback and not api_key:
            raise TunesmithError(f"--host {host} makes the board reachable from the network, where it can launch "
                                 "runs and read files: pass --api-key KEY (or set TUNESMITH_BOARD_KEY)")  # fmt: skip
        missing = [d for d in data if not d.is_dir()]
        if missing:
            raise TunesmithError(f"--data {missing[0]}: not a folder; give folders the browser may read data from")
        try:  # before any work: the extra is there
            import fastapi  # noqa: F401
            import multipart  # noqa: F401
            import uvicorn
        except ModuleNotFoundError as error:
            raise TunesmithError(f"tunesmith board needs the {error.name} package, part of tunesmith's 'board' "
                                 "extra, which is not installed: pip install 'tunesmith[board]'") from None  # fmt: skip
        from tunesmith.board.app import create_app
        from tunesmith.board.context import LOOPBACK_HOSTS, Board
        from tunesmith.ship.serve import bind

        if not loopback:
            typer.echo(f"WARNING: the board on {host} is reachable from the network (with its API key)", err=True)
        runs.mkdir(parents=True, exist_ok=True)
        sock = bind(host, port)  # a taken port fails here, before the app is built
        try:
            hosts = [*LOOPBACK_HOSTS, host.strip("[]")]  # the Host names a keyless board answers
            folders = [d.resolve() for d in data]
            built = create_app(Board(runs.resolve(), folders, api_key, max_upload_bytes, hosts=hosts))
            typer.echo(f"tunesmith board over {runs} on http://{host}:{port}", err=True)
            uvicorn.Server(uvicorn.Config(built, host=host, port=port, log_level="warning")).run(sockets=[sock])
        finally:
            sock.close()

    _guarded(work, "the board stopped")


def _is_loopback(ipaddress, host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve anywhere
        return False


@app.command()
def monitor(
    run_dir: Annotated[Path, typer.Argument(help="The deployed run directory (its data is the reference).")],
    live: Annotated[
        Path,
        typer.Option(
            "--live", help="Prediction log (serve --log) or a prediction input file (as predict --input reads it)."
        ),
    ],
    out: Annotated[Path | None, typer.Option("--out", help="Report directory (default RUN_DIR/monitor-TIME).")] = None,
    text_column: Annotated[str | None, typer.Option("--text-column")] = None,
    max_rows: Annotated[int, typer.Option("--max-rows", min=10, help="Rows sampled from each side.")] = 2000,
) -> None:
    """Compare live inputs and predictions with the training reference; exit 1 on drift."""

    def work():
        from datetime import datetime

        from tunesmith.runs import unused_path
        from tunesmith.ship.monitor import monitor as run_monitor

        target = out or unused_path(run_dir / f"monitor-{datetime.now():%Y%m%d-%H%M%S}")
        report = run_monitor(run_dir, live, target, text_column=text_column, max_rows=max_rows,
                             log=lambda m: typer.echo(m, err=True))  # fmt: skip
        for name, check in report["checks"].items():
            typer.echo(
                f"{name}: {check['value']:.4f} (threshold {check['threshold']}){'  DRIFT' if check['drift'] else ''}"
            )
        typer.echo(str(target / "monitor.html"))
        if report["drift"]:
            raise typer.Exit(1)

    _guarded(work)


@app.command()
def retrain(
    run_dir: Annotated[Path, typer.Argument(help="The deployed run directory.")],
    data: Annotated[Path, typer.Option("--data", help="New labelled data, in the format the run was trained on.")],
    mix: Annotated[str, typer.Option("--mix", help="Share of old training rows in the mix, e.g. old=0.5.")] = "old=0.5",
    out: Annotated[Path | None, typer.Option("--out", help="New run directory (default RUN_DIR-vN).")] = None,
) -> None:
    """Continue the deployed model on new data mixed with the old; score both on old and new test data."""

    def work():
        from tunesmith import api
        from tunesmith.ship.retrain import retrain as run_retrain

        key, _, value = mix.partition("=")
        try:
            share = float(value)
        except ValueError:
            share = None
        if key.strip() != "old" or share is None:
            raise TunesmithError(f"--mix {mix!r}: expected old=SHARE, e.g. old=0.5")
        report = run_retrain(run_dir, data, train=api.train, old_share=share, out=out, console=_console())
        for name, splits in report["scores"].items():
            typer.echo(name + ": " + ", ".join(f"{s} {v[report['metric']]:.4f}" for s, v in splits.items()))
        typer.echo(f"{report['summary']}: {report['retrained']}/retrain.json")

    _guarded(work)


def _launch(nproc: int, config: Path | None, overrides: list[str], resume: Path | None) -> int:
    """Re-runs this train command in ``nproc`` processes under torchrun (DDP; gloo on CPU)."""
    import subprocess

    args = ["train"]
    if resume is not None:
        args += ["--resume", str(resume)]
    else:
        from tunesmith.config import load_config

        resolved = load_config(config, overrides)  # fail here, once, on a bad config
        if resolved.runtime.distributed == "deepspeed":  # and on a DeepSpeed config that will not do
            from tunesmith.train import zero

            tc = resolved.train
            zero.build_config(
                resolved.runtime.deepspeed_config, batch_size=tc.batch_size, accumulation=tc.gradient_accumulation_steps,
                max_grad_norm=tc.max_grad_norm, mixed_precision=resolved.runtime.mixed_precision, world=nproc,
            )  # fmt: skip
        output_dir = resolved.runtime.output_dir
        if output_dir is None:  # every rank must agree on the run directory
            from datetime import datetime

            output_dir = f"runs/{datetime.now():%Y%m%d-%H%M%S}"
        from tunesmith.runs import claim_output

        claim_output(output_dir, kind="dir", what="runtime.output_dir", run=True)  # once, before torchrun starts
        args += ([str(config)] if config else []) + [a for o in overrides for a in ("--set", o)]
        # --set values are read as YAML: a JSON string is a YAML quoted one, so " #" or ": " in the path survive
        args += ["--set", f"runtime.output_dir={json.dumps(str(output_dir))}"]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "tunesmith.cli", *args]  # fmt: skip
    return subprocess.run(command, env=env).returncode


def take_interrupts() -> None:
    """Takes SIGINT as Ctrl-C in a board job even when it came ignored.

    A board started with SIGINT ignored (``tunesmith board &`` from a script) passes that on to its
    jobs, whose Stop is a SIGINT: without a handler it would do nothing until the SIGKILL. Only board
    jobs (``TUNESMITH_BOARD_JOB=1``, set by board/jobs.py) are changed: anyone else who ignores
    SIGINT, as a shell does for ``tunesmith train ... &``, means it.
    """
    import signal

    if os.environ.get("TUNESMITH_BOARD_JOB") == "1" and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main() -> None:
    take_interrupts()
    try:
        app(prog_name="tunesmith")
    finally:
        if "torch.distributed" in sys.modules:  # a distributed worker (runs loads only when needed)
            from tunesmith.runs import leave_process_group

            leave_process_group()


if __name__ == "__main__":
    sys.exit(main())
