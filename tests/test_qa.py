"""Extractive QA: windows over long contexts, answer post-processing, SQuAD scores, readers
with clear errors, and a tiny model that trains, evaluates and answers."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pandas as pd
import pytest
from transformers import AutoTokenizer

from tests.conftest import NEUTRAL, tiny_config
from tests.makers import QA_FIELDS as FIELDS
from tests.makers import qa_records, write_table
from tunesmith import api
from tunesmith.data.prepare import prepare_records
from tunesmith.errors import TunesmithError
from tunesmith.tasks.qa import (
    answer_positions,
    best_answer,
    encode_questions,
    load_questions,
    normalize_answer,
    squad_scores,
)

CONTEXT = "one two three four five six seven eight nine ten"


def _frame(question: str, context: str, answer: str | None) -> pd.DataFrame:
    answers, starts = ([answer], [context.index(answer)]) if answer else ([], [])
    return pd.DataFrame([{"question": question, "context": context, "answers": answers, "starts": starts}])


def test_windows_overlap_by_the_stride_and_an_answer_across_a_boundary_is_labelled_where_whole(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    # [CLS] which number [SEP] + 5 context words + [SEP] per window of 10; stride 2 -> windows
    # start at words 0, 3, 6. "five six" (words 4-5) crosses the end of window 0 (words 0-4).
    features, cut = encode_questions(tokenizer, _frame("which number", CONTEXT, "five six"), 10, 2)
    words = CONTEXT.split()
    assert cut == 0 and len(features) == 3
    seen = [[CONTEXT[o[0] : o[1]] for o in f["offsets"] if o is not None] for f in features]
    assert seen == [words[0:5], words[3:8], words[6:10]]
    assert [(f["start_positions"], f["end_positions"]) for f in features] == [(0, 0), (5, 6), (0, 0)]
    assert all(f["example"] == 0 and f["offsets"][:4] == [None] * 4 for f in features)
    # unanswerable: every window points at [CLS]
    features, _ = encode_questions(tokenizer, _frame("which number", CONTEXT, None), 10, 2)
    assert {(f["start_positions"], f["end_positions"]) for f in features} == {(0, 0)}
    with pytest.raises(TunesmithError, match="task.doc_stride=5 must be below the room"):
        encode_questions(tokenizer, _frame("which number", CONTEXT, "five six"), 10, 5)


def test_answer_positions_by_hand():
    # [CLS] q [SEP] "ab" "cd" "ef" [SEP]; characters: ab 0-2, cd 3-5, ef 6-8
    offsets = [(0, 0), (0, 1), (0, 0), (0, 2), (3, 5), (6, 8), (0, 0)]
    sequence = [None, 0, None, 1, 1, 1, None]
    assert answer_positions(offsets, sequence, 3, 8) == (4, 5)
    assert answer_positions(offsets, sequence, 4, 5) == (4, 4)  # inside one token
    assert answer_positions(offsets, sequence, 6, 10) == (0, 0)  # runs past the window


def _window(offsets, starts: dict, ends: dict, null: float = -10.0):
    start, end = np.full(len(offsets), -10.0), np.full(len(offsets), -10.0)
    start[0] = end[0] = null / 2
    for i, v in starts.items():
        start[i] = v
    for i, v in ends.items():
        end[i] = v
    return start, end, offsets


def test_post_processing_picks_the_whole_answer_from_the_window_that_holds_it():
    context = "alpha beta gamma delta epsilon"  # alpha 0-5 beta 6-10 gamma 11-16 delta 17-22 epsilon 23-30
    first = [None, None, (0, 5), (6, 10), (11, 16), None]  # words 0-2
    second = [None, None, (11, 16), (17, 22), (23, 30), None]  # words 2-4
    # window 0 sees the answer's start at its last token: its best span is "gamma" (5 + 1 = 6);
    # window 1 holds "gamma delta" (4 + 4 = 8) and "gamma" again (4 + 1 = 5, counted once at 6).
    windows = [_window(first, {4: 5.0}, {4: 1.0}), _window(second, {2: 4.0}, {2: 1.0, 3: 4.0})]
    answer = best_answer(windows, context, n_best=5, max_answer_length=10, allow_no_answer=False)
    assert (answer["text"], answer["start"], answer["end"]) == ("gamma delta", 11, 22)
    assert context[answer["start"] : answer["end"]] == answer["text"]
    # candidates: gamma delta 8, gamma 6 (the better of 6 and 5), and spans at -10 + x for the rest
    assert answer["score"] > 1 / (1 + math.exp(-2)) - 0.01
    # max_answer_length of one token rules "gamma delta" out
    short = best_answer(windows, context, n_best=5, max_answer_length=1, allow_no_answer=False)
    assert short["text"] == "gamma"


def test_post_processing_n_best_score_and_no_answer():
    context = "ab cd ef"
    offsets = [None, (0, 2), (3, 5), (6, 8), None]
    window = _window(offsets, {1: 2.0, 2: 1.0}, {2: 2.0, 3: 1.0})
    # spans: ab-cd 4, ab-ef 3, cd-cd 3, cd-ef 2; n_best=1 keeps only the top start and end
    found = best_answer([window], context, n_best=1, max_answer_length=5, allow_no_answer=False)
    assert found["text"] == "ab cd" and found["score"] == 1.0
    # the score is the answer's softmax share among the n_best best spans
    found = best_answer([window], context, n_best=2, max_answer_length=5, allow_no_answer=False)
    assert found["text"] == "ab cd" and found["score"] == pytest.approx(
        math.exp(4) / (math.exp(4) + math.exp(3)), abs=1e-6
    )
    found = best_answer([window], context, n_best=4, max_answer_length=5, allow_no_answer=False)
    expected = math.exp(4) / (math.exp(4) + 2 * math.exp(3) + math.exp(2))  # ab-ab and ef-ef sit at -8, -9
    assert found["score"] == pytest.approx(expected, abs=1e-6)
    # no answer: [CLS] start + end = 6 beats the best span (4) ...
    loud = _window(offsets, {1: 2.0, 2: 1.0}, {2: 2.0, 3: 1.0}, null=6.0)
    found = best_answer([loud], context, n_best=2, max_answer_length=5, allow_no_answer=True)
    assert found["no_answer"] and found["text"] == "" and found["start"] is None
    # ... unless the threshold asks for a margin above 2
    found = best_answer([loud], context, n_best=2, max_answer_length=5, allow_no_answer=True, no_answer_threshold=2.5)
    assert found["text"] == "ab cd"
    # without unanswerable training questions the null score is never chosen
    assert best_answer([loud], context, n_best=2, max_answer_length=5, allow_no_answer=False)["text"] == "ab cd"


def test_squad_scores_by_hand():
    assert normalize_answer("The  Broncos!") == "broncos"
    scores = squad_scores(["Denver Broncos team", "the Panthers", "", "Santa Clara"],
                          [["Denver Broncos"], ["Carolina Panthers", "Panthers"], [], ["Levi's Stadium"]])  # fmt: skip
    # F1: 0.8 (P 2/3, R 1), 1.0 (second gold), 1.0 (no answer, empty prediction), 0.0
    assert scores["f1"] == pytest.approx((0.8 + 1 + 1 + 0) / 4)
    assert scores["exact_match"] == pytest.approx(2 / 4)
    assert scores["no_answer"] == {"exact_match": 1.0, "f1": 1.0, "count": 1}
    assert scores["has_answer"]["count"] == 3


def _squad(contexts_questions) -> dict:
    paragraphs = []
    for context, qas in contexts_questions:
        paragraphs.append({"context": context, "qas": [
            {"id": qid, "question": q, "answers": [{"text": a, "answer_start": s}] if a else [],
             **({"is_impossible": True} if a is None else {})} for qid, q, a, s in qas]})  # fmt: skip
    return {"version": "v2.0", "data": [{"title": "T", "paragraphs": paragraphs}]}


def test_readers_check_every_answer_against_its_context(tmp_path):
    path = tmp_path / "train.json"
    good = _squad([("Denver won the game.", [("q1", "Who won?", "Denver", 0), ("q2", "Who lost?", None, None)])])
    path.write_text(json.dumps(good))
    frame, entry = load_questions(str(path), None)
    assert frame["answers"].tolist() == [["Denver"], []] and entry["cleaning"]["unanswerable"] == 1
    bad = _squad([("Denver won the game.", [("q1", "Who won?", "Denver", 0)]),
                  ("Carolina lost.", [("q7", "Who lost?", "Carolina", 3)])])  # fmt: skip
    path.write_text(json.dumps(bad))
    with pytest.raises(TunesmithError, match=r"train.json, article 1 paragraph 2 question q7: answer 'Carolina' "
                                             r"is not in its context at answer_start=3"):  # fmt: skip
        load_questions(str(path), None)
    flat = tmp_path / "train.jsonl"
    flat.write_text(json.dumps({"question": "Who won?", "context": "Denver won.", "answers": {"text": ["won"]}}) + "\n"
                    + json.dumps({"question": "Who?", "context": "Denver won.", "answers": [{"text": "Miami"}]}) + "\n")  # fmt: skip
    with pytest.raises(TunesmithError, match=r"train.jsonl, line 2: answer 'Miami' is not found in its context"):
        load_questions(str(flat), None)
    flat.write_text(json.dumps({"question": "Who won?", "context": "Denver won.", "answers": {"text": ["won"]}}) + "\n")
    frame, _ = load_questions(str(flat), None)
    assert frame["starts"].tolist() == [[7]]  # looked up
    flat.write_text("{not json\n")
    with pytest.raises(TunesmithError, match=r"train.jsonl, line 1: not JSON"):
        load_questions(str(flat), None)


def _qa_file(path, count: int, seed: int) -> None:
    write_table(path, qa_records(count, seed))


def test_questions_of_one_context_stay_in_one_split(tmp_path, tiny_model_dir):
    path = tmp_path / "qa.jsonl"
    _qa_file(path, 40, seed=0)
    from tunesmith.config import config_from_dict

    config = config_from_dict(
        tiny_config(tiny_model_dir, path, tmp_path / "run", task={"type": "question_answering", "doc_stride": 4})
    )
    data = prepare_records(config.data, seed=0, load=lambda spec, c: load_questions(spec, c))
    contexts = {name: set(frame["context"]) for name, frame in data.splits.items()}
    assert sum(len(frame) for frame in data.splits.values()) == 120
    assert not contexts["train"] & contexts["validation"] and not contexts["train"] & contexts["test"]
    assert all(len(frame) % 3 == 0 for frame in data.splits.values())  # three questions per paragraph


def _colour_file(path, count: int, seed: int) -> None:
    """A colour phrase ("red", or "light red": one or two words) at a random place among filler
    words; the question asks for it. A tiny model learns to point at it in a few epochs, which it
    can only do when the start and end labels sit on the right tokens."""
    rng = random.Random(seed)
    lines = []
    for i in range(count):
        words = rng.sample([w for w in NEUTRAL if w not in FIELDS["colour"]], 5) + [str(i)]
        phrase = ("light " if rng.random() < 0.5 else "") + rng.choice(FIELDS["colour"])
        words.insert(rng.randrange(len(words) + 1), phrase)
        context = " ".join(words)
        lines.append(json.dumps({"question": "what colour is it ?", "context": context,
                                 "answers": [{"text": phrase, "answer_start": context.index(phrase)}]}))  # fmt: skip
    path.write_text("\n".join(lines) + "\n")


def test_group_splits_hold_out_whole_groups_near_the_asked_share():
    from tunesmith.data.split import split_frame

    # one paragraph with 90 questions and twenty with one: no seed may hand the big one to evaluation
    frame = pd.DataFrame({"group": ["big"] * 90 + [f"p{i}" for i in range(20)], "n": range(110)})
    for seed in range(40):
        splits = split_frame(frame, val_fraction=0.1, test_fraction=0.1, seed=seed, stratify=False, groups="group")
        assert set(splits["train"]["group"]) == {"big"}
        assert len(splits["test"]) == 11 and len(splits["validation"]) == 9  # the singles left after test
    # with only ten singles, test takes them all and validation cannot be carved: a clear error
    with pytest.raises(TunesmithError, match="cannot hold out about 11% of the rows in whole groups"):
        split_frame(frame.iloc[:100], val_fraction=0.1, test_fraction=0.1, seed=0, stratify=False, groups="group")
    equal = pd.DataFrame({"group": [i // 4 for i in range(200)], "n": range(200)})
    splits = split_frame(equal, val_fraction=0.1, test_fraction=0.2, seed=0, stratify=False, groups="group")
    assert [len(splits[n]) for n in ("train", "validation", "test")] == [140, 20, 40]
    assert not set(splits["train"]["group"]) & (set(splits["test"]["group"]) | set(splits["validation"]["group"]))
    with pytest.raises(TunesmithError, match="in whole groups"):
        split_frame(pd.DataFrame({"group": ["a"] * 50 + ["b"] * 50}), val_fraction=0.1, test_fraction=0.0, seed=0,
                    stratify=False, groups="group")  # fmt: skip


def test_a_tiny_model_learns_to_answer_evaluates_and_predicts(tmp_path, tiny_model_dir):
    train = tmp_path / "qa.jsonl"
    _colour_file(train, 200, seed=1)
    config = tiny_config(tiny_model_dir, train, tmp_path / "run", task={"type": "question_answering", "doc_stride": 16},
                         model={"name": str(tiny_model_dir), "max_length": 64, "dropout": 0.0},
                         train={"num_epochs": 8, "batch_size": 16, "learning_rate": 3e-3, "warmup_ratio": 0.0})  # fmt: skip
    result = api.train(config)
    test = result.metrics["test"]
    assert set(test) >= {"exact_match", "f1", "loss", "count", "windows"}
    assert test["exact_match"] >= 0.8, test
    card = (result.run_dir / "README.md").read_text()
    assert "AutoModelForQuestionAnswering" in card and "question-answering" in card
    held = tmp_path / "held.jsonl"
    _colour_file(held, 30, seed=2)
    scored = api.evaluate(result.run_dir, held)
    assert scored["count"] == 30 and scored["exact_match"] >= 0.8
    contexts = ["table river light blue paper window 7", "pink seven stone train table paper 8"]
    answers = api.predict(result.run_dir, [{"question": "what colour is it ?", "context": c} for c in contexts])
    assert [a["answer"] for a in answers] == ["light blue", "pink"]
    assert all(c[a["start"] : a["end"]] == a["answer"] and 0 < a["score"] <= 1 for c, a in zip(contexts, answers))
    with pytest.raises(TunesmithError, match="input 1: question answering needs"):
        api.predict(result.run_dir, ["no context"])
    from typer.testing import CliRunner

    from tunesmith.cli import app

    shown = CliRunner().invoke(app, ["predict", str(result.run_dir), "--question", "what colour is it ?",
                                     "--context", contexts[0]])  # fmt: skip
    assert shown.exit_code == 0 and json.loads(shown.stdout.strip())["answer"] == "light blue"
    unpaired = CliRunner().invoke(app, ["predict", str(result.run_dir), "--question", "what colour is it ?"])
    assert unpaired.exit_code != 0 and "one --context per --question" in unpaired.output


def test_unanswerable_questions_turn_on_the_empty_answer(tmp_path, tiny_model_dir):
    """SQuAD v2.0 style: a third of the questions have no answer in their context."""
    train = tmp_path / "qa.jsonl"
    _colour_file(train, 120, seed=4)
    rng = random.Random(0)
    lines = train.read_text().splitlines()
    for i in range(0, len(lines), 3):
        record = json.loads(lines[i])
        record["context"] = " ".join(rng.sample([w for w in NEUTRAL if w not in FIELDS["colour"]], 6))
        record["answers"] = []
        lines[i] = json.dumps(record)
    train.write_text("\n".join(lines) + "\n")
    config = tiny_config(tiny_model_dir, train, tmp_path / "run", task={"type": "question_answering", "doc_stride": 16},
                         model={"name": str(tiny_model_dir), "max_length": 64, "dropout": 0.0},
                         train={"num_epochs": 8, "batch_size": 16, "learning_rate": 3e-3})  # fmt: skip
    result = api.train(config)
    assert json.loads((result.run_dir / "task.json").read_text())["allow_no_answer"] is True
    test = result.metrics["test"]
    assert test["no_answer"]["count"] + test["has_answer"]["count"] == test["count"]
    assert test["no_answer"]["exact_match"] >= 0.7 and test["has_answer"]["exact_match"] >= 0.7, test
    [empty] = api.predict(result.run_dir, [{"question": "what colour is it ?", "context": "table river stone 9"}])
    assert empty["no_answer"] and empty["answer"] == "" and empty["start"] is None


def test_lora_trains_a_question_answering_head(tmp_path, tiny_model_dir):
    train = tmp_path / "qa.jsonl"
    _colour_file(train, 60, seed=3)
    config = tiny_config(tiny_model_dir, train, tmp_path / "run", task={"type": "question_answering", "doc_stride": 16},
                         model={"name": str(tiny_model_dir), "max_length": 64, "strategy": "lora",
                                "lora": {"target_modules": ["query", "value"]}},
                         train={"num_epochs": 1, "batch_size": 16, "learning_rate": 3e-3})  # fmt: skip
    result = api.train(config)
    assert (result.run_dir / "adapter" / "adapter_config.json").is_file()
    saved = json.loads((result.run_dir / "adapter" / "adapter_config.json").read_text())
    assert saved["task_type"] == "QUESTION_ANS" and "qa_outputs" in saved["modules_to_save"]
    assert set(result.metrics["test"]) >= {"exact_match", "f1"}


def test_a_stride_that_leaves_no_room_is_refused_by_the_config():
    from tunesmith.config import config_from_dict

    with pytest.raises(TunesmithError, match="task.doc_stride=128 must be below 29"):
        config_from_dict({"task": {"type": "question_answering"}, "model": {"max_length": 64}})


def test_the_question_answerer_speaks_the_task_contract(tmp_path, tiny_model_dir):
    """prepare -> load_processor -> encode -> load_model -> a few steps -> evaluate, score (with
    question-bootstrap intervals), predict, read_inputs and card, with no api in between."""
    import torch

    from tunesmith.config import config_from_dict
    from tunesmith.models.load import pad_token_id, resolve_model
    from tunesmith.tasks.contract import ScoreContext
    from tunesmith.tasks.qa import QuestionAnsweringTask

    data_file = tmp_path / "qa.jsonl"
    _colour_file(data_file, 60, seed=1)
    config = config_from_dict(tiny_config(tiny_model_dir, data_file, tmp_path / "run",
                                          task={"type": "question_answering", "doc_stride": 16},
                                          model={"name": str(tiny_model_dir), "max_length": 64}))  # fmt: skip
    task = QuestionAnsweringTask.from_config(config)
    assert (task.max_length, task.stride, task.allow_no_answer) == (64, 16, False) and not task.label_names
    data = task.prepare(config)
    assert sum(len(frame) for frame in data.splits.values()) == 60 and "overlap" in data.manifest
    resolved = resolve_model(config.model.name)
    tokenizer = task.load_processor(resolved)
    encoded = task.encode(tokenizer, data.splits)
    assert encoded.notes == [] and set(encoded.truncated) == set(data.splits)
    model, new = task.load_model(resolved, 0.0)
    assert any(name.startswith("qa_outputs") for name in new)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    train = encoded.features["train"]
    for start in range(0, len(train), 16):
        batch = task.collate(train[start : start + 16], pad_token_id(tokenizer))
        (task.batch_loss(model, batch, "cpu") / task.count(train[start : start + 16])).backward()
        optimizer.step()
        optimizer.zero_grad()
    loop = task.evaluate(model, encoded.features["validation"], batch_size=8, pad_token_id=pad_token_id(tokenizer),
                         device="cpu")  # fmt: skip
    assert set(loop) >= set(task.metric_names)
    context = ScoreContext(artifact=lambda name, suffix: tmp_path / f"{name}{suffix}", name="test", evaluation=config.evaluation,
                           seed=0, batch_size=8)  # fmt: skip
    assert task.calibrate(model, tokenizer, encoded.features["validation"], batch_size=8, device="cpu") is None
    scored = task.score(model, tokenizer, data.splits["test"], encoded.features["test"], context)
    assert scored["count"] == len(data.splits["test"]) and scored["windows"] == len(encoded.features["test"])
    for name in ("exact_match", "f1"):
        interval = scored["confidence_intervals"][name]
        assert (
            interval["estimate"] == pytest.approx(scored[name]) and interval["low"] <= scored[name] <= interval["high"]
        )
    records = [{"question": "what colour is it ?", "context": "table river light blue paper window 7"}]
    [answer] = task.predict(model, tokenizer, records)
    assert set(answer) == {"question", "answer", "start", "end", "score", "no_answer"}
    with pytest.raises(TunesmithError, match="input 2: question answering needs"):
        task.predict(model, tokenizer, records + ["no context"])
    (tmp_path / "ask.jsonl").write_text(json.dumps(records[0]) + "\n")
    assert task.read_inputs(tmp_path / "ask.jsonl") == records
    card = task.card(data.manifest, 64, 0)
    assert card.usage == '`tunesmith predict RUN_DIR --question "..." --context "..."`.'
    assert "windows overlapping by 16 tokens; questions are cut to 32 tokens" in card.limitation
    again = QuestionAnsweringTask.from_config(config, task.to_dict())
    assert again.to_dict() == task.to_dict() and again.max_length == 64


def test_datasets_sources_in_squads_hub_layout(tmp_path):
    """A save_to_disk Dataset with SQuAD's Hub features: answers as a struct of lists, checked
    against the context; a wrong offset and missing columns are refused naming row and column."""
    import datasets

    features = datasets.Features({
        "id": datasets.Value("string"), "context": datasets.Value("string"), "question": datasets.Value("string"),
        "answers": datasets.Sequence({"text": datasets.Value("string"), "answer_start": datasets.Value("int32")})})  # fmt: skip
    rows = {"id": ["a", "b", "c"], "context": ["Denver won the game."] * 2 + ["Rain fell."],
            "question": ["Who won?", "What did Denver win?", "Who lost?"],
            "answers": [{"text": ["Denver"], "answer_start": [0]}, {"text": ["the game"], "answer_start": [11]},
                        {"text": [], "answer_start": []}]}  # fmt: skip
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(tmp_path / "good")
    frame, entry = load_questions(str(tmp_path / "good"), None)
    assert frame["answers"].tolist() == [["Denver"], ["the game"], []] and frame["starts"].tolist() == [[0], [11], []]
    assert entry["cleaning"] == {"questions": 3, "contexts": 2, "unanswerable": 1}
    assert entry["format"] == "datasets save_to_disk Dataset"
    rows["answers"][1] = {"text": ["the game"], "answer_start": [10]}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(tmp_path / "bad")
    with pytest.raises(TunesmithError, match=r"bad, row 2 question b: answer 'the game' is not in its context at "
                                             r"answer_start=10"):  # fmt: skip
        load_questions(str(tmp_path / "bad"), None)
    datasets.Dataset.from_dict({"question": ["Who?"], "text": ["Denver won."]}).save_to_disk(tmp_path / "flat")
    with pytest.raises(TunesmithError, match=r"flat: question_answering reads the columns question, context and "
                                             r"answers .* missing \['context', 'answers'\]"):  # fmt: skip
        load_questions(str(tmp_path / "flat"), None)
