"""The launch form and the job queue's pages: ``GET/POST /launch``, ``GET /jobs`` (and its
table, refreshed every 2 s by htmx), ``POST /jobs/{id}/stop`` (stop a running job, cancel a queued
one) and ``POST /runs/{path}/resume``.

A launch is checked as ``tunesmith train`` would check it, before anything is written: the config
with the project's own models (``config_from_dict``: the CLI's messages), the data paths confined to
the board's folders and found on disk (``locate_source``: the CLI's "Data file not found"), and the
run directory with ``claim_output``. Only then are the config file and the job written.
"""

# No "from __future__ import annotations": FastAPI reads the routes' annotations (Request, imported
# inside router() so that the module imports without fastapi) at run time.
import re
from datetime import datetime
from pathlib import Path
from typing import Any, get_args

import yaml

from tunesmith.board.context import Board, templates
from tunesmith.config import TASK_TYPES, ModelConfig, config_from_dict, config_tree
from tunesmith.errors import TunesmithError

STARTERS = Path(__file__).resolve().parents[1] / "resources" / "starters"
STRATEGIES: tuple[str, ...] = get_args(get_args(ModelConfig.model_fields["strategy"].annotation)[0])
DATA_ROLES = ("train", "validation", "test")
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
FILE_KEYS = ("data.train", "data.validation", "data.test", "forgetting.retain", "forgetting.rehearsal",
             "runtime.deepspeed_config", "model.name")  # fmt: skip
"""The config keys that may name a local file (``model.name``: a local model folder), each confined
to the board's folders before a launch."""
FORM_FIELDS = {  # form field -> (section, key) of the config
    "model": ("model", "name"), "strategy": ("model", "strategy"), "max_length": ("model", "max_length"),
    "learning_rate": ("train", "learning_rate"), "epochs": ("train", "num_epochs"), "batch_size": ("train", "batch_size"),
}  # fmt: skip


class LaunchRefused(TunesmithError):
    """A launch the board will not queue; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def starter(kind: str) -> str:
    """``tunesmith init``'s commented starter config of a task kind ("" when there is none)."""
    path = STARTERS / f"{kind}.yaml"
    return path.read_text(encoding="utf-8") if kind in TASK_TYPES and path.is_file() else ""


def form_tree(form: dict[str, str]) -> dict[str, Any]:
    """The nested config of the launch form's fields; an empty field keeps the config default.
    Values are read as YAML (as ``--set`` reads them), so the config models judge ``-1`` or ``abc``."""
    tree: dict[str, Any] = {"task": {"type": form.get("task") or "single_label"}, "data": {}}
    for role in DATA_ROLES:
        if (form.get(role) or "").strip():
            tree["data"][role] = form[role].strip()
    for field, (section, key) in FORM_FIELDS.items():
        raw = (form.get(field) or "").strip()
        if raw:
            value = raw if key in ("name", "strategy") else _scalar(raw)
            tree.setdefault(section, {})[key] = value
    return tree


