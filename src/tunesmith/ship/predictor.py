"""The model behind ``serve``, the board's playground and bulk prediction: a run's PyTorch model
or an export (PyTorch or ONNX Runtime) with its tokenizer and task, fed in calls of similar
lengths (data/batching.py). Kept apart from serve.py so that predicting over files needs no web
framework installed."""

from __future__ import annotations

import contextlib
import json
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.config import config_from_dict, load_config
from tunesmith.data.batching import length_groups
from tunesmith.errors import TunesmithError
from tunesmith.models.load import ResolvedModel, check_weights
from tunesmith.tasks import build_task, require_stage
from tunesmith.tasks.run import load_run

BACKENDS = ("auto", "onnx")
"""The backends of serve and predict --input: ``auto``, a run's PyTorch model or an export's own; ``onnx``, a run
directory exported to ONNX when the server starts."""
EXPORT_PARITY_ROWS = 1000
"""Held-out rows the start-up export checks parity on (``export`` checks all by default)."""


@contextlib.contextmanager
def backend_source(source: str | Path, backend: str, log: Callable[[str], None]) -> Iterator[Path]:
    """The directory serve or predict loads: ``source``, or for ``backend`` onnx and a run directory,
    an ONNX export of the run made now into a temporary folder (its int8 model where the
    export's parity check allows it, else fp32) and removed when the command ends.

    Raises:
        TunesmithError: an unknown backend, an export directory of another format, or a run
            whose task has no ONNX export (the export's own message).
    """
    source = Path(source)
    if backend not in BACKENDS:
        raise TunesmithError(f"--backend {backend}: choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        yield source
        return
    if (source / "tunesmith.json").is_file():  # an export: served as it is, if it is an ONNX one
        written = export_format(source)
        if written != "onnx":
            raise TunesmithError(f"--backend onnx: {source} is a {written} export; give its run with --backend "
                                 "onnx, or export it with tunesmith export RUN --format onnx")  # fmt: skip
        yield source
        return
    from tunesmith.ship.export import export

    if (source / "config.yaml").is_file():  # a run: does its kind export to ONNX at all?
        task = build_task(load_config(source / "config.yaml"))
        require_stage(task, "export", what=str(source))  # an exportable kind names its formats
        if "onnx" not in task.export_formats:
            raise TunesmithError(f"--backend onnx: {task.kind} runs have no ONNX export; use --backend auto")
    with tempfile.TemporaryDirectory(prefix="tunesmith-serve-onnx-") as scratch:
        out, start = Path(scratch) / "onnx", time.perf_counter()
        log(f"--backend onnx: exporting {source} to ONNX for this command (int8 where parity allows) ...")
        export(source, out, fmt="onnx", quantize="int8", rows=EXPORT_PARITY_ROWS, log=log)
        log(f"Exported in {time.perf_counter() - start:.0f} s to {out} (removed when the command ends)")
        yield out


def export_format(source: str | Path) -> str | None:
    """The format an export directory's ``tunesmith.json`` names (``onnx``, ``hf``, ...); None for
    anything else, an unreadable file included (the Predictor reports that one)."""
    try:
        return json.loads((Path(source) / "tunesmith.json").read_text(encoding="utf-8")).get("format")
    except (OSError, ValueError, AttributeError):
        return None


class Predictor:
    """Tokenizer plus a PyTorch model (run or hf export) or an ONNX Runtime session (onnx export);
    ``scorer`` is the task (tasks.contract.Task) that turns logits into answers, ``task`` its
    ``task.json``."""

    def __init__(self, source: str | Path, onnx_file: str | None = None, threads: int | None = None,
                 stage: str = "serve"):  # fmt: skip
        """Args:
        onnx_file: for an ONNX export, the model file to run (default: the export's choice,
            the int8 model when there is one).
        threads: CPU threads for one model call (default: the backend's own, all cores).
        stage: the stage the model is for ("serve", "predict"), which the task must support."""
        self.stage = stage
        self.tokenizing = threading.Lock()
        source = Path(source)
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        self.threads = threads
        if (source / "tunesmith.json").is_file():
            self._from_export(source, onnx_file)
        elif onnx_file is not None:
            raise TunesmithError(f"--onnx-file {onnx_file}: {source} is not an ONNX export (a run directory serves "
                                 "its PyTorch model: add --backend onnx, or export it with `tunesmith export RUN --format onnx`)")  # fmt: skip
        else:
            self._from_run(source)

    def _from_run(self, source: Path) -> None:
        # Never serve a model that changed after training.
        run, config, task, model, tokenizer = load_run(source, verify_hashes=True)
        require_stage(task, self.stage, what=str(run.path))
        self.tokenizer, self.max_length, self.task = tokenizer, config.model.max_length, task.to_dict()
        self.temperature = run.temperature() if task.calibrates else None
        self.scorer = task
        self.backend, self.model, self.session = "torch", model, None
        metrics = run.read_json("metrics.json") if (run.path / "metrics.json").is_file() else {}
        manifest = run.read_json("data_manifest.json") if (run.path / "data_manifest.json").is_file() else {}
        self.metadata = {
            "source": str(run.path), "kind": "run", "backend": "torch", "model": config.model.name,
            "task": self.task, "max_length": self.max_length, "temperature": self.temperature,
            "metrics": {s: {k: v for k, v in metrics.get(s, {}).items() if isinstance(v, (int, float))}
                        for s in ("validation", "test") if s in metrics},
            "data_sha256": {n: e.get("sha256") for n, e in manifest.get("sources", {}).items()},
        }  # fmt: skip

    def _from_export(self, source: Path, onnx_file: str | None) -> None:
        meta = json.loads((source / "tunesmith.json").read_text(encoding="utf-8"))
        require_stage(meta["task"]["type"], self.stage, what=str(source))  # an export's kind, from its metadata
        # An export written before tunesmith.json held the run's config: its task section and
        # max_length are all a text classifier's scoring needs.
        tree = meta.get("config") or {"task": {k: v for k, v in meta["task"].items() if k != "label_names"},
                                      "model": {"max_length": meta["max_length"]}}  # fmt: skip
        task = build_task(config_from_dict(tree, str(source / "tunesmith.json")), meta["task"])
        self.scorer, self.max_length, self.task = task, meta["max_length"], meta["task"]
        self.tokenizer = task.load_processor(ResolvedModel(str(source), f"the export in {source}"), trained=True)
        self.temperature = meta.get("temperature")
        if meta["format"] == "onnx":
            import onnxruntime as ort

            if onnx_file is not None and (Path(onnx_file).name != onnx_file or not onnx_file.endswith(".onnx")
                                          or not (source / onnx_file).is_file()):  # fmt: skip
                found = sorted(p.name for p in source.glob("*.onnx"))
                raise TunesmithError(f"--onnx-file {onnx_file}: not a model file of the export {source}; it has "
                                     f"{', '.join(found) or 'none'}")  # fmt: skip
            meta["model"] = onnx_file or meta["model"]

            options = ort.SessionOptions()
            if self.threads is not None:
                options.intra_op_num_threads, options.inter_op_num_threads = self.threads, 1
            # Threads that sleep between calls instead of spinning: the server's event loop (and other
            # workers) share the cores; measured faster under load (benchmarks/RESULTS.md).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.session = ort.InferenceSession(
                str(source / meta["model"]), options, providers=["CPUExecutionProvider"]
            )
            self.backend, self.model = f"onnxruntime ({meta['model']})", None
            self.inputs = {i.name for i in self.session.get_inputs()}
        else:
            check_weights(source, "export the run again")
            self.model, self.session = task.load_trained(source).eval(), None
            self.backend = "torch"
        parity = (
            json.loads((source / "parity.json").read_text(encoding="utf-8"))
            if (source / "parity.json").is_file()
            else {}
        )
        self.metadata = {"source": str(source), "kind": "export", "backend": self.backend, "task": self.task,
                         "max_length": self.max_length, "temperature": self.temperature, "parity": parity.get("models"),
                         "source_run": meta.get("source_run")}  # fmt: skip

    def outputs(self, inputs: list, chunk: int = 64) -> tuple[list[dict], list[np.ndarray]]:
        """The features of raw inputs (the task's ``export_features``) and the model's output for
        each (a row of logits; a tagger's or QA model's per-token logits), fed as an export is
        fed (``export_inputs``, ``chunk`` features a call): the same for PyTorch and ONNX Runtime."""
        with self.tokenizing:  # a fast tokenizer refuses two calls at once ("Already borrowed")
            features = self.scorer.export_features(self.tokenizer, list(inputs))
        rows: list[np.ndarray | None] = [None] * len(features)
        # Calls of similar lengths (least padding), at most ``chunk`` features each: bounded memory
        # for long lists (monitor, evaluation); rows go back in the order of the features.
        lengths = [len(f.get("input_ids", ())) if isinstance(f, dict) else 0 for f in features]
        for group in length_groups(lengths, most=chunk):
            batch = self.scorer.export_inputs(self.tokenizer, [features[i] for i in group])
            for index, row in zip(group, batch.rows(self.run_batch(batch.inputs))):
                rows[index] = row
        return features, rows

    def run_batch(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The exported tensor (``logits``) for one batch of named inputs."""
        if self.session is not None:  # inputs the graph dropped as unused are not fed
            return self.session.run(["logits"], {k: v for k, v in inputs.items() if k in self.inputs})[0]
        import torch

        with torch.inference_mode():
            output = self.model(**{k: torch.from_numpy(v) for k, v in inputs.items()})
            return self.scorer.export_output(output).float().numpy()

    def logits(self, inputs: list, chunk: int = 64) -> np.ndarray:
        """A classifier's logits for raw inputs (texts; pairs for a pair classifier), one row per
        input (``outputs`` stacked)."""
        return np.stack(self.outputs(inputs, chunk)[1])

    def predict(self, inputs: list) -> list[dict[str, Any]]:
        """Prediction rows for raw inputs: a PyTorch model predicts through its task, as
        ``tunesmith predict`` does (every kind); an ONNX model through the task's export encoding
        (``outputs``, then ``rows_from_logits``).

        Raises:
            TunesmithError: an input of the wrong kind, naming its position.
        """
        if self.session is None:
            return self.scorer.predict(self.model, self.tokenizer, list(inputs), temperature=self.temperature)
        features, logits = self.outputs(inputs)
        return self.scorer.rows_from_logits(list(inputs), features, logits, temperature=self.temperature)
