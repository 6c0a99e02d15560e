"""The model card as the Hugging Face Hub reads it, and its copies in ``model/`` and ``adapter/``.

The card's YAML front matter (``base_model``, ``pipeline_tag``, ``license``, ``datasets``,
``tags``, and the held-out scores as ``model-index`` results) is built with huggingface_hub's
``ModelCardData`` and ``EvalResult`` and the card with ``ModelCard``, so the metadata is what
the Hub's own parser reads back. What no library writes is the text that ties a run to it:
which Hub ids a run's base model and data have, and how PEFT loads a LoRA adapter whose head
is sized by the label space (PEFT loads the base from the adapter's config alone, which cannot
carry the label count, so the card's snippet passes the label mapping).

The card names no local path: the base model by its Hub id (or its directory's name), the data
by its Hub id or file name, so ``model/`` can be published as it is.
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from tunesmith.models.load import ResolvedModel
from tunesmith.runs import RunDir, atomic_write
from tunesmith.tasks.contract import Task

LICENSE = "unknown"
"""The card's license: the Hub's id for one not chosen yet. A fine-tuned model's license follows
from its base model's and its data's, which tunesmith cannot decide; edit the card to set it."""

PEFT_LOADERS = {
    "SEQ_CLS": "AutoPeftModelForSequenceClassification",
    "TOKEN_CLS": "AutoPeftModelForTokenClassification",
    "QUESTION_ANS": "AutoPeftModelForQuestionAnswering",
    "CAUSAL_LM": "AutoPeftModelForCausalLM",
    "SEQ_2_SEQ_LM": "AutoPeftModelForSeq2SeqLM",
}
"""PEFT's Auto class for each of its task types (``Task.peft_task_type``)."""
LABELLED_HEADS = frozenset({"SEQ_CLS", "TOKEN_CLS", None})
"""PEFT task types whose head has one output per label: the base model must be built with the
run's label mapping before the adapter's head fits it (None: image classifiers)."""
SKIPPED_SCORES = ("confidence_level", "temperature")


def portable_source(source: str) -> str:
    """A data source as the card names it: a Hub dataset (``hf:``) or packaged file as given, a
    local file by its name (its folder is of no use to a reader elsewhere)."""
    if source.startswith(("hf:", "package:")):
        return source
    return Path(source).name or source


def base_text(resolved: ResolvedModel) -> str:
    """The base model in the card's words: its Hub id, linked, a packaged model's title, or its
    local directory's name."""
    if resolved.hub_id:
        return f"[{resolved.hub_id}](https://huggingface.co/{resolved.hub_id})"
    if resolved.title:
        return f"{resolved.title} (an installed model package)"
    return f"a local model directory (`{Path(resolved.location).name}`)"


def _dataset(manifest: dict[str, Any], split: str) -> tuple[str | None, str, str | None]:
    """The Hub id (None for a local file), the name and the Hub config of the data ``split``
    came from: its own source, else the training data it was cut from."""
    entry = manifest["sources"].get(split, manifest["sources"]["train"])
    details = entry.get("dataset") or {}
    hub_id = details.get("id") if entry["source"].startswith("hf:") else None
    return hub_id, hub_id or Path(portable_source(entry["source"])).stem, details.get("config")


def eval_results(task: Task, metrics: dict[str, Any], manifest: dict[str, Any]) -> list[EvalResult]:
    """The scalar scores of the test and validation splits (the card's tables), one result each."""
    results = []
    for split in ("test", "validation"):
        hub_id, name, config = _dataset(manifest, split)
        for metric, value in metrics.get(split, {}).items():
            if isinstance(value, float) and math.isfinite(value) and metric not in SKIPPED_SCORES:
                results.append(EvalResult(
                    task_type=task.pipeline_tag, dataset_type=hub_id or name, dataset_name=name,
                    dataset_config=config, dataset_split=split, metric_type=metric, metric_value=value,
                ))  # fmt: skip
    return results


