"""``tunesmith monitor``: has what the model sees in production moved away from what it was
trained on, and has what it answers changed with it?

Reference: the run's own data (the training split for the vocabulary, the held-out split for
inputs) and the run's model's predictions on the held-out split. Live: a prediction log written
by ``tunesmith serve --log`` (its inputs, and the predictions it logged) or a prediction input
file (what ``tunesmith predict --input`` reads for the run's kind; the model predicts on it).
The task (tasks.contract.Monitored) says what the model reads of each input (a text, a pair, a
question with its context, a prompt), how its model embeds it, and which prediction fields
can drift. Measured, each against a threshold from the ``monitor:`` config section:

- text length: the Kolmogorov-Smirnov statistic between reference and live lengths (words);
- out-of-vocabulary rate: the share of live words never seen in training, against the same
  rate on the held-out split;
- embedding drift: a domain classifier (logistic regression on mean-pooled hidden states of the
  tuned model's encoder, or of a causal LM's decoder) tries to tell reference from live rows; its
  cross-validated ROC AUC is 0.5 when it cannot (no drift) and near 1 when the inputs differ;
- prediction drift, as the kind defines it (``Monitored.watches``): the population stability
  index (PSI) of predicted labels (of entity types for a tagger), the drop in mean confidence,
  the KS statistic of a regression's values or of generated lengths, the rise in the share of
  "no answer" answers or of empty generated outputs;
- per column of a table (tasks.contract.ColumnMonitored): the KS statistic of each number
  column, the PSI of each category column (text columns drift with the text checks above).
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.errors import TunesmithError
from tunesmith.tasks import require_stage
from tunesmith.tasks.contract import ColumnMonitored

WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def psi(reference: np.ndarray, live: np.ndarray, labels: list[str], floor: float = 1e-4) -> float:
    """Population stability index of two label samples: sum (live - ref) x ln(live / ref) over
    labels, with shares floored so an empty label does not make it infinite."""
    ref = np.array([(reference == label).mean() if len(reference) else 0.0 for label in labels]).clip(floor)
    now = np.array([(live == label).mean() if len(live) else 0.0 for label in labels]).clip(floor)
    return float(((now - ref) * np.log(now / ref)).sum())


def domain_auc(reference: np.ndarray, live: np.ndarray, seed: int) -> float:
    """Cross-validated ROC AUC of a classifier that separates reference rows from live rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features = np.vstack([reference, live])
    origin = np.r_[np.zeros(len(reference)), np.ones(len(live))]
    folds = min(5, len(reference), len(live))
    if folds < 2:
        raise TunesmithError("embedding drift needs at least 2 reference and 2 live rows")
    scores = cross_val_predict(make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)), features,
                               origin, cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                               method="predict_proba")[:, 1]  # fmt: skip
    return float(roc_auc_score(origin, scores))


@dataclass
class Live:
    """The live side: raw inputs (as the task's ``predict`` takes them) and, from a serve log,
    the prediction row logged with each."""

    inputs: list
    rows: list[dict] | None
    """The logged predictions (a ``serve --log`` file); None: the model predicts on ``inputs``."""
    where: list[str]
    """Where each input was read ("FILE, line N"), for errors about its logged prediction."""

    def sample(self, max_rows: int, rng: np.random.Generator) -> Live:
        """At most ``max_rows`` of the rows, drawn with ``rng``, in their order."""
        keep = _sample(len(self.inputs), max_rows, rng)
        return Live([self.inputs[i] for i in keep], None if self.rows is None else [self.rows[i] for i in keep],
                    [self.where[i] for i in keep])  # fmt: skip


