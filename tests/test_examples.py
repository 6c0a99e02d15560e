"""Every example config runs from a fresh clone with nothing beside it (no ../shared, no
benchmarks/out). Examples whose data is local (examples/data, an installed package) load it in a
bare copy of examples/. Examples that read a Hugging Face Hub dataset (hf:) are checked offline
twice: with the Hub unreachable, loading stops with a message naming the dataset and the
save_to_disk command that the example's comments give; and the offline route those comments
describe (that command's folder, then their --set overrides) loads a small DatasetDict written
here by hand with the Hub dataset's features and column names, which proves the example's column
mapping without a network."""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path

import datasets
import pytest

from tunesmith.config import load_config
from tunesmith.data.hf_datasets import parse_hub
from tunesmith.errors import TunesmithError
from tunesmith.tasks.build import build_task

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.yaml"))
LOCAL = {"bbc_news.yaml": 5, "fashion_mnist.yaml": 10}
"""Examples whose data ships (examples/data, a package): the label space their data covers in full."""
SAVE = re.compile(r"datasets\.load_dataset\(([^)]*)\)\.save_to_disk\('([^']+)'\)")
OVERRIDE = re.compile(r"--set (data\.\w+)=(\S+)")

Value, ClassLabel, Sequence = datasets.Value, datasets.ClassLabel, datasets.Sequence
NER = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
EMOTIONS = ["admiration", "amusement", "anger", "annoyance", "approval", "caring", "confusion", "curiosity",
            "desire", "disappointment", "disapproval", "disgust", "embarrassment", "excitement", "fear",
            "gratitude", "grief", "joy", "love", "nervousness", "optimism", "pride", "realization", "relief",
            "remorse", "sadness", "surprise", "neutral"]  # fmt: skip


def _instructions() -> dict[str, list[dict]]:
    """tatsu-lab/alpaca's layout (its ``text`` column: the prompt and response together)."""
    rows = json.loads((ROOT / "tests" / "fixtures" / "instructions.json").read_text(encoding="utf-8"))
    return {"train": [dict(r, text=f"### Instruction:\n{r['instruction']}\n\n### Response:\n{r['output']}")
                      for r in rows]}  # fmt: skip


SMS = ["Are we still on for lunch tomorrow?", "Call me when you get home", "Ok see you at 7", "Thanks for the lift",
       "Running late, start without me", "Did you feed the cat?", "Happy birthday! Have a great day",
       "Can you pick up milk on the way", "WINNER! Claim your 500 prize now, text WIN to 80082",
       "URGENT: your account is locked, reply with your PIN", "Free ringtones! Txt TONE to 8888 now",
       "You have been selected for a free cruise. Call 0900 123 456"]  # fmt: skip
SENTENCES = [  # (tokens, tags) in CoNLL-2003's IOB2 tags
    ("Maria Lopez joined Acme Corp in Madrid .", "B-PER I-PER O B-ORG I-ORG O B-LOC O"),
    ("Fans of the World Cup met in San Diego .", "O O O B-MISC I-MISC O O B-LOC I-LOC O"),
    ("Kenji spoke German at the Berlin office .", "B-PER O B-MISC O O B-LOC O O"),
    ("Shares of Nordwind fell on Monday .", "O O B-ORG O O O O"),
    ("Anna visited Lisbon .", "B-PER O B-LOC O"),
    ("The Oslo Philharmonic played Mahler .", "O B-ORG I-ORG O B-PER O"),
]
CONTEXTS = [  # (context, [(question, answer)])
    ("The Rhine flows from the Swiss Alps to the North Sea.",
     [("Where does the Rhine end?", "the North Sea"), ("Where does the Rhine rise?", "the Swiss Alps")]),
    ("Marie Curie won the Nobel Prize in Physics in 1903 and in Chemistry in 1911.",
     [("When did Curie win the chemistry prize?", "1911")]),
    ("The bridge, opened in 1932, carries eight lanes of traffic across the harbour.",
     [("When did the bridge open?", "1932"), ("How many lanes does it carry?", "eight")]),
    ("Honey bees communicate the direction of food with a waggle dance.",
     [("How do bees say where food is?", "a waggle dance")]),
    ("The library lends books, films and board games to anyone with a card.",
     [("Who may borrow from the library?", "anyone with a card")]),
]  # fmt: skip
COMMENTS = [("I love this so much, thank you!", ["love", "gratitude"]), ("That is hilarious", ["amusement"]),
            ("Why would anyone do that?", ["confusion", "curiosity"]), ("This makes me so angry", ["anger"]),
            ("Great job, really proud of you", ["admiration", "pride"]), ("ok", ["neutral"]),
            ("I'm scared it will happen again", ["fear", "nervousness"]), ("So sorry for your loss", ["sadness"])]  # fmt: skip
