"""Federated fine-tuning across processes and task kinds (kept apart from test_federated.py so the
two files' federations run on different test workers): Flower's Deployment Engine with real
separate processes, and a short federation of each of several task kinds."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

import tunesmith
from tests.conftest import sentiment_rows, tiny_config
from tests.makers import DATA_FILE, tiny_task_config, write_examples
from tunesmith import api
from tunesmith.cli import app

# A federation trains the run's task through the contract: one short one of each of these kinds
# (a tiny model each), with the model each kind trains ("fusion": a table's numbers beside its text).
KINDS = {"regression": {}, "tabular": {"task": {"route": "fusion"}}, "token_classification": {},
         "causal_lm": {"model": {"strategy": "lora"}}}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_federation_trains_each_kind_of_task(kind, request, tmp_path):
    model_dir = request.getfixturevalue({"causal_lm": "tiny_llama_dir"}.get(kind, "tiny_model_dir"))
    train_file = write_examples(kind, tmp_path / DATA_FILE.get(kind, "train.csv"), 48)
    config = tiny_task_config(kind, model_dir, train_file, tmp_path / "run")
    for section, values in KINDS[kind].items():
        config.setdefault(section, {}).update(values)
    config["federated"] = {"clients": 2, "rounds": 2, "local_epochs": 1}
    result = api.federate(config)
    summary = json.loads((result.run_dir / "federation.json").read_text())
    assert [r["round"] for r in summary["history"]] == [1, 2]
    assert all(r["failed"] == [] and len(r["clients"]) == 2 for r in summary["history"])
    assert all(math.isfinite(r["train_loss"]) for r in summary["history"])
    assert sum(c["rows"] for c in summary["clients"]) == len(pd.read_parquet(result.run_dir / "data" / "train.parquet"))
    assert "test" in result.metrics and (result.run_dir / "README.md").is_file()
    assert tunesmith.predict(result.run_dir, RAW.get(kind, ["good great lovely", "bad awful grim"]))


RAW = {"tabular": [{"review": "good great lovely", "stars": 5, "channel": "web"}], "causal_lm": ["Repeat: blue"],
       "token_classification": ["Alice went to Paris"]}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_deployed_federation_runs_as_separate_processes(tiny_model_dir, tmp_path):
    """Flower's Deployment Engine on this machine: a SuperLink, two SuperNodes that each read
    their own file, and ``flwr run`` on the Flower App that ``tunesmith federate --flower-app``
    writes; the server's run directory ends like any run's."""
    rows = sentiment_rows(160)
    for name, part in (("server", rows[:60]), ("site0", rows[60:110]), ("site1", rows[110:])):
        pd.DataFrame(part).to_csv(tmp_path / f"{name}.csv", index=False)
    config = tiny_config(tiny_model_dir, tmp_path / "server.csv", tmp_path / "run")
    config["federated"] = {"clients": 2, "rounds": 2}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    written = CliRunner().invoke(
        app, ["federate", str(tmp_path / "config.yaml"), "--flower-app", str(tmp_path / "app")]
    )
    assert written.exit_code == 0, written.output
    link = _free_port()
    bin_dir = Path(sys.executable).parent
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "here"\n\n[superlink.here]\naddress = "127.0.0.1:{link}"\n'
                                      "insecure = true\n")  # fmt: skip
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_HOME": str(home),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    logs = [open(tmp_path / f"{name}.log", "w") for name in ("link", "node0", "node1")]  # noqa: SIM115
    processes = [subprocess.Popen([bin_dir / "flower-superlink", "--insecure", "--disable-runtime-dependency-installation",
                                   "--port", str(link), "--database", str(tmp_path / "link.db")],
                                  env=env, stdout=logs[0], stderr=subprocess.STDOUT)]  # fmt: skip

    def wait_for(log: Path, text: str) -> None:
        for _ in range(240):
            if text in log.read_text():
                return
            time.sleep(0.5)
        raise AssertionError(f"{log.name} never said {text!r}: {log.read_text()[-2000:]}")

    try:
        wait_for(tmp_path / "link.log", "Uvicorn running")
        for i in range(2):
            node = [bin_dir / "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link}", "--port",
                    str(_free_port()), "--node-config", f'partition-id={i} data="{tmp_path / f"site{i}.csv"}"']  # fmt: skip
            processes.append(subprocess.Popen(node, env=env, stdout=logs[i + 1], stderr=subprocess.STDOUT))
        for i in range(2):
            wait_for(tmp_path / f"node{i}.log", "SuperNode ID")
        done = subprocess.run([bin_dir / "flwr", "run", str(tmp_path / "app"), "here", "--stream"], env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        for log in logs:
            log.close()
    run = tmp_path / "run"
    assert (run / "model" / "config.json").is_file(), done.stdout[-3000:] + (tmp_path / "link.log").read_text()[-3000:]
    summary = json.loads((run / "federation.json").read_text())
    assert summary["engine"] == "flower-deployment"
    assert summary["clients"] == [{"client": "client 0", "rows": 50}, {"client": "client 1", "rows": 50}]
    assert [sorted(c["client"] for c in r["clients"]) for r in summary["history"]] == [["client 0", "client 1"]] * 2
    assert not (run / "federation" / "shards").exists()  # the server cut nothing: each site read its own file
