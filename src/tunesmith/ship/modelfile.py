"""The Ollama ``Modelfile`` beside a GGUF export (ship/gguf.py): the model file, the run's chat
template as an Ollama TEMPLATE, the end of turn as a stop token, and the run's generation defaults.

Ollama reads Go ``text/template`` templates, not the Jinja of a transformers chat template, and no
library converts one into the other. A chat template is read here as one prefix and suffix per
role around the message content, a head for conversations without a system message and the
generation prompt: rendering conversations whose contents are markers gives them, and the forms
must then render other conversations exactly as the Jinja template does. A template that does
more (numbered turns, trimmed contents, a date) has no such form: the Modelfile then has no
TEMPLATE, says why, and the GGUF still carries the Jinja template for llama.cpp.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from tunesmith.tasks.contract import Chat


@dataclass
class TurnForms:
    """How a chat template renders a conversation, one message at a time: ``head`` starts a
    conversation that has no system message, each role's message is ``prefix + content +
    suffix``, and ``generation`` follows the last message where the assistant answers."""

    head: str
    forms: dict[str, tuple[str, str]]
    generation: str

    def render(self, messages: list[dict[str, str]]) -> str:
        """A conversation, rendered as the Go template of :func:`go_template` renders it."""
        head = "" if messages and messages[0]["role"] == "system" else self.head
        turns = "".join(self.forms[m["role"]][0] + m["content"] + self.forms[m["role"]][1] for m in messages)
        return head + turns + self.generation


def turn_forms(render: Callable[[list[dict[str, str]], bool], str]) -> TurnForms:
    """The :class:`TurnForms` of a rendering (``render(messages, add_generation_prompt)``), read
    off conversations whose contents are markers, and checked: the forms must render other
    conversations (a system turn, several turns, spaces and newlines) exactly as ``render``.

    Raises:
        ValueError: the template renders a message differently depending on where it stands,
            changes its content, or refuses one of the conversations.
    """

    def turn(role: str, content: str) -> dict[str, str]:
        return {"role": role, "content": content}

    def pieces(messages: list[dict[str, str]]) -> list[str]:
        texts = [render(messages[: k + 1], False) for k in range(len(messages))]
        if any(not later.startswith(earlier) for earlier, later in zip(texts, texts[1:])):
            raise ValueError("it does not render a conversation's beginning as a prefix of the whole")
        return [texts[0]] + [later[len(earlier) :] for earlier, later in zip(texts, texts[1:])]

    def split(piece: str, content: str) -> tuple[str, str]:
        if piece.count(content) != 1:
            raise ValueError("it does not write a message's content exactly once, as given")
        before, after = piece.split(content)
        return before, after

    user1, assistant1, user2 = "tunesmith-user-1", "tunesmith-assistant-1", "tunesmith-user-2"
    system = "tunesmith-system"
    first, answer, second = pieces([turn("user", user1), turn("assistant", assistant1), turn("user", user2)])
    forms = {"user": split(second, user2), "assistant": split(answer, assistant1)}
    user_turn = forms["user"][0] + user1 + forms["user"][1]
    opened, then = pieces([turn("system", system), turn("user", user1)])
    if not first.endswith(user_turn) or then != user_turn:
        raise ValueError("it renders the first user message differently from later ones")
    forms["system"] = split(opened, system)
    generation = render([turn("user", user1)], True)[len(first) :]
    found = TurnForms(first[: len(first) - len(user_turn)], forms, generation)
    checks = [
        [turn("user", " spaced \n text ")],
        [turn("system", "Be brief."), turn("user", "Hi"), turn("assistant", "Hello."), turn("user", "Bye")],
        [turn(role, text) for role, text in zip(["user", "assistant"] * 2 + ["user"], ["a", "b\n", "c", "d", "e"])],
    ]
    for messages in checks:
        if found.render(messages) != render(messages, True):
            raise ValueError(
                "it renders some conversations otherwise than as one prefix and suffix per role "
                "around the content as given"
            )
    return found


def go_template(forms: TurnForms) -> str:
    """An Ollama (Go ``text/template``) TEMPLATE that renders ``.Messages`` as ``forms`` does."""

    def text(literal: str) -> str:  # "{{" would open an action: write it as a string action
        return literal.replace("{{", '{{ "{{" }}')

    parts = []
    if forms.head:
        first_is_system = '(and .Messages (eq (index .Messages 0).Role "system"))'
        parts.append(f"{{{{ if not {first_is_system} }}}}" + text(forms.head) + "{{ end }}")
    parts.append("{{ range .Messages }}")
    for number, role in enumerate(("system", "user", "assistant")):
        prefix, suffix = forms.forms[role]
        parts.append(("{{ if" if number == 0 else "{{ else if") + f' eq .Role "{role}" }}}}' + text(prefix)
                     + "{{ .Content }}" + text(suffix))  # fmt: skip
    parts.append("{{ end }}{{ end }}" + text(forms.generation))
    return "".join(parts)


def modelfile(task: Chat, processor, source: str) -> tuple[str, list[str]]:
    """The Ollama Modelfile's text, and warnings (a template that has no Go form).

    Args:
        source: the run, named in the file's first line.
    """
    warnings, lines = [], [f"# Ollama Modelfile for {source}, written by tunesmith export.",
                           "# ollama create NAME -f Modelfile && ollama run NAME", "FROM ./model.gguf"]  # fmt: skip
    try:
        template = go_template(turn_forms(lambda messages, generation: task.render(
            processor, messages, add_generation_prompt=generation)))  # fmt: skip
        if '"""' in template:
            raise ValueError('it contains """, which ends a Modelfile TEMPLATE')
        lines.append(f'TEMPLATE """{template}"""')
    except ValueError as error:
        warnings.append(f"the Modelfile has no TEMPLATE: the chat template has no Go form ({error}); the GGUF "
                        "carries the Jinja template (tokenizer.chat_template) for llama.cpp")  # fmt: skip
        lines.append(f"# No TEMPLATE: {warnings[-1]}")
    lines += [f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}" for stop in task.chat_format(processor).stop]
    settings = task.generation
    lines.append(f"PARAMETER temperature {settings.temperature if settings.do_sample else 0}")
    if settings.do_sample and settings.top_p < 1:
        lines.append(f"PARAMETER top_p {settings.top_p}")
    if settings.num_beams > 1:
        lines.append(f"# generation.num_beams={settings.num_beams}: Ollama has no beam search; it decodes greedily")
    lines.append(f"PARAMETER num_predict {settings.max_new_tokens}")
    return "\n".join(lines) + "\n", warnings
