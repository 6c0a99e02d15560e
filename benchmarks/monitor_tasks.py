"""``tunesmith monitor`` on real runs beyond text classification: the CoNLL-2003 NER tagger
(MiniLM) and the SmolLM2 instruction-tuned LM of the Alpaca example, each against a log that
``serve --log`` wrote for more of the same and for foreign traffic (AG News articles).

    .venv/bin/python benchmarks/monitor_tasks.py [--rows 1000] [--lm-rows 60]

1. NER (benchmarks/out/conll2003): the run's validation sentences (same distribution as its
   test split, the reference) and AG News test descriptions, each posted to the run's own
   server (``create_app`` with ``log_path``, in process) in batches of 64; ``monitor`` reads the
   logs (inputs and the logged entity spans).
2. Causal LM (benchmarks/out/lm_example): Alpaca instructions the run never saw (its records
   are skipped) and AG News descriptions as prompts, posted the same way.

Writes benchmarks/out/monitor_tasks.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "benchmarks" / "out" / "monitor_tasks"


def serve_log(run: Path, inputs: list, log: Path) -> float:
    """Posts ``inputs`` to the run's server in batches of 64 with ``--log``; returns the seconds."""
    from fastapi.testclient import TestClient

    from tunesmith.ship.serve import create_app

    start = time.perf_counter()
    with TestClient(create_app(run, log_path=log, max_text_chars=100_000)) as client:
        for i in range(0, len(inputs), 64):
            response = client.post("/predict", json={"inputs": inputs[i : i + 64]})
            assert response.status_code == 200, response.text
    return time.perf_counter() - start


def run_monitor(run: Path, logs: dict[str, Path], max_rows: int) -> dict:
    from tunesmith.ship.monitor import monitor

    found = {}
    for name, log in logs.items():
        start = time.perf_counter()
        report = monitor(run, log, OUT / f"monitor-{log.stem}", max_rows=max_rows, log=print)
        found[name] = {"seconds": round(time.perf_counter() - start, 1), "rows": report["rows"],
                       "drifted": report["drifted"],
                       **{k: round(v["value"], 4) for k, v in report["checks"].items()}}  # fmt: skip
        print(name, json.dumps(found[name]))
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1000, help="live rows per NER log")
    parser.add_argument("--lm-rows", type=int, default=60, help="live prompts per causal-LM log")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*"):  # a rerun replaces this script's own outputs
        if old.is_dir():
            import shutil

            shutil.rmtree(old)
        else:
            old.unlink()
    agnews = pd.read_csv(DATA / "agnews" / "test.tsv", sep="\t", header=None, names=["text", "label"])
    foreign = agnews["text"].sample(frac=1.0, random_state=0).str.replace("\\", " ").tolist()
    result = {}

    ner = ROOT / "benchmarks" / "out" / "conll2003"
    same = [" ".join(tokens) for tokens in pd.read_parquet(ner / "data" / "validation.parquet")["tokens"]]
    logs = {"CoNLL-2003 validation sentences": OUT / "ner-same.jsonl", "AG News descriptions": OUT / "ner-agnews.jsonl"}
    seconds = [serve_log(ner, same[: args.rows], logs["CoNLL-2003 validation sentences"]),
               serve_log(ner, foreign[: args.rows], logs["AG News descriptions"])]  # fmt: skip
    result["ner"] = {"serve_seconds": [round(s, 1) for s in seconds], "monitor": run_monitor(ner, logs, args.rows)}

    from tunesmith.config import load_config
    from tunesmith.tasks import build_task

    lm = ROOT / "benchmarks" / "out" / "lm_example"
    config = load_config(lm / "config.yaml")
    task = build_task(config)
    frame, _ = task.read(str(DATA / "alpaca" / "alpaca_5000.json"), config.data)
    seen = set(pd.concat([pd.read_parquet(p) for p in (lm / "data").glob("*.parquet")])["record"])
    unseen = frame[~frame["record"].isin(seen)].sample(frac=1.0, random_state=0)
    prompts = task.monitor_inputs(unseen)[: args.lm_rows]
    logs = {"unseen Alpaca instructions": OUT / "lm-same.jsonl", "AG News descriptions": OUT / "lm-agnews.jsonl"}
    seconds = [serve_log(lm, prompts, logs["unseen Alpaca instructions"]),
               serve_log(lm, foreign[: args.lm_rows], logs["AG News descriptions"])]  # fmt: skip
    result["causal_lm"] = {"serve_seconds": [round(s, 1) for s in seconds],
                           "monitor": run_monitor(lm, logs, args.lm_rows)}  # fmt: skip
    (ROOT / "benchmarks" / "out" / "monitor_tasks.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
