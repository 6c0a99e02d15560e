"""The one training loop. Strategies differ only in which parameters require gradients and
which groups the optimizer holds; tasks only in their loss and metrics.

A step is one optimizer update: ``gradient_accumulation_steps`` batches. The loss of a
step is the sum of per-example losses divided by the number of examples in the step,
so every example weighs the same however the batches fall.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from tunesmith.config import Config, TrainConfig
from tunesmith.data.batching import epoch_batches
from tunesmith.errors import TunesmithError
from tunesmith.runs import RunDir
from tunesmith.train import sharding, zero
from tunesmith.train.callbacks import Callback, Throughput
from tunesmith.train.checkpoint import (
    LoopState,
    load_best_weights,
    load_latest_checkpoint,
    pending_checkpoint,
    prepare_checkpoint,
    save_best_weights,
    save_checkpoint,
)
from tunesmith.train.embedding_grad import install_row_gradients
from tunesmith.train.optim import build_optimizer, build_scheduler


def resolve_device(device: str) -> str:
    """ "auto" becomes cuda, mps or cpu, whichever this machine has, in that order."""
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def plan_steps(num_batches: int, config: Config) -> tuple[int, int]:
    """(steps per epoch, total steps) for a training set of ``num_batches`` batches."""
    per_epoch = math.ceil(num_batches / config.train.gradient_accumulation_steps)
    total = math.ceil(per_epoch * config.train.num_epochs)
    if config.train.max_steps is not None:
        total = min(total, config.train.max_steps) if config.train.num_epochs else config.train.max_steps
    return per_epoch, max(total, 1)


def metric_and_mode(task, train: TrainConfig) -> tuple[str, str]:
    """The validation metric that picks the best weights (train.metric, else the task's
    default) and whether higher ("max") or lower ("min") is better."""
    if not train.metric:
        return task.default_metric
    return train.metric, "min" if train.metric in ("loss", "perplexity", "mse", "mae", "hamming_loss") else "max"


def _finite(value: Any) -> bool:
    """False for a NaN or infinite float, or a float tensor or list holding one."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point() or bool(torch.isfinite(value).all())
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value if isinstance(v, (float, list, tuple)))
    return True


def non_finite_loss(loss: float, step: int, train: TrainConfig, features: list[dict]) -> str:
    """The message for a NaN or infinite training loss: the step's own rows when they hold a
    non-finite number (a target, a feature), else the optimisation settings to check. It
    promises nothing about the run directory: what happens to it is the caller's business."""
    bad = sorted({key for feature in features for key, value in feature.items() if not _finite(value)})
    if bad:
        return (
            f"the training loss became {loss} at step {step}: the step's rows hold non-finite values (NaN or "
            f"infinity) in {', '.join(bad)}; remove or fix those rows in the training data (for regression, "
            "every target must be a finite number)"
        )
    return (
        f"the training loss became {loss} (not a finite number) at step {step}. Check the training data for "
        f"extreme or non-finite values, then lower train.learning_rate (now {train.learning_rate}) or set "
        f"train.max_grad_norm (now {train.max_grad_norm}); runtime.mixed_precision=fp16 can also overflow"
    )


@dataclass
class LoopResult:
    state: LoopState
    model: Any
    restored_best: bool
    world_size: int = 1
    rank_checksums: list[float] | None = None
    sharded: bool = False
    """Trained with FSDP (parameters sharded across the ranks)."""
    parallelism: str = "none"
    """none, ddp, fsdp, deepspeed, or federated."""
    federation: dict | None = None
    """A federated run's summary (study/federated.py): clients, rounds, bytes, failures."""


