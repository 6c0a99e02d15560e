"""The runs pages: ``GET /`` (every run, sortable and filterable, its table refreshed every 3 s
from ``GET /runs/table``), ``GET /runs/{path}`` (one run: live curves over server-sent events,
progress, log tail; when finished its report, plots and predictions worst first) and
``GET /compare?run=A&run=B`` (``evaluate.html.comparison``: scores, paired differences, config
differences, validation curves, and a warning for runs scored on different data).

A run's sub-pages hang under its path: ``/runs/{path}/events`` (metrics.jsonl as server-sent
events from byte ``?offset=`` or ``Last-Event-ID``), ``/progress``, ``/log``, ``/results``,
``/report`` (its report.html), ``/predictions?split=&page=``, ``/files/{image}`` (its plots).
Paths are confined to the runs folder: no ``..``, no absolute path, no symlink leading out; the
board only reads run directories.
"""

# No "from __future__ import annotations": FastAPI reads the routes' annotations (Request, imported
# inside router() so that the module imports without fastapi) at run time.
import math
from pathlib import Path
from typing import Any

from tunesmith.board import run_view
from tunesmith.board.context import Board, templates
from tunesmith.board.runs_index import (
    STATUSES,
    RunsIndex,
    duration_text,
    filter_rows,
    read_mapping,
    run_status,
    sort_rows,
)
from tunesmith.errors import TunesmithError
from tunesmith.evaluate.html import COMPARED, comparison
from tunesmith.evaluate.predictions import predictions_path
from tunesmith.runs import is_run_dir

SORT_KEYS = ("path", "task", "model", "strategy", "data", "status", "duration", "validation", "test", "started")
SUB_PAGES = ("events", "progress", "log", "results", "report", "predictions", "files")


def locate(root: Path, given: str) -> tuple[Path, list[str]]:
    """The run directory a URL path names (inside ``root``) and what follows it (a sub-page).

    Raises:
        LookupError: the path leaves ``root`` (``..``, absolute, a symlink out) or names no run.
    """
    text = given.strip()
    parts = text.strip("/").split("/")
    if text.startswith("/") or "\\" in text or any(p in ("", ".", "..") for p in parts):
        raise LookupError(f"{given!r} is not a path inside the runs folder {root} (no '..', no absolute path)")
    for cut in range(len(parts), 0, -1):
        candidate = root.joinpath(*parts[:cut])
        if not is_run_dir(candidate):
            continue
        resolved = candidate.resolve()
        if resolved != root and root not in resolved.parents:
            raise LookupError(f"{given!r} leads outside the runs folder {root} (a symbolic link)")
        if cut == len(parts) or parts[cut] in SUB_PAGES:
            return candidate, parts[cut:]
    raise LookupError(f"no run directory {given!r} in the runs folder {root}")


def score_text(score: Any) -> str:
    """``0.8123 (0.7900–0.8350)``, the value alone without an interval, "" without a score."""
    if score is None or score.value is None or math.isnan(score.value):
        return ""
    if score.low is None or score.high is None:
        return f"{score.value:.4f}"
    return f"{score.value:.4f} ({score.low:.4f}–{score.high:.4f})"


def job_states(board: Board) -> dict[Path, str]:
    """The state of the newest board job of each run directory (jobs are listed newest first)."""
    states: dict[Path, str] = {}
    for job in board.jobs.jobs() if hasattr(board.jobs, "jobs") else []:
        states.setdefault(Path(job.run_dir).resolve(), job.state)
    return states


def table_values(index: RunsIndex, board: Board, q: str, status: str, sort: str, desc: bool) -> dict[str, Any]:
    """What runs.html and its table fragment render."""
    everything = index.rows(job_states(board))
    sort = sort if sort in SORT_KEYS else "started"
    rows = sort_rows(filter_rows(everything, q, status if status in STATUSES else ""), sort, desc)
    return {"rows": rows, "total": len(everything), "q": q, "status": status, "sort": sort, "desc": desc,
            "statuses": STATUSES, "columns": SORT_KEYS[:-1], "score_text": score_text,
            "duration_text": duration_text}  # fmt: skip


def compare_values(index: RunsIndex, picked: list[str]) -> dict[str, Any]:
    """What compare.html renders for the runs ``picked`` (paths inside the runs folder)."""
    root = index.root
    choices = [row["summary"].path for row in sort_rows(index.rows(), "path", False) if row["status"] == "finished"]
    values: dict[str, Any] = {"choices": choices, "picked": picked, "report": None, "error": None, "curves": []}
    if len(picked) < 2:
        return values
    runs = []
    for given in picked:
        run, rest = locate(root, given)
        if rest:
            raise LookupError(f"no run directory {given!r} in the runs folder {root}")
        runs.append(run)
    try:
        report = comparison(runs)
    except TunesmithError as error:
        return values | {"error": str(error)}
    label = {str(run): name for run, name in zip(runs, picked)}
    warnings = []
    for warning in report["warnings"]:  # they name runs by their paths on disk; the page by their names
        for path, name in sorted(label.items(), key=lambda item: -len(item[0])):
            warning = warning.replace(path, name)
        warnings.append(warning)
    columns = [k for k in COMPARED if any(k in row for row in report["scores"])]
    curves = []
    for run, name in zip(runs, picked):
        metric = read_mapping(run / "metrics.json").get("training", {}).get("metric") or ""
        curves.append({"name": name, "metric": metric, "points": run_view.validation_curve(run, metric)})
    return values | {"report": report, "label": label, "columns": columns, "curves": curves, "warnings": warnings}


