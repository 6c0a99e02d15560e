"""The data stage: load -> select columns -> clean -> learn labels -> split -> balance."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import pandas as pd

from tunesmith.config import AugmentConfig, DataConfig
from tunesmith.data.augment import augment_frame
from tunesmith.data.balance import resample
from tunesmith.data.clean import clean_frame
from tunesmith.data.fix import drop_leaked, fix_frame, fix_label_errors
from tunesmith.data.load import detect_columns, read_table
from tunesmith.data.overlap import find_overlap
from tunesmith.data.split import split_frame
from tunesmith.errors import TunesmithError


@runtime_checkable
class LabelledTask(Protocol):
    """What the data stage (``prepare_data``) and ``inspect`` ask of a task whose rows are a text
    and a label (the classification and regression tasks of tasks/classification.py); the other
    kinds answer ``inspect`` through data.quality.InspectedTask (tests/test_stages.py). The task is
    passed in: data/ sits below tasks/ and does not import it."""

    stratify: bool
    """Whether splits keep the label distribution."""
    detects_label_errors: bool
    """Whether label-error detection (data.clean.label_errors) applies."""

    def check_labels(self, labels: pd.Series, source: str, rows: list[int] | None = None) -> None:
        """Refuses a label value the task cannot learn, naming its row."""
        ...

    def normalise_labels(self, labels: pd.Series, *, source: str = ..., rows: list[int] | None = None) -> pd.Series:
        """The labels in their canonical form; refuses a bad one, naming its row."""
        ...

    def classes_of(self, labels: pd.Series) -> pd.Series | None:
        """One entry per class a row carries, for counting; None when labels are numbers."""
        ...

    def fit_labels(self, train_labels: pd.Series, source: str) -> None:
        """Learns the label space from the training labels."""
        ...

    def encode_labels(self, labels: pd.Series, source: str) -> Any:
        """The labels as targets; refuses one outside the label space, naming ``source``."""
        ...

    def overlap_inputs(self, frame: pd.DataFrame) -> list[str]:
        """Each row's input, for the train/held-out overlap check."""
        ...


@dataclass
class PreparedData:
    """Clean ``text``/``label`` tables per split, and the manifest that describes them."""

    splits: dict[str, pd.DataFrame]
    manifest: dict[str, Any] = field(default_factory=dict)
    changes: list[dict] = field(default_factory=list)
    """One entry per row dropped or relabelled by cleaning (data/fix.py)."""


def load_examples(
    spec: str, config: DataConfig, task: LabelledTask, changes: list[dict] | None = None,
    similarity: float = 0.8,
) -> tuple[pd.DataFrame, dict]:  # fmt: skip
    """Reads one source into a clean table (text, label, row: the 1-based data row) and a
    manifest entry; what cleaning drops or relabels is appended to ``changes``."""
    table = read_table(spec, column_names=config.column_names, encoding_errors=config.encoding_errors)
    text_column, label_column = detect_columns(table.frame, config.text_column, config.label_column, table.source)
    frame = table.frame[[text_column, label_column]].set_axis(["text", "label"], axis=1)
    changes = [] if changes is None else changes
    frame, counts = clean_and_fix(frame, config, task, source=table.source, changes=changes, similarity=similarity)
    if frame.empty:
        raise TunesmithError(f"{table.source}: no usable rows left after cleaning ({counts})")
    if config.slice_column is not None:  # carried beside the text for per-slice evaluation
        if config.slice_column not in table.frame.columns:
            raise TunesmithError(
                f"data.slice_column={config.slice_column!r} is not a column of {table.source}; "
                f"columns: {list(table.frame.columns)}"
            )
        values = table.frame[config.slice_column].to_numpy()[frame["row"].to_numpy() - 1]
        frame = frame.assign(slice=["(missing)" if pd.isna(v) else str(v) for v in values])
    entry = {
        "source": table.source,
        "sha256": table.sha256,
        "columns": {"text": text_column, "label": label_column},
        "cleaning": counts,
        **table.manifest_fields(),
    }
    return frame, entry


