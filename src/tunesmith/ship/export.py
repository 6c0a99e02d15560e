"""``tunesmith export``: a finished classification run as a plain transformers directory or an
ONNX model (optionally int8-quantized), checked against the PyTorch model before it is kept.

Every export:
- refuses a run directory whose model, config or labels differ from its ``hashes.json``;
- runs the exported model and the run's PyTorch model on held-out rows (the run's test split,
  else its validation split) and records the largest logit difference and how often the
  predicted labels agree (``parity.json``);
- is written to a temporary directory and renamed into place only if parity holds, so a
  failed export leaves nothing behind. An int8 model below ``min_agreement`` is the exception:
  it is left out, with a warning in the log and in ``parity.json``, and the fp32 model ships.

The export directory also holds the tokenizer and ``tunesmith.json`` (task, labels, max
length, text normalisation, temperature), everything ``tunesmith serve`` needs without the run.
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
from tunesmith.runs import claim_output
from tunesmith.tasks import require_stage
from tunesmith.tasks.run import load_run

FP32_MAX_LOGIT_DIFFERENCE = 1e-3
FP32_MIN_AGREEMENT = 0.999


def held_out_texts(run, rows: int | None) -> tuple[list[str], str]:
    import pandas as pd

    for split in ("test", "validation"):
        path = run.data_dir / f"{split}.parquet"
        if path.is_file():
            texts = pd.read_parquet(path)["text"].astype(str).tolist()
            return (texts[:rows] if rows else texts), split
    raise TunesmithError(f"{run.path} has no test or validation split to check the export on")


def _batches(tokenizer, texts: list[str], max_length: int, size: int = 64):
    order = np.argsort([len(t) for t in texts], kind="stable")
    for start in range(0, len(texts), size):
        rows = order[start : start + size]
        yield rows, tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=max_length,
                              return_tensors="np")  # fmt: skip


def torch_logits(model, tokenizer, texts: list[str], max_length: int) -> np.ndarray:
    import torch

    out = None
    with torch.inference_mode():
        for rows, batch in _batches(tokenizer, texts, max_length):
            logits = model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.float().numpy()
            out = np.zeros((len(texts), logits.shape[1]), dtype=np.float32) if out is None else out
            out[rows] = logits
    return out


def onnx_logits(session, tokenizer, texts: list[str], max_length: int) -> np.ndarray:
    names = {i.name for i in session.get_inputs()}
    out = None
    for rows, batch in _batches(tokenizer, texts, max_length):
        logits = session.run(["logits"], {k: v.astype(np.int64) for k, v in batch.items() if k in names})[0]
        out = np.zeros((len(texts), logits.shape[1]), dtype=np.float32) if out is None else out
        out[rows] = logits
    return out


def parity(reference: np.ndarray, exported: np.ndarray, task_type: str, threshold: float = 0.5) -> dict[str, float]:
    """Largest absolute logit difference and the share of rows with the same prediction
    (multi-label: the same labels at the task's probability threshold)."""
    if task_type == "multi_label":
        cut = float(np.log(threshold / (1 - threshold)))  # sigmoid(x) >= threshold  <=>  x >= logit(threshold)
        same = ((reference >= cut) == (exported >= cut)).all(1)
    elif task_type == "regression":
        same = np.abs(reference - exported)[:, 0] < 1e-2
    else:
        same = reference.argmax(1) == exported.argmax(1)
    return {"rows": int(len(reference)), "max_logit_difference": float(np.abs(reference - exported).max()),
            "label_agreement": float(same.mean())}  # fmt: skip


def _image_scorers(run, task, model, rows: int | None):
    """For an image classifier: held-out images, and functions giving the logits of a torch model
    or an ONNX session on them (the run's own preprocessing, no augmentation)."""
    import pandas as pd

    for split in ("test", "validation"):
        path = run.data_dir / f"{split}.parquet"
        if path.is_file():
            paths = pd.read_parquet(path)["path"].astype(str).tolist()
            break
    else:
        raise TunesmithError(f"{run.path} has no test or validation split to check the export on")
    features = [{"path": p, "labels": 0, "augment": False} for p in (paths[:rows] if rows else paths)]

    def torch_scores(candidate) -> np.ndarray:
        return task.logits(candidate, features, batch_size=32, device="cpu")

    def onnx_scores(session) -> np.ndarray:
        return np.concatenate([session.run(["logits"], {"pixel_values": task.pixels(features[i : i + 32]).numpy()})[0]
                               for i in range(0, len(features), 32)])  # fmt: skip

    def export_onnx(path: Path) -> None:
        import warnings

        import torch

        sample = task.pixels(features[:2])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (), str(path), kwargs={"pixel_values": sample}, input_names=["pixel_values"],
                output_names=["logits"], dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch")}}, dynamo=True,
                external_data=False, verbose=False,
            )  # fmt: skip

    def quantize(source: Path, target: Path) -> None:
        """Static int8 (QDQ, per-channel weights), activation ranges calibrated on up to 256
        training images. Dynamic quantization, the text default, agreed on 0.75 of the labels of
        the Fashion-MNIST EfficientNet; this agreed on 0.99."""
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        train = pd.read_parquet(run.data_dir / "train.parquet")["path"].astype(str).tolist()
        chosen = np.random.default_rng(0).permutation(len(train))[:256]
        calibration = [{"path": train[i], "labels": 0, "augment": False} for i in chosen]

        class Batches(CalibrationDataReader):
            def __init__(self):
                self.starts = iter(range(0, len(calibration), 32))

            def get_next(self):
                start = next(self.starts, None)
                return None if start is None else {"pixel_values": task.pixels(calibration[start : start + 32]).numpy()}

        prepared = source.with_name("prepared.onnx")
        quant_pre_process(str(source), str(prepared))
        quantize_static(str(prepared), str(target), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, reduce_range=True)  # fmt: skip
        prepared.unlink()

    return len(features), split, torch_scores, onnx_scores, export_onnx, quantize


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