def run_values(board: Board, index: RunsIndex, run: Path) -> dict[str, Any]:
    """What run.html renders for one run."""
    summary = index.summary(run)
    status = run_status(run, job=job_states(board).get(run.resolve()))
    return {"summary": summary, "status": status, "progress": run_view.progress(run, status),
            "score_text": score_text, "duration_text": duration_text, "results": results_values(run, status)}  # fmt: skip


def results_values(run: Path, status: str) -> dict[str, Any]:
    """What the finished part of a run's page shows: its report, plots and predictions."""
    splits = [s for s in ("test", "validation") if predictions_path(run, s).is_file()]
    return {"finished": status == "finished", "report": (run / "report.html").is_file(),
            "plots": run_view.plots(run), "splits": splits}  # fmt: skip


def predictions_values(run: Path, split: str, page: int) -> dict[str, Any]:
    """One page (``PAGE_ROWS`` rows) of a split's predictions, the mistakes first."""
    if not predictions_path(run, split).is_file():
        raise LookupError(f"the run has no predictions_{split}.parquet")
    rows, metric = run_view.worst_first(run, split)
    pages = max(1, math.ceil(len(rows) / run_view.PAGE_ROWS))
    page = min(max(1, page), pages)
    shown = rows[(page - 1) * run_view.PAGE_ROWS : page * run_view.PAGE_ROWS]
    return {"rows": shown, "metric": metric, "page": page, "pages": pages, "split": split, "count": len(rows),
            "wrong": sum(bool(r.get("wrong")) for r in rows)}  # fmt: skip


def router(board: Board):
    """The runs pages' router (see the module docstring)."""
    from fastapi import APIRouter, HTTPException, Query, Request
    from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, StreamingResponse

    index = RunsIndex(board.runs_dir)
    routes = APIRouter()
    pages = templates()

    def render(name: str, code: int = 200, **values) -> HTMLResponse:
        return HTMLResponse(pages.get_template(name).render(**values), status_code=code)

    @routes.get("/", response_class=HTMLResponse)
    def runs_page(q: str = "", status: str = "", sort: str = "started", desc: bool = True):
        return render("runs.html", **table_values(index, board, q, status, sort, desc))

    @routes.get("/runs/table", response_class=HTMLResponse)
    def runs_table(q: str = "", status: str = "", sort: str = "started", desc: bool = True):
        return render("runs_table.html", **table_values(index, board, q, status, sort, desc))

    @routes.get("/compare", response_class=HTMLResponse)
    def compare_page(run: list[str] = Query(default=[])):  # noqa: B008 (FastAPI's way to read ?run=A&run=B)
        try:
            values = compare_values(index, run)
        except LookupError as error:
            raise HTTPException(404, str(error)) from None
        return render("compare.html", code=400 if values["error"] else 200, **values)

    @routes.get("/runs/{path:path}")
    def run_pages(path: str, request: Request, offset: int | None = None, split: str = "test", page: int = 1):
        try:
            run, rest = locate(index.root, path)
        except LookupError as error:
            raise HTTPException(404, str(error)) from None
        match rest:
            case []:
                return render("run.html", **run_values(board, index, run))
            case ["events"]:
                last = request.headers.get("last-event-id") or ""
                start = offset if offset is not None else int(last) if last.isdigit() else 0  # junk: from the start
                stream = run_view.metric_events(run, max(0, start), request.is_disconnected)
                return StreamingResponse(stream, media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip
            case ["progress"]:
                values = run_values(board, index, run)
                return render("run_progress.html", **values)
            case ["log"]:
                job_log = board.jobs.log_for(run) if hasattr(board.jobs, "log_for") else None
                logs = [(p.name, run_view.log_tail(p)) for p in run_view.log_files(run, job_log)]
                return render("run_log.html", logs=logs, status=run_status(run), path=index.summary(run).path)
            case ["results"]:
                return render("run_results.html", summary=index.summary(run),
                              results=results_values(run, run_status(run)))  # fmt: skip
            case ["report"] if (run / "report.html").is_file() and not (run / "report.html").is_symlink():
                # A symlink could lead out of the run: never followed (as plots and logs).
                # The report is tunesmith's own self-contained page (inline style, data: images): no scripts.
                return FileResponse(run / "report.html", media_type="text/html", headers={
                    "Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'"})  # fmt: skip
            case ["predictions"]:
                try:
                    values = predictions_values(run, split if split in ("test", "validation") else "test", page)
                except (LookupError, TunesmithError) as error:
                    return PlainTextResponse(str(error), status_code=404)
                return render("run_predictions.html", path=index.summary(run).path, **values)
            case ["files", name] if name in run_view.plots(run):
                return FileResponse(run / name, media_type=run_view.IMAGE_TYPES[Path(name).suffix.lower()])
        raise HTTPException(404, f"{path!r}: the run {index.summary(run).path} has no such page or file")

    return routes
