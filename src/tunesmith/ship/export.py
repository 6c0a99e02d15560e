"""``tunesmith export``: a finished run as a plain transformers directory or an ONNX model
(optionally int8-quantized), checked against the PyTorch model before it is kept. What differs
between task kinds (the model's named inputs, how predictions agree, how int8 is calibrated)
the task says (``Task.export_inputs``, ``export_parity``, ``quantization``).

Every export:
- refuses a run directory whose model, config or labels differ from its ``hashes.json``;
- runs the exported model and the run's PyTorch model on held-out rows (the run's test split,
  else its validation split) and records the largest logit difference and how often the
  predicted labels agree (``parity.json``);
- is written to a temporary directory and renamed into place only if parity holds, so a
  failed export leaves nothing behind. An int8 model below ``min_agreement`` is the exception:
  it is left out, with a warning in the log and in ``parity.json``, and the fp32 model ships.

The export directory also holds the tokenizer (or image processor) and ``tunesmith.json`` (task,
labels, max length, inputs, text normalisation, temperature, the run's config), everything
``tunesmith serve`` needs without the run.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.errors import TunesmithError
from tunesmith.runs import RunDir, claim_output
from tunesmith.tasks import require_stage
from tunesmith.tasks.contract import ExportBatch, Task
from tunesmith.tasks.run import load_run

FP32_MAX_LOGIT_DIFFERENCE = 1e-3
FP32_MIN_AGREEMENT = 0.999
BATCH_SIZE = 32


def held_out(run: RunDir, task: Task, processor, rows: int | None) -> tuple[list[dict], str]:
    """The features of the run's test split (else its validation split), at most ``rows`` of
    them, encoded by the task as training encoded them."""
    import pandas as pd

    for split in ("test", "validation"):
        path = run.data_dir / f"{split}.parquet"
        if path.is_file():
            frame = pd.read_parquet(path)
            frame = frame.iloc[:rows] if rows else frame
            return task.encode(processor, {split: frame}).features[split], split
    raise TunesmithError(f"{run.path} has no test or validation split to check the export on")


def batches(task: Task, processor, features: list[dict], size: int = BATCH_SIZE):
    """The features as the exported model's input batches (``Task.export_inputs``)."""
    for start in range(0, len(features), size):
        yield task.export_inputs(processor, features[start : start + size])


def torch_logits(model, task: Task, processor, features: list[dict]) -> np.ndarray:
    """A PyTorch model's logits, fed exactly what the exported model is fed."""
    import torch

    with torch.inference_mode():
        return np.concatenate([
            model(**{k: torch.from_numpy(v) for k, v in batch.inputs.items()}).logits.float().numpy()
            for batch in batches(task, processor, features)
        ])  # fmt: skip


def onnx_logits(session, task: Task, processor, features: list[dict]) -> np.ndarray:
    """An ONNX Runtime session's logits (inputs the graph dropped as unused are not fed)."""
    names = {i.name for i in session.get_inputs()}
    return np.concatenate([session.run(["logits"], {k: v for k, v in batch.inputs.items() if k in names})[0]
                           for batch in batches(task, processor, features)])  # fmt: skip


def export_onnx(model, sample: ExportBatch, path: Path) -> None:
    """Traces ``model`` on ``sample`` (torch.export) into one ONNX file, its inputs named as the
    task names them, with the task's varying axes dynamic."""
    import warnings

    import torch

    dims: dict[str, Any] = {}  # one Dim per axis name: "batch" is the same size for every input
    shapes = {name: {axis: dims.setdefault(label, torch.export.Dim(label)) for axis, label in
                     sample.dynamic_axes.get(name, {}).items()} or None for name in sample.inputs}  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (), str(path), kwargs={k: torch.from_numpy(v) for k, v in sample.inputs.items()},
            input_names=list(sample.inputs), output_names=["logits"], dynamic_shapes=shapes, dynamo=True,
            external_data=False, verbose=False,
        )  # fmt: skip


