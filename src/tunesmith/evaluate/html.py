"""Self-contained HTML reports (plots embedded): one per run, one comparing runs, one per study.

A person should understand a run from its report.html without reading JSON: what was trained on
what, how well it does (with intervals), where it errs (confusion matrix, per class, per slice),
how sure it is (reliability), how training went (curves) and what it forgot.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import yaml

from tunesmith.config import flatten
from tunesmith.data.overlap import describe
from tunesmith.errors import TunesmithError
from tunesmith.evaluate.baseline import comparison_rows
from tunesmith.evaluate.predictions import (
    calibration_sentence,
    data_warnings,
    mistakes,
    paired_difference,
    predictions_path,
    read_predictions,
    scored_data,
)

STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse;"
    "margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;vertical-align:top;text-align:left}"
    "th{background:#f3f3f3}img{max-width:100%;margin:.5em 1em .5em 0}.bad{color:#b00}.good{color:#080}"
    "code{background:#f3f3f3;padding:0 3px}"
)


def page(title: str, parts: list[str]) -> str:
    return (f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title><style>{STYLE}</style>"
            + "".join(parts))  # fmt: skip


def table(rows: list[dict], columns: list[str]) -> str:
    if not rows:
        return "<p>none</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value)) if value is not None else "-"


def image(path: Path, alt: str) -> str:
    """An existing PNG, embedded so the report travels as one file."""
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


def plot(draw, size=(7, 3.4)) -> str:
    """A matplotlib figure that ``draw(axes)`` fills, embedded as a PNG ``<img>``."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=size)
    draw(axes)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return f"<img src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}'>"


def _metric_rows(metrics: dict[str, Any]) -> list[dict]:
    intervals = metrics.get("confidence_intervals", {})
    rows = []
    for key, value in metrics.items():
        if isinstance(value, float) and key not in ("confidence_level", "temperature"):
            ci = intervals.get(key)
            rows.append({"metric": key, "value": value,
                         "95% interval": f"{ci['low']:.4f} – {ci['high']:.4f}" if ci else ""})  # fmt: skip
    return rows


def _read(run: Path, name: str) -> Any:
    path = run / name
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
        loaded = yaml.safe_load(text) if name.endswith(".yaml") else json.loads(text)
    except (ValueError, UnicodeDecodeError, yaml.YAMLError) as error:  # JSONDecodeError is a ValueError
        raise TunesmithError(f"{path} is damaged ({str(error).splitlines()[0]}); restore it from a backup or "
                             "train the run again") from None  # fmt: skip
    if loaded is not None and not isinstance(loaded, dict):
        raise TunesmithError(f"{path} is damaged: it holds a {type(loaded).__name__}, not a mapping; restore it "
                             "from a backup or train the run again")  # fmt: skip
    return loaded


def run_report(run: Path) -> Path:
    """Writes ``run/report.html`` from the files the run wrote; returns its path.

    Raises:
        TunesmithError: a run file is not valid JSON/YAML or not laid out as tunesmith writes it.
    """
    run = Path(run)
    try:
        parts = _run_parts(run)
    except (AttributeError, KeyError, TypeError, ValueError) as error:  # valid JSON, but not what a run writes
        raise TunesmithError(
            f"the files of {run} (metrics.json, task.json, data_manifest.json, config.yaml) are not laid out as "
            f"tunesmith writes them ({type(error).__name__}: {error}); restore them from a backup or train the "
            "run again"
        ) from None
    out = run / "report.html"
    out.write_text(page(f"tunesmith run {run.name}", parts), encoding="utf-8")
    return out


