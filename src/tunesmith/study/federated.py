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

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tunesmith.config import Config, config_from_dict
from tunesmith.data.load import read_table
from tunesmith.data.prepare import PreparedData
from tunesmith.data.shards import dirichlet_shards, iid_shards, shard_summary, site_shards
from tunesmith.errors import StoppedPartWay, TunesmithError
from tunesmith.models.adapt import apply_strategy
from tunesmith.models.load import pad_token_id, resolve_model
from tunesmith.runs import RunDir, atomic_write
from tunesmith.tasks import build_task
from tunesmith.tasks.contract import Task
from tunesmith.tasks.plots import save_figure
from tunesmith.train.checkpoint import LoopState
from tunesmith.train.fit import Fitted
from tunesmith.train.loop import LoopResult, metric_and_mode, run_training

STATE = "state.json"
GLOBAL = "global.safetensors"
BEST = "best.safetensors"
LOCAL_STRATEGIES = ("full", "freeze", "lora")
"""Strategies a client can train round after round from the global weights (gradual unfreezing
keeps a schedule across the loop's steps; contrastive and zero-shot do not train on the loop)."""


def check_federation(config: Config, task: Task) -> None:
    """Refuses settings a federation cannot run, before any data is read."""
    if config.model.strategy not in LOCAL_STRATEGIES:
        raise TunesmithError(f"federate trains each client with model.strategy in {LOCAL_STRATEGIES}; "
                             f"model.strategy={config.model.strategy} cannot be federated")  # fmt: skip
    fed = config.federated
    if fed.site_column is None and fed.partition == "dirichlet" and not task.stratify:
        raise TunesmithError(f"federated.partition=dirichlet skews labels, which a {task.kind} task has not "
                             "one of per row: use partition=iid or federated.site_column")  # fmt: skip
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise TunesmithError("federate runs its clients itself: leave out --nproc")


# -- shards ----------------------------------------------------------------------------------
def cut_shards(config: Config, task: Task, train: pd.DataFrame) -> tuple[list[np.ndarray], list[str]]:
    """The row positions of ``train`` that each client holds, and the clients' names."""
    fed = config.federated
    if fed.site_column is not None:
        rows = task.source_rows(train)
        table = read_table(config.data.train, column_names=config.data.column_names,
                           encoding_errors=config.data.encoding_errors)  # fmt: skip
        if rows is None or fed.site_column not in table.frame.columns:
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
    keys = {}
    for i, shard in enumerate(shards):
        _, keys = task.write_records(train.iloc[shard].reset_index(drop=True), folder, f"client-{i}")
    labels = train["label"].astype(str).to_numpy() if task.stratify else None
    plan = {"folder": str(folder.resolve()), "keys": keys, "names": names,
            "clients": shard_summary(shards, labels, names)}  # fmt: skip
    run.write_json("federation/shards.json", plan)
    for entry in plan["clients"]:
        spread = ", ".join(f"{k} {v}" for k, v in entry.get("labels", {}).items())
        log(f"{entry['client']}: {entry['rows']} rows" + (f" ({spread})" if spread else ""))
    return plan


# -- a client --------------------------------------------------------------------------------
def trainable_state(model) -> dict[str, torch.Tensor]:
    """The weights that travel: the model's trainable parameters, by name."""
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def load_state(model, arrays: dict[str, torch.Tensor]) -> None:
    """Copies travelled weights into the model's parameters of the same names.

    Raises:
        TunesmithError: a name the model's trainable parameters do not have, or a shape that differs.
    """
    parameters = dict(model.named_parameters())
    for name, value in arrays.items():
        target = parameters.get(name)
        if target is None or tuple(target.shape) != tuple(value.shape):
            raise TunesmithError(f"federated weights do not fit the model: {name} {tuple(value.shape)}")
        with torch.no_grad():
            target.copy_(value.to(target.dtype))


