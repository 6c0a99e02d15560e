"""`tunesmith inspect`: what is wrong with the data, found before any compute is spent on it.

Reads the data as training would (a config's files, or data files given directly), without
cleaning it, and writes report.json (every finding), report.html (tables and plots) and a
summary in the terminal. Rows are named by their 1-based data row in their file.

Two kinds of task are inspected. A text classifier (``data.prepare.LabelledTask``: one text
column and a label) gets the table checks: junk text, control characters, label kinds and
label errors. A task that reads its own records (``data.quality.InspectedTask``: sentences,
questions, instruction records, source/target or text pairs) hands over what its model reads,
what each record teaches, its labels and its token lengths, with findings of its own (an
answer not in its context, an entity that starts with I-, an empty or cut completion); the
generic checks (duplicates, near-duplicates, leakage, lengths, the label distribution) are the
same for both.
"""

from __future__ import annotations

import base64
import html
import json
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunesmith.config import Config
from tunesmith.data import label_errors as le
from tunesmith.data import quality
from tunesmith.data.clean import is_missing
from tunesmith.data.fix import drop_leaked, fix_label_errors
from tunesmith.data.label_errors import FitFold, label_error_finder
from tunesmith.data.load import (
    CONTROL_CHARACTERS,
    control_character_cells,
    describe_characters,
    detect_columns,
    read_table,
)
from tunesmith.data.prepare import LabelledTask, clean_and_fix, reason_kind
from tunesmith.data.quality import InspectedTask, InspectionRecords, TokenLengths
from tunesmith.errors import TunesmithError
from tunesmith.runs import atomic_write, claim_output


@dataclass
class Table:
    """One data file as read: the whole frame and its text/label columns as ``text``/``label``."""

    name: str
    source: str
    raw: pd.DataFrame
    text_column: str
    label_column: str

    @property
    def frame(self) -> pd.DataFrame:
        text = self.raw[self.text_column].map(lambda v: "" if is_missing(v) else str(v))
        return pd.DataFrame({"text": text, "label": self.raw[self.label_column]})


def load_tables(config: Config, files: list[str] | None, *, control_characters: str = "keep") -> list[Table]:
    """The tables to inspect: the files given (the first is the training data, the others are
    named by their file name), or the config's train/validation/test files. Control characters
    are kept as read (for the report) unless ``control_characters="replace"`` (as training)."""
    data = config.data
    tables = []
    for name, spec in named_sources(config, files):
        table = read_table(spec, column_names=data.column_names, encoding_errors=data.encoding_errors,
                           control_characters=control_characters)  # fmt: skip
        text_column, label_column = detect_columns(table.frame, data.text_column, data.label_column, table.source)
        tables.append(Table(name, table.source, table.frame, text_column, label_column))
    return tables


def named_sources(config: Config, files: list[str] | None) -> list[tuple[str, str]]:
    """(split name, source) to inspect: the files given (the first is "train", the others are
    named by their file name, primed where two share one), or the config's data files."""
    data = config.data
    if files:
        named = [("train", files[0])] + [(Path(f).stem, f) for f in files[1:]]
    else:
        named = [(n, getattr(data, n)) for n in ("train", "validation", "test") if getattr(data, n) is not None]
    unique, seen = [], set()
    for name, spec in named:
        while name in seen:
            name += "'"
        seen.add(name)
        unique.append((name, spec))
    return unique


def _rows(frame: pd.DataFrame, positions) -> list[int]:
    """The rows at these positions as the user numbers them: a table's ``row`` column (a
    record's number in its file), else the 1-based position (a data row)."""
    if "row" in frame.columns:
        return [int(frame["row"].iat[int(p)]) for p in positions]
    return [int(p) + 1 for p in positions]


def _text(frame: pd.DataFrame, position: int, limit: int = 300) -> str:
    return _clip(frame["text"].iat[position], limit)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Progress:
    """rich progress bars on stderr, or nothing."""

    def __init__(self, console, enabled: bool) -> None:
        if console is None:
            from rich.console import Console

            console = Console(stderr=True)
        # Not a terminal (a log file, CI): no bars, which would only print blank lines there.
        self.console, self.enabled = console, enabled and console.is_terminal

    @contextmanager
    def task(self, description: str, total: int):
        if not self.enabled or total == 0:
            yield lambda n: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=self.console, transient=True) as bar:  # fmt: skip
            handle = bar.add_task(description, total=total)
            yield lambda n: bar.advance(handle, n)


