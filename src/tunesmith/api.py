"""The Python API; the CLI is a thin layer over these functions.

result = tunesmith.train("examples/bbc_news.yaml", overrides=["train.num_epochs=1"])
tunesmith.predict(result.run_dir, ["Shares rose sharply after the results"])
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tunesmith.config import Config, config_from_dict, dump_config, load_config
from tunesmith.data.balance import class_weights
from tunesmith.data.label_errors import label_error_finder
from tunesmith.data.overlap import overlap_warnings
from tunesmith.data.prepare import PreparedData, load_examples, prepare_data, prepare_records
from tunesmith.errors import DiskFullError, TunesmithError, disk_full
from tunesmith.models.load import check_max_length, quiet_transformers, resolve_model
from tunesmith.runs import RunDir, claim_output, environment_lock, is_main_process, unused_path
from tunesmith.study.cv import fold_classifier
from tunesmith.tasks import build_task, require_stage
from tunesmith.tasks.classification import encode_features, text_logits, text_warning
from tunesmith.tasks.run import load_run

SPLITS = ("train", "validation", "test")
GENERATIVE = ("causal_lm", "seq2seq")


@dataclass
class TrainResult:
    """What a finished run produced."""

    run_dir: Path
    metrics: dict[str, Any]


def _console(console):
    if console is None:
        from rich.console import Console

        console = Console(stderr=True, soft_wrap=True)
    return console


def _plain(console):
    """Prints messages as they are: paths and labels may hold [brackets] that are not markup."""
    return lambda message: console.print(message, markup=False, highlight=False)


def _setup_runtime(config: Config) -> None:
    import torch
    from transformers import set_seed

    quiet_transformers()
    if not torch.cuda.is_available():  # accelerate imports deepspeed, which warns when it has to guess
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if config.runtime.num_threads:
        torch.set_num_threads(config.runtime.num_threads)
    set_seed(config.runtime.seed)


def train(
    config: Config | str | Path | dict | None = None,
    *,
    overrides: list[str] | None = None,
    console=None,
    callbacks: list | None = None,
) -> TrainResult:
    """Runs the whole pipeline: data, model, training, evaluation, model card.

    Args:
        config: a Config, a YAML path, a nested dict, or None for the embedded BBC demo.
        overrides: ``key.sub=value`` strings applied on top.
        console: a rich Console for messages and progress (stderr by default).
        callbacks: extra training-loop callbacks (see tunesmith.train.callbacks).
    """
    if isinstance(config, dict):
        config = config_from_dict(config)
    if not isinstance(config, Config):
        config = load_config(config, overrides)
    elif overrides:
        from tunesmith.config import apply_overrides

        config = config_from_dict(apply_overrides(config.model_dump(mode="json"), overrides))
    console = _console(console)
    out = config.runtime.output_dir
    main = is_main_process()
    if not main and out is None:
        raise TunesmithError("a distributed run needs runtime.output_dir (tunesmith train --nproc sets it)")
    if main and out is not None:  # a run inside another would break that run's hashes and resume
        claim_output(out, kind="dir", what="runtime.output_dir", run=True)
    task = build_task(config)
    # The model's name and model.max_length are checked before the data work and the run directory.
    check_max_length(resolve_model(config.model.name), None, config.model.max_length)
    own_data = getattr(task, "own_data", False)  # token classification, question answering, images
    if task.type in GENERATIVE or own_data:  # tasks that read their own record files
        data = prepare_records(config.data, seed=config.runtime.seed, load=task.load, inputs=task.overlap_inputs)
        if own_data:
            task.fit(data.splits["train"])
    else:
        data = prepare_data(config.data, task, seed=config.runtime.seed,
                            similarity=config.inspect.near_duplicate_similarity,
                            find_label_errors=label_error_finder(config, fit_fold=fold_classifier(config, train=train)),
                            synonyms=lambda words: _synonyms(config, words),
                            rehearsal=_rehearsal(config, task))  # fmt: skip
    _setup_runtime(config)
    log = _plain(console) if main else (lambda message: None)
    _report_data(data, log)
    if "validation" not in data.splits:
        needs = [key for key, value in (("train.eval_every_steps", config.train.eval_every_steps),
                                        ("train.early_stopping.patience", config.train.early_stopping.patience),
                                        ("train.metric", config.train.metric)) if value is not None]  # fmt: skip
        if needs:
            raise TunesmithError(f"{', '.join(needs)} need a validation split: set data.val_fraction above 0 "
                                 "or give data.validation")  # fmt: skip
    if config.train.metric and config.train.metric not in task.metric_names:
        raise TunesmithError(
            f"train.metric={config.train.metric!r} is not a metric of this task; choose one of {task.metric_names}"
        )

    if not main:  # only rank 0 writes; the others train on the same data in memory
        return _fit(RunDir(out), config, task, data, console, [], resume=False)
    run = RunDir.create(out)
    with _settled_on_failure(run, fresh=True):
        log(f"Run directory: {run.path}")
        run.write_text("config.yaml", dump_config(config))
        run.write_json("task.json", task.to_dict())
        run.data_dir.mkdir()
        for name, frame in data.splits.items():
            frame.to_parquet(run.data_dir / f"{name}.parquet", index=False)
        run.write_json("data_manifest.json", data.manifest)
        run.write_text("data_changelog.jsonl", "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in data.changes))
        with run.lock():  # a resume started while this run trains is refused
            return _fit(run, config, task, data, console, callbacks or [], resume=False)


@contextlib.contextmanager
def _settled_on_failure(run: RunDir, *, fresh: bool):
    """Any failure inside (Ctrl-C and a full disk included) leaves the run as
    :func:`_after_failed_run` says and is raised again, as a DiskFullError when the disk filled up."""
    try:
        yield
    except BaseException as error:
        failure = _after_failed_run(run, error, fresh=fresh)
        if failure is error:
            raise
        raise failure from error


def _after_failed_run(run: RunDir, error: BaseException, *, fresh: bool) -> BaseException:
    """Leaves a run that failed either gone or resumable, never half-made, and says which.

    A fresh run without a checkpoint has nothing to continue, and one that failed on a mistake a
    resume would meet again (a TunesmithError such as a non-finite loss; not a full disk or
    Ctrl-C) is not worth continuing: the directory this call created is removed, so the same
    command can start again. Otherwise the directory is kept without its half-written files. The
    error to raise gets a note saying what became of the run. A finished run is never removed.

    Returns:
        ``error``, or a DiskFullError for it when the disk filled up.
    """
    full = None if isinstance(error, TunesmithError) else disk_full(error, written=run.path)  # before space is freed
    failure = error if full is None else full
    recurs = isinstance(failure, TunesmithError) and not isinstance(failure, DiskFullError)
    if run.finished:  # e.g. a failed forgetting check: the run is complete and its message says so
        return failure
    if fresh and not run.has_checkpoint():
        run.discard()
        failure.add_note(f"the run had no checkpoint yet, so its directory {run.path} was removed")
    elif fresh and recurs:
        run.discard()
        failure.add_note(f"a resume would fail the same way, so the run directory {run.path} was removed")
    else:
        run.remove_temporary()
        if not recurs:  # a TunesmithError's own message says what to do; resuming would not help
            again = ", or start again with another runtime.output_dir" if fresh else ""
            failure.add_note(f"{run.path} is kept: continue it with tunesmith train --resume {run.path}{again}")
    return failure


def resume(run_dir: str | Path, *, console=None, callbacks: list | None = None) -> TrainResult:
    """Continues an interrupted run from its newest intact checkpoint, exactly where it stopped.

    Raises:
        TunesmithError: the run finished, another process is training it (``RUN_DIR/.lock``), or
            none of its checkpoints is intact.
    """
    run = RunDir.open(run_dir)
    console = _console(console)
    # Rank 0 holds the run's lock throughout, so the "finished" check sees a run nobody is changing.
    with run.lock() if is_main_process() else contextlib.nullcontext():
        config = load_config(run.path / "config.yaml")
        if run.finished:
            raise TunesmithError(f"{run.path} already finished; there is nothing to resume")
        _setup_runtime(config)
        saved = run.read_json("task.json")
        task = build_task(config, saved)
        splits = {
            n: pd.read_parquet(run.data_dir / f"{n}.parquet") for n in SPLITS
            if (run.data_dir / f"{n}.parquet").exists()
        }  # fmt: skip
        data = PreparedData(splits, run.read_json("data_manifest.json"))
        with _settled_on_failure(run, fresh=False):  # the checkpoints stay, half-written files go
            return _fit(run, config, task, data, console, callbacks or [], resume=True)


def _synonyms(config: Config, words: set[str]) -> dict[str, list[str]]:
    from tunesmith.data.augment import embedding_neighbours

    return embedding_neighbours(config.model.name, words, config.data.augment.neighbours)


def _rehearsal(config: Config, task):
    """forgetting.rehearsal's rows (cleaned like training data), for prepare_data."""
    settings = config.forgetting
    if settings.rehearsal is None:
        return None
    if task.type != "single_label":
        raise TunesmithError("forgetting.rehearsal mixes labelled rows into training: it needs task.type=single_label")
    columns = config.data.model_copy(update={"text_column": settings.text_column, "label_column": settings.label_column,
                                             "column_names": None, "slice_column": None})  # fmt: skip
    frame, entry = load_examples(settings.rehearsal, columns, task)
    return frame, entry["source"], settings.rehearsal_ratio


