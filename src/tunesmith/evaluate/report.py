"""Human-facing outputs of a run: the confusion-matrix plot and the model card."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.data.overlap import describe


def plot_confusion_matrix(path: Path, matrix: list[list[int]], label_names: list[str], title: str) -> None:
    """Saves a row-normalised confusion matrix with raw counts in each cell as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    counts = np.asarray(matrix)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.6 * len(label_names) + 2)
    figure, axes = plt.subplots(figsize=(size + 1, size))
    image = axes.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(label_names)), label_names, rotation=45, ha="right")
    axes.set_yticks(range(len(label_names)), label_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    if len(label_names) <= 30:
        for i in range(len(label_names)):
            for j in range(len(label_names)):
                colour = "white" if rates[i, j] > 0.5 else "black"
                axes.text(j, i, str(counts[i, j]), ha="center", va="center", color=colour, fontsize=8)
    figure.colorbar(image, ax=axes, fraction=0.046, label="share of true class")
    figure.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(tmp, dpi=120)
    plt.close(figure)
    tmp.replace(path)


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
    figure.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(tmp, dpi=110)
    plt.close(figure)
    tmp.replace(path)


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


def model_card(
    *,
    config: dict[str, Any],
    model_description: str,
    task: dict[str, Any],
    manifest: dict[str, Any],
    metrics: dict[str, Any],
    parameters: tuple[int, int],
    training: dict[str, Any],
    card: dict[str, str] | None = None,
) -> str:
    """The run's README.md: what the model is, what it was trained on, how well it does,
    what it should not be trusted with, and how to load it."""
    model, train = config["model"], config["train"]
    splits = manifest["splits"]
    generative = task["type"] in ("causal_lm", "seq2seq")
    labels = ", ".join(task["label_names"]) or "a number"
    if task["type"] == "seq2seq":
        title = "# Sequence-to-sequence model\n"
        purpose = "It generates a target text (a summary, a translation) for a source text.\n"
        described = f"Columns: {manifest['sources']['train'].get('columns')}.\n"
    elif generative:
        title = "# Instruction-tuned language model\n"
        purpose = (f"It answers prompts in the style of its training completions (loss on {task['loss_on']} "
                   "tokens).\n")  # fmt: skip
        described = f"Record format: {manifest['sources']['train'].get('format')}.\n"
    elif card:  # a task that describes itself (token classification, question answering)
        title, purpose = f"# {card['title']}\n", card["purpose"] + "\n"
        source = manifest["sources"]["train"]
        described = f"Format: {source.get('format')}; {source.get('cleaning')}.\n" + (
            f"Label distribution (train): {splits['train']['labels']}\n" if "labels" in splits["train"] else ""
        )
    else:
        title = f"# {task['type'].replace('_', '-')} text classifier\n"
        purpose = f"It predicts {labels}.\n"
        described = f"Label distribution (train): {splits['train'].get('labels', 'see data_manifest.json')}\n"
    sections = [
        title,
        f"Fine-tuned from {model_description} with tunesmith ({model['strategy']} strategy). {purpose}",
        "## Data\n",
        f"Source: `{manifest['sources']['train']['source']}`. Rows: "
        + ", ".join(f"{name} {info['rows']}" for name, info in splits.items())
        + ".\n",
        described,
        *_overlap_lines(manifest),
        "## Training\n",
        f"- epochs {train['num_epochs']}, batch size {train['batch_size']} x {train['gradient_accumulation_steps']} accumulation, "
        f"learning rate {train['learning_rate']} ({train['scheduler']}, warmup {train['warmup_ratio']}), "
        f"optimizer {train['optimizer']}, weight decay {train['weight_decay']}, max length {model['max_length']}",
        f"- trainable parameters {parameters[0]:,} of {parameters[1]:,}",
        f"- steps {training['steps']}, best validation {training['metric']} "
        f"{training['best_metric'] if training['best_metric'] is None else round(training['best_metric'], 4)} "
        f"at step {training['best_step']} (training curves: training_curves.png)"
        + (" (stopped early)" if training["stopped_early"] else ""),
        f"- seed {config['runtime']['seed']}; the full config is in config.yaml, package versions in environment.json\n",
        "## Results\n",
    ]
    for split in ("validation", "test"):
        if split in metrics:
            sections += [f"### {split} ({metrics[split].get('count', '?')} rows)\n", _scalars(metrics[split]) + "\n"]
    test = metrics.get("test", {})
    if "ece" in test:
        scaled = (f"; after temperature scaling (T = {test['temperature']:.3f}, fitted on validation) "
                  f"{test['ece_temperature_scaled']:.4f}" if "temperature" in test else "")  # fmt: skip
        sections += [f"Calibration on test: expected calibration error {test['ece']:.4f}{scaled} "
                     "(reliability diagram: reliability_test.png).\n"]  # fmt: skip
    if "slices" in metrics.get("test", {}):
        from tunesmith.evaluate.fairness import markdown as slice_table

        sections += [f"### test, per {metrics['test']['slices']['column']} slice\n",
                     slice_table(metrics["test"]["slices"])]  # fmt: skip
    if "forgetting" in metrics:
        f = metrics["forgetting"]
        sections += ["### Forgetting check\n",
                     f"Retain set `{f['retain']}` ({f['rows']} rows, {f['method']}): base {f['base']:.4f}, tuned "
                     f"{f['tuned']:.4f}. {f['message']}.\n"]  # fmt: skip
    if "per_class" in metrics.get("test", {}):
        sections += ["### test, per class\n", _per_class(metrics["test"]) + "\n"]
        if "confusion_matrix" in metrics["test"]:
            sections += ["![test confusion matrix](confusion_matrix_test.png)\n"]
    if generative:
        auto = "AutoModelForSeq2SeqLM" if task["type"] == "seq2seq" else "AutoModelForCausalLM"
        return "\n".join(sections + [
            "## Limitations\n",
            f"- Inputs longer than {model['max_length']} tokens were cut ({training['truncated_train']} in training).",
            "- Generation metrics (ROUGE-L, BLEU, chrF, exact match) compare wording with one reference; a correct "
            "answer phrased differently scores low. Read generations_test.jsonl before trusting the model.",
            "- The model can state falsehoods fluently and inherits the biases of its base model and data.\n",
            "## How to load\n",
            f"```python\nfrom transformers import {auto}, AutoTokenizer\n\n"
            f'model = {auto}.from_pretrained("model")\n'
            'tokenizer = AutoTokenizer.from_pretrained("model")\n```\n',
            'or `tunesmith predict RUN_DIR --text "..."`'
            + (", or `tunesmith chat RUN_DIR`.\n" if task["type"] == "causal_lm" else ".\n"),
        ])  # fmt: skip
    auto = card["auto_class"] if card else "AutoModelForSequenceClassification"
    sections += [
        "## Limitations\n",
        (
            f"- Contexts longer than {model['max_length']} tokens are read in windows overlapping by "
            f"{task.get('doc_stride')} tokens; questions are cut to {model['max_length'] // 2} tokens "
            f"({training['truncated_train']} training questions were)."
            if task["type"] == "question_answering"
            else f"- Images are resized to {task.get('image_size') or 'the backbone input size'} pixels square and "
            "normalised as model/preprocessor_config.json says; pictures unlike the training images (other "
            "cameras, lighting, framing) can score far lower."
            if task["type"] == "image_classification"
            else f"- Texts longer than {model['max_length']} tokens are truncated: the model sees only their start "
            f"({training['truncated_train']} of the training rows were truncated)."
        ),
        "- Scores hold for data like the test split above; other domains, time periods or writing styles "
        "can score far lower. Check per-class scores in metrics.json before relying on rare classes.",
        "- The model inherits the biases of its pretrained encoder and of the training labels.\n",
        "## How to load\n",
        f"```python\nfrom transformers import {auto}, AutoTokenizer\n\n"
        f'model = {auto}.from_pretrained("model")\n'
        'tokenizer = AutoTokenizer.from_pretrained("model")\n```\n',
        (
            'or `tunesmith predict RUN_DIR --question "..." --context "..."`.\n'
            if task["type"] == "question_answering"
            else 'or `tunesmith predict RUN_DIR --text "..."`.\n'
        ),
    ]
    return "\n".join(sections)
