"""``tunesmith monitor``: has what the model sees in production moved away from what it was
trained on?

Reference: the run's own data (training texts for vocabulary and lengths, the held-out split
for predictions). Live: a prediction log written by ``tunesmith serve --log`` or any data file
with a text column. Measured, each against a threshold from the ``monitor:`` config section:

- text length: the Kolmogorov-Smirnov statistic between reference and live lengths (words);
- out-of-vocabulary rate: the share of live words never seen in training, against the same
  rate on the held-out split;
- embedding drift: a domain classifier (logistic regression on the tuned encoder's mean-pooled
  embeddings) tries to tell reference from live rows; its cross-validated ROC AUC is 0.5 when
  it cannot (no drift) and near 1 when the inputs differ;
- prediction distribution: the population stability index (PSI) of the predicted labels;
- mean confidence: the drop in the mean highest-class probability.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.errors import TunesmithError
from tunesmith.tasks import require_stage

WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def psi(reference: np.ndarray, live: np.ndarray, labels: list[str], floor: float = 1e-4) -> float:
    """Population stability index of two label samples: sum (live - ref) x ln(live / ref) over
    labels, with shares floored so an empty label does not make it infinite."""
    ref = np.array([(reference == label).mean() for label in labels]).clip(floor)
    now = np.array([(live == label).mean() for label in labels]).clip(floor)
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


def read_live(path: Path, text_column: str | None) -> list[str]:
    """Texts of a prediction log (JSONL with a ``text`` field) or of a data file."""
    if not path.is_file():
        raise TunesmithError(f"--live: file not found: {path}")
    if path.suffix.lower() == ".jsonl":
        from tunesmith.data.load import jsonl_records

        texts = []
        for where, record in jsonl_records(path):
            if not isinstance(record, dict) or not isinstance(record.get(text_column or "text"), str):
                raise TunesmithError(f"{where}: no {(text_column or 'text')!r} string field")
            texts.append(record[text_column or "text"])
    else:
        from tunesmith.data.load import detect_columns, read_table

        table = read_table(str(path))
        columns = list(table.frame.columns)
        column = text_column or (
            columns[0] if len(columns) == 1 else detect_columns(table.frame, None, None, table.source)[0]
        )
        if column not in table.frame.columns:
            raise TunesmithError(f"--text-column {column!r} is not a column of {table.source}; columns: {columns}")
        texts = table.frame[column].dropna().astype(str).tolist()
    if not texts:
        raise TunesmithError(f"{path}: no texts to monitor")
    return texts


def monitor(run_dir: str | Path, live_path: str | Path, out: str | Path, *, text_column: str | None = None,
            max_rows: int = 2000, log=print) -> dict[str, Any]:  # fmt: skip
    """Compares live inputs and predictions with the run's reference; writes ``out/monitor.json``
    and ``out/monitor.html`` (``out`` must be new or empty: an earlier report is never replaced).
    ``report["drift"]`` is True when any check passes its threshold."""
    from tunesmith.config import load_config
    from tunesmith.models.embed import mean_pooled
    from tunesmith.runs import RunDir, atomic_write, claim_output
    from tunesmith.ship.serve import Predictor

    task_file = Path(run_dir) / "task.json"
    if task_file.is_file():  # a run's kind, before serve's loader would refuse it in its own words
        require_stage(json.loads(task_file.read_text(encoding="utf-8"))["type"], "monitor", what=str(run_dir))
    out = claim_output(out, kind="dir", what="--out")  # before the model loads
    predictor = Predictor(run_dir)
    if predictor.metadata["kind"] != "run":
        raise TunesmithError(f"{run_dir}: monitor needs the run directory (its training data is the reference)")
    run = RunDir.open(run_dir)
    config = load_config(run.path / "config.yaml")
    model, tokenizer, label_names = predictor.model, predictor.tokenizer, predictor.scorer.label_names
    settings, seed = config.monitor, config.runtime.seed
    rng = np.random.default_rng(seed)
    train, held_split, held = _reference_texts(run.data_dir)
    held = _sample(held, max_rows, rng)
    live = _sample(read_live(Path(live_path), text_column), max_rows, rng)
    log(f"Reference: {len(train)} training rows, {len(held)} {held_split} rows; live: {len(live)} rows")
    vocabulary = {w for t in train for w in words(t)}

    ref_lengths, live_lengths = [len(words(t)) for t in held], [len(words(t)) for t in live]
    encoder = model.base_model
    ref_embed = mean_pooled(encoder, tokenizer, held, max_length=config.model.max_length)
    live_embed = mean_pooled(encoder, tokenizer, live, max_length=config.model.max_length)
    ref_pred, live_pred = predictor.predict(held), predictor.predict(live)
    checks = {
        "length_ks": _length_check(ref_lengths, live_lengths, settings.length_ks),
        "oov_rate_increase": _oov_check(_oov_rate(held, vocabulary), _oov_rate(live, vocabulary),
                                        settings.oov_rate_increase),
        "domain_auc": _check(domain_auc(ref_embed, live_embed, seed), settings.domain_auc, {}),
    }  # fmt: skip
    ref_labels = ref_conf = live_labels = live_conf = None
    if predictor.scorer.calibrates:  # one label per row, with a probability per class
        ref_labels = np.array([p["label"] for p in ref_pred])
        live_labels = np.array([p["label"] for p in live_pred])
        checks["prediction_psi"] = _psi_check(ref_labels, live_labels, label_names, settings.psi)
        ref_conf = np.array([max(p["scores"].values()) for p in ref_pred])
        live_conf = np.array([max(p["scores"].values()) for p in live_pred])
        checks["confidence_drop"] = _check(float(ref_conf.mean() - live_conf.mean()), settings.confidence_drop,
              {"reference_mean_confidence": float(ref_conf.mean()), "live_mean_confidence": float(live_conf.mean())})  # fmt: skip
    report = {"run": str(run.path), "live": str(live_path), "reference_split": held_split, "rows": {"reference": len(held),
              "live": len(live)}, "checks": checks, "drift": any(c["drift"] for c in checks.values()),
              "drifted": [n for n, c in checks.items() if c["drift"]]}  # fmt: skip
    page = _html(report, ref_lengths, live_lengths, ref_labels, live_labels, ref_conf, live_conf, label_names)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "monitor.json", json.dumps(report, indent=2))
    atomic_write(out / "monitor.html", page)
    return report


def _reference_texts(data_dir: Path) -> tuple[list[str], str, list[str]]:
    """The run's training texts, the name of its held-out split (test, else validation) and that
    split's texts."""
    import pandas as pd

    train = pd.read_parquet(data_dir / "train.parquet")["text"].astype(str).tolist()
    held_split = "test" if (data_dir / "test.parquet").is_file() else "validation"
    return train, held_split, pd.read_parquet(data_dir / f"{held_split}.parquet")["text"].astype(str).tolist()


