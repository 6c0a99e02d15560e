"""The OpenAI-compatible routes of ``tunesmith serve`` for a tuned causal LM, driven by the
official ``openai`` client against a real server on a loopback port."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import uvicorn

from tests.makers import DATA_FILE, tiny_task_config, write_examples
from tunesmith import api
from tunesmith.ship.serve import create_app

PROMPT = "Item 3: repeat the word blue."


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_llama_dir):
    """A trained tiny causal LM served by uvicorn; yields (base URL, run directory)."""
    root = tmp_path_factory.mktemp("openai")
    train = write_examples("causal_lm", root / DATA_FILE["causal_lm"], 24)
    config = tiny_task_config("causal_lm", tiny_llama_dir, train, root / "run")
    config["train"].update(num_epochs=1)
    run = api.train(config).run_dir
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = uvicorn.Server(uvicorn.Config(create_app(run, max_batch=8, log_path=root / "served.jsonl"), host="127.0.0.1", port=port,
                                           log_level="warning"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", run
    server.should_exit = True
    thread.join(timeout=10)


def _post(url: str, body: bytes | str) -> tuple[int, dict]:
    data = body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)


def test_chat_completion_is_what_predict_says_and_streams_the_same_text(served):
    base, run = served
    client = _client(base)
    model = client.models.list().data[0].id
    assert model == run.name
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}],
                                            temperature=0)  # fmt: skip
    expected = api.predict(run, [PROMPT])[0]["completion"]
    assert expected  # a real completion to compare
    assert answer.choices[0].message.content == expected
    assert answer.choices[0].finish_reason in ("stop", "length") and answer.object == "chat.completion"
    usage = answer.usage
    assert usage.prompt_tokens > 0 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": PROMPT}], temperature=0, stream=True)]  # fmt: skip
    assert "".join(pieces).strip() == expected and len([p for p in pieces if p]) >= 1
    # Both answers are in the prediction log, as tunesmith monitor reads it (the user's turn, the completion).
    logged = [json.loads(line) for line in (Path(run).parent / "served.jsonl").read_text().splitlines()]
    assert [(r["text"], r["completion"].strip()) for r in logged[:2]] == [(PROMPT, expected)] * 2


def test_completions_n_stop_and_concurrent_requests(served):
    base, run = served
    client = _client(base)
    model = run.name
    three = client.completions.create(model=model, prompt="blue blue", n=3, max_tokens=3, temperature=0)
    assert len(three.choices) == 3 and len({c.text for c in three.choices}) == 1  # greedy: the same three times
    one = client.completions.create(model=model, prompt="blue blue", max_tokens=3, temperature=0)
    assert three.usage.prompt_tokens == one.usage.prompt_tokens  # the prompt counts once, as OpenAI counts it
    with ThreadPoolExecutor(4) as pool:  # batched together or not, greedy answers do not change
        found = list(pool.map(lambda _: client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": PROMPT}], temperature=0).choices[0].message.content,
            range(4)))  # fmt: skip
    assert found == [api.predict(run, [PROMPT])[0]["completion"]] * 4
    full = client.completions.create(model=model, prompt="blue blue", max_tokens=4, temperature=0).choices[0].text
    assert full
    cut = client.completions.create(model=model, prompt="blue blue", max_tokens=4, temperature=0,
                                    stop=[full[-1]]).choices[0]  # fmt: skip
    assert full[-1] not in cut.text and cut.finish_reason == "stop"


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(served):
    base, run = served
    client = _client(base)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model=run.name, messages=[])
    with pytest.raises(openai.BadRequestError, match="tools is not supported"):
        client.chat.completions.create(model=run.name, messages=[{"role": "user", "content": "hi"}],
                                       tools=[{"type": "function", "function": {"name": "f"}}])  # fmt: skip
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model=run.name, prompt="hi", max_tokens=10**6)
    status, body = _post(f"{base}/v1/chat/completions", b"{not json")
    assert status == 400 and "not JSON" in body["error"]["message"]
    status, body = _post(f"{base}/v1/chat/completions", json.dumps({"model": run.name, "messages": [{"role": "bot"}]}))
    assert status == 400 and "messages" in body["error"]["message"]
    assert client.chat.completions.create(model=run.name, messages=[{"role": "user", "content": "hi"}]).choices
