"""Messages for mistakes that used to end in a traceback or a misleading sentence: model folders
and paths, position limits, non-finite config numbers, damaged run files, the tune storage, a
taken port, the API docs behind the key, an int8 export below its agreement floor, a NaN loss."""

from __future__ import annotations

import json
import math
import shutil
import socket

import pandas as pd
import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tests.conftest import sentiment_rows, tiny_config
from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.errors import TunesmithError
from tunesmith.evaluate.html import run_report
from tunesmith.models.load import check_max_length, check_weights, load_tokenizer, resolve_model
from tunesmith.ship.export import export
from tunesmith.ship.serve import bind, create_app, serve
from tunesmith.study.tune import open_study
from tunesmith.train.loop import non_finite_loss


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("messages")
    data = root / "data.csv"
    pd.DataFrame(sentiment_rows(80, seed=3)).to_csv(data, index=False)
    return api.train(tiny_config(tiny_model_dir, data, root / "run", train={"num_epochs": 1})).run_dir


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    return shutil.copytree(tiny_model_dir, tmp_path / "model")


# -- model folders and names -----------------------------------------------------------------


def test_max_length_above_the_position_limit_names_both_numbers(tiny_model_dir):
    resolved = resolve_model(str(tiny_model_dir))
    tokenizer = load_tokenizer(resolved, max_length=128)  # the limit itself is fine
    with pytest.raises(TunesmithError, match=r"model.max_length=129 is above 128, the model's max_position_embeddings"):
        check_max_length(resolved, tokenizer, 129)


def test_training_refuses_max_length_before_anything_trains(tiny_model_dir, sentiment_csv, tmp_path):
    config = tiny_config(tiny_model_dir, sentiment_csv, tmp_path / "run", model={"max_length": 200})
    with pytest.raises(TunesmithError, match="set model.max_length to 128 or less"):
        api.train(config)
    assert not list(tmp_path.glob("run/checkpoints/*"))


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda data: data[: len(data) // 2], "truncated"),
        (lambda data: data[:100], "header is cut off"),
        (lambda data: b"<html>404</html>", "not a safetensors file"),
        (lambda data: data + b"extra", "truncated or appended to"),
    ],  # fmt: skip
)
def test_damaged_safetensors_are_named(model_copy, damage, expected):
    weights = model_copy / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(TunesmithError, match=f"{weights}.* is damaged.*{expected}"):
        resolve_model(str(model_copy))


def test_a_whole_safetensors_file_passes(model_copy):
    check_weights(model_copy)
    assert resolve_model(str(model_copy)).location == str(model_copy.resolve())


def test_a_pickle_only_folder_is_refused_without_unpickling(model_copy, tmp_path, monkeypatch):
    (model_copy / "model.safetensors").unlink()
    (model_copy / "pytorch_model.bin").write_bytes(b"any bytes: it is never opened")
    with pytest.raises(TunesmithError, match="holds only a pickle checkpoint pytorch_model.bin; tunesmith loads "
                                             "safetensors only.*convert it"):  # fmt: skip
        resolve_model(str(model_copy))


def test_a_missing_path_a_file_and_an_offline_hub_id_say_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("./models/tiny", "models/tiny/v2", "~/no-such-tunesmith-model", str(tmp_path / "gone")):
        with pytest.raises(TunesmithError, match="model directory not found"):
            resolve_model(name)
    (tmp_path / "weights.safetensors").write_text("x")
    with pytest.raises(TunesmithError, match="is a file; give the model directory"):
        resolve_model("weights.safetensors")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(TunesmithError, match="not in the local hub cache while the hub is offline"):
        resolve_model("someone/no-such-model")
    with pytest.raises(TunesmithError, match=f"model directory not found: {tmp_path / 'models' / 'tiny'}"):
        resolve_model("models/tiny")  # a path or a hub id: the message covers both
    with pytest.raises(TunesmithError, match=r"is not a local directory, an installed model package .* or a hub id"):
        resolve_model("my model!!")


def test_predict_on_a_run_with_damaged_weights_says_which_file(trained_run, tmp_path):
    run = shutil.copytree(trained_run, tmp_path / "run")
    weights = run / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(TunesmithError, match="model.safetensors is damaged.*restore the run from a backup"):
        api.predict(run, ["good"])
    weights.unlink()
    (run / "model" / "pytorch_model.bin").write_bytes(b"never opened")
    with pytest.raises(TunesmithError, match="holds only a pickle checkpoint pytorch_model.bin"):
        api.predict(run, ["good"])


# -- config values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("train", "num_epochs", math.inf),
        ("train", "learning_rate", math.nan),
        ("train", "weight_decay", -math.inf),
        ("task", "no_answer_threshold", math.nan),
        ("evaluation", "confidence_level", math.nan),
    ],  # fmt: skip
)
def test_non_finite_config_numbers_name_their_key(section, key, value):
    values = {key: value, "type": "question_answering"} if section == "task" else {key: value}
    with pytest.raises(TunesmithError, match=rf"{section}\.{key}: Input should be a finite number"):
        config_from_dict({section: values})


