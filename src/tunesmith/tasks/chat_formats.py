"""Chat records for instruction tuning: OpenAI-style ``messages`` and ShareGPT ``conversations``,
with tool calls and tool results.

A record's conversation is a list in one column (``task.messages_column``; by default
``messages``, else ``conversations``) of OpenAI turns, ``{"role", "content"}`` (an assistant turn
may carry ``tool_calls``, a ``tool`` turn holds a call's result), or ShareGPT turns,
``{"from", "value"}`` (LLaMA-Factory's and Axolotl's datasets: ``human``, ``gpt``, ``system``,
``observation`` for a tool's result, ``function_call`` for an assistant's call written as JSON).
``task.roles`` adds role names. A ``system`` column adds a system turn and a ``tools`` column the
tool schemas (``task.system_column``, ``task.tools_column``). Every conversation becomes the
OpenAI messages that transformers' ``apply_chat_template`` takes, with ``tools=``.

The checks are written here because no installed library validates these shapes with messages
that name the record, turn and field (LLaMA-Factory's converter drops a bad conversation with a
log line; transformers renders whatever it is given).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from tunesmith.errors import TunesmithError

STANDARD_ROLES = ("system", "user", "assistant", "tool")
ROLE_TARGETS = (*STANDARD_ROLES, "tool_call")
DEFAULT_ROLES = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "observation": "tool", "tool": "tool", "function_call": "tool_call",
}  # fmt: skip
"""Role names read without task.roles: the OpenAI roles and LLaMA-Factory's ShareGPT tags.
``tool_call`` is an assistant turn whose value is the JSON of its call(s) ({name, arguments})."""
CONVERSATION_COLUMNS = ("messages", "conversations")


class EmptyRecord(TunesmithError):
    """A record with nothing to learn from (an empty instruction, prompt, output, completion or
    turn): dropped, and logged, when data.clean.drop_empty is on; an error otherwise."""


@dataclass(frozen=True)
class ChatFields:
    """Where a chat record keeps its conversation, and what its role names mean (task.*)."""

    messages_column: str | None = None
    roles: dict[str, str] = field(default_factory=dict)
    system_column: str = "system"
    tools_column: str = "tools"

    @property
    def role_map(self) -> dict[str, str]:
        """The default role names with task.roles added."""
        return DEFAULT_ROLES | self.roles

    def column(self, columns) -> str:
        """The conversation column of a table with these columns: task.messages_column, else
        ``messages`` or ``conversations``, whichever it has (``messages`` when neither)."""
        if self.messages_column:
            return self.messages_column
        return next((c for c in CONVERSATION_COLUMNS if c in columns), "messages")


class Conversation(NamedTuple):
    """A record as OpenAI messages and the tool schemas it offers (None: no tools)."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None


def plain(value: Any) -> Any:
    """A cell as plain Python: Parquet gives nested lists as numpy arrays."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def missing(value: Any) -> bool:
    """An absent cell: None, NaN or blank text."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or (
        isinstance(value, str) and not value.strip())  # fmt: skip