def _run_parts(run: Path) -> list[str]:
    config, metrics = _read(run, "config.yaml") or {}, _read(run, "metrics.json") or {}
    task, manifest = _read(run, "task.json") or {}, _read(run, "data_manifest.json") or {}
    training = metrics.get("training", {})
    model = config.get("model", {})
    train = config.get("train", {})
    parts = [f"<h1>{html.escape(task.get('type', 'run').replace('_', '-'))} run: {html.escape(run.name)}</h1>"]
    overview = [
        {"": "model", "value": model.get("name")}, {"": "strategy", "value": model.get("strategy")},
        {"": "labels", "value": ", ".join(task.get("label_names", [])) or "-"},
        {"": "rows", "value": ", ".join(f"{n} {s['rows']}" for n, s in manifest.get("splits", {}).items())},
        {"": "training", "value": f"{train.get('num_epochs')} epochs, batch {train.get('batch_size')}, "
                                  f"learning rate {train.get('learning_rate')}, {training.get('steps')} steps"},
        {"": "best checkpoint", "value": f"{training.get('metric')} {training.get('best_metric')} at step "
                                         f"{training.get('best_step')}" + (" (stopped early)" if training.get("stopped_early") else "")},
        {"": "seed", "value": config.get("runtime", {}).get("seed")},
    ]  # fmt: skip
    parts += ["<h2>Overview</h2>", table(overview, ["", "value"])]
    for split in ("test", "validation"):
        if split in metrics:
            parts += [f"<h2>{split} ({metrics[split].get('count', '?')} rows)</h2>",
                      table(_metric_rows(metrics[split]), ["metric", "value", "95% interval"])]  # fmt: skip
    parts += ["<h2>Learning curves</h2>", image(run / "training_curves.png", "training curves")]
    federation = training.get("federation")
    if federation:
        rows = [{"round": r["round"], **{k: round(v, 4) for k, v in r["validation"].items()},
                 "clients trained": len(r["clients"]), "failed": ", ".join(r["failed"]) or "-",
                 "bytes sent": f"{r['bytes_sent']:,}"} for r in federation["history"]]  # fmt: skip
        columns = ["round", *sorted({k for r in federation["history"] for k in r["validation"]}), "clients trained",
                   "failed", "bytes sent"]  # fmt: skip
        parts += ["<h2>Federated rounds</h2>", f"<p>{html.escape(federation['privacy'])}</p>",
                  image(run / "federation_curves.png", "federated curves"), table(rows, columns)]  # fmt: skip
    test = metrics.get("test", {})
    if "per_class" in test:
        parts.append("<h2>Errors (test)</h2>")
        parts.append(image(run / "confusion_matrix_test.png", "confusion matrix"))
        if (run / "misclassified_test.png").is_file():
            parts += ["<h3>Misclassified test images (most confident first)</h3>",
                      image(run / "misclassified_test.png", "misclassified test images")]  # fmt: skip
        parts.append(table([{"class": c, **v} for c, v in test["per_class"].items()],
                           ["class", "precision", "recall", "f1", "support"]))  # fmt: skip
    parts += _mistake_parts(run, "test" if "test" in metrics else "validation")
    if "ece" in test:
        scaled = (f"; with temperature {test['temperature']:.3f} (fitted on validation): "
                  f"{test['ece_temperature_scaled']:.4f}" if "temperature" in test else "")  # fmt: skip
        parts += ["<h2>Calibration (test)</h2>", f"<p>Expected calibration error {test['ece']:.4f}{scaled}. "
                  "Points below the diagonal are over-confident.</p>", image(run / "reliability_test.png", "reliability")]  # fmt: skip
        parts += _calibration_words(test)
    if "slices" in test:
        s = test["slices"]
        rows = [{s["column"]: k, **v} for k, v in s["slices"].items()]
        rate = "true_positive_rate" if any("true_positive_rate" in r for r in rows) else "macro_recall"
        parts += [f"<h2>Per {html.escape(s['column'])} slice (test)</h2>",
                  table(rows, [s["column"], "count", "accuracy", "macro_f1", rate]),
                  f"<p>Largest accuracy gap {s.get('accuracy_gap', float('nan')):.4f}; equal-opportunity difference "
                  f"{s.get('equal_opportunity_difference', float('nan')):.4f}.</p>"]  # fmt: skip
    if "baseline" in metrics:
        b = metrics["baseline"]
        parts += ["<h2>Baseline: what fine-tuning added</h2>",
                  f"<p>A {html.escape(b['method'])} (<code>{html.escape(str(b['model']))}</code>), fitted on "
                  f"{b['train_rows']:,} training rows and scored on the same held-out rows.</p>",
                  table(comparison_rows(metrics), ["split", "metric", "this run", "baseline", "gain"])]  # fmt: skip
    if "forgetting" in metrics:
        f = metrics["forgetting"]
        verdict = "good" if f["passed"] else "bad"
        parts += ["<h2>Forgetting</h2>", f"<p class={verdict}>Retain set <code>{html.escape(f['retain'])}</code> "
                  f"({f['rows']} rows, {f['method']}): base {f['base']:.4f}, tuned {f['tuned']:.4f}. "
                  f"{html.escape(f['message'])}.</p>"]  # fmt: skip
    changes = manifest.get("changes")
    if changes:
        parts += ["<h2>Data cleaning</h2>", table([{"change": k, "rows": v} for k, v in changes.items()], ["change", "rows"]),
                  "<p>Every row is listed in data_changelog.jsonl.</p>"]  # fmt: skip
    shared = {n: e for n, e in manifest.get("overlap", {}).get("splits", {}).items() if e["rows"]}
    if shared:
        parts += ["<h2>Overlap with training</h2>", *(f"<p class=bad>{html.escape(describe(n, e))}; scores on them "
                  "measure memory, not generalisation.</p>" for n, e in shared.items()),
                  table([{"split": n, **x} for n, e in shared.items() for x in e["examples"]],
                        ["split", "row", "train_row", "input"])]  # fmt: skip
    parts.append("<p>Files: config.yaml (the full config), metrics.json, README.md (model card), model/.</p>")
    return parts


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _calibration_words(metrics: dict[str, Any]) -> list[str]:
    """The reliability diagram in words, from the bins it draws (and after temperature scaling)."""
    words = [f"<p>{html.escape(calibration_sentence(metrics.get('calibration_bins', []), 'test'))}</p>"]
    if metrics.get("calibration_bins_temperature_scaled"):
        after = calibration_sentence(metrics["calibration_bins_temperature_scaled"], "test")
        words.append(f"<p>With temperature scaling: {html.escape(after[0].lower() + after[1:])}</p>")
    return words


