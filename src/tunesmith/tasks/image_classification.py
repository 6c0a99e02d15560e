"""Image classification: one label per image, on the text classifier's metrics and reports.

Input (``data.train`` etc.):
- a folder laid out as ``root/<label>/<image>`` (png, jpg, jpeg, bmp, gif, webp, tif);
- a CSV/TSV/JSONL/Parquet table with a path column (``data.text_column``, else ``path``,
  ``image`` or ``file``) and a label column; relative paths are relative to the table's folder.

Every image is decoded once when the data is loaded: one that cannot be read is skipped, with
a line in data_changelog.jsonl and the log, never a crash. Images are converted to RGB
(grayscale and palette images included) and, per batch, resized to the backbone's input and
normalised with the backbone's own preprocessing config (preprocessor_config.json, which is
saved with the trained model). Augmentation (``data.image_augment``) applies to the train
split only and draws from torch's seeded generator, so runs repeat and resume exactly; it is
written with PIL and numpy (torchvision does not import beside this CPU torch).

Prediction takes image files or folders (the CLI) or decoded images. A server never opens a
path it is sent: it hands the task each upload's bytes (``decode_upload``), which PIL opens
from memory, in the formats of ``EXTENSIONS`` only (PIL's other plugins, e.g. EPS through
Ghostscript, stay shut), checking width x height from the header before the pixels are
decoded, then scales to the model's input at once, so a request holds no full-size images.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import torch

from tunesmith.config import Config, DataConfig
from tunesmith.data.load import read_table
from tunesmith.data.prepare import PreparedData, prepare_records
from tunesmith.errors import TunesmithError
from tunesmith.runs import sha256_file
from tunesmith.tasks.classification import TextClassificationTask
from tunesmith.tasks.contract import CHAT_NOTE, CardText, Encoded, ExportBatch, InputTooLarge, UploadLimits

if TYPE_CHECKING:
    from tunesmith.models.load import ResolvedModel

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
"""PIL's names of the formats of EXTENSIONS: the only decoders an upload may reach."""
PATH_COLUMNS = ("path", "image", "file", "filename")


# -- reading ------------------------------------------------------------------------------------------
def read_image(path: str | Path):
    """The image as an RGB PIL image (decoded now, so a broken file fails here)."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image.convert("RGB")


def decode_image(data: bytes, *, where: str, max_pixels: int):
    """An uploaded image file's bytes as an RGB PIL image.

    Raises:
        InputTooLarge: width x height over ``max_pixels`` (read from the header, before any pixel
            is decoded), or PIL's own decompression-bomb limit.
        TunesmithError: not an image of ``FORMATS``, or one that cannot be decoded (truncated,
            corrupt), naming ``where``.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise InputTooLarge(f"{where} is {width} x {height} = {width * height:,} pixels; the limit is "
                                    f"{max_pixels:,}")  # fmt: skip
            image.load()
            return image.convert("RGB")
    except Image.DecompressionBombError as error:
        raise InputTooLarge(f"{where}: {error}") from None
    except UnidentifiedImageError:
        raise TunesmithError(f"{where}: not an image (tunesmith reads {', '.join(FORMATS)})") from None
    except InputTooLarge:
        raise
    except Exception as error:  # noqa: BLE001 (any decoder failure: truncated, corrupt, unsupported mode)
        reason = str(error) or type(error).__name__
        raise TunesmithError(f"{where}: the image cannot be decoded ({reason})") from None


def _check(paths: list[Path], labels: list[str], wheres: list[str]) -> tuple[list[dict], list[dict]]:
    rows, skipped = [], []
    for path, label, where in zip(paths, labels, wheres):
        path = path.resolve()  # a resumed run or a report may start from another directory
        try:
            read_image(path)
        except Exception as error:  # noqa: BLE001 (any decoder failure, decompression bombs included)
            reason = str(error) or type(error).__name__
            skipped.append({"change": "skipped_unreadable_image", "path": str(path), "where": where, "reason": reason})
            continue
        rows.append({"path": str(path), "label": str(label), "where": where})
    return rows, skipped