class ProximalObjective:
    """The task's loss plus FedProx's proximal term, (mu / 2) * ||w - w_global||^2 over the
    weights that travel. The loop divides a step's summed loss by the step's units (examples
    or tokens), so each batch adds the term times its own units: the step's loss then carries
    it exactly once."""

    def __init__(self, task: Task, model, mu: float):
        self.task, self.mu = task, mu
        self.anchors = [(p, p.detach().clone()) for p in model.parameters() if p.requires_grad]
        self.default_metric = task.default_metric

    def collate(self, features: list[dict], pad_token_id: int) -> dict:
        return {**self.task.collate(features, pad_token_id), "proximal_units": self.task.count(features)}

    def count(self, features: list[dict]) -> int:
        return self.task.count(features)

    def batch_loss(self, model, batch: dict, device) -> torch.Tensor:
        units = batch.pop("proximal_units")
        distance = sum(((p - anchor.to(p.device)) ** 2).sum() for p, anchor in self.anchors)
        return self.task.batch_loss(model, batch, device) + (self.mu / 2) * distance * units

    def evaluate(self, model, features: list[dict], **options) -> dict[str, Any]:
        return self.task.evaluate(model, features, **options)


@dataclass
class Site:
    """One client's task, rows and model, built on its first message and kept for the rounds
    after it (per client process)."""

    config: Config
    task: Task
    features: list[dict]
    model: Any
    pad_token_id: int
    name: str

    @classmethod
    def build(cls, settings: dict[str, Any], client: int, data: str | None) -> Site:
        config = config_from_dict(json.loads(settings["config"]), "the federation's config")
        task = build_task(config, json.loads(settings["task"]))
        keys = json.loads(settings["keys"])
        source = data if data is not None else str(Path(settings["folder"]) / f"client-{client}.parquet")
        frame, _ = task.read(source, config.data.model_copy(update=keys if data is None else {}))
        torch.set_num_threads(max(1, int(settings["threads"])))
        resolved = resolve_model(config.model.name)
        processor = task.load_processor(resolved)
        features = task.encode(processor, {"train": frame}).features["train"]
        model, new_parameters = task.load_model(resolved, config.model.dropout)
        model, _ = apply_strategy(model, config.model, new_parameters, peft_task_type=task.peft_task_type)
        return cls(config, task, features, model, pad_token_id(processor), f"client {client}")

    def train(self, arrays: dict[str, torch.Tensor], *, round_number: int, client: int, mu: float,
              scratch: Path) -> tuple[dict[str, torch.Tensor], dict[str, float]]:  # fmt: skip
        """One round: from the global ``arrays``, the loop over this site's rows for
        federated.local_epochs; returns the trained arrays and the round's mean training loss."""
        load_state(self.model, arrays)
        tree = self.config.model_dump(mode="json")
        tree["train"].update(num_epochs=self.config.federated.local_epochs, max_steps=None, eval_every_steps=None,
                             metric=None, early_stopping={"patience": None, "min_delta": 0.0})  # fmt: skip
        tree["runtime"].update(progress=False, report_to=[], checkpoint_every_steps=None, keep_checkpoints=1,
                               seed=self.config.runtime.seed + 1000 * round_number + client)  # fmt: skip
        local = config_from_dict(tree, "a client's round")
        objective = ProximalObjective(self.task, self.model, mu) if mu > 0 else self.task
        folder = Path(tempfile.mkdtemp(prefix=f"round-{round_number}-client-{client}-", dir=scratch))
        try:
            run = RunDir(folder)
            result = run_training(model=self.model, task=objective, train_features=self.features, val_features=[],
                                  config=local, run=run, pad_token_id=self.pad_token_id, log=lambda m: None)  # fmt: skip
            losses = [json.loads(line)["loss"] for line in run.metrics_log.read_text(encoding="utf-8").splitlines()]
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self.model = result.model
        return trainable_state(self.model), {"train_loss": float(np.mean(losses)) if losses else math.nan}

    def evaluate(self, arrays: dict[str, torch.Tensor]) -> dict[str, float]:
        """The global model's scores on this site's own rows."""
        load_state(self.model, arrays)
        device = next(self.model.parameters()).device
        metrics = self.task.evaluate(self.model, self.features, batch_size=self.config.train.batch_size * 2,
                                     pad_token_id=self.pad_token_id, device=device)  # fmt: skip
        return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}


_SITES: dict[tuple[str, int], Site] = {}
"""The sites this process serves (Flower's simulation runs several clients per worker process)."""


def site_for(settings: dict[str, Any], client: int, data: str | None) -> Site:
    key = (hashlib.sha256(settings["config"].encode()).hexdigest(), client)
    if key not in _SITES:
        _SITES[key] = Site.build(settings, client, data)
    return _SITES[key]