def _report_data(data: PreparedData, log) -> None:
    for name, entry in data.manifest["sources"].items():
        log(f"Loaded {name} from {entry['source']}: cleaning {entry['cleaning']}")
        if entry["replaced_characters"]:
            log(f"  {entry['replaced_characters']} bytes that were not UTF-8 were replaced by U+FFFD")
        for note in entry.get("notes", []):  # control characters replaced, I- starts converted
            log(f"  warning: {note}")
    if data.manifest.get("changes"):
        log(f"Data changes (each row in data_changelog.jsonl): {data.manifest['changes']}")
    skipped = [c for c in data.changes if c.get("change") == "skipped_unreadable_image"]
    for change in skipped[:10]:
        log(f"  skipped unreadable image {change['path']}: {change['reason']}")
    if len(skipped) > 10:
        log(f"  ... and {len(skipped) - 10} more (data_changelog.jsonl lists them)")
    log("Splits: " + ", ".join(f"{n} {info['rows']}" for n, info in data.manifest["splits"].items()))
    for line in overlap_warnings(data.manifest.get("overlap", {})):
        log(line)
    augmented = data.manifest.get("augment")
    if augmented:
        log(
            f"Augmented train: {augmented['rows_before']} -> {augmented['rows_after']} rows {augmented['by_operation']}"
        )
    balance = data.manifest.get("balance")
    if balance:
        log(f"Balanced train by {balance['method']}: {balance['rows_before']} -> {balance['rows_after']} rows, "
            f"per class {balance['labels_after']}")  # fmt: skip
    labels = data.manifest["splits"]["train"].get("labels")
    if isinstance(labels, dict) and labels and all(isinstance(v, int) for v in labels.values()):
        ratio = max(labels.values()) / max(min(labels.values()), 1)
        if ratio >= 3 and data.manifest.get("balance_method", "none") == "none":
            log(f"Class imbalance {ratio:.1f}:1 in train {labels}: consider data.balance.method=class_weights "
                "(or oversample)")  # fmt: skip