def load_images(spec: str, config: DataConfig | None) -> tuple[pd.DataFrame, dict]:
    """One table (path, label, where) for a folder of class folders or a table of paths."""
    source = Path(spec)
    if source.is_dir():
        folders = sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
        paths, labels = [], []
        for folder in folders:
            for path in sorted(folder.rglob("*")):
                if path.suffix.lower() in EXTENSIONS and path.is_file():
                    paths.append(path)
                    labels.append(folder.name)
        if not paths:
            raise TunesmithError(f"{source}: no images found; expected {source}/<label>/<image> with extensions "
                                 f"{', '.join(sorted(EXTENSIONS))}")  # fmt: skip
        wheres = [str(p) for p in paths]
        fingerprint = {"files": len(paths)}
    elif source.is_file():
        table = read_table(str(source)).frame
        path_column = config.text_column if config is not None and config.text_column else next(
            (c for c in PATH_COLUMNS if c in table.columns), None)  # fmt: skip
        label_column = config.label_column if config is not None and config.label_column else "label"
        for wanted, what in ((path_column, "image path"), (label_column, "label")):
            if wanted is None or wanted not in table.columns:
                raise TunesmithError(f"{source}: no {what} column {wanted or ''} (columns: {list(table.columns)}); "
                                     f"set data.{'text' if what == 'image path' else 'label'}_column")  # fmt: skip
        paths, labels, wheres = [], [], []
        for number, (value, label) in enumerate(zip(table[path_column], table[label_column]), 2):
            if pd.isna(value) or pd.isna(label):
                raise TunesmithError(f"{source}, row {number}: missing image path or label")
            path = Path(str(value))
            paths.append(path if path.is_absolute() else source.parent / path)
            labels.append(label)
            wheres.append(f"{source}, row {number}")
        fingerprint = {"sha256": sha256_file(source)}
    else:
        raise TunesmithError(f"Data not found: {source} (an image folder or a table of image paths)")
    rows, skipped = _check(paths, labels, wheres)
    if not rows:
        raise TunesmithError(f"{source}: none of the {len(paths)} images could be read")
    frame = pd.DataFrame(rows)
    frame["label"] = frame["label"].map(lambda v: str(int(v)) if isinstance(v, float) and v.is_integer() else str(v))
    entry = {"source": str(source), **fingerprint, "format": "images", "replaced_characters": 0,
             "cleaning": {"images": len(paths), "skipped_unreadable": len(skipped)}, "changes": skipped}  # fmt: skip
    return frame, entry


