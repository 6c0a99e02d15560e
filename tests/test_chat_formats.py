"""Chat records for causal_lm: ShareGPT conversations read as the equivalent OpenAI messages,
role mappings, tool calls and tool results (trained on the calls only), templates without tool
support refused by name, turn errors naming file, record and field, and a tiny run on ShareGPT."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import tunesmith
from tunesmith.config import config_from_dict
from tunesmith.errors import TunesmithError
from tunesmith.tasks.causal_lm import (
    IGNORE,
    CausalLMTask,
    EmptyRecord,
    encode_conversations,
    load_records,
    records_frame,
    to_conversation,
)
from tunesmith.tasks.chat_formats import ChatFields

# A ChatML template that renders tools, tool calls and tool results (as Qwen2.5's does, shortened).
TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n{% for t in tools %}{{ t.function.name }}: {{ t.function.description }}\n"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.tool_calls %}{% for c in m.tool_calls %}"
    "<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}{% else %}{{ m.content }}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# One that refuses any role but user and assistant, as many older templates do.
STRICT_TEMPLATE = (
    "{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}"
    "{{ raise_exception('Conversation roles must be user or assistant') }}{% endif %}"
    "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WEATHER = {"name": "get_weather", "description": "Current weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}  # fmt: skip
CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}
SHAREGPT = {
    "system": "Be brief.",
    "conversations": [{"from": "human", "value": "Hi!"}, {"from": "gpt", "value": "Hello."},
                      {"from": "human", "value": "Colour of the sky?"}, {"from": "gpt", "value": "Blue."}],
}  # fmt: skip
MESSAGES = {
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"},
                 {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Colour of the sky?"},
                 {"role": "assistant", "content": "Blue."}],
}  # fmt: skip
TOOL_MESSAGES = {
    "tools": [{"type": "function", "function": WEATHER}],
    "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "18 degrees, sunny"},
        {"role": "assistant", "content": "Sunny, 18 degrees."},
    ],
}  # fmt: skip
TOOL_SHAREGPT = {  # LLaMA-Factory's glaive_toolcall shape: tools and function calls as JSON text
    "tools": json.dumps([WEATHER]),
    "conversations": [{"from": "human", "value": "Weather in Paris?"},
                      {"from": "function_call", "value": json.dumps(CALL)},
                      {"from": "observation", "value": "18 degrees, sunny"},
                      {"from": "gpt", "value": "Sunny, 18 degrees."}],
}  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer(smollm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm_dir)


def _encode(tokenizer, rows, *, chat=None, template=None, source="chat.jsonl"):
    conversations = [to_conversation(row, "messages", f"{source}, record {i}", chat) for i, row in enumerate(rows, 1)]
    return encode_conversations(tokenizer, [c.messages for c in conversations], list(range(1, len(rows) + 1)),
                                source=source, max_length=256, chat_template=template, loss_on="completion",
                                tools=[c.tools for c in conversations]).features  # fmt: skip


def _trained(tokenizer, feature) -> str:
    return tokenizer.decode([t for t in feature["labels"] if t != IGNORE])


def test_sharegpt_rows_give_the_tokens_and_labels_of_the_equivalent_messages(tokenizer):
    assert to_conversation(SHAREGPT, "messages", "r").messages == MESSAGES["messages"]
    as_text = {"system": SHAREGPT["system"], "conversations": json.dumps(SHAREGPT["conversations"])}  # a CSV cell
    sharegpt, text, messages = _encode(tokenizer, [SHAREGPT, as_text, MESSAGES])
    assert sharegpt == messages == text
    eos = tokenizer.eos_token
    assert _trained(tokenizer, sharegpt) == f"Hello.{eos}Blue.{eos}"  # both answers, no user or system turn


def test_a_custom_role_mapping_and_column_and_the_error_without_it(tokenizer):
    row = {"dialog": [{"from": "asker", "value": "Hi!"}, {"from": "bot", "value": "Hello."}]}
    chat = ChatFields(messages_column="dialog", roles={"asker": "user", "bot": "assistant"})
    assert to_conversation(row, "messages", "r", chat).messages == [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello."},
    ]
    with pytest.raises(TunesmithError, match=r"^chat.jsonl, record 4, message 1 of dialog: 'from' is 'asker', which "
                                             r"is not a known role .*task.roles"):  # fmt: skip
        to_conversation(row, "messages", "chat.jsonl, record 4", ChatFields(messages_column="dialog"))
    config = config_from_dict({"task": {"type": "causal_lm", "messages_column": "dialog",
                                        "roles": {"asker": "user", "bot": "assistant"}}})  # fmt: skip
    assert CausalLMTask.from_config(config).chat == chat
    with pytest.raises(TunesmithError, match=r"task.roles.*renames a standard role"):
        config_from_dict({"task": {"type": "causal_lm", "roles": {"user": "assistant"}}})
    with pytest.raises(TunesmithError, match=r"task.roles.bot"):
        config_from_dict({"task": {"type": "causal_lm", "roles": {"bot": "robot"}}})


def test_tool_calls_are_trained_and_tool_results_are_not(tokenizer):
    messages, sharegpt = _encode(tokenizer, [TOOL_MESSAGES, TOOL_SHAREGPT], template=TOOL_TEMPLATE)
    assert messages == sharegpt  # function_call/observation read as tool_calls/tool
    eos, call = tokenizer.eos_token, json.dumps(CALL)
    assert _trained(tokenizer, messages) == f"<tool_call>{call}</tool_call>{eos}Sunny, 18 degrees.{eos}"
    text = tokenizer.decode(messages["input_ids"])
    assert "get_weather: Current weather of a city" in text and "18 degrees, sunny" in text  # rendered, not trained
    loss_on_all = encode_conversations(tokenizer, [to_conversation(TOOL_MESSAGES, "messages", "r").messages], [1],
                                       source="s", max_length=256, chat_template=TOOL_TEMPLATE, loss_on="all",
                                       tools=[[{"type": "function", "function": WEATHER}]]).features[0]  # fmt: skip
    assert "18 degrees, sunny" in _trained(tokenizer, loss_on_all)  # the mask, not the rendering, left it out


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (None, r"does not render the tool schema 'get_weather', the tool call 'get_weather'"),  # SmolLM2's own
        (STRICT_TEMPLATE, r"refused the conversation \(Conversation roles must be user or assistant\)"),
    ],
)
def test_a_template_without_tool_support_is_refused_naming_the_record(tokenizer, template, expected):
    with pytest.raises(TunesmithError, match=rf"^chat.jsonl, record 2: .*{expected}.*no tool support"):
        _encode(tokenizer, [{"messages": MESSAGES["messages"][1:]}, TOOL_MESSAGES], template=template)
    if template is None:  # and a tokenizer without any template
        plain = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
        plain.chat_template = None
        with pytest.raises(TunesmithError, match=r"record 1: .*no chat template to render them"):
            _encode(plain, [TOOL_SHAREGPT])


@pytest.mark.parametrize(
    ("turns", "expected"),
    [
        ([{"from": "human", "value": "Hi"}, {"from": "robot", "value": "Hello"}],
         r", message 2 of conversations: 'from' is 'robot', which is not a known role"),
        ([{"from": "human", "value": "Hi"}, {"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Yes"}],
         r", message 2 of conversations \('from': 'human'\): two user turns in a row"),
        ([{"from": "gpt", "value": "Hi"}], r", message 1 .*must begin with a user turn"),
        ([{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}, {"from": "system", "value": "Be"}],
         r", message 3 .*a system turn may only come first"),
        ([{"from": "human", "value": "Hi"}, {"from": "observation", "value": "42"}],
         r", message 2 of conversations \('from': 'observation'\): a tool turn .* must follow an assistant turn"),
        ([{"from": "human", "value": "Hi"}, {"from": "function_call", "value": "{\"name\": \"f\"}"},
          {"from": "gpt", "value": "Done"}], r", message 3 .*must be followed by their results"),
        ([{"from": "human", "value": "Hi"}, {"from": "function_call", "value": "get_weather(Paris)"}],
         r", message 2 .*'value' is text that is not JSON"),
        ([{"from": "human", "value": "Hi"}, {"from": "function_call", "value": "{\"name\": \"f\", \"arguments\": 3}"}],
         r", message 2 .*tool call 1: 'arguments' must be a JSON object"),
        ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": 5}], r", message 2 .*'content' must be text"),
        ([{"role": "user", "content": "Hi"}], r": the conversations have no assistant turn"),
    ],
)  # fmt: skip
def test_bad_turns_name_the_record_turn_and_field(turns, expected):
    with pytest.raises(TunesmithError, match=rf"^chat\.jsonl, record 3{expected}"):
        to_conversation({"conversations": turns}, "messages", "chat.jsonl, record 3")


def test_empty_turns_and_double_system_prompts_in_a_file(tmp_path):
    path = tmp_path / "chat.jsonl"
    rows = [SHAREGPT, {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "  "}]},
            {"system": "Be brief.", "conversations": [{"from": "system", "value": "Be long."}, *SHAREGPT["conversations"]]}]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    data = config_from_dict({"task": {"type": "causal_lm"}, "data": {"train": str(path)}}).data
    with pytest.raises(TunesmithError, match=rf"{path}, record 3: both the 'system' field and a system turn"):
        load_records(str(path), data)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]), encoding="utf-8")
    frame, entry = load_records(str(path), data)  # drop_empty (the default) drops the empty answer
    assert frame["record"].tolist() == [1] and entry["messages_column"] == "conversations"
    assert entry["changes"][0]["reason"] == "message 2 of conversations ('from': 'gpt'): 'value' is empty"
    with pytest.raises(EmptyRecord, match=rf"{path}, record 2, message 2 of conversations .*'value' is empty"):
        records_frame(pd.read_json(path, lines=True), "messages", str(path))


def test_written_records_read_back_as_the_same_conversations(tmp_path):
    """cv and retrain write a run's rows back with write_records; the same config reads them."""
    path = tmp_path / "chat.jsonl"
    rows = [{"dialog": TOOL_SHAREGPT["conversations"], "functions": TOOL_SHAREGPT["tools"]},
            {"dialog": SHAREGPT["conversations"], "system": "Be brief."}]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = config_from_dict({"task": {"type": "causal_lm", "messages_column": "dialog", "tools_column": "functions"},
                               "data": {"train": str(path)}})  # fmt: skip
    task = CausalLMTask.from_config(config)
    frame, _ = task.read(str(path), config.data)
    written, settings = task.write_records(frame, tmp_path, "again")
    again, _ = task.read(str(written), config.data.model_copy(update=settings))
    assert again[["messages", "tools"]].equals(frame[["messages", "tools"]])
    assert json.loads(frame["tools"][0])[0]["function"]["name"] == "get_weather" and frame["tools"][1] == ""


