"""``tunesmith export``: a finished run as a plain transformers directory (every kind) or an ONNX
model (optionally int8-quantized; the encoder kinds), checked against the run's PyTorch model
before it is kept. What differs between task kinds (which formats apply, the model's named
inputs, its one exported output, how predictions agree, how int8 is calibrated) the task says
(``Exportable.export_formats``; ``OnnxExportable.export_inputs``, ``export_output``,
``export_parity``, ``quantization``).

Every export:
- refuses a run directory whose model, config or labels differ from its ``hashes.json``;
- checks the written model on held-out rows (the run's test split, else its validation split)
  and records how it compares with the run's model (``parity.json``). An hf directory is
  reloaded as a user would load it (``Task.load_trained`` and the task's processor, both from
  the directory): every parameter must be identical, the reloaded processor must encode the
  rows identically, and its outputs must match (the ONNX kinds: row by row, decoded as
  ``export_parity`` says; the generative kinds: every validation metric of ``Task.evaluate``).
  An ONNX model is run with ONNX Runtime: the largest logit difference and how often the decoded
  predictions agree (the label; a sentence's entity spans; a question's answer);
- is written to a temporary directory and renamed into place only if parity holds, so a
  failed export leaves nothing behind. An int8 model below ``min_agreement`` is the exception:
  it is left out, with a warning in the log and in ``parity.json``, and the fp32 model ships.

The export directory also holds the tokenizer (or image processor), ``tunesmith.json`` (task,
labels, max length, inputs, text normalisation, temperature, the run's config), everything
``tunesmith serve`` needs without the run, and ``README.md``: the run's model card with a
section on the export and its parity.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.errors import TunesmithError
from tunesmith.models.load import ResolvedModel, pad_token_id
from tunesmith.runs import RunDir, claim_output
from tunesmith.ship.gguf import export_gguf
from tunesmith.tasks import require_stage
from tunesmith.tasks.contract import Exportable, ExportBatch, OnnxExportable
from tunesmith.tasks.run import load_run, load_task

FORMATS = ("hf", "onnx")
"""Every ``--format`` export writes; a task's ``export_formats`` says which apply to its kind."""
FP32_MAX_LOGIT_DIFFERENCE = 1e-3
FP32_MIN_AGREEMENT = 0.999
MAX_METRIC_DIFFERENCE = 1e-5
"""A reloaded hf model's validation metrics may differ by this much (relative to the metric)."""
BATCH_SIZE = 32


def held_out(run: RunDir, task: Exportable, processor, rows: int | None) -> tuple[list[dict], str, int]:
    """The features of the run's test split (else its validation split), at most ``rows`` of
    its rows, encoded by the task as training encoded them; the split's name and its row count
    (a row may make several features: QA's windows)."""
    import pandas as pd

    for split in ("test", "validation"):
        path = run.data_dir / f"{split}.parquet"
        if path.is_file():
            frame = pd.read_parquet(path)
            frame = frame.iloc[:rows] if rows else frame
            return task.encode(processor, {split: frame}).features[split], split, len(frame)
    raise TunesmithError(f"{run.path} has no test or validation split to check the export on")


def batches(task: OnnxExportable, processor, features: list[dict], size: int = BATCH_SIZE):
    """The features as the exported model's input batches (``OnnxExportable.export_inputs``)."""
    for start in range(0, len(features), size):
        yield task.export_inputs(processor, features[start : start + size])


def torch_logits(model, task: OnnxExportable, processor, features: list[dict]) -> list[np.ndarray]:
    """A PyTorch model's exported tensor per row (``export_output``), fed exactly what the
    exported model is fed."""
    import torch

    rows: list[np.ndarray] = []
    with torch.inference_mode():
        for batch in batches(task, processor, features):
            output = model(**{k: torch.from_numpy(v) for k, v in batch.inputs.items()})
            rows += batch.rows(task.export_output(output).float().numpy())
    return rows


