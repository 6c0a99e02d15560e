"""Federated fine-tuning (``tunesmith federate``): clients that keep their rows train the run's
task on them, and only weights travel.

Flower (``flwr``) does the federation's work: it carries the messages, runs the clients (Flower's
simulation runtime on Ray here; the same ClientApp under ``flower-supernode`` on other
machines), samples them each round, tolerates failed ones (a reply that is an error, or a
client process that died, is left out of the round) and aggregates (``FedAvg``, ``FedProx``
from ``flwr.serverapp.strategy``). What is written here is tunesmith's side of it:

- the shards (data/shards.py), each written with the task's ``write_records`` and read back by
  its client with the task's ``read``, as a real site reads its own file;
- a client's round: the global arrays into its model, then the one training loop on its shard
  for ``federated.local_epochs`` (FedProx's proximal term, which Flower leaves to the client,
  is added to the task's loss here), and its trainable arrays back, never a row;
- the server's round end: the global model scored on the validation split, and the global
  arrays saved (safetensors, so a resume never unpickles anything) with the round's record,
  from which an interrupted run resumes at the next round;
- the run directory at the end: the best round's global model goes through the same
  ``finish_run`` as any run (test scores, card, report, export-ready model), with
  ``federation.json`` and ``federation_curves.png`` beside it.

Privacy: clients send weights, not rows; weights can leak facts about the rows they were
trained on, and no differential privacy or secure aggregation is applied (the card says so).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import ServerApp
from flwr.serverapp.strategy import FedAvg, FedProx
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from tunesmith.config import Config
from tunesmith.data.load import read_table
from tunesmith.data.prepare import PreparedData
from tunesmith.data.shards import dirichlet_shards, iid_shards, shard_summary, site_shards
from tunesmith.errors import StoppedPartWay, TunesmithError
from tunesmith.models.adapt import apply_strategy
from tunesmith.models.load import pad_token_id, resolve_model
from tunesmith.runs import RunDir, atomic_write
from tunesmith.study.federated_client import client_app, load_state, trainable_state
from tunesmith.tasks.contract import Task
from tunesmith.tasks.plots import save_figure
from tunesmith.train.checkpoint import LoopState
from tunesmith.train.fit import Fitted
from tunesmith.train.loop import LoopResult, metric_and_mode
from tunesmith.train.trackers import TrackerCallback

STATE = "state.json"
LOCAL_STRATEGIES = ("full", "freeze", "lora")
"""Strategies a client can train round after round from the global weights (gradual unfreezing
keeps a schedule across the loop's steps; contrastive and zero-shot do not train on the loop)."""


def check_federation(config: Config, task: Task, *, deployed: bool = False) -> None:
    """Refuses settings a federation cannot run, before any data is read (``deployed``: the
    clients are SuperNodes reading their own files)."""
    if deployed:
        check_deployed(config)
    if config.model.strategy not in LOCAL_STRATEGIES:
        raise TunesmithError(f"federate trains each client with model.strategy in {LOCAL_STRATEGIES}; "
                             f"model.strategy={config.model.strategy} cannot be federated")  # fmt: skip
    fed = config.federated
    if fed.site_column is None and fed.partition == "dirichlet" and not task.stratify:
        raise TunesmithError(f"federated.partition=dirichlet skews labels, which a {task.kind} task has not "
                             "one of per row: use partition=iid or federated.site_column")  # fmt: skip
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise TunesmithError("federate runs its clients itself: leave out --nproc")


def check_deployed(config: Config) -> None:
    """Refuses what a deployed federation (Flower's Deployment Engine) cannot do, from its config
    alone (``--flower-app`` checks it before writing the app)."""
    if config.data.clean.label_errors != "keep":
        # The server's data.train only fixes the label space there; the clients' rows never reach it.
        raise TunesmithError(f"data.clean.label_errors={config.data.clean.label_errors} cleans the server's "
                             "data.train, which a deployed federation does not train on: run tunesmith inspect "
                             "on each site's file and clean it there, then set data.clean.label_errors=keep")  # fmt: skip


class RoundTracker:
    """A round callback that sends each round's global validation scores and the clients'
    weighted training loss to runtime.report_to's trackers, the round's number as the step."""

    def __init__(self, callback: TrackerCallback):
        self.callback = callback

    def start(self, done: int) -> None:
        """Starts the trackers after ``done`` completed rounds (a resume with no round left to
        run still hands them the final metrics)."""
        self.callback.start(done)

    def __call__(self, entry: dict[str, Any]) -> None:
        self.callback.log_at(entry["round"], "train", {"loss": entry["train_loss"]})
        self.callback.log_at(entry["round"], "validation", entry["validation"])


# -- shards ----------------------------------------------------------------------------------
def cut_shards(config: Config, task: Task, train: pd.DataFrame) -> tuple[list[np.ndarray], list[str]]:
    """The row positions of ``train`` that each client holds, and the clients' names."""
    fed = config.federated
    if fed.site_column is not None:
        rows = task.source_rows(train)
        if rows is None:
            raise TunesmithError(f"federated.site_column: a {task.kind} task's rows do not keep their place in "
                                 "data.train, so their sites cannot be read; use federated.partition")  # fmt: skip
        table = read_table(config.data.train, column_names=config.data.column_names,
                           encoding_errors=config.data.encoding_errors)  # fmt: skip
        if fed.site_column not in table.frame.columns:
            raise TunesmithError(f"federated.site_column={fed.site_column!r} is not a column of {table.source}; "
                                 f"columns: {list(table.frame.columns)}")  # fmt: skip
        shards, sites = site_shards(table.frame[fed.site_column].to_numpy()[rows], column=fed.site_column)
        return shards, [f"site {s}" for s in sites]
    seed = config.runtime.seed
    if fed.partition == "dirichlet":
        shards = dirichlet_shards(train["label"].astype(str).to_numpy(), fed.clients, alpha=fed.alpha, seed=seed)
    else:
        shards = iid_shards(len(train), fed.clients, seed=seed)
    return shards, [f"client {i}" for i in range(len(shards))]


def write_shards(run: RunDir, config: Config, task: Task, train: pd.DataFrame, log: Callable[[str], None]) -> dict:
    """Cuts the training split into the clients' shards and writes each where its client reads it
    (``federation/shards/``); returns the shard plan (saved as ``federation/shards.json``)."""
    shards, names = cut_shards(config, task, train)
    folder = run.path / "federation" / "shards"
    folder.mkdir(parents=True, exist_ok=True)
    keys, suffix = {}, ""
    for i, shard in enumerate(shards):  # every shard in the task's own format: client-N.jsonl, ...
        path, keys = task.write_records(train.iloc[shard].reset_index(drop=True), folder, f"client-{i}")
        suffix = path.suffix
    labels = train["label"].astype(str).to_numpy() if task.stratify else None
    plan = {"folder": "federation/shards", "suffix": suffix, "keys": keys, "names": names,
            "clients": shard_summary(shards, labels, names)}  # fmt: skip
    run.write_json("federation/shards.json", plan)
    for entry in plan["clients"]:
        spread = ", ".join(f"{k} {v}" for k, v in entry.get("labels", {}).items())
        log(f"{entry['client']}: {entry['rows']} rows" + (f" ({spread})" if spread else ""))
    return plan


# -- the run's record ------------------------------------------------------------------------
@dataclass
class Ledger:
    """What the server keeps of every round: per-round global scores, per-client results,
    bytes sent, failures. After each round its global weights go to ``round-N.safetensors``
    and then ``state.json`` (written last) names them and the best round's, so a run killed in
    between resumes from the last round that ``state.json`` names."""

    run: RunDir
    clients: list[str]
    metric: str
    mode: str
    rounds: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, str | None] = field(default_factory=lambda: {"global": None, "best": None})
    pending: dict[str, list] = field(default_factory=lambda: {"train": [], "evaluate": [], "errors": []})

    @property
    def folder(self) -> Path:
        return self.run.path / "federation"

    @classmethod
    def open(cls, run: RunDir, clients: list[str], metric: str, mode: str) -> Ledger:
        """The ledger of ``run`` so far: empty for a new run, the saved rounds for a resumed one.

        Raises:
            TunesmithError: a saved ledger that is not readable, or whose weights are missing.
        """
        ledger = cls(run, clients, metric, mode)
        path = ledger.folder / STATE
        if path.is_file():
            try:
                saved = json.loads(path.read_text(encoding="utf-8"))
                ledger.rounds = list(saved["rounds"])
                ledger.files = {"global": saved["global"], "best": saved["best"]}
                if not all(name is None or Path(name).name == name for name in ledger.files.values()):
                    raise ValueError(f"weights named outside {ledger.folder}: {ledger.files}")
            except (ValueError, KeyError, TypeError) as error:
                raise TunesmithError(f"{path} is not a federation record tunesmith wrote: {error!r}") from None
            if ledger.rounds and not (ledger.folder / str(ledger.files["global"])).is_file():
                raise TunesmithError(f"{path} records {len(ledger.rounds)} rounds but their weights "
                                     f"({ledger.files['global']}) are missing")  # fmt: skip
        return ledger

    def record(self, kind: str, contents: list) -> dict[str, float]:
        """Keeps the per-client metrics of a round's replies (train or evaluate) and returns
        their means weighted by rows, a client's NaN left out (Flower's aggregated metrics).

        Raises:
            TunesmithError: a reply from a client number outside the federation, or two from one.
        """
        found = []
        for content in contents:
            metrics = dict(content["metrics"])
            number = int(metrics.pop("client"))
            if not 0 <= number < len(self.clients) or any(r["client"] == self.clients[number] for r in found):
                raise TunesmithError(
                    f"a client answered as partition-id {number}: each client needs its own partition-id from 0 "
                    f"to {len(self.clients) - 1} (federated.clients={len(self.clients)})"
                )
            found.append({"client": self.clients[number], **metrics})
        self.pending[kind] = found
        means = {}
        for name in sorted({k for r in found for k in r if k not in ("client", "num-examples")}):
            pairs = [(r[name], r["num-examples"]) for r in found if math.isfinite(r.get(name, math.nan))]
            total = sum(n for _, n in pairs)
            means[name] = sum(v * n for v, n in pairs) / total if total else math.nan
        return means

    def best(self) -> dict[str, Any] | None:
        scored = [r for r in self.rounds if math.isfinite(r["validation"].get(self.metric, math.nan))]
        if not scored:
            return None
        pick = max if self.mode == "max" else min
        return pick(scored, key=lambda r: r["validation"][self.metric])

    def close_round(self, number: int, validation: dict[str, float], arrays: dict[str, torch.Tensor],
                    bytes_each: int) -> dict[str, Any]:  # fmt: skip
        """Records round ``number`` and saves its global weights.

        Raises:
            StoppedPartWay: no client trained in this round (their errors named); the rounds
                before it are kept.
        """
        trained = [r["client"] for r in self.pending["train"]]
        if not trained:
            reasons = "; ".join(dict.fromkeys(self.pending["errors"])) or "no reply"
            raise StoppedPartWay(f"round {number}: no client trained, so the federation stopped ({reasons[:2000]})")
        # Each round sends the global weights to every client twice (to train, then to score
        # on its rows) and receives one reply from each client that trained.
        entry = {"round": number, "validation": validation, "clients": self.pending["train"],
                 "client_evaluation": self.pending["evaluate"],
                 "failed": [c for c in self.clients if c not in trained],
                 "bytes_sent": bytes_each * (2 * len(self.clients) + len(trained)),
                 "bytes_per_message": bytes_each}  # fmt: skip
        rows = sum(r["num-examples"] for r in entry["clients"])
        weighted = sum(r.get("train_loss", math.nan) * r["num-examples"] for r in entry["clients"])
        entry["train_loss"] = weighted / rows if rows else math.nan
        self.pending = {"train": [], "evaluate": [], "errors": []}
        self.rounds.append(entry)
        name = f"round-{number}.safetensors"
        atomic_write(self.folder / name, save({k: v.contiguous() for k, v in arrays.items()}))
        best = self.best()
        self.files = {"global": name, "best": None if best is None else f"round-{best['round']}.safetensors"}
        atomic_write(self.folder / STATE, json.dumps({**self.files, "rounds": self.rounds}, indent=2) + "\n")
        for old in self.folder.glob("round-*.safetensors"):  # what state.json no longer names
            if old.name not in self.files.values():
                old.unlink(missing_ok=True)
        self.run.append_metrics({"step": number, "round": number, "split": "train", "loss": entry["train_loss"]})
        self.run.append_metrics({"step": number, "round": number, "split": "validation", **validation})
        return entry

    def weights(self, which: str) -> dict[str, torch.Tensor]:
        """The saved global weights of the last round (``which`` "global") or the best one ("best")."""
        path = self.folder / str(self.files[which])
        try:
            return load_file(path)
        except (SafetensorError, OSError) as error:
            raise TunesmithError(f"{path} is not readable federated weights: {error}") from None


