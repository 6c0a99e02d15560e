"""The board's job queue: training runs launched from the browser, each in its own process.

A job is ``tunesmith train CONFIG`` (the config names the run as its ``runtime.output_dir``) or
``train --resume RUN``, run by the same interpreter as the board, so a crash, an out-of-memory kill or a hung library takes
down that job alone, never the board. At most ``max_running`` jobs run at once (one by default:
a second training run on the same CPU or GPU would only slow both); the rest wait in order.

Everything the queue knows lives under ``RUNS/.board/`` (``jobs/ID.json`` the record,
``jobs/ID.log`` the job's stdout and stderr, ``configs/ID.yaml`` the config the launch form made),
never inside a run directory, so a restarted board shows the same jobs and the runs stay exactly
what ``tunesmith train`` writes. Stop sends SIGINT, which the CLI handles as Ctrl-C: the run keeps
its last checkpoint and can be resumed (or is removed when it had none, as after Ctrl-C); a
process that ignores it for ``STOP_GRACE_S`` gets SIGKILL, which also leaves the last checkpoint.
A job's process carries ``TUNESMITH_BOARD_JOB=1`` so the CLI restores the SIGINT handler even when
the board was started with SIGINT ignored (``tunesmith board &`` from a script), which the job inherits.
A record keeps its process's start time beside its pid: after a reboot the pid may name another
process, which is then neither waited for nor signalled.

Written by hand rather than with a task-queue library (Celery, RQ, arq): those need a broker
process, and this queue has one worker slot on one machine; a thread polling ``Popen`` is enough.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil
import yaml

from tunesmith.errors import TunesmithError
from tunesmith.runs import RunDir, atomic_write

STATES = ("queued", "running", "finished", "failed", "stopped", "cancelled")
ACTIVE = ("queued", "running")
STOP_GRACE_S = 30.0
"""Seconds a stopped job has to leave after SIGINT before it is killed."""
POLL_S = 0.2
JOB_ENV = "TUNESMITH_BOARD_JOB"
"""Set to ``1`` in a job's environment: the CLI then takes SIGINT as Ctrl-C even if it came ignored."""
START_SLACK_S = 1.0
"""How far a pid's start time may differ from the recorded one and still be the job's (clock rounding)."""


@dataclass
class Job:
    """One launched command and what became of it (saved as ``.board/jobs/ID.json``)."""

    id: str
    kind: str  # "train" or "resume"
    run_dir: str
    config: str | None
    state: str = "queued"
    created: str = ""
    started: str | None = None
    ended: str | None = None
    returncode: int | None = None
    error: str | None = None
    pid: int | None = None
    pid_started: float | None = None  # the process's start time (psutil create_time): tells a reused pid
    log: str = ""
    stop_requested: bool = False

    @property
    def run_name(self) -> str:
        return Path(self.run_dir).name


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _started(pid: int) -> float | None:
    """The start time of process ``pid`` (None: no such process, or not ours to read)."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _alive(job: Job) -> bool:
    """Whether the job's process still runs: its pid exists and started when the job's did
    (after a reboot the pid may name an unrelated process)."""
    if not job.pid:
        return False
    started = _started(job.pid)
    if started is None:
        return False
    return job.pid_started is None or abs(started - job.pid_started) <= START_SLACK_S


def last_error_line(log: Path) -> str | None:
    """The job's own one-line reason: the CLI's last ``error:`` line, else the log's last line."""
    try:
        with open(log, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - 16_384))
            lines = [line.strip() for line in handle.read().decode("utf-8", "replace").splitlines() if line.strip()]
    except OSError:
        return None
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or [None])[-1]