def read_live(path: Path, task: Any, text_column: str | None = None) -> Live:
    """The live inputs of a ``serve --log`` file (JSONL records with ``time``, the input under
    ``input`` or ``text``, and the logged prediction's fields) or of a prediction input file,
    read by the run's task (``read_inputs``) or, with ``text_column``, from that column of a
    table (in a log: from that field).

    Raises:
        TunesmithError: a missing or malformed file or record, naming it (file and line).
    """
    from tunesmith.data.load import jsonl_records, read_table

    if not path.is_file():
        raise TunesmithError(f"--live: file not found: {path}")
    if path.suffix.lower() == ".jsonl":
        records = list(jsonl_records(path))
        if records and isinstance(records[0][1], dict) and "time" in records[0][1]:  # what serve writes
            return _read_log(records, text_column)
    if text_column is not None:
        table = read_table(str(path))
        if text_column not in table.frame.columns:
            raise TunesmithError(f"--text-column {text_column!r} is not a column of {table.source}; "
                                 f"columns: {list(table.frame.columns)}")  # fmt: skip
        inputs = table.frame[text_column].dropna().astype(str).tolist()
    else:
        inputs = task.read_inputs(path)
    if not inputs:
        raise TunesmithError(f"{path}: no inputs to monitor")
    return Live(list(inputs), None, [f"{path}, input {i}" for i in range(1, len(inputs) + 1)])


def _read_log(records: list[tuple[str, Any]], text_column: str | None) -> Live:
    """A serve log's inputs and logged prediction rows (serve writes the input under ``text``
    when it is a string, else under ``input``, beside the prediction row's fields)."""
    inputs, rows, where = [], [], []
    for place, record in records:
        if not isinstance(record, dict):
            raise TunesmithError(f"{place}: a serve --log record is a JSON object, not {str(record)[:60]!r}")
        key = text_column or ("input" if "input" in record else "text")
        if key not in record:
            raise TunesmithError(f"{place}: no {key!r} field (the input the server predicted on)")
        inputs.append(record[key])
        rows.append(record)
        where.append(place)
    return Live(inputs, rows, where)


def monitor(run_dir: str | Path, live_path: str | Path, out: str | Path, *, text_column: str | None = None,
            max_rows: int = 2000, log=print) -> dict[str, Any]:  # fmt: skip
    """Compares live inputs and predictions with the run's reference; writes ``out/monitor.json``
    and ``out/monitor.html`` (``out`` must be new or empty: an earlier report is never replaced).
    ``report["drift"]`` is True when any check passes its threshold.

    Raises:
        TunesmithError: not a run directory, a kind monitor does not cover, an output that
            exists, or a bad live file (named with its line or input).
    """
    from tunesmith.runs import atomic_write, claim_output
    from tunesmith.tasks.run import load_run, load_task

    if (Path(run_dir) / "tunesmith.json").is_file():
        raise TunesmithError(f"{run_dir}: monitor needs the run directory (its training data is the reference), "
                             "not an export")  # fmt: skip
    run, config, task = load_task(run_dir)
    require_stage(task, "monitor", what=str(run.path))
    out = claim_output(out, kind="dir", what="--out")
    live_path, settings, seed = Path(live_path), config.monitor, config.runtime.seed
    rng = np.random.default_rng(seed)
    live = read_live(live_path, task, text_column)  # before the model loads: a bad file costs nothing
    try:
        task.monitor_texts(live.inputs)
    except TunesmithError as error:
        raise TunesmithError(f"{live_path}: {error}") from None
    live = live.sample(max_rows, rng)
    train, held_split, held = _reference_frames(run.data_dir)
    held_inputs = task.monitor_inputs(held)
    held_inputs = [held_inputs[i] for i in _sample(len(held_inputs), max_rows, rng)]
    vocabulary = {w for t in task.monitor_texts(task.monitor_inputs(train)) for w in words(t)}
    log(f"Reference: {len(train)} training rows, {len(held_inputs)} {held_split} rows; live: {len(live.inputs)} rows")

    loaded = load_run(run_dir, verify_hashes=True)  # never judge a model that changed after training
    model, processor = loaded.model, loaded.tokenizer
    held_texts, live_texts = task.monitor_texts(held_inputs), task.monitor_texts(live.inputs)
    ref_lengths, live_lengths = [len(words(t)) for t in held_texts], [len(words(t)) for t in live_texts]
    embeddings = task.embed(model, processor, held_inputs), task.embed(model, processor, live.inputs)
    checks = {
        "length_ks": _ks_check(ref_lengths, live_lengths, settings.length_ks, "words"),
        "oov_rate_increase": _oov_check(_oov_rate(held_texts, vocabulary), _oov_rate(live_texts, vocabulary),
                                        settings.oov_rate_increase),
        "domain_auc": _check(domain_auc(*embeddings, seed), settings.domain_auc, {}),
    }  # fmt: skip
    columns = _column_checks(task, held_inputs, live.inputs, settings, checks)
    watched = _prediction_checks(task, model, processor, run, held_inputs, live, settings, checks, log)
    report = {"run": str(run.path), "kind": task.kind, "live": str(live_path), "reference_split": held_split,
              "rows": {"reference": len(held_inputs), "live": len(live.inputs)},
              "live_predictions": "logged" if live.rows is not None else "predicted", "checks": checks,
              "drift": any(c["drift"] for c in checks.values()),
              "drifted": [n for n, c in checks.items() if c["drift"]]}  # fmt: skip
    page = _html(report, ref_lengths, live_lengths, watched, columns)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "monitor.json", json.dumps(report, indent=2))
    atomic_write(out / "monitor.html", page)
    return report