def onnx_logits(session, task: OnnxExportable, processor, features: list[dict]) -> list[np.ndarray]:
    """An ONNX Runtime session's output per row (inputs the graph dropped as unused are not fed)."""
    names = {i.name for i in session.get_inputs()}
    rows: list[np.ndarray] = []
    for batch in batches(task, processor, features):
        rows += batch.rows(session.run(["logits"], {k: v for k, v in batch.inputs.items() if k in names})[0])
    return rows


def export_onnx(model, task: OnnxExportable, sample: ExportBatch, path: Path) -> None:
    """Traces ``model`` on ``sample`` (torch.export) into one ONNX file, its inputs named as the
    task names them, with the task's varying axes dynamic, and one output, ``logits``: the
    task's ``export_output`` of the model's output."""
    import warnings

    import torch

    class Graph(torch.nn.Module):
        """The model with the task's one output; inputs positional, in the sample's order
        (torch.export matches dynamic shapes to positional arguments, not to ``**kwargs``)."""

        def __init__(self):
            super().__init__()
            self.model, self.names = model, list(sample.inputs)

        def forward(self, *inputs):
            return task.export_output(self.model(**dict(zip(self.names, inputs))))

    dims: dict[str, Any] = {}  # one Dim per axis name: "batch" is the same size for every input
    shapes = tuple({axis: dims.setdefault(label, torch.export.Dim(label)) for axis, label in
                    sample.dynamic_axes.get(name, {}).items()} or None for name in sample.inputs)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Graph(), tuple(torch.from_numpy(v) for v in sample.inputs.values()), str(path),
            input_names=list(sample.inputs), output_names=["logits"], dynamic_shapes=(shapes,), dynamo=True,
            external_data=False, verbose=False,
        )  # fmt: skip


