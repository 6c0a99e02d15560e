"""The end of a run: score the held-out splits through the task, save the model, check
forgetting, write metrics.json, the curves, the model card and the HTML report. Also the
scoring of a trained run on a new labelled file (``tunesmith evaluate``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunesmith.config import Config
from tunesmith.data.prepare import PreparedData
from tunesmith.errors import TunesmithError
from tunesmith.evaluate import forgetting
from tunesmith.evaluate.baseline import log_baseline, probe_baseline
from tunesmith.evaluate.html import run_report
from tunesmith.evaluate.hub_card import adapter_section, base_text, card_metadata, write_cards
from tunesmith.evaluate.predictions import predictions_path, write_predictions
from tunesmith.evaluate.report import model_card, plot_training_curves
from tunesmith.models.adapt import count_parameters
from tunesmith.runs import RunDir, replace_dir, usual_permissions
from tunesmith.tasks import require_stage
from tunesmith.tasks.contract import ScoreContext, Task
from tunesmith.train.fit import Fitted


def score_splits(run: RunDir, config: Config, task: Task, data: PreparedData, fitted: Fitted,
                 log: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    """The task's scores of the validation and test splits (generation, which is slow, on the
    test split only, or validation when there is no test split); fits and saves the temperature
    first where the task calibrates. Each split's per-row predictions, from the same outputs, are
    saved as ``predictions_SPLIT.parquet``."""
    model, features = fitted.result.model, fitted.encoded.features
    device = next(model.parameters()).device
    batch_size = config.train.batch_size * 2
    temperature = None
    if config.evaluation.temperature_scaling and features.get("validation"):
        temperature = task.calibrate(model, fitted.processor, features["validation"], batch_size=batch_size,
                                     device=device)  # fmt: skip
        if temperature is not None:
            run.write_json("calibration.json", {"temperature": temperature, "fitted_on": "validation"})
            log(f"Temperature scaling: T = {temperature:.3f} (fitted on the validation split)")
    generate_on = "test" if features.get("test") else "validation"
    metrics = {}
    for split in ("validation", "test"):
        if not features.get(split):
            continue
        context = ScoreContext(
            artifact=lambda kind, suffix, split=split: run.path / f"{kind}_{split}{suffix}", name=split,
            evaluation=config.evaluation, seed=config.runtime.seed, batch_size=batch_size, device=device,
            temperature=temperature, generate=split == generate_on, examples_plot=split == "test",
            slice_column=config.data.slice_column, log=lambda message, split=split: log(f"{split}: {message}"),
            predictions=lambda found, split=split: write_predictions(predictions_path(run.path, split), found),
        )  # fmt: skip
        metrics[split] = task.score(model, fitted.processor, data.splits[split], features[split], context)
    return metrics


def save_model(run: RunDir, config: Config, fitted: Fitted):
    """Writes ``model/`` in plain transformers format (with LoRA: ``adapter/`` too, with the
    processor beside it, and the merged model in ``model/``); returns the model as saved."""
    model = fitted.result.model
    if config.model.strategy == "lora":
        tmp = run.path / ".tmp-adapter"
        if fitted.resolved.hub_id:  # PEFT loads the base from here: a Hub id loads anywhere, a path only here
            model.peft_config["default"].base_model_name_or_path = fitted.resolved.hub_id
        # tunesmith never resizes the vocabulary, so the base's embeddings need no copy; PEFT's "auto"
        # would ask the Hub for the base's config to find that out
        model.save_pretrained(tmp, save_embedding_layers=False)
        fitted.processor.save_pretrained(tmp)
        usual_permissions(tmp)
        replace_dir(tmp, run.path / "adapter")
        model = model.merge_and_unload()
    tmp = run.path / ".tmp-model"
    model.save_pretrained(tmp)
    fitted.processor.save_pretrained(tmp)
    usual_permissions(tmp)
    replace_dir(tmp, run.model_dir)
    return model


def check_forgetting(config: Config, task: Task, model, fitted: Fitted, log: Callable[[str], None]) -> dict:
    """The catastrophic-forgetting check of config.forgetting on the final (merged) model, the
    way the task's ``forgetting_probe`` says."""
    settings, seed, model = config.forgetting, config.runtime.seed, model.cpu()
    match task.forgetting_probe:
        case "perplexity":
            base, _ = task.load_model(fitted.resolved, None)
            found = forgetting.causal_lm_check(settings, base_model=base, tuned_model=model,
                                               tokenizer=fitted.processor, max_length=config.model.max_length,
                                               seed=seed)  # fmt: skip
        case "embedding":
            found = forgetting.classifier_check(settings, base_name=config.model.name, tuned_model=model,
                                                tokenizer=fitted.processor, max_length=config.model.max_length,
                                                seed=seed)  # fmt: skip
        case _:
            require_stage(task, "forgetting")
            raise TunesmithError(f"forgetting: no probe for {task.kind} runs")
    log(("Forgetting: " if found["passed"] else "WARNING, forgetting: ") + found["message"]
        + f" (base {found['base']:.4f}, tuned {found['tuned']:.4f})")  # fmt: skip
    return found


