"""``ebr-onnx audit``: a whole dataset through one model on Dask, resumable, with the paper's metrics and a report.

:func:`audit` reads the dataset (:mod:`ebr_onnx.app.datasets`), checks the model and options once here, and hands
one task per unfinished video (:func:`ebr_onnx.app.video_audit.audit_task`) to Dask: a
``dask.distributed.LocalCluster`` of ``workers`` processes (one thread each; onnxruntime gets the cores ÷ workers), an
existing cluster at ``scheduler``, or, with ``workers=0``, no Dask at all (this process, one video after another).
The model's bytes are scattered once to every worker and loaded once per worker process. Each finished video comes
back here and is written at once, atomically (:class:`ebr_onnx.app.results.ResultStore`), so a run killed at any
moment loses only the videos in flight and re-running the same command audits only the rest. A worker that dies is
replaced and its video retried by Dask; a video whose workers keep dying (the scheduler's ``allowed-failures``)
becomes an error row. At the end the metrics of all finished videos are written (``metrics.json``,
:func:`ebr_onnx.app.audit_summary.summarize`) and the report (``report.html``, :mod:`ebr_onnx.app.report`).

With ``scheduler``, the workers read the videos by the paths the dataset gives: they must see the same files.
"""
from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..core.errors import EbrError
from ..explainer import Explainer
from .audit_summary import summarize
from .datasets import VideoItem, load_dataset
from .outputs import write_json
from .pipeline import GroundOptions, clip_length, method_options, run_settings
from .preprocess import model_preprocess
from .report import write_report
from .results import ResultStore
from .video_audit import DEFAULT_STEPS, AuditJob, VideoOutcome, audit_task


@dataclass(frozen=True)
class AuditRequest:
    """What to audit and how (the ``audit`` command's flags). ``workers``: Dask worker processes of a local
    cluster (None: one per core; 0: no Dask, this process); ``scheduler``: the address of an existing cluster
    instead; ``videos``: the folder of a THUMOS14 dataset's videos; ``steps``: deletion/insertion steps per clip (0:
    none); ``retry_errors``: audit again the videos that failed before."""

    model: Path
    dataset: Path
    out: Path
    options: GroundOptions = field(default_factory=GroundOptions)
    workers: int | None = None
    scheduler: str | None = None
    videos: Path | None = None
    steps: int = DEFAULT_STEPS
    retry_errors: bool = False
    quiet: bool = False


@dataclass
class AuditRun:
    """What a run did: the dataset's videos (``total``), those already finished before it (``skipped``), those it
    audited and of them the ``errors``, its ``seconds`` (``startup``: the cluster and the model's shipping;
    ``writing``: the results, here), and the metrics of all finished videos."""

    total: int
    skipped: int
    audited: int = 0
    errors: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _FrameRate:
    """The frame rate :func:`~ebr_onnx.app.pipeline.run_settings` records (it reads only this of a video)."""

    source_fps: float | None