def json_value(value: Any, where: str, what: str) -> Any:
    """A cell that may be JSON text (CSV files, LLaMA-Factory's tools and function calls) as a value."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as error:
            raise TunesmithError(f"{where}: {what} is text that is not JSON ({error.msg})") from None
    return plain(value)


def read_conversation(row: dict[str, Any], chat: ChatFields, where: str) -> Conversation:
    """One chat record as OpenAI messages (system column first) and its tools.

    Raises:
        TunesmithError: the conversation, a turn, a tool call or the tools, naming the record,
            turn and field (an unknown role, a turn out of order, a malformed call).
        EmptyRecord: an empty turn.
    """
    column = chat.column(row)
    raw = row.get(column)
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as error:
            raise TunesmithError(f"{where}: {column} is text that is not a JSON list ({error.msg})") from None
    raw = plain(raw)
    if not isinstance(raw, list) or not raw:
        raise TunesmithError(f"{where}: {column} must be a non-empty list of {{role, content}} or {{from, value}} "
                             f"turns, got {raw!r:.80}")  # fmt: skip
    turns = [read_turn(turn, chat.role_map, f"{where}, message {n} of {column}") for n, turn in enumerate(raw, 1)]
    check_order(turns)
    messages = [message for message, _ in turns]
    system = row.get(chat.system_column)
    if not missing(system):
        if not isinstance(system, str):
            raise TunesmithError(f"{where}, field {chat.system_column!r}: a system prompt must be text, got {system!r}")
        if messages[0]["role"] == "system":
            raise TunesmithError(f"{where}: both the {chat.system_column!r} field and a system turn give a system "
                                 "prompt; keep one")  # fmt: skip
        messages.insert(0, {"role": "system", "content": system})
    if not any(m["role"] == "assistant" and (m["content"].strip() or m.get("tool_calls")) for m in messages):
        raise TunesmithError(f"{where}: the {column} have no assistant turn with text or tool calls; there is "
                             "nothing to train on")  # fmt: skip
    tools = row.get(chat.tools_column)
    return Conversation(
        messages, None if missing(tools) else read_tools(tools, f"{where}, field {chat.tools_column!r}")
    )


def read_turn(turn: Any, roles: dict[str, str], where: str) -> tuple[dict[str, Any], str]:
    """One turn as an OpenAI message, and where it is (for order errors).

    Raises:
        TunesmithError: not an object, an unknown role, a value that is not text, a malformed call.
        EmptyRecord: an empty value (a system turn may be empty).
    """
    if not isinstance(turn, dict):
        raise TunesmithError(f"{where}: expected a {{role, content}} or {{from, value}} object, got {turn!r:.80}")
    # A Parquet struct column holds every key of every turn shape, absent ones as None.
    sharegpt = turn.get("from") is not None or turn.get("value") is not None
    role_key, text_key = ("from", "value") if sharegpt else ("role", "content")
    name = turn.get(role_key)
    role = roles.get(name) if isinstance(name, str) else None
    if role is None:
        raise TunesmithError(
            f"{where}: {role_key!r} is {name!r}, which is not a known role ({', '.join(sorted(roles))}); "
            f"name its role with task.roles, e.g. task.roles: {{{name}: assistant}}"
        )
    where = f"{where} ({role_key!r}: {name!r})"
    value, calls = turn.get(text_key), turn.get("tool_calls")
    if role == "tool_call":  # a ShareGPT function_call: the value is the call's JSON
        role, value, calls = "assistant", "", json_value(value, where, repr(text_key))
    if calls is not None and not (isinstance(calls, list | np.ndarray) and len(calls) == 0):
        if role != "assistant":
            raise TunesmithError(f"{where}: only an assistant turn can carry tool_calls, not a {role} turn")
        value = "" if value is None else value
    else:
        calls = None
    if not isinstance(value, str):
        raise TunesmithError(f"{where}: {text_key!r} must be text, got {value!r:.80}")
    if not value.strip() and role != "system" and calls is None:
        raise EmptyRecord(f"{where}: {text_key!r} is empty")
    message: dict[str, Any] = {"role": role, "content": value}
    if calls is not None:
        message["tool_calls"] = read_tool_calls(calls, where)
    if role == "tool":
        message |= {k: turn[k] for k in ("tool_call_id", "name") if isinstance(turn.get(k), str)}
    return message, where


def read_tool_calls(value: Any, where: str) -> list[dict[str, Any]]:
    """Tool calls in the OpenAI form ``{"type": "function", "function": {"name", "arguments"}}``
    with the arguments as an object, as chat templates render them; from that form (the arguments
    JSON text or an object) or LLaMA-Factory's bare ``{"name", "arguments"}``, one or a list.

    Raises:
        TunesmithError: a call without a name, or arguments that are not a JSON object.
    """
    value = json_value(value, where, "'tool_calls'")
    calls = value if isinstance(value, list) else [value]
    if not calls:
        raise TunesmithError(f"{where}: the tool call list is empty")
    found = []
    for number, call in enumerate(calls, 1):
        here = f"{where}, tool call {number}"
        function = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"].strip():
            raise TunesmithError(f"{here}: expected {{name, arguments}} (or OpenAI's {{type: function, function: "
                                 f"{{name, arguments}}}}), got {call!r:.80}")  # fmt: skip
        arguments = function.get("arguments", {})
        arguments = {} if arguments is None else json_value(arguments, here, "'arguments'")
        if not isinstance(arguments, dict):
            raise TunesmithError(f"{here}: 'arguments' must be a JSON object, got {arguments!r:.80}")
        entry: dict[str, Any] = {"type": "function", "function": {"name": function["name"], "arguments": arguments}}
        if isinstance(call.get("id"), str):
            entry["id"] = call["id"]
        found.append(entry)
    return found


def read_tools(value: Any, where: str) -> list[dict[str, Any]] | None:
    """Tool schemas in the JSON-schema form chat templates take (``{"type": "function",
    "function": {"name", "description", "parameters"}}``), from that form or a bare function.

    Raises:
        TunesmithError: not a list of objects with a name.
    """
    tools = json_value(value, where, "the tools")
    if not isinstance(tools, list):
        raise TunesmithError(f"{where}: the tools must be a list of function schemas, got {tools!r:.80}")
    found = []
    for number, tool in enumerate(tools, 1):
        schema = tool if isinstance(tool, dict) and "function" in tool else {"type": "function", "function": tool}
        function = schema["function"]
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise TunesmithError(f"{where}, tool {number}: expected a function schema with a name, got {tool!r:.80}")
        found.append(schema)
    return found or None


ORDER = {
    "start": ("system", "user"),
    "system": ("user",),
    "user": ("assistant",),
    "assistant": ("user",),
    "calls": ("tool",),
    "tool": ("tool", "assistant"),
}
"""The turns that may follow each: user and assistant alternate after an optional system turn, and
an assistant's tool calls are followed by their results (tool turns), then the assistant again."""


