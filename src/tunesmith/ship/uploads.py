"""How a request to ``serve`` carries files (images): base64 strings or data URLs in JSON
(``{"images": [...]}``), or the parts of a ``multipart/form-data`` upload. Each file's bytes are
bounded here, before the task decodes them (tasks.contract.Uploadable.decode_upload); a server
never opens a path that a request names.

Multipart bodies are parsed by Starlette's parser (python-multipart underneath), from the body
that ``serve`` has already read within ``max_body_bytes``; base64 by the standard library.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator

from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from tunesmith.ship.http import Refused

FILE_PART = "file"
"""The name of a multipart part that holds a file."""
MAX_OTHER_PARTS = 16
"""Parts that are not files the parser reads before it stops (each is refused by name)."""


def file_label(number: int, name: str = "") -> str:
    """How a request's file is named in errors: "image 2", "image 2 (cat.png)" (its upload name)."""
    return f"image {number}" + (f" ({name})" if name else "")


def json_file(value: str, where: str, max_bytes: int) -> bytes:
    """One file sent in JSON: base64 (whitespace and missing padding allowed), or a data URL
    (``data:image/png;base64,...``).

    Raises:
        Refused: 413 over ``max_bytes`` (told from the length, before decoding); 422 not base64,
            a data URL that is not base64, or no bytes at all; each naming ``where``.
    """
    text = value.strip()
    if text[:5].lower() == "data:":
        header, comma, text = text.partition(",")
        if not comma or not header.lower().endswith(";base64"):
            raise Refused(422, f"{where}: a data URL must be base64-encoded (data:image/png;base64,...)")
    text = "".join(text.split())
    if len(text) // 4 * 3 > max_bytes + 3:  # every 4 characters are 3 bytes: refused before decoding
        raise Refused(413, f"{where} is about {len(text) // 4 * 3:,} bytes; the limit is {max_bytes:,}")
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise Refused(422, f"{where}: not base64 (send each image file base64-encoded, or as a data URL "
                           "data:image/png;base64,...)") from None  # fmt: skip
    if not data:
        raise Refused(422, f"{where}: empty (no bytes)")
    if len(data) > max_bytes:
        raise Refused(413, f"{where} is {len(data):,} bytes; the limit is {max_bytes:,}")
    return data


def is_multipart(headers: Headers) -> bool:
    """Whether a request says its body is ``multipart/form-data``."""
    return headers.get("content-type", "").lower().startswith("multipart/form-data")


async def multipart_files(headers: Headers, body: bytes, *, max_files: int, max_bytes: int) -> list[tuple[str, bytes]]:
    """The files of a ``multipart/form-data`` body, in order, as (the client's file name, bytes).

    Raises:
        Refused: 413 more than ``max_files`` files, or a file over ``max_bytes``; 422 a malformed
            body, a part that is not a file named ``file``, a part with no bytes, or no file at all.
    """

    async def once() -> AsyncIterator[bytes]:
        yield bytes(body)

    parser = MultiPartParser(headers, once(), max_files=max_files, max_fields=MAX_OTHER_PARTS)
    try:
        form = await parser.parse()
    except MultiPartException as error:
        if error.message.startswith("Too many files"):
            raise Refused(413, f"more than {max_files} files in one request; the limit is {max_files}") from None
        raise Refused(422, f"the multipart body cannot be read: {error.message}") from None
    files = []
    try:
        for number, (name, value) in enumerate(form.multi_items(), 1):
            if not isinstance(value, UploadFile) or name != FILE_PART:
                what = "a file" if isinstance(value, UploadFile) else "not a file"
                raise Refused(422, f"part {number} ({name!r}, {what}): send each image as a file part named "
                                   f"{FILE_PART!r}")  # fmt: skip
            where = file_label(len(files) + 1, value.filename or "")
            if value.size is not None and value.size > max_bytes:
                raise Refused(413, f"{where} is {value.size:,} bytes; the limit is {max_bytes:,}")
            data = await value.read()
            if not data:
                raise Refused(422, f"{where}: empty (no bytes)")
            files.append((value.filename or "", data))
    finally:
        await form.close()
    if not files:
        raise Refused(422, f"no files: send each image as a file part named {FILE_PART!r}")
    return files