def inspect_data(
    config: Config,
    files: list[str] | None,
    out_dir: Path,
    *,
    task: LabelledTask | InspectedTask,
    fit_fold: FitFold | None = None,
    console=None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs every check and writes report.json and report.html into ``out_dir`` (new, or an
    empty directory). Returns the report.

    Args:
        task: the config's task (``tasks.build_task(config)``): a task that reads its own records
            (``InspectedTask``) reads them and says what applies; a text classifier
            (``LabelledTask``) says which label values training would refuse.
        fit_fold: trains one fold for ``inspect.label_errors=finetune`` (``study.cv.fold_classifier``).
    """
    held = (Path(out_dir) / "report.json").is_file()
    out_dir = claim_output(out_dir, kind="dir", what="--out", note="it already holds a report" if held else "")
    bars = _Progress(console, progress)
    # The two contracts (data/prepare.py, data/quality.py): records of its own, or a text table.
    if isinstance(task, InspectedTask):
        report = _inspect_records(config, files, task, bars)
        report["recommendations"] = _recommend_records(config, report)
    else:
        report = _inspect_tables(config, files, task, bars, log, fit_fold)
        report["recommendations"] = _recommend(config, report)

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "report.json", json.dumps(_public(report), indent=2, ensure_ascii=False, default=_plain))
    atomic_write(out_dir / "report.html", _html(report, out_dir, config.inspect.max_listed))
    return report


def _inspect_tables(config: Config, files: list[str] | None, task: LabelledTask, bars: _Progress, log,
                    fit_fold: FitFold | None) -> dict[str, Any]:  # fmt: skip
    """The checks of text/label tables (a text classifier's data)."""
    options = config.inspect
    tables = load_tables(config, files)
    frames = {t.name: t.frame for t in tables}
    train = frames["train"]
    report: dict[str, Any] = {"model": config.model.name, "task": config.task.type, "options": options.model_dump()}
    report["sources"] = {t.name: _source_summary(t) for t in tables}
    report["junk"] = {name: _junk(frame) for name, frame in frames.items()}
    report["control_characters"] = {t.name: _control_characters(t) for t in tables}
    report["lengths"] = _lengths(config, frames, bars)
    report["duplicates"], report["conflicting_labels"] = {}, {}
    for name, frame in frames.items():
        report["duplicates"][name], report["conflicting_labels"][name] = _duplicates(
            name, frame, options.near_duplicate_similarity, bars
        )
    report["leakage"] = {
        name: _leakage(train, frame, options.near_duplicate_similarity)
        for name, frame in frames.items()
        if name != "train"
    }
    if len(frames) == 1:
        report["leakage_note"] = LEAKAGE_NOTE
    report["classes"] = {name: _classes(config, task, frame) for name, frame in frames.items()}
    report["label_kinds"] = {t.name: _label_kind_problem(task, t) for t in tables}
    report["label_errors"] = _label_errors(config, task, train, bars, log, fit_fold)
    return report


LEAKAGE_NOTE = (
    "validation and test are carved from train at training time: exact duplicates are dropped first "
    "(data.clean.drop_duplicates), but near-duplicates can land on both sides of the split"
)


def _inspect_records(config: Config, files: list[str] | None, task: InspectedTask, bars: _Progress) -> dict[str, Any]:
    """The checks of a task's own records (sentences, questions, instruction records, pairs):
    the task's findings, token lengths, duplicates and conflicts, leakage into held-out files,
    shared groups and the label distribution."""
    from tunesmith.models.load import resolve_model

    options = config.inspect
    records = {name: task.inspection_records(spec, config.data) for name, spec in named_sources(config, files)}
    frames = {name: _records_frame(found) for name, found in records.items()}
    train = frames["train"]
    report: dict[str, Any] = {"model": config.model.name, "task": config.task.type, "options": options.model_dump()}
    report["sources"] = {name: {"source": r.source, "rows": len(r.rows), "findings": len(r.findings)}
                         for name, r in records.items()}  # fmt: skip
    report["findings"] = {name: _findings(r) for name, r in records.items()}
    processor = task.load_processor(resolve_model(config.model.name))
    report["lengths"] = {name: _record_lengths(task.inspection_lengths(processor, r), r) for name, r in records.items()}
    report["duplicates"], report["conflicting_labels"] = {}, {}
    for name, frame in frames.items():
        report["duplicates"][name], report["conflicting_labels"][name] = _duplicates(
            name, frame, options.near_duplicate_similarity, bars
        )
    report["leakage"] = {name: _leakage(train, frame, options.near_duplicate_similarity)
                         for name, frame in frames.items() if name != "train"}  # fmt: skip
    group_kind = records["train"].group_kind if records["train"].groups is not None else None
    for name, found in report["leakage"].items():
        found["shared_groups"] = [{"row": _rows(frames[name], [p])[0], "train_row": _rows(train, [q])[0],
                                   "where": frames[name]["where"].iat[p],
                                   group_kind: _clip(str(frames[name]["group"].iat[p]), 120)}
                                  for p, q in quality.shared_groups(train, frames[name])]  # fmt: skip
    report["group_kind"] = group_kind
    if len(frames) == 1:
        report["leakage_note"] = LEAKAGE_NOTE
    if records["train"].labels is not None:
        report["label_kind"] = records["train"].label_kind
        report["classes"] = {name: _record_labels(r, options.min_class_rows) for name, r in records.items()}
    return report


def _records_frame(records: InspectionRecords) -> pd.DataFrame:
    """A task's records as the generic checks read them: ``text`` (compared), ``label`` (the
    target: differing ones are conflicts), ``row``, ``where`` and ``group`` where it has one."""
    frame = pd.DataFrame({"text": records.texts, "label": records.targets, "row": records.rows, "where": records.where})
    if records.groups is not None:
        frame["group"] = records.groups
    return frame


def _findings(records: InspectionRecords) -> dict:
    """The task's findings of one file, counted by check (errors first), and listed."""
    counts = Counter(f.check for f in records.findings)
    severity = {f.check: f.severity for f in records.findings}
    return {
        "counts": {c: counts[c] for c in sorted(counts, key=lambda c: (severity[c] != "error", c))},
        "rows": [{"check": f.check, "row": f.row, "where": f.where, "detail": f.detail, "severity": f.severity,
                  "advice": f.advice} for f in records.findings],
    }  # fmt: skip


def _record_lengths(checks: list[TokenLengths], records: InspectionRecords) -> dict:
    """Per length check: the percentiles, how many records are over its limit and which."""
    result = {}
    for check in checks:
        lengths = np.asarray(check.tokens, dtype=int)
        summary = quality.length_summary(lengths, check.limit) | {"beyond": check.beyond, "severity": check.severity}
        summary["over"] = [{"row": records.rows[p], "where": records.where[p], "tokens": int(lengths[p])}
                           for p in np.flatnonzero(lengths > check.limit)]  # fmt: skip
        summary["_lengths"] = lengths.tolist()  # for the plot; not written
        result[check.name] = summary
    return result


def _record_labels(records: InspectionRecords, min_rows: int) -> dict:
    """The label distribution of one file (each record's labels counted), with each label's share."""
    flat = pd.Series([label for labels in records.labels or [] for label in labels], dtype=object)
    found = quality.class_distribution(flat, min_rows=min_rows)
    total = max(len(flat), 1)
    found["shares"] = {k: round(v / total, 4) for k, v in found["counts"].items()}
    return found


def _source_summary(table: Table) -> dict:
    """Where a table came from, its size, its columns and the missing values per column."""
    return {
        "source": table.source, "rows": len(table.raw),
        "columns": {"text": table.text_column, "label": table.label_column},
        "missing_values": {c: int(table.raw[c].map(is_missing).sum()) for c in table.raw.columns},
    }  # fmt: skip


def _junk(frame: pd.DataFrame) -> dict:
    """Rows whose text is empty or junk, counted by reason."""
    reasons = frame["text"].map(quality.junk_reason)
    found = reasons[reasons.notna()]
    return {
        "counts": {k: int(v) for k, v in found.value_counts().items()},
        "rows": [{"row": int(p) + 1, "reason": r, "text": _text(frame, p)} for p, r in found.items()],
    }


def _duplicates(name: str, frame: pd.DataFrame, similarity: float, bars: _Progress) -> tuple[dict, dict]:
    """Exact and near-duplicate groups in one table, and the groups among them whose labels differ."""
    with bars.task(f"near-duplicates in {name}", 2 * frame["text"].map(quality.normalise).nunique()) as advance:
        exact, near = quality.duplicate_groups(frame, threshold=similarity, progress=advance)
    duplicates = {
        "exact_groups": len(exact), "exact_extra_rows": sum(len(g) - 1 for g in exact),
        "near_groups": len(near), "rows_in_near_groups": sum(len(g) for g in near),
        "exact": [_group(frame, g) for g in exact], "near": [_group(frame, g) for g in near],
    }  # fmt: skip
    conflicts = {
        "exact": [_group(frame, g) for g in quality.conflicting_labels(frame, exact)],
        "near": [_group(frame, g) for g in quality.conflicting_labels(frame, near)],
    }
    return duplicates, conflicts


def _leakage(train: pd.DataFrame, frame: pd.DataFrame, similarity: float) -> dict:
    """Rows of a held-out table that appear, exactly or nearly, in train."""
    exact, near = quality.leakage(train, frame, threshold=similarity)

    def pair(p: int, q: int) -> dict:
        found = {"row": _rows(frame, [p])[0], "train_row": _rows(train, [q])[0]}
        if "where" in frame.columns:
            found |= {"where": frame["where"].iat[p], "train_where": train["where"].iat[q]}
        return found

    return {
        "exact": [pair(p, q) | {"text": _text(frame, p)} for p, q in exact],
        "near": [pair(p, q) | {"similarity": round(s, 4), "text": _text(frame, p), "train_text": _text(train, q)}
                 for p, q, s in near],
    }  # fmt: skip


def _control_characters(table: Table) -> dict:
    """Cells holding control characters (NUL included), by data row: training refuses a NUL
    and replaces the others by spaces."""
    cells = control_character_cells(table.raw)
    total = Counter()
    rows = []
    for position, column, counts in cells:
        total += counts
        value = table.raw[column].iat[position]
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        shown = CONTROL_CHARACTERS.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
        rows.append({"row": position + 1, "column": column, "characters": describe_characters(counts),
                     "text": shown if len(shown) <= 300 else shown[:299] + "…"})  # fmt: skip
    return {"counts": {describe_characters(Counter({c: 1})): int(n) for c, n in sorted(total.items())},
            "rows": rows}  # fmt: skip


def _label_kind_problem(task: LabelledTask, table: Table) -> str | None:
    """The first label that training would refuse for its kind (a list, dict or boolean, a
    number with decimals for a classifier, text and numbers mixed, a non-finite target)."""
    labels = table.raw[table.label_column]
    present = ~labels.map(is_missing).astype(bool)
    rows = [int(p) + 1 for p in present.to_numpy().nonzero()[0]]
    try:
        task.check_labels(labels[present], table.source, rows)
    except TunesmithError as error:
        return str(error)
    return None


def _public(value):
    """The report without its working data (keys starting with an underscore)."""
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, list):
        return [_public(v) for v in value]
    return value


def summary_lines(report: dict) -> list[str]:
    """A few lines for the terminal: counts per check and split, then the recommendations."""
    if "findings" in report:
        return _record_summary_lines(report)
    lines = []
    for name, source in report["sources"].items():
        duplicates = report["duplicates"][name]
        conflicts = report["conflicting_labels"][name]
        lengths = report["lengths"][name]
        parts = [
            f"{source['rows']} rows",
            f"{sum(report['junk'][name]['counts'].values())} junk",
            f"{duplicates['exact_extra_rows']} exact duplicates",
            f"{duplicates['near_groups']} near-duplicate groups",
            f"{len(conflicts['exact']) + len(conflicts['near'])} label conflicts",
            f"{lengths.get('truncated', 0)} over max_length",
        ]
        control = report.get("control_characters", {}).get(name, {}).get("rows")
        if control:
            parts.append(f"{len(control)} cells with control characters")
        if name in report["leakage"]:
            leak = report["leakage"][name]
            parts.append(f"leaked from train: {len(leak['exact'])} exact, {len(leak['near'])} near")
        lines.append(f"{name}: " + ", ".join(parts))
    errors = report["label_errors"]
    if errors.get("method") != "off":
        lines.append(f"likely label errors in train: {len(errors['suspects'])} ({errors['method']}, "
                     f"{errors['folds']} folds, out-of-fold accuracy {errors['out_of_fold_accuracy']:.3f})")  # fmt: skip
    lines += [f"- {advice}" for advice in report["recommendations"]]
    return lines


def _record_summary_lines(report: dict) -> list[str]:
    """The terminal summary of a task's records: per split its size, the task's findings by
    check, duplicates, conflicts, records over each length limit and leakage; then the label
    shares in train and the recommendations."""
    lines = []
    for name, source in report["sources"].items():
        duplicates, conflicts = report["duplicates"][name], report["conflicting_labels"][name]
        found = report["findings"][name]["counts"]
        parts = [f"{source['rows']} records"]
        parts += [f"{n} × {check}" for check, n in found.items()]
        parts += [f"{duplicates['exact_extra_rows']} exact duplicates", f"{duplicates['near_groups']} near-duplicate "
                  f"groups", f"{len(conflicts['exact']) + len(conflicts['near'])} target conflicts"]  # fmt: skip
        parts += [f"{len(check['over'])} over {check['max_length']} tokens ({what})"
                  for what, check in report["lengths"][name].items() if check.get("over")]  # fmt: skip
        if name in report["leakage"]:
            leak = report["leakage"][name]
            shared = f", {len(leak['shared_groups'])} sharing a {report['group_kind']}" if report["group_kind"] else ""
            parts.append(f"leaked from train: {len(leak['exact'])} exact, {len(leak['near'])} near{shared}")
        lines.append(f"{name}: " + ", ".join(parts))
    if "classes" in report:
        shares = report["classes"]["train"]["shares"]
        top = sorted(shares.items(), key=lambda item: -item[1])[:8]
        more = f" and {len(shares) - 8} more" if len(shares) > 8 else ""
        lines.append(f"{report['label_kind']} in train: " + ", ".join(f"{k} {v:.1%}" for k, v in top) + more)
    lines += [f"- {advice}" for advice in report["recommendations"]]
    return lines


def _recommend_records(config: Config, report: dict) -> list[str]:
    """What to do about a task's records: findings (refusals first), lengths over a limit,
    duplicates and conflicts in train, leakage, rare labels and labels unseen in train."""
    advice = []
    for name, found in report["findings"].items():
        for check, count in found["counts"].items():
            first = next(f for f in found["rows"] if f["check"] == check)
            advice.append(f"{name}: {count} × {check} (first: {first['where']}: {first['detail']}): {first['advice']}")
    for name, checks in report["lengths"].items():
        for what, check in checks.items():
            if check.get("over"):
                advice.append(f"{name}: {len(check['over'])} of {check['rows']} records have a {what} longer than "
                              f"{check['max_length']} tokens (95th percentile {check['p95']:.0f}; first: "
                              f"{check['over'][0]['where']}): {check['beyond']}")  # fmt: skip
    duplicates, conflicts = report["duplicates"]["train"], report["conflicting_labels"]["train"]
    if duplicates["exact_extra_rows"]:
        advice.append(f"{duplicates['exact_extra_rows']} records in train repeat another record's input exactly "
                      f"(first rows: {duplicates['exact'][0]['rows']}): drop the copies")  # fmt: skip
    if conflicts["exact"] or conflicts["near"]:
        advice.append(f"{len(conflicts['exact'])} identical and {len(conflicts['near'])} near-identical inputs in "
                      "train teach different targets: decide which is right")  # fmt: skip
    for name, found in report["leakage"].items():
        if found["exact"] or found["near"]:
            advice.append(f"{len(found['exact'])} records of {name} appear verbatim in train and {len(found['near'])} "
                          f"nearly: scores on {name} will be optimistic; remove them from train")  # fmt: skip
        if found["shared_groups"]:
            kind = report["group_kind"]
            advice.append(f"{len(found['shared_groups'])} records of {name} share their {kind} with train: scores "
                          f"on {name} will be optimistic; keep each {kind} in one split")  # fmt: skip
    advice += _label_advice(config, report)
    return advice


def _label_advice(config: Config, report: dict) -> list[str]:
    """Rare labels in train, and held-out labels that train never shows."""
    if "classes" not in report:
        return []
    kind, classes = report["label_kind"], report["classes"]
    advice = []
    if classes["train"]["rare_classes"]:
        advice.append(f"{kind} with fewer than {config.inspect.min_class_rows} occurrences in train: "
                      f"{', '.join(classes['train']['rare_classes'])}; add examples")  # fmt: skip
    seen = set(classes["train"]["counts"])
    for name, found in classes.items():
        unseen = sorted(set(found["counts"]) - seen)
        if name != "train" and unseen:
            advice.append(f"{kind} in {name} that train never shows: {', '.join(unseen)}; the model cannot "
                          "predict them")  # fmt: skip
    return advice


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value))