REVIEWS = [("Crashes every time I open it", 1), ("Does what it says, no ads", 5), ("Sync is slow but works", 3),
           ("Lost all my notes after the update", 1), ("Nice widgets, battery drain is high", 3),
           ("Best open source keyboard", 5), ("Useless without root", 2), ("Good, needs a dark theme", 4),
           ("Simple and fast", 5), ("Settings reset on reboot", 2), ("Works offline, great", 4), ("Meh", 3)]  # fmt: skip


def _ner_rows(sentences) -> list[dict]:
    return [{"id": str(i), "tokens": words.split(), "pos_tags": [0] * len(words.split()),
             "chunk_tags": [0] * len(words.split()), "ner_tags": [NER.index(t) for t in tags.split()]}
            for i, (words, tags) in enumerate(sentences)]  # fmt: skip


def _qa_rows(contexts) -> list[dict]:
    return [{"id": f"q{i}.{j}", "title": "T", "context": context, "question": question,
             "answers": {"text": [answer], "answer_start": [context.index(answer)]}}
            for i, (context, questions) in enumerate(contexts) for j, (question, answer) in enumerate(questions)]  # fmt: skip


HUB = {  # example -> (the Hub dataset's features, its splits as handwritten rows, the labels they give)
    "alpaca_sft.yaml": (
        {"instruction": Value("string"), "input": Value("string"), "output": Value("string"), "text": Value("string")},
        _instructions(), set()),
    "lora_sms_spam.yaml": (
        {"sms": Value("string"), "label": ClassLabel(names=["ham", "spam"])},
        {"train": [{"sms": text, "label": int(i >= 8)} for i, text in enumerate(SMS)]}, {"ham", "spam"}),
    "conll2003.yaml": (  # the POS and chunk names are cut short: only the columns' presence matters here
        {"id": Value("string"), "tokens": Sequence(Value("string")), "pos_tags": Sequence(ClassLabel(names=["NN"])),
         "chunk_tags": Sequence(ClassLabel(names=["O"])), "ner_tags": Sequence(ClassLabel(names=NER))},
        {"train": _ner_rows(SENTENCES[:4]), "validation": _ner_rows(SENTENCES[4:5]),
         "test": _ner_rows(SENTENCES[5:])}, set(NER)),
    "squad.yaml": (
        {"id": Value("string"), "title": Value("string"), "context": Value("string"), "question": Value("string"),
         "answers": Sequence({"text": Value("string"), "answer_start": Value("int32")})},
        {"train": _qa_rows(CONTEXTS[:4]), "validation": _qa_rows(CONTEXTS[4:])}, set()),
    "multilabel.yaml": (
        {"text": Value("string"), "labels": Sequence(ClassLabel(names=EMOTIONS)), "id": Value("string")},
        {split: [{"text": t, "labels": [EMOTIONS.index(n) for n in names], "id": f"{split}{i}"}
                 for i, (t, names) in enumerate(rows)]
         for split, rows in (("train", COMMENTS), ("validation", COMMENTS[:3]), ("test", COMMENTS[3:6]))},
        {n for _, names in COMMENTS for n in names}),
    "regression.yaml": (
        {"package_name": Value("string"), "review": Value("string"), "date": Value("string"), "star": Value("int8")},
        {"train": [{"package_name": "org.example.app", "review": r, "date": "October 12 2016", "star": s}
                   for r, s in REVIEWS]}, set()),
}  # fmt: skip


def _specs(config) -> list[str]:
    return [s for s in (config.data.train, config.data.validation, config.data.test) if s is not None]