@dataclass
class Server:
    """The server's side of one federated run: its model (scored on the validation split after
    every round), the ledger, and what the ServerApp sends to the clients."""

    config: Config
    task: Task
    model: Any
    features: list[dict]
    pad_token_id: int
    ledger: Ledger
    settings: dict[str, Any]
    log: Callable[[str], None]
    callbacks: list = field(default_factory=list)

    def strategy(self) -> FedAvg:
        """Flower's strategy, every client in every round; the error replies' reasons are kept
        for the round's record."""
        fed, count = self.config.federated, len(self.ledger.clients)
        common = {"fraction_train": 1.0, "fraction_evaluate": 1.0, "min_train_nodes": count,
                  "min_evaluate_nodes": count, "min_available_nodes": count,
                  "train_metrics_aggr_fn": self.aggregate("train"),
                  "evaluate_metrics_aggr_fn": self.aggregate("evaluate")}  # fmt: skip
        strategy = FedProx(proximal_mu=fed.proximal_mu, **common) if fed.aggregation == "fedprox" else FedAvg(**common)
        aggregate_train = strategy.aggregate_train

        def keep_reasons(server_round: int, replies):
            replies = list(replies)
            self.ledger.pending["errors"] = [m.error.reason for m in replies if m.has_error()]
            return aggregate_train(server_round, replies)

        strategy.aggregate_train = keep_reasons
        return strategy

    def aggregate(self, kind: str) -> Callable:
        return lambda contents, weighted_by_key: MetricRecord(self.ledger.record(kind, contents))

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Flower's centralized evaluation, after each round (round 0: the starting weights,
        not scored): the global model on the validation split, then the round's record."""
        if server_round == 0:
            return None
        number = server_round + int(self.settings["round-offset"])
        state = arrays.to_torch_state_dict()
        load_state(self.model, state)
        validation = {}
        if self.features:
            device = next(self.model.parameters()).device
            found = self.task.evaluate(self.model, self.features, batch_size=self.config.train.batch_size * 2,
                                       pad_token_id=self.pad_token_id, device=device)  # fmt: skip
            validation = {k: float(v) for k, v in found.items() if isinstance(v, (int, float))}
        entry = self.ledger.close_round(number, validation, state, arrays.count_bytes())
        failed = f"; no reply from {', '.join(entry['failed'])}" if entry["failed"] else ""
        scores = ", ".join(f"{k} {v:.4f}" for k, v in validation.items() if k in (self.ledger.metric, "loss"))
        self.log(f"Round {number} of {self.config.federated.rounds}: {len(self.ledger.clients) - len(entry['failed'])} "
                 f"of {len(self.ledger.clients)} clients trained; validation {scores or 'not scored'}{failed}")  # fmt: skip
        for callback in self.callbacks:
            callback(entry)
        return MetricRecord(validation) if validation else None

    def start(self, grid, initial: dict[str, torch.Tensor], rounds: int) -> None:
        """Runs ``rounds`` rounds with the clients that ``grid`` reaches (Flower's strategy loop)."""
        self.strategy().start(grid=grid, initial_arrays=ArrayRecord(initial), num_rounds=rounds,
                              timeout=self.config.federated.round_timeout_seconds,
                              train_config=ConfigRecord(dict(self.settings)),
                              evaluate_config=ConfigRecord(dict(self.settings)), evaluate_fn=self.evaluate)  # fmt: skip

    def app(self, initial: dict[str, torch.Tensor], rounds: int) -> ServerApp:
        """A ServerApp running :meth:`start`, for Flower's simulation runtime."""
        app = ServerApp()

        @app.main()
        def main(grid, context) -> None:
            self.start(grid, initial, rounds)

        return app