def audit(request: AuditRequest) -> AuditRun:
    """Audit every unfinished video of ``request.dataset`` and write the results under ``request.out`` (see the
    module docstring)."""
    started = time.perf_counter()
    if request.workers is not None and request.workers < 0:
        raise EbrError(f"--workers must be >= 0, got {request.workers}")
    if request.workers is not None and request.scheduler is not None:
        raise EbrError("give --workers or --scheduler, not both")
    if request.steps < 0:
        raise EbrError(f"--steps must be >= 0, got {request.steps}")
    options = request.options
    dataset = load_dataset(request.dataset, request.videos)
    ex = Explainer(request.model, labels=options.labels)
    spec = model_preprocess(ex.graph, options.preset, options.preprocess_overrides)
    T = clip_length(ex, options.frames)
    method_options(options)   # the options that do not apply to the method fail here, not once per video
    layer = options.layer or ex.graph.metadata_json("ebr_onnx.map_layer")
    settings = {**run_settings(request.model, options, spec, T, options.stride or T, _FrameRate(options.source_fps),
                               layer),
                "steps": request.steps, "dataset": str(request.dataset), "dataset_kind": dataset.kind}
    store = ResultStore(request.out)
    store.claim(settings)
    finished = store.finished()
    todo = [item for item in dataset.items
            if item.id not in finished or (request.retry_errors and finished[item.id] == "error")]
    run = AuditRun(total=len(dataset.items), skipped=len(dataset.items) - len(todo))
    workers = _workers(request, len(todo))
    data = Path(request.model).read_bytes()
    job = AuditJob(options=replace(options, target=None, labels=None, quiet=True),
                   model_sha256=hashlib.sha256(data).hexdigest(), labels=tuple(ex.labels) if ex.labels else None,
                   steps=request.steps, threads=_threads(request, workers), settings=settings)
    timings = {"startup": 0.0, "writing": 0.0}
    if todo:
        outcomes = (_here(data, todo, job) if workers == 0 else
                    _on_dask(data, todo, job, workers, request.scheduler, timings))
        with tqdm(desc="auditing", total=run.total, initial=run.skipped, unit="video", smoothing=0.1,
                  disable=request.quiet or not sys.stderr.isatty()) as bar:
            for outcome in outcomes:
                t0 = time.perf_counter()
                store.write(outcome.id, outcome.rows, outcome.arrays)
                timings["writing"] += time.perf_counter() - t0
                run.audited += 1
                run.errors += not outcome.ok
                bar.update(1)
    t0 = time.perf_counter()
    rows = store.rows(item.id for item in dataset.items)
    run.metrics = summarize(rows, total=run.total)
    run.seconds = {**{k: round(v, 3) for k, v in timings.items()}, "report": 0.0,
                   "total": round(time.perf_counter() - started, 3)}
    run.metrics["run"] = {"audited": run.audited, "skipped": run.skipped, "workers": workers,
                          "scheduler": request.scheduler, "seconds": run.seconds}
    write_report(store.out / "report.html", run.metrics, rows, settings, store,
                 {item.id: item.path for item in dataset.items})
    run.seconds["report"] = round(time.perf_counter() - t0, 3)
    run.seconds["total"] = round(time.perf_counter() - started, 3)
    write_json(store.out / "metrics.json", run.metrics)
    return run


def _workers(request: AuditRequest, videos: int) -> int | None:
    """The local cluster's worker count, at most one per video (None with a scheduler)."""
    if request.scheduler is not None:
        return None
    wanted = (os.cpu_count() or 1) if request.workers is None else request.workers
    return min(wanted, max(videos, 1))


def _threads(request: AuditRequest, workers: int | None) -> int | None:
    """onnxruntime threads per worker: the cores shared out on a local cluster; its default elsewhere."""
    if request.scheduler is not None or not workers:
        return None
    return max(1, (os.cpu_count() or 1) // workers)


def _here(data: bytes, items: Sequence[VideoItem], job: AuditJob) -> Iterator[VideoOutcome]:
    """No Dask: the videos one after another in this process."""
    for item in items:
        yield audit_task(data, item, job)


def _on_dask(data: bytes, items: Sequence[VideoItem], job: AuditJob, workers: int | None, scheduler: str | None,
             timings: dict[str, float]) -> Iterator[VideoOutcome]:
    """The videos as Dask tasks, yielded as they finish; the cluster is closed when the caller stops."""
    # Imported here: dask.distributed takes a third of a second to import, and only this verb needs it.
    from distributed import Client, KilledWorker, LocalCluster, as_completed

    t0 = time.perf_counter()
    if scheduler is not None:
        cluster, client = None, _connect(Client, scheduler)
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=logging.ERROR)
        client = Client(cluster)
    try:
        model = client.scatter(data, broadcast=True)
        timings["startup"] = time.perf_counter() - t0
        futures = {client.submit(audit_task, model, item, job, key=f"audit-{n}-{_digest(item.id)}", pure=False): item
                   for n, item in enumerate(items)}
        for future in as_completed(futures):
            item = futures[future]
            try:
                outcome = future.result()
            except KilledWorker as error:
                outcome = VideoOutcome(item.id, [{"kind": "video", "id": item.id, "status": "error",
                                                  "error": f"the workers auditing it died ({error})"}])
            future.release()
            yield outcome
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _connect(client_type, address: str):
    try:
        return client_type(address, timeout="30s")
    except OSError as error:
        raise EbrError(f"cannot reach the Dask scheduler at {address}: {error}") from None


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:12]
