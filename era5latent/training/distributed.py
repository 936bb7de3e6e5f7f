"""Data-parallel set-up on torch.distributed: one process per device, DDP per variable group.

A run is distributed when the launcher's environment says so (``torchrun`` sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; Slurm jobs call torchrun on
each node). ``era5latent train --nproc N`` is a convenience that starts N such processes on this
machine with :func:`spawn`. The backend is NCCL on CUDA devices and gloo on the CPU.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from era5latent.errors import Era5LatentError, OptionError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_env() -> World:
    """The launcher's world (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``), or a single process."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise OptionError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets "
                          "them); unset them to train in one process") from None
    if size < 1 or not 0 <= rank < size:
        raise OptionError(f"RANK {rank} / WORLD_SIZE {size}: expected 0 <= RANK < WORLD_SIZE")
    return World(rank, size, local)


def init(world: World, device: torch.device) -> None:
    """Join the process group (NCCL for CUDA, gloo for CPU); no-op for one process."""
    if not world.distributed or (dist.is_available() and dist.is_initialized()):
        return
    if not dist.is_available():
        raise OptionError("this PyTorch build has no torch.distributed; train in one process")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=world.rank, world_size=world.size)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.barrier()


def broadcast_object(world: World, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_ranks_ok(world: World, error: Era5LatentError | None) -> Era5LatentError | None:
    """Agree across ranks whether any rank failed (so no rank waits forever in a collective);
    returns the first failing rank's error, re-raised the same everywhere by the caller."""
    if not world.distributed:
        return error
    msgs: list[Any] = [None] * world.size
    dist.all_gather_object(msgs, None if error is None else (type(error), str(error)))
    for m in msgs:
        if m is not None:
            kind, text = m
            return error if error is not None else kind(text)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _child(rank: int, nproc: int, port: int, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(nproc), "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // nproc))
    try:
        fn(*args)
    except Era5LatentError as err:
        if rank == 0:
            import sys

            sys.stderr.write(f"error: {err}\n")
        raise SystemExit(err.exit_code) from None
    finally:
        shutdown()


def spawn(nproc: int, fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn(*args)`` in ``nproc`` local processes forming one world (``--nproc``).

    A rank that fails with a library error prints it (rank 0 only) and the whole run ends with
    that error's exit code; raises ``SystemExit``.
    """
    from torch.multiprocessing.spawn import ProcessExitedException, start_processes

    if nproc < 1:
        raise OptionError(f"--nproc {nproc}: expected a positive number of processes")
    try:
        start_processes(_child, args=(nproc, free_port(), fn, args), nprocs=nproc,
                        start_method="spawn")
    except ProcessExitedException as err:
        raise SystemExit(err.exit_code or 1) from None