def _group(frame: pd.DataFrame, positions: list[int]) -> dict:
    group = {
        "rows": _rows(frame, positions),
        "labels": sorted({str(v) for v in frame["label"].iloc[positions]}),
        "texts": [_text(frame, p, 200) for p in positions[:5]],
    }
    if "where" in frame.columns:  # a task's records: where the reader found them
        group["where"] = [frame["where"].iat[p] for p in positions[:5]]
    return group


def _lengths(config: Config, frames: dict[str, pd.DataFrame], bars: _Progress) -> dict:
    from tunesmith.models.load import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model(config.model.name))
    result = {}
    for name, frame in frames.items():
        texts = frame["text"].tolist()
        lengths = []
        with bars.task(f"tokenizing {name}", len(texts)) as advance:
            for start in range(0, len(texts), 4096):
                chunk = texts[start : start + 4096]
                lengths += [len(ids) for ids in tokenizer(chunk, add_special_tokens=True)["input_ids"]]
                advance(len(chunk))
        result[name] = quality.length_summary(np.asarray(lengths), config.model.max_length)
        result[name]["histogram"] = np.histogram(lengths, bins=30)[0].tolist() if lengths else []
        result[name]["_lengths"] = lengths  # for the plot; not written
    return result


def _classes(config: Config, task: LabelledTask, frame: pd.DataFrame) -> dict:
    """Rows per class (with the imbalance and the rare classes), or the summary of numeric targets."""
    labels = frame["label"][~frame["label"].map(is_missing)]
    classes = task.classes_of(labels)
    if classes is None:
        values = pd.to_numeric(labels, errors="coerce")
        return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
                "max": float(values.max()), "not_numeric": int(values.isna().sum())}  # fmt: skip
    return quality.class_distribution(classes, min_rows=config.inspect.min_class_rows)