def _thumbnail(value: str) -> str:
    """An image input as a small embedded picture (or its file name when it cannot be read);
    any other input as text, its middle cut past 300 characters (a prompt's end is its question)."""
    path = Path(value)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return html.escape(value if len(value) <= 300 else f"{value[:150]} … {value[-150:]}")
    try:
        import io

        from PIL import Image  # only for a run whose inputs are images

        with Image.open(path) as picture:
            picture.thumbnail((96, 96))
            buffer = io.BytesIO()
            picture.convert("RGB").save(buffer, format="PNG")
    except (OSError, ValueError):
        return html.escape(path.name)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f"<img alt='{html.escape(path.name)}' title='{html.escape(str(path))}' src='data:image/png;base64,{data}'>"


def _mistake_parts(run: Path, split: str) -> list[str]:
    """The most confident mistakes of a split (``predictions_SPLIT.parquet``): per class where
    the task has one class per row, else the worst rows in all."""
    path = predictions_path(run, split)
    if not path.is_file():
        return []
    found = read_predictions(path)
    rows = mistakes(found)
    how = "the 3 most confident of each true class" if found.by_class else "the 10 most confident or worst"
    parts = [f"<h2>Mistakes ({split}: {how})</h2>",
             f"<p>Every row's prediction is in {html.escape(path.name)}; <code>row</code> is its position in "
             f"data/{split}.parquet.</p>"]  # fmt: skip
    if not rows:
        return parts + ["<p>none: every row is right</p>"]
    columns = ["row", "gold", "predicted", "confidence", found.metric]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in [*columns, "input"])
    body = "".join("<tr>" + "".join(f"<td>{_cell(r[c])}</td>" for c in columns)
                   + f"<td style='white-space:pre-wrap'>{_thumbnail(str(r['input']))}</td></tr>" for r in rows)  # fmt: skip
    return parts + [f"<table><tr>{head}</tr>{body}</table>"]