PRIVACY = (
    "Clients sent weights, never rows: each round a client received the global trainable weights and "
    "sent back its own, trained on its rows. Weights can still reveal facts about the rows they were "
    "trained on (membership, rare strings); no differential privacy, secure aggregation or encryption "
    "beyond the transport was applied, so the server and anyone who sees the weights could attempt that."
)


def simulate(server: Server, initial: dict[str, torch.Tensor], rounds: int, clients: int, mods: list | tuple) -> None:
    """Runs the rounds in Flower's simulation runtime: the ServerApp in this process, each client
    a virtual node served by Ray worker processes (federated.client_cpus cores each)."""
    import ray
    from flwr.simulation import run_simulation

    cpus = server.config.federated.client_cpus
    # A worker process that dies (a crashed or killed client) fails its round's reply and is
    # started again by Ray for the next round: Flower's pool keeps the actor, so without
    # restarts every later message it is given would fail too.
    backend = {"client_resources": {"num_cpus": cpus, "num_gpus": 0.0, "max_restarts": rounds},
               "init_args": {"num_cpus": max(float(os.cpu_count() or 1), cpus), "logging_level": "ERROR",
                             "log_to_driver": False}}  # fmt: skip
    flower = logging.getLogger("flwr")
    level = flower.level
    flower.setLevel(logging.WARNING)  # tunesmith logs each round itself
    try:
        run_simulation(server_app=server.app(initial, rounds), client_app=client_app(mods), num_supernodes=clients,
                       backend_config=backend)  # fmt: skip
    finally:
        flower.setLevel(level)
        ray.shutdown()  # its worker processes and object store go now, not when this process ends