def _fit(run: RunDir, config: Config, task, data: PreparedData, console, callbacks, *, resume: bool) -> TrainResult:
    from tunesmith.models.adapt import apply_strategy, count_parameters
    from tunesmith.models.load import load_tokenizer
    from tunesmith.train.callbacks import ProgressBar
    from tunesmith.train.loop import resolve_device, run_training

    main = is_main_process()
    log = _plain(console) if main else (lambda message: None)
    resolved = resolve_model(config.model.name)
    tokenizer = (task.load_processor(resolved.location) if hasattr(task, "load_processor")
                 else load_tokenizer(resolved, max_length=config.model.max_length))  # fmt: skip
    if task.type == "causal_lm":
        model, new_parameters, features, truncated = _build_causal_lm(config, task, data, resolved, tokenizer, log)
    elif task.type == "seq2seq":
        model, new_parameters, features, truncated = _build_seq2seq(config, task, data, resolved, tokenizer, log)
    elif getattr(task, "own_data", False):
        model, new_parameters, features, truncated = _build_own_data(config, task, data, resolved, tokenizer, log)
    else:
        model, new_parameters, features, truncated = _build_classifier(config, task, data, resolved, tokenizer, log)
    log(f"Loaded {resolved.description}; new head parameters: {', '.join(new_parameters) or 'none'}")
    model, unfreezer = apply_strategy(
        model, config.model, new_parameters, peft_task_type=getattr(task, "peft_task_type", "SEQ_CLS")
    )
    trainable, total = count_parameters(model)
    log(f"Strategy {config.model.strategy}: {trainable:,} of {total:,} parameters trainable ({trainable / total:.2%})")
    if main and not resume:
        run.write_json("environment.json", environment_lock(resolve_device(config.runtime.device)))

    result = run_training(
        model=model,
        task=task,
        train_features=features["train"],
        val_features=features.get("validation", []),
        config=config,
        run=run,
        pad_token_id=_pad_id(tokenizer),
        unfreezer=unfreezer,
        callbacks=([ProgressBar(console)] if config.runtime.progress else []) + list(callbacks),
        log=log,
        resume=resume,
    )
    if not main:
        return TrainResult(run.path, {})
    return _finish(run, config, task, data, result, features, truncated, tokenizer, resolved, log)


