"""Serving an image classifier: images arrive as bytes (base64 or data URLs in JSON, or multipart
file parts), never as paths the server would open; each is bounded (bytes, pixels, batch, body)
before it is decoded; a bad one gets 413 or 422 naming it, and the server goes on serving. The
answers are those of ``tunesmith predict`` on the same files, from the run and from its ONNX export.

One tiny CNN run (module-scoped) serves every test."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import tunesmith
from tests.makers import image_folder, stripes, tiny_task_config
from tunesmith.ship.serve import create_app

LIMITS = {"max_batch": 4, "max_body_bytes": 200_000, "max_upload_bytes": 50_000, "max_pixels": 1_000_000}


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, tiny_cnn_dir) -> dict:
    """A trained tiny CNN run (one epoch on 12 stripe images) and three image files to send: a
    grey PNG, an RGB PNG and a JPEG."""
    root = tmp_path_factory.mktemp("serve-image")
    images = image_folder(root / "images", 6)
    config = tiny_task_config("image_classification", tiny_cnn_dir, images, root / "run")
    config["train"].update(num_epochs=1)
    run = tunesmith.train(config).run_dir
    jpeg = root / "photo.jpg"
    stripes(False, seed=5, size=40).save(jpeg, quality=90)
    files = [images / "horizontal" / "0.png", images / "vertical" / "1.png", jpeg]
    return {"run": run, "root": root, "files": files}


@pytest.fixture(scope="module")
def client(image_run):
    with TestClient(create_app(image_run["run"], **LIMITS)) as client:
        yield client


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height but holds almost no pixel data: refused from its header
    it costs nothing; decoding it would fail (truncated)."""
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + _chunk(b"IDAT", zlib.compress(b"\0" * 10)) + _chunk(b"IEND", b"")


def predicted(run: Path, files: list[Path]) -> list[dict]:
    """``tunesmith predict`` on the files, without the path (a served upload has none)."""
    return [{k: v for k, v in row.items() if k != "path"} for row in tunesmith.predict(run, [str(f) for f in files])]


def same_answers(served: list[dict], expected: list[dict]) -> None:
    assert [r["label"] for r in served] == [r["label"] for r in expected], (served, expected)
    for got, want in zip(served, expected):
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-5)


def test_base64_and_data_urls_answer_as_tunesmith_predict(client, image_run):
    files = image_run["files"]
    sent = [b64(files[0].read_bytes()), "data:image/png;base64," + b64(files[1].read_bytes()),
            # MIME-style base64 (line breaks every 76 characters) is taken as well
            "\n".join(b64(files[2].read_bytes())[i : i + 76] for i in range(0, 10_000, 76))]  # fmt: skip
    response = client.post("/predict", json={"images": sent})
    assert response.status_code == 200, response.text
    rows = response.json()["predictions"]
    assert all("path" not in row for row in rows)
    same_answers(rows, predicted(image_run["run"], files))


def test_multipart_uploads_answer_as_tunesmith_predict_and_name_each_file(client, image_run):
    files = image_run["files"]
    parts = [("file", (f.name, f.read_bytes(), "application/octet-stream")) for f in files]
    response = client.post("/predict/upload", files=parts)
    assert response.status_code == 200, response.text
    rows = response.json()["predictions"]
    assert [row["file"] for row in rows] == ["0.png", "1.png", "photo.jpg"]
    same_answers(rows, predicted(image_run["run"], files))


def test_metadata_says_the_request_form_and_limits(client):
    request = client.get("/metadata").json()["request"]
    assert set(request["fields"]) == {"images", "file"} and request["upload"].startswith("POST /predict/upload")
    assert "PNG" in request["formats"] and "JPEG" in request["formats"]
    assert request["limits"] == {"max_batch": 4, "max_body_bytes": 200_000, "max_upload_bytes": 50_000,
                                 "max_pixels": 1_000_000}  # fmt: skip