def card_metadata(task: Task, *, resolved: ResolvedModel, manifest: dict[str, Any], metrics: dict[str, Any],
                  name: str, strategy: str, adapter: bool = False) -> ModelCardData:  # fmt: skip
    """The card's front matter: for ``model/`` (a transformers model), or with ``adapter`` for
    ``adapter/`` (a PEFT adapter on the base model).

    Args:
        name: the model's name in ``model-index`` (the run directory's name).
        strategy: model.strategy, one of the tags.
    """
    datasets = sorted({hub_id for split in manifest["sources"] if (hub_id := _dataset(manifest, split)[0])})
    return ModelCardData(
        base_model=resolved.hub_id, library_name="peft" if adapter else "transformers", license=LICENSE,
        pipeline_tag=task.pipeline_tag, datasets=datasets or None, model_name=name,
        tags=["tunesmith", task.kind.replace("_", "-"), strategy] + (["peft", "lora"] if adapter else []),
        eval_results=eval_results(task, metrics, manifest) or None,
    )  # fmt: skip


def adapter_section(task: Task, resolved: ResolvedModel, model_config: Any, processor: str) -> str:
    """The card's section on ``adapter/``: what it is and how PEFT loads it.

    Args:
        model_config: the trained model's transformers config (its label mapping).
        processor: the transformers class of the model's input processing (``CardText.processor``).
    """
    head = ""
    if task.peft_task_type in LABELLED_HEADS:
        labels = {"id2label": dict(model_config.id2label), "label2id": dict(model_config.label2id)}
        if getattr(model_config, "problem_type", None):
            labels["problem_type"] = model_config.problem_type
        head = ", " + ", ".join(f"{key}={value!r}" for key, value in labels.items())
    if resolved.hub_id:
        base = f"its base model, {base_text(resolved)} (downloaded from the Hub)"
    else:
        base = (f"its base model, {base_text(resolved)}, which `adapter_config.json` names by the path it "
                "was trained from (it has no Hub id): edit `base_model_name_or_path` there where it lives "
                "elsewhere")  # fmt: skip
    loader = PEFT_LOADERS.get(task.peft_task_type)
    if loader:
        code = (f"from peft import {loader}\nfrom transformers import {processor}\n\n"
                f'model = {loader}.from_pretrained("adapter"{head})\n')  # fmt: skip
    else:
        code = (f"from peft import PeftConfig, PeftModel\nfrom transformers import {task.auto_class}, {processor}\n\n"
                f'base = {task.auto_class}.from_pretrained(PeftConfig.from_pretrained("adapter")'
                f".base_model_name_or_path{head})\n"
                'model = PeftModel.from_pretrained(base, "adapter")\n')  # fmt: skip
    code += f'{"tokenizer" if processor == "AutoTokenizer" else "processor"} = {processor}.from_pretrained("adapter")\n'
    why = (" The label mapping is passed because PEFT builds the base model from its own config, "
           "whose head would not fit the trained one." if head else "")  # fmt: skip
    return "\n".join([
        "## LoRA adapter\n",
        f"`adapter/` holds the LoRA adapter alone (its weights, the trained head, the {processor} "
        f"files and this card), applied to {base}.{why} The merged model in `model/` needs neither.\n",
        f"```python\n{code}```\n",
        "Pushed to the Hub (`tunesmith push`), the adapter is the repository's `adapter/` folder: fetch it "
        'with `huggingface_hub.snapshot_download(REPO_ID, allow_patterns="adapter/*")` and load that folder '
        "as above (PEFT would pass `subfolder=` on to the base model too).\n",
    ])  # fmt: skip


def hub_card(metadata: ModelCardData, body: str) -> str:
    """The card's text: YAML front matter from ``metadata``, then ``body`` (Markdown)."""
    return str(ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n{body}"))


def write_cards(run: RunDir, body: str, model: ModelCardData, adapter: ModelCardData | None) -> None:
    """Writes the card into the run directory, into ``model/`` and (for a LoRA run) into
    ``adapter/``, with the plots it names copied beside each copy, so each folder can be
    published alone."""
    card = hub_card(model, body)
    run.write_text("README.md", card)
    folders = [(run.model_dir, card)] + ([(run.path / "adapter", hub_card(adapter, body))] if adapter else [])
    pictures = sorted({name for name in re.findall(r"[\w.-]+\.png", body) if (run.path / name).is_file()})
    for folder, text in folders:
        for picture in pictures:
            shutil.copyfile(run.path / picture, folder / picture)  # a new file: the usual permissions
        atomic_write(folder / "README.md", text)
