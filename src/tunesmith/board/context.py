"""What every board page shares: the folders it may read, the API key, the job queue, and the one
function that turns a path from the browser into a path on disk (or refuses it)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tunesmith.errors import TunesmithError

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]", "::1")
TEMPLATES = Path(__file__).resolve().parents[1] / "resources" / "board" / "templates"


@functools.cache
def templates():
    """The board's jinja2 environment (autoescaped HTML), made once so each template compiles once."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    return Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))


@dataclass
class Board:
    """The board's state, built once by ``create_app`` and handed to every router.

    Attributes:
        runs_dir: the folder whose run directories the board lists (and where launched runs go).
        data_dirs: folders whose files the browser may name as data (besides ``runs_dir``).
        api_key: required on every request when set (binding beyond loopback requires one).
        max_upload_bytes: the largest upload (a YAML config, a data file, an image) accepted.
        jobs: the job queue (``board.jobs.JobQueue``), set by ``create_app``.
        hosts: the ``Host`` names answered without an API key (any port): loopback names plus the
            host the board binds, so a page whose name an attacker re-points at 127.0.0.1 (DNS
            rebinding) is refused.
    """

    runs_dir: Path
    data_dirs: list[Path] = field(default_factory=list)
    api_key: str | None = None
    max_upload_bytes: int = 10 * 1024 * 1024
    jobs: Any = None
    hosts: list[str] = field(default_factory=lambda: list(LOOPBACK_HOSTS))

    @property
    def roots(self) -> list[Path]:
        """Every folder a browser-given path may point into."""
        return [self.runs_dir.resolve(), *(d.resolve() for d in self.data_dirs)]

    def confine(self, given: str, what: str = "path") -> Path:
        """The file ``given`` names, resolved inside one of ``roots``.

        A relative path is taken relative to each root in turn (runs folder first); an absolute
        one must already lie inside a root. ``..`` and symlinks are resolved first, so neither
        can lead outside.

        Raises:
            TunesmithError: the path is empty or lies outside every allowed folder.
        """
        text = (given or "").strip()
        if not text:
            raise TunesmithError(f"{what}: empty; give a path inside {self._roots_text()}")
        path = Path(text)
        candidates = [path] if path.is_absolute() else [root / path for root in self.roots]
        inside = [c.resolve() for c in candidates if self._inside(c.resolve())]
        if not inside:
            raise TunesmithError(f"{what}: {text!r} is outside the allowed folders ({self._roots_text()})")
        return next((c for c in inside if c.exists()), inside[0])

    def confine_model(self, name: str, what: str = "model.name") -> str:
        """``name`` itself when it is a Hub id or a packaged model's name, else the local model
        folder it names, confined as ``confine`` confines a path.

        Raises:
            TunesmithError: a local path outside the allowed folders, or one that names nothing in them.
        """
        local = Path(name).expanduser()
        looks_local = name.startswith((".", "~")) or local.is_absolute() or local.exists()
        try:
            path = self.confine(name, what)
        except TunesmithError:
            if looks_local:
                raise
            return name  # e.g. "../x" is no Hub id, but it names nothing here: loading it says so
        if path.exists():
            return str(path)
        if looks_local:
            raise TunesmithError(f"{what}: {name!r} is no model folder in the allowed folders ({self._roots_text()})")
        return name

    def _inside(self, resolved: Path) -> bool:
        return any(resolved == root or root in resolved.parents for root in self.roots)

    def _roots_text(self) -> str:
        return ", ".join(str(r) for r in self.roots)


def cross_site(headers) -> str | None:
    """Why a state-changing request seems to come from another site's page (None: it does not).

    A page elsewhere may post a form to the board on localhost (no preflight for a plain form);
    browsers say where a request comes from (``Origin``, ``Sec-Fetch-Site``), other clients send neither.
    """
    origin = headers.get("origin")
    if origin == "null":  # a sandboxed frame, a file: page or a redirect: no site vouches for it
        return "a request from an opaque origin (Origin: null) may not change anything on this board"
    if origin and urlsplit(origin).netloc != headers.get("host"):
        return f"a request from {origin} (another site) may not change anything on this board"
    if headers.get("sec-fetch-site") == "cross-site":
        return "a request from another site may not change anything on this board"
    return None