def _label_errors(config: Config, task: LabelledTask, train: pd.DataFrame, bars: _Progress, log,
                  fit_fold: FitFold | None) -> dict:  # fmt: skip
    method, folds = config.inspect.label_errors, config.inspect.folds
    if method == "off":
        return {"method": "off"}
    if not task.detects_label_errors:
        return {"method": "off", "note": f"label-error detection covers single_label tasks, not {config.task.type}"}
    usable = train[(train["text"].str.strip() != "") & ~train["label"].map(is_missing)]
    names = sorted({str(v) for v in usable["label"]})
    if len(names) < 2:
        return {"method": "off", "note": "one class only: nothing to compare labels against"}
    texts = usable["text"].tolist()
    log(f"Label errors: {method} out-of-fold probabilities, {folds} folds, {len(texts)} rows")
    encoders = le.label_error_encoders(config)
    embeds = method in ("embedding", "ensemble")  # the bar follows the embedding; fold runs log their own
    with bars.task("embedding train" if embeds else "fine-tuning per fold",
                   len(texts) * (len(encoders) if embeds else 1)) as advance:  # fmt: skip
        names, labels, probabilities, ranked = le.find_suspects(
            texts, usable["label"].map(str).tolist(), method=method, folds=folds, seed=config.runtime.seed,
            encoders=encoders, max_length=config.model.max_length,
            fit_fold=fit_fold, progress=advance,
        )  # fmt: skip
    table = le.label_issue_table(usable.reset_index(drop=True), names, labels, probabilities, ranked)
    positions = usable.index.to_numpy()
    suspects = [
        {"row": int(positions[r.position]) + 1, "text": r.text, "given_label": r.given_label,
         "suggested_label": r.suggested_label, "given_label_probability": round(float(r.given_label_probability), 4),
         "suggested_label_probability": round(float(r.suggested_label_probability), 4)}
        for r in table.itertuples()
    ]  # fmt: skip
    return {
        "method": method, "folds": folds, "rows_scored": len(texts),
        "out_of_fold_accuracy": float((probabilities.argmax(1) == labels).mean()),
        "suspects": suspects,
        "_given_probability": probabilities[np.arange(len(labels)), labels].tolist(),
    }  # fmt: skip


