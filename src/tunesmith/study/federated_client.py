"""A federated client's side (``tunesmith federate``, study/federated.py): Flower's ClientApp,
which trains the run's task on one site's rows and sends back weights, never rows.

A client's round is the one training loop on its rows for ``federated.local_epochs``, from the
global weights. FedProx's proximal term, which Flower leaves to the client, is added to the
task's loss here (``ProximalObjective``). The weights that travel are the trainable parameters
(with LoRA: the adapters and the head) and the floating-point buffers (a BatchNorm's running
statistics), so the server's model is the average of what the clients' models hold.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from tunesmith.config import Config, config_from_dict
from tunesmith.errors import TunesmithError
from tunesmith.models.adapt import apply_strategy
from tunesmith.models.load import pad_token_id, resolve_model
from tunesmith.runs import RunDir
from tunesmith.tasks import build_task
from tunesmith.tasks.contract import Task
from tunesmith.train.loop import run_training


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The weights that travel: the trainable parameters and the floating-point buffers, by name."""
    state = {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}
    state.update({name: b.detach().cpu().contiguous() for name, b in model.named_buffers() if b.is_floating_point()})
    return state


def load_state(model, arrays: dict[str, torch.Tensor]) -> None:
    """Copies travelled weights into the model's parameters and buffers of the same names.

    Raises:
        TunesmithError: a name the model does not have, or a shape that differs.
    """
    targets = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    for name, value in arrays.items():
        target = targets.get(name)
        if target is None or tuple(target.shape) != tuple(value.shape):
            raise TunesmithError(f"federated weights do not fit the model: {name} {tuple(value.shape)}")
        with torch.no_grad():
            target.copy_(value.to(target.dtype))


class ProximalObjective:
    """The task's loss plus FedProx's proximal term, (mu / 2) * ||w - w_global||^2 over the
    trainable parameters. The loop divides a step's summed loss by the step's units (examples
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
        if self.anchors and self.anchors[0][1].device != self.anchors[0][0].device:  # the loop moved the model
            self.anchors = [(p, anchor.to(p.device)) for p, anchor in self.anchors]
        distance = sum(((p - anchor) ** 2).sum() for p, anchor in self.anchors)
        return self.task.batch_loss(model, batch, device) + (self.mu / 2) * distance * units

    def evaluate(self, model, features: list[dict], **options) -> dict[str, Any]:
        return self.task.evaluate(model, features, **options)


@dataclass
class Site:
    """One client: the run's config and task, its own encoded rows, and the process's model
    (shared by every client that this process serves: each message loads the global weights
    into it, so nothing of another client's round stays in it)."""

    config: Config
    task: Task
    features: list[dict]
    model: Any
    pad_token_id: int

    def train(self, arrays: dict[str, torch.Tensor], *, round_number: int, client: int, mu: float,
              scratch: Path) -> tuple[dict[str, torch.Tensor], dict[str, float]]:  # fmt: skip
        """One round: from the global ``arrays``, the loop over this site's rows for
        federated.local_epochs; returns the trained arrays and the round's mean training loss
        (with FedProx, the proximal term included)."""
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
        """The global model's scores on this site's own rows: every scalar metric of the task, a
        score that cannot be computed on these rows as NaN (each client sends the same keys)."""
        load_state(self.model, arrays)
        device = next(self.model.parameters()).device
        metrics = self.task.evaluate(self.model, self.features, batch_size=self.config.train.batch_size * 2,
                                     pad_token_id=self.pad_token_id, device=device)  # fmt: skip
        return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


_MODELS: dict[str, tuple[Config, Task, Any, int, Any]] = {}
"""Per run config (by hash): its config, task, model, pad id and processor, in this process."""
_ROWS: dict[tuple[str, int], list[dict]] = {}
"""Per run config and client: the client's encoded rows (Flower's simulation runs several
clients in one worker process)."""


def site_for(settings: dict[str, Any], client: int, data: str | None) -> Site:
    """The client ``client`` of the run whose config and label space come in ``settings``,
    reading its rows from ``data`` (a deployed site's own file) or its shard."""
    key = hashlib.sha256(settings["config"].encode()).hexdigest()
    if key not in _MODELS:
        config = config_from_dict(json.loads(settings["config"]), "the federation's config")
        task = build_task(config, json.loads(settings["task"]))
        torch.set_num_threads(max(1, int(settings["threads"])))
        resolved = resolve_model(config.model.name)
        processor = task.load_processor(resolved)
        model, new_parameters = task.load_model(resolved, config.model.dropout)
        model, _ = apply_strategy(model, config.model, new_parameters, peft_task_type=task.peft_task_type)
        _MODELS[key] = (config, task, model, pad_token_id(processor), processor)
    config, task, model, pad, processor = _MODELS[key]
    if (key, client) not in _ROWS:
        keys = json.loads(settings["keys"])
        source = data if data is not None else str(Path(settings["folder"]) / f"client-{client}{settings['suffix']}")
        frame, _ = task.read(source, config.data.model_copy(update=keys if data is None else {}))
        _ROWS[key, client] = task.encode(processor, {"train": frame}).features["train"]
    return Site(config, task, _ROWS[key, client], model, pad)


def client_app(mods: list | tuple = ()) -> ClientApp:
    """The ClientApp every client runs: Flower's simulation runs it in its worker processes,
    ``flower-supernode`` on a site's own machine (``tunesmith.flower:client_app``). A client
    reads its rows from the shard named by its ``partition-id``, or from its node config's
    ``data`` (a site's own file, in the run's format and columns); the run's config and label
    space come with every message. ``mods``: Flower mods wrapped around it."""
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