def clean_and_fix(frame: pd.DataFrame, config: DataConfig, task: LabelledTask, *, source: str,
                  changes: list[dict], similarity: float) -> tuple[pd.DataFrame, dict[str, int]]:  # fmt: skip
    """data.clean on one table of text/label: cleaning, label normalisation, then the fixes of
    data/fix.py. Returns the table (with its ``row`` column) and counts per step."""
    basic = config.clean.model_dump(
        include={"normalize_whitespace", "drop_empty", "drop_missing_labels", "drop_duplicates"}
    )
    frame, counts = clean_frame(frame, source=source, changes=changes, **basic)
    before = len(changes)
    if not frame.empty:
        frame["label"] = task.normalise_labels(frame["label"], source=source, rows=frame["row"].tolist())
        frame = fix_frame(frame, config.clean, similarity=similarity, source=source, changes=changes)
    for entry in changes[before:]:
        key = f"{entry['action']}: {reason_kind(entry['reason'])}"
        counts[key] = counts.get(key, 0) + 1
    counts["rows_out"] = len(frame)
    return frame.drop(columns="copies", errors="ignore"), counts


def _distribution(frame: pd.DataFrame, task: LabelledTask) -> dict[str, Any]:
    """Rows per class, or the summary of numeric targets."""
    classes = task.classes_of(frame["label"])
    if classes is None:
        return number_summary(frame["label"])
    return classes.value_counts().sort_index().to_dict()


def number_summary(labels: pd.Series) -> dict[str, float]:
    """The mean, spread and range of numeric targets (the manifest's label summary of a regression)."""
    values = labels.astype(float)
    return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
            "max": float(values.max())}  # fmt: skip


def prepare_data(
    config: DataConfig,
    task: LabelledTask,
    *,
    seed: int,
    similarity: float = 0.8,
    find_label_errors: Callable[[pd.DataFrame], list[tuple[int, str, float]]] | None = None,
    synonyms: Callable[[set[str]], dict[str, list[str]]] | None = None,
    rehearsal: tuple[pd.DataFrame, str, float] | None = None,
) -> PreparedData:
    """Runs the whole data stage and fits the task's label set on the training split.

    Args:
        similarity: the near-duplicate threshold for data.clean's near-duplicate, conflict and
            leakage fixes.
        find_label_errors: finds likely label errors in a table, for data.clean.label_errors.
        synonyms: candidate synonyms of words, for data.augment's synonym and insert operations.
        rehearsal: (rows of an earlier task, their source, ratio): a seeded sample of
            ratio x the training rows is added to the training split (only), with its labels, so
            the model keeps practising the earlier task (forgetting.rehearsal).

    Raises:
        TunesmithError: any problem with the files, columns, labels or split sizes.
    """
    changes: list[dict] = []
    splits, sources = _load_splits(config, task, changes, similarity)
    splits |= _carve(splits, config, seed=seed, stratify=task.stratify)
    train_source = sources["train"]["source"]
    splits["train"] = _fix_train(splits, config, task, find_label_errors, source=train_source,
                                 similarity=similarity, changes=changes)  # fmt: skip
    if splits["train"].empty:
        raise TunesmithError(f"{train_source}: cleaning left no training rows (see the changelog)")
    rehearsed = None
    if rehearsal is not None:
        splits["train"], rehearsed = _rehearse(splits["train"], rehearsal, seed=seed)
    _fit_labels(task, splits, sources)

    balanced = resample(splits["train"], method=config.balance.method, seed=seed)
    manifest = {
        "sources": sources,
        "splits": {name: {"rows": len(frame), "labels": _distribution(frame, task)} for name, frame in splits.items()},
        "changes": dict(Counter(f"{c['action']}: {reason_kind(c['reason'])}" for c in changes)),
        "balance_method": config.balance.method,
    }
    manifest["overlap"] = {"splits": find_overlap(splits, task.overlap_inputs, sources=_source_files(sources)),
                           "remedy": "data.clean.drop_leaked=true drops the training rows that copy them"}  # fmt: skip
    if rehearsed is not None:
        manifest["rehearsal"] = rehearsed
    if len(balanced) != len(splits["train"]):
        manifest["balance"] = {
            "method": config.balance.method,
            "rows_before": len(splits["train"]),
            "rows_after": len(balanced),
            "labels_after": _distribution(balanced, task),
        }
        splits["train"] = balanced
    if config.augment.ratio > 0:
        splits["train"], manifest["augment"] = _augment(splits["train"], config.augment, synonyms, seed=seed)
        manifest["splits"]["train"] = {"rows": len(splits["train"]), "labels": _distribution(splits["train"], task)}
    return PreparedData(splits, manifest, changes)


