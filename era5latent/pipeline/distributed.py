"""Scale-out: encode and decode on a dask.distributed cluster; encode in independent parts.

The unit of work is the store's time chunk (``EncodeJob.run_chunk``: its bytes depend on nothing
but the chunk index). A *task* is a contiguous run of time chunks; it writes its own chunk-aligned
regions and done flags, so no two tasks share a Zarr chunk and any task may run anywhere, fail,
and run again. The output is bitwise identical to ``pipeline.encode``'s.

* The client checks everything and creates (or opens) the store, exactly as ``prepare_encode``
  does, then submits tasks and follows them with ``distributed.as_completed``; it marks the store
  complete at the end. Workers never create stores.
* Workers open the source, the store and the model themselves from paths (which must be readable
  on every worker: a shared filesystem, or an fsspec URL). A worker loads a model once (a
  per-process cache keyed by path and sha256, checked against the client's) and keeps one opened
  job per run, whatever the number of tasks.
* A worker that dies (killed, out of memory) has its tasks rescheduled by Dask; chunks they had
  finished are skipped on retry, unfinished ones recomputed to the same bytes.
* Decode: the client lays the output out at its temporary path (``fields.FieldWriter``); each
  task decodes whole output blocks and writes them there; the client renames once at the end.

Parts (``encode --parts I/N``) need no cluster: each process encodes the I-th contiguous share of
the time chunks under its own lock and leaves the store unfinished; :func:`finalize` (or an encode
without ``--parts``) marks it complete once every chunk is written.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from era5latent import faults
from era5latent.errors import (CheckpointError, Era5LatentError, OptionError, SourceError,
                               StoreError)
from era5latent.fsutil import full_path
from era5latent.malloc import tune_malloc
from era5latent.model.checkpoint import LoadedModel, load_checkpoint
from era5latent.model.devices import place_for_inference, resolve_device, resolve_precision
from era5latent.pipeline import (Background, DecodeResult, EncodeJob, EncodeResult,
                                 store_spec, decode_fields, decode_precision, plan_decode,
                                 prepare_encode, read_codes, read_group_masks, read_residuals)
from era5latent.pipeline.residual import ResidualSpec
from era5latent.io.sources import Source, iso, open_source
from era5latent.store.core import LatentStore, open_latent_store, writer_lock
from era5latent.store.spec import chunk_ranges, MAX_PARTS, parts_status
from era5latent.io.variables import Channel, parse_channel

#: progress(done_samples, total_samples, tasks_done, tasks_total) -- after each finished task
ClusterProgress = Callable[[int, int, int, int], None]

#: tasks per worker when --chunks-per-task is not given (load balance vs per-task overhead)
TASKS_PER_WORKER = 4
#: tries at starting a local cluster (a worker that dies during the start fails the attempt)
CLUSTER_START_ATTEMPTS = 2


class ClusterError(Era5LatentError):
    """The Dask cluster cannot be reached, or lost a task's worker too many times."""


# -- the cluster -------------------------------------------------------------------------------