def check_order(turns: list[tuple[dict[str, Any], str]]) -> None:
    """Refuses a conversation whose turns are out of order (see ``ORDER``), naming the turn."""
    state = "start"
    for message, where in turns:
        role = message["role"]
        if role not in ORDER[state]:
            raise TunesmithError(f"{where}: {order_problem(state, role)}")
        state = "calls" if message.get("tool_calls") else role


def order_problem(state: str, role: str) -> str:
    """Why a ``role`` turn cannot come after ``state`` (a role, ``start`` or ``calls``)."""
    if role == "system":
        return "a system turn may only come first"
    if state == "start":
        return f"the conversation must begin with a user turn (after an optional system turn), not a {role} turn"
    if role == "tool":
        return "a tool turn (a tool's result) must follow an assistant turn with tool calls"
    if state == "calls":
        return f"an assistant turn with tool calls must be followed by their results (tool turns), not a {role} turn"
    if state == "tool":
        return "after tool results the assistant answers; a user turn cannot follow a tool turn"
    return f"two {role} turns in a row; user and assistant turns alternate"


def turn_text(message: dict[str, Any]) -> str:
    """A turn's text; an assistant turn with only tool calls, as the JSON of its calls."""
    if message["content"] or not message.get("tool_calls"):
        return message["content"]
    return json.dumps([c["function"] for c in message["tool_calls"]], ensure_ascii=False)


def uses_tools(messages: list[dict[str, Any]], tools: list | None) -> bool:
    """Whether a conversation has tool schemas, tool calls or tool results."""
    return bool(tools) or any(m["role"] == "tool" or m.get("tool_calls") for m in messages)


def unrendered_tool_parts(text: str, messages: list[dict[str, Any]], tools: list | None) -> list[str]:
    """The tool schemas, calls and results of a conversation that a rendering leaves out: a chat
    template without tool support drops them (or renders an empty turn) instead of failing."""
    lost = []
    for tool in tools or []:
        function = tool["function"]
        mark = function.get("description") or function["name"]
        if str(mark) not in text:
            lost.append(f"the tool schema {function['name']!r}")
    for message in messages:
        for call in message.get("tool_calls", []):
            if call["function"]["name"] not in text:
                lost.append(f"the tool call {call['function']['name']!r}")
        if message["role"] == "tool" and message["content"].strip() not in text:
            lost.append(f"the tool result {message['content'].strip()[:40]!r}")
    return lost
