"""`tunesmith inspect`: what is wrong with the data, found before any compute is spent on it.

Reads the data as training would (a config's files, or data files given directly), without
cleaning it, and writes report.json (every finding), report.html (tables and plots) and a
summary in the terminal. Rows are named by their 1-based data row in their file.
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
    if files:
        named = [("train", files[0])] + [(Path(f).stem, f) for f in files[1:]]
    else:
        named = [(n, getattr(data, n)) for n in ("train", "validation", "test") if getattr(data, n) is not None]
    tables, seen = [], set()
    for name, spec in named:
        while name in seen:
            name += "'"
        seen.add(name)
        table = read_table(spec, column_names=data.column_names, encoding_errors=data.encoding_errors,
                           control_characters=control_characters)  # fmt: skip
        text_column, label_column = detect_columns(table.frame, data.text_column, data.label_column, table.source)
        tables.append(Table(name, table.source, table.frame, text_column, label_column))
    return tables


def _rows(positions) -> list[int]:
    return [int(p) + 1 for p in positions]


def _text(frame: pd.DataFrame, position: int, limit: int = 300) -> str:
    text = frame["text"].iat[position]
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
    task: LabelledTask,
    fit_fold: FitFold | None = None,
    console=None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs every check and writes report.json and report.html into ``out_dir`` (new, or an
    empty directory). Returns the report.

    Args:
        task: the config's task (``tasks.build_task(config)``); it says which label values
            training would refuse.
        fit_fold: trains one fold for ``inspect.label_errors=finetune`` (``study.cv.fold_classifier``).
    """
    held = (Path(out_dir) / "report.json").is_file()
    out_dir = claim_output(out_dir, kind="dir", what="--out", note="it already holds a report" if held else "")
    options = config.inspect
    bars = _Progress(console, progress)
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
        report["leakage_note"] = (
            "validation and test are carved from train at training time: exact duplicates are dropped first "
            "(data.clean.drop_duplicates), but near-duplicates can land on both sides of the split"
        )
    report["classes"] = {name: _classes(config, task, frame) for name, frame in frames.items()}
    report["label_kinds"] = {t.name: _label_kind_problem(task, t) for t in tables}
    report["label_errors"] = _label_errors(config, task, train, bars, log, fit_fold)
    report["recommendations"] = _recommend(config, report)

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "report.json", json.dumps(_public(report), indent=2, ensure_ascii=False, default=_plain))
    atomic_write(out_dir / "report.html", _html(report, out_dir, options.max_listed))
    return report


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
    return {
        "exact": [{"row": p + 1, "train_row": q + 1, "text": _text(frame, p)} for p, q in exact],
        "near": [
            {
                "row": p + 1,
                "train_row": q + 1,
                "similarity": round(s, 4),
                "text": _text(frame, p),
                "train_text": _text(train, q),
            }
            for p, q, s in near
        ],  # fmt: skip
    }


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


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value))


def _group(frame: pd.DataFrame, positions: list[int]) -> dict:
    return {
        "rows": _rows(positions),
        "labels": sorted({str(v) for v in frame["label"].iloc[positions]}),
        "texts": [_text(frame, p, 200) for p in positions[:5]],
    }


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
    with bars.task("embedding train" if method == "embedding" else "fine-tuning per fold", len(texts)) as advance:
        names, labels, probabilities, ranked = le.find_suspects(
            texts, usable["label"].map(str).tolist(), method=method, folds=folds, seed=config.runtime.seed,
            model_name=config.model.name, max_length=config.model.max_length,
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
    parts.append(_table([{"split": n, **{k: v for k, v in s.items() if k != "missing_values"},
                          "missing values": s["missing_values"]} for n, s in report["sources"].items()],
                        ["split", "source", "rows", "columns", "missing values"], limit))  # fmt: skip
    parts += _html_lengths(report["lengths"], limit)
    parts += _html_classes(report["classes"], limit)
    parts += _html_junk(report, limit)
    parts += _html_duplicates(report, limit)
    parts += _html_leakage(report, limit)
    parts += _html_label_errors(report["label_errors"], limit)
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
             "margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px;vertical-align:top}"
             ".none{color:#080}")  # fmt: skip
    return f"<!doctype html><meta charset=utf-8><title>tunesmith inspect</title><style>{style}</style>" + "".join(parts)


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


def _html_classes(classes: dict, limit: int) -> list[str]:
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
        "<h2>Classes</h2>",
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
    for name, found in report["leakage"].items():
        parts.append(f"<h3>{html.escape(name)}: {len(found['exact'])} exact, {len(found['near'])} near</h3>")
        parts.append(_table(found["exact"], ["row", "train_row", "text"], limit))
        parts.append(_table(found["near"], ["row", "train_row", "similarity", "text", "train_text"], limit))
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


def write_fixed(config: Config, files: list[str] | None, out_dir: Path, *, task: LabelledTask,
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