def _build_own_data(config, task, data, resolved, tokenizer, log):
    """Features and model for a task that encodes its own tables (token classification, QA)."""
    features, truncated = {}, {}
    for name, frame in data.splits.items():
        features[name], truncated[name] = task.encode_frame(tokenizer, frame, config.model.max_length, split=name)
        if truncated[name]:
            log(task.truncation_message(name, truncated[name], len(frame), config.model.max_length))
    if task.label_names:
        log(f"Labels: {', '.join(task.label_names)}")
    model, new_parameters = task.load_model(resolved, config.model.dropout)
    return model, new_parameters, features, truncated


def _pad_id(tokenizer) -> int:
    if getattr(tokenizer, "pad_token_id", None) is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id if getattr(tokenizer, "eos_token_id", None) is not None else 0


def _split_logits(task, model, features, *, batch_size: int, tokenizer, device):
    """Logits of a classifier on one split: the task's own (images) or from token ids."""
    from tunesmith.tasks.classification import compute_logits

    if hasattr(task, "logits"):
        return task.logits(model, features, batch_size=batch_size, device=device)
    return compute_logits(model, features, batch_size=batch_size, pad_token_id=_pad_id(tokenizer), device=device)


def _build_classifier(config, task, data, resolved, tokenizer, log):
    from tunesmith.models.load import load_sequence_classifier

    features, truncated = {}, {}
    for name, frame in data.splits.items():
        targets = task.encode(frame["label"], name)
        features[name], truncated[name] = encode_features(
            tokenizer, frame["text"].tolist(), targets, config.model.max_length
        )
        if truncated[name]:
            log(f"{name}: {truncated[name]} of {len(frame)} examples truncated to {config.model.max_length} tokens")
    if config.data.balance.method == "class_weights":
        import numpy as np

        ids = np.asarray([f["labels"] for f in features["train"]])
        task.class_weights = class_weights(ids, task.label_names, config.data.balance.class_weights)
        log(f"Class weights: {dict(zip(task.label_names, (round(w, 3) for w in task.class_weights)))}")
    model, new_parameters = load_sequence_classifier(
        resolved,
        num_labels=task.num_outputs,
        problem_type=task.problem_type,
        label_names=task.label_names,
        dropout=config.model.dropout,
    )
    return model, new_parameters, features, truncated


def _encode_records(config, tokenizer, frame, source: str):
    from tunesmith.tasks.causal_lm import encode_conversations

    return encode_conversations(
        tokenizer, [json.loads(m) for m in frame["messages"]], frame["record"].tolist(), source=source,
        max_length=config.model.max_length, chat_template=config.model.chat_template, loss_on=config.task.loss_on,
    )  # fmt: skip