def _column_checks(
    task, held_inputs: list, live_inputs: list, settings, checks: dict
) -> list[tuple[str, str, list, list]]:
    """Adds a drift check per feature column of a table (tasks.contract.ColumnMonitored): the KS
    statistic of a number column (missing cells left out) and the rise of its missing share, the
    PSI of a category column (missing as a category).
    Returns each column's test with its reference and live values (for the report's plots)."""
    if not isinstance(task, ColumnMonitored):
        return []
    reference, live = task.column_values(held_inputs), task.column_values(live_inputs)
    found = []
    for name, (test, ref_values) in reference.items():
        live_values = live[name][1]
        if test == "ks":
            ref_missing, live_missing = float(np.mean(np.isnan(ref_values))), float(np.mean(np.isnan(live_values)))
            checks[f"column {name} missing"] = _check(live_missing - ref_missing, settings.column_missing_increase,
                                                      {"reference_missing_share": ref_missing,
                                                       "live_missing_share": live_missing})  # fmt: skip
            ref_values = [v for v in ref_values if not np.isnan(v)]
            live_values = [v for v in live_values if not np.isnan(v)]
            if not ref_values or not live_values:  # nothing to compare: the missing check says why
                continue
            checks[f"column {name}"] = _ks_check(ref_values, live_values, settings.column_ks, "value")
        else:
            checks[f"column {name}"] = _compare("psi", ref_values, live_values, settings.column_psi)
        found.append((name, test, ref_values, live_values))
    return found


def _prediction_checks(task, model, processor, run, held_inputs: list, live: Live, settings, checks: dict,
                       log) -> list[tuple[Any, list, list]]:  # fmt: skip
    """Adds the kind's prediction-drift checks to ``checks``: the model predicts on the reference
    inputs, and on the live ones unless the log holds its predictions. Returns each watch with
    its reference and live values (for the report's plots)."""
    if not task.watches:
        return []
    temperature = run.temperature() if task.calibrates else None
    log(f"Predicting {len(held_inputs)} reference rows" + ("" if live.rows is not None else
                                                           f" and {len(live.inputs)} live rows"))  # fmt: skip
    ref_rows = task.predict(model, processor, held_inputs, temperature=temperature)
    live_rows = live.rows if live.rows is not None else task.predict(model, processor, live.inputs,
                                                                     temperature=temperature)  # fmt: skip
    ref_values = _watched(task, ref_rows, None)
    live_values = _watched(task, live_rows, live.where if live.rows is not None else None)
    watched = []
    for watch in task.watches:
        threshold = getattr(settings, watch.threshold)  # the monitor: config key the task names
        checks[watch.name] = _compare(watch.test, ref_values[watch.name], live_values[watch.name], threshold)
        watched.append((watch, ref_values[watch.name], live_values[watch.name]))
    return watched