def run_training(
    *,
    model,
    task,
    train_features: list[dict],
    val_features: list[dict],
    config: Config,
    run: RunDir,
    pad_token_id: int,
    unfreezer=None,
    callbacks: list[Callback] = (),
    log: Callable[[str], None] = print,
    resume: bool = False,
) -> LoopResult:
    """Trains ``model`` on ``train_features``, evaluating on ``val_features``.

    Saves resumable checkpoints under ``run.checkpoints_dir`` and the best weights by the
    validation metric, which are loaded back at the end.

    The task supplies ``collate(features, pad_token_id)``, ``count(features)`` (the units a step's
    summed loss is divided by: examples, or label tokens), ``batch_loss(model, batch, device)``
    (summed) and ``evaluate(model, features, ...)`` (metrics including ``loss``).
    """
    from accelerate import Accelerator

    tc, rc = config.train, config.runtime
    # FSDP shards only when there are several processes; one process trains the plain model.
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    sharded = rc.distributed == "fsdp" and several
    # DeepSpeed: the engine takes the optimizer step, clipping and precision (train/zero.py).
    deep = rc.distributed == "deepspeed" and several
    accelerator = Accelerator(
        cpu=resolve_device(rc.device) == "cpu",
        mixed_precision="no" if deep else rc.mixed_precision,
        fsdp_plugin=sharding.fsdp_plugin() if sharded else None,
    )
    device = accelerator.device
    # Data parallel: every rank sees every global batch and trains on its slice of it;
    # only rank 0 writes files, logs or shows progress.
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    if world > 1 and unfreezer is not None:
        raise TunesmithError(
            "model.strategy=gradual_unfreeze is not supported with several processes yet (DDP fixes the "
            "trainable set when it wraps the model); use full, freeze or lora with --nproc"
        )
    if tc.batch_size < world:
        raise TunesmithError(
            f"train.batch_size={tc.batch_size} is the global batch: it must be at least the "
            f"number of processes ({world})"
        )
    if not main:
        callbacks, log = [], lambda message: None
    metric_name, mode = metric_and_mode(task, tc)

    lengths = [len(f["input_ids"]) if "input_ids" in f else 1 for f in train_features]  # images: all alike
    num_batches = math.ceil(len(train_features) / tc.batch_size)
    _, total_steps = plan_steps(num_batches, config)
    optimizer = build_optimizer(model, tc, include_frozen=unfreezer is not None)
    scheduler = build_scheduler(optimizer, tc, total_steps)
    # Rank 0 of a sharded run ends with an ordinary model: this weightless copy receives the weights.
    unsharded = sharding.meta_copy(model) if sharded and main else None
    if deep:
        ds_config = zero.build_config(
            rc.deepspeed_config, batch_size=tc.batch_size, accumulation=tc.gradient_accumulation_steps,
            max_grad_norm=tc.max_grad_norm, mixed_precision=rc.mixed_precision, world=world,
        )  # fmt: skip
        model = zero.initialize(model.to(device), optimizer, scheduler, ds_config)
    else:
        model, optimizer = accelerator.prepare(model, optimizer)
    # Single-process CPU: the input embedding's gradient goes into one reused buffer
    # (train/embedding_grad.py). DDP needs the stock path: it all-reduces from autograd hooks.
    row_gradients = install_row_gradients(model) if world == 1 and device.type == "cpu" else None

    # Gradual unfreezing opens weights as it goes, so its best weights must hold everything.
    trainable_only = unfreezer is None
    state = LoopState()
    if resume:
        # The newest intact checkpoint: damaged ones are named in the log and skipped.
        resumed = load_latest_checkpoint(
            run.checkpoints_dir,
            model=accelerator.unwrap_model(model),
            optimizer=None if deep else optimizer,
            scheduler=scheduler,
            sharded=sharded,
            log=log,
        )
        if resumed is not None:
            checkpoint, state = resumed
            if deep:
                zero.load_partitions(model, checkpoint)
            if main:
                run.truncate_metrics(state.metrics_lines)
            log(f"Resumed from {checkpoint} (step {state.step} of {total_steps}, epoch {state.epoch + 1})")
        else:
            log("No checkpoint found: starting from the beginning")
            if main:  # forget what the killed attempt logged and kept
                run.truncate_metrics(0)
                (run.checkpoints_dir / "best.pt").unlink(missing_ok=True)

    def evaluate() -> dict[str, Any]:
        metrics = task.evaluate(
            accelerator.unwrap_model(model),
            val_features,
            batch_size=tc.batch_size * 2,
            pad_token_id=pad_token_id,
            device=device,
        )
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        record = {"step": state.step, "epoch": state.epoch, "split": "validation", **scalars}
        if main:
            run.append_metrics(record)
        state.history.append(record)
        value = metrics[metric_name]
        if mode == "max":
            improved = state.best_metric is None or value > state.best_metric + tc.early_stopping.min_delta
        else:
            improved = state.best_metric is None or value < state.best_metric - tc.early_stopping.min_delta
        better = math.isfinite(value) and improved  # a NaN score is never the best
        if better:
            state.best_metric, state.best_step, state.evals_without_improvement = value, state.step, 0
            gathered = sharding.full_model_state(model) if sharded else None  # every rank takes part
            if main:
                save_best_weights(
                    run.checkpoints_dir,
                    accelerator.unwrap_model(model),
                    trainable_only=trainable_only,
                    gathered=gathered,
                )
        else:
            state.evals_without_improvement += 1
            patience = tc.early_stopping.patience
            if patience is not None and state.evals_without_improvement >= patience:
                state.stopped_early = True
                log(f"Early stopping at step {state.step}: {metric_name} has not improved for {patience} evaluations")
        for callback in callbacks:
            callback.on_eval_end(state, metrics)
        return metrics

    checkpointed = None  # where the last checkpoint left the loop

    def checkpoint() -> None:
        nonlocal checkpointed
        checkpointed = (state.step, state.epoch, len(state.history))
        gathered = None
        if sharded:  # every rank takes part in gathering the shards
            gathered = sharding.full_model_state(model), sharding.full_optimizer_state(model, optimizer)
        if deep:  # every rank writes its optimizer partition into the checkpoint-to-be
            if main:
                prepare_checkpoint(run.checkpoints_dir, state.step)
            accelerator.wait_for_everyone()
            zero.save_partitions(model, pending_checkpoint(run.checkpoints_dir, state.step))
            accelerator.wait_for_everyone()
        if main:
            state.metrics_lines = run.metrics_lines()
            save_checkpoint(
                run.checkpoints_dir, model=accelerator.unwrap_model(model), optimizer=None if deep else optimizer,
                scheduler=scheduler, state=state, keep=rc.keep_checkpoints, trainable_only=trainable_only,
                gathered=gathered,
            )  # fmt: skip
        accelerator.wait_for_everyone()

    for callback in callbacks:
        callback.on_train_start(state, total_steps)
    model.train()
    throughput = Throughput()
    accumulation = tc.gradient_accumulation_steps
    # The data order's own generator: DataLoader-style seeding would consume the global RNG.
    try:
        while state.step < total_steps and not state.stopped_early:
            batches = epoch_batches(
                lengths, batch_size=tc.batch_size, seed=rc.seed, epoch=state.epoch, group_by_length=tc.group_by_length
            )
            if world > 1:  # a batch smaller than the world would leave a rank idle (and DDP waiting)
                batches = [b for b in batches if len(b) >= world]
            windows = [batches[i : i + accumulation] for i in range(0, len(batches), accumulation)]
            for window in windows[state.batches_done_in_epoch // accumulation :]:
                if unfreezer is not None and unfreezer.update(step=state.step, epoch=state.epoch):
                    log(f"Gradual unfreezing: stage {unfreezer.stage} from step {state.step}")
                examples = sum(len(b) for b in window)
                units = sum(task.count([train_features[i] for i in b]) for b in window)
                step_loss = 0.0
                for position, indices in enumerate(window):
                    batch = task.collate([train_features[i] for i in indices[rank::world]], pad_token_id)
                    # Gradients are all-reduced (averaged) once per step, on its last batch.
                    last = position == len(window) - 1
                    with contextlib.nullcontext() if last or deep else accelerator.no_sync(model):
                        with accelerator.autocast():
                            summed = task.batch_loss(model, batch, device)
                        # Summed loss over this rank's rows / all units of the step, times the world
                        # size that DDP's (or ZeRO's) averaging divides by: the single-process gradient.
                        loss = summed * world / units
                        if deep:
                            zero.backward(model, loss, last=last)
                        else:
                            accelerator.backward(loss)
                    step_loss += loss.item() / world
                    throughput.add(batch["num_examples"], batch["num_tokens"])
                if deep:
                    zero.step(model)  # clipping, optimizer, schedule, zeroing
                else:
                    if tc.max_grad_norm is not None:
                        accelerator.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                state.step += 1
                state.batches_done_in_epoch += len(window)
                state.examples_seen += examples
                state.loss_since_log += step_loss
                state.steps_since_log += 1
                if not math.isfinite(step_loss):
                    raise TunesmithError(non_finite_loss(step_loss, state.step, tc, [
                        train_features[i] for b in window for i in b]))  # fmt: skip

                logs = None
                if state.step % rc.log_every_steps == 0 or state.step == total_steps:
                    loss_since_log = state.loss_since_log
                    if world > 1:
                        totals = torch.tensor(
                            [loss_since_log, throughput.examples, throughput.tokens], dtype=torch.float64
                        )
                        totals = accelerator.reduce(totals.to(device), "sum").cpu().tolist()
                        loss_since_log, throughput.examples, throughput.tokens = totals
                    samples_per_second, tokens_per_second = throughput.rates()
                    logs = {
                        "step": state.step,
                        "epoch": state.epoch,
                        "split": "train",
                        "loss": loss_since_log / state.steps_since_log,
                        "learning_rate": scheduler.get_last_lr()[0],
                        "samples_per_second": samples_per_second,
                        "tokens_per_second": tokens_per_second,
                    }
                    if main:
                        run.append_metrics(logs)
                    state.loss_since_log, state.steps_since_log = 0.0, 0
                    throughput.reset()
                for callback in callbacks:
                    callback.on_step_end(state, logs)

                evaluated = tc.eval_every_steps is not None and state.step % tc.eval_every_steps == 0 and val_features
                if evaluated:
                    evaluate()
                if evaluated or (rc.checkpoint_every_steps and state.step % rc.checkpoint_every_steps == 0):
                    checkpoint()
                if state.step >= total_steps or state.stopped_early:
                    if state.batches_done_in_epoch >= len(batches):  # the run ended with the epoch
                        state.epoch += 1
                        state.batches_done_in_epoch = 0
                    break
            else:
                state.epoch += 1
                state.batches_done_in_epoch = 0
                if tc.eval_every_steps is None and val_features:
                    evaluate()
                for callback in callbacks:
                    callback.on_epoch_end(state)
                checkpoint()

    finally:
        if row_gradients is not None:
            row_gradients.remove()

    if val_features and (not state.history or state.history[-1]["step"] != state.step):
        evaluate()  # the run ended mid-epoch (max_steps, fractional epochs): judge the last weights too
    if checkpointed != (state.step, state.epoch, len(state.history)):
        checkpoint()  # the end of training: a run that fails while saving its model resumes from here
    accelerator.wait_for_everyone()
    restored = load_best_weights(run.checkpoints_dir, accelerator.unwrap_model(model), sharded=sharded)
    if sharded:
        checksums = [sharding.checksum(model)]
    else:
        checksums = [float(sum(p.detach().double().sum() for p in model.parameters()))]
    if world > 1:  # evidence that the ranks hold the same weights
        checksums = accelerator.gather(torch.tensor(checksums, dtype=torch.float64, device=device)).cpu().tolist()
    final = accelerator.unwrap_model(model)
    if sharded:
        weights = sharding.full_model_state(model)
        if main:
            unsharded.load_state_dict(weights, assign=True)
            if hasattr(unsharded, "tie_weights"):  # assign=True gives shared weights separate tensors
                unsharded.tie_weights()
            final = unsharded
    if restored:
        log(f"Loaded the best weights: {metric_name} {state.best_metric:.4f} at step {state.best_step}")
    for callback in callbacks:
        callback.on_train_end(state)
    parallelism = "fsdp" if sharded else "deepspeed" if deep else "ddp" if world > 1 else "none"
    return LoopResult(state, final, restored, world, checksums, sharded, parallelism)