def test_a_tiny_llama_trains_on_sharegpt_jsonl_with_tool_calls(tiny_llama_dir, tmp_path):
    path = tmp_path / "sharegpt.jsonl"
    rows = [TOOL_SHAREGPT if i % 3 == 0 else {"conversations": [{"from": "human", "value": f"Say {i}."},
                                                                 {"from": "gpt", "value": f"{i}"}]}
            for i in range(12)]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = {
        "task": {"type": "causal_lm"},
        "data": {"train": str(path), "val_fraction": 0.0, "test_fraction": 0.25, "clean": {"drop_duplicates": False}},
        "model": {"name": str(tiny_llama_dir), "max_length": 128, "strategy": "full", "chat_template": TOOL_TEMPLATE},
        "train": {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-3, "warmup_ratio": 0.0},
        "generation": {"max_new_tokens": 3, "max_examples": 2},
        "runtime": {"output_dir": str(tmp_path / "run"), "progress": False, "log_every_steps": 1, "device": "cpu"},
    }  # fmt: skip
    result = tunesmith.train(config)
    losses = [r["loss"] for r in map(json.loads, (result.run_dir / "metrics.jsonl").read_text().splitlines())
              if r["split"] == "train"]  # fmt: skip
    assert len(losses) == 2 and all(0 < loss < 100 for loss in losses)
    manifest = json.loads((result.run_dir / "data_manifest.json").read_text())
    assert manifest["sources"]["train"]["messages_column"] == "conversations"
    assert result.metrics["test"]["generated"] == 2 and result.metrics["test"]["perplexity"] > 1