PNG = b64(stripes(True, seed=1).save(buffer := io.BytesIO(), format="PNG") or buffer.getvalue())
TRUNCATED = b64(base64.b64decode(PNG)[:60])
BAD_JSON = [  # (case, body, status, what the detail says)
    ("not-base64", {"images": [PNG, "not*base64!"]}, 422, "image 2: not base64"),
    ("not-an-image", {"images": [b64(b"hello, this is text")]}, 422, "image 1: not an image"),
    ("truncated", {"images": [PNG, TRUNCATED]}, 422, "image 2: the image cannot be decoded"),
    ("data-url-not-base64", {"images": ["data:image/png,abc"]}, 422, "image 1: a data URL must be base64"),
    ("empty", {"images": [""]}, 422, "image 1: empty"),
    ("too-many-pixels", {"images": [b64(png_header(2000, 1000))]}, 413,
     "image 1 is 2000 x 1000 = 2,000,000 pixels; the limit is 1,000,000"),
    ("decompression-bomb", {"images": [PNG, b64(png_header(30_000, 30_000))]}, 413, "image 2: Image size"),
    ("file-too-big", {"images": [b64(b"\0" * 60_000)]}, 413, "image 1 is about 60,000 bytes; the limit is 50,000"),
    ("body-too-big", {"images": [b64(b"\0" * 160_000)]}, 413, "the body is"),
    ("too-many-images", {"images": [PNG] * 5}, 413, "5 images in one request; the limit is 4"),
    ("texts", {"texts": ["a picture of stripes"]}, 422, "takes images, not 'texts'"),
    ("a-path", {"inputs": ["/etc/passwd"]}, 422, "a server never opens a path"),
    ("a-path-as-an-image", {"images": ["/etc/passwd"]}, 422, "image 1: not an image"),
    ("two-fields", {"images": [PNG], "texts": ["a"]}, 422, "exactly one of"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status", "detail"), [c[1:] for c in BAD_JSON], ids=[c[0] for c in BAD_JSON])
def test_a_bad_image_request_is_refused_naming_the_image_and_the_server_goes_on(client, body, status, detail):
    response = client.post("/predict", json=body)
    assert response.status_code == status, response.text
    assert detail in json.dumps(response.json()["detail"]), response.text
    assert "No such file" not in response.text
    assert client.post("/predict", json={"images": [PNG]}).status_code == 200  # still serving


PNG_BYTES = base64.b64decode(PNG)
BAD_UPLOADS = [  # (case, request options, status, what the detail says)
    ("not-an-image", {"files": [("file", ("a.png", PNG_BYTES)), ("file", ("notes.txt", b"just text"))]}, 422,
     "image 2 (notes.txt): not an image"),
    ("empty-file", {"files": [("file", ("empty.png", b""))]}, 422, "image 1 (empty.png): empty"),
    ("too-many-pixels", {"files": [("file", ("huge.png", png_header(2000, 1000)))]}, 413,
     "image 1 (huge.png) is 2000 x 1000 = 2,000,000 pixels"),
    ("file-too-big", {"files": [("file", ("big.png", b"\0" * 60_000))]}, 413, "image 1 (big.png) is 60,000 bytes"),
    ("too-many-files", {"files": [("file", (f"{i}.png", PNG_BYTES)) for i in range(5)]}, 413,
     "more than 4 files in one request"),
    ("a-text-field", {"data": {"file": "/etc/passwd"}, "files": [("other", ("a.png", PNG_BYTES))]}, 422,
     "part 1 ('file', not a file)"),
    ("wrong-part-name", {"files": [("image", ("a.png", PNG_BYTES))]}, 422, "part 1 ('image', a file)"),
    ("json", {"json": {"images": [PNG]}}, 415, "send multipart/form-data"),
    ("no-boundary", {"content": b"--x--", "headers": {"Content-Type": "multipart/form-data"}}, 422,
     "the multipart body cannot be read"),
]  # fmt: skip


@pytest.mark.parametrize(("options", "status", "detail"), [c[1:] for c in BAD_UPLOADS], ids=[c[0] for c in BAD_UPLOADS])
def test_a_bad_upload_is_refused_naming_the_file_and_the_server_goes_on(client, options, status, detail):
    response = client.post("/predict/upload", **options)
    assert response.status_code == status, response.text
    assert detail in response.json()["detail"], response.text
    assert client.post("/predict/upload", files=[("file", ("ok.png", PNG_BYTES))]).status_code == 200


def test_the_onnx_export_serves_uploads_as_the_run_does_and_logs_them(image_run, client, tmp_path):
    from tunesmith.ship.export import export

    export(image_run["run"], tmp_path / "onnx", fmt="onnx", rows=4, log=lambda m: None)
    files = image_run["files"]
    sent = {"images": [b64(f.read_bytes()) for f in files]}
    log = tmp_path / "predictions.jsonl"
    with TestClient(create_app(tmp_path / "onnx", log_path=log)) as onnx:
        assert onnx.get("/metadata").json()["backend"].startswith("onnxruntime")
        response = onnx.post("/predict", json=sent)
        assert onnx.post("/predict", json={"images": ["%%%"]}).status_code == 422
    assert response.status_code == 200, response.text
    rows = response.json()["predictions"]
    assert [r["label"] for r in rows] == [r["label"] for r in client.post("/predict", json=sent).json()["predictions"]]
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert [entry["label"] for entry in logged] == [r["label"] for r in rows] and logged[0]["input"] == "<Image>"