def _load_splits(config: DataConfig, task: LabelledTask, changes: list[dict],
                 similarity: float) -> tuple[dict[str, pd.DataFrame], dict[str, dict]]:  # fmt: skip
    """The clean tables of the files given (train, and validation/test when set) and their
    manifest entries."""
    train, entry = load_examples(config.train, config, task, changes, similarity)
    splits, sources = {"train": train}, {"train": entry}
    for name in ("validation", "test"):
        spec = getattr(config, name)
        if spec is not None:
            splits[name], sources[name] = load_examples(spec, config, task, changes, similarity)
    return splits, sources


def _carve(
    splits: dict[str, pd.DataFrame], config: DataConfig, *, seed: int, stratify: bool
) -> dict[str, pd.DataFrame]:
    """Train (cut to data.max_rows first) split into train and the held-out splits that no
    file gives."""
    train = splits["train"]
    if config.max_rows is not None and len(train) > config.max_rows:
        train = split_frame(
            train, val_fraction=0, test_fraction=1 - config.max_rows / len(train), seed=seed, stratify=stratify
        )["train"]
    missing = {"test": config.test_fraction, "validation": config.val_fraction}
    carve = {name: fraction for name, fraction in missing.items() if name not in splits}
    return split_frame(
        train,
        val_fraction=carve.get("validation", 0.0),
        test_fraction=carve.get("test", 0.0),
        seed=seed,
        stratify=stratify,
    )


def _fix_train(splits: dict[str, pd.DataFrame], config: DataConfig, task: LabelledTask,
               find_label_errors: Callable[[pd.DataFrame], list[tuple[int, str, float]]] | None, *,
               source: str, similarity: float, changes: list[dict]) -> pd.DataFrame:  # fmt: skip
    """The training split without the rows that leak into held-out splits (data.clean.drop_leaked)
    and with its label errors dropped or relabelled (data.clean.label_errors)."""
    train = splits["train"]
    if config.clean.drop_leaked:
        held_out = {n: f for n, f in splits.items() if n != "train"}
        train = drop_leaked(train, held_out, similarity=similarity, source=source, changes=changes)
    if config.clean.label_errors != "keep":
        if find_label_errors is None or not task.detects_label_errors:
            raise TunesmithError("data.clean.label_errors needs a single_label task")
        train = fix_label_errors(train, config.clean.label_errors, find_label_errors, source=source, changes=changes)
    return train


def _rehearse(train: pd.DataFrame, rehearsal: tuple[pd.DataFrame, str, float], *,
              seed: int) -> tuple[pd.DataFrame, dict]:  # fmt: skip
    """Train with a seeded sample of an earlier task's rows added, and the manifest's note of it."""
    old, old_source, ratio = rehearsal
    count = min(len(old), max(1, round(ratio * len(train))))
    picked = old.sample(n=count, random_state=seed)[["text", "label"]]
    rehearsed = {"source": old_source, "rows": count, "ratio": ratio,
                 "labels": {str(k): int(v) for k, v in picked["label"].value_counts().items()}}  # fmt: skip
    return pd.concat([train, picked], ignore_index=True), rehearsed


def _fit_labels(task: LabelledTask, splits: dict[str, pd.DataFrame], sources: dict[str, dict]) -> None:
    """Fits the task's label space on train, then refuses a held-out label outside it."""
    task.fit_labels(splits["train"]["label"], sources["train"]["source"])
    for name in ("validation", "test"):
        if name in splits:
            source = sources.get(name, sources["train"])["source"]
            task.encode_labels(splits[name]["label"], f"{source} ({name} split)")