def _cuda_devices(device: str) -> int:
    """GPUs a local cluster should use: none when --device cpu or without dask-cuda."""
    if device.strip().lower() == "cpu":
        return 0
    try:
        import dask_cuda  # noqa: F401
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def local_cluster(workers: int, device: str = "auto") -> Any:
    """A LocalCUDACluster (one worker per GPU, at most ``workers``) when dask-cuda and GPUs are
    present, else a LocalCluster of ``workers`` processes with one task thread each and an equal
    share of the cores for torch."""
    import logging

    check_cluster_options(workers=workers)
    gpus = _cuda_devices(device)
    if gpus:
        from dask_cuda import LocalCUDACluster

        n = min(workers, gpus)
        return LocalCUDACluster(CUDA_VISIBLE_DEVICES=list(range(n)), threads_per_worker=1,
                                dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR)
    from distributed import LocalCluster

    # torch reads OMP_NUM_THREADS when it is imported, which a spawned worker may do before Dask
    # applies a Nanny's ``env``: it must be in the environment the workers are spawned with
    # (Dask's "pre-spawn-environ", which prefers this process's own variables, default 1)
    keys = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: str(max(1, (os.cpu_count() or 1) // workers)) for k in keys})
    try:
        # a worker process that dies while the cluster starts (killed, out of memory) makes
        # LocalCluster raise; once more with fresh processes before giving up
        for _ in range(CLUSTER_START_ATTEMPTS):
            try:
                return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                    host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                    silence_logs=logging.ERROR)
            except (RuntimeError, OSError, TimeoutError) as err:
                why = err
        raise ClusterError(f"--workers {workers}: the local Dask cluster did not start in "
                           f"{CLUSTER_START_ATTEMPTS} attempts ({why}); expected worker "
                           "processes to start: check memory, or use fewer --workers")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def check_cluster_options(client: Any = None, scheduler: str | None = None,
                          workers: int | None = None) -> None:
    """Exactly one of a client, ``--scheduler`` and ``--workers`` (checked before any output)."""
    given = [x for x in (client, scheduler, workers) if x is not None]
    if len(given) != 1:
        raise OptionError("--scheduler and --workers: give one (the address of an existing Dask "
                          "cluster, or the size of a local one)")
    if workers is not None and workers < 1:
        raise OptionError(f"--workers {workers}: expected a positive integer")
    if workers is not None and workers > 4096:
        raise OptionError(f"--workers {workers}: expected at most 4096 local worker processes")
    if scheduler is not None and scheduler.endswith(".json"):
        # dask would wait for a missing scheduler file to appear, for minutes
        if not os.path.isfile(scheduler):
            raise OptionError(f"--scheduler {scheduler}: no such scheduler file; expected the "
                              "file 'dask scheduler --scheduler-file' wrote, or an address "
                              "tcp://HOST:8786")
        try:
            with open(scheduler) as f:
                ok = isinstance(json.load(f).get("address"), str)
        except (OSError, ValueError, AttributeError):
            ok = False
        if not ok:
            raise OptionError(f"--scheduler {scheduler}: not a dask scheduler file (expected "
                              "JSON with an 'address'); pass the file 'dask scheduler "
                              "--scheduler-file' wrote, or an address tcp://HOST:8786")


#: seconds to wait for a scheduler's TCP port to accept a connection before dask's own handshake
PROBE_SECONDS = 5.0


def _probe(scheduler: str) -> None:
    """Fail in seconds on a tcp:// address nothing listens on (refused, or no answer within
    PROBE_SECONDS) rather than after dask's 30 s connect timeout. Other schemes (tls, ucx,
    inproc) and scheduler files are left to dask."""
    from urllib.parse import urlsplit

    if scheduler.endswith(".json"):
        return
    url = urlsplit(scheduler if "://" in scheduler else f"tcp://{scheduler}")
    if url.scheme != "tcp":
        return
    try:
        host, port = url.hostname, url.port or 8786
    except ValueError as err:  # a port that is no number, or out of range
        raise OptionError(f"--scheduler {scheduler}: {err}; expected an address such as "
                          "tcp://HOST:8786 or a scheduler file") from None
    if not host:
        raise OptionError(f"--scheduler {scheduler}: no host; expected an address such as "
                          "tcp://HOST:8786 or a scheduler file")
    try:
        socket.create_connection((host, port), timeout=PROBE_SECONDS).close()
    except OSError as err:
        why = "no answer" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise ClusterError(f"--scheduler {scheduler}: cannot connect ({why}); expected the "
                           "address of a running dask scheduler (tcp://HOST:8786) or its "
                           "scheduler file: start it or correct the address") from None


@contextmanager
def dask_client(client: Any = None, scheduler: str | None = None, workers: int | None = None,
                device: str = "auto") -> Iterator[Any]:
    """The client to submit to: ``client`` as given, one connected to ``scheduler`` (an address
    or a scheduler file ``*.json``), or one on a local cluster of ``workers`` started here."""
    check_cluster_options(client, scheduler, workers)
    if client is not None:
        yield client
        return
    from distributed import Client

    if scheduler is not None:
        _probe(scheduler)
        try:
            if scheduler.endswith(".json"):
                c = Client(scheduler_file=scheduler, timeout=30)
            else:
                c = Client(scheduler, timeout=30)
        except (OSError, TimeoutError, ValueError) as err:
            raise ClusterError(f"--scheduler {scheduler}: cannot connect ({err}); expected the "
                               "address of a running dask scheduler (tcp://HOST:8786) or its "
                               "scheduler file") from None
        with c:
            yield c
        return
    assert workers is not None
    with local_cluster(workers, device) as cluster, Client(cluster) as c:
        yield c


def _n_workers(client: Any) -> int:
    return max(1, len(client.scheduler_info().get("workers", {})))


def _runs(items: list[int], per_task: int) -> list[tuple[int, ...]]:
    """Cut a sorted list into runs of consecutive values, at most ``per_task`` long each."""
    out: list[list[int]] = []
    for i in items:
        if out and i == out[-1][-1] + 1 and len(out[-1]) < per_task:
            out[-1].append(i)
        else:
            out.append([i])
    return [tuple(r) for r in out]


def _per_task(n_items: int, chunks_per_task: int, client: Any) -> int:
    if chunks_per_task < 0:
        raise OptionError(f"--chunks-per-task {chunks_per_task}: expected 0 (auto) or more")
    if chunks_per_task:
        return chunks_per_task
    return max(1, math.ceil(n_items / (TASKS_PER_WORKER * _n_workers(client))))


def _follow(client: Any, futures: list[Any], on_result: Callable[[Any], int], done: int,
            total: int, progress: ClusterProgress | None) -> None:
    """Wait for every task (in completion order), reporting progress; cancel all on failure."""
    from distributed import as_completed

    try:
        for k, fut in enumerate(as_completed(futures), 1):
            try:
                result = fut.result()
            except Exception as err:
                if type(err).__name__ == "KilledWorker":
                    raise ClusterError(
                        f"Dask gave up on task {fut.key}: its worker died every time it ran "
                        "(out of memory?); what was written is kept: give workers more memory or "
                        "use a smaller --batch-size and re-run the same command") from None
                raise
            done += on_result(result)
            if progress:
                progress(done, total, k, len(futures))
    except BaseException:
        client.cancel(futures)
        raise


# -- worker side: caches ------------------------------------------------------------------------

_LOCK = threading.Lock()
_MODELS: OrderedDict[tuple[str, str], LoadedModel] = OrderedDict()
_RUNS: OrderedDict[str, Any] = OrderedDict()
#: what this process did, for tests and benchmarks (``client.run(worker_stats)``)
STATS = {"models_loaded": 0, "runs_opened": 0, "tasks": 0, "chunks": 0}


def worker_stats() -> dict[str, int]:
    return dict(STATS)


def _model(path: str, sha256: str) -> LoadedModel:
    """The model at ``path``, loaded once per process (at most two kept)."""
    key = (path, sha256)
    with _LOCK:
        if key not in _MODELS:
            loaded = load_checkpoint(path)
            if loaded.sha256 != sha256:
                raise CheckpointError(
                    f"{path} on worker {socket.gethostname()} has sha256 {loaded.sha256[:12]} but "
                    f"the client's has {sha256[:12]}: give every worker the same checkpoint")
            _MODELS[key] = loaded
            STATS["models_loaded"] += 1
            while len(_MODELS) > 2:
                _MODELS.popitem(last=False)
        _MODELS.move_to_end(key)
        return _MODELS[key]


def _run_state(run_id: str, build: Callable[[], Any]) -> Any:
    """What a run's tasks share on one worker (opened source, store, job), built once."""
    with _LOCK:
        if run_id in _RUNS:
            _RUNS.move_to_end(run_id)
            return _RUNS[run_id]
    tune_malloc()  # the worker process runs the model's batch loop
    state = build()  # outside the lock: may load a model (which takes the lock itself)
    with _LOCK:
        _RUNS.setdefault(run_id, state)
        STATS["runs_opened"] += 1
        while len(_RUNS) > 4:
            _RUNS.popitem(last=False)
        return _RUNS[run_id]


def _portable(err: Era5LatentError) -> Era5LatentError:
    """The error itself if the client can rebuild it (exceptions travel as class + args), else
    its message in a base class."""
    if type(err).__reduce__ is not BaseException.__reduce__:
        return err  # says how to rebuild itself
    try:
        type(err)(*err.args)
        return err
    except Exception:
        base = StoreError if isinstance(err, StoreError) else Era5LatentError
        return base(str(err))


def _fault_once(chunk: int) -> None:
    """Crash tests: ``ERA5LATENT_WORKER_FAULT=CHUNK:DIR`` SIGKILLs the worker process the first
    time any worker reaches time chunk CHUNK (a marker file in DIR records that it happened)."""
    spec = os.environ.get("ERA5LATENT_WORKER_FAULT")
    if not spec:
        return
    c, _, d = spec.partition(":")
    if int(c) != chunk:
        return
    try:
        fd = os.open(os.path.join(d, f"killed-at-chunk-{chunk}"),
                     os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


# -- encode ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EncodeTask:
    """Everything a worker needs to rebuild the client's ``EncodeJob`` (no arrays, no model)."""

    run_id: str
    source: str
    model: str
    model_sha256: str
    channels: tuple[str, ...]
    out: str
    t0: int
    t1: int
    first_time: str
    time_chunk: int
    batch_size: int
    device: str
    precision: str
    open_options: dict[str, Any] = field(default_factory=dict)  # time_axis, step
    residual: dict[str, Any] | None = None  # the client's ResidualSpec.to_dict()

    def job(self) -> EncodeJob:
        source = open_source(self.source, **self.open_options)
        times = source.times
        if len(times) < self.t1 or iso(times[self.t0]) != self.first_time:
            raise SourceError(
                f"{self.source} on worker {socket.gethostname()} is not the data the client "
                f"opened (expected time {self.first_time} at index {self.t0}); give every worker "
                "the same source path")
        loaded = _model(self.model, self.model_sha256)
        channels = tuple(parse_channel(c) for c in self.channels)
        dev = resolve_device(self.device)
        prec = resolve_precision(self.precision, dev)
        place_for_inference(loaded.model, dev)
        source.use_direct_reads(dev.type == "cpu")  # as ready_to_encode: zarrs beside a GPU
        residual = ResidualSpec.from_dict(self.residual) if self.residual else None
        spec = store_spec(source, loaded, channels, self.t0, self.t1, self.time_chunk,
                           residual)
        store = open_latent_store(self.out, mode="r+")
        return EncodeJob(source, loaded, channels, spec, store, self.t0, self.batch_size, dev,
                         prec, residual=residual)


def encode_task(task: EncodeTask, chunks: tuple[int, ...]) -> int:
    """Worker: encode and write time chunks ``chunks`` (those not done yet); returns their
    samples."""
    try:
        job: EncodeJob = _run_state(task.run_id, task.job)
        done = job.laid_out.done(chunks[0], chunks[-1] + 1)  # only this task's flags
        with Background() as io:  # reads ahead; the writes stay on this thread
            for i, x in io.read_ahead(job.read_chunk,
                                      [i for i in chunks if not done[i - chunks[0]]]):
                _fault_once(i)
                faults.point("encode.chunk-read")
                job.write_chunk(i, job.encode_chunk(x))
                STATS["chunks"] += 1
        STATS["tasks"] += 1
        return sum(job.chunk_samples(i) for i in chunks)
    except Era5LatentError as err:
        raise _portable(err) from None


def encode_distributed(source: Source, loaded: LoadedModel, channels: tuple[Channel, ...],
                       out: str, *, time_range: str | None = None, batch_size: int = 8,
                       device: str = "auto", overwrite: bool = False,
                       time_chunk: int | None = None,
                       precision: str = "auto", break_lock: bool = False,
                       part: tuple[int, int] | None = None, client: Any = None,
                       scheduler: str | None = None, workers: int | None = None,
                       chunks_per_task: int = 0,
                       progress: ClusterProgress | None = None, max_error: str | None = None,
                       residual_codec: str = "sz3") -> EncodeResult:
    """``pipeline.encode`` on a Dask cluster (``client``, ``scheduler`` or ``workers`` local
    processes), with the same result bytes, resume and ``part`` semantics."""
    check_cluster_options(client, scheduler, workers)
    if scheduler is not None:  # connect first: an unreachable cluster leaves no store behind
        with dask_client(scheduler=scheduler) as c:
            return encode_distributed(
                source, loaded, channels, out, time_range=time_range, batch_size=batch_size,
                device=device, overwrite=overwrite, time_chunk=time_chunk, precision=precision,
                break_lock=break_lock, part=part, client=c, chunks_per_task=chunks_per_task,
                progress=progress, max_error=max_error, residual_codec=residual_codec)
    on_this_host = client is None and scheduler is None
    # devices are resolved by the workers; here only when the workers share this machine
    job = prepare_encode(source, loaded, channels, out, time_range=time_range,
                         batch_size=batch_size, device=device if on_this_host else "cpu",
                         overwrite=overwrite, time_chunk=time_chunk,
                         precision=precision if on_this_host else "fp32",
                         break_lock=break_lock, part=part, max_error=max_error,
                         residual_codec=residual_codec)
    job.first = None  # read to check the source before creating the store; workers read their own
    start = time.perf_counter()
    with writer_lock(out, break_lock, part):
        todo = job.todo()
        total = job.total_samples()
        done = total - sum(job.chunk_samples(i) for i in todo)
        if progress:
            progress(done, total, 0, 0)
        if todo:
            spec = job.spec
            task = EncodeTask(
                run_id=uuid.uuid4().hex, source=full_path(source.path),
                model=os.path.abspath(loaded.path), model_sha256=loaded.sha256,
                channels=tuple(c.code for c in channels), out=full_path(out), t0=job.t0,
                t1=job.t0 + len(spec.times), first_time=iso(spec.times[0]),
                time_chunk=spec.time_chunk, batch_size=batch_size, device=device,
                precision=precision, open_options=source.open_options,
                residual=job.residual.to_dict() if job.residual else None)
            with dask_client(client, scheduler, workers, device) as c:
                start = time.perf_counter()  # from a running cluster (not counting its start)
                runs = _runs(todo, _per_task(len(todo), chunks_per_task, c))
                futures = [c.submit(encode_task, task, run, pure=False,
                                    key=f"era5latent-encode-{task.run_id[:8]}-{run[0]}-{run[-1]}")
                           for run in runs]
                _follow(c, futures, int, done, total, progress)
        seconds = time.perf_counter() - start
        job.store = open_latent_store(out, mode="r+")  # the workers' writes, freshly read
        job.finish()
    owned = len(job.chunk_range())
    return EncodeResult(out, {g.name: list(g.channels) for g in job.spec.groups},
                        len(job.spec.times), sum(job.chunk_samples(i) for i in todo), owned,
                        len(todo), owned - len(todo), seconds, job.resumed)


# -- parts -------------------------------------------------------------------------------------

@dataclass
class FinalizeResult:
    path: str
    chunks: int
    already: bool


def finalize(path: str, parts: int | None = None, break_lock: bool = False) -> FinalizeResult:
    """Mark a store complete if every time chunk is written; else say which parts are missing.

    ``parts`` N names the parts in the error (default: the N recorded by the ``--parts`` run that
    created the store). Refused while any writer (whole or part) of the store is alive.
    """
    if parts is not None and not 1 <= parts <= MAX_PARTS:
        raise OptionError(f"--parts {parts}: expected a count from 1 to {MAX_PARTS}")
    store = open_latent_store(path, mode="r+")
    if store.finished:
        return FinalizeResult(path, int(store.done().size), True)
    with writer_lock(path, break_lock):
        done = store.done()
        if not done.all():
            missing = np.flatnonzero(~done).tolist()
            n = parts or store.meta.get("parts")
            which = ""
            if n:
                st = parts_status(done, int(n))
                which = f"parts {', '.join(f'{i}/{n}' for i in st['missing'])} not finished; "
            raise StoreError(
                f"{path} is unfinished: {which}time chunks {chunk_ranges(missing)} of 0-"
                f"{done.size - 1} not written; run those 'encode --parts' commands again (or "
                "'encode' without --parts, which does whatever is left), then finalize")
        store.mark_complete()
    return FinalizeResult(path, int(done.size), False)


# -- decode ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DecodeTask:
    """What a worker needs to decode blocks into the client's temporary output."""

    run_id: str
    store: str
    model: str
    model_sha256: str
    groups: tuple[tuple[str, tuple[str, ...]], ...]
    lo: int
    hi: int
    step: int
    batch_size: int
    device: str
    precision: str
    allow_corrupt: bool
    writer: dict[str, Any] | None  # FieldWriter state (Zarr output); None: return blocks (NetCDF)
    residual: bool = True  # apply the store's residual layer, if any

    def state(self) -> _DecodeState:
        store = open_latent_store(self.store)
        loaded = _model(self.model, self.model_sha256)
        from era5latent.pipeline.unseen import adopt_store_levels

        adopt_store_levels(store.meta, loaded)  # levels encoded with --allow-unseen-levels
        dev = resolve_device(self.device)
        prec = decode_precision(self.store, self.precision, dev, self.residual)
        place_for_inference(loaded.model, dev)
        groups = {g: tuple(parse_channel(c) for c in chs) for g, chs in self.groups}
        writer = None
        if self.writer is not None:
            from era5latent.io.fields import FieldWriter

            writer = FieldWriter.reopen(self.writer)  # the client's output (a shared path)
        return _DecodeState(store, loaded, groups, dev, prec, writer)


@dataclass
class _DecodeState:
    store: LatentStore
    loaded: LoadedModel
    groups: dict[str, tuple[Channel, ...]]
    device: Any
    precision: str
    writer: Any


Residuals = dict[str, dict[str, np.ndarray] | None] | None
Masks = dict[str, np.ndarray | None]


def _read_codes(task: DecodeTask, st: _DecodeState, a: int, corrupt: list[tuple[int, str]]
                ) -> tuple[dict[str, np.ndarray | None], Residuals, Masks]:
    """Codes (residuals, masks) for output times [a, a + step), checksum-verified."""
    b = min(a + task.step, task.hi)
    codes, lost = read_codes(st.store, st.groups, a, b, allow_corrupt=task.allow_corrupt)
    corrupt.extend((a, msg) for msg in lost)
    res: Residuals = None
    if task.residual and st.store.has_residual:
        res, lost = read_residuals(st.store, st.groups, a, b, allow_corrupt=task.allow_corrupt)
        corrupt.extend((a, msg) for msg in lost)
    masks, lost = read_group_masks(st.store, st.groups, a, b, allow_corrupt=task.allow_corrupt)
    corrupt.extend((a, msg) for msg in lost)
    return codes, res, masks


def _decode_block(task: DecodeTask, st: _DecodeState, a: int,
                  packed: dict[str, np.ndarray | None],
                  res: Residuals = None, masks: Masks | None = None
                  ) -> dict[Channel, np.ndarray]:
    """As ``pipeline.decode``'s loop body: fields per channel for output times [a, a + step)."""
    store = st.store
    fill: tuple[int, ...] | None = None
    if any(p is None for p in packed.values()):  # a damaged chunk, allowed: NaN fields
        fill = (min(a + task.step, task.hi) - a, *[store.coord(d).size for d in store.sample_dims],
                store.coord("latitude").size, store.coord("longitude").size)
    return decode_fields(st.loaded, st.groups, store.groups, packed, task.batch_size, st.device,
                         st.precision, fill, res, masks)


def decode_task(task: DecodeTask, starts: tuple[int, ...]
                ) -> tuple[int, list[tuple[int, str]], list[tuple[int, dict[Channel, np.ndarray]]]]:
    """Worker: decode output blocks starting at ``starts``; write them to the temporary output
    (or hand them back for a NetCDF output). Returns (time steps, corrupt chunks, blocks)."""
    try:
        st: _DecodeState = _run_state(task.run_id, task.state)
        corrupt: list[tuple[int, str]] = []
        back: list[tuple[int, dict[Channel, np.ndarray]]] = []
        steps = 0
        with Background() as io:  # reads ahead; the writes stay on this thread
            for a, (packed, res, masks) in io.read_ahead(
                    lambda a: _read_codes(task, st, a, corrupt), starts):
                block = _decode_block(task, st, a, packed, res, masks)
                if st.writer is not None:
                    st.writer.write(a - task.lo, block)
                    faults.point("decode.block-written")
                else:
                    back.append((a, block))
                steps += next(iter(block.values())).shape[0]
                STATS["chunks"] += 1
        STATS["tasks"] += 1
        return steps, corrupt, back
    except Era5LatentError as err:
        raise _portable(err) from None


def decode_distributed(store_path: str, loaded: LoadedModel, out: str, *,
                       subset: tuple[Channel, ...] | None = None, time_range: str | None = None,
                       batch_size: int = 8, device: str = "auto", overwrite: bool = False,
                       precision: str = "auto", allow_corrupt: bool = False, client: Any = None,
                       scheduler: str | None = None, workers: int | None = None,
                       chunks_per_task: int = 0,
                       progress: ClusterProgress | None = None,
                       zarr_format: int = 3, residual: bool = True) -> DecodeResult:
    """``pipeline.decode`` on a Dask cluster: the same output bytes (Zarr or NetCDF)."""
    check_cluster_options(client, scheduler, workers)
    if scheduler is not None:  # connect first: an unreachable cluster leaves no output behind
        with dask_client(scheduler=scheduler) as c:
            return decode_distributed(
                store_path, loaded, out, subset=subset, time_range=time_range,
                batch_size=batch_size, device=device, overwrite=overwrite, precision=precision,
                allow_corrupt=allow_corrupt, client=c, chunks_per_task=chunks_per_task,
                progress=progress, zarr_format=zarr_format, residual=residual)
    if batch_size < 1:
        raise OptionError(f"--batch-size {batch_size}: expected a positive integer")
    if client is None and scheduler is None:  # workers on this machine: check the device here
        decode_precision(store_path, precision, resolve_device(device), residual)
    plan = plan_decode(store_path, loaded, out, subset=subset, time_range=time_range,
                       overwrite=overwrite, allow_corrupt=allow_corrupt, zarr_format=zarr_format,
                       residual=residual)
    store, groups, lo, hi, writer = plan.store, plan.groups, plan.lo, plan.hi, plan.writer
    sample_coords = plan.sample_coords
    step = store.time_chunk
    per_step = int(np.prod([len(v) for v in sample_coords.values()], dtype=np.int64))
    total = (hi - lo) * per_step
    # (block start, where), in block order at the end; metadata damage (allowed) first
    corrupt: list[tuple[int, str]] = [(lo - 1, d) for d in plan.damaged]
    start_t = time.perf_counter()
    try:
        if progress:
            progress(0, total, 0, 0)
        task = DecodeTask(
            run_id=uuid.uuid4().hex, store=full_path(store_path),
            model=os.path.abspath(loaded.path), model_sha256=loaded.sha256,
            groups=tuple((g, tuple(c.code for c in chs)) for g, chs in groups.items()),
            lo=lo, hi=hi, step=step, batch_size=batch_size, device=device, precision=precision,
            allow_corrupt=allow_corrupt, writer=writer.state(), residual=residual)
        starts = list(range(lo, hi, step))

        def on_result(r: tuple[int, list[tuple[int, str]],
                                list[tuple[int, dict[Channel, np.ndarray]]]]) -> int:
            steps, bad, blocks = r
            corrupt.extend(bad)
            for a, block in blocks:  # NetCDF: assembled here, in memory
                writer.write(a - lo, block)
            return steps * per_step

        with dask_client(client, scheduler, workers, device) as c:
            start_t = time.perf_counter()  # from a running cluster (not counting its start)
            per = _per_task(len(starts), chunks_per_task, c)
            futures = [c.submit(decode_task, task, tuple(starts[k:k + per]), pure=False,
                                key=f"era5latent-decode-{task.run_id[:8]}-{starts[k]}")
                       for k in range(0, len(starts), per)]
            _follow(c, futures, on_result, 0, total, progress)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return DecodeResult(out, writer.variables, hi - lo, total, time.perf_counter() - start_t,
                        [c.code for chs in groups.values() for c in chs],
                        [where for _, where in sorted(corrupt, key=lambda x: x[0])])


__all__ = ["ClusterError", "ClusterProgress", "DecodeTask", "EncodeTask", "FinalizeResult",
           "dask_client", "decode_distributed", "decode_task", "encode_distributed",
           "encode_task", "finalize", "local_cluster", "worker_stats"]