COMPARED = ("accuracy", "macro_f1", "mse", "loss", "perplexity", "rougeL", "ece")
"""The scores ``compare`` lists, where a run has them."""


def _score_rows(loaded: list[tuple[Path, dict, dict]]) -> tuple[list[dict], list[dict]]:
    """Per run, its scores on its test split (validation without one) as numbers (``KEY`` and,
    with an interval, ``KEY_low`` and ``KEY_high``), and the same as text for the page."""
    scores, shown = [], []
    for run, _, metrics in loaded:
        split = "test" if "test" in metrics else "validation"
        row: dict[str, Any] = {"run": str(run), "split": split}
        text = dict(row)
        values = metrics.get(split, {})
        for key in COMPARED:
            if isinstance(values.get(key), float):
                ci = values.get("confidence_intervals", {}).get(key)
                row[key] = values[key]
                text[key] = f"{values[key]:.4f}" + (f" ({ci['low']:.4f}–{ci['high']:.4f})" if ci else "")
                if ci:
                    row[f"{key}_low"], row[f"{key}_high"] = ci["low"], ci["high"]
        row["steps"] = text["steps"] = metrics.get("training", {}).get("steps")
        scores.append(row)
        shown.append(text)
    return scores, shown


def _paired(loaded: list[tuple[Path, dict, dict]], scored: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each later run against the first on the rows both were scored on (same split, same
    rows): the difference of their mean per-row metric with a paired bootstrap interval."""
    first, settings = loaded[0][0], loaded[0][1].get("evaluation") or {}
    split = scored[0]["split"]
    if not predictions_path(first, split).is_file():
        return []
    baseline, found = read_predictions(predictions_path(first, split)), []
    options = {"samples": settings.get("bootstrap_samples") or 1000, "level": settings.get("confidence_level", 0.95),
               "seed": 0}  # fmt: skip
    for (run, _, _), data in zip(loaded[1:], scored[1:]):
        same = all(data.get(k) == scored[0].get(k) for k in ("split", "rows", "sha256"))
        if same and predictions_path(run, split).is_file():
            difference = paired_difference(baseline, read_predictions(predictions_path(run, split)), **options)
            if difference is not None:
                found.append({"baseline": str(first), "run": str(run), "split": split, **difference})
    return found


def comparison(runs: list[Path]) -> dict[str, Any]:
    """What ``compare`` shows, as numbers (the board's compare page reads it): per run its
    scores with intervals (``scores``), the rows it was scored on (``data``), a warning for each
    run scored on other rows than the first (``warnings``), the paired differences from the first
    run on the same rows (``paired_differences``) and the config keys that differ
    (``differences``).

    Raises:
        TunesmithError: a run is not finished, or its files are damaged.
    """
    return _comparison(runs)[0]


def _comparison(runs: list[Path]) -> tuple[dict[str, Any], list[tuple[Path, dict, dict]], list[dict]]:
    """``comparison``'s dict, the runs' (path, config, metrics) and their scores as text."""
    loaded = []
    for run in map(Path, runs):
        metrics = _read(run, "metrics.json")
        if metrics is None:
            raise TunesmithError(f"{run} is not a finished run directory (no metrics.json)")
        loaded.append((run, _read(run, "config.yaml") or {}, metrics))
    names = [str(run) for run, _, _ in loaded]
    scores, shown = _score_rows(loaded)
    scored = [scored_data(run, row["split"], _read(run, "data_manifest.json") or {})
              for (run, _, _), row in zip(loaded, scores)]  # fmt: skip
    flat = [flatten({k: v for k, v in c.items() if k != "tune"}) for _, c, _ in loaded]
    differing = [k for k in sorted(set().union(*flat))
                 if len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1 and k != "runtime.output_dir"]  # fmt: skip
    differences = [{"key": k, **{n: json.dumps(f.get(k)) for n, f in zip(names, flat)}} for k in differing]
    report = {"runs": names, "scores": scores, "data": scored, "warnings": data_warnings(names, scored),
              "paired_differences": _paired(loaded, scored), "differences": differences}  # fmt: skip
    return report, loaded, shown


def compare(runs: list[Path], out: Path, *, strict: bool = False) -> dict[str, Any]:
    """Writes an HTML page (and a JSON beside it, its scores as numbers) comparing finished runs:
    their scores with intervals, a warning for runs scored on other rows than the first, the
    paired bootstrap interval of each later run's difference from the first on the same rows,
    the config keys that differ, and their validation curves on one plot (``comparison``).
    Neither file may exist yet.

    Raises:
        TunesmithError: a run is not finished, or (``strict``) runs were scored on different data.
    """
    from tunesmith.runs import atomic_write, claim_output

    out = claim_output(out, kind="file", what="--out")
    beside = out.with_suffix(".json")
    if beside == out:
        raise TunesmithError(f"--out {out}: name the HTML page (e.g. {out.with_suffix('.html')}); "
                             "its JSON is written beside it")  # fmt: skip
    claim_output(beside, kind="file", what="the JSON report beside --out")
    report, loaded, shown = _comparison(runs)
    warnings, scores, names = report["warnings"], report["scores"], report["runs"]
    if strict and warnings:
        raise TunesmithError("--strict: " + "; ".join(warnings))
    columns = ["run", "split"] + [k for k in COMPARED if any(k in r for r in scores)] + ["steps"]

    def curves(axes) -> None:
        for run, _, metrics in loaded:
            metric = metrics.get("training", {}).get("metric")
            path = run / "metrics.jsonl"
            if not path.is_file():
                continue
            records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
            points = [(r["step"], r[metric]) for r in records if r.get("split") == "validation" and metric in r]
            if points:
                axes.plot(*zip(*points), marker="o", label=f"{run.name} ({metric})")
        axes.set_xlabel("step")
        axes.set_ylabel("validation metric")
        axes.legend(fontsize=8)

    differences = report["differences"]
    parts = ["<h1>Runs compared</h1>", *(f"<p class=bad>Warning: {html.escape(w)}.</p>" for w in warnings),
             "<h2>Scores (95% bootstrap interval)</h2>", table(shown, columns),
             "<h2>Paired differences (same rows; paired bootstrap over rows)</h2>",
             table(report["paired_differences"], ["baseline", "run", "metric", "rows", "difference", "low", "high"]),
             "<h2>Validation curves</h2>", plot(curves), "<h2>Config differences</h2>",
             table(differences, ["key", *names]) if differences else "<p>The configs are the same.</p>"]  # fmt: skip
    atomic_write(out, page("tunesmith compare", parts))
    atomic_write(beside, json.dumps(report, indent=2))
    return report


def study_report(directory: Path, report: dict[str, Any]) -> Path:
    """``study.html``: the best trial, the history and importance plots, every trial."""
    parts = [f"<h1>Hyperparameter study: {html.escape(report['metric'])} ({report['direction']})</h1>",
             f"<p>{report['complete']} complete, {report['pruned']} pruned, {report['failed']} failed; sampler "
             f"{report['sampler']}, pruner {report['pruner']}, objective {report['objective']}. Trial time in total "
             f"{report['trial_seconds_total']:.0f} s.</p>"]  # fmt: skip
    if "best" in report:
        parts.append(f"<p class=good>Best: trial {report['best']['number']}, {report['metric']} "
                     f"{report['best']['value']:.4f}, {html.escape(str(report['best']['params']))}; its config is "
                     "best.yaml.</p>")  # fmt: skip
    parts += [
        image(directory / "history.png", "optimisation history"),
        image(directory / "importances.png", "importances"),
    ]
    rows = [{**t, "params": ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                                      for k, v in t["params"].items())} for t in report["trials"]]  # fmt: skip
    parts += [
        "<h2>Trials</h2>",
        table(rows, ["number", "state", "value", "seconds", "pruned_at_step", "params", "run"]),
    ]
    out = directory / "study.html"
    out.write_text(page("tunesmith study", parts), encoding="utf-8")
    return out