class JobQueue:
    """Runs launched jobs one (``max_running``) at a time, in the order they came; thread-safe.

    Args:
        runs_dir: where runs go; the queue keeps its records in ``runs_dir/.board``.
        max_running: how many jobs run at once.
    """

    def __init__(self, runs_dir: str | Path, max_running: int = 1):
        self.runs_dir = Path(runs_dir).resolve()
        self.jobs_dir = self.runs_dir / ".board" / "jobs"
        self.configs_dir = self.runs_dir / ".board" / "configs"
        self.max_running = max_running
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._processes: dict[str, subprocess.Popen] = {}
        self._jobs: dict[str, Job] = self._load()
        self._thread = threading.Thread(target=self._work, name="tunesmith-board-jobs", daemon=True)
        self._thread.start()

    # -- what the pages read

    def jobs(self) -> list[Job]:
        """Every job, newest first."""
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: (j.created, j.id), reverse=True)

    def get(self, job_id: str) -> Job:
        """The job ``job_id``. Raises: KeyError: no such job."""
        with self._lock:
            return self._jobs[job_id]

    def log_for(self, run_dir: str | Path) -> Path | None:
        """The log of the newest job that wrote ``run_dir`` (None: no job of this board did)."""
        target = Path(run_dir).resolve()
        for job in self.jobs():
            if Path(job.run_dir) == target and Path(job.log).is_file():
                return Path(job.log)
        return None

    def active_for(self, run_dir: str | Path) -> Job | None:
        """The queued or running job on ``run_dir``, if any."""
        target = Path(run_dir).resolve()
        return next((j for j in self.jobs() if j.state in ACTIVE and Path(j.run_dir) == target), None)

    # -- what the pages do

    def submit_train(self, config_text: str, run_dir: str | Path) -> Job:
        """Queues ``tunesmith train`` of ``config_text`` (YAML) into the new run directory ``run_dir``.

        ``config_text`` must name ``run_dir`` as its ``runtime.output_dir`` (the config is passed as
        written, never with a ``--set`` that YAML would re-read: a path with `` #`` or ``: `` survives).

        Raises:
            TunesmithError: another job of this board already goes to ``run_dir``, or the config
                names another output directory.
        """
        run = Path(run_dir).resolve()
        try:
            runtime = (yaml.safe_load(config_text) or {}).get("runtime") or {}
        except (yaml.YAMLError, AttributeError):
            runtime = {}
        # The job trains the config as written: a run folder named anywhere else would be lost to the board.
        given = runtime.get("output_dir") if isinstance(runtime, dict) else None
        if not given or Path(str(given)).resolve() != run:
            raise TunesmithError(f"the config's runtime.output_dir must be the job's run directory {run}")
        with self._lock:
            self._refuse_busy(run)
            job = self._new("train", run)
            self.configs_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(self.configs_dir / f"{job.id}.yaml", config_text)
            job.config = str(self.configs_dir / f"{job.id}.yaml")
            return self._enqueue(job)

    def submit_resume(self, run_dir: str | Path) -> Job:
        """Queues ``tunesmith train --resume run_dir``.

        Raises:
            TunesmithError: not a run directory, already finished, without a checkpoint, or busy.
        """
        run = RunDir.open(Path(run_dir).resolve())
        if run.finished:  # api.resume's own words
            raise TunesmithError(f"{run.path} already finished; there is nothing to resume")
        if not run.has_checkpoint():
            raise TunesmithError(f"{run.path} has no complete checkpoint to resume from; start it again instead")
        with self._lock:
            self._refuse_busy(run.path)
            return self._enqueue(self._new("resume", run.path))

    def stop(self, job_id: str) -> Job:
        """Stops a running job (SIGINT: it keeps its last checkpoint) or cancels a queued one.

        Raises:
            KeyError: no such job.
            TunesmithError: the job has already ended.
        """
        with self._lock:
            job = self._jobs[job_id]
            if job.state == "queued":
                job.state, job.ended = "cancelled", _now()
                self._save(job)
                return job
            if job.state != "running":
                raise TunesmithError(f"job {job_id} is {job.state}: there is nothing to stop")
            job.stop_requested = True
            self._save(job)
            self._signal(job, signal.SIGINT)
            timer = threading.Timer(STOP_GRACE_S, self._kill_if_running, args=(job_id,))
            timer.daemon = True  # a board that exits does not wait for it
            timer.start()
            return job

    def wait(self, job_id: str, timeout: float = 120.0) -> Job:
        """Blocks until the job has ended (tests and scripts); returns it."""
        deadline = time.monotonic() + timeout
        while self.get(job_id).state in ACTIVE:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {self.get(job_id).state} after {timeout} s")
            time.sleep(POLL_S / 2)
        return self.get(job_id)

    def close(self) -> None:
        """Stops the queue's thread; running jobs go on (their processes are their own)."""
        self._closed.set()
        self._wake.set()
        self._thread.join(timeout=5)

    # -- inside

    def _new(self, kind: str, run: Path) -> Job:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        job_id = f"{stamp}-{secrets.token_hex(3)}"
        return Job(id=job_id, kind=kind, run_dir=str(run), config=None, created=_now(),
                   log=str(self.jobs_dir / f"{job_id}.log"))  # fmt: skip

    def _refuse_busy(self, run: Path) -> None:
        busy = self.active_for(run)
        if busy is not None:
            raise TunesmithError(f"job {busy.id} is already {busy.state} on {run}; wait for it or stop it first")

    def _enqueue(self, job: Job) -> Job:
        self._jobs[job.id] = job
        self._save(job)
        self._wake.set()
        return job

    def _save(self, job: Job) -> None:
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.jobs_dir / f"{job.id}.json", json.dumps(asdict(job), indent=2) + "\n")

    def _load(self) -> dict[str, Job]:
        """The jobs of an earlier board on this folder; a running one whose process is gone ended
        unwatched: finished if its run did, else stopped (resumable if it reached a checkpoint)."""
        jobs = {}
        for path in sorted(self.jobs_dir.glob("*.json")) if self.jobs_dir.is_dir() else []:
            try:
                job = Job(**json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, TypeError):
                continue  # not a record this queue wrote: leave it alone
            if job.state == "running" and not _alive(job):  # it ended while no board watched
                job.ended = job.ended or _now()
                if RunDir(job.run_dir).finished:
                    job.state = "finished"
                else:
                    job.state = "stopped"
                    job.error = last_error_line(Path(job.log)) or "it ended while the board was not running"
                self._save(job)
            jobs[job.id] = job
        return jobs

    def _work(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(POLL_S)
            self._wake.clear()
            try:
                with self._lock:
                    self._reap()
                    self._start_next()
            except Exception as error:  # noqa: BLE001 - the queue's thread must outlive any one job
                print(f"tunesmith board: job queue: {type(error).__name__}: {error}", file=sys.stderr)

    def _reap(self) -> None:
        for job in [j for j in self._jobs.values() if j.state == "running"]:
            process = self._processes.pop(job.id, None)
            if process is not None:
                code = process.poll()
                if code is None:
                    self._processes[job.id] = process
                    continue
                ok = code == 0
            elif _alive(job):
                continue
            else:  # an earlier board's process, not our child: its exit code is gone; the run tells
                code, ok = None, RunDir(job.run_dir).finished
            job.returncode, job.ended = code, _now()
            # A job that finished as the stop came is finished: its run is complete.
            job.state = "finished" if ok else "stopped" if job.stop_requested else "failed"
            if not ok:  # a stopped run's line says whether it was kept and how to continue it
                job.error = last_error_line(Path(job.log)) or f"exit code {code}"
            self._save(job)

    def _start_next(self) -> None:
        running = sum(j.state == "running" for j in self._jobs.values())
        waiting = sorted((j for j in self._jobs.values() if j.state == "queued"), key=lambda j: (j.created, j.id))
        for job in waiting[: max(0, self.max_running - running)]:
            self._launch(job)

    def _launch(self, job: Job) -> None:
        if job.kind == "resume":
            args = ["train", "--resume", job.run_dir]
        else:
            args = ["train", str(job.config)]  # its runtime.output_dir is job.run_dir (submit_train checks)
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        try:
            with open(job.log, "ab") as log:
                # A session of its own: Ctrl-C in the board's terminal does not reach the job.
                process = subprocess.Popen([sys.executable, "-m", "tunesmith.cli", *args], stdin=subprocess.DEVNULL,
                                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                           env={**os.environ, JOB_ENV: "1"})  # fmt: skip
        except OSError as error:
            job.state, job.ended, job.error = "failed", _now(), f"could not start the job: {error}"
            self._save(job)
            return
        self._processes[job.id] = process
        job.state, job.started, job.pid = "running", _now(), process.pid
        job.pid_started = _started(process.pid)
        self._save(job)

    def _signal(self, job: Job, sig: int) -> None:
        process = self._processes.get(job.id)
        try:
            if process is not None:
                process.send_signal(sig)
            elif _alive(job):  # never a pid that another process now has
                os.kill(job.pid, sig)
        except ProcessLookupError:
            pass

    def _kill_if_running(self, job_id: str) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None and job.state == "running":
                self._signal(job, signal.SIGKILL)