def read_plan(run: RunDir) -> dict[str, Any]:
    """A federated run's plan of clients (``federation/shards.json``).

    Raises:
        TunesmithError: the file is not a plan tunesmith wrote.
    """
    path = run.path / "federation" / "shards.json"
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(plan["names"], list) or not isinstance(plan["folder"], str):
            raise TypeError("names must be a list and folder a string")
        if not re.fullmatch(r"\.[A-Za-z0-9]{1,10}", plan.setdefault("suffix", ".parquet")):
            raise ValueError(f"suffix {plan['suffix']!r} is not a file suffix")
        return plan
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise TunesmithError(f"{path} is not a federation plan tunesmith wrote: {error!r}") from None


def deployed_clients(run: RunDir, config: Config) -> dict:
    """The plan of a deployed federation: ``federated.clients`` sites that each read their own
    file (their node config's ``data``); the server cuts no shards."""
    names = [f"client {i}" for i in range(config.federated.clients)]
    plan = {"folder": "", "keys": {}, "names": names, "clients": [{"client": n, "rows": None} for n in names],
            "deployed": True}  # fmt: skip
    run.write_json("federation/shards.json", plan)
    return plan


def run_federation(run: RunDir, config: Config, task: Task, data: PreparedData, *, log: Callable[[str], None],
                   callbacks: list | tuple = (), client_mods: list | tuple = (), resume: bool = False,
                   grid=None) -> Fitted:  # fmt: skip
    """The federated rounds of a run whose data stage is done: shards, then Flower's rounds from
    round 1 (or, with ``resume``, after the last round ``federation/state.json`` records), then
    the best round's global model as a :class:`Fitted` for ``finish_run``.

    Args:
        callbacks: called with each round's record once it is saved.
        client_mods: Flower mods around every client (tests kill a client with one).
        grid: a deployed federation's Flower Grid (the ServerApp's, ``tunesmith.flower``): its
            clients are the SuperNodes that reach it and read their own files; None: Flower's
            simulation runtime on this machine, each client reading its shard of data.train.

    Raises:
        StoppedPartWay: fewer rounds completed than federated.rounds (what was done is kept and
            resumes).
        TunesmithError: a problem with the shards or the saved record.
    """
    fed = config.federated
    if resume:
        shards = read_plan(run)
    elif grid is not None:
        (run.path / "federation").mkdir()
        shards = deployed_clients(run, config)
    else:
        shards = write_shards(run, config, task, data.splits["train"], log)
    resolved = resolve_model(config.model.name)
    processor = task.load_processor(resolved)
    encoded = task.encode(processor, data.splits)
    model, new_parameters = task.load_model(resolved, config.model.dropout)
    model, _ = apply_strategy(model, config.model, new_parameters, peft_task_type=task.peft_task_type)
    metric, mode = metric_and_mode(task, config.train)
    ledger = Ledger.open(run, shards["names"], metric, mode)
    done = len(ledger.rounds)
    for callback in callbacks:
        if isinstance(callback, RoundTracker):
            callback.start(done)
    initial = ledger.weights("global") if done else trainable_state(model)
    if resume:
        log(f"Resuming after round {done} of {fed.rounds}")
    settings = {"config": json.dumps(config.model_dump(mode="json")), "task": json.dumps(task.to_dict()),
                "keys": json.dumps(shards["keys"]), "round-offset": done, "suffix": shards.get("suffix", ".parquet"),
                "folder": str((run.path / shards["folder"]).resolve()) if shards["folder"] else "",
                "threads": max(1, int(fed.client_cpus)), "scratch": str((ledger.folder / "scratch").resolve())}  # fmt: skip
    (ledger.folder / "scratch").mkdir(exist_ok=True)
    server = Server(config, task, model, encoded.features.get("validation", []), pad_token_id(processor), ledger,
                    settings, log, list(callbacks))  # fmt: skip
    if fed.rounds > done and grid is not None:
        server.start(grid, initial, fed.rounds - done)
    elif fed.rounds > done:
        simulate(server, initial, fed.rounds - done, len(shards["names"]), client_mods)
    shutil.rmtree(ledger.folder / "scratch", ignore_errors=True)
    if len(ledger.rounds) < fed.rounds:
        raise StoppedPartWay(f"the federation stopped after round {len(ledger.rounds)} of {fed.rounds}")
    best = ledger.best()
    load_state(model, ledger.weights("best" if best is not None else "global"))
    summary = federation_summary(config, ledger, shards, trainable=initial, model=model)
    run.write_json("federation.json", summary)
    plot_federation(run.path / "federation_curves.png", ledger, metric, proximal=fed.aggregation == "fedprox")
    state = LoopState(step=len(ledger.rounds), epoch=len(ledger.rounds), history=ledger.rounds,
                      best_metric=None if best is None else best["validation"][metric],
                      best_step=None if best is None else best["round"],
                      examples_seen=int(sum(c["num-examples"] for r in ledger.rounds for c in r["clients"])
                                        * fed.local_epochs))  # fmt: skip
    result = LoopResult(state, model, restored_best=best is not None, parallelism="federated", federation=summary)
    return Fitted(result=result, encoded=encoded, processor=processor, resolved=resolved)