def _build_causal_lm(config, task, data, resolved, tokenizer, log):
    from tunesmith.models.load import load_causal_lm

    if config.model.chat_template is None and tokenizer.chat_template is None:
        log("The tokenizer has no chat template: records are rendered as plain text (set model.chat_template)")
    features, truncated = {}, {}
    for name, frame in data.splits.items():
        source = data.manifest["sources"].get(name, data.manifest["sources"]["train"])["source"]
        encoded = _encode_records(config, tokenizer, frame, source)
        features[name], truncated[name] = encoded.features, encoded.truncated
        if encoded.truncated:
            log(f"{name}: {encoded.truncated} of {len(frame)} records truncated to {config.model.max_length} tokens")
    model, new_parameters = load_causal_lm(resolved, dropout=config.model.dropout)
    return model, new_parameters, features, truncated


def _encode_pairs(config, tokenizer, frame):
    from tunesmith.tasks.seq2seq import encode_pairs

    return encode_pairs(tokenizer, frame["source"].tolist(), frame["target"].tolist(), prefix=config.task.source_prefix,
                        max_length=config.model.max_length, max_target_length=config.model.max_target_length)  # fmt: skip


def _build_seq2seq(config, task, data, resolved, tokenizer, log):
    from tunesmith.models.load import load_seq2seq

    features, truncated = {}, {}
    for name, frame in data.splits.items():
        features[name], truncated[name] = _encode_pairs(config, tokenizer, frame)
        if truncated[name]:
            log(f"{name}: {truncated[name]} of {len(frame)} pairs truncated (source {config.model.max_length}, "
                f"target {config.model.max_target_length} tokens)")  # fmt: skip
    model, new_parameters = load_seq2seq(resolved, dropout=config.model.dropout)
    return model, new_parameters, features, truncated


def _generative_metrics(model, tokenizer, config, task, frame, features, *, split: str, out_path, log, device="cpu"):
    """Perplexity on every record; generation metrics on up to generation.max_examples of them,
    with the generations written to ``out_path`` (JSONL)."""
    from tunesmith.runs import atomic_write
    from tunesmith.tasks.causal_lm import generate, generation_metrics, generation_prompt

    metrics = task.evaluate(model, features, batch_size=config.train.batch_size * 2, pad_token_id=_pad_id(tokenizer),
                            device=device)  # fmt: skip
    limit = config.generation.max_examples
    rows = frame.iloc[: limit or len(frame)]
    log(f"{split}: generating for {len(rows)} records")
    if task.type == "seq2seq":
        prompts, references = rows["source"].tolist(), rows["target"].tolist()
        predictions = task.generate(model, tokenizer, prompts, config.generation, max_length=config.model.max_length,
                                    device=device)  # fmt: skip
    else:
        prompts, references = zip(*(generation_prompt(tokenizer, json.loads(m), config.model.chat_template)
                                     for m in rows["messages"]))  # fmt: skip
        predictions = generate(model, tokenizer, list(prompts), config.generation, device=device)
    metrics |= generation_metrics(predictions, list(references))
    lines = [json.dumps({"record": int(r), "prompt": p, "reference": ref, "generated": g}, ensure_ascii=False)
             for r, p, ref, g in zip(rows["record"], prompts, references, predictions)]  # fmt: skip
    atomic_write(out_path, "".join(line + "\n" for line in lines))
    return metrics