def _scalar(raw: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def yaml_tree(text: str, source: str) -> dict[str, Any]:
    """The config in pasted or uploaded YAML, refused as ``load_config`` refuses a file."""
    try:
        return config_tree(text, source)
    except TunesmithError as error:
        raise LaunchRefused(str(error)) from None


def confine_data(board: Board, tree: dict[str, Any]) -> None:
    """Replaces each local file that ``tree`` names (``FILE_KEYS``) by its absolute path inside the
    board's folders, so a launch reads no file the browser could not name.

    ``hf:`` ids name no local file; ``package:`` paths lie inside an installed package (``..`` refused,
    and ``locate_source`` refuses any other way out); a ``model.name`` that is no local path is a Hub
    id or a packaged model.

    Raises:
        LaunchRefused: a path lies outside the allowed folders.
    """
    for key in FILE_KEYS:
        section_name, name = key.split(".")
        section = tree.get(section_name)
        spec = section.get(name) if isinstance(section, dict) else None
        if not isinstance(spec, str) or spec.startswith("hf:"):
            continue  # another type is the config models' to refuse
        if spec.startswith("package:"):
            if ".." in Path(spec.removeprefix("package:")).parts:
                raise LaunchRefused(f"{key}: {spec!r} leaves its package ('..' is not allowed)")
            continue
        try:
            section[name] = board.confine_model(spec, key) if key == "model.name" else str(board.confine(spec, key))
        except TunesmithError as error:
            raise LaunchRefused(str(error)) from None


def check_data(config) -> None:
    """Each local data file of a validated config exists (the CLI's own "Data file not found")."""
    from tunesmith.data.load import locate_source

    for role in DATA_ROLES:
        spec = getattr(config.data, role)
        if spec is not None and not spec.startswith("hf:"):
            try:
                locate_source(spec)
            except TunesmithError as error:
                raise LaunchRefused(f"data.{role}: {error}") from None


def run_dir_for(board: Board, name: str, tree: dict[str, Any]) -> Path:
    """The new run directory: ``runs_dir/NAME`` (the form's run name, else the name of the config's
    runtime.output_dir, else a timestamp), refused when it exists or a job already goes there."""
    from tunesmith.runs import claim_output, unused_path

    runtime = tree.get("runtime")
    given = runtime.get("output_dir") if isinstance(runtime, dict) else None
    name = (name or "").strip() or (Path(str(given)).name if given else "")
    if not name:
        return unused_path(board.runs_dir / datetime.now().strftime("%Y%m%d-%H%M%S"))
    if not RUN_NAME.fullmatch(name):
        raise LaunchRefused(f"run name {name!r}: use letters, digits, '.', '_' and '-' (starting with a letter "
                            "or digit), at most 100 characters")  # fmt: skip
    path = board.runs_dir / name
    try:
        claim_output(path, kind="dir", what="run name", run=True)
    except TunesmithError as error:
        raise LaunchRefused(str(error), 409) from None
    return path


def prepare_launch(board: Board, tree: dict[str, Any], name: str, source: str) -> tuple[str, Path]:
    """The YAML to train and the run directory of a launch, every check passed; nothing written.

    Raises:
        LaunchRefused: the config, a data path or the run name is refused (the message says why).
    """
    confine_data(board, tree)
    run = run_dir_for(board, name, tree)
    runtime = {} if tree.get("runtime") is None else tree["runtime"]
    if isinstance(runtime, dict):  # the board chooses where runs go; another type is the models' to refuse
        tree["runtime"] = {**runtime, "output_dir": str(run)}
    try:
        config = config_from_dict(tree, source)
    except TunesmithError as error:
        raise LaunchRefused(str(error)) from None
    check_data(config)
    return yaml.safe_dump(tree, sort_keys=False, allow_unicode=True), run


async def _read_upload(upload, limit: int) -> bytes:
    """An uploaded file's bytes, refused (413) past ``limit`` without reading the rest."""
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise LaunchRefused(f"{upload.filename or 'the upload'} is larger than the board accepts ({limit} bytes; "
                            "tunesmith board --max-upload-bytes raises it)", 413)  # fmt: skip
    return data


async def launch_tree(board: Board, form) -> tuple[dict[str, Any], str]:
    """The config tree a launch request carries and where it came from (for the messages):
    the form's fields, the pasted YAML, or an uploaded .yaml file (which wins over the paste)."""
    limit = board.max_upload_bytes
    upload = form.get("config_file")
    if upload is not None and not isinstance(upload, str) and upload.filename:
        raw = await _read_upload(upload, limit)
        try:
            return yaml_tree(raw.decode("utf-8"), upload.filename), upload.filename
        except UnicodeDecodeError:
            raise LaunchRefused(f"{upload.filename} is not UTF-8 text") from None
    if form.get("source") == "yaml":
        text = str(form.get("config_yaml") or "")
        if len(text.encode("utf-8")) > limit:
            raise LaunchRefused(f"the pasted config is larger than the board accepts ({limit} bytes)", 413)
        return yaml_tree(text, "the pasted config"), "the pasted config"
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    return form_tree(fields), "the launch form"


def router(board: Board):
    """The launch form and job pages over ``board`` (its runs folder and job queue)."""
    from fastapi import APIRouter

    api = APIRouter()
    _launch_routes(api, board)
    _job_routes(api, board)
    return api


def page(name: str, status: int = 200, **values):
    """The HTML response of template ``name`` rendered with ``values``."""
    from fastapi.responses import HTMLResponse

    return HTMLResponse(templates().get_template(name).render(**values), status_code=status)


def message(text: str, status: int, element: str, css: str = "error"):
    """A one-line message fragment for the page element ``element``."""
    return page("message_fragment.html", status, element=element, css=css, text=text)


def jobs_values(board: Board) -> dict[str, Any]:
    """The job table's rows: each job, its run's path under the runs folder and whether it may resume."""
    from tunesmith.runs import RunDir

    rows = []
    for job in board.jobs.jobs():
        run = RunDir(job.run_dir)
        resumable = (job.state in ("stopped", "failed") and not run.finished and run.has_checkpoint()
                     and board.jobs.active_for(run.path) is None)  # fmt: skip
        try:  # the run's path under the runs folder, as the run pages name it (a resumed run may be nested)
            path = run.path.resolve().relative_to(board.runs_dir.resolve()).as_posix()
        except ValueError:
            path = job.run_name
        rows.append({"job": job, "path": path, "resumable": resumable, "exists": run.path.is_dir()})
    return {"rows": rows}


def _launch_routes(api, board: Board) -> None:
    """``GET /launch``, ``GET /launch/starter`` and ``POST /launch`` on ``api``."""
    from fastapi import Request
    from fastapi.responses import HTMLResponse, RedirectResponse
    from starlette.exceptions import HTTPException  # what Request.form raises (fastapi's is a subclass)

    @api.get("/launch", response_class=HTMLResponse)
    def launch_page(task: str = "single_label"):
        kind = task if task in TASK_TYPES else "single_label"
        return page("launch.html", kinds=TASK_TYPES, strategies=STRATEGIES, kind=kind, starter=starter(kind),
                    max_upload_bytes=board.max_upload_bytes)  # fmt: skip

    @api.get("/launch/starter", response_class=HTMLResponse)
    def starter_fragment(task: str = "single_label"):
        return page("launch_yaml.html", starter=starter(task))

    @api.post("/launch")
    async def launch(request: Request):
        try:  # a pasted config is one form field: the upload limit is its limit too
            form = await request.form(max_part_size=board.max_upload_bytes + 1)
        except HTTPException as error:  # starlette's answer to a malformed form or a field over the limit
            status = 413 if "exceeded maximum size" in str(error.detail) else error.status_code
            return message(f"the form was refused: {error.detail} (the board's limit: {board.max_upload_bytes} "
                           "bytes; tunesmith board --max-upload-bytes raises it)", status, "launch-error")  # fmt: skip
        try:
            tree, source = await launch_tree(board, form)
            text, run = prepare_launch(board, tree, str(form.get("run_name") or ""), source)
            job = board.jobs.submit_train(text, run)
        except LaunchRefused as error:
            return message(str(error), error.status, "launch-error")
        except TunesmithError as error:  # e.g. a job of this board already goes to that run
            return message(str(error), 409, "launch-error")
        target = f"/jobs#job-{job.id}"
        if request.headers.get("hx-request"):
            return HTMLResponse("", headers={"HX-Redirect": target})
        return RedirectResponse(target, status_code=303)


def _job_routes(api, board: Board) -> None:
    """``GET /jobs`` (and its table), ``POST /jobs/{id}/stop`` and ``POST /runs/{path}/resume`` on ``api``."""
    from fastapi import Request
    from fastapi.responses import HTMLResponse

    @api.get("/jobs", response_class=HTMLResponse)
    def jobs_page():
        return page("jobs.html", **jobs_values(board))

    @api.get("/jobs/table", response_class=HTMLResponse)
    def jobs_table():
        return page("jobs_table.html", **jobs_values(board))

    @api.post("/jobs/{job_id}/stop", response_class=HTMLResponse)
    def stop(job_id: str, request: Request):
        try:
            job = board.jobs.stop(job_id)
        except KeyError:
            return message(f"no job {job_id}", 404, "jobs-message")
        except TunesmithError as error:
            return message(str(error), 409, "jobs-message")
        done = "cancelled" if job.state == "cancelled" else "is stopping (it keeps its last checkpoint)"
        return message(f"job {job.id} {done}", 200, "jobs-message", "ok")

    @api.post("/runs/{path:path}/resume", response_class=HTMLResponse)
    def resume(path: str, request: Request):
        root = board.runs_dir.resolve()
        run = (root / path).resolve()
        if root not in run.parents:
            return message(f"{path!r} is not a run inside {root}", 404, "jobs-message")
        try:
            job = board.jobs.submit_resume(run)
        except TunesmithError as error:
            return message(str(error), 409, "jobs-message")
        return message(f"job {job.id} queued: resume {job.run_name}", 200, "jobs-message", "ok")