def _sample(texts: list[str], max_rows: int, rng: np.random.Generator) -> list[str]:
    """At most ``max_rows`` of the texts, drawn with ``rng``, in their order."""
    if len(texts) <= max_rows:
        return texts
    return [texts[i] for i in np.sort(rng.choice(len(texts), max_rows, replace=False))]


def _oov_rate(texts: list[str], vocabulary: set[str]) -> float:
    """The share of the texts' words that are not in ``vocabulary``."""
    tokens = [w for t in texts for w in words(t)]
    return sum(w not in vocabulary for w in tokens) / max(len(tokens), 1)


def _check(value: float, threshold: float, detail: dict) -> dict[str, Any]:
    """One check's entry in the report: drift when the value passes the threshold."""
    return {"value": value, "threshold": threshold, "drift": bool(value > threshold), **detail}


def _length_check(ref_lengths: list[int], live_lengths: list[int], threshold: float) -> dict[str, Any]:
    """The Kolmogorov-Smirnov statistic between reference and live text lengths."""
    from scipy.stats import ks_2samp

    statistic = ks_2samp(ref_lengths, live_lengths)
    return _check(float(statistic.statistic), threshold,
                  {"reference_mean_words": float(np.mean(ref_lengths)), "live_mean_words": float(np.mean(live_lengths)),
                   "p_value": float(statistic.pvalue)})  # fmt: skip


def _oov_check(ref_oov: float, live_oov: float, threshold: float) -> dict[str, Any]:
    """The rise in the out-of-vocabulary rate from the held-out split to live."""
    return _check(live_oov - ref_oov, threshold, {"reference_oov_rate": ref_oov, "live_oov_rate": live_oov})


def _psi_check(ref_labels: np.ndarray, live_labels: np.ndarray, names: list[str], threshold: float) -> dict[str, Any]:
    """The population stability index of the predicted labels, with each label's share."""
    return _check(psi(ref_labels, live_labels, names), threshold,
                  {"reference_shares": {n: float((ref_labels == n).mean()) for n in names},
                   "live_shares": {n: float((live_labels == n).mean()) for n in names}})  # fmt: skip


def _html(report, ref_lengths, live_lengths, ref_labels, live_labels, ref_conf, live_conf, names) -> str:
    from tunesmith.evaluate.html import page, plot, table

    def lengths(axes):
        top = max(np.percentile(ref_lengths, 99), np.percentile(live_lengths, 99)) + 1
        bins = np.linspace(0, top, 30)
        axes.hist(ref_lengths, bins=bins, alpha=0.6, density=True, label="reference")
        axes.hist(live_lengths, bins=bins, alpha=0.6, density=True, label="live")
        axes.set_xlabel("words per text")
        axes.legend()

    verdict = (
        ("<p class=bad>Drift: " + ", ".join(report["drifted"]) + "</p>")
        if report["drift"]
        else "<p class=good>No drift past the thresholds.</p>"
    )
    rows = [{"check": n, "value": c["value"], "threshold": c["threshold"], "drift": "yes" if c["drift"] else "no"}
            for n, c in report["checks"].items()]  # fmt: skip
    parts = ["<h1>Drift monitor</h1>", f"<p>Run {report['run']}; live data {report['live']} ({report['rows']['live']} rows) "
             f"against the run's {report['reference_split']} split ({report['rows']['reference']} rows).</p>", verdict,
             table(rows, ["check", "value", "threshold", "drift"]), "<h2>Text length</h2>", plot(lengths)]  # fmt: skip
    if ref_labels is not None:

        def labels(axes):
            x = np.arange(len(names))
            axes.bar(x - 0.2, [(ref_labels == n).mean() for n in names], 0.4, label="reference")
            axes.bar(x + 0.2, [(live_labels == n).mean() for n in names], 0.4, label="live")
            axes.set_xticks(x, names, rotation=30, ha="right")
            axes.set_ylabel("share of predictions")
            axes.legend()

        def confidence(axes):
            bins = np.linspace(1 / len(names), 1, 25)
            axes.hist(ref_conf, bins=bins, alpha=0.6, density=True, label="reference")
            axes.hist(live_conf, bins=bins, alpha=0.6, density=True, label="live")
            axes.set_xlabel("confidence (highest class probability)")
            axes.legend()

        parts += ["<h2>Predicted labels</h2>", plot(labels), "<h2>Confidence</h2>", plot(confidence)]
    return page("tunesmith monitor", parts)