def _watched(task, rows: list[dict], where: list[str] | None) -> dict[str, list]:
    """Each watch's values over prediction rows; a logged row that lacks them is named by its line."""
    values: dict[str, list] = {watch.name: [] for watch in task.watches}
    for number, row in enumerate(rows):
        try:
            found = task.watched_values(row)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            if where is None:  # the model's own rows: not a user's mistake
                raise
            problem = f"no {error} field" if isinstance(error, KeyError) else f"a field it cannot read ({error})"
            raise TunesmithError(f"{where[number]}: the logged prediction has {problem}; was the log written by a "
                                 "server of this run?") from None  # fmt: skip
        for name, value in found.items():
            values[name].append(value)
    return values


def _compare(test: str, reference: list, live: list, threshold: float) -> dict[str, Any]:
    """One prediction check (tasks.contract.Watch.test) of reference against live values."""
    if test == "psi":
        ref, now = np.array(_flat(reference), dtype=object), np.array(_flat(live), dtype=object)
        names = sorted({str(c) for c in ref} | {str(c) for c in now})
        ref, now = ref.astype(str), now.astype(str)
        return _check(psi(ref, now, names), threshold,
                      {"reference_shares": {n: float((ref == n).mean()) if len(ref) else 0.0 for n in names},
                       "live_shares": {n: float((now == n).mean()) if len(now) else 0.0 for n in names}})  # fmt: skip
    if test == "ks":
        return _ks_check(reference, live, threshold, "value")
    ref_mean, live_mean = float(np.mean(reference)), float(np.mean(live))
    change = {"increase": live_mean - ref_mean, "decrease": ref_mean - live_mean}[test]
    return _check(change, threshold, {"reference_mean": ref_mean, "live_mean": live_mean})


def _flat(values: list) -> list:
    """Categories of rows that give one category each or a list of them."""
    return [c for v in values for c in (v if isinstance(v, list) else [v])]


def _reference_frames(data_dir: Path) -> tuple[Any, str, Any]:
    """The run's training split, the name of its held-out split (test, else validation) and that split."""
    import pandas as pd

    held_split = "test" if (data_dir / "test.parquet").is_file() else "validation"
    return pd.read_parquet(data_dir / "train.parquet"), held_split, pd.read_parquet(data_dir / f"{held_split}.parquet")


def _sample(count: int, max_rows: int, rng: np.random.Generator) -> list[int]:
    """At most ``max_rows`` positions of ``count``, drawn with ``rng``, in order."""
    if count <= max_rows:
        return list(range(count))
    return np.sort(rng.choice(count, max_rows, replace=False)).tolist()


def _oov_rate(texts: list[str], vocabulary: set[str]) -> float:
    """The share of the texts' words that are not in ``vocabulary``."""
    tokens = [w for t in texts for w in words(t)]
    return sum(w not in vocabulary for w in tokens) / max(len(tokens), 1)


def _check(value: float, threshold: float, detail: dict) -> dict[str, Any]:
    """One check's entry in the report: drift when the value passes the threshold."""
    return {"value": value, "threshold": threshold, "drift": bool(value > threshold), **detail}


def _ks_check(reference: list, live: list, threshold: float, unit: str) -> dict[str, Any]:
    """The Kolmogorov-Smirnov statistic between reference and live numbers (lengths in ``unit``)."""
    from scipy.stats import ks_2samp

    statistic = ks_2samp(reference, live)
    return _check(float(statistic.statistic), threshold,
                  {f"reference_mean_{unit}": float(np.mean(reference)), f"live_mean_{unit}": float(np.mean(live)),
                   "p_value": float(statistic.pvalue)})  # fmt: skip