def test_absurd_epochs_and_bad_storage_are_refused_with_the_key():
    with pytest.raises(TunesmithError, match="train.num_epochs: Input should be less than or equal to 100000"):
        config_from_dict({"train": {"num_epochs": 1e9}})
    with pytest.raises(TunesmithError, match=r"tune.storage: .*sqlite://.*postgresql://"):
        config_from_dict({"tune": {"storage": "bogus://x"}})
    assert config_from_dict({"tune": {"storage": "postgresql+psycopg2://u@h/db"}}).tune.storage.startswith("postgres")


def test_a_storage_that_cannot_be_opened_names_the_key(tmp_path):
    config = config_from_dict({"tune": {"storage": f"sqlite:///{tmp_path}/no/such/dir/study.db"}})
    with pytest.raises(TunesmithError, match=r"tune.storage='sqlite:///.*' cannot be opened"):
        open_study(config, tmp_path)


# -- run files -------------------------------------------------------------------------------


def _fake_run(tmp_path, **files):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"name": "m"}}))
    for name, text in files.items():
        (run / name.replace("_", ".", 1)).write_text(text)
    return run


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"metrics_json": '{"test": {"accuracy": 0.9'}, "metrics.json is damaged"),
        ({"metrics_json": "[1, 2]"}, "metrics.json is damaged: it holds a list"),
        ({"task_json": '{"type": 5}'}, "not laid out as tunesmith writes them"),
        ({"metrics_json": '{"test": 3}'}, "not laid out as tunesmith writes them"),
    ],  # fmt: skip
)
def test_report_on_damaged_run_files_names_them(tmp_path, files, expected):
    run = _fake_run(tmp_path, **files)
    with pytest.raises(TunesmithError, match=expected):
        run_report(run)
    assert not (run / "report.html").exists()


# -- CLI flags -------------------------------------------------------------------------------


def test_label_errors_flag_names_the_flag_and_choices(tmp_path, monkeypatch):
    from tunesmith.cli import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["inspect", "--label-errors", "bogus"])
    assert result.exit_code == 2
    assert "--label-errors bogus: choose embedding, finetune, ensemble or off" in " ".join(result.output.split())
    assert not (tmp_path / "reports").exists()


# -- serve -----------------------------------------------------------------------------------


def test_serve_refuses_a_taken_port_before_loading_or_announcing(tmp_path):
    taken = bind("127.0.0.1", 0)
    port = taken.getsockname()[1]
    said = []
    try:
        with pytest.raises(TunesmithError, match=f"port {port} on 127.0.0.1 is in use; choose another with --port"):
            serve(tmp_path / "not-even-loaded", host="127.0.0.1", port=port, log=said.append)
    finally:
        taken.close()
    assert not said
    free = bind("127.0.0.1", port)  # closed again: the port is free, no TIME_WAIT trouble
    assert free.family == socket.AF_INET
    free.close()


class _Stub:
    backend, metadata, scorer = "stub", {"source": "stub"}, None


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json"])
def test_api_docs_need_the_key_when_one_is_set(path):
    with TestClient(create_app("unused", api_key="k", predictor=_Stub())) as client:
        assert client.get(path).status_code == 401
        assert client.get(path, headers={"X-API-Key": "wrong"}).status_code == 401
        allowed = client.get(path, headers={"X-API-Key": "k"})
        assert allowed.status_code == 200
        assert client.get(path, headers={"Authorization": "Bearer k"}).status_code == 200
        assert client.get("/health").status_code == 200
    if path == "/openapi.json":
        assert "/predict" in allowed.json()["paths"] and path not in allowed.json()["paths"]
    with TestClient(create_app("unused", predictor=_Stub())) as client:  # no key: open as before
        assert client.get(path).status_code == 200


# -- export ----------------------------------------------------------------------------------


def test_int8_below_the_floor_keeps_the_fp32_export_and_says_what_to_do(trained_run, tmp_path):
    said = []
    report = export(trained_run, tmp_path / "onnx", fmt="onnx", quantize="int8", min_agreement=1.01, log=said.append)
    out = tmp_path / "onnx"
    assert (out / "model.onnx").is_file() and not (out / "model_int8.onnx").exists()
    assert json.loads((out / "tunesmith.json").read_text())["model"] == "model.onnx"
    assert report["models"]["model_int8.onnx"]["kept"] is False
    assert report["models"]["model.onnx"]["label_agreement"] == 1.0
    (warning,) = report["warnings"]
    assert "model_int8.onnx was not kept" in warning and "--min-agreement" in warning and "quantize_static" in warning
    assert json.loads((out / "parity.json").read_text())["warnings"] == [warning]
    assert f"WARNING: {warning}" in said


# -- training --------------------------------------------------------------------------------


def test_a_non_finite_target_is_blamed_not_the_learning_rate():
    train = config_from_dict({}).train
    message = non_finite_loss(math.nan, 3, train, [{"input_ids": [1, 2], "labels": 1.5},
                                                   {"input_ids": [1, 3], "labels": math.inf}])  # fmt: skip
    assert "non-finite values (NaN or infinity) in labels" in message and "learning_rate" not in message
    generic = non_finite_loss(math.inf, 3, train, [{"input_ids": [1, 2], "labels": 1}])
    assert "train.learning_rate (now 0.0001)" in generic and "train.max_grad_norm" in generic
    for text in (message, generic):
        assert "kept" not in text and "checkpoint" not in text.lower()  # it promises nothing about files