def quantize_int8(run: RunDir, task: OnnxExportable, processor, source: Path, target: Path) -> None:
    """int8 as the task's ``quantization`` says. Dynamic: per-channel weight scales and 7-bit
    ranges (without VNNI, AVX2 and AVX-512, int8 products can saturate; on the SST-2 model this
    took agreement from 0.976 to 0.989). Static (QDQ, per-channel weights): activation ranges
    calibrated on up to 256 training rows."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if task.quantization == "dynamic":
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)
        return
    import pandas as pd

    train = pd.read_parquet(run.data_dir / "train.parquet")
    chosen = np.random.default_rng(0).permutation(len(train))[:256]
    calibration = task.encode(processor, {"calibration": train.iloc[chosen]}).features["calibration"]

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = batches(task, processor, calibration)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else batch.inputs

    prepared = source.with_name("prepared.onnx")
    quant_pre_process(str(source), str(prepared))
    quantize_static(str(prepared), str(target), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, reduce_range=True)  # fmt: skip
    prepared.unlink()


def int8_refused(name: str, figures: dict[str, Any], min_agreement: float, split: str) -> str:
    """The warning for an int8 model left out of an export, with what to do about it."""
    agreement = figures["label_agreement"]
    lower = math.floor(agreement * 100) / 100
    return (
        f"{name} was not kept: its label agreement with the PyTorch model, {agreement:.4f} on {figures['rows']} "
        f"{split} rows, is below --min-agreement {min_agreement}. The parity-checked fp32 model.onnx is exported "
        f"and is what serve runs. To ship int8 anyway, export again with --min-agreement {lower} if that agreement "
        "is enough for you, or quantize model.onnx statically (onnxruntime.quantization.quantize_static) "
        "calibrated on more of your training rows"
    )


def export(run_dir: str | Path, out: str | Path, *, fmt: str, quantize: str | None = None, rows: int | None = None,
           min_agreement: float = 0.98, log=print) -> dict[str, Any]:  # fmt: skip
    """Exports a finished run; returns the parity report (also written to ``out/parity.json``).

    Args:
        fmt: one of ``FORMATS`` that the run's task lists in ``export_formats`` ("hf" for every
            kind, "onnx" for the encoder kinds).
        quantize: "int8" (onnx only): also write an int8 model (``quantization`` says how), the
            default for serving.
        rows: check parity on at most this many held-out rows (None: all).
        min_agreement: the smallest label agreement an int8 model may have; below it the int8
            model is left out (report["warnings"] says why) and the fp32 model is exported.

    Raises:
        TunesmithError: hashes do not match, the task cannot be exported (in this format), or
            parity fails.
    """
    if fmt == "gguf":  # a writer and parity check of its own (ship/gguf.py), for causal LMs
        if quantize:
            raise TunesmithError("--quantize int8 applies to --format onnx")
        return export_gguf(run_dir, out, prompts=rows or 100, min_agreement=min_agreement, log=log)
    if fmt not in FORMATS:
        raise TunesmithError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}, gguf")
    if quantize not in (None, "int8"):
        raise TunesmithError(f"--quantize {quantize!r}: only int8 is supported")
    if quantize and fmt != "onnx":
        raise TunesmithError("--quantize int8 applies to --format onnx")
    out = claim_output(out, kind="dir", what="--out")  # new or empty, and not inside a run's model

    RunDir.open(run_dir).verify_hashes()  # before anything of the run is read
    run, _, task = load_task(run_dir)
    require_stage(task, "export", what=str(run.path))
    if fmt not in task.export_formats:
        raise TunesmithError(f"{run.path}: --format {fmt} does not cover {task.kind} runs; choose "
                             f"{' or '.join(sorted(task.export_formats))}")  # fmt: skip
    run, config, task, model, processor = load_run(run_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))  # a fresh name: nothing else is removed
    tmp.chmod(out.parent.stat().st_mode & 0o777)  # mkdtemp makes it private; give it its folder's permissions
    report: dict[str, Any] = {"run": str(run.path), "format": fmt, "models": {}}
    try:
        processor.save_pretrained(tmp)
        match fmt:
            case "hf":
                default = write_hf(run, task, model, processor, tmp, report, rows=rows, log=log)
            case "onnx":
                default = write_onnx(run, task, model, processor, tmp, report, rows=rows, quantize=quantize, log=log)
        default = check_parity(report, default, tmp, min_agreement, log)
        (tmp / "tunesmith.json").write_text(json.dumps({
            "task": task.to_dict(), "max_length": config.model.max_length, "format": fmt, "model": default,
            "temperature": run.temperature() if task.calibrates else None, **task.export_description(),
            "source_run": str(run.path), "source_hashes": run.read_json("hashes.json"),
            "config": config.model_dump(mode="json"),
        }, indent=2), encoding="utf-8")  # fmt: skip
        (tmp / "parity.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
        write_card(run, task, tmp, report, default)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def write_hf(run: RunDir, task: Exportable, model, processor, tmp: Path, report: dict[str, Any], *,
             rows: int | None, log) -> str:  # fmt: skip
    """Writes the run's model (merged: a LoRA run's ``model/`` already is) into ``tmp`` and records
    its parity (``hf_parity``) as ``model.safetensors`` in ``report``; returns "." (the directory
    is the model)."""
    model.save_pretrained(tmp)
    features, report["split"], count = held_out(run, task, processor, rows)
    log(f"Checking the export on {count} rows of the run's {report['split']} split")
    report["models"]["model.safetensors"] = hf_parity(run, task, model, processor, features, tmp, rows)
    return "."


def hf_parity(run: RunDir, task: Exportable, model, processor, features: list[dict], tmp: Path,
              rows: int | None) -> dict[str, Any]:  # fmt: skip
    """The written directory reloaded as a user loads it, against the run's model: parameters
    (``max_parameter_difference``), the reloaded processor's encoding of the held-out rows
    (``encoding_identical``), and outputs: per row where the kind exports ONNX
    (``export_parity``), else every validation metric of ``Task.evaluate``."""
    reloaded = task.load_processor(ResolvedModel(str(tmp), f"the export in {tmp}"), trained=True)
    exported = task.load_trained(tmp).eval()
    figures: dict[str, Any] = parameter_parity(model, exported)
    exported_features = held_out(run, task, reloaded, rows)[0]
    figures["encoding_identical"] = exported_features == features
    if not figures["encoding_identical"]:
        return figures
    if "onnx" in task.export_formats:  # the kind's outputs compare row by row (tasks.contract.OnnxExportable)
        return figures | task.export_parity(torch_logits(model, task, processor, features),
                                            torch_logits(exported, task, reloaded, exported_features), features)  # fmt: skip
    options = {"batch_size": BATCH_SIZE, "pad_token_id": pad_token_id(processor), "device": "cpu"}
    before, after = task.evaluate(model, features, **options), task.evaluate(exported, exported_features, **options)
    numbers = {k: (float(v), float(after[k])) for k, v in before.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}  # fmt: skip
    differences = [abs(a - b) / max(1.0, abs(a)) for a, b in numbers.values() if math.isfinite(a)]
    return figures | {"rows": len(features), "metrics": {k: list(v) for k, v in numbers.items()},
                      "max_metric_difference": max(differences, default=0.0)}  # fmt: skip


def parameter_parity(model, exported) -> dict[str, Any]:
    """How many parameter tensors (and buffers) the run's model has and the largest difference of
    the reloaded model's from them (infinite where a tensor is missing, extra or reshaped)."""
    before, after = model.state_dict(), exported.state_dict()
    largest = 0.0
    for name, value in before.items():
        other = after.get(name)
        if other is None or other.shape != value.shape:
            largest = math.inf
            continue
        if value.numel():
            largest = max(largest, float((value.float() - other.float()).abs().max()))
    extra = set(after) - set(before)
    return {"parameters": len(before), "max_parameter_difference": math.inf if extra else largest}