def _export_onnx(model, tokenizer, path: Path) -> None:
    import warnings

    import torch

    sample = tokenizer(["a short text", "a somewhat longer text to trace"], padding=True, return_tensors="pt")
    names = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in sample]
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (), str(path), kwargs={n: sample[n] for n in names}, input_names=names, output_names=["logits"],
            dynamic_shapes={n: {0: batch, 1: sequence} for n in names}, dynamo=True, external_data=False,
            verbose=False,
        )  # fmt: skip


def export(run_dir: str | Path, out: str | Path, *, fmt: str, quantize: str | None = None, rows: int | None = None,
           min_agreement: float = 0.98, log=print) -> dict[str, Any]:  # fmt: skip
    """Exports a finished run; returns the parity report (also written to ``out/parity.json``).

    Args:
        fmt: "hf" or "onnx".
        quantize: "int8" (onnx only): also write a dynamically quantized model, the default for serving.
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
    run, config, task, model, tokenizer = load_run(run_dir, verify_hashes=True)
    require_stage(task, "export", what=str(run.path))
    image = config.task.type == "image_classification"
    max_length = config.model.max_length
    if image:  # pixels in, preprocessing (preprocessor_config.json) beside the model
        count, split, torch_scores, onnx_scores, export_onnx, quantize_int8 = _image_scorers(run, task, model, rows)
    else:
        texts, split = held_out_texts(run, rows)
        texts = [" ".join(t.split()) for t in texts]  # what training and predict feed the model
        count = len(texts)

        def torch_scores(candidate) -> np.ndarray:
            return torch_logits(candidate, tokenizer, texts, max_length)

        def onnx_scores(session) -> np.ndarray:
            return onnx_logits(session, tokenizer, texts, max_length)

        def export_onnx(path: Path) -> None:
            _export_onnx(model, tokenizer, path)

        def quantize_int8(source: Path, target: Path) -> None:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            # Per-channel weight scales, and 7-bit ranges: without VNNI (AVX2, AVX-512) int8
            # products can saturate. On the SST-2 model this took agreement from 0.976 to 0.989.
            quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
                             reduce_range=True)  # fmt: skip

    log(f"Checking the export on {count} rows of the run's {split} split")
    reference = torch_scores(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))  # a fresh name: nothing else is removed
    tmp.chmod(out.parent.stat().st_mode & 0o777)  # mkdtemp makes it private; give it its folder's permissions
    report: dict[str, Any] = {"run": str(run.path), "format": fmt, "split": split, "models": {}}
    try:
        tokenizer.save_pretrained(tmp)
        if fmt == "hf":
            from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

            model.save_pretrained(tmp)
            auto = AutoModelForImageClassification if image else AutoModelForSequenceClassification
            exported = auto.from_pretrained(tmp).eval()
            report["models"]["model.safetensors"] = parity(reference, torch_scores(exported), task.type, task.threshold)
            default = "."
        else:
            import onnxruntime as ort

            export_onnx(tmp / "model.onnx")
            session = ort.InferenceSession(str(tmp / "model.onnx"), providers=["CPUExecutionProvider"])
            report["models"]["model.onnx"] = parity(reference, onnx_scores(session), task.type, task.threshold)
            default = "model.onnx"
            if quantize == "int8":
                quantize_int8(tmp / "model.onnx", tmp / "model_int8.onnx")
                session = ort.InferenceSession(str(tmp / "model_int8.onnx"), providers=["CPUExecutionProvider"])
                report["models"]["model_int8.onnx"] = parity(reference, onnx_scores(session), task.type,
                                                             task.threshold)  # fmt: skip
                default = "model_int8.onnx"
        failures = []
        for name, figures in report["models"].items():
            quantized = "int8" in name
            floor = min_agreement if quantized else FP32_MIN_AGREEMENT
            if quantized and figures["label_agreement"] < floor:  # the fp32 model still ships
                (tmp / name).unlink()
                default, figures["kept"] = "model.onnx", False
                report["warnings"] = [int8_refused(name, figures, min_agreement, split)]
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
        (tmp / "tunesmith.json").write_text(json.dumps({
            "task": task.to_dict(), "max_length": max_length, "format": fmt, "model": default,
            "temperature": run.temperature() if task.type == "single_label" else None,
            "text_normalisation": None if image else "collapse whitespace", "source_run": str(run.path),
            "inputs": "pixel_values (see preprocessor_config.json)" if image else "token ids",
            "source_hashes": run.read_json("hashes.json"),
        }, indent=2), encoding="utf-8")  # fmt: skip
        (tmp / "parity.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report