def _finish(run, config, task, data, result, features, truncated, tokenizer, resolved, log) -> TrainResult:
    import numpy as np

    from tunesmith.evaluate.report import model_card, plot_confusion_matrix, plot_training_curves
    from tunesmith.models.adapt import count_parameters
    from tunesmith.runs import replace_dir

    model = result.model
    device = next(model.parameters()).device
    metrics: dict[str, Any] = {}
    generate_on = "test" if features.get("test") else "validation"  # generation is slow: one split
    temperature = None
    if config.evaluation.temperature_scaling and task.type == "single_label" and features.get("validation"):
        from tunesmith.evaluate.confidence import fit_temperature

        validation_logits = _split_logits(task, model, features["validation"], batch_size=config.train.batch_size * 2,
                                          tokenizer=tokenizer, device=device)  # fmt: skip
        temperature = fit_temperature(validation_logits, np.asarray([f["labels"] for f in features["validation"]]))
        run.write_json("calibration.json", {"temperature": temperature, "fitted_on": "validation"})
        log(f"Temperature scaling: T = {temperature:.3f} (fitted on the validation split)")
    for split in ("validation", "test"):
        if features.get(split) and task.type in GENERATIVE and split != generate_on:
            metrics[split] = task.evaluate(model, features[split], batch_size=config.train.batch_size * 2,
                                           pad_token_id=_pad_id(tokenizer), device=device)  # fmt: skip
        elif features.get(split) and getattr(task, "own_data", False) and not hasattr(task, "logits"):
            metrics[split] = task.evaluate(model, features[split], batch_size=config.train.batch_size * 2,
                                           pad_token_id=_pad_id(tokenizer), device=device,
                                           frame=data.splits[split])  # fmt: skip
        elif features.get(split) and task.type in GENERATIVE:
            metrics[split] = _generative_metrics(
                model, tokenizer, config, task, data.splits[split], features[split], split=split,
                out_path=run.path / f"generations_{split}.jsonl", log=log, device=device,
            )  # fmt: skip
        elif features.get(split):
            logits = _split_logits(task, model, features[split], batch_size=config.train.batch_size * 2,
                                   tokenizer=tokenizer, device=device)  # fmt: skip
            targets = np.asarray([f["labels"] for f in features[split]])
            metrics[split] = task.metrics(logits, targets)
            metrics[split] |= _confidence(config, task, logits, targets, run.path / f"reliability_{split}.png", split,
                                          temperature)  # fmt: skip
            metrics[split] |= _slices(config, task, logits, targets, data.splits[split])
            if split == "test" and hasattr(task, "plot_misclassified"):
                task.plot_misclassified(run.path / "misclassified_test.png", logits, features[split])
            if "confusion_matrix" in metrics[split]:
                plot_confusion_matrix(run.path / f"confusion_matrix_{split}.png", metrics[split]["confusion_matrix"],
                                      task.label_names, f"{split} confusion matrix")  # fmt: skip
    parameters = count_parameters(model)

    # Final model: plain transformers format; with LoRA the adapter too, and a merged copy.
    if config.model.strategy == "lora":
        tmp = run.path / ".tmp-adapter"
        model.save_pretrained(tmp)
        replace_dir(tmp, run.path / "adapter")
        model = model.merge_and_unload()
    tmp = run.path / ".tmp-model"
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    replace_dir(tmp, run.model_dir)

    if config.forgetting.retain is not None:
        metrics["forgetting"] = _forgetting(config, task, model, tokenizer, resolved, log)
    state = result.state
    metric_name = config.train.metric or task.default_metric[0]
    training = {
        "steps": state.step, "epochs_completed": state.epoch, "examples_seen": state.examples_seen,
        "metric": metric_name, "best_metric": state.best_metric, "best_step": state.best_step,
        "stopped_early": state.stopped_early, "truncated_train": truncated.get("train", 0),
        "world_size": result.world_size, "rank_checksums": result.rank_checksums,
        "parallelism": result.parallelism,
        "truncated": truncated,
    }  # fmt: skip
    run.write_json("metrics.json", {**metrics, "training": training})
    records = [json.loads(line) for line in run.metrics_log.read_text(encoding="utf-8").splitlines()]
    plot_training_curves(run.path / "training_curves.png", records, metric_name)
    run.write_text("README.md", model_card(
        config=config.model_dump(mode="json"), model_description=resolved.description, task=task.to_dict(),
        manifest=data.manifest, metrics=metrics, parameters=parameters, training=training,
        card=getattr(task, "card", None),
    ))  # fmt: skip
    for split, values in metrics.items():
        shown = ", ".join(f"{k} {v:.4f}" for k, v in values.items() if isinstance(v, float))
        log(f"{split}: {shown}")
    from tunesmith.evaluate.html import run_report

    run_report(run.path)
    run.record_hashes()  # export and serve check the model against these
    log(f"Model saved to {run.model_dir}; model card {run.path / 'README.md'}; report {run.path / 'report.html'}")
    forgetting = metrics.get("forgetting")
    if forgetting is not None and not forgetting["passed"] and forgetting["action"] == "fail":
        raise TunesmithError(f"forgetting check failed: {forgetting['message']} (the run is saved in {run.path})")
    return TrainResult(run.path, metrics)