def _recommend(config: Config, report: dict) -> list[str]:
    advice = []
    for name, control in report.get("control_characters", {}).items():
        if control["rows"]:
            first = control["rows"][0]
            nul = " NUL bytes make training refuse the file;" if "\\x00" in control["counts"] else ""
            advice.append(f"{name}: {len(control['rows'])} cells hold control characters {control['counts']} (first: "
                          f"row {first['row']}, column {first['column']!r}):{nul} training replaces the others by "
                          "spaces; remove them from the file")  # fmt: skip
    advice += [f"training refuses these labels: {problem}" for problem in report.get("label_kinds", {}).values()
               if problem]  # fmt: skip
    junk = sum(sum(v["counts"].values()) for v in report["junk"].values())
    if junk:
        advice.append(f"{junk} rows hold empty or junk text: drop or fix them (empty ones are dropped by default)")
    duplicates = report["duplicates"]["train"]
    if duplicates["exact_extra_rows"]:
        advice.append(f"{duplicates['exact_extra_rows']} exact duplicate rows in train: "
                      "data.clean.drop_duplicates (on by default) keeps one of each")  # fmt: skip
    conflicts = report["conflicting_labels"]["train"]
    if conflicts["exact"] or conflicts["near"]:
        advice.append(f"{len(conflicts['exact'])} identical and {len(conflicts['near'])} near-identical text groups "
                      "carry different labels: decide which label is right")  # fmt: skip
    for name, found in report["leakage"].items():
        if found["exact"] or found["near"]:
            advice.append(f"{len(found['exact'])} rows of {name} appear verbatim in train and "
                          f"{len(found['near'])} nearly: scores on {name} will be optimistic; remove them from train")  # fmt: skip
    lengths = report["lengths"]["train"]
    if lengths.get("truncated"):
        advice.append(f"{lengths['truncated']} training rows are longer than model.max_length={lengths['max_length']} "
                      f"tokens (95th percentile {lengths['p95']:.0f}): they will be cut")  # fmt: skip
    classes = report["classes"]["train"]
    ratio = classes.get("imbalance_ratio")
    if ratio is not None and ratio >= 3 and config.data.balance.method == "none":
        advice.append(f"class imbalance {ratio:.1f}:1 in train: consider data.balance.method=class_weights "
                      "(or oversample)")  # fmt: skip
    if classes.get("rare_classes"):
        advice.append(f"classes with fewer than {config.inspect.min_class_rows} training rows: "
                      f"{', '.join(classes['rare_classes'])}; add examples or merge them")  # fmt: skip
    suspects = report["label_errors"].get("suspects")
    if suspects:
        advice.append(f"{len(suspects)} likely label errors: review them (report.html lists the most likely first)")
    return advice