def write_onnx(run: RunDir, task: OnnxExportable, model, processor, tmp: Path, report: dict[str, Any], *,
               rows: int | None, quantize: str | None, log) -> str:  # fmt: skip
    """Writes model.onnx (and with ``quantize``, model_int8.onnx) into ``tmp`` and records each
    one's parity with the PyTorch model in ``report``; returns the file serve should run."""
    import onnxruntime as ort

    features, report["split"], count = held_out(run, task, processor, rows)
    log(f"Checking the export on {count} rows of the run's {report['split']} split")
    reference = torch_logits(model, task, processor, features)

    def scored(name: str) -> dict[str, float]:
        session = ort.InferenceSession(str(tmp / name), providers=["CPUExecutionProvider"])
        return task.export_parity(reference, onnx_logits(session, task, processor, features), features)

    # Two rows to trace on (one repeated when the split has one): size 1 would fix the batch axis.
    export_onnx(model, task, task.export_inputs(processor, (features * 2)[:2]), tmp / "model.onnx")
    report["models"]["model.onnx"] = scored("model.onnx")
    if quantize != "int8":
        return "model.onnx"
    quantize_int8(run, task, processor, tmp / "model.onnx", tmp / "model_int8.onnx")
    report["models"]["model_int8.onnx"] = scored("model_int8.onnx")
    return "model_int8.onnx"


def parity_failures(name: str, figures: dict[str, Any]) -> list[str]:
    """What fails the export in one model's figures (an int8 model's agreement is judged apart):
    label agreement and logit difference (fp32), parameters, encoding and metrics (hf)."""
    failures = []
    quantized = "int8" in name
    if not quantized and figures.get("label_agreement", 1.0) < FP32_MIN_AGREEMENT:
        failures.append(f"{name}: label agreement {figures['label_agreement']:.4f} < {FP32_MIN_AGREEMENT}")
    if not quantized and figures.get("max_logit_difference", 0.0) > FP32_MAX_LOGIT_DIFFERENCE:
        failures.append(f"{name}: logits differ by up to {figures['max_logit_difference']:.2e} "
                        f"(> {FP32_MAX_LOGIT_DIFFERENCE})")  # fmt: skip
    if figures.get("max_parameter_difference", 0.0) > 0:
        failures.append(f"{name}: reloaded parameters differ from the run's (by up to "
                        f"{figures['max_parameter_difference']:.2e}, or missing)")  # fmt: skip
    if figures.get("encoding_identical") is False:
        failures.append(f"{name}: the exported tokenizer/processor encodes the held-out rows differently")
    if figures.get("max_metric_difference", 0.0) > MAX_METRIC_DIFFERENCE:
        failures.append(f"{name}: validation metrics differ by up to {figures['max_metric_difference']:.2e} "
                        f"(relative; > {MAX_METRIC_DIFFERENCE})")  # fmt: skip
    return failures


