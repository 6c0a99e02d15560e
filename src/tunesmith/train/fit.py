"""The train stage for any task: seeds and threads, the task's processor, features and model,
the strategy, then the one training loop. Evaluation of the result is the next stage
(``evaluate.final``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tunesmith.config import Config
from tunesmith.data.prepare import PreparedData
from tunesmith.errors import TunesmithError
from tunesmith.models.adapt import apply_strategy, count_parameters
from tunesmith.models.load import ResolvedModel, pad_token_id, quiet_transformers, resolve_model
from tunesmith.runs import RunDir, environment_lock, is_main_process
from tunesmith.tasks.contract import Encoded, Task
from tunesmith.train.callbacks import ProgressBar
from tunesmith.train.checkpoint import LoopState
from tunesmith.train.contrastive import ContrastiveObjective
from tunesmith.train.loop import LoopResult, resolve_device, run_training
from tunesmith.train.memory import apply_activation_checkpointing


@dataclass
class Fitted:
    """A trained model and what the evaluation stage needs to score and save it."""

    result: LoopResult
    encoded: Encoded
    processor: Any
    """The tokenizer, or the image processor."""
    resolved: ResolvedModel


def setup_runtime(config: Config) -> None:
    """Seeds every generator from runtime.seed, sets the thread count, quiets transformers."""
    import torch
    from transformers import set_seed

    quiet_transformers()
    if not torch.cuda.is_available():  # accelerate imports deepspeed, which warns when it has to guess
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if config.runtime.num_threads:
        torch.set_num_threads(config.runtime.num_threads)
    set_seed(config.runtime.seed)


def check_validation_needs(config: Config, task: Task, splits: dict) -> None:
    """Refuses settings that need a validation split when there is none, and a train.metric the
    task does not report."""
    if "validation" not in splits:
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


def fit(run: RunDir, config: Config, task: Task, data: PreparedData, *, console, callbacks: list,
        log: Callable[[str], None], resume: bool) -> Fitted:  # fmt: skip
    """Encodes the splits, loads the model with the task's head, applies model.strategy and
    trains (or, with ``resume``, continues from the newest intact checkpoint)."""
    resolved = resolve_model(config.model.name)
    processor = task.load_processor(resolved)
    encoded = task.encode(processor, data.splits)
    for note in encoded.notes:
        log(note)
    model, new_parameters = task.load_model(resolved, config.model.dropout)
    log(f"Loaded {resolved.description}; new head parameters: {', '.join(new_parameters) or 'none'}")
    model, unfreezer = apply_strategy(model, config.model, new_parameters, peft_task_type=task.peft_task_type)
    trainable, total = count_parameters(model)
    log(f"Strategy {config.model.strategy}: {trainable:,} of {total:,} parameters trainable ({trainable / total:.2%})")
    if is_main_process() and not resume:
        run.write_json("environment.json", environment_lock(resolve_device(config.runtime.device)))
    if config.model.strategy == "zero_shot":  # nothing trains: the task's model came complete
        how = {"embedding": "each text goes to the closest label description",
               "prompt": "the LM scores each label description as its answer"}[config.model.zero_shot.method]  # fmt: skip
        log(f"Zero-shot: no training; {how}")
        if is_main_process():
            run.metrics_log.touch()  # a training log with no steps
        return Fitted(result=LoopResult(LoopState(), model, restored_best=False), encoded=encoded,
                      processor=processor, resolved=resolved)  # fmt: skip
    objective, train_features = task, encoded.features["train"]
    contrastive = config.model.strategy == "contrastive"
    if contrastive:  # the loop trains on pairs of rows; the head is fitted on their embeddings
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise TunesmithError("model.strategy=contrastive trains on one process: leave out --nproc")
        objective = ContrastiveObjective(task, train_features, config.model.contrastive, seed=config.runtime.seed,
                                         pad_token_id=pad_token_id(processor))  # fmt: skip
        train_features = objective.pairs
        log(f"Contrastive: {len(train_features):,} pairs from {len(encoded.features['train']):,} rows "
            f"({config.model.contrastive.iterations} iterations)")  # fmt: skip
    apply_activation_checkpointing(model, config.train.activation_checkpointing, batch_size=config.train.batch_size,
                                   max_length=config.model.max_length, device=resolve_device(config.runtime.device),
                                   value_bytes=4 if config.runtime.mixed_precision == "no" else 2, log=log)  # fmt: skip
    result = run_training(
        model=model, task=objective, train_features=train_features,
        val_features=encoded.features.get("validation", []), config=config, run=run,
        pad_token_id=pad_token_id(processor), unfreezer=unfreezer,
        callbacks=([ProgressBar(console)] if config.runtime.progress else []) + list(callbacks),
        log=log, resume=resume,
    )  # fmt: skip
    if contrastive:  # the head of the final weights (without a validation split, none was fitted yet)
        objective.fit_head(result.model, batch_size=config.train.batch_size * 2,
                           device=next(result.model.parameters()).device)  # fmt: skip
    return Fitted(result=result, encoded=encoded, processor=processor, resolved=resolved)