def federation_summary(config: Config, ledger: Ledger, shards: dict, *, trainable: dict, model) -> dict[str, Any]:
    """federation.json: the setup, each round's record, and what travelled."""
    fed = config.federated
    best = ledger.best()
    seen = {c["client"]: c["num-examples"] for r in ledger.rounds for c in r["clients"]}
    clients = [{**c, "rows": seen.get(c["client"])} if c["rows"] is None else c for c in shards["clients"]]
    return {
        "engine": "flower-deployment" if shards.get("deployed") else "flower-simulation",
        "aggregation": fed.aggregation,
        "proximal_mu": fed.proximal_mu if fed.aggregation == "fedprox" else None,
        "partition": "each site's own file" if shards.get("deployed")
        else f"site column {fed.site_column}" if fed.site_column else fed.partition,
        "alpha": fed.alpha if fed.site_column is None and fed.partition == "dirichlet" else None,
        "rounds": len(ledger.rounds), "local_epochs": fed.local_epochs, "clients": clients,
        "strategy": config.model.strategy, "best_round": None if best is None else best["round"],
        "failed_replies": sum(len(r["failed"]) for r in ledger.rounds),
        "bytes": {"per_message": sum(v.numel() * v.element_size() for v in trainable.values()),
                  "full_weights": sum(p.numel() * p.element_size() for p in model.parameters())
                  + sum(b.numel() * b.element_size() for b in model.buffers() if b.is_floating_point()),
                  "sent_per_round": [r["bytes_sent"] for r in ledger.rounds]},
        "history": ledger.rounds, "privacy": PRIVACY,
    }  # fmt: skip