def _augment(train: pd.DataFrame, augment: AugmentConfig, synonyms: Callable[[set[str]], dict[str, list[str]]] | None,
             *, seed: int) -> tuple[pd.DataFrame, dict]:  # fmt: skip
    """Train with data.augment's new rows added, and the manifest's counts of them."""
    words = {w.lower() for t in train["text"] for w in t.split()}
    needs_synonyms = {"synonym", "insert"} & set(augment.operations)
    neighbours = synonyms(words) if needs_synonyms and synonyms is not None else {}
    augmented, counts = augment_frame(
        train, ratio=augment.ratio, operations=augment.operations, word_share=augment.word_share,
        char_share=augment.char_share, neighbours=neighbours, seed=seed,
    )  # fmt: skip
    summary = {"rows_before": len(train), **counts, "rows_after": len(augmented),
               "words_with_synonyms": len(neighbours)}  # fmt: skip
    return augmented, summary


def _source_files(sources: dict[str, dict]) -> dict[str, str]:
    return {name: entry["source"] for name, entry in sources.items()}


def reason_kind(reason: str) -> str:
    """A changelog reason without its row-specific details, for counting ("exact duplicate of
    row 4" -> "exact duplicate")."""
    for marker in (" (", " of row", " among", ":"):
        reason = reason.split(marker)[0]
    return reason


def prepare_records(config: DataConfig, *, seed: int, load: Callable[[str, DataConfig], tuple[pd.DataFrame, dict]],
                    inputs: Callable[[pd.DataFrame], list[str]] | None = None,
                    stratify: bool | None = None) -> PreparedData:  # fmt: skip
    """The data stage for tasks that read their own records (causal LM, seq2seq, token
    classification, question answering, images): load each source with ``load`` (the task's
    ``load``: records, source/target pairs, sentences, ...), then random train/validation/test
    splits (whole groups at a time when the table has a ``group`` column, e.g. questions on one
    paragraph). ``inputs`` (the task's ``overlap_inputs``) gives each row's input, to count the
    held-out rows whose input is also in train. ``stratify``: split keeping the ``label`` shares
    (None: whenever the table has a ``label`` column; False for numeric targets).

    Raises:
        TunesmithError: any problem with the files, records or split sizes (naming the record).
    """
    train, entry = load(config.train, config)
    changes = entry.pop("changes", [])  # rows a loader skipped (unreadable images), for the changelog
    sources, splits = {"train": entry}, {"train": train}
    for name in ("validation", "test"):
        spec = getattr(config, name)
        if spec is not None:
            splits[name], sources[name] = load(spec, config)
            changes += sources[name].pop("changes", [])
    if config.max_rows is not None and len(train) > config.max_rows:
        train = train.sample(n=config.max_rows, random_state=seed).sort_index().reset_index(drop=True)
    carve = {name: getattr(config, f"{'val' if name == 'validation' else name}_fraction")
             for name in ("test", "validation") if name not in splits}  # fmt: skip
    splits |= split_frame(
        train, val_fraction=carve.get("validation", 0.0), test_fraction=carve.get("test", 0.0), seed=seed,
        stratify="label" in train.columns if stratify is None else stratify,
        groups="group" if "group" in train.columns else None,
    )  # fmt: skip
    manifest = {"sources": sources, "splits": {name: {"rows": len(frame)} for name, frame in splits.items()}}
    if "label" in train.columns:
        for name, frame in splits.items():
            manifest["splits"][name]["labels"] = (
                {str(k): int(v) for k, v in frame["label"].value_counts().items()} if stratify is not False
                else number_summary(frame["label"])
            )  # fmt: skip
    if changes:
        manifest["changes"] = {"skipped": len(changes)}
    if inputs is not None:
        manifest["overlap"] = {"splits": find_overlap(splits, inputs, sources=_source_files(sources)),
                               "remedy": "keep each input in one split only (data_manifest.json lists examples)"}  # fmt: skip
    return PreparedData(splits, manifest, changes)