def _forgetting(config, task, model, tokenizer, resolved, log) -> dict[str, Any]:
    """The catastrophic-forgetting check of config.forgetting on the final (merged) model."""
    from tunesmith.evaluate import forgetting

    settings, seed = config.forgetting, config.runtime.seed
    model = model.cpu()
    if task.type == "causal_lm":
        from tunesmith.models.load import load_causal_lm

        base, _ = load_causal_lm(resolved, dropout=None)
        found = forgetting.causal_lm_check(settings, base_model=base, tuned_model=model, tokenizer=tokenizer,
                                           max_length=config.model.max_length, seed=seed)  # fmt: skip
    else:
        require_stage(task, "forgetting")
        found = forgetting.classifier_check(settings, base_name=config.model.name, tuned_model=model,
                                            tokenizer=tokenizer, max_length=config.model.max_length,
                                            seed=seed)  # fmt: skip
    log(("Forgetting: " if found["passed"] else "WARNING, forgetting: ") + found["message"]
        + f" (base {found['base']:.4f}, tuned {found['tuned']:.4f})")  # fmt: skip
    return found


def _confidence(config, task, logits, targets, plot_path: Path, title: str, temperature: float | None) -> dict:
    """Bootstrap intervals and calibration for one split's logits; the reliability diagram."""
    from tunesmith.evaluate.confidence import confidence_report, plot_reliability

    ev = config.evaluation
    report = confidence_report(task, logits, targets, samples=ev.bootstrap_samples, level=ev.confidence_level,
                               bins=ev.calibration_bins, seed=config.runtime.seed, temperature=temperature)  # fmt: skip
    if "calibration_bins" in report and len(targets):
        after = (
            (report["ece_temperature_scaled"], report["calibration_bins_temperature_scaled"]) if temperature else None
        )
        plot_reliability(plot_path, report["calibration_bins"], report["ece"], f"{title} reliability", after=after)
    return report


def _slices(config, task, logits, targets, frame) -> dict:
    """Per-slice metrics when the split carries data.slice_column (single-label tasks)."""
    if task.type != "single_label" or "slice" not in frame.columns:
        return {}
    from tunesmith.evaluate.fairness import slice_metrics

    try:
        found = slice_metrics(logits.argmax(1), targets, frame["slice"].tolist(), task.label_names,
                              column=config.data.slice_column, positive=config.evaluation.positive_label)  # fmt: skip
    except ValueError as error:
        raise TunesmithError(str(error)) from None
    return {"slices": found}


def _check_texts(texts: list, kind: str) -> None:
    """Refuses inputs that are not texts (a question/context pair, a number) for a run that reads text."""
    for number, item in enumerate(texts, 1):
        if not isinstance(item, str):
            shown = str(item)[:80]
            raise TunesmithError(
                f"input {number}: a {kind} run takes texts, not a {type(item).__name__} ({shown!r}); "
                "--question/--context are for question_answering runs"
            )


def predict(run_dir: str | Path, texts: list) -> list[dict[str, Any]]:
    """Predictions for texts with a trained run: label(s) or value, and the scores behind them;
    for a causal LM, the generated completion of each prompt (as a single user turn); entity
    spans for a tagger; for question answering, ``texts`` are ``{"question", "context"}`` dicts
    and each answer comes with its character offsets and score."""
    run, config, task, model, tokenizer = load_run(run_dir)
    if not getattr(task, "own_data", False):
        _check_texts(texts, task.type)
    if task.type == "causal_lm":
        from tunesmith.tasks.causal_lm import generate, generation_prompt

        prompts = [generation_prompt(tokenizer, [{"role": "user", "content": str(t)}, {"role": "assistant",
                   "content": ""}], config.model.chat_template)[0] for t in texts]  # fmt: skip
        completions = generate(model, tokenizer, prompts, config.generation)
        return [{"prompt": str(t), "completion": c} for t, c in zip(texts, completions)]
    if task.type == "seq2seq":
        outputs = task.generate(model, tokenizer, [str(t) for t in texts], config.generation,
                                max_length=config.model.max_length)  # fmt: skip
        return [{"source": str(t), "generated": g} for t, g in zip(texts, outputs)]
    if getattr(task, "own_data", False):  # NER, QA, images (a single-label classifier: calibrated scores)
        calibrated = {"temperature": run.temperature()} if task.type == "single_label" else {}
        return task.predict_inputs(model, tokenizer, list(texts), config.model.max_length,
                                   pad_token_id=_pad_id(tokenizer), **calibrated)  # fmt: skip
    texts = [" ".join(str(t).split()) for t in texts]
    logits = text_logits(model, tokenizer, texts, max_length=config.model.max_length)
    temperature = run.temperature() if task.type == "single_label" else None
    return [{"text": text, **row, **text_warning(text)}
            for text, row in zip(texts, task.prediction_rows(logits, temperature))]  # fmt: skip


