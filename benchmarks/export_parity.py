"""ONNX parity of the tagger and the question answerer on real MiniLM runs, and serve from the
exports against serve from the runs.

    .venv/bin/python benchmarks/export_parity.py [--qa-epochs 2] [--rows N] [--serve-rows 300]

NER: the CoNLL-2003 run of examples/conll2003.yaml at benchmarks/out/conll2003 (reused when it
exists, else trained with ``--ner-epochs`` epochs), exported with ``tunesmith export --format onnx
--quantize int8``; the export checks parity on the run's whole test split (3,453 sentences):
entity agreement (sentences whose decoded entity spans are identical), token agreement (words
with the same tag), max logit difference.

QA: examples/squad.yaml trained briefly (``--qa-epochs``) on train-v1.1.json; its test split is
the whole of dev-v1.1.json (810 questions), on which the export checks answer agreement
(questions whose best span, or no-answer, is identical) and the max logit difference.

Serve: the first ``--serve-rows`` test inputs of each kind through ``Predictor`` on the run
(PyTorch) and on each ONNX model; the share of rows identical up to scores (entity spans with
offsets and labels; answers with offsets), and the largest score difference.

Writes benchmarks/out/export_parity/export_parity.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
DATA = ROOT.parent / "shared" / "data"  # local copies: the examples themselves read the Hub
CONLL = [f"data.train={DATA}/conll2003/train.txt", f"data.validation={DATA}/conll2003/dev.txt",
         f"data.test={DATA}/conll2003/test.txt"]  # fmt: skip
SQUAD = [f"data.train={DATA}/squad/train-v1.1.json", f"data.test={DATA}/squad/dev-v1.1.json"]


def trained(config: str, run: Path, overrides: list[str]) -> tuple[Path, float | None]:
    """The run at ``run``: reused when finished, else trained from ``config`` with ``overrides``."""
    from tunesmith import api

    if (run / "metrics.json").is_file():
        return run, None
    start = time.perf_counter()
    api.train(ROOT / config, overrides=[*overrides, f"runtime.output_dir={run}"])
    return run, round(time.perf_counter() - start, 1)


def test_inputs(run: Path, count: int) -> list:
    """The first ``count`` inputs of the run's test split, as predict and serve take them."""
    import pandas as pd

    frame = pd.read_parquet(run / "data" / "test.parquet").iloc[:count]
    if "tokens" in frame.columns:  # sentences: their words, space-separated
        return [" ".join(tokens) for tokens in frame["tokens"]]
    return frame[["question", "context"]].to_dict("records")


def without_scores(row: dict) -> dict:
    return {k: [{a: b for a, b in e.items() if a != "score"} for e in v] if k == "entities" else v
            for k, v in row.items() if k != "score"}  # fmt: skip


def scores(row: dict) -> list[float]:
    return [e["score"] for e in row.get("entities", [])] + ([row["score"]] if "score" in row else [])


def serve_agreement(run: Path, export_dir: Path, inputs: list) -> dict:
    """Rows from serve's predictor on the run against those from each ONNX model of the export."""
    from tunesmith.ship.serve import Predictor

    reference = Predictor(run).predict(inputs)
    found = {}
    for name in ("model.onnx", "model_int8.onnx"):
        if not (export_dir / name).is_file():
            continue
        start = time.perf_counter()
        rows = Predictor(export_dir, onnx_file=name).predict(inputs)
        same = [without_scores(a) == without_scores(b) for a, b in zip(reference, rows)]
        gaps = [abs(x - y) for a, b, ok in zip(reference, rows, same) if ok for x, y in zip(scores(a), scores(b))]
        found[name] = {"rows": len(rows), "identical_rows_up_to_scores": sum(same) / len(same),
                       "max_score_difference": max(gaps, default=0.0), "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
    return found


def exported(run: Path, out: Path, rows: int | None, serve_rows: int) -> dict:
    """``tunesmith export --format onnx --quantize int8`` of ``run`` (min agreement 0: the int8
    figures are recorded whatever they are), and serve's agreement."""
    import shutil

    from tunesmith.ship.export import export

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    report = export(run, out, fmt="onnx", quantize="int8", rows=rows, min_agreement=0.0)
    seconds = round(time.perf_counter() - start, 1)
    return {"run": str(run.relative_to(ROOT)), "split": report["split"], "export_seconds": seconds,
            "parity": report["models"], "serve": serve_agreement(run, out, test_inputs(run, serve_rows))}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ner-epochs", type=int, default=1, help="only when benchmarks/out/conll2003 is missing")
    parser.add_argument("--qa-epochs", type=int, default=2)
    parser.add_argument("--rows", type=int, default=None, help="parity rows (default: the whole test split)")
    parser.add_argument("--serve-rows", type=int, default=300)
    args = parser.parse_args()
    out = OUT / "export_parity"
    out.mkdir(parents=True, exist_ok=True)
    result = {}
    ner, seconds = trained("examples/conll2003.yaml", OUT / "conll2003", [f"train.num_epochs={args.ner_epochs}",
                                                                         *CONLL])  # fmt: skip
    result["token_classification"] = {"train_seconds": seconds, **exported(ner, out / "ner-onnx", args.rows,
                                                                            args.serve_rows)}  # fmt: skip
    qa, seconds = trained("examples/squad.yaml", out / "squad-run", [f"train.num_epochs={args.qa_epochs}", *SQUAD])
    result["question_answering"] = {"train_seconds": seconds, "epochs": args.qa_epochs,
                                    **exported(qa, out / "squad-onnx", args.rows, args.serve_rows)}  # fmt: skip
    for kind in result:
        metrics = json.loads(((ner if kind == "token_classification" else qa) / "metrics.json").read_text())
        result[kind]["test_f1"] = metrics["test"]["f1"]
    (out / "export_parity.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
