"""Bulk prediction: `tunesmith predict --input FILE` against transformers' `pipeline` on the same
model and rows (issue 24, item 3).

    .venv/bin/python benchmarks/serve_speed.py --rounds 0   # once: trains and exports the model
    .venv/bin/python benchmarks/bulk_predict.py --rows 50000 --rounds 2 --memory-rows 10000 100000

The model is serve_speed.py's MiniLM sentiment classifier (benchmarks/out/serve_speed: the run and
its int8 ONNX export). The rows are SST-2 training phrases (with replacement past the file's
67,349), written once to a CSV. Each setup runs as its own process on the same CSV, setups
alternated over ``--rounds``; each process's wall time covers loading the model, reading the file
and writing every label (its peak RSS from the kernel's rusage of that process, ``os.wait4``):

- ``pipeline``: what a user writes with transformers: read the CSV with pandas, then
  ``pipeline("text-classification", model=RUN/model)`` over the list with ``batch_size=64``,
  ``truncation=True, max_length=128``, writing one JSON line per row;
- ``tunesmith-run``: ``tunesmith predict RUN --input rows.csv --output out.jsonl`` (the run's
  PyTorch model);
- ``tunesmith-onnx``: the same on the export (its int8 ONNX model by default);
- ``tunesmith-onnx-fp32``: the same with ``--onnx-file model.onnx`` (the export's fp32 ONNX model).

Labels are compared row by row with the pipeline's. ``--memory-rows`` repeats ``--memory-setups``
(default ``tunesmith-onnx``) at other sizes for the peak-RSS figures. Writes benchmarks/out/bulk_predict.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
MODEL = ROOT / "benchmarks" / "out" / "serve_speed"
OUT = ROOT / "benchmarks" / "out" / "bulk_predict"
PYTHON = str(Path(sys.executable))
TUNESMITH = str(Path(sys.executable).with_name("tunesmith"))

PIPELINE = """
import json, sys
import pandas as pd
from transformers import pipeline
source, model, out = sys.argv[1:4]
texts = pd.read_csv(source, dtype=str, keep_default_na=False)["text"].tolist()
classify = pipeline("text-classification", model=model, device="cpu")
with open(out, "w", encoding="utf-8") as handle:
    for row in classify(texts, batch_size=64, truncation=True, max_length=128):
        handle.write(json.dumps({"label": row["label"], "score": row["score"]}) + "\\n")
"""


def rows_file(rows: int) -> Path:
    """``rows`` SST-2 training phrases in a CSV (drawn with replacement past the file's size, seed 0)."""
    path = OUT / f"rows-{rows}.csv"
    if not path.is_file():
        phrases = pd.read_csv(DATA / "sst2" / "train.tsv", sep="\t", quoting=3)["sentence"].astype(str)
        picked = np.random.default_rng(0).choice(len(phrases), rows, replace=rows > len(phrases))
        OUT.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"text": phrases.iloc[picked].tolist()}).to_csv(path, index=False)
    return path


def run(setup: str, source: Path, out: Path) -> dict:
    """One setup as its own process: wall seconds, peak RSS (MiB), labels written."""
    out.unlink(missing_ok=True)
    command = {
        "pipeline": [PYTHON, "-c", PIPELINE, str(source), str(MODEL / "run" / "model"), str(out)],
        "tunesmith-run": [TUNESMITH, "predict", str(MODEL / "run"), "--input", str(source), "--output", str(out)],
        "tunesmith-onnx": [TUNESMITH, "predict", str(MODEL / "export"), "--input", str(source), "--output", str(out)],
        "tunesmith-onnx-fp32": [TUNESMITH, "predict", str(MODEL / "export"), "--input", str(source), "--output",
                                str(out), "--onnx-file", "model.onnx"],
    }[setup]  # fmt: skip
    log = out.with_suffix(".log")
    started = time.perf_counter()
    with log.open("w") as handle:
        child = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT,
                                 env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage: its peak RSS in KiB
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{setup} failed:\n{log.read_text()[-3000:]}")
    labels = [json.loads(line)["label"] for line in out.read_text(encoding="utf-8").splitlines()]
    return {"setup": setup, "rows": len(labels), "seconds": seconds, "rows_per_s": len(labels) / seconds,
            "peak_rss_mib": usage.ru_maxrss / 1024, "labels": labels}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--setups", nargs="+", default=["pipeline", "tunesmith-onnx", "tunesmith-run"])
    parser.add_argument("--memory-rows", type=int, nargs="*", default=[])
    parser.add_argument("--memory-setups", nargs="+", default=["tunesmith-onnx"])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "bulk_predict.json")
    args = parser.parse_args()
    if not (MODEL / "export" / "tunesmith.json").is_file():
        raise SystemExit("no model: run benchmarks/serve_speed.py first (it trains and exports one)")
    source = rows_file(args.rows)
    results = []
    for number in range(1, args.rounds + 1):
        for setup in args.setups:
            found = run(setup, source, OUT / f"{setup}.jsonl")
            results.append({"round": number, **found})
            print(json.dumps({k: v for k, v in results[-1].items() if k != "labels"}), flush=True)
    for rows in args.memory_rows:  # peak RSS against the input's size (a fresh process each)
        for setup in args.memory_setups:
            found = run(setup, rows_file(rows), OUT / f"{setup}-{rows}.jsonl")
            results.append({"round": "memory", **found})
            print(json.dumps({k: v for k, v in results[-1].items() if k != "labels"}), flush=True)
    reference = {r["round"]: r["labels"] for r in results if r["setup"] == "pipeline" and r["round"] != "memory"}
    for r in results:
        if r["round"] in reference and r["setup"] != "pipeline":
            r["same_labels_as_pipeline"] = float(np.mean([a == b for a, b in zip(r["labels"], reference[r["round"]])]))
    summary = {}
    for setup in args.setups:
        speeds = [r["rows_per_s"] for r in results if r["setup"] == setup and r["round"] != "memory"]
        summary[setup] = {"rows_per_s_mean": float(np.mean(speeds)), "rows_per_s": speeds}
    base = summary.get("pipeline", {}).get("rows_per_s_mean")
    for setup, entry in summary.items():
        if base:
            entry["ratio_to_pipeline"] = entry["rows_per_s_mean"] / base
        print(
            f"{setup:15} {entry['rows_per_s_mean']:9.1f} rows/s"
            + (f"  {entry['ratio_to_pipeline']:.2f}x" if base else "")
        )
    load = os.getloadavg()
    print(f"load average at the end: {load}")
    slim = [{k: v for k, v in r.items() if k != "labels"} for r in results]
    args.out.write_text(
        json.dumps({"rows": args.rows, "summary": summary, "runs": slim, "load_average": load}, indent=1)
    )


if __name__ == "__main__":
    main()