# -- the run's record ------------------------------------------------------------------------
@dataclass
class Ledger:
    """What the server keeps of every round: per-round global scores, per-client results,
    bytes sent, failures; saved with the global weights after each round."""

    run: RunDir
    clients: list[str]
    metric: str
    mode: str
    rounds: list[dict[str, Any]] = field(default_factory=list)
    pending: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {"train": [], "evaluate": []})

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
            except (ValueError, KeyError, TypeError) as error:
                raise TunesmithError(f"{path} is not a federation record tunesmith wrote: {error}") from None
            if ledger.rounds and not (ledger.folder / GLOBAL).is_file():
                raise TunesmithError(
                    f"{path} records {len(ledger.rounds)} rounds but {ledger.folder / GLOBAL} is missing"
                )
        return ledger

    def record(self, kind: str, contents: list) -> dict[str, float]:
        """Keeps the per-client metrics of a round's replies (train or evaluate) and returns
        their mean weighted by rows (Flower's aggregated metrics)."""
        found = []
        for content in contents:
            metrics = dict(content["metrics"])
            found.append({"client": self.clients[int(metrics.pop("client"))], **metrics})
        self.pending[kind] = found
        total = sum(r["num-examples"] for r in found) or 1
        names = {k for r in found for k in r if k not in ("client", "num-examples")}
        return {k: sum(r.get(k, 0.0) * r["num-examples"] for r in found) / total for k in sorted(names)}

    def best(self) -> dict[str, Any] | None:
        scored = [r for r in self.rounds if math.isfinite(r["validation"].get(self.metric, math.nan))]
        if not scored:
            return None
        pick = max if self.mode == "max" else min
        return pick(scored, key=lambda r: r["validation"][self.metric])

    def close_round(self, number: int, validation: dict[str, float], arrays: dict[str, torch.Tensor],
                    bytes_each: int) -> dict[str, Any]:  # fmt: skip
        """Records round ``number`` and saves its global weights (and the best round's)."""
        from safetensors.torch import save

        trained = [r["client"] for r in self.pending["train"]]
        entry = {"round": number, "validation": validation, "clients": self.pending["train"],
                 "client_evaluation": self.pending["evaluate"],
                 "failed": [c for c in self.clients if c not in trained],
                 "bytes_sent": bytes_each * (len(self.clients) + len(trained)),
                 "bytes_per_client_each_way": bytes_each}  # fmt: skip
        self.pending = {"train": [], "evaluate": []}
        self.rounds.append(entry)
        payload = save({k: v.contiguous() for k, v in arrays.items()})
        atomic_write(self.folder / GLOBAL, payload)
        if self.best() is entry:
            atomic_write(self.folder / BEST, payload)
        atomic_write(self.folder / STATE, json.dumps({"rounds": self.rounds}, indent=2) + "\n")
        rows = sum(r["num-examples"] for r in entry["clients"])
        if rows:
            loss = sum(r.get("train_loss", math.nan) * r["num-examples"] for r in entry["clients"]) / rows
            self.run.append_metrics({"step": number, "round": number, "split": "train", "loss": loss})
        self.run.append_metrics({"step": number, "round": number, "split": "validation", **validation})
        return entry

    def saved(self, name: str) -> dict[str, torch.Tensor]:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(self.folder / name)
        except (SafetensorError, OSError) as error:
            raise TunesmithError(f"{self.folder / name} is not readable federated weights: {error}") from None


