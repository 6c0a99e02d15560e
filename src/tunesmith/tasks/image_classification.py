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
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tunesmith.errors import TunesmithError
from tunesmith.tasks.classification import TextClassificationTask

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
PATH_COLUMNS = ("path", "image", "file", "filename")


# -- reading ------------------------------------------------------------------------------------------
def read_image(path: str | Path):
    """The image as an RGB PIL image (decoded now, so a broken file fails here)."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image.convert("RGB")


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


def load_images(spec: str, config) -> tuple[pd.DataFrame, dict]:
    """One table (path, label, where) for a folder of class folders or a table of paths."""
    from tunesmith.runs import sha256_file

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
        from tunesmith.data.load import read_table

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

    def resize(self, image):
        from PIL import Image

        image = image.resize((self.width, self.height), Image.BILINEAR)
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
@dataclass
class ImageClassificationTask(TextClassificationTask):
    """Single-label classification of images: the text classifier's labels, loss, metrics and
    reports, with its own data, preprocessing, batches and model."""

    augment: Any = None
    image_size: int | None = None
    processor: ImagePreprocessor | None = None
    own_data = True
    kind = "image_classification"
    stages = frozenset({"evaluate", "predict", "tune", "export"})
    peft_task_type = None
    card = {"title": "Image classifier", "auto_class": "AutoModelForImageClassification",
            "purpose": "It assigns one label to each image."}  # fmt: skip

    def load(self, spec: str, data_config) -> tuple[pd.DataFrame, dict]:
        return load_images(spec, data_config)

    def fit(self, train: pd.DataFrame) -> None:
        self.fit_labels(train["label"], "the training images")

    def load_processor(self, location: str | Path, *, trained: bool = False) -> ImagePreprocessor:
        """The backbone's preprocessing (at data.image_size when set), or a trained model's as saved."""
        processor = ImagePreprocessor.from_pretrained(location)
        self.processor = processor if trained else processor.with_size(self.image_size)
        return self.processor

    def encode_frame(self, processor, frame: pd.DataFrame, max_length: int, *, split: str = "test"):
        targets = self.encode(frame["label"], f"the {split} images")
        augment = split == "train" and self.augment is not None and self.augment.active
        return [{"path": p, "labels": t, "augment": augment} for p, t in zip(frame["path"], targets)], 0

    def load_model(self, resolved, dropout: float | None):
        from transformers import AutoModelForImageClassification

        import tunesmith.models.efficientnet  # noqa: F401 (registers the packaged backbone)
        from tunesmith.models.load import _load_with_head

        return _load_with_head(AutoModelForImageClassification, resolved, label_names=self.label_names,
                               dropout=dropout)  # fmt: skip

    # What the loop calls.
    def pixels(self, features: list[dict]) -> torch.Tensor:
        tensors = []
        for f in features:
            image = f["image"] if "image" in f else read_image(f["path"])  # predict decodes up front
            if f.get("augment"):
                image = augment_image(image, self.augment)
            tensors.append(self.processor.tensor(image))
        return torch.stack(tensors)

    def collate(self, features: list[dict], pad_token_id: int) -> dict:
        return {"pixel_values": self.pixels(features), "labels": torch.tensor([f["labels"] for f in features]),
                "num_examples": len(features), "num_tokens": 0}  # fmt: skip

    def batch_loss(self, model, batch: dict, device) -> torch.Tensor:
        if model.training:
            keep_frozen_statistics(model)
        logits = model(pixel_values=batch["pixel_values"].to(device)).logits
        return self.loss(logits.float(), batch["labels"].to(device))

    @torch.no_grad()
    def logits(self, model, features: list[dict], *, batch_size: int, device) -> np.ndarray:
        was_training = model.training
        model.eval()
        out = np.empty((len(features), len(self.label_names)), dtype=np.float32)
        for start in range(0, len(features), batch_size):
            chunk = [dict(f, augment=False) for f in features[start : start + batch_size]]
            out[start : start + len(chunk)] = model(pixel_values=self.pixels(chunk).to(device)).logits.float().cpu()
        model.train(was_training)
        return out

    def evaluate(self, model, features: list[dict], *, batch_size: int, pad_token_id: int, device,
                 frame: pd.DataFrame | None = None) -> dict[str, Any]:  # fmt: skip
        logits = self.logits(model, features, batch_size=batch_size, device=device)
        return self.scores(logits, np.asarray([f["labels"] for f in features]))

    def predict_inputs(self, model, processor, inputs: list, max_length: int, *, pad_token_id: int,
                temperature: float | None = None) -> list[dict]:  # fmt: skip
        """Labels and scores for image files, or every image in the folders given."""
        paths = []
        for value in inputs:
            path = Path(str(value))
            if path.is_dir():
                paths += sorted(p for p in path.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
            elif path.is_file():
                paths.append(path)
            else:
                raise TunesmithError(f"{path}: no such image file or folder")
        rows, features = [], []
        for path in paths:
            try:
                features.append({"path": str(path), "image": read_image(path), "labels": 0, "augment": False})
            except Exception as error:  # noqa: BLE001 (reported per file, the rest still predicted)
                rows.append({"path": str(path), "error": f"unreadable image: {error}"})
        logits = self.logits(model, features, batch_size=32, device="cpu") if features else np.empty((0, 0))
        found = self.prediction_rows(logits, temperature) if features else []
        return [{"path": f["path"], **row} for f, row in zip(features, found)] + rows

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

    def overlap_inputs(self, frame: pd.DataFrame) -> list[str]:
        """Each image's content hash: the same picture under two names is the same input."""
        from tunesmith.runs import sha256_file

        return [sha256_file(Path(p)) for p in frame["path"]]

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "label_names": self.label_names, "image_size": self.image_size}