# ---- HTML ----


def _figure_png(draw) -> str:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 3.2))
    draw(axes)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _table(rows: list[dict], columns: list[str], limit: int) -> str:
    if not rows:
        return "<p class=none>none found</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in columns) + "</tr>" for r in rows[:limit]
    )
    more = f"<p>{len(rows) - limit} more in report.json</p>" if len(rows) > limit else ""
    return f"<table><tr>{head}</tr>{body}</table>{more}"


def _html(report: dict, out_dir: Path, limit: int) -> str:
    parts = ["<h1>Data inspection</h1>", "<h2>Recommendations</h2><ul>"]
    parts += [f"<li>{html.escape(a)}</li>" for a in report["recommendations"]] or ["<li>nothing to fix</li>"]
    parts.append("</ul><h2>Sources</h2>")
    if "findings" in report:
        parts += _html_records(report, limit)
    else:
        parts += _html_tables(report, limit)
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
             "margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px;vertical-align:top}"
             ".none{color:#080}")  # fmt: skip
    return f"<!doctype html><meta charset=utf-8><title>tunesmith inspect</title><style>{style}</style>" + "".join(parts)


def _html_tables(report: dict, limit: int) -> list[str]:
    """The sections of a text classifier's report."""
    parts = [_table([{"split": n, **{k: v for k, v in s.items() if k != "missing_values"},
                      "missing values": s["missing_values"]} for n, s in report["sources"].items()],
                    ["split", "source", "rows", "columns", "missing values"], limit)]  # fmt: skip
    parts += _html_lengths(report["lengths"], limit)
    parts += _html_classes(report["classes"], limit)
    parts += _html_junk(report, limit)
    parts += _html_duplicates(report, limit)
    parts += _html_leakage(report, limit)
    parts += _html_label_errors(report["label_errors"], limit)
    return parts


def _html_records(report: dict, limit: int) -> list[str]:
    """The sections of a report on a task's records: sources, the task's findings, lengths per
    limit, the label distribution, duplicates and leakage."""
    parts = [_table([{"split": n, **s} for n, s in report["sources"].items()], ["split", "source", "rows", "findings"],
                    limit), "<h2>Findings</h2>"]  # fmt: skip
    for name, found in report["findings"].items():
        counts = ", ".join(f"{n} {check}" for check, n in found["counts"].items()) or "none"
        parts.append(f"<h3>{html.escape(name)}: {html.escape(counts)}</h3>")
        parts.append(_table(found["rows"], ["check", "severity", "row", "where", "detail", "advice"], limit))
    parts += _html_record_lengths(report["lengths"], limit)
    if "classes" in report:
        parts += _html_classes(report["classes"], limit, title=report["label_kind"].capitalize())
    parts += _html_duplicates(report, limit)
    parts += _html_leakage(report, limit)
    kind = report["group_kind"]
    for name, found in report["leakage"].items():
        if found["shared_groups"]:
            parts.append(f"<h3>{html.escape(name)}: {len(found['shared_groups'])} records share their "
                         f"{html.escape(kind)} with train</h3>")  # fmt: skip
            parts.append(_table(found["shared_groups"], ["row", "train_row", "where", kind], limit))
    return parts


def _html_record_lengths(lengths: dict, limit: int) -> list[str]:
    """Per length check: the histogram over the splits (the limit marked), the summary and the
    records over the limit."""
    parts = ["<h2>Lengths</h2>"]
    for what in next(iter(lengths.values())):

        def draw(axes, what=what):
            for name, checks in lengths.items():
                if checks[what].get("_lengths"):
                    axes.hist(checks[what]["_lengths"], bins=40, alpha=0.5, label=name)
            axes.axvline(next(iter(lengths.values()))[what]["max_length"], color="red", linestyle="--", label="limit")
            axes.set_xlabel(f"tokens ({what})")
            axes.set_ylabel("records")
            axes.legend()

        summaries = [{"split": n, **{k: (round(v, 1) if isinstance(v, float) else v) for k, v in c[what].items()}}
                     for n, c in lengths.items()]  # fmt: skip
        over = [dict(o, split=n) for n, c in lengths.items() for o in c[what].get("over", [])]
        parts += [f"<h3>{html.escape(what)}: over the limit, {html.escape(summaries[0].get('beyond', ''))}</h3>",
                  f"<img src='data:image/png;base64,{_figure_png(draw)}'>" if summaries[0].get("rows") else "",
                  _table(summaries, ["split", "rows", "mean", "p50", "p95", "max", "max_length", "truncated"], limit),
                  _table(over, ["split", "row", "where", "tokens"], limit)]  # fmt: skip
    return parts


