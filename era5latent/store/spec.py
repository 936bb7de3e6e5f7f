"""What a latent store is, apart from an opened one: its format version, each group's code
geometry, the spec that fixes a store's layout and meaning (the resume identity), the parts a
build is cut into, and :class:`StoreView`, what the store's layers (residuals, masks) read of an
opened store (:class:`era5latent.store.core.LatentStore` is one)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import zarr

from era5latent.errors import OptionError
from era5latent.io.sources import iso
from era5latent.store.layout import codes_name
from era5latent.version import __version__

FORMAT = "era5latent.latent"
#: version 2: every array's chunks end in a crc32c (zarr checks it on read) and a finished store
#: records the sha256 of its metadata; version 3: bookkeeping in the subgroup ``_era5latent``,
#: token coordinates, an optional error-bounded residual layer (subgroup ``residual``, attribute
#: ``residual``); versions 1 and 2 (every array at the root) are still read (docs/format.md);
#: version 4: version 3 with a mask layer (subgroup ``mask``, attribute ``mask``: fields with
#: missing values, :mod:`era5latent.store.masks`), written only for stores that have one, so stores
#: without one stay readable by era5latent releases that know version 3
FORMAT_VERSION = 4
#: the version a store without a mask layer is written in
UNMASKED_VERSION = 3


@dataclass(frozen=True)
class GroupSpec:
    """One variable group in a store: its channels and code geometry."""

    name: str
    channels: tuple[str, ...]  # channel codes, e.g. ("z500", "z850")
    meta: tuple[float, ...]  # PVUM metadata scalars, same order
    units: tuple[str, ...]
    code_bits: int
    token_grid: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return self.code_bits // 8

    def to_dict(self) -> dict[str, Any]:
        return {"channels": list(self.channels), "meta": list(self.meta), "units": list(self.units),
                "code_bits": self.code_bits, "token_grid": list(self.token_grid),
                "array": codes_name(self.name)}

    @classmethod
    def from_dict(cls, name: str, d: dict[str, Any]) -> GroupSpec:
        return cls(name, tuple(d["channels"]), tuple(float(m) for m in d["meta"]),
                   tuple(d["units"]), int(d["code_bits"]), (int(d["token_grid"][0]),
                                                             int(d["token_grid"][1])))


@dataclass(frozen=True)
class StoreSpec:
    """Everything that fixes a store's layout and meaning (the resume identity)."""

    groups: tuple[GroupSpec, ...]
    times: np.ndarray  # datetime64[ns]
    sample_coords: dict[str, np.ndarray]
    latitude: np.ndarray
    longitude: np.ndarray
    time_chunk: int
    model: dict[str, Any]  # sha256, preset, config
    normalisation: dict[str, dict[str, float]]
    source: dict[str, Any]  # path, format, layout, grid
    parts: int | None = None  # recorded when an ``encode --parts I/N`` run creates the store
    #: the residual layer (``ResidualSpec.to_dict()``), None: codes only
    residual: dict[str, Any] | None = None
    #: the mask layer's attribute (``{channels, fill, static_sha256}``), None: no NaN at the
    #: first time step; and the static masks it describes (written when the store is laid out)
    mask: dict[str, Any] | None = None
    static_masks: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    @property
    def n_chunks(self) -> int:
        return -(-len(self.times) // self.time_chunk)

    def chunk_bounds(self, i: int) -> tuple[int, int]:
        return i * self.time_chunk, min((i + 1) * self.time_chunk, len(self.times))

    def attrs(self) -> dict[str, Any]:
        t = self.times
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION if self.mask else UNMASKED_VERSION,
            "package_version": __version__,
            "model": self.model,
            "groups": {g.name: g.to_dict() for g in self.groups},
            "normalisation": self.normalisation,
            "source": self.source,
            "sample_dims": list(self.sample_coords),
            "time_range": [iso(t[0]), iso(t[-1])] if len(t) else [],
            "time_chunk": self.time_chunk,
            "complete": False,
        } | ({"parts": self.parts} if self.parts else {}) | (
            {"residual": self.residual} if self.residual else {}) | (
            {"mask": self.mask} if self.mask else {})

    def identity(self) -> dict[str, Any]:
        """What must match for a re-run to resume this store rather than be refused."""
        a = self.attrs()
        return {k: a[k] for k in ("format_version", "groups", "source", "sample_dims",
                                  "time_range")} | {
            "model_sha256": self.model["sha256"], "residual": self.residual, "mask": self.mask}


def jsonable(x: Any) -> Any:
    """``x`` as it reads back from JSON (arrays as lists): the form stored in attributes."""
    return json.loads(json.dumps(x, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


# -- parts: a store's time chunks cut into N contiguous shares ----------------------------------

#: the most parts a store can be cut into (each part owns at least one time chunk anyway)
MAX_PARTS = 100_000


def parse_part(text: str) -> tuple[int, int]:
    """``"I/N"`` (1-based) -> ``(I, N)``."""
    a, sep, b = text.strip().partition("/")
    try:
        i, n = int(a), int(b)
    except ValueError:
        i = n = 0
    if not sep or n < 1 or not 1 <= i <= n or n > MAX_PARTS:
        raise OptionError(f"--parts {text!r}: expected I/N with 1 <= I <= N <= {MAX_PARTS}, "
                          "e.g. 2/8")
    return i, n


def part_range(n_chunks: int, part: tuple[int, int] | None) -> range:
    """The time chunks of part ``(I, N)``: the I-th of N contiguous, near-equal shares."""
    if part is None:
        return range(n_chunks)
    i, n = part
    return range((i - 1) * n_chunks // n, i * n_chunks // n)


def parts_status(done: np.ndarray, n: int) -> dict[str, Any]:
    """Which of ``n`` parts have every time chunk written (what ``info`` and ``finalize`` say)."""
    if not 1 <= n <= MAX_PARTS:
        raise OptionError(f"--parts {n}: expected a count from 1 to {MAX_PARTS}")
    finished = [i for i in range(1, n + 1) if done[list(part_range(done.size, (i, n)))].all()]
    return {"count": n, "done": finished,
            "missing": [i for i in range(1, n + 1) if i not in finished]}


def chunk_ranges(chunks: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    out: list[str] = []
    for c in chunks:
        if out and c == int(out[-1].rpartition("-")[2]) + 1:
            out[-1] = f"{out[-1].partition('-')[0]}-{c}"
        else:
            out.append(str(c))
    return ", ".join(out)


# -- an opened store, as its layers see it --------------------------------------------------------

class StoreView(Protocol):
    """What the residual and mask layers (:mod:`era5latent.store.residual`,
    :mod:`era5latent.store.masks`) read of an opened store; the store core composes them, so
    they take the store through this interface rather than import it."""

    path: str
    meta: dict[str, Any]

    def array(self, name: str) -> zarr.Array[Any]: ...

    @property
    def groups(self) -> dict[str, GroupSpec]: ...

    @property
    def sample_dims(self) -> tuple[str, ...]: ...

    @property
    def time_chunk(self) -> int: ...

    @property
    def times(self) -> np.ndarray: ...

    @property
    def mask_channels(self) -> tuple[str, ...]: ...

    def static_mask(self, code: str) -> np.ndarray: ...

    def chunk_bounds(self, i: int) -> tuple[int, int]: ...

    def check_not_replaced(self) -> None: ...