def plot_federation(path: Path, ledger: Ledger, metric: str, *, proximal: bool) -> None:
    """Saves the global validation metric per round, and each client's training loss and its
    score of the global model on its own rows, per round, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(14, 4))
    rounds = [r["round"] for r in ledger.rounds]
    axes[0].plot(rounds, [r["validation"].get(metric, math.nan) for r in ledger.rounds], "o-", label="global model")
    axes[0].set(xlabel="round", ylabel=metric, title=f"validation {metric} (global model)")
    for name in ledger.clients:
        trained = [(r["round"], c) for r in ledger.rounds for c in r["clients"] if c["client"] == name]
        scored = [(r["round"], c) for r in ledger.rounds for c in r["client_evaluation"] if c["client"] == name]
        axes[1].plot([n for n, _ in trained], [c.get("train_loss", math.nan) for _, c in trained], "o-", label=name)
        axes[2].plot([n for n, _ in scored], [c.get(metric, math.nan) for _, c in scored], "o-", label=name)
    axes[1].set(
        xlabel="round",
        ylabel="loss",
        title="each client's training loss" + (" (with the proximal term)" if proximal else ""),
    )
    axes[2].set(xlabel="round", ylabel=metric, title=f"global model's {metric} on each client's rows")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    save_figure(figure, path)