def describe(figures: dict[str, Any]) -> str:
    """One model's parity figures in one line."""
    words = {"label_agreement": "label agreement {:.4f}", "entity_agreement": "entity agreement {:.4f}",
             "token_agreement": "token agreement {:.4f}", "answer_agreement": "answer agreement {:.4f}",
             "max_logit_difference": "max logit difference {:.2e}",
             "max_parameter_difference": "max parameter difference {:.2e}",
             "max_metric_difference": "max metric difference {:.2e}"}  # fmt: skip
    found = [text.format(figures[key]) for key, text in words.items() if key in figures]
    return ", ".join(found) + f" on {figures.get('rows', 0)} rows"


def check_parity(report: dict[str, Any], default: str, tmp: Path, min_agreement: float, log) -> str:
    """Applies the parity floors to every exported model of ``report``: an int8 model below
    ``min_agreement`` is removed (with a warning; the fp32 model ships); any other failure
    (``parity_failures``) refuses the export. Returns the file serve should run.

    Raises:
        TunesmithError: parity failed.
    """
    failures = []
    for name, figures in report["models"].items():
        if "int8" in name and figures["label_agreement"] < min_agreement:  # the fp32 model still ships
            (tmp / name).unlink()
            default, figures["kept"] = "model.onnx", False
            report["warnings"] = [int8_refused(name, figures, min_agreement, report["split"])]
        failures += parity_failures(name, figures)
        log(f"{name}: {describe(figures)}")
    if failures:
        raise TunesmithError("export refused, parity failed: " + "; ".join(failures))
    for warning in report.get("warnings", []):
        log(f"WARNING: {warning}")
    return default


def write_card(run: RunDir, task: Exportable, tmp: Path, report: dict[str, Any], default: str) -> None:
    """``README.md``: the run's model card (and the plots it shows) with a section on this export:
    how to load it and its parity; a short card where the run has none."""
    source = run.path / "README.md"
    card = source.read_text(encoding="utf-8") if source.is_file() else (
        f"# {task.kind.replace('_', ' ')} model\n\nFine-tuned with tunesmith in `{run.path}`.\n")  # fmt: skip
    for picture in sorted(set(re.findall(r"\]\(([\w.-]+\.png)\)", card))):  # the card's own plots
        if (run.path / picture).is_file():
            shutil.copy2(run.path / picture, tmp / picture)
    if report["format"] == "hf":
        loading = (f"a self-contained transformers directory (a LoRA run's adapter merged): load it with "
                   f"`{task.auto_class}.from_pretrained(THIS_DIRECTORY)` and its tokenizer or processor from "
                   "the same directory (the card above says `model`, the run's copy)")  # fmt: skip
    else:
        loading = (f"ONNX: run `{default}` with onnxruntime; its inputs are {task.export_description()['inputs']} "
                   "and its one output is `logits` (see tunesmith.json)")  # fmt: skip
    lines = ["", "## This export", "",
             f"`tunesmith export --format {report['format']}` of the run `{run.path}`: {loading}. "
             "`tunesmith serve THIS_DIRECTORY` serves it without the run.", "",
             f"Parity with the run's model on its {report.get('split', 'held-out')} split (parity.json):", ""]  # fmt: skip
    lines += [f"- `{name}`: {describe(figures)}" + ("" if figures.get("kept", True) else " (not kept)")
              for name, figures in report["models"].items()]  # fmt: skip
    (tmp / "README.md").write_text(card.rstrip("\n") + "\n" + "\n".join(lines) + "\n", encoding="utf-8")