def quantize_int8(run: RunDir, task: Task, processor, source: Path, target: Path) -> None:
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
        fmt: "hf" or "onnx".
        quantize: "int8" (onnx only): also write an int8 model (``Task.quantization`` says how), the
            default for serving.
        rows: check parity on at most this many held-out rows (None: all).
        min_agreement: the smallest label agreement an int8 model may have; below it the int8
            model is left out (report["warnings"] says why) and the fp32 model is exported.

    Raises:
        TunesmithError: hashes do not match, the task cannot be exported, or fp32 parity fails.
    """
    if fmt not in ("hf", "onnx"):
        raise TunesmithError(f"--format {fmt!r}: choose hf or onnx")
    if quantize not in (None, "int8"):
        raise TunesmithError(f"--quantize {quantize!r}: only int8 is supported")
    if quantize and fmt != "onnx":
        raise TunesmithError("--quantize int8 applies to --format onnx")
    out = claim_output(out, kind="dir", what="--out")  # new or empty, and not inside a run's model

    # The hashes are checked before anything is loaded.
    run, config, task, model, processor = load_run(run_dir, verify_hashes=True)
    require_stage(task, "export", what=str(run.path))
    features, split = held_out(run, task, processor, rows)
    log(f"Checking the export on {len(features)} rows of the run's {split} split")
    reference = torch_logits(model, task, processor, features)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))  # a fresh name: nothing else is removed
    tmp.chmod(out.parent.stat().st_mode & 0o777)  # mkdtemp makes it private; give it its folder's permissions
    report: dict[str, Any] = {"run": str(run.path), "format": fmt, "split": split, "models": {}}
    try:
        processor.save_pretrained(tmp)
        if fmt == "hf":
            model.save_pretrained(tmp)
            exported = task.load_trained(tmp).eval()
            report["models"]["model.safetensors"] = task.export_parity(reference, torch_logits(exported, task,
                                                                                              processor, features))  # fmt: skip
            default = "."
        else:
            default = write_onnx(run, task, model, processor, features, reference, tmp, report, quantize=quantize)
        default = check_parity(report, default, tmp, min_agreement, log)
        (tmp / "tunesmith.json").write_text(json.dumps({
            "task": task.to_dict(), "max_length": config.model.max_length, "format": fmt, "model": default,
            "temperature": run.temperature() if task.calibrates else None, **task.export_description(),
            "source_run": str(run.path), "source_hashes": run.read_json("hashes.json"),
            "config": config.model_dump(mode="json"),
        }, indent=2), encoding="utf-8")  # fmt: skip
        (tmp / "parity.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def write_onnx(run: RunDir, task: Task, model, processor, features: list[dict], reference: np.ndarray, tmp: Path,
               report: dict[str, Any], *, quantize: str | None) -> str:  # fmt: skip
    """Writes model.onnx (and with ``quantize``, model_int8.onnx) into ``tmp`` and records each
    one's parity with the PyTorch model in ``report``; returns the file serve should run."""
    import onnxruntime as ort

    def scored(name: str) -> dict[str, float]:
        session = ort.InferenceSession(str(tmp / name), providers=["CPUExecutionProvider"])
        return task.export_parity(reference, onnx_logits(session, task, processor, features))

    # Two rows to trace on (one repeated when the split has one): size 1 would fix the batch axis.
    export_onnx(model, task.export_inputs(processor, (features * 2)[:2]), tmp / "model.onnx")
    report["models"]["model.onnx"] = scored("model.onnx")
    if quantize != "int8":
        return "model.onnx"
    quantize_int8(run, task, processor, tmp / "model.onnx", tmp / "model_int8.onnx")
    report["models"]["model_int8.onnx"] = scored("model_int8.onnx")
    return "model_int8.onnx"


def check_parity(report: dict[str, Any], default: str, tmp: Path, min_agreement: float, log) -> str:
    """Applies the parity floors to every exported model of ``report``: an int8 model below
    ``min_agreement`` is removed (with a warning; the fp32 model ships); an fp32 model below
    its floors refuses the export. Returns the file serve should run.

    Raises:
        TunesmithError: fp32 parity failed.
    """
    failures = []
    for name, figures in report["models"].items():
        quantized = "int8" in name
        floor = min_agreement if quantized else FP32_MIN_AGREEMENT
        if quantized and figures["label_agreement"] < floor:  # the fp32 model still ships
            (tmp / name).unlink()
            default, figures["kept"] = "model.onnx", False
            report["warnings"] = [int8_refused(name, figures, min_agreement, report["split"])]
        elif figures["label_agreement"] < floor:
            failures.append(f"{name}: label agreement {figures['label_agreement']:.4f} < {floor}")
        if not quantized and figures["max_logit_difference"] > FP32_MAX_LOGIT_DIFFERENCE:
            failures.append(f"{name}: logits differ by up to {figures['max_logit_difference']:.2e} "
                            f"(> {FP32_MAX_LOGIT_DIFFERENCE})")  # fmt: skip
        log(f"{name}: label agreement {figures['label_agreement']:.4f}, max logit difference "
            f"{figures['max_logit_difference']:.2e} on {figures['rows']} rows")  # fmt: skip
    if failures:
        raise TunesmithError("export refused, parity failed: " + "; ".join(failures))
    for warning in report.get("warnings", []):
        log(f"WARNING: {warning}")
    return default