def _offline_route(name: str) -> tuple[str, dict, str, list[str]]:
    """From the example's comments: the load_dataset call's arguments (the repo, the config, the
    revision), the save_to_disk folder, and the --set overrides that read that folder."""
    text = (ROOT / "examples" / name).read_text(encoding="utf-8")
    found = SAVE.search(text)
    assert found, f"{name}: its comments give no save_to_disk command"
    call = ast.parse(f"f({found.group(1)})").body[0].value
    arguments = [ast.literal_eval(a) for a in call.args] + [None]
    keywords = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    folder = found.group(2)
    found_sets = [(key, value.rstrip(".,;")) for key, value in OVERRIDE.findall(text)]  # a sentence's end
    overrides = [f"{key}={value}" for key, value in found_sets if value.split(":")[0] == folder]
    assert overrides, f"{name}: its comments give no --set override that reads {folder}"
    return arguments[0], {"config": arguments[1], **keywords}, found.group(0), overrides


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory) -> Path:
    """examples/ copied alone into an empty folder, as a user's clone with nothing beside it."""
    clone = tmp_path_factory.mktemp("parent") / "tunesmith"
    shutil.copytree(ROOT / "examples", clone / "examples")
    assert not (clone.parent / "shared").exists()
    return clone


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No Hub in tests, whatever the environment says, and an empty datasets cache."""
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")


def test_every_example_is_checked():
    assert set(EXAMPLES) == set(LOCAL) | set(HUB)
    for name in EXAMPLES:
        hub = [s for s in _specs(load_config(ROOT / "examples" / name)) if s.startswith("hf:")]
        assert bool(hub) == (name in HUB), name


@pytest.mark.parametrize("name", sorted(LOCAL))
def test_local_example_data_loads_in_a_fresh_clone(fresh_clone, name, monkeypatch):
    monkeypatch.chdir(fresh_clone)  # the examples say: run from the repository root
    config = load_config(Path("examples") / name)
    for spec in _specs(config):
        if not spec.startswith("package:"):
            assert (fresh_clone / spec).resolve().is_relative_to(fresh_clone / "examples"), spec
    task = build_task(config)
    data = task.prepare(config)  # the data stage of `tunesmith train`: read, check, clean, split
    assert len(data.splits["train"]) >= 40
    for split in ("validation", "test"):
        if getattr(config.data, split) is not None:  # a source the example names: loaded whole, not carved
            assert len(data.splits[split]) > 0, split
    assert len(task.label_names) == LOCAL[name], task.label_names


@pytest.mark.parametrize("name", sorted(HUB))
def test_hub_example_offline_names_the_dataset_and_the_copy_command(fresh_clone, name, monkeypatch, offline):
    monkeypatch.chdir(fresh_clone)
    config = load_config(Path("examples") / name)
    repo, options, command, _ = _offline_route(name)
    hub, hub_config, _ = parse_hub(config.data.train)
    assert (hub.partition("@")[0], hub_config, hub.partition("@")[2] or None) == (
        repo, options["config"], options.get("revision"))  # fmt: skip
    with pytest.raises(TunesmithError) as error:
        build_task(config).prepare(config)
    message = str(error.value)
    assert message.startswith(f"{config.data.train}: the Hub dataset {repo!r} is not in the local datasets cache")
    assert "offline mode is on" in message and command in message, message


@pytest.mark.parametrize("name", sorted(HUB))
def test_hub_example_reads_a_copy_with_the_hubs_layout(fresh_clone, name, monkeypatch, offline):
    features, splits, labels = HUB[name]
    _, _, _, overrides = _offline_route(name)
    folder = overrides[0].split("=", 1)[1].split(":")[0]
    monkeypatch.chdir(fresh_clone)
    datasets.DatasetDict({split: datasets.Dataset.from_list(rows, features=datasets.Features(features))
                          for split, rows in splits.items()}).save_to_disk(folder)  # fmt: skip
    config = load_config(Path("examples") / name, overrides=overrides)
    assert not any(spec.startswith("hf:") for spec in _specs(config)), overrides  # every role reads the copy
    task = build_task(config)
    data = task.prepare(config)
    read = {spec.rpartition(":")[2] for spec in _specs(config)}  # the validator names each role's split
    assert sum(len(frame) for frame in data.splits.values()) == sum(len(splits[split]) for split in read)
    assert set(task.label_names) == labels
    if name == "squad.yaml":  # answers read from the struct of lists, at their offsets
        assert data.splits["test"]["answers"].tolist() == [[a] for _, qs in CONTEXTS[4:] for _, a in qs]
    if name == "regression.yaml":
        assert sorted(data.splits["train"]["label"].astype(float).unique()) <= [1.0, 2.0, 3.0, 4.0, 5.0]