def finish_run(run: RunDir, config: Config, task: Task, data: PreparedData, fitted: Fitted,
               log: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    """Scores, saves and documents a trained run; returns its metrics.

    Raises:
        TunesmithError: the forgetting check failed with forgetting.action=fail (the run is
            saved and complete all the same).
    """
    metrics = score_splits(run, config, task, data, fitted, log)
    parameters = count_parameters(fitted.result.model)
    model = save_model(run, config, fitted)
    baseline = probe_baseline(config, task, data, fitted, log)
    if baseline is not None:
        metrics["baseline"] = baseline
    if config.forgetting.retain is not None:
        metrics["forgetting"] = check_forgetting(config, task, model, fitted, log)
    state, result, truncated = fitted.result.state, fitted.result, fitted.encoded.truncated
    metric_name = config.train.metric or task.default_metric[0]
    training = {
        "steps": state.step, "epochs_completed": state.epoch, "examples_seen": state.examples_seen,
        "metric": metric_name, "best_metric": state.best_metric, "best_step": state.best_step,
        "stopped_early": state.stopped_early, "truncated_train": truncated.get("train", 0),
        "world_size": result.world_size, "rank_checksums": result.rank_checksums,
        "parallelism": result.parallelism, "truncated": truncated,
    }  # fmt: skip
    if result.federation is not None:
        training["federation"] = result.federation
    run.write_json("metrics.json", {**metrics, "training": training})
    records = [json.loads(line) for line in run.metrics_log.read_text(encoding="utf-8").splitlines()]
    plot_training_curves(run.path / "training_curves.png", records, metric_name)
    card = task.card(data.manifest, config.model.max_length, training["truncated_train"])
    lora = config.model.strategy == "lora"
    body = model_card(
        config=config.model_dump(mode="json"), model_description=base_text(fitted.resolved),
        manifest=data.manifest, metrics=metrics, parameters=parameters, training=training, card=card,
        auto_class=task.auto_class,
        adapter=adapter_section(task, fitted.resolved, model.config, card.processor) if lora else "",
    )  # fmt: skip
    meta = {"resolved": fitted.resolved, "manifest": data.manifest, "metrics": metrics, "name": run.path.name,
            "strategy": config.model.strategy}  # fmt: skip
    write_cards(run, body, card_metadata(task, **meta), card_metadata(task, **meta, adapter=True) if lora else None)
    for split in ("validation", "test"):
        if split in metrics:
            log(f"{split}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics[split].items() if isinstance(v, float)))
    log_baseline(metrics, metric_name, log)
    run_report(run.path)
    run.record_hashes()  # export and serve check the model against these
    log(f"Model saved to {run.model_dir}; model card {run.path / 'README.md'}; report {run.path / 'report.html'}")
    found = metrics.get("forgetting")
    if found is not None and not found["passed"] and found["action"] == "fail":
        raise TunesmithError(f"forgetting check failed: {found['message']} (the run is saved in {run.path})")
    return metrics


def score_file(run: RunDir, config: Config, task: Task, model, processor, data: str | Path, *, out: Path,
               stem: str) -> dict[str, Any]:  # fmt: skip
    """A trained run's scores on a labelled file (same columns as training), saved as
    ``out/STEM.json`` with its plots, generations and per-row predictions
    (``out/STEM_predictions.parquet``) named ``out/STEM_*``."""
    frame, entry = task.read(str(data), config.data)
    encoded = task.encode(processor, {stem: frame})
    out.mkdir(exist_ok=True)
    context = ScoreContext(
        artifact=lambda kind, suffix: out / f"{stem}_{kind}{suffix}", name=stem, evaluation=config.evaluation,
        seed=config.runtime.seed, batch_size=config.train.batch_size * 2, temperature=run.temperature(),
        slice_column=config.data.slice_column,
        predictions=lambda found: write_predictions(out / f"{stem}_predictions.parquet", found),
    )  # fmt: skip
    metrics = task.score(model, processor, frame, encoded.features[stem], context)
    metrics["data"] = entry
    RunDir(out).write_json(f"{stem}.json", metrics)
    return metrics