def _html_lengths(lengths: dict, limit: int) -> list[str]:
    """The token-length histogram per split (with max_length marked) and its summary table."""

    def draw_lengths(axes):
        for name, summary in lengths.items():
            if summary.get("_lengths"):
                axes.hist(summary["_lengths"], bins=40, alpha=0.5, label=name)
        maximum = next(iter(lengths.values())).get("max_length")
        if maximum:
            axes.axvline(maximum, color="red", linestyle="--", label=f"max_length {maximum}")
        axes.set_xlabel("tokens per row")
        axes.set_ylabel("rows")
        axes.legend()

    return [
        "<h2>Lengths</h2>",
        f"<img src='data:image/png;base64,{_figure_png(draw_lengths)}'>",
        _table([{"split": n, **{k: (round(v, 1) if isinstance(v, float) else v) for k, v in s.items()
                                if not k.startswith("_") and k != "histogram"}} for n, s in lengths.items()],
               ["split", "rows", "mean", "p50", "p95", "max", "max_length", "truncated"], limit),
    ]  # fmt: skip


def _html_classes(classes: dict, limit: int, title: str = "Classes") -> list[str]:
    """Rows per class and split as bars, with the imbalance; nothing for numeric targets."""
    if not all("counts" in c for c in classes.values()):
        return []

    def draw_classes(axes):
        names = sorted({k for c in classes.values() for k in c["counts"]})
        width = 0.8 / len(classes)
        for i, (split, c) in enumerate(classes.items()):
            axes.bar(np.arange(len(names)) + i * width, [c["counts"].get(n, 0) for n in names], width, label=split)
        axes.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=45 if len(names) > 6 else 0)
        axes.set_ylabel("rows")
        axes.legend()

    return [
        f"<h2>{html.escape(title)}</h2>",
        f"<img src='data:image/png;base64,{_figure_png(draw_classes)}'>",
        _table([{"split": n, "imbalance ratio": round(c["imbalance_ratio"], 2),
                 "rare classes": ", ".join(c["rare_classes"]) or "none"} for n, c in classes.items()],
               ["split", "imbalance ratio", "rare classes"], limit),
    ]  # fmt: skip


def _html_junk(report: dict, limit: int) -> list[str]:
    """Junk rows and cells with control characters, per split."""
    parts = ["<h2>Junk text</h2>"]
    for name, junk in report["junk"].items():
        parts.append(f"<h3>{html.escape(name)}: {sum(junk['counts'].values())} rows</h3>")
        parts.append(_table(junk["rows"], ["row", "reason", "text"], limit))
    for name, control in report.get("control_characters", {}).items():
        if control["rows"]:
            parts.append(f"<h3>{html.escape(name)}: {len(control['rows'])} cells with control characters</h3>")
            parts.append(_table(control["rows"], ["row", "column", "characters", "text"], limit))
    return parts


def _html_duplicates(report: dict, limit: int) -> list[str]:
    """Duplicate counts, conflicting labels and near-duplicate groups, per split."""
    parts = ["<h2>Duplicates and conflicting labels</h2>"]
    for name, found in report["duplicates"].items():
        parts.append(f"<h3>{html.escape(name)}: {found['exact_groups']} exact groups ({found['exact_extra_rows']} "
                     f"extra rows), {found['near_groups']} near-duplicate groups</h3>")  # fmt: skip
        conflicts = report["conflicting_labels"][name]
        parts.append("<h4>Same or nearly the same text, different labels</h4>")
        parts.append(_table(conflicts["exact"] + conflicts["near"], ["rows", "labels", "texts"], limit))
        parts.append("<h4>Near-duplicate groups</h4>")
        parts.append(_table(found["near"], ["rows", "labels", "texts"], limit))
    return parts


def _html_leakage(report: dict, limit: int) -> list[str]:
    """Held-out rows found in train, per held-out split."""
    parts = ["<h2>Leakage into held-out splits</h2>"]
    if "leakage_note" in report:
        parts.append(f"<p>{html.escape(report['leakage_note'])}</p>")
    where = ["where", "train_where"] if "findings" in report else []  # a task's records: where the reader found them
    for name, found in report["leakage"].items():
        parts.append(f"<h3>{html.escape(name)}: {len(found['exact'])} exact, {len(found['near'])} near</h3>")
        parts.append(_table(found["exact"], ["row", "train_row", *where, "text"], limit))
        parts.append(_table(found["near"], ["row", "train_row", *where, "similarity", "text", "train_text"], limit))
    return parts


def _html_label_errors(errors: dict, limit: int) -> list[str]:
    """The label-error method and score, the confidence histogram and the suspects."""
    parts = ["<h2>Likely label errors</h2>"]
    if errors.get("method") == "off":
        parts.append(f"<p>not run{': ' + html.escape(errors['note']) if 'note' in errors else ''}</p>")
        return parts
    parts.append(f"<p>{errors['method']} out-of-fold probabilities, {errors['folds']} folds; out-of-fold "
                 f"accuracy against the given labels {errors['out_of_fold_accuracy']:.3f}; "
                 f"{len(errors['suspects'])} suspects, most likely first.</p>")  # fmt: skip

    def draw_confidence(axes):
        axes.hist(errors["_given_probability"], bins=40, color="grey")
        axes.set_xlabel("out-of-fold probability of the given label")
        axes.set_ylabel("rows")
        axes.set_yscale("log")

    parts.append(f"<img src='data:image/png;base64,{_figure_png(draw_confidence)}'>")
    parts.append(_table(errors["suspects"], ["row", "given_label", "suggested_label", "given_label_probability",
                                             "text"], limit))  # fmt: skip
    return parts