def _oov_check(ref_oov: float, live_oov: float, threshold: float) -> dict[str, Any]:
    """The rise in the out-of-vocabulary rate from the held-out split to live."""
    return _check(live_oov - ref_oov, threshold, {"reference_oov_rate": ref_oov, "live_oov_rate": live_oov})


def _html(report: dict, ref_lengths: list[int], live_lengths: list[int], watched: list, columns: list) -> str:
    """The report page: the verdict, the checks, and a plot per distribution compared."""
    from tunesmith.evaluate.html import page, plot, table

    verdict = (
        ("<p class=bad>Drift: " + ", ".join(report["drifted"]) + "</p>")
        if report["drift"]
        else "<p class=good>No drift past the thresholds.</p>"
    )
    rows = [{"check": n, "value": c["value"], "threshold": c["threshold"], "drift": "yes" if c["drift"] else "no"}
            for n, c in report["checks"].items()]  # fmt: skip
    how = "as logged" if report["live_predictions"] == "logged" else "predicted by the run's model"
    parts = ["<h1>Drift monitor</h1>", f"<p>Run {report['run']} ({report['kind']}); live data {report['live']} "
             f"({report['rows']['live']} rows, predictions {how}) against the run's {report['reference_split']} "
             f"split ({report['rows']['reference']} rows).</p>", verdict,
             table(rows, ["check", "value", "threshold", "drift"]), "<h2>Input length</h2>",
             plot(_histogram(ref_lengths, live_lengths, "words per input"))]  # fmt: skip
    for watch, reference, live in watched:
        draw = _shares if watch.test == "psi" else _rates if watch.test == "increase" else _histogram
        parts += [f"<h2>{watch.name}</h2>", plot(draw(reference, live, watch.description))]
    for name, test, reference, live in columns:
        draw = _shares if test == "psi" else _histogram
        parts += [f"<h2>Column {html.escape(name)}</h2>", plot(draw(reference, live, name))]
    return page("tunesmith monitor", parts)


def _histogram(reference: list, live: list, label: str):
    def draw(axes):
        top = max(np.percentile(reference, 99), np.percentile(live, 99))
        low = min(np.min(reference), np.min(live))
        bins = np.linspace(low, top + (1 if top == low else 0), 30)
        axes.hist(reference, bins=bins, alpha=0.6, density=True, label="reference")
        axes.hist(live, bins=bins, alpha=0.6, density=True, label="live")
        axes.set_xlabel(label)
        axes.legend()

    return draw


def _shares(reference: list, live: list, label: str, most: int = 20):
    ref, now = np.array(_flat(reference), dtype=str), np.array(_flat(live), dtype=str)
    names = sorted(set(ref) | set(now), key=lambda n: -max((ref == n).mean() if len(ref) else 0,
                                                          (now == n).mean() if len(now) else 0))[:most]  # fmt: skip

    def draw(axes):
        x = np.arange(len(names))
        axes.bar(x - 0.2, [(ref == n).mean() if len(ref) else 0 for n in names], 0.4, label="reference")
        axes.bar(x + 0.2, [(now == n).mean() if len(now) else 0 for n in names], 0.4, label="live")
        axes.set_xticks(x, names, rotation=30, ha="right")
        axes.set_ylabel(f"share ({label})")
        axes.legend()

    return draw


def _rates(reference: list, live: list, label: str):
    def draw(axes):
        axes.bar([0, 1], [float(np.mean(reference)), float(np.mean(live))], 0.5, color=["C0", "C1"])
        axes.set_xticks([0, 1], ["reference", "live"])
        axes.set_ylabel(f"share: {label}")

    return draw
