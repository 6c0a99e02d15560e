"""Human-facing outputs of a run: the training curves and the model card."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.data.overlap import describe
from tunesmith.evaluate.baseline import comparison_rows
from tunesmith.evaluate.hub_card import portable_source
from tunesmith.tasks.contract import CardText
from tunesmith.tasks.plots import save_figure


def plot_training_curves(path: Path, records: list[dict[str, Any]], metric: str) -> None:
    """Saves the training loss and the validation loss and metric against the step as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r["split"] == "train"]
    validation = [r for r in records if r["split"] == "validation"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
    if validation:
        left.plot([r["step"] for r in validation], [r["loss"] for r in validation], "o-", label="validation")
        right.plot([r["step"] for r in validation], [r.get(metric, float("nan")) for r in validation], "o-")
    left.set(xlabel="step", ylabel="loss", title="loss")
    left.legend()
    right.set(xlabel="step", ylabel=metric, title=f"validation {metric}")
    for axes in (left, right):
        axes.grid(alpha=0.3)
    save_figure(figure, path)


def _per_class(metrics: dict[str, Any]) -> str:
    rows = [
        f"| {name} | {v['precision']:.4f} | {v['recall']:.4f} | {v['f1']:.4f} | {v['support']} |"
        for name, v in metrics["per_class"].items()
    ]
    return "\n".join(["| class | precision | recall | F1 | support |", "|---|---|---|---|---|", *rows])


def _scalars(metrics: dict[str, Any]) -> str:
    """The split's scalar metrics, with their bootstrap interval where there is one."""
    intervals = metrics.get("confidence_intervals", {})
    level = metrics.get("confidence_level")
    header = f"| metric | value | {level:.0%} bootstrap interval |" if intervals else "| metric | value |"
    rows = []
    for key, value in metrics.items():
        if not isinstance(value, float) or key in ("confidence_level", "temperature"):
            continue
        ci = intervals.get(key)
        shown = f" {ci['low']:.4f} – {ci['high']:.4f} |" if ci else (" |" if intervals else "")
        rows.append(f"| {key} | {value:.4f} |{shown}")
    return "\n".join([header, "|---|---|---|" if intervals else "|---|---|", *rows])


def _overlap_lines(manifest: dict[str, Any]) -> list[str]:
    """The card's warning for held-out rows whose input is also a training input (none if no such row)."""
    shared = [describe(name, entry) for name, entry in manifest.get("overlap", {}).get("splits", {}).items()
              if entry["rows"]]  # fmt: skip
    if not shared:
        return []
    return [
        f"**Overlap with training:** {'; '.join(shared)}. Scores on those rows measure memory, not "
        "generalisation; data_manifest.json lists examples.\n"
    ]


def _training_lines(config: dict[str, Any], parameters: tuple[int, int], training: dict[str, Any]) -> list[str]:
    """The card's Training section: the settings that matter, the parameters trained, how it went."""
    model, train = config["model"], config["train"]
    best = training["best_metric"] if training["best_metric"] is None else round(training["best_metric"], 4)
    return [
        "## Training\n",
        f"- epochs {train['num_epochs']}, batch size {train['batch_size']} x {train['gradient_accumulation_steps']} accumulation, "
        f"learning rate {train['learning_rate']} ({train['scheduler']}, warmup {train['warmup_ratio']}), "
        f"optimizer {train['optimizer']}, weight decay {train['weight_decay']}, max length {model['max_length']}",
        f"- trainable parameters {parameters[0]:,} of {parameters[1]:,}",
        f"- steps {training['steps']}, best validation {training['metric']} {best} "
        f"at step {training['best_step']} (training curves: training_curves.png)"
        + (" (stopped early)" if training["stopped_early"] else ""),
        f"- seed {config['runtime']['seed']}; the full config is in config.yaml, package versions in environment.json\n",
        *_federation_lines(training.get("federation")),
    ]


def _federation_lines(federation: dict[str, Any] | None) -> list[str]:
    """The card's Federated training section, for a run from ``tunesmith federate``."""
    if not federation:
        return []
    clients = ", ".join(f"{c['client']} {c['rows'] if c['rows'] is not None else '?'} rows"
                        for c in federation["clients"])  # fmt: skip
    spread = federation["partition"] + (f" (Dirichlet alpha {federation['alpha']})" if federation["alpha"] else "")
    sizes = federation["bytes"]
    picked = (f"the global model of round {federation['best_round']}, the best on validation"
              if federation["best_round"] is not None else "the last round's global model (no validation score picked one)")  # fmt: skip
    return [
        "## Federated training\n",
        f"- {len(federation['clients'])} clients ({clients}); rows shared out by {spread}",
        f"- {federation['rounds']} rounds of {federation['aggregation']}"
        + (f" (proximal mu {federation['proximal_mu']})" if federation["proximal_mu"] else "")
        + f", {federation['local_epochs']} local epochs each; this model is {picked} "
        "(curves: federation_curves.png; every round in federation.json)",
        f"- each message carried {sizes['per_message']:,} bytes of {federation['strategy']} weights (the full "
        f"weights are {sizes['full_weights']:,} bytes); a round sends them to every client twice (to train, then "
        f"to score on its rows) and gets one back from each client that trained; failed client replies: "
        f"{federation['failed_replies']}",
        f"- privacy: {federation['privacy']}\n",
    ]


def _results_lines(metrics: dict[str, Any]) -> list[str]:
    """The card's Results section (after its heading): scores per split, calibration, slices,
    forgetting and per-class scores, each where the run measured it."""
    sections = []
    for split in ("validation", "test"):
        if split in metrics:
            sections += [f"### {split} ({metrics[split].get('count', '?')} rows)\n", _scalars(metrics[split]) + "\n"]
    test = metrics.get("test", {})
    if "ece" in test:
        scaled = (f"; after temperature scaling (T = {test['temperature']:.3f}, fitted on validation) "
                  f"{test['ece_temperature_scaled']:.4f}" if "temperature" in test else "")  # fmt: skip
        sections += [f"Calibration on test: expected calibration error {test['ece']:.4f}{scaled} "
                     "(reliability diagram: reliability_test.png).\n"]  # fmt: skip
    if "slices" in test:
        from tunesmith.tasks.fairness import markdown as slice_table

        sections += [f"### test, per {test['slices']['column']} slice\n", slice_table(test["slices"])]
    if "baseline" in metrics:
        b = metrics["baseline"]
        lines = [f"| {r['metric']} ({r['split']}) | {r['this run']:.4f} | {r['baseline']:.4f} | {r['gain']:+.4f} |"
                 for r in comparison_rows(metrics)]  # fmt: skip
        sections += ["### Baseline: what fine-tuning added\n",
                     f"A {b['method']}, fitted on {b['train_rows']:,} training rows and scored on the same held-out "
                     "rows.\n", "| metric | this run | baseline | gain |\n|---|---|---|---|\n" + "\n".join(lines) + "\n"]  # fmt: skip
    if "forgetting" in metrics:
        f = metrics["forgetting"]
        sections += ["### Forgetting check\n",
                     f"Retain set `{portable_source(f['retain'])}` ({f['rows']} rows, {f['method']}): base {f['base']:.4f}, tuned "
                     f"{f['tuned']:.4f}. {f['message']}.\n"]  # fmt: skip
    if "per_class" in test:
        sections += ["### test, per class\n", _per_class(test) + "\n"]
        if "confusion_matrix" in test:
            sections += ["![test confusion matrix](confusion_matrix_test.png)\n"]
    return sections


def _closing_lines(card: CardText, auto_class: str, per_class: bool, adapter: str) -> list[str]:
    """The card's Limitations and How to load sections, and the adapter's section if any."""
    reader = "tokenizer" if card.processor == "AutoTokenizer" else "processor"
    return [
        "## Limitations\n",
        f"- {card.limitation}",
        "- Scores hold for data like the test split above; other domains, time periods or writing styles "
        "can score far lower."
        + (" Check per-class scores in metrics.json before relying on rare classes." if per_class else ""),
        "- The model inherits the biases of its pretrained model and of its training data.\n",
        "## How to load\n",
        f"```python\nfrom transformers import {auto_class}, {card.processor}\n\n"
        f'model = {auto_class}.from_pretrained("model")  # this folder; on the Hub, its repo id\n'
        f'{reader} = {card.processor}.from_pretrained("model")\n```\n',
        f"or {card.usage}\n",
        *([adapter] if adapter else []),
    ]


def model_card(
    *,
    config: dict[str, Any],
    model_description: str,
    manifest: dict[str, Any],
    metrics: dict[str, Any],
    parameters: tuple[int, int],
    training: dict[str, Any],
    card: CardText,
    auto_class: str,
    adapter: str = "",
) -> str:
    """The body of the run's model card (Markdown, without its metadata): what the model is,
    what it was trained on, how well it does, what it should not be trusted with, and how to
    load it. The task's own part (``card``: title, purpose, data, limitation, usage) comes from
    the task (``Task.card``). It names no local path (``model_description`` included), so that
    ``model/`` can be published with it.

    Args:
        adapter: a LoRA run's section on its adapter (``hub_card.adapter_section``), else "".
    """
    splits = manifest["splits"]
    sections = [
        f"# {card.title}\n",
        f"Fine-tuned from {model_description} with tunesmith ({config['model']['strategy']} strategy). "
        f"{card.purpose}\n",
        "## Data\n",
        f"Source: `{portable_source(manifest['sources']['train']['source'])}`. Rows: "
        + ", ".join(f"{name} {info['rows']}" for name, info in splits.items())
        + ".\n",
        card.data + "\n",
        *_overlap_lines(manifest),
        *_training_lines(config, parameters, training),
        "## Results\n",
        *_results_lines(metrics),
        *_closing_lines(card, auto_class, "per_class" in metrics.get("test", {}), adapter),
    ]
    return "\n".join(sections)