# -- Flower's apps ---------------------------------------------------------------------------
def client_app(mods: list | tuple = ()):
    """The ClientApp every client runs: Flower's simulation runs it in its worker processes,
    ``flower-supernode`` on a site's own machine (``tunesmith.study.federated:app``). A client
    reads its rows from the shard named by its ``partition-id``, or from its node config's
    ``data`` (a site's own file, in the run's format and columns); the run's config and label
    space come with every message. ``mods``: Flower mods wrapped around it."""
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp(mods=list(mods))

    def site_of(message, context) -> tuple[Site, int, dict[str, Any]]:
        settings = dict(message.content["config"])
        client = int(context.node_config["partition-id"])
        data = context.node_config.get("data")
        return site_for(settings, client, None if data is None else str(data)), client, settings

    @app.train()
    def train(message, context):
        site, client, settings = site_of(message, context)
        scratch = Path(settings["scratch"]) if Path(settings["scratch"]).is_dir() else Path(tempfile.gettempdir())
        trained, metrics = site.train(message.content["arrays"].to_torch_state_dict(), client=client,
                                      round_number=int(settings["server-round"]) + int(settings["round-offset"]),
                                      mu=float(settings.get("proximal-mu", 0.0)), scratch=scratch)  # fmt: skip
        record = MetricRecord({"num-examples": len(site.features), "client": client, **metrics})
        return Message(RecordDict({"arrays": ArrayRecord(trained), "metrics": record}), reply_to=message)

    @app.evaluate()
    def evaluate(message, context):
        site, client, _ = site_of(message, context)
        metrics = site.evaluate(message.content["arrays"].to_torch_state_dict())
        record = MetricRecord({"num-examples": len(site.features), "client": client, **metrics})
        return Message(RecordDict({"metrics": record}), reply_to=message)

    return app


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

    def strategy(self):
        from flwr.serverapp.strategy import FedAvg, FedProx

        fed, count = self.config.federated, len(self.ledger.clients)
        common = {"fraction_train": 1.0, "fraction_evaluate": 1.0, "min_train_nodes": count,
                  "min_evaluate_nodes": count, "min_available_nodes": count,
                  "train_metrics_aggr_fn": self.aggregate("train"),
                  "evaluate_metrics_aggr_fn": self.aggregate("evaluate")}  # fmt: skip
        if fed.aggregation == "fedprox":
            return FedProx(proximal_mu=fed.proximal_mu, **common)
        return FedAvg(**common)

    def aggregate(self, kind: str) -> Callable:
        from flwr.app import MetricRecord

        return lambda contents, weighted_by_key: MetricRecord(self.ledger.record(kind, contents))

    def evaluate(self, server_round: int, arrays) -> Any:
        """Flower's centralized evaluation, after each round (round 0: the starting weights,
        not scored): the global model on the validation split, then the round's record."""
        from flwr.app import MetricRecord

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
        from flwr.app import ArrayRecord, ConfigRecord

        self.strategy().start(grid=grid, initial_arrays=ArrayRecord(initial), num_rounds=rounds,
                              timeout=self.config.federated.round_timeout,
                              train_config=ConfigRecord(dict(self.settings)),
                              evaluate_config=ConfigRecord(dict(self.settings)), evaluate_fn=self.evaluate)  # fmt: skip

    def app(self, initial: dict[str, torch.Tensor], rounds: int):
        """A ServerApp running :meth:`start`, for Flower's simulation runtime."""
        from flwr.serverapp import ServerApp

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
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # Flower's usage telemetry: no network here
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
        import ray

        ray.shutdown()  # its worker processes and object store go now, not when this process ends


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
        shards = run.read_json("federation/shards.json")
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
    initial = ledger.saved(GLOBAL) if done else trainable_state(model)
    if resume:
        log(f"Resuming after round {done} of {fed.rounds}")
    settings = {"config": json.dumps(config.model_dump(mode="json")), "task": json.dumps(task.to_dict()),
                "keys": json.dumps(shards["keys"]), "folder": shards["folder"], "round-offset": done,
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
    load_state(model, ledger.saved(BEST if best is not None else GLOBAL))
    summary = federation_summary(config, ledger, shards, trainable=initial, model=model)
    run.write_json("federation.json", summary)
    plot_federation(run.path / "federation_curves.png", ledger, metric)
    state = LoopState(step=len(ledger.rounds), epoch=len(ledger.rounds), history=ledger.rounds,
                      best_metric=None if best is None else best["validation"][metric],
                      best_step=None if best is None else best["round"],
                      examples_seen=sum(c["num-examples"] for r in ledger.rounds for c in r["clients"]))  # fmt: skip
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
        "partition": f"site column {fed.site_column}" if fed.site_column else fed.partition,
        "alpha": fed.alpha if fed.site_column is None and fed.partition == "dirichlet" else None,
        "rounds": len(ledger.rounds), "local_epochs": fed.local_epochs, "clients": clients,
        "strategy": config.model.strategy, "best_round": None if best is None else best["round"],
        "failed_replies": sum(len(r["failed"]) for r in ledger.rounds),
        "bytes": {"trainable_each_way": sum(v.numel() * v.element_size() for v in trainable.values()),
                  "full_weights_each_way": sum(p.numel() * p.element_size() for p in model.parameters()),
                  "sent_per_round": [r["bytes_sent"] for r in ledger.rounds]},
        "history": ledger.rounds, "privacy": PRIVACY,
    }  # fmt: skip


def plot_federation(path: Path, ledger: Ledger, metric: str) -> None:
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
    axes[1].set(xlabel="round", ylabel="loss", title="each client's training loss")
    axes[2].set(xlabel="round", ylabel=metric, title=f"global model's {metric} on each client's rows")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    save_figure(figure, path)