def write_fixed(config: Config, files: list[str] | None, out_dir: Path, *, task: LabelledTask | InspectedTask,
                fit_fold: FitFold | None = None, log: Callable[[str], None] = print) -> dict:  # fmt: skip
    """Applies data.clean to the files (no splits are carved) and writes the surviving rows, as
    they were read except for the labels of relabelled rows, into ``out_dir`` (same file names and formats; a folder
    source becomes <name>.csv), plus changelog.jsonl with one line per row dropped or relabelled.
    The input files are only read.

    Args:
        task: the config's task (``tasks.build_task(config)``), which normalises the labels.
        fit_fold: trains one fold when data.clean.label_errors finds suspects with
            ``inspect.label_errors=finetune`` (``study.cv.fold_classifier``).

    Returns:
        Rows in and out per file, and the changelog's counts.
    """
    if isinstance(task, InspectedTask):
        raise TunesmithError(f"--fix rewrites text classification tables; {config.task.type} records are cleaned as "
                             "training reads them: fix the findings of report.json in the files")  # fmt: skip
    out_dir = claim_output(out_dir, kind="dir", what="--fix")
    tables = load_tables(config, files, control_characters="replace")  # the copies are what training reads
    changes: list[dict] = []
    fixed = _clean_tables(config, tables, task, fit_fold, changes)

    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {"files": {}, "changes": dict(Counter(f"{c['action']}: {reason_kind(c['reason'])}" for c in changes))}
    for table in tables:
        rows = _surviving_rows(table, fixed[table.name], changes)
        target = _write_rows(rows, out_dir, Path(table.source))
        summary["files"][str(target)] = {"source": table.source, "rows_in": len(table.raw), "rows_out": len(rows)}
        log(f"{table.source}: {len(table.raw)} rows -> {len(rows)} in {target}")
    atomic_write(out_dir / "changelog.jsonl", "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in changes))
    log(f"{len(changes)} changes, one line each in {out_dir / 'changelog.jsonl'}: {summary['changes']}")
    return summary


def _clean_tables(config: Config, tables: list[Table], task: LabelledTask, fit_fold: FitFold | None,
                  changes: list[dict]) -> dict[str, pd.DataFrame]:  # fmt: skip
    """data.clean applied to each table, then train's leaked rows and label errors dealt with;
    every row dropped or relabelled is appended to ``changes``."""
    clean, similarity = config.data.clean, config.inspect.near_duplicate_similarity
    fixed: dict[str, pd.DataFrame] = {}
    for table in tables:
        frame = table.raw[[table.text_column, table.label_column]].set_axis(["text", "label"], axis=1)
        fixed[table.name], _ = clean_and_fix(frame, config.data, task, source=table.source, changes=changes,
                                             similarity=similarity)  # fmt: skip
    train_source = tables[0].source
    if clean.drop_leaked and len(tables) > 1:
        fixed["train"] = drop_leaked(fixed["train"], {n: f for n, f in fixed.items() if n != "train"},
                                     similarity=similarity, source=train_source, changes=changes)  # fmt: skip
    if clean.label_errors != "keep":
        if not task.detects_label_errors:
            raise TunesmithError("data.clean.label_errors needs a single_label task")
        find = label_error_finder(config, fit_fold=fit_fold)
        fixed["train"] = fix_label_errors(
            fixed["train"], clean.label_errors, find, source=train_source, changes=changes
        )
    return fixed


def _surviving_rows(table: Table, frame: pd.DataFrame, changes: list[dict]) -> pd.DataFrame:
    """The surviving rows exactly as they were read; only relabelled rows change (their label)."""
    rows = table.raw.iloc[frame["row"].to_numpy() - 1].copy()
    column = rows[table.label_column]
    position = {int(r): n for n, r in enumerate(frame["row"])}
    for change in changes:
        if change["action"] == "relabelled" and change["source"] == table.source and change["row"] in position:
            value = change["new_label"]
            if pd.api.types.is_numeric_dtype(column):
                value = pd.to_numeric(value)
            rows.iloc[position[change["row"]], rows.columns.get_loc(table.label_column)] = value
    return rows


def _write_rows(rows: pd.DataFrame, out_dir: Path, source: Path) -> Path:
    """Writes the rows into ``out_dir`` under the source's file name and format (a folder source
    becomes <name>.csv) and returns the file written."""
    name = (
        source.name
        if source.suffix.lower() in (".csv", ".tsv", ".jsonl", ".json", ".parquet")
        else f"{source.name}.csv"
    )
    target = out_dir / name
    while target.exists():  # two inputs with one file name
        target = target.with_stem(target.stem + "_")
    suffix = target.suffix.lower()
    if suffix == ".parquet":
        rows.to_parquet(target, index=False)
    elif suffix in (".jsonl", ".json"):
        atomic_write(target, rows.to_json(orient="records", lines=suffix == ".jsonl", force_ascii=False))
    else:
        atomic_write(target, rows.to_csv(index=False, sep="\t" if suffix == ".tsv" else ","))
    return target