# -- preprocessing and augmentation ---------------------------------------------------------------------
@dataclass
class ImagePreprocessor:
    """Resize to the backbone's input and normalise: (pixel / 255 * rescale - mean) / std, read
    from (and saved as) a transformers preprocessor_config.json."""

    height: int = 224
    width: int = 224
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    rescale: float = 1 / 255
    crop: tuple[int, int] | None = None
    raw: dict | None = None
    pad_token_id: int = 0  # the pipeline asks every preprocessor for one; images have no padding

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> ImagePreprocessor:
        path = Path(folder) / "preprocessor_config.json"
        if not Path(folder).is_dir():  # a hub id: the file from the hub cache (or the network)
            from transformers.utils import cached_file

            try:
                path = Path(cached_file(str(folder), "preprocessor_config.json"))
            except OSError as error:
                raise TunesmithError(f"{folder}: cannot read its preprocessor_config.json ({error})") from None
        if not path.is_file():
            raise TunesmithError(f"{folder} has no preprocessor_config.json: tunesmith cannot tell the image size "
                                 "and normalisation this model expects")  # fmt: skip
        raw = json.loads(path.read_text(encoding="utf-8"))
        size = raw.get("size", {"height": 224, "width": 224})
        if isinstance(size, int):
            size = {"height": size, "width": size}
        if "shortest_edge" in size:
            height = width = int(size["shortest_edge"])
        else:
            height, width = int(size["height"]), int(size["width"])
        crop = raw.get("crop_size") if raw.get("do_center_crop") else None
        normalise = raw.get("do_normalize", True)
        mean = tuple(raw.get("image_mean", [0.0] * 3)) if normalise else (0.0, 0.0, 0.0)
        std = tuple(raw.get("image_std", [1.0] * 3)) if normalise else (1.0, 1.0, 1.0)
        return cls(height=height, width=width, mean=mean, std=std,
                   rescale=float(raw.get("rescale_factor", 1 / 255)) if raw.get("do_rescale", True) else 1.0,
                   crop=(int(crop["height"]), int(crop["width"])) if crop else None, raw=raw)  # fmt: skip

    def with_size(self, size: int | None) -> ImagePreprocessor:
        """The same normalisation at ``size`` x ``size`` (data.image_size), or as it is."""
        if size is None:
            return self
        raw = dict(self.raw or {}) | {"size": {"height": size, "width": size}, "do_center_crop": False}
        return ImagePreprocessor(size, size, self.mean, self.std, self.rescale, None, raw)

    def save_pretrained(self, folder: str | Path) -> None:
        raw = dict(self.raw or {"image_processor_type": "ViTImageProcessor", "do_resize": True, "resample": 2,
                                "do_rescale": True, "do_normalize": True})  # fmt: skip
        raw |= {"size": {"height": self.height, "width": self.width}, "rescale_factor": self.rescale,
                "image_mean": list(self.mean), "image_std": list(self.std)}  # fmt: skip
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "preprocessor_config.json").write_text(json.dumps(raw, indent=2))

    def scale(self, image):
        """The image at the model's input size, before any crop (as it is when it has that size)."""
        from PIL import Image

        if image.size == (self.width, self.height):
            return image
        return image.resize((self.width, self.height), Image.BILINEAR)

    def resize(self, image):
        image = self.scale(image)
        if self.crop:
            height, width = self.crop
            left, top = (self.width - width) // 2, (self.height - height) // 2
            image = image.crop((left, top, left + width, top + height))
        return image

    def tensor(self, image) -> torch.Tensor:
        """A resized RGB PIL image as a normalised CHW float tensor."""
        array = np.asarray(self.resize(image), dtype=np.float32) * self.rescale
        array = (array - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return torch.from_numpy(array.transpose(2, 0, 1).copy())


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


def augment_image(image, settings):
    """Seeded (torch's generator) random resized crop, horizontal flip, rotation and colour
    jitter, each as ``data.image_augment`` sets it; returns a new RGB PIL image."""
    from PIL import Image, ImageEnhance

    width, height = image.size
    if settings.crop_scale < 1.0:
        for _ in range(10):  # as in the Inception recipe: area share and aspect ratio, then fall back
            area = width * height * _uniform(settings.crop_scale, 1.0)
            ratio = math.exp(_uniform(math.log(3 / 4), math.log(4 / 3)))
            w, h = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if 0 < w <= width and 0 < h <= height:
                left, top = int(torch.randint(0, width - w + 1, ())), int(torch.randint(0, height - h + 1, ()))
                image = image.crop((left, top, left + w, top + h)).resize((width, height), Image.BILINEAR)
                break
    if settings.flip > 0 and float(torch.rand(())) < settings.flip:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    if settings.rotation > 0:
        image = image.rotate(_uniform(-settings.rotation, settings.rotation), resample=Image.BILINEAR)
    for amount, enhancer in ((settings.brightness, ImageEnhance.Brightness), (settings.contrast, ImageEnhance.Contrast),
                             (settings.saturation, ImageEnhance.Color)):  # fmt: skip
        if amount > 0:
            image = enhancer(image).enhance(_uniform(max(0.0, 1 - amount), 1 + amount))
    return image


def keep_frozen_statistics(model) -> None:
    """Batch-norm layers whose parameters are frozen (strategy freeze, or not yet unfrozen) run
    in eval mode, so their running statistics stay the pretrained ones; the others train."""
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train(any(p.requires_grad for p in module.parameters(recurse=False)))


# -- the task -----------------------------------------------------------------------------------------------
def image_sources(inputs: list) -> list[tuple[dict, Any]]:
    """The images that prediction inputs give, in order, each as (what its row says about it,
    the image): a file as its path, a folder as every image file in it (sorted), both still to
    be read (``{"path": ...}``); a decoded PIL image (a served upload) as it is (``{}``).

    Raises:
        TunesmithError: an input that is neither (naming its position), or a path that does
            not exist.
    """
    from PIL import Image

    sources = []
    for number, value in enumerate(inputs, 1):
        if isinstance(value, Image.Image):
            sources.append(({}, value))
            continue
        if not isinstance(value, (str, os.PathLike)):
            raise TunesmithError(f"input {number}: an image_classification run takes image files or folders "
                                 f"(or decoded images), not a {type(value).__name__} "
                                 f"({str(value)[:80]!r})")  # fmt: skip
        path = Path(value)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
        elif path.is_file():
            found = [path]
        else:
            raise TunesmithError(f"{path}: no such image file or folder")
        sources += [({"path": str(p)}, p) for p in found]
    return sources


@dataclass
class ImageClassificationTask(TextClassificationTask):
    """Single-label classification of images (tasks.contract.Task): the text classifier's labels,
    loss, metrics, calibration and reports, with its own data, preprocessing, batches and model.
    ``type`` is "single_label" (the classifier code it shares); ``kind`` is what it implements."""

    augment: Any = None
    """data.image: the train split's augmentation."""
    image_size: int | None = None
    """data.image.size: the square input side; None keeps the backbone's."""
    processor: ImagePreprocessor | None = None
    """The preprocessing of ``load_processor``, which ``collate`` uses."""

    kind: ClassVar[str] = "image_classification"
    stages: ClassVar[frozenset[str]] = frozenset({"evaluate", "predict", "retrain", "cv", "tune", "export", "serve"})
    peft_task_type: ClassVar[str | None] = None
    auto_class: ClassVar[str] = "AutoModelForImageClassification"
    pipeline_tag: ClassVar[str] = "image-classification"
    forgetting_probe: ClassVar[str | None] = None
    baseline_probe: ClassVar[bool] = False  # not built yet: the probe reads text embeddings
    stage_notes: ClassVar[dict[str, str]] = {
        "chat": CHAT_NOTE,
        "inspect": "not built yet: inspect reads text records (duplicate images, unreadable files and sizes are the plan)",
        "monitor": "not built yet: monitor watches text inputs (pixel statistics and embedding drift are the plan)",
        "forgetting": "not built yet: the retain-set probe reads labelled texts, not images",
    }
    detects_label_errors: ClassVar[bool] = False  # the label-error search reads texts
    quantization: ClassVar[str] = "static"
    """Dynamic int8 agreed on 0.75 of the labels of the Fashion-MNIST EfficientNet; static, 0.99."""
    upload_formats: ClassVar[tuple[str, ...]] = FORMATS

    @classmethod
    def from_config(cls, config: Config, saved: dict[str, Any] | None = None) -> ImageClassificationTask:
        """The image classifier of a config (data.image: input size and augmentation), with the
        label set of a run's ``task.json`` as ``saved``."""
        saved = saved or {}
        return cls(type="single_label", label_names=list(saved.get("label_names") or []), augment=config.data.image,
                   image_size=config.data.image.size)  # fmt: skip

    # -- data ------------------------------------------------------------------------------------------
    def prepare(self, config: Config, *, find_label_errors: Callable | None = None) -> PreparedData:
        """The data stage: every image source read (an unreadable image is skipped, with a line in
        the changelog), random splits, then the label set of the training images.
        ``find_label_errors`` is not used: the label-error search reads texts."""
        data = prepare_records(config.data, seed=config.runtime.seed, load=load_images, inputs=self.overlap_inputs)
        self.fit_labels(data.splits["train"]["label"], "the training images")
        return data

    def read(self, spec: str, data: DataConfig) -> tuple[pd.DataFrame, dict]:
        """One labelled image folder or table of paths, and its manifest entry.

        Raises:
            TunesmithError: no images, or an image whose label the model was not trained on
                (naming the image or the table row).
        """
        frame, entry = load_images(spec, data)
        # Before training (cv reads its folds' rows) there is no label set to hold them to.
        unknown = ~frame["label"].isin(self.label_names) if self.label_names else pd.Series(False, index=frame.index)
        if unknown.any():
            first = frame[unknown].iloc[0]
            raise TunesmithError(f"{first['where']}: label {first['label']!r} does not occur in the training data "
                                 f"(known: {self.label_names}); the model could never predict it")  # fmt: skip
        return frame, entry

    def overlap_inputs(self, frame: pd.DataFrame) -> list[str]:
        """Each image's content hash: the same picture under two names is the same input."""
        return [sha256_file(Path(p)) for p in frame["path"]]

    def source_rows(self, frame: pd.DataFrame) -> np.ndarray | None:
        """None: the images' rows are not kept (cv.group_column does not apply to images)."""
        return None

    def row_inputs(self, frame: pd.DataFrame) -> list[str]:
        """What identifies each image in its predictions: its path (as read)."""
        return frame["path"].astype(str).tolist()

    def write_records(self, frame: pd.DataFrame, directory: Path, name: str) -> tuple[Path, dict[str, Any]]:
        """A Parquet table of image paths (absolute, as read) and labels."""
        path = directory / f"{name}.parquet"
        frame[["path", "label"]].to_parquet(path, index=False)
        return path, {"text_column": "path", "label_column": "label", "column_names": None}

    # -- model -----------------------------------------------------------------------------------------
    def load_processor(self, resolved: ResolvedModel, *, trained: bool = False) -> ImagePreprocessor:
        """The backbone's preprocessing (at data.image.size when set), or a trained model's as saved."""
        processor = ImagePreprocessor.from_pretrained(resolved.location)
        self.processor = processor if trained else processor.with_size(self.image_size)
        return self.processor

    def load_model(self, resolved: ResolvedModel, dropout: float | None) -> tuple[Any, list[str]]:
        """The pretrained backbone with a head for the label set, and the new head's parameter names."""
        from transformers import AutoModelForImageClassification

        import tunesmith.models.efficientnet  # noqa: F401 (registers the packaged backbone)
        from tunesmith.models.load import load_with_head

        return load_with_head(AutoModelForImageClassification, resolved, label_names=self.label_names,
                               dropout=dropout)  # fmt: skip

    def load_trained(self, model_dir: Path) -> Any:
        """A trained run's model (``AutoModelForImageClassification``)."""
        from transformers import AutoModelForImageClassification

        import tunesmith.models.efficientnet  # noqa: F401 (registers the packaged backbone)

        return AutoModelForImageClassification.from_pretrained(model_dir)

    # -- training --------------------------------------------------------------------------------------
    def encode(self, processor: ImagePreprocessor, splits: dict[str, pd.DataFrame]) -> Encoded:
        """One feature per image (its path and class id; decoded per batch); the train split's are
        augmented when data.image asks for it."""
        features = {}
        for name, frame in splits.items():
            targets = self.encode_labels(frame["label"], f"the {name} images")
            augment = name == "train" and self.augment is not None and self.augment.active
            features[name] = [{"path": p, "labels": t, "augment": augment} for p, t in zip(frame["path"], targets)]
        return Encoded(features=features, truncated=dict.fromkeys(features, 0),
                       notes=[f"Labels: {', '.join(self.label_names)}"])  # fmt: skip

    def pixels(self, processor: ImagePreprocessor, features: list[dict], *, augment: bool = True) -> torch.Tensor:
        """The batch's images as normalised pixels, augmented where a feature says so (and ``augment``)."""
        tensors = []
        for f in features:
            image = f["image"] if "image" in f else read_image(f["path"])  # predict decodes up front
            if augment and f.get("augment"):
                image = augment_image(image, self.augment)
            tensors.append(processor.tensor(image))
        return torch.stack(tensors)

    def collate(self, features: list[dict], pad_token_id: int) -> dict:
        """One batch: the pixels (of ``load_processor``'s preprocessing) and the class ids."""
        return {"pixel_values": self.pixels(self.processor, features), "num_examples": len(features),
                "labels": torch.tensor([f["labels"] for f in features]), "num_tokens": 0}  # fmt: skip

    def batch_loss(self, model: Any, batch: dict, device: Any) -> torch.Tensor:
        """The summed loss of one batch; frozen batch-norm layers keep their pretrained statistics."""
        if model.training:
            keep_frozen_statistics(model)
        logits = model(pixel_values=batch["pixel_values"].to(device)).logits
        return self.loss(logits.float(), batch["labels"].to(device))

    @torch.no_grad()
    def split_logits(self, model: Any, processor: ImagePreprocessor, features: list[dict], *, batch_size: int,
                     device: Any) -> np.ndarray:  # fmt: skip
        """The model's logits for every feature, in order, without augmentation."""
        was_training = model.training
        model.eval()
        out = np.empty((len(features), len(self.label_names)), dtype=np.float32)
        for start in range(0, len(features), batch_size):
            chunk = features[start : start + batch_size]
            pixels = self.pixels(processor, chunk, augment=False).to(device)
            out[start : start + len(chunk)] = model(pixel_values=pixels).logits.float().cpu()
        model.train(was_training)
        return out

    def evaluate(self, model: Any, features: list[dict], *, batch_size: int, pad_token_id: int,
                 device: Any) -> dict[str, Any]:  # fmt: skip
        """The loop's validation metrics and mean loss."""
        logits = self.split_logits(model, self.processor, features, batch_size=batch_size, device=device)
        return self.scores(logits, np.asarray([f["labels"] for f in features]))

    # -- evaluation (calibrate and score: the text classifier's, on split_logits) -------------------------
    def plot_misclassified(self, path: Path, logits: np.ndarray, features: list[dict], limit: int = 24) -> int:
        """A grid of the misclassified images, most confidently wrong first, each titled
        "true -> predicted (probability)"; returns how many are wrong in all (no file when none)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        probabilities = self.probabilities(logits)
        predicted = probabilities.argmax(1)
        wrong = [i for i, f in enumerate(features) if predicted[i] != f["labels"]]
        if not wrong:
            return 0
        wrong.sort(key=lambda i: -probabilities[i, predicted[i]])
        shown = wrong[:limit]
        columns = min(6, len(shown))
        rows = math.ceil(len(shown) / columns)
        figure, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.5 * rows), squeeze=False)
        for axis in axes.flat:
            axis.axis("off")
        for axis, i in zip(axes.flat, shown):
            axis.imshow(read_image(features[i]["path"]))
            axis.set_title(f"{self.label_names[features[i]['labels']]} -> {self.label_names[predicted[i]]}\n"
                           f"({probabilities[i, predicted[i]]:.2f})", fontsize=8)  # fmt: skip
        figure.suptitle(f"{len(wrong)} misclassified of {len(features)} (true -> predicted)", fontsize=10)
        figure.tight_layout()
        figure.savefig(path, dpi=80)
        plt.close(figure)
        return len(wrong)

    # -- prediction ------------------------------------------------------------------------------------
    def predict(self, model: Any, processor: ImagePreprocessor, inputs: list, *,
                temperature: float | None = None) -> list[dict]:  # fmt: skip
        """Label and scores (softmax at ``temperature``) for each image file, every image in the
        folders given, and each decoded image (a served upload: its row has no ``path``); an
        unreadable file gets an ``error`` row, after the others."""
        rows, kept, features = [], [], []
        for source, image in image_sources(inputs):
            try:
                image = read_image(image) if isinstance(image, Path) else image
            except Exception as error:  # noqa: BLE001 (reported per file, the rest still predicted)
                rows.append({**source, "error": f"unreadable image: {error}"})
                continue
            kept.append(source)
            features.append({"image": image, "labels": 0})
        if not features:
            return rows
        device = next(model.parameters()).device
        logits = self.split_logits(model, processor, features, batch_size=32, device=device)
        found = self.prediction_rows(logits, temperature)
        return [source | row for source, row in zip(kept, found)] + rows

    def read_inputs(self, path: Path) -> list:
        """``tunesmith predict --input``: an image file or a folder of images, as one input."""
        return [path]

    # -- shipping --------------------------------------------------------------------------------------
    def card(self, manifest: dict[str, Any], max_length: int, truncated_train: int) -> CardText:
        """The image classifier's part of the model card."""
        source, labels = manifest["sources"]["train"], manifest["splits"]["train"].get("labels")
        if self.processor is not None:
            height, width = self.processor.crop or (self.processor.height, self.processor.width)
            size = f"{width} x {height} pixels"
        else:
            size = f"{self.image_size} x {self.image_size} pixels" if self.image_size else "the backbone's input size"
        return CardText(
            title="Image classifier",
            purpose="It assigns one label to each image.",
            data=f"Format: {source.get('format')}; {source.get('cleaning')}."
            + (f"\nLabel distribution (train): {labels}" if labels else ""),
            limitation=f"Images are resized to {size} and normalised as model/preprocessor_config.json says; "
            "pictures unlike the training images (other cameras, lighting, framing) can score far lower.",
            usage="`tunesmith predict RUN_DIR --input IMAGE_OR_FOLDER`.",
            processor="AutoImageProcessor",  # model/preprocessor_config.json names ViTImageProcessor
        )

    def to_dict(self) -> dict[str, Any]:
        """``task.json``: the kind, the label set and data.image.size."""
        return {"type": self.kind, "label_names": self.label_names, "image_size": self.image_size}

    # -- export ----------------------------------------------------------------------------------------
    def export_features(self, processor: ImagePreprocessor, inputs: list) -> list[dict]:
        """The images given (decoded, or read from the files and folders named)."""
        return [{**source, "image": read_image(image) if isinstance(image, Path) else image, "labels": 0}
                for source, image in image_sources(inputs)]  # fmt: skip

    def rows_from_logits(self, inputs: list, features: list[dict], logits: list[np.ndarray], *,
                         temperature: float | None = None) -> list[dict]:  # fmt: skip
        """Label and scores per image (softmax at ``temperature``), as ``predict`` writes them."""
        rows = self.prediction_rows(np.stack(logits), temperature)
        return [({"path": f["path"]} if "path" in f else {}) | row for f, row in zip(features, rows)]

    def decode_upload(self, processor: ImagePreprocessor, data: bytes, *, where: str, limits: UploadLimits) -> Any:
        """An uploaded image file as ``predict`` takes it: decoded within ``limits``, then scaled to
        the model's input (as ``processor`` would: the same pixels), so a request holds no
        full-size image while it waits for the model."""
        if len(data) > limits.max_bytes:
            raise InputTooLarge(f"{where} is {len(data):,} bytes; the limit is {limits.max_bytes:,}")
        return processor.scale(decode_image(data, where=where, max_pixels=limits.max_pixels))

    def export_inputs(self, processor: ImagePreprocessor, features: list[dict]) -> ExportBatch:
        """The batch's normalised pixels (never augmented), any number of images."""
        pixels = self.pixels(processor, features, augment=False).numpy()
        return ExportBatch(inputs={"pixel_values": pixels}, dynamic_axes={"pixel_values": {0: "batch"}})

    def export_description(self) -> dict[str, Any]:
        """Pixels in, preprocessed as the preprocessor_config.json beside the model says."""
        return {"inputs": "pixel_values (see preprocessor_config.json)", "text_normalisation": None}
