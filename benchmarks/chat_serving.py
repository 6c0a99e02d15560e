"""Chat serving: 32 concurrent OpenAI-style chat requests to `tunesmith serve` (same-setting
requests generated together in one batch) against the same 32 requests sent one at a time, in
one run, alternated.

    .venv/bin/python benchmarks/chat_serving.py [--requests 32] [--max-tokens 32] [--rounds 2]

The served model is a SmolLM2-135M-Instruct run trained for 2 LoRA steps on Alpaca records (the
point is the serving path, not the tuning). Requests go over loopback HTTP to
`/v1/chat/completions` with greedy decoding, each a different Alpaca instruction. Reports, per
setup: completion tokens per second over the wall time of the whole set, and p50/p99 request
latency; then the ratio of the tokens/s. Writes chat_serving.json under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALPACA = ROOT.parent / "shared" / "data" / "alpaca" / "alpaca_5000.json"


def train_run(out: Path) -> Path:
    from tunesmith import api

    records = json.loads(ALPACA.read_text(encoding="utf-8"))[:60]
    data = out / "train.json"
    data.write_text(json.dumps(records), encoding="utf-8")
    overrides = [f"data.train={data}", "data.val_fraction=0", "data.test_fraction=0.1", "train.max_steps=2",
                 "train.batch_size=8", "model.max_length=128", "generation.max_examples=2",
                 "generation.max_new_tokens=8", f"runtime.output_dir={out / 'run'}", "runtime.progress=false"]  # fmt: skip
    return api.train(str(ROOT / "examples" / "alpaca_sft.yaml"), overrides=overrides).run_dir


def ask(url: str, model: str, prompt: str, max_tokens: int) -> tuple[float, int]:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                       "max_tokens": max_tokens}).encode()  # fmt: skip
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        answer = json.loads(response.read())
    return time.perf_counter() - started, answer["usage"]["completion_tokens"]


def measure(url: str, model: str, prompts: list[str], max_tokens: int, concurrent: bool) -> dict:
    started = time.perf_counter()
    if concurrent:
        with ThreadPoolExecutor(len(prompts)) as pool:
            found = list(pool.map(lambda p: ask(url, model, p, max_tokens), prompts))
    else:
        found = [ask(url, model, p, max_tokens) for p in prompts]
    wall = time.perf_counter() - started
    latencies = sorted(f[0] for f in found)
    tokens = sum(f[1] for f in found)
    return {"wall_seconds": round(wall, 2), "completion_tokens": tokens, "tokens_per_second": round(tokens / wall, 2),
            "p50_seconds": round(statistics.median(latencies), 2),
            "p99_seconds": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "chat_serving")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=False)
    import uvicorn

    from tunesmith.ship.serve import create_app

    run = train_run(args.out)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = uvicorn.Server(uvicorn.Config(create_app(run, max_batch=args.requests), host="127.0.0.1", port=port,
                                           log_level="warning"))  # fmt: skip
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.1)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    records = json.loads(ALPACA.read_text(encoding="utf-8"))[300 : 300 + args.requests]
    prompts = [r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "") for r in records]
    ask(url, run.name, prompts[0], 4)  # warm-up
    load = os.getloadavg()
    rounds = []
    for number in range(args.rounds):  # alternated: batched, then one at a time
        rounds.append({"round": number + 1,
                       "concurrent": measure(url, run.name, prompts, args.max_tokens, concurrent=True),
                       "one_at_a_time": measure(url, run.name, prompts, args.max_tokens, concurrent=False)})  # fmt: skip
        print(json.dumps(rounds[-1]))
    server.should_exit = True
    ratio = [r["concurrent"]["tokens_per_second"] / r["one_at_a_time"]["tokens_per_second"] for r in rounds]
    record = {"requests": args.requests, "max_tokens": args.max_tokens, "rounds": rounds,
              "tokens_per_second_ratio": [round(x, 2) for x in ratio], "load_average_before": load,
              "load_average_after": os.getloadavg()}  # fmt: skip
    (args.out / "chat_serving.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    print(f"concurrent / one at a time, tokens per second: {record['tokens_per_second_ratio']}")


if __name__ == "__main__":
    main()
