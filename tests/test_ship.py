"""Export with parity checks, and the HTTP server."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from tests.conftest import sentiment_rows, tiny_config
from tunesmith import api
from tunesmith.errors import TunesmithError
from tunesmith.ship import export as export_module
from tunesmith.ship.export import export
from tunesmith.ship.serve import Predictor, create_app


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("ship")
    data = root / "data.csv"
    pd.DataFrame(sentiment_rows(100, seed=7)).to_csv(data, index=False)
    return api.train(tiny_config(tiny_model_dir, data, root / "run", evaluation={"temperature_scaling": True})).run_dir


def test_onnx_and_int8_exports_match_pytorch_and_record_parity(trained_run, tmp_path):
    report = export(trained_run, tmp_path / "onnx", fmt="onnx", quantize="int8", log=lambda m: None)
    fp32, int8 = report["models"]["model.onnx"], report["models"]["model_int8.onnx"]
    assert fp32["rows"] == 20 and fp32["label_agreement"] == 1.0 and fp32["max_logit_difference"] < 1e-4
    assert int8["label_agreement"] >= 0.98
    meta = json.loads((tmp_path / "onnx" / "tunesmith.json").read_text())
    assert meta["model"] == "model_int8.onnx" and meta["task"]["label_names"] == ["negative", "positive"]
    assert meta["temperature"] == json.loads((trained_run / "calibration.json").read_text())["temperature"]
    assert json.loads((tmp_path / "onnx" / "parity.json").read_text())["models"] == report["models"]
    hf = export(trained_run, tmp_path / "hf", fmt="hf", log=lambda m: None)
    assert hf["models"]["model.safetensors"]["max_logit_difference"] == 0.0
    # serve rebuilds the task from the export's own config (no run needed)
    texts = ["good great lovely", "bad awful"]
    served = Predictor(tmp_path / "hf").predict(texts)
    assert [s["label"] for s in served] == [p["label"] for p in api.predict(trained_run, texts)]
    older = json.loads((tmp_path / "hf" / "tunesmith.json").read_text())
    del older["config"]
    (tmp_path / "hf" / "tunesmith.json").write_text(json.dumps(older))
    older_served = Predictor(tmp_path / "hf").predict(texts)  # an export from before tunesmith.json held the config
    assert older_served == served


def test_export_refuses_failed_parity_and_tampered_runs(trained_run, tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "FP32_MAX_LOGIT_DIFFERENCE", -1.0)  # nothing can pass
    with pytest.raises(TunesmithError, match="export refused, parity failed: model.onnx: logits differ"):
        export(trained_run, tmp_path / "refused", fmt="onnx", log=lambda m: None)
    assert not (tmp_path / "refused").exists() and not list(tmp_path.glob(".refused*"))
    monkeypatch.undo()
    config = trained_run / "config.yaml"
    original = config.read_text()
    try:
        config.write_text(original + "\n# edited\n")
        with pytest.raises(TunesmithError, match="files do not match hashes.json \\(changed: config.yaml\\)"):
            export(trained_run, tmp_path / "tampered", fmt="hf", log=lambda m: None)
        with pytest.raises(TunesmithError, match="files do not match hashes.json"):
            Predictor(trained_run)  # serve refuses it too
    finally:
        config.write_text(original)
    with pytest.raises(TunesmithError, match="--quantize int8 applies to --format onnx"):
        export(trained_run, tmp_path / "x", fmt="hf", quantize="int8", log=lambda m: None)


def test_server_predicts_validates_limits_and_authenticates(trained_run, tmp_path):
    log = tmp_path / "predictions.jsonl"
    app = create_app(trained_run, api_key="secret", max_batch=4, max_body_bytes=2000, log_path=log)
    key = {"X-API-Key": "secret"}
    with TestClient(app) as client:
        assert client.get("/health").json()["status"] == "ok"
        one = client.post("/predict", json={"text": "good great lovely"}, headers=key)
        assert one.status_code == 200 and one.json()["label"] in ("negative", "positive")
        assert sum(one.json()["scores"].values()) == pytest.approx(1.0, abs=1e-5)
        expected = api.predict(trained_run, ["good great lovely", "bad awful"])
        many = client.post("/predict", json={"texts": ["good great lovely", "bad awful"]}, headers=key).json()
        assert [p["label"] for p in many["predictions"]] == [p["label"] for p in expected]
        assert client.post("/predict", json={"text": "x"}).status_code == 401
        assert (
            client.post("/predict", json={"text": "x"}, headers={"Authorization": "Bearer secret"}).status_code == 200
        )
        bad = client.post("/predict", content=b"{not json", headers=key)
        assert bad.status_code == 422 and bad.json()["detail"]
        both = client.post("/predict", json={"text": "a", "texts": ["b"]}, headers=key)
        assert both.status_code == 422 and "exactly one of" in json.dumps(both.json())
        assert client.post("/predict", json={"texts": ["a"] * 5}, headers=key).status_code == 413
        huge = client.post("/predict", json={"text": "a" * 5000}, headers=key)
        assert huge.status_code == 413 and "limit is 2000" in huge.json()["detail"]
        assert client.post("/predict", json={"text": "still serving"}, headers=key).status_code == 200
        metadata = client.get("/metadata", headers=key).json()
        assert metadata["task"]["label_names"] == ["negative", "positive"] and "test" in metadata["metrics"]
        metrics = client.get("/metrics", headers=key).text
        assert 'tunesmith_requests_total{status="413"} 2' in metrics and "tunesmith_predictions_total 5" in metrics
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(logged) == 5 and logged[0]["text"] == "good great lovely" and "label" in logged[0]


def test_server_on_an_onnx_export_agrees_with_the_run(trained_run, tmp_path):
    export(trained_run, tmp_path / "onnx", fmt="onnx", log=lambda m: None)
    texts = [r["text"] for r in sentiment_rows(12, seed=3)]
    # Lengths from 1 word to many, shuffled: calls are grouped by length, answers stay in order.
    texts += [" ".join(texts[i % 12].split() * (i + 1))[: 40 * (i + 1)] for i in (5, 0, 9, 2, 7)]
    with TestClient(create_app(tmp_path / "onnx", threads=1)) as client:
        served = client.post("/predict", json={"texts": texts}).json()["predictions"]
    direct = api.predict(trained_run, texts)
    assert [s["label"] for s in served] == [d["label"] for d in direct]
    for s, d in zip(served, direct):
        assert list(s["scores"].values()) == pytest.approx(list(d["scores"].values()), abs=1e-4)


def test_serve_workers_build_the_app_from_the_environment_and_onnx_file_is_checked(trained_run, tmp_path, monkeypatch):
    from tunesmith.ship.serve import WORKER_OPTIONS, worker_app

    export(trained_run, tmp_path / "onnx", fmt="onnx", quantize="int8", min_agreement=0.0, log=lambda m: None)
    log = tmp_path / "log.jsonl"
    monkeypatch.setenv(WORKER_OPTIONS, json.dumps({"source": str(tmp_path / "onnx"),
                                                   "options": {"onnx_file": "model.onnx", "threads": 1,
                                                               "log_path": str(log), "api_key": "k"}}))  # fmt: skip
    with TestClient(worker_app()) as client:
        assert client.post("/predict", json={"text": "good"}).status_code == 401  # the key travelled too
        answer = client.post("/predict", json={"texts": ["good", "bad"]}, headers={"X-API-Key": "k"})
        assert answer.status_code == 200 and len(answer.json()["predictions"]) == 2
        assert client.get("/health").json()["backend"] == "onnxruntime (model.onnx)"
    assert [json.loads(line)["text"] for line in log.read_text().splitlines()] == ["good", "bad"]
    for name in ("../onnx/model.onnx", "missing.onnx", "tunesmith.json"):
        with pytest.raises(TunesmithError, match=f"--onnx-file {name}: not a model file of the export .* it has "
                                                 "model.onnx, model_int8.onnx"):  # fmt: skip
            Predictor(tmp_path / "onnx", onnx_file=name)
    with pytest.raises(TunesmithError, match="is not an ONNX export"):
        Predictor(trained_run, onnx_file="model.onnx")


def test_backend_onnx_exports_a_run_on_start_and_removes_the_export_after(trained_run, tmp_path):
    from typer.testing import CliRunner

    from tunesmith.cli import app
    from tunesmith.ship.predictor import backend_source

    texts = [r["text"] for r in sentiment_rows(20, seed=4)]
    said = []
    with backend_source(trained_run, "onnx", said.append) as loaded:
        meta = json.loads((loaded / "tunesmith.json").read_text())
        assert meta["format"] == "onnx" and meta["source_run"] == str(trained_run.resolve())
        predictor = Predictor(loaded, threads=1)
        assert predictor.backend.startswith("onnxruntime")
        served = predictor.predict(texts)
    assert not loaded.exists() and "exporting" in said[0]  # made for this command, gone after it
    direct = api.predict(trained_run, texts)
    assert [s.keys() for s in served] == [d.keys() for d in direct]  # the same rows from either backend
    assert [s["text"] for s in served] == [d["text"] for d in direct]
    agree = np.mean([s["label"] == d["label"] for s, d in zip(served, direct)])
    assert agree >= 0.9  # int8 is kept only where the export's parity check passed (0.98 on held-out rows)
    with backend_source(trained_run, "auto", said.append) as loaded:
        assert loaded == trained_run
    export(trained_run, tmp_path / "hf", fmt="hf", log=lambda m: None)
    with pytest.raises(TunesmithError, match="is a hf export"), backend_source(tmp_path / "hf", "onnx", said.append):
        pass
    with pytest.raises(TunesmithError, match="--backend torch: choose one of auto, onnx"):
        with backend_source(trained_run, "torch", said.append):
            pass
    # predict --input with --backend onnx: the same labels as the run's own predictions, in order
    pd.DataFrame({"text": texts}).to_csv(tmp_path / "in.csv", index=False)
    result = CliRunner().invoke(app, ["predict", str(trained_run), "--input", str(tmp_path / "in.csv"), "--output",
                                      str(tmp_path / "out.jsonl"), "--backend", "onnx"])  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows] == [s["label"] for s in served]


def test_a_terminated_server_removes_its_start_up_export(trained_run, tmp_path):
    """SIGTERM (how docker, systemd and Kubernetes stop a server) ends ``serve --backend onnx``
    as Ctrl-C does: the export made on start is removed, not left in the temporary folder."""
    import os
    import re
    import signal
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        server = subprocess.Popen([str(Path(sys.executable).parent / "tunesmith"), "serve", str(trained_run), "--backend", "onnx",
                                   "--port", str(port), "--threads", "1"], stdout=out, stderr=subprocess.STDOUT,
                                  env={**os.environ, "TMPDIR": str(tmp_path)})  # fmt: skip
        try:
            for _ in range(240):
                if "Serving" in log.read_text() or server.poll() is not None:
                    break
                time.sleep(0.5)
            said = log.read_text()
            assert "Serving" in said, said
            export_dir = Path(re.search(r"Exported in \d+ s to (\S+)", said).group(1))
            assert (export_dir / "tunesmith.json").is_file()
            server.send_signal(signal.SIGTERM)
            server.wait(60)
        finally:
            if server.poll() is None:
                server.kill()
    assert not export_dir.exists() and not list(tmp_path.glob("tunesmith-serve-onnx-*")), log.read_text()
    assert "interrupted" in log.read_text()


def test_the_batcher_keeps_as_many_model_calls_in_flight_as_it_is_given():
    """Two calls at once: each fake model call waits at a barrier for the other, which only a
    second call in flight can reach; the answers still go to the requests that asked."""
    import asyncio
    import threading

    from tunesmith.ship.serve import Batcher, Stats

    class Model:
        def __init__(self, seconds: float):
            self.barrier = threading.Barrier(2, timeout=seconds)

        def predict(self, texts):
            self.barrier.wait()  # raises BrokenBarrierError when no second call comes in time
            return [{"label": text.upper()} for text in texts]

    async def ask(calls: int, seconds: float) -> list:
        batcher = Batcher(Model(seconds), Stats(), max_batch=1, window=0.0, log_path=None, calls=calls)
        await batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit([t]) for t in ("a", "b")))
        finally:
            await batcher.stop()

    assert asyncio.run(ask(2, 10.0)) == [[{"label": "A"}], [{"label": "B"}]]
    with pytest.raises(threading.BrokenBarrierError):  # one call at a time: the first waits alone
        asyncio.run(ask(1, 0.5))


def test_psi_is_zero_for_equal_shares_and_grows_with_the_shift():
    from tunesmith.ship.monitor import psi

    a = np.array(["x"] * 50 + ["y"] * 50)
    assert psi(a, a.copy(), ["x", "y"]) == pytest.approx(0.0)
    shifted = np.array(["x"] * 90 + ["y"] * 10)
    # (0.9 - 0.5) ln(0.9 / 0.5) + (0.1 - 0.5) ln(0.1 / 0.5)
    assert psi(a, shifted, ["x", "y"]) == pytest.approx(0.4 * np.log(1.8) + 0.4 * np.log(5))


def test_monitor_flags_foreign_text_and_not_more_of_the_same(trained_run, tmp_path):
    from typer.testing import CliRunner

    from tunesmith.cli import app
    from tunesmith.ship.monitor import monitor

    same = tmp_path / "same.csv"
    pd.DataFrame(sentiment_rows(60, seed=21)).to_csv(same, index=False)
    quiet = monitor(trained_run, same, tmp_path / "quiet", log=lambda m: None)
    assert not quiet["checks"]["oov_rate_increase"]["drift"] and not quiet["checks"]["length_ks"]["drift"]
    assert quiet["checks"]["domain_auc"]["value"] < 0.75
    foreign = tmp_path / "foreign.jsonl"
    lines = [{"text": f"quarterly earnings of the semiconductor conglomerate rose {i} percent amid tariffs and "
                      "currency swings in overseas markets", "label": "positive"} for i in range(60)]  # fmt: skip
    foreign.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = CliRunner().invoke(
        app, ["monitor", str(trained_run), "--live", str(foreign), "--out", str(tmp_path / "loud")]
    )
    assert result.exit_code == 1, result.output  # a scheduler can act on it
    loud = json.loads((tmp_path / "loud" / "monitor.json").read_text())
    assert loud["drift"] and {"length_ks", "oov_rate_increase", "domain_auc"} <= set(loud["drifted"])
    assert "Drift:" in (tmp_path / "loud" / "monitor.html").read_text()
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{oops\n')
    bad = CliRunner().invoke(app, ["monitor", str(trained_run), "--live", str(broken)])
    assert bad.exit_code == 2 and "broken.jsonl, line 2: not JSON" in bad.output


def test_retrain_writes_a_versioned_run_and_scores_old_and_new_test_data(trained_run, tmp_path):
    from tunesmith.ship.retrain import retrain

    new = tmp_path / "new.csv"
    pd.DataFrame(sentiment_rows(80, seed=30)).to_csv(new, index=False)
    report = retrain(trained_run, new, train=api.train, old_share=0.25, out=tmp_path / "run-v2")
    assert report["retrained"] == str(tmp_path / "run-v2")
    # 80 new rows: test 16 and validation 16 (the run's fractions), 48 to train on; old rows make
    # up a quarter of the mix: 16.
    assert report["rows"]["new_train"] == 48 and report["rows"]["old_train_mixed_in"] == 16
    scores = report["scores"]
    assert set(scores) == {"deployed", "retrained"} and set(scores["deployed"]) == {"old_test", "new_test"}
    assert report["better_on_new_test"] == (
        scores["retrained"]["new_test"]["macro_f1"] > scores["deployed"]["new_test"]["macro_f1"]
    )
    assert json.loads((tmp_path / "run-v2" / "retrain.json").read_text()) == report
    train = pd.read_parquet(tmp_path / "run-v2" / "data" / "train.parquet")
    assert len(train) == 48 + 16
    config = (tmp_path / "run-v2" / "config.yaml").read_text()
    assert str((trained_run / "model").resolve()) in config  # it continued from the deployed model
