"""Sequence-to-sequence fine-tuning (T5/BART-style encoder-decoders): summarization and
translation from source/target columns, scored by generating on held-out pairs."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from tunesmith.config import Config, DataConfig, GenerationConfig
from tunesmith.data.batching import eval_batches
from tunesmith.data.load import read_table
from tunesmith.data.prepare import PreparedData, prepare_records
from tunesmith.data.quality import Finding, InspectionRecords, TokenLengths, looks_cut
from tunesmith.errors import TunesmithError
from tunesmith.models.load import (
    ResolvedModel,
    load_seq2seq,
    load_trained_model,
    pad_token_id,
    text_processor,
)
from tunesmith.tasks.causal_lm import (
    generation_limitation,
    generation_predictions,
    model_device,
    perplexity_metrics,
    report_generations,
    rows_to_generate,
)
from tunesmith.tasks.contract import CHAT_NOTE, CardText, Encoded, ScoreContext, Watch
from tunesmith.tasks.inputs import check_texts, read_texts
from tunesmith.tasks.monitoring import EMPTY_OUTPUTS, OUTPUT_LENGTH, generated_values, pooled

IGNORE = -100
# Column pairs recognised without data.text_column / data.label_column, in order of preference.
PAIRS = [("source", "target"), ("document", "summary"), ("article", "highlights"), ("article", "summary"),
         ("text", "summary"), ("input", "output"), ("src", "tgt")]  # fmt: skip


def detect_pair(columns: list[str], source_column: str | None, target_column: str | None, where: str):
    """(source column, target column): the configured names, or the first known pair present."""
    if source_column or target_column:
        for role, name in (("text", source_column), ("label", target_column)):
            if name is None:
                raise TunesmithError(f"{where}: set both data.text_column (source) and data.label_column (target)")
            if name not in columns:
                raise TunesmithError(f"{where}: no column {name!r} (data.{role}_column); the columns are {columns}")
        return source_column, target_column
    for pair in PAIRS:
        if all(c in columns for c in pair):
            return pair
    raise TunesmithError(
        f"{where}: cannot tell the source and target columns from {columns}; name them with "
        "data.text_column (source) and data.label_column (target)"
    )


def pairs_frame(frame: pd.DataFrame, source_column: str, target_column: str, where: str) -> pd.DataFrame:
    """The canonical table: ``source``, ``target`` and ``record`` (1-based row in the file).

    Raises:
        TunesmithError: an empty or missing source or target, naming the record.
    """
    rows = []
    for number, (source, target) in enumerate(zip(frame[source_column], frame[target_column]), 1):
        for role, value in (("source", source), ("target", target)):
            if value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip():
                raise TunesmithError(f"{where}, record {number}: the {role} is missing or empty")
        rows.append({"source": str(source), "target": str(target), "record": number})
    return pd.DataFrame(rows)


def load_pairs(spec: str, config: DataConfig) -> tuple[pd.DataFrame, dict]:
    """Reads one source of pairs into ``source``/``target``/``record`` rows (exact duplicate
    pairs dropped when data.clean.drop_duplicates) and a manifest entry.

    Raises:
        TunesmithError: an unreadable source, unknown columns or an empty source or target
            (naming the record).
    """
    table = read_table(spec, column_names=config.column_names, encoding_errors=config.encoding_errors)
    columns = detect_pair(list(table.frame.columns), config.text_column, config.label_column, table.source)
    frame = pairs_frame(table.frame, *columns, table.source)
    counts = {"rows_in": len(frame), "exact_duplicates": int(frame.duplicated(["source", "target"]).sum())}
    if config.clean.drop_duplicates:
        frame = frame.drop_duplicates(["source", "target"]).reset_index(drop=True)
    counts["rows_out"] = len(frame)
    entry = {"source": table.source, "sha256": table.sha256, "columns": dict(zip(("source", "target"), columns)),
             "cleaning": counts, **table.manifest_fields()}  # fmt: skip
    return frame, entry


def encode_pairs(
    tokenizer, sources: list[str], targets: list[str], *, prefix: str, max_length: int, max_target_length: int
) -> tuple[list[dict], int]:
    """Tokenizes sources (with the task prefix) and targets once; every target ends with EOS.

    Returns:
        Features (input_ids, labels) and how many pairs had their source or target truncated.
    """
    inputs = tokenizer([prefix + s for s in sources], truncation=True, max_length=max_length)["input_ids"]
    full = tokenizer([prefix + s for s in sources])["input_ids"]
    labels = tokenizer(text_target=targets)["input_ids"]
    eos = tokenizer.eos_token_id
    features, truncated = [], 0
    for ids, whole, target in zip(inputs, full, labels):
        if eos is not None and (not target or target[-1] != eos):
            target = target + [eos]  # T5 and BART tokenizers add it themselves; others do not
        cut = len(whole) > len(ids) or len(target) > max_target_length
        if len(target) > max_target_length:
            target = target[: max_target_length - 1] + ([eos] if eos is not None else target[-1:])
        truncated += cut
        features.append({"input_ids": ids, "labels": target})
    return features, truncated


def collate_pairs(features: list[dict], pad_token_id: int) -> dict:
    longest = max(len(f["input_ids"]) for f in features)
    longest_target = max(len(f["labels"]) for f in features)
    return {
        "input_ids": torch.tensor([f["input_ids"] + [pad_token_id] * (longest - len(f["input_ids"])) for f in features]),
        "attention_mask": torch.tensor([[1] * len(f["input_ids"]) + [0] * (longest - len(f["input_ids"]))
                                        for f in features]),
        "labels": torch.tensor([f["labels"] + [IGNORE] * (longest_target - len(f["labels"])) for f in features]),
        "num_examples": len(features),
        "num_tokens": sum(len(f["input_ids"]) + len(f["labels"]) for f in features),
    }  # fmt: skip


def token_losses(model, batch: dict, device) -> torch.Tensor:
    """Per-token losses of the target tokens (teacher forcing: the model shifts the labels)."""
    labels = batch["labels"].to(device)
    logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                   labels=labels, use_cache=False).logits  # fmt: skip
    keep = labels != IGNORE
    return F.cross_entropy(logits[keep].float(), labels[keep], reduction="none")


@dataclass
class Seq2SeqTask:
    """Fine-tuning of an encoder-decoder (T5, BART) on source/target pairs: the whole task
    contract (tasks/contract.py) for ``task.type=seq2seq``.

    Attributes:
        prefix: task.source_prefix, put before every source ("summarize: ").
        max_length: model.max_length, for sources.
        max_target_length: model.max_target_length, for targets.
        generation: how held-out pairs and predict generate.
    """

    prefix: str = ""
    max_length: int = 512
    max_target_length: int = 128
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    type: ClassVar[str] = "seq2seq"
    kind: ClassVar[str] = "seq2seq"
    stages: ClassVar[frozenset[str]] = frozenset(
        {"evaluate", "predict", "retrain", "cv", "inspect", "tune", "serve", "monitor", "export", "forgetting"}
    )
    export_formats: ClassVar[frozenset[str]] = frozenset({"hf"})
    """export writes the merged transformers directory (no ONNX: generation loops over the model)."""
    default_metric: ClassVar[tuple[str, str]] = ("loss", "min")
    metric_names: ClassVar[list[str]] = ["loss", "perplexity"]
    peft_task_type: ClassVar[str | None] = "SEQ_2_SEQ_LM"
    auto_class: ClassVar[str] = "AutoModelForSeq2SeqLM"
    pipeline_tag: ClassVar[str] = "text2text-generation"
    calibrates: ClassVar[bool] = False
    stratify: ClassVar[bool] = False
    forgetting_probe: ClassVar[str | None] = "embedding"  # a probe on the encoder's features
    stage_notes: ClassVar[dict[str, str]] = {"chat": CHAT_NOTE}

    @classmethod
    def from_config(cls, config: Config, saved: dict[str, Any] | None = None) -> Seq2SeqTask:
        """The task for a config; ``saved`` (task.json) adds nothing the config lacks."""
        return cls(prefix=config.task.source_prefix, max_length=config.model.max_length,
                   max_target_length=config.model.max_target_length, generation=config.generation)  # fmt: skip

    @property
    def label_names(self) -> list[str]:
        """None: a generative task has no label space."""
        return []

    # -- data ----------------------------------------------------------------------------
    def prepare(self, config: Config, *, find_label_errors: Callable | None = None) -> PreparedData:
        """Reads every source of pairs and splits them at random (no labels to stratify by)."""
        return prepare_records(config.data, seed=config.runtime.seed, load=self.read, inputs=self.overlap_inputs)

    def read(self, spec: str, data: DataConfig) -> tuple[pd.DataFrame, dict]:
        """One source's pairs and its manifest entry (see ``load_pairs``)."""
        return load_pairs(spec, data)

    def overlap_inputs(self, frame: pd.DataFrame) -> list[str]:
        """Each pair's source text (for the train/held-out overlap check)."""
        return frame["source"].tolist()

    def fit(self, train: pd.DataFrame) -> None:
        """Nothing to learn from the rows: the model has no label space."""

    def groups(self, frame: pd.DataFrame) -> np.ndarray | None:
        """None: pairs stand alone (cv.group_column groups them)."""
        return None

    def source_rows(self, frame: pd.DataFrame) -> np.ndarray | None:
        """Each pair's position in its table (``record`` is 1-based)."""
        return frame["record"].to_numpy() - 1

    def write_records(self, frame: pd.DataFrame, directory: Path, name: str) -> tuple[Path, dict[str, Any]]:
        """A Parquet table of ``source`` and ``target``."""
        path = directory / f"{name}.parquet"
        frame[["source", "target"]].to_parquet(path, index=False)
        return path, {"text_column": "source", "label_column": "target", "column_names": None}

    # -- model ---------------------------------------------------------------------------
    def load_processor(self, resolved: ResolvedModel, *, trained: bool = False) -> Any:
        """The tokenizer, checked against model.max_length; a trained run's as saved."""
        return text_processor(resolved, max_length=self.max_length, trained=trained)

    def load_model(self, resolved: ResolvedModel, dropout: float | None) -> tuple[Any, list[str]]:
        """The pretrained encoder-decoder with its own language-model head (no new parameters, normally)."""
        return load_seq2seq(resolved, dropout=dropout)

    def load_trained(self, model_dir: Path) -> Any:
        """A trained run's model (``auto_class``) from its ``model/`` directory."""
        return load_trained_model(self.auto_class, model_dir)

    # -- training ------------------------------------------------------------------------
    def encode(self, processor: Any, splits: dict[str, pd.DataFrame]) -> Encoded:
        """Each split's pairs tokenized once (see ``encode_pairs``)."""
        encoded = Encoded(features={}, truncated={})
        for name, frame in splits.items():
            features, truncated = encode_pairs(processor, frame["source"].tolist(), frame["target"].tolist(),
                                               prefix=self.prefix, max_length=self.max_length,
                                               max_target_length=self.max_target_length)  # fmt: skip
            encoded.features[name], encoded.truncated[name] = features, truncated
            if truncated:
                encoded.notes.append(f"{name}: {truncated} of {len(frame)} pairs truncated (source {self.max_length}, "
                                     f"target {self.max_target_length} tokens)")  # fmt: skip
        return encoded

    def collate(self, features: list[dict], pad_token_id: int) -> dict:
        return collate_pairs(features, pad_token_id)

    def count(self, features: list[dict]) -> int:
        return sum(len(f["labels"]) for f in features)

    def batch_loss(self, model, batch: dict, device) -> torch.Tensor:
        return token_losses(model, batch, device).sum()

    def evaluate(self, model, features: list[dict], *, batch_size: int, pad_token_id: int, device) -> dict[str, Any]:
        return perplexity_metrics(
            model, features, batch_size, lambda batch: token_losses(model, collate_pairs(batch, pad_token_id), device)
        )

    # -- evaluation ----------------------------------------------------------------------
    def calibrate(self, model, processor, features: list[dict], *, batch_size: int, device) -> float | None:
        """None: temperature scaling is for a classifier's probabilities."""
        return None

    def score(self, model, processor, frame: pd.DataFrame, features: list[dict],
              context: ScoreContext) -> dict[str, Any]:  # fmt: skip
        """Loss and perplexity on every pair; with ``context.generate``, generation metrics (with
        bootstrap intervals) on up to generation.max_examples pairs, whose generations go to
        ``context.artifact("generations", ".jsonl")``."""
        metrics = self.evaluate(model, features, batch_size=context.batch_size, pad_token_id=pad_token_id(processor),
                                device=context.device)  # fmt: skip
        sources, references = frame["source"].astype(str).tolist(), frame["target"].astype(str).tolist()
        if not context.generate:
            context.predictions(generation_predictions(sources, references, [], {}))
            return metrics
        rows, path = rows_to_generate(frame, self.generation, context)
        count = len(rows)
        predictions = self.generate(model, processor, sources[:count], device=context.device)
        found, scores = report_generations(path, rows["record"].tolist(), sources[:count], references[:count],
                                           predictions, context)  # fmt: skip
        context.predictions(generation_predictions(sources, references, predictions, scores))
        return metrics | found

    @torch.no_grad()
    def generate(self, model, tokenizer, sources: list[str], *, device="cpu") -> list[str]:
        """Generated targets for source texts, in order (the task prefix is added here)."""
        was_training = model.training
        model.eval()
        out = [""] * len(sources)
        settings = self.generation
        encoded = tokenizer([self.prefix + s for s in sources], truncation=True, max_length=self.max_length)[
            "input_ids"
        ]
        options = {"max_new_tokens": settings.max_new_tokens, "num_beams": settings.num_beams,
                   "do_sample": settings.do_sample}  # fmt: skip
        if settings.do_sample:
            options |= {"temperature": settings.temperature, "top_p": settings.top_p}
        for indices in eval_batches([len(e) for e in encoded], batch_size=settings.batch_size):
            batch = collate_pairs([{"input_ids": encoded[i], "labels": [0]} for i in indices], pad_token_id(tokenizer))
            generated = model.generate(input_ids=batch["input_ids"].to(device),
                                       attention_mask=batch["attention_mask"].to(device), **options)  # fmt: skip
            for row, i in enumerate(indices):
                out[i] = tokenizer.decode(generated[row], skip_special_tokens=True).strip()
        model.train(was_training)
        return out

    # -- prediction ----------------------------------------------------------------------
    def predict(self, model, processor, inputs: list, *, temperature: float | None = None) -> list[dict]:
        """The generated target of each source text: ``{"source", "generated"}`` rows.

        Raises:
            TunesmithError: an input that is not a text, naming its number.
        """
        texts = check_texts(inputs, self.kind)
        outputs = self.generate(model, processor, texts, device=model_device(model))
        return [{"source": text, "generated": generated} for text, generated in zip(texts, outputs)]

    def read_inputs(self, path: Path) -> list:
        """The sources of a prediction input file (one per line of .txt, or a table's text column)."""
        return read_texts(path)

    # -- shipping ------------------------------------------------------------------------
    def export_description(self) -> dict[str, Any]:
        """What an export reads (for its ``tunesmith.json``)."""
        return {
            "inputs": f"token ids of source texts (task.source_prefix {self.prefix!r} put before each)",
            "text_normalisation": None,
        }

    def card(self, manifest: dict[str, Any], max_length: int, truncated_train: int) -> CardText:
        """The model card's generative wording: what it generates, the data's format, and the limits."""
        return CardText(
            title="Sequence-to-sequence model",
            purpose="It generates a target text (a summary, a translation) for a source text.",
            data=f"Columns: {manifest['sources']['train'].get('columns')}.",
            limitation=generation_limitation(max_length, truncated_train),
            usage='`tunesmith predict RUN_DIR --text "..."`.',
        )

    # -- monitoring (tunesmith monitor; tasks.contract.Monitored) ---------------------------
    watches: ClassVar[tuple[Watch, ...]] = (OUTPUT_LENGTH, EMPTY_OUTPUTS)

    def monitor_inputs(self, frame: pd.DataFrame) -> list:
        """Each pair's source text."""
        return frame["source"].astype(str).tolist()

    def monitor_texts(self, inputs: list) -> list[str]:
        """The source texts themselves."""
        return check_texts(inputs, self.kind)

    def embed(self, model: Any, processor: Any, inputs: list) -> np.ndarray:
        """The encoder's mean-pooled states over each source, with the task prefix (as generated)."""
        sources = [self.prefix + text for text in check_texts(inputs, self.kind)]
        return pooled(model.get_encoder(), processor, sources, max_length=self.max_length)

    def watched_values(self, row: dict[str, Any]) -> dict[str, Any]:
        """The generated text's length in words, and whether it is empty."""
        return generated_values(row["generated"])

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "prefix": self.prefix, "label_names": []}

    # -- inspect -------------------------------------------------------------------------
    def inspection_records(self, spec: str, data: DataConfig) -> InspectionRecords:
        """One source's pairs for ``tunesmith inspect`` (data.quality.InspectedTask): sources
        compared for duplicates and leakage, targets as what they teach, and as findings the
        pairs with an empty source or target (training refuses them) and targets that seem cut
        mid-sentence."""
        table = read_table(spec, column_names=data.column_names, encoding_errors=data.encoding_errors)
        columns = detect_pair(list(table.frame.columns), data.text_column, data.label_column, table.source)
        kept: list[tuple[int, str, str]] = []
        findings: list[Finding] = []
        for number, (source, target) in enumerate(zip(table.frame[columns[0]], table.frame[columns[1]]), 1):
            where = f"{table.source}, record {number}"
            empty = [
                role
                for role, value in (("source", source), ("target", target))
                if value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip()
            ]
            if empty:
                findings.append(Finding(f"empty {empty[0]}", number, where, f"the {' and '.join(empty)} is missing or "
                                        "empty", "error", "training refuses the file"))  # fmt: skip
                continue
            if looks_cut(str(target)):
                ending = str(target).rstrip()[-60:]
                findings.append(Finding("target looks cut", number, where, f"it ends {ending!r}", "warning",
                                        "the model learns to stop mid-sentence: complete or drop it"))  # fmt: skip
            kept.append((number, str(source), str(target)))
        frame = pd.DataFrame(kept, columns=["record", "source", "target"])
        return InspectionRecords(source=table.source, rows=frame["record"].tolist(),
                                 where=[f"{table.source}, record {n}" for n in frame["record"]],
                                 texts=frame["source"].tolist(), targets=frame["target"].tolist(),
                                 findings=findings, frame=frame)  # fmt: skip

    def inspection_lengths(self, processor: Any, records: InspectionRecords) -> list[TokenLengths]:
        """Tokens of each source (with task.source_prefix) against model.max_length, and of each
        target (with its end-of-sequence token, as trained) against model.max_target_length."""
        frame = records.frame
        sources = processor([self.prefix + s for s in frame["source"]])["input_ids"] if len(frame) else []
        targets = processor(text_target=frame["target"].tolist())["input_ids"] if len(frame) else []
        eos = processor.eos_token_id
        return [
            TokenLengths("source", [len(ids) for ids in sources], self.max_length,
                         "cut to model.max_length: the model never reads its end"),
            TokenLengths("target", [len(ids) + (eos is not None and (not ids or ids[-1] != eos)) for ids in targets],
                         self.max_target_length, "cut to model.max_target_length: its end is never learned"),
        ]  # fmt: skip