def evaluate(run_dir: str | Path, data: str | Path, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Scores a trained run on a labelled file (same columns as training) and saves the result
    under ``RUN_DIR/evaluations/`` as ``NAME.json`` (NAME: the data file's name without suffix).

    An earlier evaluation is kept: when ``NAME.json`` exists, this one is saved as ``NAME-2.json``
    (``-3``, ...), with its plots named alike, and ``log`` says so.
    """
    import numpy as np

    from tunesmith.evaluate.report import plot_confusion_matrix

    out = Path(run_dir) / "evaluations"
    wanted = Path(str(data)).stem
    stem = unused_path(out / f"{wanted}.json").stem  # chosen before the model loads
    if stem != wanted:
        log(f"{out / wanted}.json exists (an earlier evaluation, kept); this one is saved as {out / stem}.json")
    run, config, task, model, tokenizer = load_run(run_dir)
    if task.type in GENERATIVE:
        frame, entry = task.load(str(data), config.data)
        if task.type == "seq2seq":
            features = _encode_pairs(config, tokenizer, frame)[0]
        else:
            features = _encode_records(config, tokenizer, frame, entry["source"]).features
        metrics = _generative_metrics(model, tokenizer, config, task, frame, features, split=stem,
                                      out_path=out / f"{stem}_generations.jsonl", log=lambda message: None)  # fmt: skip
        metrics["data"] = entry
        RunDir(out).write_json(f"{stem}.json", metrics)
        return metrics
    if getattr(task, "own_data", False):
        frame, entry = task.load(str(data), config.data)
        features, _ = task.encode_frame(tokenizer, frame, config.model.max_length)
        if not hasattr(task, "logits"):  # NER, QA: the task's own metrics
            metrics = task.evaluate(model, features, batch_size=64, pad_token_id=_pad_id(tokenizer), device="cpu",
                                    frame=frame)  # fmt: skip
            metrics["data"] = entry
            RunDir(out).write_json(f"{stem}.json", metrics)
            return metrics
        targets = [f["labels"] for f in features]  # images: the classifier's metrics below
        logits = task.logits(model, features, batch_size=32, device="cpu")
    else:
        frame, entry = load_examples(str(data), config.data, task)
        targets = task.encode(frame["label"], entry["source"])
        logits = text_logits(
            model, tokenizer, frame["text"].tolist(), max_length=config.model.max_length, targets=targets
        )
    metrics = task.metrics(logits, np.asarray(targets))
    out.mkdir(exist_ok=True)
    metrics |= _confidence(config, task, logits, np.asarray(targets), out / f"{stem}_reliability.png", stem,
                           run.temperature() if task.type == "single_label" else None)  # fmt: skip
    metrics |= _slices(config, task, logits, np.asarray(targets), frame)
    metrics["data"] = entry
    RunDir(out).write_json(f"{stem}.json", metrics)
    if "confusion_matrix" in metrics:
        plot_confusion_matrix(
            out / f"{stem}_confusion_matrix.png",
            metrics["confusion_matrix"],
            task.label_names,
            f"{stem} confusion matrix",
        )
    return metrics


def chat(run_dir: str | Path, *, read=input, write=print) -> None:
    """A small interactive loop with a trained causal LM: the whole conversation is the prompt.

    ``/reset`` starts over; an empty line, ``/exit`` or end of input stops.
    """
    from tunesmith.tasks.causal_lm import generate, generation_prompt

    run, config, task, model, tokenizer = load_run(run_dir)
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
        prompt, _ = generation_prompt(tokenizer, messages + [{"role": "assistant", "content": ""}],
                                      config.model.chat_template)  # fmt: skip
        reply = generate(model, tokenizer, [prompt], config.generation)[0]
        messages.append({"role": "assistant", "content": reply})
        write(f"model> {reply}")
