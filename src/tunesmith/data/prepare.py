"""The data stage: load -> select columns -> clean -> learn labels -> split -> balance."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from tunesmith.config import DataConfig
from tunesmith.data.balance import resample
from tunesmith.data.clean import clean_frame
from tunesmith.data.load import detect_columns, read_table
from tunesmith.data.split import split_frame
from tunesmith.errors import TunesmithError
from tunesmith.tasks.classification import TextClassificationTask


@dataclass
class PreparedData:
    """Clean ``text``/``label`` tables per split, and the manifest that describes them."""

    splits: dict[str, pd.DataFrame]
    manifest: dict[str, Any] = field(default_factory=dict)


def load_examples(spec: str, config: DataConfig, task: TextClassificationTask) -> tuple[pd.DataFrame, dict]:
    """Reads one source into a clean two-column table (text, label) and a manifest entry."""
    table = read_table(spec, column_names=config.column_names, encoding_errors=config.encoding_errors)
    text_column, label_column = detect_columns(table.frame, config.text_column, config.label_column, table.source)
    frame = table.frame[[text_column, label_column]].set_axis(["text", "label"], axis=1)
    frame, counts = clean_frame(frame, source=table.source, **config.clean.model_dump())
    if frame.empty:
        raise TunesmithError(f"{table.source}: no usable rows left after cleaning ({counts})")
    frame["label"] = task.normalise_labels(frame["label"])
    entry = {
        "source": table.source,
        "sha256": table.sha256,
        "columns": {"text": text_column, "label": label_column},
        "cleaning": counts,
        "replaced_characters": table.replaced_characters,
    }
    return frame, entry


def _distribution(frame: pd.DataFrame, task: TextClassificationTask) -> dict[str, Any]:
    if task.type == "regression":
        values = frame["label"].astype(float)
        return {
            "mean": float(values.mean()),
            "std": float(values.std()),
            "min": float(values.min()),
            "max": float(values.max()),
        }
    if task.type == "multi_label":
        labels = frame["label"].str.split(task.label_separator, regex=False).explode()
        return labels.value_counts().sort_index().to_dict()
    return frame["label"].value_counts().sort_index().to_dict()


def prepare_data(config: DataConfig, task: TextClassificationTask, *, seed: int) -> PreparedData:
    """Runs the whole data stage and fits the task's label set on the training split.

    Raises:
        TunesmithError: any problem with the files, columns, labels or split sizes.
    """
    train, train_entry = load_examples(config.train, config, task)
    sources = {"train": train_entry}
    splits = {"train": train}
    for name in ("validation", "test"):
        spec = getattr(config, name)
        if spec is not None:
            splits[name], sources[name] = load_examples(spec, config, task)

    stratify = task.type == "single_label"
    if config.max_rows is not None and len(train) > config.max_rows:
        train = split_frame(
            train, val_fraction=0, test_fraction=1 - config.max_rows / len(train), seed=seed, stratify=stratify
        )["train"]
    missing = {"test": config.test_fraction, "validation": config.val_fraction}
    carve = {name: fraction for name, fraction in missing.items() if name not in splits}
    carved = split_frame(
        train,
        val_fraction=carve.get("validation", 0.0),
        test_fraction=carve.get("test", 0.0),
        seed=seed,
        stratify=stratify,
    )
    splits |= carved
    task.fit_labels(splits["train"]["label"], sources["train"]["source"])
    for name in ("validation", "test"):
        if name in splits:
            source = sources.get(name, sources["train"])["source"]
            task.encode(splits[name]["label"], f"{source} ({name} split)")

    balanced = resample(splits["train"], method=config.balance.method, seed=seed)
    manifest = {
        "sources": sources,
        "splits": {name: {"rows": len(frame), "labels": _distribution(frame, task)} for name, frame in splits.items()},
    }
    if len(balanced) != len(splits["train"]):
        manifest["balance"] = {
            "method": config.balance.method,
            "rows_before": len(splits["train"]),
            "rows_after": len(balanced),
        }
        splits["train"] = balanced
    return PreparedData(splits, manifest)


def load_records(spec: str, config: DataConfig) -> tuple[pd.DataFrame, dict]:
    """Reads one source of generative records into ``messages``/``record`` rows (exact
    duplicates dropped when data.clean.drop_duplicates) and a manifest entry. The text is kept
    as written: whitespace can matter in a completion."""
    from tunesmith.tasks.causal_lm import detect_format, records_frame

    table = read_table(spec, column_names=config.column_names, encoding_errors=config.encoding_errors)
    fmt = detect_format(list(table.frame.columns), config.format, table.source)
    frame = records_frame(table.frame, fmt, table.source)
    counts = {"rows_in": len(frame), "exact_duplicates": int(frame["messages"].duplicated().sum())}
    if config.clean.drop_duplicates:
        frame = frame.drop_duplicates("messages").reset_index(drop=True)
    counts["rows_out"] = len(frame)
    entry = {
        "source": table.source,
        "sha256": table.sha256,
        "format": fmt,
        "cleaning": counts,
        "replaced_characters": table.replaced_characters,
    }
    return frame, entry


def load_pairs(spec: str, config: DataConfig) -> tuple[pd.DataFrame, dict]:
    """Reads one source of seq2seq pairs into ``source``/``target``/``record`` rows (exact
    duplicate pairs dropped when data.clean.drop_duplicates) and a manifest entry."""
    from tunesmith.tasks.seq2seq import detect_pair, pairs_frame

    table = read_table(spec, column_names=config.column_names, encoding_errors=config.encoding_errors)
    columns = detect_pair(list(table.frame.columns), config.text_column, config.label_column, table.source)
    frame = pairs_frame(table.frame, *columns, table.source)
    counts = {"rows_in": len(frame), "exact_duplicates": int(frame.duplicated(["source", "target"]).sum())}
    if config.clean.drop_duplicates:
        frame = frame.drop_duplicates(["source", "target"]).reset_index(drop=True)
    counts["rows_out"] = len(frame)
    entry = {"source": table.source, "sha256": table.sha256, "columns": dict(zip(("source", "target"), columns)),
             "cleaning": counts, "replaced_characters": table.replaced_characters}  # fmt: skip
    return frame, entry


def prepare_records(config: DataConfig, *, seed: int, pairs: bool = False) -> PreparedData:
    """The data stage for generative tasks: load records (causal_lm) or source/target pairs
    (seq2seq), then random train/validation/test splits.

    Raises:
        TunesmithError: any problem with the files, records or split sizes (naming the record).
    """
    load = load_pairs if pairs else load_records
    train, entry = load(config.train, config)
    sources, splits = {"train": entry}, {"train": train}
    for name in ("validation", "test"):
        spec = getattr(config, name)
        if spec is not None:
            splits[name], sources[name] = load(spec, config)
    if config.max_rows is not None and len(train) > config.max_rows:
        train = train.sample(n=config.max_rows, random_state=seed).sort_index().reset_index(drop=True)
    carve = {name: getattr(config, f"{'val' if name == 'validation' else name}_fraction")
             for name in ("test", "validation") if name not in splits}  # fmt: skip
    splits |= split_frame(
        train, val_fraction=carve.get("validation", 0.0), test_fraction=carve.get("test", 0.0), seed=seed,
        stratify=False,
    )  # fmt: skip
    manifest = {"sources": sources, "splits": {name: {"rows": len(frame)} for name, frame in splits.items()}}
    return PreparedData(splits, manifest)
