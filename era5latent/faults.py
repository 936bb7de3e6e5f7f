"""Fault injection for crash-consistency tests.

``ERA5LATENT_FAULT=POINT:N`` makes the N-th arrival at ``POINT`` kill the process with SIGKILL,
exactly as an OOM killer or a pulled plug would: no cleanup, no finally blocks. Points are named
where they are placed (see ``POINTS``). Unset, a fault point costs one dict lookup.
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "encode.chunk-read",      # a time chunk has been read, nothing written for it yet
    "encode.codes-written",   # a chunk's codes are written, its done flag not yet
    "encode.residual-written", # a chunk's residual streams are written, its done flag not yet
    "encode.chunk-done",      # a chunk's done flag is written
    "encode.before-complete", # every chunk done, the 'complete' attribute not yet written
    "store.created",          # the store skeleton is laid out at its temporary path
    "decode.block-written",   # a decoded block is written to the temporary output
    "embedmap.chunk-written", # one output chunk of the embedding map is written
    "train.checkpoint-written", # a training checkpoint and its resume state are written
)

_counts: dict[str, int] = {}


def point(name: str) -> None:
    spec = os.environ.get("ERA5LATENT_FAULT")
    if not spec:
        return
    target, _, n = spec.partition(":")
    if target != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] >= int(n or 1):
        os.kill(os.getpid(), signal.SIGKILL)
